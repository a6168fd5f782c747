"""Offline proof bundles (ledger/bundle.py): built from real chains, verified with nothing else.

The evidence the issue asks for: every single-byte change of a realistic bundle (three devices,
one of them across a key rotation with a key revocation, two dozen readings in blocks below and
at the heads) makes ``verify_bundle`` raise ``BundleError``, and nothing else ever escapes. Bundles
are also taken apart and put back together here with plain msgpack and hashlib, following
docs/BUNDLE.md only; that re-implementation crafts the malformed bundles (duplicates, unused
entries, blocks above the head, non-canonical forms) whose digest is right, so the check under
test is the only thing that fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import bundle as bundle_mod
from ledger import sealbox
from ledger.block import Block, SignedHeader, sign_header
from ledger.bundle import BundleBuilder, BundleError, verify_bundle
from ledger.certs import (
    Certificate,
    FleetRoots,
    countersign_rotation,
    issue_certificate,
    sign_revocation,
    sign_rotation,
)
from ledger.chain import ChainWriter
from ledger.errors import LedgerError, SignatureError, UsageError
from ledger.evidence import decode_evidence, make_evidence
from ledger.identity import PublicKey, SigningKey
from ledger.merkle import inclusion_proof
from ledger.store import Store

from .conftest import NOT_AFTER_MS, NOT_BEFORE_MS, NOW_MS, sample_readings, seal_chain_impl

SUBJECT = "urn:epc:id:sgtin:0614141.107346.3"
CREATED_MS = NOW_MS + 3_600_000
DIGEST_DOMAIN = b"edgefleet/v1/bundle-digest\x00"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def enc(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def dec(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"edgefleet-tests/" + label.encode()).digest())


def certify(authority: SigningKey, device: SigningKey, serial: int) -> Certificate:
    return issue_certificate(
        authority,
        device.public,
        kind="refrigerator",
        model="RF-200",
        site="store-12",
        owner_x25519=None,
        not_before_ms=NOT_BEFORE_MS,
        not_after_ms=NOT_AFTER_MS,
        serial=serial,
    )


# --- the bundle format, re-implemented from docs/BUNDLE.md ----------------------------------


def explode(data: bytes) -> list[Any]:
    """Top-level fields (digest dropped) with devices and their blocks decoded to lists."""
    top = dec(data)
    assert top[0] == "edgefleet-bundle"
    assert top[1] in (1, 2)
    devices = []
    for raw in top[5]:
        d = dec(raw)
        d[4] = [dec(b) for b in d[4]]
        devices.append(d)
    return [*top[:5], devices]


def implode(top: list[Any]) -> bytes:
    """Encode fields from ``explode`` (possibly altered) with a fresh, correct digest."""
    devices = [enc([*d[:4], [enc(b) for b in d[4]], *d[5:]]) for d in top[5]]
    prefix = enc([*top[:5], devices, bytes(32)])[:-34]
    return prefix + enc(hashlib.sha256(DIGEST_DOMAIN + prefix).digest())


# --- a realistic fleet ------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    key: SigningKey
    credentials: list[bytes]
    chain: list[Block]  # every block the device has sealed
    head_height: int  # the head the bundle vouches for

    @property
    def device_id(self) -> str:
        return self.key.public.device_id

    @property
    def head(self) -> SignedHeader:
        return self.chain[self.head_height].header

    def hashes(self) -> list[bytes]:
        return [b.header.hash for b in self.chain[: self.head_height]]


@dataclass(frozen=True)
class Fleet:
    authority: SigningKey
    roots: FleetRoots
    rotating: Device  # rotates key at height 2; its old key is revoked from height 3
    stored: Device  # sealed by ChainWriter into a SQLite store; one block above its head
    small: Device

    @property
    def devices(self) -> tuple[Device, ...]:
        return (self.rotating, self.stored, self.small)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    authority = key("authority")
    roots = FleetRoots.of(authority.public)

    old, new = key("device-1"), key("device-1-rotated")
    did = old.public.device_id
    rotation = countersign_rotation(
        sign_rotation(did, old, new.public, 2, NOW_MS, authority.key_id), authority
    )
    revocation = sign_revocation(authority, did, old.key_id, 3, "key-compromise", NOW_MS + 1)
    rotating = Device(
        old,
        [certify(authority, old, 1).wire, rotation, revocation],
        seal_chain_impl([old, old, new, new], sample_readings(did, (4, 3, 4, 3))),
        3,
    )

    k2 = key("device-2")
    store = Store(tmp_path_factory.mktemp("bundle") / "chain.db")
    writer = ChainWriter(store, k2, k2.public.device_id)
    for size in (4, 3, 4, 2):
        for _ in range(size):
            seq = writer.next_seq
            tag = SUBJECT if seq % 3 == 0 else None
            writer.record(NOW_MS + 1000 * seq, "temp_mc", 4_000 + seq, tag)
        writer.seal()
    chain = list(store.blocks())
    store.close()
    stored = Device(k2, [certify(authority, k2, 2).wire], chain, 2)

    k3 = key("device-3")
    small = Device(
        k3,
        [certify(authority, k3, 3).wire],
        seal_chain_impl(k3, sample_readings(k3.public.device_id, (5, 3))),
        1,
    )
    return Fleet(authority, roots, rotating, stored, small)


def picks(dev: Device) -> Iterator[tuple[int, int]]:
    """The readings the realistic bundle proves: every other one and the last of each block at
    or below the head."""
    for block in dev.chain[: dev.head_height + 1]:
        n = len(block.readings)
        for index in sorted({*range(0, n, 2), n - 1}):
            yield block.header.header.height, index


def builder_for(fleet: Fleet, devices: tuple[Device, ...] | None = None) -> BundleBuilder:
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    for dev in devices or fleet.devices:
        b.add_device(dev.device_id, dev.credentials, dev.head, dev.hashes())
        for height, index in picks(dev):
            b.add_reading(dev.device_id, dev.chain[height], index)
    return b


@pytest.fixture(scope="module")
def data(fleet: Fleet) -> bytes:
    return builder_for(fleet).build()


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_reports_what_was_proved(fleet: Fleet, data: bytes) -> None:
    vb = verify_bundle(data, roots=fleet.roots)
    assert (vb.subject, vb.created_ms) == (SUBJECT, CREATED_MS)
    assert (vb.root_key_id, vb.root_public) == (fleet.authority.key_id, fleet.authority.public.raw)
    assert set(vb.devices) == {d.device_id for d in fleet.devices}
    for dev in fleet.devices:
        vd = vb.devices[dev.device_id]
        assert vd.head.wire == dev.head.wire
        assert vd.certificate.wire == dev.credentials[0]
    expected = sorted(
        (dev.device_id, h, i, dev.chain[h].readings[i].wire, dev.chain[h].header.wire)
        for dev in fleet.devices
        for h, i in picks(dev)
    )
    got = [(r.device_id, r.height, r.index, r.reading.wire, r.header.wire) for r in vb.readings]
    assert got == expected  # in bundle order: device id, height, index
    assert len(got) == 23
    # Without roots the bundle's own root is used and reported.
    assert verify_bundle(data).root_key_id == fleet.authority.key_id


def test_format_reimplementation_agrees_byte_for_byte(data: bytes) -> None:
    assert implode(explode(data)) == data


def test_builder_output_is_canonical_whatever_the_order_of_calls(fleet: Fleet, data: bytes) -> None:
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    for dev in reversed(fleet.devices):
        # Credentials in another order, with one repeated and one of another device.
        creds = [dev.credentials[0], *reversed(dev.credentials[1:]), *dev.credentials[1:]]
        b.add_device(dev.device_id, creds, dev.head, dev.hashes())
        for height, index in reversed(list(picks(dev))):
            b.add_reading(dev.device_id, dev.chain[height], index)
            b.add_reading(dev.device_id, dev.chain[height], index)  # twice is harmless
    assert b.build() == data


def test_builder_leaves_out_what_bears_on_no_bundled_height(fleet: Fleet) -> None:
    dev = fleet.small
    did = dev.device_id
    a = fleet.authority
    later = [
        sign_revocation(a, did, None, 2, "stolen", NOW_MS),  # above the head (height 1)
        sign_revocation(a, fleet.stored.device_id, None, 0, "other device", NOW_MS),
        sign_revocation(a, did, key("unrelated").key_id, 0, "not its key", NOW_MS),
        countersign_rotation(sign_rotation(did, dev.key, key("x").public, 5, NOW_MS, a.key_id), a),
    ]
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(did, [*dev.credentials, *later], dev.head, dev.hashes())
    b.add_reading(did, dev.chain[0], 1)
    stored = fleet.stored
    b.add_device(stored.device_id, stored.credentials, stored.head, stored.hashes())
    top = explode(b.build())
    assert len(top[5]) == 1  # the device without readings is left out
    assert top[5][0][1:3] == [[], []]


def test_fast_inclusion_paths_equal_rfc9162_paths() -> None:
    for size in range(1, 70):
        hashes = [hashlib.sha256(bytes([i, size])).digest() for i in range(size)]
        levels = bundle_mod._Levels(hashes)
        for index in range(size):
            assert levels.path(index) == inclusion_proof(hashes, index), (size, index)


def test_private_readings_verify_without_any_owner_key(fleet: Fleet, tmp_path: Path) -> None:
    """Private readings (format 2) are proved by their wire, leaf hash and signature only."""
    owner_pk = sealbox.public_key_of(hashlib.sha256(b"edgefleet-tests/owner").digest())
    dk = key("private-device")
    store = Store(tmp_path / "private.db")
    writer = ChainWriter(store, dk, dk.public.device_id, owner_x25519=owner_pk)
    for blk in range(2):
        for j in range(3):
            writer.record(NOW_MS + 10 * blk + j, "temp_mc", 4_000 + j, SUBJECT if j == 1 else None)
        writer.seal()
    blocks = list(store.blocks())
    store.close()
    cert = certify(fleet.authority, dk, 7)
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(dk.public.device_id, [cert.wire], blocks[1].header, [blocks[0].header.hash])
    for block in blocks:
        b.add_reading(dk.public.device_id, block, 1)
    vb = verify_bundle(b.build(), roots=fleet.roots)
    assert [r.reading.wire for r in vb.readings] == [x.readings[1].wire for x in blocks]
    assert all(r.reading.reading.private for r in vb.readings)


# --- every byte matters -----------------------------------------------------------------------


@pytest.fixture
def memo_pure_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember the results of pure functions of bytes: Ed25519 verification by (key, domain,
    message, signature), and the decoders ``verify_bundle`` calls, by their input. On a miss the
    real function runs, so every verdict is unchanged; the sweep of ~16,000 verifications then
    takes seconds instead of half a minute (most mutations leave most of the bundle intact)."""
    original = PublicKey.verify
    seen: dict[tuple[bytes, bytes, bytes, bytes], bool] = {}

    def verify(self: PublicKey, domain: bytes, message: bytes, signature: bytes, what: str) -> None:
        k = (self.raw, domain, message, signature)
        ok = seen.get(k)
        if ok is None:
            try:
                original(self, domain, message, signature, what)
                ok = True
            except SignatureError:
                ok = False
            seen[k] = ok
        if not ok:
            raise SignatureError(f"{what}: signature does not verify under key {self.hex()}")

    monkeypatch.setattr(PublicKey, "verify", verify)

    def remember(decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
        results: dict[bytes, tuple[bool, object]] = {}

        def memo(wire: bytes) -> object:
            if wire not in results:
                try:
                    results[wire] = (True, decode(wire))
                except LedgerError as exc:
                    results[wire] = (False, exc)
            ok, value = results[wire]
            if not ok:
                assert isinstance(value, LedgerError)
                raise value
            return value

        return memo

    for name in ("decode_reading", "decode_header", "decode_certificate", "decode_rotation"):
        monkeypatch.setattr(bundle_mod, name, remember(getattr(bundle_mod, name)))


@pytest.mark.slow
@pytest.mark.usefixtures("memo_pure_functions")
def test_every_single_byte_change_fails_verification(fleet: Fleet, data: bytes) -> None:
    causes: dict[str, int] = {}
    for pos in range(len(data)):
        for flip in (0x01, 0xFF):
            mutated = bytearray(data)
            mutated[pos] ^= flip
            with pytest.raises(BundleError) as info:
                verify_bundle(bytes(mutated), roots=fleet.roots)
            causes[info.value.cause] = causes.get(info.value.cause, 0) + 1
    print(f"rejected = {sum(causes.values())} of {2 * len(data)} single-byte changes: {causes}")
    assert sum(causes.values()) == 2 * len(data)
    # The sweep reaches every layer, not just the decoder.
    assert {"decode", "bad-signature", "bad-proof", "bad-bundle"} <= causes.keys()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_replacement_byte_fails_verification(data: bytes, draw: Any) -> None:
    pos = draw.draw(st.integers(0, len(data) - 1))
    byte = draw.draw(st.integers(0, 255).filter(lambda b: b != data[pos]))
    mutated = bytearray(data)
    mutated[pos] = byte
    with pytest.raises(BundleError):
        verify_bundle(bytes(mutated))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"", b"\x97\xb0edgefleet-bundle\x01"]))
def test_garbage_raises_bundle_error_only(tail: bytes, head: bytes) -> None:
    with pytest.raises(BundleError):
        verify_bundle(head + tail)


def test_every_truncation_and_extension_fails(data: bytes) -> None:
    for n in range(len(data)):
        with pytest.raises(BundleError):
            verify_bundle(data[:n])
    for tail in (b"\x00", b"\xc0", b"\x90", data[-34:], data):
        with pytest.raises(BundleError, match=r"non-canonical|not valid MessagePack"):
            verify_bundle(data + tail)


def test_errors_say_what_did_not_match(fleet: Fleet, data: bytes) -> None:
    top = explode(data)
    first = verify_bundle(data).readings[0]  # first device in id order, its lowest block
    did, height = first.device_id, first.height
    reading = top[5][0][4][0][2][1]
    reading[2][0] = bytes(32)  # a zeroed proof hash
    with pytest.raises(BundleError) as info:
        verify_bundle(implode(top))
    assert info.value.cause == "bad-proof"
    assert str(info.value).startswith(
        f"reading {reading[0]} of device {did} at height {height}: inclusion proof does not "
        "lead to the header's merkle_root"
    )

    top = explode(data)
    top[5][0][4][0][1] = [bytes(32)] * len(top[5][0][4][0][1])  # the block's history proof
    with pytest.raises(BundleError, match=f"device {did}, block at height {height}: inclusion "):
        verify_bundle(implode(top))

    top = explode(data)
    top[2] = SUBJECT.replace("3", "4")
    with pytest.raises(BundleError, match="digest does not match"):
        verify_bundle(implode(top)[:-34] + data[-34:])


# --- trust ---------------------------------------------------------------------------------


def test_wrong_root_is_refused_and_named(fleet: Fleet, data: bytes) -> None:
    rogue = key("rogue-authority")
    with pytest.raises(BundleError, match=f"fleet root {fleet.authority.key_id.hex()} is not"):
        verify_bundle(data, roots=FleetRoots.of(rogue.public))


def test_bundle_of_another_authority_verifies_only_against_that_root(fleet: Fleet) -> None:
    rogue = key("rogue-authority")
    dev = fleet.small
    b = BundleBuilder(FleetRoots.of(rogue.public), subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(dev.device_id, [certify(rogue, dev.key, 9).wire], dev.head, dev.hashes())
    b.add_reading(dev.device_id, dev.chain[1], 0)
    forged = b.build()
    assert verify_bundle(forged).root_key_id == rogue.key_id  # self-consistent...
    with pytest.raises(BundleError) as info:
        verify_bundle(forged, roots=fleet.roots)  # ...but not rooted where we trust
    assert info.value.cause == "bad-certificate"


def test_root_swapped_inside_the_bundle_breaks_the_certificates(fleet: Fleet, data: bytes) -> None:
    top = explode(data)
    top[4] = key("rogue-authority").public.raw
    with pytest.raises(BundleError, match="not a fleet root") as info:
        verify_bundle(implode(top))
    assert info.value.cause == "bad-certificate"


def test_revoked_device_is_refused_by_format_1_and_flagged_by_format_2(
    fleet: Fleet, data: bytes
) -> None:
    dev = fleet.small
    revocation = sign_revocation(fleet.authority, dev.device_id, None, 1, "stolen", NOW_MS)
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(dev.device_id, [*dev.credentials, revocation], dev.head, dev.hashes())
    b.add_reading(dev.device_id, dev.chain[0], 0)
    vb = verify_bundle(b.build())
    # The head (height 1) is revoked, so format 2; the reading below the revocation is not.
    assert vb.format == 2 and vb.flags == ()
    (flag,) = vb.devices[dev.device_id].flags
    assert (flag.kind, flag.key_id, flag.height, flag.reason) == ("revoked", None, 1, "stolen")
    b.add_reading(dev.device_id, dev.chain[1], 0)
    vb = verify_bundle(b.build())
    assert vb.flags == (flag,)
    assert [vb.flags_of(r) for r in vb.readings] == [(), (flag,)]
    assert (
        flag.describe()
        == f"device {dev.device_id}: every key revoked from height 1 (reason: stolen)"
    )

    # The same revocation spliced into a valid format-1 bundle.
    top = explode(data)
    entry = next(d for d in top[5] if dev.device_id.encode() in d[0])
    entry[2] = [revocation]
    with pytest.raises(BundleError, match=f"device {dev.device_id}: head at height 1: ") as info:
        verify_bundle(implode(top), roots=fleet.roots)
    assert info.value.cause == "revoked"


def test_headers_signed_before_a_key_revocation_stay_valid(fleet: Fleet, data: bytes) -> None:
    # The rotating device's old key is revoked from height 3; it signed heights 0 and 1, whose
    # readings the bundle proves alongside the revocation.
    dev = fleet.rotating
    entry = next(d for d in explode(data)[5] if dev.device_id.encode() in d[0])
    assert entry[2] == [dev.credentials[2]]
    heights = {r.height for r in verify_bundle(data).readings if r.device_id == dev.device_id}
    assert heights == {0, 1, 2, 3}


def test_revoked_old_key_refuses_its_later_headers(fleet: Fleet, data: bytes) -> None:
    """The rotating device's old key is revoked from height 3; it signed heights 0 and 1 only.
    A revocation of the old key from height 1 makes the header at height 1 fail in format 1,
    and flagged in format 2 (height 0 stays unflagged; heights 2 and 3 are the new key's)."""
    dev = fleet.rotating
    early = sign_revocation(fleet.authority, dev.device_id, dev.key.key_id, 1, "x", NOW_MS)
    top = explode(data)
    entry = next(d for d in top[5] if dev.device_id.encode() in d[0])
    entry[2] = sorted([*entry[2], early])
    with pytest.raises(BundleError, match=r"block at height 1: .* revoked from height 1"):
        verify_bundle(implode(top))

    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(dev.device_id, [*dev.credentials, early], dev.head, dev.hashes())
    for height in range(4):
        b.add_reading(dev.device_id, dev.chain[height], 0)
    vb = verify_bundle(b.build())
    assert vb.format == 2
    assert [[f.wire for f in vb.flags_of(r)] for r in vb.readings] == [[], [early], [], []]


# --- format 2: fork evidence and keys used after a rotation ------------------------------------


def forge(sh: SignedHeader, key: SigningKey) -> SignedHeader:
    """Another header at the same height signed by the same key: with ``sh``, a fork."""
    other = dataclasses.replace(sh.header, merkle_root=hashlib.sha256(b"another block").digest())
    return sign_header(other, key)


@pytest.fixture(scope="module")
def fork_wire(fleet: Fleet) -> bytes:
    dev = fleet.small
    return make_evidence(dev.credentials[0], (), dev.head, forge(dev.head, dev.key)).encode()


@pytest.fixture(scope="module")
def forked(fleet: Fleet, fork_wire: bytes) -> bytes:
    """The realistic bundle, every device given the fork evidence against the small device."""
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    for dev in fleet.devices:
        b.add_device(dev.device_id, dev.credentials, dev.head, dev.hashes(), forks=[fork_wire])
        for height, index in picks(dev):
            b.add_reading(dev.device_id, dev.chain[height], index)
    return b.build()


def test_fork_evidence_flags_every_reading_the_forked_key_signed(
    fleet: Fleet, fork_wire: bytes, forked: bytes
) -> None:
    vb = verify_bundle(forked, roots=fleet.roots)
    small = fleet.small
    ev = decode_evidence(fork_wire)
    assert vb.format == 2
    (flag,) = vb.flags
    assert (flag.kind, flag.device_id, flag.key_id, flag.height, flag.hashes, flag.wire) == (
        "forked",
        small.device_id,
        small.key.key_id,
        1,
        (ev.a.hash, ev.b.hash),
        fork_wire,
    )
    assert flag.describe() == (
        f"device {small.device_id} forked: key {small.key.key_id.hex()} signed two headers at "
        f"height 1 ({ev.a.hash.hex()} and {ev.b.hash.hex()})"
    )
    # Below the fork height too: a key that signed two histories may have signed either.
    flagged = {(r.device_id, r.height, r.index) for r in vb.readings if vb.flags_of(r)}
    assert flagged == {(small.device_id, h, i) for h, i in picks(small)}
    # Only the forked device's entry carries the evidence.
    entries = explode(forked)[5]
    assert [d[5] for d in entries] == [
        [fork_wire] if d[3] == small.head.wire else [] for d in entries
    ]


def test_fork_evidence_with_any_byte_flipped_is_refused(forked: bytes, fork_wire: bytes) -> None:
    """Each byte of the evidence flipped, and the digest recomputed as anyone can."""
    start = forked.index(fork_wire)
    causes: set[str] = set()
    for pos in range(start, start + len(fork_wire)):
        mutated = bytearray(forked[:-34])
        mutated[pos] ^= 0x01
        prefix = bytes(mutated)
        with pytest.raises(BundleError, match="fork evidence") as info:
            verify_bundle(prefix + enc(hashlib.sha256(DIGEST_DOMAIN + prefix).digest()))
        causes.add(info.value.cause)
    assert causes >= {"bad-signature", "decode"}, causes


def test_stripped_fork_evidence_cannot_be_seen_offline(fleet: Fleet, forked: bytes) -> None:
    """What docs/BUNDLE.md says a verifier cannot know: evidence left out leaves no trace."""
    top = explode(forked)
    for d in top[5]:
        d[5] = []
    vb = verify_bundle(implode(top), roots=fleet.roots)
    assert (vb.format, vb.flags) == (2, ())


def test_fork_evidence_must_be_about_the_device_once_and_used(
    fleet: Fleet, forked: bytes, fork_wire: bytes
) -> None:
    def misplaced(top: Any) -> None:
        for d in top[5]:
            d[5] = [] if d[5] else [fork_wire]

    def repeated(top: Any) -> None:
        next(d for d in top[5] if d[5])[5] *= 2

    mutate_and_expect(forked, misplaced, "fork evidence 0 is against device")
    mutate_and_expect(forked, repeated, "fork evidence 1 is out of order or repeated")

    # Evidence against the rotating device's old key, in a bundle of its new key's blocks only.
    dev = fleet.rotating
    old = dev.chain[1].header
    stale = make_evidence(dev.credentials[0], (), old, forge(old, dev.key)).encode()
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(dev.device_id, dev.credentials, dev.head, dev.hashes(), forks=[stale])
    b.add_reading(dev.device_id, dev.chain[3], 0)
    data = b.build()
    assert verify_bundle(data).format == 1  # left out by the builder

    def add_stale(top: Any) -> None:
        top[1] = 2
        top[5][0].append([stale])

    mutate_and_expect(data, add_stale, "fork evidence at height 1 is unused")


def test_a_key_used_after_its_rotation_is_flagged_rotated_away(fleet: Fleet) -> None:
    """The rotating device's rotation says its new key signs from height 2: a chain whose
    header at height 2 is still signed by the old key."""
    dev = fleet.rotating
    chain = seal_chain_impl(dev.key, sample_readings(dev.device_id, (2, 2, 2)))
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(
        dev.device_id, dev.credentials[:2], chain[2].header, [x.header.hash for x in chain[:2]]
    )
    for height in range(3):
        b.add_reading(dev.device_id, chain[height], 0)
    data = b.build()
    vb = verify_bundle(data, roots=fleet.roots)
    (flag,) = vb.flags
    assert (vb.format, flag.kind, flag.key_id, flag.height) == (
        2,
        "rotated-away",
        dev.key.key_id,
        2,
    )
    assert [bool(vb.flags_of(r)) for r in vb.readings] == [False, False, True]

    def as_format_1(top: Any) -> None:
        top[1] = 1
        del top[5][0][5]

    mutate_and_expect(data, as_format_1, "wrong key for height 2")


# --- heads, orders, duplicates, unused entries ---------------------------------------------------


def test_reading_from_a_block_newer_than_the_head(fleet: Fleet, data: bytes) -> None:
    dev = fleet.stored
    newer = dev.chain[dev.head_height + 1]
    b = builder_for(fleet)
    with pytest.raises(UsageError, match="above the head"):
        b.add_reading(dev.device_id, newer, 0)

    top = explode(data)
    entry = next(d for d in top[5] if d[3] == dev.head.wire)
    proof = inclusion_proof([x.header.hash for x in dev.chain], newer.header.header.height)
    leaf = [r.leaf_hash for r in newer.readings]
    entry[4].append(
        [newer.header.wire, proof, [[0, newer.readings[0].wire, inclusion_proof(leaf, 0)]]]
    )
    with pytest.raises(BundleError, match="block at height 3: not below the head"):
        verify_bundle(implode(top))


def mutate_and_expect(data: bytes, change: Any, pattern: str) -> BundleError:
    top = explode(data)
    change(top)
    with pytest.raises(BundleError, match=pattern) as info:
        verify_bundle(implode(top))
    return info.value


def test_duplicates_and_disorder_are_refused(data: bytes) -> None:
    def dup_reading(top: Any) -> None:
        readings = top[5][0][4][0][2]
        readings.insert(1, readings[0])

    def dup_block(top: Any) -> None:
        blocks = top[5][0][4]
        blocks.insert(1, blocks[0])

    def dup_device(top: Any) -> None:
        top[5].insert(1, top[5][0])

    def swap_devices(top: Any) -> None:
        top[5][0], top[5][1] = top[5][1], top[5][0]

    def swap_blocks(top: Any) -> None:
        blocks = top[5][0][4]
        blocks[0], blocks[1] = blocks[1], blocks[0]

    mutate_and_expect(data, dup_reading, "strictly increasing index order")
    mutate_and_expect(data, dup_block, "strictly increasing height order")
    mutate_and_expect(data, swap_blocks, "strictly increasing height order")
    mutate_and_expect(data, dup_device, "strictly increasing order of device id")
    mutate_and_expect(data, swap_devices, "strictly increasing order of device id")


def test_unused_entries_are_refused(fleet: Fleet, data: bytes) -> None:
    rotating = next(i for i, d in enumerate(explode(data)[5]) if d[1])

    def empty_device(top: Any) -> None:
        top[5][0][4] = []

    def empty_block(top: Any) -> None:
        top[5][0][4][0][2] = []

    def no_devices(top: Any) -> None:
        top[5] = []

    def repeat_revocation(top: Any) -> None:
        top[5][rotating][2] *= 2

    def foreign_revocation(top: Any) -> None:
        top[5][rotating][2] = [
            sign_revocation(fleet.authority, fleet.small.device_id, None, 0, "x", NOW_MS)
        ]

    def rotation_above_head(top: Any) -> None:
        dev = fleet.rotating
        later = sign_rotation(
            dev.device_id,
            key("device-1-rotated"),
            key("y").public,
            9,
            NOW_MS,
            fleet.authority.key_id,
        )
        top[5][rotating][1].append(countersign_rotation(later, fleet.authority))

    mutate_and_expect(data, empty_device, "no block entries")
    mutate_and_expect(data, empty_block, "at least one reading")
    mutate_and_expect(data, no_devices, "at least one reading")
    mutate_and_expect(data, repeat_revocation, "out of order or repeated")
    mutate_and_expect(data, foreign_revocation, "revocation 0 is unused")
    mutate_and_expect(data, rotation_above_head, "rotation at height 9 is unused")


def test_head_block_carries_no_header_and_no_history_proof(fleet: Fleet, data: bytes) -> None:
    def with_header(top: Any) -> None:
        last = top[5][0][4][-1]
        assert last[0] is None
        last[0] = top[5][0][3]

    def with_proof(top: Any) -> None:
        top[5][0][4][-1][1] = [bytes(32)]

    mutate_and_expect(data, with_header, "not below the head")
    mutate_and_expect(data, with_proof, "carries no history proof")


def test_magic_format_and_canonical_form(data: bytes) -> None:
    with pytest.raises(BundleError, match="not an edgefleet bundle"):
        verify_bundle(b"")
    with pytest.raises(BundleError, match="not an edgefleet bundle"):
        verify_bundle(data.replace(b"edgefleet-bundle", b"edgefleet-bundlf", 1))
    with pytest.raises(BundleError, match="reads formats 1 and 2, found byte 03"):
        verify_bundle(data[:18] + b"\x03" + data[19:])
    with pytest.raises(BundleError, match="expected an array of 6"):  # a format-1 body as 2
        verify_bundle(data[:18] + b"\x02" + data[19:])
    # The subject as str16 although it fits a str8: the same value, not the same bytes.
    subject = SUBJECT.encode()
    start = data.index(b"\xd9" + bytes([len(subject)]) + subject)
    longer = data[:start] + b"\xda\x00" + data[start + 1 : -34]
    longer += enc(hashlib.sha256(DIGEST_DOMAIN + longer).digest())
    with pytest.raises(BundleError, match="non-canonical") as info:
        verify_bundle(longer)
    assert info.value.cause == "decode"
    with pytest.raises(BundleError, match="expected bytes"):
        verify_bundle(bytearray(data))  # type: ignore[arg-type]


def test_limits_are_checked_before_decoding() -> None:
    with pytest.raises(BundleError, match="exceeds the limit"):
        verify_bundle(
            b"\x97" + enc("edgefleet-bundle") + b"\x01" + bytes(bundle_mod.MAX_BUNDLE_BYTES)
        )
    # An array header declaring a million devices in a small input.
    head = b"\x97" + enc("edgefleet-bundle") + b"\x01" + enc("s") + enc(1) + enc(bytes(32))
    bomb = head + b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\xc4\x00" * 400
    with pytest.raises(BundleError, match="exceeds 1024") as info:
        verify_bundle(bomb)
    assert info.value.cause == "decode"


def test_builder_refuses_misuse(fleet: Fleet) -> None:
    dev = fleet.small
    with pytest.raises(UsageError, match="subject"):
        BundleBuilder(fleet.roots, subject="a\x1b[2Jb", created_ms=0)
    with pytest.raises(UsageError, match="subject"):
        BundleBuilder(fleet.roots, subject="", created_ms=0)
    b = BundleBuilder(fleet.roots, subject=SUBJECT, created_ms=0)
    with pytest.raises(UsageError, match="add_device first"):
        b.add_reading(dev.device_id, dev.chain[0], 0)
    with pytest.raises(UsageError, match="header hashes"):
        b.add_device(dev.device_id, dev.credentials, dev.head, [])
    with pytest.raises(UsageError, match="history_root"):
        b.add_device(dev.device_id, dev.credentials, dev.head, [bytes(32)])
    b.add_device(dev.device_id, dev.credentials, dev.head, dev.hashes())
    with pytest.raises(UsageError, match="already added with its head at height 1"):
        b.add_device(dev.device_id, dev.credentials, dev.chain[0].header, [])
    with pytest.raises(UsageError, match="index 9"):
        b.add_reading(dev.device_id, dev.chain[0], 9)
    other = fleet.rotating.chain[0]
    with pytest.raises(UsageError, match="given for device"):
        b.add_reading(dev.device_id, other, 0)
    with pytest.raises(UsageError, match="at least one reading"):
        b.build()


# --- the document's vector ---------------------------------------------------------------------


def vector_seed(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"edgefleet test vector " + label.encode()).digest())


def build_vector() -> bytes:
    """docs/BUNDLE.md's vector: one device, blocks of 2, 1 and 1 readings, head at height 2;
    reading 1 of block 0 (with a history proof) and reading 0 of the head's block."""
    authority, device = vector_seed("authority"), vector_seed("device")
    cert = certify(authority, device, 1)
    did = device.public.device_id
    chain = seal_chain_impl(device, sample_readings(did, (2, 1, 1)))
    b = BundleBuilder(FleetRoots.of(authority.public), subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(did, [cert.wire], chain[2].header, [x.header.hash for x in chain[:2]])
    b.add_reading(did, chain[0], 1)
    b.add_reading(did, chain[2], 0)
    return b.build()


def build_vector_2() -> bytes:
    """docs/BUNDLE.md's format-2 vector: the same chain and readings, and fork evidence: the
    device also signed, at the head's height, the head's header with its merkle_root replaced
    by SHA-256("edgefleet test vector fork")."""
    authority, device = vector_seed("authority"), vector_seed("device")
    cert = certify(authority, device, 1)
    did = device.public.device_id
    chain = seal_chain_impl(device, sample_readings(did, (2, 1, 1)))
    head = chain[2].header
    other = dataclasses.replace(
        head.header, merkle_root=hashlib.sha256(b"edgefleet test vector fork").digest()
    )
    fork = make_evidence(cert.wire, (), head, sign_header(other, device)).encode()
    b = BundleBuilder(FleetRoots.of(authority.public), subject=SUBJECT, created_ms=CREATED_MS)
    b.add_device(did, [cert.wire], head, [x.header.hash for x in chain[:2]], forks=[fork])
    b.add_reading(did, chain[0], 1)
    b.add_reading(did, chain[2], 0)
    return b.build()


def doc_vector(marker: str = "bundle-vector") -> dict[str, Any]:
    for name in ("BUNDLE.md", "PROTOCOL.md"):
        path = DOCS / name
        text = path.read_text() if path.exists() else ""
        m = re.search(rf"<!-- {marker}:begin -->\s*```json\n(.*?)```", text, re.S)
        if m:
            return json.loads(m.group(1))  # type: ignore[no-any-return]
    raise AssertionError(f"no {marker} in docs/BUNDLE.md or docs/PROTOCOL.md")


def test_document_vector_is_what_the_code_builds_and_verifies() -> None:
    v = doc_vector()
    built = build_vector()
    assert v["bundle"] == built.hex(), f"update the vector in docs/BUNDLE.md to:\n{built.hex()}"
    vb = verify_bundle(bytes.fromhex(v["bundle"]))
    assert vb.root_key_id.hex() == v["root_key_id"]
    assert [(r.device_id, r.height, r.index) for r in vb.readings] == [
        (v["device_id"], 0, 1),
        (v["device_id"], 2, 0),
    ]
    assert vb.subject == v["subject"]


def test_document_vector_by_the_document_alone() -> None:
    """Layout and digest as docs/BUNDLE.md states them, with plain msgpack and hashlib."""
    data = bytes.fromhex(doc_vector()["bundle"])
    assert data[:19] == b"\x97\xb0edgefleet-bundle\x01"
    assert data[-34:-32] == b"\xc4\x20"
    assert data[-32:] == hashlib.sha256(DIGEST_DOMAIN + data[:-34]).digest()
    top = dec(data)
    assert enc(top) == data
    (device,) = top[5]
    _cert, rotations, revocations, head, blocks = dec(device)
    assert (rotations, revocations) == ([], [])
    below, at_head = (dec(b) for b in blocks)
    assert at_head[0] is None and at_head[1] == []
    assert len(below[1]) == 1  # history proof: tree of 2 header hashes
    # Header hash of block 0 and its sibling give the head's history_root.
    hbody = dec(below[0])[0]
    head_body = dec(dec(head)[0])
    h0 = hashlib.sha256(b"edgefleet/v1/header-hash\x00" + hbody).digest()
    assert hashlib.sha256(b"\x01" + h0 + below[1][0]).digest() == head_body[5]
    # The reading's leaf and its proof give block 0's merkle_root.
    index, wire, proof = below[2][0]
    leaf = hashlib.sha256(b"\x00" + wire).digest()
    assert index == 1
    assert hashlib.sha256(b"\x01" + proof[0] + leaf).digest() == dec(hbody)[6]


def test_document_vector_2_is_what_the_code_builds_and_verifies() -> None:
    v = doc_vector("bundle-vector-2")
    built = build_vector_2()
    assert v["bundle"] == built.hex(), f"update vector 2 in docs/BUNDLE.md to:\n{built.hex()}"
    vb = verify_bundle(bytes.fromhex(v["bundle"]))
    assert vb.format == 2 and vb.root_key_id.hex() == v["root_key_id"]
    (flag,) = vb.flags
    assert (flag.kind, flag.device_id, flag.height) == ("forked", v["device_id"], 2)
    assert [h.hex() for h in flag.hashes] == v["fork_hashes"]
    assert all(vb.flags_of(r) == (flag,) for r in vb.readings)


def test_document_vector_2_by_the_document_alone() -> None:
    """Format 2 as docs/BUNDLE.md section 6 states it: vector 1 with byte 18 = 02 and a sixth
    field in the device entry holding the fork evidence."""
    v1 = dec(bytes.fromhex(doc_vector()["bundle"]))
    v = doc_vector("bundle-vector-2")
    data = bytes.fromhex(v["bundle"])
    assert data[:19] == b"\x97\xb0edgefleet-bundle\x02"
    assert data[-32:] == hashlib.sha256(DIGEST_DOMAIN + data[:-34]).digest()
    top = dec(data)
    assert enc(top) == data and top[2:5] == v1[2:5]
    (device,) = top[5]
    fields = dec(device)
    assert fields[:5] == dec(v1[5][0])  # the same certificate, credentials, head and blocks
    (evidence,) = fields[5]
    fmt, cert, rotations, a, b = dec(evidence)
    assert (fmt, cert, rotations) == (1, fields[0], [])
    assert fields[3] in (a, b)  # the head is one of the two headers

    def header_hash(wire: bytes) -> bytes:
        return hashlib.sha256(b"edgefleet/v1/header-hash\x00" + dec(wire)[0]).digest()

    assert [header_hash(a).hex(), header_hash(b).hex()] == v["fork_hashes"]
    assert header_hash(a) < header_hash(b)
    assert dec(dec(a)[0])[3] == dec(dec(b)[0])[3] == 2  # one height
