"""How the runtime writes accepted peer headers: with the device's next store work (one commit
and one trip to the executor instead of one each), or on their own shortly after when no store
work comes; and never out of sight of a pull served from the store.

A real DeviceAgent with a real gossip core, a real SQLite store and a real executor; the
transport only records what the agent sends (these tests feed the messages themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

import agent.device.runtime as runtime
from agent.device.runtime import DeviceAgent
from agent.device.sealing import SealPolicy
from agent.gossip import inputs as I
from agent.gossip import wire
from agent.gossip.node import GossipNode
from agent.protocol.auth import KeySigner
from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from agent.transport.base import Transport
from firmware_sim.clock import RealClock
from firmware_sim.samples import Sample
from ledger.chain import ChainWriter
from ledger.identity import SigningKey
from ledger.store import Store


class Recording:
    """Stands in for the transport: keeps what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, peer: str, payload: bytes) -> None:
        self.sent.append((peer, payload))

    async def broadcast(self, domain: str, payload: bytes) -> None:
        self.sent.append((domain, payload))

    async def watch_presence(self, peer: str) -> None:
        return None

    def __aiter__(self) -> Recording:
        return self

    async def __anext__(self) -> None:
        await asyncio.Event().wait()  # nothing arrives: the tests feed the core themselves


class Setup:
    def __init__(self, tmp: Path) -> None:
        rng = random.Random(11)
        authority = Authority(rng)
        self.sealer = SimDevice(authority, rng)
        key = SigningKey(rng.randbytes(32))
        self.id = key.public.device_id
        self.cert = authority.enroll(key)
        self.store = Store(tmp / "store.sqlite")
        self.transport = Recording()
        self.executor = ThreadPoolExecutor(2)
        self.statements: list[str] = []
        self.store._db.set_trace_callback(self.statements.append)
        node = GossipNode(
            self.id,
            {"home": {self.id, self.sealer.device_id}},
            authority.roots,
            random.Random(1),
            now_ms=START_MS,
            signer=KeySigner(key),
        )
        self.agent = DeviceAgent(
            name="fridge-1",
            writer=ChainWriter(self.store, key, self.id),
            node=node,
            transport=cast(Transport, self.transport),
            data_clock=RealClock(),
            net_clock=RealClock(),
            policy=SealPolicy(max_readings=64, max_age_ms=3_600_000),
            executor=self.executor,
            peer_ids=[self.sealer.device_id],
        )

    async def start(self) -> None:
        await self.agent.start(
            [I.CertificateKnown(self.cert), I.CertificateKnown(self.sealer.certificate)]
        )
        await self.agent._handle(I.PeerUp(self.sealer.device_id))

    async def announce(self, count: int) -> list[bytes]:
        """The sealer seals ``count`` blocks and broadcasts their headers; returns them."""
        wires = [self.sealer.seal(START_MS + 1000 * i).header.wire for i in range(count)]
        msg = sealed(wire.encode(wire.Announce(self.sealer.device_id, tuple(wires))))
        await self.agent._handle(I.MessageReceived(None, msg, broadcast=True))
        return wires

    def stored(self) -> list[bytes]:
        return [h.wire for h in self.store.peer_headers(self.sealer.device_id)]

    def commits(self) -> int:
        return sum(1 for s in self.statements if s == "COMMIT")


def _run(tmp: Path, scenario: Any) -> None:
    setup = Setup(tmp)

    async def main() -> None:
        await setup.start()
        run = asyncio.create_task(setup.agent.run())
        try:
            await scenario(setup)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        await setup.agent.shutdown()

    try:
        asyncio.run(main())
    finally:
        setup.executor.shutdown()
        setup.store.close()


def test_accepted_headers_join_the_commit_of_the_next_readings(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        wires = await s.announce(3)
        assert s.agent.node.counters["header_accepted"] == 3
        commits = s.commits()
        await s.agent.submit([Sample(RealClock().now_ms(), "temp_mc", 4000)])
        await s.agent.drained()
        # Within the 1 s write delay, the readings' commit carried them: one commit in all.
        assert s.stored() == wires
        assert s.commits() == commits + 1
        assert s.store.last_seq() == 0

    _run(tmp_path, scenario)


def test_accepted_headers_are_written_on_their_own_when_no_store_work_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "HEADER_WRITE_S", 0.05)

    async def scenario(s: Setup) -> None:
        wires = await s.announce(2)
        for _ in range(500):  # 5 s at most
            if s.stored() == wires:
                break
            await asyncio.sleep(0.01)
        assert s.stored() == wires
        assert s.store.last_seq() is None  # nothing else was written

    _run(tmp_path, scenario)


def test_a_pull_served_right_after_acceptance_includes_the_headers_not_yet_written(
    tmp_path: Path,
) -> None:
    async def scenario(s: Setup) -> None:
        wires = await s.announce(4)
        request = wire.Request(s.sealer.device_id, 7, s.sealer.device_id, 0, 3, 0)
        await s.agent._handle(I.MessageReceived(None, sealed(wire.encode(request))))
        deadline = time.monotonic() + 5
        responses: list[wire.Response] = []
        while not responses and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            responses = [
                m
                for _, p in s.transport.sent
                if isinstance(m := wire.decode(unseal(p)), wire.Response) and m.request_id == 7
            ]
        assert [r.headers for r in responses] == [tuple(wires)]

    _run(tmp_path, scenario)


def test_headers_still_queued_at_shutdown_are_written(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        wires = await s.announce(2)
        await s.agent.shutdown()
        assert s.stored() == wires

    _run(tmp_path, scenario)
