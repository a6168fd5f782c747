"""Inputs to the replication core: what happened outside it, as frozen values named by nouns.

The runtime feeds each one to ``ReplicationNode.handle(input, now_ms)``. Inputs from the
runtime's own store (``OwnChainLoaded``, ``ReplicasLoaded``, ``ReceiptKnown``) are trusted to be
what the core once emitted, but are checked where a check is cheap; network bytes arrive only as
``MessageReceived`` and are never trusted. Credentials are verified against the fleet roots by
the device's one trust store (agent.protocol.trust), whichever core learns them first.
"""

from __future__ import annotations

from dataclasses import dataclass

# Shared by every core (agent.protocol.inputs); re-exported: they belong to this core's inputs.
from agent.protocol.inputs import DomainChanged as DomainChanged
from agent.protocol.inputs import MessageReceived as MessageReceived
from agent.protocol.inputs import PeerDown as PeerDown
from agent.protocol.inputs import PeerUp as PeerUp
from agent.protocol.trust import CredentialKind as CredentialKind
from ledger.block import Block


@dataclass(frozen=True, slots=True)
class CredentialKnown:
    """A certificate, rotation or revocation wire (at start from the store, and every one the
    gossip core accepts). Gives each device's keys (to verify blocks and receipts) and site."""

    kind: CredentialKind
    wire: bytes


@dataclass(frozen=True, slots=True)
class HeadersKnown:
    """Verified peer headers (the wires of the gossip core's ``StoreHeaders``, or stored peer
    heads at start): a block offered for storage must have the hash held here at its height."""

    device_id: str
    headers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class OwnBlockSealed:
    """The device sealed ``block`` and it is durable: place it on R holders. ``prev_header``:
    the own header wire at height-1 (None at height 0, or not given): a holder needs it to
    check the chain link, and with it the block is placed without being loaded back."""

    block: Block
    prev_header: bytes | None = None


@dataclass(frozen=True, slots=True)
class OwnBlockInfo:
    """What the owner side remembers of one of its own blocks (no body)."""

    height: int
    epoch: int
    block_hash: bytes
    size: int  # bytes of the block wire


@dataclass(frozen=True, slots=True)
class OwnChainLoaded:
    """At start: the latest own blocks (ascending height, at most ``max_own_blocks``)."""

    blocks: tuple[OwnBlockInfo, ...]


@dataclass(frozen=True, slots=True)
class ReceiptKnown:
    """At start: a stored receipt for one of the own blocks (from ``StoreReceipt``)."""

    wire: bytes


@dataclass(frozen=True, slots=True)
class OwnBlockLoaded:
    """The runtime's answer to ``LoadOwnBlock``: the block wire and the header wire at height-1
    (None at height 0), or ``block`` None when the store does not hold it."""

    height: int
    block: bytes | None
    prev_header: bytes | None


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What the holder side remembers of one replica it stores (no body)."""

    owner_id: str
    height: int
    epoch: int
    block_hash: bytes
    size: int
    surplus: bool = False  # the owner released it: evicted first


@dataclass(frozen=True, slots=True)
class ReplicasLoaded:
    """At start: every replica the store holds (from ``StoreReplica``/``MarkSurplus``)."""

    replicas: tuple[ReplicaInfo, ...]


@dataclass(frozen=True, slots=True)
class ReplicaStored:
    """The runtime's answer to ``StoreReplica``: ``ok`` once the body is durable, False when the
    write failed (disk full...). Only then does the holder sign a receipt."""

    owner_id: str
    height: int
    block_hash: bytes
    ok: bool


@dataclass(frozen=True, slots=True)
class ReplicaLoaded:
    """The runtime's answer to ``LoadReplica``: the stored block wire, or None if it is gone."""

    owner_id: str
    height: int
    block: bytes | None


Input = (
    MessageReceived
    | PeerUp
    | PeerDown
    | DomainChanged
    | CredentialKnown
    | HeadersKnown
    | OwnBlockSealed
    | OwnChainLoaded
    | ReceiptKnown
    | OwnBlockLoaded
    | ReplicasLoaded
    | ReplicaStored
    | ReplicaLoaded
)
