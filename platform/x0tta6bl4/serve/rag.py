"""The runbook retrieval deployment: batched embedding, hnswlib search, semantic cache, durable ingest."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import torch
from ray import serve

from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.observability import tracing
from x0tta6bl4.serve._private.batching import ThreadBatcher
from x0tta6bl4.serve._private.priority import ComputePriority
from x0tta6bl4.serve.config import RagConfig

log = logging.getLogger(__name__)


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

    Its methods raise the retriever's typed errors (``RetrievalInputError``, a ``ConfigError``,
    for bad input; other ``X0tta6bl4Error`` subclasses when the store cannot be read or written);
    the gateway turns them into HTTP answers.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        from x0tta6bl4.rag.config import RetrieverConfig
        from x0tta6bl4.rag.retriever import Retriever

        torch.set_num_threads(1)
        tracing.setup_tracing("rag")
        self.config = RagConfig.model_validate(config)
        self.retriever = Retriever.open(RetrieverConfig.model_validate(self.config.retriever))
        self._priority = ComputePriority(self.config.compute_nice)
        # Queries are embedded on a thread of their own, which sets its own priority when it starts.
        self._batcher: ThreadBatcher[tuple[str, int, bool], dict[str, Any]] = ThreadBatcher(
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

    async def query(
        self, text: str, k: int = 3, use_cache: bool = True, trace: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Passages, fault type, action and ``corpus_version`` for one incident.

        Exact repeats come from the cache here, without waiting for a batch. ``trace``: the
        caller's W3C trace context, continued by this call's ``rag.query`` span.

        Raises:
            RetrievalInputError: an invalid query or ``k``.
            X0tta6bl4Error: the store cannot be read.
        """
        with tracing.span("rag.query", {"k": k, "use_cache": use_cache}, parent=trace):
            self.retriever.check_query(text, k)
            if use_cache:
                self._refresh()
                version = self.retriever.corpus_version  # read first: an old answer never carries a new one
                cached = self.retriever.cached(text, k)
                if cached is not None:
                    return {**cached.to_dict(), "corpus_version": version}
            return await self._batcher.submit((text, k, use_cache))

    async def query_many(self, items: list[tuple[Any, ...]]) -> list[dict[str, Any] | BaseException]:
        """Answer ``(text, k, use_cache)`` queries in one call: per query, what :meth:`query` gives.

        The gateway batches concurrent HTTP requests into such calls and keeps several in
        flight; the queries of every call that arrives while a batch embeds join the next batch
        (the replica's greedy batcher), so the split of a closed loop of clients is two-way
        (running, waiting here) rather than three-way (also waiting at the gateway).

        A fourth item, ``(text, k, use_cache, trace)``, is the query's W3C trace context (its HTTP
        request's), continued by its ``rag.query`` span.

        Returns:
            Per query, its answer or the exception it raised (which fails that query alone).
        """
        return await asyncio.gather(*(self._query_batched(item) for item in items), return_exceptions=True)

    async def _query_batched(self, item: tuple[Any, ...]) -> dict[str, Any]:
        """One query of :meth:`query_many`: checked here, then answered in the next batch."""
        text, k, use_cache = item[:3]
        with tracing.span(
            "rag.query", {"k": k, "use_cache": use_cache}, parent=item[3] if len(item) > 3 else None
        ):
            self.retriever.check_query(text, k)
            return await self._batcher.submit((text, k, use_cache))

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

    def _answer_batch(self, items: list[tuple[str, int, bool]]) -> list[dict[str, Any] | BaseException]:
        """One batch of queries, answered on the embedding thread: an answer or a typed error each."""
        self._refresh()
        version = self.retriever.corpus_version
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, (_, k, use_cache) in enumerate(items):
            groups[(k, use_cache)].append(i)
        unanswered = RuntimeError("the retriever returned no answer for this query")
        out: list[dict[str, Any] | BaseException] = [unanswered] * len(items)
        for (k, use_cache), positions in groups.items():
            try:
                results = self.retriever.query_batch([items[i][0] for i in positions], k, use_cache=use_cache)
            except X0tta6bl4Error as exc:
                for i in positions:
                    out[i] = exc
                continue
            for i, result in zip(positions, results, strict=False):
                out[i] = {**result.to_dict(), "corpus_version": version}
        return out

    async def ingest(self, documents: list[dict[str, Any]]) -> dict[str, Any]:
        """Add documents; answers only after they are on disk.

        Raises:
            RetrievalInputError: no documents, or an invalid one (nothing is stored).
            X0tta6bl4Error: the store cannot be written.
        """
        added = await asyncio.to_thread(self.retriever.ingest, documents)
        stats = self.retriever.stats()
        return {
            "documents": added["added"],
            "chunks": added["chunks"],
            "total_documents": stats["documents"],
            "corpus_version": stats["corpus_version"],
        }

    async def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The verified signature records of these documents (the controller checks them again)."""
        await asyncio.to_thread(self._refresh)
        return self.retriever.signatures(doc_ids[:64])

    def stats(self) -> dict[str, Any]:
        """Corpus, index and cache statistics, and how well this replica's queries were batched."""
        stats: dict[str, Any] = self.retriever.stats()
        stats["batching"] = {
            "batches": self._batcher.batches,
            "mean_batch_size": self._batcher.mean_batch_size,
        }
        stats["compute_thread"] = self._priority.describe()
        return stats
