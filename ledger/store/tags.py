"""The tag index: which own readings and replicated readings mention a tag (an EPC).

Rows are written with the block they index (``index_block``, inside the own chain's or the
replica's transaction) and dropped with an evicted replica; private readings have no clear tag
and are never indexed. ``TagIndex`` answers the lookups of agent/provenance and the CLI.
"""

from __future__ import annotations

import sqlite3

from ledger.block import Block
from ledger.store.connection import StoreBase
from ledger.store.rows import TagCount, TagHit


def index_block(db: sqlite3.Connection, block: Block, *, own: bool) -> None:
    """Index the tagged readings of ``block`` (call inside the transaction that stores it)."""
    h = block.header.header
    rows = [
        (r.reading.tag, h.device_id, h.height, i, r.reading.seq, r.reading.time_ms, int(own))
        for i, r in enumerate(block.readings)
        if r.reading.tag is not None
    ]
    if rows:
        db.executemany("INSERT OR IGNORE INTO tags VALUES (?,?,?,?,?,?,?)", rows)


def forget_replica(db: sqlite3.Connection, device_id: str, height: int) -> None:
    """Drop the index rows of an evicted replica (inside the eviction's transaction)."""
    db.execute("DELETE FROM tags WHERE device_id=? AND height=? AND own=0", (device_id, height))


class TagIndex(StoreBase):
    def tag_hits(self, tag: str) -> list[TagHit]:
        return [
            TagHit(tag, d, h, i, s, t, bool(o))
            for d, h, i, s, t, o in self._db.execute(
                "SELECT device_id, height, idx, seq, time_ms, own FROM tags WHERE tag=? "
                "ORDER BY time_ms, device_id, height, idx",
                (tag,),
            )
        ]

    def tags(self) -> list[TagCount]:
        """Every tag indexed, with how many readings mention it."""
        return [
            TagCount(str(t), int(n))
            for t, n in self._db.execute("SELECT tag, count(*) FROM tags GROUP BY tag ORDER BY tag")
        ]

    def all_tag_hits(self) -> list[TagHit]:
        """Every row of the tag index, by tag then time (for listings)."""
        return [
            TagHit(str(tag), d, h, i, s, t, bool(o))
            for tag, d, h, i, s, t, o in self._db.execute(
                "SELECT tag, device_id, height, idx, seq, time_ms, own FROM tags "
                "ORDER BY tag, time_ms, device_id, height, idx"
            )
        ]
