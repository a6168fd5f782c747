"""How the runtime writes accepted peer headers: with the device's next store work (one trip to
the executor, one commit), or on their own ``HEADER_WRITE_S`` after they were accepted when no
store work comes; and never out of sight of a pull served from the store.

A real DeviceAgent with a real gossip core and a real SQLite store, driven through its public
methods (``start``, ``run``, ``submit``, ``drained``, ``shutdown``) and its transport: the test
delivers messages into a fake transport and reads what the agent sent back. Time is simulated:
the event loop runs on a ``SimClock`` (data and network clocks alike), so "not yet written
after 0.9 s" and "written by 1.1 s" are exact statements about simulated time, whatever the
machine's load. Store jobs go through an executor that runs them at once on the loop's thread
and counts them (``InlineExecutor``): no thread can fall behind the simulated clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar, cast

from agent.device.context import HEADER_WRITE_MS, HEADER_WRITE_SLOT_MS, DeviceContext, HeaderWrites
from agent.device.runtime import DeviceAgent
from agent.device.sealing import SealPolicy
from agent.fleet.build import build_device
from agent.gossip import inputs as I
from agent.gossip import wire
from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from agent.transport.base import Delivery, Transport, TransportStats
from firmware_sim.clock import Clock, SimClock
from firmware_sim.samples import Sample
from ledger.block import decode_header
from ledger.checkpoint import Checkpoint, device_origin, device_signer, fleet_label
from ledger.identity import SigningKey
from ledger.merkle import root_from_leaf_hashes
from ledger.note import sign_note
from ledger.store import Store
from ledger.witness import AddCheckpoint

T = TypeVar("T")
WRITE_MS = HEADER_WRITE_MS


class Recording:
    """Stands in for the transport: keeps what the agent sends, and hands it what the test
    ``deliver``s (through the agent's own receive loop)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.online: set[str] = set()
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()

    async def send(self, peer: str, payload: bytes) -> None:
        self.sent.append((peer, payload))

    async def broadcast(self, domain: str, payload: bytes) -> None:
        self.sent.append((domain, payload))

    async def publish_evidence(self, device_id: str, payload: bytes) -> None:
        self.sent.append((device_id, payload))

    async def watch_presence(self, peer: str) -> None:
        return None

    async def watch_presences(self, peers: object) -> None:
        return None

    def presence(self, peer: str) -> bool | None:
        return peer in self.online

    # What the runtime's liveness asks of its link (agent/device/runtime.py ``_link``): always
    # up, never reconnected, nothing waiting but what the test delivered.
    connected = True

    def pending(self) -> int:
        return self._inbox.qsize()

    def stats(self) -> TransportStats:
        return TransportStats()

    def deliver(self, delivery: Delivery) -> None:
        self._inbox.put_nowait(delivery)

    def __aiter__(self) -> Recording:
        return self

    async def __anext__(self) -> Delivery:
        return await self._inbox.get()


class InlineExecutor(Executor):
    """Runs each store job at once, on the caller's thread, and counts them. ``hold()`` keeps
    the next jobs queued (as a busy store thread would) until ``release()`` runs them in order
    and goes back to running jobs at once."""

    def __init__(self) -> None:
        self.jobs = 0  # store jobs run: trips to the executor
        self.held: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._holding = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        if self._holding:
            self.held.append((fut, fn, args))
        else:
            self._run(fut, fn, args)
        return fut

    def hold(self) -> None:
        self._holding = True

    def release(self) -> None:
        self._holding = False
        held, self.held = self.held, []
        for fut, fn, args in held:
            self._run(fut, fn, args)

    def _run(self, fut: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.jobs += 1
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # handed to the awaiting task, as a real executor does
            fut.set_exception(exc)


def make_agent(
    store: Store,
    key: SigningKey,
    authority: Authority,
    *,
    clock: Clock,
    executor: Executor,
    policy: SealPolicy,
    peers: tuple[str, ...] = (),
) -> tuple[DeviceAgent, Recording]:
    """A device built as the fleet builds it (``agent.fleet.build.build_device``), with a fake
    transport and one clock for data and network."""
    dev = key.public.device_id
    transport = Recording()
    agent = build_device(
        name="fridge-1",
        key=key,
        store=store,
        domains={"home": {dev, *peers}},
        roots=authority.roots,
        transport=cast(Transport, transport),
        data_clock=clock,
        net_clock=clock,
        seed=1,
        policy=policy,
        executor=executor,
    )
    return agent, transport


def run_agent(
    clock: SimClock,
    agent: DeviceAgent,
    boot: list[I.Input],
    scenario: Callable[[], Awaitable[None]],
) -> None:
    """Start the agent and run it on ``clock``'s event loop while ``scenario`` plays; then stop
    it as the fleet runner does (cancel ``run``, then ``shutdown``)."""

    async def main() -> None:
        await agent.start(boot)
        run = asyncio.create_task(agent.run())
        try:
            await scenario()
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        await agent.shutdown()

    clock.run(main())


class Setup:
    def __init__(self, tmp: Path) -> None:
        rng = random.Random(11)
        self.authority = authority = Authority(rng)
        self.sealer = SimDevice(authority, rng)
        key = SigningKey(rng.randbytes(32))
        self.cert = authority.enroll(key)
        self.store = Store(tmp / "store.sqlite")
        self.clock = SimClock(START_MS)
        self.executor = InlineExecutor()
        self.agent, self.transport = make_agent(
            self.store,
            key,
            authority,
            clock=self.clock,
            executor=self.executor,
            policy=SealPolicy(max_readings=64, max_age_ms=3_600_000),
            peers=(self.sealer.device_id,),
        )

    def run(self, scenario: Callable[[Setup], Awaitable[None]]) -> None:
        boot: list[I.Input] = [
            I.CertificateKnown(self.cert),
            I.CertificateKnown(self.sealer.certificate),
        ]
        try:
            run_agent(self.clock, self.agent, boot, lambda: self._online_then(scenario))
        finally:
            self.store.close()

    async def _online_then(self, scenario: Callable[[Setup], Awaitable[None]]) -> None:
        peer = self.sealer.device_id
        self.transport.online.add(peer)
        self.transport.deliver(Delivery("presence", "presence", peer, b"online"))
        await self.settle()
        await scenario(self)

    async def settle(self, ms: int = 1) -> None:
        """Let ``ms`` simulated milliseconds pass: the agent handles everything delivered."""
        await self.clock.sleep(ms)

    async def announce(self, count: int) -> list[bytes]:
        """The sealer seals ``count`` blocks and broadcasts their headers; returns them once
        the agent's gossip core accepted them."""
        wires = [self.sealer.seal(START_MS + 1000 * i).header.wire for i in range(count)]
        msg = sealed(wire.encode(wire.Announce(self.sealer.device_id, tuple(wires))))
        self.transport.deliver(Delivery("domain", "domain", None, msg, "home"))
        await self.settle()
        assert self.agent.node.counters["header_accepted"] == count
        return wires

    def stored(self) -> list[bytes]:
        return [h.wire for h in self.store.peer_headers(self.sealer.device_id)]

    def responses(self, request_id: int) -> list[wire.Response]:
        return [
            m
            for _, p in self.transport.sent
            if isinstance(m := wire.decode(unseal(p)), wire.Response) and m.request_id == request_id
        ]


def test_accepted_headers_join_the_store_job_of_the_next_readings(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        wires = await s.announce(3)
        jobs = s.executor.jobs
        await s.agent.submit([Sample(s.clock.now_ms(), "temp_mc", 4000)])
        await s.agent.drained()
        # Well within the write delay, the readings' store job carried them: one job in all.
        assert s.clock.now_ms() - START_MS < WRITE_MS
        assert s.stored() == wires
        assert s.executor.jobs == jobs + 1
        assert s.store.last_seq() == 0

    Setup(tmp_path).run(scenario)


def test_accepted_headers_are_written_on_their_own_when_no_store_work_comes(
    tmp_path: Path,
) -> None:
    async def scenario(s: Setup) -> None:
        accepted = s.clock.now_ms()
        wires = await s.announce(2)
        jobs = s.executor.jobs
        await s.clock.sleep_until(accepted + WRITE_MS - 100)
        assert s.stored() == [] and s.executor.jobs == jobs  # still waiting for store work
        await s.clock.sleep_until(accepted + WRITE_MS + 100)
        assert s.stored() == wires and s.executor.jobs == jobs + 1
        assert s.store.last_seq() is None  # nothing else was written

    Setup(tmp_path).run(scenario)


def test_a_pull_served_right_after_acceptance_includes_the_headers_not_yet_written(
    tmp_path: Path,
) -> None:
    async def scenario(s: Setup) -> None:
        accepted = s.clock.now_ms()
        wires = await s.announce(4)
        assert s.stored() == []
        # Asking for bodies too: the core serves such a pull from the store, not from memory.
        request = wire.Request(s.sealer.device_id, 7, s.sealer.device_id, 0, 3, wire.FLAG_BODIES)
        jobs = s.executor.jobs
        s.transport.deliver(Delivery("inbox", "inbox", None, sealed(wire.encode(request))))
        await s.settle()
        assert s.clock.now_ms() < accepted + WRITE_MS  # the write delay has not passed
        assert [(r.headers, r.blocks) for r in s.responses(7)] == [(tuple(wires), ())]
        assert s.stored() == wires and s.executor.jobs == jobs + 1  # the pull's job wrote them

    Setup(tmp_path).run(scenario)


def test_headers_still_queued_at_shutdown_are_written(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        wires = await s.announce(2)
        assert s.stored() == []
        await s.agent.shutdown()
        assert s.stored() == wires

    Setup(tmp_path).run(scenario)


def test_headers_due_wake_one_shared_timer_not_the_devices_network_timer(
    tmp_path: Path,
) -> None:
    async def scenario(s: Setup) -> None:
        for _ in range(10):  # past the first round, to a time the timer sleeps long from
            sleeps = s.agent._net_sleeps_until
            assert sleeps is not None
            if sleeps > s.clock.now_ms() + 2 * WRITE_MS:
                break
            await s.clock.sleep_until(sleeps + 1)
        accepted = s.clock.now_ms()
        assert sleeps > accepted + 2 * WRITE_MS
        wires = await s.announce(2)
        # Before: the device's network timer was brought forward to write them, then found
        # them written by its readings' job, as a rule, and slept again.
        assert s.agent._net_sleeps_until == sleeps
        timers = [t for t in asyncio.all_tasks() if t.get_name() == "header-writes"]
        assert len(timers) == 1 and not timers[0].done()
        await s.clock.sleep_until(accepted + WRITE_MS + 100)
        assert s.stored() == wires
        assert timers[0].done()  # nothing more due: the shared timer ends

    Setup(tmp_path).run(scenario)


class _Due:
    """A device context as the shared header timer sees it: its clock, and the call it gets."""

    def __init__(self, clock: SimClock, due: int) -> None:
        self.net_clock = clock
        self.due = due
        self.written: list[int] = []

    def write_headers_if_due(self, now_ms: int) -> None:
        if now_ms >= self.due:
            self.written.append(now_ms)


def test_a_thousand_devices_headers_wake_the_shared_timer_once_per_slot() -> None:
    clock = SimClock(START_MS)
    wakes = 0
    sleep_until = clock.sleep_until

    async def counted(t_ms: int) -> None:
        nonlocal wakes
        task = asyncio.current_task()
        wakes += task is not None and task.get_name() == "header-writes"
        await sleep_until(t_ms)

    clock.sleep_until = counted  # type: ignore[method-assign]
    rng = random.Random(3)
    devices: list[_Due] = []

    async def main() -> None:
        # 1,000 devices accept headers over one second, each due WRITE_MS later.
        for _ in range(1_000):
            await clock.sleep(rng.randint(0, 2))
            d = _Due(clock, clock.now_ms() + WRITE_MS)
            devices.append(d)
            HeaderWrites.due(cast(DeviceContext, d), d.due)
        await clock.sleep(2 * WRITE_MS)

    clock.run(main())
    span = devices[-1].due - devices[0].due
    assert wakes <= span // HEADER_WRITE_SLOT_MS + 2, wakes  # one per slot, not per device
    for d in devices:  # each written once, in the slot its due time falls in
        assert len(d.written) == 1 and d.due <= d.written[0] < d.due + HEADER_WRITE_SLOT_MS


def test_a_cosignature_waits_for_its_durable_state_and_the_receive_loop_does_not(
    tmp_path: Path,
) -> None:
    """A witness request's answer leaves only once the witness state is durable; meanwhile the
    device's receive loop goes on (it waited for the device's store queue before)."""

    async def scenario(s: Setup) -> None:
        wires = await s.announce(2)
        log = s.sealer
        origin = device_origin(fleet_label(s.authority.key.public), log.device_id, 0)
        cp = Checkpoint(origin, 2, root_from_leaf_hashes([decode_header(w).hash for w in wires]))
        note = sign_note(cp.text(), device_signer(origin, log.key))
        body = AddCheckpoint(0, (), note).encode()
        s.executor.hold()  # the device's store work waits, as behind a busy store thread
        ask = sealed(wire.encode(wire.WitnessRequest(log.device_id, 5, body)))
        s.transport.deliver(Delivery("inbox", "inbox", None, ask))
        await s.settle()
        assert len(s.executor.held) == 1  # the witness state's write
        more = [log.seal(START_MS + 1000 * i).header.wire for i in range(2, 4)]
        msg = sealed(wire.encode(wire.Announce(log.device_id, tuple(more))))
        s.transport.deliver(Delivery("domain", "domain", None, msg, "home"))
        await s.settle()
        assert s.agent.node.counters["header_accepted"] == 4  # not stuck behind the write
        cosigned = [
            m for _, p in s.transport.sent if isinstance(m := wire.decode(unseal(p)), wire.Cosigned)
        ]
        assert cosigned == []  # not before its state is durable
        s.executor.release()
        await s.settle()
        assert [(o, n) for o, n, _ in s.store.witness_states()] == [(origin, 2)]
        cosigned = [
            m for _, p in s.transport.sent if isinstance(m := wire.decode(unseal(p)), wire.Cosigned)
        ]
        assert [(m.request_id, m.status) for m in cosigned] == [(5, 200)]

    Setup(tmp_path).run(scenario)
