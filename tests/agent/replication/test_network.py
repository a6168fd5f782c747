"""Ten replication nodes wired directly (no transport), simulated time: placement across sites,
a holder that leaves, repair back to R copies, restarts from disk, quotas that fill up."""

from __future__ import annotations

import random
from dataclasses import replace

from agent.replication.sim import ReplicationNet
from agent.replication.tuning import ReplicationConfig
from ledger.receipt import verify_receipt

SITES = ["north"] * 3 + ["south"] * 3 + ["east"] * 2 + ["west"] * 2
R = 3
BASE = ReplicationConfig(
    rng=random.Random(0),
    repair_delay_ms=300_000,
    audit_interval_ms=30_000,
    advert_interval_ms=30_000,
)


def settle(net: ReplicationNet, owners: list[str], blocks: int) -> None:
    net.run_for(2_000)  # adverts go round before the first block
    for _ in range(blocks):
        for o in owners:
            net.seal(o)
        net.run_for(1_000)
    net.run_for(20_000)


def check_replicated(net: ReplicationNet, *, distinct_sites: bool) -> int:
    """Every live owner's block: R healthy holders per the owner, each online, holding the exact
    bytes, with a receipt that verifies under the holder's key. Returns the blocks checked."""
    checked = 0
    for owner_id, h in net.holders.items():
        if not h.online:
            continue
        for height in range(len(h.device.blocks)):
            healthy = h.node.healthy_holders(height)
            assert len(healthy) == R, (owner_id, height, healthy)
            assert set(healthy) <= set(net.live_copies(owner_id, height))
            receipts = h.node.holders(height)
            for holder in healthy:
                r = verify_receipt(receipts[holder], net.holders[holder].device.key.public)
                assert r.receipt.block_hash == h.device.blocks[height].header.hash
            if distinct_sites:
                assert len({net.holders[x].site for x in healthy}) == R
            checked += 1
    return checked


def test_blocks_land_on_three_sites_and_repair_restores_r_after_a_holder_leaves() -> None:
    net = ReplicationNet(SITES, seed=7, config=BASE)
    net.start()
    owners = net.ids
    settle(net, owners, 3)
    assert check_replicated(net, distinct_sites=True) == 30
    # the busiest holder leaves for good
    load = {i: sum(len(h.disk.replicas) for h in [net.holders[i]]) for i in owners}
    leaver = max(sorted(load), key=lambda i: load[i])
    assert load[leaver] > 0
    net.take_offline(leaver)
    net.run_for(BASE.repair_delay_ms - 10_000)
    short = [
        (o, hgt)
        for o, h in net.holders.items()
        if h.online
        for hgt in range(3)
        if len(net.live_copies(o, hgt)) < R
    ]
    assert short  # before the delay nothing moved: its copies are missing
    net.run_for(60_000)
    assert check_replicated(net, distinct_sites=True) == 27
    assert all(leaver not in net.live_copies(o, hgt) for o in owners for hgt in range(3))


def test_a_restarted_owner_and_holder_pick_up_from_their_disks() -> None:
    net = ReplicationNet(SITES, seed=8, config=BASE)
    net.start()
    settle(net, net.ids, 2)
    node = net.ids[4]
    sent_before = net.holders[node].node.counters["sent_store"]
    assert sent_before > 0
    net.take_offline(node)
    net.run_for(5_000)
    net.bring_online(node)  # memory lost; receipts and replicas come back from its disk
    net.run_for(30_000)
    restarted = net.holders[node].node
    assert restarted.counters["sent_store"] == 0  # it knew where its blocks live
    assert restarted.used_bytes() == net.holders[node].disk.replica_bytes()
    assert check_replicated(net, distinct_sites=True) == 20


def test_quotas_that_fill_up_are_respected_and_sites_share_when_they_must() -> None:
    size = 366
    quotas = [8 * size] * 10
    net = ReplicationNet(SITES, seed=9, config=BASE, quotas=quotas)
    net.start()
    settle(net, net.ids[:5], 4)  # 20 blocks, 60 copies over 10 holders of 8 each
    for h in net.holders.values():
        assert h.disk.replica_bytes() <= h.config.quota_bytes
        assert h.node.used_bytes() == h.disk.replica_bytes()
    owners_checked = 0
    for o in net.ids[:5]:
        node = net.holders[o].node
        for height in range(4):
            assert len(node.healthy_holders(height)) == R
            assert set(node.healthy_holders(height)) <= set(net.live_copies(o, height))
            owners_checked += 1
    assert owners_checked == 20


def test_a_single_site_domain_still_gets_r_copies() -> None:
    net = ReplicationNet(["home"] * 5, seed=10, config=replace(BASE, replicas=4))
    net.start()
    settle(net, net.ids, 2)
    for o, h in net.holders.items():
        for height in range(2):
            assert len(h.node.healthy_holders(height)) == 4
            assert len(net.live_copies(o, height)) == 4
