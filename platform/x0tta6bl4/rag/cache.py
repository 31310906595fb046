"""Semantic query cache: exact match on normalised text, then cosine match on embeddings; LRU + TTL."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.observability.metrics import metric

F32 = npt.NDArray[np.float32]
#: Lookups by tier (exact, semantic; the gateway adds edge) and result.
_LOOKUPS = metric("rag_cache_lookups")


class CacheConfig(BaseModel):
    """Settings of the retriever's semantic cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="cache query results at all")
    max_entries: int = Field(
        default=1000, ge=1, description="entries kept; the least recently used goes first"
    )
    ttl_s: float = Field(default=3600.0, gt=0, description="seconds an entry lives after it was stored")
    similarity_threshold: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="cosine similarity of query embeddings at or above which a cached result is reused",
    )


def normalise_query(text: str) -> str:
    """Lower-case, whitespace-collapsed text: the form exact matching compares."""
    return " ".join(text.lower().split())


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """What a cached value answers: the normalised query text plus the caller's other key parts.

    Args:
        digest: SHA-256 of the normalised text and ``scope`` (the exact-match key).
        scope: the non-text key parts (e.g. ``k``); semantic matches only reuse entries of the same scope.
    """

    digest: str
    scope: tuple[Hashable, ...]

    @classmethod
    def of(cls, text: str, *parts: Hashable) -> CacheKey:
        """The key of ``text`` with extra key parts (e.g. ``CacheKey.of(query, k)``)."""
        raw = repr((normalise_query(text), parts)).encode("utf-8")
        return cls(hashlib.sha256(raw).hexdigest(), tuple(parts))


@dataclasses.dataclass
class _Entry:
    slot: int
    value: Any
    expires: float


class SemanticCache:
    """A thread-safe LRU cache with TTL, looked up by exact key or by embedding similarity.

    Embeddings of cached queries sit in one ``[max_entries, dim]`` matrix, so a semantic
    lookup is one matrix–vector product (microseconds for 1,000 entries).

    Args:
        config: size, TTL, threshold.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, config: CacheConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or CacheConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._matrix: F32 | None = None
        self._expires = np.full(self.config.max_entries, -np.inf)
        self._scopes = np.full(self.config.max_entries, -1, dtype=np.int64)
        self._digests: list[str | None] = [None] * self.config.max_entries
        self._scope_ids: dict[tuple[Hashable, ...], int] = {}
        self._free = list(range(self.config.max_entries - 1, -1, -1))
        self._counts = dict.fromkeys(("hits_exact", "hits_semantic", "misses", "evictions", "expirations"), 0)

    def __len__(self) -> int:
        return len(self._entries)

    def get_exact(self, key: CacheKey, count_miss: bool = False) -> Any | None:
        """The value stored under exactly ``key`` (no embedding needed), or ``None``.

        Args:
            key: the query's key.
            count_miss: count a miss in :meth:`stats` (leave False when :meth:`get_similar` follows).
        """
        if not self.config.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key.digest)
            if entry is not None and entry.expires <= self._clock():
                self._drop(key.digest, expired=True)
                entry = None
            if entry is None:
                self._counts["misses"] += count_miss
                return None
            self._entries.move_to_end(key.digest)
            self._counts["hits_exact"] += 1
            return entry.value

    def get_similar(self, key: CacheKey, embedding: npt.ArrayLike) -> Any | None:
        """The value of the most similar live entry of the same scope, if at least the threshold.

        Checks the exact key first, so it can be the only lookup.

        Shapes:
            embedding: ``[dim]``.
        """
        if not self.config.enabled:
            return None
        vec = _unit(embedding)
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key.digest)
            if entry is not None and entry.expires > now:
                self._entries.move_to_end(key.digest)
                self._counts["hits_exact"] += 1
                return entry.value
            scope = self._scope_ids.get(key.scope)
            if scope is not None and self._matrix is not None and vec.shape[0] == self._matrix.shape[1]:
                sims = self._matrix @ vec
                sims[(self._scopes != scope) | (self._expires <= now)] = -np.inf
                best = int(np.argmax(sims))
                if sims[best] >= self.config.similarity_threshold:
                    digest = self._digests[best]
                    assert digest is not None
                    self._entries.move_to_end(digest)
                    self._counts["hits_semantic"] += 1
                    return self._entries[digest].value
            self._counts["misses"] += 1
            return None

    def put(self, key: CacheKey, embedding: npt.ArrayLike | None, value: Any) -> None:
        """Store ``value`` under ``key`` and its embedding; evicts expired, then least recently used entries.

        Args:
            key: the query's key.
            embedding: the query's embedding; ``None`` stores it for exact lookups only.
            value: what to return on a hit.

        Shapes:
            embedding: ``[dim]``; every stored embedding must have the same ``dim``.

        Raises:
            ConfigError: an embedding of another dimension than the cached ones.
        """
        if not self.config.enabled:
            return
        vec = None if embedding is None else _unit(embedding)
        with self._lock:
            if vec is not None:
                if self._matrix is None:
                    self._matrix = np.zeros((self.config.max_entries, vec.shape[0]), np.float32)
                elif vec.shape[0] != self._matrix.shape[1]:
                    raise ConfigError(
                        f"embedding has dim {vec.shape[0]}, the cache holds dim {self._matrix.shape[1]}"
                    )
            now = self._clock()
            if key.digest in self._entries:
                self._drop(key.digest, expired=False)
            if not self._free:
                self._purge_expired(now)
            if not self._free:
                oldest = next(iter(self._entries))
                self._drop(oldest, expired=False)
                self._counts["evictions"] += 1
            slot = self._free.pop()
            scope = self._scope_ids.setdefault(key.scope, len(self._scope_ids))
            expires = now + self.config.ttl_s
            self._entries[key.digest] = _Entry(slot, value, expires)
            self._digests[slot] = key.digest
            if self._matrix is not None:
                self._matrix[slot] = 0.0 if vec is None else vec
            self._scopes[slot] = scope if vec is not None else -1
            self._expires[slot] = expires

    def clear(self) -> None:
        """Drop every entry (statistics are kept)."""
        with self._lock:
            for digest in list(self._entries):
                self._drop(digest, expired=False)

    def stats(self) -> dict[str, float]:
        """Counters: ``hits_exact``, ``hits_semantic``, ``misses``, ``hit_rate``, ``size``, ``evictions``,
        ``expirations``."""
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self._counts.items()}
            lookups = out["hits_exact"] + out["hits_semantic"] + out["misses"]
            out["hit_rate"] = (out["hits_exact"] + out["hits_semantic"]) / lookups if lookups else 0.0
            out["size"] = float(len(self._entries))
            return out

    def _drop(self, digest: str, expired: bool) -> None:
        entry = self._entries.pop(digest)
        self._digests[entry.slot] = None
        self._scopes[entry.slot] = -1
        self._expires[entry.slot] = -np.inf
        self._free.append(entry.slot)
        self._counts["expirations"] += expired

    def _purge_expired(self, now: float) -> None:
        for digest in [d for d, e in self._entries.items() if e.expires <= now]:
            self._drop(digest, expired=True)


def _unit(embedding: npt.ArrayLike) -> F32:
    vec = np.asarray(embedding, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        raise ConfigError("a cache embedding must be finite and non-zero")
    out: F32 = vec / np.float32(norm)
    return out


def count_lookups(queries: int, exact_hits: int, semantic_hits: int) -> None:
    """Export a batch's cache lookups: every query tries the exact tier, its misses the semantic one."""
    lookups = _LOOKUPS
    lookups.inc(exact_hits, tags={"tier": "exact", "result": "hit"})
    lookups.inc(queries - exact_hits, tags={"tier": "exact", "result": "miss"})
    lookups.inc(semantic_hits, tags={"tier": "semantic", "result": "hit"})
    lookups.inc(queries - exact_hits - semantic_hits, tags={"tier": "semantic", "result": "miss"})
