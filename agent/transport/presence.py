"""Presence: the payloads a device or a shared connection (hub) publishes, and what they mean.

A device publishes ``online``, ``offline`` or ``online:<hub id>`` (retained, with ``offline`` as
its last-will); a hub publishes ``online`` or ``offline``. ``PresenceBook`` is a pure state
machine that resolves "online through hub H" against H's own presence: a shared connection has
one last-will for all of its devices. docs/PROTOCOL.md (section 13) describes the wire side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.transport.topics import HUB_ID_RE, validate_hub_id

PRESENCE_ONLINE = b"online"
PRESENCE_OFFLINE = b"offline"
PRESENCE_VIA_HUB = b"online:"  # followed by the hub id: online through a shared connection


@dataclass(frozen=True, slots=True)
class PresenceState:
    """A decoded presence payload: online or not, and through which shared connection."""

    online: bool
    hub: str | None = None


def encode_presence(online: bool, hub_id: str | None = None) -> bytes:
    if not online:
        return PRESENCE_OFFLINE
    if hub_id is None:
        return PRESENCE_ONLINE
    return PRESENCE_VIA_HUB + validate_hub_id(hub_id).encode("ascii")


def decode_presence(payload: bytes) -> PresenceState | None:
    """Decode a device presence payload; None if it is not one (the caller counts it).

    An empty payload is a cleared retained message: offline.
    """
    if payload in (PRESENCE_OFFLINE, b""):
        return PresenceState(False)
    if payload == PRESENCE_ONLINE:
        return PresenceState(True)
    if payload.startswith(PRESENCE_VIA_HUB):
        try:
            hub = payload[len(PRESENCE_VIA_HUB) :].decode("ascii")
        except UnicodeDecodeError:
            return None
        if HUB_ID_RE.match(hub):
            return PresenceState(True, hub)
    return None


def decode_hub_presence(payload: bytes) -> bool | None:
    """A hub's presence payload is ``online`` or ``offline`` (empty: cleared, offline)."""
    if payload == PRESENCE_ONLINE:
        return True
    if payload in (PRESENCE_OFFLINE, b""):
        return False
    return None


@dataclass(frozen=True, slots=True)
class PresenceChange:
    device_id: str
    online: bool


@dataclass(slots=True)
class PresenceBook:
    """Effective presence of watched devices; a pure state machine.

    A device online through hub H is effectively online only while H's own presence says online:
    H's last-will covers every device that shares its connection. Until H's presence is known,
    such a device's state is unknown and no change is reported.
    """

    _devices: dict[str, PresenceState] = field(default_factory=dict)
    _hubs: dict[str, bool] = field(default_factory=dict)
    _effective: dict[str, bool] = field(default_factory=dict)

    def effective(self, device_id: str) -> bool | None:
        return self._effective.get(device_id)

    def device_update(self, device_id: str, state: PresenceState) -> list[PresenceChange]:
        self._devices[device_id] = state
        return self._recompute([device_id])

    def hub_update(self, hub_id: str, online: bool) -> list[PresenceChange]:
        self._hubs[hub_id] = online
        return self._recompute([d for d, s in self._devices.items() if s.hub == hub_id])

    def forget(self, device_id: str) -> None:
        self._devices.pop(device_id, None)
        self._effective.pop(device_id, None)

    def clear(self) -> None:
        self._devices.clear()
        self._hubs.clear()
        self._effective.clear()

    def _recompute(self, device_ids: Iterable[str]) -> list[PresenceChange]:
        changes = []
        for d in device_ids:
            state = self._devices[d]
            now: bool | None = state.online
            if state.online and state.hub is not None:
                now = self._hubs.get(state.hub)
            if now is not None and self._effective.get(d) != now:
                self._effective[d] = now
                changes.append(PresenceChange(d, now))
        return changes
