"""Verification of blocks and chains. Every failure is a typed VerificationError that names what
was expected and what was found; nothing here returns False.

Epochs (ledger/epoch.py): within an epoch each header links to the previous one (height + 1,
``prev_hash``, same epoch). A header of epoch e+1 may follow the header (e, h, hash) only when a
valid epoch record ``[.., new_epoch=e+1, prev_epoch=e, last_height=h, last_hash=hash, ..]`` names
it; then the usual rules hold across the change (height h+1, ``prev_hash = hash``, history root
over heights 0..h). Records are signed by the key that signs the first header of the new epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ledger.block import ZERO_HASH, Block, SignedHeader
from ledger.epoch import EpochIndex, SignedEpoch
from ledger.errors import ChainError, MerkleRootError, SequenceError, VerificationError
from ledger.history import CompactRange
from ledger.identity import PublicKey
from ledger.merkle import root_from_leaf_hashes
from ledger.reading import check_sequence

KeyFor = Callable[[bytes, int], PublicKey]  # (key_id, height) -> key, e.g. DeviceKeys.key_for


_NO_EPOCHS: EpochIndex = {}


def verify_link(
    prev: SignedHeader | None, new: SignedHeader, epochs: EpochIndex = _NO_EPOCHS
) -> None:
    """``new`` directly extends ``prev`` (or is a first block when ``prev`` is None).

    An epoch change is accepted only when ``epochs`` (records by ``new_epoch``) holds a record
    naming ``prev`` as the last header of the previous epoch. The record's signature is the
    caller's to check (``verify_epoch_record``), once, when it accepts the record."""
    h = new.header
    if prev is None:
        if h.height != 0 or h.prev_hash != ZERO_HASH:
            raise ChainError("first block", "height 0 with zero prev_hash", f"height {h.height}")
        return
    p = prev.header
    if h.device_id != p.device_id:
        raise ChainError("header device", p.device_id, h.device_id)
    if h.height != p.height + 1:
        raise ChainError("header height", p.height + 1, h.height)
    if h.epoch != p.epoch:
        _check_epoch_change(prev, new, epochs.get(h.epoch))
    if h.prev_hash != prev.hash:
        raise ChainError(f"prev_hash at height {h.height}", prev.hash, h.prev_hash)


def _check_epoch_change(prev: SignedHeader, new: SignedHeader, se: SignedEpoch | None) -> None:
    p, h = prev.header, new.header
    where = f"epoch change at height {h.height}"
    if se is None:
        raise ChainError(f"{where}: an epoch record opening epoch {h.epoch}", p.epoch, h.epoch)
    r = se.record
    if r.device_id != h.device_id:
        raise ChainError(f"{where}: record device", h.device_id, r.device_id)
    if (r.prev_epoch, r.new_epoch) != (p.epoch, h.epoch):
        raise ChainError(
            f"{where}: record epochs", f"{p.epoch}->{h.epoch}", f"{r.prev_epoch}->{r.new_epoch}"
        )
    if r.last_height != p.height or r.last_hash != prev.hash:
        raise ChainError(
            f"{where}: record names the last header",
            f"{p.height}/{prev.hash.hex()[:16]}",
            f"{r.last_height}/{r.last_hash.hex()[:16]}",
        )


def verify_epoch_record(se: SignedEpoch, key_for: KeyFor, key_id: bytes) -> None:
    """The record's signature under the key that signs its first height (named ``key_id`` by
    the first header of the new epoch, or the key in force there)."""
    se.verify(key_for(key_id, se.record.first_height))


def verify_block(block: Block, key: PublicKey, *, after_seq: int | None = None) -> None:
    """Signature of the header and of every reading, reading fields, order, count, times, root."""
    sh = block.header
    h = sh.header
    where = f"block {h.device_id}@{h.height}"
    if h.key_id != key.key_id:
        raise VerificationError(f"{where}: header key id", key.key_id.hex(), h.key_id.hex())
    sh.verify(key)
    readings = block.readings
    if len(readings) != h.count:
        raise VerificationError(f"{where}: reading count", h.count, len(readings))
    for sr in readings:
        r = sr.reading
        if r.device_id != h.device_id or r.epoch != h.epoch:
            raise VerificationError(
                f"{where}: reading seq {r.seq} belongs elsewhere",
                f"{h.device_id}/{h.epoch}",
                f"{r.device_id}/{r.epoch}",
            )
    check_sequence(list(readings), after_seq, where)
    if readings[0].reading.time_ms != h.first_time_ms:
        raise VerificationError(
            f"{where}: first_time_ms", h.first_time_ms, readings[0].reading.time_ms
        )
    if readings[-1].reading.time_ms != h.last_time_ms:
        raise VerificationError(
            f"{where}: last_time_ms", h.last_time_ms, readings[-1].reading.time_ms
        )
    root = root_from_leaf_hashes([sr.leaf_hash for sr in readings])
    if root != h.merkle_root:
        raise MerkleRootError(f"{where}: Merkle root over the readings", h.merkle_root, root)
    for sr in readings:
        sr.verify(key)


def verify_chain(
    blocks: Iterable[Block], key_for: KeyFor, epochs: EpochIndex = _NO_EPOCHS
) -> tuple[SignedHeader | None, int]:
    """Verify a whole chain from height 0: links, history roots, blocks, sequence continuity,
    and each epoch change against its record in ``epochs`` (signature included).

    Returns the head and the number of readings verified.
    """
    prev: SignedHeader | None = None
    history = CompactRange()
    last_seq: int | None = None
    count = 0
    for block in blocks:
        sh = block.header
        _link(prev, sh, key_for, epochs)
        expected = history.root()
        if sh.header.history_root != expected:
            raise ChainError(
                f"history_root at height {sh.header.height}", expected, sh.header.history_root
            )
        verify_block(block, key_for(sh.header.key_id, sh.header.height), after_seq=last_seq)
        history.append(sh.hash)
        last_seq = block.readings[-1].reading.seq
        count += len(block.readings)
        prev = sh
    return prev, count


def verify_headers(
    headers: Iterable[SignedHeader], key_for: KeyFor, epochs: EpochIndex = _NO_EPOCHS
) -> SignedHeader | None:
    """Verify a header-only chain from height 0 (what a peer holds without bodies)."""
    prev: SignedHeader | None = None
    history = CompactRange()
    for sh in headers:
        _link(prev, sh, key_for, epochs)
        if sh.header.history_root != history.root():
            raise ChainError(
                f"history_root at height {sh.header.height}", history.root(), sh.header.history_root
            )
        sh.verify(key_for(sh.header.key_id, sh.header.height))
        history.append(sh.hash)
        prev = sh
    return prev


def _link(prev: SignedHeader | None, sh: SignedHeader, key_for: KeyFor, epochs: EpochIndex) -> None:
    verify_link(prev, sh, epochs)
    if prev is not None and prev.header.epoch != sh.header.epoch:
        verify_epoch_record(epochs[sh.header.epoch], key_for, sh.header.key_id)


def check_times(prev_last_ms: int | None, first_ms: int, skew_ms: int) -> bool:
    """True when times run backwards by more than ``skew_ms``: flagged, never used to reorder."""
    return prev_last_ms is not None and first_ms + skew_ms < prev_last_ms


__all__ = [
    "KeyFor",
    "SequenceError",
    "check_times",
    "verify_block",
    "verify_chain",
    "verify_epoch_record",
    "verify_headers",
    "verify_link",
]
