"""What the device learned about other devices' keys: certificates, rotations, revocations, and
the fork evidence it holds against them.

Certificates have a table of their own (one per device); rotations and revocations share
``credentials`` under their kind. The store trusts its caller to have verified every wire.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.store.connection import StoreBase
from ledger.store.rows import CredentialRow


class Credentials(StoreBase):
    def put_certificate(self, device_id: str, wire: bytes) -> None:
        self.put_certificates([(device_id, wire)])

    def put_certificates(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Keep peers' certificates (device_id, wire), in one transaction."""
        with self._tx():
            self._db.executemany("INSERT OR REPLACE INTO certificates VALUES (?, ?)", items)

    def certificate(self, device_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT wire FROM certificates WHERE device_id=?", (device_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put_credential(self, device_id: str, kind: str, wire: bytes) -> None:
        """A verified certificate, rotation or revocation learned from the fleet."""
        if kind == "certificate":
            self.put_certificate(device_id, wire)
        else:
            self._db.execute(
                "INSERT OR IGNORE INTO credentials VALUES (?, ?, ?)", (device_id, kind, wire)
            )

    def credentials(self, kind: str) -> list[CredentialRow]:
        """Every stored credential of ``kind``, by device."""
        if kind == "certificate":
            rows = self._db.execute("SELECT device_id, wire FROM certificates ORDER BY device_id")
        else:
            rows = self._db.execute(
                "SELECT device_id, wire FROM credentials WHERE kind=? ORDER BY device_id", (kind,)
            )
        return [CredentialRow(str(d), bytes(w)) for d, w in rows]

    # --- fork evidence -------------------------------------------------------------------------
    def put_evidence(self, device_id: str, wire: bytes) -> bool:
        cur = self._db.execute("INSERT OR IGNORE INTO evidence VALUES (?, ?)", (device_id, wire))
        return cur.rowcount > 0

    def evidence(self, device_id: str | None = None) -> list[bytes]:
        if device_id is None:
            rows = self._db.execute("SELECT wire FROM evidence")
        else:
            rows = self._db.execute("SELECT wire FROM evidence WHERE device_id=?", (device_id,))
        return [bytes(w) for (w,) in rows]
