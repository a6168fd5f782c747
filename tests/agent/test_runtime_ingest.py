"""One step of many devices (``agent.device.runtime.ingest``, the fleet runner's step): a few
store jobs for all of them, each device's batch still signed, committed and sealed on its own,
a failure still one device's alone, and a device that cannot take its batch directly served
through its queue, in order.

Real DeviceAgents with real gossip cores and real SQLite stores on one simulated clock; store
jobs go through an executor that runs them at once on the loop's thread and counts them
(``InlineExecutor``), so that "one store job for the step" is an exact statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.device.runtime import INGEST_CHUNK, INGEST_QUEUE, DeviceAgent, ingest
from agent.device.sealing import SealPolicy
from agent.device.storework import StoreThreads
from agent.gossip import inputs as I
from agent.protocol.sim import START_MS, Authority
from firmware_sim.clock import SimClock
from firmware_sim.samples import Sample
from ledger.groupsync import GroupSync
from ledger.identity import SigningKey
from ledger.store import Store

from .test_runtime_writes import InlineExecutor, Recording, make_agent

AGE_MS = 10_000


class Fleet:
    """``n`` devices on one clock and one executor, started and run as the runner runs them."""

    def __init__(self, tmp: Path, n: int, *, max_readings: int = 64) -> None:
        rng = random.Random(3)
        authority = Authority(rng)
        self.clock = SimClock(START_MS)
        self.executor = InlineExecutor()
        self.stores: list[Store] = []
        self.agents: list[DeviceAgent] = []
        self.transports: list[Recording] = []
        self.boot: list[list[I.Input]] = []
        self.sealed: list[list[int]] = []  # per device: heights handed to its cores, in order
        for k in range(n):
            key = SigningKey(rng.randbytes(32))
            store = Store(tmp / f"store-{k}.sqlite")
            agent, transport = make_agent(
                store,
                key,
                authority,
                clock=self.clock,
                executor=self.executor,
                policy=SealPolicy(max_readings=max_readings, max_age_ms=AGE_MS),
            )
            self.stores.append(store)
            self.agents.append(agent)
            self.transports.append(transport)
            self.boot.append([I.CertificateKnown(authority.enroll(key))])
            heights: list[int] = []
            self.sealed.append(heights)
            agent.observers.append(_own_seals(heights))

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        async def main() -> None:
            for agent, boot in zip(self.agents, self.boot, strict=True):
                await agent.start(boot)
            runs = [asyncio.create_task(a.run()) for a in self.agents]
            try:
                await scenario()
            finally:
                for run in runs:
                    run.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await run
            for agent in self.agents:
                await agent.shutdown()

        try:
            self.clock.run(main())
        finally:
            for store in self.stores:
                store.close()

    async def step(self, t_ms: int, value: int = 4_000) -> None:
        """What the runner does each step: the data clock to ``t_ms``, one sample per device,
        then every queued batch waited for."""
        self.clock.advance_to(t_ms)
        await ingest([(a, [Sample(t_ms, "temp_mc", value + k)]) for k, a in enumerate(self.agents)])
        for agent in self.agents:
            if agent.busy:
                await agent.drained()


def _own_seals(heights: list[int]) -> Callable[[DeviceAgent, object, int], None]:
    def observe(agent: DeviceAgent, event: object, now_ms: int) -> None:
        if isinstance(event, I.OwnBlockSealed):
            heights.append(event.block.header.header.height)

    return observe


def test_one_store_job_signs_and_commits_a_step_of_many_devices(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 5)

    async def scenario() -> None:
        jobs = fleet.executor.jobs
        await fleet.step(START_MS + 1000)
        assert fleet.executor.jobs == jobs + 1, "one job for the whole step"
        for k, store in enumerate(fleet.stores):
            assert store.last_seq() == 0 and store.pending_count() == 1
            assert fleet.agents[k].stats.readings == 1
            assert [sr.reading.value for sr in store.pending()] == [4_000 + k]

    fleet.run(scenario)


def test_a_step_seals_what_is_due_inside_its_job_and_announces_it(tmp_path: Path) -> None:
    """Blocks fall due by age at the step's time: the step's own job seals them (the seal
    timers, woken at the same instant, wait for it and queue no job of their own), and each
    device announces its block once."""
    fleet = Fleet(tmp_path, 3)

    async def scenario() -> None:
        for second in range(1, 11):
            await fleet.step(START_MS + 1000 * second)
        assert [s.block_count() for s in fleet.stores] == [0, 0, 0]
        jobs = fleet.executor.jobs
        await fleet.step(START_MS + 11_000)  # the reading of second 1 is 10 s old: due
        await fleet.clock.sleep(1)  # the seal timers run
        assert fleet.executor.jobs == jobs + 1, "the seal timers queued jobs of their own"
        for store, heights in zip(fleet.stores, fleet.sealed, strict=True):
            assert [len(b.readings) for b in store.blocks()] == [11]  # the step's one too
            assert store.pending_count() == 0
            assert heights == [0]

    fleet.run(scenario)


def test_a_device_that_fails_in_a_step_fails_alone(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 3)

    async def scenario() -> None:
        await fleet.step(START_MS + 1000)
        fleet.stores[1].close()  # its next commit fails
        await fleet.step(START_MS + 2000)
        broken = fleet.agents[1]
        assert broken.failure is not None and broken.name in broken.failure
        for k in (0, 2):
            assert fleet.agents[k].failure is None
            assert fleet.stores[k].last_seq() == 1
        await fleet.step(START_MS + 3000)  # the others run on; the failed device is skipped
        assert [fleet.stores[k].last_seq() for k in (0, 2)] == [2, 2]

    fleet.run(scenario)


def test_a_device_that_fails_while_a_step_waits_for_its_lock_signs_nothing_more(
    tmp_path: Path,
) -> None:
    """The lock looks free (``direct``) but a job that waited for it gets it first, and fails
    the device: the step, which then gets the lock, signs nothing for it; the other runs on."""
    fleet = Fleet(tmp_path, 2)

    async def scenario() -> None:
        await fleet.step(START_MS + 1000)
        dev = fleet.agents[0]
        await dev.ctx.lock.acquire()

        async def failing() -> None:
            async with dev.ctx.lock:
                dev.fail(RuntimeError("its store failed"))

        waiter = asyncio.create_task(failing())
        await asyncio.sleep(0)  # queued on the lock
        dev.ctx.lock.release()  # free, with a waiter to hand it to first
        assert dev.direct
        await fleet.step(START_MS + 2000)
        await waiter
        assert dev.failure is not None
        assert fleet.stores[0].last_seq() == 0, "signed after its failure"
        assert fleet.stores[1].last_seq() == 1

    fleet.run(scenario)


def test_a_device_busy_with_a_store_job_gets_its_batch_through_its_queue(
    tmp_path: Path,
) -> None:
    """A device whose store lock is taken (a pull being served, a seal) cannot join the step's
    job: its batch goes through its queue and is signed after that job, in order; the step
    waits for it."""
    fleet = Fleet(tmp_path, 2)

    async def scenario() -> None:
        await fleet.step(START_MS + 1000)
        busy = fleet.agents[0]
        fleet.executor.hold()
        sealing = asyncio.create_task(busy.seal_now())  # takes the lock, its job held
        for _ in range(5):  # its task, then the shielded job's task, run
            await asyncio.sleep(0)
        assert busy.ctx.lock.locked() and not busy.direct
        fleet.clock.advance_to(START_MS + 2000)
        batches = [(a, [Sample(START_MS + 2000, "temp_mc", 5_000)]) for a in fleet.agents]
        step = asyncio.create_task(ingest(batches))
        for _ in range(5):
            await asyncio.sleep(0)
        assert busy.busy and fleet.stores[0].last_seq() == 0
        assert len(fleet.executor.held) == 2  # the seal, then the other device's step job
        fleet.executor.release()
        await step
        await sealing
        await busy.drained()
        assert not busy.busy
        assert [b.header.header.count for b in fleet.stores[0].blocks()] == [1]
        assert fleet.stores[0].last_seq() == 1 and fleet.stores[0].pending_count() == 1
        assert fleet.stores[1].last_seq() == 1

    fleet.run(scenario)


def test_a_step_larger_than_a_chunk_takes_one_job_per_chunk(tmp_path: Path) -> None:
    n = INGEST_CHUNK + 1
    fleet = Fleet(tmp_path, n)

    async def scenario() -> None:
        jobs = fleet.executor.jobs
        await fleet.step(START_MS + 1000)
        assert fleet.executor.jobs == jobs + 2
        assert all(s.last_seq() == 0 for s in fleet.stores)

    fleet.run(scenario)


async def _with_a_full_queue(fleet: Fleet, busy: DeviceAgent, t: int) -> asyncio.Task[None]:
    """Hold ``busy``'s store lock with a job the executor holds (its seal), then fill its queue
    with batches from ``t`` on; returns the held seal."""
    fleet.executor.hold()
    sealing = asyncio.create_task(busy.seal_now())  # busy's lock, its job held
    for _ in range(5):
        await asyncio.sleep(0)
    for k in range(INGEST_QUEUE + 1):  # its ingest task takes one, the queue holds the rest
        await busy.submit([Sample(t + k, "temp_mc", 1)])
    return sealing


def test_a_step_cancelled_while_a_queue_is_full_gives_the_locks_back(tmp_path: Path) -> None:
    """A stop cancels a step that waits for room in a busy device's queue: the devices whose
    locks it had taken for its job get them back, unsigned, and sign their next batch."""
    fleet = Fleet(tmp_path, 2)

    async def scenario() -> None:
        await fleet.step(START_MS + 1000)
        free, busy = fleet.agents
        t = START_MS + 2000
        sealing = await _with_a_full_queue(fleet, busy, t)
        step = asyncio.create_task(
            ingest([(free, [Sample(t, "temp_mc", 2)]), (busy, [Sample(t + 99, "temp_mc", 3)])])
        )
        for _ in range(5):
            await asyncio.sleep(0)
        assert free.ctx.lock.locked() and not step.done()  # waiting for room in busy's queue
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step
        assert not free.ctx.lock.locked() and free.direct
        fleet.executor.release()
        await sealing
        await busy.drained()
        assert fleet.stores[0].last_seq() == 0, "the cancelled step signed nothing"
        await fleet.step(START_MS + 3000)
        assert fleet.stores[0].last_seq() == 1

    fleet.run(scenario)


def test_a_step_cancelled_while_a_queue_is_full_leaves_the_busy_device_direct_again(
    tmp_path: Path,
) -> None:
    """The batch whose ``submit`` was cancelled while it waited for room was never queued: once
    the device has signed what was queued, it is neither busy nor kept off the direct path."""
    fleet = Fleet(tmp_path, 2)

    async def scenario() -> None:
        await fleet.step(START_MS + 1000)
        busy = fleet.agents[1]
        t = START_MS + 2000
        sealing = await _with_a_full_queue(fleet, busy, t)
        step = asyncio.create_task(ingest([(busy, [Sample(t + 99, "temp_mc", 3)])]))
        for _ in range(5):
            await asyncio.sleep(0)
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step
        fleet.executor.release()
        await sealing
        await busy.drained()
        assert busy.stats.readings == 1 + INGEST_QUEUE + 1
        assert not busy.busy and busy.direct
        jobs = fleet.executor.jobs
        await fleet.step(START_MS + 3000)
        assert fleet.executor.jobs == jobs + 1, "both devices in the step's one job"

    fleet.run(scenario)


def test_a_device_that_fails_in_the_job_its_seal_timer_waits_for_seals_nothing_more(
    tmp_path: Path,
) -> None:
    """The seal timer wakes while the step's job runs and waits for it; that job fails the
    device: the timer then queues no seal of its own (a failed device writes nothing more),
    and the other device seals as usual."""
    fleet = Fleet(tmp_path, 2)

    async def scenario() -> None:
        for second in range(1, 11):
            await fleet.step(START_MS + 1000 * second)
        victim = fleet.agents[0]
        victim.ctx.carry_headers((b"not a header",))  # its next job fails before it signs
        await fleet.step(START_MS + 11_000)  # the reading of second 1 is 10 s old: due
        for _ in range(10):  # the seal timers, and any job they queued, run
            await asyncio.sleep(0)
        assert victim.failure is not None and "header" in victim.failure
        assert fleet.stores[0].block_count() == 0, "a seal after the device failed"
        assert fleet.stores[0].pending_count() == 10
        assert fleet.stores[1].block_count() == 1 and fleet.sealed[1] == [0]

    fleet.run(scenario)


def test_a_failed_group_sync_fails_the_devices_whose_commit_it_covered_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One chunk, real store threads and a real group sync that fails (fsync: EIO): the device
    whose batch the sync covered fails with the sync's error; the device whose own commit
    failed keeps its own error; the device whose batch made no durable commit (every sample
    refused as the past) runs on, as a job with no commit does (``StoreThreads``)."""
    rng = random.Random(5)
    authority = Authority(rng)
    clock = SimClock(START_MS)  # never advanced by a loop: no timer runs
    group = GroupSync(use_syncfs=False)
    pool = StoreThreads(2, group=group)
    stores: list[Store] = []
    agents: list[DeviceAgent] = []
    for k in range(3):
        store = Store(tmp_path / f"store-{k}.sqlite", group=group)
        agent, _ = make_agent(
            store,
            SigningKey(rng.randbytes(32)),
            authority,
            clock=clock,
            executor=pool,
            policy=SealPolicy(max_readings=64, max_age_ms=AGE_MS),
        )
        stores.append(store)
        agents.append(agent)
    synced, refused, broken = agents

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async def main() -> None:
        t = START_MS + 1000
        clock.advance_to(t)
        await ingest([(a, [Sample(t, "temp_mc", 1)]) for a in agents])
        assert [a.failure for a in agents] == [None] * 3 and group.syncs >= 1
        stores[2].close()  # its next commit fails on its own
        monkeypatch.setattr(os, "fsync", failing)  # and the next group sync fails
        t += 1000
        clock.advance_to(t)
        await ingest(
            [
                (synced, [Sample(t, "temp_mc", 2)]),
                (refused, [Sample(t - 2000, "temp_mc", 3)]),  # before its last: not signed
                (broken, [Sample(t, "temp_mc", 4)]),
            ]
        )
        monkeypatch.undo()
        assert synced.failure is not None and "group sync failed" in synced.failure
        assert refused.failure is None, refused.failure
        assert refused.stats.counters["time-refused"] == 1 and refused.stats.readings == 1
        assert broken.failure is not None and "group sync" not in broken.failure
        assert "closed" in broken.failure

    try:
        asyncio.run(main())
    finally:
        monkeypatch.undo()
        pool.shutdown()
        for store in stores[:2]:
            store.close()
        group.close()


def test_a_step_cancelled_during_its_store_job_commits_but_announces_nothing(
    tmp_path: Path,
) -> None:
    """A forced stop cancels the runner's step while its store job runs on a store thread: the
    job still commits what it signed and sealed (shielded), but nothing is announced after the
    cancellation (the runner closes transports and stores meanwhile: an announcement then
    failed the device after the run had ended)."""
    rng = random.Random(9)
    authority = Authority(rng)
    clock = SimClock(START_MS)  # never advanced by a loop: no timer runs
    pool = StoreThreads(1)
    store = Store(tmp_path / "store.sqlite")
    agent, transport = make_agent(
        store,
        SigningKey(rng.randbytes(32)),
        authority,
        clock=clock,
        executor=pool,
        policy=SealPolicy(max_readings=1, max_age_ms=AGE_MS),  # every reading seals a block
    )
    heights: list[int] = []
    agent.observers.append(_own_seals(heights))
    entered, release = threading.Event(), threading.Event()
    sign_and_store = agent._sign_and_store

    def held(*args: object) -> object:
        entered.set()
        release.wait(30)
        return sign_and_store(*args)

    agent._sign_and_store = held  # type: ignore[method-assign]

    async def main() -> None:
        await agent.start([I.CertificateKnown(authority.enroll(agent.writer.key))])
        t = START_MS + 1000
        clock.advance_to(t)
        step = asyncio.create_task(ingest([(agent, [Sample(t, "temp_mc", 1)])]))
        assert await asyncio.to_thread(entered.wait, 30), "the job is on the store thread"
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step
        release.set()
        async with agent.ctx.lock:  # the shielded job ended and gave the lock back
            for _ in range(20):  # whatever it scheduled after that has run
                await asyncio.sleep(0)
        assert store.block_count() == 1 and store.pending_count() == 0, "the job committed"
        assert heights == [], "announced after the step was cancelled"
        assert transport.sent == [] and agent.failure is None

    try:
        asyncio.run(main())
    finally:
        release.set()
        pool.shutdown()
        store.close()
