"""Refrigerator: physical invariants, thermostat, door, defrost, RFID stock, alarms, timing."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.appliances import ApplianceError, Refrigerator, build_params
from firmware_sim.items import Item
from firmware_sim.samples import Sample
from firmware_sim.sensors.rfid import InventoryError

START = 1_736_121_600_000
MIN = 60_000
HOUR = 3_600_000
DAY = 24 * HOUR


def fridge(seed: int = 1, **overrides: object) -> Refrigerator:
    return Refrigerator(
        "fridge-1", random.Random(seed), START, build_params("refrigerator", overrides)
    )


def values(samples: list[Sample], sensor: str) -> list[tuple[int, int]]:
    return [(s.time_ms, s.value) for s in samples if s.sensor == sensor]


def on_fraction(samples: list[Sample], end_ms: int) -> float:
    """Compressor duty from the compressor.on change samples alone (what a trace shows)."""
    changes = values(samples, "compressor.on")
    on_ms = 0
    for (t, v), (t_next, _) in zip(changes, [*changes[1:], (end_ms, 0)], strict=True):
        if v:
            on_ms += t_next - t
    return on_ms / (end_ms - changes[0][0])


def food(n: int, best_before_ms: int | None = None) -> Item:
    return Item(
        f"urn:epc:id:sgtin:4012345.011111.{n}",
        "food",
        f"yoghurt {n}",
        best_before_ms=best_before_ms,
    )


@settings(max_examples=12, deadline=None)
@given(
    ambient=st.integers(min_value=10_000, max_value=35_000),
    seed=st.integers(min_value=0, max_value=2**32),
    openings=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2 * DAY), st.integers(1, 3 * HOUR)),
        max_size=6,
    ),
)
def test_temperatures_stay_within_physical_bounds(
    ambient: int, seed: int, openings: list[tuple[int, int]]
) -> None:
    f = fridge(seed, ambient_mc=ambient, sensor_noise_mc=0)
    p = f.params
    samples: list[Sample] = []
    for at, duration in sorted(openings):
        samples += f.open_door(START + at, duration)
        assert p.fridge_evaporator_mc <= f.fridge_temp_mc <= ambient
    samples += f.advance(START + 2 * DAY + 3 * HOUR)
    # The fridge has no heater: it lives between its evaporator and the room. The freezer's
    # defrost heater stops at defrost_stop_mc, so it cannot pass that either (nor the room).
    fridge_t = [v for _, v in values(samples, "fridge.temp_mc")]
    freezer_t = [v for _, v in values(samples, "freezer.temp_mc")]
    assert len(fridge_t) == len(freezer_t) == (2 * DAY + 3 * HOUR) // MIN + 1
    assert all(p.fridge_evaporator_mc - 10 <= v <= ambient + 10 for v in fridge_t)
    ceiling = max(min(ambient, p.defrost_stop_mc), p.freezer_setpoint_mc + p.freezer_hysteresis_mc)
    assert all(p.freezer_evaporator_mc - 10 <= v <= ceiling + 10 for v in freezer_t)


@settings(max_examples=6, deadline=None)
@given(
    cool=st.integers(min_value=12_000, max_value=20_000),
    delta=st.integers(min_value=4_000, max_value=12_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_compressor_duty_rises_with_ambient(cool: int, delta: int, seed: int) -> None:
    end = START + 3 * DAY
    duties = []
    for ambient in (cool, cool + delta):
        f = fridge(seed, ambient_mc=ambient)
        duties.append(on_fraction(f.advance(end), end))
        # The trace's duty agrees with the model's own run-time counter.
        assert f.compressor_on_ms == pytest.approx(duties[-1] * (end - START), rel=0.01)
    assert 0.0 < duties[0] < duties[1] < 1.0


def test_thermostat_holds_the_band_with_hysteresis() -> None:
    f = fridge(3, sensor_noise_mc=0)
    samples = f.advance(START + DAY)
    p = f.params
    fr = [v for t, v in values(samples, "fridge.temp_mc") if t > START + 6 * HOUR]
    assert min(fr) >= p.fridge_setpoint_mc - p.fridge_hysteresis_mc - 10
    assert max(fr) <= p.fridge_setpoint_mc + p.fridge_hysteresis_mc + 10
    # It really cycles: the compressor switched many times, alternating 1/0.
    switches = [v for _, v in values(samples, "compressor.on")]
    assert len(switches) > 8
    assert all(a != b for a, b in itertools.pairwise(switches))


def test_door_left_open_warms_the_fridge_and_raises_alarms() -> None:
    open_at = START + 2 * HOUR
    closed = fridge(5, ambient_mc=28_000, sensor_noise_mc=0)
    opened = fridge(5, ambient_mc=28_000, sensor_noise_mc=0)
    base = closed.advance(open_at + 3 * HOUR)
    samples = opened.open_door(open_at, 3 * HOUR) + opened.advance(open_at + 3 * HOUR)
    assert base[: len([s for s in base if s.time_ms < open_at])] == [
        s for s in samples if s.time_ms < open_at
    ]
    assert opened.fridge_temp_mc > closed.fridge_temp_mc + 3_000
    door = values(samples, "door.open")
    assert door == [(START, 0), (open_at, 1), (open_at + 3 * HOUR, 0)]
    alarm = values(samples, "alarm.door_open")
    assert alarm == [(open_at + 120_000, 1), (open_at + 3 * HOUR, 0)]
    warm = [(s.time_ms, s.value, s.text) for s in samples if s.sensor == "alarm.fridge_warm"]
    assert warm and warm[0][1] == 1 and warm[0][2] == "fridge above 8.0 C"
    # Raised once the temperature has been above 8 C for warm_alarm_delay_ms: the samples
    # show it crossing 8 C exactly that long before.
    crossed = warm[0][0] - opened.params.warm_alarm_delay_ms
    temps = values(samples, "fridge.temp_mc")
    assert all(v <= 8_000 for t, v in temps if t < crossed)
    assert all(v >= 8_000 for t, v in temps if crossed <= t <= warm[0][0])
    # The closed twin never alarms.
    assert not [s for s in base if s.sensor.startswith("alarm.")]


def test_warm_alarm_clears_when_the_door_is_closed_long_enough() -> None:
    f = fridge(6, ambient_mc=28_000)
    samples = f.open_door(START + HOUR, 3 * HOUR) + f.advance(START + 12 * HOUR)
    warm = values(samples, "alarm.fridge_warm")
    assert [v for _, v in warm] == [1, 0]
    assert warm[1][0] > START + 4 * HOUR


def test_defrost_runs_periodically_and_warms_the_freezer() -> None:
    f = fridge(7, sensor_noise_mc=0)
    p = f.params
    samples = f.advance(START + 2 * DAY)
    defrost = values(samples, "defrost.on")
    assert defrost[0] == (START, 0)
    starts = [t for t, v in defrost[1:] if v == 1]
    ends = [t for t, v in defrost[1:] if v == 0]
    assert len(starts) == len(ends) >= 5
    assert all(e - s == p.defrost_duration_ms for s, e in zip(starts, ends, strict=True))
    assert all(b - a == p.defrost_interval_ms for a, b in itertools.pairwise(starts))
    temps = dict(values(samples, "freezer.temp_mc"))
    for s, e in zip(starts, ends, strict=True):
        during = [v for t, v in temps.items() if s <= t <= e]
        assert during[-1] > during[0]  # no cooling, heater on: it warms


def test_stock_and_take_out_with_rfid() -> None:
    f = fridge(8, sensor_noise_mc=0)
    f.advance(START + HOUR)
    before = f.fridge_temp_mc
    items = [food(1), food(2), food(3)]
    samples = f.insert_items(items, START + HOUR)
    rfid = [(s.sensor, s.value, s.tag, s.text) for s in samples if s.sensor.startswith("rfid")]
    assert rfid == [("rfid.in", k + 1, i.epc, i.name) for k, i in enumerate(items)]
    assert ("door.open", 1) in [(s.sensor, s.value) for s in samples]
    # Three 500 g items at room temperature bring their heat in.
    assert f.fridge_temp_mc > before + 500
    assert f.items() == items
    taken, out = f.remove_items([items[1].epc, "urn:epc:id:sgtin:0.0.404"], START + 2 * HOUR)
    assert taken == [items[1]]
    assert [(s.sensor, s.value, s.tag) for s in out if s.sensor.startswith("rfid")] == [
        ("rfid.out", 2, items[1].epc)
    ]
    assert f.items() == [items[0], items[2]]


def test_duplicate_insert_is_refused_before_anything_changes() -> None:
    f = fridge(9)
    f.insert_items([food(1)], START)
    with pytest.raises(InventoryError, match="already inside"):
        f.insert_items([food(2), food(1)], START + MIN)
    assert [i.epc for i in f.items()] == [food(1).epc]
    assert f.now_ms == START  # nothing advanced either


def test_expired_food_is_reported_once_at_its_best_before_time() -> None:
    f = fridge(10)
    f.insert_items([food(1, START + 5 * HOUR), food(2, START + DAY * 9)], START + HOUR)
    samples = f.advance(START + 8 * HOUR)
    expired = [(s.time_ms, s.tag) for s in samples if s.sensor == "food.expired"]
    assert expired == [(START + 5 * HOUR, food(1).epc)]
    assert not [s for s in f.advance(START + DAY) if s.sensor == "food.expired"]


@settings(max_examples=15, deadline=None)
@given(steps=st.lists(st.integers(min_value=0, max_value=4 * HOUR), min_size=1, max_size=40))
def test_advance_granularity_does_not_change_the_samples(steps: list[int]) -> None:
    end = START + sum(steps)
    one = fridge(11).advance(end)
    f = fridge(11)
    many: list[Sample] = []
    t = START
    for step in steps:
        t += step
        many += f.advance(t)
    assert many == one
    times = [t for t, _ in values(many, "fridge.temp_mc")]
    assert times == list(range(START, end + 1, MIN))


def test_same_seed_same_samples_other_seed_other_samples() -> None:
    def run(seed: int) -> list[Sample]:
        f = fridge(seed)
        out = f.insert_items([food(1, START + DAY)], START + HOUR)
        out += f.open_door(START + 3 * HOUR, 10 * MIN)
        return out + f.advance(START + 2 * DAY)

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_time_cannot_go_backwards() -> None:
    f = fridge(12)
    f.advance(START + HOUR)
    with pytest.raises(ApplianceError, match="time went backwards"):
        f.advance(START)
    with pytest.raises(ApplianceError, match="duration_ms > 0"):
        f.open_door(START + HOUR, 0)


def test_samples_are_integers_in_time_order() -> None:
    f = fridge(13)
    samples = f.insert_items([food(1)], START + HOUR) + f.advance(START + DAY)
    assert [s.time_ms for s in samples] == sorted(s.time_ms for s in samples)
    assert all(type(s.value) is int for s in samples)
