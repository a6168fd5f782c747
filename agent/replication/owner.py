"""The owner side: where each own block body lives, keeping R healthy copies, auditing holders.

- **Tracking**: for each of its latest ``max_own_blocks`` blocks the owner keeps the height,
  epoch, header hash, wire size and the verified receipt of each holder. A holder is
  **healthy** while its score is at least ``score_min`` and it has not been down for
  ``repair_delay_ms``; only healthy holders count towards R.
- **Placement**: a block short of R healthy copies goes to holders chosen by
  ``placement.choose`` (weighted rendezvous, distinct sites first) among domain peers that are
  up, healthy, have a known certificate (site, receipt key), advertised room for it and are not
  already holding, receiving or avoiding it. At most ``max_inflight_stores`` STOREs are open
  (``max_inflight_per_holder`` per holder); each must be answered within ``store_timeout_ms``.
- **Receipts** are accepted when they name this block exactly (holder = sender, owner, epoch,
  height, hash, size) and verify under the holder's current key; then ``StoreReceipt``.
- **Audits**: every ``audit_interval_ms`` each healthy holder that is up and holds any own block
  gets one challenge about a random one of them: a fresh 16-byte nonce; the owner loads its
  own copy and expects ``SHA-256(AUDIT || nonce || block_wire)``. Pass: +``reward_audit``.
  Wrong: -``penalty_wrong``; "not held": -``penalty_missing``. A failed audit voids that
  receipt, so the block is placed again.
- **Load is not loss**: the timeout adapts to each holder's smoothed round trip
  (``audit_timeout``); BUSY means "ask again later" (backoff, no penalty); silences within
  ``silence_spacing_ms`` of each other are one burst, each counted one costs
  ``penalty_timeout``, and only the ``silent_failures``-th in a row fails the audit.
- **Clocks**: audit rounds and the repair delay run on the data clock (``ctx.data_now``),
  everything that measures the network on the network clock (``ctx.now``).
- **Repair**: a holder down longer than ``repair_delay_ms``, or excluded, stops counting, and
  every block it held is placed again. When it comes back (or is readmitted) blocks may hold
  more than R healthy copies: the owner keeps the R with the highest rendezvous draw and sends
  RELEASE to the others.
- **Scores** start at ``score_initial`` (the ceiling); below ``score_min`` a holder is excluded;
  one point comes back every ``recover_ms`` after the last penalty.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.replication import wire
from agent.replication.actions import (
    AuditFailed,
    AuditOutcome,
    BlockReplicated,
    ForgetReceipt,
    HolderExcluded,
    HolderReadmitted,
    LoadOwnBlock,
    StoreReceipt,
)
from agent.replication.context import Context
from agent.replication.inputs import OwnBlockInfo, OwnBlockLoaded
from agent.replication.placement import Candidate, choose, draw
from ledger.block import Block, decode_block
from ledger.errors import DecodeError, VerificationError
from ledger.receipt import decode_receipt

_FRESH = 8  # bodies of the latest sealed blocks kept for their first placement
_LATE = 64  # timed-out challenges remembered for a late answer


@dataclass(slots=True)
class OwnBlock:
    height: int
    epoch: int
    block_hash: bytes
    size: int
    holders: dict[str, bytes] = field(default_factory=dict)  # holder -> receipt wire
    avoid: set[str] = field(default_factory=set)  # refused or failed it; cleared on retry


@dataclass(slots=True)
class HolderView:
    """What the owner knows of one domain peer as a holder."""

    score: int
    scored_ms: int  # last penalty or recovery step
    up: bool = False
    down_since: int | None = None  # data clock: repair is about the data's life
    gone: bool = False
    excluded: bool = False
    quota: int = 0
    free: int | None = None  # believed free bytes; None until its first SPACE
    advertised: int = 0  # free in its last SPACE
    sent_since_advert: int = 0
    blocks: set[int] = field(default_factory=set)  # own heights it holds a receipt for
    inflight: int = 0
    audit: int | None = None  # open challenge id
    audited_ms: int = -1  # when its last challenge went out (rounds start with the longest ago)
    # After a failed audit, every other block it holds is audited too, one per retry interval:
    # a holder that lost one body may have lost more.
    suspect: set[int] = field(default_factory=set)
    passed: int = 0
    failed: int = 0
    refused: int = 0
    srtt: int | None = None  # smoothed challenge round trip (network ms), from every answer
    silent: int = 0  # counted unanswered challenges in a row (reset by any answer)
    silenced_ms: int | None = None  # when the last one was counted
    busy: int = 0  # BUSY answers in a row (the backoff doubles with each)
    retry: tuple[int, int] | None = None  # (height, network time): re-challenge it then

    @property
    def healthy(self) -> bool:
        return not self.excluded and not self.gone


@dataclass(slots=True)
class Placing:
    holder: str
    height: int
    deadline: int
    sent: int = 0  # network time the STORE was asked for (a round-trip sample on its answer)
    charged: bool = False  # its timeout cost the holder a silence penalty (refunded if late)


@dataclass(slots=True)
class Audit:
    holder: str
    height: int
    nonce: bytes
    deadline: int
    expected: bytes | None = None  # None until the own copy is loaded and the challenge sent
    sent: int = 0  # network time the challenge went out
    charged: bool = False  # its timeout cost the holder a silence penalty (refunded if late)


@dataclass(slots=True)
class Load:
    deadline: int
    stores: list[int] = field(default_factory=list)
    audits: list[int] = field(default_factory=list)


class OwnerSide:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.blocks: dict[int, OwnBlock] = {}  # ascending height (insertion order)
        self.views: dict[str, HolderView] = {}
        self.placing: dict[int, Placing] = {}
        self._targets: dict[int, set[str]] = {}  # height -> holders a STORE is open with
        self.audits: dict[int, Audit] = {}
        self.loads: dict[int, Load] = {}
        self._fresh: dict[int, tuple[bytes, bytes | None]] = {}
        self._last_header: tuple[int, bytes] | None = None
        self.dirty: set[int] = set()  # to evaluate at the end of this input
        # Holders whose view can hold a deadline (one that ever held a receipt or lost points):
        # the deadline queries scan these, not every domain member's view (one query per input:
        # a scan of every view made a street of n devices cost n^3, docs/PROTOCOL.md 13.10).
        self._watch: set[str] = set()
        self.stalled: set[int] = set()  # short of R with no candidate: retried later
        self._next_id = ctx.rng.getrandbits(32)
        self._next_audit = ctx.data_now + ctx.rng.randint(0, cfg.audit_interval_ms)  # data clock
        # Challenges that timed out, kept a while: a late answer still teaches the round trip
        # (and a late wrong answer is still a lie).
        self._late: OrderedDict[int, Audit] = OrderedDict()  # at most _LATE, oldest dropped
        self._late_stores: OrderedDict[int, Placing] = OrderedDict()  # the same, for STOREs
        self._next_retry = ctx.now + cfg.retry_ms

    # --- queries --------------------------------------------------------------------------------

    def healthy(self, height: int) -> list[str]:
        rec = self.blocks.get(height)
        if rec is None:
            return []
        return sorted(h for h in rec.holders if self.views[h].healthy)

    # --- membership and presence ----------------------------------------------------------------

    def set_members(self, members: frozenset[str]) -> None:
        cfg = self.ctx.config
        for gone in sorted(self.views.keys() - members):
            view = self.views[gone]
            for h in sorted(view.blocks):
                del self.blocks[h].holders[gone]
                self.ctx.out.append(ForgetReceipt(h, gone))
                self.dirty.add(h)
            self._cancel(gone)
            del self.views[gone]
            self._watch.discard(gone)
        for new in sorted(members - self.views.keys()):
            up = new in self.ctx.up
            self.views[new] = HolderView(
                cfg.score_initial, self.ctx.now, up=up, down_since=None if up else self.ctx.data_now
            )

    def on_peer_up(self, peer: str) -> None:
        view = self.views.get(peer)
        if view is None:
            return
        view.up = True
        view.down_since = None
        if view.gone:
            view.gone = False
            self.dirty |= view.blocks
        self.kick()

    def on_peer_down(self, peer: str) -> None:
        view = self.views.get(peer)
        if view is None or not view.up:
            return
        view.up = False
        view.down_since = self.ctx.data_now
        self._cancel(peer)

    def _cancel(self, peer: str) -> None:
        """Drop open STOREs and the audit with ``peer``, without penalty (it went away)."""
        for rid in [r for r, p in self.placing.items() if p.holder == peer]:
            self._end_store(rid)
        for cid in [c for c, a in self.audits.items() if a.holder == peer]:
            del self.audits[cid]
        view = self.views.get(peer)
        if view is not None:
            view.audit = None

    # --- own blocks -----------------------------------------------------------------------------

    def on_sealed(self, block: Block, prev_header: bytes | None = None) -> None:
        sh = block.header
        h = sh.header.height
        body = block.encode()
        prev = prev_header if h > 0 else None
        last = self._last_header
        if prev is None and h > 0 and last is not None and last[0] == h - 1:
            prev = last[1]
        self._last_header = (h, sh.wire)
        if not self._track(OwnBlockInfo(h, sh.header.epoch, sh.hash, len(body))):
            return
        if h == 0 or prev is not None:
            self._fresh[h] = (body, prev)
            while len(self._fresh) > _FRESH:
                del self._fresh[next(iter(self._fresh))]
        self.dirty.add(h)

    def on_chain_loaded(self, infos: Iterable[OwnBlockInfo]) -> None:
        for info in infos:
            if self._track(info):
                self.dirty.add(info.height)

    def _track(self, info: OwnBlockInfo) -> bool:
        if info.height in self.blocks or (self.blocks and info.height < max(self.blocks)):
            self.ctx.counters["own_block_out_of_order"] += 1
            return False
        self.blocks[info.height] = OwnBlock(info.height, info.epoch, info.block_hash, info.size)
        while len(self.blocks) > self.ctx.config.max_own_blocks:
            old = self.blocks.pop(next(iter(self.blocks)))
            for holder in old.holders:
                self.views[holder].blocks.discard(old.height)
            self.dirty.discard(old.height)
            self.stalled.discard(old.height)
            self.ctx.counters["own_blocks_untracked"] += 1
        return True

    def on_receipt_known(self, receipt_wire: bytes) -> None:
        """A receipt from the store (trusted: the core verified it before ``StoreReceipt``)."""
        r = decode_receipt(receipt_wire).receipt
        rec = self.blocks.get(r.height)
        view = self.views.get(r.holder_id)
        if (
            r.owner_id != self.ctx.device_id
            or rec is None
            or view is None
            or (rec.block_hash, rec.size, rec.epoch) != (r.block_hash, r.size, r.epoch)
        ):
            self.ctx.counters["receipt_known_ignored"] += 1
            return
        rec.holders[r.holder_id] = receipt_wire
        view.blocks.add(r.height)
        self._watch.add(r.holder_id)
        self.dirty.add(r.height)

    # --- placement ------------------------------------------------------------------------------

    def work(self) -> None:
        """Evaluate every block whose copies may have changed: release extras, place what is
        missing. Called at the end of each input and timer."""
        if not self.dirty:
            return
        pool: list[dict[str, tuple[HolderView, str]]] = []  # made once, if a block needs it
        for h in sorted(self.dirty):
            self._evaluate(h, pool)
        self.dirty.clear()

    def _eligible(self) -> dict[str, tuple[HolderView, str]]:
        """The up, healthy holders with room, from the up peers only (a street's owner has
        hundreds of views; most inputs that dirty a block need no new holder for it)."""
        out: dict[str, tuple[HolderView, str]] = {}
        views = self.views
        for holder in sorted(self.ctx.up):
            v = views.get(holder)
            if v is None or not (v.up and v.healthy and v.free):
                continue
            site = self.ctx.site(holder)
            if site is not None:
                out[holder] = (v, site)
        return out

    def _evaluate(self, h: int, pool: list[dict[str, tuple[HolderView, str]]]) -> None:
        rec = self.blocks.get(h)
        if rec is None:
            return
        cfg = self.ctx.config
        healthy = [x for x in rec.holders if self.views[x].healthy]
        if len(healthy) > cfg.replicas:
            healthy = self._release(rec, healthy)
        targets = self._targets.get(h, set())
        need = cfg.replicas - len(healthy) - len(targets)
        if need <= 0:
            return
        room = cfg.max_inflight_stores - len(self.placing)
        if not pool:
            pool.append(self._eligible())
        candidates = {
            x: Candidate(min(v.free or 0, v.quota), site)
            for x, (v, site) in pool[0].items()
            if x not in rec.holders
            and x not in targets
            and x not in rec.avoid
            and (v.free or 0) >= rec.size
            and v.inflight < cfg.max_inflight_per_holder
        }
        used_sites = {s for x in (*healthy, *targets) if (s := self.ctx.site(x)) is not None}
        picks = choose(rec.block_hash, candidates, min(need, room), used_sites) if room > 0 else []
        for holder in picks:
            self._start_store(rec, holder)
        if len(picks) < need:
            self.stalled.add(h)
            self.ctx.counters["placement_stalled"] += 1

    def _release(self, rec: OwnBlock, healthy: list[str]) -> list[str]:
        """Keep the R healthy holders with the highest draw; release the others."""
        ranked = sorted(healthy, key=lambda x: (-draw(rec.block_hash, x), x))
        keep = ranked[: self.ctx.config.replicas]
        for holder in ranked[len(keep) :]:
            if self.views[holder].up:
                self.ctx.send(holder, wire.Release(self.ctx.device_id, rec.height, rec.block_hash))
            self._drop_holder(rec, holder)
            self.ctx.counters["replicas_released"] += 1
        return keep

    def _drop_holder(self, rec: OwnBlock, holder: str) -> None:
        del rec.holders[holder]
        self.views[holder].blocks.discard(rec.height)
        self.ctx.out.append(ForgetReceipt(rec.height, holder))

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & wire.MAX_ID
        return self._next_id

    def _start_store(self, rec: OwnBlock, holder: str) -> None:
        ctx = self.ctx
        view = self.views[holder]
        rid = self._new_id()
        view.inflight += 1
        view.free = max(0, (view.free or 0) - rec.size)
        view.sent_since_advert += rec.size
        timeout = self._timeout(view, ctx.config.store_timeout_ms)
        self.placing[rid] = Placing(holder, rec.height, ctx.now + timeout, ctx.now)
        self._targets.setdefault(rec.height, set()).add(holder)
        fresh = self._fresh.get(rec.height)
        if fresh is not None:
            ctx.send(holder, wire.Store(ctx.device_id, rid, fresh[0], fresh[1]))
            return
        load = self._load(rec.height)
        if load is None:
            self._end_store(rid)
            self.stalled.add(rec.height)
        else:
            load.stores.append(rid)

    def _load(self, height: int) -> Load | None:
        load = self.loads.get(height)
        if load is not None:
            return load
        if len(self.loads) >= self.ctx.config.max_loads:
            self.ctx.counters["load_refused"] += 1
            return None
        load = self.loads[height] = Load(self.ctx.now + self.ctx.config.serve_timeout_ms)
        self.ctx.out.append(LoadOwnBlock(height))
        return load

    def _end_store(self, rid: int) -> Placing | None:
        p = self.placing.pop(rid, None)
        if p is None:
            return None
        view = self.views.get(p.holder)
        if view is not None:
            view.inflight -= 1
        targets = self._targets.get(p.height)
        if targets is not None:
            targets.discard(p.holder)
            if not targets:
                del self._targets[p.height]
        self.dirty.add(p.height)
        self.kick()
        return p

    def kick(self) -> None:
        """A slot or a holder became available: blocks that stalled may be placed now."""
        self.dirty |= self.stalled
        self.stalled.clear()

    def on_own_loaded(self, ev: OwnBlockLoaded) -> None:
        ctx = self.ctx
        load = self.loads.pop(ev.height, None)
        rec = self.blocks.get(ev.height)
        if load is None:
            ctx.counters["own_loaded_unexpected"] += 1
            return
        block = ev.block
        if block is not None and rec is not None and _header_hash(block) != rec.block_hash:
            ctx.counters["own_block_corrupt"] += 1  # never judge a holder against a bad copy
            block = None
        for rid in load.stores:
            p = self.placing.get(rid)
            if p is None:
                continue
            if block is None or (ev.height > 0 and ev.prev_header is None):
                self._end_store(rid)
                ctx.counters["own_block_unavailable"] += 1
                continue
            prev = ev.prev_header if ev.height > 0 else None
            ctx.send(p.holder, wire.Store(ctx.device_id, rid, block, prev))
        for cid in load.audits:
            a = self.audits.get(cid)
            if a is None:
                continue
            if block is None:
                del self.audits[cid]
                self.views[a.holder].audit = None
                continue
            self._challenge(cid, a, block)

    def _challenge(self, cid: int, a: Audit, block: bytes) -> None:
        ctx = self.ctx
        a.expected = wire.audit_answer(a.nonce, block)
        a.sent = ctx.now
        a.deadline = ctx.now + self.audit_timeout(self.views[a.holder])
        rec = self.blocks[a.height]
        ctx.send(a.holder, wire.Challenge(ctx.device_id, cid, a.height, rec.block_hash, a.nonce))

    # --- answers from holders -------------------------------------------------------------------

    def on_receipt(self, peer: str, msg: wire.ReceiptMsg) -> None:
        """Raises DecodeError or VerificationError when the receipt is bad (the node penalizes)."""
        ctx = self.ctx
        p = self.placing.get(msg.request_id)
        if p is not None and p.holder == peer:
            self._end_store(msg.request_id)
            self._answered(self.views[peer], p.sent)
        else:
            ctx.counters["receipt_unsolicited"] += 1
            self._late_store(peer, msg.request_id)
        sr = decode_receipt(msg.receipt)
        r = sr.receipt
        rec = self.blocks.get(r.height)
        view = self.views[peer]
        if r.holder_id != peer or r.owner_id != ctx.device_id:
            raise VerificationError(
                "receipt parties", f"{peer} for {ctx.device_id}", f"{r.holder_id} for {r.owner_id}"
            )
        if rec is None:
            ctx.counters["receipt_untracked"] += 1
            return
        if (rec.block_hash, rec.size, rec.epoch) != (r.block_hash, r.size, r.epoch):
            raise VerificationError(
                f"receipt for height {r.height}",
                (rec.block_hash.hex()[:16], rec.size, rec.epoch),
                (r.block_hash.hex()[:16], r.size, r.epoch),
            )
        key = ctx.current_key(peer)
        if key is None:
            ctx.counters["receipt_unverifiable"] += 1
            rec.avoid.add(peer)
            return
        sr.verify(key)
        if peer in rec.holders:
            ctx.counters["receipt_duplicate"] += 1
            return
        rec.holders[peer] = msg.receipt
        view.blocks.add(r.height)
        self._watch.add(peer)
        ctx.out.append(StoreReceipt(r.height, peer, msg.receipt))
        ctx.counters["receipts_accepted"] += 1
        if view.healthy and len(self.healthy(r.height)) == ctx.config.replicas:
            ctx.out.append(BlockReplicated(r.height, ctx.config.replicas))
        self.dirty.add(r.height)

    def _late_store(self, peer: str, rid: int) -> None:
        p = self._late_stores.get(rid)
        if p is not None and p.holder == peer:
            del self._late_stores[rid]
            self._late_answer(peer, p.sent, p.charged)

    def on_refuse(self, peer: str, msg: wire.Refuse) -> None:
        ctx = self.ctx
        view = self.views[peer]
        p = self.placing.get(msg.request_id)
        if p is None or p.holder != peer:
            ctx.counters["refuse_unexpected"] += 1
            self._late_store(peer, msg.request_id)
            return
        self._end_store(msg.request_id)
        self._answered(view, p.sent)
        view.refused += 1
        rec = self.blocks.get(p.height)
        if rec is not None:
            rec.avoid.add(peer)
        if msg.reason == wire.FULL and view.advertised >= view.sent_since_advert:
            # It advertised room for everything we sent since: a claim it did not keep.
            self._penalize(peer, ctx.config.penalty_refused)
        view.free = msg.free
        ctx.counters[f"store_refused_{wire.REASONS[msg.reason]}"] += 1

    def on_space(self, peer: str, msg: wire.Space) -> None:
        view = self.views[peer]
        had_room = bool(view.free)
        view.quota = msg.quota
        view.free = view.advertised = msg.free
        view.sent_since_advert = 0
        if msg.free and not had_room:
            self.kick()

    def audit_timeout(self, view: HolderView) -> int:
        """How long a challenge to this holder may stay unanswered: the configured timeout, or
        ``audit_rtt_factor`` times its smoothed round trip when that is longer (capped)."""
        return self._timeout(view, self.ctx.config.audit_timeout_ms)

    def _timeout(self, view: HolderView, configured: int) -> int:
        """``configured``, or ``audit_rtt_factor`` x the holder's smoothed round trip when longer
        (at most ``audit_timeout_max_ms``): STOREs and challenges alike."""
        cfg = self.ctx.config
        if view.srtt is None:
            return configured
        return max(configured, min(cfg.audit_rtt_factor * view.srtt, cfg.audit_timeout_max_ms))

    def _late_answer(self, peer: str, sent: int, charged: bool) -> None:
        """An answer after its timeout: the holder was slow, not silent. Its round trip is learnt
        (the next timeouts adapt) and the silence penalty its timeout cost is given back."""
        view = self.views[peer]
        self._answered(view, sent)
        self.ctx.counters["answers_late"] += 1
        if charged:
            view.score = min(
                self.ctx.config.score_initial, view.score + self.ctx.config.penalty_timeout
            )
            self._readmit(peer, view)

    def _audit_gap(self, view: HolderView) -> int:
        """Least network time between two round challenges to one holder: ``audit_min_gap_ms``,
        or its audit timeout when longer (a slow holder is asked less often)."""
        return max(self.ctx.config.audit_min_gap_ms, self.audit_timeout(view))

    def _answered(self, view: HolderView, sent: int) -> None:
        """Any answer (PROOF, late PROOF, BUSY, RECEIPT, REFUSE): the holder is not silent;
        learn its round trip (smoothed as TCP does, gain 1/8)."""
        sample = max(0, self.ctx.now - sent)
        view.srtt = sample if view.srtt is None else view.srtt + (sample - view.srtt) // 8
        view.silent = 0
        view.silenced_ms = None

    def on_proof(self, peer: str, msg: wire.Proof) -> None:
        a = self.audits.get(msg.challenge_id)
        if a is None:
            late = self._late.get(msg.challenge_id)
            if late is not None and late.holder == peer and peer in self.views:
                del self._late[msg.challenge_id]
                self._late_proof(peer, msg, late)
                return
        if a is None or a.holder != peer or a.expected is None:
            self.ctx.counters["proof_unexpected"] += 1
            return
        del self.audits[msg.challenge_id]
        view = self.views[peer]
        view.audit = None
        self._answered(view, a.sent)
        view.busy = 0
        self._judge(peer, view, a, msg)

    def _late_proof(self, peer: str, msg: wire.Proof, a: Audit) -> None:
        """A proof after its timeout: the holder was slow, not silent. Its round trip is learnt
        (the next timeout adapts); a wrong or "not held" answer is judged like an early one, a
        right one passes (its silence penalty stays: it did not answer in time)."""
        view = self.views[peer]
        self.ctx.counters["proofs_late"] += 1
        self._late_answer(peer, a.sent, a.charged)
        self._judge(peer, view, a, msg)

    def on_busy(self, peer: str, msg: wire.Busy) -> None:
        """The holder cannot answer this challenge now: ask again later, with backoff, at no
        cost to it. Only an open challenge to this very holder is taken."""
        ctx = self.ctx
        a = self.audits.get(msg.challenge_id)
        late = None
        if a is None:  # answered after its timeout: still a round trip and a retry
            late = self._late.get(msg.challenge_id)
            if late is not None and late.holder == peer and peer in self.views:
                del self._late[msg.challenge_id]
                self._late_answer(peer, late.sent, late.charged)
                a = late
        elif a.holder == peer and a.expected is not None:
            del self.audits[msg.challenge_id]
            self.views[peer].audit = None
        else:
            a = None
        if a is None:
            ctx.counters["busy_unexpected"] += 1
            return
        view = self.views[peer]
        if a is not late:
            self._answered(view, a.sent)
        view.busy += 1
        cfg = ctx.config
        backoff = min(
            max(msg.retry_ms, cfg.retry_ms << min(view.busy - 1, 16)), cfg.busy_backoff_max_ms
        )
        view.retry = (a.height, ctx.now + backoff)
        ctx.counters["audits_busy"] += 1

    def _judge(self, peer: str, view: HolderView, a: Audit, msg: wire.Proof) -> None:
        assert a.expected is not None
        if msg.answer and hmac.compare_digest(msg.answer, a.expected):
            view.passed += 1
            self.ctx.counters["audits_passed"] += 1
            self._reward(peer, self.ctx.config.reward_audit)
        else:
            self._fail_audit(peer, a.height, "wrong" if msg.answer else "missing")

    # --- scores ---------------------------------------------------------------------------------

    def _fail_audit(self, holder: str, height: int, outcome: AuditOutcome) -> None:
        cfg = self.ctx.config
        view = self.views[holder]
        view.failed += 1
        self.ctx.counters[f"audits_{outcome}"] += 1
        points = {
            "wrong": cfg.penalty_wrong,
            "missing": cfg.penalty_missing,
            "timeout": cfg.penalty_timeout,
        }[outcome]
        rec = self.blocks.get(height)
        if rec is not None and holder in rec.holders:
            self._drop_holder(rec, holder)
            rec.avoid.add(holder)
            self.dirty.add(height)
        if outcome != "timeout":
            # It answered, and lost or forged this body: it may have lost more. (A silent
            # holder told nothing about its other blocks; it is re-challenged instead.)
            view.suspect = set(view.blocks) - {height}
        self._penalize(holder, points)
        self.ctx.out.append(AuditFailed(holder, height, outcome, view.score))

    def penalize_invalid(self, peer: str) -> None:
        self._penalize(peer, self.ctx.config.penalty_invalid)

    def _penalize(self, peer: str, points: int) -> None:
        view = self.views.get(peer)
        if view is None:
            return
        view.score = max(0, view.score - points)
        view.scored_ms = self.ctx.now
        self._watch.add(peer)
        if not view.excluded and view.score < self.ctx.config.score_min:
            view.excluded = True
            self.dirty |= view.blocks
            # Its receipts are void: once readmitted it must earn every copy again (counting
            # stale receipts would hide what it lost, and let a release drop an honest copy).
            for h in sorted(view.blocks):
                rec = self.blocks.get(h)
                if rec is not None and peer in rec.holders:
                    self._drop_holder(rec, peer)
                    if view.up:
                        self.ctx.send(peer, wire.Release(self.ctx.device_id, h, rec.block_hash))
            view.suspect.clear()
            self.ctx.counters["holders_excluded"] += 1
            self.ctx.out.append(HolderExcluded(peer, view.score))

    def _reward(self, peer: str, points: int) -> None:
        view = self.views[peer]
        view.score = min(self.ctx.config.score_initial, view.score + points)
        self._readmit(peer, view)

    def _readmit(self, peer: str, view: HolderView) -> None:
        if view.excluded and view.score >= self.ctx.config.score_min:
            view.excluded = False
            self.dirty |= view.blocks
            self.kick()
            self.ctx.out.append(HolderReadmitted(peer, view.score))

    # --- timer ----------------------------------------------------------------------------------

    def on_timer(self) -> None:
        ctx = self.ctx
        now = ctx.now
        cfg = ctx.config
        for rid, p in sorted(self.placing.items()):
            if p.deadline <= now:
                self._end_store(rid)
                ctx.counters["stores_timed_out"] += 1
                if self._deaf(p.sent):  # own link down: nobody's fault, placed again later
                    ctx.counters["timeouts_while_deaf"] += 1
                    self._late_stores[rid] = p
                    while len(self._late_stores) > _LATE:
                        self._late_stores.popitem(last=False)
                    continue
                rec = self.blocks.get(p.height)
                if rec is not None:
                    rec.avoid.add(p.holder)
                if self._count_silence(self.views[p.holder]):
                    p.charged = True
                    self._penalize(p.holder, cfg.penalty_timeout)
                self._late_stores[rid] = p
                while len(self._late_stores) > _LATE:
                    self._late_stores.popitem(last=False)
        for cid, a in sorted(self.audits.items()):
            if a.deadline <= now:
                del self.audits[cid]
                self.views[a.holder].audit = None
                if a.expected is not None:
                    self._late[cid] = a
                    while len(self._late) > _LATE:
                        self._late.popitem(last=False)
                    if self._deaf(a.sent):  # own link down: not judged, asked again later
                        ctx.counters["timeouts_while_deaf"] += 1
                        view = self.views[a.holder]
                        if not view.excluded and a.height in view.blocks:
                            view.retry = (a.height, now + cfg.silence_spacing_ms)
                        continue
                    self._silence(a)
        for h, load in sorted(self.loads.items()):
            if load.deadline <= now:
                del self.loads[h]
                ctx.counters["loads_expired"] += 1
                for rid in load.stores:
                    self._end_store(rid)
                for cid in load.audits:
                    gone = self.audits.pop(cid, None)
                    if gone is not None:
                        self.views[gone.holder].audit = None
        data_now = ctx.data_now
        for holder, v in sorted(self.views.items()):
            if (
                not v.up
                and not v.gone
                and v.down_since is not None
                and v.down_since + cfg.repair_delay_ms <= data_now
            ):
                v.gone = True
                self.dirty |= v.blocks
                ctx.counters["holders_gone"] += 1
            if v.score < cfg.score_initial and now - v.scored_ms >= cfg.recover_ms:
                points = (now - v.scored_ms) // cfg.recover_ms
                v.score = min(cfg.score_initial, v.score + points)
                v.scored_ms += points * cfg.recover_ms
                self._readmit(holder, v)
        self._audit_retries()
        if data_now >= self._next_audit:
            self._next_audit = data_now + cfg.audit_interval_ms
            self._audit_round()
        if now >= self._next_retry:
            self._next_retry = now + cfg.retry_ms
            self._audit_suspects()
            for h in self.stalled:
                rec = self.blocks.get(h)
                if rec is not None:
                    rec.avoid.clear()
            self.kick()

    def _deaf(self, sent: int) -> bool:
        """Nothing at all was received since a request left at network time ``sent``: this
        device's own link (or its broker) was down, so the request's silence says nothing of the
        peer's. Such a timeout costs nobody anything (REPLICATION.md 15.7)."""
        heard = self.ctx.heard_ms
        return heard is None or heard < sent

    def _silence(self, a: Audit) -> None:
        """A challenge went unanswered within its (adaptive) timeout. Silences closer together
        than ``silence_spacing_ms`` are one burst (one stall swallows many challenges) and
        count once; each counted one costs ``penalty_timeout``. After ``silent_failures``
        counted silences in a row the receipt is voided (the block is placed again); before
        that the same block is challenged again one spacing later."""
        ctx = self.ctx
        cfg = ctx.config
        view = self.views[a.holder]
        if not self._count_silence(view):
            ctx.counters["audits_silent_same_burst"] += 1
        else:
            if view.silent >= cfg.silent_failures:
                view.silent = 0
                view.silenced_ms = None
                self._fail_audit(a.holder, a.height, "timeout")
                return
            ctx.counters["audits_silent"] += 1
            a.charged = True
            self._penalize(a.holder, cfg.penalty_timeout)
        if not view.excluded and a.height in view.blocks:
            view.retry = (a.height, ctx.now + cfg.silence_spacing_ms)

    def _count_silence(self, view: HolderView) -> bool:
        """A request to this holder went unanswered: True when it counts (the first of its
        burst: none counted within ``silence_spacing_ms`` before), and then it is counted."""
        now = self.ctx.now
        if (
            view.silenced_ms is not None
            and now - view.silenced_ms < self.ctx.config.silence_spacing_ms
        ):
            return False
        view.silent += 1
        view.silenced_ms = now
        return True

    def _audit_retries(self) -> None:
        """Re-challenge what a holder left unanswered or said BUSY about, once its wait is over."""
        for holder, v in sorted(self.views.items()):
            if v.retry is None or v.retry[1] > self.ctx.now:
                continue
            height = v.retry[0]
            if height not in v.blocks or not v.healthy:
                v.retry = None
                continue
            if not v.up or v.audit is not None:
                continue
            if len(self.audits) >= self.ctx.config.max_audits:
                return
            v.retry = None
            self.ctx.counters["audits_retried"] += 1
            if not self._start_audit(holder, v, height):
                v.retry = (height, self.ctx.now + self.ctx.config.retry_ms)
                return

    def _audit_suspects(self) -> None:
        """Audit, one at a time, the other blocks of holders that just failed an audit."""
        for holder, v in sorted(self.views.items()):
            v.suspect &= v.blocks
            if not v.suspect or not v.up or not v.healthy or v.audit is not None:
                continue
            if len(self.audits) >= self.ctx.config.max_audits:
                return
            height = min(v.suspect)
            v.suspect.discard(height)
            self.ctx.counters["audits_of_suspects"] += 1
            if not self._start_audit(holder, v, height):
                return

    def _audit_round(self) -> None:
        ctx = self.ctx
        # Least recently audited first: with more holders than audit slots, a round that fills
        # its slots must not starve the same holders every time.
        order = sorted(self.views.items(), key=lambda kv: (kv[1].audited_ms, kv[0]))
        for holder, v in order:
            if not v.up or not v.healthy or v.audit is not None or not v.blocks:
                continue
            if v.retry is not None:  # it has a challenge coming (after BUSY or a silence)
                continue
            if v.audited_ms >= 0 and ctx.now - v.audited_ms < self._audit_gap(v):
                # Paced on the network: a round due again on a fast data clock (a simulated
                # run) does not challenge a holder faster than it can answer.
                ctx.counters["audits_paced"] += 1
                continue
            if len(self.audits) >= ctx.config.max_audits:
                ctx.counters["audits_skipped"] += 1
                return
            height = ctx.rng.choice(sorted(v.blocks))
            if not self._start_audit(holder, v, height):
                return

    def _start_audit(self, holder: str, v: HolderView, height: int) -> bool:
        """Challenge ``holder`` on ``height``; False when no load slot is free (try later)."""
        ctx = self.ctx
        cid = self._new_id()
        a = Audit(holder, height, ctx.rng.randbytes(wire.NONCE_SIZE), ctx.now)
        fresh = self._fresh.get(height)
        if fresh is not None:
            self.audits[cid] = a
            v.audit, v.audited_ms = cid, ctx.now
            self._challenge(cid, a, fresh[0])
            return True
        load = self._load(height)
        if load is None:
            return False
        a.deadline = ctx.now + ctx.config.serve_timeout_ms
        self.audits[cid] = a
        v.audit, v.audited_ms = cid, ctx.now
        load.audits.append(cid)
        return True

    def rebase_data(self, delta: int) -> None:
        """The data clock differs from the network time the node was built at: move what was
        scheduled on it (before any data time was known) by ``delta``."""
        self._next_audit += delta
        for v in self.views.values():
            if v.down_since is not None:
                v.down_since += delta

    def _watched(self) -> list[HolderView]:
        """The views that can hold a deadline: a view's score only falls by ``_penalize``, and
        its retries, suspects and repair need blocks it held (``_watch``)."""
        views = self.views
        return [views[h] for h in self._watch if h in views]

    def next_data_deadline(self) -> int:
        """The next audit round or repair, on the data clock."""
        cfg = self.ctx.config
        times = [self._next_audit]
        for v in self._watched():
            if not v.up and not v.gone and v.down_since is not None and v.blocks:
                times.append(v.down_since + cfg.repair_delay_ms)
        return min(times)

    def next_deadline(self) -> int:
        """The next deadline on the network clock (timeouts, retries, score recovery)."""
        cfg = self.ctx.config
        times = [self._next_retry]
        watched = self._watched()
        if not (self.stalled or any(v.suspect for v in watched)):
            times.pop()  # nothing to retry
        audits_free = len(self.audits) < cfg.max_audits
        times.extend(p.deadline for p in self.placing.values())
        times.extend(a.deadline for a in self.audits.values())
        times.extend(ld.deadline for ld in self.loads.values())
        for v in watched:
            if v.score < cfg.score_initial:
                times.append(v.scored_ms + cfg.recover_ms)
            # A due retry waits for the holder to be up and free, and for an audit slot: those
            # come with an input (and an audit slot with a deadline), so no busy loop here.
            if v.retry is not None and v.up and v.audit is None and audits_free:
                times.append(v.retry[1])
        return min(times, default=self.ctx.now + cfg.audit_interval_ms)


def _header_hash(block_wire: bytes) -> bytes | None:
    try:
        return decode_block(block_wire).header.hash
    except DecodeError:
        return None
