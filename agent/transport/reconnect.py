"""How a client waits before reconnecting: exponential backoff with full jitter, seeded.

The policy only computes delays; the adapter sleeps (through an injected sleep) and draws from
an injected ``random.Random``, so a seed reproduces the delays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


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
