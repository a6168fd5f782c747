"""Stored block bodies, checked where they are read before they leave the device.

A device serves its own blocks (pulls, restores of its peers, placement on holders) and the
replicas it holds (pulls, audits) from its SQLite file. A byte flipped on disk after sealing
would otherwise be sent as is: the receiver rejects it, but the device itself never learns that
its file is damaged. So every body read for sending is checked here first, in the store job
that reads it (off the loop), against the header it was sealed under: the readings' count and
their Merkle root (the header's ``merkle_root``, which the header's signature covers). A damaged
body is never sent; the caller reports a ``Damage`` (the device, the block, the file, why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ledger.block import SignedHeader, decode_block, encode_block
from ledger.errors import DecodeError
from ledger.merkle import leaf_hash, root_from_leaf_hashes
from ledger.store import Store


class Damage(NamedTuple):
    """A stored body that does not match its header."""

    owner_id: str  # whose chain the block belongs to
    height: int
    path: str  # the store file
    why: str

    def line(self, name: str) -> str:
        """One line for the log and the view: the device, the block, the file, the fix."""
        return (
            f"{name}: block {self.height} of {self.owner_id} in {self.path} is damaged "
            f"({self.why}): not served; check the store with `edgefleet verify`"
        )


def body_damage(header: SignedHeader, reading_wires: Sequence[bytes]) -> str | None:
    """Why these stored readings are not the body ``header`` was sealed over (None: they are)."""
    h = header.header
    if len(reading_wires) != h.count:
        return f"{len(reading_wires)} readings stored, its header says {h.count}"
    if root_from_leaf_hashes([leaf_hash(w) for w in reading_wires]) != h.merkle_root:
        return "its readings no longer hash to the header's Merkle root"
    return None


def own_block_wire(store: Store, height: int) -> bytes | Damage | None:
    """An own block's wire, checked (None: no block at that height)."""
    header = store.header_at(height)
    if header is None:
        return None
    wires = store.reading_wires(height)
    why = body_damage(header, wires)
    if why is not None:
        return Damage(header.header.device_id, height, str(store.path), why)
    return encode_block(header.wire, wires)


def replica_damage(store: Store, owner_id: str, wire: bytes) -> Damage | None:
    """Why a held replica's stored wire is not a whole block (None: it is). A wire that no
    longer decodes has no height to name: -1."""
    try:
        block = decode_block(wire)
    except DecodeError as exc:
        return Damage(owner_id, -1, str(store.path), f"no longer decodes: {exc}")
    why = body_damage(block.header, [r.wire for r in block.readings])
    height = block.header.header.height
    return None if why is None else Damage(owner_id, height, str(store.path), why)
