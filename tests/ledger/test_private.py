"""Private readings (format 2) and read grants: docs/PRIVATE.md.

Evidence in layers: the document's fixed vector (checked against the code and against an
independent implementation from the document alone), round trips through the real ChainWriter
and store, verifiers that need no key, a curious holder that fails to read what it holds, named
mutations of epk/ct, grants that open exactly their device and range, and a Hypothesis round trip.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import codec, domains, sealbox
from ledger.block import Block, decode_block
from ledger.chain import ChainWriter
from ledger.errors import DecodeError, SignatureError, UsageError
from ledger.identity import SigningKey
from ledger.private import (
    Grant,
    GrantOpener,
    OpenError,
    OwnerOpener,
    make_grant,
    open_grant,
    open_reading,
)
from ledger.reading import (
    MAX_TAG,
    MAX_TEXT,
    Reading,
    SealedContentError,
    SealedReading,
    SignedReading,
    decode_reading,
    seal_reading,
    sign_reading,
)
from ledger.store import Store
from ledger.verify import verify_block, verify_chain

DOC = Path(__file__).resolve().parents[2] / "docs" / "PRIVATE.md"
T0 = 1_700_000_000_000


def _sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _x25519(name: str) -> tuple[bytes, bytes]:
    secret = _sha(f"test x25519 {name}")
    return secret, nacl.bindings.crypto_scalarmult_base(secret)


DEVICE = SigningKey(_sha("test device a"))
OTHER_DEVICE = SigningKey(_sha("test device b"))
OWNER_SK, OWNER_PK = _x25519("owner")
GRANTEE_SK, GRANTEE_PK = _x25519("grantee")
HOLDER_SK, HOLDER_PK = _x25519("holder")


def _reading(seq: int, time_ms: int, key: SigningKey = DEVICE, **kw: object) -> Reading:
    fields: dict[str, object] = {"sensor": "fridge.temp_mc", "value": 4000 + seq, "tag": None}
    fields.update(kw)
    return Reading(key.public.device_id, 0, seq, time_ms, **fields)  # type: ignore[arg-type]


def _private(r: Reading, key: SigningKey = DEVICE, owner: bytes = OWNER_PK) -> SignedReading:
    return sign_reading(seal_reading(r, owner), key)


# --- the document's vector ----------------------------------------------------------------------


def _doc_vector() -> dict[str, str]:
    m = re.search(r"```private-vector\n(.*?)```", DOC.read_text(), re.S)
    assert m is not None, "docs/PRIVATE.md has no private-vector block"
    pairs = (line.split(" = ", 1) for line in m.group(1).strip().splitlines())
    return {k.strip(): v.strip() for k, v in pairs}


V = _doc_vector()
VECTOR_READING = dict(
    epoch=0,
    seq=42,
    time_ms=1_700_000_000_000,
    sensor="fridge.temp_mc",
    value=4250,
    tag="urn:epc:id:sgtin:4012345.011111.7",
    text=None,
)


def test_vector_is_what_the_code_produces() -> None:
    key = SigningKey(_sha("edgefleet private vector: device"))
    owner_sk = _sha("edgefleet private vector: owner")
    esk = _sha("edgefleet private vector: ephemeral")
    owner_pk = sealbox.public_key_of(owner_sk)
    r = Reading(key.public.device_id, **VECTOR_READING)  # type: ignore[arg-type]
    sealed = seal_reading(r, owner_pk, ephemeral_secret=esk)
    sr = sign_reading(sealed, key)
    produced = {
        "device_seed": key.seed.hex(),
        "device_public": key.public.hex(),
        "device_id": key.public.device_id,
        "owner_secret": owner_sk.hex(),
        "owner_public": owner_pk.hex(),
        "ephemeral_secret": esk.hex(),
        "epk": sealed.epk.hex(),
        "k": OwnerOpener(owner_sk).reading_key(sealed).hex(),
        "nonce": sealbox.nonce(sealed.epk, owner_pk).hex(),
        "content": r.encode_content().hex(),
        "ct": sealed.ciphertext.hex(),
        "body": sr.body.hex(),
        "signature": sr.signature.hex(),
        "wire": sr.wire.hex(),
        "leaf_hash": sr.leaf_hash.hex(),
    }
    assert produced == V
    assert open_reading(decode_reading(sr.wire), OwnerOpener(owner_sk)) == r


def test_vector_checks_out_with_an_independent_implementation() -> None:
    """From docs/PRIVATE.md alone: msgpack, libsodium bindings, hashlib, cryptography."""
    b = {k: bytes.fromhex(v) for k, v in V.items() if k != "device_id"}
    assert hashlib.sha256(b"edgefleet private vector: owner").digest() == b["owner_secret"]
    envelope = msgpack.unpackb(b["wire"], raw=False)
    assert envelope == [b["body"], b["signature"]]
    Ed25519PublicKey.from_public_bytes(b["device_public"]).verify(
        b["signature"], b"edgefleet/v1/reading\x00" + b["body"]
    )
    body = msgpack.unpackb(b["body"], raw=False)
    assert body == [2, V["device_id"], 0, 42, 1_700_000_000_000, b["epk"], b["ct"]]
    assert hashlib.sha256(b"\x00" + b["wire"]).digest() == b["leaf_hash"]
    # The owner opens it as a standard libsodium sealed box.
    owner = nacl.public.PrivateKey(b["owner_secret"])
    assert bytes(owner.public_key) == b["owner_public"]
    content = nacl.public.SealedBox(owner).decrypt(b["epk"] + b["ct"])
    assert content == b["content"]
    assert msgpack.unpackb(content, raw=False) == [
        "fridge.temp_mc",
        4250,
        "urn:epc:id:sgtin:4012345.011111.7",
        None,
    ]
    # k, spelled out: what a grant hands over; the sender's and the owner's sides agree.
    k = nacl.bindings.crypto_box_beforenm(b["epk"], b["owner_secret"])
    sender_k = nacl.bindings.crypto_box_beforenm(b["owner_public"], b["ephemeral_secret"])
    assert k == b["k"] == sender_k
    assert hashlib.blake2b(b["epk"] + b["owner_public"], digest_size=24).digest() == b["nonce"]
    assert nacl.bindings.crypto_box_open_afternm(b["ct"], b["nonce"], k) == content


# --- format 2 decoding and the sealed reading API --------------------------------------------


def test_a_private_reading_round_trips_and_keeps_order_fields_clear() -> None:
    r = _reading(7, T0, tag="urn:epc:id:sgtin:4012345.011111.7", text="door")
    sr = _private(r)
    got = decode_reading(sr.wire)
    assert got == sr and got.private and not sign_reading(r, DEVICE).private
    sealed = got.reading
    assert isinstance(sealed, SealedReading)
    assert (sealed.device_id, sealed.epoch, sealed.seq, sealed.time_ms) == (
        r.device_id,
        0,
        7,
        T0,
    )
    assert sealed.tag is None  # no clear tag: tag indexes pass it by
    assert r.tag is not None and r.tag.encode() not in sr.wire
    assert b"fridge.temp_mc" not in sr.wire and b"door" not in sr.wire
    assert open_reading(got, OwnerOpener(OWNER_SK)) == r


@pytest.mark.parametrize("field", ["sensor", "value", "text"])
def test_reading_the_content_of_a_private_reading_is_an_explicit_error(field: str) -> None:
    sr = decode_reading(_private(_reading(1, T0)).wire)
    with pytest.raises(SealedContentError, match=f"private: its {field} is sealed"):
        getattr(sr.reading, field)


def test_sealing_the_same_reading_twice_draws_fresh_ephemeral_keys() -> None:
    r = _reading(1, T0)
    a, b = seal_reading(r, OWNER_PK), seal_reading(r, OWNER_PK)
    assert a.epk != b.epk and a.ciphertext != b.ciphertext


def _body(fields: list[object]) -> bytes:
    body = codec.encode(fields)
    return codec.encode([body, DEVICE.sign(domains.READING, body)])


def _good_fields() -> list[object]:
    s = seal_reading(_reading(3, T0), OWNER_PK)
    return [2, s.device_id, s.epoch, s.seq, s.time_ms, s.epk, s.ciphertext]


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("nine-fields", lambda f: [*f, None, None], "expected an array of 7 fields, found 9"),
        ("epk-31", lambda f: [*f[:5], f[5][:31], f[6]], "field epk: expected 32 bytes, found 31"),
        ("epk-str", lambda f: [*f[:5], "x" * 32, f[6]], "field epk: expected bytes"),
        ("ct-short", lambda f: [*f[:6], b"\x00" * 21], "field ct: expected at least 22 bytes"),
        ("ct-long", lambda f: [*f[:6], b"\x00" * 225], "limit"),
        ("seq-negative", lambda f: [*f[:3], -1, *f[4:]], "field seq"),
        ("format-3", lambda f: [3, *f[1:]], "array of 9 fields, found 7"),
        ("format-3-nine", lambda f: [3, *f[1:], None, None], "field format: expected 1 or 2"),
    ],
)
def test_malformed_format_2_bodies_are_refused(name: str, change: object, message: str) -> None:
    wire = _body(change(_good_fields()))  # type: ignore[operator]
    with pytest.raises(DecodeError, match=re.escape(message)):
        decode_reading(wire)


def test_a_non_canonical_format_2_body_is_refused() -> None:
    f = _good_fields()
    # seq 3 as a uint16 instead of a fixint: same value, not the canonical bytes.
    body = codec.encode(f[:3]).replace(b"\x93", b"\x97", 1) + b"\xcd\x00\x03"
    body += b"".join(codec.encode(x) for x in f[4:])  # type: ignore[arg-type]
    assert msgpack.unpackb(body, raw=False)[3] == 3
    wire = codec.encode([body, DEVICE.sign(domains.READING, body)])
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_reading(wire)


def test_the_largest_private_reading_fits_the_block_limits() -> None:
    big = Reading(
        DEVICE.public.device_id,
        (1 << 32) - 1,
        (1 << 63) - 1,
        (1 << 63) - 1,
        "s" * 32,
        -(1 << 63),
        "t" * MAX_TAG,
        "x" * MAX_TEXT,
    )
    sr = _private(big)
    assert len(sr.body) <= 320 and len(sr.wire) <= 400
    assert open_reading(decode_reading(sr.wire), OwnerOpener(OWNER_SK)) == big


@pytest.mark.parametrize("bad", [b"\x00" * 32, b"\x01" + b"\x00" * 31, b"\x00" * 31])
def test_unusable_owner_keys_are_refused_before_anything_is_signed(
    bad: bytes, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="X25519"):
        seal_reading(_reading(1, T0), bad)
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(UsageError, match="X25519"):
        ChainWriter(store, DEVICE, DEVICE.public.device_id, owner_x25519=bad)


# --- the chain writer, the store and verifiers ----------------------------------------------


def _private_chain(path: Path, blocks: int = 3, per_block: int = 5) -> list[Block]:
    out = []
    with Store(path) as store:
        w = ChainWriter(store, DEVICE, DEVICE.public.device_id, owner_x25519=OWNER_PK)
        for b in range(blocks):
            for i in range(per_block):
                tag = "urn:epc:id:sgtin:4012345.011111.7" if i == 2 else None
                w.record(T0 + 1000 * (b * per_block + i), "fridge.temp_mc", 4000 + i, tag)
            block = w.seal()
            assert block is not None
            out.append(block)
        w.record(T0 + 999_000, "door.open", 1)
        w.flush()
    return out


def test_chain_writer_seals_every_reading_and_the_owner_reads_them_back(tmp_path: Path) -> None:
    blocks = _private_chain(tmp_path / "s.sqlite")
    with Store(tmp_path / "s.sqlite") as store:
        stored = list(store.blocks())
        pending = store.pending()
        assert store.tags() == []  # a private reading has no clear tag to index
        # A restart re-verifies the pending private reading by signature, and carries on.
        w = ChainWriter(store, DEVICE, DEVICE.public.device_id, owner_x25519=OWNER_PK)
        assert w.next_seq == 16
        assert w.seal() is not None
    assert [b.encode() for b in stored] == [b.encode() for b in blocks]
    readings = [sr for b in stored for sr in b.readings] + pending
    assert all(sr.private for sr in readings)
    owner = OwnerOpener(OWNER_SK)
    opened = [open_reading(sr, owner) for sr in readings]
    assert [(r.seq, r.sensor, r.value) for r in opened[:3]] == [
        (0, "fridge.temp_mc", 4000),
        (1, "fridge.temp_mc", 4001),
        (2, "fridge.temp_mc", 4002),
    ]
    assert opened[2].tag == "urn:epc:id:sgtin:4012345.011111.7"
    assert (opened[-1].sensor, opened[-1].value, opened[-1].time_ms) == (
        "door.open",
        1,
        T0 + 999_000,
    )


def test_verifiers_pass_on_private_blocks_without_any_key(tmp_path: Path) -> None:
    blocks = _private_chain(tmp_path / "s.sqlite")
    received = [decode_block(b.encode()) for b in blocks]  # what a peer gets on the wire
    head, count = verify_chain(received, lambda key_id, height: DEVICE.public)
    assert head is not None and head.header.height == 2 and count == 15
    for block in received:
        verify_block(block, DEVICE.public)


# --- a curious holder ---------------------------------------------------------------------------


def test_a_curious_holder_cannot_read_the_private_readings_it_holds(tmp_path: Path) -> None:
    blocks = _private_chain(tmp_path / "own.sqlite")
    wire = blocks[1].encode()
    with Store(tmp_path / "holder.sqlite") as holder:
        assert holder.put_replica(decode_block(wire))
        assert holder.tags() == []
        replica = holder.replica(DEVICE.public.device_id, 1)
    assert replica is not None
    verify_block(replica, DEVICE.public)  # the holder can check everything...
    for sr in replica.readings:  # ...and read nothing.
        with pytest.raises(SealedContentError):
            _ = sr.reading.value
        with pytest.raises(OpenError, match="is private") as no_key:
            open_reading(sr, None)
        assert no_key.value.reason == "no key given"
        for wrong in (HOLDER_SK, GRANTEE_SK, _sha("any key at all")):
            with pytest.raises(OpenError, match="sealed to another key, or altered") as err:
                open_reading(sr, OwnerOpener(wrong))
            assert err.value.code == "cannot-open"
        sealed = sr.reading
        assert isinstance(sealed, SealedReading)
        with pytest.raises(nacl.exceptions.CryptoError):
            nacl.public.SealedBox(nacl.public.PrivateKey(HOLDER_SK)).decrypt(
                sealed.epk + sealed.ciphertext
            )
    # A grant made for someone else does not open for the holder either.
    grant = make_grant(OWNER_SK, replica.readings, GRANTEE_PK, DEVICE.public.device_id, 0, T0 * 2)
    with pytest.raises(OpenError, match="grant is sealed to another grantee key") as err:
        open_grant(HOLDER_SK, grant)
    assert err.value.expected == GRANTEE_PK.hex()


# --- named mutations -----------------------------------------------------------------------------


def _field_span(sr: SignedReading, value: bytes) -> range:
    start = sr.wire.index(value)
    return range(start, start + len(value))


@pytest.mark.parametrize("field", ["epk", "ct"])
def test_every_byte_flip_of_epk_or_ct_breaks_the_signature(field: str) -> None:
    sr = _private(_reading(5, T0, tag="urn:epc:id:sgtin:4012345.011111.7"))
    sealed = sr.reading
    assert isinstance(sealed, SealedReading)
    span = _field_span(sr, sealed.epk if field == "epk" else sealed.ciphertext)
    for pos in span:
        bad = bytearray(sr.wire)
        bad[pos] ^= 0x01
        got = decode_reading(bytes(bad))  # still well formed...
        with pytest.raises(SignatureError):
            got.verify(DEVICE.public)  # ...but no longer what the device signed
        with pytest.raises(OpenError):  # and the owner's key refuses it too
            open_reading(got, OwnerOpener(OWNER_SK))


def test_a_validly_signed_but_garbled_seal_is_reported_by_the_owner() -> None:
    """A faulty device signs a ciphertext that does not open: the signature holds, opening
    says what is wrong instead of returning junk."""
    s = seal_reading(_reading(5, T0), OWNER_PK)
    garbled = SealedReading(s.device_id, 0, 5, T0, s.epk, s.ciphertext[:-1] + b"\x00")
    sr = decode_reading(sign_reading(garbled, DEVICE).wire)
    sr.verify(DEVICE.public)
    with pytest.raises(OpenError, match="sealed to another key, or altered"):
        open_reading(sr, OwnerOpener(OWNER_SK))
    # Content that opens but is not a valid reading content is named as such.
    epk, ct = sealbox.seal(codec.encode(["Bad Sensor", 1, None, None]), OWNER_PK)
    bad = decode_reading(sign_reading(SealedReading(s.device_id, 0, 6, T0, epk, ct), DEVICE).wire)
    with pytest.raises(OpenError, match=r"content is not valid.*sensor") as err:
        open_reading(bad, OwnerOpener(OWNER_SK))
    assert err.value.reason == "content not valid"


# --- grants ----------------------------------------------------------------------------------


def _mixed_readings() -> list[SignedReading]:
    """Device A: private readings at T0 + 0..9 s; device B: private, same owner; A plain one."""
    a = [_private(_reading(i, T0 + 1000 * i)) for i in range(10)]
    b = [_private(_reading(i, T0 + 1000 * i, OTHER_DEVICE), OTHER_DEVICE) for i in range(3)]
    plain = [sign_reading(_reading(10, T0 + 10_000), DEVICE)]
    return a + b + plain


def test_a_grant_opens_exactly_its_device_and_range() -> None:
    readings = _mixed_readings()
    dev_a = DEVICE.public.device_id
    blob = make_grant(OWNER_SK, readings, GRANTEE_PK, dev_a, T0 + 3000, T0 + 6000)
    grant = open_grant(GRANTEE_SK, blob)
    assert (grant.device_id, grant.from_ms, grant.to_ms) == (dev_a, T0 + 3000, T0 + 6000)
    assert sorted(grant.keys) == [(0, 3), (0, 4), (0, 5), (0, 6)]
    assert grant.owner_x25519 == OWNER_PK
    opener = GrantOpener(grant)
    owner = OwnerOpener(OWNER_SK)
    opened, refused = [], {}
    for sr in readings:
        try:
            r = open_reading(sr, opener)
        except OpenError as exc:
            refused[(sr.reading.device_id, sr.reading.seq)] = exc.reason
            continue
        assert r == open_reading(sr, owner)
        opened.append((sr.reading.device_id, sr.reading.seq, sr.private))
    assert opened == [(dev_a, s, True) for s in (3, 4, 5, 6)] + [(dev_a, 10, False)]
    assert refused == {
        **{(dev_a, s): "outside the grant's time range" for s in (0, 1, 2, 7, 8, 9)},
        **{(OTHER_DEVICE.public.device_id, s): "grant for another device" for s in (0, 1, 2)},
    }


def test_grant_refusals_name_what_did_not_match() -> None:
    readings = _mixed_readings()
    dev_a, dev_b = DEVICE.public.device_id, OTHER_DEVICE.public.device_id
    grant = open_grant(
        GRANTEE_SK, make_grant(OWNER_SK, readings, GRANTEE_PK, dev_a, T0 + 3000, T0 + 6000)
    )
    opener = GrantOpener(grant)
    with pytest.raises(OpenError, match="time outside the grant") as err:
        opener.open(readings[8])
    assert (err.value.expected, err.value.found) == (f"{T0 + 3000}..{T0 + 6000} ms", T0 + 8000)
    with pytest.raises(OpenError, match="grant is for another device") as err:
        opener.open(readings[10])
    assert (err.value.expected, err.value.found) == (dev_a, dev_b)
    # A reading in range that the grant does not list (made after the grant, say).
    late = _private(_reading(50, T0 + 4500))
    with pytest.raises(OpenError, match="not among the grant's 4 readings"):
        opener.open(late)
    # A listed (epoch, seq) whose seal is not the one the grant's key opens.
    resealed = _private(_reading(4, T0 + 4000))
    with pytest.raises(OpenError, match="does not open with the grant's key"):
        opener.open(resealed)


def test_a_grant_holds_no_owner_secret_and_does_not_open_when_altered() -> None:
    readings = _mixed_readings()
    dev_a = DEVICE.public.device_id
    blob = make_grant(OWNER_SK, readings, GRANTEE_PK, dev_a, T0, T0 + 9000)
    grant = open_grant(GRANTEE_SK, blob)
    assert OWNER_SK not in blob and OWNER_SK not in grant.content()
    fields = msgpack.unpackb(blob, raw=False)
    assert fields[:2] == ["edgefleet-grant/1", GRANTEE_PK]
    for pos in (len(blob) - 1, len(blob) - 20):  # inside the sealed content
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(OpenError, match="grant does not open") as err:
            open_grant(GRANTEE_SK, bytes(bad))
        assert err.value.reason == "grant altered"
    with pytest.raises(DecodeError, match="field magic"):
        open_grant(GRANTEE_SK, codec.encode(["edgefleet-grant/9", *fields[1:]]))
    with pytest.raises(DecodeError):
        open_grant(GRANTEE_SK, blob + b"\x00")


def test_a_grant_is_refused_when_nothing_is_in_range_or_the_owner_key_is_wrong() -> None:
    readings = _mixed_readings()
    dev_a = DEVICE.public.device_id
    with pytest.raises(UsageError, match="no private reading"):
        make_grant(OWNER_SK, readings, GRANTEE_PK, dev_a, T0 + 100_000, T0 + 200_000)
    with pytest.raises(OpenError, match="sealed to another key"):
        make_grant(HOLDER_SK, readings, GRANTEE_PK, dev_a, T0, T0 + 9000)


def test_grant_content_is_canonical_and_checked_on_decode() -> None:
    g = Grant(OWNER_PK, DEVICE.public.device_id, 5, 9, {(0, 2): b"k" * 32, (0, 1): b"j" * 32})
    f = msgpack.unpackb(g.content(), raw=False)
    assert f == [1, OWNER_PK, DEVICE.public.device_id, 5, 9, [[0, 1, b"j" * 32], [0, 2, b"k" * 32]]]
    with pytest.raises(UsageError, match="to_ms: 4 is before from_ms 5"):
        Grant(OWNER_PK, DEVICE.public.device_id, 5, 4, {(0, 1): b"j" * 32})
    # Out-of-order entries in a sealed grant are refused.
    f[5].reverse()
    epk, ct = sealbox.seal(codec.encode(f), GRANTEE_PK)
    blob = codec.encode(["edgefleet-grant/1", GRANTEE_PK, epk, ct])
    with pytest.raises(DecodeError, match="strictly increase"):
        open_grant(GRANTEE_SK, blob)


# --- properties ------------------------------------------------------------------------------

_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(0, (1 << 63) - 1),
    time_ms=st.integers(0, (1 << 63) - 1),
    sensor=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True),
    value=st.integers(-(1 << 63), (1 << 63) - 1),
    tag=st.none() | _ascii.filter(lambda s: len(s) <= MAX_TAG),
    text=st.none() | _ascii.filter(lambda s: len(s) <= MAX_TEXT),
)
def test_any_content_round_trips_through_seal_sign_decode_open(
    seq: int, time_ms: int, sensor: str, value: int, tag: str | None, text: str | None
) -> None:
    r = Reading(DEVICE.public.device_id, 0, seq, time_ms, sensor, value, tag, text)
    sr = _private(r)
    assert len(sr.wire) <= 400
    got = decode_reading(sr.wire)
    got.verify(DEVICE.public)
    assert open_reading(got, OwnerOpener(OWNER_SK)) == r
    sealed = got.reading
    assert isinstance(sealed, SealedReading)
    assert (
        nacl.public.SealedBox(nacl.public.PrivateKey(OWNER_SK)).decrypt(
            sealed.epk + sealed.ciphertext
        )
        == r.encode_content()
    )
    grant = open_grant(
        GRANTEE_SK, make_grant(OWNER_SK, [got], GRANTEE_PK, r.device_id, time_ms, time_ms)
    )
    assert GrantOpener(grant).open(got) == r


def test_the_chain_writer_seals_reproducibly_and_never_reuses_an_ephemeral_key(
    tmp_path: Path,
) -> None:
    first = _private_chain(tmp_path / "a.sqlite")
    again = _private_chain(tmp_path / "b.sqlite")
    assert [b.encode() for b in first] == [b.encode() for b in again]  # a seed replays bytes
    epks = {sr.reading.epk for b in first for sr in b.readings}  # type: ignore[union-attr]
    assert len(epks) == sum(len(b.readings) for b in first)  # one ephemeral key per reading
    # The same position with other content (a crash replaying a seq) gets another key.
    with Store(tmp_path / "c.sqlite") as store:
        w = ChainWriter(store, DEVICE, DEVICE.public.device_id, owner_x25519=OWNER_PK)
        one = w.record(T0, "fridge.temp_mc", 4000)
    with Store(tmp_path / "d.sqlite") as store:
        w = ChainWriter(store, DEVICE, DEVICE.public.device_id, owner_x25519=OWNER_PK)
        other = w.record(T0, "fridge.temp_mc", 4001)
    assert one.reading.seq == other.reading.seq == 0
    assert one.reading.epk != other.reading.epk  # type: ignore[union-attr]
    # ... and a device with another secret key derives another one for the same reading.
    with Store(tmp_path / "e.sqlite") as store:
        w = ChainWriter(store, OTHER_DEVICE, DEVICE.public.device_id, owner_x25519=OWNER_PK)
        stranger = w.record(T0, "fridge.temp_mc", 4000)
    assert stranger.reading.epk != one.reading.epk  # type: ignore[union-attr]
