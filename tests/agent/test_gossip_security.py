"""Hostile input against the gossip core: bit flips, unenrolled and revoked devices, replays,
equivocation, garbage-sending peers and fuzzing. Figures are reported in the assert messages.
"""

from __future__ import annotations

import random

import msgpack
import pytest

from agent.gossip import wire
from agent.gossip.actions import (
    Action,
    DeviceRevoked,
    ForkDetected,
    HeadersAccepted,
    PeerMuted,
    PeerUnmuted,
    Send,
    StoreBlock,
    StoreHeaders,
)
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    EvidenceReceived,
    MessageReceived,
    PeerUp,
    RevocationKnown,
)
from agent.gossip.node import GossipNode
from agent.gossip.sim import Faults, SimNet
from agent.gossip.tuning import GossipConfig
from agent.protocol.auth import AWAIT_MS
from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from ledger.evidence import decode_evidence, make_evidence, verify_evidence
from tests.conftest import FigureRecorder

T0 = START_MS
PATIENT = GossipConfig(mute_threshold=10**9)  # so that rejection is by verification, not muting


def _world(n: int = 4, seed: int = 3) -> tuple[Authority, list[SimDevice]]:
    rng = random.Random(seed)
    authority = Authority(rng)
    devices = [SimDevice(authority, rng) for _ in range(n)]
    for d in devices[1:]:
        for k in range(6):
            d.seal(T0 + k)
    return authority, devices


def _node(
    authority: Authority,
    devices: list[SimDevice],
    config: GossipConfig = PATIENT,
    members: list[SimDevice] | None = None,
) -> GossipNode:
    ids = [d.device_id for d in (members if members is not None else devices)]
    node = GossipNode(
        devices[0].device_id,
        {"d": ids},
        authority.roots,
        random.Random(9),
        config=config,
        now_ms=T0,
        signer=devices[0],
    )
    for d in devices:
        node.handle(CertificateKnown(d.certificate), T0)
    for i in ids[1:]:
        node.handle(PeerUp(i), T0)
    return node


def _announce(sender: str, *wires: bytes) -> MessageReceived:
    return MessageReceived(sender, sealed(wire.encode(wire.Announce(sender, tuple(wires)))))


def _stored(actions: list[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, StoreHeaders | HeadersAccepted | StoreBlock)]


def _forwarded(actions: list[Action]) -> list[wire.Announce]:
    out: list[wire.Announce] = []
    for a in actions:
        if isinstance(a, Send):
            m = wire.decode(unseal(a.payload))
            if isinstance(m, wire.Announce):
                out.append(m)
    return out


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_every_single_bit_flip_of_a_header_is_never_accepted_or_forwarded(
    figure: FigureRecorder,
) -> None:
    authority, devices = _world()
    node = _node(authority, devices)
    genuine = devices[1].blocks[0].header.wire
    peer = devices[2].device_id
    accepted = forwarded = 0
    n = len(genuine) * 8
    for bit in range(n):
        out = node.handle(_announce(peer, _flip(genuine, bit)), T0)
        accepted += len(_stored(out))
        forwarded += len(_forwarded(out))
    assert (accepted, forwarded) == (0, 0), f"accepted = {accepted}, forwarded = {forwarded} of {n}"
    rejected = node.counters["header_invalid"] + node.counters["penalty_malformed"]
    assert rejected > n // 2, f"only {rejected} of {n} flips were rejected as bad"
    out = node.handle(_announce(peer, genuine), T0)  # the node was able to accept all along
    assert _stored(out) and _forwarded(out)
    figure("bad signature (every single-bit flip)", f"accepted = 0, forwarded = 0 of {n} flips")


def test_every_single_bit_flip_of_a_block_body_is_never_stored() -> None:
    authority, devices = _world()
    b = devices[1]
    config = GossipConfig(mute_threshold=10**9, want_bodies=lambda dev, h: dev == b.device_id)
    node = _node(authority, devices, config)
    node.handle(ChainLoaded(b.device_id, (b.header_wires()[0],), missing_bodies=(0,)), T0)
    genuine = b.blocks[0].encode()
    summary = sealed(
        wire.encode(
            wire.Summary(
                b.device_id, False, (wire.SummaryEntry(b.device_id, 0, 0, b.blocks[0].header.hash),)
            )
        )
    )
    stored = 0
    n = len(genuine) * 8
    out: list[Action] = []
    for bit in range(0, n, 3):
        # The request comes from the summary, or (when a flip named an unknown key) already
        # from the previous response's follow-up.
        out = [*out, *node.handle(MessageReceived(b.device_id, summary), T0 + bit)]
        (req,) = [
            m
            for m in map(wire.decode, [unseal(a.payload) for a in out if isinstance(a, Send)])
            if isinstance(m, wire.Request)
        ]
        assert isinstance(req, wire.Request) and req.bodies
        resp = wire.Response(
            b.device_id, req.request_id, b.device_id, (), (), (), (), (_flip(genuine, bit),)
        )
        out = node.handle(MessageReceived(b.device_id, sealed(wire.encode(resp))), T0 + bit)
        stored += len(_stored(out))
    assert stored == 0, f"stored = {stored} of {n // 3} flipped bodies"
    assert node.missing_bodies(b.device_id) == (0,)


def test_unenrolled_and_forged_devices_are_ignored_not_stored_not_forwarded(
    figure: FigureRecorder,
) -> None:
    authority, devices = _world()
    rng = random.Random(99)
    rogue_authority = Authority(rng)
    rogue = SimDevice(rogue_authority, rng)  # enrolled by an authority we do not trust
    rogue.seal(T0)
    node = _node(authority, devices, members=[*devices, rogue])
    relay = devices[2].device_id
    out = node.handle(_announce(rogue.device_id, rogue.header_wires()[0]), T0)
    assert not _stored(out) and not _forwarded(out)
    # Its key is unknown: nothing it sends is proven, so nothing is answered or charged (a
    # member's message waits for its credentials, docs/PROTOCOL.md 12.1.5).
    assert node.counters["held_for_credentials"] == 1
    hello = wire.Certs(rogue.device_id, (rogue.certificate,), (), ())
    out = node.handle(MessageReceived(rogue.device_id, sealed(wire.encode(hello))), T0 + 5)
    assert not _stored(out) and not _forwarded(out)
    assert node.counters["certificate_invalid"] == 1  # learned from the content: not ours
    assert node.counters["held_for_credentials"] == 2  # still unknown: still held
    node.handle_timer(T0 + 5 + AWAIT_MS)  # its credentials never came: both counted
    assert node.counters["unattributable_unknown_sender"] == 2
    assert node.counters["proven_late"] == 0
    assert node.counters["penalty_invalid"] == 0
    certs = wire.Certs(relay, (rogue.certificate,), (), ())
    out = node.handle(MessageReceived(relay, sealed(wire.encode(certs))), T0 + 6)
    out += node.handle(_announce(relay, rogue.header_wires()[0]), T0 + 7)
    assert not _stored(out) and not _forwarded(out)
    stats = node.peer_stats(relay)
    assert stats is not None and stats.invalid == 1
    assert node.head(rogue.device_id) is None, "accepted = 1 from an unenrolled device"
    figure(
        "unenrolled device, forged certificate",
        "accepted = 0, stored = 0, forwarded = 0 of 2 announces and 2 certificates; charged = 0",
        seed=99,
    )


def test_a_revoked_device_is_rejected_from_its_revocation_height_everywhere(
    figure: FigureRecorder,
) -> None:
    seed = 12
    net = SimNet(seed, faults=Faults(loss_permille=50, dup_permille=50, max_latency_ms=80))
    cfg = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200)
    ids = [net.add_device(config=cfg).device_id for _ in range(6)]
    bad = ids[1]
    net.start()
    for _ in range(3):
        net.seal(bad)
        net.run_for(200)
    assert net.run_for(20_000, stop=net.converged)
    revocation = net.authority.revoke(bad, from_height=3)
    net.feed(ids[0], RevocationKnown(revocation))  # one node hears of it; gossip does the rest
    net.run_for(3_000)
    told = [
        p
        for p in ids
        if p != bad and any(isinstance(e, DeviceRevoked) for e in net.peers[p].events)
    ]
    assert len(told) == len(ids) - 1, f"{len(told)} of {len(ids) - 1} nodes learned it"
    for _ in range(4):
        net.seal(bad)
        net.run_for(300)
    net.run_for(10_000)
    accepted = sum(
        1 for p in ids if p != bad for h in net.peers[p].store.headers.get(bad, {}) if h >= 3
    )
    kept = sum(len(net.peers[p].store.headers.get(bad, {})) for p in ids if p != bad)
    assert accepted == 0, f"accepted = {accepted} revoked headers"
    assert kept == 3 * (len(ids) - 1), "headers below the revocation height stay valid"
    figure(
        "revoked device",
        f"accepted = 0 of {4 * (len(ids) - 1)} later headers at {len(ids) - 1} peers; "
        f"{kept} earlier headers kept (5% loss, 5% duplication)",
        seed=seed,
    )


def test_replayed_old_headers_change_nothing(figure: FigureRecorder) -> None:
    authority, devices = _world()
    node = _node(authority, devices)
    for d in devices[1:]:
        node.handle(ChainLoaded(d.device_id, tuple(d.header_wires())), T0)
    before = node.heights()
    changes = 0
    replays = 0
    for d in devices[1:]:
        for w in d.header_wires():
            for sender in (devices[1].device_id, devices[2].device_id):
                changes += len(node.handle(_announce(sender, w), T0 + 1))
                replays += 1
        batch = tuple(d.header_wires()[:4])
        changes += len(node.handle(_announce(devices[3].device_id, *batch), T0 + 2))
        replays += 1
    assert changes == 0, f"state changes = {changes} over {replays} replays"
    assert node.heights() == before
    figure("replayed old block or reading", f"state changes = 0 over {replays} replays")


def _fork_setup(
    seed: int, n: int, faults: Faults, config: GossipConfig, *, evidence_topic: bool = True
) -> tuple[SimNet, list[str], SimDevice]:
    net = SimNet(seed, faults=faults, evidence_topic=evidence_topic)
    ids = [net.add_device(config=config).device_id for _ in range(n)]
    traitor = net.add_device(runs_node=False)  # a domain member that signs two histories
    net.start(preload_certificates=True)
    for _ in range(3):
        traitor.device.seal(net.now)
    for i in ids:
        net.inject(
            i,
            sealed(
                wire.encode(wire.Announce(traitor.device_id, tuple(traitor.device.header_wires())))
            ),
            src=traitor.device_id,
        )
    net.run_for(100)
    return net, ids, traitor.device


def test_equivocation_is_detected_within_one_anti_entropy_round(figure: FigureRecorder) -> None:
    cfg = GossipConfig(fanout=0, anti_entropy_ms=1_000, jitter_ms=200)  # no push: rounds only
    net, (p, q), traitor = _fork_setup(13, 2, Faults(max_latency_ms=40), cfg)
    one = traitor.seal(net.now)
    two = traitor.equivocate(3, net.now)
    net.inject(
        p,
        sealed(wire.encode(wire.Announce(traitor.device_id, (one.header.wire,)))),
        src=traitor.device_id,
    )
    net.inject(
        q,
        sealed(wire.encode(wire.Announce(traitor.device_id, (two.header.wire,)))),
        src=traitor.device_id,
    )
    start = net.now

    def detected() -> bool:
        return all(net.peers[x].store.evidence for x in (p, q))

    assert net.run_for(5_000, stop=detected)
    elapsed = net.now - start
    assert elapsed <= cfg.anti_entropy_ms + cfg.jitter_ms + 4 * 40, f"detected after {elapsed} ms"
    for x in (p, q):
        evidence = net.peers[x].store.evidence[traitor.device_id]
        ev = verify_evidence(evidence, net.authority.roots)  # offline: fleet root only
        assert {ev.a.hash, ev.b.hash} == {one.header.hash, two.header.hash}
        assert evidence == make_evidence(traitor.certificate, (), one.header, two.header).encode()
    # Nothing further is accepted from the forked device.
    nxt = traitor.seal(net.now)
    net.inject(
        p,
        sealed(wire.encode(wire.Announce(traitor.device_id, (nxt.header.wire,)))),
        src=traitor.device_id,
    )
    net.run_for(3_000)
    assert 4 not in net.peers[p].store.headers[traitor.device_id]
    figure(
        "equivocation (two blocks at one height)",
        f"detected at 2 of 2 peers {elapsed} ms after the fork (one round: "
        f"{cfg.anti_entropy_ms} ms), evidence verifies offline; later headers accepted = 0",
        seed=13,
    )


@pytest.mark.parametrize("evidence_topic", [True, False], ids=["topic", "topic-lost"])
def test_equivocation_reaches_every_honest_node_with_no_false_positive(
    evidence_topic: bool,
) -> None:
    seed = 14
    cfg = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200)
    faults = Faults(loss_permille=100, dup_permille=100, max_latency_ms=200)
    net, ids, traitor = _fork_setup(seed, 6, faults, cfg, evidence_topic=evidence_topic)
    one, two = traitor.seal(net.now), traitor.equivocate(3, net.now)
    net.inject(
        ids[0],
        sealed(wire.encode(wire.Announce(traitor.device_id, (one.header.wire,)))),
        src=traitor.device_id,
    )
    net.inject(
        ids[5],
        sealed(wire.encode(wire.Announce(traitor.device_id, (two.header.wire,)))),
        src=traitor.device_id,
    )
    start = net.now
    for _ in range(5):  # honest devices keep sealing meanwhile
        for i in ids:
            net.seal(i)
        net.run_for(300)

    def everyone_knows() -> bool:
        return all(traitor.device_id in net.peers[i].node.forked() for i in ids)  # type: ignore[union-attr]

    assert net.run_for(20_000, stop=everyone_knows), f"seed {seed}: not everyone learned"
    detections = [e for i in ids for e in net.peers[i].events if isinstance(e, ForkDetected)]
    false_positives = [e for e in detections if e.device_id != traitor.device_id]
    assert false_positives == [], f"false positives = {len(false_positives)}"
    assert len(detections) == len(ids), "detection = 100%: one ForkDetected per honest node"
    assert net.run_for(20_000, stop=lambda: net.converged(exclude=[traitor.device_id]))
    assert net.now - start < 25_000


def test_forged_evidence_is_rejected_and_its_sender_penalized() -> None:
    authority, devices = _world()
    node = _node(authority, devices)
    b = devices[1]
    real = make_evidence(b.certificate, (), b.blocks[2].header, b.equivocate(2, T0).header).encode()
    sender = devices[2].device_id
    for bit in range(0, len(real) * 8, 97):
        forged = _flip(real, bit)
        out = node.handle(
            MessageReceived(sender, sealed(wire.encode(wire.EvidenceMessage(sender, forged)))), T0
        )
        assert not any(isinstance(a, ForkDetected) for a in out)
    assert node.forked() == frozenset()
    stats = node.peer_stats(sender)
    assert stats is not None and stats.invalid + stats.malformed == len(range(0, len(real) * 8, 97))
    out = node.handle(
        MessageReceived(sender, sealed(wire.encode(wire.EvidenceMessage(sender, real)))), T0
    )
    assert [a.device_id for a in out if isinstance(a, ForkDetected)] == [b.device_id]
    assert decode_evidence(real).device_id == b.device_id


def test_a_peer_that_sends_garbage_is_muted_then_forgiven() -> None:
    authority, devices = _world()
    cfg = GossipConfig(mute_ms=30_000)
    node = _node(authority, devices, cfg)
    bad = devices[2].device_id
    rng = random.Random(4)
    # Random bytes in its name prove nothing: counted, charged to nobody.
    for _ in range(8):
        assert node.handle(MessageReceived(bad, rng.randbytes(40)), T0) == []
    assert node.counters["unattributable"] == 8
    assert node.peer_stats(bad) == node.peer_stats(devices[1].device_id)
    muted_at = None
    for k in range(8):  # garbage it signed itself: a SUMMARY of 4 fields
        garbage = sealed(msgpack.packb([2, wire.SUMMARY, bad, rng.randbytes(8)]))
        out = node.handle(MessageReceived(bad, garbage), T0)
        if any(isinstance(a, PeerMuted) for a in out):
            muted_at = k
    assert muted_at == 4, "muted at the 5th malformed message (5 x 10 points = threshold 50)"
    valid = _announce(bad, devices[1].header_wires()[0])
    assert node.handle(valid, T0 + 10) == []
    stats = node.peer_stats(bad)
    assert stats is not None and stats.dropped_muted == 4 and stats.malformed == 5
    assert bad not in node.peers_available()
    out = node.handle_timer(T0 + 4 + 30_000)
    assert PeerUnmuted(bad) in out
    assert _stored(node.handle(valid, T0 + 30_010))
    # A proven message of device 3 arriving as if from ``bad``: a replay, charging nobody.
    spoof = MessageReceived(bad, sealed(wire.encode(wire.Summary(devices[3].device_id, False, ()))))
    node.handle(spoof, T0 + 30_020)
    assert node.counters["sender_mismatch"] == 1
    for d in (bad, devices[3].device_id):
        stats = node.peer_stats(d)
        assert stats is not None and stats.malformed == (5 if d == bad else 0)


def _captured_traffic(seed: int) -> list[bytes]:
    net = SimNet(seed, faults=Faults(max_latency_ms=30))
    captured: list[bytes] = []
    transmit = net._transmit

    def capture(src: str, dst: str, payload: bytes, *, broadcast: bool = False) -> None:
        captured.append(payload)
        transmit(src, dst, payload, broadcast=broadcast)

    net._transmit = capture  # type: ignore[method-assign]
    ids = [
        net.add_device(config=GossipConfig(anti_entropy_ms=500, jitter_ms=100)).device_id
        for _ in range(3)
    ]
    net.start()
    for _ in range(3):
        for i in ids:
            net.seal(i)
        net.run_for(600)
    return captured


def test_fuzz_handle_never_raises_and_the_node_keeps_working() -> None:
    authority, devices = _world()
    node = _node(authority, devices, GossipConfig(mute_threshold=10**9))
    traffic = _captured_traffic(21)
    kinds = {wire.decode(unseal(p)).__class__ for p in traffic}
    assert len(kinds) >= 4, kinds
    rng = random.Random(31)
    senders = [d.device_id for d in devices[1:]]
    inputs = 0
    for i in range(6_000):
        choice = i % 4
        if choice == 0:
            data = rng.randbytes(rng.randrange(0, 200))
        elif choice == 1:
            mutable = bytearray(rng.choice(traffic))
            for _ in range(rng.randrange(1, 6)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            data = bytes(mutable)
        elif choice == 2:  # a well-formed envelope with a random body of plausible shapes
            body = [
                rng.choice([0, 1, 2**40, b"", rng.randbytes(32), "x", [], [b"\x92"]])
                for _ in range(rng.randrange(1, 8))
            ]
            envelope = [2, rng.randrange(1, 7), rng.choice(senders), *body]
            data = sealed(msgpack.packb(envelope, use_bin_type=True))  # proven garbage
        else:  # a real message re-sent with another sender
            m = bytearray(rng.choice(traffic))
            data = bytes(m[:3]) + b"\xba" + rng.choice(senders).encode() + bytes(m[30:])
        peer = rng.choice([None, *senders])
        node.handle(MessageReceived(peer, data), T0 + i)
        if i % 7 == 0:  # the evidence topic carries bare evidence bytes from anyone
            node.handle(EvidenceReceived(data), T0 + i)
        inputs += 1
        if i % 500 == 0:
            node.handle_timer(T0 + i)
    malformed = node.counters["penalty_malformed"] + node.counters["unattributable"]
    assert malformed > inputs // 3, f"crashes = 0 over {inputs} inputs; {malformed} malformed"
    fresh = devices[3].header_wires()[0]
    if node.head(devices[3].device_id) is None:
        assert _stored(node.handle(_announce(devices[1].device_id, fresh), T0 + 10_000))
