"""StoreThreads: jobs run off the loop, results and exceptions come back to the awaiting tasks,
and a burst of jobs wakes the loop far fewer times than once per job. With a group sync, a job
that made a durable commit comes back only after a sync (real SQLite stores, real syncs).

These tests need real threads, so they cannot run on simulated time (a SimClock loop would jump
past any timeout while a thread works). They never sleep: they wait on events, barriers and the
pool's futures, with ``SAFETY_S`` as a hang guard only, never a budget a test must beat.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from agent.device.storework import StoreThreads
from ledger.errors import StoreError
from ledger.groupsync import GroupSync
from ledger.identity import SigningKey
from ledger.reading import Reading, SignedReading, sign_reading
from ledger.store import Store

T = TypeVar("T")
SAFETY_S = 120.0  # turns a hang into a failure; every wait here normally takes milliseconds


async def within(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, SAFETY_S)


async def workers_idle(pool: StoreThreads, threads: int) -> None:
    """Return once each of the pool's ``threads`` workers has finished the jobs it took before
    this call, and the loop has settled what they handed back: one job per worker, held at a
    barrier until all have arrived (so each worker takes exactly one), comes back last."""
    barrier = threading.Barrier(threads, timeout=SAFETY_S)
    await within(asyncio.gather(*(pool.run(barrier.wait) for _ in range(threads))))


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
    """The loop is busy (blocked here, as under load) while the workers finish 400 jobs: the
    first hand-back wakes it, the others join the same batch. Only a worker's last job, handed
    back after the loop settled, can cost one more wake-up."""
    threads = 2
    pool = StoreThreads(threads)
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
        finished = threading.Event()
        count = itertools.count(1)  # next() on it is atomic under the GIL

        def job(i: int) -> int:
            assert gate.wait(SAFETY_S)
            if next(count) == 400:
                finished.set()
            return i

        futures = [pool.run(job, i) for i in range(400)]
        gate.set()
        assert finished.wait(SAFETY_S)  # the loop busy while the workers finish
        assert await within(asyncio.gather(*futures)) == list(range(400))

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()
    # Each wake-up settles every job finished by then: not one per job.
    assert 1 <= wakeups <= 1 + threads, wakeups


def test_a_cancelled_waiter_does_not_break_the_others_and_shutdown_refuses_new_jobs() -> None:
    pool = StoreThreads(1)
    gate = threading.Event()

    async def main() -> None:
        first = pool.run(gate.wait, SAFETY_S)
        second = pool.run(lambda: "done")
        first.cancel()
        gate.set()
        assert await within(second) == "done"

    asyncio.run(main())
    assert pool.submit(lambda: 42).result(timeout=SAFETY_S) == 42
    pool.shutdown()

    async def late() -> None:
        pool.run(lambda: None)

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(late())


# --------------------------------------------------------------------------- group commit


class GatedSync(GroupSync):
    """A real group sync that waits for ``gate`` first, and records what each sync covered."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.covered: list[int] = []  # stores noted, per sync

    def sync(self) -> None:
        self.entered.set()
        assert self.gate.wait(SAFETY_S), "the test never opened the gate"
        before = self.synced_stores
        super().sync()
        self.covered.append(self.synced_stores - before)


def _readings(key: SigningKey, seqs: range) -> list[SignedReading]:
    dev = key.public.device_id
    return [
        sign_reading(Reading(dev, 0, s, 1_700_000_000_000 + s, "t", s, None), key) for s in seqs
    ]


def test_a_durable_commit_is_handed_back_only_after_a_group_sync(tmp_path: Path) -> None:
    group = GatedSync()
    stores = [Store(tmp_path / f"d{i}.sqlite", group=group) for i in range(6)]
    group.take_noted()  # the stores' creation, on this thread: not the pool's business
    key = SigningKey(bytes(32))
    threads = 3
    pool = StoreThreads(threads, group=group)

    async def main() -> None:
        commits = [pool.run(s.append_pending, _readings(key, range(3))) for s in stores]
        reads = [pool.run(s.block_count) for s in stores]  # no commit: no sync to wait for
        assert await within(asyncio.gather(*reads)) == [0] * 6
        assert group.entered.wait(SAFETY_S)  # a sync has begun, held at the gate
        # Every commit job has run and anything handed back was settled: none came back.
        await workers_idle(pool, threads)
        assert not any(f.done() for f in commits)  # committed, not yet synced
        group.gate.set()
        await within(asyncio.gather(*commits))

    try:
        asyncio.run(main())
    finally:
        group.gate.set()
        pool.shutdown()
    # Each store is synced once: its creation and its commit, noted before the first sync swapped
    # the notes out, share it (jobs handed to a later sync found their commit already synced).
    assert sum(group.covered) == 6 and len(group.covered) < 6
    for s in stores:
        s.close()
    group.close()


def test_a_failed_group_sync_fails_every_job_it_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = GroupSync(use_syncfs=False)
    store = Store(tmp_path / "d.sqlite", group=group)
    group.sync()
    key = SigningKey(bytes(32))
    pool = StoreThreads(2, group=group)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)

    async def main() -> None:
        with pytest.raises(StoreError, match="group sync failed"):
            await within(pool.run(store.append_pending, _readings(key, range(2))))
        assert await within(pool.run(store.block_count)) == 0  # a job with no commit is unaffected

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()
        monkeypatch.undo()
    store.close()
    group.close()


def test_submit_and_shutdown_sync_what_their_jobs_committed(tmp_path: Path) -> None:
    group = GroupSync()
    store = Store(tmp_path / "d.sqlite", group=group)
    group.sync()
    group.take_noted()
    key = SigningKey(bytes(32))
    pool = StoreThreads(1, group=group)
    pool.submit(store.append_pending, _readings(key, range(2))).result(timeout=SAFETY_S)
    assert group.syncs == 2  # the plain executor path synced before it returned

    async def main() -> None:
        pool.run(store.append_pending, _readings(key, range(2, 4)))  # not awaited

    asyncio.run(main())
    pool.shutdown(wait=True)  # the worker's commit is synced before the sync thread ends
    assert group.syncs == 3
    store.close()
    group.close()
