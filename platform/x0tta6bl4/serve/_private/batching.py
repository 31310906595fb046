"""Greedy dynamic batching: the next batch is everything that queued while the previous one ran."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _BatchCounts:
    """Batch size limits of a greedy batcher, and how many batches and items it has run."""

    def __init__(self, max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and wait_s >= 0, got {max_batch_size}, {wait_s}")
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.batches = 0
        self.items = 0

    @property
    def mean_batch_size(self) -> float:
        """Items per handler call so far (0 before the first)."""
        return self.items / self.batches if self.batches else 0.0

    def _count(self, items: int) -> None:
        self.batches += 1
        self.items += items


class GreedyBatcher(_BatchCounts, Generic[T, R]):
    """Runs ``handler`` on batches of submitted items, at most ``max_concurrent_batches`` at a time.

    Why not ``@serve.batch``: in Ray 2.55 it forms a batch every ``batch_wait_timeout_s``
    and queues it behind the running one, so a saturated replica works through many small
    batches (see docs/performance.md). Here a batch is formed only when the handler is free,
    from what queued meanwhile (up to ``max_batch_size``). Items may join until ``wait_s``
    after the first one arrived: an idle batcher waits that long for near-simultaneous items,
    a busy one, whose first item queued long ago, does not wait.

    When the handler forwards the batch to another process, a second batch in flight keeps
    that process busy while the first batch's results travel back (``max_concurrent_batches=2``).

    Args:
        handler: async function from a list of items to a list of results of the same length; a
            result that is an exception is raised to that item's caller alone.
        max_batch_size: most items per call of ``handler``.
        wait_s: how long after the first item's arrival more items may join its batch.
        max_concurrent_batches: handler calls in flight at once (default ``1``).
    """

    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        max_batch_size: int,
        wait_s: float,
        max_concurrent_batches: int = 1,
    ) -> None:
        super().__init__(max_batch_size, wait_s)
        if max_concurrent_batches < 1:
            raise ValueError(f"need max_concurrent_batches >= 1, got {max_concurrent_batches}")
        self.handler = handler
        self.max_concurrent_batches = max_concurrent_batches
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The handler's result for ``item``, computed in a batch with the items queued beside it.

        Raises:
            Exception: the exception the handler returned as ``item``'s result, or whatever it
                raised for the batch ``item`` was in.
        """
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(self._queue))
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait((item, future, loop.time()))
        return await future

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
                self._count(len(live))
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
            _settle(future, result)


class ThreadBatcher(_BatchCounts, Generic[T, R]):
    """Greedy batches, like :class:`GreedyBatcher`, run by a synchronous handler on its own thread.

    Why: with the model on the event loop, everything else the replica does for a batch (taking in
    the calls that arrived while it computed, sending back the answers) waits until the batch is
    done and then holds up the next one (docs/performance.md has what this cost the retriever).
    On a thread of its own the model takes the next batch the moment it finishes one, and the
    event loop does that work meanwhile, on another core (torch releases the GIL inside its
    operators).

    The thread takes everything that queued while it worked (up to ``max_batch_size``); an idle
    one waits until ``wait_s`` after its first item arrived for more to join. Results go back to
    each caller's event loop in one call per batch.

    Args:
        handler: function from a list of items to a list of results of the same length; runs on
            the batcher's thread only. A result that is an exception is raised to that item's
            caller alone.
        max_batch_size: most items per call of ``handler``.
        wait_s: how long after the first item's arrival more items may join its batch.
        name: the thread's name (shown by ``py-spy``, ``top -H`` and ``/proc``).
        on_start: called once on the new thread before its first batch (for example to set its
            priority); ``None`` for nothing.
    """

    def __init__(
        self,
        handler: Callable[[list[T]], Sequence[R | BaseException]],
        max_batch_size: int,
        wait_s: float,
        name: str = "batcher",
        on_start: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(max_batch_size, wait_s)
        self.handler = handler
        self.name = name
        self._on_start = on_start
        self._pending: collections.deque[tuple[T, asyncio.Future[R], float]] = collections.deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        """The handler's result for ``item``, computed in a batch with the items queued beside it.

        Raises:
            RuntimeError: the batcher was closed.
            Exception: the exception the handler returned as ``item``'s result, or whatever it
                raised for the batch ``item`` was in.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError(f"batcher {self.name!r} is closed")
            if self._thread is None or not self._thread.is_alive():  # first item, or the thread died
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._pending.append((item, future, time.monotonic()))
            self._ready.notify()
        return await future

    def close(self, timeout_s: float | None = None) -> None:
        """Stop taking items: queued ones are cancelled, the thread finishes its batch and ends.

        Args:
            timeout_s: how long to wait for the thread to end (``None``: until it does).
        """
        with self._ready:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._ready.notify()
        for _, future, _ in left:
            with contextlib.suppress(RuntimeError):  # that caller's loop is closed: nobody waits
                future.get_loop().call_soon_threadsafe(future.cancel)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]] | None:
        """The next batch, once there is one (``None`` when closed)."""
        with self._ready:
            while not self._pending and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            deadline = self._pending[0][2] + self.wait_s  # from the first item's arrival, not from now
            while len(self._pending) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            taken = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
        return [(item, future) for item, future, _ in taken if not future.done()]  # callers gone

    def _work(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception as exc:  # batching matters more than what on_start adds
                log.warning("%s: on_start failed: %s", self.name, exc)
        while (batch := self._take()) is not None:
            if not batch:
                continue
            self._count(len(batch))
            try:
                results = self.handler([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"handler returned {len(results)} results for {len(batch)} items")
            except Exception as exc:
                log.warning("a batch of %d failed: %s", len(batch), exc)
                _deliver(batch, None, exc)
                continue
            _deliver(batch, results, None)


def _settle(future: asyncio.Future[R], result: R | BaseException) -> None:
    """Answer one caller: its result, or the exception that is its result (unless it gave up)."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _deliver(
    batch: list[tuple[T, asyncio.Future[R]]],
    results: Sequence[R | BaseException] | None,
    error: BaseException | None,
) -> None:
    """Hand a batch's results (or its error) to the callers' event loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[int]] = {}
    for i, (_, future) in enumerate(batch):
        by_loop.setdefault(future.get_loop(), []).append(i)

    def settle(positions: list[int]) -> None:
        for i in positions:
            if results is None:
                assert error is not None
                _settle(batch[i][1], error)
            else:
                _settle(batch[i][1], results[i])

    for loop, positions in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that caller's loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, positions)
