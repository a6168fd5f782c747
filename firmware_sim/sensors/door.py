"""Door reed switch: ``door.open`` 1 when the door opens, 0 when it closes (on change only).

The door stays open until the latest close time anyone asked for, so overlapping openings (a
user opens the door while stocking) merge into one.
"""

from __future__ import annotations

from firmware_sim.samples import Sample

SENSOR = "door.open"


class Door:
    __slots__ = ("close_at_ms", "is_open", "opened_at_ms")

    def __init__(self) -> None:
        self.is_open = False
        self.opened_at_ms = 0
        self.close_at_ms = 0

    def open_until(self, t_ms: int, close_at_ms: int, out: list[Sample]) -> bool:
        """Open (or keep open) until ``close_at_ms``; True when the door was closed before."""
        self.close_at_ms = max(self.close_at_ms, close_at_ms) if self.is_open else close_at_ms
        if self.is_open:
            return False
        self.is_open = True
        self.opened_at_ms = t_ms
        out.append(Sample(t_ms, SENSOR, 1))
        return True

    def close_if_due(self, t_ms: int, out: list[Sample]) -> bool:
        """Close the door when its close time has come; True when it closed now."""
        if self.is_open and self.close_at_ms <= t_ms:
            self.is_open = False
            out.append(Sample(t_ms, SENSOR, 0))
            return True
        return False
