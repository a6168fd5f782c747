"""The replication core inside a device: feed it inputs, execute its actions, report its deadline.

``ReplicationDriver`` feeds the sans-I/O ``agent.replication.ReplicationNode`` what the device
knows at start (own blocks, receipts, replicas, credentials, peer heads, from the store), what
the network brings (envelopes routed here by their type byte, ``wire.is_replication_message``),
what the gossip core verified (credentials, peer headers: a holder only stores a body whose
header it holds) and the device's own seals (with the previous header, so a fresh block is
placed without reading it back). It is the only place the core's actions are executed: sends
and store work through the device's ports (``agent.device.context.DeviceContext``). The
runtime's network timer calls ``on_timer`` at ``deadline()``.

Two clocks (docs/REPLICATION.md 15.6): the core is given the network time and the device's data
time; audit rounds and the repair delay are due on the data clock, so the driver has the data
clock wake the network timer then (``Clock.resolve_at``, through ``deadline_moved``). A device
whose two clocks are one drives the core with one clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from agent.device.bodies import Damage, own_block_wire, replica_damage
from agent.device.context import DeviceContext
from agent.gossip import actions as GA
from agent.gossip import inputs as GI
from agent.replication import actions as RA
from agent.replication import inputs as RI
from agent.replication.node import ReplicationNode
from firmware_sim.clock import Clock
from ledger.block import decode_block
from ledger.errors import LedgerError

log = logging.getLogger("edgefleet.replication")

_NOTIFICATIONS = (RA.BlockReplicated, RA.AuditFailed, RA.HolderExcluded, RA.HolderReadmitted)


class ReplicationDriver:
    def __init__(
        self, ctx: DeviceContext, node: ReplicationNode, name: str, data_clock: Clock | None = None
    ) -> None:
        self.ctx = ctx
        self.node = node
        self._log = logging.LoggerAdapter(log, {"device": name})
        # None when the data clock is the network clock (one clock drives the core).
        self._data_clock = None if data_clock is ctx.net_clock else data_clock
        self._data_wake: tuple[int, asyncio.Future[None]] | None = None  # armed data deadline

    # --- start ---------------------------------------------------------------------------------
    async def start(self, boot: Sequence[GI.Input]) -> None:
        """Feed the store's state and the gossip boot inputs (credentials, peer chains)."""
        events: list[RI.Input] = []
        for ev in boot:
            match ev:
                case GI.CertificateKnown(wire=w):
                    events.append(RI.CredentialKnown("certificate", w))
                case GI.RotationKnown(wire=w):
                    events.append(RI.CredentialKnown("rotation", w))
                case GI.RevocationKnown(wire=w):
                    events.append(RI.CredentialKnown("revocation", w))
                case GI.ChainLoaded(device_id=dev, headers=wires) if dev != self.node.device_id:
                    events.append(RI.HeadersKnown(dev, tuple(wires[-64:])))
        store = self.ctx.store
        events.append(await self._own_chain())
        for receipt in await self.ctx.run_store(store.receipts):
            events.append(RI.ReceiptKnown(receipt.wire))
        replicas = await self.ctx.run_store(store.replica_infos)
        events.append(RI.ReplicasLoaded(tuple(RI.ReplicaInfo(**r._asdict()) for r in replicas)))
        for event in events:
            await self.handle(event)

    async def reload_own_chain(self) -> None:
        """After a restore: the restored blocks are own blocks again. Track them, so that their
        holders (who promise again what they hold) are known and audited."""
        await self.handle(await self._own_chain())

    async def _own_chain(self) -> RI.OwnChainLoaded:
        limit = self.node.config.max_own_blocks
        infos = await self.ctx.run_store(self.ctx.store.own_block_infos, limit)
        return RI.OwnChainLoaded(tuple(RI.OwnBlockInfo(**i._asdict()) for i in infos))

    # --- inputs --------------------------------------------------------------------------------
    async def handle(self, event: RI.Input) -> None:
        await self.execute(self.node.handle(event, self.ctx.net_clock.now_ms(), self._data_ms()))
        self.ctx.deadline_moved(self.deadline())

    def _data_ms(self) -> int | None:
        return None if self._data_clock is None else self._data_clock.now_ms()

    async def from_gossip(self, act: GA.Action) -> None:
        """What the gossip core verified that the replication core needs too: peer headers (a
        holder stores only a body whose header it holds) and credentials (keys and sites)."""
        match act:
            case GA.StoreHeaders(device_id=dev, headers=wires):
                await self.handle(RI.HeadersKnown(dev, wires))
            case GA.StoreCredential(kind=kind, wire=w):
                await self.handle(RI.CredentialKnown(kind, w))
            case _:
                pass

    def deadline(self) -> int:
        """The core's next deadline on the network clock: now when its data deadline has come;
        otherwise the data clock is armed to wake the network timer at that deadline."""
        net = self.node.next_deadline()
        clock = self._data_clock
        if clock is None:
            return net
        due = self.node.next_data_deadline()
        if clock.now_ms() >= due:
            return min(net, self.ctx.net_clock.now_ms())
        self._arm(clock, due)
        return net

    def _arm(self, clock: Clock, due: int) -> None:
        armed = self._data_wake
        if armed is not None and armed[0] == due and not armed[1].done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # asked outside the loop (a view): the next call arms it
            return
        if armed is not None:
            armed[1].cancel()
        fut: asyncio.Future[None] = loop.create_future()
        fut.add_done_callback(self._data_due)
        clock.resolve_at(due, fut)
        self._data_wake = (due, fut)

    def _data_due(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            self.ctx.deadline_moved(self.ctx.net_clock.now_ms())

    async def on_timer(self, now_ms: int) -> None:
        data_ms = self._data_ms()
        due = now_ms >= self.node.next_deadline() or (
            data_ms is not None and data_ms >= self.node.next_data_deadline()
        )
        if due:
            await self.execute(self.node.handle_timer(now_ms, data_ms))

    # --- actions -------------------------------------------------------------------------------
    async def execute(self, acts: list[RA.Action]) -> None:
        ctx = self.ctx
        store = ctx.store
        counters = ctx.stats.counters
        for act in acts:
            match act:
                case RA.Send(peer_id=peer, payload=payload):
                    await ctx.send(peer, payload)
                case RA.Broadcast(domain=domain, payload=payload):
                    await ctx.broadcast(domain, payload)
                case RA.LoadOwnBlock(height=h):
                    block, prev = await ctx.run_store(self._load_own, h)
                    if isinstance(block, Damage):  # never placed: reported, treated as absent
                        ctx.report_damage(block)
                        block = None
                    await self.handle(RI.OwnBlockLoaded(h, block, prev))
                case RA.StoreReplica(owner_id=owner, height=h, block_hash=digest, block=wire):
                    ok = await ctx.run_store(self._store_replica, wire)
                    await self.handle(RI.ReplicaStored(owner, h, digest, ok))
                case RA.DeleteReplica(owner_id=owner, height=h):
                    await ctx.run_store(store.delete_replica, owner, h)
                case RA.MarkSurplus(owner_id=owner, height=h):
                    await ctx.run_store(store.mark_surplus, owner, h)
                case RA.LoadReplica(owner_id=owner, height=h):
                    held = await ctx.run_store(self._load_replica, owner, h)
                    if isinstance(held, Damage):  # never served: reported, treated as absent
                        ctx.report_damage(held)
                        held = None
                    await self.handle(RI.ReplicaLoaded(owner, h, held))
                case RA.StoreReceipt(height=h, holder_id=holder, receipt=wire):
                    await ctx.run_store(store.put_receipt, h, holder, wire)
                case RA.ForgetReceipt(height=h, holder_id=holder):
                    await ctx.run_store(store.forget_receipt, h, holder)
                case RA.AuditFailed(holder_id=holder, height=h, outcome=outcome, score=score):
                    counters["audits_failed"] += 1
                    self._log.warning(
                        "audit of %s at height %d failed (%s): score %d", holder, h, outcome, score
                    )
                case RA.HolderExcluded(holder_id=holder, score=score):
                    counters["holders_excluded"] += 1
                    stats = ctx.stats
                    stats.excluded[holder] = score
                    # Once per holder a warning (who, whom, why); later exclusions at info.
                    (self._log.warning if stats.first("excluded", holder) else self._log.info)(
                        "holder %s (%s) excluded: score %d after failed audits, late or "
                        "invalid answers",
                        stats.peer_name(holder),
                        holder,
                        score,
                    )
                case RA.HolderReadmitted(holder_id=holder):
                    ctx.stats.excluded.pop(holder, None)
                    counters["replication_HolderReadmitted"] += 1
                case RA.BlockReplicated():
                    counters["blocks_replicated"] += 1
                case _:
                    counters[f"replication_{type(act).__name__}"] += 1
            if isinstance(act, _NOTIFICATIONS):
                ctx.notify(act)

    # --- store work (off the loop, under the device's lock) -----------------------------------
    def _load_own(self, height: int) -> tuple[bytes | Damage | None, bytes | None]:
        """An own block sealed before this start (or older than the core keeps): its wire,
        checked against its header (agent/device/bodies.py), and the header wire before it."""
        store = self.ctx.store
        block = own_block_wire(store, height)
        prev = store.header_at(height - 1) if height > 0 else None
        return block, None if prev is None else prev.wire

    def _load_replica(self, owner: str, height: int) -> bytes | Damage | None:
        """A held replica's wire, checked before it is served or proven."""
        wire = self.ctx.store.replica_wire(owner, height)
        if wire is None:
            return None
        return replica_damage(self.ctx.store, owner, wire) or wire

    def _store_replica(self, wire: bytes) -> bool:
        """Durable before the holder signs a receipt; False when the write failed."""
        try:
            self.ctx.store.put_replica(decode_block(wire))
        except LedgerError as exc:
            self._log.warning("cannot store a replica: %s", exc)
            return False
        return True
