"""Replication bookkeeping: replicas of peers' blocks held here, and receipts for own blocks.

A replica is stored as the block wire the holder received (``[header, [reading...]]``), with its
hash and size, and its tagged readings are indexed (``ledger.store.tags``); the owner's release
marks it surplus (evicted first). Receipts are the holders' signed promises for the own blocks,
one per (height, holder). The store trusts its caller (the replication core) to have verified
both.
"""

from __future__ import annotations

from ledger import codec
from ledger.block import Block, decode_block
from ledger.errors import DecodeError, IntegrityError
from ledger.store.connection import StoreBase
from ledger.store.rows import ReceiptRow, ReplicaKey, ReplicaRow
from ledger.store.tags import forget_replica, index_block


class Replicas(StoreBase):
    def put_replica(self, block: Block) -> bool:
        """Store a verified replica of a peer's block; False if already held."""
        h = block.header.header
        wire = block.encode()
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO replicas VALUES (?, ?, ?, ?, ?)",
                (h.device_id, h.height, block.header.hash, wire, len(wire)),
            )
            if cur.rowcount == 0:
                return False
            index_block(self._db, block, own=False)
        return True

    def replica(self, device_id: str, height: int) -> Block | None:
        wire = self.replica_wire(device_id, height)
        if wire is None:
            return None
        try:
            return decode_block(wire)
        except DecodeError as exc:
            raise IntegrityError(f"{self.path}: replica {device_id}@{height}: {exc}") from None

    def replica_wire(self, device_id: str, height: int) -> bytes | None:
        row = self._db.execute(
            "SELECT block FROM replicas WHERE device_id=? AND height=?", (device_id, height)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def replica_wires(self, device_id: str, from_height: int, to_height: int) -> list[bytes]:
        return [
            bytes(w)
            for (w,) in self._db.execute(
                "SELECT block FROM replicas WHERE device_id=? AND height BETWEEN ? AND ? "
                "ORDER BY height",
                (device_id, from_height, to_height),
            )
        ]

    def replica_infos(self) -> list[ReplicaRow]:
        """Every replica held, by owner then height, without its body."""
        out = []
        for d, h, digest, wire, size, surplus in self._db.execute(
            "SELECT r.device_id, r.height, r.hash, r.block, r.size, s.height IS NOT NULL "
            "FROM replicas r LEFT JOIN replica_surplus s "
            "ON s.device_id = r.device_id AND s.height = r.height ORDER BY r.device_id, r.height"
        ):
            # The epoch from the header alone: the readings are not decoded at start-up.
            try:
                header_wire = codec.first_bin(bytes(wire), "stored block")
            except DecodeError as exc:
                raise IntegrityError(f"{self.path}: replica {d}@{h}: {exc}") from None
            epoch = self._decode_header(header_wire).header.epoch
            out.append(ReplicaRow(str(d), int(h), epoch, bytes(digest), int(size), bool(surplus)))
        return out

    def replica_index(self) -> list[ReplicaKey]:
        """Every replica held, by owner then height."""
        return [
            ReplicaKey(str(d), int(h))
            for d, h in self._db.execute(
                "SELECT device_id, height FROM replicas ORDER BY device_id, height"
            )
        ]

    def replica_bytes(self) -> int:
        return int(self._db.execute("SELECT coalesce(sum(size), 0) FROM replicas").fetchone()[0])

    def delete_replica(self, device_id: str, height: int) -> bool:
        """Drop a replica (eviction) and its tag index entries; False if it was not held."""
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM replicas WHERE device_id=? AND height=?", (device_id, height)
            )
            self._db.execute(
                "DELETE FROM replica_surplus WHERE device_id=? AND height=?", (device_id, height)
            )
            forget_replica(self._db, device_id, height)
        return cur.rowcount > 0

    def mark_surplus(self, device_id: str, height: int) -> None:
        """Remember that the owner released this replica (it is evicted first)."""
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO replica_surplus VALUES (?, ?)", (device_id, height)
            )

    # --- receipts for own blocks -----------------------------------------------------------------
    def put_receipt(self, height: int, holder_id: str, wire: bytes) -> None:
        """A verified storage receipt for the own block at ``height`` (one per holder)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO receipts VALUES (?, ?, ?)", (height, holder_id, wire)
            )

    def forget_receipt(self, height: int, holder_id: str) -> None:
        with self._tx():
            self._db.execute(
                "DELETE FROM receipts WHERE height=? AND holder_id=?", (height, holder_id)
            )

    def receipts(self, height: int | None = None) -> list[ReceiptRow]:
        """Receipts for the own blocks (one height, or all), by height then holder."""
        sql = "SELECT height, holder_id, wire FROM receipts"
        rows = (
            self._db.execute(sql + " ORDER BY height, holder_id")
            if height is None
            else self._db.execute(sql + " WHERE height=? ORDER BY holder_id", (height,))
        )
        return [ReceiptRow(int(h), str(d), bytes(w)) for h, d, w in rows]
