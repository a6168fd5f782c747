"""Fork evidence: a device that signed two headers at one (epoch, height) is excluded for good.

Evidence is found here (a validly signed header at a held height with another hash), received
in an EVIDENCE message, read from the evidence topic (retained, sender unknown) or fed from the
store after a restart; each is verified offline-style (``ledger.evidence.verify_evidence``)
before it counts. Evidence found here is published on the evidence topic; evidence from a
peer's message is forwarded once to ``fanout`` peers; evidence from the topic is not. A peer
that still lists a forked device is sent the evidence, at most once per ``anti_entropy_ms``.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from agent.gossip import wire
from agent.gossip.actions import ForkDetected, PublishEvidence, Send, StoreEvidence
from agent.gossip.context import Context
from agent.protocol.lru import Lru
from ledger.block import SignedHeader
from ledger.errors import DecodeError, UsageError, VerificationError
from ledger.evidence import ForkEvidence, make_evidence, verify_evidence

EvidenceOrigin = Literal["detected", "message", "topic"]


def evidence_id(evidence: bytes) -> bytes:
    """The key evidence is remembered by among the node's seen messages (domain-separated from
    credentials and epoch records, which share that set)."""
    return hashlib.sha256(b"evidence" + evidence).digest()


class Evidence:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sent: Lru[tuple[str, str], int] = Lru(ctx.config.seen_other)  # (peer, dev) -> ms

    def send(self, peer: str, dev: str) -> None:
        """Send ``peer`` the evidence against ``dev``, at most once per ``anti_entropy_ms``."""
        ctx = self.ctx
        last = self._sent.get((peer, dev))
        if last is not None and ctx.now - last < ctx.config.anti_entropy_ms:
            return
        self._sent.put((peer, dev), ctx.now)
        ctx.send(peer, wire.EvidenceMessage(ctx.device_id, ctx.forked[dev]))

    def on_message(self, peer: str, evidence: bytes) -> None:
        """Evidence in a peer's EVIDENCE message. DecodeError / VerificationError: the caller
        blames the peer."""
        ctx = self.ctx
        digest = evidence_id(evidence)
        if digest in ctx.seen_other:
            ctx.counters["evidence_duplicate"] += 1
            return
        ev = verify_evidence(evidence, ctx.roots)
        ctx.seen_other.put(digest, True)
        self._mark_forked(ev, evidence, peer, origin="message")

    def on_topic(self, evidence: bytes) -> None:
        """Evidence from the evidence topic: verified like any other; nobody to blame."""
        ctx = self.ctx
        digest = evidence_id(evidence)
        if digest in ctx.seen_other:
            ctx.counters["evidence_duplicate"] += 1
            return
        try:
            ev = verify_evidence(evidence, ctx.roots)
        except (DecodeError, VerificationError):
            ctx.counters["evidence_invalid_topic"] += 1
            return
        ctx.seen_other.put(digest, True)
        self._mark_forked(ev, evidence, None, origin="topic")

    def on_known(self, evidence: bytes) -> None:
        """Evidence from the store: the device stays excluded after a restart."""
        ctx = self.ctx
        try:
            ev = verify_evidence(evidence, ctx.roots)
        except (DecodeError, VerificationError) as exc:
            raise UsageError(f"stored fork evidence does not verify: {exc}") from None
        ctx.seen_other.put(evidence_id(evidence), True)
        ctx.forked.setdefault(ev.device_id, evidence)
        ctx.pending.drop(device_id=ev.device_id)

    def fork(self, held: SignedHeader, new: SignedHeader, peer: str) -> None:
        """``new`` (validly signed) and ``held`` are two headers at one height: prove it."""
        ctx = self.ctx
        dev = held.header.device_id
        certs, rots, _ = ctx.trust.bundle(dev)
        if not certs:
            ctx.counters["fork_unprovable"] += 1
            return
        ev = make_evidence(certs[0], rots, held, new)
        evidence = ev.encode()
        try:
            verify_evidence(evidence, ctx.roots)
        except (DecodeError, VerificationError):
            ctx.counters["fork_unprovable"] += 1
            return
        ctx.seen_other.put(evidence_id(evidence), True)
        self._mark_forked(ev, evidence, peer, origin="detected")

    def _mark_forked(
        self, ev: ForkEvidence, evidence: bytes, peer: str | None, *, origin: EvidenceOrigin
    ) -> None:
        """Exclude a forked device, and spread the evidence as its origin says."""
        ctx = self.ctx
        dev = ev.device_id
        if dev in ctx.forked:
            ctx.counters["evidence_for_known_fork"] += 1
            return
        ctx.forked[dev] = evidence
        ctx.counters["forks_detected" if origin == "detected" else "forks_learned"] += 1
        ctx.pending.drop(device_id=dev)
        h = ev.a.header
        ctx.out.append(StoreEvidence(dev, evidence))
        ctx.out.append(ForkDetected(dev, h.epoch, h.height, evidence, peer))
        if origin == "detected":
            ctx.out.append(PublishEvidence(dev, evidence))
        elif origin == "message":
            payload = ctx.seal(wire.EvidenceMessage(ctx.device_id, evidence))
            for p in ctx.fanout(dev, {peer} if peer is not None else set()):
                ctx.out.append(Send(p, payload))
