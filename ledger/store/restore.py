"""What a device restored from its peers writes (agent/fleet/restore_device.py): its own blocks
fetched back, verified, in batches; the epoch records (ledger/epoch.py) of any device; and the
peer headers an epoch change supersedes, moved to a table of their own (still valid history of
their epoch, never a fork with the new one).
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.block import Block
from ledger.epoch import SignedEpoch
from ledger.store.own import OwnChain


class Restore(OwnChain):
    def commit_restored(self, blocks: Sequence[Block]) -> None:
        """Append verified own blocks fetched from peers, in one durable transaction. The same
        structural checks as ``commit_block`` apply to each; nothing is kept if one fails."""
        if not blocks:
            return
        saved = (self._head, self._head_last_seq, self._history.copy())
        try:
            with self._tx():
                for block in blocks:
                    self._insert_block(block, readings_stored=False)
                    self._advance(block)
        except BaseException:
            self._head, self._head_last_seq, self._history = saved
            raise

    def put_epoch(self, se: SignedEpoch) -> bool:
        """Keep a verified epoch record (own or a peer's); False if already held."""
        r = se.record
        cur = self._db.execute(
            "INSERT OR IGNORE INTO epochs VALUES (?, ?, ?, ?)",
            (r.device_id, r.new_epoch, r.last_height, se.wire),
        )
        return cur.rowcount > 0

    def epoch_wires(self, device_id: str | None = None) -> list[bytes]:
        """Epoch records held, of one device or of all, by device then epoch."""
        if device_id is None:
            rows = self._db.execute("SELECT wire FROM epochs ORDER BY device_id, new_epoch")
        else:
            rows = self._db.execute(
                "SELECT wire FROM epochs WHERE device_id=? ORDER BY new_epoch", (device_id,)
            )
        return [bytes(w) for (w,) in rows]

    def supersede_peer_headers(self, device_id: str, last_height: int, new_epoch: int) -> int:
        """Move a peer's headers above ``last_height`` of epochs before ``new_epoch`` out of the
        chain (an epoch record closed that epoch at ``last_height``); returns how many moved."""
        args = (device_id, last_height, new_epoch)
        with self._tx(durable=False):
            self._db.execute(
                "INSERT OR IGNORE INTO superseded_headers SELECT device_id, epoch, height, hash, "
                "header FROM peer_headers WHERE device_id=? AND height>? AND epoch<?",
                args,
            )
            cur = self._db.execute(
                "DELETE FROM peer_headers WHERE device_id=? AND height>? AND epoch<?", args
            )
        return int(cur.rowcount)

    def superseded_header_wires(self, device_id: str) -> list[bytes]:
        """Headers of ``device_id`` superseded by an epoch change, by epoch then height."""
        return [
            bytes(w)
            for (w,) in self._db.execute(
                "SELECT header FROM superseded_headers WHERE device_id=? ORDER BY epoch, height",
                (device_id,),
            )
        ]
