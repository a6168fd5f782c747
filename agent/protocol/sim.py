"""Enrolled devices for the protocol cores' simulations and tests, from a seed: no file, no
database, no core. Both ``agent.gossip.sim`` and ``agent.replication.sim`` build on these.

- ``Authority``: a fleet authority with a seeded key; enrolls, countersigns rotations, revokes.
- ``SimDevice``: an enrolled device that seals real signed one-reading blocks (Ed25519,
  ``ledger`` headers, readings and blocks) into a chain, rotates its key, forks on demand, is
  wiped and restored, and signs the epoch records a core asks for. It is the ``auth.Signer`` of
  the cores that run for it (its ``key`` is always the current one).
- ``sealed(body)``: a message body authenticated by the sim device its sender field names, as
  that device would send it (tests and scripted peers, who craft messages by hand);
  ``unseal(payload)``: the body of what a core sent, signed or not.
"""

from __future__ import annotations

import random
import weakref
from typing import Protocol

from agent.protocol import auth
from ledger import codec
from ledger.block import Block, build_header, sign_header
from ledger.certs import (
    FleetRoots,
    countersign_rotation,
    issue_certificate,
    sign_revocation,
    sign_rotation,
)
from ledger.epoch import EpochRecord, sign_epoch
from ledger.errors import DecodeError
from ledger.history import CompactRange
from ledger.identity import SigningKey
from ledger.reading import Reading, sign_reading


class EpochRequest(Protocol):
    """What a core asks a device to sign when it opens a new epoch (gossip's ``SignEpoch``)."""

    @property
    def prev_epoch(self) -> int: ...
    @property
    def new_epoch(self) -> int: ...
    @property
    def last_height(self) -> int: ...
    @property
    def last_hash(self) -> bytes: ...


START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000


class Authority:
    """A fleet authority with a seeded key: enrolls and revokes devices."""

    def __init__(self, rng: random.Random) -> None:
        self.key = SigningKey(rng.randbytes(32))
        self.roots = FleetRoots.of(self.key.public)
        self._serial = 0

    def enroll(self, key: SigningKey, now_ms: int = START_MS) -> bytes:
        self._serial += 1
        cert = issue_certificate(
            self.key,
            key.public,
            kind="refrigerator",
            model="FR-200",
            site="site-1",
            owner_x25519=None,
            not_before_ms=now_ms - DAY_MS,
            not_after_ms=now_ms + 365 * DAY_MS,
            serial=self._serial,
        )
        return cert.wire

    def countersign(self, half: bytes) -> bytes:
        return countersign_rotation(half, self.key)

    def revoke(
        self, device_id: str, from_height: int, key_id: bytes | None = None, now_ms: int = START_MS
    ) -> bytes:
        return sign_revocation(self.key, device_id, key_id, from_height, "key-compromise", now_ms)


class SimDevice:
    """An enrolled device that seals one-reading blocks into a real signed chain."""

    def __init__(self, authority: Authority, rng: random.Random, epoch: int = 0) -> None:
        self.key = SigningKey(rng.randbytes(32))
        self.device_id = self.key.public.device_id
        self.certificate = authority.enroll(self.key)
        self.epoch = epoch
        self.blocks: list[Block] = []
        self._hashes: list[bytes] = []
        self._seq = 0
        _DEVICES[self.device_id] = self

    def _history(self, height: int) -> bytes:
        tree = CompactRange()
        for h in self._hashes[:height]:
            tree.append(h)
        return tree.root()

    def _block_at(self, height: int, time_ms: int, value: int) -> Block:
        reading = sign_reading(
            Reading(self.device_id, self.epoch, self._seq, time_ms, "fridge.temp_mc", value),
            self.key,
        )
        self._seq += 1
        prev = self.blocks[height - 1].header if height > 0 else None
        header = build_header(
            device_id=self.device_id,
            epoch=self.epoch,
            prev=prev,
            history_root=self._history(height),
            readings=[reading],
            key_id=self.key.key_id,
        )
        return Block(sign_header(header, self.key), (reading,))

    def seal(self, time_ms: int, value: int = 4_000) -> Block:
        block = self._block_at(len(self.blocks), time_ms, value)
        self.blocks.append(block)
        self._hashes.append(block.header.hash)
        return block

    def rotate(self, authority: Authority, rng: random.Random, time_ms: int) -> bytes:
        """Switch to a new key from the next height on; returns the countersigned rotation."""
        new = SigningKey(rng.randbytes(32))
        half = sign_rotation(
            self.device_id, self.key, new.public, len(self.blocks), time_ms, authority.key.key_id
        )
        self.key = new
        return authority.countersign(half)

    def wipe(self) -> None:
        """Lose the own chain (a wiped store); the key and certificate stay."""
        self.blocks.clear()
        self._hashes.clear()
        self._seq = 0

    def adopt(self, block: Block) -> None:
        """Append a block restored from peers (the node verified it)."""
        self.blocks.append(block)
        self._hashes.append(block.header.hash)
        self._seq = block.readings[-1].reading.seq + 1

    def sign_epoch(self, act: EpochRequest, time_ms: int) -> bytes:
        """Sign the epoch record the node asked for and sign in the new epoch from now on."""
        record = EpochRecord(
            self.device_id, act.new_epoch, act.prev_epoch, act.last_height, act.last_hash, time_ms
        )
        self.epoch = act.new_epoch
        return sign_epoch(record, self.key).wire

    def equivocate(self, height: int, time_ms: int) -> Block:
        """A second, different block at ``height`` (a fork); the device's chain is unchanged."""
        return self._block_at(height, time_ms, -1)

    def header_wires(self) -> list[bytes]:
        return [b.header.wire for b in self.blocks]


# Every sim device alive, by device id (weak: a test's devices go with it).
_DEVICES: weakref.WeakValueDictionary[str, SimDevice] = weakref.WeakValueDictionary()


def sealed(body: bytes) -> bytes:
    """``body`` (a version-2 envelope) authenticated with the current key of the sim device its
    sender field names. Raises KeyError when no sim device has that id."""
    return auth.seal(body, _DEVICES[body[4:30].decode("ascii")])


def unseal(payload: bytes) -> bytes:
    """The body of a message a core sent, signed or with an empty authenticator (tests read
    what went out; a receiver authenticates instead)."""
    if payload[-len(auth.EMPTY) :] == auth.EMPTY:
        body = bytes((payload[0] - 1,)) + payload[1 : -len(auth.EMPTY)]
        try:
            codec.decode(body, _ANY, "body")
        except DecodeError:
            pass
        else:
            return body
    return auth.body_of(payload)


_ANY = codec.Limits(1 << 21, 1 << 16, 1 << 16, 1 << 21, shape=(16, 1 << 16, 16))
