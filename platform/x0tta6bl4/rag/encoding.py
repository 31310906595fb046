"""Query and chunk embedding in the cheapest forward passes the embedder allows."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.models.embedder import encode_unit
from x0tta6bl4.models.unpadded import UnpaddedBertEncoder, UnsupportedEmbedderError, plan_passes, token_ids

F32 = npt.NDArray[np.float32]

log = logging.getLogger(__name__)


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
            self._count(len(texts), self._unpadded.passes(len(texts), self.max_texts_per_pass))
            return vectors
        out = np.zeros((len(texts), self.dimension), np.float32)
        if not texts:
            return out
        # Token counts only; encode() tokenizes each pass again, a small share of the pass that
        # keeps sentence-transformers' own pooling and truncation.
        lengths = [len(ids) for ids in token_ids(self.model, texts)]
        passes = plan_passes(lengths, self.max_texts_per_pass, self.pass_overhead_tokens)
        for rows in passes:
            vectors = encode_unit(self.model, [texts[i] for i in rows], batch_size=len(rows))
            out[rows] = vectors.reshape(len(rows), self.dimension)
        self._count(len(texts), len(passes))
        return out
