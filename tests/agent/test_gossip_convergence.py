"""Gossip among 4..8 simulated nodes: convergence under loss, duplication, reordering,
partitions and long absences, with the figures RELIABILITY.md asks for in the assert messages.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.gossip import wire
from agent.gossip.actions import ForkDetected
from agent.gossip.sim import Faults, SimNet
from agent.gossip.tuning import GossipConfig
from tests.conftest import FigureRecorder

FAST = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200)
LOSSY = Faults(loss_permille=100, dup_permille=100, min_latency_ms=2, max_latency_ms=300)


def _figures(net: SimNet, seed: int) -> str:
    missing, expected = net.missing()
    return (
        f"seed {seed}: lost = {missing} of {expected} headers, stored duplicates = "
        f"{net.stored_duplicates()}, out-of-order accepted = {net.out_of_order()}; link: "
        f"{net.sent} sent, {net.lost} lost, {net.duplicated} duplicated"
    )


def _wants(target: str) -> Callable[[str, int], bool]:
    return lambda dev, height: dev == target


def _seal_rounds(net: SimNet, ids: list[str], rounds: int, gap_ms: int = 400) -> None:
    for _ in range(rounds):
        for i in ids:
            net.seal(i)
            net.run_for(gap_ms // len(ids))


@pytest.mark.parametrize(("seed", "nodes"), [(1, 8), (2, 8), (3, 8), (4, 10), (5, 10)])
def test_convergence_under_loss_duplication_and_reordering(
    seed: int, nodes: int, figure: FigureRecorder
) -> None:
    net = SimNet(seed, faults=LOSSY)
    ids = [net.add_device(config=FAST).device_id for _ in range(nodes)]
    net.start()
    _seal_rounds(net, ids, 15)
    sealed_at = net.now
    assert net.run_for(60_000, stop=net.converged), _figures(net, seed)
    assert net.stored_duplicates() == 0 and net.out_of_order() == 0, _figures(net, seed)
    assert net.lost > 0 and net.duplicated > 0, "the link must actually have been faulty"
    # Honest peers are never muted by ordinary loss (promises broken by lost messages decay).
    muted = [
        p
        for p in ids
        if any(
            net.peers[q].node.peer_stats(p).mutes  # type: ignore[union-attr]
            for q in ids
            if q != p
        )
    ]
    assert muted == [], _figures(net, seed)
    forks = [e for p in net.peers.values() for e in p.events if isinstance(e, ForkDetected)]
    assert forks == [], f"false positives = {len(forks)}"
    assert net.now - sealed_at < 20_000, f"converged {net.now - sealed_at} ms after the last seal"
    figure(
        "message loss, duplication, reordering (10% each)",
        f"{nodes} nodes, {_figures(net, seed)}; muted honest = 0, false forks = 0",
        seed=seed,
    )


def test_a_long_offline_node_catches_up_through_anti_entropy_only() -> None:
    seed = 4
    cfg = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200, window=32)
    net = SimNet(seed, faults=Faults(loss_permille=50, dup_permille=50, max_latency_ms=100))
    ids = [net.add_device(config=cfg).device_id for _ in range(5)]
    away = ids[0]
    net.start()
    _seal_rounds(net, ids, 3)
    assert net.run_for(20_000, stop=net.converged), _figures(net, seed)
    net.take_offline(away)
    _seal_rounds(net, ids[1:], 80, gap_ms=100)  # 320 headers, far beyond the 32-header window
    assert net.run_for(20_000, stop=net.converged), _figures(net, seed)
    served_before = net.served_pulls
    net.bring_online(away)  # restarted from its store; nobody seals while it catches up
    back_at = net.now
    assert net.run_for(60_000, stop=net.converged), _figures(net, seed)
    node = net.peers[away].node
    assert node is not None
    assert node.counters["received_announce"] == 0, "catch-up must not rely on pushes"
    assert node.counters["header_accepted"] == 4 * 80
    assert net.served_pulls > served_before, "old heights are served from the store"
    assert net.stored_duplicates() == 0 and net.out_of_order() == 0, _figures(net, seed)
    assert net.now - back_at < 15_000, f"caught up in {net.now - back_at} ms"


def test_partition_then_heal_converges(figure: FigureRecorder) -> None:
    seed = 5
    net = SimNet(seed, faults=Faults(loss_permille=50, dup_permille=50, max_latency_ms=150))
    ids = [net.add_device(config=FAST).device_id for _ in range(6)]
    net.start()
    net.partition(ids[:3], ids[3:])
    _seal_rounds(net, ids, 10)
    net.run_for(5_000)
    missing, _ = net.missing()
    assert missing > 0, "a partition must leave each side without the other's headers"
    net.heal()
    healed_at = net.now
    assert net.run_for(30_000, stop=net.converged), _figures(net, seed)
    assert net.stored_duplicates() == 0 and net.out_of_order() == 0, _figures(net, seed)
    assert net.now - healed_at < 10_000, f"converged {net.now - healed_at} ms after heal"
    assert not any(isinstance(e, ForkDetected) for p in net.peers.values() for e in p.events)
    figure(
        "network partition then heal",
        f"6 nodes, {_figures(net, seed)}; converged {net.now - healed_at} ms after heal",
        seed=seed,
    )


def test_bodies_reach_the_nodes_that_want_them_including_after_an_absence() -> None:
    seed = 6
    net = SimNet(seed, faults=Faults(loss_permille=100, dup_permille=100, max_latency_ms=100))
    holders: dict[str, str] = {}
    peers = [net.add_device() for _ in range(4)]
    ids = [p.device_id for p in peers]
    for i, p in enumerate(peers):  # each node holds replicas of the next device's blocks
        target = ids[(i + 1) % len(ids)]
        holders[p.device_id] = target
        p.config = GossipConfig(
            anti_entropy_ms=1_000, jitter_ms=200, want_bodies=lambda dev, h, t=target: dev == t
        )
    net.start()
    net.take_offline(ids[0])
    _seal_rounds(net, ids[1:], 12)
    net.bring_online(ids[0])
    _seal_rounds(net, ids, 3)

    def bodies_complete() -> bool:
        return all(
            len([k for k in p.store.blocks if k[0] == holders[p.device_id]])
            == len(net.peers[holders[p.device_id]].device.blocks)
            for p in peers
        )

    assert net.run_for(60_000, stop=lambda: net.converged() and bodies_complete()), _figures(
        net, seed
    )
    for p in peers:
        truth = net.peers[holders[p.device_id]].device.blocks
        for (dev, h), block_wire in p.store.blocks.items():
            assert dev == holders[p.device_id] and block_wire == truth[h].encode()
    assert net.stored_duplicates() == 0, _figures(net, seed)


def test_key_rotation_reaches_peers_that_never_saw_the_certificate_preloaded() -> None:
    seed = 7
    net = SimNet(seed, faults=Faults(loss_permille=100, dup_permille=100, max_latency_ms=100))
    ids = [net.add_device(config=FAST).device_id for _ in range(4)]
    net.start()
    _seal_rounds(net, ids, 3)
    net.rotate(ids[1])
    _seal_rounds(net, ids, 4)
    assert net.run_for(30_000, stop=net.converged), _figures(net, seed)
    rotated = net.peers[ids[1]].device
    assert rotated.blocks[5].header.header.key_id != rotated.blocks[0].header.header.key_id
    assert net.stored_duplicates() == 0 and net.out_of_order() == 0


def test_gossip_domains_keep_traffic_inside_each_domain() -> None:
    seed = 8
    net = SimNet(seed, faults=Faults(loss_permille=50, max_latency_ms=80))
    north = [net.add_device(["north"], config=FAST).device_id for _ in range(4)]
    south = [net.add_device(["south"], config=FAST).device_id for _ in range(4)]
    bridge = net.add_device(["north", "south"], config=FAST).device_id
    net.start()
    _seal_rounds(net, [*north, *south, bridge], 6)
    assert net.run_for(30_000, stop=net.converged), _figures(net, seed)
    crossing = {
        (a, b) for a, b in net.pairs if (a in north and b in south) or (a in south and b in north)
    }
    assert crossing == set(), f"{len(crossing)} pairs talked across domains"
    for n in north:
        assert set(net.peers[n].store.headers) <= {*north, bridge}
    assert set(net.peers[bridge].store.headers) == {*north, *south}
    sizes = {len(wire.encode(wire.Announce(bridge, (net.peers[bridge].device.header_wires()[0],))))}
    assert max(sizes) < wire.ANNOUNCE_MAX_BYTES
