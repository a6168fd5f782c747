"""Canonical encoding: known answers, an independent cross-check, codec rules, round trips.

Known answers are written byte by byte from docs/PROTOCOL.md's layout (MessagePack type bytes
spelled out here, not produced by our encoder). The cross-check decodes what we write with two
other MessagePack implementations (``msgpack.unpackb`` with its defaults and ``msgspec``) and
checks every signature with ``cryptography``'s Ed25519 over ``DOMAIN || body``, independent of the
PyNaCl code that made it. The reverse direction holds too: bytes made by msgspec and signed by
cryptography are accepted by our decoders.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import msgpack
import msgspec
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import Phase, assume, example, given, settings
from hypothesis import strategies as st

from ledger import codec, domains, envelope
from ledger.block import (
    MAX_READINGS,
    ZERO_HASH,
    Block,
    Header,
    decode_block,
    decode_header,
    header_hash,
    sign_header,
)
from ledger.certs import (
    NAME_RE,
    FleetRoots,
    countersign_rotation,
    decode_certificate,
    decode_revocation,
    decode_rotation,
    issue_certificate,
    sign_revocation,
    sign_rotation,
    verify_certificate,
    verify_revocation,
)
from ledger.epoch import EpochRecord, decode_epoch
from ledger.errors import DecodeError, UsageError
from ledger.evidence import decode_evidence, make_evidence
from ledger.identity import DEVICE_ID_RE, SigningKey
from ledger.reading import MAX_EPOCH, SENSOR_RE, Reading, decode_reading, sign_reading
from ledger.receipt import Receipt, decode_receipt

# RFC 8032 section 7.1, TEST 1 and TEST 2 secret keys (so the public keys are known answers too).
RFC_SEED_1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUB_1 = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SEED_2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC_PUB_2 = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
DEVICE = SigningKey(RFC_SEED_1)
AUTHORITY = SigningKey(RFC_SEED_2)
DEVICE_ID = "efcqwil5sgc5foy4ktujvjdoym"  # "ef" + base32(SHA-256(DEVICE_ID tag || RFC_PUB_1)[:15])
TAG = "urn:epc:id:sgtin:0614141.107346.2017"


def _str(s: str) -> bytes:
    """MessagePack str header + UTF-8, written out by hand (fixstr / str8 only)."""
    b = s.encode()
    return bytes([0xA0 | len(b)]) + b if len(b) < 32 else b"\xd9" + bytes([len(b)]) + b


def _bin(b: bytes) -> bytes:
    assert len(b) < 256
    return b"\xc4" + bytes([len(b)]) + b


def _u64(n: int) -> bytes:
    return b"\xcf" + struct.pack(">Q", n)


def _envelope(body: bytes, sig: bytes) -> bytes:
    return b"\x92" + _bin(body) + _bin(sig)


def _crypto_verify(public: bytes, signature: bytes, message: bytes) -> None:
    Ed25519PublicKey.from_public_bytes(public).verify(signature, message)


def _both_decoders(wire: bytes) -> Any:
    """Decode with msgpack's defaults and with msgspec; both must agree."""
    a = msgpack.unpackb(wire)
    b = msgspec.msgpack.decode(wire)
    assert a == b
    return a


# --- keys and names -------------------------------------------------------------------------


def test_rfc8032_keys_and_signature_over_empty_message() -> None:
    assert DEVICE.public.raw == RFC_PUB_1
    assert AUTHORITY.public.raw == RFC_PUB_2
    # RFC 8032 TEST 1: the signature of the empty message (empty domain + empty body).
    assert DEVICE.sign(b"", b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_device_id_and_key_id_known_answers() -> None:
    digest = hashlib.sha256(b"edgefleet/v1/device-id\x00" + RFC_PUB_1).digest()[:15]
    expected = "ef" + base64.b32encode(digest).decode().lower()
    assert expected == DEVICE_ID
    assert DEVICE.public.device_id == DEVICE_ID
    assert DEVICE.key_id == hashlib.sha256(b"edgefleet/v1/key-id\x00" + RFC_PUB_1).digest()[:8]
    assert DEVICE.key_id.hex() == "74846fee2a49031a"


def test_domain_tags_are_pinned_distinct_and_prefix_free() -> None:
    assert domains.ALL == (
        b"edgefleet/v1/reading\x00",
        b"edgefleet/v1/header\x00",
        b"edgefleet/v1/header-hash\x00",
        b"edgefleet/v1/certificate\x00",
        b"edgefleet/v1/key-rotation\x00",
        b"edgefleet/v1/key-rotation-countersign\x00",
        b"edgefleet/v1/revocation\x00",
        b"edgefleet/v1/device-id\x00",
        b"edgefleet/v1/key-id\x00",
        b"edgefleet/v1/storage-receipt\x00",
        b"edgefleet/v1/audit\x00",
        b"edgefleet/v1/placement\x00",
        b"edgefleet/v1/bundle-digest\x00",
        b"edgefleet/v1/seal-ephemeral\x00",
        b"edgefleet/v1/epoch\x00",
        b"edgefleet/v1/enroll-request\x00",
    )
    for a in domains.ALL:
        assert a.isascii() and a.endswith(b"\x00") and a.count(b"\x00") == 1
        for b in domains.ALL:
            assert a == b or not b.startswith(a), (a, b)


# --- readings -------------------------------------------------------------------------------

READING = Reading(DEVICE_ID, 0, 7, 1_700_000_000_123, "temp_mc", -18_250, TAG, None)
READING_BODY = (
    b"\x99"  # fixarray(9)
    + b"\x01"  # format
    + _str(DEVICE_ID)
    + b"\x00"  # epoch
    + b"\x07"  # seq
    + _u64(1_700_000_000_123)
    + _str("temp_mc")
    + b"\xd1"
    + struct.pack(">h", -18_250)  # int16
    + _str(TAG)
    + b"\xc0"  # text: nil
)
# Ed25519 is deterministic: pinned so any change to the bytes signed is caught.
READING_SIG = bytes.fromhex(
    "650852372b3a18a46a2aa456051500e73f8db56e35b8026483506b61daf784fa"
    "646192c709b40185b555b5ce5c062f68dde918304b88757a44a084214ec27d0f"
)


def test_reading_known_answer() -> None:
    sr = sign_reading(READING, DEVICE)
    assert sr.body == READING_BODY
    assert sr.signature == READING_SIG
    assert sr.wire == _envelope(READING_BODY, READING_SIG)
    assert sr.leaf_hash == hashlib.sha256(b"\x00" + sr.wire).digest()


def test_reading_cross_check_with_msgpack_msgspec_and_cryptography() -> None:
    sr = sign_reading(READING, DEVICE)
    body, sig = _both_decoders(sr.wire)
    assert body == sr.body and sig == sr.signature
    assert _both_decoders(body) == [
        1,
        DEVICE_ID,
        0,
        7,
        1_700_000_000_123,
        "temp_mc",
        -18_250,
        TAG,
        None,
    ]
    _crypto_verify(RFC_PUB_1, sig, b"edgefleet/v1/reading\x00" + body)
    with pytest.raises(InvalidSignature):  # the domain tag is part of what is signed
        _crypto_verify(RFC_PUB_1, sig, body)


def test_reading_written_by_msgspec_and_cryptography_is_accepted() -> None:
    fields = [1, DEVICE_ID, 3, 2**40, 12, "door", -1, None, "opened"]
    body = msgspec.msgpack.encode(fields)
    sig = Ed25519PrivateKey.from_private_bytes(RFC_SEED_1).sign(domains.READING + body)
    sr = decode_reading(msgspec.msgpack.encode([body, sig]))
    sr.verify(DEVICE.public)
    assert sr.reading == Reading(DEVICE_ID, 3, 2**40, 12, "door", -1, None, "opened")
    assert sr.reading.encode_body() == body


# --- headers and blocks ---------------------------------------------------------------------

HEADER = Header(
    DEVICE_ID,
    2,
    1,
    bytes(range(32)),
    b"\x11" * 32,
    b"\x22" * 32,
    3,
    1_700_000_000_000,
    1_700_000_002_000,
    DEVICE.key_id,
)
HEADER_BODY = (
    b"\x9b\x01"
    + _str(DEVICE_ID)
    + b"\x02\x01"
    + _bin(bytes(range(32)))
    + _bin(b"\x11" * 32)
    + _bin(b"\x22" * 32)
    + b"\x03"
    + _u64(1_700_000_000_000)
    + _u64(1_700_000_002_000)
    + _bin(DEVICE.key_id)
)


def test_header_known_answer_and_cross_check() -> None:
    sh = sign_header(HEADER, DEVICE)
    assert sh.body == HEADER_BODY
    assert sh.hash == hashlib.sha256(b"edgefleet/v1/header-hash\x00" + HEADER_BODY).digest()
    assert sh.hash == header_hash(HEADER_BODY)
    assert sh.wire == _envelope(HEADER_BODY, sh.signature)
    body, sig = _both_decoders(sh.wire)
    fields = _both_decoders(body)
    assert fields == [
        1,
        DEVICE_ID,
        2,
        1,
        bytes(range(32)),
        b"\x11" * 32,
        b"\x22" * 32,
        3,
        1_700_000_000_000,
        1_700_000_002_000,
        DEVICE.key_id,
    ]
    _crypto_verify(RFC_PUB_1, sig, b"edgefleet/v1/header\x00" + body)
    with pytest.raises(InvalidSignature):
        _crypto_verify(RFC_PUB_1, sig, domains.READING + body)


def test_block_cross_check() -> None:
    readings = [sign_reading(Reading(DEVICE_ID, 0, s, 1000 + s, "t", s), DEVICE) for s in (1, 2)]
    header = Header(DEVICE_ID, 0, 0, ZERO_HASH, ZERO_HASH, ZERO_HASH, 2, 1001, 1002, DEVICE.key_id)
    wire = Block(sign_header(header, DEVICE), tuple(readings)).encode()
    assert _both_decoders(wire) == [sign_header(header, DEVICE).wire, [r.wire for r in readings]]
    back = decode_block(wire)
    assert [r.reading for r in back.readings] == [r.reading for r in readings]


# --- certificates, rotations, revocations ---------------------------------------------------


def test_certificate_known_answer_and_cross_check() -> None:
    owner = bytes(range(100, 132))
    cert = issue_certificate(
        AUTHORITY,
        DEVICE.public,
        kind="medical-freezer",
        model="BB-7",
        site="hospital:3",
        owner_x25519=owner,
        not_before_ms=1_000,
        not_after_ms=2**33,
        serial=70_000,
    )
    expected_body = (
        b"\x9b\x01"
        + _bin(RFC_PUB_1)
        + _str(DEVICE_ID)
        + _str("medical-freezer")
        + _str("BB-7")
        + _str("hospital:3")
        + _bin(owner)
        + b"\xcd"
        + struct.pack(">H", 1_000)
        + _u64(2**33)
        + b"\xce"
        + struct.pack(">I", 70_000)
        + _bin(AUTHORITY.key_id)
    )
    body, sig = _both_decoders(cert.wire)
    assert body == expected_body
    _crypto_verify(RFC_PUB_2, sig, b"edgefleet/v1/certificate\x00" + body)
    assert _both_decoders(body)[2] == DEVICE_ID
    assert verify_certificate(cert.wire, FleetRoots.of(AUTHORITY.public), 5_000) == cert


def test_rotation_cross_check() -> None:
    new = SigningKey(bytes(32))
    half = sign_rotation(DEVICE_ID, DEVICE, new.public, 100, 1_700_000_000_000, AUTHORITY.key_id)
    wire = countersign_rotation(half, AUTHORITY)
    body, old_sig, auth_sig = _both_decoders(wire)
    assert _both_decoders(half) == [body, old_sig]
    assert _both_decoders(body) == [
        1,
        DEVICE_ID,
        DEVICE.key_id,
        new.public.raw,
        100,
        1_700_000_000_000,
        AUTHORITY.key_id,
    ]
    _crypto_verify(RFC_PUB_1, old_sig, b"edgefleet/v1/key-rotation\x00" + body)
    _crypto_verify(
        RFC_PUB_2, auth_sig, b"edgefleet/v1/key-rotation-countersign\x00" + body + old_sig
    )
    rot = decode_rotation(wire)
    assert (rot.device_id, rot.old_key_id, rot.new_key, rot.effective_height) == (
        DEVICE_ID,
        DEVICE.key_id,
        new.public,
        100,
    )


def test_revocation_cross_check() -> None:
    wire = sign_revocation(AUTHORITY, DEVICE_ID, DEVICE.key_id, 42, "key-compromise", 7)
    body, sig = _both_decoders(wire)
    assert body == (
        b"\x97\x01"
        + _str(DEVICE_ID)
        + _bin(DEVICE.key_id)
        + b"\x2a"
        + _str("key-compromise")
        + b"\x07"
        + _bin(AUTHORITY.key_id)
    )
    _crypto_verify(RFC_PUB_2, sig, b"edgefleet/v1/revocation\x00" + body)
    rev = verify_revocation(wire, FleetRoots.of(AUTHORITY.public))
    assert (rev.device_id, rev.key_id, rev.from_height, rev.reason) == (
        DEVICE_ID,
        DEVICE.key_id,
        42,
        "key-compromise",
    )
    device_wide = decode_revocation(sign_revocation(AUTHORITY, DEVICE_ID, None, 0, "stolen", 7))
    assert device_wide.key_id is None


def test_evidence_cross_check() -> None:
    cert = issue_certificate(
        AUTHORITY,
        DEVICE.public,
        kind="k",
        model="m",
        site="s",
        owner_x25519=None,
        not_before_ms=0,
        not_after_ms=1,
        serial=1,
    )
    a = sign_header(HEADER, DEVICE)
    b = sign_header(
        Header(
            DEVICE_ID,
            2,
            1,
            bytes(range(32)),
            b"\x11" * 32,
            b"\x33" * 32,
            3,
            1_700_000_000_000,
            1_700_000_002_000,
            DEVICE.key_id,
        ),
        DEVICE,
    )
    wire = make_evidence(cert.wire, (), a, b).encode()
    fields = _both_decoders(wire)
    assert fields[:3] == [1, cert.wire, []]
    assert sorted([fields[3], fields[4]], key=lambda w: decode_header(w).hash) == fields[3:]
    assert {fields[3], fields[4]} == {a.wire, b.wire}
    assert decode_evidence(wire).encode() == wire


# --- codec rules ----------------------------------------------------------------------------

LIMITS = codec.Limits(max_bytes=1024, max_array=16, max_str=64, max_bin=64)


@pytest.mark.parametrize(
    ("hex_", "why"),
    [
        ("cc05", "uint8 encoding of 5"),
        ("cd0005", "uint16 encoding of 5"),
        ("ce00000005", "uint32 encoding of 5"),
        ("cf0000000000000005", "uint64 encoding of 5"),
        ("cd00ff", "uint16 encoding of 255"),
        ("d0ff", "int8 encoding of -1"),
        ("d1ff80", "int16 encoding of -128"),
        ("d90161", "str8 encoding of 'a'"),
        ("da000161", "str16 encoding of 'a'"),
        ("c5000100", "bin16 encoding of 1 byte"),
        ("c600000001 00", "bin32 encoding of 1 byte"),
        ("dc000101", "array16 of 1"),
        ("dd0000000101", "array32 of 1"),
        ("ca3f800000", "float32"),
        ("cb3ff8000000000000", "float64"),
        ("80", "empty map"),
        ("8101a0", "map"),
        ("d40100", "fixext1"),
        ("c70001", "ext8 of length 0"),
        ("c1", "never-used byte"),
        ("0000", "trailing byte"),
        ("92 01", "truncated array"),
        ("a2c3", "invalid UTF-8"),
    ],
)
def test_decode_rejects_non_canonical_and_non_schema_forms(hex_: str, why: str) -> None:
    with pytest.raises(DecodeError):
        codec.decode(bytes.fromhex(hex_.replace(" ", "")), LIMITS, why)


def test_decode_accepts_canonical_forms() -> None:
    value = [
        0,
        127,
        128,
        255,
        256,
        -1,
        -32,
        -33,
        2**64 - 1,
        -(2**63),
        "",
        "a" * 31,
        "a" * 32,
        b"",
        b"x" * 64,
        None,
        True,
        False,
    ]
    data = msgpack.packb(value, use_bin_type=True)
    assert codec.decode(data, codec.Limits(4096, 64, 64, 64), "canonical") == value
    assert codec.encode(value) == data


def test_decode_enforces_limits_and_input_type() -> None:
    tiny = codec.Limits(max_bytes=8, max_array=2, max_str=2, max_bin=2)
    for data in (b"\x93\x01\x02\x03", b"\xa3abc", b"\xc4\x03abc", bytes(9)):
        with pytest.raises(DecodeError):
            codec.decode(data, tiny, "limits")
    for bad in (bytearray(b"\x01"), memoryview(b"\x01"), "x"):
        with pytest.raises(DecodeError):
            codec.decode(bad, LIMITS, "type")  # type: ignore[arg-type]


def test_encode_refuses_values_without_a_canonical_form() -> None:
    for bad in (1.5, {"a": 1}, (1, 2), [1, {"x": 2}], object()):
        with pytest.raises(TypeError):
            codec.encode(bad)  # type: ignore[arg-type]


def test_envelope_round_trip_and_limits() -> None:
    body = bytes(range(100))
    wire = envelope.wrap(body, b"s" * 64)
    assert envelope.unwrap(wire, "env", 100) == (body, b"s" * 64)
    with pytest.raises(DecodeError):
        envelope.unwrap(wire, "env", 99)  # body longer than the structure allows
    for sig in (b"s" * 63, b"s" * 65, b""):
        with pytest.raises(DecodeError):
            envelope.unwrap(envelope.wrap(body, sig), "env", 100)


def test_envelope_with_a_body_limit_below_64_still_accepts_its_signature() -> None:
    """``max_body`` bounds the body; the 64-byte signature must not be held to it."""
    assert envelope.unwrap(envelope.wrap(b"body", b"s" * 64), "env", 4) == (b"body", b"s" * 64)


# --- strings must be measured the way the decoder measures them ------------------------------


@pytest.mark.parametrize(
    ("tag", "text"),
    [("é" * 60, None), ("€" * 40, None), (None, "°C" * 30), ("🧊" * 25, None)],
    ids=["tag-60-e-acute", "tag-40-euro", "text-degrees", "tag-emoji"],
)
def test_non_ascii_reading_is_refused_locally_or_round_trips(
    tag: str | None, text: str | None
) -> None:
    """Whatever a device may construct and sign must decode again (reading.py's own rule)."""
    try:
        r = Reading(DEVICE_ID, 0, 1, 2, "label", 3, tag, text)
    except UsageError:
        return
    assert decode_reading(sign_reading(r, DEVICE).wire).reading == r


def test_sensor_names_with_a_trailing_newline_are_refused() -> None:
    with pytest.raises(UsageError):
        Reading(DEVICE_ID, 0, 1, 2, "temp_mc\n", 3)


def test_certificate_names_with_a_trailing_newline_are_refused() -> None:
    with pytest.raises((DecodeError, UsageError)):
        issue_certificate(
            AUTHORITY,
            DEVICE.public,
            kind="fridge\n",
            model="m",
            site="s",
            owner_x25519=None,
            not_before_ms=0,
            not_after_ms=1,
            serial=1,
        )


# --- round-trip properties ------------------------------------------------------------------

device_ids = st.from_regex(DEVICE_ID_RE.pattern.replace("$", r"\Z"), fullmatch=True)
sensors = st.from_regex(SENSOR_RE.pattern.replace("$", r"\Z"), fullmatch=True)
names = st.from_regex(NAME_RE.pattern.replace("$", r"\Z"), fullmatch=True)
u63 = st.integers(0, 2**63 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def reading_fields(draw: st.DrawFn) -> tuple[Any, ...]:
    return (
        draw(device_ids),
        draw(st.integers(0, MAX_EPOCH)),
        draw(u63),
        draw(u63),
        draw(sensors),
        draw(i64),
        draw(st.none() | st.text(min_size=1, max_size=96)),
        draw(st.none() | st.text(min_size=1, max_size=64)),
    )


# No shrinking: a failure is reported as found (shrinking unicode examples takes ~20 s).
@settings(max_examples=300, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(reading_fields())
def test_every_constructible_reading_round_trips(fields: tuple[Any, ...]) -> None:
    try:
        r = Reading(*fields)
    except UsageError:
        assume(False)
        raise
    sr = sign_reading(r, DEVICE)
    back = decode_reading(sr.wire)
    assert back.reading == r
    assert back.wire == sr.wire and back.signature == sr.signature
    back.verify(DEVICE.public)
    assert _both_decoders(sr.body)[1:] == list(fields)


@settings(max_examples=200, deadline=None)
@given(
    device_ids,
    st.integers(0, MAX_EPOCH),
    u63,
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.integers(1, MAX_READINGS),
    u63,
    u63,
)
def test_headers_round_trip(
    device_id: str,
    epoch: int,
    height: int,
    prev: bytes,
    hist: bytes,
    root: bytes,
    count: int,
    first: int,
    last: int,
) -> None:
    if height == 0:
        prev = ZERO_HASH
    h = Header(device_id, epoch, height, prev, hist, root, count, first, last, DEVICE.key_id)
    sh = sign_header(h, DEVICE)
    back = decode_header(sh.wire)
    assert back.header == h and back.hash == sh.hash and back.body == sh.body
    back.verify(DEVICE.public)
    _crypto_verify(RFC_PUB_1, back.signature, domains.HEADER + back.body)


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    names,
    names,
    names,
    st.none() | st.binary(min_size=32, max_size=32),
    u63,
    u63,
    u63,
)
def test_certificates_round_trip(
    seed: bytes,
    kind: str,
    model: str,
    site: str,
    owner: bytes | None,
    t1: int,
    t2: int,
    serial: int,
) -> None:
    device = SigningKey(seed)
    nb, na = min(t1, t2), max(t1, t2)
    cert = issue_certificate(
        AUTHORITY,
        device.public,
        kind=kind,
        model=model,
        site=site,
        owner_x25519=owner,
        not_before_ms=nb,
        not_after_ms=na,
        serial=serial,
    )
    assert decode_certificate(cert.wire) == cert
    assert verify_certificate(cert.wire, FleetRoots.of(AUTHORITY.public), nb) == cert
    assert (cert.device_id, cert.kind, cert.owner_x25519, cert.serial) == (
        device.public.device_id,
        kind,
        owner,
        serial,
    )
    body, sig = _both_decoders(cert.wire)
    _crypto_verify(RFC_PUB_2, sig, domains.CERTIFICATE + body)


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    u63,
    u63,
    st.none() | st.just(b"k" * 8),
    st.text(st.characters(codec="ascii"), max_size=64),
)
def test_rotations_and_revocations_round_trip(
    seed: bytes, height: int, t: int, key_id: bytes | None, reason: str
) -> None:
    new = SigningKey(seed)
    rot = decode_rotation(
        countersign_rotation(
            sign_rotation(DEVICE_ID, DEVICE, new.public, height, t, AUTHORITY.key_id), AUTHORITY
        )
    )
    assert (rot.new_key, rot.effective_height, rot.time_ms) == (new.public, height, t)
    rev = decode_revocation(sign_revocation(AUTHORITY, DEVICE_ID, key_id, height, reason, t))
    assert (rev.key_id, rev.from_height, rev.reason, rev.time_ms) == (key_id, height, reason, t)


# --- first_bin: the header of a stored block wire, without decoding the readings -------------


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=70_000),
    st.lists(st.binary(max_size=300), max_size=20)
    | st.integers(0, 70_000).map(lambda n: [b""] * n),
    st.integers(0, 2),
)
@example(b"a" * 300, [b""], 0)  # bin 16
@example(b"b" * 70_000, [b""] * 70_000, 1)  # bin 32, and an array 32 after it
def test_first_bin_is_the_first_element_of_the_array(
    first: bytes, rest: list[bytes], extra: int
) -> None:
    # Arrays of 2 (a block wire) and longer (array 16 and 32 headers for the rest as a list,
    # fixarray up to 15 and array 16 for the outer array), byte strings of every header size.
    wire = msgpack.packb([first, rest, *[None] * extra], use_bin_type=True)
    assert codec.first_bin(wire, "stored block") == first
    outer = msgpack.packb([first, *([0] * 20)], use_bin_type=True)  # array 16 outer header
    assert outer[0] == 0xDC and codec.first_bin(outer, "stored block") == first


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "expected a non-empty array"),
        (b"\x90", "expected a non-empty array"),  # fixarray of 0
        (b"\xdc\x00\x00", "expected a non-empty array"),  # array 16 of 0
        (b"\xc4\x01x", "expected a non-empty array"),  # bytes, not an array
        (b"\x92\xa1x\x90", "expected a byte string first"),  # a str first
        (b"\x92", "expected a byte string first"),  # nothing after the array header
        (b"\x92\xc4\x05abc", "byte string ends at byte 8, found 6 bytes"),  # truncated
        (b"\x92\xc5\x01", "byte string ends at byte"),  # truncated length
    ],
    ids=[
        "empty",
        "empty-fixarray",
        "empty-array16",
        "not-an-array",
        "str-first",
        "no-element",
        "truncated-bytes",
        "truncated-length",
    ],
)
def test_first_bin_refuses_what_is_not_an_array_opening_with_bytes(
    wire: bytes, reason: str
) -> None:
    with pytest.raises(DecodeError, match=f"^stored block: {reason}"):
        codec.first_bin(wire, "stored block")


# --- the four signed records share their steps (ledger/signed.py), not their messages ---------

_OTHER = "ef" + "a" * 24
_H = b"\x11" * 32
_BAD_BODIES = {
    "header-count": (
        [1, DEVICE_ID, 0, 1, _H, _H, _H, 0, 5, 6, DEVICE.key_id],
        decode_header,
        "header: field count: a block holds at least one reading, found 0",
    ),
    "header-format": (
        [2, DEVICE_ID, 0, 1, _H, _H, _H, 1, 5, 6, DEVICE.key_id],
        decode_header,
        "header: field format: expected 1, found 2",
    ),
    "reading-sensor": (
        [1, DEVICE_ID, 0, 1, 5, "Bad", 1, None, None],
        decode_reading,
        "reading: field sensor: 'Bad' is not allowed here",
    ),
    "reading-format": (
        [3, DEVICE_ID, 0, 1, 5, "temp", 1, None, None],
        decode_reading,
        "reading: field format: expected 1 or 2, found 3",
    ),
    "receipt-same-device": (
        [1, DEVICE_ID, DEVICE_ID, 0, 1, _H, 10, 5],
        decode_receipt,
        f"storage receipt: holder and owner are the same device ({DEVICE_ID})",
    ),
    "receipt-format": (
        [0, DEVICE_ID, _OTHER, 0, 1, _H, 10, 5],
        decode_receipt,
        "storage receipt: field format: expected 1, found 0",
    ),
    "epoch-order": (
        [1, DEVICE_ID, 1, 1, 0, _H, 5],
        decode_epoch,
        "epoch record: field new_epoch: expected above prev_epoch 1, found 1",
    ),
    "epoch-arity": (
        [1, DEVICE_ID, 2, 1, 0, _H],
        decode_epoch,
        "epoch record: expected an array of 7 fields, found 6",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_BODIES))
def test_each_signed_record_names_itself_once_in_its_decode_errors(case: str) -> None:
    fields, decode, message = _BAD_BODIES[case]
    body = codec.encode(fields)
    with pytest.raises(DecodeError) as err:
        decode(envelope.wrap(body, DEVICE.sign(b"any", body)))
    assert str(err.value) == message


def test_a_record_built_locally_against_the_rules_is_our_bug_with_the_same_message() -> None:
    with pytest.raises(UsageError) as err:
        Receipt(DEVICE_ID, DEVICE_ID, 0, 1, _H, 10, 5)
    assert str(err.value) == _BAD_BODIES["receipt-same-device"][2]
    with pytest.raises(UsageError) as err:
        EpochRecord(DEVICE_ID, 1, 1, 0, _H, 5)
    assert str(err.value) == _BAD_BODIES["epoch-order"][2]
