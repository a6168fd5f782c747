"""Verified chains of a data dir's devices, and blocks checked against them.

A ``Chain`` is a device's newest header (its **head**) whose signature verifies with the key its
enrollment certificate (verified to the fleet root), rotations and revocations give for that
height, together with the hashes of every earlier header, recomputed into the head's signed
``history_root``. The head's signature thus vouches for every earlier header: a block at any
height is in the chain when its header hashes to the recorded hash at that height and its own
signature verifies. This is the check an offline bundle makes (docs/BUNDLE.md), done once per
device instead of re-verifying every link.

``Chain.check_block`` then recomputes the block's Merkle root over its readings and compares it
with the signed header: every reading of a checked block is what the device signed over.

Keys in trouble do not hide readings: a header signed by a forked key, by a revoked key at or
above its revocation height, or by a key the device rotated away from at or above the rotation's
height is checked under the key it names (``ledger.bundle.signing_key``, as a format-2 bundle
does) and stays in the chain; ``Chain.flags`` says which of its headers such a ``KeyFlag``
covers, and the verdict turns on it (``analysis``). Any other key is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.errors import AgentError, RemoteError
from ledger.block import Block, SignedHeader
from ledger.bundle import KeyFlag, signing_key
from ledger.certs import DeviceKeys
from ledger.errors import LedgerError
from ledger.history import CompactRange
from ledger.identity import PublicKey
from ledger.merkle import inclusion_proof, root_from_leaf_hashes, verify_inclusion
from ledger.reading import SignedReading


class ChainUnavailable(AgentError, code="chain-unavailable"):
    """No verifiable chain of a device in the data dir; the message says what is missing."""


class BlockRejected(RemoteError, code="block-rejected"):
    """A block (or a reading in it) does not verify against the device's chain."""


@dataclass
class Chain:
    """A device's verified head and the header hashes below it (see the module docstring)."""

    device_id: str
    keys: DeviceKeys
    head: SignedHeader
    hashes: tuple[bytes, ...]  # header hash at heights 0 .. head height - 1
    credentials: tuple[bytes, ...]  # certificate wire, then rotations and revocations
    source: str
    # Set by whoever gathered the device's credentials and fork evidence (``gather``):
    flags: tuple[KeyFlag, ...] = ()  # forks, revocations and rotations against the device
    forks: tuple[bytes, ...] = ()  # the verified fork evidence wires behind the forked flags
    _checked: dict[int, bytes] = field(default_factory=dict)  # height -> header hash verified

    @classmethod
    def verify(
        cls,
        device_id: str,
        keys: DeviceKeys,
        head: SignedHeader,
        hashes: list[bytes],
        credentials: tuple[bytes, ...],
        source: str,
    ) -> Chain:
        h = head.header
        if h.device_id != device_id:
            raise ChainUnavailable(f"{device_id}: head belongs to {h.device_id} ({source})")
        if len(hashes) != h.height:
            raise ChainUnavailable(
                f"{device_id}: {source} holds {len(hashes)} header hashes below the head, "
                f"expected {h.height}"
            )
        history = CompactRange()
        for digest in hashes:
            history.append(digest)
        if history.root() != h.history_root:
            raise ChainUnavailable(
                f"{device_id}: the header hashes in {source} do not give the head's signed "
                f"history_root at height {h.height}"
            )
        try:
            head.verify(signing_key(keys, h.key_id, h.height))
        except LedgerError as exc:
            raise ChainUnavailable(f"{device_id}: head at height {h.height}: {exc}") from None
        chain = cls(device_id, keys, head, tuple(hashes), credentials, source)
        chain._checked[h.height] = head.hash
        return chain

    @property
    def height(self) -> int:
        return self.head.header.height

    def hash_at(self, height: int) -> bytes | None:
        if height == self.height:
            return self.head.hash
        return self.hashes[height] if 0 <= height < self.height else None

    def key_for(self, header: SignedHeader) -> PublicKey:
        return signing_key(self.keys, header.header.key_id, header.header.height)

    def flags_of(self, header: SignedHeader) -> tuple[KeyFlag, ...]:
        """The flags covering a header of this chain (none for a key in good standing)."""
        return tuple(f for f in self.flags if f.covers_header(header))

    def check_header(self, sh: SignedHeader) -> None:
        height = sh.header.height
        if self._checked.get(height) == sh.hash:
            return
        expected = self.hash_at(height)
        if expected is None:
            raise BlockRejected(
                f"height {height} is above the newest verified header (height {self.height})"
            )
        if sh.hash != expected:
            raise BlockRejected(
                f"header at height {height} is not the one the verified head commits to "
                f"(expected {expected.hex()[:16]}…, found {sh.hash.hex()[:16]}…)"
            )
        try:
            sh.verify(self.key_for(sh))
        except LedgerError as exc:
            raise BlockRejected(f"header at height {height}: {exc}") from None
        self._checked[height] = sh.hash

    def check_block(self, block: Block) -> None:
        """The block's header is in the chain and its readings are the ones it signed over."""
        sh = block.header
        h = sh.header
        self.check_header(sh)
        if len(block.readings) != h.count:
            raise BlockRejected(
                f"height {h.height}: {len(block.readings)} readings, header says {h.count}"
            )
        root = root_from_leaf_hashes([sr.leaf_hash for sr in block.readings])
        if root != h.merkle_root:
            raise BlockRejected(f"height {h.height}: Merkle root over the readings does not match")
        for sr in block.readings:
            r = sr.reading
            if r.device_id != h.device_id or r.epoch != h.epoch:
                raise BlockRejected(
                    f"height {h.height}: reading seq {r.seq} names {r.device_id} epoch {r.epoch}"
                )

    def check_reading(self, block: Block, index: int) -> SignedReading:
        """One reading: its inclusion proof against the (checked) header and its signature."""
        sh = block.header
        leaves = [sr.leaf_hash for sr in block.readings]
        sr = block.readings[index]
        try:
            proof = inclusion_proof(leaves, index)
            verify_inclusion(sr.leaf_hash, index, sh.header.count, proof, sh.header.merkle_root)
            sr.verify(self.key_for(sh))
        except LedgerError as exc:
            raise BlockRejected(f"height {sh.header.height} reading {index}: {exc}") from None
        return sr
