"""The attacks of issue 13 replayed against the gossip core (in memory, simulated time, seeded):
an attacker with nothing but a connection names honest devices as senders, flips bits of their
real messages, reflects requests onto a victim, floods as a proven peer, or speaks version 1.
Nobody honest is charged, muted or cut off; unproven messages are counted ``unattributable``;
answers never exceed what the attacker sent (amplification <= 1) or a proven peer's budget.
"""

from __future__ import annotations

import random
from pathlib import Path

from agent.config.devices import load_fleet
from agent.gossip import wire
from agent.gossip.actions import Action, Broadcast, PeerMuted, Send
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    MessageReceived,
    PeerUp,
    RotationKnown,
)
from agent.gossip.node import GossipNode
from agent.gossip.sim import Faults, SimNet
from agent.gossip.tuning import GossipConfig
from agent.protocol import auth
from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from ledger import codec
from tests.agent.runner_helpers import HOUR_MS, REPO, run_fleet

T0 = START_MS
FAST = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200, request_timeout_ms=1_000)


def forged(body: bytes, victim: SimDevice, rng: random.Random) -> bytes:
    """``body`` with an authenticator that names the victim's real key id but whose signature
    the attacker could only guess."""
    return bytes([body[0] + 1]) + body[1:] + b"\xc4\x48" + victim.key.key_id + rng.randbytes(64)


def _world(n: int = 5, seed: int = 11) -> tuple[Authority, list[SimDevice]]:
    rng = random.Random(seed)
    authority = Authority(rng)
    devices = [SimDevice(authority, rng) for _ in range(n)]
    for d in devices[1:]:
        for k in range(8):
            d.seal(T0 + k)
    return authority, devices


def _node(
    authority: Authority,
    devices: list[SimDevice],
    config: GossipConfig = FAST,
    known: list[SimDevice] | None = None,
) -> GossipNode:
    ids = [d.device_id for d in devices]
    node = GossipNode(
        ids[0], {"d": ids}, authority.roots, random.Random(9), config=config, signer=devices[0]
    )
    for d in devices if known is None else known:
        node.handle(CertificateKnown(d.certificate), T0)
    for i in ids[1:]:
        node.handle(PeerUp(i), T0)
    return node


def _sends(out: list[Action]) -> list[Send]:
    return [a for a in out if isinstance(a, Send)]


def _mutes(net: SimNet) -> list[PeerMuted]:
    return [e for p in net.peers.values() for e in p.events if isinstance(e, PeerMuted)]


def test_forged_envelopes_naming_a_device_mute_it_nowhere_and_its_chain_spreads() -> None:
    """Issue 13: six 73-byte envelopes naming fridge-1, with content that fails, published on
    its domain every minute, kept its chain at height 0 everywhere. Now they prove nothing."""
    net = SimNet(3, faults=Faults(max_latency_ms=30))
    ids = [net.add_device(config=FAST).device_id for _ in range(6)]
    net.start(preload_certificates=True)
    fridge = net.peers[ids[1]].device
    rng = random.Random(5)
    injected = 0
    for _minute in range(3):  # every minute
        for i in ids:
            net.seal(i)
        for k in range(6):
            bodies = [
                wire.encode(wire.Summary(fridge.device_id, True, ())),  # forged signature
                codec.encode([2, wire.SUMMARY, fridge.device_id, 7]),  # malformed, forged
            ]
            for dst in ids:
                if dst == fridge.device_id:
                    continue
                for body in bodies:
                    net.inject(dst, forged(body, fridge, rng), delay_ms=k)
                    injected += 1
                # content that fails, with no authenticator: its header, one bit off
                bad = bytearray(fridge.blocks[-1].header.wire)
                bad[-1 - k] ^= 1
                body = wire.encode(wire.Announce(fridge.device_id, (bytes(bad),)))
                net.inject(dst, auth.seal_unsigned(body), delay_ms=k)
                injected += 1
        net.run_for(60_000)
    assert _mutes(net) == []
    for p in net.peers.values():
        assert p.node is not None
        if p.device_id == fridge.device_id:
            continue
        stats = p.node.peer_stats(fridge.device_id)
        assert stats is not None and (stats.malformed, stats.invalid, stats.mutes) == (0, 0, 0)
        assert p.node.head(fridge.device_id) is not None
    assert net.converged()
    unattributable = sum(p.node.counters["unattributable"] for p in net.peers.values() if p.node)
    assert unattributable == injected


def _captured(seed: int) -> tuple[SimNet, list[tuple[str, bytes]]]:
    net = SimNet(seed, faults=Faults(max_latency_ms=30))
    captured: list[tuple[str, bytes]] = []
    transmit = net._transmit

    def capture(src: str, dst: str, payload: bytes, *, broadcast: bool = False) -> None:
        captured.append((dst, payload))
        transmit(src, dst, payload, broadcast=broadcast)

    net._transmit = capture  # type: ignore[method-assign]
    ids = [net.add_device(config=FAST).device_id for _ in range(4)]
    net.start(preload_certificates=True)
    for _ in range(3):
        for i in ids:
            net.seal(i)
        net.run_for(1_500)
    net._transmit = transmit  # type: ignore[method-assign]
    return net, captured


def test_bit_flipped_copies_of_real_messages_charge_nobody_and_are_counted() -> None:
    """Issue 13: 3,000 bit-flipped copies of real messages muted an honest fridge fleet-wide."""
    net, captured = _captured(8)
    kinds = {unseal(p)[2] for _, p in captured}
    assert {wire.ANNOUNCE, wire.SUMMARY, wire.REQUEST, wire.RESPONSE} <= kinds
    rng = random.Random(2)

    def refused() -> int:
        return sum(
            p.node.counters["unattributable"] + p.node.counters["old_version"]
            for p in net.peers.values()
            if p.node is not None
        )

    before = refused()
    flips = 3_000
    for k in range(flips):
        dst, payload = captured[rng.randrange(len(captured))]
        flipped = bytearray(payload)
        bit = rng.randrange(len(flipped) * 8)
        flipped[bit // 8] ^= 1 << (bit % 8)
        net.inject(dst, bytes(flipped), delay_ms=k % 50)
    net.run_for(100)
    assert refused() - before == flips  # every flipped copy is refused, counted once
    for p in net.peers.values():
        assert p.node is not None
        for q in net.peers:
            stats = p.node.peer_stats(q)
            if stats is not None:
                assert (stats.malformed, stats.invalid, stats.mutes) == (0, 0, 0), (p, q)
    assert _mutes(net) == []


def test_a_spoofed_request_naming_a_victim_draws_no_answer() -> None:
    """Issue 13: spoofed REQUESTs made peers answer into a victim's inbox, 75x amplified."""
    authority, devices = _world()
    node = _node(authority, devices)
    victim = devices[1]
    rng = random.Random(3)
    received = sent = 0
    for rid in range(200):
        body = wire.encode(wire.Request(victim.device_id, rid, devices[2].device_id, 0, 7, 3))
        for payload in (forged(body, victim, rng), auth.seal_unsigned(body)):
            received += len(payload)
            out = node.handle(MessageReceived(None, payload), T0 + rid)
            sent += sum(len(s.payload) for s in _sends(out))
            assert not [a for a in out if isinstance(a, Send | Broadcast)], out
    assert sent == 0 <= received
    assert node.counters["unattributable"] == 400
    stats = node.peer_stats(victim.device_id)
    assert stats is not None and (stats.malformed, stats.invalid) == (0, 0)


def test_a_members_messages_before_its_credentials_wait_for_them_and_forgeries_still_count() -> (
    None
):
    """A member on another machine is known by its id until its CERTS: what it sends before
    them waits for them (held, not counted unproven: an honest fleet shows no trouble), and is
    judged when they come: its own messages are proven then, a forgery in its name is not."""
    authority, devices = _world()
    member = devices[3]
    node = _node(authority, devices, known=[d for d in devices if d is not member])
    honest = sealed(wire.encode(wire.Summary(member.device_id, True, ())))
    fake = forged(wire.encode(wire.Summary(member.device_id, False, ())), member, random.Random(6))
    for k, payload in enumerate((honest, fake)):
        out = node.handle(MessageReceived(None, payload), T0 + 1 + k)
        assert not [s for s in _sends(out) if s.payload in (honest, fake)]
    assert node.counters["held_for_credentials"] == 2
    assert node.counters["unattributable"] == 0 and node.counters["proven_late"] == 0
    assert (node.next_deadline() or 0) <= T0 + 1 + auth.AWAIT_MS
    certs = wire.Certs(member.device_id, (member.certificate,), (), ())
    node.handle(MessageReceived(None, sealed(wire.encode(certs))), T0 + 10)  # its hello
    assert node.counters["proven_late"] == 1  # its own message, proven by its key
    assert node.counters["unattributable"] == 1  # the forgery, under the key it does not hold
    assert node.counters["unattributable_bad_signature"] == 1
    assert node.counters["unattributable_unknown_sender"] == 0
    node.handle_timer(T0 + 10 + auth.AWAIT_MS)  # nothing held is counted twice
    assert node.counters["unattributable"] == 1 and node.counters["proven_late"] == 1


def test_unproven_traffic_naming_a_device_whose_key_is_unknown_never_draws_more_bytes() -> None:
    """The one answer unproven traffic can draw: a hello to a member whose key is unknown (so
    it can greet back with its credentials), sent only once the unproven bytes received in its
    name cover it, and at most once per anti-entropy interval."""
    authority, devices = _world()
    stranger = devices[3]  # a domain member whose certificate the node does not hold yet
    node = _node(authority, devices, known=[d for d in devices if d is not stranger])
    rng = random.Random(4)
    received = sent = 0
    for k in range(300):
        body = wire.encode(wire.Summary(stranger.device_id, True, ()))
        payload = forged(body, stranger, rng)
        received += len(payload)
        out = node.handle(MessageReceived(None, payload), T0 + 10 * k)
        sent += sum(len(s.payload) for s in _sends(out))
    assert 0 < sent <= received
    # the first few waited for its credentials (held), the rest were counted at once
    assert node.counters["held_for_credentials"] == auth.AWAIT_PER_SENDER
    assert node.counters["unattributable_unknown_sender"] == 300 - auth.AWAIT_PER_SENDER
    node.handle_timer(T0 + 3_000 + auth.AWAIT_MS)  # its credentials never came
    assert node.counters["unattributable_unknown_sender"] == 300
    assert node.counters["proven_late"] == 0
    hellos = node.counters["hellos_sent"] - 4  # the four greetings of the peers coming up
    assert 1 <= hellos <= 300 * 10 // FAST.anti_entropy_ms + 1


def test_a_proven_peer_flooding_requests_draws_at_most_its_budget() -> None:
    authority, devices = _world()
    budget = GossipConfig(
        anti_entropy_ms=1_000, jitter_ms=200, answer_budget_bytes=20_000, answer_interval_ms=10_000
    )
    node = _node(authority, devices, budget)
    asker, target = devices[1], devices[2]
    # The node holds the target's chain, so every REQUEST for it draws a RESPONSE of headers.
    node.handle(ChainLoaded(target.device_id, tuple(target.header_wires())), T0)
    answered = 0
    for rid in range(400):
        req = wire.Request(asker.device_id, rid, target.device_id, 0, 7, 0)
        out = node.handle(MessageReceived(None, sealed(wire.encode(req))), T0 + rid)
        answered += sum(len(s.payload) for s in _sends(out) if s.peer_id == asker.device_id)
    assert answered <= budget.answer_budget_bytes
    assert answered > budget.answer_budget_bytes // 2  # it was answered, up to its budget
    assert node.counters["answers_over_budget"] > 0
    # A new interval, a new budget.
    req = wire.Request(asker.device_id, 9_999, target.device_id, 0, 7, 0)
    out = node.handle(MessageReceived(None, sealed(wire.encode(req))), T0 + 10_400)
    assert [s.peer_id for s in _sends(out)] == [asker.device_id]


def test_a_replayed_request_of_a_proven_peer_is_answered_once() -> None:
    """Found rerunning issue 13 on Mosquitto: a captured real REQUEST, replayed by anyone, drew
    the whole RESPONSE again (a few hundred bytes of request, up to a window of headers and
    bodies back), each time, up to the requester's answer budget. A signed REQUEST is now
    answered once: its replays draw nothing and are counted."""
    authority, devices = _world()
    node = _node(authority, devices)
    asker, target = devices[1], devices[2]
    node.handle(ChainLoaded(target.device_id, tuple(target.header_wires())), T0)
    req = sealed(wire.encode(wire.Request(asker.device_id, 7, target.device_id, 0, 7, 0)))
    first = _sends(node.handle(MessageReceived(None, req), T0))
    assert [s.peer_id for s in first] == [asker.device_id]
    replayed = drawn = 0
    for k in range(50):
        replayed += len(req)
        drawn += sum(
            len(s.payload) for s in _sends(node.handle(MessageReceived(None, req), T0 + k))
        )
    assert drawn == 0 < replayed, f"{drawn} bytes drawn by {replayed} bytes of replays"
    assert node.counters["replayed_request"] == 50
    stats = node.peer_stats(asker.device_id)
    assert stats is not None and (stats.malformed, stats.invalid, stats.mutes) == (0, 0, 0)
    # Its next request (a new id, so new bytes) is answered as ever.
    nxt = sealed(wire.encode(wire.Request(asker.device_id, 8, target.device_id, 0, 7, 0)))
    assert [s.peer_id for s in _sends(node.handle(MessageReceived(None, nxt), T0 + 60))] == [
        asker.device_id
    ]


def test_version_1_messages_are_refused_and_counted_never_mixed_in() -> None:
    authority, devices = _world()
    node = _node(authority, devices)
    b = devices[1]
    v1 = codec.encode([1, wire.ANNOUNCE, b.device_id, [b.header_wires()[0]]])
    out = node.handle(MessageReceived(None, v1), T0)
    assert out == []
    assert node.counters["old_version"] == 1
    assert node.head(b.device_id) is None
    stats = node.peer_stats(b.device_id)
    assert stats is not None and (stats.malformed, stats.invalid, stats.messages) == (0, 0, 0)


def test_a_replayed_message_that_cost_its_sender_costs_it_once() -> None:
    authority, devices = _world()
    node = _node(authority, devices, GossipConfig(anti_entropy_ms=1_000, jitter_ms=200))
    bad = devices[2]
    garbage = sealed(codec.encode([2, wire.SUMMARY, bad.device_id, 7]))  # it did sign this
    for k in range(20):
        node.handle(MessageReceived(None, garbage), T0 + k)
    stats = node.peer_stats(bad.device_id)
    assert stats is not None and stats.malformed == 1 and stats.mutes == 0
    assert node.counters["replayed_charged"] == 19


def test_a_hello_from_a_member_whose_certificate_is_unknown_teaches_it_and_is_greeted_back() -> (
    None
):
    authority, devices = _world()
    newcomer = devices[4]
    node = _node(authority, devices, known=[d for d in devices if d is not newcomer])
    hello = wire.Certs(newcomer.device_id, (newcomer.certificate,), (), ())
    out = node.handle(MessageReceived(None, sealed(wire.encode(hello))), T0)
    assert node.counters["unattributable"] == 0  # proven by the credentials it carried
    assert node.counters["certificate_new"] == len(devices)  # the newcomer's, learned now
    greeted = [wire.decode(unseal(s.payload)) for s in _sends(out)]
    assert greeted == [wire.Certs(devices[0].device_id, (devices[0].certificate,), (), ())]
    # From now on its messages are proven; a forged one still is not.
    summary = wire.encode(wire.Summary(newcomer.device_id, False, ()))
    node.handle(MessageReceived(None, sealed(summary)), T0 + 1)
    node.handle(MessageReceived(None, forged(summary, newcomer, random.Random(1))), T0 + 2)
    assert node.counters["received_summary"] == 1
    assert node.counters["unattributable_bad_signature"] == 1


def test_after_a_rotation_its_messages_are_unproven_until_its_hello_brings_the_rotation() -> None:
    authority, devices = _world()
    node = _node(authority, devices)
    rotating = devices[1]
    rotation = rotating.rotate(authority, random.Random(6), T0)
    summary = wire.encode(wire.Summary(rotating.device_id, False, ()))
    node.handle(MessageReceived(None, sealed(summary)), T0 + 1)  # signed with the new key
    assert node.counters["unattributable_unknown_key"] == 1
    hello = wire.Certs(rotating.device_id, (rotating.certificate,), (rotation,), ())
    node.handle(MessageReceived(None, sealed(wire.encode(hello))), T0 + 2)
    assert node.counters["rotation_new"] == 1 and node.counters["received_certs"] == 1
    node.handle(MessageReceived(None, sealed(summary)), T0 + 3)
    assert node.counters["received_summary"] == 1
    assert node.counters["unattributable"] == 1  # the first SUMMARY only


def _provisioned_node(devices: list[SimDevice], authority: Authority) -> GossipNode:
    """``devices[0]``'s core, given every certificate by the fleet (``provisioned``)."""
    ids = [d.device_id for d in devices]
    node = GossipNode(
        ids[0], {"d": ids}, authority.roots, random.Random(9), config=FAST, signer=devices[0]
    )
    for d in devices:
        node.handle(CertificateKnown(d.certificate, provisioned=True), T0)
    return node


def _certs_to(out: list[Action]) -> dict[str, wire.Message]:
    sent = [(s.peer_id, wire.decode(unseal(s.payload))) for s in _sends(out)]
    certs = [(p, m) for p, m in sent if isinstance(m, wire.Certs)]
    assert len({p for p, _ in certs}) == len(certs), "two CERTS to one peer"
    return dict(certs)


def test_peers_the_fleet_gave_each_others_certificates_send_no_hello() -> None:
    """Enrolled in one data dir, each device is given every member's certificate at start, and
    every member ours: a hello to each peer coming up (77,500 at the start of 2,500 devices in
    domains of 32, each checked by its receiver) teaches nobody anything. Certificates from
    the store or another machine still draw a hello."""
    authority, devices = _world()
    node = _provisioned_node(devices, authority)
    out = [a for d in devices[1:] for a in node.handle(PeerUp(d.device_id), T0)]
    assert _certs_to(out) == {}
    assert node.counters["hellos_skipped"] == 4 and node.counters["hellos_sent"] == 0
    stored = _node(authority, devices)  # the same certificates, not from the fleet
    assert stored.counters["hellos_sent"] == 4


def test_a_provisioned_peer_that_greets_first_is_greeted_back_once() -> None:
    """A peer that lacks our certificate after all (its data dir enrolled it alone) greets us:
    the hello we skipped is sent then, once."""
    authority, devices = _world()
    node = _provisioned_node(devices, authority)
    peer = devices[2]
    node.handle(PeerUp(peer.device_id), T0)
    hello = sealed(wire.encode(wire.Certs(peer.device_id, (peer.certificate,), (), ())))
    out = node.handle(MessageReceived(None, hello), T0 + 1)
    me = devices[0]
    assert _certs_to(out) == {peer.device_id: wire.Certs(me.device_id, (me.certificate,), (), ())}
    again = node.handle(MessageReceived(None, hello), T0 + 2)
    assert _certs_to(again) == {}


def test_after_a_rotation_provisioned_peers_get_the_hello_that_carries_it() -> None:
    authority, devices = _world()
    node = _provisioned_node(devices, authority)
    me = devices[0]
    for k in range(3):
        me.seal(T0 + k)
    rotation = me.rotate(authority, random.Random(6), T0)
    node.handle(RotationKnown(rotation), T0)
    assert node.counters["rotation_new"] == 1
    out = node.handle(PeerUp(devices[1].device_id), T0 + 1)
    assert _certs_to(out) == {
        devices[1].device_id: wire.Certs(me.device_id, (me.certificate,), (rotation,), ())
    }


def test_an_honest_fleet_counts_no_message_unproven(tmp_path: Path) -> None:
    """The sample fleet, on simulated time: every message is proven. Its own broadcasts come
    back from the broker (MQTT delivers a publish to its publisher's subscriptions too): they
    are dropped as our own, not counted unproven, so the operator's figure stays 0 until
    something is wrong."""
    cfg = load_fleet(REPO / "devices.yaml")
    result = run_fleet(
        cfg, data=tmp_path / "data", for_ms=2 * HOUR_MS, view=False, simulated_network=True
    )
    assert result.snapshot().unproven == 0
    # Every device was given every member's certificate by the fleet: nobody said hello.
    counters = [a.node.counters for a in result.devices.values()]
    assert sum(c["hellos_sent"] for c in counters) == 0
    assert sum(c["hellos_skipped"] for c in counters) > 0
    echoed = sum(a.node.counters.get("dropped_own", 0) for a in result.devices.values())
    assert echoed > 0, "no device saw its own broadcast come back: the case is not exercised"


def test_a_member_certified_by_another_fleet_is_never_learned_nor_heard() -> None:
    """A device on another machine is known only by its id (devices.yaml's ``id:``) until its
    hello: a certificate that does not chain to the fleet root teaches nothing, draws no
    greeting, and everything sent in that id stays unproven."""
    authority, devices = _world(4)
    outsider = SimDevice(Authority(random.Random(99)), random.Random(98))  # another fleet's
    for k in range(4):
        outsider.seal(T0 + k)
    node = _node(authority, [*devices, outsider], known=devices)
    hello = wire.Certs(outsider.device_id, (outsider.certificate,), (), ())
    out = node.handle(MessageReceived(None, sealed(wire.encode(hello))), T0)
    assert node.counters["certificate_invalid"] == 1
    # At most our own hello (public, and no more bytes than it sent): it may be a member whose
    # first message was lost, so it is asked, never believed.
    answers = [s for s in _sends(out) if s.peer_id == outsider.device_id]
    assert sum(len(s.payload) for s in answers) <= len(sealed(wire.encode(hello)))
    own = wire.Certs(devices[0].device_id, (devices[0].certificate,), (), ())
    assert all(wire.decode(unseal(s.payload)) == own for s in answers)
    announce = wire.Announce(outsider.device_id, tuple(outsider.header_wires()))
    node.handle(MessageReceived(None, sealed(wire.encode(announce))), T0 + 1)
    assert node.head(outsider.device_id) is None
    node.handle_timer(T0 + 1 + auth.AWAIT_MS)  # held for credentials that never came
    assert node.counters["received_announce"] == 0 and node.counters["unattributable"] >= 1
    assert node.counters["proven_late"] == 0


def test_a_bit_flipped_broadcast_is_refused_by_every_receiver_whose_process_saw_the_real_one() -> (
    None
):
    """The devices of one process share what a domain broadcast's bytes alone decide (its
    authenticator's verdict, its decoding, its header's signature check): a copy one bit off is
    other bytes, and every receiver refuses it, before and after the real one was accepted."""
    authority, devices = _world(6)
    sender = devices[5]
    receivers = [_node(authority, [d] + [e for e in devices if e is not d]) for d in devices[:4]]

    def announce(height: int) -> bytes:
        wire_ = sender.blocks[height].header.wire
        return auth.seal_unsigned(wire.encode(wire.Announce(sender.device_id, (wire_,))))

    def heights() -> list[int | None]:
        heads = [n.head(sender.device_id) for n in receivers]
        return [None if h is None else h.header.height for h in heads]

    for height in (0, 1):
        real = announce(height)
        for bit in range(len(real) * 8):
            flipped = bytearray(real)
            flipped[bit // 8] ^= 1 << (bit % 8)
            for node in receivers:
                node.handle(MessageReceived(None, bytes(flipped), broadcast=True), T0 + 1)
        assert heights() == [None if height == 0 else 0] * 4, height
        for node in receivers:
            node.handle(MessageReceived(None, real, broadcast=True), T0 + 2)
        assert heights() == [height] * 4
    for node in receivers:
        stats = node.peer_stats(sender.device_id)
        assert stats is not None and (stats.malformed, stats.invalid, stats.mutes) == (0, 0, 0)
