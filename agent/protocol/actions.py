"""The actions every protocol core emits alike: publish to one peer's inbox, or to every member
of one domain. Frozen values named as imperatives; each core's own ``actions`` module adds the
rest and lists these in its ``Action`` union.

- ``Send(peer_id, payload)``: publish ``payload`` to the peer's inbox. Best effort: each core
  repairs loss itself (anti-entropy, timeouts and audits).
- ``Broadcast(domain, payload)``: publish ``payload`` to every member of ``domain``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Send:
    peer_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Broadcast:
    domain: str
    payload: bytes
