"""The restore of the device's own wiped chain from peers: ``Restore`` holds the state and the
pure decisions, ``Restorer`` drives the phases (it is the node's part that answers
``RestoreRequested``, ``EpochSigned`` and the RESPONSEs about the own chain while it runs):

1. **Discover**: every peer's SUMMARY says what it holds of this device (an entry, or none). The
   *published head* is the highest (epoch, height) any reachable peer claims. Discovery ends when
   every peer that is up has answered (at least one), or at ``restore_discovery_ms`` with at least
   one answer. Nobody holding anything means nothing was published: the device starts fresh.
2. **Fetch**: headers from height 0 in ranges of up to ``max_range``, from a peer that claims
   them, each verified as it extends the verified tip (signature under the device's own
   certificate, link or epoch record, history root); bodies in runs of up to ``max_blocks``,
   each checked against its verified header's hash and ``verify_block``, hedged across peers (a
   peer that answered without a body is not asked for it again for ``anti_entropy_ms``). Whole
   blocks contiguous from the committed head are committed in batches (``CommitRestored``).
3. **Finish**: the committed head is the published head: ``RestoreFinished`` in the same epoch.
   No progress for ``restore_body_wait_ms`` before that: the published head is out of reach, and
   the device opens a new epoch after its last whole block (``SignEpoch``). Nothing whole at all
   (not even block 0): ``RestoreFailed``, and it keeps trying.

Bounds: verified headers kept ahead of the committed head at most ``restore_ahead``; bodies at
most ``restore_inflight`` runs of ``max_blocks`` in flight; one claim per domain member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from agent.gossip import wire
from agent.gossip.actions import (
    Broadcast,
    CommitRestored,
    RestoreFailed,
    RestoreFinished,
    RestoreProgressed,
    SignEpoch,
)
from agent.gossip.context import Context
from agent.gossip.epochs import Epochs
from agent.gossip.pulls import Pulls
from agent.gossip.requests import Pending
from agent.gossip.summaries import AntiEntropy
from ledger.block import SignedHeader, decode_block
from ledger.epoch import decode_epoch
from ledger.errors import ChainError, UsageError, VerificationError
from ledger.history import CompactRange
from ledger.verify import verify_block, verify_link


class Phase(Enum):
    DISCOVER = "discover"
    FETCH = "fetch"
    SIGNING = "signing"  # waiting for the runtime to sign and store the epoch record
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Claim:
    """What one peer says it holds of this device's chain."""

    epoch: int
    height: int
    head_hash: bytes


@dataclass
class Restore:
    started_ms: int
    discover_until: int
    phase: Phase = Phase.DISCOVER
    claims: dict[str, Claim | None] = field(default_factory=dict)
    target: Claim | None = None
    tip: SignedHeader | None = None  # newest verified header
    history: CompactRange = field(default_factory=CompactRange)  # over verified headers
    headers: dict[int, SignedHeader] = field(default_factory=dict)  # verified, not committed
    bodies: dict[int, bytes] = field(default_factory=dict)  # verified block wires
    committed: SignedHeader | None = None
    tried: dict[int, dict[str, int]] = field(default_factory=dict)  # height -> peer -> ms
    inflight: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # bodies
    header_req: tuple[str, int] | None = None  # (peer, request id) of the open header request
    header_asked: dict[str, int] = field(default_factory=dict)  # peer -> when last asked
    last_progress_ms: int = 0
    failed_reported: bool = False

    @property
    def committed_height(self) -> int:
        return -1 if self.committed is None else self.committed.header.height

    @property
    def tip_height(self) -> int:
        return -1 if self.tip is None else self.tip.header.height

    @property
    def target_height(self) -> int:
        return -1 if self.target is None else self.target.height

    def claim(self, peer: str, claim: Claim | None) -> None:
        self.claims[peer] = claim
        if claim is not None and (
            self.target is None
            or (claim.epoch, claim.height) > (self.target.epoch, self.target.height)
        ):
            self.target = claim

    def discovered(self, now_ms: int, available: list[str]) -> bool:
        """Enough peers have answered to trust the highest claim as the published head."""
        if not self.claims:
            return False
        return now_ms >= self.discover_until or all(p in self.claims for p in available)

    def claimants(self, height: int, available: list[str]) -> list[str]:
        """Available peers that claim to hold ``height``, highest claim first."""
        rows = [
            (c.height, p)
            for p in available
            if (c := self.claims.get(p)) is not None and c.height >= height
        ]
        return [p for _, p in sorted(rows, key=lambda r: (-r[0], r[1]))]

    def missing_runs(self, limit: int) -> list[tuple[int, int]]:
        """Runs (lo, hi) of at most ``limit`` heights whose body is neither held nor asked for,
        among verified headers above the committed head, lowest first."""
        busy: set[int] = set()
        for lo, hi in self.inflight.values():
            busy.update(range(lo, hi + 1))
        runs: list[tuple[int, int]] = []
        lo = hi = -1
        for h in range(self.committed_height + 1, self.tip_height + 1):
            if h in self.bodies or h in busy:
                if lo >= 0:
                    runs.append((lo, hi))
                lo = -1
                continue
            if lo < 0:
                lo = hi = h
            elif h == hi + 1 and h - lo < limit:
                hi = h
            else:
                runs.append((lo, hi))
                lo = hi = h
        if lo >= 0:
            runs.append((lo, hi))
        return runs

    def may_ask(self, peer: str, height: int, now_ms: int, retry_ms: int) -> bool:
        asked = self.tried.get(height, {}).get(peer)
        return asked is None or now_ms - asked >= retry_ms

    def mark_tried(self, peer: str, lo: int, hi: int, now_ms: int) -> None:
        for h in range(lo, hi + 1):
            if h not in self.bodies:
                self.tried.setdefault(h, {})[peer] = now_ms

    def take_committable(self) -> list[tuple[SignedHeader, bytes]]:
        """Whole blocks (header and body) contiguous from the committed head, in order."""
        out = []
        h = self.committed_height + 1
        while h in self.headers and h in self.bodies:
            out.append((self.headers.pop(h), self.bodies.pop(h)))
            self.tried.pop(h, None)
            h += 1
        if out:
            self.committed = out[-1][0]
        return out

    def reached(self) -> bool:
        """The committed head is the published head (same height and hash)."""
        t, c = self.target, self.committed
        if t is None:
            return True
        return c is not None and c.header.height == t.height and c.hash == t.head_hash


class Restorer:
    """Drives one restore (at most one per node lifetime); ``state`` None: none was asked for."""

    def __init__(self, ctx: Context, pulls: Pulls, summaries: AntiEntropy, epochs: Epochs) -> None:
        self.ctx = ctx
        self.pulls = pulls
        self.summaries = summaries
        self.epochs = epochs
        self.state: Restore | None = None

    @property
    def active(self) -> bool:
        """A restore was requested and has not finished: the device must not sign."""
        return self.state is not None and self.state.phase is not Phase.DONE

    def on_requested(self) -> None:
        ctx = self.ctx
        own = ctx.chains.get(ctx.device_id)
        if self.state is not None or (own is not None and own.head is not None):
            raise UsageError("restore: the own chain is already loaded or being restored")
        self.state = Restore(
            ctx.now, ctx.now + ctx.config.restore_discovery_ms, last_progress_ms=ctx.now
        )
        ctx.counters["restores"] += 1
        if not ctx.tracked - {ctx.device_id}:
            self._finish(0, -1, new_epoch=False)  # no peer could hold anything
            return
        for p in ctx.peers.available():
            self.summaries.send_summary(p, reply=True)

    def on_summary(self, peer: str, entries: tuple[wire.SummaryEntry, ...]) -> None:
        """What a peer's SUMMARY says it holds of the own chain (an entry, or none)."""
        r = self.state
        assert r is not None
        own = [e for e in entries if e.device_id == self.ctx.device_id]
        r.claim(peer, Claim(own[0].epoch, own[0].height, own[0].head_hash) if own else None)
        self.step()

    def deadline(self) -> int | None:
        r = self.state
        if r is None:
            return None
        if r.phase is Phase.DISCOVER:
            return r.discover_until
        if r.phase is Phase.FETCH:
            return r.last_progress_ms + self.ctx.config.restore_body_wait_ms
        return None

    def step(self) -> None:
        """Move the restore on: end discovery, commit, finish or give up, and ask for more."""
        ctx = self.ctx
        r = self.state
        if r is None or r.phase in (Phase.SIGNING, Phase.DONE):
            return
        if r.phase is Phase.DISCOVER:
            if not r.discovered(ctx.now, ctx.peers.available()):
                return
            if r.target is None:
                self._finish(0, -1, new_epoch=False)  # nobody holds anything of us
                return
            r.phase = Phase.FETCH
            r.last_progress_ms = ctx.now
            ctx.out.append(RestoreProgressed(-1, r.target.height))
        self._commit()
        if r.reached():
            assert r.committed is not None
            self._finish(r.committed.header.epoch, r.committed_height, new_epoch=False)
        elif ctx.now >= r.last_progress_ms + ctx.config.restore_body_wait_ms:
            self._give_up()
        else:
            self._pump()

    def _pump(self) -> None:
        ctx = self.ctx
        r = self.state
        assert r is not None and r.target is not None
        cfg = ctx.config
        available = ctx.peers.available()
        for key in [k for k in r.inflight if ctx.pending.get(*k) is None]:
            del r.inflight[key]  # expired, or its peer went down
        if r.header_req is not None and ctx.pending.get(*r.header_req) is None:
            r.header_req = None
        lo = r.tip_height + 1
        if (
            r.header_req is None
            and lo <= r.target.height
            and lo - 1 - r.committed_height < cfg.restore_ahead
        ):
            peers = [p for p in r.claimants(lo, available) if ctx.pending.room_for(p)]
            if peers:
                # The least recently asked first: a peer that did not answer is not asked again
                # before the others (the hedge), the best claim among equals.
                peer = min(peers, key=lambda p: r.header_asked.get(p, -1))
                r.header_asked[peer] = ctx.now
                hi = min(r.target.height, lo + cfg.max_range - 1)
                rid = self.pulls.request(peer, ctx.device_id, lo, hi, 0, r.target.height)
                r.header_req = (peer, rid)
        for run_lo, run_hi in r.missing_runs(cfg.max_blocks):
            if len(r.inflight) >= cfg.restore_inflight:
                break
            peers = [
                p
                for p in r.claimants(run_lo, available)
                if r.may_ask(p, run_lo, ctx.now, cfg.anti_entropy_ms) and ctx.pending.room_for(p)
            ]
            if not peers:
                continue
            load = {p: sum(1 for k in r.inflight if k[0] == p) for p in peers}
            least = min(load.values())
            peer = ctx.rng.choice(sorted(p for p in peers if load[p] == least))
            rid = self.pulls.request(
                peer, ctx.device_id, run_lo, run_hi, wire.FLAG_BODIES, r.target.height
            )
            r.inflight[(peer, rid)] = (run_lo, run_hi)

    def on_response(
        self, peer: str, req: Pending, headers: list[SignedHeader], blocks: tuple[bytes, ...]
    ) -> None:
        """A RESPONSE about the own chain (checked against ``req``) while fetching."""
        ctx = self.ctx
        r = self.state
        assert r is not None
        key = (peer, req.request_id)
        r.inflight.pop(key, None)
        if r.header_req == key:
            r.header_req = None
        progress = False
        for sh in headers:
            height = sh.header.height
            if height <= r.tip_height:
                continue
            if height != r.tip_height + 1 or not self._extends_tip(sh, peer):
                break
            r.tip = sh
            r.history.append(sh.hash)
            r.headers[height] = sh
            progress = True
        keys = ctx.trust.keys(ctx.device_id)
        for w in blocks if req.flags & wire.FLAG_BODIES else ():
            block = decode_block(w)
            bh = block.header.header
            if bh.device_id != ctx.device_id or not req.from_height <= bh.height <= req.to_height:
                raise VerificationError(
                    "response block",
                    f"{ctx.device_id}@{req.from_height}..{req.to_height}",
                    f"{bh.device_id}@{bh.height}",
                )
            expected = r.headers.get(bh.height)
            if expected is None or bh.height in r.bodies or keys is None:
                continue
            if block.header.hash != expected.hash:
                ctx.counters["restore_body_other_header"] += 1
                continue
            try:
                verify_block(block, keys.key_for(bh.key_id, bh.height))
            except VerificationError:
                ctx.counters["block_invalid"] += 1
                ctx.penalize(peer, "invalid")
                return
            r.bodies[bh.height] = w
            progress = True
        if req.flags & wire.FLAG_BODIES:
            r.mark_tried(peer, req.from_height, req.to_height, ctx.now)
        if progress:
            r.last_progress_ms = ctx.now
        self.step()

    def _extends_tip(self, sh: SignedHeader, peer: str) -> bool:
        """Does ``sh`` extend the verified tip of the chain being restored?"""
        ctx = self.ctx
        r = self.state
        assert r is not None
        h = sh.header
        keys = ctx.trust.keys(ctx.device_id)
        if keys is None:
            return False
        try:
            key = keys.key_for(h.key_id, h.height)
        except VerificationError:
            ctx.counters["restore_header_unknown_key"] += 1
            return False
        try:
            sh.verify(key, memo=True)
        except VerificationError:
            ctx.penalize(peer, "invalid")
            return False
        if ctx.superseded(ctx.device_id, h.epoch, h.height):
            ctx.counters["restore_header_superseded"] += 1
            return False
        try:
            verify_link(r.tip, sh, ctx.epochs.get(ctx.device_id, {}))
        except ChainError:
            ctx.counters["restore_header_unlinked"] += 1  # another branch, or a record unseen
            return False
        if h.history_root != r.history.root():
            ctx.penalize(peer, "invalid")
            return False
        return True

    def _commit(self) -> None:
        ctx = self.ctx
        r = self.state
        assert r is not None
        batch = r.take_committable()
        if not batch:
            return
        chain = ctx.chain(ctx.device_id)
        for sh, _ in batch:
            chain.append(sh)
            ctx.seen_headers.put(sh.hash, True)
        ctx.counters["restore_blocks"] += len(batch)
        ctx.out.append(CommitRestored(tuple(w for _, w in batch)))
        ctx.out.append(RestoreProgressed(r.committed_height, r.target_height))

    def _give_up(self) -> None:
        """The published head is out of reach: open a new epoch after the last whole block."""
        ctx = self.ctx
        r = self.state
        assert r is not None and r.target is not None
        if r.committed is None:
            if not r.failed_reported:
                r.failed_reported = True
                ctx.out.append(
                    RestoreFailed(
                        r.target.height,
                        "no peer served the body of block 0 (or its header) within "
                        f"{ctx.config.restore_body_wait_ms} ms; still trying",
                    )
                )
            r.last_progress_ms = ctx.now
            return
        head = r.committed.header
        known = list(ctx.epochs.get(ctx.device_id, {}))
        new_epoch = max([r.target.epoch, head.epoch, *known]) + 1
        r.phase = Phase.SIGNING
        ctx.pending.drop(device_id=ctx.device_id)
        ctx.counters["restore_new_epoch"] += 1
        ctx.out.append(SignEpoch(head.epoch, new_epoch, head.height, r.committed.hash))

    def on_epoch_signed(self, record: bytes) -> None:
        ctx = self.ctx
        r = self.state
        if r is None or r.phase is not Phase.SIGNING or r.committed is None:
            raise UsageError("epoch signed: no restore is waiting for an epoch record")
        se = decode_epoch(record)
        rec = se.record
        if (rec.device_id, rec.last_height, rec.last_hash) != (
            ctx.device_id,
            r.committed.header.height,
            r.committed.hash,
        ):
            raise UsageError("epoch signed: the record does not name the restored head")
        if not self.epochs.learn(record, None) or rec.new_epoch not in ctx.epochs.get(
            ctx.device_id, {}
        ):
            raise UsageError("epoch signed: the record does not verify under the device key")
        payload = ctx.seal(wire.Epochs(ctx.device_id, (record,)))
        for domain in ctx.cover_domains():
            ctx.out.append(Broadcast(domain, payload))
        self._finish(rec.new_epoch, rec.last_height, new_epoch=True)

    def _finish(self, epoch: int, height: int, *, new_epoch: bool) -> None:
        ctx = self.ctx
        r = self.state
        assert r is not None
        target = r.target
        r.phase = Phase.DONE
        r.headers.clear()
        r.bodies.clear()
        r.tried.clear()
        r.inflight.clear()
        ctx.pending.drop(device_id=ctx.device_id)
        ctx.out.append(
            RestoreFinished(
                epoch,
                height,
                0 if target is None else target.epoch,
                -1 if target is None else target.height,
                new_epoch,
            )
        )
