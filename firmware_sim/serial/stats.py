"""Parser counters and the chunked-feed base shared by every sans-I/O frame parser.

A parser never raises on bytes from the wire: it counts what it rejected here and drops it.
Between calls a parser retains fewer than ``max_frame`` bytes (one undecided candidate: with
``max_frame`` bytes every candidate is decided). ``FrameParser.feed`` slices its input into chunks
of ``max_frame`` bytes, so even inside one call the buffer stays below ``2 * max_frame``, whatever
the caller hands in at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

F = TypeVar("F")


@dataclass(slots=True)
class ParserStats:
    """What a parser has seen so far (monotonic counters)."""

    frames: int = 0  # good frames emitted
    bad_checksum: int = 0  # complete, well-formed candidates whose checksum or CRC failed
    malformed: int = 0  # candidates rejected on structure (bad character, terminator, length)
    garbage_bytes: int = 0  # bytes dropped while hunting for the start of a frame

    @property
    def rejected(self) -> int:
        """Frames that were started but never emitted."""
        return self.bad_checksum + self.malformed

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FrameParser(ABC, Generic[F]):
    """``feed(bytes) -> list[frame]``; subclasses implement ``_drain`` over ``self._buf``."""

    #: longest frame this parser accepts; the retained buffer stays below it between calls.
    max_frame: int = 64

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = ParserStats()

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[F]:
        """Consume bytes split at any boundary; return the complete, verified frames."""
        out: list[F] = []
        step = self.max_frame
        for start in range(0, len(data), step):
            self._buf += data[start : start + step]
            out.extend(self._drain())
        return out

    def reset(self) -> None:
        """Drop a partial frame (counted as garbage)."""
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()

    def _discard(self, n: int) -> None:
        """Drop ``n`` leading bytes that cannot start a frame."""
        self.stats.garbage_bytes += n
        del self._buf[:n]

    def _emit(self, n: int) -> None:
        """Consume an accepted frame of ``n`` bytes."""
        self.stats.frames += 1
        del self._buf[:n]

    @abstractmethod
    def _drain(self) -> list[F]:
        """Extract every decidable frame from ``self._buf``; leave an undecided prefix."""
