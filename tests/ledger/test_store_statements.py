"""What a durable append of own readings says to SQLite: the usual case (a step's readings, the
sequence mark known, no peer headers waiting) is one INSERT statement, SQLite's implicit
transaction of one statement; peer headers waiting, or a mark not known yet, take BEGIN
IMMEDIATE ... COMMIT around every statement, so that they share the one commit.

Real SQLite files; the statements are read with the connection's trace callback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.block import Block, build_header, sign_header
from ledger.errors import SequenceError, StoreError
from ledger.groupsync import GroupSync
from ledger.identity import SigningKey
from ledger.reading import Reading, SignedReading, sign_reading
from ledger.store import Store

from .conftest import NOW_MS

KEY = SigningKey(bytes(range(32)))
PEER = SigningKey(bytes(range(1, 33)))


def _readings(key: SigningKey, seqs: range) -> list[SignedReading]:
    dev = key.public.device_id
    return [sign_reading(Reading(dev, 0, s, NOW_MS + s, "temp_mc", s, None), key) for s in seqs]


def _traced(store: Store) -> list[str]:
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


def _verbs(statements: list[str]) -> list[str]:
    return [s.split()[0].upper() for s in statements]


def _peer_header() -> Block:
    readings = _readings(PEER, range(2))
    header = build_header(
        device_id=PEER.public.device_id,
        epoch=0,
        prev=None,
        history_root=bytes(32),
        readings=readings,
        key_id=PEER.key_id,
    )
    return Block(sign_header(header, PEER), tuple(readings))


def test_a_steps_readings_are_one_insert_statement(tmp_path: Path) -> None:
    group = GroupSync()
    with Store(tmp_path / "s.sqlite", group=group) as store:
        store.append_pending(_readings(KEY, range(1)))  # the first: the mark is looked up
        group.sync()
        seen = _traced(store)
        store.append_pending(_readings(KEY, range(1, 4)))
        assert _verbs(seen) == ["INSERT"]
        assert group.take_noted(), "a durable commit the group must sync before it counts"
        assert store.last_seq() == 3
        assert [sr.reading.seq for sr in store.pending()] == [0, 1, 2, 3]


def test_peer_headers_waiting_share_the_readings_commit_in_a_store_on_its_own(
    tmp_path: Path,
) -> None:
    """synchronous=FULL: a commit of their own would cost the headers an fsync."""
    with Store(tmp_path / "s.sqlite") as store:
        store.append_pending(_readings(KEY, range(1)))
        store.carry_peer_headers([_peer_header().header])
        seen = _traced(store)
        store.append_pending(_readings(KEY, range(1, 2)))
        assert _verbs(seen) == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
        assert store.peer_head(PEER.public.device_id) is not None
        assert store.last_seq() == 1


def test_peer_headers_waiting_go_just_before_in_a_store_under_a_group(tmp_path: Path) -> None:
    """synchronous=NORMAL: a commit is a write to the WAL, synced by the next group sync; the
    headers need not be durable, the readings are noted."""
    group = GroupSync()
    with Store(tmp_path / "s.sqlite", group=group) as store:
        store.append_pending(_readings(KEY, range(1)))
        group.take_noted()
        store.carry_peer_headers([_peer_header().header])
        seen = _traced(store)
        store.append_pending(_readings(KEY, range(1, 2)))
        assert _verbs(seen) == ["INSERT", "INSERT"]
        assert "peer_headers" in seen[0] and "readings" in seen[1]
        assert group.take_noted()
        assert store.peer_head(PEER.public.device_id) is not None
        assert store.last_seq() == 1


def test_an_unknown_mark_is_looked_up_inside_the_transaction(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        store.append_pending(_readings(KEY, range(2)))
    with Store(tmp_path / "s.sqlite") as store:  # reopened: the mark is not known
        seen = _traced(store)
        store.append_pending(_readings(KEY, range(2, 3)))
        assert _verbs(seen) == ["BEGIN", "SELECT", "INSERT", "COMMIT"]


def test_a_refused_append_in_one_statement_writes_nothing_and_keeps_the_mark(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        store.append_pending(_readings(KEY, range(2)))
        with pytest.raises(SequenceError):
            store.append_pending(_readings(KEY, range(3, 4)))  # a gap: refused before SQL
        dupe = _readings(KEY, range(1, 2))
        store._tx_mark = None  # a store whose mark is wrong: SQLite refuses the duplicate seq
        store._seq_mark = 0
        with pytest.raises(StoreError, match="UNIQUE"):
            store.append_pending(dupe)
        assert store.last_seq() == 1
        assert not store._db.in_transaction
        store._seq_mark = 1
        store.append_pending(_readings(KEY, range(2, 3)))
        assert [sr.reading.seq for sr in store.pending()] == [0, 1, 2]
