"""The chain writer: a device's own signing path, from reading fields to durable sealed blocks.

``record`` signs a reading with the next sequence number (in memory); ``flush`` makes the
buffered readings durable as pending; ``seal`` turns pending readings into a block:

1. the pending readings are read back from the store and their leaf hashes compared with the
   hashes of the bytes that were signed (kept in memory; re-verified by signature after a
   restart), and the stored readings of the previous block are re-hashed against its header's
   Merkle root, so a flipped bit on disk is detected and never signed over;
2. the header is built from the stored bytes and signed;
3. the block is committed atomically and durably; only then is it returned for publishing.

A restart resumes at the stored head and sequence high-water mark. Re-sealing the same pending
readings after a crash before commit gives the same header bytes (Ed25519 is deterministic), so a
header that was never durable can never become a second, different header at one height.
"""

from __future__ import annotations

from ledger.block import Block, build_header, sign_header
from ledger.errors import IntegrityError, SignatureError
from ledger.identity import SigningKey
from ledger.merkle import root_from_leaf_hashes
from ledger.reading import Reading, SignedReading, leaf_hash, sign_reading
from ledger.store import Store


class ChainWriter:
    def __init__(self, store: Store, key: SigningKey, device_id: str, epoch: int = 0) -> None:
        self.store = store
        self.key = key
        self.device_id = device_id
        self.epoch = epoch
        last = store.last_seq()
        self._next_seq = 0 if last is None else last + 1
        self._buffer: list[SignedReading] = []
        # Leaf hashes of durable pending readings, computed from the bytes we signed.
        self._pending_leaves: dict[int, bytes] = {}
        for sr in store.pending():
            try:
                sr.verify(key.public)
            except SignatureError:
                raise IntegrityError(
                    f"{store.path}: pending reading seq {sr.reading.seq} fails its signature "
                    "(stored bytes changed)"
                ) from None
            self._pending_leaves[sr.reading.seq] = sr.leaf_hash

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def record(
        self, time_ms: int, sensor: str, value: int, tag: str | None = None, text: str | None = None
    ) -> SignedReading:
        """Sign one reading (not yet durable: call ``flush``)."""
        reading = Reading(
            self.device_id, self.epoch, self._next_seq, time_ms, sensor, value, tag, text
        )
        signed = sign_reading(reading, self.key)
        self._buffer.append(signed)
        self._next_seq += 1
        return signed

    def flush(self) -> int:
        """Make buffered readings durable (one transaction). Returns how many were written."""
        buffered = self._buffer
        if not buffered:
            return 0
        self.store.append_pending(buffered)
        for sr in buffered:
            self._pending_leaves[sr.reading.seq] = sr.leaf_hash
        self._buffer = []
        return len(buffered)

    def pending_count(self) -> int:
        return len(self._pending_leaves) + len(self._buffer)

    def seal(self, max_readings: int = 4096) -> Block | None:
        """Seal up to ``max_readings`` pending readings into a durable block (None if none)."""
        self.flush()
        stored = self.store.pending(limit=max_readings)
        if not stored:
            return None
        for sr in stored:
            if self._pending_leaves.get(sr.reading.seq) != sr.leaf_hash:
                raise IntegrityError(
                    f"{self.store.path}: pending reading seq {sr.reading.seq} "
                    "changed on disk since it was signed; refusing to seal"
                )
        prev = self.store.head()
        if prev is not None:
            self._check_stored_block(prev.header.height, prev.header.merkle_root)
        header = build_header(
            device_id=self.device_id,
            epoch=self.epoch,
            prev=prev,
            history_root=self.store.history().root(),
            readings=stored,
            key_id=self.key.key_id,
        )
        block = Block(sign_header(header, self.key), tuple(stored))
        self.store.commit_block(block)
        for sr in stored:
            del self._pending_leaves[sr.reading.seq]
        return block

    def _check_stored_block(self, height: int, merkle_root: bytes) -> None:
        root = root_from_leaf_hashes([leaf_hash(w) for w in self.store.reading_wires(height)])
        if root != merkle_root:
            raise IntegrityError(
                f"{self.store.path}: stored readings of block {height} no longer "
                f"hash to its Merkle root; refusing to extend the chain"
            )
