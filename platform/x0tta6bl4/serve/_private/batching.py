"""Greedy dynamic batching: the next batch is everything that queued while the previous one ran."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GreedyBatcher(Generic[T, R]):
    """Runs ``handler`` on batches of submitted items, at most ``max_concurrent_batches`` at a time.

    Why not ``@serve.batch``: in Ray 2.55 it forms a batch every ``batch_wait_timeout_s``
    and queues it behind the running one, so a saturated replica works through many small
    batches (1-4 queries per batch measured by ``bench serve``). Here a batch is formed only
    when the handler is free, from what queued meanwhile (up to ``max_batch_size``). Items may
    join until ``wait_s`` after the first one arrived: an idle batcher waits that long for
    near-simultaneous items, a busy one, whose first item queued long ago, does not wait.

    When the handler forwards the batch to another process, a second batch in flight keeps
    that process busy while the first batch's results travel back (``max_concurrent_batches=2``).

    Args:
        handler: async function from a list of items to a list of results of the same length.
        max_batch_size: most items per call of ``handler``.
        wait_s: how long after the first item's arrival more items may join its batch.
        max_concurrent_batches: handler calls in flight at once (default ``1``).
    """

    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[list[R]]],
        max_batch_size: int,
        wait_s: float,
        max_concurrent_batches: int = 1,
    ) -> None:
        if max_batch_size < 1 or wait_s < 0 or max_concurrent_batches < 1:
            raise ValueError(
                "need max_batch_size >= 1, wait_s >= 0 and max_concurrent_batches >= 1, got "
                f"{max_batch_size}, {wait_s}, {max_concurrent_batches}"
            )
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_concurrent_batches = max_concurrent_batches
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The handler's result for ``item``, computed in a batch with the items queued beside it.

        Raises:
            Exception: whatever the handler raised for the batch ``item`` was in.
        """
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(self._queue))
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait((item, future, loop.time()))
        return await future

    @property
    def mean_batch_size(self) -> float:
        """Items per handler call so far (0 before the first)."""
        return self.items / self.batches if self.batches else 0.0

    async def _work(self, queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]]) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.max_concurrent_batches)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()  # form the next batch only when a handler call is free
                batch = [await queue.get()]
                deadline = batch[0][2] + self.wait_s  # from the first item's arrival, not from now
                while len(batch) < self.max_batch_size:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
                live = [(item, future) for item, future, _ in batch if not future.done()]  # callers gone
                if not live:
                    slots.release()
                    continue
                self.batches += 1
                self.items += len(live)
                task = loop.create_task(self._run(live))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            for task in running:
                task.cancel()

    async def _run(self, live: list[tuple[T, asyncio.Future[R]]]) -> None:
        """One handler call; its results (or its exception) go to the batch's callers."""
        try:
            results = await self.handler([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(live)} items")
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:
            log.warning("a batch of %d failed: %s", len(live), exc)
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)
