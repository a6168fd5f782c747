"""The event loop shared by the appliance models: jump from one due event to the next.

Between events nothing switches, so a model evolves its physics in closed form over the whole
gap. Events are: the next periodic sample, wake-ups a model scheduled (door closes, alarm delays,
phase ends, failures recover) and the next threshold crossing its physics predicts (thermostat
switch points, alarm bands). A handler re-checks all its conditions at each event, so stale
wake-ups are harmless and the order of simultaneous events is fixed by the handler's code.
"""

from __future__ import annotations

import heapq
import math
import random
from abc import abstractmethod

from firmware_sim.appliances.base import Appliance
from firmware_sim.samples import Sample

NEVER_MS = 1 << 62


def after(now_ms: int, dt_ms: float) -> int:
    """The first whole millisecond strictly after ``now_ms`` at which ``dt_ms`` has elapsed."""
    if dt_ms == math.inf:
        return NEVER_MS
    return now_ms + max(1, math.ceil(dt_ms))


class EventLoopAppliance(Appliance):
    """An appliance whose ``advance`` runs the event loop; subclasses supply the physics.

    Actions (door, items, failures) start with ``_begin_action(now)`` (advance, then sync the
    physics to ``now``) before changing the mode, so the change takes effect from exactly ``now``.
    """

    def __init__(self, name: str, rng: random.Random, start_ms: int, sample_period_ms: int) -> None:
        super().__init__(name, rng, start_ms)
        self._sample_period_ms = sample_period_ms
        self._next_sample_ms = start_ms
        self._wakeups: list[int] = []
        self._crossing_ms: int | None = None
        self._phys_ms = start_ms  # the instant the physical state describes (lazily advanced)
        self._carry: list[Sample] = []  # samples produced by an action that then raised

    def advance(self, now_ms: int) -> list[Sample]:
        self._check_time(now_ms)
        return self._apply_faults(self._run_until(now_ms))

    def _run_until(self, now_ms: int) -> list[Sample]:
        out, self._carry = self._carry, []
        wakeups = self._wakeups
        while True:
            crossing = self._crossing_ms
            if crossing is None:
                crossing = self._crossing_ms = self._next_crossing_ms()
            t = min(self._next_sample_ms, crossing, wakeups[0] if wakeups else NEVER_MS)
            if t > now_ms:
                break
            self._sync(t)
            self.now_ms = t
            while wakeups and wakeups[0] <= t:
                heapq.heappop(wakeups)
            if crossing <= t:
                self._crossing_ms = None
            self._handle(t, out)
            if self._next_sample_ms <= t:
                self._next_sample_ms = t + self._sample_period_ms
        # Physics catches up lazily (at the next event or read), so an advance with nothing
        # due costs a comparison, whatever the caller's step.
        self.now_ms = now_ms
        return out

    def _begin_action(self, now_ms: int) -> list[Sample]:
        """Advance to ``now_ms`` for an action; returns the samples due on the way (no faults
        applied yet) with the physics synced to ``now_ms``."""
        self._check_time(now_ms)
        out = self._run_until(now_ms)
        self._sync()
        return out

    def _keep(self, out: list[Sample]) -> None:
        """An action fails after advancing: return its samples with the next call instead."""
        self._carry = out + self._carry

    def _sync(self, t_ms: int | None = None) -> None:
        """Bring the physical state to ``t_ms`` (default: the model's clock)."""
        t = self.now_ms if t_ms is None else t_ms
        if t > self._phys_ms:
            self._evolve(t - self._phys_ms)
            self._phys_ms = t

    def _wake_at(self, t_ms: int) -> None:
        heapq.heappush(self._wakeups, t_ms)

    def _invalidate(self) -> None:
        """The physics mode changed: the predicted crossing must be recomputed."""
        self._crossing_ms = None

    def _sample_due(self, t_ms: int) -> bool:
        return self._next_sample_ms <= t_ms

    @abstractmethod
    def _evolve(self, dt_ms: int) -> None:
        """Advance the physics ``dt_ms`` (>= 0) in the current mode."""

    @abstractmethod
    def _handle(self, t_ms: int, out: list[Sample]) -> None:
        """Act on everything due at ``t_ms``; append the samples produced to ``out``."""

    @abstractmethod
    def _next_crossing_ms(self) -> int:
        """Absolute time of the next threshold crossing in the current mode, or NEVER_MS.

        Called with the physics synced to ``self.now_ms``."""
