"""The chain writer: stored bit flips are caught before anything is signed over them, restarts
resume where the durable state ends, and re-sealing after a crash signs the same header.

Stored bytes are corrupted the way a disk would: through a separate sqlite3 connection to the
same file, behind the writer's back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import chain as chain_module
from ledger import domains, sealbox
from ledger.block import Header, SignedHeader, decode_header, sign_header
from ledger.certs import Certificate, DeviceKeys, FleetRoots
from ledger.chain import ChainWriter
from ledger.errors import IntegrityError, TimeOrderError, VerificationError
from ledger.identity import PublicKey, SigningKey
from ledger.store import Store
from ledger.verify import verify_chain

from .conftest import NOW_MS, Disk, flip_bit


class CountingKey:
    """A signing key that records the domain of every signature it makes."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.signed: list[bytes] = []

    @property
    def key_id(self) -> bytes:
        return self._key.key_id

    @property
    def public(self) -> PublicKey:
        return self._key.public

    def sign(self, domain: bytes, message: bytes) -> bytes:
        self.signed.append(domain)
        return self._key.sign(domain, message)


def _writer(store: Store, key: SigningKey | CountingKey) -> ChainWriter:
    return ChainWriter(store, key, key.public.device_id)  # type: ignore[arg-type]


def _record(writer: ChainWriter, n: int) -> None:
    for _ in range(n):
        seq = writer.next_seq
        tag = f"urn:epc:id:sgtin:0614141.107346.{seq}" if seq % 4 == 0 else None
        writer.record(NOW_MS + 1000 * seq, "temp_mc", -18_000 - seq, tag)  # after the fixture


def _verify(store: Store, cert: Certificate, roots: FleetRoots) -> int:
    keys = DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS)
    head, count = verify_chain(store.blocks(), keys.key_for)
    assert head == store.head()
    return count


@pytest.fixture
def disk(chain_store: Store) -> Iterator[Disk]:
    d = Disk(chain_store.path)
    yield d
    d.close()


def test_fixture_chain_verifies(chain_store: Store, cert: Certificate, roots: FleetRoots) -> None:
    assert _verify(chain_store, cert, roots) == 12


def test_every_bit_flip_in_a_pending_reading_is_caught_before_signing(
    chain_store: Store, disk: Disk, device_key: SigningKey
) -> None:
    key = CountingKey(device_key)
    writer = _writer(chain_store, key)
    _record(writer, 3)
    writer.flush()
    key.signed.clear()
    wire = chain_store.pending()[1].wire
    before = (chain_store.block_count(), chain_store.head(), chain_store.pending_count())
    undetected = 0
    total = len(wire) * 8
    for bit in range(total):
        disk.replace(wire, flip_bit(wire, bit))
        try:
            writer.seal()
        except IntegrityError:
            continue
        finally:
            disk.replace(flip_bit(wire, bit), wire)
        undetected += 1
    assert undetected == 0, f"undetected = {undetected} of {total}"
    assert key.signed == [], "something was signed over corrupted pending readings"
    assert (chain_store.block_count(), chain_store.head(), chain_store.pending_count()) == before
    assert writer.seal() is not None  # restored bytes seal normally
    assert key.signed == [domains.HEADER]


@pytest.mark.parametrize("bit", [0, 8 * 30 + 3, -8 * 64 + 5, -1])
def test_a_restarted_writer_refuses_tampered_pending_readings(
    chain_store: Store, device_key: SigningKey, bit: int
) -> None:
    writer = _writer(chain_store, device_key)
    _record(writer, 2)
    writer.flush()
    wire = chain_store.pending()[-1].wire
    path = chain_store.path
    chain_store.close()
    disk = Disk(path)
    disk.replace(wire, flip_bit(wire, bit % (8 * len(wire))))
    disk.close()
    key = CountingKey(device_key)
    with pytest.raises(IntegrityError):
        _open_and_seal(path, key)
    assert key.signed == []


def _open_and_seal(path: Path, key: CountingKey) -> None:
    with Store(path) as store:
        _writer(store, key).seal()


def test_every_bit_flip_in_the_head_blocks_readings_is_caught_before_the_next_header(
    chain_store: Store, disk: Disk, device_key: SigningKey
) -> None:
    key = CountingKey(device_key)
    writer = _writer(chain_store, key)
    _record(writer, 2)
    writer.flush()
    key.signed.clear()
    height = chain_store.block_count() - 1
    wires = chain_store.reading_wires(height)
    undetected = total = 0
    for wire in (wires[0], wires[-1]):
        for bit in range(len(wire) * 8):
            total += 1
            disk.replace(wire, flip_bit(wire, bit))
            try:
                writer.seal()
            except IntegrityError:
                continue
            finally:
                disk.replace(flip_bit(wire, bit), wire)
            undetected += 1
    assert undetected == 0, f"undetected = {undetected} of {total}"
    assert key.signed == []
    assert chain_store.block_count() == height + 1


def _head_body_offsets(wire: bytes) -> dict[str, int]:
    """Byte offsets (in the header wire) of the last byte of some header body fields."""
    body = decode_header(wire).body
    start = wire.index(body)
    end = start + len(body)
    return {
        "key-id": end - 1,
        "last-time": end - 11,  # last byte of the uint64 before key_id (c4 08 + 8 bytes)
        "first-time": end - 20,
        "merkle-root": end - 30,  # last byte of merkle_root, before count (1 byte)
        "prev-hash": start + 1 + 1 + 27 + 1 + 1 + 2,  # first byte of prev_hash
    }


@pytest.mark.parametrize("field", ["key-id", "last-time", "first-time", "merkle-root", "prev-hash"])
def test_a_bit_flip_in_the_stored_head_header_is_caught_before_signing(
    chain_store: Store, device_key: SigningKey, cert: Certificate, roots: FleetRoots, field: str
) -> None:
    """Extending a corrupted head would sign a prev_hash no honest header ever had."""
    writer = _writer(chain_store, device_key)
    _record(writer, 2)
    writer.flush()
    head = chain_store.head()
    assert head is not None
    path = chain_store.path
    chain_store.close()
    disk = Disk(path)
    disk.replace(head.wire, flip_bit(head.wire, 8 * _head_body_offsets(head.wire)[field]))
    disk.close()
    key = CountingKey(device_key)
    try:
        store = Store(path)  # detecting it on open is fine too
        _writer(store, key).seal()
    except IntegrityError:
        assert key.signed == []
        return
    with store, pytest.raises(VerificationError) as info:  # what a peer sees: the signed lie
        _verify(store, cert, roots)
    pytest.fail(
        f"sealed on top of a corrupted head ({field}); the chain now fails with {info.value!r}"
    )


def test_a_bit_flip_in_a_stored_header_hash_is_caught_before_signing(
    chain_store: Store, device_key: SigningKey
) -> None:
    """The history root of the next header must not come from a corrupted stored hash."""
    writer = _writer(chain_store, device_key)
    _record(writer, 2)
    writer.flush()
    first = chain_store.header_at(0)
    assert first is not None
    path = chain_store.path
    chain_store.close()
    disk = Disk(path)
    disk.replace(first.hash, flip_bit(first.hash, 0))
    disk.close()
    key = CountingKey(device_key)
    with pytest.raises(IntegrityError):
        _open_and_seal(path, key)
    assert key.signed == []


def test_restart_resumes_at_head_and_sequence(
    tmp_path: Path, device_key: SigningKey, cert: Certificate, roots: FleetRoots
) -> None:
    path = tmp_path / "restart.db"
    with Store(path) as store:
        writer = _writer(store, device_key)
        _record(writer, 5)
        first = writer.seal()
        assert first is not None and first.header.header.height == 0
        _record(writer, 3)
        writer.flush()  # durable, not sealed
        _record(writer, 2)  # signed in memory only: lost in the "crash"
        assert writer.pending_count() == 5
    with Store(path) as store:
        writer = _writer(store, device_key)
        assert writer.next_seq == 8  # after the durable high-water mark, not after seq 9
        assert writer.pending_count() == 3
        _record(writer, 1)
        block = writer.seal()
        assert block is not None
        assert block.header.header.height == 1
        assert block.header.header.prev_hash == first.header.hash
        assert [r.reading.seq for r in block.readings] == [5, 6, 7, 8]
        assert _verify(store, cert, roots) == 9


def test_reseal_after_a_crash_before_commit_signs_the_same_header(
    tmp_path: Path, device_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pending readings were durable; the process dies after signing the header, before the
    commit. The restarted writer signs the very same header: one height, one header, ever."""
    path = tmp_path / "crash.db"
    lost: list[SignedHeader] = []

    def sign_then_die(header: Header, key: SigningKey) -> SignedHeader:
        lost.append(sign_header(header, key))
        raise KeyboardInterrupt("power lost before commit")

    with Store(path) as store:
        writer = _writer(store, device_key)
        _record(writer, 4)
        writer.seal()
        _record(writer, 3)
        writer.flush()
        monkeypatch.setattr(chain_module, "sign_header", sign_then_die)
        with pytest.raises(KeyboardInterrupt):
            writer.seal()
        monkeypatch.undo()
        assert store.block_count() == 1 and store.pending_count() == 3
    with Store(path) as store:
        assert store.block_count() == 1 and store.pending_count() == 3
        again = _writer(store, device_key).seal()
    assert again is not None and len(lost) == 1
    assert again.header.wire == lost[0].wire


def test_seal_limits_and_empty_seal(
    chain_store: Store, device_key: SigningKey, cert: Certificate, roots: FleetRoots
) -> None:
    writer = _writer(chain_store, device_key)
    assert writer.seal() is None
    _record(writer, 5)
    assert writer.pending_count() == 5
    block = writer.seal(max_readings=2)
    assert block is not None and len(block.readings) == 2
    assert writer.pending_count() == 3
    block = writer.seal()
    assert block is not None and len(block.readings) == 3
    h = block.header.header
    assert (h.first_time_ms, h.last_time_ms) == (
        block.readings[0].reading.time_ms,
        block.readings[-1].reading.time_ms,
    )
    assert writer.pending_count() == 0
    assert _verify(chain_store, cert, roots) == 17


def test_memoised_header_verification_accepts_only_the_exact_bytes_and_key(
    chain_store: Store, device_key: SigningKey, other_device_key: SigningKey
) -> None:
    head = chain_store.head()
    assert head is not None
    head.verify(device_key.public, memo=True)
    head.verify(device_key.public, memo=True)  # a hit
    with pytest.raises(VerificationError):  # the same bytes under another key: still checked
        head.verify(other_device_key.public, memo=True)
    forged = decode_header(head.wire[:-1] + bytes([head.wire[-1] ^ 1]))  # last signature byte
    with pytest.raises(VerificationError):
        forged.verify(device_key.public, memo=True)
    with pytest.raises(VerificationError):  # a failure is never remembered as a success
        forged.verify(device_key.public, memo=True)


@pytest.mark.parametrize(
    ("header_len", "reading_lens"),
    [(0, []), (200, [120] * 15), (255, [255, 256]), (256, [1] * 16), (300, [65_535, 65_536])],
)
def test_block_wire_size_is_the_length_of_the_encoded_block(
    header_len: int, reading_lens: list[int]
) -> None:
    from ledger.block import block_wire_size, encode_block

    wire = encode_block(b"h" * header_len, [b"r" * n for n in reading_lens])
    assert block_wire_size(header_len, reading_lens) == len(wire)


def test_the_oldest_pending_reading_is_known_without_the_store(
    tmp_path: Path, device_key: SigningKey
) -> None:
    store = Store(tmp_path / "d.sqlite")
    writer = _writer(store, device_key)
    assert writer.oldest_pending() is None
    _record(writer, 3)  # buffered, not durable
    first = writer.oldest_pending()
    assert first is not None and first.reading.seq == 0
    writer.flush()
    _record(writer, 2)
    assert writer.oldest_pending() == first == store.pending(limit=1)[0]
    block = writer.seal(max_readings=4)  # seqs 0..3 sealed; 4 stays pending
    assert block is not None and len(block.readings) == 4
    oldest = writer.oldest_pending()
    assert oldest is not None and oldest.reading.seq == 4
    assert [oldest] == store.pending(limit=1)
    store.close()
    with Store(tmp_path / "d.sqlite") as again:  # a restarted writer knows it from the store
        reopened = _writer(again, device_key).oldest_pending()
        assert reopened is not None and reopened.wire == oldest.wire
        assert _writer(again, device_key).seal() is not None
        assert _writer(again, device_key).oldest_pending() is None


# --------------------------------------------------------------------------- time order


def _times(store: Store) -> list[tuple[str, int]]:
    return [(sr.reading.sensor, sr.reading.time_ms) for sr in store.pending()]


def test_a_reading_before_the_last_signed_time_is_refused_and_nothing_is_signed(
    tmp_path: Path, device_key: SigningKey
) -> None:
    with Store(tmp_path / "past.db") as store:
        writer = _writer(store, device_key)
        writer.record(NOW_MS, "temp_mc", 1)
        writer.record(NOW_MS + 60_000, "temp_mc", 2)
        with pytest.raises(TimeOrderError, match="60000 ms before the last signed"):
            writer.record(NOW_MS, "door.open", 0)
        assert (writer.next_seq, writer.last_time) == (2, NOW_MS + 60_000)
        writer.flush()
        assert _times(store) == [("temp_mc", NOW_MS), ("temp_mc", NOW_MS + 60_000)]


def test_a_burst_of_one_instant_is_signed_whole_and_its_slots_close_once_time_moves_on(
    tmp_path: Path, device_key: SigningKey
) -> None:
    with Store(tmp_path / "burst.db") as store:
        writer = _writer(store, device_key)
        t = NOW_MS
        for value in (19, 35, 45):  # one load.fibre_pct per fibre, all at one instant
            writer.record(t, "load.fibre_pct", value)
        writer.record(t, "door.open", 0)
        writer.record(t + 1, "temp_mc", 4)
        with pytest.raises(TimeOrderError):
            writer.record(t, "load.fibre_pct", 20)
        assert writer.next_seq == 5


def test_a_restarted_writer_never_re_signs_a_stored_slot_nor_the_past(
    tmp_path: Path, device_key: SigningKey
) -> None:
    path = tmp_path / "restart-time.db"
    t = NOW_MS + 120_000
    with Store(path) as store:
        writer = _writer(store, device_key)
        writer.record(NOW_MS, "temp_mc", 1)
        writer.record(t, "temp_mc", 2)
        writer.record(t, "rfid.in", 1, "urn:epc:id:sgtin:0614141.107346.1")
        assert writer.seal() is not None
        writer.record(t, "rfid.in", 2, "urn:epc:id:sgtin:0614141.107346.2")
        writer.flush()  # durable and pending: the slot is known from the store all the same
    with Store(path) as store:
        writer = _writer(store, device_key)
        assert writer.last_time == t
        refused = []
        for time_ms, sensor in [(NOW_MS, "temp_mc"), (t - 1, "door.open"), (t, "temp_mc")]:
            with pytest.raises(TimeOrderError) as err:
                writer.record(time_ms, sensor, 9)
            refused.append(str(err.value))
        with pytest.raises(TimeOrderError, match=r"rfid\.in at \d+ ms is already recorded"):
            writer.record(t, "rfid.in", 3)
        assert len(refused) == 3 and "already recorded" in refused[2]
        writer.record(t, "clock.jump_ms", -3_600_000)  # a slot of that instant not yet recorded
        writer.record(t + 1, "temp_mc", 3)
        writer.seal()
        times = [
            (sr.reading.sensor, sr.reading.time_ms) for b in store.blocks() for sr in b.readings
        ]
        assert times == [
            ("temp_mc", NOW_MS),
            ("temp_mc", t),
            ("rfid.in", t),
            ("rfid.in", t),
            ("clock.jump_ms", t),
            ("temp_mc", t + 1),
        ]


def test_a_private_writer_closes_the_whole_stored_instant_its_sensors_being_sealed(
    tmp_path: Path, device_key: SigningKey
) -> None:
    path = tmp_path / "private-time.db"
    owner = sealbox.public_key_of(bytes(range(32)))
    with Store(path) as store:
        writer = ChainWriter(store, device_key, device_key.public.device_id, owner_x25519=owner)
        writer.record(NOW_MS, "temp_mc", 1)
        writer.flush()
    with Store(path) as store:
        writer = ChainWriter(store, device_key, device_key.public.device_id, owner_x25519=owner)
        with pytest.raises(TimeOrderError, match="already recorded"):
            writer.record(NOW_MS, "door.open", 0)
        writer.record(NOW_MS + 1, "door.open", 0)
        assert writer.next_seq == 2


def test_resume_after_a_restore_reads_the_restored_last_time(
    tmp_path: Path, device_key: SigningKey
) -> None:
    with Store(tmp_path / "src.db") as src:
        writer = _writer(src, device_key)
        writer.record(NOW_MS + 5_000, "temp_mc", 1)
        block = writer.seal()
    assert block is not None
    with Store(tmp_path / "restored.db") as store:
        writer = _writer(store, device_key)
        assert writer.last_time is None
        store.commit_block(block)  # what a restore commits
        writer.resume(0)
        with pytest.raises(TimeOrderError):
            writer.record(NOW_MS, "temp_mc", 2)
        assert writer.last_time == NOW_MS + 5_000


@pytest.mark.parametrize("batch", [1, 2, 3, 64])
def test_the_store_reads_back_the_last_instant_whole_whatever_its_batch(
    tmp_path: Path, device_key: SigningKey, batch: int
) -> None:
    with Store(tmp_path / f"slot-{batch}.db") as store:
        assert store.last_time_slot(batch) is None
        writer = _writer(store, device_key)
        writer.record(NOW_MS, "temp_mc", 1)
        writer.seal()
        for i in range(5):  # a burst: five items stocked at one instant, sealed and pending
            writer.record(NOW_MS + 1, "rfid.in", i + 1)
            if i == 2:
                writer.seal()
        writer.flush()
        slot = store.last_time_slot(batch)
        assert slot is not None
        t, readings = slot
        assert (t, [r.reading.seq for r in readings]) == (NOW_MS + 1, [1, 2, 3, 4, 5])
