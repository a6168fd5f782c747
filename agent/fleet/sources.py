"""Where a fleet's samples come from: the simulation, or a recorded trace.

A ``SampleSource`` steps through time like ``firmware_sim.fleet.Fleet``: ``now_ms`` is how far it
has got, ``targets(until)`` the step times up to ``until``, and ``step(t)`` the samples of
(now, t], in time order. The fleet runner drives any source the same way.

Also what a resume owes each device (``fast_forward``) and the samples a clock jump adds to every
device's chain (``jump_samples``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from agent.config.devices import FleetConfig
from firmware_sim.clock import JUMP_SENSOR
from firmware_sim.fleet import Fleet
from firmware_sim.samples import Sample
from firmware_sim.trace import TraceReader


class SampleSource(Protocol):
    now_ms: int

    def targets(self, until_ms: int) -> Iterator[int]: ...

    def step(self, until_ms: int) -> list[tuple[str, Sample]]: ...


def simulation(cfg: FleetConfig, step_ms: int) -> Fleet:
    return Fleet(cfg.fleet_spec(), step_ms=step_ms)


def fast_forward(
    source: SampleSource, until_ms: int, done: dict[str, int], owed_until: int
) -> list[tuple[str, Sample]]:
    """Step ``source`` to ``until_ms`` and return, in order, the samples still owed: those of a
    device in ``done`` (device -> time of its last durable reading) after that time and at or
    before ``owed_until`` (where the fleet as a whole stood). A device stopped behind the others
    catches up; one that had nothing to say (a washer between cycles) is owed nothing; a device
    not in ``done`` (no reading yet) and the time past ``owed_until`` (a realtime fleet's time
    off) are skipped."""
    owed = []
    for target in source.targets(until_ms):
        for name, sample in source.step(target):
            if done.get(name, sample.time_ms) < sample.time_ms <= owed_until:
                owed.append((name, sample))
    return owed


def jump_samples(
    names: Iterable[str], t_ms: int, jump_ms: int, why: str
) -> list[tuple[str, Sample]]:
    """A clock jump as one ``clock.jump_ms`` sample per device at ``t_ms`` (docs/TRACES.md)."""
    return [(name, Sample(t_ms, JUMP_SENSOR, jump_ms, text=why)) for name in names]


class TraceSource:
    """A recorded trace replayed step by step, samples unchanged (recorded times included).

    The trace's devices must all be in the devices.yaml the fleet runs (they supply kind, site
    and gossip domains); its samples end at the last recorded one.
    """

    def __init__(self, path: str, cfg: FleetConfig, step_ms: int) -> None:
        self.reader = TraceReader(path)
        known = {d.name for d in cfg.devices}
        missing = sorted(d.name for d in self.reader.header.devices if d.name not in known)
        if missing:
            raise ValueError(f"{path}: trace devices not in {cfg.source}: {', '.join(missing)}")
        self.step_ms = step_ms
        self.now_ms = self.reader.header.start_ms
        self._it = iter(self.reader)
        self._next: tuple[str, Sample] | None = next(self._it, None)
        self._started = False

    @property
    def end_ms(self) -> int | None:
        """Time of the next sample not yet stepped over (None when the trace is exhausted)."""
        return None if self._next is None else self._next[1].time_ms

    def targets(self, until_ms: int) -> Iterator[int]:
        t = self.now_ms
        if not self._started:
            yield t
        while t < until_ms and self._next is not None:
            t = min(t + self.step_ms, until_ms)
            yield t

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        self._started = True
        out = []
        while self._next is not None and self._next[1].time_ms <= until_ms:
            out.append(self._next)
            self._next = next(self._it, None)
        self.now_ms = max(self.now_ms, until_ms)
        return out
