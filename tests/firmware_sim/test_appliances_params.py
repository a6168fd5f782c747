"""The appliance factory and the validation of parameter overrides."""

from __future__ import annotations

import dataclasses
import random

import pytest

from firmware_sim.appliances import (
    KINDS,
    PARAMS_TYPES,
    MedicalFreezer,
    MedicalFreezerParams,
    ParamsError,
    Refrigerator,
    WashingMachine,
    build_params,
    make_appliance,
    param_defaults,
)

START = 1_736_121_600_000


def test_factory_builds_each_kind_with_defaults() -> None:
    classes = {
        "refrigerator": Refrigerator,
        "washing_machine": WashingMachine,
        "medical_freezer": MedicalFreezer,
    }
    assert set(KINDS) == set(classes) == set(PARAMS_TYPES)
    for kind, cls in classes.items():
        app = make_appliance(kind, f"{kind}-1", None, random.Random(1), START)
        assert isinstance(app, cls)
        assert app.kind == kind
        assert app.now_ms == START
        assert app.params == PARAMS_TYPES[kind]()


def test_overrides_reach_the_model() -> None:
    fridge = make_appliance(
        "refrigerator",
        "f",
        {"sample_period_ms": 30_000, "ambient_mc": 30_000},
        random.Random(1),
        START,
    )
    samples = fridge.advance(START + 120_000)
    times = [s.time_ms for s in samples if s.sensor == "fridge.temp_mc"]
    assert times == [START, START + 30_000, START + 60_000, START + 90_000, START + 120_000]
    assert fridge.params.ambient_mc == 30_000  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", sorted(PARAMS_TYPES))
def test_unknown_key_names_key_and_kind(kind: str) -> None:
    with pytest.raises(ValueError, match=rf"{kind}: unknown parameter 'frobnicate'"):
        make_appliance(kind, "x", {"frobnicate": 1}, random.Random(0), START)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown appliance kind 'toaster'"):
        make_appliance("toaster", "x", None, random.Random(0), START)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ambient_mc", True, "expects int, found bool"),
        ("ambient_mc", 21.5, "expects int, found float"),
        ("ambient_mc", "21000", "expects int, found str"),
        ("ambient_mc", None, "expects int, found NoneType"),
    ],
)
def test_value_types_are_strict(key: str, value: object, expected: str) -> None:
    with pytest.raises(ParamsError, match=rf"refrigerator: parameter '{key}' {expected}"):
        build_params("refrigerator", {key: value})


def test_optional_fields_accept_none_and_int() -> None:
    assert build_params("refrigerator", {"initial_fridge_mc": None}).initial_fridge_mc is None
    assert build_params("refrigerator", {"initial_fridge_mc": 9_000}).initial_fridge_mc == 9_000
    with pytest.raises(ParamsError, match="expects int or null, found str"):
        build_params("refrigerator", {"initial_fridge_mc": "warm"})


@pytest.mark.parametrize(
    ("kind", "overrides", "expected"),
    [
        ("refrigerator", {"sample_period_ms": 0}, "sample_period_ms must be > 0, found 0"),
        ("refrigerator", {"door_alarm_ms": -1}, "door_alarm_ms must be >= 0, found -1"),
        (
            "refrigerator",
            {"defrost_duration_ms": 10, "defrost_interval_ms": 10},
            "defrost_duration_ms \\(10\\) must be shorter",
        ),
        (
            "refrigerator",
            {"fridge_evaporator_mc": 5_000},
            "fridge_evaporator_mc \\(5000\\) must be below",
        ),
        ("washing_machine", {"heater_w": 0}, "heater_w must be > 0"),
        ("medical_freezer", {"mode": "ice-cream"}, "mode must be one of"),
        ("medical_freezer", {"band_high_mc": -29_000}, "expected band_low_mc < setpoint"),
        ("medical_freezer", {"mode": "blood_bank", "band_low_mc": 3_800}, "band_low_mc <"),
    ],
)
def test_ranges_are_checked(kind: str, overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ParamsError, match=expected):
        build_params(kind, overrides)


def test_medical_freezer_resolves_per_mode_defaults() -> None:
    plasma = MedicalFreezerParams()
    bank = MedicalFreezerParams(mode="blood_bank")
    assert plasma.setpoint_mc is None
    assert plasma.resolved("setpoint_mc") == -30_000
    assert plasma.resolved("band_high_mc") == -25_000
    assert (bank.resolved("band_low_mc"), bank.resolved("band_high_mc")) == (2_000, 6_000)
    assert bank.resolved("setpoint_mc") == 4_000
    tuned = MedicalFreezerParams(mode="blood_bank", setpoint_mc=5_000)
    assert tuned.resolved("setpoint_mc") == 5_000


def test_param_defaults_lists_every_field() -> None:
    for kind, cls in PARAMS_TYPES.items():
        defaults = param_defaults(kind)
        assert list(defaults) == [f.name for f in dataclasses.fields(cls)]
        assert build_params(kind, defaults) == cls()


def test_params_are_frozen() -> None:
    params = build_params("washing_machine", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.heater_w = 1
