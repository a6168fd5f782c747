"""Sensor faults: noise, drift, stuck value, dropout and spikes, applied to emitted samples.

A fault is a value (``FaultSpec``) naming one sensor, a kind and a time window. A
``FaultInjector`` transforms the samples an appliance emits, one at a time and in order, so a
fault shapes the trace exactly as a failing sensor would: the controller inside the appliance
still sees the true physical value (it has its own, healthy, probe), only the reported samples
are wrong. Randomness (noise, dropout and spike draws) comes from a ``random.Random`` derived from
the appliance's fault seed, the appliance name, the sensor and the fault's index, never from the
global generator, so the same seed reproduces the same faulty trace and adding a fault on one
sensor does not perturb the physics or another sensor's faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from firmware_sim.samples import SENSOR_RE, Sample

FAULT_KINDS = ("noise", "drift", "stuck", "dropout", "spike")
PER_MILLION = 1_000_000
HOUR_MS = 3_600_000


class FaultError(ValueError):
    """A fault specification is malformed."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault on one sensor, active for ``start_ms <= time_ms < end_ms`` (``None``: forever).

    kind and the meaning of magnitude / probability:
      noise:   add Gaussian noise with standard deviation ``magnitude`` (sensor units).
      drift:   add ``magnitude * (time_ms - start_ms) / 1 h`` (sensor units per hour).
      stuck:   report the sensor's last true reading before ``start_ms`` (or its first one
               inside the window when there was none) for every sample inside the window.
      dropout: drop each sample with probability ``probability`` per million.
      spike:   with probability ``probability`` per million add ``+-magnitude`` (random sign).
    """

    sensor: str
    kind: str
    start_ms: int
    end_ms: int | None = None
    magnitude: int = 0
    probability: int = 0

    def __post_init__(self) -> None:
        if not SENSOR_RE.fullmatch(self.sensor):
            raise FaultError(f"fault sensor {self.sensor!r} does not match {SENSOR_RE.pattern}")
        if self.kind not in FAULT_KINDS:
            raise FaultError(f"fault kind must be one of {FAULT_KINDS}, found {self.kind!r}")
        for name in ("start_ms", "magnitude", "probability"):
            if type(getattr(self, name)) is not int:
                raise FaultError(f"fault {name} must be int, found {getattr(self, name)!r}")
        if self.end_ms is not None and (
            type(self.end_ms) is not int or self.end_ms <= self.start_ms
        ):
            raise FaultError(
                f"fault end_ms must be None or an int > start_ms ({self.start_ms}), "
                f"found {self.end_ms!r}"
            )
        if not 0 <= self.probability <= PER_MILLION:
            raise FaultError(
                f"fault probability is per million, expected 0..{PER_MILLION}, "
                f"found {self.probability}"
            )
        if self.kind in ("dropout", "spike") and self.probability == 0:
            raise FaultError(f"a {self.kind} fault needs probability > 0 (per million)")
        if self.kind in ("noise", "spike") and self.magnitude <= 0:
            raise FaultError(f"a {self.kind} fault needs magnitude > 0, found {self.magnitude}")
        if self.kind == "drift" and self.magnitude == 0:
            raise FaultError("a drift fault needs a non-zero magnitude (units per hour)")

    def active(self, time_ms: int) -> bool:
        return self.start_ms <= time_ms and (self.end_ms is None or time_ms < self.end_ms)

    def moved(self, delta_ms: int) -> FaultSpec:
        """The same fault with its window ``delta_ms`` later (a fleet started elsewhen)."""
        end = None if self.end_ms is None else self.end_ms + delta_ms
        return replace(self, start_ms=self.start_ms + delta_ms, end_ms=end)


class _ActiveFault:
    __slots__ = ("held", "rng", "spec")

    def __init__(self, spec: FaultSpec, rng: random.Random, held: int | None) -> None:
        self.spec = spec
        self.rng = rng
        self.held = held  # stuck: the value the sensor is stuck at, once known


class FaultInjector:
    """Applies FaultSpecs to a stream of samples, deterministically under ``seed``."""

    def __init__(self, seed: int | str, appliance: str) -> None:
        self._seed = seed
        self._appliance = appliance
        self._faults: dict[str, list[_ActiveFault]] = {}
        self._last: dict[str, int] = {}  # last true reading per faulted sensor
        self._count = 0

    @property
    def specs(self) -> list[FaultSpec]:
        return [f.spec for faults in self._faults.values() for f in faults]

    def add(self, spec: FaultSpec) -> None:
        rng = random.Random(f"{self._seed}/{self._appliance}/{spec.sensor}/{self._count}")
        self._count += 1
        held = self._last.get(spec.sensor) if spec.kind == "stuck" else None
        self._faults.setdefault(spec.sensor, []).append(_ActiveFault(spec, rng, held))

    def apply(self, samples: list[Sample]) -> list[Sample]:
        """Return ``samples`` with the faults applied (same order, dropped samples removed)."""
        if not self._faults:
            return samples
        out: list[Sample] = []
        for sample in samples:
            faults = self._faults.get(sample.sensor)
            if faults is None:
                out.append(sample)
                continue
            result = self._apply_one(sample, faults)
            if result is not None:
                out.append(result)
        return out

    def _apply_one(self, sample: Sample, faults: list[_ActiveFault]) -> Sample | None:
        true_value = sample.value
        value = true_value
        for fault in faults:
            spec = fault.spec
            if not spec.active(sample.time_ms):
                if spec.kind == "stuck" and sample.time_ms < spec.start_ms:
                    fault.held = true_value
                continue
            kind = spec.kind
            if kind == "noise":
                value += round(fault.rng.gauss(0.0, spec.magnitude))
            elif kind == "drift":
                value += spec.magnitude * (sample.time_ms - spec.start_ms) // HOUR_MS
            elif kind == "stuck":
                if fault.held is None:
                    fault.held = value
                value = fault.held
            elif kind == "dropout":
                if fault.rng.randrange(PER_MILLION) < spec.probability:
                    self._last[sample.sensor] = true_value
                    return None
            elif fault.rng.randrange(PER_MILLION) < spec.probability:  # spike
                value += spec.magnitude if fault.rng.random() < 0.5 else -spec.magnitude
        self._last[sample.sensor] = true_value
        return sample if value == sample.value else replace(sample, value=value)
