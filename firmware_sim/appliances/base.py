"""The interface every appliance model implements.

An appliance is a pure model: it owns its physical state, advances it to a given ``now_ms`` with
its own seeded ``random.Random``, and returns the samples its sensors produce on the way. It never
reads a clock, sleeps or does I/O. The same seed and the same sequence of calls give the same
samples, byte for byte.

Every method that takes ``now_ms`` first advances the model to ``now_ms`` (the samples produced on
the way are part of its return value), then acts; ``now_ms`` earlier than the model's clock is an
error. Sensor faults (``inject_fault``) transform the samples every method returns.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable

from firmware_sim.items import Item
from firmware_sim.samples import Sample
from firmware_sim.sensors.faults import FaultInjector, FaultSpec


class ApplianceError(ValueError):
    """The appliance was asked something it cannot do (time going backwards, door locked)."""


class Appliance(ABC):
    kind: str = ""
    # What a simulated appliance of this kind calls its model (a device certificate's default).
    model_name: str = ""

    def __init__(self, name: str, rng: random.Random, start_ms: int) -> None:
        self.name = name
        self.rng = rng
        self.now_ms = start_ms
        # Drawn once so fault randomness follows the seed without consuming the physics stream
        # later (injecting a fault never changes what the healthy sensors report).
        self._faults = FaultInjector(rng.getrandbits(64), name)

    @abstractmethod
    def advance(self, now_ms: int) -> list[Sample]:
        """Advance physics from ``self.now_ms`` to ``now_ms`` (>=), return the samples due."""

    @abstractmethod
    def insert_items(self, items: Iterable[Item], now_ms: int) -> list[Sample]:
        """Items are put in (fridge stocked, bag stored, garments loaded); returns RFID samples."""

    @abstractmethod
    def remove_items(self, epcs: Iterable[str], now_ms: int) -> tuple[list[Item], list[Sample]]:
        """Items are taken out; returns the items (unknown EPCs ignored) and RFID samples."""

    @abstractmethod
    def items(self) -> list[Item]:
        """Items currently inside, in insertion order."""

    def inject_fault(self, spec: FaultSpec) -> None:
        """Make the sensor ``spec.sensor`` misbehave as ``spec`` says from ``spec.start_ms`` on.

        Faults apply to every sample returned afterwards (advance, insert/remove, actions);
        several faults on one sensor compose in the order they were injected.
        """
        self._faults.add(spec)

    def faults(self) -> list[FaultSpec]:
        """The faults injected so far."""
        return self._faults.specs

    def _apply_faults(self, samples: list[Sample]) -> list[Sample]:
        return self._faults.apply(samples)

    def _check_time(self, now_ms: int) -> None:
        if type(now_ms) is not int:
            raise ApplianceError(f"{self.name}: now_ms must be int, found {now_ms!r}")
        if now_ms < self.now_ms:
            raise ApplianceError(
                f"{self.name}: time went backwards: model is at {self.now_ms} ms, "
                f"asked to move to {now_ms} ms"
            )
