"""The transport boundary: what the runtime sees of the network, independent of MQTT.

This module owns the values every transport shares and nothing that does I/O:

- the topic layout (``Topics``) and the validation of every name that becomes a topic level
  (device ids, domain names, hub ids, the prefix), so that no name can ever hold an MQTT wildcard;
- ``Delivery``, the one event a transport hands to the runtime, and ``TransportStats``;
- the presence payloads and ``PresenceBook``, which resolves "online through shared connection H"
  against H's own presence (a shared connection has one last-will for all of its devices);
- the reconnect backoff (``ReconnectPolicy``: exponential, full jitter, seeded);
- the errors (``TransportError`` and its subclasses; foreign errors are mapped to these by the
  adapters, at the boundary only);
- ``Transport``, the abstract interface with its bounded receive queue, size limit and counters;
- ``raise_fd_limit`` for processes that open many connections.

docs/PROTOCOL.md (section 13) describes the wire side (topics, QoS, retained presence,
reconnect policy).
"""

from __future__ import annotations

import abc
import asyncio
import random
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from agent.errors import AgentError, RemoteError, UsageError
from ledger.identity import DEVICE_ID_RE, is_device_id

DEFAULT_PREFIX = "edgefleet"
PROTOCOL_LEVEL = "v1"
DEFAULT_MAX_PAYLOAD = 1 << 20  # 1 MiB: a received payload above this is dropped and counted
DEFAULT_MAX_QUEUED = 10_000  # deliveries waiting for the runtime; beyond this they are dropped

# Domain names follow devices.yaml's site / gossip-domain ids (agent.config.devices.NAME_RE).
DOMAIN_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HUB_ID_RE = DOMAIN_RE
_PREFIX_LEVEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_PREFIX_LEVELS = 8

Kind = Literal["inbox", "domain", "presence", "evidence"]
RouteKind = Literal["inbox", "domain", "presence", "evidence", "hub"]

PRESENCE_ONLINE = b"online"
PRESENCE_OFFLINE = b"offline"
PRESENCE_VIA_HUB = b"online:"  # followed by the hub id: online through a shared connection


# --------------------------------------------------------------------------- errors


class TransportError(AgentError, code="transport"):
    """Base of every error a transport raises; adapters map foreign errors to this."""


class InvalidNameError(TransportError, UsageError, ValueError, code="invalid-name"):
    """A device id, domain, hub id or prefix cannot be used as a topic level (our bug)."""


class PayloadTooLargeError(TransportError, UsageError, ValueError, code="payload-too-large"):
    """We tried to send more bytes than the transport's payload limit (our bug)."""


class AttachError(TransportError, UsageError, code="attach"):
    """A device was attached twice, or to a network or hub that lacks it or is not started."""


class RefusedError(TransportError, RemoteError, code="refused"):
    """The broker refused what we asked (a subscription its ACL denies)."""


class NotConnectedError(TransportError, code="not-connected"):
    """The link to the broker is down: nothing was sent (or the broker never acknowledged it).

    Nothing is queued for later: the runtime keeps its state durably and anti-entropy repairs
    what a failed send did not deliver.
    """


class TransportClosedError(TransportError, code="closed"):
    """The transport was closed and every delivery it held has been taken."""


# --------------------------------------------------------------------------- names and topics


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
            case ["domain", dom] if DOMAIN_RE.match(dom):
                return Route("domain", dom)
            case ["hub", hub, "presence"] if HUB_ID_RE.match(hub):
                return Route("hub", hub)
        return None


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to the runtime.

    ``peer_id`` is the device the delivery is about: the device whose presence changed for
    ``presence``, the accused device for ``evidence``. It is None for ``inbox`` and ``domain``:
    MQTT does not say who published, so only the signed payload can name the sender (and the
    inbox is always the receiving transport's own). ``domain`` is set for ``domain`` deliveries
    only. Presence payloads are normalised to ``b"online"`` or ``b"offline"`` (the effective
    state, see ``PresenceBook``).
    """

    source_topic: str
    kind: Kind
    peer_id: str | None
    payload: bytes
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters of one transport (a device's view), as a snapshot."""

    sent: int = 0
    received: int = 0
    dropped_oversize: int = 0
    dropped_overflow: int = 0
    dropped_malformed: int = 0
    reconnects: int = 0


@dataclass(slots=True)
class _Counters:
    sent: int = 0
    received: int = 0
    dropped_oversize: int = 0
    dropped_overflow: int = 0
    dropped_malformed: int = 0


# --------------------------------------------------------------------------- presence


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


# --------------------------------------------------------------------------- reconnect policy


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential backoff, full jitter: attempt n waits uniform [0, min(cap, base * 2^n)] ms."""

    base_ms: int = 250
    cap_ms: int = 30_000

    def __post_init__(self) -> None:
        if not 0 < self.base_ms <= self.cap_ms:
            raise ValueError(
                f"reconnect policy: expected 0 < base_ms <= cap_ms, found "
                f"base_ms={self.base_ms}, cap_ms={self.cap_ms}"
            )

    def ceiling_ms(self, attempt: int) -> int:
        if attempt < 0:
            raise ValueError(f"reconnect attempt: expected >= 0, found {attempt}")
        return min(self.cap_ms, self.base_ms << min(attempt, 40))

    def delay_ms(self, attempt: int, rng: random.Random) -> int:
        return rng.randint(0, self.ceiling_ms(attempt))


# --------------------------------------------------------------------------- endpoint


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a client connects: host, port, and TLS / credentials when the broker wants them."""

    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("endpoint: expected a host name, found an empty string")
        if not 0 < self.port < 65536:
            raise ValueError(f"endpoint: expected a port in 1..65535, found {self.port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://{host}:{self.port}"


# --------------------------------------------------------------------------- the interface


class Transport(abc.ABC):
    """A device's link to its peers: inbox, domain broadcasts, presence, fork evidence.

    Sending raises ``NotConnectedError`` while the link is down; nothing is queued. Received
    deliveries wait in a bounded queue (``max_queued``; overflow is dropped and counted); a
    payload above ``max_payload`` bytes is dropped and counted. Iterating the transport yields
    deliveries until it is closed.
    """

    def __init__(
        self,
        device_id: str,
        domains: Iterable[str] = (),
        *,
        evidence: bool = True,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        if max_payload <= 0 or max_queued <= 0:
            raise ValueError(
                f"transport limits: expected max_payload > 0 and max_queued > 0, "
                f"found {max_payload} and {max_queued}"
            )
        self.device_id = validate_device_id(device_id)
        self.domains: tuple[str, ...] = tuple(dict.fromkeys(validate_domain(d) for d in domains))
        self.evidence = evidence
        self.max_payload = max_payload
        self.max_queued = max_queued
        self._queue: deque[Delivery] = deque()
        self._ready = asyncio.Event()
        self._counters = _Counters()
        self._presence: dict[str, bool] = {}
        self._watched: set[str] = set()
        self._closed = False

    # -- what an adapter implements

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while sends can reach the broker (or the in-memory network)."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect (idempotent); raise TransportError if the first connection fails."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Announce offline, leave, and end iteration once queued deliveries are taken."""

    @abc.abstractmethod
    async def wait_connected(self) -> None:
        """Return once the link is up (at once if it is)."""

    @abc.abstractmethod
    async def _send_inbox(self, peer_id: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    async def _send_domain(self, domain: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    async def _send_evidence(self, device_id: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    async def _watch(self, peer_id: str) -> None: ...

    @abc.abstractmethod
    async def _unwatch(self, peer_id: str) -> None: ...

    @abc.abstractmethod
    def _reconnects(self) -> int: ...

    # -- sending

    async def send(self, peer_id: str, payload: bytes) -> None:
        """Publish ``payload`` to ``peer_id``'s inbox (QoS 1); return once the broker has it."""
        self._check_out(validate_device_id(peer_id), payload)
        await self._send_inbox(peer_id, payload)
        self._counters.sent += 1

    async def broadcast(self, domain: str, payload: bytes) -> None:
        """Publish to a domain (QoS 1). Members receive it, this device too if it is one."""
        self._check_out(validate_domain(domain), payload)
        await self._send_domain(domain, payload)
        self._counters.sent += 1

    async def publish_evidence(self, device_id: str, payload: bytes) -> None:
        """Publish fork evidence against ``device_id`` (retained, QoS 1)."""
        self._check_out(validate_device_id(device_id), payload)
        await self._send_evidence(device_id, payload)
        self._counters.sent += 1

    def _check_out(self, name: str, payload: bytes) -> None:
        if self._closed:
            raise TransportClosedError(f"transport of {self.device_id} is closed")
        if not isinstance(payload, bytes):
            raise TypeError(f"payload to {name}: expected bytes, found {type(payload).__name__}")
        if len(payload) > self.max_payload:
            raise PayloadTooLargeError(
                f"payload to {name}: {len(payload)} bytes exceeds the limit of {self.max_payload}"
            )

    # -- presence

    async def watch_presence(self, peer_id: str) -> None:
        """Follow ``peer_id``'s presence; changes arrive as ``presence`` deliveries."""
        validate_device_id(peer_id)
        if peer_id not in self._watched:
            self._watched.add(peer_id)
            await self._watch(peer_id)

    async def unwatch_presence(self, peer_id: str) -> None:
        validate_device_id(peer_id)
        if peer_id in self._watched:
            self._watched.discard(peer_id)
            self._presence.pop(peer_id, None)
            await self._unwatch(peer_id)

    def presence(self, peer_id: str) -> bool | None:
        """Last known presence of a watched peer: True, False, or None if not known yet."""
        return self._presence.get(peer_id)

    def online_peers(self) -> frozenset[str]:
        return frozenset(p for p, up in self._presence.items() if up)

    # -- receiving

    def _accept(self, delivery: Delivery) -> bool:
        """Queue a delivery from the adapter, enforcing the size and queue bounds."""
        if self._closed:
            return False
        if len(delivery.payload) > self.max_payload:
            self._counters.dropped_oversize += 1
            return False
        if len(self._queue) >= self.max_queued:
            self._counters.dropped_overflow += 1
            return False
        if delivery.kind == "presence" and delivery.peer_id is not None:
            if delivery.peer_id not in self._watched:
                return False
            self._presence[delivery.peer_id] = delivery.payload == PRESENCE_ONLINE
        self._counters.received += 1
        self._queue.append(delivery)
        self._ready.set()
        return True

    def _count_malformed(self) -> None:
        self._counters.dropped_malformed += 1

    def _mark_closed(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        """Deliveries queued and not yet taken."""
        return len(self._queue)

    def receive_nowait(self) -> Delivery | None:
        if not self._queue:
            return None
        delivery = self._queue.popleft()
        if not self._queue and not self._closed:
            self._ready.clear()
        return delivery

    async def receive(self) -> Delivery:
        """The next delivery; raises TransportClosedError once closed and drained."""
        while True:
            delivery = self.receive_nowait()
            if delivery is not None:
                return delivery
            if self._closed:
                raise TransportClosedError(f"transport of {self.device_id} is closed")
            await self._ready.wait()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            try:
                yield await self.receive()
            except TransportClosedError:
                return

    def stats(self) -> TransportStats:
        c = self._counters
        return TransportStats(
            c.sent,
            c.received,
            c.dropped_oversize,
            c.dropped_overflow,
            c.dropped_malformed,
            self._reconnects(),
        )

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# --------------------------------------------------------------------------- process limits


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now.

    Every MQTT connection is a descriptor (two for an in-process broker). Call once at start.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    targets = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16]
    for target in targets:
        if soft != resource.RLIM_INFINITY and soft >= target:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return target
    return soft
