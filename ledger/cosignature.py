"""C2SP checkpoint cosignatures, Ed25519 ``cosignature/v1`` (c2sp.org/tlog-cosignature).

This module owns the cosignature line and the message it signs, and the k-of-n check a trace
makes:

- A cosignature is a note signature line of type 0x04: key ID
  ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``, signature bytes
  ``timestamp (u64 big-endian) || Ed25519 signature`` (72 bytes).
- The signed message is exactly ``"cosignature/v1\\n" "time " <decimal timestamp> "\\n"`` followed
  by the whole checkpoint text (extension lines included, signature lines not). The timestamp is
  POSIX seconds, at most 2^63-1, decimal without leading zeroes.
- ``verify_cosigned`` opens a checkpoint under the log key and the configured witnesses and
  requires at least ``quorum`` distinct witnesses to have cosigned; it raises otherwise.

A cosigner states that, at its timestamp, this is the largest tree it saw for the origin that is
consistent with everything it saw before. Keeping that state and checking consistency is the
witness's job (``checkpoint.verify_checkpoint_consistency``); wiring it into gossip is not here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from ledger.errors import DecodeError, SignatureError, UsageError, VerificationError
from ledger.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PublicKey, SigningKey
from ledger.note import Note, NoteVerifier, Signature, check_key_name, parse_vkey

__all__ = [
    "COSIGNATURE_V1",
    "MAX_TIMESTAMP",
    "CosignatureVerifier",
    "CosignedCheckpoint",
    "Cosigner",
    "cosignature_timestamp",
    "cosigned_message",
    "verify_cosigned",
    "witness_name",
]

COSIGNATURE_V1 = 0x04
MAX_TIMESTAMP = (1 << 63) - 1
TIMESTAMP_SIZE = 8
COSIGNATURE_SIZE = TIMESTAMP_SIZE + SIGNATURE_SIZE


def witness_name(fleet: str, device_id: str) -> str:
    """``<fleet>/<device id>/witness``: the key name under which a device of the fleet cosigns
    its domain peers' checkpoints (agent/gossip/witness.py), with its device key in force."""
    name = f"{fleet}/{device_id}/witness"
    try:
        check_key_name(name, "witness name")
    except DecodeError as exc:
        raise UsageError(str(exc)) from None
    return name


def cosigned_message(text: str, timestamp: int) -> bytes:
    """The bytes an Ed25519 cosigner signs for checkpoint ``text`` at ``timestamp``."""
    parse_checkpoint(text)  # a cosignature is over a checkpoint, never over any other note
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise DecodeError("cosignature", f"timestamp: expected 0..2^63-1, found {timestamp!r}")
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def cosignature_timestamp(signature: Signature) -> int:
    """The timestamp of a cosignature/v1 line (not verified: check it with the verifier first)."""
    if len(signature.data) != COSIGNATURE_SIZE:
        raise DecodeError(
            "cosignature", f"expected {COSIGNATURE_SIZE} bytes, found {len(signature.data)}"
        )
    ts = int.from_bytes(signature.data[:TIMESTAMP_SIZE], "big")
    if ts > MAX_TIMESTAMP:
        raise DecodeError("cosignature", f"timestamp: expected at most 2^63-1, found {ts}")
    return ts


class CosignatureVerifier(NoteVerifier):
    """Signature type 0x04: a timestamped Ed25519 cosignature of a checkpoint."""

    def __init__(self, name: str, public: PublicKey) -> None:
        self._bind(name, public, COSIGNATURE_V1)

    @classmethod
    def from_vkey(cls, text: str) -> CosignatureVerifier:
        vk = parse_vkey(text)
        if vk.sig_type != COSIGNATURE_V1 or len(vk.key) != PUBLIC_KEY_SIZE:
            raise DecodeError(
                "vkey", f"expected a cosignature/v1 key (type 0x04), found {vk.sig_type}"
            )
        return cls(vk.name, PublicKey(vk.key))

    def verify(self, text: bytes, data: bytes) -> None:
        what = f"cosignature of {self.name}+{self.key_id:08x}"
        if len(data) != COSIGNATURE_SIZE:
            raise SignatureError(f"{what}: length", COSIGNATURE_SIZE, len(data))
        ts = int.from_bytes(data[:TIMESTAMP_SIZE], "big")
        try:
            message = cosigned_message(text.decode("utf-8"), ts)
        except DecodeError as exc:
            raise SignatureError(f"{what}: {exc}") from None
        self.public.verify(b"", message, data[TIMESTAMP_SIZE:], what)


class Cosigner:
    """A witness key: cosigns checkpoint texts at a timestamp the caller supplies (no clock)."""

    def __init__(self, name: str, key: SigningKey) -> None:
        self.verifier = CosignatureVerifier(name, key.public)
        self._key = key

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    def cosign(self, text: str, timestamp: int) -> Signature:
        try:
            message = cosigned_message(text, timestamp)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None
        sig = timestamp.to_bytes(TIMESTAMP_SIZE, "big") + self._key.sign(b"", message)
        return Signature(self.name, self.key_id, sig)

    def cosign_note(self, note: Note, timestamp: int) -> Note:
        """``note`` with this cosigner's line added (replacing an older one of the same key)."""
        return note.with_signature(self.cosign(note.text, timestamp))


@dataclass(frozen=True, slots=True)
class CosignedCheckpoint:
    """A checkpoint whose log signature verified, and the witnesses that verifiably cosigned it."""

    checkpoint: Checkpoint
    note: Note
    cosigners: tuple[tuple[str, int], ...]  # (witness name, timestamp), in line order


def verify_cosigned(
    data: bytes | Note,
    log: NoteVerifier,
    witnesses: Iterable[CosignatureVerifier],
    quorum: int,
    *,
    origin: str | None = None,
) -> CosignedCheckpoint:
    """Verify the log's signature and require ``quorum`` cosignatures of distinct witnesses.

    Signature lines of unknown keys are ignored; a known witness whose line fails to verify
    fails the whole checkpoint (SignatureError). Too few: VerificationError."""
    ws = list(witnesses)
    if not 0 <= quorum <= len(ws):
        raise UsageError(f"quorum {quorum} out of 0..{len(ws)} witnesses")
    keys = [w.public.raw for w in ws]
    if log.public.raw in keys or len(set(keys)) != len(keys):
        raise UsageError("witnesses need distinct keys, none of them the log's")
    cp, note = open_checkpoint(data, log, ws, origin=origin)
    known = {(w.name, w.key_id) for w in ws}
    cosigners = tuple(
        (s.name, cosignature_timestamp(s)) for s in note.signatures if (s.name, s.key_id) in known
    )
    if len(cosigners) < quorum:
        raise VerificationError(
            f"checkpoint of {cp.origin}: cosignatures of configured witnesses",
            quorum,
            len(cosigners),
        )
    return CosignedCheckpoint(cp, note, cosigners)
