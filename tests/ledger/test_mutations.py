"""Named mutation vectors: each alters one thing in a valid chain or enrollment and must be
rejected by a peer's whole acceptance path with one exact error class.

The acceptance path (``World.accept``) is what a peer does with blocks it receives: look up the
certificate by the header's device id, build ``DeviceKeys`` from it and any rotations and
revocations (checked against the fleet root at ``now``), decode every block wire, then
``verify_chain``. Mutations that change a signed body are re-signed with the device's own key, so
the one property under test is the only thing wrong. A positive control for each base shows the
path accepts the unmutated input, so no vector passes by accident.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import domains, envelope
from ledger.block import Block, Header, decode_block, encode_block, sign_header
from ledger.certs import (
    Certificate,
    DeviceKeys,
    FleetRoots,
    countersign_rotation,
    decode_certificate,
    issue_certificate,
    sign_rotation,
)
from ledger.chain import ChainWriter
from ledger.errors import (
    CertificateError,
    ChainError,
    DecodeError,
    LedgerError,
    MerkleRootError,
    RevokedError,
    SequenceError,
    SignatureError,
    VerificationError,
)
from ledger.history import CompactRange
from ledger.identity import SigningKey
from ledger.merkle import leaf_hash, root_from_leaf_hashes
from ledger.reading import Reading, decode_reading, sign_reading
from ledger.store import Store
from ledger.verify import verify_chain

from .conftest import NOT_AFTER_MS, NOT_BEFORE_MS, NOW_MS, sample_readings, seal_chain_impl

SIZES = (3, 2, 4)  # readings per block; the last block (height 2) holds seqs 5..8


def enc(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def flip_signature_bit(wire: bytes, bit: int) -> bytes:
    """Flip one of the 512 bits of the signature that ends an envelope."""
    assert wire[-66:-64] == b"\xc4\x40"
    return wire[:-64] + flip(wire[-64:], bit)


def reading_pieces(r: Reading) -> list[bytes]:
    return [
        enc(x)
        for x in (1, r.device_id, r.epoch, r.seq, r.time_ms, r.sensor, r.value, r.tag, r.text)
    ]


def header_pieces(h: Header) -> list[bytes]:
    return [
        enc(x)
        for x in (
            1,
            h.device_id,
            h.epoch,
            h.height,
            h.prev_hash,
            h.history_root,
            h.merkle_root,
            h.count,
            h.first_time_ms,
            h.last_time_ms,
            h.key_id,
        )
    ]


def signed(body: bytes, key: SigningKey, domain: bytes) -> bytes:
    return envelope.wrap(body, key.sign(domain, body))


def array_of(pieces: Sequence[bytes], head: bytes | None = None) -> bytes:
    return (head if head is not None else bytes([0x90 | len(pieces)])) + b"".join(pieces)


@dataclasses.dataclass(frozen=True)
class World:
    authority: SigningKey
    rogue: SigningKey
    device: SigningKey
    next_key: SigningKey
    other: SigningKey
    roots: FleetRoots
    cert: Certificate
    other_cert: Certificate
    readings: list[list[Reading]]
    blocks: list[Block]

    @property
    def device_id(self) -> str:
        return self.device.public.device_id

    @property
    def wires(self) -> list[bytes]:
        return [b.encode() for b in self.blocks]

    def accept(
        self,
        wires: Sequence[bytes],
        *,
        cert: bytes | None = None,
        rotations: Sequence[bytes] = (),
        revocations: Sequence[bytes] = (),
        now_ms: int = NOW_MS,
    ) -> None:
        """A peer's acceptance path for a device's chain from height 0."""
        registry = {
            self.device_id: self.cert.wire,
            self.other.public.device_id: self.other_cert.wire,
        }
        if cert is not None:
            registry[self.device_id] = cert
        blocks = [decode_block(w) for w in wires]
        keys = DeviceKeys.build(
            registry[blocks[0].header.header.device_id],
            self.roots,
            now_ms=now_ms,
            rotations=rotations,
            revocations=revocations,
        )
        verify_chain(blocks, keys.key_for)

    def with_last(self, block_wire: bytes) -> list[bytes]:
        return [*self.wires[:-1], block_wire]

    # --- re-signing helpers: the device signs what the mutation produced ----------------------
    def reading_wire(
        self,
        r: Reading,
        edit: Callable[[list[bytes]], None] | None = None,
        *,
        head: bytes | None = None,
        key: SigningKey | None = None,
        domain: bytes = domains.READING,
    ) -> bytes:
        pieces = reading_pieces(r)
        if edit is not None:
            edit(pieces)
        return signed(array_of(pieces, head), key or self.device, domain)

    def reseal(
        self,
        reading_wires: Sequence[bytes],
        edit: Callable[[list[bytes]], None] | None = None,
        *,
        head: bytes | None = None,
        key: SigningKey | None = None,
        domain: bytes = domains.HEADER,
    ) -> bytes:
        """The last block re-sealed by the device over ``reading_wires`` (header edited)."""
        base = self.blocks[-1].header.header
        times: list[int | None] = []
        for w in reading_wires:
            try:
                times.append(decode_reading(w).reading.time_ms)
            except DecodeError:
                times.append(None)
        h = dataclasses.replace(
            base,
            merkle_root=root_from_leaf_hashes([leaf_hash(w) for w in reading_wires]),
            count=len(reading_wires),
            first_time_ms=times[0] if times[0] is not None else base.first_time_ms,
            last_time_ms=times[-1] if times[-1] is not None else base.last_time_ms,
        )
        pieces = header_pieces(h)
        if edit is not None:
            edit(pieces)
        header = signed(array_of(pieces, head), key or self.device, domain)
        return encode_block(header, reading_wires)

    @property
    def last_readings(self) -> list[Reading]:
        return self.readings[-1]

    @property
    def last_wires(self) -> list[bytes]:
        return [r.wire for r in self.blocks[-1].readings]

    def rotation(
        self,
        *,
        device_id: str | None = None,
        old: SigningKey | None = None,
        new: SigningKey | None = None,
        height: int = 2,
        authority: SigningKey | None = None,
        claimed_authority: bytes | None = None,
        old_signer: SigningKey | None = None,
        countersign_domain: bytes = domains.ROTATION_COUNTERSIGN,
    ) -> bytes:
        old = old or self.device
        authority = authority or self.authority
        half = sign_rotation(
            device_id or self.device_id,
            old,
            (new or self.next_key).public,
            height,
            NOW_MS,
            claimed_authority or authority.key_id,
        )
        if old_signer is None and countersign_domain == domains.ROTATION_COUNTERSIGN:
            return countersign_rotation(half, authority)
        body, old_sig = msgpack.unpackb(half)
        if old_signer is not None:
            old_sig = old_signer.sign(domains.ROTATION, body)
        return enc([body, old_sig, authority.sign(countersign_domain, body + old_sig)])

    def rotated_wires(self, keys: Sequence[SigningKey] | None = None) -> list[bytes]:
        keys = keys or (self.device, self.device, self.next_key)
        return [b.encode() for b in seal_chain_impl(keys, self.readings)]

    def revocation(
        self,
        key_id: bytes | None,
        from_height: int,
        *,
        signer: SigningKey | None = None,
        claimed: bytes | None = None,
        device_id: str | None = None,
        domain: bytes = domains.REVOCATION,
    ) -> bytes:
        signer = signer or self.authority
        body = enc(
            [
                1,
                device_id or self.device_id,
                key_id,
                from_height,
                "key-compromise",
                NOW_MS,
                claimed or signer.key_id,
            ]
        )
        return signed(body, signer, domain)

    def cert_wire(
        self,
        *,
        signer: SigningKey | None = None,
        claimed: bytes | None = None,
        device_id: str | None = None,
        domain: bytes = domains.CERTIFICATE,
        not_before: int = NOT_BEFORE_MS,
        not_after: int = NOT_AFTER_MS,
    ) -> bytes:
        signer = signer or self.authority
        body = enc(
            [
                1,
                self.device.public.raw,
                device_id or self.device_id,
                "refrigerator",
                "RF-200",
                "store-12",
                None,
                not_before,
                not_after,
                1,
                claimed or signer.key_id,
            ]
        )
        return signed(body, signer, domain)


@pytest.fixture(scope="module")
def world(
    authority: SigningKey,
    rogue_authority: SigningKey,
    device_key: SigningKey,
    next_device_key: SigningKey,
    other_device_key: SigningKey,
    roots: FleetRoots,
    cert: Certificate,
    other_cert: Certificate,
) -> World:
    readings = sample_readings(device_key.public.device_id, SIZES)
    return World(
        authority,
        rogue_authority,
        device_key,
        next_device_key,
        other_device_key,
        roots,
        cert,
        other_cert,
        readings,
        seal_chain_impl(device_key, readings),
    )


# --- positive controls ----------------------------------------------------------------------


def test_base_chain_is_accepted(world: World) -> None:
    world.accept(world.wires)
    world.accept(world.with_last(world.reseal(world.last_wires)))  # the re-sealer is faithful
    r = world.last_readings[0]
    assert world.reading_wire(r) == world.blocks[-1].readings[0].wire
    assert world.cert_wire() == world.cert.wire


def test_rotated_chain_is_accepted(world: World) -> None:
    world.accept(world.rotated_wires(), rotations=[world.rotation()])


def test_revocations_that_do_not_apply_are_accepted(world: World) -> None:
    world.accept(
        world.wires,
        revocations=[
            world.revocation(None, 3),  # the device is revoked only from height 3
            world.revocation(world.device.key_id, 3),
            world.revocation(None, 0, device_id=world.other.public.device_id),  # another device
            world.revocation(world.next_key.key_id, 0),  # a key this chain never used
        ],
    )


def test_certificate_validity_bounds_are_inclusive(world: World) -> None:
    world.accept(world.wires, now_ms=NOT_BEFORE_MS)
    world.accept(world.wires, now_ms=NOT_AFTER_MS)


# --- the vectors ----------------------------------------------------------------------------

Run = Callable[[World], None]


def _set(index: int, raw: bytes) -> Callable[[list[bytes]], None]:
    def edit(pieces: list[bytes]) -> None:
        pieces[index] = raw

    return edit


def _reading0(w: World, edit: Callable[[list[bytes]], None] | None = None, **kw: Any) -> bytes:
    """The last block re-sealed with its first reading (seq 5) re-signed after ``edit``."""
    first = w.reading_wire(w.last_readings[0], edit, **kw)
    return w.reseal([first, *w.last_wires[1:]])


def _swap(seq: list[bytes], i: int, j: int) -> list[bytes]:
    out = list(seq)
    out[i], out[j] = out[j], out[i]
    return out


def _other_reading(w: World, **changes: Any) -> bytes:
    r = dataclasses.replace(w.last_readings[0], **changes)
    return w.reseal([sign_reading(r, w.device).wire, *w.last_wires[1:]])


def _rotated_with_last(w: World, block: bytes) -> list[bytes]:
    return [*w.rotated_wires()[:2], block]


def _foreign_device_chain(w: World) -> list[bytes]:
    """The device signs a chain that claims the other device's id."""
    other_id = w.other.public.device_id
    readings = [[dataclasses.replace(r, device_id=other_id) for r in b] for b in w.readings]
    return [b.encode() for b in seal_chain_impl(w.device, readings)]


def _history_of(w: World, hashes: Sequence[bytes]) -> bytes:
    tree = CompactRange()
    for h in hashes:
        tree.append(h)
    return tree.root()


def _lower_seqs(w: World) -> bytes:
    """Block 2 re-sealed with readings whose seqs do not follow block 1's last seq (4)."""
    rs = [dataclasses.replace(r, seq=r.seq - 2) for r in w.last_readings]  # 3..6
    return w.reseal([sign_reading(r, w.device).wire for r in rs])


VECTORS: list[Any] = [
    # chain links
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(4, enc(bytes(32)))))),
        ChainError,
        id="prev-hash-wrong",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(w.reseal(w.last_wires, _set(4, enc(w.blocks[0].header.hash))))
        ),
        ChainError,
        id="prev-hash-skips",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(3, enc(3))))),
        ChainError,
        id="height-wrong",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(2, enc(1))))),
        ChainError,
        id="epoch-wrong",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(5, enc(b"\x01" * 32))))),
        ChainError,
        id="history-root-wrong",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                w.reseal(w.last_wires, _set(5, enc(_history_of(w, [w.blocks[0].header.hash]))))
            )
        ),
        ChainError,
        id="history-root-of-shorter-chain",
    ),
    pytest.param(lambda w: w.accept(w.wires[1:]), ChainError, id="first-block-not-height-0"),
    pytest.param(lambda w: w.accept([w.wires[0], w.wires[2]]), ChainError, id="block-missing"),
    pytest.param(
        lambda w: w.accept([w.wires[0], w.wires[1], w.wires[1]]), ChainError, id="block-replayed"
    ),
    pytest.param(
        lambda w: w.accept([w.wires[0], w.wires[2], w.wires[1]]), ChainError, id="blocks-reordered"
    ),
    # header commitments
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(6, enc(bytes(32)))))),
        MerkleRootError,
        id="merkle-root-wrong",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(7, enc(3))))),
        DecodeError,
        id="count-wrong",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(w.reseal(w.last_wires, _set(8, enc(w.last_readings[0].time_ms + 1))))
        ),
        VerificationError,
        id="first-time-wrong",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(w.reseal(w.last_wires, _set(9, enc(w.last_readings[-1].time_ms - 1))))
        ),
        VerificationError,
        id="last-time-wrong",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(10, enc(b"k" * 8))))),
        VerificationError,
        id="header-key-id-unknown",
    ),
    # readings in a block
    pytest.param(
        lambda w: w.accept(
            w.with_last(encode_block(w.blocks[-1].header.wire, _swap(w.last_wires, 1, 2)))
        ),
        SequenceError,
        id="reordered-readings",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(_swap(w.last_wires, 0, 3)))),
        SequenceError,
        id="reordered-readings-resealed",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(encode_block(w.blocks[-1].header.wire, w.last_wires[:-1]))),
        DecodeError,
        id="reading-dropped",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(encode_block(w.blocks[-1].header.wire, [*w.last_wires, w.last_wires[-1]]))
        ),
        DecodeError,
        id="reading-duplicated",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                encode_block(w.blocks[-1].header.wire, [w.last_wires[0], *w.last_wires[:-1]])
            )
        ),
        SequenceError,
        id="reading-duplicated-one-dropped",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal([w.last_wires[0], *w.last_wires]))),
        SequenceError,
        id="reading-duplicated-resealed",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_lower_seqs(w))),
        SequenceError,
        id="seq-not-after-previous-block",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                encode_block(
                    w.blocks[-1].header.wire, [w.blocks[1].readings[0].wire, *w.last_wires[1:]]
                )
            )
        ),
        SequenceError,
        id="reading-from-another-block",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                encode_block(
                    w.blocks[-1].header.wire,
                    [flip_signature_bit(w.last_wires[0], 9), *w.last_wires[1:]],
                )
            )
        ),
        MerkleRootError,
        id="reading-sig-bit-9-in-sealed-block",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(w.reseal([flip_signature_bit(w.last_wires[0], 9), *w.last_wires[1:]]))
        ),
        SignatureError,
        id="reading-sig-bit-9-resealed",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, key=w.other))),
        SignatureError,
        id="reading-signed-by-another-key",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_other_reading(w, device_id=w.other.public.device_id))),
        VerificationError,
        id="reading-of-another-device",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_other_reading(w, epoch=1))),
        VerificationError,
        id="reading-of-another-epoch",
    ),
    # domain separation
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, domain=domains.HEADER))),
        SignatureError,
        id="wrong-domain-tag",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, domain=domains.READING))),
        SignatureError,
        id="wrong-domain-tag-header",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=w.cert_wire(domain=domains.REVOCATION)),
        SignatureError,
        id="wrong-domain-tag-certificate",
    ),
    pytest.param(
        lambda w: w.accept(
            w.wires, revocations=[w.revocation(None, 0, domain=domains.CERTIFICATE)]
        ),
        SignatureError,
        id="wrong-domain-tag-revocation",
    ),
    pytest.param(
        lambda w: w.accept(
            w.rotated_wires(), rotations=[w.rotation(countersign_domain=domains.ROTATION)]
        ),
        SignatureError,
        id="wrong-domain-tag-rotation-countersign",
    ),
    # canonical encoding (each re-signed, so only the encoding is wrong)
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(3, b"\xcd\x00\x05")))),
        DecodeError,
        id="non-canonical-int",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                _reading0(
                    w, _set(6, b"\xd2" + (w.last_readings[0].value).to_bytes(4, "big", signed=True))
                )
            )
        ),
        DecodeError,
        id="non-canonical-negative-int",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal(w.last_wires, _set(7, b"\xcc\x04")))),
        DecodeError,
        id="non-canonical-int-header",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(1, b"\xd9\x1a" + w.device_id.encode())))),
        DecodeError,
        id="non-canonical-str-length",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(w.reseal(w.last_wires, _set(4, b"\xc5\x00\x20" + w.blocks[1].header.hash)))
        ),
        DecodeError,
        id="non-canonical-bin-length",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                encode_block(
                    w.blocks[-1].header.wire,
                    [b"\x92\xc5\x00" + w.last_wires[0][1:], *w.last_wires[1:]],
                )
            )
        ),
        DecodeError,
        id="non-canonical-envelope-bin-length",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, head=b"\xdc\x00\x09"))),
        DecodeError,
        id="non-canonical-array-length",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(_reading0(w, _set(4, msgpack.packb(float(w.last_readings[0].time_ms)))))
        ),
        DecodeError,
        id="float-where-int",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(_reading0(w, _set(6, msgpack.packb(-18.0, use_single_float=True))))
        ),
        DecodeError,
        id="float32-where-int",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(2, b"\xc2")))),
        DecodeError,
        id="bool-where-int",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(0, b"\xc3")))),
        DecodeError,
        id="bool-where-format",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(3, b"\xc0")))),
        DecodeError,
        id="nil-where-int",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(3, enc(-5))))),
        DecodeError,
        id="negative-seq",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(3, enc(2**63))))),
        DecodeError,
        id="seq-above-int63",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(6, enc(2**63))))),
        DecodeError,
        id="value-above-int64",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(5, enc(b"temp_mc"))))),
        DecodeError,
        id="bin-where-str",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(w.reseal(w.last_wires, _set(4, enc(w.blocks[1].header.hash.hex()[:32]))))
        ),
        DecodeError,
        id="str-where-bin",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                w.reseal(
                    [
                        signed(enc({"format": 1, "seq": 5}), w.device, domains.READING),
                        *w.last_wires[1:],
                    ]
                )
            )
        ),
        DecodeError,
        id="map-instead-of-array",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                w.reseal(
                    [
                        enc(
                            {
                                "body": w.blocks[-1].readings[0].body,
                                "sig": w.blocks[-1].readings[0].signature,
                            }
                        ),
                        *w.last_wires[1:],
                    ]
                )
            )
        ),
        DecodeError,
        id="map-instead-of-array-envelope",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(enc({w.blocks[-1].header.wire: w.last_wires}))),
        DecodeError,
        id="map-instead-of-array-block",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, lambda p: p.append(enc(0))))),
        DecodeError,
        id="extra-field",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, lambda p: p.__delitem__(-1)))),
        DecodeError,
        id="missing-field",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(0, enc(2))))), DecodeError, id="format-2"
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(7, b"\xd4\x01\x00")))),
        DecodeError,
        id="ext-type",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(7, enc(""))))),
        DecodeError,
        id="empty-tag-not-nil",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(5, enc("Temp mc"))))),
        DecodeError,
        id="sensor-name-charset",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(_reading0(w, _set(1, enc("ef" + "+" * 24))))),
        DecodeError,
        id="device-id-wildcard",
    ),
    # trailing garbage and truncation inside a block
    pytest.param(
        lambda w: w.accept(w.with_last(w.wires[-1] + b"\x00")),
        DecodeError,
        id="trailing-garbage-block",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(encode_block(w.blocks[-1].header.wire + b"\xc0", w.last_wires))
        ),
        DecodeError,
        id="trailing-garbage-header",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.reseal([w.last_wires[0] + b"\x00", *w.last_wires[1:]]))),
        DecodeError,
        id="trailing-garbage-reading",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                w.reseal(
                    [
                        signed(w.blocks[-1].readings[0].body + b"\x00", w.device, domains.READING),
                        *w.last_wires[1:],
                    ]
                )
            )
        ),
        DecodeError,
        id="trailing-garbage-reading-body",
    ),
    pytest.param(
        lambda w: w.accept(
            w.with_last(
                encode_block(
                    signed(w.blocks[-1].header.body + b"\xc0", w.device, domains.HEADER),
                    w.last_wires,
                )
            )
        ),
        DecodeError,
        id="trailing-garbage-header-body",
    ),
    pytest.param(
        lambda w: w.accept(w.with_last(w.wires[-1][:-1])), DecodeError, id="truncated-block"
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=w.cert.wire + b"\x00"),
        DecodeError,
        id="trailing-garbage-certificate",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, revocations=[w.revocation(None, 0) + b"\x00"]),
        DecodeError,
        id="trailing-garbage-revocation",
    ),
    pytest.param(
        lambda w: w.accept(w.rotated_wires(), rotations=[w.rotation() + b"\x00"]),
        DecodeError,
        id="trailing-garbage-rotation",
    ),
    # identity and enrollment
    pytest.param(
        lambda w: w.accept(_foreign_device_chain(w)),
        VerificationError,
        id="device-id-of-another-device",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, now_ms=NOT_AFTER_MS + 1), CertificateError, id="expired-cert"
    ),
    pytest.param(
        lambda w: w.accept(w.wires, now_ms=NOT_BEFORE_MS - 1),
        CertificateError,
        id="not-yet-valid-cert",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, revocations=[w.revocation(None, 0)]),
        RevokedError,
        id="revoked-cert",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, revocations=[w.revocation(None, 2)]),
        RevokedError,
        id="revoked-device-from-height-2",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, revocations=[w.revocation(w.device.key_id, 1)]),
        RevokedError,
        id="revoked-key",
    ),
    pytest.param(
        lambda w: w.accept(
            w.wires,
            revocations=[w.revocation(w.device.key_id, 9), w.revocation(w.device.key_id, 2)],
        ),
        RevokedError,
        id="revoked-key-earliest-wins",
    ),
    pytest.param(
        lambda w: w.accept(
            w.wires, revocations=[w.revocation(None, 0, signer=w.rogue, claimed=w.authority.key_id)]
        ),
        SignatureError,
        id="revocation-forged",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, revocations=[w.revocation(None, 0, signer=w.rogue)]),
        CertificateError,
        id="revocation-unknown-root",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=w.cert_wire(signer=w.rogue)),
        CertificateError,
        id="unknown-root",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=w.cert_wire(signer=w.rogue, claimed=w.authority.key_id)),
        SignatureError,
        id="forged-cert",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=w.cert_wire(device_id=w.other.public.device_id)),
        DecodeError,
        id="cert-device-id-not-of-key",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=flip_signature_bit(w.cert.wire, 100)),
        SignatureError,
        id="cert-sig-bit-100",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=w.other_cert.wire),
        VerificationError,
        id="cert-of-another-device",
    ),
    pytest.param(
        lambda w: w.accept(w.wires, cert=w.cert_wire(not_before=5, not_after=4)),
        DecodeError,
        id="cert-window-inverted",
    ),
    # key rotation
    pytest.param(
        lambda w: w.accept(
            w.rotated_wires(),
            rotations=[w.rotation(authority=w.rogue, claimed_authority=w.authority.key_id)],
        ),
        SignatureError,
        id="rotation-bad-countersign",
    ),
    pytest.param(
        lambda w: w.accept(w.rotated_wires(), rotations=[w.rotation(authority=w.rogue)]),
        CertificateError,
        id="rotation-countersign-unknown-root",
    ),
    pytest.param(
        lambda w: w.accept(w.rotated_wires(), rotations=[w.rotation(old_signer=w.other)]),
        SignatureError,
        id="rotation-bad-old-signature",
    ),
    pytest.param(
        lambda w: w.accept(
            w.rotated_wires(), rotations=[w.rotation(device_id=w.other.public.device_id)]
        ),
        VerificationError,
        id="rotation-wrong-device",
    ),
    pytest.param(
        lambda w: w.accept(w.rotated_wires(), rotations=[w.rotation(old=w.other)]),
        VerificationError,
        id="rotation-wrong-old-key",
    ),
    pytest.param(
        lambda w: w.accept(w.rotated_wires(), rotations=[w.rotation(height=0)]),
        VerificationError,
        id="rotation-not-forward",
    ),
    pytest.param(lambda w: w.accept(w.rotated_wires()), VerificationError, id="rotation-missing"),
    pytest.param(
        lambda w: w.accept(w.wires, rotations=[w.rotation()]),
        VerificationError,
        id="old-key-after-rotation",
    ),
    pytest.param(
        lambda w: w.accept(
            w.rotated_wires((w.device, w.next_key, w.next_key)), rotations=[w.rotation()]
        ),
        VerificationError,
        id="new-key-before-rotation",
    ),
    pytest.param(
        lambda w: w.accept(
            w.rotated_wires(),
            rotations=[w.rotation()],
            revocations=[w.revocation(w.next_key.key_id, 2)],
        ),
        RevokedError,
        id="rotated-key-revoked",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), VECTORS)
def test_mutation_is_rejected(world: World, mutate: Run, expected: type[LedgerError]) -> None:
    with pytest.raises(LedgerError) as info:
        mutate(world)
    assert type(info.value) is expected, f"expected {expected.__name__}, got {info.value!r}"


@pytest.mark.parametrize("bit", range(512), ids=lambda b: f"reading-sig-bit-{b}")
def test_every_reading_signature_bit_flip_is_rejected(world: World, bit: int) -> None:
    wire = flip_signature_bit(world.last_wires[1], bit)
    sr = decode_reading(wire)  # still well formed
    with pytest.raises(SignatureError):
        sr.verify(world.device.public)


@pytest.mark.parametrize("bit", range(512), ids=lambda b: f"header-sig-bit-{b}")
def test_every_header_signature_bit_flip_is_rejected(world: World, bit: int) -> None:
    block = world.blocks[-1]
    tampered = encode_block(flip_signature_bit(block.header.wire, bit), world.last_wires)
    with pytest.raises(SignatureError):
        world.accept(world.with_last(tampered))


# --- properties -----------------------------------------------------------------------------

fields = st.tuples(
    st.integers(0, 2**40),
    st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,31}\Z"),
    st.integers(-(2**63), 2**63 - 1),
    st.none() | st.text(st.characters(codec="ascii", min_codepoint=33), min_size=1, max_size=96),
)


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(fields, min_size=1, max_size=6), min_size=1, max_size=4),
    pick=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_random_chain_verifies_and_any_reading_bit_flip_fails(
    device_key: SigningKey,
    cert: Certificate,
    roots: FleetRoots,
    batches: list[list[tuple[int, str, int, str | None]]],
    pick: tuple[int, int, int],
) -> None:
    with Store(":memory:") as store:
        writer = ChainWriter(store, device_key, device_key.public.device_id)
        time_ms = 0
        for batch in batches:
            for step_ms, sensor, value, tag in batch:
                # drawn as steps: a writer never signs a time before its last one
                time_ms += step_ms + 1
                writer.record(time_ms, sensor, value, tag)
            writer.seal()
        keys = DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS)
        head, count = verify_chain(
            [decode_block(store.block_wire(h) or b"") for h in range(store.block_count())],
            keys.key_for,
        )
        assert head == store.head() and count == sum(map(len, batches))
        height = pick[0] % len(batches)
        wires = [store.block_wire(h) or b"" for h in range(len(batches))]
        readings = store.reading_wires(height)
        idx = pick[1] % len(readings)
        readings[idx] = flip(readings[idx], pick[2] % (8 * len(readings[idx])))
        wires[height] = encode_block(store.header_at(height).wire, readings)  # type: ignore[union-attr]
    with pytest.raises((DecodeError, VerificationError)):
        verify_chain([decode_block(w) for w in wires], keys.key_for)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_random_chain_rejects_any_single_byte_change_of_its_wire(
    device_key: SigningKey,
    cert: Certificate,
    roots: FleetRoots,
    sizes: list[int],
    data: st.DataObject,
) -> None:
    """Change any one byte anywhere in any block (header, readings, framing): rejected."""
    blocks = seal_chain_impl(device_key, sample_readings(device_key.public.device_id, sizes))
    wires = [b.encode() for b in blocks]
    keys = DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS)
    verify_chain([decode_block(w) for w in wires], keys.key_for)
    h = data.draw(st.integers(0, len(wires) - 1))
    pos = data.draw(st.integers(0, len(wires[h]) - 1))
    xor = data.draw(st.integers(1, 255))
    tampered = bytearray(wires[h])
    tampered[pos] ^= xor
    wires[h] = bytes(tampered)
    with pytest.raises((DecodeError, VerificationError)):
        verify_chain([decode_block(w) for w in wires], keys.key_for)


def test_issue_certificate_round_trips_through_the_acceptance_path(world: World) -> None:
    again = issue_certificate(
        world.authority,
        world.device.public,
        kind="refrigerator",
        model="RF-200",
        site="store-12",
        owner_x25519=None,
        not_before_ms=NOT_BEFORE_MS,
        not_after_ms=NOT_AFTER_MS,
        serial=1,
    )
    assert again.wire == world.cert.wire
    assert decode_certificate(world.cert_wire()) == world.cert
    header = sign_header(world.blocks[0].header.header, world.device)
    assert header.wire == world.blocks[0].header.wire  # deterministic signatures
