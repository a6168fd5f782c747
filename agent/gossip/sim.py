"""A deterministic simulation of gossip nodes: tests and benchmarks drive N ``GossipNode``s here.

- ``Authority`` and ``SimDevice`` (agent.protocol.sim) make real enrolled devices and real
  signed chains from a seed, without any file or database.
- ``SimStore`` does what the runtime's store would do with the core's actions and counts what
  must never happen: a stored duplicate, a header stored out of order, a second body.
- ``SimNet`` is the link and the runtime loop: messages are lost, duplicated and reordered (random
  latency) under a seeded ``random.Random``; partitions block pairs; devices go offline and come
  back restarted from their store, or are wiped and restored from their peers (``restore``).
  Time is simulated: the loop jumps to the next delivery or the
  next node deadline, so a minute of gossip takes milliseconds and nothing ever sleeps.

This is the core's own test twin, independent of the real transports (agent/transport).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.gossip.actions import (
    Action,
    Broadcast,
    CommitRestored,
    PrepareCheckpoint,
    PublishEvidence,
    RewindChain,
    Send,
    ServePull,
    SignEpoch,
    StoreBlock,
    StoreCheckpoint,
    StoreCredential,
    StoreEpoch,
    StoreEvidence,
    StoreHeaders,
    StoreWitnessState,
)
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    ChainRewound,
    CheckpointPrepared,
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
    RevocationReceived,
    RotationKnown,
    WitnessStateKnown,
)
from agent.gossip.node import GossipNode
from agent.gossip.tuning import GossipConfig
from agent.gossip.witness import WitnessConfig
from agent.protocol.sim import START_MS, Authority, SimDevice
from ledger.block import Block, SignedHeader, decode_block, decode_header
from ledger.checkpoint import Checkpoint, device_origin, device_signer
from ledger.epoch import decode_epoch
from ledger.merkle import consistency_proof, root_from_leaf_hashes
from ledger.note import sign_note


@dataclass
class SimStore:
    """What one node's runtime persisted, with the figures that must stay zero."""

    headers: dict[str, dict[int, bytes]] = field(default_factory=dict)
    blocks: dict[tuple[str, int], bytes] = field(default_factory=dict)
    evidence: dict[str, bytes] = field(default_factory=dict)
    credentials: list[tuple[str, str, bytes]] = field(default_factory=list)
    epochs: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (device, epoch) -> rec
    superseded: dict[str, dict[tuple[int, int], bytes]] = field(default_factory=dict)
    witness_state: dict[str, tuple[int, bytes]] = field(
        default_factory=dict
    )  # origin -> size, root
    checkpoints: dict[tuple[str, int], bytes] = field(default_factory=dict)
    witness_rewinds: int = 0  # a witness state written below the one held: must stay 0
    duplicates: int = 0
    out_of_order: int = 0
    block_duplicates: int = 0

    def put_headers(self, device_id: str, wires: Iterable[bytes]) -> None:
        held = self.headers.setdefault(device_id, {})
        for w in wires:
            height = decode_header(w).header.height
            if height in held:
                self.duplicates += 1
            elif height != len(held):
                self.out_of_order += 1
            held[height] = w

    def put_block(self, device_id: str, height: int, wire: bytes) -> None:
        if (device_id, height) in self.blocks:
            self.block_duplicates += 1
        self.blocks[(device_id, height)] = wire

    def rewind(self, device_id: str, last_height: int, new_epoch: int) -> tuple[bytes, ...]:
        """Move headers above ``last_height`` of older epochs aside; the chain 0..last_height."""
        held = self.headers.get(device_id, {})
        aside = self.superseded.setdefault(device_id, {})
        for h in sorted(held):
            sh = decode_header(held[h])
            if h > last_height and sh.header.epoch < new_epoch:
                aside[(sh.header.epoch, h)] = held.pop(h)
        return tuple(
            w for w in self.chain(device_id) if decode_header(w).header.height <= last_height
        )

    def chain(self, device_id: str) -> list[bytes]:
        held = self.headers.get(device_id, {})
        return [held[h] for h in range(len(held)) if h in held]


@dataclass(frozen=True, slots=True)
class Faults:
    loss_permille: int = 0
    dup_permille: int = 0
    min_latency_ms: int = 2
    max_latency_ms: int = 40


@dataclass
class SimPeer:
    device: SimDevice
    domains: tuple[str, ...]
    config: GossipConfig
    witness: WitnessConfig | None = None
    store: SimStore = field(default_factory=SimStore)
    node: GossipNode | None = None
    online: bool = False
    runs_node: bool = True
    events: list[Action] = field(default_factory=list)
    restarts: int = 0
    published: list[bytes] = field(default_factory=list)  # own headers before a wipe

    @property
    def device_id(self) -> str:
        return self.device.device_id

    def held(self, device_id: str) -> list[bytes]:
        if device_id == self.device_id:
            return self.device.header_wires()
        return self.store.chain(device_id)


@dataclass(order=True)
class _Event:
    time: int
    seq: int
    dst: str = field(compare=False)
    src: str | None = field(compare=False)
    payload: bytes | None = field(compare=False)
    input: Input | None = field(compare=False)
    broadcast: bool = field(default=False, compare=False)


class SimNet:
    """N nodes, one lossy link, one simulated clock."""

    def __init__(
        self,
        seed: int,
        *,
        faults: Faults = Faults(),
        start_ms: int = START_MS,
        authenticated_senders: bool = False,
        evidence_topic: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.authority = Authority(self.rng)
        self.faults = faults
        self.now = start_ms
        self.authenticated_senders = authenticated_senders
        self.evidence_topic = evidence_topic  # False: a broker that lost its retained messages
        self.retained: dict[str, bytes] = {}  # the evidence topic: accused device -> evidence
        self.revoked: dict[str, bytes] = {}  # the revocation topic: revoked device -> revocation
        self.peers: dict[str, SimPeer] = {}
        self.domains: dict[str, frozenset[str]] = {}
        self._queue: list[_Event] = []
        self._seq = 0
        self._blocked: set[frozenset[str]] = set()
        self.sent = self.lost = self.duplicated = self.partitioned = self.delivered = 0
        self.served_pulls = 0
        self.pairs: set[tuple[str, str]] = set()  # (sender, receiver) of every transmission

    # --- building ---------------------------------------------------------------------------

    def add_device(
        self,
        domains: Iterable[str] = ("d",),
        *,
        config: GossipConfig | None = None,
        runs_node: bool = True,
        witness: WitnessConfig | None = None,
    ) -> SimPeer:
        """``witness``: the device offers its checkpoints to witnesses (every node answers)."""
        device = SimDevice(self.authority, self.rng)
        peer = SimPeer(
            device, tuple(domains), config or GossipConfig(), witness, runs_node=runs_node
        )
        self.peers[device.device_id] = peer
        for d in peer.domains:
            self.domains[d] = self.domains.get(d, frozenset()) | {device.device_id}
        return peer

    def start(self, *, preload_certificates: bool = False) -> None:
        """Start every node; each knows its own certificate (or all of them if preloaded)."""
        for peer in self._sorted():
            if peer.runs_node:
                self._boot(peer, preload_certificates)
        for peer in self._sorted():
            if peer.online:
                self._announce_presence(peer)

    def _boot(self, peer: SimPeer, preload: bool) -> None:
        seed = self.rng.getrandbits(64)
        domains = {d: self.domains[d] for d in peer.domains}
        node = GossipNode(
            peer.device_id,
            domains,
            self.authority.roots,
            random.Random(seed),
            config=peer.config,
            now_ms=self.now,
            signer=peer.device,
            witness=peer.witness,
        )
        peer.node = node
        peer.online = True
        self._feed(peer, CertificateKnown(peer.device.certificate))
        if peer.store.witness_state:
            states = sorted((o, s, r) for o, (s, r) in peer.store.witness_state.items())
            self._feed(peer, WitnessStateKnown(tuple(states)))
        if preload:
            for other in self._sorted():
                if other is not peer:
                    self._feed(peer, CertificateKnown(other.device.certificate))
        for _dev, kind, w in list(peer.store.credentials):
            if kind == "certificate":
                self._feed(peer, CertificateKnown(w))
            elif kind == "rotation":
                self._feed(peer, RotationKnown(w))
            else:
                self._feed(peer, RevocationKnown(w))
        for w in list(peer.store.evidence.values()):
            self._feed(peer, EvidenceKnown(w))
        for _key, w in sorted(peer.store.epochs.items()):
            self._feed(peer, EpochKnown(w))
        if peer.device.blocks:
            self._feed(peer, ChainLoaded(peer.device_id, tuple(peer.device.header_wires())))
        for dev in sorted(peer.store.headers):
            wanted = tuple(
                h
                for h in range(len(peer.store.headers[dev]))
                if (dev, h) not in peer.store.blocks and peer.config.want_bodies(dev, h)
            )
            self._feed(peer, ChainLoaded(dev, tuple(peer.store.chain(dev)), wanted))

    def _announce_presence(self, peer: SimPeer) -> None:
        for other in self._neighbours(peer):
            if other.online:
                self._feed(other, PeerUp(peer.device_id))
                self._feed(peer, PeerUp(other.device_id))

    def _neighbours(self, peer: SimPeer) -> list[SimPeer]:
        ids: set[str] = set()
        for d in peer.domains:
            ids |= self.domains[d]
        ids.discard(peer.device_id)
        return [self.peers[i] for i in sorted(ids)]

    def _sorted(self) -> list[SimPeer]:
        return [self.peers[k] for k in sorted(self.peers)]

    # --- faults -------------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Block every pair of devices that are in different groups."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in a:
                    for y in b:
                        self._blocked.add(frozenset((x, y)))

    def heal(self) -> None:
        self._blocked.clear()

    def take_offline(self, device_id: str) -> None:
        peer = self.peers[device_id]
        peer.online = False
        peer.node = None
        for other in self._neighbours(peer):
            if other.online:
                self._feed(other, PeerDown(device_id))

    def bring_online(self, device_id: str) -> None:
        """Restart a node from its store (heads, credentials, evidence) and announce it."""
        peer = self.peers[device_id]
        peer.restarts += 1
        self._boot(peer, preload=False)
        for device in sorted(self.retained):  # retained evidence arrives on subscribing
            self._feed(peer, EvidenceReceived(self.retained[device]))
        for device in sorted(self.revoked):  # and so do retained revocations
            self._feed(peer, RevocationReceived(self.revoked[device]))
        self._announce_presence(peer)

    def restore(self, device_id: str) -> None:
        """Wipe a device's own chain and store, restart its node in restore mode, announce it.
        What it had published stays in ``published`` for the figures."""
        peer = self.peers[device_id]
        if peer.online:
            self.take_offline(device_id)
        peer.published = peer.device.header_wires()
        peer.device.wipe()
        peer.store = SimStore()
        peer.restarts += 1
        self._boot(peer, preload=False)
        self._feed(peer, RestoreRequested())
        for device in sorted(self.retained):
            self._feed(peer, EvidenceReceived(self.retained[device]))
        self._announce_presence(peer)

    # --- driving ------------------------------------------------------------------------------

    def seal(self, device_id: str) -> Block:
        peer = self.peers[device_id]
        block = peer.device.seal(self.now, value=4_000 + len(peer.device.blocks))
        if peer.online:
            self._feed(peer, OwnBlockSealed(block))
        return block

    def rotate(self, device_id: str) -> bytes:
        """Rotate a device's key from its next block on and tell its own node."""
        peer = self.peers[device_id]
        rotation = peer.device.rotate(self.authority, self.rng, self.now)
        peer.store.credentials.append((device_id, "rotation", rotation))
        if peer.online:
            self._feed(peer, RotationKnown(rotation))
        return rotation

    def inject(self, dst: str, payload: bytes, src: str | None = None, delay_ms: int = 0) -> None:
        """Deliver raw bytes to ``dst`` (a hostile or scripted sender), bypassing faults."""
        self._push(self.now + delay_ms, dst, src, payload, None)

    def feed(self, device_id: str, event: Input) -> list[Action]:
        return self._feed(self.peers[device_id], event)

    def run_for(self, ms: int, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self.now + ms, stop)

    def run_until(self, t_end: int, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to ``t_end``; True as soon as ``stop()`` holds."""
        while True:
            if stop is not None and stop():
                return True
            t_timer, who = None, None
            for peer in self._sorted():
                if peer.online and peer.node is not None:
                    t = peer.node.next_deadline()
                    if t is not None and (t_timer is None or t < t_timer):
                        t_timer, who = t, peer
            t_msg = self._queue[0].time if self._queue else None
            candidates = [t for t in (t_timer, t_msg) if t is not None]
            if not candidates or min(candidates) > t_end:
                self.now = max(self.now, t_end)
                return stop is not None and stop()
            if t_msg is not None and (t_timer is None or t_msg <= t_timer):
                self._deliver(heapq.heappop(self._queue))
            elif who is not None and who.node is not None and t_timer is not None:
                self.now = max(self.now, t_timer)
                self._execute(who, who.node.handle_timer(self.now))

    def _deliver(self, ev: _Event) -> None:
        self.now = max(self.now, ev.time)
        peer = self.peers[ev.dst]
        if not peer.online or peer.node is None:
            self.lost += 1
            return
        if ev.input is not None:
            self._feed(peer, ev.input)
            return
        if ev.src is not None and frozenset((ev.src, ev.dst)) in self._blocked:
            self.partitioned += 1
            return
        assert ev.payload is not None
        self.delivered += 1
        claimed = ev.src if self.authenticated_senders else None
        self._feed(peer, MessageReceived(claimed, ev.payload, ev.broadcast))

    def _feed(self, peer: SimPeer, event: Input) -> list[Action]:
        if peer.node is None:
            return []
        actions = peer.node.handle(event, self.now)
        self._execute(peer, actions)
        return actions

    def _push(
        self,
        t: int,
        dst: str,
        src: str | None,
        payload: bytes | None,
        event: Input | None,
        *,
        broadcast: bool = False,
    ) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Event(t, self._seq, dst, src, payload, event, broadcast))

    def _transmit(self, src: str, dst: str, payload: bytes, *, broadcast: bool = False) -> None:
        self.sent += 1
        self.pairs.add((src, dst))
        f = self.faults
        if frozenset((src, dst)) in self._blocked:
            self.partitioned += 1
            return
        if self.rng.randrange(1000) < f.loss_permille:
            self.lost += 1
            return
        copies = 1
        if self.rng.randrange(1000) < f.dup_permille:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            latency = self.rng.randint(f.min_latency_ms, f.max_latency_ms)
            self._push(self.now + latency, dst, src, payload, None, broadcast=broadcast)

    def _execute(self, peer: SimPeer, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._transmit(peer.device_id, a.peer_id, a.payload)
            elif isinstance(a, Broadcast):
                for member in sorted(self.domains.get(a.domain, ())):
                    if member != peer.device_id:
                        self._transmit(peer.device_id, member, a.payload, broadcast=True)
            elif isinstance(a, StoreHeaders):
                peer.store.put_headers(a.device_id, a.headers)
            elif isinstance(a, StoreBlock):
                peer.store.put_block(a.device_id, a.height, a.block)
            elif isinstance(a, PublishEvidence):
                self._publish_evidence(a.device_id, a.evidence)
            elif isinstance(a, StoreEvidence):
                peer.store.evidence[a.device_id] = a.evidence
            elif isinstance(a, StoreCredential):
                peer.store.credentials.append((a.device_id, a.kind, a.wire))
            elif isinstance(a, ServePull):
                self._serve(peer, a)
            elif isinstance(a, StoreEpoch):
                rec = decode_epoch(a.record).record
                peer.store.epochs[(a.device_id, rec.new_epoch)] = a.record
            elif isinstance(a, RewindChain):
                wires = peer.store.rewind(a.device_id, a.last_height, a.new_epoch)
                self._push(
                    self.now + 1, peer.device_id, None, None, ChainRewound(a.device_id, wires)
                )
            elif isinstance(a, CommitRestored):
                for w in a.blocks:
                    peer.device.adopt(decode_block(w))
                peer.events.append(a)
            elif isinstance(a, PrepareCheckpoint):
                prepared = self._checkpoint(peer, a)
                self._push(self.now + 1, peer.device_id, None, None, prepared)
            elif isinstance(a, StoreWitnessState):
                held = peer.store.witness_state.get(a.origin)
                if held is not None and (
                    a.size < held[0] or (a.size == held[0] and a.root_hash != held[1])
                ):
                    peer.store.witness_rewinds += 1
                    continue  # the write fails: nothing is sent
                peer.store.witness_state[a.origin] = (a.size, a.root_hash)
                self._transmit(peer.device_id, a.peer_id, a.payload)
            elif isinstance(a, StoreCheckpoint):
                peer.store.checkpoints[(a.origin, a.size)] = a.note
                peer.events.append(a)
            elif isinstance(a, SignEpoch):
                record = peer.device.sign_epoch(a, self.now)
                peer.store.epochs[(peer.device_id, a.new_epoch)] = record
                self._push(self.now + 1, peer.device_id, None, None, EpochSigned(record))
            else:
                peer.events.append(a)

    def _checkpoint(self, peer: SimPeer, a: PrepareCheckpoint) -> CheckpointPrepared:
        """The runtime's store job: the signed checkpoint at the head, and consistency proofs."""
        wires = peer.device.header_wires()
        hashes = [decode_header(w).hash for w in wires]
        head = decode_header(wires[-1]).header
        origin = device_origin(a.fleet, peer.device_id, head.epoch)
        cp = Checkpoint(origin, len(hashes), root_from_leaf_hashes(hashes))
        note = sign_note(cp.text(), device_signer(origin, peer.device.key))
        proofs = tuple(
            (old, tuple(consistency_proof(hashes, old, len(hashes)))) for old in a.old_sizes
        )
        return CheckpointPrepared(note.encode(), proofs)

    def _publish_evidence(self, device_id: str, evidence: bytes) -> None:
        """The retained evidence topic: every running node receives it, never lost."""
        if not self.evidence_topic:
            return
        self.retained[device_id] = evidence
        for other in self._sorted():
            if other.online:
                latency = self.rng.randint(self.faults.min_latency_ms, self.faults.max_latency_ms)
                self._push(
                    self.now + latency, other.device_id, None, None, EvidenceReceived(evidence)
                )

    def publish_revocation(self, device_id: str, revocation: bytes) -> None:
        """What ``edgefleet keys revoke --broker`` does: the revocation retained on the
        revocation topic of ``device_id``; every running node receives it (never lost), and a
        node that comes up later on subscribing."""
        self.revoked[device_id] = revocation
        for other in self._sorted():
            if other.online:
                latency = self.rng.randint(self.faults.min_latency_ms, self.faults.max_latency_ms)
                self._push(
                    self.now + latency, other.device_id, None, None, RevocationReceived(revocation)
                )

    def _serve(self, peer: SimPeer, a: ServePull) -> None:
        """The runtime's store read: answered one simulated millisecond later."""
        self.served_pulls += 1
        heights = range(a.from_height, a.to_height + 1)
        own = a.device_id == peer.device_id
        blocks_by_height = peer.device.blocks if own else []
        held = peer.store.headers.get(a.device_id, {})
        headers: list[bytes] = []
        for h in heights:
            w = (
                blocks_by_height[h].header.wire
                if own and h < len(blocks_by_height)
                else held.get(h)
            )
            if w is None:
                break
            headers.append(w)
        blocks: list[bytes] = []
        if a.bodies:
            for h in heights:
                if own:
                    if h < len(blocks_by_height):
                        blocks.append(blocks_by_height[h].encode())
                elif (a.device_id, h) in peer.store.blocks:
                    blocks.append(peer.store.blocks[(a.device_id, h)])
        loaded = PullLoaded(a.peer_id, a.request_id, tuple(headers), tuple(blocks))
        self._push(self.now + 1, peer.device_id, None, None, loaded)

    # --- figures ------------------------------------------------------------------------------

    def missing(self, *, exclude: Iterable[str] = ()) -> tuple[int, int]:
        """(headers missing, headers expected) over online nodes and their domains' devices."""
        skip = set(exclude)
        missing = expected = 0
        for peer in self._sorted():
            if not peer.online or not peer.runs_node or peer.device_id in skip:
                continue
            wanted: set[str] = set()
            for d in peer.domains:
                wanted |= self.domains[d]
            for dev in sorted(wanted - skip):
                truth = self.peers[dev].device.header_wires()
                held = peer.held(dev)
                expected += len(truth)
                missing += sum(1 for h, w in enumerate(truth) if h >= len(held) or held[h] != w)
        return missing, expected

    def converged(self, *, exclude: Iterable[str] = ()) -> bool:
        return self.missing(exclude=exclude)[0] == 0

    def stored_duplicates(self) -> int:
        return sum(p.store.duplicates + p.store.block_duplicates for p in self.peers.values())

    def out_of_order(self) -> int:
        return sum(p.store.out_of_order for p in self.peers.values())

    def heads(self, device_id: str) -> dict[str, SignedHeader | None]:
        """Each running node's head for ``device_id``."""
        return {p.device_id: p.node.head(device_id) for p in self._sorted() if p.node is not None}
