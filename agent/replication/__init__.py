"""The replication protocol core: block bodies on R peers' spare storage, signed receipts,
audits and repair. Sans-I/O like gossip (docs/REPLICATION.md).

- ``node.ReplicationNode``: ``handle(input, now_ms)``, ``handle_timer(now_ms)``,
  ``next_deadline()``; ``owner`` and ``holder`` hold the two halves of its state.
- ``inputs``: what the runtime feeds in (nouns); ``actions``: what it must do (imperatives) and
  what happened (past tense). Those every core shares live in ``agent.protocol``.
- ``wire``: the eight message types (32..39), canonical MessagePack with hard limits.
- ``placement``: weighted rendezvous hashing, distinct sites first.
- ``tuning.ReplicationConfig``: tunables, bounds and the seeded randomness.
- ``sim``: direct-wired nodes with simulated time, for tests.
"""

from __future__ import annotations

from agent.replication.node import ReplicationNode
from agent.replication.tuning import ReplicationConfig
from agent.replication.wire import is_replication_message

__all__ = ["ReplicationConfig", "ReplicationNode", "is_replication_message"]
