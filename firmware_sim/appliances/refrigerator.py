"""Domestic fridge-freezer: two thermostatted compartments, a door, an RFID reader, defrost.

Physics: the fridge and the freezer are each a lumped heat capacity (see ``thermal``). One
compressor serves whichever compartment's thermostat calls for cold (a damper routes the cold);
it runs while either does. The fridge door adds conductance to the ambient air while open, and
food put in exchanges its heat with the fridge (it arrives at ambient temperature). Every
``defrost_interval_ms`` the freezer defrosts for ``defrost_duration_ms``: its cooling stops and a
heater warms it, until the defrost ends or the freezer reaches ``defrost_stop_mc``.

Samples (integers; see docs/TRACES.md):
  fridge.temp_mc, freezer.temp_mc  every sample_period_ms, milli-degrees C
  compressor.on, defrost.on, door.open   0/1, at start and on every change
  rfid.in, rfid.out   tag=EPC, text=item name, value=items inside after the move
  food.expired        tag=EPC, value=1, when an item inside passes its best-before time
  alarm.door_open     1 raised (door open > door_alarm_ms) / 0 cleared
  alarm.fridge_warm, alarm.freezer_warm   1 raised (warmer than *_warm_mc for
                      warm_alarm_delay_ms) / 0 cleared
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable

from firmware_sim.appliances.alarms import DelayedAlarm
from firmware_sim.appliances.base import ApplianceError
from firmware_sim.appliances.engine import NEVER_MS, EventLoopAppliance, after
from firmware_sim.appliances.params import RefrigeratorParams
from firmware_sim.appliances.thermal import Compartment
from firmware_sim.items import Item
from firmware_sim.samples import MAX_TEXT_LEN, Sample
from firmware_sim.sensors.door import Door
from firmware_sim.sensors.rfid import RfidInventory
from firmware_sim.sensors.temperature import TemperatureProbe


def _c(mc: float) -> str:
    return f"{mc / 1000:.1f} C"


class Refrigerator(EventLoopAppliance):
    kind = "refrigerator"
    model_name = "edgefleet sim fridge-freezer"

    def __init__(
        self,
        name: str,
        rng: random.Random,
        start_ms: int,
        params: RefrigeratorParams | None = None,
    ) -> None:
        p = params or RefrigeratorParams()
        super().__init__(name, rng, start_ms, p.sample_period_ms)
        self.params = p
        # Start somewhere in the thermostat band (or where asked) so identical fridges of a
        # fleet do not all switch in lockstep.
        fridge_t = p.initial_fridge_mc
        if fridge_t is None:
            fridge_t = (
                p.fridge_setpoint_mc + rng.randint(-1000, 1000) * p.fridge_hysteresis_mc // 1000
            )
        freezer_t = p.initial_freezer_mc
        if freezer_t is None:
            freezer_t = (
                p.freezer_setpoint_mc + rng.randint(-1000, 1000) * p.freezer_hysteresis_mc // 1000
            )
        self.fridge = Compartment(
            temp_mc=fridge_t,
            ambient_mc=p.ambient_mc,
            capacity_j_per_k=p.fridge_capacity_j_per_k,
            leak_w_per_k=p.fridge_leak_mw_per_k / 1000,
            evap_w_per_k=p.fridge_evap_mw_per_k / 1000,
            evaporator_mc=p.fridge_evaporator_mc,
            door_w_per_k=p.door_leak_mw_per_k / 1000,
        )
        self.freezer = Compartment(
            temp_mc=freezer_t,
            ambient_mc=p.ambient_mc,
            capacity_j_per_k=p.freezer_capacity_j_per_k,
            leak_w_per_k=p.freezer_leak_mw_per_k / 1000,
            evap_w_per_k=p.freezer_evap_mw_per_k / 1000,
            evaporator_mc=p.freezer_evaporator_mc,
        )
        self._fridge_demand = fridge_t > p.fridge_setpoint_mc and rng.random() < 0.5
        self._freezer_demand = freezer_t > p.freezer_setpoint_mc and rng.random() < 0.5
        self.door = Door()
        self.inventory = RfidInventory(name)
        self._fridge_probe = TemperatureProbe(
            "fridge.temp_mc", p.sensor_noise_mc, p.sensor_resolution_mc, rng
        )
        self._freezer_probe = TemperatureProbe(
            "freezer.temp_mc", p.sensor_noise_mc, p.sensor_resolution_mc, rng
        )
        self._door_alarm = DelayedAlarm("alarm.door_open", p.door_alarm_ms)
        self._door_text = f"door open > {p.door_alarm_ms // 1000} s"
        self._fridge_text = f"fridge above {_c(p.fridge_warm_mc)}"
        self._freezer_text = f"freezer above {_c(p.freezer_warm_mc)}"
        self._fridge_alarm = DelayedAlarm("alarm.fridge_warm", p.warm_alarm_delay_ms)
        self._freezer_alarm = DelayedAlarm("alarm.freezer_warm", p.warm_alarm_delay_ms)
        # First defrost at a random point of the interval (fleet de-synchronisation again).
        self._defrost_at = start_ms + rng.randrange(p.defrost_interval_ms)
        self._defrost_end = NEVER_MS
        self._defrosting = False
        self._heating = False
        self._wake_at(self._defrost_at)
        self._expiry: list[tuple[int, str]] = []
        self._expired: set[str] = set()
        self._reported: dict[str, int] = {}  # state sensor -> last value emitted
        self._on_ms = 0  # compressor run time up to the physics instant
        self._apply_mode()

    # -- public actions -------------------------------------------------------------------

    @property
    def compressor_on(self) -> bool:
        return self._fridge_demand or (self._freezer_demand and not self._defrosting)

    @property
    def compressor_on_ms(self) -> int:
        """Cumulative compressor run time up to ``now_ms`` (duty-cycle evidence)."""
        pending = self.now_ms - self._phys_ms if self.compressor_on else 0
        return self._on_ms + pending

    @property
    def fridge_temp_mc(self) -> float:
        """True fridge temperature at ``now_ms`` (reading it changes nothing)."""
        return self.fridge.temp_after(self.now_ms - self._phys_ms)

    @property
    def freezer_temp_mc(self) -> float:
        """True freezer temperature at ``now_ms`` (reading it changes nothing)."""
        return self.freezer.temp_after(self.now_ms - self._phys_ms)

    def open_door(self, now_ms: int, duration_ms: int) -> list[Sample]:
        """Someone opens the fridge door at ``now_ms`` and closes it ``duration_ms`` later.

        Returns the samples up to ``now_ms`` plus ``door.open`` = 1 (the 0 comes with the
        ``advance`` that passes the closing time). Overlapping openings merge.
        """
        if duration_ms <= 0:
            raise ApplianceError(
                f"{self.name}: door opening needs duration_ms > 0, found {duration_ms}"
            )
        out = self._begin_action(now_ms)
        self._open_door(now_ms, duration_ms, out)
        self._handle(now_ms, out)
        return self._apply_faults(out)

    def insert_items(self, items: Iterable[Item], now_ms: int) -> list[Sample]:
        """Stock food: the door opens for ``stock_door_ms``, each item is read (``rfid.in``)
        and brings its heat (it arrives at ambient temperature)."""
        batch = self.inventory.check_insertable(items)
        out = self._begin_action(now_ms)
        self._open_door(now_ms, self.params.stock_door_ms, out)
        for item in batch:
            out.append(self.inventory.insert(item, now_ms))
            mass = item.mass_g if item.mass_g is not None else self.params.item_mass_g
            self.fridge.mix(mass, self.params.ambient_mc)
            if item.best_before_ms is not None:
                heapq.heappush(self._expiry, (item.best_before_ms, item.epc))
                self._wake_at(max(now_ms, item.best_before_ms))
        self._invalidate()
        self._handle(now_ms, out)
        return self._apply_faults(out)

    def remove_items(self, epcs: Iterable[str], now_ms: int) -> tuple[list[Item], list[Sample]]:
        """Take food out: the door opens for ``stock_door_ms``; each item found -> ``rfid.out``."""
        out = self._begin_action(now_ms)
        self._open_door(now_ms, self.params.stock_door_ms, out)
        taken, samples = self.inventory.remove(epcs, now_ms)
        out.extend(samples)
        for item in taken:
            self._expired.discard(item.epc)
        self._handle(now_ms, out)
        return taken, self._apply_faults(out)

    def items(self) -> list[Item]:
        return self.inventory.items()

    # -- event loop -------------------------------------------------------------------------

    def _open_door(self, now_ms: int, duration_ms: int, out: list[Sample]) -> None:
        if duration_ms <= 0:
            return
        close_at = now_ms + duration_ms
        self.door.open_until(now_ms, close_at, out)
        self._wake_at(close_at)
        self._apply_mode()

    def _apply_mode(self) -> None:
        self.fridge.set_mode(cooling=self._fridge_demand, door_open=self.door.is_open)
        self.freezer.set_mode(
            cooling=self._freezer_demand and not self._defrosting,
            door_open=False,
            heater_w=self.params.defrost_heater_w if self._heating else 0.0,
        )
        self._invalidate()

    def _evolve(self, dt_ms: int) -> None:
        if dt_ms > 0:
            self.fridge.evolve(dt_ms)
            self.freezer.evolve(dt_ms)
            if self.compressor_on:
                self._on_ms += dt_ms

    def _next_crossing_ms(self) -> int:
        p = self.params
        fr, fz = self.fridge, self.freezer
        fridge_sw = p.fridge_setpoint_mc + (
            -p.fridge_hysteresis_mc if self._fridge_demand else p.fridge_hysteresis_mc
        )
        dt = min(fr.time_to(fridge_sw), fr.time_to(p.fridge_warm_mc), fz.time_to(p.freezer_warm_mc))
        if not self._defrosting:
            freezer_sw = p.freezer_setpoint_mc + (
                -p.freezer_hysteresis_mc if self._freezer_demand else p.freezer_hysteresis_mc
            )
            dt = min(dt, fz.time_to(freezer_sw))
        elif self._heating:
            dt = min(dt, fz.time_to(p.defrost_stop_mc))
        return after(self._phys_ms, dt)

    def _handle(self, t: int, out: list[Sample]) -> None:
        p = self.params
        changed = self.door.close_if_due(t, out)
        changed |= self._update_defrost(t)
        changed |= self._update_thermostats()
        if changed:
            self._apply_mode()
        self._report_state(t, out)
        wake = self._wake_at
        self._door_alarm.update(t, self.door.is_open, self._door_text, out, wake)
        fr, fz = self.fridge.temp_mc, self.freezer.temp_mc
        self._fridge_alarm.update(t, fr > p.fridge_warm_mc, self._fridge_text, out, wake)
        self._freezer_alarm.update(t, fz > p.freezer_warm_mc, self._freezer_text, out, wake)
        self._check_expiry(t, out)
        if self._sample_due(t):
            out.append(self._fridge_probe.read(t, fr))
            out.append(self._freezer_probe.read(t, fz))

    def _update_defrost(self, t: int) -> bool:
        p = self.params
        if not self._defrosting and t >= self._defrost_at:
            self._defrosting = True
            self._heating = self.freezer.temp_mc < p.defrost_stop_mc
            self._defrost_end = self._defrost_at + p.defrost_duration_ms
            self._defrost_at += p.defrost_interval_ms
            self._wake_at(self._defrost_end)
            self._wake_at(self._defrost_at)
            return True
        if self._defrosting and t >= self._defrost_end:
            self._defrosting = self._heating = False
            return True
        if self._heating and self.freezer.temp_mc >= p.defrost_stop_mc:
            self._heating = False
            return True
        return False

    def _update_thermostats(self) -> bool:
        p = self.params
        changed = False
        t_fr = self.fridge.temp_mc
        if self._fridge_demand and t_fr <= p.fridge_setpoint_mc - p.fridge_hysteresis_mc:
            self._fridge_demand, changed = False, True
        elif not self._fridge_demand and t_fr >= p.fridge_setpoint_mc + p.fridge_hysteresis_mc:
            self._fridge_demand, changed = True, True
        t_fz = self.freezer.temp_mc
        if self._freezer_demand and t_fz <= p.freezer_setpoint_mc - p.freezer_hysteresis_mc:
            self._freezer_demand, changed = False, True
        elif not self._freezer_demand and t_fz >= p.freezer_setpoint_mc + p.freezer_hysteresis_mc:
            self._freezer_demand, changed = True, True
        return changed

    def _report_state(self, t: int, out: list[Sample]) -> None:
        reported = self._reported
        for sensor, value in (
            ("compressor.on", int(self.compressor_on)),
            ("defrost.on", int(self._defrosting)),
            ("door.open", int(self.door.is_open)),
        ):
            if reported.get(sensor) != value:
                # door.open changes are emitted by the door itself; only announce it at start.
                if sensor != "door.open" or sensor not in reported:
                    out.append(Sample(t, sensor, value))
                reported[sensor] = value

    def _check_expiry(self, t: int, out: list[Sample]) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= t:
            _, epc = heapq.heappop(expiry)
            if epc in self.inventory and epc not in self._expired:
                self._expired.add(epc)
                item = self.inventory.get(epc)
                out.append(Sample(t, "food.expired", 1, epc, item.name[:MAX_TEXT_LEN]))
