"""Anti-entropy: SUMMARY exchanges that find what pushes missed.

Every ``anti_entropy_ms`` (jittered) a SUMMARY goes to one random available peer; both sides
compare heads and pull what they miss (``pulls.Pulls``). While rounds find nothing the interval
doubles, up to ``anti_entropy_backoff`` times; anything found brings it back (Trickle). A
summary answering another lists only what differs from it. A forked device is listed with
the forked mark, and a peer that still lists it is sent the evidence; a peer that lists a head
an epoch record closed is sent the records. When a peer comes up, only the ``greeters``
devices with the lowest greeting scores greet it with a summary (docs/PROTOCOL.md 12.4).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from agent.gossip import wire
from agent.gossip.context import Context
from agent.gossip.epochs import Epochs
from agent.gossip.evidence import Evidence
from agent.gossip.pulls import Pulls

GREETING_TAG = b"edgefleet/greeting/v1\x00"


def greeting_score(peer: str, device: str) -> bytes:
    """``device``'s score for greeting ``peer`` when it comes up: the lowest scores greet."""
    return hashlib.sha256(GREETING_TAG + peer.encode() + b"\x00" + device.encode()).digest()


@lru_cache(maxsize=4_096)
def greeters(peer: str, among: frozenset[str], count: int) -> frozenset[str]:
    """The ``count`` devices of ``among`` (``peer`` left out) with the lowest greeting scores
    for ``peer``. Cached: the members of one domain all ask the same question when a peer comes
    up, and each answer costs a hash per member (a street of n devices coming up together
    would otherwise hash n^3 times)."""
    ranked = sorted((greeting_score(peer, m), m) for m in among if m != peer)
    return frozenset(m for _, m in ranked[:count])


class AntiEntropy:
    def __init__(self, ctx: Context, pulls: Pulls, epochs: Epochs, evidence: Evidence) -> None:
        self.ctx = ctx
        self.pulls = pulls
        self.epochs = epochs
        self.evidence = evidence
        cfg = ctx.config
        self.next_round = ctx.now + ctx.rng.randint(0, cfg.anti_entropy_ms)
        self.interval = cfg.anti_entropy_ms  # the current mean interval between rounds
        self._found = self._findings()
        self._greets_peer: dict[str, bool] = {}
        self._summary_devices: dict[str, tuple[str, ...]] = {}
        # Lazy rounds (12.10): the head each device had at the last round, when it last
        # changed, and where the rotating slice goes on.
        self._heads_seen: dict[str, bytes] = {}
        self._changed_at: dict[str, int] = {}
        self._cursor = 0

    def members_changed(self) -> None:
        self._greets_peer = {}
        self._summary_devices = {}
        tracked = self.ctx.tracked
        self._heads_seen = {d: h for d, h in self._heads_seen.items() if d in tracked}
        self._changed_at = {d: t for d, t in self._changed_at.items() if d in tracked}

    def _findings(self) -> int:
        """What this node has found missing or wrong so far, anywhere: pulls (made, or skipped
        as already asked), a peer's summary showing it behind, credentials learned or awaited
        (a member's messages could not be read), epoch records and forks. Rounds back off while
        it stays put."""
        c = self.ctx.counters
        return (
            c["requests_sent"]
            + c["peer_behind"]
            + c["certificate_new"]  # a member's credentials learned: what it sent was lost
            + c["rotation_new"]
            + c["held_for_credentials"]
            + c["pull_skipped_inflight"]
            + c["pull_skipped_full"]
            + c["epochs_sent"]
            + c["forks_detected"]
            + c["forks_learned"]
            + len(self.ctx.forked)
        )

    def reset(self) -> None:
        """Back to the shortest interval (a peer came up, a restore runs): the next round comes
        within ``anti_entropy_ms``."""
        ctx = self.ctx
        cfg = ctx.config
        if self.interval == cfg.anti_entropy_ms:
            return
        self.interval = cfg.anti_entropy_ms
        self.next_round = min(self.next_round, ctx.now + ctx.rng.randint(0, cfg.anti_entropy_ms))

    def on_timer(self, *, restoring: bool = False) -> None:
        """Run the round when it is due, and schedule the next one: ``anti_entropy_ms`` after
        a round that found something (or while ``restoring``), twice the last interval (up to
        ``anti_entropy_backoff`` times ``anti_entropy_ms``) after one that found nothing. A
        healthy fleet's pushes deliver every header: its rounds find nothing, and each cost a
        signed SUMMARY and its signed answer (0.68 received per device-second, 2,500 devices in
        domains of 32: about a sixth of the fleet's CPU, bench.fleet)."""
        ctx = self.ctx
        if ctx.now < self.next_round:
            return
        cfg = ctx.config
        # The intervals of anti_entropy_ms that passed with this round: a silence measured in
        # rounds (the runtime's liveness) means as much time backed off as not.
        ctx.counters["round_periods"] += self.interval // cfg.anti_entropy_ms
        found = self._findings()
        if restoring or found != self._found or ctx.need_creds:
            self.interval = cfg.anti_entropy_ms
        else:
            self.interval = min(2 * self.interval, cfg.anti_entropy_ms * cfg.anti_entropy_backoff)
        self._found = found
        if self.interval > cfg.anti_entropy_ms:
            ctx.counters["rounds_backed_off"] += 1
        self.next_round = ctx.now + self.interval + ctx.rng.randint(-cfg.jitter_ms, cfg.jitter_ms)
        candidates = [p for p in ctx.peers.available() if ctx.mesh_peer(p)]
        if not candidates:
            ctx.counters["rounds_without_peer"] += 1
            return
        ctx.counters["rounds"] += 1
        peer = ctx.rng.choice(candidates)
        if not self._lazy_round(peer):
            self.send_summary(peer, reply=True)

    def _lazy_round(self, peer: str) -> bool:
        """A round for a node holding more than ``round_entries`` chains shared with ``peer``: a
        SUMMARY with reply = 0 listing its own head, forked marks, the heads that changed in the
        last two rounds (newest first) and then the next devices of a rotating slice, at most
        ``round_entries`` in all. The peer pulls what it lacks (gossipsub's IHAVE/IWANT); what
        this node lacks, its neighbours' rounds tell it. False: few enough for the full
        exchange (12.4)."""
        ctx = self.ctx
        cap = ctx.config.round_entries
        devices = self._devices_for(peer)
        held = [
            d
            for d in devices
            if d in ctx.forked or ((c := ctx.chains.get(d)) is not None and c.head is not None)
        ]
        if len(held) <= cap:
            return False
        now = ctx.now
        for d in held:
            chain = ctx.chains.get(d)
            head = None if chain is None or chain.head is None else chain.head.hash
            if head is not None and self._heads_seen.get(d) != head:
                self._heads_seen[d] = head
                self._changed_at[d] = now
        recent_after = now - 2 * ctx.config.anti_entropy_ms
        chosen: set[str] = {d for d in held if d == ctx.device_id or d in ctx.forked}
        recent = sorted(
            (d for d in held if self._changed_at.get(d, recent_after - 1) >= recent_after),
            key=lambda d: (-self._changed_at[d], d),
        )
        for d in recent:
            if len(chosen) >= cap:
                break
            chosen.add(d)
        n = len(held)
        start = self._cursor % n
        i = 0
        while len(chosen) < cap and i < n:
            chosen.add(held[(start + i) % n])
            i += 1
        self._cursor = (start + i) % n
        ctx.counters["rounds_lazy"] += 1
        self.send_summary(peer, reply=False, only=frozenset(chosen))
        return True

    def _devices_for(self, peer: str) -> tuple[str, ...]:
        ctx = self.ctx
        devices = self._summary_devices.get(peer)
        if devices is None:
            devices = self._summary_devices[peer] = tuple(
                sorted((ctx.sharing(peer) | {ctx.device_id}) & ctx.tracked)
            )
        return devices

    def greets(self, peer: str) -> bool:
        """Whether this node is one of the ``greeters`` devices that send a peer that comes up
        a SUMMARY at once: those of the devices sharing a domain with it (as this node sees
        them) with the lowest greeting scores. One summary exchange catches a returning peer
        up; a whole fleet coming up together (a start, a broker restart) would otherwise
        exchange one per pair of domain peers at once."""
        held = self._greets_peer.get(peer)
        if held is None:
            ctx = self.ctx
            me = ctx.device_id
            if ctx.config.mesh:  # the greeters are among the peer's neighbours (12.10)
                among: frozenset[str] = frozenset().union(
                    *(ctx.mesh_of(r, peer) for r in ctx.rings.values() if peer in r.pos)
                )
            else:
                sharing = [m for m in ctx.domains.values() if peer in m]
                among = sharing[0] if len(sharing) == 1 else frozenset().union(*sharing)
            held = self._greets_peer[peer] = me in greeters(peer, among, ctx.config.greeters)
        return held

    def on_summary(self, peer: str, msg: wire.Summary, *, skip: str | None) -> None:
        """Compare every entry but ``skip``'s (the own device while it restores: the restore
        reads those) and send the evidence a peer lacks."""
        ctx = self.ctx
        listed: set[str] = set()
        for e in msg.entries:
            dev = e.device_id
            listed.add(dev)
            if dev == skip:
                continue
            if dev in ctx.forked:
                if e.head_hash != wire.FORKED_MARK:
                    self.evidence.send(peer, dev)
                continue
            if e.head_hash == wire.FORKED_MARK or dev not in ctx.tracked:
                continue  # a forked mark: the peer sends its evidence
            self._compare(peer, dev, e)
        for dev in sorted(ctx.forked):
            if dev not in listed and peer in ctx.sharing(dev):
                self.evidence.send(peer, dev)
        # A round's full summary: a chain it does not list, the peer lacks. A probe (12.4)
        # lists only its sender's own chain and says nothing of the others.
        if msg.reply and any(e.device_id != peer for e in msg.entries):
            for dev in self._devices_for(peer):
                chain = ctx.chains.get(dev)
                if dev not in listed and dev != skip and chain is not None and chain.head:
                    ctx.counters["peer_behind"] += 1
                    break

    def _compare(self, peer: str, dev: str, e: wire.SummaryEntry) -> None:
        ctx = self.ctx
        if ctx.superseded(dev, e.epoch, e.height):
            self.epochs.send(peer, dev)  # the peer holds a head an epoch record closed
            return
        chain = ctx.chains.get(dev)
        head = None if chain is None else chain.head
        if chain is None or head is None:
            self.pulls.pull(peer, dev, e.height)
            return
        ours = head.header.height
        if e.height < ours:
            ctx.counters["peer_behind"] += 1  # it pulls; this node's rounds speed up too
        if e.height > ours or (e.height == ours and e.head_hash != head.hash):
            self.pulls.pull(peer, dev, e.height)
        elif (
            e.height < ours
            and (held := chain.at(e.height)) is not None
            and held.hash != e.head_hash
        ):
            self.pulls.pull(peer, dev, e.height)  # a probe: the peer's head differs from ours there
        elif dev in ctx.need_creds:
            self.pulls.pull(peer, dev, min(e.height, ours))
        elif chain.missing:
            self.pulls.pull_bodies(peer, dev, e.height)

    def send_summary(
        self,
        peer: str,
        *,
        reply: bool,
        answering: tuple[wire.SummaryEntry, ...] | None = None,
        only: frozenset[str] | None = None,
    ) -> None:
        """A SUMMARY of the chains shared with ``peer``. ``answering``: the entries of the peer's
        SUMMARY this one answers; the answer lists only what differs from them (and forked
        marks): what the peer may lack. An entry it already holds would make it compare for
        nothing, and in a quiet fleet nearly every entry is one. ``only``: list just these
        devices (a lazy round)."""
        ctx = self.ctx
        devices = self._devices_for(peer)
        if only is not None:
            devices = tuple(d for d in devices if d in only)
        theirs = None if answering is None else {e.device_id: e for e in answering}
        entries: list[wire.SummaryEntry] = []
        for dev in devices:
            chain = ctx.chains.get(dev)
            head = None if chain is None else chain.head
            if dev in ctx.forked:
                epoch, height = (0, 0) if head is None else (head.header.epoch, head.header.height)
                entries.append(wire.SummaryEntry(dev, epoch, height, wire.FORKED_MARK))
            elif head is not None:
                h = head.header
                if theirs is not None:
                    them = theirs.get(dev)
                    if (
                        them is not None
                        and them.height == h.height
                        and them.head_hash == head.hash
                        and them.epoch == h.epoch
                    ):
                        continue
                entries.append(wire.SummaryEntry(dev, h.epoch, h.height, head.hash))
        if len(entries) > wire.MAX_SUMMARY_ENTRIES:
            entries = sorted(
                ctx.rng.sample(entries, wire.MAX_SUMMARY_ENTRIES), key=lambda e: e.device_id
            )
        msg = wire.Summary(ctx.device_id, reply, tuple(entries))
        if answering is None:
            ctx.send(peer, msg)
        else:  # drawn by the peer's SUMMARY: an answer, within its budget
            ctx.answer(peer, msg)
