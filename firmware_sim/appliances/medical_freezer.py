"""Medical cabinet for blood products: plasma freezer (about -30 C) or blood-bank fridge (+4 C).

Physics: the cabinet is one lumped heat capacity (see ``thermal``), well insulated, cooled
through its evaporator while the compressor runs; the door adds conductance while open. A mains
failure or a compressor failure stops the cooling: the cabinet warms exponentially toward the
ambient temperature (slowly with the door shut, much faster with it open) and, once the fault
clears, the compressor restarts after ``compressor_restart_ms`` (anti-short-cycle delay) and
pulls the temperature back. The monitor runs on its battery through a mains failure, so samples
continue.

The acceptable band is ``band_low_mc..band_high_mc`` (plasma: at most -25 C; blood bank:
2..6 C). Leaving it starts an excursion, timed to the millisecond from the closed-form crossing.

Samples (integers; see docs/TRACES.md):
  cabinet.temp_mc       every sample_period_ms, milli-degrees C
  compressor.on, power.on, door.open   0/1, at start and on every change
  rfid.in, rfid.out     tag=EPC, text=product name, value=bags inside after the move
  excursion.start       value=temperature at the crossing (m°C), text "above X C"/"below X C"
  excursion.end         value=duration of the excursion (ms), text "above"/"below"
  excursion.peak_mc     at the end: the warmest (above) or coldest (below) temperature, m°C
  bag.excursion         at the end, per bag inside: tag=EPC, value=duration (ms), text=peak
  alarm.temp_high, alarm.temp_low   1 raised after temp_alarm_delay_ms out of band / 0 cleared
  alarm.door_open       1 raised (door open > door_alarm_ms) / 0 cleared
  alarm.power           1 while mains is off / 0 when it is back
  alarm.compressor      1 while the compressor is commanded on but has failed / 0 cleared
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from firmware_sim.appliances.alarms import DelayedAlarm
from firmware_sim.appliances.base import ApplianceError
from firmware_sim.appliances.engine import EventLoopAppliance, after
from firmware_sim.appliances.params import MedicalFreezerParams
from firmware_sim.appliances.thermal import Compartment
from firmware_sim.items import Item
from firmware_sim.samples import Sample
from firmware_sim.sensors.door import Door
from firmware_sim.sensors.rfid import RfidInventory
from firmware_sim.sensors.temperature import TemperatureProbe


def _c(mc: float) -> str:
    return f"{mc / 1000:.1f} C"


class MedicalFreezer(EventLoopAppliance):
    kind = "medical_freezer"
    model_name = "edgefleet sim plasma freezer"

    def __init__(
        self,
        name: str,
        rng: random.Random,
        start_ms: int,
        params: MedicalFreezerParams | None = None,
    ) -> None:
        p = params or MedicalFreezerParams()
        super().__init__(name, rng, start_ms, p.sample_period_ms)
        self.params = p
        self.mode = p.mode
        self.setpoint_mc = p.resolved("setpoint_mc")
        self.hysteresis_mc = p.resolved("hysteresis_mc")
        self.band_low_mc = p.resolved("band_low_mc")
        self.band_high_mc = p.resolved("band_high_mc")
        temp = p.initial_mc
        if temp is None:
            temp = self.setpoint_mc + rng.randint(-1000, 1000) * self.hysteresis_mc // 1000
        self.cabinet = Compartment(
            temp_mc=temp,
            ambient_mc=p.ambient_mc,
            capacity_j_per_k=p.capacity_j_per_k,
            leak_w_per_k=p.resolved("leak_mw_per_k") / 1000,
            evap_w_per_k=p.resolved("evap_mw_per_k") / 1000,
            evaporator_mc=p.resolved("evaporator_mc"),
            door_w_per_k=p.door_leak_mw_per_k / 1000,
        )
        self._demand = temp > self.setpoint_mc and rng.random() < 0.5
        self.powered = True
        self.compressor_failed = False
        self._power_back_ms = start_ms
        self._repaired_ms = start_ms
        self._restart_ms = start_ms  # compressor may not start before this
        self.door = Door()
        self.inventory = RfidInventory(name)
        self._probe = TemperatureProbe(
            "cabinet.temp_mc", p.sensor_noise_mc, p.sensor_resolution_mc, rng
        )
        self._door_alarm = DelayedAlarm("alarm.door_open", p.door_alarm_ms)
        self._high_alarm = DelayedAlarm("alarm.temp_high", p.temp_alarm_delay_ms)
        self._low_alarm = DelayedAlarm("alarm.temp_low", p.temp_alarm_delay_ms)
        self._power_alarm = DelayedAlarm("alarm.power", 0)
        self._compressor_alarm = DelayedAlarm("alarm.compressor", 0)
        self._texts = {
            "door": f"door open > {p.door_alarm_ms // 1000} s",
            "high": f"above {_c(self.band_high_mc)}",
            "low": f"below {_c(self.band_low_mc)}",
        }
        self.excursion_start_ms: int | None = None
        self._excursion_high = False
        self._peak_mc = 0.0
        self.excursions: list[tuple[int, int, int]] = []  # (start_ms, duration_ms, peak_mc)
        self._reported: dict[str, int] = {}
        self._compressor_on = False
        self._apply_mode()

    # -- public actions -------------------------------------------------------------------

    @property
    def compressor_on(self) -> bool:
        return self._compressor_on

    @property
    def temp_mc(self) -> float:
        """True cabinet temperature at ``now_ms`` (reading it changes nothing)."""
        return self.cabinet.temp_after(self.now_ms - self._phys_ms)

    def open_door(self, now_ms: int, duration_ms: int) -> list[Sample]:
        """The door is opened at ``now_ms`` and closed ``duration_ms`` later (merges with an
        opening already in progress)."""
        if duration_ms <= 0:
            raise ApplianceError(
                f"{self.name}: door opening needs duration_ms > 0, found {duration_ms}"
            )
        return self._act(now_ms, lambda t, out: self._open_door(t, duration_ms, out))

    def fail_power(self, now_ms: int, duration_ms: int) -> list[Sample]:
        """Mains fails at ``now_ms`` for ``duration_ms``: no cooling, ``power.on`` 0 and
        ``alarm.power`` until it returns; then the compressor restarts after the restart delay.
        Overlapping failures extend each other."""
        self._check_duration(duration_ms)

        def act(t: int, out: list[Sample]) -> None:
            self._power_back_ms = max(self._power_back_ms, t + duration_ms)
            self.powered = False
            self._wake_at(self._power_back_ms)

        return self._act(now_ms, act)

    def fail_compressor(self, now_ms: int, duration_ms: int) -> list[Sample]:
        """The compressor breaks at ``now_ms`` and is repaired ``duration_ms`` later; mains stays
        on, ``alarm.compressor`` is raised while the thermostat calls for cold it cannot get."""
        self._check_duration(duration_ms)

        def act(t: int, out: list[Sample]) -> None:
            self._repaired_ms = max(self._repaired_ms, t + duration_ms)
            self.compressor_failed = True
            self._wake_at(self._repaired_ms)

        return self._act(now_ms, act)

    def insert_items(self, items: Iterable[Item], now_ms: int) -> list[Sample]:
        """Store bags: the door opens for ``stock_door_ms``; each bag is read (``rfid.in``).
        Bags arrive at storage temperature (the cold chain is respected), adding no heat."""
        batch = self.inventory.check_insertable(items)

        def act(t: int, out: list[Sample]) -> None:
            self._open_door(t, self.params.stock_door_ms, out)
            out.extend(self.inventory.insert(item, t) for item in batch)

        return self._act(now_ms, act)

    def remove_items(self, epcs: Iterable[str], now_ms: int) -> tuple[list[Item], list[Sample]]:
        """Issue bags: the door opens for ``stock_door_ms``; each bag found -> ``rfid.out``."""
        taken: list[Item] = []

        def act(t: int, out: list[Sample]) -> None:
            self._open_door(t, self.params.stock_door_ms, out)
            items, samples = self.inventory.remove(epcs, t)
            taken.extend(items)
            out.extend(samples)

        samples = self._act(now_ms, act)
        return taken, samples

    def items(self) -> list[Item]:
        return self.inventory.items()

    # -- helpers ----------------------------------------------------------------------------

    def _check_duration(self, duration_ms: int) -> None:
        if type(duration_ms) is not int or duration_ms <= 0:
            raise ApplianceError(
                f"{self.name}: duration_ms must be an int > 0, found {duration_ms!r}"
            )

    def _act(self, now_ms: int, action: object) -> list[Sample]:
        out = self._begin_action(now_ms)
        assert callable(action)
        action(now_ms, out)
        self._apply_mode()
        self._handle(now_ms, out)
        return self._apply_faults(out)

    def _open_door(self, t: int, duration_ms: int, out: list[Sample]) -> None:
        if duration_ms > 0:
            self.door.open_until(t, t + duration_ms, out)
            self._wake_at(t + duration_ms)

    def _available(self, t: int) -> bool:
        return self.powered and not self.compressor_failed and t >= self._restart_ms

    def _apply_mode(self) -> None:
        self._compressor_on = self._demand and self._available(self.now_ms)
        self.cabinet.set_mode(cooling=self._compressor_on, door_open=self.door.is_open)
        self._invalidate()

    # -- event loop -------------------------------------------------------------------------

    def _evolve(self, dt_ms: int) -> None:
        if dt_ms > 0:
            self.cabinet.evolve(dt_ms)
            if self.excursion_start_ms is not None:
                temp = self.cabinet.temp_mc
                # Within one interval T is monotone, so its extremes are at the ends.
                if (temp > self._peak_mc) if self._excursion_high else (temp < self._peak_mc):
                    self._peak_mc = temp

    def _next_crossing_ms(self) -> int:
        cab = self.cabinet
        switch = self.setpoint_mc + (-self.hysteresis_mc if self._demand else self.hysteresis_mc)
        dt = min(cab.time_to(switch), cab.time_to(self.band_high_mc), cab.time_to(self.band_low_mc))
        return after(self._phys_ms, dt)

    def _handle(self, t: int, out: list[Sample]) -> None:
        changed = self.door.close_if_due(t, out)
        if not self.powered and t >= self._power_back_ms:
            self.powered = True
            self._restart_ms = max(self._restart_ms, t + self.params.compressor_restart_ms)
            self._wake_at(self._restart_ms)
        if self.compressor_failed and t >= self._repaired_ms:
            self.compressor_failed = False
            self._restart_ms = max(self._restart_ms, t + self.params.compressor_restart_ms)
            self._wake_at(self._restart_ms)
        temp = self.cabinet.temp_mc
        if self._demand and temp <= self.setpoint_mc - self.hysteresis_mc:
            self._demand = False
        elif not self._demand and temp >= self.setpoint_mc + self.hysteresis_mc:
            self._demand = True
        if changed or self._compressor_on != (self._demand and self._available(t)):
            self._apply_mode()
        self._report_state(t, out)
        wake = self._wake_at
        self._update_excursion(t, temp, out)
        self._high_alarm.update(t, temp > self.band_high_mc, self._texts["high"], out, wake)
        self._low_alarm.update(t, temp < self.band_low_mc, self._texts["low"], out, wake)
        self._door_alarm.update(t, self.door.is_open, self._texts["door"], out, wake)
        self._power_alarm.update(t, not self.powered, "mains power lost", out, wake)
        self._compressor_alarm.update(
            t, self.compressor_failed and self._demand, "compressor failed", out, wake
        )
        if self._sample_due(t):
            out.append(self._probe.read(t, temp))

    def _report_state(self, t: int, out: list[Sample]) -> None:
        reported = self._reported
        for sensor, value in (
            ("compressor.on", int(self._compressor_on)),
            ("power.on", int(self.powered)),
            ("door.open", int(self.door.is_open)),
        ):
            if reported.get(sensor) != value:
                # door.open changes are emitted by the door itself; only announce it at start.
                if sensor != "door.open" or sensor not in reported:
                    out.append(Sample(t, sensor, value))
                reported[sensor] = value

    def _update_excursion(self, t: int, temp: float, out: list[Sample]) -> None:
        high = temp > self.band_high_mc
        low = temp < self.band_low_mc
        start = self.excursion_start_ms
        if start is not None and not (high if self._excursion_high else low):
            duration = t - start
            direction = "above" if self._excursion_high else "below"
            peak = round(self._peak_mc)
            out.append(Sample(t, "excursion.end", duration, text=direction))
            out.append(Sample(t, "excursion.peak_mc", peak, text=direction))
            text = f"peak {_c(peak)}"
            for bag in self.inventory.items():
                out.append(Sample(t, "bag.excursion", duration, bag.epc, text))
            self.excursions.append((start, duration, peak))
            self.excursion_start_ms = start = None
        if start is None and (high or low):
            self.excursion_start_ms = t
            self._excursion_high = high
            self._peak_mc = temp
            text = self._texts["high"] if high else self._texts["low"]
            out.append(Sample(t, "excursion.start", round(temp), text=text))
