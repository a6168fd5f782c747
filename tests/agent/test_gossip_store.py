"""The core's actions carried out on real ledger stores (SQLite files, ChainWriter), the way the
runtime will: two nodes, an in-test link, the store answering ServePull, and a restart that
resumes from what the store holds.
"""

from __future__ import annotations

import random
from pathlib import Path

from agent.gossip.actions import (
    Action,
    Send,
    ServePull,
    StoreBlock,
    StoreEvidence,
    StoreHeaders,
)
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    Input,
    MessageReceived,
    OwnBlockSealed,
    PeerUp,
    PullLoaded,
)
from agent.gossip.node import GossipNode
from agent.gossip.tuning import GossipConfig
from agent.protocol.auth import KeySigner
from agent.protocol.sim import START_MS, Authority
from ledger.block import decode_block, decode_header
from ledger.certs import FleetRoots
from ledger.chain import ChainWriter
from ledger.identity import SigningKey
from ledger.store import Store


class Device:
    """One device's runtime in miniature: its store, its node, and the action executor."""

    def __init__(self, tmp: Path, name: str, authority: Authority, rng: random.Random) -> None:
        self.key = SigningKey(rng.randbytes(32))
        self.id = self.key.public.device_id
        self.cert = authority.enroll(self.key)
        self.store = Store(tmp / f"{name}.db")
        self.writer = ChainWriter(self.store, self.key, self.id)
        self.node: GossipNode | None = None
        self.outbox: list[tuple[str, str, bytes]] = []
        self.loaded: list[Input] = []
        self.stored_twice = 0

    def execute(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self.outbox.append((self.id, a.peer_id, a.payload))
            elif isinstance(a, StoreHeaders):
                for w in a.headers:
                    sh = decode_header(w)
                    before = self.store.peer_head(a.device_id)
                    assert self.store.put_peer_header(sh) is None, "a fork reached the store"
                    self.stored_twice += before is not None and before.header.height >= (
                        sh.header.height
                    )
            elif isinstance(a, StoreBlock):
                assert self.store.put_replica(decode_block(a.block)), "replica stored twice"
            elif isinstance(a, StoreEvidence):
                self.store.put_evidence(a.device_id, a.evidence)
            elif isinstance(a, ServePull):
                self.loaded.append(self.serve(a))

    def serve(self, a: ServePull) -> PullLoaded:
        heights = range(a.from_height, a.to_height + 1)
        if a.device_id == self.id:
            headers = [h.wire for h in (self.store.header_at(x) for x in heights) if h]
            blocks = [w for w in (self.store.block_wire(x) for x in heights) if w]
        else:
            headers = [h.wire for h in self.store.peer_headers(a.device_id, a.from_height)]
            headers = headers[: len(heights)]
            replicas = (self.store.replica(a.device_id, x) for x in heights)
            blocks = [b.encode() for b in replicas if b is not None]
        return PullLoaded(
            a.peer_id, a.request_id, tuple(headers), tuple(blocks if a.bodies else ())
        )


def _start(
    dev: Device, peer: Device, roots: FleetRoots, config: GossipConfig, now: int, seed: int
) -> None:
    """Boot (or restart) a node from what the device's store holds, as the runtime will."""
    dev.node = GossipNode(
        dev.id,
        {"home": [dev.id, peer.id]},
        roots,
        random.Random(seed),
        config=config,
        now_ms=now,
        signer=KeySigner(dev.key),
    )
    for cert in (dev.cert, peer.cert):
        dev.execute(dev.node.handle(CertificateKnown(cert), now))
    own = [h.wire for h in (dev.store.header_at(x) for x in range(dev.store.block_count())) if h]
    if own:
        dev.execute(dev.node.handle(ChainLoaded(dev.id, tuple(own)), now))
    for other in dev.store.peer_devices():
        wires = tuple(h.wire for h in dev.store.peer_headers(other))
        held = set(dev.store.replica_index())
        missing = tuple(h for h in range(len(wires)) if (other, h) not in held)
        dev.execute(dev.node.handle(ChainLoaded(other, wires, missing), now))
    dev.execute(dev.node.handle(PeerUp(peer.id), now))


def _pump(devices: list[Device], now: int, until: int, rng: random.Random) -> int:
    """Deliver everything in random order, feeding timers, until nothing is left or ``until``."""
    by_id = {d.id: d for d in devices}
    while now < until:
        queued = [m for d in devices for m in d.outbox]
        loaded = [(d, x) for d in devices for x in d.loaded]
        for d in devices:
            d.outbox, d.loaded = [], []
        rng.shuffle(queued)
        for src, dst, payload in queued:
            target = by_id.get(dst)
            if target is not None and target.node is not None:  # else: lost, b is away
                target.execute(target.node.handle(MessageReceived(src, payload), now))
        for d, x in loaded:
            assert d.node is not None
            d.execute(d.node.handle(x, now))
        if not queued and not loaded:
            deadlines = [d.node.next_deadline() for d in devices if d.node is not None]
            now = min(t for t in deadlines if t is not None)
            for d in devices:
                if d.node is not None and (d.node.next_deadline() or until) <= now:
                    d.execute(d.node.handle_timer(now))
        else:
            now += 5
    return now


def test_gossip_on_real_stores_with_bodies_and_a_restart(tmp_path: Path) -> None:
    rng = random.Random(3)
    authority = Authority(rng)
    a = Device(tmp_path, "a", authority, rng)
    b = Device(tmp_path, "b", authority, rng)
    cfg_a = GossipConfig(anti_entropy_ms=1_000, jitter_ms=100, window=8)
    cfg_b = GossipConfig(
        anti_entropy_ms=1_000, jitter_ms=100, window=8, want_bodies=lambda dev, h: dev == a.id
    )
    now = START_MS
    roots = authority.roots
    _start(a, b, roots, cfg_a, now, 1)
    _start(b, a, roots, cfg_b, now, 2)
    for k in range(20):  # sealed and durable before it is announced
        a.writer.record(now + k, "fridge.temp_mc", 4_000 + k, tag=f"urn:epc:id:sgtin:1.2.{k}")
        block = a.writer.seal()
        assert block is not None and a.node is not None
        a.execute(a.node.handle(OwnBlockSealed(block), now))
        if 8 <= k < 16:  # b is away (its store stays) while a seals 8 blocks
            b.node = None
            now = _pump([a], now, now + 500, rng)
            if k == 15:
                _start(b, a, roots, cfg_b, now, 3)  # b restarts from its store
        else:
            now = _pump([a, b], now, now + 200, rng)
    now = _pump([a, b], now, now + 20_000, rng)
    head = a.store.head()
    assert head is not None and head.header.height == 19
    held = b.store.peer_head(a.id)
    assert held is not None and held.hash == head.hash
    assert [h.hash for h in b.store.peer_headers(a.id)] == [
        x.hash for x in (a.store.header_at(i) for i in range(20)) if x
    ]
    assert b.store.replica_index() == [(a.id, h) for h in range(20)]
    assert b.stored_twice == 0
    replica = b.store.replica(a.id, 7)
    assert replica is not None and replica.encode() == a.store.block_wire(7)
    assert b.store.tag_hits("urn:epc:id:sgtin:1.2.7")[0].own is False
