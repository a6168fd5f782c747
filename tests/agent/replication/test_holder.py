"""The holder side, rule by rule: verification, quota and eviction, receipts, audits, adverts."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from agent.protocol.auth import AWAIT_MS
from agent.protocol.sim import SimDevice, sealed, unseal
from agent.replication import wire
from agent.replication.actions import (
    Action,
    Broadcast,
    DeleteReplica,
    LoadReplica,
    MarkSurplus,
    StoreReplica,
)
from agent.replication.inputs import (
    CredentialKnown,
    HeadersKnown,
    MessageReceived,
    PeerUp,
    ReplicaInfo,
    ReplicaLoaded,
    ReplicasLoaded,
    ReplicaStored,
)
from agent.replication.node import ReplicationNode
from ledger.receipt import verify_receipt
from tests.agent.replication.helpers import (
    T0,
    World,
    config,
    msg_from,
    of_type,
    sent,
    sent_of,
    world,
)

SIZE = 366  # every test block (one reading)


def store_and_commit(
    node: ReplicationNode, w: World, owner: int, height: int, rid: int = 1
) -> list[Action]:
    out = node.handle(msg_from(w.id(owner), w.store(owner, height, rid)), T0)
    writes = of_type(out, StoreReplica)
    assert len(writes) == 1
    a = writes[0]
    assert isinstance(a, StoreReplica)
    return node.handle(ReplicaStored(a.owner_id, a.height, a.block_hash, True), T0 + 1)


def test_valid_store_is_made_durable_before_it_is_receipted() -> None:
    w = world()
    node = w.node()
    block = w.devices[1].blocks[2]
    out = node.handle(msg_from(w.id(1), w.store(1, 2, rid=77)), T0)
    assert of_type(out, StoreReplica) == [
        StoreReplica(w.id(1), 2, 0, block.header.hash, block.encode())
    ]
    assert not sent_of(out, wire.ReceiptMsg)  # nothing promised before it is durable
    assert node.free_bytes() == 100_000 - SIZE  # reserved already
    out = node.handle(ReplicaStored(w.id(1), 2, block.header.hash, True), T0 + 5)
    [(peer, msg)] = sent_of(out, wire.ReceiptMsg)
    assert peer == w.id(1)
    assert isinstance(msg, wire.ReceiptMsg)
    assert msg.request_id == 77
    r = verify_receipt(msg.receipt, w.devices[0].key.public).receipt
    assert (r.holder_id, r.owner_id, r.epoch, r.height) == (w.id(0), w.id(1), 0, 2)
    assert (r.block_hash, r.size, r.time_ms) == (block.header.hash, SIZE, T0 + 5)
    assert node.used_bytes() == SIZE
    assert node.replicas() == {(w.id(1), 2): block.header.hash}


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def other_device_block(w: World) -> wire.Store:
    return wire.Store(w.id(2), 1, w.devices[1].blocks[0].encode(), None)


def bad_reading(w: World) -> wire.Store:
    s = w.store(1, 1)
    return wire.Store(s.sender, 1, flip(s.block, len(s.block) - 3), s.prev_header)


def wrong_prev(w: World) -> wire.Store:
    s = w.store(1, 3)
    return wire.Store(s.sender, 1, s.block, w.devices[1].blocks[1].header.wire)


def missing_prev(w: World) -> wire.Store:
    s = w.store(1, 3)
    return wire.Store(s.sender, 1, s.block, None)


def prev_at_zero(w: World) -> wire.Store:
    s = w.store(1, 0)
    return wire.Store(s.sender, 1, s.block, w.devices[1].blocks[0].header.wire)


def forged_prev(w: World) -> wire.Store:
    s = w.store(1, 3)
    assert s.prev_header is not None
    return wire.Store(s.sender, 1, s.block, flip(s.prev_header, len(s.prev_header) - 1))


def not_a_block(w: World) -> wire.Store:
    return wire.Store(w.id(1), 1, b"\x92\x01\x02", None)


@pytest.mark.parametrize(
    ("make", "sender", "counter"),
    [
        (other_device_block, 2, "invalid"),
        (bad_reading, 1, "invalid"),
        (wrong_prev, 1, "invalid"),
        (missing_prev, 1, "invalid"),
        (prev_at_zero, 1, "invalid"),
        (forged_prev, 1, "invalid"),
        (not_a_block, 1, "malformed"),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_what_does_not_verify_is_refused_and_penalized(
    make: Callable[[World], wire.Store], sender: int, counter: str
) -> None:
    w = world()
    node = w.node()
    out = node.handle(msg_from(w.id(sender), make(w)), T0)
    assert not of_type(out, StoreReplica)
    [(peer, msg)] = sent(out)
    assert peer == w.id(sender)
    assert isinstance(msg, wire.Refuse)
    assert msg.reason == wire.INVALID
    assert node.counters[counter] == 1
    assert node.score(w.id(sender)) == 100 - node.config.penalty_invalid
    assert node.free_bytes() == 100_000


def test_a_store_from_an_owner_whose_key_is_unknown_is_unattributable_and_unanswered() -> None:
    w = world()
    node = ReplicationNode(
        w.id(0), w.devices[0].key, {"d": [w.id(0), w.id(1)]}, w.authority.roots, config=config()
    )
    out = node.handle(msg_from(w.id(1), w.store(1, 0)), T0)
    assert sent(out) == []  # nothing is answered to a sender that is not proven
    assert node.counters["held_for_credentials"] == 1  # a member's: it waits for its credentials
    assert node.next_deadline() <= T0 + AWAIT_MS
    assert sent(node.handle_timer(T0 + AWAIT_MS)) == []  # they never came
    assert node.counters["unattributable_unknown_sender"] == 1
    assert node.score(w.id(1)) == 100


def test_a_block_that_conflicts_with_a_known_header_is_refused() -> None:
    w = world()
    node = w.node()
    fork = w.devices[1].equivocate(2, T0)
    node.handle(HeadersKnown(w.id(1), (fork.header.wire,)), T0)
    out = node.handle(msg_from(w.id(1), w.store(1, 2)), T0)
    [(_, msg)] = sent(out)
    assert isinstance(msg, wire.Refuse)
    assert msg.reason == wire.CONFLICT
    assert not of_type(out, StoreReplica)
    # the block at height 3 links to the real header 2, which the holder knows is not canon
    out = node.handle(msg_from(w.id(1), w.store(1, 3)), T0)
    [(_, msg)] = sent(out)
    assert isinstance(msg, wire.Refuse)
    assert msg.reason == wire.CONFLICT


def test_known_matching_header_is_accepted() -> None:
    w = world()
    node = w.node()
    node.handle(HeadersKnown(w.id(1), tuple(w.devices[1].header_wires())), T0)
    out = node.handle(msg_from(w.id(1), w.store(1, 4)), T0)
    assert len(of_type(out, StoreReplica)) == 1


def test_repeat_store_is_receipted_again_and_pending_one_is_ignored() -> None:
    w = world()
    node = w.node()
    out = node.handle(msg_from(w.id(1), w.store(1, 0)), T0)
    again = node.handle(msg_from(w.id(1), w.store(1, 0, rid=2)), T0)
    assert not again  # being written: the receipt will come
    a = of_type(out, StoreReplica)[0]
    assert isinstance(a, StoreReplica)
    node.handle(ReplicaStored(a.owner_id, a.height, a.block_hash, True), T0)
    out = node.handle(msg_from(w.id(1), w.store(1, 0, rid=3)), T0 + 9)
    assert not of_type(out, StoreReplica)
    [(_, msg)] = sent_of(out, wire.ReceiptMsg)
    assert isinstance(msg, wire.ReceiptMsg)
    assert msg.request_id == 3
    assert node.used_bytes() == SIZE


def test_quota_is_never_exceeded_and_surplus_is_evicted_first() -> None:
    w = world()
    node = w.node(config(quota_bytes=2 * SIZE + 100))
    store_and_commit(node, w, 1, 0)
    store_and_commit(node, w, 2, 0)
    out = node.handle(msg_from(w.id(3), w.store(3, 0)), T0)
    refusals = sent_of(out, wire.Refuse)
    assert [m.reason for _, m in refusals if isinstance(m, wire.Refuse)] == [wire.FULL]
    assert of_type(out, Broadcast)  # the holder corrects its advert at once
    assert node.used_bytes() == 2 * SIZE
    # owner 2 releases its copy: surplus, evicted when room is needed
    h2 = w.devices[2].blocks[0].header.hash
    out = node.handle(msg_from(w.id(2), wire.Release(w.id(2), 0, h2)), T0)
    assert of_type(out, MarkSurplus) == [MarkSurplus(w.id(2), 0)]
    assert node.free_bytes() == SIZE + 100
    out = node.handle(msg_from(w.id(3), w.store(3, 0)), T0)
    assert of_type(out, DeleteReplica) == [DeleteReplica(w.id(2), 0)]
    assert out.index(of_type(out, DeleteReplica)[0]) < out.index(of_type(out, StoreReplica)[0])
    assert node.used_bytes() + SIZE <= node.config.quota_bytes


def test_failed_write_releases_the_reservation_and_refuses() -> None:
    w = world()
    node = w.node()
    out = node.handle(msg_from(w.id(1), w.store(1, 0)), T0)
    a = of_type(out, StoreReplica)[0]
    assert isinstance(a, StoreReplica)
    out = node.handle(ReplicaStored(a.owner_id, a.height, a.block_hash, False), T0)
    [(_, msg)] = sent_of(out, wire.Refuse)
    assert isinstance(msg, wire.Refuse)
    assert msg.reason == wire.FULL
    assert node.free_bytes() == 100_000
    assert node.replicas() == {}


def test_challenge_for_a_block_not_held_is_answered_empty_at_once() -> None:
    w = world()
    node = w.node()
    h = w.devices[1].blocks[0].header.hash
    out = node.handle(msg_from(w.id(1), wire.Challenge(w.id(1), 5, 0, h, bytes(16))), T0)
    assert sent(out) == [(w.id(1), wire.Proof(w.id(0), 5, b""))]


def test_challenge_for_a_held_block_is_answered_from_the_loaded_body() -> None:
    w = world()
    node = w.node()
    store_and_commit(node, w, 1, 0)
    body = w.devices[1].blocks[0].encode()
    h = w.devices[1].blocks[0].header.hash
    nonce = bytes(range(16))
    out = node.handle(msg_from(w.id(1), wire.Challenge(w.id(1), 5, 0, h, nonce)), T0)
    assert out == [LoadReplica(w.id(1), 0)]
    out2 = node.handle(msg_from(w.id(1), wire.Challenge(w.id(1), 6, 0, h, nonce[::-1])), T0)
    assert out2 == []  # one load serves both
    out = node.handle(ReplicaLoaded(w.id(1), 0, body), T0)
    assert sent(out) == [
        (w.id(1), wire.Proof(w.id(0), 5, wire.audit_answer(nonce, body))),
        (w.id(1), wire.Proof(w.id(0), 6, wire.audit_answer(nonce[::-1], body))),
    ]
    # a body that vanished from the disk is admitted, not invented
    node.handle(msg_from(w.id(1), wire.Challenge(w.id(1), 7, 0, h, nonce)), T0)
    out = node.handle(ReplicaLoaded(w.id(1), 0, None), T0)
    assert sent(out) == [(w.id(1), wire.Proof(w.id(0), 7, b""))]


def test_pending_challenges_are_bounded_per_peer_and_expire() -> None:
    w = world()
    node = w.node(config(max_serves_per_peer=2))
    for k in range(3):
        store_and_commit(node, w, 1, k)
    hashes = [b.header.hash for b in w.devices[1].blocks]
    loads = []
    for k in range(3):
        out = node.handle(
            msg_from(w.id(1), wire.Challenge(w.id(1), k, k, hashes[k], bytes(16))), T0
        )
        loads += of_type(out, LoadReplica)
    assert loads == [LoadReplica(w.id(1), 0), LoadReplica(w.id(1), 1)]
    # the third is answered BUSY (not dropped): the owner asks again later, at no cost
    assert node.counters["challenge_busy"] == 1
    assert [m.challenge_id for _, m in sent_of(out, wire.Busy)] == [2]
    out = node.handle_timer(T0 + node.config.serve_timeout_ms)
    assert node.counters["serves_expired"] == 2
    # loads that did not come back in time: BUSY too, never silence
    assert sorted(m.challenge_id for _, m in sent_of(out, wire.Busy)) == [0, 1]
    out = node.handle(ReplicaLoaded(w.id(1), 0, w.devices[1].blocks[0].encode()), T0)
    assert not sent(out)  # forgotten: the owner's audit timed out already


def test_space_is_sent_on_peer_up_and_broadcast_when_it_moves() -> None:
    w = world()
    node = w.node(config(quota_bytes=8 * SIZE), up=())
    out = node.handle(PeerUp(w.id(2)), T0)
    assert sent(out) == [(w.id(2), wire.Space(w.id(0), 8 * SIZE, 8 * SIZE))]
    out = store_and_commit(node, w, 1, 0)  # free moved by exactly quota/8
    [b] = of_type(out, Broadcast)
    assert isinstance(b, Broadcast)
    assert wire.decode(unseal(b.payload)) == wire.Space(w.id(0), 8 * SIZE, 7 * SIZE)
    # and periodically
    deadline = node.next_deadline()
    assert deadline <= T0 + node.config.advert_interval_ms + 1
    out = node.handle_timer(T0 + node.config.advert_interval_ms + 1)
    assert len(of_type(out, Broadcast)) == 1


def test_restart_with_a_smaller_quota_evicts_surplus_then_oldest() -> None:
    w = world()
    node = w.node(config(quota_bytes=2 * SIZE))
    infos = tuple(
        ReplicaInfo(w.id(i), 0, 0, w.devices[i].blocks[0].header.hash, SIZE, surplus=(i == 3))
        for i in (1, 2, 3, 4)
    )
    out = node.handle(ReplicasLoaded(infos), T0)
    assert of_type(out, DeleteReplica) == [DeleteReplica(w.id(3), 0), DeleteReplica(w.id(1), 0)]
    assert node.used_bytes() == 2 * SIZE


@pytest.mark.parametrize(
    ("peer_id", "sender", "counter"),
    [
        (None, "outsider", "dropped_foreign"),
        ("outsider", "outsider", "dropped_foreign"),
        (None, "self", "dropped_own"),
        (1, 2, "sender_mismatch"),
    ],
)
def test_messages_from_outside_the_domain_are_dropped(
    peer_id: object, sender: object, counter: str
) -> None:
    w = world()
    node = w.node()
    # Enrolled, known to the node (its messages are proven), but in none of its domains.
    outsider = SimDevice(w.authority, random.Random(3))
    node.handle(CredentialKnown("certificate", outsider.certificate), T0)

    def name(x: object) -> str | None:
        if x == "outsider":
            return outsider.device_id
        if x is None or isinstance(x, str):
            return w.id(0) if x == "self" else x
        assert isinstance(x, int)
        return w.id(x)

    s = w.store(1, 0)
    payload = sealed(wire.encode(wire.Store(name(sender) or "", 1, s.block, s.prev_header)))
    out = node.handle(MessageReceived(name(peer_id), payload), T0)
    assert not of_type(out, StoreReplica)
    assert node.counters[counter] == 1
