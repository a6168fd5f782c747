"""The chain writer: a device's own signing path, from reading fields to durable sealed blocks.

``record`` signs a reading with the next sequence number (in memory); ``flush`` makes buffered
readings durable as pending; ``seal`` turns pending (and still buffered) readings into a block in
one durable transaction, which it opens with ``Store.sealing`` and reads through (the store never
calls back into the writer):

1. the readings are stored, then read back *as stored* and compared byte for byte with what was
   signed (after a restart, pending readings are re-verified by signature instead), and the
   stored readings of the previous block are re-hashed against its header's Merkle root, so a
   flipped bit on disk is detected and never signed over;
2. the header is built over the stored bytes and signed;
3. the block is committed in the same transaction; only then is it returned for publishing.

A writer given the owner's X25519 public key (a private site's device: the key its enrollment
certificate names) seals the content of every reading it records to that key before signing
(reading format 2, docs/PRIVATE.md); the pending/seal path only needs seq, time and the wire
bytes, so it is the same for both formats.

Time only moves forward (docs/PROTOCOL.md section 5): ``record`` refuses, with
``TimeOrderError`` and nothing signed, a reading whose time is before the last signed reading's,
and one in a time slot already recorded. A *time slot* is one sensor at one instant, (sensor,
time_ms); a model emits a burst of several readings of one sensor at one instant (one
``load.fibre_pct`` per fibre, one ``rfid.in`` per item stocked together), always in one step and
one batch, so a slot stays open while this writer signs its burst and is closed to it once the
time moves on. At open the writer reads the last signed time back from the store and takes
every slot of that instant already stored as recorded (for sealed readings, whose sensors it
cannot read, the whole instant): a restart never signs the past again, and a caller that replays
samples from an earlier point is refused reading by reading. The caller decides what a refusal
means (the device runtime skips the sample and logs it).

A restart resumes at the stored head and sequence high-water mark. A header signed by a seal
that crashed before its commit was never durable and never published, so the different header
signed at that height after the restart is not a fork: nobody ever saw the first.
"""

from __future__ import annotations

import hashlib

from ledger import domains
from ledger.block import Block, SignedHeader, build_header, sign_header
from ledger.errors import IntegrityError, SignatureError, TimeOrderError
from ledger.identity import SigningKey
from ledger.merkle import leaf_hash, root_from_leaf_hashes
from ledger.reading import Reading, SignedReading, seal_reading, sign_reading
from ledger.sealbox import check_public_key
from ledger.store import PendingRow, SealTransaction, Store


class ChainWriter:
    def __init__(
        self,
        store: Store,
        key: SigningKey,
        device_id: str,
        epoch: int | None = None,
        *,
        owner_x25519: bytes | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.device_id = device_id
        head = store.head()
        # Default: the stored head's epoch (a device that opened a new epoch keeps signing in it).
        self.epoch = epoch if epoch is not None else (0 if head is None else head.header.epoch)
        # A malformed key is refused here, not at the first reading.
        self.owner_x25519 = None if owner_x25519 is None else check_public_key(owner_x25519)
        last = store.last_seq()
        self._next_seq = 0 if last is None else last + 1
        self._buffer: list[SignedReading] = []
        self._load_time_slot()
        # Durable pending readings, as signed: what the stored bytes must still equal.
        self._pending: list[SignedReading] = store.pending()
        for sr in self._pending:
            try:
                sr.verify(key.public)
            except SignatureError:
                raise IntegrityError(
                    f"{store.path}: pending reading seq {sr.reading.seq} fails its signature "
                    "(stored bytes changed)"
                ) from None

    def resume(self, epoch: int) -> None:
        """Continue after the store's head in ``epoch``, once a restore committed the blocks it
        fetched from peers (agent/fleet/restore_device.py): the next reading takes the stored
        sequence
        high-water mark + 1. Only while nothing is buffered or pending."""
        if self._buffer or self._pending:
            raise IntegrityError(f"{self.store.path}: cannot resume a writer holding readings")
        last = self.store.last_seq()
        self._next_seq = 0 if last is None else last + 1
        self.epoch = epoch
        self._load_time_slot()

    def _load_time_slot(self) -> None:
        """The last signed time and the slots of that instant already stored (see the module
        docstring): None for ``_recorded`` means every slot of it, sensors unknown."""
        slot = self.store.last_time_slot()
        self._last_time: int | None = None
        self._recorded: frozenset[str] | None = frozenset()
        if slot is not None:
            self._last_time, readings = slot
            if any(sr.private for sr in readings):
                self._recorded = None
            else:
                self._recorded = frozenset(sr.reading.sensor for sr in readings)

    @property
    def last_time(self) -> int | None:
        """time_ms of the last signed reading (stored or signed by this writer); None: none."""
        return self._last_time

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def record(
        self, time_ms: int, sensor: str, value: int, tag: str | None = None, text: str | None = None
    ) -> SignedReading:
        """Sign one reading, sealed to the owner when the writer has one (not yet durable: call
        ``flush`` or ``seal``). Raises ``TimeOrderError``, signing nothing, for a time before
        the last signed reading's or a time slot already recorded (module docstring)."""
        last = self._last_time
        if last is not None and time_ms <= last:
            if time_ms < last:
                raise TimeOrderError(
                    f"{self.store.path}: reading {sensor} at {time_ms} ms is {last - time_ms} ms "
                    f"before the last signed reading's time {last} ms; not signed"
                )
            recorded = self._recorded
            if recorded is None or sensor in recorded:
                raise TimeOrderError(
                    f"{self.store.path}: time slot {sensor} at {time_ms} ms is already "
                    "recorded; not signed again"
                )
        reading = Reading(
            self.device_id, self.epoch, self._next_seq, time_ms, sensor, value, tag, text
        )
        owner = self.owner_x25519
        if owner is None:
            signed = sign_reading(reading, self.key)
        else:
            esk = _ephemeral_secret(self.key, owner, reading)
            signed = sign_reading(seal_reading(reading, owner, ephemeral_secret=esk), self.key)
        self._buffer.append(signed)
        self._next_seq += 1
        if last is None or time_ms > last:
            self._last_time, self._recorded = time_ms, frozenset()
        return signed

    def flush(self) -> int:
        """Make buffered readings durable (one transaction). Returns how many were written."""
        buffered = self._buffer
        if not buffered:
            return 0
        self.store.append_pending(buffered)
        self._pending.extend(buffered)
        self._buffer = []
        return len(buffered)

    def pending_count(self) -> int:
        return len(self._pending) + len(self._buffer)

    def oldest_pending(self) -> SignedReading | None:
        """The oldest reading not sealed yet (durable or buffered), None when there is none;
        from memory, without asking the store."""
        if self._pending:
            return self._pending[0]
        return self._buffer[0] if self._buffer else None

    def seal(self, max_readings: int = 4096) -> Block | None:
        """Seal up to ``max_readings`` pending readings into a durable block (None if none)."""
        if len(self._pending) + len(self._buffer) > max_readings:
            self.flush()  # what does not fit stays durable as pending
        new, expected = self._buffer, self._pending + self._buffer
        with self.store.sealing(new) as tx:
            rows = tx.pending(max_readings)
            block = self._make_block(tx, rows, expected) if rows else None
            if block is not None:
                tx.append(block)
        # Committed: only now may the block leave (the caller publishes it).
        self._pending.extend(new)
        self._buffer = []
        if block is not None:
            self._pending = self._pending[len(block.readings) :]
        return block

    def _make_block(
        self, tx: SealTransaction, rows: list[PendingRow], expected: list[SignedReading]
    ) -> Block:
        """Check the pending readings as stored against what was signed, check the previous
        block as stored against its Merkle root, then build and sign the header over them."""
        for (seq, wire), sr in zip(rows, expected, strict=False):
            if seq != sr.reading.seq or wire != sr.wire:
                raise IntegrityError(
                    f"{self.store.path}: pending reading seq {seq} changed on disk since it was "
                    "signed; refusing to seal"
                )
        if len(rows) > len(expected):
            raise IntegrityError(f"{self.store.path}: unexpected pending readings on disk")
        readings = expected[: len(rows)]
        prev = tx.head
        if prev is not None:
            self._check_stored_block(tx.reading_wires(prev.header.height), prev)
        header = build_header(
            device_id=self.device_id,
            epoch=self.epoch,
            prev=prev,
            history_root=tx.history_root(),
            readings=readings,
            key_id=self.key.key_id,
        )
        return Block(sign_header(header, self.key), tuple(readings))

    def _check_stored_block(self, wires: list[bytes], prev: SignedHeader) -> None:
        root = root_from_leaf_hashes([leaf_hash(w) for w in wires])
        if root != prev.header.merkle_root:
            raise IntegrityError(
                f"{self.store.path}: stored readings of block {prev.header.height} no longer "
                "hash to its Merkle root; refusing to extend the chain"
            )


_SEAL_EPHEMERAL = domains.SEAL_EPHEMERAL


def _ephemeral_secret(key: SigningKey, owner: bytes, reading: Reading) -> bytes:
    """The ephemeral X25519 secret of a sealed reading, derived (SIV-style) from the device's
    secret seed, the owner key, the position and the content: secret to all but the device,
    never the same for two different contents (no nonce reuse, whatever a crash replays), and
    the same for the same reading, so that a seeded simulation reproduces its bytes."""
    position = reading.epoch.to_bytes(8, "big") + reading.seq.to_bytes(8, "big")
    content = hashlib.sha256(reading.encode_content()).digest()
    return hashlib.blake2b(
        _SEAL_EPHEMERAL + owner + position + content, key=key.seed, digest_size=32
    ).digest()
