"""The signed envelope shared by every signed structure: ``[body: bin, signature: bin(64)]``.

The body is the canonical encoding of the structure's fields, carried as an opaque byte string, so
the bytes a verifier checks are exactly the bytes received and stored; nothing is ever re-encoded
to be verified. The signature covers ``DOMAIN || body`` with the structure's own domain tag.
"""

from __future__ import annotations

from ledger import codec
from ledger.identity import SIGNATURE_SIZE

_OVERHEAD = 1 + 5 + 2 + SIGNATURE_SIZE  # fixarray + bin32 header + bin8 header + signature


def wrap(body: bytes, signature: bytes) -> bytes:
    return codec.encode_trusted([body, signature])


def unwrap(data: bytes, what: str, max_body: int) -> tuple[bytes, bytes]:
    """Split envelope bytes into (body, signature) without verifying anything."""
    limits = codec.Limits(
        max_bytes=max_body + _OVERHEAD,
        max_array=2,
        max_str=0,
        max_bin=max(max_body, SIGNATURE_SIZE),
    )
    fields = codec.array(codec.decode(data, limits, what), 2, what)
    body = codec.bin_(fields[0], what, "body", maximum=max_body)
    signature = codec.bin_(fields[1], what, "signature", size=SIGNATURE_SIZE)
    return body, signature
