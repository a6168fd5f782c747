"""Where a fleet's samples come from: the simulation, or a recorded trace.

A ``SampleSource`` steps through time like ``firmware_sim.fleet.Fleet``: ``now_ms`` is how far it
has got, ``targets(until)`` the step times up to ``until``, and ``step(t)`` the samples of
(now, t], in time order. The fleet runner drives any source the same way.

Also what a resume owes each device (``fast_forward``), the samples a clock jump adds to every
device's chain (``jump_samples``), and the containment of a simulated appliance whose model
raises (``SensorGuard``: that device fails alone, with one line naming it, the devices file and
the fix).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.config.devices import FleetConfig
from agent.errors import AgentError
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


class SensorError(AgentError, code="sensor"):
    """A simulated appliance's model (its sensors) raised: that device stops, the others run."""


class _Guarded:
    """An appliance model whose ``advance`` (where its sensors are read) is contained: when it
    raises, the failure is noted for the runner and the model is read no more (its samples are
    none from then on). Everything else is the model's own."""

    def __init__(self, name: str, model: Any, failed: dict[str, SensorError], source: str) -> None:
        self._name = name
        self._model = model
        self._failed = failed
        self._source = source

    def advance(self, now_ms: int) -> list[Sample]:
        if self._name in self._failed:
            return []
        try:
            samples: list[Sample] = self._model.advance(now_ms)
        except Exception as exc:  # contained: this device fails, the rest of the fleet runs
            what = " ".join(str(exc).split()) or type(exc).__name__
            self._failed[self._name] = SensorError(
                f"its simulated sensors failed at {_when(now_ms)} ({type(exc).__name__}: {what}): "
                f"the device stopped, what it signed is kept; check its sensors and faults in "
                f"{self._source}, then run again"
            )
            return []
        return samples

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._model, attr)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class SensorGuard:
    """Contains the failures of a simulation's appliance models per device (issue: one bad
    device never takes down the rest). ``new()`` hands the failures not yet reported, each
    once: device name -> the error the runner fails that device with. A source without
    appliance models (a trace) has nothing to guard."""

    def __init__(self, source: object, cfg: FleetConfig) -> None:
        self.failed: dict[str, SensorError] = {}
        self._reported: set[str] = set()
        appliances = getattr(source, "appliances", None)
        if isinstance(appliances, dict):
            where = str(cfg.source) if cfg.source else "the devices file"
            for name, model in list(appliances.items()):
                appliances[name] = _Guarded(name, model, self.failed, where)

    def new(self) -> dict[str, SensorError]:
        out = {n: e for n, e in self.failed.items() if n not in self._reported}
        self._reported.update(out)
        return out
