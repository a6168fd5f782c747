"""Temperature probe: the true compartment temperature plus Gaussian noise, quantised.

The probe draws its noise from the appliance's seeded ``random.Random`` and reports an integer in
milli-degrees C, rounded to the probe's resolution (a DS18B20 at 12 bits resolves 62.5 m°C; NTC
front ends are typically finer).
"""

from __future__ import annotations

import random

from firmware_sim.samples import Sample


class TemperatureProbe:
    __slots__ = ("_gauss", "noise_mc", "resolution_mc", "sensor")

    def __init__(self, sensor: str, noise_mc: int, resolution_mc: int, rng: random.Random) -> None:
        if resolution_mc <= 0 or noise_mc < 0:
            raise ValueError(
                f"{sensor}: expected resolution_mc > 0 and noise_mc >= 0, found "
                f"{resolution_mc} and {noise_mc}"
            )
        self.sensor = sensor
        self.noise_mc = noise_mc
        self.resolution_mc = resolution_mc
        self._gauss = rng.gauss

    def value(self, true_mc: float) -> int:
        reading = true_mc + self._gauss(0.0, self.noise_mc) if self.noise_mc else true_mc
        res = self.resolution_mc
        return round(reading / res) * res

    def read(self, t_ms: int, true_mc: float) -> Sample:
        return Sample(t_ms, self.sensor, self.value(true_mc))
