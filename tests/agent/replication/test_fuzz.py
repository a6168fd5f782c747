"""Hostile bytes into a replication node: nothing escapes ``handle``, garbage is only counted.

Random payloads, valid messages with bytes flipped, cut or appended, and envelopes with random
fields, from a domain peer, from a stranger and unattributed. The node must not raise, must not
store, delete or load anything for garbage, and must count every rejected payload. A mutated
copy of a peer's real message fails authentication: it is counted unattributable and charges
nobody (every holder's score stays what it was).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.protocol.sim import sealed
from agent.replication import wire
from agent.replication.actions import DeleteReplica, LoadReplica, MarkSurplus, StoreReplica
from agent.replication.inputs import MessageReceived, OwnBlockSealed
from agent.replication.node import ReplicationNode
from ledger import codec
from tests.agent.replication.helpers import T0, config, msg_from, world

_ERRORS = (
    "unattributable",
    "old_version",
    "malformed",
    "invalid",
    "sender_mismatch",
    "dropped_foreign",
    "dropped_own",
)


def busy_node() -> ReplicationNode:
    """A node with something to lose: an own block placed, a replica held."""
    w = world()
    node = w.node(config())
    for i in (1, 2, 3, 4):
        node.handle(msg_from(w.id(i), wire.Space(w.id(i), 10_000, 10_000)), T0)
    node.handle(OwnBlockSealed(w.devices[0].blocks[0]), T0)
    return node


def seeds() -> list[bytes]:
    w = world()
    s = w.store(1, 2)
    h = w.devices[1].blocks[2].header.hash
    return [
        sealed(wire.encode(s)),
        sealed(wire.encode(wire.ReceiptMsg(w.id(1), 1, bytes(100)))),
        sealed(wire.encode(wire.Refuse(w.id(1), 1, wire.FULL, 5))),
        sealed(wire.encode(wire.Challenge(w.id(1), 1, 2, h, bytes(16)))),
        sealed(wire.encode(wire.Proof(w.id(1), 1, bytes(32)))),
        sealed(wire.encode(wire.Release(w.id(1), 2, h))),
        sealed(wire.encode(wire.Space(w.id(1), 10, 5))),
        sealed(wire.encode(wire.Busy(w.id(1), 1, 5000))),
    ]


def errors(node: ReplicationNode) -> int:
    return sum(node.counters[k] for k in _ERRORS)


def feed_garbage(
    node: ReplicationNode, peer: str | None, payload: bytes, original: bytes | None = None
) -> None:
    before = errors(node)
    w = world()
    scores = [node.score(w.id(i)) for i in (1, 2, 3, 4)]
    out = node.handle(MessageReceived(peer, payload), T0 + 1)
    if payload == original:
        return  # the mutation undid itself: a real message
    harmful = (StoreReplica, DeleteReplica, MarkSurplus, LoadReplica)
    assert not [a for a in out if isinstance(a, harmful)]
    assert errors(node) == before + 1
    # not proven (a version-1 message is not proven either: a flipped version byte is one)
    refused = ("unattributable", "dropped_foreign", "old_version")
    assert sum(node.counters[k] for k in refused) >= 1
    assert [node.score(w.id(i)) for i in (1, 2, 3, 4)] == scores  # nobody is charged


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300), who=st.sampled_from([None, 1, "stranger"]))
def test_random_bytes_are_only_counted(payload: bytes, who: object) -> None:
    node = busy_node()
    w = world()
    peer = None if who is None else (w.id(1) if who == 1 else "ef" + "z" * 24)
    feed_garbage(node, peer, payload)


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, 7),
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    mode=st.sampled_from(["flip", "truncate", "append"]),
    attributed=st.booleans(),
)
def test_mutated_messages_never_escape(
    which: int, cuts: list[tuple[int, int]], mode: str, attributed: bool
) -> None:
    node = busy_node()
    original = seeds()[which]
    data = bytearray(original)
    for pos, val in cuts:
        if mode == "flip":
            data[pos % len(data)] ^= val or 1
        elif mode == "truncate":
            del data[pos % len(data) :]
            if not data:
                break
        else:
            data.append(val)
    feed_garbage(node, world().id(1) if attributed else None, bytes(data), original)


@settings(max_examples=300, deadline=None)
@given(
    mtype=st.integers(32, 63),
    fields=st.lists(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**64 - 1),
            st.binary(max_size=40),
            st.text(max_size=30),
            st.lists(st.integers(0, 3), max_size=3),
        ),
        max_size=5,
    ),
)
def test_envelopes_with_random_fields_never_escape(mtype: int, fields: list[codec.Value]) -> None:
    node = busy_node()
    w = world()
    payload = sealed(codec.encode([2, mtype, w.id(2), *fields]))  # proven, and garbage
    node.handle(MessageReceived(w.id(2), payload), T0 + 1)
    node.handle(MessageReceived(None, payload), T0 + 1)


def test_a_thousand_seeded_mutations_keep_the_node_working() -> None:
    rng = random.Random(4)
    node = busy_node()
    w = world()
    for _ in range(1000):
        data = bytearray(rng.choice(seeds()))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        node.handle(MessageReceived(w.id(rng.choice([1, 2, 3])), bytes(data)), T0 + 1)
    # still answers a real STORE afterwards (the scores of the senders may be low: not muted)
    out = node.handle(msg_from(w.id(4), w.store(4, 0)), T0 + 2)
    assert [a for a in out if isinstance(a, StoreReplica)]
