"""Sensor faults: each kind shaped as specified, confined to its window, deterministic."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.appliances import Refrigerator, build_params, make_appliance
from firmware_sim.items import Item
from firmware_sim.samples import Sample
from firmware_sim.sensors.faults import FaultError, FaultInjector, FaultSpec

START = 1_736_121_600_000
MIN = 60_000
HOUR = 3_600_000
END = START + 12 * HOUR
SENSOR = "fridge.temp_mc"


def run(seed: int = 1, *faults: FaultSpec, end: int = END) -> list[Sample]:
    f = Refrigerator("fridge-1", random.Random(seed), START, build_params("refrigerator", None))
    for spec in faults:
        f.inject_fault(spec)
    return f.advance(end)


def series(samples: list[Sample], sensor: str = SENSOR) -> dict[int, int]:
    return {s.time_ms: s.value for s in samples if s.sensor == sensor}


def in_window(t: int, spec: FaultSpec) -> bool:
    return spec.start_ms <= t and (spec.end_ms is None or t < spec.end_ms)


windows = st.tuples(st.integers(0, 10 * HOUR), st.integers(MIN, 6 * HOUR)).map(
    lambda w: (START + w[0], START + w[0] + w[1])
)


@settings(max_examples=15, deadline=None)
@given(window=windows, seed=st.integers(0, 2**32))
def test_stuck_sensor_repeats_its_last_good_value(window: tuple[int, int], seed: int) -> None:
    spec = FaultSpec(SENSOR, "stuck", window[0], window[1])
    clean, faulty = series(run(seed)), series(run(seed, spec))
    assert clean.keys() == faulty.keys()
    before = [v for t, v in clean.items() if t < spec.start_ms]
    stuck = {v for t, v in faulty.items() if in_window(t, spec)}
    assert len(stuck) == 1
    first_inside = next(v for t, v in clean.items() if in_window(t, spec))
    assert stuck == {before[-1] if before else first_inside}
    assert {t: v for t, v in faulty.items() if not in_window(t, spec)} == {
        t: v for t, v in clean.items() if not in_window(t, spec)
    }


@settings(max_examples=15, deadline=None)
@given(window=windows, seed=st.integers(0, 2**32))
def test_full_dropout_removes_every_sample_in_the_window(
    window: tuple[int, int], seed: int
) -> None:
    spec = FaultSpec(SENSOR, "dropout", window[0], window[1], probability=1_000_000)
    clean, faulty = run(seed), run(seed, spec)
    assert [s for s in clean if s.sensor != SENSOR or not in_window(s.time_ms, spec)] == faulty


def test_partial_dropout_removes_about_its_share_deterministically() -> None:
    spec = FaultSpec(SENSOR, "dropout", START, None, probability=300_000)
    faulty = series(run(3, spec))
    kept = len(faulty) / len(series(run(3)))
    assert 0.6 < kept < 0.8
    assert series(run(3, spec)) == faulty
    assert series(run(4, spec)).keys() != faulty.keys()  # another seed, other dropouts


@settings(max_examples=15, deadline=None)
@given(window=windows, rate=st.integers(-5_000, 5_000).filter(bool), seed=st.integers(0, 2**32))
def test_drift_grows_linearly_from_the_window_start(
    window: tuple[int, int], rate: int, seed: int
) -> None:
    spec = FaultSpec(SENSOR, "drift", window[0], window[1], magnitude=rate)
    clean, faulty = series(run(seed)), series(run(seed, spec))
    offsets = {t: faulty[t] - clean[t] for t in clean}
    for t, off in offsets.items():
        expected = rate * (t - spec.start_ms) // HOUR if in_window(t, spec) else 0
        assert off == expected
    inside = [abs(o) for t, o in sorted(offsets.items()) if in_window(t, spec)]
    assert inside == sorted(inside)  # the error only grows while the fault lasts


def test_noise_has_the_requested_spread_and_zero_mean() -> None:
    spec = FaultSpec(SENSOR, "noise", START, None, magnitude=500)
    clean, faulty = series(run(5)), series(run(5, spec))
    diffs = [faulty[t] - clean[t] for t in clean]
    assert abs(statistics.fmean(diffs)) < 100
    assert 400 < statistics.pstdev(diffs) < 600
    assert series(run(5, spec)) == faulty
    assert series(run(6, spec)) != series(run(6)) != faulty


def test_spikes_add_plus_or_minus_magnitude_at_the_given_rate() -> None:
    spec = FaultSpec(SENSOR, "spike", START, None, magnitude=20_000, probability=100_000)
    clean, faulty = series(run(7)), series(run(7, spec))
    diffs = [faulty[t] - clean[t] for t in clean]
    spikes = [d for d in diffs if d]
    assert set(spikes) == {20_000, -20_000}
    assert 0.05 < len(spikes) / len(diffs) < 0.15


def test_a_fault_touches_only_its_sensor_and_never_the_physics() -> None:
    specs = [
        FaultSpec(SENSOR, "noise", START, None, magnitude=300),
        FaultSpec(SENSOR, "dropout", START + HOUR, START + 2 * HOUR, probability=500_000),
    ]
    clean, faulty = run(8), run(8, *specs)
    assert [s for s in clean if s.sensor != SENSOR] == [s for s in faulty if s.sensor != SENSOR]


def test_faults_compose_in_injection_order() -> None:
    drift = FaultSpec(SENSOR, "drift", START, None, magnitude=1_000)
    stuck = FaultSpec(SENSOR, "stuck", START + 4 * HOUR, START + 6 * HOUR)
    clean = series(run(9))
    held = clean[START + 4 * HOUR - MIN]  # the last true reading before the sensor sticks
    drift_then_stuck = series(run(9, drift, stuck))
    stuck_then_drift = series(run(9, stuck, drift))
    for t in range(START + 4 * HOUR, START + 6 * HOUR, MIN):
        assert drift_then_stuck[t] == held
        assert stuck_then_drift[t] == held + 1_000 * (t - START) // HOUR
    after = START + 6 * HOUR
    assert drift_then_stuck[after] == stuck_then_drift[after] == clean[after] + 6_000


def test_faults_apply_to_rfid_samples_too() -> None:
    f = make_appliance("refrigerator", "f", None, random.Random(1), START)
    f.inject_fault(FaultSpec("rfid.in", "dropout", START, None, probability=1_000_000))
    milk = Item("urn:epc:id:sgtin:4012345.011111.9", "food", "milk")
    samples = f.insert_items([milk], START + MIN)
    assert [s for s in samples if s.sensor == "rfid.in"] == []
    assert f.items() == [milk]  # the item is inside; only the read was lost
    assert f.faults() == [FaultSpec("rfid.in", "dropout", START, None, probability=1_000_000)]


def test_injector_with_no_faults_is_the_identity() -> None:
    inj = FaultInjector(1, "x")
    samples = [Sample(START, SENSOR, 1)]
    assert inj.apply(samples) is samples


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"sensor": "Fridge", "kind": "noise", "magnitude": 1}, "does not match"),
        ({"kind": "melt"}, "fault kind must be one of"),
        ({"kind": "noise", "magnitude": 0}, "noise fault needs magnitude > 0"),
        ({"kind": "spike", "magnitude": 5}, "spike fault needs probability > 0"),
        ({"kind": "dropout", "probability": 1_000_001}, "expected 0..1000000"),
        ({"kind": "drift"}, "non-zero magnitude"),
        ({"kind": "stuck", "end_ms": START}, "end_ms must be None or an int > start_ms"),
        ({"kind": "stuck", "magnitude": 1.5}, "magnitude must be int"),
    ],
)
def test_fault_spec_validation(kwargs: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {"sensor": SENSOR, "start_ms": START, **kwargs}
    with pytest.raises(FaultError, match=expected):
        FaultSpec(**args)  # type: ignore[arg-type]
