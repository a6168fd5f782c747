"""Shared ledger fixtures: deterministic keys, a fleet root, certificates and small chains.

Keys come from fixed seeds so every byte the tests see is reproducible. ``seal_chain`` builds a
chain in memory from readings (the reference a test can tamper with); ``chain_store`` builds one
through the real ``ChainWriter`` on a SQLite file in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from ledger.block import Block, build_header, sign_header
from ledger.certs import Certificate, DeviceKeys, FleetRoots, issue_certificate
from ledger.chain import ChainWriter
from ledger.history import CompactRange
from ledger.identity import SigningKey
from ledger.reading import Reading, SignedReading, sign_reading
from ledger.store import Store

NOW_MS = 1_700_000_000_000
NOT_BEFORE_MS = NOW_MS - 86_400_000
NOT_AFTER_MS = NOW_MS + 365 * 86_400_000

SealChain = Callable[[SigningKey | Sequence[SigningKey], Sequence[Sequence[Reading]]], list[Block]]


class Disk:
    """A second connection to a store's SQLite file: the disk that flips bits behind its back.

    It finds bytes wherever the schema keeps them (any BLOB column of any table), so tests do not
    depend on the store's table layout.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA synchronous=OFF")
        self._columns = [
            (table, col[1])
            for (table,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            for col in self.db.execute(f'PRAGMA table_info("{table}")')
            if str(col[2]).upper() == "BLOB"
        ]
        self._last: tuple[str, str] | None = None

    def replace(self, old: bytes, new: bytes) -> None:
        """Replace the one stored value equal to ``old`` by ``new``."""
        places = [self._last] if self._last else []
        for table, column in [*places, *self._columns]:
            cur = self.db.execute(
                f'UPDATE "{table}" SET "{column}"=? WHERE "{column}"=?', (new, old)
            )
            if cur.rowcount:
                assert cur.rowcount == 1, f"{cur.rowcount} rows of {table}.{column} hold it"
                self._last = (table, column)
                return
        raise AssertionError(f"no stored value equals {old[:16].hex()}…")

    def close(self) -> None:
        self.db.close()


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"edgefleet-tests/" + label.encode()).digest())


@pytest.fixture(scope="session")
def authority() -> SigningKey:
    """The fleet authority (the only root in ``roots``)."""
    return _key("authority")


@pytest.fixture(scope="session")
def rogue_authority() -> SigningKey:
    """A key that is not a fleet root but signs like one."""
    return _key("rogue-authority")


@pytest.fixture(scope="session")
def roots(authority: SigningKey) -> FleetRoots:
    return FleetRoots.of(authority.public)


@pytest.fixture(scope="session")
def device_key() -> SigningKey:
    return _key("device-1")


@pytest.fixture(scope="session")
def next_device_key() -> SigningKey:
    """The key ``device_key``'s device rotates to."""
    return _key("device-1-rotated")


@pytest.fixture(scope="session")
def other_device_key() -> SigningKey:
    """A second, independently enrolled device."""
    return _key("device-2")


def _issue(authority: SigningKey, key: SigningKey, serial: int) -> Certificate:
    return issue_certificate(
        authority,
        key.public,
        kind="refrigerator",
        model="RF-200",
        site="store-12",
        owner_x25519=None,
        not_before_ms=NOT_BEFORE_MS,
        not_after_ms=NOT_AFTER_MS,
        serial=serial,
    )


@pytest.fixture(scope="session")
def cert(authority: SigningKey, device_key: SigningKey) -> Certificate:
    return _issue(authority, device_key, 1)


@pytest.fixture(scope="session")
def other_cert(authority: SigningKey, other_device_key: SigningKey) -> Certificate:
    return _issue(authority, other_device_key, 2)


@pytest.fixture(scope="session")
def device_keys(cert: Certificate, roots: FleetRoots) -> DeviceKeys:
    return DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS)


def seal_chain_impl(
    keys: SigningKey | Sequence[SigningKey], blocks: Sequence[Sequence[Reading]]
) -> list[Block]:
    """Sign and seal ``blocks`` of readings into a chain from height 0 (no store involved).

    ``keys`` is one key, or one key per height (a chain across a key rotation).
    """
    out: list[Block] = []
    history = CompactRange()
    prev = None
    for height, readings in enumerate(blocks):
        key = keys if isinstance(keys, SigningKey) else keys[height]
        signed: list[SignedReading] = [sign_reading(r, key) for r in readings]
        r0 = readings[0]
        header = build_header(
            device_id=r0.device_id,
            epoch=r0.epoch,
            prev=prev,
            history_root=history.root(),
            readings=signed,
            key_id=key.key_id,
        )
        sh = sign_header(header, key)
        out.append(Block(sh, tuple(signed)))
        history.append(sh.hash)
        prev = sh
    return out


@pytest.fixture(scope="session")
def seal_chain() -> SealChain:
    return seal_chain_impl


def sample_readings(
    device_id: str, sizes: Sequence[int], *, epoch: int = 0, first_seq: int = 0
) -> list[list[Reading]]:
    """Readings for blocks of the given sizes: consecutive seqs, a tag on every third one."""
    out: list[list[Reading]] = []
    seq = first_seq
    for size in sizes:
        batch = []
        for _ in range(size):
            tag = f"urn:epc:id:sgtin:0614141.107346.{seq}" if seq % 3 == 0 else None
            batch.append(
                Reading(
                    device_id,
                    epoch,
                    seq,
                    NOW_MS + 1000 * seq,
                    "temp_mc",
                    -18_000 + 7 * seq,
                    tag,
                    None,
                )
            )
            seq += 1
        out.append(batch)
    return out


@pytest.fixture(scope="session")
def readings_for() -> Callable[..., list[list[Reading]]]:
    return sample_readings


CHAIN_SIZES = (4, 3, 5)  # readings per block in ``chain_store``


@pytest.fixture
def chain_store(tmp_path: Path, device_key: SigningKey) -> Iterator[Store]:
    """A real SQLite store holding a 3-block chain sealed by ``ChainWriter`` (12 readings)."""
    store = Store(tmp_path / "chain.db")
    writer = ChainWriter(store, device_key, device_key.public.device_id)
    seq = 0
    for size in CHAIN_SIZES:
        for _ in range(size):
            tag = f"urn:epc:id:sgtin:0614141.107346.{seq}" if seq % 3 == 0 else None
            writer.record(NOW_MS + 1000 * seq, "temp_mc", -18_000 + 7 * seq, tag)
            seq += 1
        writer.seal()
    yield store
    store.close()
