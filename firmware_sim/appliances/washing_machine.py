"""Washing machine: garment RFID reader, load cell, programme choice and a heated wash cycle.

Loading garments reads their RFID "ID cards" (``rfid.in``) and weighs the drum (``load.mass_g``).
``start_cycle`` reports the load's fibre composition, picks the hottest programme every garment
tolerates (see ``sensors.fabric``) unless a programme is forced, flags every garment the chosen
programme would harm (``wash.conflict``), doses detergent and runs the phases
idle -> fill -> heat -> wash -> rinse -> spin -> done.

Physics: the water and the drum are one heat capacity (water mass grows with the load) heated by
the element and losing heat through the cabinet; ``heat`` ends exactly when the water reaches the
programme temperature (closed form), ``wash`` holds it (the element covers the losses), each rinse
refills with cold inlet water, ``spin`` drains it and the drum cools toward ambient.

Samples (integers; see docs/TRACES.md):
  rfid.in, rfid.out     tag=EPC, text=garment name, value=garments inside after the move
  load.mass_g           estimated load mass, grams (after each load change and at start)
  load.fibre_pct        one per fibre at start: value=percent of load mass, text=fibre
  wash.programme        value=programme temperature C, text=programme name
  wash.conflict         tag=EPC (none for an overload), value=programme temperature C,
                        text=reason; also when auto-selection refuses (text "... do not wash")
  detergent.dose_ml     value=millilitres, text=detergent type (wool | mild | colour |
                        heavy-duty)
  wash.state            on change: value=phase index (idle 0 .. done 6), text=phase name
  water.temp_mc         milli-degrees C, every sample_period_ms while a cycle runs
  motor.power_w, heater.power_w   watts, every sample_period_ms while a cycle runs
  wash.garment          at done, one per garment: tag=EPC, value=wash temperature C,
                        text=programme name (the garment's wash_count is incremented)
  wash.energy_wh        at done: electrical energy of the cycle, watt-hours
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from firmware_sim.appliances.base import ApplianceError
from firmware_sim.appliances.engine import NEVER_MS, EventLoopAppliance, after
from firmware_sim.appliances.params import WashingMachineParams
from firmware_sim.appliances.thermal import WATER_J_PER_G_K, Compartment
from firmware_sim.items import Item
from firmware_sim.samples import MAX_TEXT_LEN, Sample
from firmware_sim.sensors import fabric
from firmware_sim.sensors.fabric import PROGRAMMES, Programme
from firmware_sim.sensors.rfid import RfidInventory
from firmware_sim.sensors.temperature import TemperatureProbe

PHASES = ("idle", "fill", "heat", "wash", "rinse", "spin", "done")
FILL_MOTOR_W = 40
SPIN_BASE_W = 100
SOIL_EXTRA_WASH_MS = 10 * 60_000
HEAT_TIMEOUT_MS = 3 * 3_600_000


class WashingMachine(EventLoopAppliance):
    kind = "washing_machine"
    model_name = "edgefleet sim washer"

    def __init__(
        self,
        name: str,
        rng: random.Random,
        start_ms: int,
        params: WashingMachineParams | None = None,
    ) -> None:
        p = params or WashingMachineParams()
        super().__init__(name, rng, start_ms, p.sample_period_ms)
        self.params = p
        self.inventory = RfidInventory(name)
        self.drum = self._new_drum(p.ambient_mc, 0)
        self._probe = TemperatureProbe(
            "water.temp_mc", p.sensor_noise_mc, p.sensor_resolution_mc, rng
        )
        self.phase = "idle"
        self.programme: Programme | None = None
        self.forced = False
        self._phase_end = NEVER_MS
        self._rinses_left = 0
        self._wash_ms = 0
        self._water_g = 0
        self._heater_w = 0.0  # average heater power in the current phase
        self._motor_w = 0.0  # average motor power in the current phase
        self._energy_j = 0.0
        self._target_mc = 0.0
        self._announced = False
        self.cycles_done = 0

    # -- public actions -------------------------------------------------------------------

    @property
    def water_temp_mc(self) -> float:
        """True water (or drum) temperature at ``now_ms`` (reading it changes nothing)."""
        return self.drum.temp_after(self.now_ms - self._phys_ms)

    @property
    def running(self) -> bool:
        return self.phase not in ("idle", "done")

    def insert_items(self, items: Iterable[Item], now_ms: int) -> list[Sample]:
        """Load garments (door unlocked only: raises ApplianceError while a cycle runs)."""
        batch = self.inventory.check_insertable(items)
        out = self._begin_action(now_ms)
        self._require_door(now_ms, "load", out)
        for item in batch:
            out.append(self.inventory.insert(item, now_ms))
        out.append(self._weigh(now_ms))
        if self.phase == "done":
            self._set_phase(now_ms, "idle", out)
        return self._apply_faults(out)

    def remove_items(self, epcs: Iterable[str], now_ms: int) -> tuple[list[Item], list[Sample]]:
        """Unload garments (raises ApplianceError while a cycle runs)."""
        out = self._begin_action(now_ms)
        self._require_door(now_ms, "unload", out)
        taken, samples = self.inventory.remove(epcs, now_ms)
        out.extend(samples)
        if taken:
            out.append(self._weigh(now_ms))
        if self.phase == "done" and not len(self.inventory):
            self._set_phase(now_ms, "idle", out)
        return taken, self._apply_faults(out)

    def items(self) -> list[Item]:
        return self.inventory.items()

    def start_cycle(self, now_ms: int, soil: int = 2, programme: str | None = None) -> list[Sample]:
        """Start washing the loaded garments at ``now_ms``; ``soil`` is 1 light, 2 normal,
        3 heavy.

        Without ``programme`` the hottest programme every garment tolerates runs; if some
        garment must not be washed at all the machine refuses (``wash.conflict`` per such
        garment, phase stays idle). With ``programme`` (a name in ``sensors.fabric.PROGRAMMES``)
        that programme is forced: it runs even when it harms garments, and each harmed garment
        gets a ``wash.conflict`` sample. Raises ApplianceError when a cycle already runs, the
        drum is empty, or the programme or soil level is unknown.
        """
        self._check_time(now_ms)
        if programme is not None and programme not in PROGRAMMES:
            raise ApplianceError(
                f"{self.name}: unknown programme {programme!r}; expected one of "
                f"{sorted(PROGRAMMES)}"
            )
        if soil not in fabric.SOIL_FACTOR_QUARTERS:
            raise ApplianceError(f"{self.name}: soil must be 1, 2 or 3, found {soil!r}")
        out = self._begin_action(now_ms)
        if self.running:
            self._keep(out)
            raise ApplianceError(f"{self.name}: a {self.phase} phase is running")
        garments = self.inventory.items()
        if not garments:
            self._keep(out)
            raise ApplianceError(f"{self.name}: nothing loaded; load garments first")
        p = self.params
        masses = [self._mass(g) for g in garments]
        load_g = sum(masses)
        out.append(self._weigh(now_ms))
        for fibre, pct in fabric.composition(garments, masses).items():
            out.append(Sample(now_ms, "load.fibre_pct", pct, text=fibre[:MAX_TEXT_LEN]))
        chosen = PROGRAMMES[programme] if programme is not None else None
        if chosen is None:
            chosen = fabric.select_programme(garments)
            if chosen is None:
                coldest = PROGRAMMES["cold-20"]
                for g, reason in fabric.conflicts(garments, coldest):
                    out.append(self._conflict(now_ms, coldest, g.epc, reason))
                return self._apply_faults(out)
        for g, reason in fabric.conflicts(garments, chosen):
            out.append(self._conflict(now_ms, chosen, g.epc, reason))
        if load_g > p.capacity_g:
            reason = f"overload {load_g} g > {p.capacity_g} g"
            out.append(self._conflict(now_ms, chosen, None, reason))
        self.programme = chosen
        self.forced = programme is not None
        out.append(Sample(now_ms, "wash.programme", chosen.temp_c, text=chosen.name))
        dose = fabric.dose_ml(load_g, soil, p.detergent_ml_per_kg)
        out.append(
            Sample(now_ms, "detergent.dose_ml", dose, text=fabric.detergent(garments, chosen))
        )
        self._water_g = p.water_base_g + p.water_per_kg_g * load_g // 1000
        self._wash_ms = chosen.wash_ms + (soil - 1) * SOIL_EXTRA_WASH_MS
        self._target_mc = chosen.temp_c * 1000.0
        self._energy_j = 0.0
        self._rinses_left = chosen.rinses
        self._set_phase(now_ms, "fill", out)
        # Periodic samples of this cycle start now, on the cycle's own grid.
        self._next_sample_ms = now_ms
        self._handle(now_ms, out)
        self._next_sample_ms = now_ms + p.sample_period_ms
        return self._apply_faults(out)

    # -- helpers ----------------------------------------------------------------------------

    def _mass(self, item: Item) -> int:
        return item.mass_g if item.mass_g is not None else self.params.garment_mass_g

    def _weigh(self, t: int) -> Sample:
        true_g = sum(self._mass(g) for g in self.inventory.items())
        noise = self.rng.gauss(0.0, self.params.load_noise_g) if self.params.load_noise_g else 0.0
        return Sample(t, "load.mass_g", max(0, round((true_g + noise) / 10) * 10))

    def _conflict(self, t: int, prog: Programme, epc: str | None, reason: str) -> Sample:
        return Sample(t, "wash.conflict", prog.temp_c, epc, reason[:MAX_TEXT_LEN])

    def _require_door(self, t: int, what: str, out: list[Sample]) -> None:
        if self.running:
            self._keep(out)
            raise ApplianceError(
                f"{self.name}: cannot {what} at {t} ms: door locked during the {self.phase} phase"
            )

    def _new_drum(self, temp_mc: float, water_g: int) -> Compartment:
        p = self.params
        return Compartment(
            temp_mc=temp_mc,
            ambient_mc=p.ambient_mc,
            capacity_j_per_k=p.drum_capacity_j_per_k + water_g * WATER_J_PER_G_K,
            leak_w_per_k=p.drum_loss_mw_per_k / 1000,
            evap_w_per_k=0.0,
            evaporator_mc=p.ambient_mc,
        )

    def _refill(self) -> None:
        """Drain (if wet) and fill with inlet water: the drum's heat mixes with cold water."""
        p = self.params
        drum_t = self.drum.temp_mc
        self.drum = self._new_drum(drum_t, 0)
        self.drum.mix(self._water_g, p.inlet_water_mc)
        self.drum = self._new_drum(self.drum.temp_mc, self._water_g)

    def _set_phase(self, t: int, phase: str, out: list[Sample]) -> None:
        p = self.params
        prog = self.programme
        self.phase = phase
        out.append(Sample(t, "wash.state", PHASES.index(phase), text=phase))
        heater = 0.0
        motor = 0.0
        end = NEVER_MS
        if phase == "fill":
            self._refill()
            motor = FILL_MOTOR_W
            end = t + p.fill_ms
        elif phase == "heat":
            heater = p.heater_w
            motor = p.motor_wash_w
            end = t + HEAT_TIMEOUT_MS  # a heater too weak for the target gives up, as real ones do
        elif phase == "wash":
            # The element's thermostat holds the target: on average it supplies the losses.
            heater = max(0.0, self.drum.leak_w_per_k * (self._target_mc - p.ambient_mc) / 1000)
            heater = min(heater, float(p.heater_w))
            motor = p.motor_wash_w
            end = t + self._wash_ms
        elif phase == "rinse":
            self._refill()
            self._rinses_left -= 1
            motor = p.motor_wash_w
            end = t + p.rinse_ms
        elif phase == "spin":
            self.drum = self._new_drum(self.drum.temp_mc, 0)
            assert prog is not None
            motor = SPIN_BASE_W + prog.spin_rpm * 35 / 100
            end = t + p.spin_ms
        self._heater_w = heater
        self._motor_w = motor
        self.drum.set_mode(cooling=False, door_open=False, heater_w=heater)
        self._phase_end = end
        if end != NEVER_MS:
            self._wake_at(end)
        self._invalidate()
        if phase == "heat" and self.drum.temp_mc >= self._target_mc:
            self._set_phase(t, "wash", out)

    def _finish(self, t: int, out: list[Sample]) -> None:
        prog = self.programme
        assert prog is not None
        for g in self.inventory.items():
            g.wash_count += 1
            out.append(Sample(t, "wash.garment", prog.temp_c, g.epc, prog.name))
        out.append(Sample(t, "wash.energy_wh", round(self._energy_j / 3600)))
        self.cycles_done += 1

    # -- event loop -------------------------------------------------------------------------

    def _evolve(self, dt_ms: int) -> None:
        if dt_ms > 0:
            self.drum.evolve(dt_ms)
            if self.phase != "idle" and self.phase != "done":
                self._energy_j += (self._heater_w + self._motor_w) * dt_ms / 1000

    def _next_crossing_ms(self) -> int:
        if self.phase == "heat":
            return after(self._phys_ms, self.drum.time_to(self._target_mc))
        return NEVER_MS

    def _handle(self, t: int, out: list[Sample]) -> None:
        if not self._announced:
            self._announced = True
            out.append(Sample(t, "wash.state", 0, text="idle"))
        if self.phase == "heat" and self.drum.temp_mc >= self._target_mc:
            self._set_phase(t, "wash", out)
        elif self.running and t >= self._phase_end:
            self._next_phase(t, out)
        if self._sample_due(t) and self.running:
            self._sample(t, out)
        if not self.running:
            self._next_sample_ms = NEVER_MS  # no periodic samples between cycles

    def _next_phase(self, t: int, out: list[Sample]) -> None:
        phase = self.phase
        if phase == "fill":
            self._set_phase(t, "heat", out)
        elif phase == "wash":
            self._set_phase(t, "rinse", out)
        elif phase == "rinse" and self._rinses_left > 0:
            self._refill()
            self._rinses_left -= 1
            self.drum.set_mode(cooling=False, door_open=False)
            self._phase_end = t + self.params.rinse_ms
            self._wake_at(self._phase_end)
        elif phase == "rinse":
            self._set_phase(t, "spin", out)
        elif phase == "spin":
            self._finish(t, out)
            self._set_phase(t, "done", out)

    def _sample(self, t: int, out: list[Sample]) -> None:
        rng = self.rng
        out.append(self._probe.read(t, self.drum.temp_mc))
        motor = self._motor_w * (1.0 + rng.gauss(0.0, 0.05)) if self._motor_w else 0.0
        out.append(Sample(t, "motor.power_w", max(0, round(motor))))
        heater = self._heater_w
        if self.phase == "wash":
            # The thermostat cycles the element; report it on or off with the average duty.
            duty = heater / self.params.heater_w
            heater = float(self.params.heater_w) if rng.random() < duty else 0.0
        out.append(Sample(t, "heater.power_w", round(heater)))
