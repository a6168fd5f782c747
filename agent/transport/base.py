"""The transport boundary: what the runtime sees of the network, independent of MQTT.

This module owns the interface every transport implements and the values it hands out:

- ``Transport``, the abstract interface with its bounded receive queue, size limit and counters;
- ``Delivery``, the one event a transport hands to the runtime, and ``TransportStats``.

The values transports share live beside it, one job each: ``errors`` (``TransportError`` and its
subclasses), ``topics`` (the topic layout and name validation), ``presence`` (payloads and
``PresenceBook``), ``reconnect`` (``ReconnectPolicy``) and ``endpoint`` (``Endpoint``).
docs/PROTOCOL.md (section 13) describes the wire side (topics, QoS, retained presence,
reconnect policy).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from agent.transport.errors import (
    NotConnectedError,
    PayloadTooLargeError,
    TransportClosedError,
    TransportError,
)
from agent.transport.presence import PRESENCE_ONLINE
from agent.transport.topics import validate_device_id, validate_domain

DEFAULT_MAX_PAYLOAD = 1 << 20  # 1 MiB: a received payload above this is dropped and counted
DEFAULT_MAX_QUEUED = 10_000  # deliveries waiting for the runtime; beyond this they are dropped

log = logging.getLogger("edgefleet.transport")

Kind = Literal["inbox", "domain", "presence", "evidence", "revocation"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to the runtime.

    ``peer_id`` is the device the delivery is about: the device whose presence changed for
    ``presence``, the accused device for ``evidence``, the revoked one for ``revocation``. It is
    None for ``inbox`` and ``domain``: MQTT does not say who published, so only the signed
    payload can name the sender (and the inbox is always the receiving transport's own).
    ``domain`` is set for ``domain`` deliveries only. Presence payloads are normalised to
    ``b"online"`` or ``b"offline"`` (the effective state, see ``PresenceBook``).
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
    # Sends that raised a TransportError: the link was down (``send_not_connected``) or the
    # broker did not acknowledge in time or refused (``send_failures`` counts both).
    send_failures: int = 0
    send_not_connected: int = 0


@dataclass(slots=True)
class _Counters:
    sent: int = 0
    received: int = 0
    dropped_oversize: int = 0
    dropped_overflow: int = 0
    dropped_malformed: int = 0
    send_failures: int = 0
    send_not_connected: int = 0


def _worth_a_warning(n: int) -> bool:
    """The 1st, 10th, 100th, ... occurrence: loud at once, then rate-limited without a clock."""
    while n % 10 == 0:
        n //= 10
    return n == 1


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
        # How warnings name the device (the runtime sets its fleet name); the id by default.
        self.label = self.device_id

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
        try:
            await self._send_inbox(peer_id, payload)
        except TransportError as exc:
            self._send_failed(f"inbox of {peer_id}", exc)
            raise
        self._counters.sent += 1

    async def broadcast(self, domain: str, payload: bytes) -> None:
        """Publish to a domain (QoS 1). Members receive it, this device too if it is one."""
        self._check_out(validate_domain(domain), payload)
        try:
            await self._send_domain(domain, payload)
        except TransportError as exc:
            self._send_failed(f"domain {domain}", exc)
            raise
        self._counters.sent += 1

    async def publish_evidence(self, device_id: str, payload: bytes) -> None:
        """Publish fork evidence against ``device_id`` (retained, QoS 1)."""
        self._check_out(validate_device_id(device_id), payload)
        try:
            await self._send_evidence(device_id, payload)
        except TransportError as exc:
            self._send_failed(f"evidence against {device_id}", exc)
            raise
        self._counters.sent += 1

    def _send_failed(self, where: str, exc: TransportError) -> None:
        """Count a failed send and say so: a fleet that cannot send must not look healthy.

        The caller still gets the error (the runtime treats sends as best effort); the warning
        is rate-limited per device and reason (1st, 10th, 100th, ...), with the totals.
        """
        c = self._counters
        c.send_failures += 1
        if isinstance(exc, NotConnectedError):
            c.send_not_connected += 1
            n, reason = c.send_not_connected, "link down"
        else:
            n, reason = c.send_failures - c.send_not_connected, "not acknowledged"
        if _worth_a_warning(n):
            log.warning(
                "%s: send to %s failed (%s, %d such of %d failed sends, %d sent): %s",
                self.label,
                where,
                reason,
                n,
                c.send_failures,
                c.sent,
                exc,
            )

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

    async def watch_presences(self, peer_ids: Iterable[str]) -> None:
        """Follow the presence of every peer in ``peer_ids`` at once.

        The same as ``watch_presence`` for each, but an adapter subscribes them together: a
        device of a domain of N follows N - 1 peers, and one subscribe round trip per peer made
        the start of a 124-device street take N x (N - 1) = 15,252 sequential round trips
        (96-142 s) before any gossip core ran.
        """
        new = [p for p in dict.fromkeys(validate_device_id(p) for p in peer_ids)]
        new = [p for p in new if p not in self._watched]
        if new:
            self._watched.update(new)
            await self._watch_many(new)

    async def _watch_many(self, peer_ids: list[str]) -> None:
        """Adapters that can subscribe many topics in one request override this."""
        for peer_id in peer_ids:
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
            self._dropped("oversize", self._counters.dropped_oversize, delivery)
            return False
        if len(self._queue) >= self.max_queued:
            self._counters.dropped_overflow += 1
            self._dropped("overflow", self._counters.dropped_overflow, delivery)
            return False
        if delivery.kind == "presence" and delivery.peer_id is not None:
            if delivery.peer_id not in self._watched:
                return False
            self._presence[delivery.peer_id] = delivery.payload == PRESENCE_ONLINE
        self._counters.received += 1
        self._queue.append(delivery)
        self._ready.set()
        return True

    def _dropped(self, why: str, n: int, delivery: Delivery) -> None:
        if _worth_a_warning(n):
            limit = self.max_payload if why == "oversize" else self.max_queued
            log.warning(
                "%s: dropped a received %s message on %s (%s: limit %d; %d dropped so far)",
                self.label,
                delivery.kind,
                delivery.source_topic,
                why,
                limit,
                n,
            )

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
            c.send_failures,
            c.send_not_connected,
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
