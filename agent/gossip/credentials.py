"""The credentials exchange: certificates, rotations and revocations learned from the store or
from peers (CERTS messages, and the credentials a RESPONSE carries), verified by the device's
trust store (agent.protocol.trust), stored when they came from a peer, and spread: a rotation or
revocation is forwarded once to ``fanout`` peers, a revocation that enters the fleet here is
broadcast to the revoked device's domains, and every peer that comes up is told the revocations
held (docs/PROTOCOL.md 12.6). A revocation the fleet authority published on the revocation topic
(``edgefleet keys revoke``, retained, every device subscribed) arrives from no sender: its root
signature proves it; it is kept and forwarded like a peer's (``on_topic``).
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
        self._hello_size = wire.CERT_WIRE_MAX
        # Peers the fleet gave this device's certificate when it gave theirs (CertificateKnown
        # ``provisioned``), and those of them a hello was skipped for at their last coming up.
        self._provisioned: set[str] = set()
        self._owed: set[str] = set()

    def provisioned(self, certificate: bytes) -> None:
        """``certificate`` (learned) was given to this device by the fleet that gave its
        device this one's: no hello is needed between them."""
        dev = self.ctx.trust.holder(certificate)
        if dev is not None and dev != self.ctx.device_id:
            self._provisioned.add(dev)

    def on_peer_up(self, peer: str) -> None:
        """Tell a peer that comes up who we are (``hello``) and every revocation held (they are
        few, and they matter). A provisioned peer already holds this device's certificate, so
        the hello is skipped unless this device has rotated its key since; it is owed instead,
        and sent if that peer greets first (it lacks the certificate after all: ``on_hello``).
        A fleet of 2,500 devices in domains of 32 sent 77,500 hellos at its start, each checked
        by its receiver, and took them in for tens of seconds (bench.fleet)."""
        ctx = self.ctx
        _, rotations, _ = ctx.trust.bundle(ctx.device_id)
        if peer in self._provisioned and not rotations:
            self._owed.add(peer)
            ctx.counters["hellos_skipped"] += 1
        else:
            self.hello(peer)
        revocations = ctx.trust.revocations()
        for i in range(0, len(revocations), wire.MAX_CERTS_ITEMS):
            chunk = tuple(revocations[i : i + wire.MAX_CERTS_ITEMS])
            ctx.send(peer, wire.Certs(ctx.device_id, (), (), chunk))

    def hello(self, peer: str) -> int:
        """Send ``peer`` this device's own certificate and rotations, so it can authenticate
        what we send (it learns them from the content: their fleet signatures prove them).
        Returns the bytes sent."""
        ctx = self.ctx
        certs, rotations, _ = ctx.trust.bundle(ctx.device_id)
        if not certs:
            return 0
        payload = ctx.seal(wire.Certs(ctx.device_id, certs, rotations[-wire.MAX_CERTS_ITEMS :], ()))
        ctx.out.append(Send(peer, payload))
        ctx.counters["hellos_sent"] += 1
        self._hello_size = len(payload)
        return len(payload)

    def on_hello(self, peer: str) -> None:
        """A proven peer sent its certificate: if this device skipped its hello to that peer
        (``on_peer_up``), the peer may not know it after all: greet back, once."""
        if peer in self._owed:
            self._owed.discard(peer)
            self.hello(peer)

    def hello_size(self) -> int:
        """Bytes of a hello (the last one sent, or a certificate's worth before any)."""
        return self._hello_size

    def on_topic(self, credential: bytes) -> None:
        """A revocation from the revocation topic: verified against the fleet roots, stored and
        forwarded once if new; anything that does not verify is dropped and counted (nobody to
        charge: MQTT does not say who published)."""
        ctx = self.ctx
        ctx.counters["revocation_topic"] += 1
        if not self.learn("revocation", credential, None, remote=True):
            ctx.counters["revocation_topic_invalid"] += 1

    def learn_all(
        self,
        peer: str | None,
        certs: tuple[bytes, ...],
        rotations: tuple[bytes, ...],
        revocations: tuple[bytes, ...],
    ) -> bool:
        """Learn what a peer sent, in order. False at the first invalid one (penalized).
        ``peer`` None: from a message whose sender is not proven (nobody is penalized)."""
        for w in certs:
            if not self.learn("certificate", w, peer, remote=True):
                return False
        for w in rotations:
            if not self.learn("rotation", w, peer, remote=True):
                return False
        return all(self.learn("revocation", w, peer, remote=True) for w in revocations)

    def learn(
        self, kind: CredentialKind, credential: bytes, source: str | None, *, remote: bool = False
    ) -> bool:
        """Verify and remember one credential. False: it is invalid (the source is penalized).
        ``source`` None: from the runtime's store or config, or (``remote``) from a message
        whose sender is not proven: stored like a peer's, charged to nobody."""
        ctx = self.ctx
        remote = remote or source is not None
        digest = hashlib.sha256(kind.encode() + credential).digest()
        if digest in ctx.seen_other:
            return True
        try:
            result = ctx.trust.learn(kind, credential, ctx.now)
        except DecodeError as exc:
            if not remote:
                raise UsageError(f"known {kind} does not decode: {exc}") from None
            if source is None:
                return False
            raise
        ctx.counters[f"{kind}_{result.outcome.value}"] += 1
        if result.outcome is Outcome.INVALID:
            if source is not None:
                ctx.penalize(source, "invalid")
            return not remote
        if result.outcome is Outcome.FULL:
            return True
        ctx.seen_other.put(digest, True)
        dev = result.device_id
        if result.outcome is Outcome.KNOWN:
            return True
        if kind != "rotation" or result.outcome is Outcome.NEW:
            ctx.need_creds.discard(dev)
        if remote:
            ctx.out.append(StoreCredential(dev, kind, credential))
        if result.revocation is not None:
            rev = result.revocation
            ctx.out.append(DeviceRevoked(dev, rev.key_id, rev.from_height))
        if kind == "certificate":
            return True
        rots = (credential,) if kind == "rotation" else ()
        revs = (credential,) if kind == "revocation" else ()
        message = ctx.seal(wire.Certs(ctx.device_id, (), rots, revs))
        if kind == "revocation" and not remote:
            # A revocation enters the fleet here (an operator, or our store after a restart):
            # tell every member of the device's domains at once; they forward it once.
            for domain in ctx.domains_of(dev):
                ctx.out.append(Broadcast(domain, message))
            return True
        for p in ctx.fanout(dev, {source} if source is not None else set()):
            ctx.out.append(Send(p, message))
        return True
