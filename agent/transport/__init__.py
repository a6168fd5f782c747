"""Transports: how a device's agent reaches its peers.

``base`` holds the interface and the values every transport shares (topics, deliveries, presence,
errors, backoff); ``memory`` is the deterministic in-memory twin for protocol tests; ``mqtt`` is
the one aiomqtt adapter. ``mqtt`` is not imported here so that code and tests which only need the
interface or the in-memory twin do not load paho.
"""

from __future__ import annotations

from agent.transport.base import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_QUEUED,
    DEFAULT_PREFIX,
    Delivery,
    Endpoint,
    InvalidNameError,
    Kind,
    NotConnectedError,
    PayloadTooLargeError,
    ReconnectPolicy,
    Topics,
    Transport,
    TransportClosedError,
    TransportError,
    TransportStats,
    raise_fd_limit,
    validate_device_id,
    validate_domain,
)
from agent.transport.memory import MemoryNetwork, MemoryTransport, NetworkStats

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_PREFIX",
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
    "Topics",
    "Transport",
    "TransportClosedError",
    "TransportError",
    "TransportStats",
    "raise_fd_limit",
    "validate_device_id",
    "validate_domain",
]
