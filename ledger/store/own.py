"""The device's own chain: pending signed readings, sealed blocks, and the seal transaction.

Own readings live in one table keyed by seq. A reading is pending while its seq is above the last
sealed seq; sealing a block records its seq range in ``blocks``, so the readings of block h are
``seq BETWEEN first_seq AND last_seq`` (seqs within a block are contiguous).

A seal goes one way, writer to store: ``Store.sealing(new)`` opens one durable transaction,
stores ``new`` and yields a ``SealTransaction``; the writer (``ledger.chain.ChainWriter``) reads
the pending readings and the previous block *as stored* through it, builds and signs the header,
and appends the block; the block is committed when the ``with`` ends, and nothing of it is
written if anything raises. The store never calls back into the writer.

The store re-checks the chain's structure (height, link, contiguous seqs) on every commit, and
keeps the head, its history tree and the sequence high-water mark in memory, as committed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ledger.block import Block, SignedHeader, block_wire_size, encode_block
from ledger.errors import ChainError, IntegrityError, SequenceError, UsageError
from ledger.groupsync import GroupSync
from ledger.history import CompactRange
from ledger.reading import SignedReading
from ledger.store.connection import StoreBase
from ledger.store.rows import OwnBlockRow, PendingRow
from ledger.store.tags import index_block

_ROWS_PER_INSERT = 100  # own readings per INSERT statement (200 bound values)


def _insert_readings_sql(rows: int) -> str:
    """An INSERT of ``rows`` own readings: placeholders only, never data."""
    return "INSERT INTO readings(seq, wire) VALUES " + ",".join(("(?, ?)",) * rows)  # noqa: S608


class OwnChain(StoreBase):
    def __init__(self, path: str | Path, *, group: GroupSync | None = None) -> None:
        super().__init__(path, group=group)
        # The sequence high-water mark as last committed (known once read or written here) and
        # within the open transaction: an append need not ask SQLite for max(seq) each time.
        self._seq_mark: int | None = None
        self._seq_known = False
        self._tx_mark: int | None = None
        self._tx_known = False
        self._history = CompactRange()
        self._head: SignedHeader | None = None
        self._head_last_seq: int | None = None
        self._load_head()

    def _tx_begun(self) -> None:
        self._tx_mark, self._tx_known = self._seq_mark, self._seq_known
        super()._tx_begun()

    def _tx_rolled_back(self) -> None:
        self._tx_known = False
        super()._tx_rolled_back()

    def _tx_committed(self, durable: bool) -> None:
        self._seq_mark, self._seq_known = self._tx_mark, self._tx_known
        self._tx_known = False
        super()._tx_committed(durable)

    # --- pending readings ---------------------------------------------------------------------
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
        # The usual case (a step's few readings, the sequence mark known): one INSERT statement,
        # its own transaction. Otherwise BEGIN, the look-up of the mark, the INSERTs, COMMIT.
        one = self._seq_known and len(readings) <= _ROWS_PER_INSERT
        with self._tx(one_statement=one):
            self._insert_pending(readings)

    def _insert_pending(self, readings: Sequence[SignedReading]) -> None:
        last = self._tx_mark if self._tx_known else self.last_seq()
        for r in readings:
            seq = r.reading.seq
            if last is not None and seq != last + 1:
                raise SequenceError("own reading seq (contiguous)", last + 1, seq)
            last = seq
        for i in range(0, len(readings), _ROWS_PER_INSERT):  # one statement per chunk
            chunk = readings[i : i + _ROWS_PER_INSERT]
            values: list[object] = []
            for r in chunk:
                values += (r.reading.seq, r.wire)
            self._db.execute(_insert_readings_sql(len(chunk)), values)
        self._tx_mark, self._tx_known = last, True

    def last_reading_time(self) -> int | None:
        """time_ms of the own reading with the highest seq (None: no readings)."""
        row = self._db.execute(
            "SELECT seq, wire FROM readings ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return self._decode_stored(bytes(row[1]), f"reading seq {row[0]}").reading.time_ms

    def last_time_slot(self, batch: int = 64) -> tuple[int, list[SignedReading]] | None:
        """The time of the own reading with the highest seq and every reading of the unbroken
        run of highest seqs that carry that time (in seq order); None: no readings. Read back
        from the highest seq, ``batch`` rows at a time: no index on time is needed."""
        top: int | None = None
        out: list[SignedReading] = []
        below = (1 << 63) - 1
        while True:
            rows = self._db.execute(
                "SELECT seq, wire FROM readings WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (below, batch),
            ).fetchall()
            for seq, wire in rows:
                sr = self._decode_stored(bytes(wire), f"reading seq {seq}")
                t = sr.reading.time_ms
                if top is None:
                    top = t
                elif t != top:
                    return top, out[::-1]
                out.append(sr)
                below = int(seq)
            if len(rows) < batch:
                return None if top is None else (top, out[::-1])

    def pending_wires(self, limit: int | None = None) -> list[PendingRow]:
        """Pending readings as stored, in sequence order."""
        rows = self._db.execute(
            "SELECT seq, wire FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._last_sealed_seq(), -1 if limit is None else limit),
        )
        return [PendingRow(int(q), bytes(w)) for q, w in rows]

    def pending(self, limit: int | None = None) -> list[SignedReading]:
        """Pending readings decoded from the stored bytes, in sequence order."""
        return [
            self._decode_stored(p.wire, f"pending reading seq {p.seq}")
            for p in self.pending_wires(limit)
        ]

    def pending_count(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM readings WHERE seq > ?", (self._last_sealed_seq(),)
        ).fetchone()
        return int(row[0])

    # --- sealing and committing blocks ----------------------------------------------------------
    def head(self) -> SignedHeader | None:
        return self._head

    def history(self) -> CompactRange:
        """History tree over the own chain's header hashes (kept current in memory)."""
        return self._history.copy()

    @contextmanager
    def sealing(self, new: Sequence[SignedReading]) -> Iterator[SealTransaction]:
        """One durable transaction for a seal: ``new`` readings are stored first, then the
        caller reads and appends through the ``SealTransaction`` it is given. Committed when the
        ``with`` ends (the head advances only then); rolled back whole if anything raises."""
        tx = SealTransaction(self)
        try:
            with self._tx():
                self._insert_pending(new)
                yield tx
        finally:
            tx._open = False
        if tx.block is not None:
            self._advance(tx.block)

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
        index_block(self._db, block, own=True)

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

    # --- reading the own chain -------------------------------------------------------------------
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

    def own_header_wires(self, from_height: int = 0, to_height: int | None = None) -> list[bytes]:
        top = (1 << 63) - 1 if to_height is None else to_height
        return [
            bytes(w)
            for (w,) in self._db.execute(
                "SELECT header FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height",
                (from_height, top),
            )
        ]

    def own_block_infos(self, limit: int) -> list[OwnBlockRow]:
        """The newest ``limit`` own blocks, ascending, without their bodies."""
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
            OwnBlockRow(
                int(h),
                int(e),
                bytes(digest),
                block_wire_size(int(n), [lens[q] for q in range(first, last + 1)]),
            )
            for h, e, digest, n, first, last in reversed(rows)
        ]

    # Read-only lookups for agent/provenance. They return stored values as they are: the tracer
    # checks every hash against a signed head before it relies on it.

    def own_header_hashes(self) -> list[bytes]:
        """Recorded header hashes of the own chain, by height from 0 to the head."""
        return [bytes(h) for (h,) in self._db.execute("SELECT hash FROM blocks ORDER BY height")]

    def sealed_reading_count(self) -> int:
        """How many own readings are sealed in blocks (pending ones not counted)."""
        row = self._db.execute(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM blocks"
        ).fetchone()
        return int(row[0])


class SealTransaction:
    """The own chain inside the open transaction of ``OwnChain.sealing``: what a seal reads
    (as stored, in this transaction) and the one block it appends. Usable only inside the
    ``with``."""

    def __init__(self, store: OwnChain) -> None:
        self._store = store
        self._open = True
        self.block: Block | None = None

    @property
    def head(self) -> SignedHeader | None:
        """The head the new block must extend."""
        return self._live()._head

    def history_root(self) -> bytes:
        """The history root the new header signs (over heights 0..head)."""
        return self._live()._history.root()

    def pending(self, limit: int) -> list[PendingRow]:
        """Up to ``limit`` pending readings, as stored, in sequence order."""
        return self._live().pending_wires(limit)

    def reading_wires(self, height: int) -> list[bytes]:
        """The stored readings of the own block at ``height``."""
        return self._live().reading_wires(height)

    def append(self, block: Block) -> None:
        """Append ``block`` over the pending readings it seals (once per transaction); the
        store checks height, link and sequence again."""
        store = self._live()
        if self.block is not None:
            raise UsageError("a seal transaction appends one block")
        store._insert_block(block, readings_stored=True)
        self.block = block

    def _live(self) -> OwnChain:
        if not self._open:
            raise UsageError("the seal transaction has ended")
        return self._store
