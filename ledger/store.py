"""The durable store: one SQLite file (WAL, synchronous=FULL) per device data dir.

Holds the device's own chain (pending signed readings, sealed blocks and their readings), verified
peer headers, replicas of peers' blocks, peer certificates, fork evidence, and an index by tag
(EPC) over own readings and replicas. This is the only module that imports sqlite3.

Durability contract: ``append_pending``, ``seal`` and ``commit_block`` return only after their
transaction is committed with ``synchronous=FULL`` (fsync of the WAL), so a reading or block
reported durable survives a kill or a power loss. One transaction per call, never per reading.
A store opened with a ``GroupSync`` (``Store(path, group=g)``, a fleet runner's thousands of
stores) commits with ``synchronous=NORMAL`` and notes each such commit to the group instead:
it survives a kill at once and a power loss once ``g.sync()`` has returned (one sync for every
store; ``ledger.groupsync``), and the caller must not report it durable before then.

The store trusts its caller to have verified what it is given (peer headers, replicas), but it
checks the own chain's structure (heights, links, sequence) again on every commit: a bug above
cannot make it hold a gap, a duplicate or two blocks at one height.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from ledger.block import (
    Block,
    SignedHeader,
    block_wire_size,
    decode_block,
    decode_header,
    encode_block,
)
from ledger.epoch import SignedEpoch
from ledger.errors import ChainError, DecodeError, IntegrityError, SequenceError, StoreError
from ledger.groupsync import GroupSync, fsync_path
from ledger.history import CompactRange
from ledger.reading import SignedReading, decode_reading

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, hash BLOB NOT NULL UNIQUE,
    header BLOB NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY, wire BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS peer_headers (
    device_id TEXT NOT NULL, height INTEGER NOT NULL, epoch INTEGER NOT NULL,
    hash BLOB NOT NULL, header BLOB NOT NULL, PRIMARY KEY (device_id, height)) STRICT;
CREATE TABLE IF NOT EXISTS replicas (
    device_id TEXT NOT NULL, height INTEGER NOT NULL, hash BLOB NOT NULL,
    block BLOB NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (device_id, height)) STRICT;
CREATE TABLE IF NOT EXISTS replica_surplus (
    device_id TEXT NOT NULL, height INTEGER NOT NULL, PRIMARY KEY (device_id, height)) STRICT;
CREATE TABLE IF NOT EXISTS receipts (
    height INTEGER NOT NULL, holder_id TEXT NOT NULL, wire BLOB NOT NULL,
    PRIMARY KEY (height, holder_id)) STRICT;
CREATE TABLE IF NOT EXISTS certificates (
    device_id TEXT PRIMARY KEY, wire BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS credentials (
    device_id TEXT NOT NULL, kind TEXT NOT NULL, wire BLOB NOT NULL,
    PRIMARY KEY (device_id, kind, wire)) STRICT;
CREATE TABLE IF NOT EXISTS evidence (
    device_id TEXT NOT NULL, wire BLOB NOT NULL, PRIMARY KEY (device_id, wire)) STRICT;
CREATE TABLE IF NOT EXISTS tags (
    tag TEXT NOT NULL, device_id TEXT NOT NULL, height INTEGER NOT NULL, idx INTEGER NOT NULL,
    seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, own INTEGER NOT NULL,
    PRIMARY KEY (tag, device_id, height, idx)) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    device_id TEXT NOT NULL, new_epoch INTEGER NOT NULL, last_height INTEGER NOT NULL,
    wire BLOB NOT NULL, PRIMARY KEY (device_id, new_epoch)) STRICT;
CREATE TABLE IF NOT EXISTS superseded_headers (
    device_id TEXT NOT NULL, epoch INTEGER NOT NULL, height INTEGER NOT NULL,
    hash BLOB NOT NULL, header BLOB NOT NULL, PRIMARY KEY (device_id, epoch, height)) STRICT;
"""


@dataclass(frozen=True, slots=True)
class TagHit:
    """Where a reading about a tag lives: a device's block and leaf index."""

    tag: str
    device_id: str
    height: int
    idx: int
    seq: int
    time_ms: int
    own: bool


class Store:
    """One device's durable state. Not thread-safe: use it from one thread at a time."""

    def __init__(self, path: str | Path, *, group: GroupSync | None = None) -> None:
        self.path = Path(path)
        self._group = group
        self._wal = self.path.with_name(self.path.name + "-wal")
        try:
            self._dev = os.stat(self.path.parent).st_dev
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if group is None else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            version = self.meta_get("schema_version")
            if version is None:
                self.meta_set("schema_version", str(SCHEMA_VERSION).encode())
            elif int(version) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {int(version)}, this build reads {SCHEMA_VERSION}"
                )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open store ({exc})") from None
        self._history = CompactRange()
        self._carried: list[SignedHeader] = []  # peer headers for the next write transaction
        # The sequence high-water mark as last committed (known once read or written here) and
        # within the open transaction: an append need not ask SQLite for max(seq) each time.
        self._seq_mark: int | None = None
        self._seq_known = False
        self._tx_mark: int | None = None
        self._tx_known = False
        self._head: SignedHeader | None = None
        self._head_last_seq: int | None = None
        self._load_head()

    def close(self) -> None:
        """Close; a durable commit the group has not synced yet is synced here first."""
        if self._group is not None and self._group.forget(self._wal):
            try:
                fsync_path(self._wal)
            except OSError as exc:
                self._db.close()
                raise StoreError(f"{self.path}: cannot sync at close ({exc})") from None
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- meta -------------------------------------------------------------------------------
    def meta_get(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def meta_set(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        if self._group is not None:  # committed on its own (autocommit): durable like a tx
            self._group.noted(self._wal, self._dev)

    # --- own chain ----------------------------------------------------------------------------
    # Own readings live in one table keyed by seq. A reading is pending while its seq is above
    # the last sealed seq; sealing a block records its seq range in ``blocks``, so the readings
    # of block h are ``seq BETWEEN first_seq AND last_seq`` (seqs within a block are contiguous).

    def _last_sealed_seq(self) -> int:
        return -1 if self._head_last_seq is None else self._head_last_seq

    def last_seq(self) -> int | None:
        """The sequence high-water mark: the highest seq pending or sealed."""
        row = self._db.execute("SELECT max(seq) FROM readings").fetchone()
        return None if row[0] is None else int(row[0])

    def append_pending(self, readings: Sequence[SignedReading]) -> None:
        """Durably store signed readings not yet sealed (one transaction)."""
        if not readings:
            return
        with self._tx():
            self._insert_pending(readings)

    def _insert_pending(self, readings: Sequence[SignedReading]) -> None:
        last = self._tx_mark if self._tx_known else self.last_seq()
        for r in readings:
            seq = r.reading.seq
            if last is not None and seq != last + 1:
                raise SequenceError("own reading seq (contiguous)", last + 1, seq)
            last = seq
        self._db.executemany(
            "INSERT INTO readings(seq, wire) VALUES (?, ?)",
            [(r.reading.seq, r.wire) for r in readings],
        )
        self._tx_mark, self._tx_known = last, True

    def last_reading_time(self) -> int | None:
        """time_ms of the own reading with the highest seq (None: no readings)."""
        row = self._db.execute(
            "SELECT seq, wire FROM readings ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return self._decode_stored(bytes(row[1]), f"reading seq {row[0]}").reading.time_ms

    def pending_wires(self, limit: int | None = None) -> list[tuple[int, bytes]]:
        """(seq, stored bytes) of pending readings, in sequence order."""
        rows = self._db.execute(
            "SELECT seq, wire FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._last_sealed_seq(), -1 if limit is None else limit),
        )
        return [(int(q), bytes(w)) for q, w in rows]

    def pending(self, limit: int | None = None) -> list[SignedReading]:
        """Pending readings decoded from the stored bytes, in sequence order."""
        return [
            self._decode_stored(w, f"pending reading seq {q}") for q, w in self.pending_wires(limit)
        ]

    def pending_count(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM readings WHERE seq > ?", (self._last_sealed_seq(),)
        ).fetchone()
        return int(row[0])

    def head(self) -> SignedHeader | None:
        return self._head

    def history(self) -> CompactRange:
        """History tree over the own chain's header hashes (kept current in memory)."""
        return self._history.copy()

    def seal(
        self,
        new: Sequence[SignedReading],
        limit: int,
        make_block: Callable[[SignedHeader | None, bytes, list[tuple[int, bytes]]], Block],
    ) -> Block | None:
        """Seal pending readings into the next block, in one durable transaction.

        ``new`` readings are stored first; then up to ``limit`` pending readings are read back
        as stored and handed to ``make_block(head, history_root, rows)``, which checks them
        against what was signed, and signs the header over them. The block is committed in the
        same transaction; nothing is left half-written if anything raises.
        """
        with self._tx():
            self._insert_pending(new)
            rows = self.pending_wires(limit)
            if not rows:
                return None
            block = make_block(self._head, self._history.root(), rows)
            self._insert_block(block, readings_stored=True)
        self._advance(block)
        return block

    def commit_block(self, block: Block) -> None:
        """Append a complete block whose readings are not stored yet (restore, import)."""
        with self._tx():
            self._insert_block(block, readings_stored=False)
        self._advance(block)

    def _insert_block(self, block: Block, *, readings_stored: bool) -> None:
        sh = block.header
        h = sh.header
        head = self._head
        expect_height = 0 if head is None else head.header.height + 1
        if h.height != expect_height:
            raise ChainError("commit height", expect_height, h.height)
        if head is not None and h.prev_hash != head.hash:
            raise ChainError("commit prev_hash", head.hash, h.prev_hash)
        first, last = block.readings[0].reading.seq, block.readings[-1].reading.seq
        if last - first + 1 != len(block.readings) or first <= self._last_sealed_seq():
            raise SequenceError(
                f"block {h.height} seqs (contiguous, after {self._last_sealed_seq()})",
                f"{len(block.readings)} contiguous",
                f"{first}..{last}",
            )
        if not readings_stored:
            self._insert_pending(block.readings)
        self._db.execute(
            "INSERT INTO blocks(height, epoch, hash, header, first_seq, last_seq) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (h.height, h.epoch, sh.hash, sh.wire, first, last),
        )
        tags = [
            (r.reading.tag, h.device_id, h.height, i, r.reading.seq, r.reading.time_ms, 1)
            for i, r in enumerate(block.readings)
            if r.reading.tag is not None
        ]
        if tags:
            self._db.executemany("INSERT OR IGNORE INTO tags VALUES (?,?,?,?,?,?,?)", tags)

    def _advance(self, block: Block) -> None:
        self._head = block.header
        self._head_last_seq = block.readings[-1].reading.seq
        self._history.append(block.header.hash)

    def _load_head(self) -> None:
        self._history = CompactRange()
        self._head = None
        self._head_last_seq = None
        # Every stored header is decoded and its hash recomputed: the history root and prev_hash
        # of the next header are signed over these, so a flipped bit must stop us here.
        for h, last_seq, wire in self._db.execute(
            "SELECT hash, last_seq, header FROM blocks ORDER BY height"
        ):
            sh = self._decode_header(bytes(wire))
            if sh.hash != bytes(h) or sh.header.height != self._history.size:
                raise IntegrityError(
                    f"{self.path}: stored header at height {self._history.size} does not match "
                    "its recorded hash or position"
                )
            self._history.append(sh.hash)
            self._head, self._head_last_seq = sh, int(last_seq)

    def block_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM blocks").fetchone()[0])

    def header_at(self, height: int) -> SignedHeader | None:
        row = self._db.execute("SELECT header FROM blocks WHERE height=?", (height,)).fetchone()
        return None if row is None else self._decode_header(bytes(row[0]))

    def reading_wires(self, height: int) -> list[bytes]:
        row = self._db.execute(
            "SELECT first_seq, last_seq FROM blocks WHERE height=?", (height,)
        ).fetchone()
        if row is None:
            return []
        return [
            bytes(w)
            for (w,) in self._db.execute(
                "SELECT wire FROM readings WHERE seq BETWEEN ? AND ? ORDER BY seq", row
            )
        ]

    def block(self, height: int) -> Block | None:
        header = self.header_at(height)
        if header is None:
            return None
        readings = tuple(
            self._decode_stored(w, f"reading of block {height}") for w in self.reading_wires(height)
        )
        return Block(header, readings)

    def blocks(self, from_height: int = 0) -> Iterator[Block]:
        """Own blocks in height order, decoded from the stored bytes."""
        height = from_height
        while True:
            block = self.block(height)
            if block is None:
                return
            yield block
            height += 1

    def block_wire(self, height: int) -> bytes | None:
        header = self.header_at(height)
        if header is None:
            return None
        return encode_block(header.wire, self.reading_wires(height))

    # --- peers, replicas, certificates, evidence ----------------------------------------------
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
        since then cost one commit, not several). ``write_carried`` writes what is still
        queued; a transaction that rolls back keeps them queued."""
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

    def own_header_wires(self, from_height: int = 0, to_height: int | None = None) -> list[bytes]:
        top = (1 << 63) - 1 if to_height is None else to_height
        return [
            bytes(w)
            for (w,) in self._db.execute(
                "SELECT header FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height",
                (from_height, top),
            )
        ]

    def replica_wires(self, device_id: str, from_height: int, to_height: int) -> list[bytes]:
        return [
            bytes(w)
            for (w,) in self._db.execute(
                "SELECT block FROM replicas WHERE device_id=? AND height BETWEEN ? AND ? "
                "ORDER BY height",
                (device_id, from_height, to_height),
            )
        ]

    def replica_wire(self, device_id: str, height: int) -> bytes | None:
        row = self._db.execute(
            "SELECT block FROM replicas WHERE device_id=? AND height=?", (device_id, height)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def replica_infos(self) -> list[tuple[str, int, int, bytes, int, bool]]:
        """(device_id, height, epoch, hash, size, surplus) of every replica held, in order."""
        out = []
        for d, h, digest, wire, size, surplus in self._db.execute(
            "SELECT r.device_id, r.height, r.hash, r.block, r.size, s.height IS NOT NULL "
            "FROM replicas r LEFT JOIN replica_surplus s "
            "ON s.device_id = r.device_id AND s.height = r.height ORDER BY r.device_id, r.height"
        ):
            epoch = self._decode_header(_header_wire_of(bytes(wire))).header.epoch
            out.append((str(d), int(h), epoch, bytes(digest), int(size), bool(surplus)))
        return out

    def delete_replica(self, device_id: str, height: int) -> bool:
        """Drop a replica (eviction) and its tag index entries; False if it was not held."""
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM replicas WHERE device_id=? AND height=?", (device_id, height)
            )
            self._db.execute(
                "DELETE FROM replica_surplus WHERE device_id=? AND height=?", (device_id, height)
            )
            self._db.execute(
                "DELETE FROM tags WHERE device_id=? AND height=? AND own=0", (device_id, height)
            )
        return cur.rowcount > 0

    def mark_surplus(self, device_id: str, height: int) -> None:
        """Remember that the owner released this replica (it is evicted first)."""
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO replica_surplus VALUES (?, ?)", (device_id, height)
            )

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

    def receipts(self, height: int | None = None) -> list[tuple[int, str, bytes]]:
        """(height, holder_id, receipt wire) of the own blocks (one height, or all)."""
        sql = "SELECT height, holder_id, wire FROM receipts"
        rows = (
            self._db.execute(sql + " ORDER BY height, holder_id")
            if height is None
            else self._db.execute(sql + " WHERE height=? ORDER BY holder_id", (height,))
        )
        return [(int(h), str(d), bytes(w)) for h, d, w in rows]

    def own_block_infos(self, limit: int) -> list[tuple[int, int, bytes, int]]:
        """(height, epoch, hash, block wire size) of the newest ``limit`` own blocks, ascending."""
        rows = self._db.execute(
            "SELECT height, epoch, hash, length(header), first_seq, last_seq FROM blocks "
            "ORDER BY height DESC LIMIT ?",
            (limit,),
        ).fetchall()
        if not rows:
            return []
        # Sizes from the stored lengths: no block is read back or re-encoded at start-up.
        lens = dict(
            self._db.execute(
                "SELECT seq, length(wire) FROM readings WHERE seq BETWEEN ? AND ?",
                (rows[-1][4], rows[0][5]),
            ).fetchall()
        )
        return [
            (
                int(h),
                int(e),
                bytes(digest),
                block_wire_size(int(n), [lens[q] for q in range(first, last + 1)]),
            )
            for h, e, digest, n, first, last in reversed(rows)
        ]

    def put_credential(self, device_id: str, kind: str, wire: bytes) -> None:
        """A verified certificate, rotation or revocation learned from the fleet."""
        if kind == "certificate":
            self.put_certificate(device_id, wire)
        else:
            self._db.execute(
                "INSERT OR IGNORE INTO credentials VALUES (?, ?, ?)", (device_id, kind, wire)
            )

    def credentials(self, kind: str) -> list[tuple[str, bytes]]:
        """(device_id, wire) of every stored credential of ``kind``."""
        if kind == "certificate":
            rows = self._db.execute("SELECT device_id, wire FROM certificates ORDER BY device_id")
        else:
            rows = self._db.execute(
                "SELECT device_id, wire FROM credentials WHERE kind=? ORDER BY device_id", (kind,)
            )
        return [(str(d), bytes(w)) for d, w in rows]

    def peer_devices(self) -> list[str]:
        return [
            str(d)
            for (d,) in self._db.execute(
                "SELECT DISTINCT device_id FROM peer_headers ORDER BY device_id"
            )
        ]

    def put_replica(self, block: Block) -> bool:
        """Store a verified replica of a peer's block; False if already held."""
        h = block.header.header
        wire = block.encode()
        tags = [
            (r.reading.tag, h.device_id, h.height, i, r.reading.seq, r.reading.time_ms, 0)
            for i, r in enumerate(block.readings)
            if r.reading.tag is not None
        ]
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO replicas VALUES (?, ?, ?, ?, ?)",
                (h.device_id, h.height, block.header.hash, wire, len(wire)),
            )
            if cur.rowcount == 0:
                return False
            self._db.executemany("INSERT OR IGNORE INTO tags VALUES (?,?,?,?,?,?,?)", tags)
        return True

    def replica(self, device_id: str, height: int) -> Block | None:
        row = self._db.execute(
            "SELECT block FROM replicas WHERE device_id=? AND height=?", (device_id, height)
        ).fetchone()
        if row is None:
            return None
        try:
            return decode_block(bytes(row[0]))
        except DecodeError as exc:
            raise IntegrityError(f"{self.path}: replica {device_id}@{height}: {exc}") from None

    def replica_index(self) -> list[tuple[str, int]]:
        """(device_id, height) of every replica held, in order."""
        return [
            (str(d), int(h))
            for d, h in self._db.execute(
                "SELECT device_id, height FROM replicas ORDER BY device_id, height"
            )
        ]

    def replica_bytes(self) -> int:
        return int(self._db.execute("SELECT coalesce(sum(size), 0) FROM replicas").fetchone()[0])

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

    def put_evidence(self, device_id: str, wire: bytes) -> bool:
        cur = self._db.execute("INSERT OR IGNORE INTO evidence VALUES (?, ?)", (device_id, wire))
        return cur.rowcount > 0

    def evidence(self, device_id: str | None = None) -> list[bytes]:
        if device_id is None:
            rows = self._db.execute("SELECT wire FROM evidence")
        else:
            rows = self._db.execute("SELECT wire FROM evidence WHERE device_id=?", (device_id,))
        return [bytes(w) for (w,) in rows]

    def tag_hits(self, tag: str) -> list[TagHit]:
        return [
            TagHit(tag, d, h, i, s, t, bool(o))
            for d, h, i, s, t, o in self._db.execute(
                "SELECT device_id, height, idx, seq, time_ms, own FROM tags WHERE tag=? "
                "ORDER BY time_ms, device_id, height, idx",
                (tag,),
            )
        ]

    def tags(self) -> list[tuple[str, int]]:
        """Every tag indexed, with how many readings mention it."""
        return [
            (str(t), int(n))
            for t, n in self._db.execute("SELECT tag, count(*) FROM tags GROUP BY tag ORDER BY tag")
        ]

    # --- internals -----------------------------------------------------------------------------
    def _tx(self, *, durable: bool = True) -> _Tx:
        """A write transaction. ``durable=False`` commits without waiting for the disk
        (synchronous=NORMAL for that commit): for peer headers, which a power cut may cost but
        never corrupt, and which anti-entropy fetches again. The next durable commit syncs them
        too."""
        return _Tx(self, durable=durable)

    def _begun(self) -> list[SignedHeader]:
        """A write transaction has begun: write the carried peer headers in it first; returns
        them (put back by ``_rolled_back``)."""
        self._tx_mark, self._tx_known = self._seq_mark, self._seq_known
        carried, self._carried = self._carried, []
        try:
            if carried:
                self._insert_peer_headers(carried)
        except BaseException:
            self._carried[:0] = carried
            raise
        return carried

    def _rolled_back(self, carried: list[SignedHeader]) -> None:
        self._carried[:0] = carried
        self._tx_known = False

    def _committed(self, durable: bool) -> None:
        self._seq_mark, self._seq_known = self._tx_mark, self._tx_known
        self._tx_known = False
        if durable and self._group is not None:
            self._group.noted(self._wal, self._dev)

    def _decode_stored(self, wire: bytes, what: str) -> SignedReading:
        try:
            return decode_reading(wire)
        except DecodeError as exc:
            raise IntegrityError(
                f"{self.path}: {what}: stored bytes no longer decode ({exc})"
            ) from None

    def _decode_header(self, wire: bytes) -> SignedHeader:
        try:
            return decode_header(wire)
        except DecodeError as exc:
            raise IntegrityError(f"{self.path}: stored header no longer decodes ({exc})") from None

    # --- trace queries ---------------------------------------------------------------------------
    # Read-only lookups for agent/trace. They return stored values as they are: the tracer
    # checks every hash against a signed head before it relies on it.

    def own_header_hashes(self) -> list[bytes]:
        """Recorded header hashes of the own chain, by height from 0 to the head."""
        return [bytes(h) for (h,) in self._db.execute("SELECT hash FROM blocks ORDER BY height")]

    def peer_header_hashes(self, device_id: str) -> list[tuple[int, bytes]]:
        """(height, recorded hash) of every header held of a peer, by height."""
        return [
            (int(n), bytes(h))
            for n, h in self._db.execute(
                "SELECT height, hash FROM peer_headers WHERE device_id=? ORDER BY height",
                (device_id,),
            )
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

    def sealed_reading_count(self) -> int:
        """How many own readings are sealed in blocks (pending ones not counted)."""
        row = self._db.execute(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM blocks"
        ).fetchone()
        return int(row[0])

    # --- restore ---------------------------------------------------------------------------------
    # A device restored from its peers (agent/fleet/restore_device.py): its own blocks come back
    # verified, in
    # batches; epoch records (ledger/epoch.py) of any device are kept, and peer headers that an
    # epoch change supersedes move to their own table (still valid history of their epoch).

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


def _header_wire_of(block_wire: bytes) -> bytes:
    """The header wire of a stored block wire ``[header, [reading...]]``, without decoding the
    readings (the store wrote it; ``_decode_header`` checks what comes out)."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(block_wire))
    unpacker.feed(block_wire)
    try:
        unpacker.read_array_header()
        header = unpacker.unpack()
    except (ValueError, msgpack.OutOfData) as exc:
        raise IntegrityError(f"stored block no longer decodes ({exc})") from None
    if not isinstance(header, bytes):
        raise IntegrityError("stored block: expected a header wire first")
    return header


_ROWS_PER_INSERT = 100  # peer headers per INSERT statement (500 bound values)


def _insert_peer_headers_sql(rows: int) -> str:
    """An INSERT of ``rows`` peer headers: placeholders only, never data."""
    return "INSERT OR IGNORE INTO peer_headers VALUES " + ",".join(  # noqa: S608
        ("(?, ?, ?, ?, ?)",) * rows
    )


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolling back on any error; sqlite errors become StoreError.
    The carried peer headers (``Store.carry_peer_headers``) are written first."""

    def __init__(self, store: Store, *, durable: bool = True) -> None:
        self._store = store
        self._db = store._db
        self._path = store.path
        self._durable = durable
        self._switch = not durable and store._group is None  # FULL -> NORMAL for this commit
        self._carried: list[SignedHeader] = []

    def __enter__(self) -> None:
        if self._switch:
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._carried = self._store._begun()
        except BaseException as exc:
            self._end(type(exc), exc)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        try:
            self._end(exc_type, exc)
        finally:
            if self._switch:
                self._db.execute("PRAGMA synchronous=FULL")

    def _end(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                self._store._committed(self._durable)
                return
            except sqlite3.Error as err:
                self._db.execute("ROLLBACK")
                self._store._rolled_back(self._carried)
                raise StoreError(f"{self._path}: commit failed ({err})") from None
        self._db.execute("ROLLBACK")
        self._store._rolled_back(self._carried)
        self._carried = []
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{self._path}: {exc}") from None
