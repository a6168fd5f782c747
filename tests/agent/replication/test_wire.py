"""Replication wire: the documented vectors, round trips, routing, a table of malformed input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.gossip import wire as gossip_wire
from agent.replication import wire
from ledger import codec
from ledger.errors import DecodeError, UsageError

A = "ef" + "a" * 24
B = "ef" + "b" * 24
H = bytes(range(32))
N = bytes(range(16))
DOC = Path(__file__).resolve().parents[3] / "docs" / "REPLICATION.md"

MESSAGES: list[wire.Message] = [
    wire.Store(A, 7, b"\x01\x02\x03", None),
    wire.ReceiptMsg(A, 7, b"\xaa\xbb\xcc"),
    wire.Refuse(A, 7, wire.FULL, 4096),
    wire.Challenge(A, 9, 300, H, N),
    wire.Proof(A, 9, H),
    wire.Proof(A, 9, b""),
    wire.Release(A, 300, H),
    wire.Space(A, 64 << 20, 1 << 20),
    wire.Busy(A, 9, 5000),
]


def doc_vectors() -> list[tuple[str, str]]:
    text = DOC.read_text()
    block = text.split("<!-- vectors -->", 1)[1].split("<!-- /vectors -->", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("```")]
    return [(lines[i].split()[0], lines[i + 1]) for i in range(0, len(lines), 2)]


def test_every_documented_vector_is_what_the_code_encodes() -> None:
    vectors = doc_vectors()
    assert len(vectors) == len(MESSAGES)
    for (name, hexed), msg in zip(vectors, MESSAGES, strict=True):
        data = wire.encode(msg)
        assert data.hex() == hexed, name
        assert wire.NAMES[data[2]] == name
        assert wire.decode(bytes.fromhex(hexed)) == msg
    assert {n for n, _ in vectors} == set(wire.NAMES.values())  # one vector per type at least


def test_documented_audit_answer() -> None:
    answer = re.search(r"is\s+`([0-9a-f]{64})`", DOC.read_text())
    assert answer is not None
    assert wire.audit_answer(N, b"\x01\x02\x03").hex() == answer.group(1)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_and_routing(msg: wire.Message) -> None:
    data = wire.encode(msg)
    assert wire.decode(data) == msg
    assert wire.is_replication_message(data)
    with pytest.raises(DecodeError):
        gossip_wire.decode(data)  # the gossip decoder refuses replication types


def test_gossip_messages_are_not_routed_here() -> None:
    req = gossip_wire.encode(gossip_wire.Request(A, 7, B, 0, 9, 3))
    assert not wire.is_replication_message(req)
    with pytest.raises(DecodeError, match=r"envelope array of 5\.\.7"):
        wire.decode(req)


@pytest.mark.parametrize(
    ("payload", "routed"),
    [
        (b"", False),
        (b"\x95\x02", False),
        (b"\x95\x02\x20", True),
        (b"\x95\x02\x3f", True),  # reserved for replication: routed, then refused
        (b"\x95\x02\x40", False),
        (b"\x95\x01\x20", True),  # version 1: routed, so its core counts it refused
        (b"\x95\x03\x20", False),
        (b"\x85\x02\x20", False),
    ],
)
def test_is_replication_message_judges_three_bytes(payload: bytes, routed: bool) -> None:
    assert wire.is_replication_message(payload) is routed


def enc(fields: list[codec.Value]) -> bytes:
    return codec.encode(fields)


MALFORMED = [
    ("empty", b"", "envelope"),
    ("not an array", b"\x01\x02\x03", "envelope"),
    ("version 1", enc([1, 38, A, 1, 1]), "version"),
    ("unknown type 40", enc([2, 40, A, 1, 1]), "type"),
    ("BUSY retry_ms too large", enc([2, 39, A, 1, 1 << 32]), "retry_ms"),
    ("gossip type", enc([2, 3, A, 1, 1]), "type"),
    ("too few fields", enc([2, 38, A, 1]), "array of 5"),
    ("too many fields", enc([2, 38, A, 1, 1, 1]), "max_array_len"),
    ("bad sender", enc([2, 38, "efA", 1, 1]), "sender"),
    ("sender with wildcard", enc([2, 38, "ef+" + "a" * 23, 1, 1]), "sender"),
    ("space free above quota", enc([2, 38, A, 1, 2]), "free"),
    ("space negative", enc([2, 38, A, -1, 0]), "quota"),
    ("store empty block", enc([2, 32, A, 1, b"", None]), "block"),
    ("store prev not bin", enc([2, 32, A, 1, b"x", "x"]), "prev_header"),
    ("store prev too big", enc([2, 32, A, 1, b"x", bytes(273)]), "prev_header"),
    ("store id above uint32", enc([2, 32, A, 1 << 32, b"x", None]), "request_id"),
    ("refuse reason 0", enc([2, 34, A, 1, 0, 0]), "reason"),
    ("refuse reason 6", enc([2, 34, A, 1, 6, 0]), "reason"),
    ("challenge short hash", enc([2, 35, A, 1, 0, H[:31], N]), "block_hash"),
    ("challenge short nonce", enc([2, 35, A, 1, 0, H, N[:15]]), "nonce"),
    ("proof 31 bytes", enc([2, 36, A, 1, H[:31]]), "answer"),
    ("proof 33 bytes", enc([2, 36, A, 1, H + b"\x00"]), "bin"),
    ("release height as str", enc([2, 37, A, "1", H]), "height"),
    ("receipt too big", enc([2, 33, A, 1, bytes(198)]), "bin"),
    ("trailing byte", wire.encode(MESSAGES[7]) + b"\x00", "canonical|MessagePack"),
    ("non-canonical int", bytes.fromhex("950226ba") + A.encode() + b"\xcd\x00\x01\x01", "canon"),
    ("map", bytes.fromhex("950226ba") + A.encode() + b"\x80\x01", "no form for dict"),
    ("float", bytes.fromhex("950226ba") + A.encode() + b"\xcb" + bytes(8) + b"\x00", "float"),
    ("nested", enc([2, 38, A, [1], 1]), "quota|nesting"),
]


@pytest.mark.parametrize(("name", "payload", "match"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_is_refused(name: str, payload: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        wire.decode(payload)


def test_limits_apply_before_decoding() -> None:
    over = b"\x96\x02\x20" + bytes(wire.STORE_MAX_BYTES)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        wire.decode(over)
    small = b"\x95\x02\x26" + bytes(200)  # SPACE never exceeds 128 bytes
    with pytest.raises(DecodeError, match="exceeds the limit of 128"):
        wire.decode(small)


def test_largest_store_fits_one_message() -> None:
    block = bytes(wire.BLOCK_WIRE_MAX)
    msg = wire.Store(A, wire.MAX_ID, block, bytes(wire.HEADER_WIRE_MAX))
    data = wire.encode(msg)
    assert len(data) <= wire.MAX_MESSAGE_BYTES
    assert wire.decode(data) == msg


def test_encode_refuses_what_a_peer_would_refuse() -> None:
    with pytest.raises(UsageError, match="SPACE"):
        wire.encode(wire.Space(A, 1, 2))
    with pytest.raises(UsageError, match="PROOF"):
        wire.encode(wire.Proof(A, 1, b"\x00"))
    with pytest.raises(UsageError, match="STORE"):
        wire.encode(wire.Store(A, 1, bytes(wire.BLOCK_WIRE_MAX + 1), None))
