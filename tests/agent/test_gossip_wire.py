"""The gossip wire format: known answers, round trips, named mutations, limits, fuzz."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.gossip import wire
from agent.protocol.sim import Authority, SimDevice
from ledger.errors import DecodeError, UsageError

A = "ef" + "a" * 24
B = "ef" + "b" * 24
C = "ef" + "c" * 24
H = bytes(range(32))


def _chain(n: int = 3) -> SimDevice:
    rng = random.Random(7)
    dev = SimDevice(Authority(rng), rng)
    for i in range(n):
        dev.seal(1_767_225_600_000 + i)
    return dev


def _examples() -> list[wire.Message]:
    dev = _chain()
    hw = tuple(dev.header_wires())
    return [
        wire.Announce(A, hw[:2]),
        wire.Summary(A, True, (wire.SummaryEntry(B, 0, 5, H), wire.SummaryEntry(C, 3, 0, H))),
        wire.Summary(A, False, ()),
        wire.Request(A, 7, B, 0, 255, wire.FLAG_BODIES | wire.FLAG_CREDENTIALS),
        wire.Response(A, 2**32 - 1, B, (dev.certificate,), (), (), hw, (dev.blocks[0].encode(),)),
        wire.EvidenceMessage(A, b"\x95" + bytes(10)),
        wire.Certs(A, (dev.certificate,), (), ()),
    ]


def test_request_known_answer() -> None:
    # [2, 3, A, 7, B, 0, 9, 3]: fixarray(8), then each value in its shortest form.
    expected = b"\x98\x02\x03\xba" + A.encode() + b"\x07\xba" + B.encode() + b"\x00\x09\x03"
    assert wire.encode(wire.Request(A, 7, B, 0, 9, 3)) == expected


def test_summary_known_answer() -> None:
    # [2, 2, A, 1, [[B, 0, 300, H]]]: 300 is uint16 (cd 01 2c), the hash is bin8 (c4 20).
    expected = (
        b"\x95\x02\x02\xba"
        + A.encode()
        + b"\x01\x91\x94\xba"
        + B.encode()
        + b"\x00\xcd\x01\x2c\xc4\x20"
        + H
    )
    assert wire.encode(wire.Summary(A, True, (wire.SummaryEntry(B, 0, 300, H),))) == expected


@pytest.mark.parametrize("msg", _examples(), ids=lambda m: type(m).__name__)
def test_round_trip(msg: wire.Message) -> None:
    data = wire.encode(msg)
    assert wire.decode(data) == msg
    assert wire.encode(wire.decode(data)) == data


@pytest.mark.parametrize("msg", _examples()[:5], ids=lambda m: type(m).__name__)
def test_every_truncation_and_trailing_garbage_is_a_decode_error(msg: wire.Message) -> None:
    data = wire.encode(msg)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            wire.decode(data[:cut])
    with pytest.raises(DecodeError, match=r"non-canonical|not valid"):
        wire.decode(data + b"\x00")


def test_every_single_byte_change_decodes_or_raises_decode_error_only() -> None:
    data = wire.encode(_examples()[3])
    rng = random.Random(1)
    outcomes = {"decode_error": 0, "other_message": 0}
    for i in range(len(data)):
        for _ in range(8):
            mutated = bytearray(data)
            mutated[i] = (mutated[i] + rng.randrange(1, 256)) % 256
            try:
                got = wire.decode(bytes(mutated))
            except DecodeError:
                outcomes["decode_error"] += 1
            else:
                assert got != _examples()[3]
                outcomes["other_message"] += 1
    assert outcomes["decode_error"] > 0 and outcomes["other_message"] > 0, outcomes


def _raw(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)  # type: ignore[no-any-return]


_MUTATIONS = [
    ("version-1", _raw(1, 3, A, 1, B, 0, 0, 0), "version"),
    ("version-3", _raw(3, 3, A, 1, B, 0, 0, 0), "version"),
    ("type-10", _raw(2, 10, A, 1, B, 0, 0, 0), "type"),
    ("type-0", _raw(2, 0, A, 1, B, 0, 0, 0), "type"),
    ("sender-not-a-device-id", _raw(2, 3, "ef+#", 1, B, 0, 0, 0), "sender"),
    ("request-from-after-to", _raw(2, 3, A, 1, B, 5, 4, 0), "from_height"),
    ("request-257-heights", _raw(2, 3, A, 1, B, 0, 256, 0), "from_height"),
    ("request-unknown-flag", _raw(2, 3, A, 1, B, 0, 0, 4), "flags"),
    ("request-id-over-32-bits", _raw(2, 3, A, 2**32, B, 0, 0, 0), "request_id"),
    ("request-extra-field", _raw(2, 3, A, 1, B, 0, 0, 0, 0), "max_array_len"),
    ("response-missing-field", _raw(2, 4, A, 1, B, [], [], [], []), "fields"),
    ("summary-reply-2", _raw(2, 2, A, 2, []), "reply"),
    ("summary-unsorted", _raw(2, 2, A, 0, [[C, 0, 1, H], [B, 0, 1, H]]), "ascending"),
    ("summary-duplicate", _raw(2, 2, A, 0, [[B, 0, 1, H], [B, 0, 2, H]]), "ascending"),
    ("summary-short-hash", _raw(2, 2, A, 0, [[B, 0, 1, H[:31]]]), "head_hash"),
    ("summary-epoch-over-32-bits", _raw(2, 2, A, 0, [[B, 2**32, 1, H]]), "epoch"),
    ("announce-empty", _raw(2, 1, A, []), "none"),
    ("announce-17-headers", _raw(2, 1, A, [b"x"] * 17), "exceeds|at most"),
    ("announce-oversized-header", _raw(2, 1, A, [bytes(273)]), "exceeds"),
    ("announce-string-not-bin", _raw(2, 1, A, ["x"]), "bytes"),
    ("response-two-certificates", _raw(2, 4, A, 1, B, [b"c", b"c"], [], [], [], []), "at most"),
    ("certs-map", b"\x96\x02\x06\xba" + A.encode() + b"\x80\x90\x90", "dict"),
    ("float", _raw(2, 3, A, 1.0, B, 0, 0, 0), "float"),
    (
        "non-canonical-uint",
        b"\x98\x02\x03\xba" + A.encode() + b"\xcc\x07\xba" + B.encode() + b"\x00\x09\x03",
        "non-canonical",
    ),
    ("not-an-array", b"\x01\x01\x03", "envelope"),
    ("empty", b"", "envelope"),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [pytest.param(p, r, id=n) for n, p, r in _MUTATIONS]
)
def test_named_mutations_are_rejected(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        wire.decode(payload)


def test_oversized_message_is_rejected_before_decoding() -> None:
    # A SUMMARY declaring a huge array: refused by size, not after allocating it.
    bomb = b"\x95\x02\x02\xba" + A.encode() + b"\x00\xdd\xff\xff\xff\xff" + bytes(200_000)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        wire.decode(bomb)
    declared = b"\x95\x02\x02\xba" + A.encode() + b"\x00\xdd\x00\x01\x00\x00"
    with pytest.raises(DecodeError):
        wire.decode(declared)


def test_nesting_beyond_the_schema_is_refused_before_decoding() -> None:
    deep = _raw(2, 1, A, [[bytes(200)], [bytes(200)], [bytes(200)]])
    with pytest.raises(DecodeError, match="nesting deeper"):
        wire.decode(deep)
    wide = _raw(2, 6, A, [bytes(20)] * 33, [], [])
    with pytest.raises(DecodeError, match="exceeds"):
        wire.decode(wide)


def test_encode_refuses_what_a_peer_would_refuse() -> None:
    with pytest.raises(UsageError, match="ANNOUNCE"):
        wire.encode(wire.Announce(A, ()))
    with pytest.raises(UsageError, match="REQUEST"):
        wire.encode(wire.Request(A, 1, B, 0, 256, 0))
    with pytest.raises(UsageError, match="SUMMARY"):
        wire.encode(
            wire.Summary(A, False, (wire.SummaryEntry(C, 0, 0, H), wire.SummaryEntry(B, 0, 0, H)))
        )


def test_fit_blocks_respects_count_and_budget() -> None:
    blocks = [bytes(100)] * 20
    assert len(wire.fit_blocks(blocks, 10_000)) == wire.MAX_RESPONSE_BLOCKS
    assert len(wire.fit_blocks(blocks, 315)) == 3
    assert wire.fit_blocks(blocks, 50) == ()
    big = bytes(wire.BLOCK_WIRE_MAX + 1)
    assert wire.fit_blocks([big, bytes(10)], wire.RESPONSE_MAX_BYTES) == (bytes(10),)


def test_fuzz_random_bytes_raise_decode_error_only() -> None:
    rng = random.Random(2024)
    valid = [wire.encode(m) for m in _examples()]
    rejected = 0
    for i in range(3_000):
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(0, 64))
        elif i % 3 == 1:  # a plausible envelope prefix, then noise
            data = bytes([0x94 + rng.randrange(7), 2, rng.randrange(1, 7)]) + rng.randbytes(
                rng.randrange(0, 300)
            )
        else:  # a valid message with a few random bytes changed
            mutable = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            data = bytes(mutable)
        try:
            wire.decode(data)
        except DecodeError:
            rejected += 1
    assert rejected > 2_000, f"only {rejected} of 3000 fuzz inputs were rejected"


def _entries_by_the_full_checks(value: list[object]) -> tuple[wire.SummaryEntry, ...]:
    """The summary entry rules written out plainly, one field check at a time (the reference
    the decoder's inline fast path must agree with)."""
    from ledger import codec

    what = "SUMMARY"
    entries: list[wire.SummaryEntry] = []
    for item in value:
        e = codec.array(item, 4, f"{what} entry")
        entry = wire.SummaryEntry(
            codec.text(e[0], what, "entry device_id", 26, wire.is_device_id),
            codec.uint(e[1], what, "entry epoch", wire.MAX_EPOCH),
            codec.uint(e[2], what, "entry height", wire.MAX_HEIGHT),
            codec.bin_(e[3], what, "entry head_hash", size=wire.HASH_SIZE),
        )
        if entries and entries[-1].device_id >= entry.device_id:
            raise DecodeError(what, "not ascending")
        entries.append(entry)
    return tuple(entries)


_ids = st.sampled_from([A, B, C, "ef" + "d" * 24, "ef" + "a" * 23, "EF" + "a" * 24, "x", ""])
_ints = st.one_of(
    st.integers(min_value=-2, max_value=3),
    st.sampled_from([wire.MAX_HEIGHT, wire.MAX_HEIGHT + 1, wire.MAX_EPOCH, wire.MAX_EPOCH + 1]),
    st.booleans(),
    st.floats(allow_nan=False, width=32),
)
_hashes = st.one_of(st.just(H), st.binary(min_size=31, max_size=33), st.text(max_size=2))
_entry = st.one_of(
    st.lists(st.one_of(_ids, _ints, _hashes), max_size=5),
    st.tuples(_ids, _ints, _ints, _hashes).map(list),
    st.tuples(_ids, st.integers(0, 3), st.integers(0, 9), st.just(H)).map(list),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_entry, max_size=6), st.booleans())
def test_summary_entries_decode_exactly_as_the_full_checks_say(
    entries: list[object], sort: bool
) -> None:
    if sort:  # mostly valid, ascending lists too, not only rejects
        entries = sorted(entries, key=lambda e: str(e[0]) if isinstance(e, list) and e else "")
    payload = msgpack.packb([2, wire.SUMMARY, A, 1, entries], use_bin_type=True)
    try:
        expected: tuple[wire.SummaryEntry, ...] | None = _entries_by_the_full_checks(entries)
    except DecodeError:
        expected = None
    if expected is None:
        with pytest.raises(DecodeError):
            wire.decode(payload)
    else:
        msg = wire.decode(payload)
        assert isinstance(msg, wire.Summary) and msg.entries == expected
