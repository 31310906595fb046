"""The gateway's exact-repeat tier of the RAG cache: encoded answers valid for one corpus version."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from x0tta6bl4.rag.cache import CacheConfig, CacheKey, SemanticCache


class EdgeCache:
    """Encoded answers to exact repeats (same normalised text and ``k``), kept in the gateway.

    A hit here costs no hop to the retriever. Entries belong to one corpus version (see
    ``Retriever.corpus_version``): an answer computed on another version is never stored,
    and :meth:`observe` empties the cache when the version moves. Size, TTL and the on/off
    switch are the retriever's :class:`~x0tta6bl4.rag.cache.CacheConfig`, so one setting
    governs both tiers; the similarity tier stays with the retriever, which has the embeddings.

    Args:
        config: the retriever's cache settings (``similarity_threshold`` is not used here).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, config: CacheConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries = SemanticCache(config, clock)
        self.version: int | None = None
        self.invalidations = 0

    def get(self, text: str, k: int) -> bytes | None:
        """The encoded answer to this query, or ``None`` (also before any version is known)."""
        if self.version is None:
            return None
        hit: bytes | None = self._entries.get_exact(CacheKey.of(text, int(k)), count_miss=True)
        return hit

    def put(self, text: str, k: int, version: int, body: bytes) -> bool:
        """Store ``body`` if it was computed on the current corpus version; returns whether it was."""
        if version != self.version:
            return False
        self._entries.put(CacheKey.of(text, int(k)), None, body)
        return True

    def observe(self, version: int) -> None:
        """Record the corpus version; a different one than before empties the cache."""
        if version != self.version:
            if self.version is not None:
                self.invalidations += 1
            self._entries.clear()
            self.version = version

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``hit_rate``, ``size``, ``evictions``, ``expirations``, ``invalidations``
        and the ``corpus_version`` the entries belong to."""
        raw = self._entries.stats()
        return {
            "hits": int(raw["hits_exact"]),
            "misses": int(raw["misses"]),
            "hit_rate": raw["hit_rate"],
            "size": int(raw["size"]),
            "evictions": int(raw["evictions"]),
            "expirations": int(raw["expirations"]),
            "invalidations": self.invalidations,
            "corpus_version": self.version,
        }
