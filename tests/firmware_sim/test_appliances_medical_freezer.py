"""Medical freezer: power and compressor failures, excursions with exact timing, alarms."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.appliances import MedicalFreezer, build_params
from firmware_sim.items import Item
from firmware_sim.samples import Sample

START = 1_736_121_600_000
MIN = 60_000
HOUR = 3_600_000


def freezer(seed: int = 1, **overrides: object) -> MedicalFreezer:
    return MedicalFreezer(
        "bank-1", random.Random(seed), START, build_params("medical_freezer", overrides)
    )


def of(samples: list[Sample], sensor: str) -> list[Sample]:
    return [s for s in samples if s.sensor == sensor]


def temps(samples: list[Sample]) -> list[tuple[int, int]]:
    return [(s.time_ms, s.value) for s in of(samples, "cabinet.temp_mc")]


def bag(n: int) -> Item:
    return Item(
        f"urn:epc:id:sgtin:0614141.033333.{n}",
        "blood",
        "plasma unit",
        donation_id=f"D{n}",
        product="plasma",
    )


@settings(max_examples=12, deadline=None)
@given(
    mode=st.sampled_from(["plasma", "blood_bank"]),
    fail_at=st.integers(min_value=0, max_value=6 * HOUR),
    duration=st.integers(min_value=10 * MIN, max_value=16 * HOUR),
    door_open=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_power_failure_warms_monotonically_then_cools_back(
    mode: str, fail_at: int, duration: int, door_open: bool, seed: int
) -> None:
    f = freezer(seed, mode=mode, sensor_noise_mc=0, sensor_resolution_mc=1)
    t0 = START + fail_at
    samples = f.advance(t0)
    samples += f.fail_power(t0, duration)
    if door_open:  # someone keeps the door open during the outage
        samples += f.open_door(t0, duration // 2)
    back = t0 + duration
    restart = back + f.params.compressor_restart_ms
    samples += f.advance(back + 36 * HOUR)
    outage = [v for t, v in temps(samples) if t0 <= t <= restart]
    assert outage == sorted(outage)  # warming, never cooling, while the compressor is off
    assert outage[-1] > outage[0]
    assert outage[-1] < f.params.ambient_mc
    assert [(s.time_ms, s.value) for s in of(samples, "power.on")] == [
        (START, 1),
        (t0, 0),
        (back, 1),
    ]
    alarm = [(s.time_ms, s.value) for s in of(samples, "alarm.power")]
    assert alarm == [(t0, 1), (back, 0)]
    # After the restart delay the compressor pulls the cabinet back into its band and holds it.
    on = [s.time_ms for s in of(samples, "compressor.on") if s.value == 1 and s.time_ms >= back]
    assert on and on[0] >= restart
    if outage[-1] >= f.setpoint_mc + f.hysteresis_mc:  # it needs cold as soon as allowed
        assert on[0] == restart
    tail = [v for t, v in temps(samples) if t > back + 30 * HOUR]
    assert all(f.band_low_mc <= v <= f.band_high_mc for v in tail)
    assert f.compressor_on is False or f.temp_mc < f.setpoint_mc + f.hysteresis_mc


def test_door_open_during_outage_warms_faster() -> None:
    shut, open_ = freezer(3, sensor_noise_mc=0), freezer(3, sensor_noise_mc=0)
    shut.fail_power(START + HOUR, 4 * HOUR)
    open_.fail_power(START + HOUR, 4 * HOUR)
    open_.open_door(START + HOUR, 30 * MIN)
    shut.advance(START + 5 * HOUR)
    open_.advance(START + 5 * HOUR)
    assert open_.temp_mc > shut.temp_mc + 3_000


def test_excursion_is_timed_exactly_and_carries_its_peak() -> None:
    f = freezer(4, sensor_noise_mc=0, sensor_resolution_mc=1)
    f.insert_items([bag(1), bag(2)], START + 10 * MIN)
    samples = f.fail_power(START + HOUR, 14 * HOUR) + f.advance(START + 30 * HOUR)
    start = of(samples, "excursion.start")
    end = of(samples, "excursion.end")
    peak = of(samples, "excursion.peak_mc")
    assert len(start) == len(end) == len(peak) == 1
    assert start[0].text == "above -25.0 C"
    assert start[0].value == pytest.approx(-25_000, abs=5)
    assert end[0].value == end[0].time_ms - start[0].time_ms
    assert end[0].text == "above"
    inside = [v for t, v in temps(samples) if start[0].time_ms <= t <= end[0].time_ms]
    assert all(v > -25_000 for v in inside)
    assert peak[0].value >= max(inside)
    assert peak[0].value - max(inside) < 300  # the peak falls between two samples
    # Samples either side of the excursion are inside the band.
    assert all(v <= -25_000 for t, v in temps(samples) if t < start[0].time_ms)
    assert all(v <= -25_000 for t, v in temps(samples) if t > end[0].time_ms)
    bags = [(s.tag, s.value, s.text) for s in of(samples, "bag.excursion")]
    text = f"peak {peak[0].value / 1000:.1f} C"
    assert bags == [(bag(1).epc, end[0].value, text), (bag(2).epc, end[0].value, text)]
    high = [(s.time_ms, s.value) for s in of(samples, "alarm.temp_high")]
    assert high == [(start[0].time_ms + f.params.temp_alarm_delay_ms, 1), (end[0].time_ms, 0)]
    assert f.excursions == [(start[0].time_ms, end[0].value, peak[0].value)]


def test_short_outage_stays_in_band_and_does_not_alarm() -> None:
    f = freezer(5)
    samples = f.fail_power(START + HOUR, 30 * MIN) + f.advance(START + 6 * HOUR)
    assert of(samples, "excursion.start") == []
    assert of(samples, "alarm.temp_high") == []
    assert len(of(samples, "alarm.power")) == 2


def test_compressor_failure_keeps_power_and_alarms_while_cold_is_needed() -> None:
    f = freezer(6, mode="blood_bank", sensor_noise_mc=0)
    samples = f.fail_compressor(START + HOUR, 6 * HOUR) + f.advance(START + 12 * HOUR)
    assert [s.value for s in of(samples, "power.on")] == [1]
    alarm = [(s.time_ms, s.value) for s in of(samples, "alarm.compressor")]
    assert [v for _, v in alarm] == [1, 0]
    assert alarm[1][0] == START + 7 * HOUR
    start = of(samples, "excursion.start")
    assert [s.text for s in start] == ["above 6.0 C"]
    assert START + HOUR < start[0].time_ms < START + 7 * HOUR
    warming = [v for t, v in temps(samples) if START + HOUR <= t <= START + 7 * HOUR]
    assert warming == sorted(warming)
    assert of(samples, "excursion.end")  # repaired, restarted, back in band
    on = [s.time_ms for s in of(samples, "compressor.on") if s.value == 1]
    assert START + 7 * HOUR + f.params.compressor_restart_ms in on


def test_blood_bank_in_a_cold_room_drifts_below_band() -> None:
    f = freezer(7, mode="blood_bank", ambient_mc=-5_000, sensor_noise_mc=0)
    samples = f.advance(START + 24 * HOUR)
    start = of(samples, "excursion.start")
    assert [s.text for s in start] == ["below 2.0 C"]
    low = of(samples, "alarm.temp_low")
    assert [s.value for s in low] == [1]
    assert of(samples, "compressor.on")[-1].value == 0  # it never calls for cold
    assert f.temp_mc >= -5_000


def test_overlapping_outages_merge() -> None:
    f = freezer(8)
    samples = f.fail_power(START + HOUR, 2 * HOUR)
    samples += f.fail_power(START + 2 * HOUR, 3 * HOUR)
    samples += f.advance(START + 10 * HOUR)
    assert [(s.time_ms, s.value) for s in of(samples, "power.on")] == [
        (START, 1),
        (START + HOUR, 0),
        (START + 5 * HOUR, 1),
    ]


def test_bags_in_and_out_open_the_door() -> None:
    f = freezer(9)
    samples = f.insert_items([bag(1), bag(2)], START + MIN)
    assert [(s.sensor, s.value, s.tag) for s in samples if s.sensor.startswith("rfid")] == [
        ("rfid.in", 1, bag(1).epc),
        ("rfid.in", 2, bag(2).epc),
    ]
    taken, out = f.remove_items([bag(2).epc], START + HOUR)
    assert [b.epc for b in taken] == [bag(2).epc]
    door = [
        (s.time_ms, s.value) for s in of(samples + out + f.advance(START + 2 * HOUR), "door.open")
    ]
    stock = f.params.stock_door_ms
    assert door == [
        (START, 0),
        (START + MIN, 1),
        (START + MIN + stock, 0),
        (START + HOUR, 1),
        (START + HOUR + stock, 0),
    ]


def test_same_seed_same_samples_and_granularity_invariance() -> None:
    def run(seed: int, step: int) -> list[Sample]:
        f = freezer(seed)
        out = f.fail_power(START + HOUR, 9 * HOUR)
        t = START + HOUR
        while t < START + 20 * HOUR:
            t = min(t + step, START + 20 * HOUR)
            out += f.advance(t)
        return out

    assert run(1, HOUR) == run(1, 7 * MIN + 3) == run(1, HOUR)
    assert run(1, HOUR) != run(2, HOUR)
    times = [t for t, _ in temps(run(1, HOUR))]
    assert times == list(range(START, START + 20 * HOUR + 1, MIN))


@pytest.mark.parametrize("method", ["fail_power", "fail_compressor", "open_door"])
def test_durations_must_be_positive(method: str) -> None:
    with pytest.raises(ValueError, match="duration_ms"):
        getattr(freezer(), method)(START, 0)
