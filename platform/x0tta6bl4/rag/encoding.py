"""Query and chunk embedding in the cheapest forward passes the embedder allows."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.models.unpadded import UnpaddedBertEncoder, UnsupportedEmbedderError

F32 = npt.NDArray[np.float32]

log = logging.getLogger(__name__)


def plan_passes(lengths: Sequence[int], max_rows: int, pass_overhead_tokens: int) -> list[list[int]]:
    """Split texts of the given token lengths into the padded forward passes that cost least.

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


class BatchEncoder:
    """Unit-normalised embeddings of a batch of texts, computed the fastest way the model allows.

    A mean-pooled BERT embedder (all-MiniLM-L6-v2 and its LoRA-merged versions) runs without
    padding (:class:`~x0tta6bl4.models.unpadded.UnpaddedBertEncoder`): one pass per
    ``max_texts_per_pass`` texts whatever their lengths. Any other sentence-transformers model
    runs through its own padded ``encode``, in the length-sorted passes :func:`plan_passes` picks.

    Args:
        model: a loaded ``SentenceTransformer``.
        max_texts_per_pass: most texts in one forward pass.
        pass_overhead_tokens: fixed cost of a padded pass in padded tokens (padded path only).
        unpadded: use the padding-free path when the model supports it (default ``True``).
    """

    def __init__(
        self, model: Any, max_texts_per_pass: int, pass_overhead_tokens: int, unpadded: bool = True
    ) -> None:
        if max_texts_per_pass < 1 or pass_overhead_tokens < 0:
            raise ValueError(
                "need max_texts_per_pass >= 1 and pass_overhead_tokens >= 0, got "
                f"{max_texts_per_pass}, {pass_overhead_tokens}"
            )
        self.model = model
        self.dimension = int(model.get_embedding_dimension())
        self.max_texts_per_pass = max_texts_per_pass
        self.pass_overhead_tokens = pass_overhead_tokens
        self._count_lock = threading.Lock()
        self._texts = 0
        self._passes = 0
        self._unpadded: UnpaddedBertEncoder | None = None
        self._why_padded = "disabled by configuration"
        if unpadded:
            try:
                self._unpadded = UnpaddedBertEncoder(model)
            except UnsupportedEmbedderError as exc:
                self._why_padded = str(exc)
                log.info("embedding with padded passes: %s", exc)

    def describe(self) -> dict[str, Any]:
        """How texts are embedded and how many were: ``unpadded``, ``why_padded`` (``None`` when
        unpadded), ``max_texts_per_pass``, ``texts_embedded`` and ``forward_passes``."""
        with self._count_lock:
            texts, passes = self._texts, self._passes
        return {
            "unpadded": self._unpadded is not None,
            "why_padded": None if self._unpadded is not None else self._why_padded,
            "max_texts_per_pass": self.max_texts_per_pass,
            "texts_embedded": texts,
            "forward_passes": passes,
        }

    def _count(self, texts: int, passes: int) -> None:
        with self._count_lock:
            self._texts += texts
            self._passes += passes

    def encode(self, texts: Sequence[str]) -> F32:
        """Embeddings of ``texts``, one row each, in order.

        Shapes:
            ``[len(texts), dimension]`` float32, rows of unit length.
        """
        if self._unpadded is not None:
            vectors = self._unpadded.encode(texts, self.max_texts_per_pass)
            self._count(len(texts), -(-len(texts) // self.max_texts_per_pass))
            return vectors
        out = np.zeros((len(texts), self.dimension), np.float32)
        if not texts:
            return out
        # Token counts only (no tensors, no masks); encode() tokenizes each pass again, which
        # costs about 2 % of the pass and keeps sentence-transformers' own pooling and truncation.
        lengths = [
            len(ids)
            for ids in self.model.tokenizer(
                list(texts),
                truncation=True,
                max_length=self.model.max_seq_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
        ]
        passes = plan_passes(lengths, self.max_texts_per_pass, self.pass_overhead_tokens)
        for rows in passes:
            vectors = self.model.encode(
                [texts[i] for i in rows],
                batch_size=len(rows),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            out[rows] = np.asarray(vectors, dtype=np.float32).reshape(len(rows), self.dimension)
        self._count(len(texts), len(passes))
        return out
