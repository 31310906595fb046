"""The runbook retrieval deployment: batched embedding, hnswlib search, semantic cache, durable ingest."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import torch
from ray import serve

from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.serve.config import RagConfig

log = logging.getLogger(__name__)

Answer = tuple[int, dict[str, Any]]


def _refusal(exc: Exception) -> Answer:
    """Bad input is a 422; a store that cannot be read or written is the service's fault (503)."""
    from x0tta6bl4.errors import ConfigError

    if isinstance(exc, ConfigError):
        return 422, {"error": "invalid_request", "message": str(exc), "details": []}
    return 503, {"error": "store_unavailable", "message": str(exc), "details": []}


@serve.deployment(
    name="RunbookRetriever",
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=10.0,
    health_check_timeout_s=30.0,
    graceful_shutdown_timeout_s=10.0,
)
class RunbookRetriever:
    """Serve deployment around :class:`~x0tta6bl4.rag.retriever.Retriever`.

    Concurrent queries are embedded together (``@serve.batch``); exact repeats are answered
    from the cache without embedding. The index and ingested documents live in the
    retriever's ``data_dir``, so a restarted replica reopens them.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        from x0tta6bl4.rag.retriever import Retriever, RetrieverConfig

        torch.set_num_threads(1)
        self.config = RagConfig.model_validate(config)
        self.retriever = Retriever.open(RetrieverConfig.model_validate(self.config.retriever))
        self._batched.set_max_batch_size(self.config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    def check_health(self) -> None:
        """The index answers a lookup (raises if the replica lost it)."""
        self.retriever.stats()

    async def query(self, text: str, k: int = 3, use_cache: bool = True) -> Answer:
        """Passages, fault type and action for one incident, or a 4xx refusal.

        Exact repeats come from the cache here, without waiting for a batch.
        """
        try:
            self.retriever.check_query(text, k)
        except X0tta6bl4Error as exc:
            return _refusal(exc)
        if use_cache:
            cached = self.retriever.cached(text, k)
            if cached is not None:
                return 200, cached.to_dict()
        answer: Answer = await self._batched((text, k, use_cache))
        return answer

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)  # type: ignore[untyped-decorator]
    async def _batched(self, items: list[tuple[str, int, bool]]) -> list[Answer]:
        # Deliberately on the replica's event loop rather than in a worker thread: while a batch
        # is embedded, new requests wait in Serve's queue and all of them form the next batch.
        # In a worker thread the embedding starved the loop of the GIL, requests trickled in one
        # at a time, and batches of 1-3 queries halved the throughput (bench serve).
        return self._answer_all(items)

    def _answer_all(self, items: list[tuple[str, int, bool]]) -> list[Answer]:
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, (_, k, use_cache) in enumerate(items):
            groups[(k, use_cache)].append(i)
        out: list[Answer] = [(500, {})] * len(items)
        for (k, use_cache), positions in groups.items():
            try:
                results = self.retriever.query_batch([items[i][0] for i in positions], k, use_cache=use_cache)
            except X0tta6bl4Error as exc:
                for i in positions:
                    out[i] = _refusal(exc)
                continue
            for i, result in zip(positions, results, strict=False):
                out[i] = (200, result.to_dict())
        return out

    async def ingest(self, documents: list[dict[str, Any]]) -> Answer:
        """Add documents; answers only after they are on disk."""
        try:
            added = await asyncio.to_thread(self.retriever.ingest, documents)
        except X0tta6bl4Error as exc:
            return _refusal(exc)
        stats = self.retriever.stats()
        return 200, {
            "documents": added["added"],
            "chunks": added["chunks"],
            "total_documents": stats["documents"],
        }

    def stats(self) -> dict[str, Any]:
        """Corpus, index and cache statistics."""
        stats: dict[str, Any] = self.retriever.stats()
        return stats
