"""The SQLite file under every part of the store: connection, schema, meta, write transactions.

``StoreBase`` opens the file (WAL; synchronous=FULL, or NORMAL under a ``GroupSync``), creates
the 13 tables, checks the schema version, and owns the write transaction (``_tx``) every other
part of the store writes in. Each part that keeps state tied to a transaction (the own chain's
sequence mark, the carried peer headers) extends the three hooks ``_tx_begun``,
``_tx_rolled_back`` and ``_tx_committed`` and calls ``super()``: one transaction, however many
parts take part in it. sqlite3 errors become ``StoreError`` here and nowhere else; stored bytes
that no longer decode become ``IntegrityError`` (``_decode_stored``, ``_decode_header``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from ledger.block import SignedHeader, decode_header
from ledger.errors import DecodeError, IntegrityError, StoreError
from ledger.groupsync import GroupSync, fsync_path
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
CREATE TABLE IF NOT EXISTS witness_state (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS checkpoints (
    origin TEXT NOT NULL, size INTEGER NOT NULL, note BLOB NOT NULL,
    PRIMARY KEY (origin, size)) STRICT;
"""


def open_elsewhere(path: str | Path) -> bool:
    """True when another connection (another process: a running device) has the store at
    ``path`` open. Every connection to a WAL database holds a shared lock on it, so an exclusive
    one is refused at once while any is open. False for a store that does not exist."""
    if not Path(path).exists():
        return False
    db = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return True
    finally:
        db.close()
    return False


class StoreBase:
    """The connection and its write transactions. Not thread-safe: one thread at a time."""

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

    def close(self) -> None:
        """Close; a durable commit the group has not synced yet is synced here first."""
        if self._group is not None and self._group.forget(self._wal):
            try:
                fsync_path(self._wal)
            except OSError as exc:
                self._db.close()
                raise StoreError(f"{self.path}: cannot sync at close ({exc})") from None
        self._db.close()

    # --- meta -------------------------------------------------------------------------------
    def meta_get(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def meta_set(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        if self._group is not None:  # committed on its own (autocommit): durable like a tx
            self._group.noted(self._wal, self._dev)

    # --- write transactions -----------------------------------------------------------------
    def _tx(self, *, durable: bool = True, one_statement: bool = False) -> _Tx:
        """A write transaction. ``durable=False`` commits without waiting for the disk
        (synchronous=NORMAL for that commit): for peer headers, which a power cut may cost but
        never corrupt, and which anti-entropy fetches again. The next durable commit syncs them
        too.

        ``one_statement``: the body executes one SQL statement and nothing else. That
        statement then runs on its own, as SQLite's implicit transaction of one statement:
        committed (or rolled back whole) when it ends, with the same synchronous setting, one
        call into SQLite instead of three (BEGIN, the statement, COMMIT), each of which gives
        the GIL away and waits to get it back. The rows parts write first at every transaction
        (``_tx_writes_first``: peer headers, which need not be durable) are then written just
        before, each statement its own commit, in a store under a group (``synchronous=NORMAL``:
        a commit is a write to the WAL, synced with the next group sync); a store on its own
        syncs every commit (``synchronous=FULL``), so it writes them in one transaction with
        the statement instead. The hooks run as for any transaction."""
        implicit = one_statement and (self._group is not None or not self._tx_writes_first())
        return _Tx(self, durable=durable, implicit=implicit)

    def _tx_writes_first(self) -> bool:
        """Hook: whether a part writes rows of its own when a transaction begins."""
        return False

    def _tx_write_first_alone(self) -> None:
        """Hook: before an implicit transaction, write the rows ``_tx_writes_first`` promised,
        each statement committed on its own, not durable."""

    def _tx_begun(self) -> None:
        """Hook: a write transaction has begun (parts may write in it first, or raise)."""

    def _tx_rolled_back(self) -> None:
        """Hook: the write transaction rolled back."""

    def _tx_committed(self, durable: bool) -> None:
        """Hook: the write transaction committed."""
        if durable and self._group is not None:
            self._group.noted(self._wal, self._dev)

    # --- stored bytes -----------------------------------------------------------------------
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


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolling back on any error; sqlite errors become StoreError.
    The store's hooks run after BEGIN, after ROLLBACK and after COMMIT. ``implicit``: no BEGIN
    and no COMMIT, the body's one statement is its own transaction (``StoreBase._tx``)."""

    def __init__(self, store: StoreBase, *, durable: bool = True, implicit: bool = False) -> None:
        self._store = store
        self._db = store._db
        self._path = store.path
        self._durable = durable
        self._implicit = implicit
        self._switch = not durable and store._group is None  # FULL -> NORMAL for this commit

    def __enter__(self) -> None:
        if self._switch:
            self._db.execute("PRAGMA synchronous=NORMAL")
        if self._implicit:
            try:
                self._store._tx_write_first_alone()
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from None
        else:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            self._store._tx_begun()
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
                if not self._implicit:
                    self._db.execute("COMMIT")
                self._store._tx_committed(self._durable)
                return
            except sqlite3.Error as err:
                self._rollback()
                raise StoreError(f"{self._path}: commit failed ({err})") from None
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{self._path}: {exc}") from None

    def _rollback(self) -> None:
        """Roll back what is still open. On some errors (a full disk, I/O) SQLite has already
        rolled the transaction back itself: a ROLLBACK then fails with "cannot rollback" and
        would hide the error that matters."""
        if self._db.in_transaction:
            # If even this fails, SQLite rolls the transaction back when the file reopens.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        self._store._tx_rolled_back()
