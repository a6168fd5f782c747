"""The inputs every protocol core takes alike: network bytes and the peer and domain changes the
transport reports. Frozen values named by nouns; each core's own ``inputs`` module adds the rest
and lists these in its ``Input`` union.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """Bytes from the network, never trusted. ``peer_id``: the sender as the transport knows it,
    or None when only the message's own (unauthenticated) sender field names it (MQTT 3.1.1
    inboxes). ``broadcast``: it came on a domain topic, so every member of the domain received
    the same copy (the gossip core then forwards none of it; replication ignores it)."""

    peer_id: str | None
    payload: bytes
    broadcast: bool = False


@dataclass(frozen=True, slots=True)
class PeerUp:
    peer_id: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    peer_id: str


@dataclass(frozen=True, slots=True)
class DomainChanged:
    """The member list of one of this device's gossip domains (self included)."""

    domain: str
    members: frozenset[str]
