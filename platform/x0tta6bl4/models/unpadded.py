"""Padding-free CPU inference for mean-pooled BERT sentence embedders (same vectors, no pad tokens)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from x0tta6bl4.errors import ConfigError

F32 = npt.NDArray[np.float32]


def plan_passes(lengths: Sequence[int], max_rows: int, pass_overhead_tokens: int) -> list[list[int]]:
    """Split texts of the given token lengths into the padded groups (passes) that cost least.

    A pass of ``r`` texts whose longest has ``L`` tokens costs ``pass_overhead_tokens + r * L``
    (every text is padded to ``L``). The cheapest split takes runs of the length-sorted texts;
    dynamic programming over the cut points finds it exactly.

    Args:
        lengths: token count of each text (padding excluded).
        max_rows: most texts in one pass.
        pass_overhead_tokens: fixed cost of a pass, in padded tokens (``0``: split by length alone).

    Returns:
        The passes, as lists of indices into ``lengths``, shortest texts first; every index once.
    """
    if max_rows < 1 or pass_overhead_tokens < 0:
        raise ValueError(
            f"need max_rows >= 1 and pass_overhead_tokens >= 0, got {max_rows}, {pass_overhead_tokens}"
        )
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    cost = [0.0] + [math.inf] * n  # cost[j]: cheapest passes over the j shortest texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - max_rows), j):
            c = cost[i] + pass_overhead_tokens + (j - i) * longest
            if c < cost[j]:
                cost[j], cut[j] = c, i
    passes: list[list[int]] = []
    j = n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


def token_ids(model: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text under a sentence-transformers ``model``'s tokenizer and ``max_seq_length``.

    Ids only (no tensors, no masks): what the unpadded pass consumes, and what padded passes are
    planned from.
    """
    ids: list[list[int]] = model.tokenizer(
        list(texts),
        truncation=True,
        max_length=model.max_seq_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    return ids


class UnsupportedEmbedderError(ConfigError):
    """The model is not a mean-pooled BERT sentence embedder that :class:`UnpaddedBertEncoder` can run."""


class UnpaddedBertEncoder:
    """Unit-normalised sentence embeddings of a BERT model, computed without padding.

    A padded forward pass pads every text of a batch to the longest, and every layer then works
    on the pad tokens too. Every BERT layer except attention acts token by token, so here the
    embeddings, projections, feed-forward blocks and layer norms run on the ``[tokens, hidden]``
    concatenation of the batch's texts; only attention gathers its inputs into padded
    ``[texts, heads, longest, head_dim]`` views with a key mask, and the real tokens back. The
    texts are sorted by length and attention runs on the groups :func:`plan_passes` picks, so a
    few long texts do not pad all the short ones (docs/performance.md has what each saves). Mean
    pooling sums each text's tokens. sentence-transformers unpads only through FlashAttention-2's
    variable-length kernels, which need CUDA.

    The weights are read from the model at every call, so the model may be changed in between
    (a LoRA merge, a loaded state dict). The result equals ``model.encode(...,
    normalize_embeddings=True)`` up to float summation order (cosine 1 to 6 digits).

    Args:
        model: a loaded ``SentenceTransformer`` made of a ``Transformer`` over a ``BertModel``
            with absolute position embeddings and plain ``nn.Linear`` layers, a mean
            ``Pooling``, and optionally ``Normalize``.
        attention_group_overhead_tokens: fixed cost of one more attention group, in padded
            tokens (default ``40``; docs/performance.md says how it was chosen).

    Raises:
        UnsupportedEmbedderError: any other architecture, pooling or module stack (for example
            adapter-wrapped projections, which need the model's own forward).
    """

    def __init__(self, model: Any, attention_group_overhead_tokens: int = 40) -> None:
        reason = _unsupported_reason(model)
        if reason is not None:
            raise UnsupportedEmbedderError(f"cannot run the embedder unpadded: {reason}")
        if attention_group_overhead_tokens < 0:
            raise ValueError(
                f"need attention_group_overhead_tokens >= 0, got {attention_group_overhead_tokens}"
            )
        self.model = model
        self.attention_group_overhead_tokens = attention_group_overhead_tokens
        self._bert: Any = model[0].auto_model
        self._heads = int(self._bert.config.num_attention_heads)

    @property
    def dimension(self) -> int:
        """Length of one embedding."""
        return int(self._bert.config.hidden_size)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, truncated to the model's ``max_seq_length`` as ``encode`` does."""
        return token_ids(self.model, texts)

    @staticmethod
    def passes(count: int, max_texts_per_pass: int) -> int:
        """Forward passes :meth:`encode` makes for ``count`` texts: ``ceil(count / max_texts_per_pass)``."""
        return -(-count // max_texts_per_pass)

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
        passes = self.passes(len(order), max_texts_per_pass)
        bounds = np.linspace(0, len(order), passes + 1).round().astype(int)
        for start, stop in itertools.pairwise(bounds.tolist()):
            rows = order[start:stop]
            out[rows] = self.forward([ids[i] for i in rows]).numpy()
        return out

    @torch.inference_mode()
    def forward(self, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """One pass over already tokenized texts: their unit-normalised mean-pooled embeddings.

        Shapes:
            ``[len(token_ids), dimension]``, in the order of ``token_ids``.
        """
        if not token_ids:
            return torch.zeros(0, self.dimension)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        lengths = torch.tensor([len(token_ids[i]) for i in order])
        texts = len(order)
        ids = torch.tensor([t for i in order for t in token_ids[i]])
        starts = torch.cumsum(lengths, 0) - lengths  # first token of each text
        positions = torch.arange(ids.numel()) - torch.repeat_interleave(starts, lengths)
        owner = torch.repeat_interleave(torch.arange(texts), lengths)  # text of each token
        groups = [
            _AttentionGroup(g[0], g[-1] + 1, lengths, starts, owner, positions)
            for g in plan_passes(lengths.tolist(), texts, self.attention_group_overhead_tokens)
        ]
        emb = self._bert.embeddings
        token_type = emb.token_type_embeddings.weight[0]  # single-segment input: type 0 everywhere
        x = emb.LayerNorm(emb.word_embeddings(ids) + emb.position_embeddings(positions) + token_type)
        for layer in self._bert.encoder.layer:
            att = layer.attention
            q, k, v = att.self.query(x), att.self.key(x), att.self.value(x)
            parts = [group.attend(q, k, v, self._heads) for group in groups]
            context = parts[0] if len(parts) == 1 else torch.cat(parts)
            x = att.output.LayerNorm(att.output.dense(context) + x)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(inner) + x)
        pooled = x.new_zeros(texts, x.shape[1]).index_add_(0, owner, x) / lengths[:, None].to(x.dtype)
        out = torch.empty_like(pooled)
        out[order] = functional.normalize(pooled, dim=1)
        return out


class _AttentionGroup:
    """Texts ``first..stop-1`` (length-sorted, tokens contiguous) attended in one padded view."""

    def __init__(
        self,
        first: int,
        stop: int,
        lengths: torch.Tensor,
        starts: torch.Tensor,
        owner: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        self.texts = stop - first
        self.longest = int(lengths[stop - 1])
        grid = torch.arange(self.longest)[None, :]
        valid = grid < lengths[first:stop, None]
        # Padded slot -> token; pad slots read the group's first token (masked as keys, dropped as queries).
        self.gather = torch.where(valid, starts[first:stop, None] + grid, starts[first]).reshape(-1)
        tokens = slice(int(starts[first]), int(starts[stop - 1] + lengths[stop - 1]))
        self.slot = (owner[tokens] - first) * self.longest + positions[tokens]  # token -> padded slot
        self.key_mask = valid[:, None, None, :]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention outputs of this group's tokens, ``[tokens, hidden]``."""
        hidden = q.shape[1]

        def padded(t: torch.Tensor) -> torch.Tensor:
            return t[self.gather].view(self.texts, self.longest, heads, hidden // heads).transpose(1, 2)

        context = functional.scaled_dot_product_attention(
            padded(q), padded(k), padded(v), attn_mask=self.key_mask
        )
        return context.transpose(1, 2).reshape(self.texts * self.longest, hidden)[self.slot]


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
