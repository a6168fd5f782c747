"""Light blocks: a small signed header that chains and commits, plus the readings it commits to.

Header body (canonical array of 11), signed with domain HEADER:
``[format=1, device_id, epoch, height, prev_hash, history_root, merkle_root, count,
first_time_ms, last_time_ms, key_id]``.
- ``prev_hash``: hash of the previous header (32 zero bytes at height 0).
- ``history_root``: RFC 9162 root over the hashes of headers 0..height-1 (see history.py).
- ``merkle_root``: RFC 9162 root over the leaf hashes of the block's readings, in order.
- ``key_id``: which of the device's keys signed this header and its readings.
The header hash is ``SHA-256(HEADER_HASH || body)``.
Block wire: ``[header_wire, [reading_wire...]]``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ledger import codec, domains, signed
from ledger.errors import DecodeError, UsageError
from ledger.identity import KEY_ID_SIZE, PublicKey, SigningKey, is_device_id
from ledger.merkle import root_from_leaf_hashes
from ledger.reading import MAX_EPOCH, SignedReading, decode_reading

FORMAT = 1
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
MAX_READINGS = 4096
MAX_HEADER_BODY = 200
MAX_READING_WIRE = 400
MAX_BLOCK_BYTES = 16 + 300 + MAX_READINGS * (MAX_READING_WIRE + 3)
_HEADER_LIMITS = codec.Limits(max_bytes=MAX_HEADER_BODY, max_array=11, max_str=26, max_bin=32)
_BLOCK_LIMITS = codec.Limits(
    max_bytes=MAX_BLOCK_BYTES,
    max_array=MAX_READINGS,
    max_str=0,
    max_bin=MAX_READING_WIRE,
    shape=(2, MAX_READINGS),
)


@dataclass(frozen=True, slots=True)
class Header:
    device_id: str
    epoch: int
    height: int
    prev_hash: bytes
    history_root: bytes
    merkle_root: bytes
    count: int
    first_time_ms: int
    last_time_ms: int
    key_id: bytes

    def __post_init__(self) -> None:
        signed.check_local(_check, self)

    def encode_body(self) -> bytes:
        return codec.encode_trusted(
            [
                FORMAT,
                self.device_id,
                self.epoch,
                self.height,
                self.prev_hash,
                self.history_root,
                self.merkle_root,
                self.count,
                self.first_time_ms,
                self.last_time_ms,
                self.key_id,
            ]
        )


def _check(h: Header) -> None:
    w = "header"
    codec.text(h.device_id, w, "device_id", 26, is_device_id)
    codec.uint(h.epoch, w, "epoch", MAX_EPOCH)
    codec.uint(h.height, w, "height")
    codec.bin_(h.prev_hash, w, "prev_hash", HASH_SIZE)
    codec.bin_(h.history_root, w, "history_root", HASH_SIZE)
    codec.bin_(h.merkle_root, w, "merkle_root", HASH_SIZE)
    codec.uint(h.count, w, "count", MAX_READINGS)
    if h.count == 0:
        raise DecodeError(w, "field count: a block holds at least one reading, found 0")
    codec.uint(h.first_time_ms, w, "first_time_ms")
    codec.uint(h.last_time_ms, w, "last_time_ms")
    codec.bin_(h.key_id, w, "key_id", KEY_ID_SIZE)
    if h.height == 0 and h.prev_hash != ZERO_HASH:
        raise DecodeError(w, "field prev_hash: height 0 must have 32 zero bytes")


def header_hash(body: bytes) -> bytes:
    return hashlib.sha256(domains.HEADER_HASH + body).digest()


@dataclass(frozen=True, slots=True)
class SignedHeader:
    header: Header
    wire: bytes
    body: bytes
    signature: bytes
    hash: bytes

    def verify(self, key: PublicKey, *, memo: bool = False) -> None:
        """Check the signature under ``key``. ``memo``: remember success process-wide, so that
        the next check of the same bytes under the same key is a lookup (the devices of one
        process receive every header of their domain once each: one Ed25519 check suffices)."""
        if memo and (key.raw, self.wire) in _VERIFIED:
            return
        what = f"header at height {self.header.height}"
        key.verify(domains.HEADER, self.body, self.signature, what)
        if memo:
            with _VERIFIED_LOCK:
                _VERIFIED[(key.raw, self.wire)] = None
                while len(_VERIFIED) > _VERIFIED_MAX:
                    del _VERIFIED[next(iter(_VERIFIED))]


# Headers whose signature verified in this process, keyed by (public key, signed wire): a pure
# function of its key, so a hit is as good as a check. Bounded, oldest first.
_VERIFIED: dict[tuple[bytes, bytes], None] = {}
_VERIFIED_MAX = 8_192
_VERIFIED_LOCK = threading.Lock()


def sign_header(header: Header, key: SigningKey) -> SignedHeader:
    if header.key_id != key.key_id:
        raise UsageError("header.key_id must name the signing key")
    wire, body, signature = signed.sign(domains.HEADER, header, key)
    return SignedHeader(header, wire, body, signature, header_hash(body))


def decode_header(wire: bytes) -> SignedHeader:
    """Decode a signed header from untrusted bytes (no signature check). Raises DecodeError.

    Decoded headers are remembered process-wide by their bytes (a pure function of them, and
    immutable): the devices of one process all receive each header of their domain."""
    if type(wire) is bytes:
        held = _DECODED.get(wire)
        if held is not None:
            return held
        sh = _decode_header(wire)
        with _DECODED_LOCK:
            _DECODED[wire] = sh
            while len(_DECODED) > _DECODED_MAX:
                del _DECODED[next(iter(_DECODED))]
        return sh
    return _decode_header(wire)


_DECODED: dict[bytes, SignedHeader] = {}
_DECODED_MAX = 4_096
_DECODED_LOCK = threading.Lock()


def _decode_header(wire: bytes) -> SignedHeader:
    decoded, body, signature = signed.open_wire(wire, "header", MAX_HEADER_BODY, _HEADER_LIMITS)
    f = signed.fields(decoded, 11, FORMAT, "header")
    header = signed.build("header", Header, *f[1:])
    return SignedHeader(header, wire, body, signature, header_hash(body))


def build_header(
    *,
    device_id: str,
    epoch: int,
    prev: SignedHeader | None,
    history_root: bytes,
    readings: Sequence[SignedReading],
    key_id: bytes,
) -> Header:
    """The header that seals ``readings`` on top of ``prev`` (None for the first block)."""
    if not readings:
        raise UsageError("cannot seal an empty block")
    return Header(
        device_id=device_id,
        epoch=epoch,
        height=0 if prev is None else prev.header.height + 1,
        prev_hash=ZERO_HASH if prev is None else prev.hash,
        history_root=history_root,
        merkle_root=root_from_leaf_hashes([r.leaf_hash for r in readings]),
        count=len(readings),
        first_time_ms=readings[0].reading.time_ms,
        last_time_ms=readings[-1].reading.time_ms,
        key_id=key_id,
    )


@dataclass(frozen=True, slots=True)
class Block:
    header: SignedHeader
    readings: tuple[SignedReading, ...]

    def encode(self) -> bytes:
        return encode_block(self.header.wire, [r.wire for r in self.readings])


def encode_block(header_wire: bytes, reading_wires: Sequence[bytes]) -> bytes:
    return codec.encode([header_wire, list(reading_wires)])


def block_wire_size(header_len: int, reading_lens: Sequence[int]) -> int:
    """``len(encode_block(...))`` from the lengths alone (canonical MessagePack framing)."""
    return (
        _array_head(2)
        + _bin_head(header_len)
        + header_len
        + _array_head(len(reading_lens))
        + sum(_bin_head(n) + n for n in reading_lens)
    )


def _bin_head(n: int) -> int:
    return 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5


def _array_head(n: int) -> int:
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def decode_block(wire: bytes) -> Block:
    """Decode a block from untrusted bytes (structure only; see verify.verify_block)."""
    f = codec.array(codec.decode(wire, _BLOCK_LIMITS, "block"), 2, "block")
    header = decode_header(codec.bin_(f[0], "block", "header", maximum=MAX_READING_WIRE))
    raw = f[1]
    if not isinstance(raw, list):
        raise DecodeError("block", f"field readings: expected an array, found {type(raw).__name__}")
    if len(raw) != header.header.count:
        raise DecodeError(
            "block",
            f"field readings: header count {header.header.count}, found {len(raw)} readings",
        )
    readings = tuple(
        decode_reading(codec.bin_(r, "block", "reading", maximum=MAX_READING_WIRE)) for r in raw
    )
    return Block(header, readings)
