"""One GossipNode driven input by input: push, pull, serving, timers, domains, bodies."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.gossip import wire
from agent.gossip.actions import (
    Action,
    BlockAccepted,
    Broadcast,
    HeadersAccepted,
    Send,
    ServePull,
    StoreBlock,
    StoreHeaders,
)
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    DomainChanged,
    MessageReceived,
    OwnBlockSealed,
    PeerDown,
    PeerUp,
    PullLoaded,
    RestoreRequested,
)
from agent.gossip.node import GossipNode
from agent.gossip.summaries import greeting_score
from agent.gossip.tuning import GossipConfig
from agent.protocol.auth import seal_unsigned
from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from ledger.block import Block, decode_block
from ledger.errors import UsageError

T0 = START_MS


@dataclass
class World:
    authority: Authority
    devices: list[SimDevice]

    def id(self, i: int) -> str:
        return self.devices[i].device_id

    def node(
        self,
        *,
        up: tuple[int, ...] = (1, 2, 3),
        config: GossipConfig | None = None,
        members: tuple[int, ...] = (0, 1, 2, 3),
    ) -> GossipNode:
        node = GossipNode(
            self.id(0),
            {"d": [self.id(i) for i in members]},
            self.authority.roots,
            random.Random(5),
            config=config,
            now_ms=T0,
            signer=self.devices[0],
        )
        for d in self.devices:
            node.handle(CertificateKnown(d.certificate), T0)
        for i in up:
            node.handle(PeerUp(self.id(i)), T0)
        return node


@pytest.fixture
def world() -> World:
    rng = random.Random(11)
    authority = Authority(rng)
    devices = [SimDevice(authority, rng) for _ in range(5)]
    for d in devices[1:]:
        for k in range(12):
            d.seal(T0 + k)
    return World(authority, devices)


def msg_from(sender: str, msg: wire.Message) -> MessageReceived:
    return MessageReceived(sender, sealed(wire.encode(msg)))


def sent(actions: list[Action]) -> list[tuple[str, wire.Message]]:
    return [(a.peer_id, wire.decode(unseal(a.payload))) for a in actions if isinstance(a, Send)]


def of_type(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def test_own_block_is_broadcast_once_on_the_fewest_covering_domains(world: World) -> None:
    ids = [world.id(i) for i in range(5)]
    node = GossipNode(
        ids[0],
        {
            "home": [ids[0], ids[1]],  # inside the street: reached by the street's broadcast
            "street": ids[:4],
            "chain": [ids[0], ids[4]],  # reaches device 4, which the street does not
        },
        world.authority.roots,
        random.Random(5),
        now_ms=T0,
        signer=world.devices[0],
    )
    for d in world.devices:
        node.handle(CertificateKnown(d.certificate), T0)
    own = world.devices[0]
    out = node.handle(OwnBlockSealed(own.seal(T0)), T0)
    # Its own headers prove who sent it: the ANNOUNCE goes with an empty authenticator.
    announce = seal_unsigned(wire.encode(wire.Announce(ids[0], (own.blocks[0].header.wire,))))
    assert of_type(out, Broadcast) == [Broadcast("chain", announce), Broadcast("street", announce)]
    assert not sent(out)  # no peer is up, and broadcasts do not depend on presence anyway
    assert node.counters["announces_broadcast"] == 2


def test_header_received_by_broadcast_is_stored_but_not_forwarded(world: World) -> None:
    node = world.node(up=(1, 2, 3))
    b0 = world.devices[1].blocks[0].header.wire
    announce = sealed(wire.encode(wire.Announce(world.id(1), (b0,))))
    out = node.handle(MessageReceived(None, announce, broadcast=True), T0)
    assert of_type(out, StoreHeaders) == [StoreHeaders(world.id(1), (b0,))]
    assert len(of_type(out, HeadersAccepted)) == 1
    assert not sent(out)  # every domain member received the same broadcast
    # the same bytes on the inbox (another path) are a duplicate, not news
    again = node.handle(MessageReceived(None, announce), T0)
    assert not of_type(again, StoreHeaders) and not sent(again)


def test_own_block_is_pushed_to_fanout_peers_that_are_up(world: World) -> None:
    node = world.node(up=(1, 2), config=GossipConfig(push="fanout"))
    own = world.devices[0]
    out = node.handle(OwnBlockSealed(own.seal(T0)), T0)
    targets = {peer for peer, m in sent(out) if isinstance(m, wire.Announce)}
    assert targets == {world.id(1), world.id(2)}  # device 3 is down, device 4 not a member
    assert all(m == wire.Announce(world.id(0), (own.blocks[0].header.wire,)) for _, m in sent(out))
    assert not of_type(out, StoreHeaders)  # the own chain is stored by the chain writer
    with pytest.raises(UsageError, match="does not extend"):
        node.handle(OwnBlockSealed(own.equivocate(0, T0)), T0)


def test_received_header_is_verified_stored_and_forwarded_once(world: World) -> None:
    node = world.node(up=(1, 2, 3))
    b0 = world.devices[1].blocks[0].header.wire
    out = node.handle(msg_from(world.id(2), wire.Announce(world.id(2), (b0,))), T0)
    assert of_type(out, StoreHeaders) == [StoreHeaders(world.id(1), (b0,))]
    accepted = of_type(out, HeadersAccepted)
    assert accepted == [
        HeadersAccepted(world.id(1), 0, 0, world.devices[1].blocks[0].header.hash, world.id(2))
    ]
    forwarded = {p for p, m in sent(out) if isinstance(m, wire.Announce)}
    assert forwarded == {world.id(3)}  # not back to the sender, not to the origin
    again = node.handle(msg_from(world.id(3), wire.Announce(world.id(3), (b0,))), T0 + 5)
    assert again == []
    assert node.counters["header_duplicate"] == 1


def test_a_gap_pulls_the_missing_range_from_the_announcer(world: World) -> None:
    node = world.node()
    b = world.devices[1]
    out = node.handle(msg_from(world.id(2), wire.Announce(world.id(2), (b.header_wires()[2],))), T0)
    assert not of_type(out, StoreHeaders)
    ((peer, req),) = sent(out)
    assert peer == world.id(2) and isinstance(req, wire.Request)
    assert (req.device_id, req.from_height, req.to_height, req.flags) == (world.id(1), 0, 2, 0)
    response = wire.Response(
        world.id(2), req.request_id, world.id(1), (), (), (), tuple(b.header_wires()[:3]), ()
    )
    out = node.handle(msg_from(world.id(2), response), T0 + 10)
    assert of_type(out, StoreHeaders) == [StoreHeaders(world.id(1), tuple(b.header_wires()[:3]))]
    assert node.heights()[world.id(1)] == 2
    # A response nobody asked for (or a duplicate) changes nothing.
    assert node.handle(msg_from(world.id(2), response), T0 + 20) == []
    assert node.counters["response_unsolicited"] == 1


def test_requests_are_served_from_memory_or_through_the_runtime(world: World) -> None:
    node = world.node(config=GossipConfig(window=4))
    b = world.devices[1]
    node.handle(ChainLoaded(world.id(1), tuple(b.header_wires())), T0)  # heights 0..11
    peer = world.id(2)
    out = node.handle(msg_from(peer, wire.Request(peer, 1, world.id(1), 8, 20, 0)), T0)
    ((_, resp),) = sent(out)
    assert isinstance(resp, wire.Response)
    assert resp.headers == tuple(b.header_wires()[8:12]) and resp.certificates == ()
    out = node.handle(
        msg_from(peer, wire.Request(peer, 2, world.id(1), 2, 5, wire.FLAG_CREDENTIALS)), T0
    )
    assert of_type(out, ServePull) == [ServePull(peer, 2, world.id(1), 2, 5, False, 0, 0)]
    loaded = PullLoaded(peer, 2, tuple(b.header_wires()[2:9]))  # more than asked: trimmed
    ((_, resp),) = sent(node.handle(loaded, T0 + 3))
    assert isinstance(resp, wire.Response) and resp.request_id == 2
    assert resp.headers == tuple(b.header_wires()[2:6])
    assert resp.certificates == (b.certificate,)
    assert node.handle(loaded, T0 + 4) == []  # answered once
    out = node.handle(
        msg_from(peer, wire.Request(peer, 3, world.id(1), 10, 11, wire.FLAG_BODIES)), T0
    )
    (pull,) = of_type(out, ServePull)
    assert isinstance(pull, ServePull) and pull.bodies and pull.max_blocks == 16
    blocks = tuple(x.encode() for x in b.blocks[10:12])
    ((_, resp),) = sent(
        node.handle(PullLoaded(peer, 3, tuple(b.header_wires()[10:12]), blocks), T0 + 5)
    )
    assert isinstance(resp, wire.Response) and resp.blocks == blocks
    # Beyond the head: an empty answer keeps the promise.
    ((_, resp),) = sent(
        node.handle(msg_from(peer, wire.Request(peer, 4, world.id(1), 40, 41, 0)), T0)
    )
    assert isinstance(resp, wire.Response) and resp.headers == ()


def test_an_unanswered_request_is_a_promise_not_kept(world: World) -> None:
    node = world.node()
    b = world.devices[1]
    node.handle(msg_from(world.id(2), wire.Announce(world.id(2), (b.header_wires()[3],))), T0)
    deadline = node.next_deadline()
    assert deadline is not None and deadline <= T0 + node.config.request_timeout_ms
    node.handle_timer(T0 + node.config.request_timeout_ms)
    stats = node.peer_stats(world.id(2))
    assert stats is not None and stats.promises_broken == 1 and stats.penalty == 2


def test_peer_down_cancels_its_requests_without_penalty(world: World) -> None:
    node = world.node()
    b = world.devices[1]
    node.handle(msg_from(world.id(2), wire.Announce(world.id(2), (b.header_wires()[3],))), T0)
    node.handle(PeerDown(world.id(2)), T0 + 1)
    node.handle_timer(T0 + 60_000)
    stats = node.peer_stats(world.id(2))
    assert stats is not None and stats.promises_broken == 0 and not stats.up


def test_anti_entropy_rounds_are_jittered_and_pick_random_up_peers(world: World) -> None:
    cfg = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200, anti_entropy_backoff=1)
    node = world.node(up=(1, 2, 3), config=cfg)
    node.handle(ChainLoaded(world.id(1), tuple(world.devices[1].header_wires()[:4])), T0)
    times, targets = [], set()
    now = T0
    for _ in range(30):
        deadline = node.next_deadline()
        assert deadline is not None
        now = deadline
        for peer, m in sent(node.handle_timer(now)):
            assert isinstance(m, wire.Summary) and m.reply
            assert [e.device_id for e in m.entries] == [world.id(1)]
            assert m.entries[0].height == 3
            times.append(now)
            targets.add(peer)
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert min(gaps) >= 800 and max(gaps) <= 1_200 and len(gaps) > 5, sorted(gaps)
    assert targets == {world.id(1), world.id(2), world.id(3)}


def _round_times(node: GossipNode, until: int, start: int) -> list[int]:
    """When ``node`` sends its round's SUMMARY, from ``start`` on (its timers only)."""
    times, now = [], start
    while True:
        deadline = node.next_deadline()
        assert deadline is not None
        if deadline > until:
            return times
        now = max(now, deadline)
        if any(isinstance(m, wire.Summary) and m.reply for _, m in sent(node.handle_timer(now))):
            times.append(now)


def test_rounds_that_find_nothing_back_off_and_anything_found_brings_them_back(
    world: World,
) -> None:
    """A healthy fleet's pushes deliver every header, so its rounds find nothing: the interval
    doubles up to ``anti_entropy_backoff`` times ``anti_entropy_ms`` (Trickle). A round whose
    answer shows something missing, or a peer coming up, brings it back at once."""
    cfg = GossipConfig(anti_entropy_ms=1_000, jitter_ms=0, anti_entropy_backoff=4)
    node = world.node(up=(1, 2, 3), config=cfg)
    b = world.devices[1]
    node.handle(ChainLoaded(world.id(1), tuple(b.header_wires()[:4])), T0)
    times = _round_times(node, T0 + 20_000, T0)
    gaps = [y - x for x, y in itertools.pairwise(times)]
    # The first round still sees the certificates learned at start; then nothing new.
    assert gaps[:3] == [1_000, 2_000, 4_000] and set(gaps[3:]) == {4_000}, gaps
    assert node.counters["rounds_backed_off"] == len(times) - 1
    # The liveness counts silence in rounds: a backed-off round counts as the periods it spans.
    assert node.counters["round_periods"] == 1 + 1 + 2 + 4 * (len(times) - 3)
    # A peer's answer shows b's chain further on: a pull, and the next round comes 1 s later.
    now = times[-1] + 10
    entries = (wire.SummaryEntry(world.id(1), 0, 9, b.blocks[9].header.hash),)
    node.handle(msg_from(world.id(3), wire.Summary(world.id(3), False, entries)), now)
    assert node.counters["requests_sent"] == 1
    after = _round_times(node, now + 12_000, now)
    assert [y - x for x, y in itertools.pairwise(after)][:2] == [1_000, 2_000]
    # A peer that comes up: the round that was 4 s away comes within 1 s.
    node.handle(PeerDown(world.id(2)), after[-1] + 1)
    node.handle(PeerUp(world.id(2)), after[-1] + 2)
    assert node.next_deadline() is not None
    assert node.next_deadline() <= after[-1] + 2 + 1_000  # type: ignore[operator]


@pytest.mark.parametrize("greeters", [1, 3, 5])
def test_a_peer_that_comes_up_is_greeted_at_once_by_exactly_its_greeters(greeters: int) -> None:
    rng = random.Random(19)
    authority = Authority(rng)
    devices = [SimDevice(authority, rng) for _ in range(12)]
    ids = [d.device_id for d in devices]
    cfg = GossipConfig(greeters=greeters)
    for target in ids[:4]:
        greeted_by = []
        for me in ids:
            if me == target:
                continue
            signer = devices[ids.index(me)]
            node = GossipNode(
                me, {"d": ids}, authority.roots, random.Random(1), config=cfg, signer=signer
            )
            for d in devices:
                node.handle(CertificateKnown(d.certificate), T0)
            out = sent(node.handle(PeerUp(target), T0))
            # Every node says who it is to a peer that comes up (its own certificate, which
            # the peer authenticates its messages with); only greeters add a SUMMARY.
            hello = wire.Certs(me, (signer.certificate,), (), ())
            assert out[0] == (target, hello)
            out = out[1:]
            if out:
                assert out == [(target, wire.Summary(me, True, ()))]
                greeted_by.append(me)
        # The same devices whatever the node asking: the lowest SHA-256 greeting scores.
        expected = sorted((m for m in ids if m != target), key=lambda m: greeting_score(target, m))[
            :greeters
        ]
        assert sorted(greeted_by) == sorted(expected)


def test_the_greeting_score_vector_of_the_protocol_document() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    text = " ".join(doc.split())
    m = re.search(r"the score of device `(\w+)` for greeting `(\w+)` is `([0-9a-f]{64})`", text)
    assert m is not None, "the greeting vector is missing from docs/PROTOCOL.md"
    device, peer, digest = m.groups()
    assert greeting_score(peer, device).hex() == digest


def test_a_restoring_node_greets_every_peer_that_comes_up(world: World) -> None:
    node = world.node(up=(), config=GossipConfig(greeters=1))
    node.handle(RestoreRequested(), T0)
    greeted = {peer for i in (1, 2, 3) for peer, _ in sent(node.handle(PeerUp(world.id(i)), T0))}
    assert greeted == {world.id(1), world.id(2), world.id(3)}


def test_a_summary_pulls_what_is_missing_and_is_answered(world: World) -> None:
    node = world.node()
    b, c = world.devices[1], world.devices[2]
    node.handle(ChainLoaded(world.id(1), tuple(b.header_wires()[:3])), T0)
    node.handle(ChainLoaded(world.id(2), tuple(c.header_wires())), T0)
    entries = (
        wire.SummaryEntry(world.id(1), 0, 9, b.blocks[9].header.hash),
        wire.SummaryEntry(world.id(2), 0, 11, c.blocks[11].header.hash),
    )
    out = node.handle(msg_from(world.id(3), wire.Summary(world.id(3), True, entries)), T0)
    msgs = sent(out)
    reqs = [m for _, m in msgs if isinstance(m, wire.Request)]
    assert [(r.device_id, r.from_height, r.to_height) for r in reqs] == [(world.id(1), 2, 9)]
    (reply,) = [m for _, m in msgs if isinstance(m, wire.Summary)]
    assert isinstance(reply, wire.Summary) and not reply.reply
    # The answer lists what differs from the peer's entries (it holds c's head 11 already).
    assert [(e.device_id, e.height) for e in reply.entries] == [(world.id(1), 2)]
    # A peer that lists nothing gets every chain held.
    out = node.handle(msg_from(world.id(3), wire.Summary(world.id(3), True, ())), T0)
    (reply,) = [m for _, m in sent(out) if isinstance(m, wire.Summary)]
    assert {(e.device_id, e.height) for e in reply.entries} == {(world.id(1), 2), (world.id(2), 11)}


def test_domains_bound_who_we_talk_to_and_what_we_track(world: World) -> None:
    node = world.node(members=(0, 1, 2), up=(1, 2))
    outsider = world.id(3)  # enrolled, but in none of our domains
    payload = sealed(wire.encode(wire.Announce(outsider, (world.devices[3].header_wires()[0],))))
    assert node.handle(MessageReceived(outsider, payload), T0) == []
    assert node.handle(MessageReceived(None, payload), T0) == []
    assert node.counters["dropped_foreign"] == 2
    out = node.handle(
        msg_from(world.id(1), wire.Announce(world.id(1), (world.devices[3].header_wires()[0],))), T0
    )
    assert not of_type(out, StoreHeaders) and node.counters["header_untracked"] == 1
    node.handle(DomainChanged("d", frozenset({world.id(0), world.id(1), world.id(3)})), T0)
    out = node.handle(MessageReceived(outsider, payload), T0)
    assert of_type(out, StoreHeaders)  # a member now; device 2 is no longer one
    assert node.handle(msg_from(world.id(2), wire.Summary(world.id(2), True, ())), T0) == []


def test_a_response_outside_its_request_is_invalid(world: World) -> None:
    node = world.node()
    b = world.devices[1]
    out = node.handle(msg_from(world.id(2), wire.Announce(world.id(2), (b.header_wires()[2],))), T0)
    ((_, req),) = sent(out)
    assert isinstance(req, wire.Request)
    wrong = wire.Response(
        world.id(2), req.request_id, world.id(1), (), (), (), tuple(b.header_wires()[1:4]), ()
    )
    out = node.handle(msg_from(world.id(2), wrong), T0 + 5)
    assert not of_type(out, StoreHeaders)
    stats = node.peer_stats(world.id(2))
    assert stats is not None and stats.invalid == 1


def test_chain_loaded_must_be_a_chain(world: World) -> None:
    node = world.node()
    wires = world.devices[1].header_wires()
    with pytest.raises(UsageError, match="not a chain"):
        node.handle(ChainLoaded(world.id(1), (wires[0], wires[2])), T0)
    node2 = world.node()
    node2.handle(ChainLoaded(world.id(1), tuple(wires)), T0)
    with pytest.raises(UsageError, match="already loaded"):
        node2.handle(ChainLoaded(world.id(1), tuple(wires)), T0)


def test_wanted_bodies_are_pulled_verified_and_stored(world: World) -> None:
    b = world.devices[1]
    cfg = GossipConfig(want_bodies=lambda dev, h: dev == b.device_id)
    node = world.node(config=cfg)
    out = node.handle(msg_from(b.device_id, wire.Announce(b.device_id, (b.header_wires()[0],))), T0)
    assert of_type(out, StoreHeaders)
    ((_, req),) = [(p, m) for p, m in sent(out) if isinstance(m, wire.Request)]
    assert (
        isinstance(req, wire.Request) and req.bodies and (req.from_height, req.to_height) == (0, 0)
    )
    assert node.missing_bodies(b.device_id) == (0,)
    good = b.blocks[0]
    forged = Block(good.header, (b.blocks[1].readings[0],))  # another reading under header 0
    bad = wire.Response(
        b.device_id, req.request_id, b.device_id, (), (), (), (), (forged.encode(),)
    )
    out = node.handle(msg_from(b.device_id, bad), T0 + 5)
    assert not of_type(out, StoreBlock) and node.missing_bodies(b.device_id) == (0,)
    stats = node.peer_stats(b.device_id)
    assert stats is not None and stats.invalid == 1
    summary = wire.Summary(
        b.device_id, False, (wire.SummaryEntry(b.device_id, 0, 0, good.header.hash),)
    )
    ((_, req2),) = sent(node.handle(msg_from(b.device_id, summary), T0 + 10))
    assert isinstance(req2, wire.Request) and req2.flags == wire.FLAG_BODIES
    ok = wire.Response(
        b.device_id, req2.request_id, b.device_id, (), (), (), (good.header.wire,), (good.encode(),)
    )
    out = node.handle(msg_from(b.device_id, ok), T0 + 15)
    assert of_type(out, StoreBlock) == [StoreBlock(b.device_id, 0, good.encode())]
    assert decode_block(good.encode()).header.hash == good.header.hash
    assert of_type(out, BlockAccepted) and node.missing_bodies(b.device_id) == ()


@pytest.mark.parametrize(
    "bad",
    [
        {"fanout": -1},
        {"anti_entropy_ms": 0},
        {"jitter_ms": 5_000},
        {"max_range": 257},
        {"max_blocks": 17},
        {"window": 0},
        {"want_bodies": 3},
    ],
)
def test_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="gossip config"):
        GossipConfig(**bad)  # type: ignore[arg-type]


def test_node_refuses_a_domain_without_itself(world: World) -> None:
    with pytest.raises(UsageError, match="must list this device"):
        GossipNode(
            world.id(0),
            {"d": [world.id(1)]},
            world.authority.roots,
            random.Random(1),
            signer=world.devices[0],
        )


def test_a_served_response_never_exceeds_the_message_limit(world: World) -> None:
    node = world.node()
    b = world.devices[1]
    node.handle(ChainLoaded(world.id(1), tuple(b.header_wires())), T0)
    peer = world.id(2)
    flags = wire.FLAG_BODIES | wire.FLAG_CREDENTIALS
    node.handle(msg_from(peer, wire.Request(peer, 9, world.id(1), 0, 11, flags)), T0)
    big = tuple(bytes([k]) * 150_000 for k in range(12))  # the runtime's bytes, as stored
    (send,) = node.handle(PullLoaded(peer, 9, tuple(b.header_wires()), big), T0 + 1)
    assert isinstance(send, Send) and len(send.payload) <= wire.MAX_MESSAGE_BYTES
    resp = wire.decode(unseal(send.payload))
    assert isinstance(resp, wire.Response)
    assert len(resp.headers) == 12 and resp.blocks == big[: len(resp.blocks)]
    assert 5 <= len(resp.blocks) < 12, "as many bodies as fit; the peer asks again for the rest"


def test_a_probe_lists_only_its_sender_and_shows_nobody_behind(world: World) -> None:
    """A liveness probe is a SUMMARY asking for a reply that lists only its sender's chain: the
    chains it leaves out say nothing of what the prober holds, so they do not count as the
    peer behind (nor speed this node's rounds up). A round's full summary that leaves one out
    does."""
    node = world.node()
    b, c = world.devices[1], world.devices[2]
    node.handle(ChainLoaded(world.id(1), tuple(b.header_wires()[:3])), T0)
    node.handle(ChainLoaded(world.id(2), tuple(c.header_wires()[:3])), T0)
    own = (wire.SummaryEntry(world.id(2), 0, 2, c.blocks[2].header.hash),)
    node.handle(msg_from(world.id(2), wire.Summary(world.id(2), True, own)), T0)
    assert node.counters["peer_behind"] == 0
    d = world.devices[3]
    full = (wire.SummaryEntry(world.id(3), 0, 0, d.blocks[0].header.hash), *own)
    node.handle(msg_from(world.id(3), wire.Summary(world.id(3), True, full)), T0 + 1)
    assert node.counters["peer_behind"] == 1  # it lists c's chain but not b's
