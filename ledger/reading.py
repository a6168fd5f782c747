"""Signed readings: one sensor observation, signed by the device that made it.

Two body formats (canonical arrays), both signed in the envelope ``[body, sig]`` with domain
READING:

- format 1, plain (array of 9): ``[1, device_id, epoch, seq, time_ms, sensor, value, tag, text]``;
- format 2, private (array of 7): ``[2, device_id, epoch, seq, time_ms, epk, ct]``, where ``ct``
  seals the canonical content ``[sensor, value, tag, text]`` to the owner's X25519 key
  (``ledger.sealbox``; docs/PRIVATE.md). Sealing happens before signing, so signatures, Merkle
  leaves and proofs cover the ciphertext and verify without any key.

``SignedReading.reading`` is a ``Reading`` (format 1) or a ``SealedReading`` (format 2). Both carry
the clear fields device_id, epoch, seq and time_ms; a ``SealedReading`` has no clear tag (``tag``
is None, so tag indexes pass it by) and raises ``SealedContentError`` for sensor, value and text:
open it with ``ledger.private``. ``seq`` strictly increases per (device, epoch). The Merkle leaf of
a reading is its whole wire form (body and signature), so an inclusion proof proves the signed
reading itself.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ledger import codec, domains, sealbox, signed
from ledger.errors import DecodeError, SequenceError, UsageError
from ledger.identity import PublicKey, SigningKey, is_device_id
from ledger.merkle import leaf_hash

FORMAT_PLAIN = 1
FORMAT_SEALED = 2
SENSOR_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_TAG = 96
MAX_TEXT = 64
MAX_BODY = 320
MAX_EPOCH = (1 << 32) - 1
EPK_SIZE = sealbox.X25519_SIZE
# Largest canonical content [sensor, value, tag, text]: 1 + (2+32) + 9 + (2+96) + (2+64) bytes.
MAX_CONTENT = 208
MIN_CONTENT = 6  # [one-letter sensor, 0, nil, nil]
MAX_SEALED = MAX_CONTENT + sealbox.MAC_SIZE
MIN_SEALED = MIN_CONTENT + sealbox.MAC_SIZE
_BODY_LIMITS = codec.Limits(max_bytes=MAX_BODY, max_array=9, max_str=MAX_TAG, max_bin=MAX_SEALED)
_CONTENT_LIMITS = codec.Limits(max_bytes=MAX_CONTENT, max_array=4, max_str=MAX_TAG, max_bin=0)
_WHAT = "reading"
_CONTENT = "reading content"


class SealedContentError(UsageError):
    """Code asked a private reading for its content without opening it (``ledger.private``)."""

    code = "sealed-content"


@dataclass(frozen=True, slots=True)
class Reading:
    device_id: str
    epoch: int
    seq: int
    time_ms: int
    sensor: str
    value: int
    tag: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        # Local construction must produce what decoding accepts: check with the same rules.
        signed.check_local(_check, self)

    def encode_body(self) -> bytes:
        return codec.encode_trusted(
            [
                FORMAT_PLAIN,
                self.device_id,
                self.epoch,
                self.seq,
                self.time_ms,
                self.sensor,
                self.value,
                self.tag,
                self.text,
            ]
        )

    def encode_content(self) -> bytes:
        """The canonical ``[sensor, value, tag, text]`` that a private reading seals."""
        return codec.encode_trusted([self.sensor, self.value, self.tag, self.text])

    @property
    def private(self) -> bool:
        return False


_MAX_U63 = (1 << 63) - 1
_MIN_I64 = -(1 << 63)


@functools.lru_cache(maxsize=4096)
def _good_name(device_id: str, sensor: str) -> bool:
    return is_device_id(device_id) and bool(SENSOR_RE.fullmatch(sensor))


def _check(r: Reading) -> None:
    # Fast path: one expression over every rule; the detailed checks below only run to explain
    # a failure (or for types the cache cannot hash).
    t = r.tag
    x = r.text
    if (
        type(r.device_id) is str
        and type(r.sensor) is str
        and _good_name(r.device_id, r.sensor)
        and type(r.epoch) is int
        and 0 <= r.epoch <= MAX_EPOCH
        and type(r.seq) is int
        and 0 <= r.seq <= _MAX_U63
        and type(r.time_ms) is int
        and 0 <= r.time_ms <= _MAX_U63
        and type(r.value) is int
        and _MIN_I64 <= r.value <= -_MIN_I64 - 1
        and (t is None or (type(t) is str and 0 < len(t) <= MAX_TAG and t.isascii()))
        and (x is None or (type(x) is str and 0 < len(x) <= MAX_TEXT and x.isascii()))
    ):
        return
    _explain(r)


def _explain(r: Reading) -> None:
    codec.text(r.device_id, _WHAT, "device_id", 26, is_device_id)
    codec.uint(r.epoch, _WHAT, "epoch", MAX_EPOCH)
    codec.uint(r.seq, _WHAT, "seq")
    codec.uint(r.time_ms, _WHAT, "time_ms")
    codec.text(r.sensor, _WHAT, "sensor", 32, lambda s: bool(SENSOR_RE.fullmatch(s)))
    codec.sint(r.value, _WHAT, "value")
    codec.opt_text(r.tag, _WHAT, "tag", MAX_TAG)
    codec.opt_text(r.text, _WHAT, "text", MAX_TEXT)


@dataclass(frozen=True, slots=True)
class SealedReading:
    """A private reading (format 2): clear order fields, content sealed to the owner's key."""

    device_id: str
    epoch: int
    seq: int
    time_ms: int
    epk: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        signed.check_local(_check_sealed, self)

    def encode_body(self) -> bytes:
        return codec.encode_trusted(
            [
                FORMAT_SEALED,
                self.device_id,
                self.epoch,
                self.seq,
                self.time_ms,
                self.epk,
                self.ciphertext,
            ]
        )

    @property
    def private(self) -> bool:
        return True

    @property
    def tag(self) -> None:
        """No clear tag: the tag, if any, is sealed with the content."""
        return None

    @property
    def sensor(self) -> str:
        raise self._sealed("sensor")

    @property
    def value(self) -> int:
        raise self._sealed("value")

    @property
    def text(self) -> str | None:
        raise self._sealed("text")

    def _sealed(self, field_: str) -> SealedContentError:
        return SealedContentError(
            f"reading {self.device_id} seq {self.seq} is private: its {field_} is sealed to the "
            "owner; open it with ledger.private.open_reading"
        )


def _check_sealed(r: SealedReading) -> None:
    _check_order_fields(r.device_id, r.epoch, r.seq, r.time_ms)
    codec.bin_(r.epk, _WHAT, "epk", EPK_SIZE)
    codec.bin_(r.ciphertext, _WHAT, "ct", maximum=MAX_SEALED)
    if len(r.ciphertext) < MIN_SEALED:
        raise DecodeError(
            _WHAT, f"field ct: expected at least {MIN_SEALED} bytes, found {len(r.ciphertext)}"
        )


def _check_order_fields(device_id: object, epoch: object, seq: object, time_ms: object) -> None:
    codec.text(device_id, _WHAT, "device_id", 26, is_device_id)
    codec.uint(epoch, _WHAT, "epoch", MAX_EPOCH)
    codec.uint(seq, _WHAT, "seq")
    codec.uint(time_ms, _WHAT, "time_ms")


AnyReading = Reading | SealedReading


@dataclass(frozen=True, slots=True)
class SignedReading:
    """A reading with its exact wire bytes. ``wire`` is what is stored, hashed and forwarded."""

    reading: AnyReading
    wire: bytes
    body: bytes
    signature: bytes
    leaf_hash: bytes  # SHA-256(0x00 || wire), computed once

    @property
    def private(self) -> bool:
        """True for a format 2 reading, whose content only its owner (or a grantee) can open."""
        return type(self.reading) is SealedReading

    def verify(self, key: PublicKey) -> None:
        key.verify(domains.READING, self.body, self.signature, f"reading seq {self.reading.seq}")


def seal_reading(
    reading: Reading, owner_x25519: bytes, *, ephemeral_secret: bytes | None = None
) -> SealedReading:
    """Seal a reading's content to its owner's X25519 public key (a fresh ephemeral key each
    time; ``ephemeral_secret`` only makes test vectors deterministic)."""
    epk, ct = sealbox.seal(reading.encode_content(), owner_x25519, ephemeral_secret)
    return SealedReading(reading.device_id, reading.epoch, reading.seq, reading.time_ms, epk, ct)


def decode_content(plaintext: bytes, sealed: SealedReading) -> Reading:
    """Rebuild the plain reading from an opened private reading's content (untrusted bytes)."""
    f = codec.array(codec.decode(plaintext, _CONTENT_LIMITS, _CONTENT), 4, _CONTENT)
    try:
        return Reading(
            sealed.device_id, sealed.epoch, sealed.seq, sealed.time_ms, f[0], f[1], f[2], f[3]
        )
    except UsageError as exc:
        raise DecodeError(_CONTENT, str(exc).removeprefix(f"{_WHAT}: ")) from None


def sign_reading(reading: AnyReading, key: SigningKey) -> SignedReading:
    """Sign a plain reading, or a private one already sealed with ``seal_reading``."""
    wire, body, signature = signed.sign(domains.READING, reading, key)
    return SignedReading(reading, wire, body, signature, leaf_hash(wire))


def decode_reading(wire: bytes) -> SignedReading:
    """Decode a signed reading from untrusted bytes (no signature check). Raises DecodeError."""
    f, body, signature = signed.open_wire(wire, _WHAT, MAX_BODY, _BODY_LIMITS)
    fmt = f[0] if isinstance(f, list) and f else None
    reading: AnyReading
    if type(fmt) is int and fmt == FORMAT_SEALED:
        f = codec.array(f, 7, _WHAT)
        reading = signed.build(_WHAT, SealedReading, *f[1:])
    else:
        f = codec.array(f, 9, _WHAT)
        if type(fmt) is not int or fmt != FORMAT_PLAIN:
            raise DecodeError(
                _WHAT, f"field format: expected {FORMAT_PLAIN} or {FORMAT_SEALED}, found {fmt!r}"
            )
        reading = signed.build(_WHAT, Reading, *f[1:])
    return SignedReading(reading, wire, body, signature, leaf_hash(wire))


def check_sequence(readings: list[SignedReading], after_seq: int | None, what: str) -> None:
    """Sequence numbers must strictly increase, and exceed ``after_seq`` when given."""
    last = after_seq
    for sr in readings:
        seq = sr.reading.seq
        if last is not None and seq <= last:
            raise SequenceError(f"{what}: sequence must strictly increase", f"> {last}", seq)
        last = seq
