"""StoreThreads: jobs run off the loop, results and exceptions come back to the awaiting tasks,
and a burst of jobs wakes the loop far fewer times than once per job."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.storework import StoreThreads


def test_results_and_exceptions_reach_the_awaiting_tasks_from_worker_threads() -> None:
    pool = StoreThreads(3)
    loop_thread: list[int] = []

    def job(i: int) -> tuple[int, int]:
        if i == 7:
            raise ValueError("job 7 fails")
        return i * i, threading.get_ident()

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        futures = [pool.run(job, i) for i in range(50)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(results[7], ValueError) and str(results[7]) == "job 7 fails"
        for i, r in enumerate(results):
            if i != 7:
                assert isinstance(r, tuple)
                assert r[0] == i * i and r[1] != loop_thread[0]

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()


def test_a_burst_of_jobs_is_settled_with_few_wake_ups() -> None:
    pool = StoreThreads(2)
    wakeups = 0

    async def main() -> None:
        nonlocal wakeups
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def counting(*args: object, **kwargs: object) -> asyncio.Handle:
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        gate = threading.Event()

        def job(i: int) -> int:
            gate.wait(5)
            return i

        futures = [pool.run(job, i) for i in range(400)]
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.gather(*futures) == list(range(400))

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()
    # Each wake-up settles every job finished by then: far fewer than 400.
    assert 1 <= wakeups < 200, wakeups


def test_a_cancelled_waiter_does_not_break_the_others_and_shutdown_refuses_new_jobs() -> None:
    pool = StoreThreads(1)
    gate = threading.Event()

    async def main() -> None:
        first = pool.run(gate.wait, 5)
        second = pool.run(lambda: "done")
        first.cancel()
        gate.set()
        assert await second == "done"

    asyncio.run(main())
    assert pool.submit(lambda: 42).result(timeout=5) == 42
    pool.shutdown()

    async def late() -> None:
        pool.run(lambda: None)

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(late())
