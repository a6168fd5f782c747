"""Alarms with a delay: raised when a condition has held for ``delay_ms``, cleared when it ends.

An alarm is emitted as a sample on its own sensor (``alarm.<what>``): value 1 with a text saying
why when raised, value 0 when cleared. Delays keep a brief door opening from paging anyone.
"""

from __future__ import annotations

from collections.abc import Callable

from firmware_sim.samples import Sample


class DelayedAlarm:
    __slots__ = ("delay_ms", "raised", "sensor", "since_ms")

    def __init__(self, sensor: str, delay_ms: int) -> None:
        self.sensor = sensor
        self.delay_ms = delay_ms
        self.since_ms: int | None = None
        self.raised = False

    def update(
        self,
        t_ms: int,
        condition: bool,
        text: str,
        out: list[Sample],
        wake_at: Callable[[int], None],
    ) -> None:
        """Re-evaluate at ``t_ms``; ``wake_at`` schedules the moment the delay runs out."""
        if not condition:
            self.since_ms = None
            if self.raised:
                self.raised = False
                out.append(Sample(t_ms, self.sensor, 0, text="cleared"))
            return
        if self.since_ms is None:
            self.since_ms = t_ms
            if self.delay_ms > 0:
                wake_at(t_ms + self.delay_ms)
        if not self.raised and t_ms >= self.since_ms + self.delay_ms:
            self.raised = True
            out.append(Sample(t_ms, self.sensor, 1, text=text[:64]))
