"""Greedy batching: a busy handler's next batch is everything that queued meanwhile; failures reach every caller.

Concurrency is ordered by events (the handler says when a batch started, the test says when it may
end) and by yielding to the event loop, never by sleeping for a guessed time.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from x0tta6bl4.serve._private.batching import GreedyBatcher, ThreadBatcher


async def settle() -> None:
    """Let every task that is ready run until it waits on something (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_items_queued_while_a_batch_runs_form_the_next_batch() -> None:
    seen: list[list[int]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        if len(seen) == 1:
            started.set()
            await release.wait()
        return [i * 10 for i in items]

    async def main() -> list[int]:
        batcher = GreedyBatcher(handler, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await started.wait()  # the first batch (one item) is running now
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await settle()  # all five are queued
        release.set()
        return list(await asyncio.gather(first, *rest))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    assert seen == [[0], [1, 2, 3, 4, 5]]


def test_batches_never_exceed_the_maximum_and_keep_the_order() -> None:
    seen: list[list[int]] = []

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        return items

    async def main() -> list[int]:
        batcher = GreedyBatcher(handler, max_batch_size=3, wait_s=0.01)
        out = list(await asyncio.gather(*(batcher.submit(i) for i in range(7))))
        assert batcher.batches == 3 and batcher.mean_batch_size == pytest.approx(7 / 3)
        return out

    assert asyncio.run(main()) == list(range(7))
    assert [len(b) for b in seen] == [3, 3, 1]
    assert [i for b in seen for i in b] == list(range(7))


def test_a_second_batch_runs_while_the_first_is_in_flight_and_the_third_waits_for_a_free_slot() -> None:
    seen: list[list[int]] = []
    started: asyncio.Queue[list[int]] = asyncio.Queue()
    release: dict[int, asyncio.Event] = {}

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        gate = release[len(seen)] = asyncio.Event()
        started.put_nowait(items)
        await gate.wait()
        return [-i for i in items]

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=8, wait_s=0.0, max_concurrent_batches=2)
        first = asyncio.ensure_future(batcher.submit(1))
        assert await started.get() == [1]
        second = asyncio.ensure_future(batcher.submit(2))
        assert await started.get() == [2]  # both in flight at once
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (3, 4, 5)]
        await settle()
        assert seen == [[1], [2]]  # no free slot: the three wait together
        release[2].set()  # the second finishes first; its caller is answered at once
        assert await second == -2
        assert await started.get() == [3, 4, 5]
        assert not first.done()
        release[1].set()
        release[3].set()
        assert await first == -1
        assert await asyncio.gather(*rest) == [-3, -4, -5]
        assert batcher.batches == 3

    asyncio.run(main())


def test_a_failed_batch_frees_its_slot_for_the_next() -> None:
    async def handler(items: list[int]) -> list[int]:
        if 0 in items:
            raise RuntimeError("boom")
        await asyncio.sleep(0.01)
        return items

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=2, wait_s=0.0, max_concurrent_batches=2)
        for _ in range(3):  # more failures than slots: a slot that leaked would hang here
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(0)
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(1, 6))), 5)
        assert answers == [1, 2, 3, 4, 5]

    asyncio.run(main())


@pytest.mark.parametrize(("wait_s", "batches"), [(60.0, [["a", "b"]]), (0.0, [["a"], ["b"]])])
def test_an_idle_batcher_waits_for_near_simultaneous_items(wait_s: float, batches: list[list[str]]) -> None:
    # "b" arrives after the batcher took "a": it joins a's batch only if the batcher waits.
    # The batch is full with two, so the one that waits does not wait out its wait_s.
    seen: list[list[str]] = []

    async def handler(items: list[str]) -> list[str]:
        seen.append(items)
        return items

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=2, wait_s=wait_s)
        first = asyncio.ensure_future(batcher.submit("a"))
        await settle()
        await asyncio.wait_for(asyncio.gather(first, batcher.submit("b")), 30)

    asyncio.run(main())
    assert seen == batches


def test_a_busy_batcher_sends_what_queued_at_once_instead_of_waiting_again() -> None:
    wait_s = 0.5
    seen: list[tuple[float, list[int]]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(items: list[int]) -> list[int]:
        seen.append((asyncio.get_running_loop().time(), items))
        if len(seen) == 1:
            started.set()
            await release.wait()
        return items

    async def main() -> float:
        loop = asyncio.get_running_loop()
        batcher = GreedyBatcher(handler, max_batch_size=3, wait_s=wait_s)
        first = asyncio.gather(*(batcher.submit(i) for i in (0, 10, 20)))  # a full batch: sent at once
        await started.wait()
        rest = asyncio.gather(batcher.submit(1), batcher.submit(2))  # queue behind the running batch
        await asyncio.sleep(wait_s)  # at least wait_s: however long it takes, 1 and 2 waited enough
        released = loop.time()
        release.set()
        await asyncio.wait_for(asyncio.gather(first, rest), 30)
        return released

    released = asyncio.run(main())
    assert [items for _, items in seen] == [[0, 10, 20], [1, 2]]
    # 1 and 2 waited longer than wait_s already: the second batch starts when the first ends,
    # not wait_s later.
    assert seen[1][0] - released < wait_s


def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    async def handler(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky batch")
        return items

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=4, wait_s=0.01)
        results = await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await batcher.submit(2) == 2

    asyncio.run(main())


def test_a_handler_returning_the_wrong_count_is_an_error_not_a_hang() -> None:
    async def handler(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=4, wait_s=0.01)
        with pytest.raises(RuntimeError, match="results for"):
            await asyncio.gather(batcher.submit(1), batcher.submit(2))

    asyncio.run(main())


def test_a_caller_that_gave_up_is_skipped() -> None:
    seen: list[list[int]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        if len(seen) == 1:
            started.set()
            await release.wait()
        return items

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=4, wait_s=0.0)
        busy = asyncio.ensure_future(batcher.submit(0))
        await started.wait()
        gone = asyncio.ensure_future(batcher.submit(1))
        await settle()  # queued behind the running batch
        gone.cancel()  # the caller gives up while its item waits
        await settle()
        release.set()
        assert await busy == 0
        assert await batcher.submit(2) == 2
        assert gone.cancelled()

    asyncio.run(main())
    assert seen == [[0], [2]]


def test_bad_settings_are_refused() -> None:
    async def handler(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="max_batch_size"):
        GreedyBatcher(handler, max_batch_size=0, wait_s=0.0)
    with pytest.raises(ValueError, match="max_concurrent_batches"):
        GreedyBatcher(handler, max_batch_size=1, wait_s=0.0, max_concurrent_batches=0)


# ThreadBatcher: the same greedy batches, computed by a synchronous handler on a thread of its own.


def test_thread_batcher_batches_what_queued_while_its_thread_computed() -> None:
    seen: list[list[int]] = []
    threads: set[str] = set()
    started = threading.Event()
    release = threading.Event()

    def handler(items: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        seen.append(items)
        if len(seen) == 1:
            started.set()
            release.wait(5)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        batcher = ThreadBatcher(handler, max_batch_size=8, wait_s=0.0, name="x0-test-batcher")
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0)
        assert await asyncio.to_thread(started.wait, 5)
        # The event loop stays free while the handler computes: these are queued meanwhile.
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await settle()
        release.set()
        out = list(await asyncio.gather(first, *rest))
        assert batcher.batches == 2 and batcher.mean_batch_size == pytest.approx(3.0)
        batcher.close(timeout_s=5)
        return out

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    assert seen == [[0], [1, 2, 3, 4, 5]]
    assert threads == {"x0-test-batcher"}


def test_thread_batcher_runs_on_start_on_its_thread_and_keeps_batches_bounded() -> None:
    seen: list[list[int]] = []
    on_start_thread: list[int] = []
    handler_threads: set[int] = set()

    def handler(items: list[int]) -> list[int]:
        handler_threads.add(threading.get_native_id())
        seen.append(items)
        return items

    async def main() -> list[int]:
        # Long enough that an idle batcher surely waits for the near-simultaneous items; every
        # batch fills up, so none waits it out.
        batcher = ThreadBatcher(
            handler,
            max_batch_size=3,
            wait_s=60.0,
            on_start=lambda: on_start_thread.append(threading.get_native_id()),
        )
        out = list(await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(6))), 30))
        batcher.close(timeout_s=5)
        return out

    assert asyncio.run(main()) == list(range(6))
    assert [i for b in seen for i in b] == list(range(6))
    assert [len(b) for b in seen] == [3, 3]  # the idle batcher waited for the first three
    assert handler_threads == set(on_start_thread) and len(on_start_thread) == 1
    assert threading.get_native_id() not in handler_threads


def test_thread_batcher_failure_reaches_every_caller_of_the_batch_and_the_thread_goes_on() -> None:
    calls = 0

    def handler(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad batch")
        return items

    async def main() -> None:
        batcher = ThreadBatcher(handler, max_batch_size=3, wait_s=60.0)  # full batches leave at once
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, ValueError) and str(r) == "bad batch" for r in results)
        assert await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in (7, 8, 9))), 30) == [
            7,
            8,
            9,
        ]
        batcher.close(timeout_s=5)

    asyncio.run(main())


def test_thread_batcher_skips_callers_that_gave_up_and_close_cancels_what_is_queued() -> None:
    seen: list[list[int]] = []
    running = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]

    def handler(items: list[int]) -> list[int]:
        seen.append(items)
        call = len(seen) - 1
        running[call].set()
        release[call].wait(5)
        return items

    async def main() -> None:
        batcher = ThreadBatcher(handler, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0)
        assert await asyncio.to_thread(running[0].wait, 5)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await settle()  # both queued behind the running batch
        gone.cancel()
        await settle()
        release[0].set()
        assert await first == 0
        assert await asyncio.to_thread(running[1].wait, 5)  # the batch of item 2 is computing
        queued = asyncio.ensure_future(batcher.submit(3))
        await settle()
        closing = asyncio.ensure_future(asyncio.to_thread(batcher.close, 5))
        with pytest.raises(asyncio.CancelledError):  # cancelled while the batch before it computes
            await queued
        release[1].set()
        await closing
        assert await kept == 2
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit(4)

    asyncio.run(main())
    assert seen == [[0], [2]]


# Per-item errors: a result that is an exception fails its own caller, not the batch.


def test_an_exception_returned_for_one_item_is_raised_to_its_caller_alone() -> None:
    async def handler(items: list[int]) -> list[int | BaseException]:
        return [ValueError(f"bad {i}") if i < 0 else i * 2 for i in items]

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=8, wait_s=0.0)
        good, bad, other = (asyncio.ensure_future(batcher.submit(i)) for i in (1, -2, 3))
        with pytest.raises(ValueError, match="bad -2"):
            await bad
        assert await good == 2 and await other == 6
        assert batcher.batches == 1  # one batch answered all three
        assert await batcher.submit(4) == 8

    asyncio.run(main())


def test_thread_batcher_raises_an_items_exception_to_its_caller_alone() -> None:
    def handler(items: list[int]) -> list[int | BaseException]:
        return [KeyError(i) if i == 13 else -i for i in items]

    async def main() -> None:
        batcher = ThreadBatcher(handler, max_batch_size=3, wait_s=60.0)  # a full batch leaves at once
        good, bad, other = (asyncio.ensure_future(batcher.submit(i)) for i in (1, 13, 2))
        with pytest.raises(KeyError) as info:
            await asyncio.wait_for(bad, 30)
        assert info.value.args == (13,)
        assert await good == -1 and await other == -2
        assert batcher.batches == 1
        batcher.close(timeout_s=5)

    asyncio.run(main())
