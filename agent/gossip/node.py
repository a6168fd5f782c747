"""The gossip core: a synchronous, I/O-free state machine for one device (h11/aioquic style).

``GossipNode.handle(input, now_ms)`` and ``handle_timer(now_ms)`` return the actions the runtime
must perform; ``next_deadline()`` says when to call ``handle_timer`` next. Randomness comes from
the injected ``random.Random`` only, and every choice is made over a sorted list, so a seed
reproduces a run. Nothing here touches sockets, files, clocks or the global random.

Behaviour (docs/PROTOCOL.md (section 12) has the full description):

- **Push**: an own block's header is broadcast once on the device's domain topics (the fewest
  that reach every sharing peer) and never forwarded from there; with ``push="fanout"`` it goes to
  ``fanout`` random peers instead. A header received in an ANNOUNCE to the inbox that verifies
  and extends the held chain is stored and forwarded once to ``fanout`` peers (duplicates are
  dropped by header hash, in a bounded LRU).
- **Anti-entropy**: every ``anti_entropy_ms`` (jittered) a SUMMARY goes to one random peer; both
  sides compare and pull what they miss with REQUESTs of at most ``max_range`` heights that start
  at the held head (so a fork below it shows up at once), with bodies where ``want_bodies`` says
  so. Requests have ids and deadlines; an unanswered one is a promise not kept.
- **Verification** before anything is stored or forwarded: the header's signature with the key
  ``DeviceKeys`` names for its height (certificate -> fleet root, rotations, revocations), its link
  to the held head (height, prev_hash, epoch) and its ``history_root`` against the history tree's
  compact range; bodies with ``ledger.verify.verify_block`` against the accepted header's hash.
- **Forks**: a validly signed header at a held height with another hash becomes fork evidence,
  is stored, broadcast to the device's domains, and the device is excluded from then on; EVIDENCE
  messages are verified offline-style and have the same effect.
- **Peers**: per-peer scores mute peers that send malformed or invalid messages or break
  promises. Malformed input never raises out of ``handle``.
- **Epochs** (ledger/epoch.py): signed epoch records travel in EPOCHS messages (on PeerUp for
  the own device's, before a RESPONSE whose range crosses one, to a peer whose summary or header
  shows it holds a superseded head). A verified record is stored and, where this node holds the
  device's superseded headers, the runtime rewinds its stored chain to the record's last header
  (``RewindChain`` -> ``ChainRewound``); headers of the new epoch then link through the record.
- **Restore** (restore.py): a wiped device learns its published head from peers' summaries,
  fetches and verifies its chain, and signs nothing until ``RestoreFinished``.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Literal

from agent.gossip import wire
from agent.gossip.actions import (
    Action,
    BlockAccepted,
    Broadcast,
    CommitRestored,
    CredentialKind,
    DeviceRevoked,
    EpochAccepted,
    ForkDetected,
    HeadersAccepted,
    PublishEvidence,
    RestoreFailed,
    RestoreFinished,
    RestoreProgressed,
    RewindChain,
    Send,
    ServePull,
    SignEpoch,
    StoreBlock,
    StoreCredential,
    StoreEpoch,
    StoreEvidence,
    StoreHeaders,
)
from agent.gossip.chains import ChainState
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    ChainRewound,
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
    PullLoaded,
    RestoreRequested,
    RevocationKnown,
    RotationKnown,
)
from agent.gossip.peers import Offence, Peers, PeerStats
from agent.gossip.requests import Pending, Serve, Table
from agent.gossip.restore import Claim, Phase, Restore
from agent.gossip.tuning import GossipConfig
from agent.protocol.envelope import open_envelope
from agent.protocol.lru import Lru
from agent.protocol.trust import Outcome, TrustStore
from ledger.block import Block, SignedHeader, decode_block, decode_header
from ledger.certs import FleetRoots
from ledger.epoch import SignedEpoch, decode_epoch
from ledger.errors import ChainError, DecodeError, RevokedError, UsageError, VerificationError
from ledger.evidence import ForkEvidence, make_evidence, verify_evidence
from ledger.identity import is_device_id
from ledger.verify import verify_block, verify_link

GREETING_TAG = b"edgefleet/greeting/v1\x00"


def greeting_score(peer: str, device: str) -> bytes:
    """``device``'s score for greeting ``peer`` when it comes up: the lowest scores greet."""
    return hashlib.sha256(GREETING_TAG + peer.encode() + b"\x00" + device.encode()).digest()


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


EvidenceOrigin = Literal["detected", "message", "topic"]

_PULL = frozenset({Verdict.GAP, Verdict.DIVERGED, Verdict.UNKNOWN_DEVICE, Verdict.UNKNOWN_KEY})


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
    ) -> None:
        """``trust``: the device's one trust store, shared with its replication core (a
        credential is then verified once per device); None: a store of this node's own."""
        if not is_device_id(device_id):
            raise UsageError(
                f"gossip node: expected a device id (ef + 24 base32), found {device_id!r}"
            )
        self.device_id = device_id
        self.config = cfg = config if config is not None else GossipConfig()
        self.counters: Counter[str] = Counter()
        self._rng = rng
        self._roots = roots
        self._now = now_ms
        self._peers = Peers(cfg)
        self._domains: dict[str, frozenset[str]] = {}
        for name, members in domains.items():
            self._set_domain(name, frozenset(members))
        self._tracked: frozenset[str] = frozenset()
        self._recompute_members()
        self._creds = (
            trust
            if trust is not None
            else TrustStore(
                roots,
                max_devices=cfg.max_devices,
                max_pending=cfg.max_pending_rotations,
                max_revocations=cfg.max_revocations,
            )
        )
        self._chains: dict[str, ChainState] = {}
        self._forked: dict[str, bytes] = {}  # device -> evidence wire
        self._need_creds: set[str] = set()  # devices whose key for some height is unknown
        self._seen_headers: Lru[bytes, bool] = Lru(cfg.seen_headers)
        self._seen_other: Lru[bytes, bool] = Lru(cfg.seen_other)
        self._evidence_sent: Lru[tuple[str, str], int] = Lru(cfg.seen_other)
        self._pending: Table[Pending] = Table(cfg.max_inflight, cfg.max_inflight_per_peer)
        self._serves: Table[Serve] = Table(cfg.max_serves, cfg.max_serves_per_peer)
        self._next_rid = rng.getrandbits(32)
        self._next_round = now_ms + rng.randint(0, cfg.anti_entropy_ms)
        self._out: list[Action] = []
        self._batch: dict[str, tuple[str, list[SignedHeader]]] = {}
        self._via_broadcast = False  # the message being handled came on a domain topic
        self._epochs: dict[str, dict[int, SignedEpoch]] = {}  # device -> new_epoch -> record
        self._rewinding: dict[str, tuple[str | None, SignedEpoch]] = {}  # device -> (peer, rec)
        self._restore: Restore | None = None

    # --- public API ---------------------------------------------------------------------------

    def handle(self, event: Input, now_ms: int) -> list[Action]:
        """Feed one input; return what to do. Remote bytes never make this raise."""
        self._now = now_ms
        if isinstance(event, MessageReceived):
            self._on_message(event)
        elif isinstance(event, OwnBlockSealed):
            self._on_own_block(event.block)
        elif isinstance(event, ChainLoaded):
            self._on_chain_loaded(event)
        elif isinstance(event, CertificateKnown):
            self._learn("certificate", event.wire, None)
        elif isinstance(event, RotationKnown):
            self._learn("rotation", event.wire, None)
        elif isinstance(event, RevocationKnown):
            self._learn("revocation", event.wire, None)
        elif isinstance(event, EvidenceKnown):
            self._on_evidence_known(event.wire)
        elif isinstance(event, EvidenceReceived):
            self._on_evidence_received(event.evidence)
        elif isinstance(event, PeerUp):
            self._on_peer_up(event.peer_id)
        elif isinstance(event, PeerDown):
            self._on_peer_down(event.peer_id)
        elif isinstance(event, DomainChanged):
            self._on_domain_changed(event)
        elif isinstance(event, PullLoaded):
            self._on_pull_loaded(event)
        elif isinstance(event, RestoreRequested):
            self._on_restore_requested()
        elif isinstance(event, EpochKnown):
            self._learn_epoch(event.wire, None)
        elif isinstance(event, EpochSigned):
            self._on_epoch_signed(event.wire)
        elif isinstance(event, ChainRewound):
            self._on_chain_rewound(event)
        else:
            raise UsageError(f"gossip node: unknown input {type(event).__name__}")
        return self._take()

    def handle_timer(self, now_ms: int) -> list[Action]:
        """Run whatever is due at ``now_ms``: mute expiries, request deadlines, the round."""
        self._now = now_ms
        self._out.extend(self._peers.expire(now_ms))
        for req in self._pending.expire(now_ms):
            self.counters["promises_broken"] += 1
            self._penalize(req.peer_id, "promise")
        self.counters["serves_expired"] += len(self._serves.expire(now_ms))
        self._restore_step()
        if now_ms >= self._next_round:
            cfg = self.config
            self._next_round = (
                now_ms + cfg.anti_entropy_ms + self._rng.randint(-cfg.jitter_ms, cfg.jitter_ms)
            )
            self._round()
        return self._take()

    def next_deadline(self) -> int | None:
        """When ``handle_timer`` must run next (there is always an anti-entropy round)."""
        times = [
            self._next_round,
            self._pending.next_deadline(),
            self._serves.next_deadline(),
            self._peers.next_expiry(),
            self._restore_deadline(),
        ]
        return min(t for t in times if t is not None)

    def head(self, device_id: str) -> SignedHeader | None:
        chain = self._chains.get(device_id)
        return None if chain is None else chain.head

    def heights(self) -> dict[str, int]:
        return {
            d: c.head.header.height for d, c in sorted(self._chains.items()) if c.head is not None
        }

    def forked(self) -> frozenset[str]:
        return frozenset(self._forked)

    def missing_bodies(self, device_id: str) -> tuple[int, ...]:
        chain = self._chains.get(device_id)
        return () if chain is None else tuple(sorted(chain.missing))

    def peer_stats(self, peer_id: str) -> PeerStats | None:
        return self._peers.stats(peer_id, self._now)

    def peers_available(self) -> list[str]:
        return self._peers.available()

    @property
    def restoring(self) -> bool:
        """A restore was requested and has not finished: the device must not sign."""
        return self._restore is not None and self._restore.phase is not Phase.DONE

    def restore_state(self) -> Restore | None:
        return self._restore

    def epochs(self, device_id: str) -> tuple[bytes, ...]:
        """Verified epoch records of ``device_id``, by epoch."""
        recs = self._epochs.get(device_id, {})
        return tuple(recs[e].wire for e in sorted(recs))

    # --- membership ---------------------------------------------------------------------------

    def _set_domain(self, name: str, members: frozenset[str]) -> None:
        bad = sorted(m for m in members if not isinstance(m, str) or not is_device_id(m))
        if bad:
            raise UsageError(f"gossip domain {name!r}: expected device ids, found {bad[:3]}")
        if self.device_id not in members:
            raise UsageError(
                f"gossip domain {name!r}: must list this device "
                f"({self.device_id}) among its members"
            )
        self._domains[name] = members

    def _recompute_members(self) -> None:
        tracked: set[str] = {self.device_id}
        for members in self._domains.values():
            tracked |= members
        self._tracked = frozenset(tracked)
        self._cover: tuple[str, ...] | None = None
        self._greets_peer: dict[str, bool] = {}
        self._summary_devices: dict[str, tuple[str, ...]] = {}
        self._peers.set_members(self._tracked - {self.device_id})

    def _sharing(self, device_id: str) -> set[str]:
        """Peers that share a domain with ``device_id`` (and with us)."""
        out: set[str] = set()
        for members in self._domains.values():
            if device_id in members:
                out |= members
        out.discard(self.device_id)
        return out

    def _domains_of(self, device_id: str) -> list[str]:
        return sorted(d for d, m in self._domains.items() if device_id in m)

    def _on_domain_changed(self, ev: DomainChanged) -> None:
        if self.device_id in ev.members:
            self._set_domain(ev.domain, frozenset(ev.members))
        else:
            self._domains.pop(ev.domain, None)
        self._recompute_members()
        for dev in [d for d in self._chains if d not in self._tracked]:
            del self._chains[dev]
            self._pending.drop(device_id=dev)

    def _on_peer_up(self, peer: str) -> None:
        rec = self._peers.get(peer)
        if rec is None:
            self.counters["peer_up_foreign"] += 1
            return
        if rec.up:
            return
        rec.up = True
        revocations = self._creds.revocations()
        for i in range(0, len(revocations), wire.MAX_CERTS_ITEMS):
            chunk = tuple(revocations[i : i + wire.MAX_CERTS_ITEMS])
            self._send(peer, wire.Certs(self.device_id, (), (), chunk))
        own = self.epochs(self.device_id)
        if own:
            self._send(peer, wire.Epochs(self.device_id, own[-wire.MAX_EPOCH_RECORDS :]))
        restoring = self._restore is not None and self._restore.phase is not Phase.DONE
        if rec.muted_until is None and (restoring or self._greets(peer)):
            self._send_summary(peer, reply=True)

    def _greets(self, peer: str) -> bool:
        """Whether this node is one of the ``greeters`` devices that send a peer that comes up
        a SUMMARY at once (docs/PROTOCOL.md section 12.4): those of the devices sharing a
        domain with it (as this node sees them) with the lowest greeting scores. One summary
        exchange catches a returning peer up; a whole fleet coming up together (a start, a
        broker restart) would otherwise exchange one per pair of domain peers at once."""
        held = self._greets_peer.get(peer)
        if held is None:
            mine = greeting_score(peer, self.device_id)
            lower = sum(
                1 for m in self._sharing(peer) if m != peer and greeting_score(peer, m) < mine
            )
            held = self._greets_peer[peer] = lower < self.config.greeters
        return held

    def _on_peer_down(self, peer: str) -> None:
        rec = self._peers.get(peer)
        if rec is None:
            return
        rec.up = False
        self.counters["requests_cancelled"] += self._pending.drop(peer_id=peer)
        self._restore_step()

    # --- messages -----------------------------------------------------------------------------

    def _on_message(self, ev: MessageReceived) -> None:
        claimed = ev.peer_id
        if claimed is not None:
            known = self._peers.get(claimed)
            if known is None:
                self.counters["dropped_foreign"] += 1
                return
            if known.muted_until is not None:  # dropped before decoding: muting is cheap
                known.dropped_muted += 1
                self.counters["dropped_muted"] += 1
                return
        opened = open_envelope(claimed, ev.payload, wire.decode, self.counters, self._blame)
        if opened is None:
            return
        peer, msg = opened
        rec = self._peers.get(peer)
        if rec is None:
            self.counters["dropped_own" if peer == self.device_id else "dropped_foreign"] += 1
            return
        if rec.muted_until is not None:
            rec.dropped_muted += 1
            self.counters["dropped_muted"] += 1
            return
        rec.messages += 1
        self.counters[f"received_{wire.NAMES[_type_of(msg)].lower()}"] += 1
        self._via_broadcast = ev.broadcast
        try:
            self._dispatch(peer, msg)
        except DecodeError:
            self._penalize(peer, "malformed")
        except VerificationError:
            self._penalize(peer, "invalid")
        finally:
            self._via_broadcast = False
        self._flush()

    def _blame(self, peer: str, offence: str) -> None:
        if offence == "sender_mismatch":
            self.counters["sender_mismatch"] += 1
        self._penalize(peer, "malformed")

    def _dispatch(self, peer: str, msg: wire.Message) -> None:
        if isinstance(msg, wire.Announce):
            self._on_announce(peer, msg)
        elif isinstance(msg, wire.Summary):
            self._on_summary(peer, msg)
        elif isinstance(msg, wire.Request):
            self._on_request(peer, msg)
        elif isinstance(msg, wire.Response):
            self._on_response(peer, msg)
        elif isinstance(msg, wire.EvidenceMessage):
            self._on_evidence(peer, msg.evidence)
        elif isinstance(msg, wire.Epochs):
            for record in msg.records:
                if not self._learn_epoch(record, peer):
                    break
        else:
            self._on_certs(peer, msg)

    def _on_announce(self, peer: str, msg: wire.Announce) -> None:
        headers = [decode_header(w) for w in msg.headers]
        fresh: dict[str, list[SignedHeader]] = {}
        for sh in headers:
            dev = sh.header.device_id
            verdict = self._offer(sh, peer)
            if verdict is Verdict.ACCEPTED:
                fresh.setdefault(dev, []).append(sh)
            elif verdict is Verdict.INVALID:
                self._penalize(peer, "invalid")
                break
            elif verdict in _PULL:
                self._pull(peer, dev, sh.header.height)
        self._flush()
        for dev, shs in fresh.items():
            if not self._via_broadcast:  # a domain broadcast already reached every member
                self._push(dev, shs, exclude={peer, dev})
            chain = self._chains[dev]
            if peer == dev and chain.missing:
                self._pull_bodies(peer, dev, shs[-1].header.height)

    def _on_summary(self, peer: str, msg: wire.Summary) -> None:
        listed: set[str] = set()
        restore = self._restore
        for e in msg.entries:
            dev = e.device_id
            listed.add(dev)
            if dev == self.device_id and restore is not None and restore.phase is not Phase.DONE:
                restore.claim(peer, Claim(e.epoch, e.height, e.head_hash))
                continue
            if dev in self._forked:
                if e.head_hash != wire.FORKED_MARK:
                    self._send_evidence(peer, dev)
                continue
            if e.head_hash == wire.FORKED_MARK or dev not in self._tracked:
                continue  # a forked mark: the peer sends its evidence
            self._compare(peer, dev, e)
        for dev in sorted(self._forked):
            if dev not in listed and peer in self._sharing(dev):
                self._send_evidence(peer, dev)
        if restore is not None and restore.phase is not Phase.DONE:
            if self.device_id not in listed:
                restore.claim(peer, None)
            self._restore_step()
        if msg.reply:
            self._send_summary(peer, reply=False, answering=msg.entries)

    def _compare(self, peer: str, dev: str, e: wire.SummaryEntry) -> None:
        if self._superseded(dev, e.epoch, e.height):
            self._send_epochs(peer, dev)  # the peer holds a head an epoch record closed
            return
        chain = self._chains.get(dev)
        head = None if chain is None else chain.head
        if chain is None or head is None:
            self._pull(peer, dev, e.height)
            return
        ours = head.header.height
        if e.height > ours or (e.height == ours and e.head_hash != head.hash):
            self._pull(peer, dev, e.height)
        elif (
            e.height < ours
            and (held := chain.at(e.height)) is not None
            and held.hash != e.head_hash
        ):
            self._pull(peer, dev, e.height)  # a probe: the peer's head differs from ours there
        elif dev in self._need_creds:
            self._pull(peer, dev, min(e.height, ours))
        elif chain.missing:
            self._pull_bodies(peer, dev, e.height)

    def _on_request(self, peer: str, msg: wire.Request) -> None:
        dev = msg.device_id
        if dev in self._forked:
            self._send_evidence(peer, dev)
        if self._serves.get(peer, msg.request_id) is not None:
            self.counters["request_duplicate"] += 1  # being loaded already
            return
        certs, rots, revs = self._credentials_for(dev, msg.flags)
        recs = self._epochs.get(dev)
        if recs and msg.to_height > min(se.record.last_height for se in recs.values()):
            self._send(
                peer, wire.Epochs(self.device_id, self.epochs(dev)[-wire.MAX_EPOCH_RECORDS :])
            )
        chain = self._chains.get(dev)
        head = None if chain is None else chain.head
        if chain is None or head is None or msg.from_height > head.header.height:
            self._respond(peer, msg.request_id, dev, (certs, rots, revs), (), ())
            return
        hi = min(msg.to_height, head.header.height)
        if not msg.bodies and msg.from_height >= chain.base:
            headers = tuple(sh.wire for sh in chain.between(msg.from_height, hi))
            self.counters["served_from_memory"] += 1
            self._respond(peer, msg.request_id, dev, (certs, rots, revs), headers, ())
            return
        if not self._serves.room_for(peer):
            self.counters["serve_refused"] += 1
            return
        self._serves.add(
            Serve(
                peer,
                msg.request_id,
                dev,
                msg.from_height,
                hi,
                msg.flags,
                self._now + self.config.serve_timeout_ms,
            )
        )
        budget = wire.response_budget(
            [bytes(wire.HEADER_WIRE_MAX)] * (hi - msg.from_height + 1), certs, rots, revs
        )
        self._out.append(
            ServePull(
                peer,
                msg.request_id,
                dev,
                msg.from_height,
                hi,
                msg.bodies,
                self.config.max_blocks if msg.bodies else 0,
                budget if msg.bodies else 0,
            )
        )

    def _on_pull_loaded(self, ev: PullLoaded) -> None:
        serve = self._serves.pop(ev.peer_id, ev.request_id)
        if serve is None:
            self.counters["pull_loaded_unknown"] += 1
            return
        creds = self._credentials_for(serve.device_id, serve.flags)
        headers = ev.headers[: serve.to_height - serve.from_height + 1]
        blocks: tuple[bytes, ...] = ()
        if serve.flags & wire.FLAG_BODIES:
            blocks = wire.fit_blocks(
                ev.blocks, wire.response_budget(headers, *creds), self.config.max_blocks
            )
        self._respond(serve.peer_id, serve.request_id, serve.device_id, creds, headers, blocks)

    def _credentials_for(
        self, dev: str, flags: int
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]:
        """What a RESPONSE about ``dev`` carries: revocations always (so they spread with every
        pull of a revoked device), the certificate and rotations when asked for."""
        certs, rots, revs = self._creds.bundle(dev)
        if flags & wire.FLAG_CREDENTIALS:
            return certs, rots, revs
        return (), (), revs

    def _respond(
        self,
        peer: str,
        rid: int,
        dev: str,
        creds: tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]],
        headers: tuple[bytes, ...],
        blocks: tuple[bytes, ...],
    ) -> None:
        certs, rots, revs = creds
        self._send(
            peer,
            wire.Response(
                self.device_id,
                rid,
                dev,
                certs[:1],
                rots[-wire.MAX_RESPONSE_ROTATIONS :],
                revs[: wire.MAX_RESPONSE_REVOCATIONS],
                headers,
                blocks,
            ),
        )

    def _on_response(self, peer: str, msg: wire.Response) -> None:
        req = self._pending.pop(peer, msg.request_id)
        if req is None:
            self.counters["response_unsolicited"] += 1
            return
        dev = req.device_id
        if msg.device_id != dev:
            raise VerificationError("response device", dev, msg.device_id)
        if not self._learn_all(peer, msg.certificates, msg.rotations, msg.revocations):
            return
        headers = [decode_header(w) for w in msg.headers]
        if len(headers) > req.to_height - req.from_height + 1:
            raise VerificationError(
                "response header count", f"<= {req.to_height - req.from_height + 1}", len(headers)
            )
        for i, sh in enumerate(headers):
            h = sh.header
            if h.device_id != dev or h.height != req.from_height + i:
                raise VerificationError(
                    "response header", f"{dev}@{req.from_height + i}", f"{h.device_id}@{h.height}"
                )
        if dev == self.device_id and self._restore is not None:
            if self._restore.phase is Phase.FETCH:
                self._restore_response(peer, req, headers, msg.blocks)
            return
        last = Verdict.ACCEPTED
        for sh in headers:
            last = self._offer(sh, peer)
            if last is Verdict.INVALID:
                self._penalize(peer, "invalid")
                return
            if last not in (Verdict.ACCEPTED, Verdict.DUPLICATE):
                break
        self._flush()
        got_blocks = 0
        for w in msg.blocks:
            if not req.flags & wire.FLAG_BODIES:
                self.counters["block_unrequested"] += 1
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
        chain = self._chains.get(req.device_id)
        head = None if chain is None else chain.head
        if chain is None or head is None:
            return
        full = n_headers == req.to_height - req.from_height + 1
        ours = head.header.height
        if last is Verdict.ACCEPTED and full and req.from_height < ours < req.peer_height:
            self._pull(peer, req.device_id, req.peer_height)
        elif got_blocks and chain.missing:
            self._pull_bodies(peer, req.device_id, req.peer_height)

    def _on_evidence(self, peer: str, evidence: bytes) -> None:
        digest = hashlib.sha256(b"evidence" + evidence).digest()
        if digest in self._seen_other:
            self.counters["evidence_duplicate"] += 1
            return
        ev = verify_evidence(evidence, self._roots)  # DecodeError / VerificationError: caller
        self._seen_other.put(digest, True)
        self._mark_forked(ev, evidence, peer, origin="message")

    def _on_evidence_received(self, evidence: bytes) -> None:
        """Evidence from the evidence topic: verified like any other; nobody to blame."""
        digest = hashlib.sha256(b"evidence" + evidence).digest()
        if digest in self._seen_other:
            self.counters["evidence_duplicate"] += 1
            return
        try:
            ev = verify_evidence(evidence, self._roots)
        except (DecodeError, VerificationError):
            self.counters["evidence_invalid_topic"] += 1
            return
        self._seen_other.put(digest, True)
        self._mark_forked(ev, evidence, None, origin="topic")

    def _on_evidence_known(self, evidence: bytes) -> None:
        try:
            ev = verify_evidence(evidence, self._roots)
        except (DecodeError, VerificationError) as exc:
            raise UsageError(f"stored fork evidence does not verify: {exc}") from None
        self._seen_other.put(hashlib.sha256(b"evidence" + evidence).digest(), True)
        self._forked.setdefault(ev.device_id, evidence)
        self._pending.drop(device_id=ev.device_id)

    def _on_certs(self, peer: str, msg: wire.Certs) -> None:
        self._learn_all(peer, msg.certificates, msg.rotations, msg.revocations)

    def _learn_all(
        self,
        peer: str,
        certs: tuple[bytes, ...],
        rotations: tuple[bytes, ...],
        revocations: tuple[bytes, ...],
    ) -> bool:
        for w in certs:
            if not self._learn("certificate", w, peer):
                return False
        for w in rotations:
            if not self._learn("rotation", w, peer):
                return False
        return all(self._learn("revocation", w, peer) for w in revocations)

    # --- credentials --------------------------------------------------------------------------

    def _learn(self, kind: CredentialKind, credential: bytes, source: str | None) -> bool:
        """Verify and remember one credential. False: it is invalid (the source is penalized)."""
        digest = hashlib.sha256(kind.encode() + credential).digest()
        if digest in self._seen_other:
            return True
        try:
            result = self._creds.learn(kind, credential, self._now)
        except DecodeError as exc:
            if source is None:
                raise UsageError(f"known {kind} does not decode: {exc}") from None
            raise
        self.counters[f"{kind}_{result.outcome.value}"] += 1
        if result.outcome is Outcome.INVALID:
            if source is not None:
                self._penalize(source, "invalid")
            return source is None
        if result.outcome is Outcome.FULL:
            return True
        self._seen_other.put(digest, True)
        dev = result.device_id
        if result.outcome is Outcome.KNOWN:
            return True
        if kind != "rotation" or result.outcome is Outcome.NEW:
            self._need_creds.discard(dev)
        if source is not None:
            self._out.append(StoreCredential(dev, kind, credential))
        if result.revocation is not None:
            rev = result.revocation
            self._out.append(DeviceRevoked(dev, rev.key_id, rev.from_height))
        if kind == "certificate":
            return True
        rots = (credential,) if kind == "rotation" else ()
        revs = (credential,) if kind == "revocation" else ()
        message = wire.encode(wire.Certs(self.device_id, (), rots, revs))
        if kind == "revocation" and source is None:
            # A revocation enters the fleet here (an operator, or our store after a restart):
            # tell every member of the device's domains at once; they forward it once.
            for domain in self._domains_of(dev):
                self._out.append(Broadcast(domain, message))
            return True
        for p in self._fanout(dev, {source} if source is not None else set()):
            self._out.append(Send(p, message))
        return True

    # --- headers ------------------------------------------------------------------------------

    def _offer(self, sh: SignedHeader, peer: str) -> Verdict:
        """Verify one header against what is held; accept it when it extends the head."""
        verdict = self._judge(sh, peer)
        self.counters[f"header_{verdict.value}"] += 1
        return verdict

    def _judge(self, sh: SignedHeader, peer: str) -> Verdict:
        h = sh.header
        dev = h.device_id
        if dev not in self._tracked:
            return Verdict.UNTRACKED
        if dev in self._forked:
            return Verdict.FORKED
        if sh.hash in self._seen_headers:
            return Verdict.DUPLICATE
        if dev in self._rewinding:
            return Verdict.REWINDING
        keys = self._creds.keys(dev)
        if keys is None:
            return Verdict.UNKNOWN_DEVICE
        if self._superseded(dev, h.epoch, h.height):
            self._send_epochs(peer, dev)
            return Verdict.SUPERSEDED
        chain = self._chain(dev)
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
            self._fork(held, sh, peer)
            return Verdict.FORK
        if dev == self.device_id:
            return Verdict.OWN
        if h.height != (0 if head is None else head.header.height + 1):
            return Verdict.GAP
        bad = self._check_signature(sh)
        if bad is not None:
            return bad
        try:
            verify_link(head, sh, self._epochs.get(dev, {}))
        except ChainError:
            return Verdict.DIVERGED
        if h.history_root != chain.history.root():
            return Verdict.INVALID
        chain.append(sh)
        self._seen_headers.put(sh.hash, True)
        batch = self._batch.setdefault(dev, (peer, []))
        batch[1].append(sh)
        if self.config.want_bodies(dev, h.height):
            chain.want_body(h.height, sh.hash)
        return Verdict.ACCEPTED

    def _check_signature(self, sh: SignedHeader) -> Verdict | None:
        h = sh.header
        keys = self._creds.keys(h.device_id)
        if keys is None:
            return Verdict.UNKNOWN_DEVICE
        try:
            key = keys.key_for(h.key_id, h.height)
        except RevokedError:
            return Verdict.REVOKED
        except VerificationError:
            self._need_creds.add(h.device_id)
            return Verdict.UNKNOWN_KEY
        try:
            sh.verify(key, memo=True)
        except VerificationError:
            return Verdict.INVALID
        return None

    def _offer_block(self, peer: str, block: Block, block_wire: bytes) -> int:
        """Verify and store one wanted body: 1 stored, 0 not wanted or not provable, -1 invalid
        (the peer was penalized)."""
        sh = block.header
        dev, height = sh.header.device_id, sh.header.height
        chain = self._chains.get(dev)
        expected = None if chain is None else chain.missing.get(height)
        if chain is None or expected is None:
            self.counters["block_not_wanted"] += 1
            return 0
        if sh.hash != expected:
            verdict = self._offer(sh, peer)  # a different header there: maybe a fork
            if verdict is Verdict.INVALID:
                self._penalize(peer, "invalid")
                return -1
            return 0
        keys = self._creds.keys(dev)
        if keys is None:
            return 0
        try:
            verify_block(block, keys.key_for(sh.header.key_id, height))
        except RevokedError:
            self.counters["block_revoked"] += 1
            return 0
        except VerificationError:
            self.counters["block_invalid"] += 1
            self._penalize(peer, "invalid")
            return -1
        del chain.missing[height]
        self.counters["block_accepted"] += 1
        self._out.append(StoreBlock(dev, height, block_wire))
        self._out.append(BlockAccepted(dev, height, peer))
        return 1

    def _chain(self, dev: str) -> ChainState:
        chain = self._chains.get(dev)
        if chain is None:
            chain = self._chains[dev] = ChainState(
                self.config.window, self.config.max_missing_bodies
            )
        return chain

    def _flush(self) -> None:
        for dev, (peer, shs) in self._batch.items():
            self._out.append(StoreHeaders(dev, tuple(sh.wire for sh in shs)))
            self._out.append(
                HeadersAccepted(
                    dev, shs[0].header.height, shs[-1].header.height, shs[-1].hash, peer
                )
            )
        self._batch.clear()

    def _on_own_block(self, block: Block) -> None:
        sh = block.header
        h = sh.header
        if h.device_id != self.device_id:
            raise UsageError(f"own block: expected device {self.device_id}, found {h.device_id}")
        chain = self._chain(self.device_id)
        head = chain.head
        if head is not None and h.height <= head.header.height:
            held = chain.at(h.height)
            if held is not None and held.hash == sh.hash:
                return
            raise UsageError(
                f"own block at height {h.height} does not extend the head at {head.header.height}"
            )
        try:
            verify_link(head, sh, self._epochs.get(self.device_id, {}))
        except ChainError as exc:
            raise UsageError(f"own block does not extend the held head: {exc}") from None
        if h.history_root != chain.history.root():
            raise UsageError(
                f"own block at height {h.height}: history_root does not match the held chain"
            )
        chain.append(sh)
        self._seen_headers.put(sh.hash, True)
        if self.config.push == "broadcast":
            self._broadcast_own(sh)
        else:
            self._push(self.device_id, [sh], exclude=set())

    def _on_chain_loaded(self, ev: ChainLoaded) -> None:
        dev = ev.device_id
        if dev not in self._tracked:
            self.counters["chain_loaded_untracked"] += 1
            return
        held = self._chains.get(dev)
        if held is not None and held.head is not None:
            raise UsageError(
                f"chain of {dev} is already loaded (head at {held.head.header.height})"
            )
        self._chains[dev] = self._build_chain(dev, ev.headers, set(ev.missing_bodies))
        for se in list(self._epochs.get(dev, {}).values()):
            self._apply_epoch(dev, se, None)  # a rewind that a stop interrupted

    def _build_chain(
        self, dev: str, headers: tuple[bytes, ...], wanted: set[int] | dict[int, bytes]
    ) -> ChainState:
        """A chain state from stored headers (trusted, but their links are checked)."""
        chain = ChainState(self.config.window, self.config.max_missing_bodies)
        epochs = self._epochs.get(dev, {})
        prev: SignedHeader | None = None
        for w in headers:
            try:
                sh = decode_header(w)
                if sh.header.device_id != dev:
                    raise ChainError("stored header device", dev, sh.header.device_id)
                verify_link(prev, sh, epochs)
                if sh.header.history_root != chain.history.root():
                    raise ChainError(
                        f"stored history_root at height {sh.header.height}",
                        chain.history.root(),
                        sh.header.history_root,
                    )
            except (DecodeError, ChainError) as exc:
                raise UsageError(f"stored chain of {dev} is not a chain: {exc}") from None
            chain.append(sh)
            if sh.header.height in wanted:
                chain.want_body(sh.header.height, sh.hash)
            prev = sh
        return chain

    # --- pulling ------------------------------------------------------------------------------

    def _pull(self, peer: str, dev: str, their_height: int) -> None:
        """Ask ``peer`` for ``dev``'s headers from our head (or ``their_height`` if lower)."""
        if dev in self._forked or dev not in self._tracked:
            return
        if not self._can_request(peer, dev):
            return
        chain = self._chains.get(dev)
        head = None if chain is None else chain.head
        lo = 0 if head is None else min(head.header.height, their_height)
        hi = min(their_height, lo + self.config.max_range - 1)
        if dev == self.device_id:
            hi = lo  # only ever a probe of our own chain
        flags = 0
        if self._creds.keys(dev) is None or dev in self._need_creds:
            flags |= wire.FLAG_CREDENTIALS
        if dev != self.device_id and self._wants_body(chain, dev, lo, hi):
            flags |= wire.FLAG_BODIES
        self._request(peer, dev, lo, hi, flags, their_height)

    def _pull_bodies(self, peer: str, dev: str, their_height: int) -> None:
        chain = self._chains.get(dev)
        head = None if chain is None else chain.head
        if chain is None or head is None or dev in self._forked:
            return
        run = chain.missing_run(min(their_height, head.header.height), self.config.max_blocks)
        if run is None or not self._can_request(peer, dev):
            return
        self._request(peer, dev, run[0], run[1], wire.FLAG_BODIES, their_height)

    def _wants_body(self, chain: ChainState | None, dev: str, lo: int, hi: int) -> bool:
        if chain is not None and any(lo <= h <= hi for h in chain.missing):
            return True
        start = lo if chain is None or chain.head is None else chain.head.header.height + 1
        return any(self.config.want_bodies(dev, h) for h in range(start, hi + 1))

    def _can_request(self, peer: str, dev: str) -> bool:
        if self._peers.muted(peer):
            return False
        cfg = self.config
        recent = self._now - cfg.hedge_ms + cfg.request_timeout_ms
        if self._pending.busy(dev, peer, recent):
            self.counters["pull_skipped_inflight"] += 1
            return False
        if not self._pending.room_for(peer):
            self.counters["pull_skipped_full"] += 1
            return False
        return True

    def _request(self, peer: str, dev: str, lo: int, hi: int, flags: int, their_height: int) -> int:
        rid = self._next_rid
        self._next_rid = (rid + 1) & wire.MAX_REQUEST_ID
        self._pending.add(
            Pending(
                peer,
                rid,
                dev,
                lo,
                hi,
                flags,
                self._now + self.config.request_timeout_ms,
                their_height,
            )
        )
        self.counters["requests_sent"] += 1
        self._send(peer, wire.Request(self.device_id, rid, dev, lo, hi, flags))
        return rid

    # --- pushing, summaries, evidence -----------------------------------------------------------

    def _fanout(self, dev: str, exclude: set[str]) -> list[str]:
        sharing = self._sharing(dev)
        candidates = [p for p in self._peers.available() if p in sharing and p not in exclude]
        return self._rng.sample(candidates, min(self.config.fanout, len(candidates)))

    def _push(self, dev: str, headers: list[SignedHeader], exclude: set[str]) -> None:
        chosen = self._fanout(dev, exclude)
        if not chosen:
            return
        wires = tuple(sh.wire for sh in headers[-wire.MAX_ANNOUNCE_HEADERS :])
        payload = wire.encode(wire.Announce(self.device_id, wires))
        for p in chosen:
            self._out.append(Send(p, payload))
        self.counters["announces_sent"] += len(chosen)

    def _broadcast_own(self, sh: SignedHeader) -> None:
        """One ANNOUNCE per domain topic, on the fewest domains that reach every sharing peer
        (largest first: a household inside its street needs no message of its own)."""
        domains = self._cover_domains()
        if not domains:
            return
        payload = wire.encode(wire.Announce(self.device_id, (sh.wire,)))
        for domain in domains:
            self._out.append(Broadcast(domain, payload))
        self.counters["announces_broadcast"] += len(domains)

    def _cover_domains(self) -> tuple[str, ...]:
        if self._cover is None:
            covered: set[str] = {self.device_id}
            chosen: list[str] = []
            for name, members in sorted(self._domains.items(), key=lambda d: (-len(d[1]), d[0])):
                if not members <= covered:
                    chosen.append(name)
                    covered |= members
            self._cover = tuple(sorted(chosen))
        return self._cover

    def _round(self) -> None:
        candidates = self._peers.available()
        if not candidates:
            self.counters["rounds_without_peer"] += 1
            return
        self.counters["rounds"] += 1
        self._send_summary(self._rng.choice(candidates), reply=True)

    def _send_summary(
        self,
        peer: str,
        *,
        reply: bool,
        answering: tuple[wire.SummaryEntry, ...] | None = None,
    ) -> None:
        """A SUMMARY of the chains shared with ``peer``. ``answering``: the entries of the peer's
        SUMMARY this one answers; the answer lists only what differs from them (and forked
        marks): what the peer may lack. An entry it already holds would make it compare for
        nothing, and in a quiet fleet nearly every entry is one."""
        devices = self._summary_devices.get(peer)
        if devices is None:
            devices = self._summary_devices[peer] = tuple(
                sorted((self._sharing(peer) | {self.device_id}) & self._tracked)
            )
        theirs = None if answering is None else {e.device_id: e for e in answering}
        entries: list[wire.SummaryEntry] = []
        for dev in devices:
            chain = self._chains.get(dev)
            head = None if chain is None else chain.head
            if dev in self._forked:
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
                self._rng.sample(entries, wire.MAX_SUMMARY_ENTRIES), key=lambda e: e.device_id
            )
        self._send(peer, wire.Summary(self.device_id, reply, tuple(entries)))

    def _send_evidence(self, peer: str, dev: str) -> None:
        last = self._evidence_sent.get((peer, dev))
        if last is not None and self._now - last < self.config.anti_entropy_ms:
            return
        self._evidence_sent.put((peer, dev), self._now)
        self._send(peer, wire.EvidenceMessage(self.device_id, self._forked[dev]))

    def _fork(self, held: SignedHeader, new: SignedHeader, peer: str) -> None:
        dev = held.header.device_id
        certs, rots, _ = self._creds.bundle(dev)
        if not certs:
            self.counters["fork_unprovable"] += 1
            return
        ev = make_evidence(certs[0], rots, held, new)
        evidence = ev.encode()
        try:
            verify_evidence(evidence, self._roots)
        except (DecodeError, VerificationError):
            self.counters["fork_unprovable"] += 1
            return
        self._seen_other.put(hashlib.sha256(b"evidence" + evidence).digest(), True)
        self._mark_forked(ev, evidence, peer, origin="detected")

    def _mark_forked(
        self, ev: ForkEvidence, evidence: bytes, peer: str | None, *, origin: EvidenceOrigin
    ) -> None:
        """Exclude a forked device. Evidence found here is published on the evidence topic
        (retained: every device, including later ones, receives it); evidence from a peer's
        message is forwarded once to ``fanout`` peers; evidence from the topic is not."""
        dev = ev.device_id
        if dev in self._forked:
            self.counters["evidence_for_known_fork"] += 1
            return
        self._forked[dev] = evidence
        self.counters["forks_detected" if origin == "detected" else "forks_learned"] += 1
        self._pending.drop(device_id=dev)
        h = ev.a.header
        self._out.append(StoreEvidence(dev, evidence))
        self._out.append(ForkDetected(dev, h.epoch, h.height, evidence, peer))
        if origin == "detected":
            self._out.append(PublishEvidence(dev, evidence))
        elif origin == "message":
            payload = wire.encode(wire.EvidenceMessage(self.device_id, evidence))
            for p in self._fanout(dev, {peer} if peer is not None else set()):
                self._out.append(Send(p, payload))

    # --- epochs -------------------------------------------------------------------------------

    def _learn_epoch(self, record: bytes, source: str | None) -> bool:
        """Verify and remember one epoch record. False: invalid (the source is penalized)."""
        digest = hashlib.sha256(b"epoch" + record).digest()
        if digest in self._seen_other:
            return True
        try:
            se = decode_epoch(record)
        except DecodeError as exc:
            if source is None:
                raise UsageError(f"known epoch record does not decode: {exc}") from None
            raise
        r = se.record
        dev = r.device_id
        keys = self._creds.keys(dev)
        if dev not in self._tracked or keys is None:
            self.counters["epoch_unknown_device"] += 1
            return True  # cannot check it yet; it comes again with the chain
        try:
            key = keys.key_at(r.first_height)
            keys.key_for(key.key_id, r.first_height)
            se.verify(key)
        except RevokedError:
            self.counters["epoch_revoked"] += 1
            return True
        except VerificationError:
            self.counters["epoch_invalid"] += 1
            if source is not None:
                self._penalize(source, "invalid")
            return source is None
        held = self._epochs.setdefault(dev, {})
        other = held.get(r.new_epoch)
        if other is not None and other.wire != se.wire:
            self.counters["epoch_conflict"] += 1  # the device signed two records for one epoch
            return True
        self._seen_other.put(digest, True)
        if other is not None:
            return True
        held[r.new_epoch] = se
        while len(held) > self.config.max_epoch_records:
            del held[min(held)]
        self.counters["epoch_accepted"] += 1
        if source is not None:
            self._out.append(StoreEpoch(dev, record))
            if not self._via_broadcast:
                payload = wire.encode(wire.Epochs(self.device_id, (record,)))
                for p in self._fanout(dev, {source, dev}):
                    self._out.append(Send(p, payload))
        self._out.append(EpochAccepted(dev, r.new_epoch, r.prev_epoch, r.last_height, source))
        self._apply_epoch(dev, se, source)
        return True

    def _superseded(self, dev: str, epoch: int, height: int) -> bool:
        """A header (epoch, height) lies above the last header of an epoch a record closed."""
        return any(
            se.record.prev_epoch == epoch and height > se.record.last_height
            for se in self._epochs.get(dev, {}).values()
        )

    def _send_epochs(self, peer: str, dev: str) -> None:
        last = self._evidence_sent.get((peer, "epochs:" + dev))
        if last is not None and self._now - last < self.config.anti_entropy_ms:
            return
        self._evidence_sent.put((peer, "epochs:" + dev), self._now)
        self.counters["epochs_sent"] += 1
        self._send(peer, wire.Epochs(self.device_id, self.epochs(dev)[-wire.MAX_EPOCH_RECORDS :]))

    def _apply_epoch(self, dev: str, se: SignedEpoch, peer: str | None) -> None:
        """Rewind a peer's chain held above the last header of the epoch ``se`` closed."""
        r = se.record
        chain = self._chains.get(dev)
        head = None if chain is None else chain.head
        if dev == self.device_id or chain is None or head is None or dev in self._rewinding:
            return
        if head.header.height <= r.last_height or head.header.epoch >= r.new_epoch:
            return
        held = chain.at(r.last_height)
        if held is not None and held.hash != r.last_hash:
            self.counters["epoch_unrelated"] += 1  # names a header this node does not hold
            return
        self._rewinding[dev] = (peer, se)
        self._pending.drop(device_id=dev)
        self.counters["rewinds"] += 1
        self._out.append(RewindChain(dev, r.last_height, r.new_epoch))

    def _on_chain_rewound(self, ev: ChainRewound) -> None:
        dev = ev.device_id
        pending = self._rewinding.pop(dev, None)
        if pending is None:
            self.counters["rewound_unexpected"] += 1
            return
        peer, se = pending
        old = self._chains.get(dev)
        wanted = {} if old is None else dict(old.missing)
        chain = self._build_chain(dev, ev.headers, wanted)
        head = chain.head
        if head is None or head.hash != se.record.last_hash:
            self.counters["rewound_short"] += 1  # the store lacked the record's last header
        self._chains[dev] = chain
        if peer is not None:
            self._pull(peer, dev, se.record.last_height + self.config.max_range)

    # --- restore -------------------------------------------------------------------------------

    def _on_restore_requested(self) -> None:
        own = self._chains.get(self.device_id)
        if self._restore is not None or (own is not None and own.head is not None):
            raise UsageError("restore: the own chain is already loaded or being restored")
        self._restore = Restore(
            self._now, self._now + self.config.restore_discovery_ms, last_progress_ms=self._now
        )
        self.counters["restores"] += 1
        if not self._tracked - {self.device_id}:
            self._restore_finish(0, -1, new_epoch=False)  # no peer could hold anything
            return
        for p in self._peers.available():
            self._send_summary(p, reply=True)

    def _restore_deadline(self) -> int | None:
        r = self._restore
        if r is None:
            return None
        if r.phase is Phase.DISCOVER:
            return r.discover_until
        if r.phase is Phase.FETCH:
            return r.last_progress_ms + self.config.restore_body_wait_ms
        return None

    def _restore_step(self) -> None:
        """Move the restore on: end discovery, commit, finish or give up, and ask for more."""
        r = self._restore
        if r is None or r.phase in (Phase.SIGNING, Phase.DONE):
            return
        if r.phase is Phase.DISCOVER:
            if not r.discovered(self._now, self._peers.available()):
                return
            if r.target is None:
                self._restore_finish(0, -1, new_epoch=False)  # nobody holds anything of us
                return
            r.phase = Phase.FETCH
            r.last_progress_ms = self._now
            self._out.append(RestoreProgressed(-1, r.target.height))
        self._restore_commit()
        if r.reached():
            assert r.committed is not None
            self._restore_finish(r.committed.header.epoch, r.committed_height, new_epoch=False)
        elif self._now >= r.last_progress_ms + self.config.restore_body_wait_ms:
            self._restore_give_up()
        else:
            self._restore_pump()

    def _restore_pump(self) -> None:
        r = self._restore
        assert r is not None and r.target is not None
        cfg = self.config
        available = self._peers.available()
        for key in [k for k in r.inflight if self._pending.get(*k) is None]:
            del r.inflight[key]  # expired, or its peer went down
        if r.header_req is not None and self._pending.get(*r.header_req) is None:
            r.header_req = None
        lo = r.tip_height + 1
        if (
            r.header_req is None
            and lo <= r.target.height
            and lo - 1 - r.committed_height < cfg.restore_ahead
        ):
            peers = [p for p in r.claimants(lo, available) if self._pending.room_for(p)]
            if peers:
                # The least recently asked first: a peer that did not answer is not asked again
                # before the others (the hedge), the best claim among equals.
                peer = min(peers, key=lambda p: r.header_asked.get(p, -1))
                r.header_asked[peer] = self._now
                hi = min(r.target.height, lo + cfg.max_range - 1)
                rid = self._request(peer, self.device_id, lo, hi, 0, r.target.height)
                r.header_req = (peer, rid)
        for run_lo, run_hi in r.missing_runs(cfg.max_blocks):
            if len(r.inflight) >= cfg.restore_inflight:
                break
            peers = [
                p
                for p in r.claimants(run_lo, available)
                if r.may_ask(p, run_lo, self._now, cfg.anti_entropy_ms)
                and self._pending.room_for(p)
            ]
            if not peers:
                continue
            load = {p: sum(1 for k in r.inflight if k[0] == p) for p in peers}
            least = min(load.values())
            peer = self._rng.choice(sorted(p for p in peers if load[p] == least))
            rid = self._request(
                peer, self.device_id, run_lo, run_hi, wire.FLAG_BODIES, r.target.height
            )
            r.inflight[(peer, rid)] = (run_lo, run_hi)

    def _restore_response(
        self, peer: str, req: Pending, headers: list[SignedHeader], blocks: tuple[bytes, ...]
    ) -> None:
        r = self._restore
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
            if height != r.tip_height + 1 or not self._restore_header(sh, peer):
                break
            r.tip = sh
            r.history.append(sh.hash)
            r.headers[height] = sh
            progress = True
        keys = self._creds.keys(self.device_id)
        for w in blocks if req.flags & wire.FLAG_BODIES else ():
            block = decode_block(w)
            bh = block.header.header
            if bh.device_id != self.device_id or not req.from_height <= bh.height <= req.to_height:
                raise VerificationError(
                    "response block",
                    f"{self.device_id}@{req.from_height}..{req.to_height}",
                    f"{bh.device_id}@{bh.height}",
                )
            expected = r.headers.get(bh.height)
            if expected is None or bh.height in r.bodies or keys is None:
                continue
            if block.header.hash != expected.hash:
                self.counters["restore_body_other_header"] += 1
                continue
            try:
                verify_block(block, keys.key_for(bh.key_id, bh.height))
            except VerificationError:
                self.counters["block_invalid"] += 1
                self._penalize(peer, "invalid")
                return
            r.bodies[bh.height] = w
            progress = True
        if req.flags & wire.FLAG_BODIES:
            r.mark_tried(peer, req.from_height, req.to_height, self._now)
        if progress:
            r.last_progress_ms = self._now
        self._restore_step()

    def _restore_header(self, sh: SignedHeader, peer: str) -> bool:
        """Does ``sh`` extend the verified tip of the chain being restored?"""
        r = self._restore
        assert r is not None
        h = sh.header
        keys = self._creds.keys(self.device_id)
        if keys is None:
            return False
        try:
            key = keys.key_for(h.key_id, h.height)
        except VerificationError:
            self.counters["restore_header_unknown_key"] += 1
            return False
        try:
            sh.verify(key, memo=True)
        except VerificationError:
            self._penalize(peer, "invalid")
            return False
        if self._superseded(self.device_id, h.epoch, h.height):
            self.counters["restore_header_superseded"] += 1
            return False
        try:
            verify_link(r.tip, sh, self._epochs.get(self.device_id, {}))
        except ChainError:
            self.counters["restore_header_unlinked"] += 1  # another branch, or a record unseen
            return False
        if h.history_root != r.history.root():
            self._penalize(peer, "invalid")
            return False
        return True

    def _restore_commit(self) -> None:
        r = self._restore
        assert r is not None
        batch = r.take_committable()
        if not batch:
            return
        chain = self._chain(self.device_id)
        for sh, _ in batch:
            chain.append(sh)
            self._seen_headers.put(sh.hash, True)
        self.counters["restore_blocks"] += len(batch)
        self._out.append(CommitRestored(tuple(w for _, w in batch)))
        self._out.append(RestoreProgressed(r.committed_height, r.target_height))

    def _restore_give_up(self) -> None:
        """The published head is out of reach: open a new epoch after the last whole block."""
        r = self._restore
        assert r is not None and r.target is not None
        if r.committed is None:
            if not r.failed_reported:
                r.failed_reported = True
                self._out.append(
                    RestoreFailed(
                        r.target.height,
                        "no peer served the body of block 0 (or its header) within "
                        f"{self.config.restore_body_wait_ms} ms; still trying",
                    )
                )
            r.last_progress_ms = self._now
            return
        head = r.committed.header
        known = list(self._epochs.get(self.device_id, {}))
        new_epoch = max([r.target.epoch, head.epoch, *known]) + 1
        r.phase = Phase.SIGNING
        self._pending.drop(device_id=self.device_id)
        self.counters["restore_new_epoch"] += 1
        self._out.append(SignEpoch(head.epoch, new_epoch, head.height, r.committed.hash))

    def _on_epoch_signed(self, record: bytes) -> None:
        r = self._restore
        if r is None or r.phase is not Phase.SIGNING or r.committed is None:
            raise UsageError("epoch signed: no restore is waiting for an epoch record")
        se = decode_epoch(record)
        rec = se.record
        if (rec.device_id, rec.last_height, rec.last_hash) != (
            self.device_id,
            r.committed.header.height,
            r.committed.hash,
        ):
            raise UsageError("epoch signed: the record does not name the restored head")
        if not self._learn_epoch(record, None) or rec.new_epoch not in self._epochs.get(
            self.device_id, {}
        ):
            raise UsageError("epoch signed: the record does not verify under the device key")
        payload = wire.encode(wire.Epochs(self.device_id, (record,)))
        for domain in self._cover_domains():
            self._out.append(Broadcast(domain, payload))
        self._restore_finish(rec.new_epoch, rec.last_height, new_epoch=True)

    def _restore_finish(self, epoch: int, height: int, *, new_epoch: bool) -> None:
        r = self._restore
        assert r is not None
        target = r.target
        r.phase = Phase.DONE
        r.headers.clear()
        r.bodies.clear()
        r.tried.clear()
        r.inflight.clear()
        self._pending.drop(device_id=self.device_id)
        self._out.append(
            RestoreFinished(
                epoch,
                height,
                0 if target is None else target.epoch,
                -1 if target is None else target.height,
                new_epoch,
            )
        )

    # --- helpers ------------------------------------------------------------------------------

    def _send(self, peer: str, msg: wire.Message) -> None:
        self._out.append(Send(peer, wire.encode(msg)))

    def _penalize(self, peer: str, offence: Offence) -> None:
        self.counters[f"penalty_{offence}"] += 1
        muted = self._peers.penalize(peer, offence, self._now)
        if muted is not None:
            self.counters["peers_muted"] += 1
            self._out.append(muted)
            self._pending.drop(peer_id=peer)

    def _take(self) -> list[Action]:
        self._flush()
        out, self._out = self._out, []
        return out


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
    return wire.CERTS
