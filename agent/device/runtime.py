"""One device's asyncio runtime: samples -> signed readings -> sealed blocks -> gossip.

A thin adapter around three cores: the ledger's ``ChainWriter`` (signing, durable store), the
sans-I/O ``GossipNode``, and a ``Transport``. One TaskGroup with named tasks:

- ``ingest``: takes batches of samples from a bounded queue, signs and makes them durable (off the
  event loop, in the shared executor), seals when the policy says so, then announces the block.
  Nothing leaves the device before it is durable.
- ``seal-timer``: seals by age on the *data* clock (simulated or real), even when no sample comes.
- ``gossip-timer``: drives the gossip core's one timer on the *network* clock (always real time
  in a live fleet: protocol timeouts measure the network, not the simulation).
- ``receive``: feeds every transport delivery to the gossip core.

Every action of the core is executed here and nowhere else. Store work runs in the executor,
serialized per device by a lock; the event loop never blocks on SQLite or fsync. (Fully
simulated runs pass no executor: store work then runs inline, in a reproducible order.)
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.device.replicator import Replicator
from agent.device.sealing import SealPolicy
from agent.device.storework import StoreThreads
from agent.errors import AgentError
from agent.gossip import actions as A
from agent.gossip import inputs as I
from agent.gossip.node import GossipNode
from agent.replication import inputs as RI
from agent.replication.node import ReplicationNode
from agent.replication.wire import is_replication_message
from agent.transport.base import Delivery, Transport
from agent.transport.errors import TransportError
from firmware_sim.clock import Clock, Wakeup
from firmware_sim.samples import Sample
from ledger.block import Block, decode_block, decode_header
from ledger.chain import ChainWriter
from ledger.epoch import EpochRecord, decode_epoch, sign_epoch
from ledger.errors import LedgerError, TimeOrderError
from ledger.store import Store

T = TypeVar("T")
_NOTIFICATIONS = (
    A.HeadersAccepted,
    A.BlockAccepted,
    A.ForkDetected,
    A.DeviceRevoked,
    A.PeerMuted,
    A.PeerUnmuted,
    A.EpochAccepted,
    A.RestoreProgressed,
    A.RestoreFinished,
    A.RestoreFailed,
)
log = logging.getLogger("edgefleet.agent")

INGEST_QUEUE = 64  # sample batches waiting per device; a full queue makes the producer wait
# Accepted peer headers ride along with the device's next store work (usually the readings it
# makes durable every step: one commit, one trip to the executor); when none comes, they are
# written on their own this long after the first of them was accepted.
HEADER_WRITE_S = 1.0
TEMP_SENSORS = ("fridge.temp_mc", "freezer.temp_mc", "cabinet.temp_mc", "water.temp_mc", "temp_mc")


@dataclass
class DeviceStats:
    """What the live view and the tests read about one device."""

    readings: int = 0
    blocks: int = 0
    latest: dict[str, int] = field(default_factory=dict)  # sensor -> last value
    alarms: set[str] = field(default_factory=set)  # active alarm sensors
    sent: int = 0
    received: int = 0
    send_failures: int = 0
    counters: Counter[str] = field(default_factory=Counter)


class DeviceAgent:
    def __init__(
        self,
        *,
        name: str,
        kind: str = "",
        site: str = "",
        writer: ChainWriter,
        node: GossipNode,
        transport: Transport,
        data_clock: Clock,
        net_clock: Clock,
        policy: SealPolicy,
        executor: Executor | None,
        peer_ids: Iterable[str] = (),
        replication: ReplicationNode | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.site = site
        self.writer = writer
        self.store: Store = writer.store
        self.device_id = writer.device_id
        self.node = node
        self.transport = transport
        self.data_clock = data_clock
        self.net_clock = net_clock
        self.policy = policy
        self.stats = DeviceStats()
        self.peer_ids = tuple(peer_ids)
        self._executor = executor
        self._store_lock = asyncio.Lock()
        self._queue: asyncio.Queue[list[Sample]] = asyncio.Queue(INGEST_QUEUE)
        self._oldest_pending_ms: int | None = None
        self._rearm_gossip = Wakeup()
        self._rearm_seal = Wakeup()
        self._rearm_replication = Wakeup()
        self._gossip_sleeps_until: int | None = None
        self._seal_sleeps_until: int | None = None
        self._log = logging.LoggerAdapter(log, {"device": name})
        self._pulls: deque[asyncio.Task[None]] = deque()
        self._unwritten: list[bytes] = []  # accepted peer headers not yet handed to the store
        self._write_later: asyncio.TimerHandle | None = None
        # Observers (benchmarks, tests, the live view): called with (agent, event, net_now_ms)
        # for each own block sealed (OwnBlockSealed) and each notification of the gossip core
        # (HeadersAccepted, BlockAccepted, ForkDetected, ...). Must be quick and must not raise.
        self.observers: list[Callable[[DeviceAgent, object, int], None]] = []
        # Restore of a wiped store (start(restore=True)): nothing is signed until it finishes.
        self._restored = asyncio.Event()
        self._restored.set()
        self.restore_settled = asyncio.Event()  # finished, or failed (the runner stops then)
        self.restore_result: A.RestoreFinished | A.RestoreFailed | None = None
        # Edge replication of own block bodies on peers, and of peers' on this device's spare
        # storage (agent.device.replicator); None: the device neither places nor holds replicas.
        self.replicator = None if replication is None else Replicator(self, replication)

    # --- what the fleet runner calls ----------------------------------------------------------
    async def submit(self, samples: list[Sample]) -> None:
        """Queue a batch of samples (waits while the queue is full: backpressure)."""
        if samples:
            await self._queue.put(samples)

    async def drained(self) -> None:
        """Wait until every submitted batch is signed and durable (and sealed when due)."""
        await self._queue.join()

    async def start(self, boot_inputs: Sequence[I.Input], *, restore: bool = False) -> None:
        """Feed what the store and the fleet already know into the gossip core.

        ``restore``: the device's store is empty but it may have published before (a wiped
        store): it restores its chain from peers first (agent/gossip/restore.py); samples queue
        meanwhile and nothing is signed until ``restore_settled`` reports it finished."""
        if restore:
            if self.store.block_count() or self.store.last_seq() is not None:
                raise RestoreError(
                    f"{self.name}: restore needs an empty store, found "
                    f"{self.store.block_count()} blocks in {self.store.path}"
                )
            self._restored.clear()
        self._renew_oldest_pending()
        for event in boot_inputs:
            await self._execute(self.node.handle(event, self.net_clock.now_ms()))
        if self.replicator is not None:
            await self.replicator.start(boot_inputs)
        if restore:
            self._log.info(
                "restoring %s from its peers: nothing is signed until it finishes", self.device_id
            )
            await self._handle(I.RestoreRequested())
        for peer in self.peer_ids:
            await self.transport.watch_presence(peer)
        head = self.store.head()
        self._log.info(
            "started as %s: height %s, %d pending, next seq %d, %d domain peers",
            self.device_id,
            "-" if head is None else head.header.height,
            self.writer.pending_count(),
            self.writer.next_seq,
            len(self.peer_ids),
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._ingest_loop(), name=f"{self.name}:ingest")
            tg.create_task(self._seal_timer(), name=f"{self.name}:seal-timer")
            tg.create_task(self._gossip_timer(), name=f"{self.name}:gossip-timer")
            tg.create_task(self._receive_loop(), name=f"{self.name}:receive")
            if self.replicator is not None:
                tg.create_task(self.replicator.timer_loop(), name=f"{self.name}:replication")

    async def seal_now(self) -> None:
        """Seal every pending reading now, whatever the policy (end of a run)."""
        blocks = await self._locked(self._seal_all, carry=True)
        await self._announce(blocks)

    async def shutdown(self) -> None:
        """Make every signed reading durable (called after run() is cancelled)."""
        if self._write_later is not None:
            self._write_later.cancel()
        async with self._store_lock:
            await self._off_loop(self._job, self._take_unwritten(), self.writer.flush, (), True)
        head = self.store.head()
        self._log.info(
            "stopped: height %s, %d readings and %d blocks this run, sent %d, received %d, "
            "send failures %d",
            "-" if head is None else head.header.height,
            self.stats.readings,
            self.stats.blocks,
            self.stats.sent,
            self.stats.received,
            self.stats.send_failures,
        )

    # --- ingest and sealing --------------------------------------------------------------------
    @property
    def restoring(self) -> bool:
        return not self._restored.is_set()

    async def _ingest_loop(self) -> None:
        await self._restored.wait()  # a restoring device signs nothing: samples queue up
        while True:
            batch = await self._queue.get()
            try:
                await self._ingest(batch)
            finally:
                self._queue.task_done()

    async def _ingest(self, batch: list[Sample]) -> None:
        for s in batch:
            if s.sensor.startswith("alarm."):
                (self.stats.alarms.add if s.value else self.stats.alarms.discard)(s.sensor)
            self.stats.latest[s.sensor] = s.value
        if self._oldest_pending_ms is None:
            self._oldest_pending_ms = batch[0].time_ms
        now = self.data_clock.now_ms()
        refused = self.stats.counters["time-refused"]
        blocks = await self._locked(self._sign_and_store, batch, now, carry=True)
        self.stats.readings += len(batch) - (self.stats.counters["time-refused"] - refused)
        await self._announce(blocks)
        deadline = self.policy.deadline(self._oldest_pending_ms)
        sleeping = self._seal_sleeps_until
        if deadline is not None and (sleeping is None or deadline < sleeping):
            self._rearm_seal.set()

    def _sign_and_store(self, batch: list[Sample], now: int) -> list[Block]:
        w = self.writer
        refused: list[TimeOrderError] = []
        for s in batch:
            try:
                w.record(s.time_ms, s.sensor, s.value, s.tag, s.text)
            except TimeOrderError as exc:  # the past is never signed (ledger/chain.py)
                refused.append(exc)
        if refused:  # one line per batch: a replayed day must not flood the log
            self.stats.counters["time-refused"] += len(refused)
            self._log.warning("%s: %d samples not signed: %s", self.name, len(refused), refused[0])
        blocks = self._seal_if_due(now)
        if not blocks:
            w.flush()
        return blocks

    def _seal_if_due(self, now: int) -> list[Block]:
        """Seal what the policy says is due at ``now``. Decided here, inside the store job
        (under the device's store lock), from what the writer holds at this moment: a decision
        taken on the loop before the job could be stale by the time it runs (the seal timer
        and a batch both finding a seal due would seal twice, the second time a tiny block)."""
        oldest = self.writer.oldest_pending()
        if oldest is None or not self.policy.due(
            self.writer.pending_count(), oldest.reading.time_ms, now
        ):
            return []
        return self._seal_all()

    def _seal_all(self) -> list[Block]:
        blocks = []
        while True:
            block = self.writer.seal(self.policy.max_readings)
            if block is None:
                break
            blocks.append(block)
            if self.writer.pending_count() < self.policy.max_readings:
                break
        return blocks

    async def _seal_timer(self) -> None:
        await self._restored.wait()
        while True:
            deadline = self.policy.deadline(self._oldest_pending_ms)
            self._seal_sleeps_until = deadline
            await self._rearm_seal.wait(self.data_clock, deadline)
            now = self.data_clock.now_ms()
            if self.policy.due(self.writer.pending_count(), self._oldest_pending_ms, now):
                blocks = await self._locked(self._seal_if_due, now, carry=True)
                if not blocks:  # another job sealed first: the hint was stale
                    self._renew_oldest_pending()
                await self._announce(blocks)

    def _renew_oldest_pending(self) -> None:
        """The loop's hint of when a seal falls due, from the writer's memory (no SQLite on the
        loop); the decision itself is taken in the store job (``_seal_if_due``)."""
        oldest = self.writer.oldest_pending()
        self._oldest_pending_ms = None if oldest is None else oldest.reading.time_ms

    async def _announce(self, blocks: list[Block]) -> None:
        if not blocks:
            return
        self._renew_oldest_pending()
        self.stats.blocks += len(blocks)
        for block in blocks:
            h = block.header.header
            self._log.debug("sealed height %d: %d readings", h.height, h.count)
            self._notify(I.OwnBlockSealed(block))
            await self._handle(I.OwnBlockSealed(block))
            if self.replicator is not None:
                await self.replicator.handle(RI.OwnBlockSealed(block))

    # --- gossip --------------------------------------------------------------------------------
    async def _handle(self, event: I.Input) -> None:
        await self._execute(self.node.handle(event, self.net_clock.now_ms()))
        self._gossip_deadline_moved()

    def _gossip_deadline_moved(self) -> None:
        """Wake the gossip timer only when the core's deadline is now earlier than the one it
        sleeps until (most inputs leave it alone: waking thousands of timers costs)."""
        deadline = self.node.next_deadline()
        sleeping = self._gossip_sleeps_until
        if deadline is not None and (sleeping is None or deadline < sleeping):
            self._rearm_gossip.set()

    async def _gossip_timer(self) -> None:
        while True:
            self._gossip_sleeps_until = self.node.next_deadline()
            await self._rearm_gossip.wait(self.net_clock, self._gossip_sleeps_until)
            deadline = self.node.next_deadline()
            now = self.net_clock.now_ms()
            if deadline is not None and now >= deadline:
                await self._execute(self.node.handle_timer(now))

    async def _receive_loop(self) -> None:
        async for delivery in self.transport:
            self.stats.received += 1
            rep = self.replicator
            if (
                rep is not None
                and delivery.kind in ("inbox", "domain")
                and is_replication_message(delivery.payload)
            ):
                await rep.handle(RI.MessageReceived(None, delivery.payload))
                continue
            event = self._as_input(delivery)
            if event is not None:
                await self._handle(event)
                if rep is not None and isinstance(event, I.PeerUp | I.PeerDown):
                    peer = event.peer_id
                    await rep.handle(
                        RI.PeerUp(peer) if isinstance(event, I.PeerUp) else RI.PeerDown(peer)
                    )

    def _as_input(self, d: Delivery) -> I.Input | None:
        if d.kind == "inbox":
            return I.MessageReceived(None, d.payload)
        if d.kind == "domain":
            return I.MessageReceived(None, d.payload, broadcast=True)
        if d.kind == "evidence":
            return I.EvidenceReceived(d.payload)
        if d.kind == "presence" and d.peer_id is not None:
            online = self.transport.presence(d.peer_id)
            return I.PeerUp(d.peer_id) if online else I.PeerDown(d.peer_id)
        return None

    async def _execute(self, acts: list[A.Action]) -> None:
        for act in acts:
            match act:
                case A.Send(peer_id=peer, payload=payload):
                    await self._send(self.transport.send(peer, payload))
                case A.Broadcast(domain=domain, payload=payload):
                    await self._send(self.transport.broadcast(domain, payload))
                case A.PublishEvidence(device_id=dev, evidence=ev):
                    await self._send(self.transport.publish_evidence(dev, ev))
                case A.StoreHeaders(headers=wires):
                    self._store_headers(wires)
                    if self.replicator is not None:
                        await self.replicator.from_gossip(act)
                case A.StoreBlock(block=wire):
                    await self._locked(lambda w=wire: self.store.put_replica(decode_block(w)))
                case A.StoreEvidence(device_id=dev, evidence=ev):
                    await self._locked(self.store.put_evidence, dev, ev)
                case A.StoreCredential(device_id=dev, kind=kind, wire=wire):
                    await self._locked(self.store.put_credential, dev, kind, wire)
                    if self.replicator is not None:
                        await self.replicator.from_gossip(act)
                case A.ServePull():
                    self._keep(asyncio.create_task(self._serve(act), name=f"{self.name}:serve"))
                case A.StoreEpoch(record=record):
                    await self._locked(self.store.put_epoch, decode_epoch(record))
                case A.RewindChain(device_id=dev, last_height=last, new_epoch=epoch):
                    wires = await self._locked(self._rewind, dev, last, epoch)
                    await self._handle(I.ChainRewound(dev, wires))
                case A.CommitRestored(blocks=wires):
                    blocks = [decode_block(w) for w in wires]
                    await self._locked(self.store.commit_restored, blocks)
                case A.SignEpoch():
                    record = await self._locked(self._sign_epoch, act)
                    await self._handle(I.EpochSigned(record))
                case A.RestoreFinished(epoch=epoch, height=h, new_epoch=new):
                    await self._locked(self.writer.resume, epoch)
                    self.restore_result = act
                    if self.replicator is not None:
                        # The restored blocks are own blocks again: track them, so that their
                        # holders (who promise again what they hold) are known and audited.
                        limit = self.replicator.node.config.max_own_blocks
                        infos = await self._locked(self.store.own_block_infos, limit)
                        await self.replicator.handle(
                            RI.OwnChainLoaded(tuple(RI.OwnBlockInfo(**i._asdict()) for i in infos))
                        )
                    self._log.info(
                        "restored through height %d (published head %d); signing resumes in "
                        "epoch %d%s",
                        h,
                        act.published_height,
                        epoch,
                        " (a new epoch: the published head was out of reach)" if new else "",
                    )
                    self._restored.set()
                    self.restore_settled.set()
                case A.RestoreFailed(reason=why):
                    self.restore_result = act
                    self._log.error("restore cannot finish: %s", why)
                    self.restore_settled.set()
                case A.ForkDetected(device_id=dev, height=h):
                    self.stats.counters["forks_detected"] += 1
                    self._log.warning("fork detected: device %s at height %d", dev, h)
                case A.PeerMuted(peer_id=peer, reason=why):
                    self.stats.counters["peers_muted"] += 1
                    self._log.info("muted peer %s: %s", peer, why)
                case _:
                    self.stats.counters[type(act).__name__] += 1
            if isinstance(act, _NOTIFICATIONS):
                self._notify(act)

    def _notify(self, event: object) -> None:
        if self.observers:
            now = self.net_clock.now_ms()
            for observer in self.observers:
                observer(self, event, now)

    async def _send(self, op: Any) -> None:
        try:
            await op
            self.stats.sent += 1
        except TransportError as exc:
            # Best effort by design: the store is the outbox and anti-entropy re-offers.
            self.stats.send_failures += 1
            self._log.debug("send failed: %s", exc)

    def _store_headers(self, wires: tuple[bytes, ...]) -> None:
        """Queue accepted peer headers for the store: they go with the next store work (see
        ``_job``), or on their own ``HEADER_WRITE_S`` from now. Every store job writes them
        before it reads or writes anything else, so a pull served from the store sees them."""
        self._unwritten.extend(wires)
        if self._write_later is None:
            loop = asyncio.get_running_loop()
            self._write_later = loop.call_later(HEADER_WRITE_S, self._write_headers_soon)

    def _write_headers_soon(self) -> None:
        self._write_later = None
        if self._unwritten:
            self._keep(asyncio.create_task(self._locked(_nothing), name=f"{self.name}:headers"))

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background store task until it is done (finished ones are let go here)."""
        self._pulls.append(task)
        while self._pulls and self._pulls[0].done():
            self._pulls.popleft()

    def _take_unwritten(self) -> list[bytes]:
        wires, self._unwritten = self._unwritten, []
        if self._write_later is not None:
            self._write_later.cancel()
            self._write_later = None
        return wires

    def _job(
        self, wires: list[bytes], fn: Callable[..., T], args: tuple[Any, ...], carry: bool
    ) -> T:
        """One store job, off the loop: the peer headers accepted since the last job first
        (``carry``: in the first transaction ``fn`` opens, i.e. the same commit), then ``fn``."""
        store = self.store
        if wires:
            store.carry_peer_headers([decode_header(w) for w in wires])
        if not carry:
            store.write_carried()
            return fn(*args)
        try:
            return fn(*args)
        finally:
            store.write_carried()  # fn opened no transaction (or failed): write them anyway

    def _rewind(self, dev: str, last_height: int, new_epoch: int) -> tuple[bytes, ...]:
        """Move a peer's superseded headers aside; its stored headers 0..last_height (the
        contiguous run from 0: the core rebuilds the chain from them)."""
        self.store.supersede_peer_headers(dev, last_height, new_epoch)
        wires = self.store.peer_header_wires(dev, 0, last_height)
        run = 0
        while run < len(wires) and decode_header(wires[run]).header.height == run:
            run += 1
        return tuple(wires[:run])

    def _sign_epoch(self, act: A.SignEpoch) -> bytes:
        """Sign the epoch record and make it durable before anything of the new epoch exists."""
        record = EpochRecord(
            self.device_id,
            act.new_epoch,
            act.prev_epoch,
            act.last_height,
            act.last_hash,
            self.data_clock.now_ms(),
        )
        signed = sign_epoch(record, self.writer.key)
        self.store.put_epoch(signed)
        return signed.wire

    async def _serve(self, act: A.ServePull) -> None:
        try:
            headers, blocks = await self._locked(self._load_pull, act)
        except LedgerError as exc:
            self._log.warning(
                "cannot serve %s %d..%d: %s", act.device_id, act.from_height, act.to_height, exc
            )
            return
        await self._handle(I.PullLoaded(act.peer_id, act.request_id, headers, blocks))

    def _load_pull(self, act: A.ServePull) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        lo, hi = act.from_height, act.to_height
        own = act.device_id == self.device_id
        headers = (
            self.store.own_header_wires(lo, hi)
            if own
            else self.store.peer_header_wires(act.device_id, lo, hi)
        )
        blocks: list[bytes] = []
        if act.bodies:
            size = 0
            if own:
                candidates: Iterable[bytes] = (
                    w for h in range(lo, hi + 1) if (w := self.store.block_wire(h)) is not None
                )
            else:
                candidates = self.store.replica_wires(act.device_id, lo, hi)
            for wire in candidates:
                if len(blocks) >= act.max_blocks or size + len(wire) > act.max_bytes:
                    break
                blocks.append(wire)
                size += len(wire)
        return tuple(headers), tuple(blocks)

    # --- helpers -------------------------------------------------------------------------------
    async def _locked(self, fn: Callable[..., T], *args: Any, carry: bool = False) -> T:
        """Run store work under the device's lock, shielded: once started it always completes
        (a stop cancels the tasks, but never a write the gossip core already counted as done;
        ``shutdown`` takes the same lock, so it waits for any write in flight). The accepted
        peer headers not yet written go first (``_job``); ``carry=True``: ``fn`` makes a durable
        commit, and they join it."""

        async def locked() -> T:
            async with self._store_lock:
                return await self._off_loop(self._job, self._take_unwritten(), fn, args, carry)

        return await asyncio.shield(locked())

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        ex = self._executor
        if ex is None:  # simulated runs: inline, so a seed reproduces the run
            return fn(*args)
        if isinstance(
            ex, StoreThreads
        ):  # results handed back in batches (agent/device/storework.py)
            return await ex.run(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(ex, fn, *args)

    def temperatures(self) -> tuple[tuple[str, int], ...]:
        return tuple((s, self.stats.latest[s]) for s in TEMP_SENSORS if s in self.stats.latest)


def _nothing() -> None:
    """A store job that only writes the accepted peer headers (``DeviceAgent._job``)."""


class RestoreError(AgentError, code="restore"):
    """A device cannot be restored (its store is not empty, or its chain is out of reach)."""
