"""Actions from the gossip core: what the runtime must do (imperatives) and what happened
(notifications, past tense). All frozen values; the core itself performs no I/O.

What the runtime does with each:

- ``Send(peer_id, payload)``: publish ``payload`` to the peer's inbox. Best effort; loss is
  repaired by anti-entropy.
- ``Broadcast(domain, payload)``: publish ``payload`` to every member of ``domain`` (used for a
  revocation that enters the fleet through this node).
- ``PublishEvidence(device_id, evidence)``: publish the fork evidence bytes, as they are, on the
  evidence topic of the accused device (retained, so later devices receive it too); the
  transport's ``publish_evidence``.
- ``StoreHeaders(device_id, headers)``: persist verified peer headers (contiguous, ascending,
  each extends the previous one). ``ledger.store.Store.put_peer_header`` per wire, in order, in one
  transaction if it can.
- ``StoreBlock(device_id, height, block)``: persist a verified block body (``Store.put_replica``
  of ``decode_block(block)``).
- ``StoreEvidence(device_id, evidence)``: persist verified fork evidence (``Store.put_evidence``).
- ``StoreCredential(device_id, kind, wire)``: persist a verified certificate, rotation or
  revocation learned from a peer, so a restart can feed it back (``CertificateKnown``...).
- ``ServePull(...)``: read the stored headers ``from_height..to_height`` of ``device_id`` (own
  chain or peer headers) and, when ``bodies``, the block wires held in that range (own blocks or
  replicas; at most ``max_blocks`` and ``max_bytes`` in all), off the event loop; then feed
  ``PullLoaded(peer_id, request_id, headers, blocks)`` back. Not answering is allowed: the core
  forgets the serve after its timeout and the peer re-asks.

- ``StoreEpoch(device_id, record)``: persist a verified epoch record (``Store.put_epoch``), so
  a restart can feed it back (``EpochKnown``) before the chains.
- ``RewindChain(device_id, last_height, new_epoch)``: an epoch record closed the device's epoch
  at ``last_height``: move its stored headers above that height, of earlier epochs, aside
  (``Store.supersede_peer_headers``), read its stored headers 0..last_height and feed
  ``ChainRewound(device_id, headers)`` back.
- ``CommitRestored(blocks)``: own blocks fetched from peers during a restore, verified, contiguous
  and ascending from the stored head: commit them in one durable transaction
  (``Store.commit_restored``).
- ``SignEpoch(prev_epoch, new_epoch, last_height, last_hash)``: the restore cannot reach the
  published head: sign the epoch record with the device key, make it durable
  (``Store.put_epoch``), then feed ``EpochSigned(wire)`` back.

- ``PrepareCheckpoint(fleet, old_sizes)``: sign the device's checkpoint at its head (C2SP, by
  ``ledger.checkpoint.checkpoint_for``) and make the consistency proof from each old size to it
  (``ledger.merkle.consistency_proof`` over ``Store.own_header_hashes``); feed
  ``CheckpointPrepared(note, proofs)`` back. Not answering is allowed (the next round asks again).
- ``StoreWitnessState(origin, size, root_hash, peer_id, payload)``: this device cosigned a peer's
  checkpoint as its witness: make the new state durable (``Store.put_witness_state``), and only
  then send ``payload`` (the cosignature) to ``peer_id``; if the write fails, send nothing.
- ``StoreCheckpoint(origin, size, note)``: keep the own checkpoint note, with the cosignatures it
  has so far (``Store.put_checkpoint``).

Notifications need no action; they feed logs, counters and the live view. ``RestoreFinished``
is the one the runtime waits for: from then on the device may sign, in ``epoch``, after
``height``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Shared by every core (agent.protocol.actions); re-exported: they belong to this core's actions.
from agent.protocol.actions import Broadcast as Broadcast
from agent.protocol.actions import Send as Send
from agent.protocol.trust import CredentialKind as CredentialKind


@dataclass(frozen=True, slots=True)
class PublishEvidence:
    """Publish fork evidence against ``device_id`` on the evidence topic (retained)."""

    device_id: str
    evidence: bytes


@dataclass(frozen=True, slots=True)
class StoreHeaders:
    device_id: str
    headers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StoreBlock:
    device_id: str
    height: int
    block: bytes


@dataclass(frozen=True, slots=True)
class StoreEvidence:
    device_id: str
    evidence: bytes


@dataclass(frozen=True, slots=True)
class StoreCredential:
    device_id: str
    kind: CredentialKind
    wire: bytes


@dataclass(frozen=True, slots=True)
class ServePull:
    peer_id: str
    request_id: int
    device_id: str
    from_height: int
    to_height: int
    bodies: bool
    max_blocks: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class StoreEpoch:
    device_id: str
    record: bytes


@dataclass(frozen=True, slots=True)
class RewindChain:
    device_id: str
    last_height: int
    new_epoch: int


@dataclass(frozen=True, slots=True)
class CommitRestored:
    blocks: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SignEpoch:
    prev_epoch: int
    new_epoch: int
    last_height: int
    last_hash: bytes


# --- notifications (past tense) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrepareCheckpoint:
    fleet: str  # ledger.checkpoint.fleet_label of the device's fleet root
    old_sizes: tuple[int, ...]  # ascending, unique: the sizes the witnesses last cosigned


@dataclass(frozen=True, slots=True)
class StoreWitnessState:
    origin: str
    size: int
    root_hash: bytes
    peer_id: str
    payload: bytes  # sent to peer_id once the state is durable


@dataclass(frozen=True, slots=True)
class StoreCheckpoint:
    origin: str
    size: int
    note: bytes


@dataclass(frozen=True, slots=True)
class CheckpointCosigned:
    """A witness cosigned the own checkpoint (``cosigners``: how many have, so far)."""

    origin: str
    size: int
    witness: str
    cosigners: int


@dataclass(frozen=True, slots=True)
class HeadersAccepted:
    device_id: str
    from_height: int
    to_height: int
    head_hash: bytes
    peer_id: str


@dataclass(frozen=True, slots=True)
class BlockAccepted:
    device_id: str
    height: int
    peer_id: str


@dataclass(frozen=True, slots=True)
class ForkDetected:
    """``device_id`` signed two headers at (epoch, height); ``evidence`` verifies offline."""

    device_id: str
    epoch: int
    height: int
    evidence: bytes
    peer_id: str | None  # who sent the header or evidence that revealed it (None: the store)


@dataclass(frozen=True, slots=True)
class DeviceRevoked:
    device_id: str
    key_id: bytes | None  # None: the whole device
    from_height: int


@dataclass(frozen=True, slots=True)
class PeerMuted:
    peer_id: str
    until_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class PeerUnmuted:
    peer_id: str


@dataclass(frozen=True, slots=True)
class EpochAccepted:
    """A verified epoch record of ``device_id`` (``peer_id`` None: from the store or signed
    here)."""

    device_id: str
    new_epoch: int
    prev_epoch: int
    last_height: int
    peer_id: str | None


@dataclass(frozen=True, slots=True)
class RestoreProgressed:
    """Own blocks restored so far (heights 0..``height``) of the published head's height."""

    height: int
    published_height: int


@dataclass(frozen=True, slots=True)
class RestoreFinished:
    """The device may sign again, in ``epoch``, after ``height`` (-1: nothing was published).
    ``new_epoch``: the published head was out of reach and an epoch record opened ``epoch``."""

    epoch: int
    height: int
    published_epoch: int
    published_height: int
    new_epoch: bool


@dataclass(frozen=True, slots=True)
class RestoreFailed:
    """Peers hold headers of the device, but not even its first block's body was reachable:
    nothing can be signed safely. The restore keeps trying."""

    published_height: int
    reason: str


Action = (
    Send
    | Broadcast
    | PublishEvidence
    | StoreHeaders
    | StoreBlock
    | StoreEvidence
    | StoreCredential
    | ServePull
    | StoreEpoch
    | RewindChain
    | CommitRestored
    | SignEpoch
    | PrepareCheckpoint
    | StoreWitnessState
    | StoreCheckpoint
    | CheckpointCosigned
    | HeadersAccepted
    | BlockAccepted
    | ForkDetected
    | DeviceRevoked
    | PeerMuted
    | PeerUnmuted
    | EpochAccepted
    | RestoreProgressed
    | RestoreFinished
    | RestoreFailed
)
