"""Epoch records (ledger/epoch.py): encoding, the documented vector, named mutations, every
single-bit flip, chain verification across an epoch change, and the store's restore methods."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import msgpack
import pytest

from ledger.block import Block, SignedHeader
from ledger.certs import DeviceKeys, FleetRoots
from ledger.epoch import (
    MAX_WIRE,
    EpochRecord,
    SignedEpoch,
    decode_epoch,
    index_epochs,
    sign_epoch,
)
from ledger.errors import (
    ChainError,
    DecodeError,
    ForkError,
    SignatureError,
    UsageError,
    VerificationError,
)
from ledger.evidence import is_fork, make_evidence, verify_evidence
from ledger.identity import SigningKey
from ledger.store import Store
from ledger.verify import verify_chain, verify_headers
from tests.ledger.conftest import NOW_MS, SealChain, flip_bit, sample_readings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"  # section 6.5
VECTOR_KEY = SigningKey(hashlib.sha256(b"edgefleet-restore-vector").digest())
VECTOR_TIME = 1_767_225_600_000


def _record(key: SigningKey, **changes: object) -> EpochRecord:
    fields: dict[str, object] = {
        "device_id": key.public.device_id,
        "new_epoch": 1,
        "prev_epoch": 0,
        "last_height": 41,
        "last_hash": bytes(range(32)),
        "time_ms": VECTOR_TIME,
    }
    fields.update(changes)
    return EpochRecord(**fields)  # type: ignore[arg-type]


def test_the_documented_vector_is_what_the_code_signs() -> None:
    se = sign_epoch(_record(VECTOR_KEY), VECTOR_KEY)
    text = DOCS.read_text()
    documented = {
        m.group(1): m.group(2).replace(" ", "")
        for m in re.finditer(r"^- (body|wire): `([0-9a-f ]+)`", text, re.M)
    }
    assert documented == {"body": se.body.hex(), "wire": se.wire.hex()}
    assert VECTOR_KEY.public.device_id in text
    back = decode_epoch(se.wire)
    assert back == se
    back.verify(VECTOR_KEY.public)
    assert msgpack.packb(msgpack.unpackb(se.body), use_bin_type=True) == se.body


def _raw(*fields: object) -> bytes:
    """An envelope around arbitrary body fields, signed by the vector key."""
    body = msgpack.packb(list(fields), use_bin_type=True)
    return bytes(msgpack.packb([body, bytes(64)], use_bin_type=True))


D = VECTOR_KEY.public.device_id
H = bytes(32)
_MUTATIONS = [
    ("format-2", _raw(2, D, 1, 0, 41, H, 1), "format"),
    ("new-epoch-not-above-prev", _raw(1, D, 1, 1, 41, H, 1), "new_epoch"),
    ("epoch-over-32-bits", _raw(1, D, 2**32, 0, 41, H, 1), "new_epoch"),
    ("short-hash", _raw(1, D, 1, 0, 41, H[:31], 1), "last_hash"),
    ("not-a-device-id", _raw(1, "ef+#", 1, 0, 41, H, 1), "device_id"),
    ("six-fields", _raw(1, D, 1, 0, 41, H), "array of 7"),
    ("height-as-string", _raw(1, D, 1, 0, "41", H, 1), "last_height"),
    ("negative-time", _raw(1, D, 1, 0, 41, H, -1), "time_ms"),
    ("trailing-garbage", _raw(1, D, 1, 0, 41, H, 1) + b"\x00", "trailing|extra"),
    ("oversized", bytes(MAX_WIRE + 1), "at most"),
]


@pytest.mark.parametrize(("wire", "reason"), [pytest.param(w, r, id=n) for n, w, r in _MUTATIONS])
def test_named_mutations_are_rejected(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_epoch(wire)


def test_every_single_bit_flip_is_refused() -> None:
    se = sign_epoch(_record(VECTOR_KEY), VECTOR_KEY)
    accepted = []
    for bit in range(len(se.wire) * 8):
        try:
            decode_epoch(flip_bit(se.wire, bit)).verify(VECTOR_KEY.public)
        except (DecodeError, SignatureError):
            continue
        accepted.append(bit)
    assert accepted == [], f"accepted = {len(accepted)} of {len(se.wire) * 8} flips"


def test_constructor_refuses_what_a_decoder_would() -> None:
    with pytest.raises(UsageError, match="new_epoch"):
        _record(VECTOR_KEY, new_epoch=0)
    with pytest.raises(UsageError, match="last_hash"):
        _record(VECTOR_KEY, last_hash=b"x")


def test_two_different_records_for_one_epoch_are_refused() -> None:
    a = sign_epoch(_record(VECTOR_KEY), VECTOR_KEY)
    b = sign_epoch(_record(VECTOR_KEY, last_height=40), VECTOR_KEY)
    assert index_epochs([a, a], D) == {1: a}
    with pytest.raises(VerificationError, match="two different records"):
        index_epochs([a, b], D)


# --------------------------------------------------------------------------- across an epoch


def _two_epochs(
    seal_chain: SealChain, key: SigningKey, device_id: str
) -> tuple[list[Block], SignedEpoch]:
    """Heights 0..2 in epoch 0, then 3..4 in epoch 1 (linked to height 2 by a record)."""
    first = sample_readings(device_id, [2, 2, 2])
    second = sample_readings(device_id, [2, 2], epoch=1, first_seq=6)
    blocks = seal_chain(key, first + second)
    last = blocks[2].header
    se = sign_epoch(EpochRecord(device_id, 1, 0, 2, last.hash, NOW_MS), key)
    return blocks, se


def test_a_chain_verifies_across_an_epoch_change_only_with_its_record(
    seal_chain: SealChain,
    device_key: SigningKey,
    other_device_key: SigningKey,
    device_keys: DeviceKeys,
) -> None:
    dev = device_key.public.device_id
    blocks, se = _two_epochs(seal_chain, device_key, dev)
    head, readings = verify_chain(blocks, device_keys.key_for, {1: se})
    assert head is not None and (head.header.epoch, head.header.height, readings) == (1, 4, 10)
    assert verify_headers([b.header for b in blocks], device_keys.key_for, {1: se}) == head
    with pytest.raises(ChainError, match="epoch record opening epoch 1"):
        verify_chain(blocks, device_keys.key_for)
    wrong_hash = sign_epoch(EpochRecord(dev, 1, 0, 2, bytes(32), NOW_MS), device_key)
    with pytest.raises(ChainError, match="names the last header"):
        verify_chain(blocks, device_keys.key_for, {1: wrong_hash})
    wrong_height = sign_epoch(EpochRecord(dev, 1, 0, 1, blocks[1].header.hash, NOW_MS), device_key)
    with pytest.raises(ChainError, match="names the last header"):
        verify_headers([b.header for b in blocks], device_keys.key_for, {1: wrong_height})
    forged = sign_epoch(se.record, other_device_key)
    with pytest.raises(SignatureError):
        verify_chain(blocks, device_keys.key_for, {1: forged})


def test_the_same_height_in_two_epochs_is_not_a_fork(
    seal_chain: SealChain, device_key: SigningKey, cert: object, roots: FleetRoots
) -> None:
    dev = device_key.public.device_id
    old = seal_chain(device_key, sample_readings(dev, [1, 1, 1, 1]))  # epoch 0 up to 3
    blocks, _ = _two_epochs(seal_chain, device_key, dev)
    a: SignedHeader = old[3].header
    b: SignedHeader = blocks[3].header  # epoch 1 at height 3
    assert a.header.height == b.header.height and a.hash != b.hash
    assert not is_fork(a, b)
    evidence = make_evidence(cert.wire, (), a, b).encode()  # type: ignore[attr-defined]
    with pytest.raises(ForkError, match="position"):
        verify_evidence(evidence, roots)


# --------------------------------------------------------------------------- the store


def test_restored_blocks_commit_in_one_transaction_or_not_at_all(
    tmp_path: Path, seal_chain: SealChain, device_key: SigningKey
) -> None:
    dev = device_key.public.device_id
    blocks, se = _two_epochs(seal_chain, device_key, dev)
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(ChainError):
            store.commit_restored([blocks[0], blocks[2]])  # a gap: nothing is kept
        assert store.block_count() == 0 and store.head() is None and store.last_seq() is None
        store.commit_restored(blocks[:3])
        assert store.put_epoch(se) and not store.put_epoch(se)
        store.commit_restored(blocks[3:])
        assert store.head() == blocks[-1].header and store.last_seq() == 9
    with Store(tmp_path / "s.sqlite") as again:  # reopened: the history was recorded too
        assert again.history().root() == _root([b.header.hash for b in blocks])
        assert again.epoch_wires(dev) == [se.wire]


def test_superseded_peer_headers_move_aside(
    tmp_path: Path, seal_chain: SealChain, device_key: SigningKey
) -> None:
    dev = device_key.public.device_id
    old = seal_chain(device_key, sample_readings(dev, [1, 1, 1, 1, 1]))
    with Store(tmp_path / "p.sqlite") as store:
        store.put_peer_headers([b.header for b in old])
        assert store.supersede_peer_headers(dev, 2, 1) == 2
        assert [h.header.height for h in store.peer_headers(dev)] == [0, 1, 2]
        assert store.superseded_header_wires(dev) == [old[3].header.wire, old[4].header.wire]


def _root(hashes: list[bytes]) -> bytes:
    from ledger.history import CompactRange

    tree = CompactRange()
    for h in hashes:
        tree.append(h)
    return tree.root()
