"""Transports: how a device's agent reaches its peers.

``base`` holds the interface (``Transport``) and the event it hands out (``Delivery``); beside
it, one job each: ``errors``, ``topics`` (layout and name validation), ``presence`` (payloads and
``PresenceBook``), ``reconnect`` (the backoff policy) and ``endpoint`` (where a client connects).
``memory`` is the deterministic in-memory twin for protocol tests; ``mqtt`` is the one aiomqtt
adapter and ``brokers`` the one amqtt adapter. ``mqtt`` and ``brokers`` are not imported here so
that code and tests which only need the interface or the in-memory twin do not load paho.
"""

from __future__ import annotations

from agent.transport.base import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_QUEUED,
    Delivery,
    Kind,
    Transport,
    TransportStats,
)
from agent.transport.endpoint import Endpoint
from agent.transport.errors import (
    AttachError,
    InvalidNameError,
    NotConnectedError,
    PayloadTooLargeError,
    RefusedError,
    TransportClosedError,
    TransportError,
)
from agent.transport.memory import (
    MOSQUITTO_DEFAULTS,
    UNLIMITED,
    BrokerLimits,
    MemoryNetwork,
    MemoryTransport,
    NetworkStats,
)
from agent.transport.reconnect import ReconnectPolicy
from agent.transport.topics import DEFAULT_PREFIX, Topics, validate_device_id, validate_domain

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_PREFIX",
    "MOSQUITTO_DEFAULTS",
    "UNLIMITED",
    "AttachError",
    "BrokerLimits",
    "Delivery",
    "Endpoint",
    "InvalidNameError",
    "Kind",
    "MemoryNetwork",
    "MemoryTransport",
    "NetworkStats",
    "NotConnectedError",
    "PayloadTooLargeError",
    "ReconnectPolicy",
    "RefusedError",
    "Topics",
    "Transport",
    "TransportClosedError",
    "TransportError",
    "TransportStats",
    "validate_device_id",
    "validate_domain",
]
