"""Group commit: the durable commits of many stores made durable by one sync.

A fleet runner holds thousands of stores (one SQLite file per device) and commits to each about
once a second. With ``synchronous=FULL`` every one of those commits is an fsync of its own WAL:
2,000 fsyncs a second for 2,000 devices, most of a core spent in the kernel (measured: 2,000
fsyncs of small writes take ~100 ms of CPU and ~250 ms of wall time; one ``syncfs`` of the same
writes, ~1 ms and ~12 ms).

A store opened with a ``GroupSync`` (``Store(path, group=g)``) runs with ``synchronous=NORMAL``:
in WAL mode a commit is written to the WAL but not synced (checkpoints still sync the WAL before
copying it and the database after). After each commit that its contract calls durable, the
store notes it here (``noted``, on the committing thread). ``sync`` makes every commit noted
before it durable against power loss at once: one ``syncfs(2)`` per filesystem on Linux (the WAL
frames SQLite wrote are dirty pages of that filesystem; syncfs writes them back and flushes the
device), an ``fsync`` of each noted store's WAL file elsewhere. A WAL commit followed by an fsync
of the WAL is what ``synchronous=FULL`` does at commit time: the guarantee is the same, only its
moment moves. The caller must not treat such a write as durable (report it, publish what it
holds) before ``sync`` has returned: ``agent.device.storework.StoreThreads`` hands a job that made a
durable commit back to the event loop only after the next group sync (``take_noted`` tells the
worker thread whether its job made one).

A failed sync raises ``StoreError``: the writes it covered are not known to be durable, and a
later sync cannot make them so (after a failed writeback the kernel may have dropped the pages),
so they are not retried.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ledger.errors import StoreError


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class GroupSync:
    """Notes durable commits of stores opened with it; ``sync`` makes them all durable at once.

    ``use_syncfs``: None chooses (syncfs where the platform has it), False forces an fsync of
    each noted WAL file. Thread-safe; syncs run one at a time."""

    def __init__(self, *, use_syncfs: bool | None = None) -> None:
        syncfs = _load_syncfs() if use_syncfs in (None, True) else None
        if use_syncfs and syncfs is None:
            raise StoreError("group sync: syncfs(2) is not available on this platform")
        self._syncfs = syncfs
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._pending: dict[Path, int] = {}  # WAL file -> st_dev of its directory
        self._fs_fds: dict[int, int] = {}  # st_dev -> an open directory on that filesystem
        self._local = threading.local()
        self.syncs = 0  # syncs that had something to sync
        self.synced_stores = 0  # stores they covered, summed over syncs
        self.sync_s = 0.0  # wall time spent in syncs
        self._closed = False

    @property
    def method(self) -> str:
        return "syncfs" if self._syncfs is not None else "fsync"

    def noted(self, wal: Path, dev: int) -> None:
        """A store committed a durable transaction whose WAL is ``wal`` (its directory on the
        filesystem ``dev``), on this thread."""
        with self._lock:
            self._pending[wal] = dev
        self._local.noted = True

    def take_noted(self) -> bool:
        """Whether this thread noted a durable commit since it last asked (and forget it)."""
        noted: bool = getattr(self._local, "noted", False)
        self._local.noted = False
        return noted

    def forget(self, wal: Path) -> bool:
        """A store is closing: drop its pending note; True when it had one (then the store
        syncs its WAL itself before it closes)."""
        with self._lock:
            return self._pending.pop(wal, None) is not None

    def sync(self) -> None:
        """Make every commit noted before this call durable (StoreError when that failed)."""
        with self._sync_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            t0 = time.perf_counter()
            try:
                if self._syncfs is not None:
                    for dev, wal in {d: w for w, d in pending.items()}.items():
                        fd = self._fs_fd(dev, wal.parent)
                        if self._syncfs(fd) != 0:
                            err = ctypes.get_errno()
                            raise OSError(err, os.strerror(err), str(wal.parent))
                else:
                    for wal in pending:
                        fsync_path(wal)
            except OSError as exc:
                raise StoreError(
                    f"group sync failed ({exc}): {len(pending)} store(s) may have lost their "
                    "latest commits on power loss"
                ) from None
            self.syncs += 1
            self.synced_stores += len(pending)
            self.sync_s += time.perf_counter() - t0

    def close(self) -> None:
        with self._sync_lock:
            self._closed = True
            for fd in self._fs_fds.values():
                os.close(fd)
            self._fs_fds.clear()

    def _fs_fd(self, dev: int, directory: Path) -> int:
        fd = self._fs_fds.get(dev)
        if fd is None:
            if self._closed:
                raise OSError(0, "group sync closed", str(directory))
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            self._fs_fds[dev] = fd
        return fd


def fsync_path(path: Path) -> None:
    """fsync one file by path (a file that no longer exists has nothing left to sync: SQLite
    removes a WAL only after checkpointing it, synced, into the database)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
