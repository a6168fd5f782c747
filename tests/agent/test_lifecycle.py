"""Revocations from the authority's revocation topic (`edgefleet keys revoke --broker`), in memory:
the gossip core's simulation (agent/gossip/sim.py) and the in-memory transport. The live fleet
over Mosquitto is in test_lifecycle_cli.py. Figures are printed (pytest -s) and asserted."""

from __future__ import annotations

import json
import random
from pathlib import Path

from agent.fleet import lifecycle
from agent.gossip.actions import DeviceRevoked
from agent.gossip.sim import Faults, SimNet
from agent.gossip.tuning import GossipConfig
from agent.protocol.sim import Authority
from agent.transport import Delivery, MemoryNetwork
from agent.transport.topics import Topics
from ledger.certs import FleetRoots, verify_revocation
from ledger.identity import SigningKey, device_id_for
from tests.vectors import generate

ROUND_MS = 1_000  # one anti-entropy round
CFG = GossipConfig(anti_entropy_ms=ROUND_MS, jitter_ms=200)


def _fleet(seed: int, n: int = 8) -> tuple[SimNet, list[str], str]:
    net = SimNet(seed, faults=Faults(loss_permille=50, dup_permille=50, max_latency_ms=80))
    ids = [net.add_device(config=CFG).device_id for _ in range(n)]
    bad = ids[1]
    net.start()
    for _ in range(3):
        net.seal(bad)
        net.run_for(200)
    assert net.run_for(20_000, stop=net.converged)
    return net, ids, bad


def _told(net: SimNet, ids: list[str], bad: str) -> list[str]:
    return [
        p
        for p in ids
        if p != bad and any(isinstance(e, DeviceRevoked) for e in net.peers[p].events)
    ]


def _accepted_from(net: SimNet, ids: list[str], bad: str, height: int) -> int:
    return sum(
        1 for p in ids if p != bad for h in net.peers[p].store.headers.get(bad, {}) if h >= height
    )


def test_a_published_revocation_is_refused_everywhere_within_one_round() -> None:
    net, ids, bad = _fleet(seed=21)
    revocation = net.authority.revoke(bad, from_height=3)
    t0 = net.now
    net.publish_revocation(bad, revocation)
    assert net.run_for(ROUND_MS, stop=lambda: len(_told(net, ids, bad)) == len(ids) - 1)
    took = net.now - t0
    print(
        f"revocation topic: all {len(ids) - 1} peers hold it after {took} ms "
        f"({took / ROUND_MS:.2f} anti-entropy rounds), 5% loss and duplication on the links"
    )
    assert took <= ROUND_MS
    for _ in range(4):  # the compromised device signs on
        net.seal(bad)
        net.run_for(300)
    net.run_for(10_000)
    assert _accepted_from(net, ids, bad, 3) == 0, "a revoked header was accepted"
    kept = sum(len(net.peers[p].store.headers.get(bad, {})) for p in ids if p != bad)
    assert kept == 3 * (len(ids) - 1), "headers below the revocation height stay valid"
    stored = [
        p
        for p in ids
        if p != bad and (bad, "revocation", revocation) in net.peers[p].store.credentials
    ]
    assert len(stored) == len(ids) - 1, "each peer stores it for its next start"


def test_a_device_that_was_down_gets_the_retained_revocation_when_it_comes_back() -> None:
    net, ids, bad = _fleet(seed=22, n=5)
    away = ids[3]
    net.take_offline(away)
    net.publish_revocation(bad, net.authority.revoke(bad, from_height=3))
    net.run_for(2 * ROUND_MS)
    assert away not in _told(net, ids, bad)
    net.bring_online(away)
    assert any(isinstance(e, DeviceRevoked) for e in net.peers[away].events)
    for _ in range(3):
        net.seal(bad)
        net.run_for(300)
    net.run_for(10_000)
    assert _accepted_from(net, [away], bad, 3) == 0


def test_a_revocation_not_signed_by_the_fleet_root_is_dropped_and_charges_nobody() -> None:
    net, ids, bad = _fleet(seed=23, n=4)
    forged = Authority(random.Random(99)).revoke(bad, from_height=0)
    net.publish_revocation(bad, forged)
    net.run_for(2 * ROUND_MS)
    assert _told(net, ids, bad) == []
    for p in ids:
        node = net.peers[p].node
        assert node is not None
        assert node.counters["revocation_topic_invalid"] == 1
        assert node.key_status(bad) == (0, None)
        assert node.counters.get("penalty_invalid", 0) == 0
    net.seal(bad)
    net.run_for(5_000)
    held = [len(net.peers[p].store.headers.get(bad, {})) for p in ids if p != bad]
    assert held == [4] * (len(ids) - 1), "the device is not revoked by a forgery"


def test_key_status_shows_a_rotation_and_a_revocation() -> None:
    net, ids, bad = _fleet(seed=24, n=3)
    net.rotate(bad)
    net.seal(bad)
    assert net.run_for(20_000, stop=net.converged)
    watcher = net.peers[ids[0]].node
    assert watcher is not None
    assert watcher.key_status(bad) == (1, None)
    net.publish_revocation(bad, net.authority.revoke(bad, from_height=7))
    net.run_for(ROUND_MS)
    assert watcher.key_status(bad) == (1, 7)


def test_the_memory_network_retains_revocations_for_devices_that_attach_later() -> None:
    a_id, b_id, revoked = (device_id_for(bytes([i]) * 32) for i in (1, 2, 3))
    net = MemoryNetwork(random.Random(1))
    a = net.attach(a_id)
    quiet = net.attach(b_id, evidence=False)
    net.publish_revocation(revoked, b"revocation")
    net.deliver_all()
    expected = Delivery(f"edgefleet/v1/revocation/{revoked}", "revocation", revoked, b"revocation")
    assert a.drain() == [expected]
    assert quiet.drain() == []
    late = net.attach(device_id_for(bytes([4]) * 32))
    net.deliver_all()
    assert late.drain() == [expected]


def test_the_revocation_topic_parses_and_never_takes_a_wildcard() -> None:
    topics = Topics()
    revoked = device_id_for(bytes([5]) * 32)
    topic = topics.revocation(revoked)
    assert topic == f"edgefleet/v1/revocation/{revoked}"
    route = topics.parse(topic)
    assert route is not None and (route.kind, route.name) == ("revocation", revoked)
    assert topics.parse("edgefleet/v1/revocation/+") is None
    assert topics.revocation_filter() == "edgefleet/v1/revocation/+"


def test_what_keys_revoke_signs_is_the_documented_vector_byte_for_byte(tmp_path: Path) -> None:
    """`revocation_of_device` (docs/PROTOCOL.md 14) re-derives from the document's seeds through
    the code `edgefleet keys revoke` runs, verifies under the documented fleet root, and names
    the topic and file the document gives."""
    v = json.loads(generate.JSON_PATH.read_text())["revocation_of_device"]
    authority = SigningKey(generate.seed("authority"))
    device_id = SigningKey(generate.seed("device")).public.device_id
    rev = lifecycle.sign_and_record(
        tmp_path, authority, device_id, 5, "stolen", now_ms=generate.T0 + 4 * 86_400_000
    )
    assert rev.wire.hex() == v["wire"]
    assert (tmp_path / v["file"]).read_bytes() == bytes.fromhex(v["wire"])
    checked = verify_revocation(bytes.fromhex(v["wire"]), FleetRoots.of(authority.public))
    assert [1, checked.device_id, checked.key_id, checked.from_height, checked.reason] == v[
        "fields"
    ][:5]
    route = Topics().parse(v["topic"])
    assert route is not None and (route.kind, route.name) == ("revocation", device_id)


def test_a_rotation_request_is_countersigned_into_the_documented_rotation(tmp_path: Path) -> None:
    v = json.loads(generate.JSON_PATH.read_text())
    request = tmp_path / lifecycle.ROTATE_REQUEST
    request.write_bytes(bytes.fromhex(v["rotation_request"]["wire"]))
    half, req = lifecycle.read_rotation_request(request)
    fields = v["rotation"]["fields"]
    assert (req.device_id, req.old_key_id.hex(), req.effective_height) == (
        fields[1],
        fields[2],
        fields[4],
    )
    authority = SigningKey(generate.seed("authority"))
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "fleet-root.json").write_text(
        json.dumps({"format": "edgefleet-root/1", "public": authority.public.hex()})
    )
    assert lifecycle.countersign(tmp_path / "auth", authority, half).hex() == v["rotation"]["wire"]
