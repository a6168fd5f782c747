"""The typed rows the store returns: each names its fields, so callers read them by name.

Rows that are plain records are ``NamedTuple``s: immutable, typed, and still equal to the tuples
the store returned before they had names (listings, sets and test expectations keep working).
``TagHit`` stays the frozen dataclass it always was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class PendingRow(NamedTuple):
    """An own reading not sealed yet, as stored."""

    seq: int
    wire: bytes


class OwnBlockRow(NamedTuple):
    """One own block, without its body (the fields of the replication core's
    ``OwnBlockInfo``, by name)."""

    height: int
    epoch: int
    block_hash: bytes
    size: int  # bytes of the block wire


class ReplicaRow(NamedTuple):
    """One replica of a peer's block held here, without its body (the fields of the
    replication core's ``ReplicaInfo``, by name)."""

    owner_id: str  # the device whose block it is
    height: int
    epoch: int
    block_hash: bytes
    size: int  # bytes of the block wire
    surplus: bool  # the owner released it: evicted first


class ReplicaKey(NamedTuple):
    device_id: str
    height: int


class ReceiptRow(NamedTuple):
    """A storage receipt a holder gave for an own block."""

    height: int
    holder_id: str
    wire: bytes


class CredentialRow(NamedTuple):
    """A certificate, rotation or revocation learned from the fleet."""

    device_id: str
    wire: bytes


class HeaderHashRow(NamedTuple):
    height: int
    hash: bytes  # as recorded: the caller checks it against a signed head


class TagCount(NamedTuple):
    tag: str
    readings: int  # how many readings mention it


@dataclass(frozen=True, slots=True)
class TagHit:
    """Where a reading about a tag lives: a device's block and leaf index."""

    tag: str
    device_id: str
    height: int
    idx: int
    seq: int
    time_ms: int
    own: bool
