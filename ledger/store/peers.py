"""Peers' headers: the verified headers of other devices' chains, and the queue that carries
them into the next write transaction (or, before a transaction of one statement in a store
under a group sync, into commits of their own just before it: ``StoreBase._tx``).

The store trusts its caller (the gossip core) to have verified each header; it keeps one header
per (device, height) and reports a different one already held as a fork. Peer headers commit
without waiting for the disk (``durable=False``): a power cut may cost some, never corrupt them,
and anti-entropy fetches them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ledger.block import SignedHeader
from ledger.groupsync import GroupSync
from ledger.store.connection import StoreBase
from ledger.store.rows import HeaderHashRow

_ROWS_PER_INSERT = 100  # peer headers per INSERT statement (500 bound values)


def _insert_peer_headers_sql(rows: int) -> str:
    """An INSERT of ``rows`` peer headers: placeholders only, never data."""
    return "INSERT OR IGNORE INTO peer_headers VALUES " + ",".join(  # noqa: S608
        ("(?, ?, ?, ?, ?)",) * rows
    )


class PeerHeaders(StoreBase):
    def __init__(self, path: str | Path, *, group: GroupSync | None = None) -> None:
        super().__init__(path, group=group)
        self._carried: list[SignedHeader] = []  # peer headers for the next write transaction
        self._tx_carried: list[SignedHeader] = []  # those the open transaction writes

    def _tx_begun(self) -> None:
        # Write the carried headers first; a rollback queues them again (``_tx_rolled_back``).
        self._tx_carried, self._carried = self._carried, []
        if self._tx_carried:
            self._insert_peer_headers(self._tx_carried)
        super()._tx_begun()

    def _tx_writes_first(self) -> bool:
        return bool(self._carried) or super()._tx_writes_first()

    def _tx_write_first_alone(self) -> None:
        carried, self._carried = self._carried, []
        try:
            self._insert_peer_headers(carried)  # each statement its own commit
        except BaseException:
            self._carried[:0] = carried  # queued again, as after a rollback (a rewrite
            raise  # of those that did commit is ignored: same rows)
        super()._tx_write_first_alone()

    def _tx_rolled_back(self) -> None:
        self._carried[:0] = self._tx_carried
        self._tx_carried = []
        super()._tx_rolled_back()

    def _tx_committed(self, durable: bool) -> None:
        self._tx_carried = []
        super()._tx_committed(durable)

    def put_peer_header(self, sh: SignedHeader) -> SignedHeader | None:
        """Store a verified peer header. Returns the conflicting header already held at that
        height (a fork), or None when stored or already present."""
        h = sh.header
        row = self._db.execute(
            "SELECT header FROM peer_headers WHERE device_id=? AND height=?",
            (h.device_id, h.height),
        ).fetchone()
        if row is not None:
            held = self._decode_header(bytes(row[0]))
            return None if held.hash == sh.hash else held
        with self._tx(durable=False):
            self._db.execute(
                "INSERT INTO peer_headers VALUES (?, ?, ?, ?, ?)",
                (h.device_id, h.height, h.epoch, sh.hash, sh.wire),
            )
        return None

    def put_peer_headers(self, headers: Sequence[SignedHeader]) -> list[SignedHeader]:
        """Store verified peer headers in one transaction; returns the conflicting headers held
        (forks) for those not stored."""
        with self._tx(durable=False):
            return self._insert_peer_headers(headers)

    def carry_peer_headers(self, headers: Sequence[SignedHeader]) -> None:
        """Queue verified peer headers for the next write transaction, whatever it is: it
        writes them first, in its own commit (a device's readings and the headers it accepted
        since then cost one commit, not several; before a transaction of one statement in a
        store under a group sync, in commits of their own: ``StoreBase._tx``).
        ``write_carried`` writes what is still queued; a transaction that rolls back keeps
        them queued."""
        self._carried.extend(headers)

    def write_carried(self) -> None:
        """Write the queued peer headers now, in a transaction of their own (not durable)."""
        if self._carried:
            with self._tx(durable=False):
                pass  # the transaction writes them when it begins

    def _insert_peer_headers(self, headers: Sequence[SignedHeader]) -> list[SignedHeader]:
        inserted = 0
        for i in range(0, len(headers), _ROWS_PER_INSERT):  # one statement per chunk
            chunk = headers[i : i + _ROWS_PER_INSERT]
            values: list[object] = []
            for sh in chunk:
                h = sh.header
                values += (h.device_id, h.height, h.epoch, sh.hash, sh.wire)
            inserted += self._db.execute(_insert_peer_headers_sql(len(chunk)), values).rowcount
        if inserted == len(headers):
            return []
        conflicts = []  # some were held already: which, and do they differ?
        for sh in headers:
            h = sh.header
            row = self._db.execute(
                "SELECT header FROM peer_headers WHERE device_id=? AND height=?",
                (h.device_id, h.height),
            ).fetchone()
            if row is not None and bytes(row[0]) != sh.wire:
                held = self._decode_header(bytes(row[0]))
                if held.hash != sh.hash:
                    conflicts.append(held)
        return conflicts

    def peer_head(self, device_id: str) -> SignedHeader | None:
        row = self._db.execute(
            "SELECT header FROM peer_headers WHERE device_id=? ORDER BY height DESC LIMIT 1",
            (device_id,),
        ).fetchone()
        return None if row is None else self._decode_header(bytes(row[0]))

    def peer_headers(
        self, device_id: str, from_height: int = 0, to_height: int | None = None
    ) -> list[SignedHeader]:
        return [
            self._decode_header(w)
            for w in self.peer_header_wires(device_id, from_height, to_height)
        ]

    def peer_header_wires(
        self, device_id: str, from_height: int = 0, to_height: int | None = None
    ) -> list[bytes]:
        top = (1 << 63) - 1 if to_height is None else to_height
        return [
            bytes(w)
            for (w,) in self._db.execute(
                "SELECT header FROM peer_headers WHERE device_id=? AND height BETWEEN ? AND ? "
                "ORDER BY height",
                (device_id, from_height, top),
            )
        ]

    def peer_devices(self) -> list[str]:
        return [
            str(d)
            for (d,) in self._db.execute(
                "SELECT DISTINCT device_id FROM peer_headers ORDER BY device_id"
            )
        ]

    def peer_header_hashes(self, device_id: str) -> list[HeaderHashRow]:
        """Every header held of a peer, by height, with its recorded hash (for
        agent/provenance, which checks each against a signed head)."""
        return [
            HeaderHashRow(int(n), bytes(h))
            for n, h in self._db.execute(
                "SELECT height, hash FROM peer_headers WHERE device_id=? ORDER BY height",
                (device_id,),
            )
        ]
