"""Actions from the replication core: what the runtime must do (imperatives) and what happened
(notifications, past tense). All frozen values; the core performs no I/O.

What the runtime does with each, in the order the core emitted them:

- ``Send(peer_id, payload)``: publish to the peer's inbox. Best effort: timeouts and audits
  repair what is lost.
- ``Broadcast(domain, payload)``: publish to every member of ``domain`` (SPACE adverts).
- ``LoadOwnBlock(height)``: read the own block wire at ``height`` and the own header wire at
  ``height - 1`` off the event loop; answer ``OwnBlockLoaded`` (block None if not held). Only
  for blocks the core no longer keeps (sealed before this start, or older than its few fresh
  ones): a block it was just handed (``OwnBlockSealed``) is never asked for.
- ``StoreReplica(owner_id, height, epoch, block_hash, block)``: persist a verified replica durably
  (its size is ``len(block)``), then answer ``ReplicaStored(ok=True)``; on failure
  ``ReplicaStored(ok=False)``. Must always answer.
- ``DeleteReplica(owner_id, height)``: delete the replica (eviction). Never the own chain.
- ``MarkSurplus(owner_id, height)``: remember the replica is surplus (evicted first after a
  restart too).
- ``LoadReplica(owner_id, height)``: read the replica's block wire; answer ``ReplicaLoaded``
  (block None if gone). Not answering is allowed: the owner's audit then times out.
- ``StoreReceipt(height, holder_id, receipt)``: persist a verified receipt of an own block
  (one row per (height, holder)); fed back as ``ReceiptKnown`` at start.
- ``ForgetReceipt(height, holder_id)``: delete that row (audit failed, released, holder gone).

Notifications need no action; they feed logs, counters and the live view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Shared by every core (agent.protocol.actions); re-exported: they belong to this core's actions.
from agent.protocol.actions import Broadcast as Broadcast
from agent.protocol.actions import Send as Send


@dataclass(frozen=True, slots=True)
class LoadOwnBlock:
    height: int


@dataclass(frozen=True, slots=True)
class StoreReplica:
    owner_id: str
    height: int
    epoch: int
    block_hash: bytes
    block: bytes


@dataclass(frozen=True, slots=True)
class DeleteReplica:
    owner_id: str
    height: int


@dataclass(frozen=True, slots=True)
class MarkSurplus:
    owner_id: str
    height: int


@dataclass(frozen=True, slots=True)
class LoadReplica:
    owner_id: str
    height: int


@dataclass(frozen=True, slots=True)
class StoreReceipt:
    height: int
    holder_id: str
    receipt: bytes


@dataclass(frozen=True, slots=True)
class ForgetReceipt:
    height: int
    holder_id: str


# --- notifications (past tense) -----------------------------------------------------------------

AuditOutcome = Literal["wrong", "missing", "timeout"]


@dataclass(frozen=True, slots=True)
class BlockReplicated:
    """An own block reached ``copies`` (= R) healthy holders."""

    height: int
    copies: int


@dataclass(frozen=True, slots=True)
class AuditFailed:
    holder_id: str
    height: int
    outcome: AuditOutcome
    score: int  # the holder's score after the penalty


@dataclass(frozen=True, slots=True)
class HolderExcluded:
    """The holder's score fell below ``score_min``: not chosen, its copies no longer count."""

    holder_id: str
    score: int


@dataclass(frozen=True, slots=True)
class HolderReadmitted:
    holder_id: str
    score: int


Action = (
    Send
    | Broadcast
    | LoadOwnBlock
    | StoreReplica
    | DeleteReplica
    | MarkSurplus
    | LoadReplica
    | StoreReceipt
    | ForgetReceipt
    | BlockReplicated
    | AuditFailed
    | HolderExcluded
    | HolderReadmitted
)
