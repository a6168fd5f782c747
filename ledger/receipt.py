"""Signed storage receipts: a holder's promise that it keeps one block body of another device.

Receipt body (canonical array of 8), carried in the signed envelope ``[body, signature]`` and
signed by the holder's current key with domain ``STORAGE_RECEIPT`` (docs/PROTOCOL.md section 2):
``[format=1, holder_id, owner_id, epoch, height, block_hash, size, time_ms]``.

- ``holder_id``: the device that stores the body (and signs the receipt).
- ``owner_id``, ``epoch``, ``height``: the block's device, epoch and height.
- ``block_hash``: the block's header hash (``ledger.block.header_hash``).
- ``size``: the length of the block wire the holder stored, in bytes.
- ``time_ms``: the holder's clock when it stored the body (informative, never used to order).

``RECEIPT`` below is only a local alias of ``domains.STORAGE_RECEIPT``. A receipt proves a
promise, not possession: audits (agent/replication) check possession.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ledger import codec, domains, signed
from ledger.block import HASH_SIZE, MAX_BLOCK_BYTES
from ledger.errors import DecodeError
from ledger.identity import PublicKey, SigningKey, is_device_id
from ledger.reading import MAX_EPOCH

RECEIPT: Final = domains.STORAGE_RECEIPT
FORMAT: Final = 1
MAX_HEIGHT: Final = (1 << 63) - 1
MAX_TIME_MS: Final = (1 << 63) - 1
MAX_RECEIPT_BODY: Final = 128  # the largest body is 119 bytes
MAX_RECEIPT_WIRE: Final = MAX_RECEIPT_BODY + 69  # [bin8 body, bin8(64)] framing
_LIMITS: Final = codec.Limits(max_bytes=MAX_RECEIPT_BODY, max_array=8, max_str=26, max_bin=32)
_WHAT: Final = "storage receipt"


@dataclass(frozen=True, slots=True)
class Receipt:
    holder_id: str
    owner_id: str
    epoch: int
    height: int
    block_hash: bytes
    size: int
    time_ms: int

    def __post_init__(self) -> None:
        signed.check_local(_check, self)

    def encode_body(self) -> bytes:
        return codec.encode_trusted(
            [
                FORMAT,
                self.holder_id,
                self.owner_id,
                self.epoch,
                self.height,
                self.block_hash,
                self.size,
                self.time_ms,
            ]
        )


def _check(r: Receipt) -> None:
    codec.text(r.holder_id, _WHAT, "holder_id", 26, is_device_id)
    codec.text(r.owner_id, _WHAT, "owner_id", 26, is_device_id)
    codec.uint(r.epoch, _WHAT, "epoch", MAX_EPOCH)
    codec.uint(r.height, _WHAT, "height", MAX_HEIGHT)
    codec.bin_(r.block_hash, _WHAT, "block_hash", size=HASH_SIZE)
    codec.uint(r.size, _WHAT, "size", MAX_BLOCK_BYTES)
    if r.size == 0:
        raise DecodeError(_WHAT, "field size: a block wire has at least one byte, found 0")
    codec.uint(r.time_ms, _WHAT, "time_ms", MAX_TIME_MS)
    if r.holder_id == r.owner_id:
        raise DecodeError(_WHAT, f"holder and owner are the same device ({r.owner_id})")


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    receipt: Receipt
    wire: bytes
    body: bytes
    signature: bytes

    def verify(self, key: PublicKey) -> None:
        """Raise SignatureError unless the holder's ``key`` signed this receipt."""
        r = self.receipt
        key.verify(RECEIPT, self.body, self.signature, f"receipt of {r.owner_id}@{r.height}")


def sign_receipt(receipt: Receipt, key: SigningKey) -> SignedReceipt:
    return SignedReceipt(receipt, *signed.sign(RECEIPT, receipt, key))


def decode_receipt(wire: bytes) -> SignedReceipt:
    """Decode a receipt from untrusted bytes (no signature check). Raises DecodeError only."""
    decoded, body, signature = signed.open_wire(wire, _WHAT, MAX_RECEIPT_BODY, _LIMITS)
    f = signed.fields(decoded, 8, FORMAT, _WHAT)
    return SignedReceipt(signed.build(_WHAT, Receipt, *f[1:]), wire, body, signature)


def verify_receipt(wire: bytes, key: PublicKey) -> SignedReceipt:
    """Decode ``wire`` and check the holder's signature. Raises DecodeError or SignatureError."""
    sr = decode_receipt(wire)
    sr.verify(key)
    return sr
