"""The replication core inside a device's runtime: a thin adapter, like the gossip half of
``agent.device.runtime``.

``Replicator`` feeds the sans-I/O ``agent.replication.ReplicationNode`` what the device knows at
start (own blocks, receipts, replicas, credentials, peer heads, from the store), what the network
brings (envelopes routed here by their type byte, ``wire.is_replication_message``), what the
gossip core verified (credentials, peer headers: a holder only stores a body whose header it
holds) and the device's own seals; it executes every action the core returns, store work under
the agent's store lock and off the event loop, and answers the core's loads. Every action of the
replication core is executed here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.gossip import actions as GA
from agent.gossip import inputs as GI
from agent.replication import actions as RA
from agent.replication import inputs as RI
from agent.replication.node import ReplicationNode
from ledger.block import decode_block
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from agent.device.runtime import DeviceAgent

log = logging.getLogger("edgefleet.replication")

_NOTIFICATIONS = (RA.BlockReplicated, RA.AuditFailed, RA.HolderExcluded, RA.HolderReadmitted)


class Replicator:
    def __init__(self, agent: DeviceAgent, node: ReplicationNode) -> None:
        self.agent = agent
        self.node = node
        self._log = logging.LoggerAdapter(log, {"device": agent.name})
        self._sleeps_until: int | None = None

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
                case GI.ChainLoaded(device_id=dev, headers=wires) if dev != self.agent.device_id:
                    events.append(RI.HeadersKnown(dev, tuple(wires[-64:])))
        store = self.agent.store
        limit = self.node.config.max_own_blocks
        own = await self.agent._locked(store.own_block_infos, limit)
        events.append(RI.OwnChainLoaded(tuple(RI.OwnBlockInfo(**i._asdict()) for i in own)))
        for receipt in await self.agent._locked(store.receipts):
            events.append(RI.ReceiptKnown(receipt.wire))
        replicas = await self.agent._locked(store.replica_infos)
        events.append(RI.ReplicasLoaded(tuple(RI.ReplicaInfo(**r._asdict()) for r in replicas)))
        for event in events:
            await self.handle(event)

    # --- inputs --------------------------------------------------------------------------------
    async def handle(self, event: RI.Input) -> None:
        acts = self.node.handle(event, self.agent.net_clock.now_ms())
        await self.execute(acts)
        deadline = self.node.next_deadline()
        if self._sleeps_until is None or deadline < self._sleeps_until:
            self.agent._rearm_replication.set()

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

    async def timer_loop(self) -> None:
        agent = self.agent
        while True:
            self._sleeps_until = self.node.next_deadline()
            await agent._rearm_replication.wait(agent.net_clock, self._sleeps_until)
            now = agent.net_clock.now_ms()
            if now >= self.node.next_deadline():
                await self.execute(self.node.handle_timer(now))

    # --- actions -------------------------------------------------------------------------------
    async def execute(self, acts: list[RA.Action]) -> None:
        agent = self.agent
        store = agent.store
        for act in acts:
            match act:
                case RA.Send(peer_id=peer, payload=payload):
                    await agent._send(agent.transport.send(peer, payload))
                case RA.Broadcast(domain=domain, payload=payload):
                    await agent._send(agent.transport.broadcast(domain, payload))
                case RA.LoadOwnBlock(height=h):
                    block, prev = await agent._locked(self._load_own, h)
                    await self.handle(RI.OwnBlockLoaded(h, block, prev))
                case RA.StoreReplica(owner_id=owner, height=h, block_hash=digest, block=wire):
                    ok = await agent._locked(self._store_replica, wire)
                    await self.handle(RI.ReplicaStored(owner, h, digest, ok))
                case RA.DeleteReplica(owner_id=owner, height=h):
                    await agent._locked(store.delete_replica, owner, h)
                case RA.MarkSurplus(owner_id=owner, height=h):
                    await agent._locked(store.mark_surplus, owner, h)
                case RA.LoadReplica(owner_id=owner, height=h):
                    held = await agent._locked(store.replica_wire, owner, h)
                    await self.handle(RI.ReplicaLoaded(owner, h, held))
                case RA.StoreReceipt(height=h, holder_id=holder, receipt=wire):
                    await agent._locked(store.put_receipt, h, holder, wire)
                case RA.ForgetReceipt(height=h, holder_id=holder):
                    await agent._locked(store.forget_receipt, h, holder)
                case RA.AuditFailed(holder_id=holder, height=h, outcome=outcome, score=score):
                    agent.stats.counters["audits_failed"] += 1
                    self._log.warning(
                        "audit of %s at height %d failed (%s): score %d", holder, h, outcome, score
                    )
                case RA.HolderExcluded(holder_id=holder, score=score):
                    agent.stats.counters["holders_excluded"] += 1
                    self._log.warning("holder %s excluded: score %d", holder, score)
                case RA.BlockReplicated():
                    agent.stats.counters["blocks_replicated"] += 1
                case _:
                    agent.stats.counters[f"replication_{type(act).__name__}"] += 1
            if isinstance(act, _NOTIFICATIONS):
                agent._notify(act)

    def _load_own(self, height: int) -> tuple[bytes | None, bytes | None]:
        store = self.agent.store
        block = store.block_wire(height)
        prev = store.header_at(height - 1) if height > 0 else None
        return block, None if prev is None else prev.wire

    def _store_replica(self, wire: bytes) -> bool:
        """Durable before the holder signs a receipt; False when the write failed."""
        try:
            self.agent.store.put_replica(decode_block(wire))
        except LedgerError as exc:
            self._log.warning("cannot store a replica: %s", exc)
            return False
        return True
