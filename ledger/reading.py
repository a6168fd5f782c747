"""Signed readings: one sensor observation, signed by the device that made it.

Body (canonical array of 9): ``[format=1, device_id, epoch, seq, time_ms, sensor, value, tag,
text]``; wire: the signed envelope ``[body, sig]`` with domain READING. ``seq`` strictly increases
per (device, epoch). The Merkle leaf of a reading is its whole wire form (body and signature), so
an inclusion proof proves the signed reading itself.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from ledger import codec, domains, envelope
from ledger.errors import DecodeError, SequenceError, UsageError
from ledger.identity import PublicKey, SigningKey, is_device_id

FORMAT_PLAIN = 1
SENSOR_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_TAG = 96
MAX_TEXT = 64
MAX_BODY = 320
MAX_EPOCH = (1 << 32) - 1
_BODY_LIMITS = codec.Limits(max_bytes=MAX_BODY, max_array=9, max_str=MAX_TAG, max_bin=0)
_WHAT = "reading"


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
        try:
            _check(self)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None

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
class SignedReading:
    """A reading with its exact wire bytes. ``wire`` is what is stored, hashed and forwarded."""

    reading: Reading
    wire: bytes
    body: bytes
    signature: bytes
    leaf_hash: bytes  # SHA-256(0x00 || wire), computed once

    def verify(self, key: PublicKey) -> None:
        key.verify(domains.READING, self.body, self.signature, f"reading seq {self.reading.seq}")


def leaf_hash(wire: bytes) -> bytes:
    """RFC 9162 leaf hash of a reading's wire bytes (duplicated here to keep the hot path flat)."""
    return hashlib.sha256(b"\x00" + wire).digest()


def sign_reading(reading: Reading, key: SigningKey) -> SignedReading:
    body = reading.encode_body()
    signature = key.sign(domains.READING, body)
    wire = envelope.wrap(body, signature)
    return SignedReading(reading, wire, body, signature, leaf_hash(wire))


def decode_reading(wire: bytes) -> SignedReading:
    """Decode a signed reading from untrusted bytes (no signature check). Raises DecodeError."""
    body, signature = envelope.unwrap(wire, _WHAT, MAX_BODY)
    f = codec.array(codec.decode(body, _BODY_LIMITS, _WHAT), 9, _WHAT)
    if type(f[0]) is not int or f[0] != FORMAT_PLAIN:
        raise DecodeError(_WHAT, f"field format: expected {FORMAT_PLAIN}, found {f[0]!r}")
    try:
        reading = Reading(f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8])
    except UsageError as exc:
        raise DecodeError(_WHAT, str(exc).removeprefix(f"{_WHAT}: ")) from None
    return SignedReading(reading, wire, body, signature, leaf_hash(wire))


def check_sequence(readings: list[SignedReading], after_seq: int | None, what: str) -> None:
    """Sequence numbers must strictly increase, and exceed ``after_seq`` when given."""
    last = after_seq
    for sr in readings:
        seq = sr.reading.seq
        if last is not None and seq <= last:
            raise SequenceError(f"{what}: sequence must strictly increase", f"> {last}", seq)
        last = seq
