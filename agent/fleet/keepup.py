"""``--speed max``: as fast as the fleet keeps up, on the network side too.

The runner already waits, after each simulated step, until every device has signed and stored
the step's samples (``DeviceAgent.drained``). That bounds the writers, not the receivers: on a
street of 300 fridges in one domain over one shared MQTT connection, the simulation sealed a
day's blocks in 9 minutes while the devices' receive queues grew to more than a million
deliveries (3,800 per device) that the settle could never drain (docs/PROTOCOL.md 13.10).

``KeepUp.wait`` is the second half of that backpressure: before the next step, it waits until
no running device has more than ``bound`` deliveries queued and unread (``Transport.pending``),
so simulated time advances only as fast as the devices take in each other's traffic. Progress
is any delivery taken from any queue: a fleet whose receive loops take nothing for ``stall_s``
wall seconds (stuck on something the next step would not help) lets the simulation go on, with
a warning: the run never hangs. A slow drain is not a stall: at a street's start every device
hears from hundreds of peers at once, and one shared connection sends their answers in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.transport.base import Transport

log = logging.getLogger("edgefleet.runner")

# Deliveries a device may have queued and unread when the next simulated step starts: a step's
# seals reach every member of a domain by broadcast, so a backlog of a few steps' traffic keeps
# the pipeline full without letting it grow.
KEEP_UP_QUEUED = 64
KEEP_UP_POLL_S = 0.05
KEEP_UP_STALL_S = 30.0


@dataclass
class KeepUpStats:
    steps: int = 0  # steps that waited
    waited_s: float = 0.0  # wall time spent waiting
    peak: int = 0  # the largest queue of one device seen before a step
    peak_after: int = 0  # ... and when a step was let go (at most ``bound`` unless it stalled)
    stalls: int = 0  # waits that gave up: no delivery was taken for ``stall_s``


class KeepUp:
    def __init__(
        self,
        bound: int = KEEP_UP_QUEUED,
        *,
        poll_s: float = KEEP_UP_POLL_S,
        stall_s: float = KEEP_UP_STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bound < 0:
            raise ValueError(f"keep-up bound: expected >= 0 deliveries, found {bound}")
        self.bound = bound
        self.poll_s = poll_s
        self.stall_s = stall_s
        self._clock = clock
        self.stats = KeepUpStats()

    def summary(self) -> str:
        """One line for the log at the end of a run."""
        s = self.stats
        return (
            f"--speed max waited {s.waited_s:.1f} s in {s.steps} steps for the receivers "
            f"(longest queue {s.peak} before a step, {s.peak_after} when it went; bound "
            f"{self.bound}; {s.stalls} stalls)"
        )

    @staticmethod
    def backlog(transports: Iterable[Transport]) -> int:
        """The longest receive queue among ``transports``."""
        return max((t.pending() for t in transports), default=0)

    @staticmethod
    def taken(transports: Iterable[Transport]) -> int:
        """Deliveries the receive loops of ``transports`` have taken so far."""
        return sum(t.stats().received - t.pending() for t in transports)

    async def wait(
        self, transports: Callable[[], Iterable[Transport]], stop: asyncio.Event
    ) -> None:
        """Return once no transport of ``transports()`` (re-read each poll: devices may fail)
        holds more than ``bound`` deliveries, ``stop`` is set, or the backlog stalled."""
        stats = self.stats
        worst = self.backlog(transports())
        stats.peak = max(stats.peak, worst)
        if worst <= self.bound:
            stats.peak_after = max(stats.peak_after, worst)
            return
        start = last_progress = self._clock()
        taken = self.taken(transports())
        while worst > self.bound and not stop.is_set():
            if self._clock() - last_progress >= self.stall_s:
                stats.stalls += 1
                log.warning(
                    "no device took a received message for %.0f s (%d queued on one device): "
                    "the simulation goes on",
                    self.stall_s,
                    worst,
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)
            now_taken = self.taken(transports())
            if now_taken != taken:
                taken, last_progress = now_taken, self._clock()
            worst = self.backlog(transports())
        stats.steps += 1
        stats.waited_s += self._clock() - start
        stats.peak_after = max(stats.peak_after, worst)
