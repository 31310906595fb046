"""Padding-free CPU inference for mean-pooled BERT sentence embedders (same vectors, no pad tokens)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from x0tta6bl4.errors import ConfigError

F32 = npt.NDArray[np.float32]


class UnsupportedEmbedderError(ConfigError):
    """The model is not a mean-pooled BERT sentence embedder that :class:`UnpaddedBertEncoder` can run."""


class UnpaddedBertEncoder:
    """Unit-normalised sentence embeddings of a BERT model, computed without padding.

    A padded forward pass pads every text of a batch to the longest, and every layer then works
    on the pad tokens too: on random 10-query batches of incident text that is 10-15 % of the
    work. Every BERT layer except attention acts token by token, so here the embeddings,
    projections, feed-forward blocks and layer norms run on the ``[tokens, hidden]``
    concatenation of the batch's texts; only attention scatters its inputs into a padded
    ``[texts, heads, longest, head_dim]`` view with a key mask, and gathers the real tokens back.
    Mean pooling sums each text's tokens. sentence-transformers unpads only through
    FlashAttention-2's variable-length kernels, which need CUDA.

    The weights are read from the model at every call, so the model may be changed in between
    (a LoRA merge, a loaded state dict). The result equals ``model.encode(...,
    normalize_embeddings=True)`` up to float summation order (cosine 1 to 6 digits).

    Args:
        model: a loaded ``SentenceTransformer`` made of a ``Transformer`` over a ``BertModel``
            with absolute position embeddings and plain ``nn.Linear`` layers, a mean
            ``Pooling``, and optionally ``Normalize``.

    Raises:
        UnsupportedEmbedderError: any other architecture, pooling or module stack (for example
            adapter-wrapped projections, which need the model's own forward).
    """

    def __init__(self, model: Any) -> None:
        reason = _unsupported_reason(model)
        if reason is not None:
            raise UnsupportedEmbedderError(f"cannot run the embedder unpadded: {reason}")
        self.model = model
        self._bert: Any = model[0].auto_model
        self._tokenizer: Any = model.tokenizer
        self._heads = int(self._bert.config.num_attention_heads)

    @property
    def dimension(self) -> int:
        """Length of one embedding."""
        return int(self._bert.config.hidden_size)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, truncated to the model's ``max_seq_length`` as ``encode`` does."""
        ids: list[list[int]] = self._tokenizer(
            list(texts),
            truncation=True,
            max_length=self.model.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return ids

    def encode(self, texts: Sequence[str], max_texts_per_pass: int = 64) -> F32:
        """Embed ``texts`` in ``ceil(len / max_texts_per_pass)`` passes of length-sorted texts.

        Sorting keeps the padded attention view small; the passes are of equal size to within one.

        Args:
            texts: the texts to embed.
            max_texts_per_pass: most texts in one forward pass (bounds the attention view's memory).

        Shapes:
            ``[len(texts), dimension]`` float32, rows of unit length.

        Raises:
            ValueError: ``max_texts_per_pass < 1``.
        """
        if max_texts_per_pass < 1:
            raise ValueError(f"need max_texts_per_pass >= 1, got {max_texts_per_pass}")
        out = np.zeros((len(texts), self.dimension), np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        passes = -(-len(order) // max_texts_per_pass)
        bounds = np.linspace(0, len(order), passes + 1).round().astype(int)
        for start, stop in itertools.pairwise(bounds.tolist()):
            rows = order[start:stop]
            out[rows] = self.forward([ids[i] for i in rows]).numpy()
        return out

    @torch.inference_mode()
    def forward(self, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """One pass over already tokenized texts: their unit-normalised mean-pooled embeddings.

        Shapes:
            ``[len(token_ids), dimension]``.
        """
        lengths = torch.tensor([len(t) for t in token_ids])
        texts, longest = len(token_ids), int(lengths.max())
        ids = torch.tensor([i for t in token_ids for i in t])
        positions = torch.cat([torch.arange(n) for n in lengths.tolist()])
        owner = torch.repeat_interleave(torch.arange(texts), lengths)  # text of each token
        slot = owner * longest + positions  # each token's row in the padded [texts * longest] view
        key_mask = (torch.arange(longest)[None, :] < lengths[:, None])[:, None, None, :]
        emb = self._bert.embeddings
        token_type = emb.token_type_embeddings.weight[0]  # single-segment input: type 0 everywhere
        x = emb.LayerNorm(emb.word_embeddings(ids) + emb.position_embeddings(positions) + token_type)
        hidden = x.shape[1]
        head_dim = hidden // self._heads

        def padded(t: torch.Tensor) -> torch.Tensor:
            view = t.new_zeros(texts * longest, hidden)
            view[slot] = t
            return view.view(texts, longest, self._heads, head_dim).transpose(1, 2)

        for layer in self._bert.encoder.layer:
            att = layer.attention
            q, k, v = (padded(proj(x)) for proj in (att.self.query, att.self.key, att.self.value))
            context = functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            context = context.transpose(1, 2).reshape(texts * longest, hidden)[slot]
            x = att.output.LayerNorm(att.output.dense(context) + x)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(inner) + x)
        pooled = x.new_zeros(texts, hidden).index_add_(0, owner, x) / lengths[:, None].to(x.dtype)
        return functional.normalize(pooled, dim=1)


def _unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot run unpadded, or ``None`` when it can."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    modules = list(model) if isinstance(model, torch.nn.Sequential) else []
    if len(modules) not in (2, 3) or not isinstance(modules[0], Transformer):
        return "expected a sentence-transformers Transformer, Pooling and optional Normalize"
    if not isinstance(modules[1], Pooling) or modules[1].pooling_mode != "mean":
        return "only mean pooling is supported"
    if len(modules) == 3 and not isinstance(modules[2], Normalize):
        return f"unexpected module {type(modules[2]).__name__} after pooling"
    bert = modules[0].auto_model
    if type(bert) is not BertModel:
        return f"the transformer is a {type(bert).__name__}, not a BertModel"
    config = bert.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or config.is_decoder:
        return "only encoders with absolute position embeddings are supported"
    if model.tokenizer is None:
        return "the model has no tokenizer"
    for layer in bert.encoder.layer:
        linears = (
            layer.attention.self.query,
            layer.attention.self.key,
            layer.attention.self.value,
            layer.attention.output.dense,
            layer.intermediate.dense,
            layer.output.dense,
        )
        if any(type(lin) is not torch.nn.Linear for lin in linears):
            return "a layer's projections are wrapped (e.g. unmerged LoRA adapters)"
    return None
