"""Where a client connects: ``Endpoint`` (host, port, TLS context, credentials).

Brokers give one once started (agent/transport/brokers.py); the MQTT adapter connects to it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field


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
