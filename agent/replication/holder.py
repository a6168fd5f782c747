"""The holder side: lending spare storage to domain peers, within a quota, for what verifies.

- **Verification** before anything is stored: the block decodes, is the sender's own, its header
  and every reading verify with the key the sender's credentials name for that height
  (``ledger.verify.verify_block``: signatures, count, times, Merkle root), and it links to the
  previous header the STORE carries (signature, height, epoch, ``prev_hash``). A header hash
  known from gossip at that height (``HeadersKnown``) or a replica held there must be the same.
- **Quota**: a body is accepted only if ``used + pending + size <= quota`` once surplus replicas
  (released by their owner) are evicted, oldest release first. So the quota is never exceeded
  (the issue allows one block over; we allow none). Own blocks are never counted nor evicted:
  this side only ever deletes replicas.
- **Receipts** are signed only after the runtime reports the body durable (``ReplicaStored``).
- **Audits**: a CHALLENGE for a held block makes the runtime load the body (``LoadReplica``);
  the PROOF is ``SHA-256(AUDIT || nonce || block_wire)``. A block not held is answered with an
  empty proof at once. A holder too busy to answer in time (its loads or writes queued up, or a
  load not back within ``serve_timeout_ms``) answers BUSY instead of going silent.
- **Adverts**: SPACE (quota, free) is broadcast to the domains when free space moved by an
  eighth of the quota, at least every ``advert_interval_ms``, and sent to a peer that comes up.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from agent.protocol.lru import Lru
from agent.replication import wire
from agent.replication.actions import DeleteReplica, LoadReplica, MarkSurplus, StoreReplica
from agent.replication.context import Context
from agent.replication.inputs import ReplicaInfo, ReplicaLoaded, ReplicaStored
from ledger.block import decode_block, decode_header
from ledger.errors import VerificationError
from ledger.receipt import Receipt, sign_receipt
from ledger.verify import verify_block, verify_link

Key = tuple[str, int]  # (owner_id, height)


@dataclass(slots=True)
class Replica:
    block_hash: bytes
    size: int
    epoch: int


@dataclass(slots=True)
class Write:
    """A verified body the runtime is making durable; its bytes are reserved in the quota."""

    block_hash: bytes
    size: int
    epoch: int
    request_id: int


@dataclass(slots=True)
class Serve:
    """A challenge waiting for ``ReplicaLoaded``."""

    peer_id: str
    challenge_id: int
    nonce: bytes
    deadline: int


class HolderSide:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.replicas: dict[Key, Replica] = {}
        self.surplus: OrderedDict[Key, None] = OrderedDict()  # eviction order: oldest first
        self.used = 0
        self.surplus_bytes = 0
        self.writes: dict[Key, Write] = {}
        self.reserved = 0
        self.serves: dict[Key, list[Serve]] = {}
        self.headers: Lru[Key, bytes] = Lru(cfg.max_known_headers)
        self._advertised: int | None = None
        self._next_advert = ctx.now + ctx.rng.randint(0, cfg.advert_interval_ms)

    # --- accounting -----------------------------------------------------------------------------

    def free(self) -> int:
        """Bytes a new replica may take: the quota less what is held and reserved, surplus
        replicas counted as free (they are evicted on demand)."""
        taken = self.used - self.surplus_bytes + self.reserved
        return max(0, self.ctx.config.quota_bytes - taken)

    def _room(self, size: int) -> bool:
        """Evict surplus replicas, oldest release first, until ``size`` fits; False if it never
        will (nothing else is ever evicted to make room)."""
        quota = self.ctx.config.quota_bytes
        if self.used - self.surplus_bytes + self.reserved + size > quota:
            return False
        while self.used + self.reserved + size > quota:
            self._evict(next(iter(self.surplus)))
        return True

    def _evict(self, key: Key) -> None:
        rep = self.replicas.pop(key)
        self.used -= rep.size
        if key in self.surplus:
            del self.surplus[key]
            self.surplus_bytes -= rep.size
        self.ctx.out.append(DeleteReplica(*key))
        self.ctx.counters["replicas_evicted"] += 1

    def _add(self, key: Key, rep: Replica, surplus: bool) -> None:
        self.replicas[key] = rep
        self.used += rep.size
        if surplus:
            self.surplus[key] = None
            self.surplus_bytes += rep.size

    def on_loaded(self, infos: tuple[ReplicaInfo, ...]) -> None:
        for info in infos:
            key = (info.owner_id, info.height)
            if key in self.replicas or info.owner_id == self.ctx.device_id:
                continue
            self._add(key, Replica(info.block_hash, info.size, info.epoch), info.surplus)
        self._shrink_to_quota()
        self._advertise(force=True)

    def _shrink_to_quota(self) -> None:
        """After a restart with a smaller quota: surplus first, then the oldest stored."""
        quota = self.ctx.config.quota_bytes
        while self.used > quota and self.surplus:
            self._evict(next(iter(self.surplus)))
        while self.used > quota and self.replicas:
            self._evict(next(iter(self.replicas)))

    def on_headers(self, device_id: str, wires: tuple[bytes, ...]) -> None:
        for w in wires:
            sh = decode_header(w)
            if sh.header.device_id == device_id:
                self.headers.put((device_id, sh.header.height), sh.hash)

    # --- STORE ----------------------------------------------------------------------------------

    def on_store(self, peer: str, msg: wire.Store) -> None:
        """Raises DecodeError (malformed) or VerificationError (invalid): the node penalizes."""
        ctx = self.ctx
        block = decode_block(msg.block)
        sh = block.header
        h = sh.header
        key = (peer, h.height)
        if h.device_id != peer:
            raise VerificationError("STORE block device", peer, h.device_id)
        keys = ctx.creds.keys(peer)
        if keys is None:
            self._refuse(peer, msg.request_id, wire.UNKNOWN)
            return
        held = self.replicas.get(key)
        known = self.headers.get(key)
        if (held is not None and held.block_hash != sh.hash) or (
            known is not None and known != sh.hash
        ):
            ctx.counters["store_conflict"] += 1
            self._refuse(peer, msg.request_id, wire.CONFLICT)
            return
        if held is not None:  # a repeat (our receipt was lost): promise again
            self._receipt(peer, msg.request_id, h.height, held)
            return
        if key in self.writes:
            ctx.counters["store_duplicate"] += 1
            return
        verify_block(block, keys.key_for(h.key_id, h.height))
        if h.height == 0:
            if msg.prev_header is not None:
                raise VerificationError("STORE prev_header at height 0", "nil", "a header")
            verify_link(None, sh)
        else:
            if msg.prev_header is None:
                raise VerificationError(f"STORE prev_header at height {h.height}", "a header")
            prev = decode_header(msg.prev_header)
            prev.verify(keys.key_for(prev.header.key_id, prev.header.height))
            verify_link(prev, sh)
            known_prev = self.headers.get((peer, h.height - 1))
            if known_prev is not None and known_prev != prev.hash:
                ctx.counters["store_conflict"] += 1
                self._refuse(peer, msg.request_id, wire.CONFLICT)
                return
        size = len(msg.block)
        if len(self.writes) >= ctx.config.max_pending_writes:
            self._refuse(peer, msg.request_id, wire.BUSY)
            return
        if len(self.replicas) + len(self.writes) >= ctx.config.max_replicas or not self._room(size):
            ctx.counters["store_full"] += 1
            self._refuse(peer, msg.request_id, wire.FULL)
            self._advertise(force=True)
            return
        self.writes[key] = Write(sh.hash, size, h.epoch, msg.request_id)
        self.reserved += size
        ctx.out.append(StoreReplica(peer, h.height, h.epoch, sh.hash, msg.block))
        ctx.counters["store_accepted"] += 1

    def on_stored(self, ev: ReplicaStored) -> None:
        key = (ev.owner_id, ev.height)
        w = self.writes.get(key)
        if w is None or w.block_hash != ev.block_hash:
            self.ctx.counters["stored_unknown"] += 1
            return
        del self.writes[key]
        self.reserved -= w.size
        if not ev.ok:
            self.ctx.counters["store_failed"] += 1
            self._refuse(ev.owner_id, w.request_id, wire.FULL)
        else:
            rep = Replica(w.block_hash, w.size, w.epoch)
            self._add(key, rep, surplus=False)
            self._receipt(ev.owner_id, w.request_id, ev.height, rep)
        self._advertise()

    def _receipt(self, owner: str, rid: int, height: int, rep: Replica) -> None:
        ctx = self.ctx
        receipt = Receipt(
            ctx.device_id, owner, rep.epoch, height, rep.block_hash, rep.size, ctx.now
        )
        signed = sign_receipt(receipt, ctx.key)
        ctx.answer(owner, wire.ReceiptMsg(ctx.device_id, rid, signed.wire))

    def _refuse(self, peer: str, rid: int, reason: int) -> None:
        self.ctx.counters[f"refused_{wire.REASONS[reason]}"] += 1
        self.ctx.answer(peer, wire.Refuse(self.ctx.device_id, rid, reason, self.free()))

    # --- RELEASE and CHALLENGE ------------------------------------------------------------------

    def on_release(self, peer: str, msg: wire.Release) -> None:
        key = (peer, msg.height)
        rep = self.replicas.get(key)
        if rep is None or rep.block_hash != msg.block_hash or key in self.surplus:
            self.ctx.counters["release_ignored"] += 1
            return
        self.surplus[key] = None
        self.surplus_bytes += rep.size
        self.ctx.out.append(MarkSurplus(peer, msg.height))
        self._advertise()

    def on_challenge(self, peer: str, msg: wire.Challenge) -> None:
        ctx = self.ctx
        key = (peer, msg.height)
        rep = self.replicas.get(key)
        if rep is None or rep.block_hash != msg.block_hash:
            ctx.counters["challenge_not_held"] += 1
            ctx.answer(peer, wire.Proof(ctx.device_id, msg.challenge_id, b""))
            return
        cfg = ctx.config
        total = sum(len(s) for s in self.serves.values())
        mine = sum(1 for s in self.serves.values() for x in s if x.peer_id == peer)
        if (
            total >= cfg.max_serves
            or mine >= cfg.max_serves_per_peer
            or len(self.writes) >= cfg.max_pending_writes
        ):
            # Saturated (loads or writes queued up): say so rather than go silent, so the
            # owner asks again later instead of counting a silence.
            ctx.counters["challenge_busy"] += 1
            self._busy(peer, msg.challenge_id)
            return
        waiting = self.serves.setdefault(key, [])
        waiting.append(Serve(peer, msg.challenge_id, msg.nonce, ctx.now + cfg.serve_timeout_ms))
        if len(waiting) == 1:
            ctx.out.append(LoadReplica(peer, msg.height))

    def _busy(self, peer: str, challenge_id: int) -> None:
        ctx = self.ctx
        hint = ctx.config.retry_ms * (1 + sum(len(s) for s in self.serves.values()))
        ctx.answer(peer, wire.Busy(ctx.device_id, challenge_id, min(hint, wire.MAX_RETRY_MS)))

    def on_replica_loaded(self, ev: ReplicaLoaded) -> None:
        ctx = self.ctx
        waiting = self.serves.pop((ev.owner_id, ev.height), [])
        for s in waiting:
            answer = b"" if ev.block is None else wire.audit_answer(s.nonce, ev.block)
            ctx.answer(s.peer_id, wire.Proof(ctx.device_id, s.challenge_id, answer))
        if waiting:
            ctx.counters["challenges_answered"] += len(waiting)

    # --- presence, timer ------------------------------------------------------------------------

    def on_peer_up(self, peer: str) -> None:
        cfg = self.ctx.config
        self.ctx.send(peer, wire.Space(self.ctx.device_id, cfg.quota_bytes, self.free()))

    def _advertise(self, *, force: bool = False) -> None:
        free = self.free()
        step = max(1, self.ctx.config.quota_bytes // 8)
        last = self._advertised
        if force or last is None or abs(free - last) >= step or (free == 0) != (last == 0):
            self._broadcast_space(free)

    def _broadcast_space(self, free: int) -> None:
        ctx = self.ctx
        ctx.broadcast(wire.Space(ctx.device_id, ctx.config.quota_bytes, free))
        self._advertised = free
        self._next_advert = ctx.now + ctx.config.advert_interval_ms

    def on_timer(self) -> None:
        now = self.ctx.now
        for key in [k for k, ss in self.serves.items() if ss[0].deadline <= now]:
            expired = self.serves.pop(key)
            self.ctx.counters["serves_expired"] += len(expired)
            for s in expired:  # the load did not come in time: not silence, busy
                self._busy(s.peer_id, s.challenge_id)
        if now >= self._next_advert:
            self._broadcast_space(self.free())

    def next_deadline(self) -> int:
        times = [self._next_advert]
        times.extend(ss[0].deadline for ss in self.serves.values())
        return min(times)
