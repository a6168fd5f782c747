"""The ledger's errors: one base, stable codes, and a split between who got it wrong.

- ``DecodeError``: the bytes are not a valid canonical encoding of the expected structure
  (a remote peer sent garbage). The only exception a decoder lets escape.
- ``VerificationError`` and subclasses: well-formed input that does not verify (bad signature,
  broken chain link, failing proof, expired certificate...). Each names what was expected and
  what was found.
- ``UsageError``: we called the ledger wrongly (a local bug), e.g. sealing an empty block.
- ``StoreError`` / ``IntegrityError``: the durable store failed or holds bytes that no longer
  match what was signed.

Codes are stable strings: they appear in logs, counters and the CLI's JSON output.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""

    code = "ledger"


class DecodeError(LedgerError):
    """Bytes from outside are not a canonical encoding of the expected structure."""

    code = "decode"

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class VerificationError(LedgerError):
    """Decoded fine, but does not verify. ``expected``/``found`` are short printable strings."""

    code = "verify"

    def __init__(self, what: str, expected: object = None, found: object = None) -> None:
        msg = what
        if expected is not None or found is not None:
            msg = f"{what}: expected {_show(expected)}, found {_show(found)}"
        super().__init__(msg)
        self.what = what
        self.expected = expected
        self.found = found


class SignatureError(VerificationError):
    code = "bad-signature"


class ChainError(VerificationError):
    """A header does not link to the chain it claims to extend (height, hash, epoch, device)."""

    code = "bad-chain"


class MerkleRootError(VerificationError):
    """The readings of a block do not hash to the Merkle root its header signs."""

    code = "bad-merkle-root"


class ProofError(VerificationError):
    """An inclusion or consistency proof does not verify."""

    code = "bad-proof"


class CertificateError(VerificationError):
    """An enrollment certificate is not valid: wrong root, expired, wrong device, malformed."""

    code = "bad-certificate"


class RevokedError(CertificateError):
    code = "revoked"


class SequenceError(VerificationError):
    """Reading sequence numbers or times are not strictly increasing where they must be."""

    code = "bad-sequence"


class ForkError(VerificationError):
    """Evidence of equivocation does not hold (or, raised by a checker, a fork was detected)."""

    code = "fork"


class UsageError(LedgerError):
    """The ledger was called wrongly by our own code (not the peer's fault)."""

    code = "usage"


class TimeOrderError(UsageError):
    """A device was asked to sign a reading before its last one, or in a time slot it already
    recorded (``ledger.chain.ChainWriter.record``): nothing was signed."""

    code = "time-order"


class KeyFileError(LedgerError):
    """A key file could not be opened: wrong passphrase, corrupt file, bad permissions."""

    code = "key-file"


class StoreError(LedgerError):
    """The durable store failed (I/O, schema, constraint)."""

    code = "store"


class IntegrityError(StoreError):
    """Stored bytes no longer match what was signed (bit flip, truncation, tampering)."""

    code = "integrity"


def _show(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value)
        return b[:8].hex() + ("…" if len(b) > 8 else "") if b else "(empty)"
    return repr(value) if isinstance(value, str) else str(value)
