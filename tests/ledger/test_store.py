"""The durable store: atomic commits, the sequence high-water mark, peer headers and forks,
replicas and the tag index, evidence, schema versions, and stored bytes that stop decoding.

Only the public API is used, except where a test plays the disk (``Disk``) or an older build
(the v1 schema below), which work on the SQLite file itself.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.block import Block, build_header, encode_block, sign_header
from ledger.chain import ChainWriter
from ledger.errors import ChainError, IntegrityError, SequenceError, StoreError, UsageError
from ledger.history import CompactRange
from ledger.identity import SigningKey
from ledger.reading import Reading, SignedReading, sign_reading
from ledger.store import SCHEMA_VERSION, ReceiptRow, ReplicaRow, Store, TagHit

from .conftest import CHAIN_SIZES, NOW_MS, Disk, sample_readings, seal_chain_impl

TAG0 = "urn:epc:id:sgtin:0614141.107346.0"
SEALED = sum(CHAIN_SIZES)  # chain_store holds seqs 0..SEALED-1 in len(CHAIN_SIZES) blocks


def _snapshot(store: Store) -> tuple[object, ...]:
    """Everything a commit could change, as plain values."""
    head = store.head()
    return (
        store.block_count(),
        None if head is None else head.wire,
        store.last_seq(),
        [r.wire for r in store.pending()],
        [store.reading_wires(h) for h in range(store.block_count() + 1)],
        store.tags(),
        store.history().root(),
    )


def _signed(key: SigningKey, seqs: list[int]) -> list[SignedReading]:
    return [
        sign_reading(
            Reading(key.public.device_id, 0, s, NOW_MS + s, "temp_mc", s, f"urn:epc:x.{s}"), key
        )
        for s in seqs
    ]


def _next_block(
    store: Store, key: SigningKey, readings: list[SignedReading], **changes: object
) -> Block:
    """A block that would extend ``store``'s own chain, with header fields overridden."""
    header = build_header(
        device_id=key.public.device_id,
        epoch=0,
        prev=store.head(),
        history_root=store.history().root(),
        readings=readings,
        key_id=key.key_id,
    )
    header = dataclasses.replace(header, **changes)  # type: ignore[arg-type]
    return Block(sign_header(header, key), tuple(readings))


def _sql(path: Path, statement: str, *args: object) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(statement, args)
    db.close()


# --- own chain --------------------------------------------------------------------------------


def test_chain_store_contents(chain_store: Store) -> None:
    assert chain_store.block_count() == len(CHAIN_SIZES)
    assert chain_store.last_seq() == SEALED - 1
    assert chain_store.pending_count() == 0 and chain_store.pending() == []
    blocks = list(chain_store.blocks())
    assert [len(b.readings) for b in blocks] == list(CHAIN_SIZES)
    assert [r.reading.seq for b in blocks for r in b.readings] == list(range(SEALED))
    assert chain_store.head() == blocks[-1].header
    for h, b in enumerate(blocks):
        assert chain_store.block_wire(h) == b.encode()
        assert chain_store.header_at(h) == b.header
        assert chain_store.block(h) == b
    assert chain_store.block(len(CHAIN_SIZES)) is None
    assert chain_store.block_wire(len(CHAIN_SIZES)) is None
    assert chain_store.header_at(len(CHAIN_SIZES)) is None
    assert list(chain_store.blocks(from_height=2)) == blocks[2:]
    tree = CompactRange()
    for b in blocks:
        tree.append(b.header.hash)
    assert chain_store.history().root() == tree.root()
    chain_store.history().append(b"\x00" * 32)  # a copy: the store's own tree is unchanged
    assert chain_store.history().root() == tree.root()


def test_commit_block_appends_a_complete_block(chain_store: Store, device_key: SigningKey) -> None:
    readings = _signed(device_key, [SEALED, SEALED + 1])
    block = _next_block(chain_store, device_key, readings)
    chain_store.commit_block(block)
    assert chain_store.head() == block.header
    assert chain_store.block(len(CHAIN_SIZES)) == block
    assert chain_store.last_seq() == SEALED + 1 and chain_store.pending_count() == 0
    assert chain_store.tag_hits(f"urn:epc:x.{SEALED}")[0].height == len(CHAIN_SIZES)


@pytest.mark.parametrize("height_delta", [-1, 1, 5])
def test_commit_with_a_wrong_height_changes_nothing(
    chain_store: Store, device_key: SigningKey, height_delta: int
) -> None:
    before = _snapshot(chain_store)
    head = chain_store.head()
    assert head is not None
    block = _next_block(
        chain_store,
        device_key,
        _signed(device_key, [SEALED]),
        height=head.header.height + 1 + height_delta,
    )
    with pytest.raises(ChainError) as info:
        chain_store.commit_block(block)
    assert info.value.expected == head.header.height + 1
    assert _snapshot(chain_store) == before


def test_commit_with_a_wrong_prev_hash_changes_nothing(
    chain_store: Store, device_key: SigningKey
) -> None:
    before = _snapshot(chain_store)
    block = _next_block(
        chain_store, device_key, _signed(device_key, [SEALED]), prev_hash=b"\x07" * 32
    )
    with pytest.raises(ChainError):
        chain_store.commit_block(block)
    assert _snapshot(chain_store) == before


def test_a_commit_failing_inside_its_transaction_leaves_no_partial_block(
    chain_store: Store, device_key: SigningKey
) -> None:
    """The last reading cannot be stored (TEXT in a BLOB column): everything rolls back."""
    readings = _signed(device_key, [SEALED, SEALED + 1, SEALED + 2])
    bad = [*readings[:-1], dataclasses.replace(readings[-1], wire="not bytes")]  # type: ignore[arg-type]
    before = _snapshot(chain_store)
    with pytest.raises(StoreError):
        chain_store.commit_block(_next_block(chain_store, device_key, bad))
    assert _snapshot(chain_store) == before
    assert chain_store.header_at(len(CHAIN_SIZES)) is None
    chain_store.commit_block(_next_block(chain_store, device_key, readings))  # still usable
    assert chain_store.block_count() == len(CHAIN_SIZES) + 1


def test_a_seal_reads_and_appends_through_one_transaction_and_commits_at_its_end(
    chain_store: Store, device_key: SigningKey
) -> None:
    store = chain_store
    new = _signed(device_key, [SEALED, SEALED + 1])
    head = store.head()
    with store.sealing(new) as tx:
        # What the writer reads is what this transaction stored.
        assert [(p.seq, p.wire) for p in tx.pending(1)] == [(SEALED, new[0].wire)]
        assert tx.head == head and tx.history_root() == store.history().root()
        assert head is not None and tx.reading_wires(head.header.height) == store.reading_wires(
            head.header.height
        )
        block = _next_block(store, device_key, new)
        tx.append(block)
        with pytest.raises(UsageError):
            tx.append(block)  # one block per seal
        assert store.head() == head  # the head moves at the commit, not before
    assert store.head() == block.header and store.pending() == []
    assert store.block(block.header.header.height) == block
    with pytest.raises(UsageError):
        tx.pending(1)  # the transaction has ended


def test_a_seal_that_raises_leaves_neither_the_block_nor_its_readings(
    chain_store: Store, device_key: SigningKey
) -> None:
    store = chain_store
    before = _snapshot(store)
    new = _signed(device_key, [SEALED, SEALED + 1])

    def append_then_fail() -> None:
        with store.sealing(new) as tx:
            tx.append(_next_block(store, device_key, new))
            raise RuntimeError("the writer failed after appending")

    with pytest.raises(RuntimeError):
        append_then_fail()
    assert _snapshot(store) == before
    with store.sealing(new) as tx:  # and the same seal goes through afterwards
        tx.append(_next_block(store, device_key, new))
    assert store.block_count() == len(CHAIN_SIZES) + 1


@pytest.mark.parametrize(
    "seqs",
    [
        [5, 6],
        [SEALED - 1, SEALED],
        [SEALED + 1, SEALED + 2],
        [SEALED, SEALED + 2],
        [SEALED + 1, SEALED],
    ],
    ids=["sealed-seqs", "overlaps-sealed", "gap", "gap-inside", "backwards"],
)
def test_commit_rechecks_the_own_sequence(
    chain_store: Store, device_key: SigningKey, seqs: list[int]
) -> None:
    """ledger/store: 'a bug above cannot make it hold a gap, a duplicate or two blocks at one
    height'. Readings a block carries must continue the sealed sequence without a gap."""
    before = _snapshot(chain_store)
    with pytest.raises(SequenceError):
        chain_store.commit_block(_next_block(chain_store, device_key, _signed(device_key, seqs)))
    assert _snapshot(chain_store) == before


def test_pending_and_the_high_water_mark_survive_reopen(
    tmp_path: Path, device_key: SigningKey
) -> None:
    path = tmp_path / "hw.db"
    readings = _signed(device_key, [0, 1, 2, 3])
    with Store(path) as store:
        assert store.last_seq() is None and store.head() is None and store.pending() == []
        store.append_pending(readings[:2])
        store.append_pending(readings[2:])
        store.append_pending([])
    with Store(path) as store:
        assert store.last_seq() == 3
        assert [r.wire for r in store.pending()] == [r.wire for r in readings]
        assert [r.reading.seq for r in store.pending(limit=2)] == [0, 1]
        assert store.pending_count() == 4
        for stale in ([3], [1], [4, 4], [5, 4], [6]):
            with pytest.raises(SequenceError):
                store.append_pending(_signed(device_key, stale))
        assert store.pending_count() == 4  # a refused batch writes nothing
        block = ChainWriter(store, device_key, device_key.public.device_id).seal()
        assert block is not None and len(block.readings) == 4
        assert store.pending_count() == 0
    with Store(path) as store:  # the mark now comes from the sealed block
        assert store.last_seq() == 3 and store.pending() == []
        with pytest.raises(SequenceError):
            store.append_pending(_signed(device_key, [2]))
        store.append_pending(_signed(device_key, [4]))
        assert store.last_seq() == 4


def test_store_files_use_wal(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


# --- schema and corruption ------------------------------------------------------------------


def test_schema_version_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    with Store(path) as store:
        assert store.meta_get("schema_version") == str(SCHEMA_VERSION).encode()
    _sql(
        path, "UPDATE meta SET value=? WHERE key='schema_version'", str(SCHEMA_VERSION + 1).encode()
    )
    with pytest.raises(StoreError, match="schema version"):
        Store(path)


# The own-chain tables as the first release (commit c9c8349) wrote them, schema_version "1".
_V1_OWN_CHAIN = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
CREATE TABLE pending (seq INTEGER PRIMARY KEY, wire BLOB NOT NULL) STRICT;
CREATE TABLE blocks (
    height INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, hash BLOB NOT NULL UNIQUE,
    header BLOB NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL) STRICT;
CREATE TABLE readings (
    height INTEGER NOT NULL, idx INTEGER NOT NULL, seq INTEGER NOT NULL UNIQUE,
    wire BLOB NOT NULL, PRIMARY KEY (height, idx)) STRICT;
"""


def test_a_store_written_by_an_older_layout_is_not_misread(
    tmp_path: Path, device_key: SigningKey
) -> None:
    """Acknowledged pending readings in a v1 file must be read, migrated, or the file refused
    (a schema change bumps SCHEMA_VERSION); never silently dropped."""
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(_V1_OWN_CHAIN)
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (b"1",))
    for r in _signed(device_key, [0, 1, 2]):
        db.execute("INSERT INTO pending VALUES (?, ?)", (r.reading.seq, r.wire))
    db.commit()
    db.close()
    try:
        store = Store(path)
    except StoreError:
        return
    with store:
        assert store.last_seq() == 2
        assert [r.reading.seq for r in store.pending()] == [0, 1, 2]


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError):
        Store(path)


def _corrupt(path: Path, old: bytes, new: bytes) -> None:
    disk = Disk(path)
    disk.replace(old, new)
    disk.close()


def _integrity_error_on_open_or(path: Path, use: Callable[[Store], object]) -> None:
    """Corruption must surface as IntegrityError, when opening the store or when used."""
    with pytest.raises(IntegrityError), Store(path) as store:
        use(store)


def test_a_stored_reading_that_no_longer_decodes(chain_store: Store) -> None:
    path = chain_store.path
    wire = chain_store.reading_wires(0)[1]
    chain_store.close()
    _corrupt(path, wire, b"\x00")
    _integrity_error_on_open_or(path, lambda s: s.block(0))
    _integrity_error_on_open_or(path, lambda s: list(s.blocks()))
    with Store(path) as store:
        assert store.block(1) is not None


def test_a_stored_header_that_no_longer_decodes(chain_store: Store) -> None:
    path = chain_store.path
    header = chain_store.header_at(1)
    assert header is not None
    chain_store.close()
    _corrupt(path, header.wire, b"\x92\xc4")
    _integrity_error_on_open_or(path, lambda s: s.header_at(1))
    _integrity_error_on_open_or(path, lambda s: s.block(1))


def test_a_stored_head_that_no_longer_decodes(chain_store: Store) -> None:
    path = chain_store.path
    head = chain_store.head()
    assert head is not None
    chain_store.close()
    _corrupt(path, head.wire, head.wire[:-1])
    _integrity_error_on_open_or(path, lambda s: s.head())


# --- peers, replicas, tags, certificates, evidence ------------------------------------------


@pytest.fixture(scope="module")
def peer_blocks(other_device_key: SigningKey) -> list[Block]:
    return seal_chain_impl(
        other_device_key, sample_readings(other_device_key.public.device_id, [3, 2, 1])
    )


def test_peer_headers_and_forks(
    chain_store: Store, peer_blocks: list[Block], other_device_key: SigningKey
) -> None:
    peer = other_device_key.public.device_id
    assert chain_store.peer_head(peer) is None and chain_store.peer_devices() == []
    for b in peer_blocks:
        assert chain_store.put_peer_header(b.header) is None
    assert chain_store.put_peer_header(peer_blocks[1].header) is None  # the same again: no-op
    assert chain_store.peer_head(peer) == peer_blocks[-1].header
    assert chain_store.peer_headers(peer) == [b.header for b in peer_blocks]
    assert chain_store.peer_headers(peer, from_height=1) == [b.header for b in peer_blocks[1:]]
    assert chain_store.peer_devices() == [peer]

    alt = sample_readings(peer, [3, 2])
    alt[1] = [dataclasses.replace(r, value=r.value + 1) for r in alt[1]]
    rival = seal_chain_impl(other_device_key, alt)[1].header
    assert chain_store.put_peer_header(rival) == peer_blocks[1].header  # the fork: held header
    assert chain_store.peer_headers(peer)[1] == peer_blocks[1].header  # nothing replaced


def test_peer_headers_commit_lazily_but_the_own_chain_stays_fully_synchronous(
    chain_store: Store, peer_blocks: list[Block]
) -> None:
    store = chain_store

    def synchronous() -> int:
        return int(store._db.execute("PRAGMA synchronous").fetchone()[0])

    assert synchronous() == 2  # FULL
    seen: list[int] = []
    store._db.set_trace_callback(lambda sql: seen.append(synchronous()) if "INSERT" in sql else 0)
    store.put_peer_headers([b.header for b in peer_blocks])
    store._db.set_trace_callback(None)
    assert seen == [1]  # NORMAL while peer headers were inserted (one statement for all)
    assert synchronous() == 2  # and FULL again for whatever comes next
    with pytest.raises(StoreError), store._tx(durable=False):
        store._db.execute("INSERT INTO no_such_table VALUES (1)")
    assert synchronous() == 2  # restored after a failed transaction too


def test_peer_headers_in_one_batch_report_every_conflict(
    chain_store: Store, peer_blocks: list[Block], other_device_key: SigningKey
) -> None:
    peer = other_device_key.public.device_id
    alt = sample_readings(peer, [3, 2])
    alt[1] = [dataclasses.replace(r, value=r.value + 1) for r in alt[1]]
    rival = seal_chain_impl(other_device_key, alt)[1].header
    assert chain_store.put_peer_headers([peer_blocks[0].header]) == []
    # Held already (same bytes), new, a rival of one new in the same batch, and new again.
    batch = [peer_blocks[0].header, peer_blocks[1].header, rival, peer_blocks[2].header]
    assert chain_store.put_peer_headers(batch) == [peer_blocks[1].header]
    assert chain_store.peer_headers(peer) == [b.header for b in peer_blocks]
    assert chain_store.put_peer_headers([rival]) == [peer_blocks[1].header]


def test_the_sequence_mark_is_read_once_and_stays_right_across_failures(
    chain_store: Store, device_key: SigningKey
) -> None:
    store = chain_store
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.append_pending(_signed(device_key, [SEALED]))
    store.append_pending(_signed(device_key, [SEALED + 1]))
    assert sum(1 for x in statements if "max(seq)" in x) <= 1  # read once, then known
    with pytest.raises(SequenceError):  # a gap is still refused
        store.append_pending(_signed(device_key, [SEALED + 3]))
    with pytest.raises(SequenceError):  # and so is a seq already stored
        store.append_pending(_signed(device_key, [SEALED + 1]))

    # A transaction that fails after the insert leaves the mark where the store is.
    def insert_then_fail() -> None:
        with store._tx():
            store._insert_pending(_signed(device_key, [SEALED + 2]))
            store._db.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StoreError):
        insert_then_fail()
    store.append_pending(_signed(device_key, [SEALED + 2]))
    store._db.set_trace_callback(None)
    assert store.last_seq() == SEALED + 2


def test_carried_peer_headers_ride_along_with_the_next_commit_and_survive_its_failure(
    chain_store: Store, peer_blocks: list[Block], device_key: SigningKey
) -> None:
    store = chain_store
    peer = peer_blocks[0].header.header.device_id
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.carry_peer_headers([b.header for b in peer_blocks[:2]])
    assert store.peer_headers(peer) == []  # queued, not written
    # A failing transaction (a seq that skips one) rolls back and keeps them queued.
    with pytest.raises(SequenceError):
        store.append_pending(_signed(device_key, [SEALED + 1]))
    assert store.peer_headers(peer) == [] and store.last_seq() == SEALED - 1
    # The next write, whatever it is, writes them first: one commit, durable (FULL).
    statements.clear()
    store.append_pending(_signed(device_key, [SEALED]))
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    assert not any("synchronous=NORMAL" in s for s in statements)
    assert store.peer_headers(peer) == [b.header for b in peer_blocks[:2]]
    assert store.last_seq() == SEALED
    # write_carried: on their own when nothing else comes (and nothing at all when none wait).
    statements.clear()
    store.write_carried()
    assert statements == []
    store.carry_peer_headers([peer_blocks[2].header])
    store.write_carried()
    store._db.set_trace_callback(None)
    assert "COMMIT" in statements and "PRAGMA synchronous=NORMAL" in statements
    assert store.peer_headers(peer) == [b.header for b in peer_blocks]


def test_replicas_and_the_tag_index(
    chain_store: Store,
    peer_blocks: list[Block],
    other_device_key: SigningKey,
    device_key: SigningKey,
) -> None:
    peer = other_device_key.public.device_id
    own = device_key.public.device_id
    assert chain_store.replica(peer, 0) is None
    assert chain_store.replica_bytes() == 0
    assert chain_store.put_replica(peer_blocks[0]) is True
    assert chain_store.put_replica(peer_blocks[0]) is False  # idempotent
    assert chain_store.put_replica(peer_blocks[1]) is True
    assert chain_store.replica(peer, 0) == peer_blocks[0]
    assert chain_store.replica(peer, 1) == peer_blocks[1]
    assert chain_store.replica_bytes() == sum(len(b.encode()) for b in peer_blocks[:2])

    # sample_readings tags every third seq with ...107346.<seq>; the own chain does the same.
    hits = chain_store.tag_hits(TAG0)
    assert hits == sorted(hits, key=lambda h: (h.time_ms, h.device_id, h.height, h.idx))
    assert set(hits) == {
        TagHit(TAG0, own, 0, 0, 0, NOW_MS, True),
        TagHit(TAG0, peer, 0, 0, 0, NOW_MS, False),
    }
    tag3 = "urn:epc:id:sgtin:0614141.107346.3"
    assert set(chain_store.tag_hits(tag3)) == {
        TagHit(tag3, peer, 1, 0, 3, NOW_MS + 3000, False),
        TagHit(tag3, own, 0, 3, 3, NOW_MS + 3000, True),
    }
    counts = dict(chain_store.tags())
    assert counts[TAG0] == 2 and counts[tag3] == 2
    assert counts["urn:epc:id:sgtin:0614141.107346.9"] == 1  # own only (peer has seqs 0..5)
    assert chain_store.tag_hits("urn:epc:unknown") == []


def test_a_corrupted_replica_raises_integrity_error(
    chain_store: Store, peer_blocks: list[Block], other_device_key: SigningKey
) -> None:
    peer = other_device_key.public.device_id
    chain_store.put_replica(peer_blocks[0])
    path = chain_store.path
    chain_store.close()
    disk = Disk(path)
    wire = peer_blocks[0].encode()
    disk.replace(wire, wire[:-1])
    disk.close()
    with Store(path) as store:
        assert store.replica_infos()[0].height == 0  # read from the header alone: intact
        with pytest.raises(IntegrityError):
            store.replica(peer, 0)
    # A header that no longer opens the stored block (its byte string made a text string).
    disk = Disk(path)
    assert wire[1] == 0xC4
    disk.replace(wire[:-1], wire[:1] + b"\xd9" + wire[2:-1])
    disk.close()
    with Store(path) as store, pytest.raises(IntegrityError, match="expected a byte string"):
        store.replica_infos()


def test_evidence_is_idempotent(chain_store: Store, other_device_key: SigningKey) -> None:
    peer = other_device_key.public.device_id
    assert chain_store.evidence() == []
    assert chain_store.put_evidence(peer, b"evidence-1") is True
    assert chain_store.put_evidence(peer, b"evidence-1") is False
    assert chain_store.put_evidence(peer, b"evidence-2") is True
    assert chain_store.put_evidence("ef" + "a" * 24, b"evidence-1") is True
    assert sorted(chain_store.evidence(peer)) == [b"evidence-1", b"evidence-2"]
    assert len(chain_store.evidence()) == 3
    assert chain_store.evidence("ef" + "b" * 24) == []


def test_certificates_and_meta_persist(tmp_path: Path, other_device_key: SigningKey) -> None:
    path = tmp_path / "certs.db"
    peer = other_device_key.public.device_id
    with Store(path) as store:
        assert store.certificate(peer) is None
        store.put_certificate(peer, b"cert-1")
        store.put_certificate(peer, b"cert-2")  # a renewed certificate replaces the old one
        store.meta_set("epoch", b"3")
    with Store(path) as store:
        assert store.certificate(peer) == b"cert-2"
        assert store.meta_get("epoch") == b"3"
        assert store.meta_get("absent") is None


def test_block_wire_is_the_stored_bytes(chain_store: Store) -> None:
    header = chain_store.header_at(1)
    assert header is not None
    assert chain_store.block_wire(1) == encode_block(header.wire, chain_store.reading_wires(1))


def test_replication_bookkeeping_replicas_surplus_receipts_and_own_block_sizes(
    chain_store: Store, peer_blocks: list[Block], other_device_key: SigningKey
) -> None:
    store = chain_store
    peer = other_device_key.public.device_id
    for b in peer_blocks:
        assert store.put_replica(b)
    assert store.replica_infos() == [
        ReplicaRow(
            owner_id=peer,
            height=b.header.header.height,
            epoch=b.header.header.epoch,
            block_hash=b.header.hash,
            size=len(b.encode()),
            surplus=False,
        )
        for b in peer_blocks
    ]
    assert store.replica_wire(peer, 1) == peer_blocks[1].encode()
    assert store.replica_wire(peer, 99) is None
    store.mark_surplus(peer, 1)
    store.mark_surplus(peer, 1)  # idempotent
    assert [r.surplus for r in store.replica_infos()] == [False, True, False]

    def foreign_tags(height: int) -> int:
        sql = "SELECT count(*) FROM tags WHERE device_id=? AND height=? AND own=0"
        return int(store._db.execute(sql, (peer, height)).fetchone()[0])

    assert foreign_tags(1) > 0  # sample_readings tags every third reading
    assert store.delete_replica(peer, 1) is True
    assert store.delete_replica(peer, 1) is False
    assert [r.height for r in store.replica_infos()] == [0, 2]
    assert store.replica_bytes() == sum(len(peer_blocks[i].encode()) for i in (0, 2))
    assert foreign_tags(1) == 0  # the tag index forgets an evicted replica
    store.mark_surplus(peer, 2)
    store.delete_replica(peer, 2)  # the surplus mark goes with the replica
    assert store.put_replica(peer_blocks[2]) and store.replica_infos()[-1].surplus is False

    store.put_receipt(0, "holder-a", b"r0a")
    store.put_receipt(0, "holder-b", b"r0b")
    store.put_receipt(2, "holder-a", b"r2a")
    store.put_receipt(0, "holder-a", b"r0a'")  # a newer receipt replaces the old one
    assert store.receipts() == [(0, "holder-a", b"r0a'"), (0, "holder-b", b"r0b"),
                                (2, "holder-a", b"r2a")]  # fmt: skip
    store.forget_receipt(0, "holder-b")
    assert store.receipts(0) == [ReceiptRow(height=0, holder_id="holder-a", wire=b"r0a'")]

    own = list(store.blocks())
    assert store.own_block_infos(2) == [
        (b.header.header.height, b.header.header.epoch, b.header.hash, len(b.encode()))
        for b in own[-2:]
    ]
