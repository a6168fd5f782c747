"""The fleet's log of device heads: one C2SP log (ledger/checkpoint.py's formats) per fleet.

A device's own log (checkpoint.py) is witnessed by its domain peers; this log lets witnesses
outside the fleet (public C2SP witnesses, which know nothing of edgefleet) watch the whole fleet
at a low rate:

- **Entries** are device heads: the exact wire of a device's signed header (section 6.1 of
  docs/PROTOCOL.md), appended when the device's head moved since its last entry. The RFC 9162
  leaf hash of an entry is ``SHA-256(0x00 || header wire)``: a plain C2SP tlog leaf, so a
  tlog-proof of an entry needs nothing of ours to check.
- **The origin** is ``<fleet>/heads`` (``fleet`` = ``checkpoint.fleet_label`` of the fleet
  root).
- **The signer** is the fleet authority, under the key name equal to the origin (an Ed25519 note
  signature, type 0x01): it already vouches for every device, and a public witness needs one
  key per log.

An add-checkpoint request for a witness is ``ledger.witness.AddCheckpoint`` with a consistency
proof from ``merkle.consistency_proof`` over the entries' leaf hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.block import decode_header
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.errors import DecodeError, VerificationError
from ledger.identity import PublicKey, SigningKey
from ledger.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from ledger.note import Ed25519Signer, Ed25519Verifier, Note, sign_note
from ledger.witness import AddCheckpoint

__all__ = [
    "add_checkpoint_request",
    "heads_checkpoint",
    "heads_origin",
    "heads_verifier",
    "open_heads_checkpoint",
]


def heads_origin(fleet: str) -> str:
    return f"{fleet}/heads"


def heads_verifier(fleet: str, root: PublicKey) -> Ed25519Verifier:
    """The C2SP verifier of the fleet's heads log: the fleet root under the log's origin."""
    return Ed25519Verifier(heads_origin(fleet), root)


def _leaves(entries: Sequence[bytes]) -> list[bytes]:
    return [leaf_hash(e) for e in entries]


def heads_checkpoint(fleet: str, entries: Sequence[bytes], authority: SigningKey) -> Note:
    """The authority's signed checkpoint of the log holding ``entries`` (header wires)."""
    for i, e in enumerate(entries):
        try:
            decode_header(e)
        except DecodeError as exc:
            raise VerificationError(f"heads log entry {i}: {exc}") from None
    origin = heads_origin(fleet)
    cp = Checkpoint(origin, len(entries), root_from_leaf_hashes(_leaves(entries)))
    return sign_note(cp.text(), Ed25519Signer(origin, authority))


def add_checkpoint_request(note: Note, entries: Sequence[bytes], old_size: int) -> bytes:
    """The tlog-witness add-checkpoint body offering ``note`` (a checkpoint of ``entries``) to a
    witness that last cosigned ``old_size``."""
    size = len(entries)
    proof = consistency_proof(_leaves(entries), old_size, size) if 0 < old_size < size else []
    return AddCheckpoint(old_size, tuple(proof), note).encode()


def open_heads_checkpoint(data: bytes | Note, fleet: str, root: PublicKey) -> Checkpoint:
    """Verify a heads checkpoint under the fleet root. Raises."""
    cp, _ = open_checkpoint(data, heads_verifier(fleet, root))
    return cp
