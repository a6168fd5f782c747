"""When the runtime seals: the decision is taken inside the store job, under the device's store
lock, from what the chain writer holds then, not from what the event loop believed when it
queued the job.

A real DeviceAgent with a real gossip core, a real SQLite store and real executor threads; the
data clock is a SimClock the test moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from agent.device.runtime import DeviceAgent
from agent.device.sealing import SealPolicy
from agent.gossip.node import GossipNode
from agent.protocol.auth import KeySigner
from agent.protocol.sim import START_MS, Authority
from agent.transport.base import Transport
from firmware_sim.clock import RealClock, SimClock
from firmware_sim.samples import Sample
from ledger.chain import ChainWriter
from ledger.identity import SigningKey
from ledger.store import Store

from .test_runtime_writes import Recording

AGE_MS = 10_000


def test_a_seal_the_timer_found_due_is_checked_again_when_its_job_runs(tmp_path: Path) -> None:
    """The seal timer wakes with a seal due and queues its job; another job of the device gets
    the lock first, seals, and makes the next reading durable. The timer's job then finds no
    seal due (its one pending reading is brand new) and seals nothing: no one-reading block."""
    rng = random.Random(5)
    authority = Authority(rng)
    key = SigningKey(rng.randbytes(32))
    dev = key.public.device_id
    store = Store(tmp_path / "store.sqlite")
    executor = ThreadPoolExecutor(2)
    clock = SimClock(START_MS)
    agent = DeviceAgent(
        name="fridge-1",
        writer=ChainWriter(store, key, dev),
        node=GossipNode(
            dev,
            {"home": {dev}},
            authority.roots,
            random.Random(1),
            now_ms=START_MS,
            signer=KeySigner(key),
        ),
        transport=cast(Transport, Recording()),
        data_clock=clock,
        net_clock=RealClock(),
        policy=SealPolicy(max_readings=64, max_age_ms=AGE_MS),
        executor=executor,
        peer_ids=[],
    )

    def sample(at: int) -> Sample:
        return Sample(at, "temp_mc", 4_000 + at % 1_000)

    async def main() -> None:
        await agent.start([])
        run = asyncio.create_task(agent.run())
        try:
            await agent.submit([sample(START_MS)])
            await agent.drained()
            assert (store.block_count(), store.pending_count()) == (0, 1)
            due = START_MS + AGE_MS
            async with agent._store_lock:  # as a store job of the device holds it
                clock.advance_to(due)  # the timer wakes, finds a seal due, queues its job
                await asyncio.sleep(0.05)
                # The job that holds the lock: a batch that seals, then the next batch.
                sealed = agent._sign_and_store([sample(due)], due)
                assert len(sealed) == 1
                assert agent._sign_and_store([sample(due + 500)], due + 500) == []
            await agent._locked(store.block_count)  # queued after the timer's job
            await agent._announce(sealed)  # as the batch's ingest does after its job
            assert (store.block_count(), store.pending_count()) == (1, 1)
            # The timer sleeps again, until the new reading is due, and seals it then.
            clock.advance_to(due + 500 + AGE_MS)
            for _ in range(100):
                if store.block_count() == 2:
                    break
                await asyncio.sleep(0.01)
            assert [len(b.readings) for b in store.blocks()] == [2, 1]
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        await agent.shutdown()

    try:
        asyncio.run(main())
    finally:
        executor.shutdown()
        store.close()
