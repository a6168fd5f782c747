"""The durable store: one SQLite file (WAL, synchronous=FULL) per device data dir.

Holds the device's own chain (pending signed readings, sealed blocks and their readings), verified
peer headers, replicas of peers' blocks and receipts for own blocks, peer certificates and
credentials, fork evidence, epoch records, and an index by tag (EPC) over own readings and
replicas. This package is the only place that imports sqlite3. ``Store`` is one object over one
connection, assembled from one class per concern, each in its module:

- ``connection``: the file, the schema, meta, write transactions (``StoreBase``);
- ``own``: the own chain, pending readings, the seal transaction (``OwnChain``);
- ``peers``: peers' headers and the carried queue (``PeerHeaders``);
- ``replicas``: replicas held and receipts for own blocks (``Replicas``);
- ``credentials``: certificates, rotations, revocations, fork evidence (``Credentials``);
- ``tags``: the tag index (``TagIndex``);
- ``restore``: restored own blocks, epoch records, superseded headers (``Restore``);
- ``checkpoints``: the witness state and own cosigned checkpoints (``Checkpoints``);
- ``rows``: the typed rows every query returns.

Durability contract: ``append_pending``, ``sealing`` and ``commit_block`` return only after
their transaction is committed with ``synchronous=FULL`` (fsync of the WAL), so a reading or
block reported durable survives a kill or a power loss. One transaction per call, never per
reading. A store opened with a ``GroupSync`` (``Store(path, group=g)``, a fleet runner's
thousands of stores) commits with ``synchronous=NORMAL`` and notes each such commit to the group
instead: it survives a kill at once and a power loss once ``g.sync()`` has returned (one sync for
every store; ``ledger.groupsync``), and the caller must not report it durable before then.

The store trusts its caller to have verified what it is given (peer headers, replicas), but it
checks the own chain's structure (heights, links, sequence) again on every commit: a bug above
cannot make it hold a gap, a duplicate or two blocks at one height.
"""

from __future__ import annotations

from ledger.store.checkpoints import Checkpoints
from ledger.store.connection import SCHEMA_VERSION, open_elsewhere
from ledger.store.credentials import Credentials
from ledger.store.own import SealTransaction
from ledger.store.peers import PeerHeaders
from ledger.store.replicas import Replicas
from ledger.store.restore import Restore
from ledger.store.rows import (
    CredentialRow,
    HeaderHashRow,
    OwnBlockRow,
    PendingRow,
    ReceiptRow,
    ReplicaKey,
    ReplicaRow,
    TagCount,
    TagHit,
)
from ledger.store.tags import TagIndex

__all__ = [
    "SCHEMA_VERSION",
    "CredentialRow",
    "HeaderHashRow",
    "OwnBlockRow",
    "PendingRow",
    "ReceiptRow",
    "ReplicaKey",
    "ReplicaRow",
    "SealTransaction",
    "Store",
    "TagCount",
    "TagHit",
    "open_elsewhere",
]


class Store(Restore, PeerHeaders, Replicas, Credentials, TagIndex, Checkpoints):
    """One device's durable state. Not thread-safe: use it from one thread at a time."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
