"""The runbook retrieval deployment: batched embedding, hnswlib search, semantic cache, durable ingest."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import torch
from ray import serve

from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.serve._private.batching import ThreadBatcher
from x0tta6bl4.serve._private.priority import ComputePriority
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

    Concurrent queries are embedded together (greedy batches); exact repeats are answered
    from the cache without embedding. The index and ingested documents live in the
    retriever's ``data_dir``, so a restarted replica reopens them.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        from x0tta6bl4.rag.retriever import Retriever, RetrieverConfig

        torch.set_num_threads(1)
        self.config = RagConfig.model_validate(config)
        self.retriever = Retriever.open(RetrieverConfig.model_validate(self.config.retriever))
        self._priority = ComputePriority(self.config.compute_nice)
        # Queries are embedded on a thread of their own, which sets its own priority when it starts.
        self._batcher: ThreadBatcher[tuple[str, int, bool], Answer] = ThreadBatcher(
            self._answer_batch,
            self.config.max_batch_size,
            self.config.batch_wait_timeout_s,
            name="x0-embed",
            on_start=self._priority.apply,
        )

    def __del__(self) -> None:
        # Serve calls this on shutdown, after the ongoing requests drained.
        batcher = getattr(self, "_batcher", None)  # absent when __init__ failed
        if batcher is not None:
            batcher.close(timeout_s=5.0)

    def check_health(self) -> None:
        """The index answers a lookup (raises if the replica lost it)."""
        self.retriever.stats()

    async def query(self, text: str, k: int = 3, use_cache: bool = True) -> Answer:
        """Passages, fault type, action and ``corpus_version`` for one incident, or a 4xx refusal.

        Exact repeats come from the cache here, without waiting for a batch.
        """
        try:
            self.retriever.check_query(text, k)
        except X0tta6bl4Error as exc:
            return _refusal(exc)
        if use_cache:
            self._refresh()
            version = self.retriever.corpus_version  # read first: an old answer never carries a new version
            cached = self.retriever.cached(text, k)
            if cached is not None:
                return 200, {**cached.to_dict(), "corpus_version": version}
        return await self._batcher.submit((text, k, use_cache))

    async def query_many(self, items: list[tuple[str, int, bool]]) -> tuple[int, list[Answer]]:
        """Answer ``(text, k, use_cache)`` queries in one call: ``(200, one answer or refusal each)``.

        The gateway batches concurrent HTTP requests into such calls and keeps several in
        flight; the queries of every call that arrives while a batch embeds join the next batch
        (the replica's greedy batcher), so the split of a closed loop of clients is two-way
        (running, waiting here) rather than three-way (also waiting at the gateway).
        """
        out: list[Answer] = []
        valid: list[int] = []
        for i, (text, k, _) in enumerate(items):
            try:
                self.retriever.check_query(text, k)
            except X0tta6bl4Error as exc:
                out.append(_refusal(exc))
                continue
            out.append((500, {}))
            valid.append(i)
        if valid:
            answers = await asyncio.gather(*(self._batcher.submit(items[i]) for i in valid))
            for i, answer in zip(valid, answers, strict=True):
                out[i] = answer
        return 200, out

    async def corpus_version(self) -> int:
        """The corpus version after picking up ingests made through other replicas."""
        await asyncio.to_thread(self._refresh)
        return self.retriever.corpus_version

    def _refresh(self) -> None:
        """Load what other replicas ingested into the shared store (one ``stat`` when nothing did)."""
        try:
            self.retriever.refresh()
        except X0tta6bl4Error as exc:  # keep answering from what is loaded
            log.warning("reloading the runbook store failed: %s", exc)

    def _answer_batch(self, items: list[tuple[str, int, bool]]) -> list[Answer]:
        """One batch of queries, answered on the embedding thread."""
        self._refresh()
        version = self.retriever.corpus_version
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
                out[i] = (200, {**result.to_dict(), "corpus_version": version})
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
            "corpus_version": stats["corpus_version"],
        }

    def stats(self) -> dict[str, Any]:
        """Corpus, index and cache statistics, and how well this replica's queries were batched."""
        stats: dict[str, Any] = self.retriever.stats()
        stats["batching"] = {
            "batches": self._batcher.batches,
            "mean_batch_size": self._batcher.mean_batch_size,
        }
        stats["compute_thread"] = self._priority.describe()
        return stats
