"""One device's asyncio runtime: samples -> signed readings -> sealed blocks -> gossip and
replication.

The device's task group around four cores: the ledger's ``ChainWriter`` (signing, the durable
store), the sans-I/O gossip and replication cores (each behind its driver,
``gossip_driver.GossipDriver`` and ``replication_driver.ReplicationDriver``), and a
``Transport``. The drivers reach the device only through its ports
(``context.DeviceContext``: store jobs under the device's lock, sends, notifications, the
network timer). One TaskGroup with named tasks:

- ``ingest``: takes batches of samples from a bounded queue, signs and makes them durable (a
  store job, off the event loop), seals when the policy says so, then announces the blocks.
  Nothing leaves the device before it is durable. A fleet's step skips it: ``ingest`` (the
  function) hands every device's batch of the step to a few store jobs, ``INGEST_CHUNK``
  devices each, each device's batch still under its store lock and in its own commit; only a
  device that cannot take it at once (restoring, batches queued, a store job in flight) gets it
  through its queue.
- ``seal-timer``: seals by age on the *data* clock (simulated or real), even when no sample
  comes; when it wakes while an ingest job is queued or running, it lets that job decide.
- ``net-timer``: the one timer of the network side, on the *network* clock (real time in a live
  fleet: protocol timeouts measure the network, not the simulation): the gossip core's deadline,
  the replication core's, and the write of accepted peer headers no store job carried.
- ``receive``: routes every transport delivery to the core it is for.

Store work runs off the loop, serialized per device; the event loop never blocks on SQLite or
fsync. (Fully simulated runs pass no executor: store work then runs inline, in a reproducible
order.) A device is assembled by ``agent.fleet.build.build_device``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import NamedTuple

from agent.device.context import DeviceContext
from agent.device.faults import describe, first_cause
from agent.device.gossip_driver import GossipDriver
from agent.device.liveness import Liveness
from agent.device.replication_driver import ReplicationDriver
from agent.device.sealing import SealPolicy
from agent.device.stats import DeviceStats
from agent.errors import AgentError
from agent.gossip import actions as A
from agent.gossip import inputs as I
from agent.gossip.node import GossipNode
from agent.replication import inputs as RI
from agent.replication.node import ReplicationNode
from agent.replication.wire import is_replication_message
from agent.transport.base import Delivery, Transport
from firmware_sim.clock import Clock, Wakeup
from firmware_sim.samples import Sample
from ledger.block import Block
from ledger.chain import ChainWriter
from ledger.errors import TimeOrderError
from ledger.store import Store

log = logging.getLogger("edgefleet.agent")

INGEST_QUEUE = 64  # sample batches waiting per device; a full queue makes the producer wait
# Devices whose batches one store job signs and commits, one after the other (``ingest``): a
# fleet's step is a few jobs, not one job, task and future per device.
INGEST_CHUNK = 32


class Sealed(NamedTuple):
    """What one store job sealed: consecutive blocks, and the own head's header wire before the
    first of them (None at height 0), so the cores get each block with the header it chains to
    and nothing is read back."""

    prev_header: bytes | None
    blocks: list[Block]


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
        silence_ms: int | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.site = site
        self.writer = writer
        self.store: Store = writer.store
        self.device_id = writer.device_id
        self.node = node
        self.transport = transport
        transport.label = name  # the transport's warnings name the device as the fleet does
        self.data_clock = data_clock
        self.net_clock = net_clock
        self.policy = policy
        self.stats = DeviceStats()
        self.peer_ids = tuple(peer_ids)
        # Presence is a hint (docs/PROTOCOL.md 13.3.1): a peer leaves service once presence
        # says offline *and* it left 3 probes in a row unanswered (one every request timeout),
        # or, where it cannot be probed, nothing proven came from it for 4 x peers
        # anti-entropy rounds (of this device, and of the clock: ``silence_ms`` overrides the
        # time). The peers counted are those its rounds go to: the mesh, once start() knows it.
        self._silence_ms = silence_ms
        rounds = 4 * max(2, len(self.peer_ids))
        self.liveness = Liveness(
            self.peer_ids,
            silence_ms or rounds * node.config.anti_entropy_ms,
            rounds,
            probe_ms=node.config.request_timeout_ms,
        )
        self.watched: tuple[str, ...] = self.peer_ids  # presences followed, set by start()
        self._log = logging.LoggerAdapter(log, {"device": name})
        self._queue: asyncio.Queue[list[Sample]] = asyncio.Queue(INGEST_QUEUE)
        self._queued = 0  # batches submitted to the queue and not yet signed (or dropped)
        # An ingest job of this device is queued or running: the seal timer waits for it (the
        # job decides the seal itself) instead of queueing a job of its own; it waits on
        # ``_ingest_waiter``, made only then.
        self._ingesting = False
        self._ingest_waiter: asyncio.Future[None] | None = None
        self._oldest_pending_ms: int | None = None
        self._rearm_seal = Wakeup()
        self._seal_sleeps_until: int | None = None
        self._rearm_net = Wakeup()
        self._net_sleeps_until: int | None = None
        # Observers (benchmarks, tests, the live view): called with (agent, event, net_now_ms)
        # for each own block sealed (OwnBlockSealed) and each notification of the cores
        # (HeadersAccepted, BlockAccepted, ForkDetected, BlockReplicated...). Must be quick and
        # must not raise.
        self.observers: list[Callable[[DeviceAgent, object, int], None]] = []
        self.ctx = DeviceContext(
            name=name,
            store=self.store,
            transport=transport,
            net_clock=net_clock,
            executor=executor,
            stats=self.stats,
            log=self._log,
            notify=self._notify,
            deadline_moved=self._net_deadline_moved,
        )
        # Edge replication of own block bodies on peers, and of peers' on this device's spare
        # storage; None: the device neither places nor holds replicas.
        self.replicator = (
            None
            if replication is None
            else ReplicationDriver(self.ctx, replication, name, data_clock)
        )
        self.gossip = GossipDriver(
            self.ctx,
            node,
            writer,
            data_clock,
            verified=self._verified,
            settled=self._restore_settled,
        )
        # Restore of a wiped store (start(restore=True)): nothing is signed until it finishes.
        self._restored = asyncio.Event()
        self._restored.set()
        self.restore_settled = asyncio.Event()  # finished, or failed (the runner stops then)
        self.restore_result: A.RestoreFinished | A.RestoreFailed | None = None
        # A failure of this device alone (agent/device/faults.py): the one line naming it, the
        # file and the fix. The device then signs and sends nothing more; the fleet runs on.
        self.failure: str | None = None
        self.ctx.failed = self.fail
        self._run_task: asyncio.Task[None] | None = None

    # --- what the fleet runner calls ----------------------------------------------------------
    async def submit(self, samples: list[Sample]) -> None:
        """Queue a batch of samples (waits while the queue is full: backpressure). A failed
        device drops them: nothing would sign them."""
        if samples and self.failure is None:
            self._queued += 1
            try:
                await self._queue.put(samples)
            except BaseException:  # cancelled while it waited for room: never queued
                self._queued -= 1
                raise
            if self.failure is not None:  # failed while this waited for room
                self._discard_queued()

    async def drained(self) -> None:
        """Wait until every submitted batch is signed and durable (and sealed when due), or
        dropped by a failure."""
        await self._queue.join()

    @property
    def busy(self) -> bool:
        """Batches submitted to the queue are still waiting to be signed (``drained`` waits)."""
        return self._queued > 0

    @property
    def direct(self) -> bool:
        """Whether a batch may go straight into a store job (``ingest``) rather than the queue:
        the device runs, is not restoring, has nothing queued and no store job in flight."""
        return (
            self.failure is None
            and self._queued == 0
            and self._restored.is_set()
            and not self.ctx.lock.locked()
        )

    async def start(self, boot_inputs: Sequence[I.Input], *, restore: bool = False) -> None:
        """Feed what the store and the fleet already know into the cores.

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
        await self.gossip.start(boot_inputs)
        if self.replicator is not None:
            await self.replicator.start(boot_inputs)
        if restore:
            self._log.info(
                "restoring %s from its peers: nothing is signed until it finishes", self.device_id
            )
            await self.gossip.handle(I.RestoreRequested())
        # The gossip mesh (all peers in small domains) and the holders of own replicas: the
        # presence a device follows is bounded whatever its domains' size (PROTOCOL.md 12.10).
        mesh = self.node.watched()
        rounds = 4 * max(2, len(mesh))  # a round reaches a given mesh peer 1 time in len(mesh)
        self.liveness.silence_rounds = rounds
        if not self._silence_ms:
            self.liveness.silence_ms = rounds * self.node.config.anti_entropy_ms
        watched = set(mesh)
        if self.replicator is not None:
            watched.update(self.replicator.node.holder_ids())
        self.watched = tuple(sorted(watched))
        self.liveness.watch(self.watched)
        await self.transport.watch_presences(self.watched)
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
        """The device's tasks, until cancelled. A failure of any of them (or of a background
        job) fails this device alone: ``failure`` says why, and run() returns."""
        if self.failure is not None:
            return
        self._run_task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ingest_loop(), name=f"{self.name}:ingest")
                tg.create_task(self._seal_timer(), name=f"{self.name}:seal-timer")
                tg.create_task(self._net_timer(), name=f"{self.name}:net-timer")
                tg.create_task(self._receive_loop(), name=f"{self.name}:receive")
        except asyncio.CancelledError:
            if self.failure is None:
                raise  # the runner stops the fleet
        except Exception as exc:  # contained: the other devices of the fleet run on
            self.fail(exc)
        finally:
            # A failed device keeps its transport until the runner closes them all, in order
            # (transports, then the broker): closing an MQTT link here, where the runner's
            # stop may cancel it halfway, left aiomqtt futures unretrieved and amqtt's
            # shutdown waiting.
            self._run_task = None

    def fail(self, exc: BaseException) -> None:
        """Fail this device (once): report it, drop the samples queued for it, stop its tasks."""
        if self.failure is not None:
            return
        cause = first_cause(exc)
        self.failure = describe(self.name, cause)
        self._log.error("%s", self.failure)
        self._log.debug("failure of %s", self.name, exc_info=cause)
        self._discard_queued()
        self.ctx.close_timers()
        self.restore_settled.set()  # a restore that waited for this device waits no more
        task = self._run_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _discard_queued(self) -> None:
        """Mark every queued batch done (``drained`` returns: nothing will sign them)."""
        while True:
            try:
                self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._queued -= 1
            self._queue.task_done()

    async def seal_now(self) -> None:
        """Seal every pending reading now, whatever the policy (end of a run)."""
        if self.failure is not None:
            return
        try:
            await self._announce(await self.ctx.run_store(self._seal_all, carry=True))
        except Exception as exc:
            self.fail(exc)

    async def shutdown(self) -> None:
        """Make every signed reading durable (called after run() is cancelled). A failed
        device writes nothing more: what it committed before the failure stays as it is."""
        if self.failure is None:
            try:
                await self.ctx.flush(self.writer.flush)
            except Exception as exc:
                self.fail(exc)
        head = self.store.head()
        self._log.info(
            "stopped%s: height %s, %d readings and %d blocks this run, sent %d, received %d, "
            "send failures %d",
            " after its failure" if self.failure else "",
            "-" if head is None else head.header.height,
            self.stats.readings,
            self.stats.blocks,
            self.stats.sent,
            self.stats.received,
            self.stats.send_failures,
        )

    @property
    def restoring(self) -> bool:
        return not self._restored.is_set()

    def temperatures(self) -> tuple[tuple[str, int], ...]:
        return self.stats.temperatures()

    # --- ingest and sealing (the chain writer) -------------------------------------------------
    async def _ingest_loop(self) -> None:
        await self._restored.wait()  # a restoring device signs nothing: samples queue up
        while True:
            batch = await self._queue.get()
            try:
                await self._ingest(batch)
            except Exception as exc:
                self.fail(exc)  # before task_done: the runner's drained() sees the failure
                raise
            finally:
                self._queued -= 1
                self._queue.task_done()

    async def _ingest(self, batch: list[Sample]) -> None:
        now, refused = self._ingest_begins(batch)
        try:
            sealed = await self.ctx.run_store(self._sign_and_store, batch, now, carry=True)
        finally:
            self._ingest_ends()
        await self._ingested(batch, refused, sealed)

    def _ingest_begins(self, batch: list[Sample]) -> tuple[int, int]:
        """On the loop, before the batch's store job: (the data clock now, the time-refused
        count so far)."""
        self.stats.observe(batch)
        if self._oldest_pending_ms is None:
            self._oldest_pending_ms = batch[0].time_ms
        self._ingesting = True
        return self.data_clock.now_ms(), self.stats.counters["time-refused"]

    def _ingest_ends(self) -> None:
        self._ingesting = False
        fut, self._ingest_waiter = self._ingest_waiter, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _ingested(self, batch: list[Sample], refused: int, sealed: Sealed) -> None:
        """On the loop, once the batch is durable: count it, announce what it sealed, and wake
        the seal timer if the next seal falls due earlier than it sleeps."""
        self._count(batch, refused)
        await self._announce(sealed)
        self._rearm_seal_timer()

    def _count(self, batch: list[Sample], refused: int) -> None:
        self.stats.readings += self._signed(batch, refused)

    def _signed(self, batch: list[Sample], refused: int) -> int:
        """How many of ``batch`` were signed: those not refused as the past since the
        time-refused count was ``refused``."""
        return len(batch) - (self.stats.counters["time-refused"] - refused)

    def _rearm_seal_timer(self) -> None:
        deadline = self.policy.deadline(self._oldest_pending_ms)
        sleeping = self._seal_sleeps_until
        if deadline is not None and (sleeping is None or deadline < sleeping):
            self._rearm_seal.set()

    def _sign_and_store(self, batch: list[Sample], now: int) -> Sealed:
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
        sealed = self._seal_if_due(now)
        if not sealed.blocks:
            w.flush()
        return sealed

    def _seal_if_due(self, now: int) -> Sealed:
        """Seal what the policy says is due at ``now``. Decided here, inside the store job
        (under the device's store lock), from what the writer holds at this moment: a decision
        taken on the loop before the job could be stale by the time it runs (the seal timer
        and a batch both finding a seal due would seal twice, the second time a tiny block)."""
        oldest = self.writer.oldest_pending()
        if oldest is None or not self.policy.due(
            self.writer.pending_count(), oldest.reading.time_ms, now
        ):
            return Sealed(None, [])
        return self._seal_all()

    def _seal_all(self) -> Sealed:
        head = self.store.head()  # in memory: the store keeps its head
        blocks = []
        while True:
            block = self.writer.seal(self.policy.max_readings)
            if block is None:
                break
            blocks.append(block)
            if self.writer.pending_count() < self.policy.max_readings:
                break
        return Sealed(None if head is None else head.wire, blocks)

    async def _seal_timer(self) -> None:
        await self._restored.wait()
        while True:
            deadline = self.policy.deadline(self._oldest_pending_ms)
            self._seal_sleeps_until = deadline
            await self._rearm_seal.wait(self.data_clock, deadline)
            while self._ingesting:  # its job seals what is due: then see what is left
                if self._ingest_waiter is None:
                    self._ingest_waiter = asyncio.get_running_loop().create_future()
                await self._ingest_waiter
            if self.failure is not None:  # that job failed the device: nothing more is sealed
                return
            now = self.data_clock.now_ms()
            if self.policy.due(self.writer.pending_count(), self._oldest_pending_ms, now):
                sealed = await self.ctx.run_store(self._seal_if_due, now, carry=True)
                if not sealed.blocks:  # another job sealed first: the hint was stale
                    self._renew_oldest_pending()
                await self._announce(sealed)

    def _renew_oldest_pending(self) -> None:
        """The loop's hint of when a seal falls due, from the writer's memory (no SQLite on the
        loop); the decision itself is taken in the store job (``_seal_if_due``)."""
        oldest = self.writer.oldest_pending()
        self._oldest_pending_ms = None if oldest is None else oldest.reading.time_ms

    async def _announce(self, sealed: Sealed) -> None:
        """Hand each sealed (durable) block to the cores, with the header it chains to."""
        if not sealed.blocks:
            return
        self._renew_oldest_pending()
        self.stats.blocks += len(sealed.blocks)
        prev = sealed.prev_header
        for block in sealed.blocks:
            h = block.header.header
            self._log.debug("sealed height %d: %d readings", h.height, h.count)
            self._notify(I.OwnBlockSealed(block))
            await self.gossip.handle(I.OwnBlockSealed(block))
            if self.replicator is not None:
                await self.replicator.handle(RI.OwnBlockSealed(block, prev))
            prev = block.header.wire

    # --- the network side ----------------------------------------------------------------------
    def _net_deadline_moved(self, deadline: int | None) -> None:
        """Bring the network timer's wake-up forward when a deadline is now earlier than the one
        it sleeps until (most inputs leave them alone), without waking it now: it wakes at the
        new deadline (waking thousands of timers only to sleep again costs; accepted peer
        headers alone moved a deadline about once a second per device in a domain of 32)."""
        sleeping = self._net_sleeps_until
        if deadline is not None and (sleeping is None or deadline < sleeping):
            self._net_sleeps_until = deadline
            self._rearm_net.earlier(self.net_clock, deadline)

    def _net_deadline(self) -> int | None:
        times = [self.gossip.deadline(), self._liveness_deadline()]
        if self.replicator is not None:
            times.append(self.replicator.deadline())
        return min((t for t in times if t is not None), default=None)

    async def _net_timer(self) -> None:
        clock = self.net_clock
        while True:
            self._net_sleeps_until = self._net_deadline()
            await self._rearm_net.wait(clock, self._net_sleeps_until)
            await self.gossip.on_timer(clock.now_ms())
            if self.replicator is not None:
                await self.replicator.on_timer(clock.now_ms())
            await self._doubts()

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
                await self._proven(delivery.payload)
                continue
            if delivery.kind == "presence" and delivery.peer_id is not None:
                await self._presence(delivery.peer_id)
                continue
            event = self._as_input(delivery)
            if event is not None:
                await self.gossip.handle(event)
                if isinstance(event, I.MessageReceived) and (
                    self.replicator is not None or self.liveness.watching
                ):  # (``_proven`` does nothing else: no coroutine per delivery for nothing)
                    await self._proven(delivery.payload)

    def _as_input(self, d: Delivery) -> I.Input | None:
        if d.kind == "inbox":
            return I.MessageReceived(None, d.payload)
        if d.kind == "domain":
            return I.MessageReceived(None, d.payload, broadcast=True)
        if d.kind == "evidence":
            return I.EvidenceReceived(d.payload)
        if d.kind == "revocation":
            return I.RevocationReceived(d.payload)
        return None

    # --- who is in service (agent/device/liveness.py) -----------------------------------------
    def _liveness_deadline(self) -> int | None:
        return self.liveness.deadline(self.net_clock.now_ms(), self._heard)

    def _link(self) -> int | None:
        """None while the own link is down or deliveries wait unread (an answer may be among
        them), else its reconnection count: a probe proves a peer silent only if it left, and
        the silence lasted, over one unbroken link of a device that keeps up."""
        t = self.transport
        return t.stats().reconnects if t.connected and not t.pending() else None

    async def _doubts(self) -> None:
        """Probe the doubted peers that are due, and take out of service those whose probes
        went unanswered or whose silence confirmed their presence's ``offline``."""
        if not self.liveness.doubting:
            return
        await self._probe()
        rounds = self.node.counters["round_periods"]  # rounds, backed-off ones counted as more
        now = self.net_clock.now_ms()
        for peer in self.liveness.due(now, self._heard, rounds, self._link()):
            self._log.info(
                "%s leaves service: its presence says offline and it answered none of %d "
                "probes (or nothing proven came from it for %.1f s and %d rounds)",
                peer,
                self.liveness.probes,
                self.liveness.silence_ms / 1000,
                self.liveness.silence_rounds,
            )
            await self._peer(peer, up=False)

    async def _probe(self) -> None:
        """Ask the doubted peers whose probe is due (a SUMMARY that asks for a reply)."""
        if not self.liveness.doubting:
            return
        now = self.net_clock.now_ms()
        for peer in self.liveness.to_probe(now, self._heard, self._link(), self.node.can_probe):
            await self.gossip.handle(I.Probe(peer))

    def _heard(self, peer: str) -> int | None:
        """When the cores last proved a message from ``peer`` (None: never)."""
        times = [self.node.last_heard(peer)]
        if self.replicator is not None:
            times.append(self.replicator.node.last_heard(peer))
        return max((t for t in times if t is not None), default=None)

    async def _presence(self, peer: str) -> None:
        """A presence change: ``online`` brings the peer into service, ``offline`` only opens a
        doubt that its silence must confirm (presence is unauthenticated)."""
        liveness = self.liveness
        if self.transport.presence(peer):
            if liveness.online(peer):
                await self._peer(peer, up=True)
        else:
            liveness.offline(peer, self.net_clock.now_ms())
            await self._probe()  # the first probe goes at once
            self._net_deadline_moved(self._liveness_deadline())

    async def _proven(self, payload: bytes) -> None:
        """After a message was handled: if its sender is out of service and a core proved the
        message, the sender is back (its claimed name, at the envelope's fixed place, says whom
        to look up; only the cores' record of proven traffic decides)."""
        if self.replicator is not None:  # the link works: timeouts from here on are judged
            self.replicator.node.network_heard(self.net_clock.now_ms())
        if not self.liveness.watching or len(payload) < 30:
            return
        try:
            peer = payload[4:30].decode("ascii")
        except UnicodeDecodeError:
            return
        if self.liveness.in_service(peer):
            return
        now = self.net_clock.now_ms()
        if self.liveness.heard(peer, self._heard(peer), now):
            await self._peer(peer, up=True)
            self._net_deadline_moved(self._liveness_deadline())

    async def _peer(self, peer: str, *, up: bool) -> None:
        await self.gossip.handle(I.PeerUp(peer) if up else I.PeerDown(peer))
        if self.replicator is not None:
            await self.replicator.handle(RI.PeerUp(peer) if up else RI.PeerDown(peer))

    # --- hooks of the gossip driver ------------------------------------------------------------
    async def _verified(self, act: A.Action) -> None:
        if self.replicator is not None:
            await self.replicator.from_gossip(act)

    async def _restore_settled(self, act: A.RestoreFinished | A.RestoreFailed) -> None:
        self.restore_result = act
        if isinstance(act, A.RestoreFailed):
            self._log.error("restore cannot finish: %s", act.reason)
            self.restore_settled.set()
            return
        if self.replicator is not None:
            await self.replicator.reload_own_chain()
        self._log.info(
            "restored through height %d (published head %d); signing resumes in epoch %d%s",
            act.height,
            act.published_height,
            act.epoch,
            " (a new epoch: the published head was out of reach)" if act.new_epoch else "",
        )
        self._restored.set()
        self.restore_settled.set()

    def _notify(self, event: object) -> None:
        if self.observers:
            now = self.net_clock.now_ms()
            for observer in self.observers:
                observer(self, event, now)


async def ingest(batches: Iterable[tuple[DeviceAgent, list[Sample]]]) -> None:
    """Sign and make durable one step's batches of many devices: what ``submit`` then
    ``drained`` do for each, with one store job per ``INGEST_CHUNK`` devices instead of a job,
    a task and a few futures per device (a fleet's step, ``agent.fleet.runner``).

    Each device's batch still gets a store job of its own under the device's store lock, with
    its carried peer headers, in its own commit, its seal decided inside it: the chunk's job
    runs them one after the other on a store thread, and a failure in one fails that device
    alone. The whole chunk is handed back after the group sync that covers it (a failed sync
    fails the devices whose commit it covered; a device's own failure stays its own, and a
    device whose batch made no durable commit runs on, as a job with no commit does). A device
    that cannot take a batch directly (``DeviceAgent.direct``: restoring, batches queued, a
    store job in flight) is given it through its queue (``submit``); wait for those with
    ``drained``. Returns once the direct batches are durable and their blocks announced."""
    jobs: dict[int, list[_Direct]] = {}  # by executor: a chunk runs on the devices' own
    try:
        for agent, samples in batches:
            if not samples or agent.failure is not None:
                continue
            if not agent.direct:
                await agent.submit(samples)  # may wait for room in its queue
                continue
            # Free (``direct``), but a job that just released it may have a waiter to hand it
            # to first: then the device may have failed meanwhile, and signs nothing more.
            await agent.ctx.lock.acquire()
            if agent.failure is not None:
                agent.ctx.lock.release()
                continue
            now, refused = agent._ingest_begins(samples)
            job = _Direct(agent, samples, now, refused, agent.ctx.take_unwritten())
            jobs.setdefault(id(agent.ctx.executor), []).append(job)
    except BaseException:  # cancelled while a queue was full: nothing ran, give the locks back
        for group in jobs.values():
            for job in group:
                if job.wires:  # taken for the job: queued again
                    job.agent.ctx.carry_headers(tuple(job.wires))
                job.agent._ingest_ends()
                job.agent.ctx.lock.release()
        raise
    if jobs:
        chunks = [
            g[i : i + INGEST_CHUNK] for g in jobs.values() for i in range(0, len(g), INGEST_CHUNK)
        ]
        stopped: list[bool] = []  # the step was cancelled (a forced stop): announce nothing
        try:
            await asyncio.shield(_run_direct(chunks, stopped))
        except asyncio.CancelledError:
            stopped.append(True)
            raise


class _Direct(NamedTuple):
    agent: DeviceAgent
    samples: list[Sample]
    now: int
    refused: int
    wires: list[bytes]


async def _run_direct(chunks: list[list[_Direct]], stopped: list[bool]) -> None:
    """The store jobs of ``ingest`` (locks taken), then what each device does with its result:
    only the devices that sealed have something to await (their announcements, together).
    Shielded: a step cancelled by a forced stop still finishes its commits (``stopped`` is then
    set) but announces nothing: the runner closes the transports and stores meanwhile, and an
    announcement into them would fail the device after the run ended, as a cancelled step of
    one job per device never announced either (the blocks are durable; the next run starts
    from them)."""
    # Each chunk's results as its job makes them (on its store thread), read here when the job
    # as a whole failed (its group sync, or the executor): which device failed on its own.
    made: list[list[Sealed | BaseException]] = [[] for _ in chunks]
    try:
        outcomes = await asyncio.gather(
            *(
                c[0].agent.ctx.off_loop(_sign_and_store_all, c, out)
                for c, out in zip(chunks, made, strict=True)
            ),
            return_exceptions=True,
        )
    finally:  # the jobs are over (or never ran): the devices' locks go back
        for chunk in chunks:
            for job in chunk:
                job.agent._ingest_ends()
                job.agent.ctx.lock.release()
    announce = []
    for chunk, outcome, own in zip(chunks, outcomes, made, strict=True):
        results = (
            outcome
            if isinstance(outcome, list)
            else [_despite(job, own, k, outcome) for k, job in enumerate(chunk)]
        )
        for job, result in zip(chunk, results, strict=True):
            agent = job.agent
            if isinstance(result, BaseException):
                agent.fail(result)
                continue
            agent._count(job.samples, job.refused)
            if stopped:
                continue
            if result.blocks:
                announce.append(_announce(agent, result))
            else:
                agent._rearm_seal_timer()
    if announce:
        await asyncio.gather(*announce)


def _despite(
    job: _Direct, own: list[Sealed | BaseException], k: int, failure: BaseException
) -> Sealed | BaseException:
    """What the ``k``-th device of a chunk whose job failed as a whole (``failure``: its group
    sync, or the executor) gets: its own failure if it had one; its result if its batch made
    no durable commit (nothing sealed, every sample refused: the sync covered nothing of it);
    else ``failure`` (and when the job never reached it)."""
    if k >= len(own):
        return failure
    result = own[k]
    if isinstance(result, BaseException):
        return result
    signed = job.agent._signed(job.samples, job.refused)
    return failure if result.blocks or signed else result


def _sign_and_store_all(
    chunk: list[_Direct], out: list[Sealed | BaseException]
) -> list[Sealed | BaseException]:
    """On a store thread: each device's batch, one commit each (``DeviceContext.job``), its
    result appended to ``out`` as it comes (returned)."""
    for job in chunk:
        agent = job.agent
        try:
            out.append(
                agent.ctx.job(job.wires, agent._sign_and_store, (job.samples, job.now), True)
            )
        except Exception as exc:  # this device's failure alone
            out.append(exc)
    return out


async def _announce(agent: DeviceAgent, sealed: Sealed) -> None:
    try:
        await agent._announce(sealed)
        agent._rearm_seal_timer()
    except Exception as exc:  # as a failure of its ingest task: the device's alone
        agent.fail(exc)


class RestoreError(AgentError, code="restore"):
    """A device cannot be restored (its store is not empty, or its chain is out of reach)."""
