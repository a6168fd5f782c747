"""Headers: verification of every offered header before it is stored or forwarded, the push of
new ones, and the bodies that go with them.

- **Push**: an own block's header is broadcast once on the device's domain topics (the fewest
  that reach every sharing peer) and never forwarded from there; with ``push="fanout"`` it goes
  to ``fanout`` random peers instead. A header received in an ANNOUNCE to the inbox that
  verifies and extends the held chain is stored and forwarded once to ``fanout`` peers
  (duplicates are dropped by header hash, in a bounded LRU); one that came on a domain topic is
  not forwarded (every member received that copy).
- **Verification**: the header's signature with the key ``DeviceKeys`` names for its height
  (certificate -> fleet root, rotations, revocations), its link to the held head (height,
  prev_hash, epoch) and its ``history_root`` against the history tree's compact range; bodies
  with ``ledger.verify.verify_block`` against the accepted header's hash. A validly signed header
  at a held height with another hash is a fork (``evidence.Evidence.fork``).
"""

from __future__ import annotations

from enum import Enum

from agent.gossip import wire
from agent.gossip.actions import BlockAccepted, Broadcast, Send, StoreBlock
from agent.gossip.chains import build_chain
from agent.gossip.context import Context
from agent.gossip.epochs import Epochs
from agent.gossip.evidence import Evidence
from agent.gossip.inputs import ChainLoaded
from agent.gossip.pulls import Pulls
from agent.gossip.requests import Pending
from ledger.block import Block, SignedHeader, decode_block, decode_header
from ledger.errors import ChainError, RevokedError, UsageError, VerificationError
from ledger.verify import verify_block, verify_link


class Verdict(Enum):
    """What became of one offered header."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE = "stale"  # at a held height below the in-memory window: cannot compare, ignored
    GAP = "gap"  # above the next height: pull what lies between
    DIVERGED = "diverged"  # validly signed but does not link to the held head
    UNTRACKED = "untracked"  # device in none of our domains
    UNKNOWN_DEVICE = "unknown_device"  # no certificate yet
    UNKNOWN_KEY = "unknown_key"  # key id not in force at that height (rotation not known yet?)
    REVOKED = "revoked"
    FORKED = "forked"  # the device is excluded after fork evidence
    FORK = "fork"  # this header proved a fork
    OWN = "own"  # a header of our own device we did not seal
    INVALID = "invalid"  # bad signature or history: the sender is at fault
    SUPERSEDED = "superseded"  # valid history of an epoch a record closed below its height
    REWINDING = "rewinding"  # the device's chain is being rewound to an epoch record


_PULL = frozenset({Verdict.GAP, Verdict.DIVERGED, Verdict.UNKNOWN_DEVICE, Verdict.UNKNOWN_KEY})
_COUNTER = {v: f"header_{v.value}" for v in Verdict}  # the counter of each verdict


class Headers:
    def __init__(self, ctx: Context, pulls: Pulls, epochs: Epochs, evidence: Evidence) -> None:
        self.ctx = ctx
        self.pulls = pulls
        self.epochs = epochs
        self.evidence = evidence

    # --- from peers ---------------------------------------------------------------------------

    def on_announce(
        self, peer: str, msg: wire.Announce, *, broadcast: bool, signed: bool = True
    ) -> None:
        """``broadcast``: the ANNOUNCE came on a domain topic (every member has it already).
        ``signed`` False: it came with an empty authenticator, so only its headers can prove
        who sent it: each must be ``peer``'s own, and a bad one charges nobody."""
        ctx = self.ctx
        headers = [decode_header(w) for w in msg.headers]
        if not signed:
            unproven = self._unproven(peer, headers)
            if unproven:
                ctx.counters["unattributable"] += 1
                ctx.counters[f"unattributable_unsigned_{unproven}"] += 1
                return
        fresh: dict[str, list[SignedHeader]] = {}
        for sh in headers:
            dev = sh.header.device_id
            verdict = self.offer(sh, peer, checked=not signed)
            if verdict is Verdict.ACCEPTED:
                fresh.setdefault(dev, []).append(sh)
            elif verdict is Verdict.INVALID:
                if signed:
                    ctx.penalize(peer, "invalid")
                else:  # a header that does not verify proves nothing about who sent it
                    ctx.counters["unattributable"] += 1
                    ctx.counters["unattributable_unsigned_invalid"] += 1
                break
            elif verdict in _PULL:
                self.pulls.pull(peer, dev, sh.header.height)
        ctx.flush()
        for dev, shs in fresh.items():
            if not broadcast and ctx.config.push == "tree":
                self._push_tree(dev, shs, peer)
            elif not broadcast:
                self._push(dev, shs, exclude={peer, dev})
            chain = ctx.chains[dev]
            if peer == dev and chain.missing:
                self.pulls.pull_bodies(peer, dev, shs[-1].header.height)

    def _unproven(self, peer: str, headers: list[SignedHeader]) -> str:
        """Why an unsigned ANNOUNCE does not prove ``peer`` sent it ('' when it does): each
        header must be ``peer``'s own and its signature must verify under its key (a copy with
        a flipped signature bit has the same hash as the real header, so the hash proves
        nothing). Verification is memoized by (key, wire), so an exact copy costs a lookup and
        the header is not verified again when it is offered."""
        for sh in headers:
            if sh.header.device_id != peer:
                return "foreign"
            bad = self._check_signature(sh)
            if bad is not None:
                return bad.value
        return ""

    def on_pulled(
        self, peer: str, req: Pending, headers: list[SignedHeader], blocks: tuple[bytes, ...]
    ) -> None:
        """The headers (checked against ``req``) and bodies of a RESPONSE about a peer's chain."""
        ctx = self.ctx
        dev = req.device_id
        last = Verdict.ACCEPTED
        for sh in headers:
            last = self.offer(sh, peer)
            if last is Verdict.INVALID:
                ctx.penalize(peer, "invalid")
                return
            if last not in (Verdict.ACCEPTED, Verdict.DUPLICATE):
                break
        ctx.flush()
        got_blocks = 0
        for w in blocks:
            if not req.flags & wire.FLAG_BODIES:
                ctx.counters["block_unrequested"] += 1
                break
            block = decode_block(w)
            h = block.header.header
            if h.device_id != dev or not req.from_height <= h.height <= req.to_height:
                raise VerificationError(
                    "response block",
                    f"{dev}@{req.from_height}..{req.to_height}",
                    f"{h.device_id}@{h.height}",
                )
            outcome = self._offer_block(peer, block, w)
            if outcome < 0:
                return
            got_blocks += outcome
        self._follow_up(peer, req, len(headers), last, got_blocks)

    def _follow_up(
        self, peer: str, req: Pending, n_headers: int, last: Verdict, got_blocks: int
    ) -> None:
        """Keep pulling from a peer that answered in full while it still has more."""
        chain = self.ctx.chains.get(req.device_id)
        head = None if chain is None else chain.head
        if chain is None or head is None:
            return
        full = n_headers == req.to_height - req.from_height + 1
        ours = head.header.height
        if last is Verdict.ACCEPTED and full and req.from_height < ours < req.peer_height:
            self.pulls.pull(peer, req.device_id, req.peer_height)
        elif got_blocks and chain.missing:
            self.pulls.pull_bodies(peer, req.device_id, req.peer_height)

    def offer(self, sh: SignedHeader, peer: str, checked: bool = False) -> Verdict:
        """Verify one header against what is held; accept it when it extends the head.
        ``checked``: its signature was just checked (``_unproven``), under the same keys."""
        verdict = self._judge(sh, peer, checked)
        self.ctx.counters[_COUNTER[verdict]] += 1
        return verdict

    def _judge(self, sh: SignedHeader, peer: str, checked: bool = False) -> Verdict:
        ctx = self.ctx
        h = sh.header
        dev = h.device_id
        if dev not in ctx.tracked:
            return Verdict.UNTRACKED
        if dev in ctx.forked:
            return Verdict.FORKED
        if sh.hash in ctx.seen_headers:
            return Verdict.DUPLICATE
        if dev in self.epochs.rewinding:
            return Verdict.REWINDING
        keys = ctx.trust.keys(dev)
        if keys is None:
            return Verdict.UNKNOWN_DEVICE
        if ctx.superseded(dev, h.epoch, h.height):
            self.epochs.send(peer, dev)
            return Verdict.SUPERSEDED
        chain = ctx.chain(dev)
        head = chain.head
        if head is not None and h.height <= head.header.height:
            held = chain.at(h.height)
            if held is None:
                return Verdict.STALE
            if held.hash == sh.hash:
                return Verdict.DUPLICATE
            bad = self._check_signature(sh)
            if bad is not None:
                return bad
            if held.header.epoch != h.epoch:
                return Verdict.DIVERGED
            self.evidence.fork(held, sh, peer)
            return Verdict.FORK
        if dev == ctx.device_id:
            return Verdict.OWN
        if h.height != (0 if head is None else head.header.height + 1):
            return Verdict.GAP
        bad = None if checked else self._check_signature(sh)
        if bad is not None:
            return bad
        try:
            verify_link(head, sh, ctx.epochs.get(dev, {}))
        except ChainError:
            return Verdict.DIVERGED
        if h.history_root != chain.history.root():
            return Verdict.INVALID
        chain.append(sh)
        ctx.seen_headers.put(sh.hash, True)
        batch = ctx.batch.setdefault(dev, (peer, []))
        batch[1].append(sh)
        if ctx.config.want_bodies(dev, h.height):
            chain.want_body(h.height, sh.hash)
        return Verdict.ACCEPTED

    def _check_signature(self, sh: SignedHeader) -> Verdict | None:
        h = sh.header
        keys = self.ctx.trust.keys(h.device_id)
        if keys is None:
            return Verdict.UNKNOWN_DEVICE
        try:
            key = keys.key_for(h.key_id, h.height)
        except RevokedError:
            return Verdict.REVOKED
        except VerificationError:
            self.ctx.need_creds.add(h.device_id)
            return Verdict.UNKNOWN_KEY
        try:
            sh.verify(key, memo=True)
        except VerificationError:
            return Verdict.INVALID
        return None

    def _offer_block(self, peer: str, block: Block, block_wire: bytes) -> int:
        """Verify and store one wanted body: 1 stored, 0 not wanted or not provable, -1 invalid
        (the peer was penalized)."""
        ctx = self.ctx
        sh = block.header
        dev, height = sh.header.device_id, sh.header.height
        chain = ctx.chains.get(dev)
        expected = None if chain is None else chain.missing.get(height)
        if chain is None or expected is None:
            ctx.counters["block_not_wanted"] += 1
            return 0
        if sh.hash != expected:
            verdict = self.offer(sh, peer)  # a different header there: maybe a fork
            if verdict is Verdict.INVALID:
                ctx.penalize(peer, "invalid")
                return -1
            return 0
        keys = ctx.trust.keys(dev)
        if keys is None:
            return 0
        try:
            verify_block(block, keys.key_for(sh.header.key_id, height))
        except RevokedError:
            ctx.counters["block_revoked"] += 1
            return 0
        except VerificationError:
            ctx.counters["block_invalid"] += 1
            ctx.penalize(peer, "invalid")
            return -1
        del chain.missing[height]
        ctx.counters["block_accepted"] += 1
        ctx.out.append(StoreBlock(dev, height, block_wire))
        ctx.out.append(BlockAccepted(dev, height, peer))
        return 1

    # --- from the runtime ---------------------------------------------------------------------

    def on_own_block(self, block: Block) -> None:
        ctx = self.ctx
        sh = block.header
        h = sh.header
        if h.device_id != ctx.device_id:
            raise UsageError(f"own block: expected device {ctx.device_id}, found {h.device_id}")
        chain = ctx.chain(ctx.device_id)
        head = chain.head
        if head is not None and h.height <= head.header.height:
            held = chain.at(h.height)
            if held is not None and held.hash == sh.hash:
                return
            raise UsageError(
                f"own block at height {h.height} does not extend the head at {head.header.height}"
            )
        try:
            verify_link(head, sh, ctx.epochs.get(ctx.device_id, {}))
        except ChainError as exc:
            raise UsageError(f"own block does not extend the held head: {exc}") from None
        if h.history_root != chain.history.root():
            raise UsageError(
                f"own block at height {h.height}: history_root does not match the held chain"
            )
        chain.append(sh)
        ctx.seen_headers.put(sh.hash, True)
        if ctx.config.push == "broadcast":
            self._broadcast_own(sh)
        elif ctx.config.push == "tree":
            self._push_tree(ctx.device_id, [sh], None)
        else:
            self._push(ctx.device_id, [sh], exclude=set())

    def on_chain_loaded(self, ev: ChainLoaded) -> None:
        ctx = self.ctx
        dev = ev.device_id
        if dev not in ctx.tracked:
            ctx.counters["chain_loaded_untracked"] += 1
            return
        held = ctx.chains.get(dev)
        if held is not None and held.head is not None:
            raise UsageError(
                f"chain of {dev} is already loaded (head at {held.head.header.height})"
            )
        cfg = ctx.config
        ctx.chains[dev] = build_chain(
            dev,
            ev.headers,
            ev.missing_bodies,
            ctx.epochs.get(dev, {}),
            cfg.window,
            cfg.max_missing_bodies,
        )
        for se in list(ctx.epochs.get(dev, {}).values()):
            self.epochs.apply(dev, se, None)  # a rewind that a stop interrupted

    # --- pushing ------------------------------------------------------------------------------

    def _push(self, dev: str, headers: list[SignedHeader], exclude: set[str]) -> None:
        ctx = self.ctx
        chosen = ctx.fanout(dev, exclude)
        if not chosen:
            return
        wires = tuple(sh.wire for sh in headers[-wire.MAX_ANNOUNCE_HEADERS :])
        announce = wire.Announce(ctx.device_id, wires)
        own = dev == ctx.device_id
        payload = ctx.seal_own_announce(announce) if own else ctx.seal(announce)
        for p in chosen:
            ctx.out.append(Send(p, payload))
        ctx.counters["announces_sent"] += len(chosen)

    def _push_tree(self, dev: str, headers: list[SignedHeader], sender: str | None) -> None:
        """Down ``dev``'s trees (docs/PROTOCOL.md 12.10): an own header (``sender`` None) to the
        origin's children, a header handed down by an ancestor to this node's children."""
        ctx = self.ctx
        targets = ctx.tree_targets(dev, sender)
        if not targets:
            return
        wires = tuple(sh.wire for sh in headers[-wire.MAX_ANNOUNCE_HEADERS :])
        announce = wire.Announce(ctx.device_id, wires)
        payload = ctx.seal_own_announce(announce) if sender is None else ctx.seal(announce)
        for p in targets:
            ctx.out.append(Send(p, payload))
        ctx.counters["announces_sent"] += len(targets)

    def _broadcast_own(self, sh: SignedHeader) -> None:
        """One ANNOUNCE per domain topic, on the fewest domains that reach every sharing peer."""
        ctx = self.ctx
        domains = ctx.cover_domains()
        if not domains:
            return
        payload = ctx.seal_own_announce(wire.Announce(ctx.device_id, (sh.wire,)))
        for domain in domains:
            ctx.out.append(Broadcast(domain, payload))
        ctx.counters["announces_broadcast"] += len(domains)
