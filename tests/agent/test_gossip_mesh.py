"""The mesh of a gossip domain (docs/PROTOCOL.md 12.10): bounded neighbours, the binomial tree a
header takes, adoption when a child is down, and that nothing else is talked to."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest

from agent.gossip import mesh, wire
from agent.gossip.sim import Faults, SimNet
from agent.gossip.tuning import GossipConfig
from agent.protocol import auth
from ledger.errors import UsageError

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
IDS = [
    "ef" + "".join(_B32[b & 31] for b in hashlib.sha256(str(i).encode()).digest()[:24])
    for i in range(300)
]


def test_ring_key_vector() -> None:
    """The byte-exact vector of docs/PROTOCOL.md 12.10."""
    key = mesh.ring_key("elm-street", "efilgtcxlzfyhtxuhcn5eyq5zw")
    want = hashlib.sha256(b"edgefleet/mesh/v1\x00elm-street\x00efilgtcxlzfyhtxuhcn5eyq5zw")
    assert key == want.digest()
    assert key.hex() == "516c0ae710985acaeaa2db9718de01ba4b4d1fc9ee311519cfaf212470e6df1e"
    a, b, d = "a" * 24, "b" * 24, "3dqioujy4jcqf3npbfjk54oc"
    ring = mesh.Ring("elm-street", ["ef" + a, "efilgtcxlzfyhtxuhcn5eyq5zw", "ef" + b, "ef" + d])
    assert ring.order == (
        "ef" + a,
        "efilgtcxlzfyhtxuhcn5eyq5zw",
        "ef" + b,
        "ef3dqioujy4jcqf3npbfjk54oc",
    )


@pytest.mark.parametrize("n", [2, 3, 5, 8, 33, 100, 300])
def test_neighbours_are_symmetric_and_logarithmic(n: int) -> None:
    ring = mesh.Ring("street", IDS[:n])
    bound = 2 * math.ceil(math.log2(n))
    for m in ring.order:
        near = ring.neighbours(m)
        assert m not in near
        assert len(near) <= bound
        for p in near:
            assert m in ring.neighbours(p)
        assert set(ring.fingers(m)) <= near
    assert mesh.ring("street", frozenset(IDS[:n])).order == ring.order  # same everywhere


@pytest.mark.parametrize("n", [2, 7, 32, 100, 300])
def test_every_tree_reaches_each_member_once_within_log_hops(n: int) -> None:
    ring = mesh.Ring("street", IDS[:n])
    for origin in ring.order[:: max(1, n // 7)]:
        got: Counter[str] = Counter()
        frontier, hops = [origin], 0
        while frontier:
            nxt = []
            for m in frontier:
                kids = ring.children(origin, m)
                assert set(kids) <= set(ring.fingers(m))  # only to watched neighbours
                for k in kids:
                    assert ring.is_ancestor(origin, m, k)
                    assert ring.is_ancestor(origin, origin, k)
                    assert not ring.is_ancestor(origin, k, m)
                got.update(kids)
                nxt.extend(kids)
            frontier = nxt
            hops += 1 if nxt else 0
        assert got == Counter({m: 1 for m in ring.order if m != origin})
        assert hops <= mesh.depth(n)


def test_config_rejects_unknown_push_and_mesh() -> None:
    with pytest.raises(UsageError, match="push"):
        GossipConfig(push="flood")
    with pytest.raises(UsageError, match="mesh"):
        GossipConfig(mesh=1)  # type: ignore[arg-type]


def _net(n: int, cfg: GossipConfig, seed: int = 3) -> SimNet:
    net = SimNet(seed, faults=Faults(min_latency_ms=2, max_latency_ms=20))
    for _ in range(n):
        net.add_device(config=cfg)
    net.start(preload_certificates=True)
    net.run_for(1_000)
    return net


def test_tree_push_reaches_every_member_once_and_talks_to_neighbours_only() -> None:
    """48 members, a mesh from 9 up: headers go down the origins' trees (one copy each), and
    every message of the run, presence-driven or not, is between mesh neighbours."""
    cfg = GossipConfig(push="tree", mesh_above=8, anti_entropy_ms=60_000, jitter_ms=0)
    net = _net(48, cfg)
    net.pairs.clear()
    for dev in sorted(net.peers):
        net.seal(dev)
    net.run_for(2_000)
    assert net.missing() == (0, 48 * 48)
    counters: Counter[str] = Counter()
    for p in net.peers.values():
        assert p.node is not None
        counters.update(p.node.counters)
    assert counters["header_accepted"] == 48 * 47
    assert counters["header_duplicate"] == 0
    ring = mesh.ring("d", net.domains["d"])
    for src, dst in net.pairs:
        assert dst in ring.neighbours(src)


def test_a_child_known_down_is_adopted_by_its_parent() -> None:
    """With one member down, its parent sends to its children instead: every header still
    reaches every member that is up, with no anti-entropy round to help (a minute away)."""
    cfg = GossipConfig(push="tree", mesh_above=8, anti_entropy_ms=60_000, jitter_ms=0)
    net = _net(40, cfg)
    ring = mesh.ring("d", net.domains["d"])
    origin = ring.order[0]
    down = next(m for m in ring.fingers(origin) if ring.children(origin, m))
    net.take_offline(down)
    net.seal(origin)
    net.run_for(1_000)
    assert net.missing(exclude=[down]) == (0, 39)
    node = net.peers[origin].node
    assert node is not None and node.counters["tree_adoptions"] >= 1


def test_mesh_rounds_and_greetings_stay_with_neighbours() -> None:
    """Broadcast push, mesh on: the domain topic carries the headers; anti-entropy rounds,
    greetings and hellos go to neighbours only (every unicast pair is a neighbour pair)."""
    cfg = GossipConfig(mesh_above=8)
    net = SimNet(5, faults=Faults(min_latency_ms=2, max_latency_ms=20))
    for _ in range(40):
        net.add_device(config=cfg)
    net.start(preload_certificates=True)
    net.run_for(30_000)
    ring = mesh.ring("d", net.domains["d"])
    for src, dst in net.pairs:
        assert dst in ring.neighbours(src)
    hellos = sum(p.node.counters["hellos_sent"] for p in net.peers.values() if p.node)
    assert hellos == sum(len(ring.neighbours(m)) for m in ring.order)


class _Recording(SimNet):
    """A SimNet that keeps the entries of every SUMMARY sent with reply = 0 outside answers."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.summaries: list[tuple[int, int]] = []  # (reply, entries)

    def _transmit(self, src: str, dst: str, payload: bytes, *, broadcast: bool = False) -> None:
        if payload[2] == wire.SUMMARY:
            msg = wire.decode(auth.body_of(payload))
            assert isinstance(msg, wire.Summary)
            self.summaries.append((msg.reply, len(msg.entries)))
        super()._transmit(src, dst, payload, broadcast=broadcast)


def test_lazy_rounds_stay_bounded_and_repair_lost_broadcasts() -> None:
    """24 members each holding 24 chains, rounds of at most 6 entries: broadcasts lose 5%, and
    the lazy rounds (reply = 0: heads changed lately, then a rotating slice) still bring every
    header to every member; no round lists more than 6 entries."""
    cfg = GossipConfig(mesh_above=4, round_entries=6, anti_entropy_ms=2_000, jitter_ms=500)
    net = _Recording(9, faults=Faults(loss_permille=50, min_latency_ms=2, max_latency_ms=20))
    for _ in range(24):
        net.add_device(config=cfg)
    net.start(preload_certificates=True)
    net.run_for(3_000)
    for _ in range(3):
        for dev in sorted(net.peers):
            net.seal(dev)
        net.run_for(2_000)
    net.summaries.clear()
    assert net.run_for(120_000, stop=net.converged)
    lazy = [n for reply, n in net.summaries if reply == 0]
    rounds = sum(p.node.counters["rounds_lazy"] for p in net.peers.values() if p.node)
    assert rounds > 0 and lazy
    assert sum(1 for reply, _ in net.summaries if reply == 1) == 0  # no full round any more
    assert max(lazy) <= 6
