"""A C2SP witness (c2sp.org/tlog-witness) as a sans-I/O core: the add-checkpoint request and the
decision to cosign.

This module owns the request's bytes and the witness's rule; it sends nothing and reads no clock
(the caller passes ``now``) and keeps its state in memory (the caller persists ``state()`` before
it hands out the cosignature, so a restart never cosigns a fork of what it cosigned before).

Request body (``add-checkpoint``): ``"old " <size> 0A``, then at most 63 consistency-proof lines
(one base64 hash each), then an empty line, then the checkpoint note. The witness:

1. knows the origin, or refuses (``UnknownLogError``, HTTP 404);
2. verifies the log's signature under the key it trusts for the origin (``SignatureError`` /
   ``VerificationError``, 403);
3. requires ``old <= size`` (``DecodeError``, 400);
4. requires ``old`` to be the size it last cosigned for the origin, 0 if none
   (``WitnessConflictError`` carrying that size, 409);
5. checks the consistency proof from what it last cosigned (empty from 0; a size-0 checkpoint
   carries the empty tree's root) (``ProofError``, 422);
6. records the new checkpoint and returns its timestamped cosignature/v1 line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ledger.checkpoint import Checkpoint, open_checkpoint, verify_checkpoint_consistency
from ledger.cosignature import Cosigner
from ledger.errors import DecodeError, LedgerError, ProofError, UsageError, VerificationError
from ledger.merkle import EMPTY_ROOT, HASH_SIZE
from ledger.note import (
    MAX_NOTE_BYTES,
    Note,
    NoteVerifier,
    Signature,
    b64decode,
    b64encode,
    parse_note,
)

__all__ = [
    "MAX_PROOF_LINES",
    "AddCheckpoint",
    "UnknownLogError",
    "Witness",
    "WitnessConflictError",
    "http_status",
    "parse_add_checkpoint",
]

MAX_PROOF_LINES = 63
MAX_REQUEST_BYTES = 32 + MAX_PROOF_LINES * 45 + MAX_NOTE_BYTES


class UnknownLogError(VerificationError):
    """The checkpoint's origin is not a log this witness is configured for."""

    code = "unknown-log"


class WitnessConflictError(VerificationError):
    """The request's old size is not the size this witness last cosigned for the origin."""

    code = "witness-conflict"

    def __init__(self, origin: str, latest_size: int, old_size: int) -> None:
        super().__init__(f"witness: old size for {origin}", latest_size, old_size)
        self.latest_size = latest_size


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    note: Note

    def encode(self) -> bytes:
        lines = [f"old {self.old_size}", *(b64encode(h) for h in self.proof)]
        return ("".join(line + "\n" for line in lines) + "\n").encode("ascii") + self.note.encode()


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an add-checkpoint request body from untrusted bytes. Raises DecodeError."""
    w = "add-checkpoint"
    if type(body) is not bytes or len(body) > MAX_REQUEST_BYTES:
        raise DecodeError(w, f"expected at most {MAX_REQUEST_BYTES} bytes")
    blank = body.find(b"\n\n")
    if blank < 0:
        raise DecodeError(w, "no empty line before the checkpoint")
    try:
        lines = body[:blank].decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise DecodeError(w, "the lines before the checkpoint are ASCII") from None
    old = lines[0].removeprefix("old ")
    if old == lines[0] or not old.isdigit() or (len(old) > 1 and old[0] == "0") or len(old) > 19:
        raise DecodeError(w, f"expected 'old N' without leading zeroes, found {lines[0][:30]!r}")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise DecodeError(w, f"expected at most {MAX_PROOF_LINES} proof lines")
    proof = []
    for i, line in enumerate(lines[1:]):
        h = b64decode(line, w, f"proof line {i}")
        if len(h) != HASH_SIZE:
            raise DecodeError(w, f"proof line {i}: expected {HASH_SIZE} bytes, found {len(h)}")
        proof.append(h)
    return AddCheckpoint(int(old), tuple(proof), parse_note(body[blank + 2 :]))


class Witness:
    """Cosigns checkpoints of the logs it is configured for, never two inconsistent ones."""

    def __init__(
        self,
        cosigner: Cosigner,
        logs: Mapping[str, NoteVerifier],
        state: Mapping[str, Checkpoint] | None = None,
    ) -> None:
        for origin, key in logs.items():
            if key.public == cosigner.verifier.public:
                raise UsageError(f"the witness key is not the key of log {origin}")
        self._cosigner = cosigner
        self._logs = dict(logs)
        self._latest: dict[str, Checkpoint] = dict(state or {})

    def state(self) -> dict[str, Checkpoint]:
        """The latest cosigned checkpoint per origin: persist it before answering."""
        return dict(self._latest)

    def add_checkpoint(self, request: AddCheckpoint, now: int) -> Signature:
        """Apply the rules of the module docstring; return the cosignature line or raise."""
        origin = request.note.text.split("\n", 1)[0]
        log = self._logs.get(origin)
        if log is None:
            raise UnknownLogError("witness: unknown origin", "a configured log", origin)
        new, _ = open_checkpoint(request.note, log, origin=origin)
        if request.old_size > new.size:
            raise DecodeError("add-checkpoint", f"old size {request.old_size} above {new.size}")
        latest = self._latest.get(origin)
        latest_size = 0 if latest is None else latest.size
        if request.old_size != latest_size:
            raise WitnessConflictError(origin, latest_size, request.old_size)
        base = latest if latest is not None else Checkpoint(origin, 0, EMPTY_ROOT)
        verify_checkpoint_consistency(base, new, request.proof)
        self._latest[origin] = new
        return self._cosigner.cosign(request.note.text, now)


def http_status(error: LedgerError) -> int:
    """The tlog-witness HTTP status for an error ``Witness.add_checkpoint`` raised."""
    if isinstance(error, UnknownLogError):
        return 404
    if isinstance(error, WitnessConflictError):
        return 409
    if isinstance(error, DecodeError):
        return 400
    if isinstance(error, ProofError):
        return 422
    return 403
