"""The gossip protocol core: push of new headers, anti-entropy pulls, verification before
anything is stored or forwarded, fork evidence, peer scores. Sans-I/O
(docs/PROTOCOL.md, section 12).

- ``node.GossipNode``: ``handle(input, now_ms)``, ``handle_timer(now_ms)``, ``next_deadline()``.
- ``inputs``: what the runtime feeds in (nouns); ``actions``: what it must do (imperatives) and
  what happened (past tense).
- ``wire``: the six message types, canonical MessagePack with hard limits.
- ``config.GossipConfig``: tunables and every in-memory bound.
- ``sim``: a deterministic multi-node simulation (lossy link, simulated time) for tests and
  benchmarks.
"""

from __future__ import annotations

from agent.gossip.node import GossipNode, Verdict
from agent.gossip.tuning import GossipConfig

__all__ = ["GossipConfig", "GossipNode", "Verdict"]
