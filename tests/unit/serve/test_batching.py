"""Greedy batching: a busy handler's next batch is everything that queued meanwhile; failures reach every caller."""

from __future__ import annotations

import asyncio

import pytest

from x0tta6bl4.serve._private.batching import GreedyBatcher


def test_items_queued_while_a_batch_runs_form_the_next_batch() -> None:
    seen: list[list[int]] = []

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        await asyncio.sleep(0.05)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        batcher = GreedyBatcher(handler, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first batch (one item) is running now
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
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
    release: dict[int, asyncio.Event] = {}

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        gate = release[len(seen)] = asyncio.Event()
        await gate.wait()
        return [-i for i in items]

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=8, wait_s=0.0, max_concurrent_batches=2)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        assert seen == [[1], [2]]  # both in flight at once
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (3, 4, 5)]
        await asyncio.sleep(0.01)
        assert seen == [[1], [2]]  # no free slot: the three wait together
        release[2].set()  # the second finishes first; its caller is answered at once
        assert await second == -2
        await asyncio.sleep(0.01)
        assert seen == [[1], [2], [3, 4, 5]] and not first.done()
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


def test_an_idle_batcher_waits_for_near_simultaneous_items() -> None:
    seen: list[list[str]] = []

    async def handler(items: list[str]) -> list[str]:
        seen.append(items)
        return items

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=8, wait_s=0.2)
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, batcher.submit("b"))

    asyncio.run(main())
    assert seen == [["a", "b"]]


def test_a_busy_batcher_sends_what_queued_at_once_instead_of_waiting_again() -> None:
    seen: list[tuple[float, list[int]]] = []

    async def handler(items: list[int]) -> list[int]:
        seen.append((asyncio.get_running_loop().time(), items))
        await asyncio.sleep(0.3)
        return items

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=8, wait_s=0.2)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.25)  # the first batch runs; 1 and 2 queue behind it
        await asyncio.gather(first, batcher.submit(1), batcher.submit(2))

    asyncio.run(main())
    assert [items for _, items in seen] == [[0], [1, 2]]
    # 1 and 2 waited longer than wait_s already: the second batch starts when the first ends.
    assert seen[1][0] - seen[0][0] < 0.3 + 0.1


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

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        await asyncio.sleep(0.05)
        return items

    async def main() -> None:
        batcher = GreedyBatcher(handler, max_batch_size=4, wait_s=0.0)
        busy = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(1), 0.01)  # cancelled while queued
        assert await batcher.submit(2) == 2
        await busy

    asyncio.run(main())
    assert seen == [[0], [2]]


def test_bad_settings_are_refused() -> None:
    async def handler(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="max_batch_size"):
        GreedyBatcher(handler, max_batch_size=0, wait_s=0.0)
    with pytest.raises(ValueError, match="max_concurrent_batches"):
        GreedyBatcher(handler, max_batch_size=1, wait_s=0.0, max_concurrent_batches=0)
