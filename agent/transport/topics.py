"""The topic layout, and the validation of every name that becomes a topic level.

``Topics`` builds every topic under one prefix and parses received topics into a ``Route``;
``validate_device_id``, ``validate_domain``, ``validate_hub_id`` and ``validate_prefix`` make sure
no name can ever hold an MQTT wildcard, a '/' or a NUL (``InvalidNameError`` otherwise: a name
that reaches here unvalidated is our bug). docs/PROTOCOL.md (section 13.2) is the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from agent.transport.errors import InvalidNameError
from ledger.identity import DEVICE_ID_RE, is_device_id

DEFAULT_PREFIX = "edgefleet"
PROTOCOL_LEVEL = "v1"

# Domain names follow devices.yaml's site / gossip-domain ids (agent.config.devices.NAME_RE).
DOMAIN_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HUB_ID_RE = DOMAIN_RE
_PREFIX_LEVEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_PREFIX_LEVELS = 8

RouteKind = Literal["inbox", "domain", "presence", "evidence", "revocation", "hub"]


_FORBIDDEN = {
    "+": "the MQTT wildcard '+'",
    "#": "the MQTT wildcard '#'",
    "/": "a '/'",
    "\x00": "a NUL character",
}


def _why_not(value: str) -> str:
    for ch, what in _FORBIDDEN.items():
        if ch in value:
            return f" (it contains {what})"
    return ""


def validate_device_id(value: object) -> str:
    """Return ``value`` if it is a device id (``^ef[a-z2-7]{24}$``), else raise InvalidNameError."""
    if not isinstance(value, str):
        raise InvalidNameError(f"device id: expected a string, found {type(value).__name__}")
    if not is_device_id(value):
        raise InvalidNameError(
            f"device id: expected {DEVICE_ID_RE.pattern}, found {value[:40]!r}{_why_not(value)}"
        )
    return value


def validate_domain(value: object) -> str:
    """Return ``value`` if it is a gossip domain name (``DOMAIN_RE``), else raise."""
    if not isinstance(value, str):
        raise InvalidNameError(f"domain: expected a string, found {type(value).__name__}")
    if not DOMAIN_RE.match(value):
        raise InvalidNameError(
            f"domain: expected {DOMAIN_RE.pattern}, found {value[:70]!r}{_why_not(value)}"
        )
    return value


def validate_hub_id(value: object) -> str:
    if not isinstance(value, str) or not HUB_ID_RE.match(value):
        shown = value[:70] if isinstance(value, str) else type(value).__name__
        raise InvalidNameError(f"hub id: expected {HUB_ID_RE.pattern}, found {shown!r}")
    return value


def validate_prefix(value: object) -> str:
    """A prefix is 1-8 '/'-separated levels of ``[A-Za-z0-9._-]``; never a wildcard or '$'."""
    if not isinstance(value, str):
        raise InvalidNameError(f"topic prefix: expected a string, found {type(value).__name__}")
    levels = value.split("/")
    if len(levels) > _MAX_PREFIX_LEVELS or not all(_PREFIX_LEVEL_RE.match(x) for x in levels):
        raise InvalidNameError(
            f"topic prefix: expected 1-{_MAX_PREFIX_LEVELS} levels of [A-Za-z0-9._-] separated "
            f"by '/', found {value[:70]!r}{_why_not(value.replace('/', ''))}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Route:
    """What a received topic names: its kind and the device, domain or hub in it."""

    kind: RouteKind
    name: str


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic layout under one prefix (docs/PROTOCOL.md, section 13.2)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)

    @property
    def root(self) -> str:
        return f"{self.prefix}/{PROTOCOL_LEVEL}"

    def inbox(self, device_id: str) -> str:
        return f"{self.root}/dev/{validate_device_id(device_id)}/inbox"

    def presence(self, device_id: str) -> str:
        return f"{self.root}/dev/{validate_device_id(device_id)}/presence"

    def evidence(self, device_id: str) -> str:
        return f"{self.root}/evidence/{validate_device_id(device_id)}"

    def evidence_filter(self) -> str:
        return f"{self.root}/evidence/+"

    def revocation(self, device_id: str) -> str:
        """Retained: the fleet authority's revocation of ``device_id`` (``keys revoke``)."""
        return f"{self.root}/revocation/{validate_device_id(device_id)}"

    def revocation_filter(self) -> str:
        return f"{self.root}/revocation/+"

    def domain(self, domain: str) -> str:
        return f"{self.root}/domain/{validate_domain(domain)}"

    def hub_presence(self, hub_id: str) -> str:
        return f"{self.root}/hub/{validate_hub_id(hub_id)}/presence"

    def parse(self, topic: str) -> Route | None:
        """The route a received topic names, or None if it is not one of ours (or malformed)."""
        head = self.root + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        match parts:
            case ["dev", dev, "inbox"] if is_device_id(dev):
                return Route("inbox", dev)
            case ["dev", dev, "presence"] if is_device_id(dev):
                return Route("presence", dev)
            case ["evidence", dev] if is_device_id(dev):
                return Route("evidence", dev)
            case ["revocation", dev] if is_device_id(dev):
                return Route("revocation", dev)
            case ["domain", dom] if DOMAIN_RE.match(dom):
                return Route("domain", dom)
            case ["hub", hub, "presence"] if HUB_ID_RE.match(hub):
                return Route("hub", hub)
        return None
