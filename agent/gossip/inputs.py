"""Inputs to the gossip core: what happened outside it, as frozen values named by nouns.

The runtime feeds each one to ``GossipNode.handle(input, now_ms)``. Inputs that come from the
runtime's own store (``ChainLoaded``, ``CertificateKnown``...) are trusted to be what the core
once emitted, but are still checked where a check is cheap; inputs from the network arrive only as
``MessageReceived`` and are never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

# Shared by every core (agent.protocol.inputs); re-exported: they belong to this core's inputs.
from agent.protocol.inputs import DomainChanged as DomainChanged
from agent.protocol.inputs import MessageReceived as MessageReceived
from agent.protocol.inputs import PeerDown as PeerDown
from agent.protocol.inputs import PeerUp as PeerUp
from ledger.block import Block


@dataclass(frozen=True, slots=True)
class OwnBlockSealed:
    """The device sealed ``block`` and it is durable: announce its header."""

    block: Block


@dataclass(frozen=True, slots=True)
class ChainLoaded:
    """At start: a device's verified headers as stored, contiguous from height 0 (own or peer).

    ``missing_bodies``: heights whose body is wanted but not held (from the replica table).
    """

    device_id: str
    headers: tuple[bytes, ...]
    missing_bodies: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CertificateKnown:
    """A device certificate (signed envelope) the runtime holds: its own, config, or store.
    ``provisioned``: the fleet gave it to this device at start, as it gave this device's own
    certificate to that device (both enrolled in one data dir): the two need no hello to
    authenticate each other (docs/PROTOCOL.md 12.6)."""

    wire: bytes
    provisioned: bool = False


@dataclass(frozen=True, slots=True)
class RotationKnown:
    wire: bytes


@dataclass(frozen=True, slots=True)
class RevocationKnown:
    wire: bytes


@dataclass(frozen=True, slots=True)
class Probe:
    """The runtime doubts that ``peer_id`` is still there (its presence says offline): ask it,
    with a SUMMARY that asks for a reply, which any live peer answers (docs/PROTOCOL.md
    13.3.1)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class RevocationReceived:
    """Bytes from the revocation topic (retained, published by the fleet authority with
    ``edgefleet keys revoke``; sender unknown): verified against the fleet roots here."""

    wire: bytes


@dataclass(frozen=True, slots=True)
class EvidenceKnown:
    """Fork evidence from the store: the device stays excluded after a restart."""

    wire: bytes


@dataclass(frozen=True, slots=True)
class EvidenceReceived:
    """Bytes from the evidence topic (retained fork evidence, sender unknown): verified here."""

    evidence: bytes


@dataclass(frozen=True, slots=True)
class PullLoaded:
    """The runtime's answer to a ``ServePull``: stored header and block wires, ascending height.

    Block wires are whatever the store holds in the range (own blocks or replicas); the core trims
    both lists to the request and to the wire limits before it answers.
    """

    peer_id: str
    request_id: int
    headers: tuple[bytes, ...]
    blocks: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class RestoreRequested:
    """The device's own store is empty but it may have published before (a wiped store): learn
    the published head from peers, fetch and verify the whole chain, and say when the device may
    sign again (``RestoreFinished``). Until then the runtime signs nothing."""


@dataclass(frozen=True, slots=True)
class EpochKnown:
    """An epoch record (ledger.epoch) from the store, own or a peer's: fed before ``ChainLoaded``
    so that stored chains crossing an epoch change load."""

    wire: bytes


@dataclass(frozen=True, slots=True)
class EpochSigned:
    """The runtime's answer to ``SignEpoch``: the record, signed and already durable."""

    wire: bytes


@dataclass(frozen=True, slots=True)
class ChainRewound:
    """The runtime's answer to ``RewindChain``: the device's stored headers 0..last_height
    (contiguous), after the superseded ones above were moved aside."""

    device_id: str
    headers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CheckpointPrepared:
    """The runtime's answer to ``PrepareCheckpoint``: the signed checkpoint note at the head and a
    consistency proof from each old size asked for (``(old_size, proof)``, ascending)."""

    note: bytes
    proofs: tuple[tuple[int, tuple[bytes, ...]], ...]


@dataclass(frozen=True, slots=True)
class WitnessStateKnown:
    """At start: what this device last cosigned as a witness, ``(origin, size, root_hash)``
    (``Store.witness_states``), before any message."""

    states: tuple[tuple[str, int, bytes], ...]


Input = (
    MessageReceived
    | OwnBlockSealed
    | ChainLoaded
    | CertificateKnown
    | RotationKnown
    | RevocationKnown
    | RevocationReceived
    | EvidenceKnown
    | EvidenceReceived
    | PeerUp
    | PeerDown
    | Probe
    | DomainChanged
    | PullLoaded
    | RestoreRequested
    | EpochKnown
    | EpochSigned
    | ChainRewound
    | CheckpointPrepared
    | WitnessStateKnown
)
