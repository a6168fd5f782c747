"""The gossip protocol core: push of new headers, anti-entropy pulls, verification before
anything is stored or forwarded, epoch records, fork evidence, credentials, restore of a wiped
chain, peer scores. Sans-I/O (docs/PROTOCOL.md, section 12).

- ``node.GossipNode``: ``handle(input, now_ms)``, ``handle_timer(now_ms)``, ``next_deadline()``;
  a facade over one shared ``context.Context`` and one part per sub-protocol: ``headers``,
  ``summaries`` (anti-entropy), ``pulls``, ``epochs``, ``evidence``, ``credentials``,
  ``restore``.
- ``inputs``: what the runtime feeds in (nouns); ``actions``: what it must do (imperatives) and
  what happened (past tense). Those every core shares live in ``agent.protocol``.
- ``wire``: the seven message types, canonical MessagePack with hard limits.
- ``tuning.GossipConfig``: tunables and every in-memory bound.
- ``sim``: a deterministic multi-node simulation (lossy link, simulated time) for tests and
  benchmarks.
"""

from __future__ import annotations

from agent.gossip.node import GossipNode, Verdict
from agent.gossip.tuning import GossipConfig

__all__ = ["GossipConfig", "GossipNode", "Verdict"]
