"""The fleet: time-ordered, reproducible, the same under a SimClock, outages and serial cut-outs."""

from __future__ import annotations

import dataclasses
import time

import pytest

from firmware_sim.appliances import MedicalFreezerParams, RefrigeratorParams
from firmware_sim.clock import SimClock
from firmware_sim.fleet import (
    DeviceSpec,
    Fleet,
    FleetError,
    FleetSpec,
    Outage,
    SerialSpec,
    SiteSpec,
)
from firmware_sim.samples import Sample
from firmware_sim.sensors.faults import FaultSpec
from firmware_sim.world import DAY_MS, HOUR_MS, WorldSpec

START = 1_736_121_600_000
SITES = (SiteSpec("home", "household"), SiteSpec("lab", "hospital"))


def spec(*devices: DeviceSpec, seed: int = 3) -> FleetSpec:
    return FleetSpec("t", seed, START, SITES, devices, WorldSpec())


FRIDGE = DeviceSpec("fridge", "refrigerator", "home")
WASHER = DeviceSpec("washer", "washing_machine", "home")
FREEZER = DeviceSpec("freezer", "medical_freezer", "lab")


def test_samples_come_in_time_order_from_the_start_through_the_end() -> None:
    fleet = Fleet(spec(FRIDGE, WASHER, FREEZER))
    out = list(fleet.run_until(START + DAY_MS))
    times = [s.time_ms for _, s in out]
    assert times == sorted(times)
    assert times[0] == START and times[-1] == START + DAY_MS
    assert {d for d, _ in out} == {"fridge", "washer", "freezer"}
    # fridge and freezer temperatures at their default sampling periods, end inclusive
    fridge_temps = [s for d, s in out if d == "fridge" and s.sensor == "fridge.temp_mc"]
    assert len(fridge_temps) == DAY_MS // RefrigeratorParams().sample_period_ms + 1
    assert fleet.now_ms == START + DAY_MS
    assert list(fleet.run_until(START + DAY_MS)) == []


def test_same_spec_same_samples_other_seed_other_samples() -> None:
    def run(seed: int) -> list[tuple[str, Sample]]:
        return list(Fleet(spec(FRIDGE, FREEZER, seed=seed)).run_until(START + 12 * HOUR_MS))

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_a_device_stream_does_not_depend_on_the_other_devices() -> None:
    alone = [s for _, s in Fleet(spec(FREEZER)).run_until(START + 12 * HOUR_MS)]
    mixed = [
        s for d, s in Fleet(spec(FRIDGE, FREEZER)).run_until(START + 12 * HOUR_MS) if d == "freezer"
    ]
    assert alone == mixed


def test_running_in_pieces_on_the_step_grid_equals_one_run() -> None:
    whole = list(Fleet(spec(FRIDGE)).run_until(START + 6 * HOUR_MS))
    fleet = Fleet(spec(FRIDGE))
    pieces = [*fleet.run_until(START + 2 * HOUR_MS), *fleet.run_until(START + 6 * HOUR_MS)]
    assert pieces == whole


def test_under_a_sim_clock_the_async_run_gives_the_same_samples_fast() -> None:
    expected = list(Fleet(spec(FRIDGE, WASHER)).run_until(START + 2 * DAY_MS))
    clock = SimClock(START)
    fleet = Fleet(spec(FRIDGE, WASHER))
    stamps: list[int] = []

    async def main() -> list[tuple[str, Sample]]:
        out = []
        async for item in fleet.run(clock, START + 2 * DAY_MS):
            stamps.append(clock.now_ms())
            out.append(item)
        return out

    wall = time.perf_counter()
    assert clock.run(main()) == expected
    assert time.perf_counter() - wall < 10
    # each sample was released once the clock had reached its time, not before
    assert all(c >= s.time_ms for c, (_, s) in zip(stamps, expected, strict=True))
    assert clock.now_ms() == START + 2 * DAY_MS


def test_sensor_faults_and_power_outages_reach_the_stream() -> None:
    drift = FaultSpec("cabinet.temp_mc", "drift", START + HOUR_MS, magnitude=1000)
    faulty = dataclasses.replace(
        FREEZER, faults=(drift,), outages=(Outage("power", START + 2 * HOUR_MS, HOUR_MS),)
    )
    healthy = {
        s.time_ms: s.value
        for _, s in Fleet(spec(FREEZER)).run_until(START + HOUR_MS)
        if s.sensor == "cabinet.temp_mc"
    }
    out = list(Fleet(spec(faulty)).run_until(START + 4 * HOUR_MS))
    temps = {s.time_ms: s.value for _, s in out if s.sensor == "cabinet.temp_mc"}
    assert {t: v for t, v in temps.items() if t <= START + HOUR_MS} == healthy
    power = [(s.time_ms, s.value) for _, s in out if s.sensor == "power.on"]
    assert (START + 2 * HOUR_MS, 0) in power and (START + 3 * HOUR_MS, 1) in power


def test_a_fleet_started_later_keeps_its_faults_and_outages_relative_to_the_start() -> None:
    # The sample van's schedule: the probe drifts on day 2, mains fails at 4d15h for an hour.
    drift = FaultSpec("cabinet.temp_mc", "drift", START + 2 * DAY_MS, START + 3 * DAY_MS, 200)
    outage = Outage("power", START + 4 * DAY_MS + 15 * HOUR_MS, HOUR_MS)
    van = dataclasses.replace(FREEZER, faults=(drift,), outages=(outage,))
    later = START + 700 * DAY_MS + 12_345_000  # a realtime run's origin: "now"
    moved = spec(van).starting_at(later)
    assert moved.start_ms == later
    assert moved.devices[0].faults[0].start_ms == later + 2 * DAY_MS
    assert moved.devices[0].faults[0].end_ms == later + 3 * DAY_MS
    assert moved.devices[0].outages == (
        Outage("power", later + 4 * DAY_MS + 15 * HOUR_MS, HOUR_MS),
    )

    # The first hour is the healthy model's: no power alarm at the start (the bug: an outage
    # scheduled for the file's start was already due, and fired at once).
    healthy = list(Fleet(spec(FREEZER).starting_at(later)).run_until(later + HOUR_MS))
    fleet = Fleet(moved)
    assert list(fleet.run_until(later + HOUR_MS)) == healthy
    assert not [s for _, s in healthy if s.sensor.startswith("alarm.") and s.value]
    # Fast-forwarded through the schedule, each fault comes at its offset from the new start.
    out = list(fleet.run_until(later + 5 * DAY_MS))
    power = [(s.time_ms - later, s.value) for _, s in out if s.sensor == "power.on"]
    assert power == [(4 * DAY_MS + 15 * HOUR_MS, 0), (4 * DAY_MS + 16 * HOUR_MS, 1)]
    cabinet = {s.time_ms: s.value for _, s in out if s.sensor == "cabinet.temp_mc"}
    ref = Fleet(spec(FREEZER).starting_at(later))
    base = {
        s.time_ms: s.value
        for _, s in ref.run_until(later + 3 * DAY_MS)
        if s.sensor == "cabinet.temp_mc"
    }
    end_of_drift = max(t for t in cabinet if t < later + 3 * DAY_MS)
    assert cabinet[end_of_drift] - base[end_of_drift] > 4000  # ~200 m°C/h for ~24 h
    before = max(t for t in cabinet if t < later + 2 * DAY_MS)
    assert cabinet[before] == base[before]


def test_an_outage_the_appliance_cannot_have_is_refused() -> None:
    bad = dataclasses.replace(FRIDGE, outages=(Outage("compressor", START, 1000),))
    with pytest.raises(FleetError, match="a refrigerator has no compressor outage"):
        Fleet(spec(bad))
    with pytest.raises(FleetError, match="outage kind must be one of"):
        Outage("flood", START, 1000)


def test_serial_sensors_replace_the_simulated_ones() -> None:
    some = dataclasses.replace(
        FRIDGE, serial=(SerialSpec("bridge", "/dev/null", None, {}, ("fridge.temp_mc",)),)
    )
    out = list(Fleet(spec(some)).run_until(START + HOUR_MS))
    sensors = {s.sensor for _, s in out}
    assert "fridge.temp_mc" not in sensors and "freezer.temp_mc" in sensors
    everything = dataclasses.replace(FRIDGE, serial=(SerialSpec("bridge", "/dev/null", None),))
    out = list(Fleet(spec(everything, FREEZER)).run_until(START + HOUR_MS))
    assert {d for d, _ in out} == {"freezer"}
    # Several real sensors: each replaces its own; one that lists none replaces them all.
    two = dataclasses.replace(
        FRIDGE,
        serial=(
            SerialSpec("bridge", "/dev/a", None, {}, ("fridge.temp_mc",)),
            SerialSpec("rdm6300", "/dev/b", None, {}, ("freezer.temp_mc",)),
        ),
    )
    sensors = {s.sensor for _, s in Fleet(spec(two)).run_until(START + HOUR_MS)}
    assert not sensors & {"fridge.temp_mc", "freezer.temp_mc"} and sensors
    two = dataclasses.replace(two, serial=(*two.serial, SerialSpec("bridge", "/dev/c", None)))
    assert list(Fleet(spec(two)).run_until(START + HOUR_MS)) == []


def test_bad_specs_are_refused() -> None:
    with pytest.raises(FleetError, match="unknown site 'nowhere'"):
        Fleet(spec(DeviceSpec("x", "refrigerator", "nowhere")))
    with pytest.raises(FleetError, match="duplicate device names: \\['fridge'\\]"):
        Fleet(spec(FRIDGE, FRIDGE))
    with pytest.raises(FleetError, match="step_ms must be > 0"):
        Fleet(spec(FRIDGE), step_ms=0)


def test_params_reach_the_models_and_the_header_names_every_device() -> None:
    cold = dataclasses.replace(FREEZER, params=MedicalFreezerParams(mode="blood_bank"))
    fleet_spec = spec(FRIDGE, cold)
    out = list(Fleet(fleet_spec).run_until(START + HOUR_MS))
    temps = [s.value for d, s in out if s.sensor == "cabinet.temp_mc"]
    assert all(0 < v < 8_000 for v in temps)
    header = fleet_spec.trace_header()
    assert [(d.name, d.kind, d.site) for d in header.devices] == [
        ("fridge", "refrigerator", "home"),
        ("freezer", "medical_freezer", "lab"),
    ]
    assert (header.seed, header.start_ms) == (3, START)
