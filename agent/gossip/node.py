"""The gossip core: a synchronous, I/O-free state machine for one device (h11/aioquic style).

``GossipNode.handle(input, now_ms)`` and ``handle_timer(now_ms)`` return the actions the runtime
must perform; ``next_deadline()`` says when to call ``handle_timer`` next. Randomness comes from
the injected ``random.Random`` only, and every choice is made over a sorted list, so a seed
reproduces a run. Nothing here touches sockets, files, clocks or the global random.

This module is the facade: it routes each input and message to the part that owns it, over one
shared ``context.Context`` (docs/PROTOCOL.md section 12 has the full description):

- ``headers``: verification of every header and body before it is stored or forwarded, the push
  of own headers (a domain broadcast) and the forwarding of fresh ones.
- ``summaries``: anti-entropy, a SUMMARY to one random peer per round, and the greeting of a peer
  that comes up.
- ``pulls``: REQUESTs and RESPONSEs both ways, with ids, deadlines and hedging.
- ``epochs``: epoch records, and the rewind of a chain an epoch record closed.
- ``evidence``: fork evidence, found or received, and the exclusion of forked devices.
- ``credentials``: certificates, rotations and revocations, verified by the device's one trust
  store (agent.protocol.trust) and spread.
- ``witness``: domain peers cosign each other's C2SP checkpoints (tlog-witness over gossip).
- ``restore``: a wiped device learns its published head from peers' summaries, fetches and
  verifies its chain, and signs nothing until ``RestoreFinished``.
- **Peers** (``peers``): per-peer scores mute peers that send malformed or invalid messages or
  break promises. Malformed input never raises out of ``handle``.

Every message enters through ``agent.protocol.auth.open_envelope``: only a message whose sender
is proven (wire version 2, docs/PROTOCOL.md 12.1.5) is looked at, answered or charged to anyone.
An ANNOUNCE of the sender's own headers may come unsigned: its headers prove it, and it charges
nobody.
The rest is counted (``unattributable``, ``old_version``) and dropped; a message from a device
whose credentials are missing marks them wanted (``need_creds``), and a CERTS message carrying
them (fleet-root-signed, so proven by its content) is learned from, charging nobody.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping

from agent.gossip import wire
from agent.gossip.actions import Action
from agent.gossip.context import Context
from agent.gossip.credentials import CredentialExchange
from agent.gossip.epochs import Epochs
from agent.gossip.evidence import Evidence
from agent.gossip.headers import Headers, Verdict
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    ChainRewound,
    CheckpointPrepared,
    DomainChanged,
    EpochKnown,
    EpochSigned,
    EvidenceKnown,
    EvidenceReceived,
    Input,
    MessageReceived,
    OwnBlockSealed,
    PeerDown,
    PeerUp,
    Probe,
    PullLoaded,
    RestoreRequested,
    RevocationKnown,
    RevocationReceived,
    RotationKnown,
    WitnessStateKnown,
)
from agent.gossip.peers import PeerStats
from agent.gossip.pulls import Pulls
from agent.gossip.restore import Phase, Restore, Restorer
from agent.gossip.summaries import AntiEntropy
from agent.gossip.tuning import GossipConfig
from agent.gossip.witness import WitnessConfig, Witnessing
from agent.protocol import auth
from agent.protocol.lru import Lru
from agent.protocol.trust import TrustStore
from ledger.block import SignedHeader
from ledger.certs import FleetRoots, decode_revocation
from ledger.errors import DecodeError, UsageError, VerificationError
from ledger.identity import is_device_id
from ledger.note import Note

__all__ = ["GossipNode", "Verdict"]

# Types that may come with an empty authenticator: an ANNOUNCE of the sender's own headers,
# whose signatures prove it (docs/PROTOCOL.md 12.1.5; chosen on bench/auth.py's figures).
_SELF_PROVING: frozenset[int] = frozenset({wire.ANNOUNCE})
# Signed REQUESTs already answered (their signatures): a replayed copy draws nothing. Request
# ids are sequential per requester, so an honest request never has the bytes of an earlier one.
_ANSWERED_REQUESTS = 4_096


class GossipNode:
    """The gossip protocol of one device. Not thread-safe; drive it from one task."""

    def __init__(
        self,
        device_id: str,
        domains: Mapping[str, Iterable[str]],
        roots: FleetRoots,
        rng: random.Random,
        *,
        config: GossipConfig | None = None,
        now_ms: int = 0,
        trust: TrustStore | None = None,
        signer: auth.Signer,
        witness: WitnessConfig | None = None,
    ) -> None:
        """``trust``: the device's one trust store, shared with its replication core (a
        credential is then verified once per device); None: a store of this node's own.
        ``signer``: holds the device's current key, which authenticates every message sent."""
        if not is_device_id(device_id):
            raise UsageError(
                f"gossip node: expected a device id (ef + 24 base32), found {device_id!r}"
            )
        self.device_id = device_id
        self.config = cfg = config if config is not None else GossipConfig()
        if trust is None:
            trust = TrustStore(
                roots,
                max_devices=cfg.max_devices,
                max_pending=cfg.max_pending_rotations,
                max_revocations=cfg.max_revocations,
            )
        members = {name: frozenset(m) for name, m in domains.items()}
        self._ctx = ctx = Context(device_id, members, roots, rng, cfg, trust, signer, now_ms)
        self.counters: Counter[str] = ctx.counters
        # Built in this order: the request ids and then the first round draw from ``rng``.
        self._credentials = CredentialExchange(ctx)
        self._evidence = Evidence(ctx)
        self._pulls = Pulls(ctx, self._credentials, self._evidence)
        self._epochs = Epochs(ctx, self._pulls)
        self._headers = Headers(ctx, self._pulls, self._epochs, self._evidence)
        self._summaries = AntiEntropy(ctx, self._pulls, self._epochs, self._evidence)
        self._restore = Restorer(ctx, self._pulls, self._summaries, self._epochs)
        self._witness = Witnessing(ctx, witness)
        # Unproven bytes received per unknown sender, and when it was last sent a hello (both
        # bounded by the tracked members: only they are asked).
        self._ask_credit: dict[str, int] = {}
        self._asked: dict[str, int] = {}
        self._awaiting = auth.Awaiting()  # messages waiting for their sender's credentials
        # When each member last sent a proven message (the runtime's liveness reads it:
        # presence is only a hint, docs/PROTOCOL.md 13.3). Bounded by the members.
        self._heard: dict[str, int] = {}
        self._requests: Lru[bytes, bool] = Lru(_ANSWERED_REQUESTS)

    # --- public API ---------------------------------------------------------------------------

    def handle(self, event: Input, now_ms: int) -> list[Action]:
        """Feed one input; return what to do. Remote bytes never make this raise."""
        self._ctx.now = now_ms
        if isinstance(event, MessageReceived):
            self._on_message(event)
        elif isinstance(event, OwnBlockSealed):
            self._headers.on_own_block(event.block)
        elif isinstance(event, ChainLoaded):
            self._headers.on_chain_loaded(event)
        elif isinstance(event, CertificateKnown):
            self._credentials.learn("certificate", event.wire, None)
            if event.provisioned:
                self._credentials.provisioned(event.wire)
        elif isinstance(event, RotationKnown):
            self._credentials.learn("rotation", event.wire, None)
        elif isinstance(event, RevocationKnown):
            self._credentials.learn("revocation", event.wire, None)
        elif isinstance(event, EvidenceKnown):
            self._evidence.on_known(event.wire)
        elif isinstance(event, EvidenceReceived):
            self._evidence.on_topic(event.evidence)
        elif isinstance(event, RevocationReceived):
            self._credentials.on_topic(event.wire)
        elif isinstance(event, PeerUp):
            self._on_peer_up(event.peer_id)
        elif isinstance(event, PeerDown):
            self._on_peer_down(event.peer_id)
        elif isinstance(event, Probe):
            self._on_probe(event.peer_id)
        elif isinstance(event, DomainChanged):
            self._on_domain_changed(event)
        elif isinstance(event, PullLoaded):
            self._pulls.on_pull_loaded(event)
        elif isinstance(event, RestoreRequested):
            self._restore.on_requested()
        elif isinstance(event, EpochKnown):
            self._epochs.learn(event.wire, None)
        elif isinstance(event, EpochSigned):
            self._restore.on_epoch_signed(event.wire)
        elif isinstance(event, ChainRewound):
            self._epochs.on_rewound(event)
        elif isinstance(event, CheckpointPrepared):
            self._witness.on_prepared(event)
        elif isinstance(event, WitnessStateKnown):
            self._witness.on_known(event)
        else:
            raise UsageError(f"gossip node: unknown input {type(event).__name__}")
        self._awaiting.settle(self._ctx.trust, now_ms, self._ctx.counters)
        return self._ctx.take()

    def handle_timer(self, now_ms: int) -> list[Action]:
        """Run whatever is due at ``now_ms``: mute expiries, request deadlines, the round."""
        ctx = self._ctx
        ctx.now = now_ms
        ctx.out.extend(ctx.peers.expire(now_ms))
        for req in ctx.pending.expire(now_ms):
            ctx.counters["promises_broken"] += 1
            ctx.penalize(req.peer_id, "promise")
        ctx.counters["serves_expired"] += len(ctx.serves.expire(now_ms))
        self._restore.step()
        self._summaries.on_timer(restoring=self._restore.active)
        self._witness.on_timer(self._restore.active)
        self._awaiting.settle(ctx.trust, now_ms, ctx.counters)
        return ctx.take()

    def next_deadline(self) -> int | None:
        """When ``handle_timer`` must run next (there is always an anti-entropy round)."""
        ctx = self._ctx
        due = self._summaries.next_round
        # Asked after every input (the runtime rearms its timer when it moved): no list, no
        # generator; most of these are None.
        for t in (
            ctx.pending.next_deadline(),
            ctx.serves.next_deadline(),
            ctx.peers.next_expiry(),
            self._restore.deadline(),
            self._witness.deadline(),
            self._awaiting.deadline(),
        ):
            if t is not None and t < due:
                due = t
        return due

    # --- queries (runtime, tests, live view) --------------------------------------------------

    def head(self, device_id: str) -> SignedHeader | None:
        chain = self._ctx.chains.get(device_id)
        return None if chain is None else chain.head

    def heights(self) -> dict[str, int]:
        return {
            d: c.head.header.height
            for d, c in sorted(self._ctx.chains.items())
            if c.head is not None
        }

    def forked(self) -> frozenset[str]:
        return frozenset(self._ctx.forked)

    def key_status(self, device_id: str) -> tuple[int, int | None]:
        """What this node holds of a device's key life: its rotations applied, and the lowest
        height a revocation refuses from (None: not revoked)."""
        _, rotations, revocations = self._ctx.trust.bundle(device_id)
        froms = [decode_revocation(w).from_height for w in revocations]
        return len(rotations), min(froms, default=None)

    def missing_bodies(self, device_id: str) -> tuple[int, ...]:
        chain = self._ctx.chains.get(device_id)
        return () if chain is None else tuple(sorted(chain.missing))

    def peer_stats(self, peer_id: str) -> PeerStats | None:
        return self._ctx.peers.stats(peer_id, self._ctx.now)

    def last_heard(self, peer_id: str) -> int | None:
        """When ``peer_id`` last sent a proven message (a signature, or own headers that
        verify); None: never."""
        return self._heard.get(peer_id)

    def watched(self) -> list[str]:
        """The peers whose presence the runtime should follow: with ``config.mesh`` the mesh
        neighbours (O(log n) per domain, docs/PROTOCOL.md 12.10), else every domain peer."""
        ctx = self._ctx
        if ctx.config.mesh:
            return sorted(ctx.neighbours)
        return sorted(ctx.tracked - {self.device_id})

    def peers_available(self) -> list[str]:
        return self._ctx.peers.available()

    @property
    def restoring(self) -> bool:
        """A restore was requested and has not finished: the device must not sign."""
        return self._restore.active

    def restore_state(self) -> Restore | None:
        return self._restore.state

    def checkpoint_note(self) -> Note | None:
        """The own checkpoint offered to witnesses last, with the cosignatures it has."""
        return self._witness.own_note()

    def epochs(self, device_id: str) -> tuple[bytes, ...]:
        """Verified epoch records of ``device_id``, by epoch."""
        return self._ctx.epoch_wires(device_id)

    # --- membership and presence --------------------------------------------------------------

    def _on_domain_changed(self, ev: DomainChanged) -> None:
        ctx = self._ctx
        if self.device_id in ev.members:
            ctx.set_domain(ev.domain, frozenset(ev.members))
        else:
            ctx.domains.pop(ev.domain, None)
        ctx.members_changed()
        self._summaries.members_changed()
        for gone in [p for p in self._heard if ctx.peers.get(p) is None]:
            del self._heard[gone]
        for dev in [d for d in ctx.chains if d not in ctx.tracked]:
            del ctx.chains[dev]
            ctx.pending.drop(device_id=dev)

    def _on_peer_up(self, peer: str) -> None:
        ctx = self._ctx
        rec = ctx.peers.get(peer)
        if rec is None:
            ctx.counters["peer_up_foreign"] += 1
            return
        if rec.up:
            return
        rec.up = True
        if not ctx.mesh_peer(peer) and not self._restore.active:
            return  # presence noted (for pushes); nothing is sent to a non-neighbour unasked
        self._credentials.on_peer_up(peer)
        self._summaries.reset()
        own = ctx.epoch_wires(self.device_id)
        if own:
            ctx.send(peer, wire.Epochs(self.device_id, own[-wire.MAX_EPOCH_RECORDS :]))
        if rec.muted_until is None and (self._restore.active or self._summaries.greets(peer)):
            self._summaries.send_summary(peer, reply=True)

    def can_probe(self, peer: str) -> bool:
        """Whether a ``Probe`` of ``peer`` is sent: a member of a shared domain, not muted."""
        rec = self._ctx.peers.get(peer)
        return rec is not None and rec.muted_until is None

    def _on_probe(self, peer: str) -> None:
        """A SUMMARY with reply = 1 listing only the own head (small; any live peer answers,
        with what this node may lack): the runtime's question to a peer in doubt."""
        ctx = self._ctx
        if not self.can_probe(peer):
            ctx.counters["probes_skipped"] += 1
            return
        ctx.counters["probes"] += 1
        self._summaries.send_summary(peer, reply=True, only=frozenset((self.device_id,)))

    def _on_peer_down(self, peer: str) -> None:
        ctx = self._ctx
        rec = ctx.peers.get(peer)
        if rec is None:
            return
        rec.up = False
        ctx.counters["requests_cancelled"] += ctx.pending.drop(peer_id=peer)
        self._restore.step()

    # --- messages -----------------------------------------------------------------------------

    def _on_message(self, ev: MessageReceived, *, retry: bool = True) -> None:
        ctx = self._ctx
        claimed = ev.peer_id
        if claimed is not None:
            # A hint only (the transport does not prove it), used to drop cheaply what would be
            # dropped anyway: a muted peer's messages or an outsider's.
            known = ctx.peers.get(claimed)
            if known is None:
                ctx.counters["dropped_foreign"] += 1
                return
            if known.muted_until is not None:
                known.dropped_muted += 1
                ctx.counters["dropped_muted"] += 1
                return
        opened, verdict = auth.open_envelope(
            claimed,
            ev.payload,
            wire.decode,
            ctx.trust,
            ctx.counters,
            self._blame,
            ctx.charged,
            _SELF_PROVING,
        )
        if opened is None:
            if verdict.unknown and self._on_unknown(verdict.unknown, ev.payload) and retry:
                # The credentials it carried may prove it after all: not counted unattributable
                # unless the second attempt fails too.
                ctx.counters[auth.UNATTRIBUTABLE] -= 1
                ctx.counters[f"unattributable_{verdict.reason}"] -= 1
                self._on_message(ev, retry=False)
            elif verdict.unknown in ctx.tracked and verdict.unknown != self.device_id:
                # a tracked device whose credentials have not arrived yet: judged when they do
                self._awaiting.hold(verdict, ev.payload, ctx.now, ctx.counters)
            return
        peer, msg = opened.peer, opened.msg
        rec = ctx.peers.get(peer)
        if rec is None and peer == self.device_id:  # our own broadcast, echoed by the broker
            ctx.counters["dropped_own"] += 1
            return
        if rec is None and not opened.signed:  # nothing proves the name of a non-member
            ctx.counters["unattributable"] += 1
            ctx.counters["unattributable_unsigned_foreign"] += 1
            return
        if rec is None:
            ctx.counters["dropped_foreign"] += 1
            return
        if opened.signed:
            self._heard[peer] = ctx.now
        if rec.muted_until is not None:
            rec.dropped_muted += 1
            ctx.counters["dropped_muted"] += 1
            return
        rec.messages += 1
        ctx.counters[_received(msg)] += 1
        if not opened.signed:  # a self-proving ANNOUNCE: its headers prove it, or nothing does
            assert isinstance(msg, wire.Announce)  # the only self-proving type
            unproven = ctx.counters.get(auth.UNATTRIBUTABLE, 0)  # no __missing__ call
            try:
                self._headers.on_announce(peer, msg, broadcast=ev.broadcast, signed=False)
            except (DecodeError, VerificationError):
                ctx.counters["unattributable"] += 1
                ctx.counters["unattributable_unsigned_invalid"] += 1
            if ctx.counters.get(auth.UNATTRIBUTABLE, 0) == unproven:  # its headers proved it
                self._heard[peer] = ctx.now
            ctx.flush()
            return
        if isinstance(msg, wire.Request):
            if opened.tag in self._requests:  # a captured request replayed: answered once
                ctx.counters["replayed_request"] += 1
                return
            self._requests.put(opened.tag, True)
        charges = rec.malformed + rec.invalid
        try:
            self._dispatch(peer, msg, broadcast=ev.broadcast)
        except DecodeError:
            ctx.penalize(peer, "malformed")
        except VerificationError:
            ctx.penalize(peer, "invalid")
        if rec.malformed + rec.invalid != charges:
            ctx.charged.put(opened.tag, True)
        ctx.flush()

    def _on_unknown(self, dev: str, payload: bytes) -> bool:
        """A message from ``dev`` whose key is not known: want its credentials. A CERTS message
        carrying them is learned from (their fleet signatures prove them, not the unproven
        sender, who is charged nothing) and greeted back once, so ``dev`` learns us too. Any
        other message earns ``dev`` credit: once the unattributable bytes received in its name
        cover a ``hello`` (and at most once per ``anti_entropy_ms``), it is sent one, so it
        greets back: never more bytes than received. True: its key is known now (retry)."""
        ctx = self._ctx
        if dev not in ctx.tracked or dev == self.device_id:
            return False
        ctx.need_creds.add(dev)
        if payload[2] == wire.CERTS:
            known = ctx.trust.keys(dev) is not None
            try:
                msg = wire.decode(auth.body_of(payload))
            except DecodeError:
                msg = None
            if isinstance(msg, wire.Certs):
                version = ctx.trust.version
                ctx.counters["credentials_unattributed"] += 1
                self._credentials.learn_all(None, msg.certificates[:1], msg.rotations, ())
                if ctx.trust.version != version:
                    if not known and ctx.trust.keys(dev) is not None:
                        self._credentials.hello(dev)
                    return True
        credit = self._ask_credit.get(dev, 0) + len(payload)
        last = self._asked.get(dev)
        if last is None or ctx.now - last >= ctx.config.anti_entropy_ms:
            cost = self._credentials.hello_size()
            if credit >= cost:
                self._credentials.hello(dev)
                self._asked[dev] = ctx.now
                credit -= cost
        self._ask_credit[dev] = credit
        return False

    def _blame(self, peer: str, offence: str) -> None:
        self._ctx.penalize(peer, "malformed")

    def _dispatch(self, peer: str, msg: wire.Message, *, broadcast: bool) -> None:
        """``broadcast``: the message came on a domain topic (every member has the same copy)."""
        if isinstance(msg, wire.Announce):
            self._headers.on_announce(peer, msg, broadcast=broadcast)
        elif isinstance(msg, wire.Summary):
            self._on_summary(peer, msg)
        elif isinstance(msg, wire.Request):
            self._pulls.on_request(peer, msg)
        elif isinstance(msg, wire.Response):
            self._on_response(peer, msg)
        elif isinstance(msg, wire.EvidenceMessage):
            self._evidence.on_message(peer, msg.evidence)
        elif isinstance(msg, wire.Epochs):
            for record in msg.records:
                if not self._epochs.learn(record, peer, broadcast=broadcast):
                    break
        elif isinstance(msg, wire.WitnessRequest):
            self._witness.on_request(peer, msg)
        elif isinstance(msg, wire.Cosigned):
            self._witness.on_cosigned(peer, msg)
        else:
            self._credentials.learn_all(peer, msg.certificates, msg.rotations, msg.revocations)
            if msg.certificates:
                self._credentials.on_hello(peer)

    def _on_summary(self, peer: str, msg: wire.Summary) -> None:
        restoring = self._restore.active
        self._summaries.on_summary(peer, msg, skip=self.device_id if restoring else None)
        if restoring:
            self._restore.on_summary(peer, msg.entries)
        if msg.reply:
            self._summaries.send_summary(peer, reply=False, answering=msg.entries)

    def _on_response(self, peer: str, msg: wire.Response) -> None:
        answered = self._pulls.answered(peer, msg)
        if answered is None:
            return
        req, headers = answered
        restore = self._restore
        if req.device_id == self.device_id and restore.state is not None:
            if restore.state.phase is Phase.FETCH:
                restore.on_response(peer, req, headers, msg.blocks)
            return  # the own chain is only ever restored, never pulled
        self._headers.on_pulled(peer, req, headers, msg.blocks)


_RECEIVED: dict[type, str] = {}


def _received(msg: wire.Message) -> str:
    """The counter of a received message's type (``received_announce``, ...), made once."""
    name = _RECEIVED.get(type(msg))
    if name is None:
        name = _RECEIVED[type(msg)] = f"received_{wire.NAMES[_type_of(msg)].lower()}"
    return name


def _type_of(msg: wire.Message) -> int:
    if isinstance(msg, wire.Announce):
        return wire.ANNOUNCE
    if isinstance(msg, wire.Summary):
        return wire.SUMMARY
    if isinstance(msg, wire.Request):
        return wire.REQUEST
    if isinstance(msg, wire.Response):
        return wire.RESPONSE
    if isinstance(msg, wire.EvidenceMessage):
        return wire.EVIDENCE
    if isinstance(msg, wire.Epochs):
        return wire.EPOCHS
    if isinstance(msg, wire.WitnessRequest):
        return wire.WITNESS
    if isinstance(msg, wire.Cosigned):
        return wire.COSIGNED
    return wire.CERTS
