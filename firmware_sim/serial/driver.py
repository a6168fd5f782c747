"""What every sensor driver offers: blocking ``read(timeout_s) -> list[Sample]``, ``close()``.

A driver owns one link (or file), one parser and its counters. Time comes from an injected
``clock`` (a callable returning Unix milliseconds) so the agent can use its own clock and tests a
simulated one; the link's blocking read bounds real waiting. Bytes from the sensor never raise:
bad frames are counted in ``stats`` and dropped. Only the OS failing us raises (``PortError``).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from firmware_sim.samples import SENSOR_RE, Sample
from firmware_sim.serial.errors import SensorConfigError
from firmware_sim.serial.stats import ParserStats

Clock = Callable[[], int]
READ_CHUNK = 256


def wall_clock_ms() -> int:
    """Unix time in milliseconds: the default clock."""
    return time.time_ns() // 1_000_000


def timeout_ms(timeout_s: float) -> int:
    if timeout_s < 0:
        raise SensorConfigError(f"timeout must be >= 0 seconds, found {timeout_s}")
    return math.ceil(timeout_s * 1000)


class ReadBudget:
    """How long one ``read`` may still wait.

    Measured on the injected clock (so simulated time ends a read), and also on the monotonic
    clock, so a wall clock stepped backwards (NTP at boot) cannot stretch a read past its timeout.
    """

    def __init__(self, clock: Clock, timeout_s: float) -> None:
        self._clock = clock
        self.deadline_ms = clock() + timeout_ms(timeout_s)
        self._real_end = time.monotonic() + timeout_s

    def wait_s(self, until_ms: int | None = None) -> float:
        """Seconds to block from now: to the deadline, or to ``until_ms`` if that is earlier."""
        target = self.deadline_ms if until_ms is None else min(self.deadline_ms, until_ms)
        by_clock = (target - self._clock()) / 1000
        return max(0.0, min(by_clock, self._real_end - time.monotonic()))

    def expired(self) -> bool:
        return self._clock() >= self.deadline_ms or time.monotonic() >= self._real_end


@dataclass(slots=True)
class DriverStats:
    """Counters a maker reads to judge the wiring."""

    parser: ParserStats = field(default_factory=ParserStats)
    timeouts: int = 0  # polls the device did not answer in time
    device_errors: int = 0  # Modbus exception responses
    suspect: int = 0  # readings emitted with a "suspect:" text
    duplicates: int = 0  # bridge records repeated with the same seq (dropped)
    seq_gaps: int = 0  # bridge records missing between two seqs
    unconfirmed: int = 0  # RFID tags seen fewer than `confirm` times (never reported)
    last_error: str | None = None

    @property
    def bad_frames(self) -> int:
        return self.parser.rejected

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"frames": self.parser.frames, "bad_frames": self.bad_frames}
        d.update(self.parser.as_dict())
        for name in ("timeouts", "device_errors", "suspect", "duplicates", "seq_gaps"):
            d[name] = getattr(self, name)
        d["unconfirmed"] = self.unconfirmed
        if self.last_error is not None:
            d["last_error"] = self.last_error
        return d


class SerialSensor(ABC):
    """Base of the drivers returned by ``factory.open_sensor``."""

    driver: str = ""

    def __init__(self, *, clock: Clock | None = None, prefix: str = "") -> None:
        if prefix and not SENSOR_RE.fullmatch(prefix + ".x"):
            raise SensorConfigError(f"sensor prefix {prefix!r} does not fit {SENSOR_RE.pattern}")
        self._clock: Clock = clock or wall_clock_ms
        self._prefix = prefix + "." if prefix else ""
        self.stats = DriverStats()

    def sensor_name(self, suffix: str) -> str:
        """``temp_mc`` or, with a prefix, ``fridge.temp_mc``."""
        return self._prefix + suffix

    @abstractmethod
    def read(self, timeout_s: float) -> list[Sample]:
        """Block up to ``timeout_s`` for new samples; ``[]`` if none came in that time."""

    @abstractmethod
    def close(self) -> None:
        """Release the device."""

    def __enter__(self) -> SerialSensor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
