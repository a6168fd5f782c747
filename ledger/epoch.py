"""Epoch records: a device's signed statement that it closed one epoch and opened the next.

A device restored from its peers that cannot recover its whole published chain (a header is held
by peers but no body of it is reachable) must never sign a height it already published in the
same epoch. It opens a new epoch instead (``new_epoch > prev_epoch``: one above every epoch it
has seen of itself), with this record, signed by
the key in force at ``last_height + 1`` (the key that signs the first block of the new epoch):

Body (canonical array of 7, at most 128 bytes), signed with domain EPOCH:
``[format=1, device_id, new_epoch, prev_epoch, last_height, last_hash, time_ms]``.

- ``last_height``/``last_hash``: the newest own header of ``prev_epoch`` the device recovered
  whole (header and body) and verified. The first block of ``new_epoch`` is at
  ``last_height + 1`` with ``prev_hash = last_hash`` and the history root over heights
  ``0..last_height``: heights stay unique in the device's own store and the history tree grows on.
- Headers of ``prev_epoch`` above ``last_height`` that were published before the wipe stay valid
  history of ``prev_epoch``; they are *superseded* by the new epoch, never a fork with it: fork
  evidence needs two headers at the same (epoch, height).
- ``time_ms``: the device clock when it opened the epoch (informative, never used to order).

Wire: the signed envelope ``[body: bin, signature: bin(64)]`` (docs/PROTOCOL.md section 6.5,
byte-exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ledger import codec, domains, signed
from ledger.errors import DecodeError, VerificationError
from ledger.identity import PublicKey, SigningKey, is_device_id
from ledger.reading import MAX_EPOCH

# The domain tag of epoch records (ledger.domains).
EPOCH = domains.EPOCH

FORMAT = 1
HASH_SIZE = 32
MAX_BODY = 128
MAX_WIRE = MAX_BODY + 72  # envelope framing + 64-byte signature
_LIMITS = codec.Limits(max_bytes=MAX_BODY, max_array=7, max_str=26, max_bin=HASH_SIZE)


@dataclass(frozen=True, slots=True)
class EpochRecord:
    device_id: str
    new_epoch: int
    prev_epoch: int
    last_height: int
    last_hash: bytes
    time_ms: int

    def __post_init__(self) -> None:
        signed.check_local(_check, self)

    @property
    def first_height(self) -> int:
        """Height of the first block of ``new_epoch``."""
        return self.last_height + 1

    def encode_body(self) -> bytes:
        return codec.encode_trusted(
            [
                FORMAT,
                self.device_id,
                self.new_epoch,
                self.prev_epoch,
                self.last_height,
                self.last_hash,
                self.time_ms,
            ]
        )


def _check(r: EpochRecord) -> None:
    w = "epoch record"
    codec.text(r.device_id, w, "device_id", 26, is_device_id)
    codec.uint(r.new_epoch, w, "new_epoch", MAX_EPOCH)
    codec.uint(r.prev_epoch, w, "prev_epoch", MAX_EPOCH)
    if r.new_epoch <= r.prev_epoch:
        raise DecodeError(
            w, f"field new_epoch: expected above prev_epoch {r.prev_epoch}, found {r.new_epoch}"
        )
    codec.uint(r.last_height, w, "last_height", (1 << 63) - 2)
    codec.bin_(r.last_hash, w, "last_hash", HASH_SIZE)
    codec.uint(r.time_ms, w, "time_ms")


@dataclass(frozen=True, slots=True)
class SignedEpoch:
    record: EpochRecord
    wire: bytes
    body: bytes
    signature: bytes

    def verify(self, key: PublicKey) -> None:
        """Raise SignatureError unless the device key ``key`` signed this record."""
        r = self.record
        key.verify(EPOCH, self.body, self.signature, f"epoch record {r.device_id}#{r.new_epoch}")


def sign_epoch(record: EpochRecord, key: SigningKey) -> SignedEpoch:
    return SignedEpoch(record, *signed.sign(EPOCH, record, key))


def decode_epoch(wire: bytes) -> SignedEpoch:
    """Decode an epoch record from untrusted bytes (no signature check). Raises DecodeError."""
    w = "epoch record"
    if not isinstance(wire, bytes) or len(wire) > MAX_WIRE:
        size = len(wire) if isinstance(wire, bytes) else type(wire).__name__
        raise DecodeError(w, f"expected at most {MAX_WIRE} bytes, found {size}")
    decoded, body, signature = signed.open_wire(wire, w, MAX_BODY, _LIMITS)
    f = signed.fields(decoded, 7, FORMAT, w)
    for i, name in ((2, "new_epoch"), (3, "prev_epoch"), (4, "last_height"), (6, "time_ms")):
        codec.uint(f[i], w, name)
    codec.text(f[1], w, "device_id", 26)
    codec.bin_(f[5], w, "last_hash")
    return SignedEpoch(signed.build(w, EpochRecord, *f[1:]), wire, body, signature)


def index_epochs(records: Iterable[SignedEpoch], device_id: str) -> dict[int, SignedEpoch]:
    """Records of ``device_id`` by ``new_epoch``. Two different records for one epoch are a
    contradiction the device signed: refused (VerificationError)."""
    out: dict[int, SignedEpoch] = {}
    for se in records:
        r = se.record
        if r.device_id != device_id:
            continue
        held = out.get(r.new_epoch)
        if held is not None and held.wire != se.wire:
            raise VerificationError(
                f"epoch records of {device_id}: two different records open epoch {r.new_epoch}"
            )
        out[r.new_epoch] = se
    return out


EpochIndex = Mapping[int, SignedEpoch]
