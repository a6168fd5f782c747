"""Checkpoints (ledger/checkpoint.py) a device keeps: the witness state it must never go back on,
and its own checkpoints with the cosignatures its domain peers returned.

- **Witness state**: per log origin, the size and root hash of the last checkpoint this device
  cosigned as a witness (C2SP tlog-witness). It is written durably *before* the cosignature
  leaves the device, and it only moves forward: a restart can never make the device cosign a
  checkpoint inconsistent with one it cosigned before.
- **Own checkpoints**: the device's own signed checkpoint notes, one per (origin, size), each
  replaced by the same text with more cosignature lines as they arrive. A trace reads them.
"""

from __future__ import annotations

from ledger.errors import IntegrityError
from ledger.store.connection import StoreBase


class Checkpoints(StoreBase):
    def put_witness_state(self, origin: str, size: int, root_hash: bytes) -> None:
        """Record that this witness cosigned ``origin`` at ``size``/``root_hash`` (durably).
        Raises IntegrityError if it would move back or change the root at a held size."""
        with self._tx():
            row = self._db.execute(
                "SELECT size, root FROM witness_state WHERE origin=?", (origin,)
            ).fetchone()
            if row is not None:
                held, root = int(row[0]), bytes(row[1])
                if size < held or (size == held and root != root_hash):
                    raise IntegrityError(
                        f"witness state of {origin}: held size {held}, refusing size {size}"
                        + (" with another root" if size == held else "")
                    )
            self._db.execute(
                "INSERT OR REPLACE INTO witness_state VALUES (?, ?, ?)", (origin, size, root_hash)
            )

    def witness_states(self) -> list[tuple[str, int, bytes]]:
        """Every (origin, size, root hash) this device cosigned last, by origin."""
        rows = self._db.execute("SELECT origin, size, root FROM witness_state ORDER BY origin")
        return [(str(o), int(s), bytes(r)) for o, s, r in rows]

    def put_checkpoint(self, origin: str, size: int, note: bytes) -> None:
        """Keep an own checkpoint note (replacing the one of the same origin and size: the same
        text with more cosignatures). Durable."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (origin, size, note)
            )

    def checkpoint_notes(self, origin: str | None = None) -> list[tuple[str, int, bytes]]:
        """Own checkpoint notes (origin, size, note bytes), by origin then size."""
        if origin is None:
            rows = self._db.execute(
                "SELECT origin, size, note FROM checkpoints ORDER BY origin, size"
            )
        else:
            rows = self._db.execute(
                "SELECT origin, size, note FROM checkpoints WHERE origin=? ORDER BY size", (origin,)
            )
        return [(str(o), int(s), bytes(n)) for o, s, n in rows]
