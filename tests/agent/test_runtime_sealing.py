"""When the runtime seals: the decision is taken inside the store job, from what the chain
writer holds when the job runs, not from what the event loop believed when it queued the job.

A real DeviceAgent with a real gossip core and a real SQLite store, driven through its public
methods on a simulated clock. The store jobs go through an executor the test can hold
(``InlineExecutor``), as a busy store thread would: jobs queued meanwhile run later, in order.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from agent.device.sealing import SealPolicy
from agent.protocol.sim import START_MS, Authority
from firmware_sim.clock import SimClock
from firmware_sim.samples import Sample
from ledger.identity import SigningKey
from ledger.store import Store

from .test_runtime_writes import InlineExecutor, make_agent, run_agent

AGE_MS = 10_000


def test_a_seal_the_timer_found_due_is_checked_again_when_its_job_runs(tmp_path: Path) -> None:
    """The seal timer wakes with a seal due and queues its job, behind two jobs of the device
    still waiting for the store: a seal (``seal_now``) and a batch with a new reading. When the
    timer's job runs, its one pending reading is brand new: it seals nothing (no one-reading
    block), and seals that reading once it is due."""
    rng = random.Random(5)
    authority = Authority(rng)
    key = SigningKey(rng.randbytes(32))
    store = Store(tmp_path / "store.sqlite")
    clock = SimClock(START_MS)
    executor = InlineExecutor()
    agent, _ = make_agent(
        store,
        key,
        authority,
        clock=clock,
        executor=executor,
        policy=SealPolicy(max_readings=64, max_age_ms=AGE_MS),
    )
    due = START_MS + AGE_MS

    def shape() -> tuple[list[int], int]:
        return [len(b.readings) for b in store.blocks()], store.pending_count()

    async def scenario() -> None:
        await agent.submit([Sample(START_MS, "temp_mc", 4_000)])
        await agent.drained()
        assert shape() == ([], 1)
        executor.hold()  # the store is busy from here on
        sealing = asyncio.create_task(agent.seal_now())
        await agent.submit([Sample(due - 1, "temp_mc", 4_001)])
        # The seal timer wakes at `due` and finds its seal due: the reading of START_MS is
        # still pending as far as anyone can tell. Its job queues behind the other two.
        await clock.sleep_until(due)
        assert shape() == ([], 1) and len(executor.held) == 1  # only seal_now's job started
        executor.release()
        await sealing
        await agent.drained()
        await clock.sleep_until(due + 1)  # every job queued by then has run
        assert shape() == ([1], 1), "the timer's job sealed a reading that was not due"
        await clock.sleep_until(due - 1 + AGE_MS + 1)  # the new reading's own deadline
        assert shape() == ([1, 1], 0)

    try:
        run_agent(clock, agent, [], scenario)
    finally:
        store.close()
