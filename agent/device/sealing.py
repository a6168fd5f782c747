"""When to seal a block: by size or by age, whichever comes first (pure, time as an argument)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SealPolicy:
    """Seal when ``max_readings`` are pending, or when the oldest pending reading is
    ``max_age_ms`` old. Both are bounded so a block stays small and a reading never waits long
    to be published."""

    max_readings: int = 64
    max_age_ms: int = 10 * 60_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_readings <= 4096:
            raise ValueError(f"max_readings must be in 1..4096, found {self.max_readings}")
        if self.max_age_ms <= 0:
            raise ValueError(f"max_age_ms must be > 0, found {self.max_age_ms}")

    def due(self, pending: int, oldest_ms: int | None, now_ms: int) -> bool:
        if pending <= 0 or oldest_ms is None:
            return False
        return pending >= self.max_readings or now_ms - oldest_ms >= self.max_age_ms

    def deadline(self, oldest_ms: int | None) -> int | None:
        """When age alone will make a seal due (None with nothing pending)."""
        return None if oldest_ms is None else oldest_ms + self.max_age_ms
