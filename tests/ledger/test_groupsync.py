"""Group commit (ledger/groupsync.py): stores opened with a GroupSync commit at
synchronous=NORMAL and note their durable commits; one sync covers every store noted before it.

Real SQLite files and real syncs (syncfs on Linux, fsync of each WAL otherwise). Which files an
fsync reached is read back from /proc/self/fd; a failing disk is played by an fsync that raises.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from ledger.errors import StoreError
from ledger.groupsync import GroupSync
from ledger.identity import SigningKey
from ledger.reading import Reading, SignedReading, sign_reading
from ledger.store import Store

from .conftest import NOW_MS

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="syncfs(2) and /proc/self/fd are Linux's"
)


def _readings(key: SigningKey, seqs: range) -> list[SignedReading]:
    dev = key.public.device_id
    return [sign_reading(Reading(dev, 0, s, NOW_MS + s, "temp_mc", s, None), key) for s in seqs]


def _synchronous(store: Store) -> int:
    row = store._db.execute("PRAGMA synchronous").fetchone()  # the connection's own setting
    return int(row[0])


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files os.fsync is called on, by path (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_a_group_store_commits_at_normal_and_a_plain_one_at_full(tmp_path: Path) -> None:
    group = GroupSync()
    with Store(tmp_path / "a.sqlite", group=group) as a, Store(tmp_path / "b.sqlite") as b:
        assert (_synchronous(a), _synchronous(b)) == (1, 2)  # NORMAL, FULL
        key = SigningKey(bytes(32))
        a.append_pending(_readings(key, range(3)))
        b.append_pending(_readings(key, range(3)))
        assert (_synchronous(a), _synchronous(b)) == (1, 2)
        group.sync()
    group.close()


def test_durable_commits_are_noted_on_the_committing_thread_only(
    tmp_path: Path, device_key: SigningKey
) -> None:
    group = GroupSync()
    store = Store(tmp_path / "d.sqlite", group=group)
    group.sync()  # the new store's schema version
    assert group.take_noted()  # ... was committed (and noted) on this thread
    assert not group.take_noted()  # asked once, forgotten

    store.put_peer_headers([])  # not durable by contract: not noted
    assert not group.take_noted()

    other: list[bool] = []

    def commit_elsewhere() -> None:
        store.append_pending(_readings(device_key, range(2)))
        other.append(group.take_noted())

    t = threading.Thread(target=commit_elsewhere)
    t.start()
    t.join()
    assert other == [True]
    assert not group.take_noted()  # this thread made no commit
    store.close()
    group.close()


@linux_only
def test_fsync_mode_syncs_each_noted_wal_once_per_sync(
    tmp_path: Path, device_key: SigningKey, fsynced: list[str]
) -> None:
    group = GroupSync(use_syncfs=False)
    assert group.method == "fsync"
    stores = [Store(tmp_path / f"s{i}.sqlite", group=group) for i in range(3)]
    group.sync()
    fsynced.clear()
    stores[0].append_pending(_readings(device_key, range(0, 2)))
    stores[0].append_pending(_readings(device_key, range(2, 4)))
    stores[2].append_pending(_readings(device_key, range(0, 2)))
    assert fsynced == []  # nothing synced at commit time
    group.sync()
    assert sorted(fsynced) == sorted(str(tmp_path / f"s{i}.sqlite-wal") for i in (0, 2))
    assert (group.syncs, group.synced_stores) == (2, 5)  # the first: the 3 new stores
    fsynced.clear()
    group.sync()  # nothing noted since
    assert fsynced == [] and group.syncs == 2
    for s in stores:
        s.close()
    group.close()


@linux_only
def test_syncfs_mode_makes_one_call_per_filesystem(
    tmp_path: Path, device_key: SigningKey, fsynced: list[str]
) -> None:
    group = GroupSync(use_syncfs=True)
    assert group.method == "syncfs"
    stores = [Store(tmp_path / f"s{i}.sqlite", group=group) for i in range(4)]
    for s in stores:
        s.append_pending(_readings(device_key, range(2)))
    group.sync()
    assert fsynced == []  # no per-file fsync: one syncfs for the directory's filesystem
    assert (group.syncs, group.synced_stores) == (1, 4)
    for s in stores:
        s.close()
    assert fsynced == []  # everything was synced: close has nothing left to sync
    group.close()


@linux_only
def test_a_store_closed_before_the_group_synced_it_syncs_its_own_wal(
    tmp_path: Path, device_key: SigningKey, fsynced: list[str]
) -> None:
    group = GroupSync(use_syncfs=False)
    a = Store(tmp_path / "a.sqlite", group=group)
    b = Store(tmp_path / "b.sqlite", group=group)
    group.sync()
    fsynced.clear()
    a.append_pending(_readings(device_key, range(2)))
    b.append_pending(_readings(device_key, range(2)))
    a.close()
    assert fsynced == [str(tmp_path / "a.sqlite-wal")]
    group.sync()  # a is no longer the group's to sync
    assert fsynced[1:] == [str(tmp_path / "b.sqlite-wal")]
    b.close()
    group.close()
    with Store(tmp_path / "a.sqlite") as again:
        assert [r.reading.seq for r in again.pending()] == [0, 1]


def test_a_failed_sync_is_a_store_error_and_is_not_retried(
    tmp_path: Path, device_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = GroupSync(use_syncfs=False)
    store = Store(tmp_path / "d.sqlite", group=group)
    group.sync()
    store.append_pending(_readings(device_key, range(2)))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(StoreError, match=r"group sync failed .*Input/output error.*1 store"):
        group.sync()
    monkeypatch.undo()
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    group.sync()  # the failed commits are not retried: a later sync cannot vouch for them
    assert calls == [] and group.syncs == 1
    store.close()
    group.close()


def test_group_commits_are_plain_sqlite_commits_for_readers(
    tmp_path: Path, device_key: SigningKey
) -> None:
    """A commit at NORMAL is a commit: another connection sees it before any sync."""
    group = GroupSync()
    store = Store(tmp_path / "d.sqlite", group=group)
    store.append_pending(_readings(device_key, range(5)))
    reader = sqlite3.connect(f"file:{tmp_path / 'd.sqlite'}?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT count(*) FROM readings").fetchone() == (5,)
    finally:
        reader.close()
    store.close()
    group.close()
