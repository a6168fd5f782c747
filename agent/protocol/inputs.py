"""The inputs every protocol core takes alike: network bytes and the peer and domain changes the
transport reports. Frozen values named by nouns; each core's own ``inputs`` module adds the rest
and lists these in its ``Input`` union. ``check_domain``: what every core requires of a domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.errors import UsageError
from ledger.identity import is_device_id


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


def check_domain(core: str, name: str, members: frozenset[str], device_id: str) -> None:
    """A domain's member list as every core takes it: device ids, this device among them.
    Raises UsageError (the runtime's mistake, not a peer's)."""
    bad = sorted(m for m in members if not isinstance(m, str) or not is_device_id(m))
    if bad:
        raise UsageError(f"{core} domain {name!r}: expected device ids, found {bad[:3]}")
    if device_id not in members:
        raise UsageError(
            f"{core} domain {name!r}: must list this device ({device_id}) among its members"
        )
