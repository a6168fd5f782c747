"""The fleet simulation: every appliance and the world of items under one clock.

``Fleet(spec)`` builds the appliance models (each with its own ``random.Random`` derived from the
fleet seed and the device name), injects their configured sensor faults and builds the world.
``run_until(t)`` yields ``(device_name, Sample)`` in time order up to and including ``t``; time
advances in fixed steps of ``step_ms`` (world events happen at their exact times inside a step).
``run(clock, t)`` does the same paced on a ``Clock``: a SimClock makes it as fast as the CPU
allows, a RealClock makes it real time.

The output is a pure function of the spec and ``step_ms``: the same spec and step give the same
samples, byte for byte. Each device's own samples (times, values, tags, texts and their order)
do not depend on ``step_ms``: the appliance models are event-driven, with closed-form physics
between exact event times, so ``advance`` called in any pieces gives the same samples (tested per
model in tests/firmware_sim/test_appliances_refrigerator.py and
test_appliances_medical_freezer.py), and the world performs every event at its own time,
whatever the step. What ``step_ms`` decides is the interleaving of samples of different devices
that carry the same ``time_ms``: a step's batch is sorted by time, ties in emission order (world
events first, each advancing its appliance to the event's time, then every appliance's advance
to the step's end, in spec order), and where step boundaries fall decides which device emits a
tie first. (The 7-day demo fleet gives identical output for 1 s and 60 s steps, and reorders
47 of 105,408 samples for a 7 s step, 15,687 for 1 h; as multisets and per device, all equal.)
``run`` releases a step's samples when the clock reaches the step's end, so in real time a sample
comes up to ``step_ms`` after its ``time_ms``.

A device whose spec names serial sensors has the replaced sensors' simulated samples dropped
(all of its samples when a serial spec lists no sensors); the caller merges the real ones.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.appliances import APPLIANCE_TYPES, Appliance, make_appliance
from firmware_sim.clock import Clock
from firmware_sim.samples import Sample
from firmware_sim.sensors.faults import FaultSpec
from firmware_sim.trace import TraceDevice, TraceHeader
from firmware_sim.world import World, WorldDevice, WorldSpec

DEFAULT_STEP_MS = 60_000


class FleetError(ValueError):
    """The fleet spec is inconsistent (a device at an unknown site, duplicate names)."""


@dataclass(frozen=True, slots=True)
class SiteSpec:
    id: str
    kind: str  # household | street | blood_station | transport | hospital


@dataclass(frozen=True, slots=True)
class SerialSpec:
    """A real sensor on a serial line that replaces simulated sensors of its device."""

    driver: str
    port: str
    baud: int | None  # None: the driver's default
    options: Mapping[str, str | int | bool] = field(default_factory=dict)
    sensors: tuple[str, ...] = ()  # replaced simulated sensors; empty: all of them

    @property
    def prefix(self) -> str:
        """The driver's sensor name prefix (``fridge`` for ``fridge.temp_mc``), "" without."""
        prefix = self.options.get("prefix", "")
        return prefix if isinstance(prefix, str) else ""


OUTAGE_METHODS = {"power": "fail_power", "compressor": "fail_compressor"}


def outage_kinds(appliance_kind: str) -> tuple[str, ...]:
    """The outage kinds an appliance of ``appliance_kind`` supports (those whose method it has)."""
    model = APPLIANCE_TYPES[appliance_kind]
    return tuple(k for k, m in OUTAGE_METHODS.items() if callable(getattr(model, m, None)))


@dataclass(frozen=True, slots=True)
class Outage:
    """An appliance-level failure (not a sensor fault): ``power`` (mains) or ``compressor``,
    starting at ``start_ms`` for ``duration_ms``. Only appliances with the matching method
    (``fail_power`` / ``fail_compressor``: the medical freezer) support them."""

    kind: str
    start_ms: int
    duration_ms: int

    def __post_init__(self) -> None:
        if self.kind not in OUTAGE_METHODS:
            raise FleetError(
                f"outage kind must be one of {sorted(OUTAGE_METHODS)}, found {self.kind!r}"
            )
        if self.duration_ms <= 0:
            raise FleetError(f"outage duration_ms must be > 0, found {self.duration_ms}")

    def moved(self, delta_ms: int) -> Outage:
        """The same outage ``delta_ms`` later (a fleet started elsewhen)."""
        return dataclasses.replace(self, start_ms=self.start_ms + delta_ms)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    name: str
    kind: str  # refrigerator | washing_machine | medical_freezer
    site: str
    params: Any = None  # the kind's params dataclass; None: the model's defaults
    faults: tuple[FaultSpec, ...] = ()
    serial: tuple[SerialSpec, ...] | None = None  # real sensors (one or more); None: none
    outages: tuple[Outage, ...] = ()

    def moved(self, delta_ms: int) -> DeviceSpec:
        """The same device with its faults and outages ``delta_ms`` later."""
        return dataclasses.replace(
            self,
            faults=tuple(f.moved(delta_ms) for f in self.faults),
            outages=tuple(o.moved(delta_ms) for o in self.outages),
        )


@dataclass(frozen=True, slots=True)
class FleetSpec:
    name: str
    seed: int
    start_ms: int
    sites: tuple[SiteSpec, ...]
    devices: tuple[DeviceSpec, ...]
    world: WorldSpec = field(default_factory=WorldSpec)

    def starting_at(self, start_ms: int) -> FleetSpec:
        """This fleet started at ``start_ms`` instead: every fault and outage keeps its offset
        from the start. Their times are absolute (the devices file's ``2d`` became the file's
        start + 2 days), so a fleet moved to another start without them, such as a realtime
        run starting now, would find every window in the past: an outage already due fires at
        once (the sample van began a realtime run with its power alarm)."""
        delta = start_ms - self.start_ms
        devices = tuple(d.moved(delta) for d in self.devices)
        return dataclasses.replace(self, start_ms=start_ms, devices=devices)

    def trace_header(self) -> TraceHeader:
        return TraceHeader(
            fleet=self.name,
            seed=self.seed,
            start_ms=self.start_ms,
            devices=tuple(TraceDevice(d.name, d.kind, d.site) for d in self.devices),
        )


def device_rng(seed: int, name: str) -> random.Random:
    """The random stream of one device's model: independent of every other device."""
    return random.Random(f"{seed}/device/{name}")


class Fleet:
    """All appliance models and the world, advanced together in time order."""

    def __init__(
        self, spec: FleetSpec, *, step_ms: int = DEFAULT_STEP_MS, keep_movements: bool = True
    ) -> None:
        if step_ms <= 0:
            raise FleetError(f"step_ms must be > 0, found {step_ms}")
        sites = {s.id: s for s in spec.sites}
        names = [d.name for d in spec.devices]
        if len(set(names)) != len(names):
            raise FleetError(
                f"duplicate device names: {sorted({n for n in names if names.count(n) > 1})}"
            )
        self.spec = spec
        self.step_ms = step_ms
        self.now_ms = spec.start_ms
        self._started = False
        self.appliances: dict[str, Appliance] = {}
        self._drop: dict[str, frozenset[str] | None] = {}  # device -> replaced sensors (None: all)
        self._outages: list[tuple[int, int, str, Outage]] = []
        world_devices = []
        for d in spec.devices:
            site = sites.get(d.site)
            if site is None:
                raise FleetError(f"device {d.name!r} stands at unknown site {d.site!r}")
            params = None if d.params is None else dataclasses.asdict(d.params)
            app = make_appliance(
                d.kind, d.name, params, device_rng(spec.seed, d.name), spec.start_ms
            )
            for fault in d.faults:
                app.inject_fault(fault)
            for outage in d.outages:
                method = OUTAGE_METHODS[outage.kind]
                if not callable(getattr(app, method, None)):
                    raise FleetError(
                        f"device {d.name!r}: a {d.kind} has no {outage.kind} outage ({method})"
                    )
                self._outages.append((outage.start_ms, len(self._outages), d.name, outage))
            self.appliances[d.name] = app
            if d.serial is not None:
                replaced = [frozenset(s.sensors) for s in d.serial]
                self._drop[d.name] = None if not all(replaced) else frozenset().union(*replaced)
            world_devices.append(WorldDevice(d.name, d.kind, d.site, site.kind))
        self.world = World(
            spec.world, world_devices, spec.seed, spec.start_ms, keep_movements=keep_movements
        )
        self._outages.sort(key=lambda o: (o[0], o[1]))
        self._outages.reverse()  # pop() takes the earliest

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        """Advance everything to ``until_ms``; return the samples of (now, until_ms], in order
        (the very first step includes the samples at the start time)."""
        if until_ms < self.now_ms or (until_ms == self.now_ms and self._started):
            return []
        self._started = True
        batch: list[tuple[str, Sample]] = []
        outages = self._outages
        while outages and outages[-1][0] <= until_ms:
            start, _, name, outage = outages.pop()
            batch.extend(self.world.run_until(start, self.appliances))
            fail = getattr(self.appliances[name], OUTAGE_METHODS[outage.kind])
            batch.extend(
                (name, s)
                for s in fail(max(start, self.appliances[name].now_ms), outage.duration_ms)
            )
        batch.extend(self.world.run_until(until_ms, self.appliances))
        for name, app in self.appliances.items():
            batch.extend([(name, s) for s in app.advance(until_ms)])
        if self._drop:
            batch = [(n, s) for n, s in batch if not self._dropped(n, s)]
        batch.sort(key=_time_of)  # stable: emission order breaks ties
        self.now_ms = until_ms
        return batch

    def _dropped(self, device: str, sample: Sample) -> bool:
        if device not in self._drop:
            return False
        replaced = self._drop[device]
        return replaced is None or sample.sensor in replaced

    def targets(self, until_ms: int) -> Iterator[int]:
        """The step times ``run_until(until_ms)`` uses: the start (on the first run), then the
        grid ``start + k * step_ms``, then ``until_ms``."""
        t = self.now_ms
        if not self._started:
            yield t
        while t < until_ms:
            t = min(t + self.step_ms - (t - self.spec.start_ms) % self.step_ms, until_ms)
            yield t

    def run_until(self, until_ms: int) -> Iterator[tuple[str, Sample]]:
        """Yield every sample up to and including ``until_ms``, in time order."""
        for target in self.targets(until_ms):
            yield from self.step(target)

    async def run(self, clock: Clock, until_ms: int) -> AsyncIterator[tuple[str, Sample]]:
        """Like ``run_until`` but each step waits for its time on ``clock``, whose ``now_ms()``
        is taken to be the fleet's start time when the run begins."""
        offset = clock.now_ms() - self.now_ms
        for target in self.targets(until_ms):
            await clock.sleep_until(target + offset)
            for item in self.step(target):
                yield item


def _time_of(item: tuple[str, Sample]) -> int:
    return item[1].time_ms
