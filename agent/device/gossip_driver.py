"""The gossip core inside a device: feed it inputs, execute its actions, report its deadline.

``GossipDriver`` is the only place the actions of ``agent.gossip.GossipNode`` are executed: sends
and store work through the device's ports (``agent.device.context.DeviceContext``), pulls served
from the store in the background, epoch records signed with the device key. What the core
verified that another part of the device needs is handed on through two hooks the runtime
gives: ``verified`` (peer headers and credentials, for the replication core) and ``settled``
(the end of a restore). The runtime's network timer calls ``on_timer`` at ``deadline()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from agent.device.bodies import Damage, own_block_wire, replica_damage
from agent.device.context import DeviceContext
from agent.gossip import actions as A
from agent.gossip import inputs as I
from agent.gossip.node import GossipNode
from firmware_sim.clock import Clock
from ledger.block import decode_block, decode_header
from ledger.chain import ChainWriter
from ledger.checkpoint import checkpoint_for
from ledger.epoch import EpochRecord, decode_epoch, sign_epoch
from ledger.errors import IntegrityError, LedgerError
from ledger.merkle import consistency_proof

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

# Why a peer was muted (the offence that crossed the threshold), as the log says it.
MUTE_REASONS = {
    "invalid": "invalid content (bad signatures or history) from it",
    "malformed": "malformed messages from it",
    "promise": "requests it did not answer in time",
}


async def _ignore(_: A.Action) -> None:
    return None


class GossipDriver:
    def __init__(
        self,
        ctx: DeviceContext,
        node: GossipNode,
        writer: ChainWriter,
        data_clock: Clock,
        *,
        verified: Callable[[A.Action], Awaitable[None]] = _ignore,
        settled: Callable[[A.RestoreFinished | A.RestoreFailed], Awaitable[None]] = _ignore,
    ) -> None:
        self.ctx = ctx
        self.node = node
        self.writer = writer
        self.data_clock = data_clock
        self.verified = verified  # StoreHeaders, StoreCredential: also the replication core's
        self.settled = settled  # RestoreFinished (after the writer resumed), RestoreFailed

    async def start(self, boot: Sequence[I.Input]) -> None:
        """What the store and the fleet already know (before the network timer runs)."""
        for event in boot:
            await self.execute(self.node.handle(event, self.ctx.net_clock.now_ms()))

    async def handle(self, event: I.Input) -> None:
        await self.execute(self.node.handle(event, self.ctx.net_clock.now_ms()))
        # Most inputs leave the deadline alone: waking thousands of timers costs.
        self.ctx.deadline_moved(self.node.next_deadline())

    def deadline(self) -> int | None:
        return self.node.next_deadline()

    async def on_timer(self, now_ms: int) -> None:
        deadline = self.node.next_deadline()
        if deadline is not None and now_ms >= deadline:
            await self.execute(self.node.handle_timer(now_ms))

    async def execute(self, acts: list[A.Action]) -> None:
        ctx = self.ctx
        store = ctx.store
        for act in acts:
            if type(act) is A.HeadersAccepted:  # one per header accepted: the common case
                ctx.stats.counters["HeadersAccepted"] += 1
                ctx.notify(act)
                continue
            match act:
                case A.Send(peer_id=peer, payload=payload):
                    await ctx.send(peer, payload)
                case A.Broadcast(domain=domain, payload=payload):
                    await ctx.broadcast(domain, payload)
                case A.PublishEvidence(device_id=dev, evidence=ev):
                    await ctx.publish_evidence(dev, ev)
                case A.StoreHeaders(headers=wires):
                    ctx.carry_headers(wires)
                    await self.verified(act)
                case A.StoreBlock(block=wire):
                    await ctx.run_store(lambda w=wire: store.put_replica(decode_block(w)))
                case A.StoreEvidence(device_id=dev, evidence=ev):
                    await ctx.run_store(store.put_evidence, dev, ev)
                case A.StoreCredential(device_id=dev, kind=kind, wire=wire):
                    await ctx.run_store(store.put_credential, dev, kind, wire)
                    await self.verified(act)
                case A.ServePull():
                    ctx.spawn(self._serve(act), "serve")
                case A.StoreEpoch(record=record):
                    await ctx.run_store(store.put_epoch, decode_epoch(record))
                case A.RewindChain(device_id=dev, last_height=last, new_epoch=epoch):
                    wires = await ctx.run_store(self._rewind, dev, last, epoch)
                    await self.handle(I.ChainRewound(dev, wires))
                case A.CommitRestored(blocks=wires):
                    blocks = [decode_block(w) for w in wires]
                    await ctx.run_store(store.commit_restored, blocks)
                case A.PrepareCheckpoint():
                    try:
                        note, proofs = await ctx.run_store(self._prepare_checkpoint, act)
                    except LedgerError as exc:  # e.g. a head signed by a key rotated away since
                        ctx.log.info("no checkpoint offered to witnesses this round: %s", exc)
                    else:
                        await self.handle(I.CheckpointPrepared(note, proofs))
                case A.StoreWitnessState():
                    # In the background: the device's receive loop does not wait for its store
                    # queue (the device's lock keeps these writes in order).
                    ctx.spawn(self._cosign(act), "cosign")
                case A.StoreCheckpoint(origin=origin, size=size, note=note):
                    ctx.spawn(ctx.run_store(store.put_checkpoint, origin, size, note), "checkpoint")
                case A.SignEpoch():
                    record = await ctx.run_store(self._sign_epoch, act)
                    await self.handle(I.EpochSigned(record))
                case A.RestoreFinished(epoch=epoch):
                    await ctx.run_store(self.writer.resume, epoch)
                    await self.settled(act)
                case A.RestoreFailed():
                    await self.settled(act)
                case A.ForkDetected(device_id=dev, height=h):
                    ctx.stats.counters["forks_detected"] += 1
                    ctx.log.warning("fork detected: device %s at height %d", dev, h)
                case A.DeviceRevoked(device_id=dev, key_id=key_id, from_height=h):
                    ctx.stats.counters["devices_revoked"] += 1
                    what = "device" if key_id is None else f"key {key_id.hex()} of"
                    ctx.log.warning("revocation learned: %s %s from height %d", what, dev, h)
                case A.PeerMuted(peer_id=peer, reason=why):
                    stats = ctx.stats
                    stats.counters["peers_muted"] += 1
                    stats.muted[peer] = why
                    # Once per peer a warning (who, whom, why); later mutes of it at info.
                    (ctx.log.warning if stats.first("muted", peer) else ctx.log.info)(
                        "muted peer %s (%s): %s",
                        stats.peer_name(peer),
                        peer,
                        MUTE_REASONS.get(why, why),
                    )
                case A.PeerUnmuted(peer_id=peer):
                    ctx.stats.muted.pop(peer, None)
                    ctx.stats.counters["PeerUnmuted"] += 1
                case _:
                    ctx.stats.counters[type(act).__name__] += 1
            if isinstance(act, _NOTIFICATIONS):
                ctx.notify(act)

    # --- store work (off the loop, under the device's lock) -----------------------------------
    def _rewind(self, dev: str, last_height: int, new_epoch: int) -> tuple[bytes, ...]:
        """Move a peer's superseded headers aside; its stored headers 0..last_height (the
        contiguous run from 0: the core rebuilds the chain from them)."""
        store = self.ctx.store
        store.supersede_peer_headers(dev, last_height, new_epoch)
        wires = store.peer_header_wires(dev, 0, last_height)
        run = 0
        while run < len(wires) and decode_header(wires[run]).header.height == run:
            run += 1
        return tuple(wires[:run])

    def _prepare_checkpoint(
        self, act: A.PrepareCheckpoint
    ) -> tuple[bytes, tuple[tuple[int, tuple[bytes, ...]], ...]]:
        """The own checkpoint at the head, signed, and a consistency proof from each old size."""
        store = self.ctx.store
        note = checkpoint_for(store, act.fleet, self.writer.key)
        hashes = store.own_header_hashes()
        n = len(hashes)
        proofs = tuple(
            (old, tuple(consistency_proof(hashes, old, n))) for old in act.old_sizes if 0 < old < n
        )
        return note.encode(), proofs

    def _sign_epoch(self, act: A.SignEpoch) -> bytes:
        """Sign the epoch record and make it durable before anything of the new epoch exists."""
        record = EpochRecord(
            self.writer.device_id,
            act.new_epoch,
            act.prev_epoch,
            act.last_height,
            act.last_hash,
            self.data_clock.now_ms(),
        )
        signed = sign_epoch(record, self.writer.key)
        self.ctx.store.put_epoch(signed)
        return signed.wire

    async def _cosign(self, act: A.StoreWitnessState) -> None:
        """The witness state durable, then the cosignature sent: a restart never cosigns a
        fork. The store holding a later state (IntegrityError): never sent."""
        ctx = self.ctx
        try:
            await ctx.run_store(ctx.store.put_witness_state, act.origin, act.size, act.root_hash)
        except IntegrityError as exc:
            ctx.stats.counters["witness_state_refused"] += 1
            ctx.log.warning("cosignature for %s withheld: %s", act.peer_id, exc)
        else:
            await ctx.send(act.peer_id, act.payload)

    async def _serve(self, act: A.ServePull) -> None:
        try:
            headers, blocks, damage = await self.ctx.run_store(self._load_pull, act)
        except LedgerError as exc:
            self.ctx.log.warning(
                "cannot serve %s %d..%d: %s", act.device_id, act.from_height, act.to_height, exc
            )
            return
        if damage is not None:
            self.ctx.report_damage(damage)
        await self.handle(I.PullLoaded(act.peer_id, act.request_id, headers, blocks))

    def _load_pull(
        self, act: A.ServePull
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...], Damage | None]:
        """The headers and bodies a pull asks for. Every body is checked against its header
        before it is served (agent/device/bodies.py): the bodies stop before the first damaged
        one, which is returned for the report (the headers, signed, are served whole)."""
        store = self.ctx.store
        lo, hi = act.from_height, act.to_height
        own = act.device_id == self.writer.device_id
        headers = (
            store.own_header_wires(lo, hi)
            if own
            else store.peer_header_wires(act.device_id, lo, hi)
        )
        blocks: list[bytes] = []
        damage = None
        if act.bodies:
            size = 0
            for wire in self._bodies(act.device_id, lo, hi, own):
                if isinstance(wire, Damage):
                    damage = wire
                    break
                if len(blocks) >= act.max_blocks or size + len(wire) > act.max_bytes:
                    break
                blocks.append(wire)
                size += len(wire)
        return tuple(headers), tuple(blocks), damage

    def _bodies(self, device_id: str, lo: int, hi: int, own: bool) -> Iterable[bytes | Damage]:
        """Stored bodies from height ``lo`` up to ``hi``, each checked (own blocks: up to the
        first gap; replicas: those held)."""
        store = self.ctx.store
        if own:
            for h in range(lo, hi + 1):
                wire = own_block_wire(store, h)
                if wire is None:
                    return
                yield wire
            return
        for wire in store.replica_wires(device_id, lo, hi):
            yield replica_damage(store, device_id, wire) or wire
