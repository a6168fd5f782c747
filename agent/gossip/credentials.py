"""The credentials exchange: certificates, rotations and revocations learned from the store or
from peers (CERTS messages, and the credentials a RESPONSE carries), verified by the device's
trust store (agent.protocol.trust), stored when they came from a peer, and spread: a rotation or
revocation is forwarded once to ``fanout`` peers, a revocation that enters the fleet here is
broadcast to the revoked device's domains, and every peer that comes up is told the revocations
held (docs/PROTOCOL.md 12.6).
"""

from __future__ import annotations

import hashlib

from agent.gossip import wire
from agent.gossip.actions import Broadcast, DeviceRevoked, Send, StoreCredential
from agent.gossip.context import Context
from agent.protocol.trust import CredentialKind, Outcome
from ledger.errors import DecodeError, UsageError


class CredentialExchange:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_peer_up(self, peer: str) -> None:
        """Tell a peer that comes up every revocation held (they are few, and they matter)."""
        ctx = self.ctx
        revocations = ctx.trust.revocations()
        for i in range(0, len(revocations), wire.MAX_CERTS_ITEMS):
            chunk = tuple(revocations[i : i + wire.MAX_CERTS_ITEMS])
            ctx.send(peer, wire.Certs(ctx.device_id, (), (), chunk))

    def learn_all(
        self,
        peer: str,
        certs: tuple[bytes, ...],
        rotations: tuple[bytes, ...],
        revocations: tuple[bytes, ...],
    ) -> bool:
        """Learn what a peer sent, in order. False at the first invalid one (penalized)."""
        for w in certs:
            if not self.learn("certificate", w, peer):
                return False
        for w in rotations:
            if not self.learn("rotation", w, peer):
                return False
        return all(self.learn("revocation", w, peer) for w in revocations)

    def learn(self, kind: CredentialKind, credential: bytes, source: str | None) -> bool:
        """Verify and remember one credential. False: it is invalid (the source is penalized).
        ``source`` None: from the runtime's store or config."""
        ctx = self.ctx
        digest = hashlib.sha256(kind.encode() + credential).digest()
        if digest in ctx.seen_other:
            return True
        try:
            result = ctx.trust.learn(kind, credential, ctx.now)
        except DecodeError as exc:
            if source is None:
                raise UsageError(f"known {kind} does not decode: {exc}") from None
            raise
        ctx.counters[f"{kind}_{result.outcome.value}"] += 1
        if result.outcome is Outcome.INVALID:
            if source is not None:
                ctx.penalize(source, "invalid")
            return source is None
        if result.outcome is Outcome.FULL:
            return True
        ctx.seen_other.put(digest, True)
        dev = result.device_id
        if result.outcome is Outcome.KNOWN:
            return True
        if kind != "rotation" or result.outcome is Outcome.NEW:
            ctx.need_creds.discard(dev)
        if source is not None:
            ctx.out.append(StoreCredential(dev, kind, credential))
        if result.revocation is not None:
            rev = result.revocation
            ctx.out.append(DeviceRevoked(dev, rev.key_id, rev.from_height))
        if kind == "certificate":
            return True
        rots = (credential,) if kind == "rotation" else ()
        revs = (credential,) if kind == "revocation" else ()
        message = wire.encode(wire.Certs(ctx.device_id, (), rots, revs))
        if kind == "revocation" and source is None:
            # A revocation enters the fleet here (an operator, or our store after a restart):
            # tell every member of the device's domains at once; they forward it once.
            for domain in ctx.domains_of(dev):
                ctx.out.append(Broadcast(domain, message))
            return True
        for p in ctx.fanout(dev, {source} if source is not None else set()):
            ctx.out.append(Send(p, message))
        return True
