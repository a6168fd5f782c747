"""The byte link a driver reads and writes, and an in-memory twin of it for tests.

``port.SerialPort`` is the real link (pyserial). ``MemoryLink`` holds injected bytes and can
answer writes through a responder (for example ``sim.XyMd02Sim.respond``), so drivers run
without hardware, threads or sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ByteLink(Protocol):
    """What a driver needs from a serial line."""

    name: str

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        """Wait up to ``timeout_s`` for the first byte; return it and whatever else is waiting
        (at most ``max_bytes``). ``b""`` means the timeout passed with nothing received."""
        ...

    def write(self, data: bytes) -> None: ...

    def discard_input(self) -> None:
        """Drop bytes received but not yet read."""
        ...

    def close(self) -> None: ...


class MemoryLink:
    """In-memory ``ByteLink``: reads never block; nothing arrives unless injected or answered."""

    def __init__(
        self, name: str = "memory", responder: Callable[[bytes], bytes] | None = None
    ) -> None:
        self.name = name
        self.responder = responder
        self.incoming = bytearray()
        self.written: list[bytes] = []
        self.closed = False

    def inject(self, data: bytes) -> None:
        self.incoming += data

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        out = bytes(self.incoming[:max_bytes])
        del self.incoming[:max_bytes]
        return out

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        if self.responder is not None:
            self.incoming += self.responder(bytes(data))

    def discard_input(self) -> None:
        self.incoming.clear()

    def close(self) -> None:
        self.closed = True
