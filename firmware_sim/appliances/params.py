"""Parameters of the appliance models: one frozen dataclass per kind, and their validation.

Configuration (devices.yaml) hands a plain mapping of overrides; ``build_params`` checks every key
and value type against the dataclass and the dataclass checks ranges in ``__post_init__``. All
quantities are integers in the unit their name ends with: ``_mc`` milli-degrees C, ``_ms``
milliseconds, ``_g`` grams, ``_w`` watts, ``_mw_per_k`` milliwatts per kelvin (thermal
conductance), ``_j_per_k`` joules per kelvin (heat capacity). ``None`` means "derive from the
mode" where a docstring says so.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

P = TypeVar("P")


class ParamsError(ValueError):
    """A parameter override is unknown, mistyped or out of range."""


def _positive(kind: str, **values: int) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ParamsError(f"{kind}: {key} must be > 0, found {value}")


def _non_negative(kind: str, **values: int) -> None:
    for key, value in values.items():
        if value < 0:
            raise ParamsError(f"{kind}: {key} must be >= 0, found {value}")


@dataclass(frozen=True, slots=True)
class RefrigeratorParams:
    """A domestic fridge-freezer: fridge (door, food) over a freezer (periodic defrost).

    Each compartment is one lumped heat capacity that leaks heat to the ambient air and is cooled
    through its evaporator while the (shared) compressor serves it; the door adds conductance
    while open. Thermostats switch at setpoint +- hysteresis.
    """

    sample_period_ms: int = 60_000
    ambient_mc: int = 21_000
    fridge_setpoint_mc: int = 4_000
    freezer_setpoint_mc: int = -18_000
    fridge_hysteresis_mc: int = 1_000
    freezer_hysteresis_mc: int = 1_500
    fridge_capacity_j_per_k: int = 40_000
    fridge_leak_mw_per_k: int = 800
    fridge_evap_mw_per_k: int = 2_500
    fridge_evaporator_mc: int = -20_000
    freezer_capacity_j_per_k: int = 30_000
    freezer_leak_mw_per_k: int = 400
    freezer_evap_mw_per_k: int = 4_000
    freezer_evaporator_mc: int = -30_000
    door_leak_mw_per_k: int = 6_000
    door_alarm_ms: int = 120_000
    fridge_warm_mc: int = 8_000
    freezer_warm_mc: int = -12_000
    warm_alarm_delay_ms: int = 900_000
    defrost_interval_ms: int = 28_800_000
    defrost_duration_ms: int = 1_200_000
    defrost_heater_w: int = 20
    defrost_stop_mc: int = -5_000
    stock_door_ms: int = 15_000
    item_mass_g: int = 500
    sensor_noise_mc: int = 50
    sensor_resolution_mc: int = 10
    initial_fridge_mc: int | None = None  # None: start at the setpoint
    initial_freezer_mc: int | None = None  # None: start at the setpoint

    def __post_init__(self) -> None:
        k = "refrigerator"
        _positive(
            k,
            sample_period_ms=self.sample_period_ms,
            fridge_hysteresis_mc=self.fridge_hysteresis_mc,
            freezer_hysteresis_mc=self.freezer_hysteresis_mc,
            fridge_capacity_j_per_k=self.fridge_capacity_j_per_k,
            fridge_leak_mw_per_k=self.fridge_leak_mw_per_k,
            fridge_evap_mw_per_k=self.fridge_evap_mw_per_k,
            freezer_capacity_j_per_k=self.freezer_capacity_j_per_k,
            freezer_leak_mw_per_k=self.freezer_leak_mw_per_k,
            freezer_evap_mw_per_k=self.freezer_evap_mw_per_k,
            defrost_interval_ms=self.defrost_interval_ms,
            sensor_resolution_mc=self.sensor_resolution_mc,
        )
        _non_negative(
            k,
            door_leak_mw_per_k=self.door_leak_mw_per_k,
            door_alarm_ms=self.door_alarm_ms,
            warm_alarm_delay_ms=self.warm_alarm_delay_ms,
            defrost_duration_ms=self.defrost_duration_ms,
            defrost_heater_w=self.defrost_heater_w,
            stock_door_ms=self.stock_door_ms,
            item_mass_g=self.item_mass_g,
            sensor_noise_mc=self.sensor_noise_mc,
        )
        if self.defrost_duration_ms >= self.defrost_interval_ms:
            raise ParamsError(
                f"{k}: defrost_duration_ms ({self.defrost_duration_ms}) must be shorter than "
                f"defrost_interval_ms ({self.defrost_interval_ms})"
            )
        for name, sp, h, evap in (
            (
                "fridge",
                self.fridge_setpoint_mc,
                self.fridge_hysteresis_mc,
                self.fridge_evaporator_mc,
            ),
            (
                "freezer",
                self.freezer_setpoint_mc,
                self.freezer_hysteresis_mc,
                self.freezer_evaporator_mc,
            ),
        ):
            if not evap < sp - h:
                raise ParamsError(
                    f"{k}: {name}_evaporator_mc ({evap}) must be below the switch-off point "
                    f"{name}_setpoint_mc - {name}_hysteresis_mc ({sp - h})"
                )


@dataclass(frozen=True, slots=True)
class WashingMachineParams:
    """A front-loading washer with an RFID garment reader and a load cell.

    The water is one heat capacity (its mass grows with the load) heated by ``heater_w`` and
    losing heat through ``drum_loss_mw_per_k``; phases run fill, heat, wash, rinse, spin.
    """

    sample_period_ms: int = 30_000
    ambient_mc: int = 20_000
    inlet_water_mc: int = 15_000
    heater_w: int = 2_000
    drum_loss_mw_per_k: int = 8_000
    drum_capacity_j_per_k: int = 20_000  # steel drum and tub, heats with the water
    fill_ms: int = 180_000
    water_base_g: int = 6_000
    water_per_kg_g: int = 1_500
    rinse_ms: int = 480_000
    spin_ms: int = 600_000
    motor_wash_w: int = 180
    capacity_g: int = 8_000
    garment_mass_g: int = 300  # used for garments whose Item.mass_g is None
    load_noise_g: int = 20
    detergent_ml_per_kg: int = 12
    sensor_noise_mc: int = 100
    sensor_resolution_mc: int = 10

    def __post_init__(self) -> None:
        k = "washing_machine"
        _positive(
            k,
            sample_period_ms=self.sample_period_ms,
            heater_w=self.heater_w,
            drum_loss_mw_per_k=self.drum_loss_mw_per_k,
            drum_capacity_j_per_k=self.drum_capacity_j_per_k,
            fill_ms=self.fill_ms,
            water_base_g=self.water_base_g,
            rinse_ms=self.rinse_ms,
            spin_ms=self.spin_ms,
            capacity_g=self.capacity_g,
            garment_mass_g=self.garment_mass_g,
            sensor_resolution_mc=self.sensor_resolution_mc,
        )
        _non_negative(
            k,
            water_per_kg_g=self.water_per_kg_g,
            motor_wash_w=self.motor_wash_w,
            load_noise_g=self.load_noise_g,
            detergent_ml_per_kg=self.detergent_ml_per_kg,
            sensor_noise_mc=self.sensor_noise_mc,
        )


FREEZER_MODES = ("plasma", "blood_bank")
# Per-mode defaults for the fields of MedicalFreezerParams that are None.
MODE_DEFAULTS: dict[str, dict[str, int]] = {
    "plasma": {
        "setpoint_mc": -30_000,
        "hysteresis_mc": 1_500,
        "band_low_mc": -80_000,
        "band_high_mc": -25_000,
        "evaporator_mc": -45_000,
        "evap_mw_per_k": 6_000,
        "leak_mw_per_k": 600,
    },
    "blood_bank": {
        "setpoint_mc": 4_000,
        "hysteresis_mc": 500,
        "band_low_mc": 2_000,
        "band_high_mc": 6_000,
        "evaporator_mc": -8_000,
        "evap_mw_per_k": 4_000,
        "leak_mw_per_k": 1_500,  # glass-door blood-bank refrigerator
    },
}


@dataclass(frozen=True, slots=True)
class MedicalFreezerParams:
    """A blood-bank cabinet: plasma freezer (about -30 C) or blood-bank fridge (+4 C).

    Fields left ``None`` take the mode's value from ``MODE_DEFAULTS``; read them through
    ``resolved(name)``. The alarm band is ``band_low_mc..band_high_mc``; leaving it starts an
    excursion.
    """

    mode: str = "plasma"
    sample_period_ms: int = 60_000
    ambient_mc: int = 22_000
    setpoint_mc: int | None = None
    hysteresis_mc: int | None = None
    band_low_mc: int | None = None
    band_high_mc: int | None = None
    evaporator_mc: int | None = None
    evap_mw_per_k: int | None = None
    leak_mw_per_k: int | None = None
    capacity_j_per_k: int = 120_000
    door_leak_mw_per_k: int = 8_000
    door_alarm_ms: int = 60_000
    temp_alarm_delay_ms: int = 60_000
    compressor_restart_ms: int = 180_000
    stock_door_ms: int = 10_000
    sensor_noise_mc: int = 30
    sensor_resolution_mc: int = 10
    initial_mc: int | None = None  # None: start at the setpoint

    def resolved(self, name: str) -> int:
        """The value of a per-mode field: the override if set, else the mode's default."""
        value = getattr(self, name)
        if value is None:
            return MODE_DEFAULTS[self.mode][name]
        return int(value)

    def __post_init__(self) -> None:
        k = "medical_freezer"
        if self.mode not in FREEZER_MODES:
            raise ParamsError(f"{k}: mode must be one of {FREEZER_MODES}, found {self.mode!r}")
        _positive(
            k,
            sample_period_ms=self.sample_period_ms,
            hysteresis_mc=self.resolved("hysteresis_mc"),
            evap_mw_per_k=self.resolved("evap_mw_per_k"),
            capacity_j_per_k=self.capacity_j_per_k,
            leak_mw_per_k=self.resolved("leak_mw_per_k"),
            sensor_resolution_mc=self.sensor_resolution_mc,
        )
        _non_negative(
            k,
            door_leak_mw_per_k=self.door_leak_mw_per_k,
            door_alarm_ms=self.door_alarm_ms,
            temp_alarm_delay_ms=self.temp_alarm_delay_ms,
            compressor_restart_ms=self.compressor_restart_ms,
            stock_door_ms=self.stock_door_ms,
            sensor_noise_mc=self.sensor_noise_mc,
        )
        sp, h = self.resolved("setpoint_mc"), self.resolved("hysteresis_mc")
        low, high = self.resolved("band_low_mc"), self.resolved("band_high_mc")
        if not low < sp - h < sp + h < high:
            raise ParamsError(
                f"{k}: expected band_low_mc < setpoint-hysteresis < setpoint+hysteresis < "
                f"band_high_mc, found {low} < {sp - h} < {sp + h} < {high}"
            )
        if not self.resolved("evaporator_mc") < sp - h:
            raise ParamsError(
                f"{k}: evaporator_mc ({self.resolved('evaporator_mc')}) must be below "
                f"setpoint_mc - hysteresis_mc ({sp - h})"
            )


PARAMS_TYPES: dict[str, type[Any]] = {
    "refrigerator": RefrigeratorParams,
    "washing_machine": WashingMachineParams,
    "medical_freezer": MedicalFreezerParams,
}


def param_defaults(kind: str) -> dict[str, object]:
    """Field name -> default value for one kind (for config documentation and listing)."""
    cls = _params_type(kind)
    return {f.name: f.default for f in dataclasses.fields(cls)}


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    # Resolving the string annotations costs about a millisecond per call: once per params
    # class, not once per device (a 100,000-device group spent 70 s here).
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _params_type(kind: str) -> type[Any]:
    try:
        return PARAMS_TYPES[kind]
    except KeyError:
        raise ParamsError(
            f"unknown appliance kind {kind!r}; expected one of {sorted(PARAMS_TYPES)}"
        ) from None


def _check_type(kind: str, key: str, value: object, hint: object) -> None:
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return
    for t in allowed:
        if t is type(None):
            continue
        # bool is an int subclass; a YAML `true` must not pass for a temperature.
        if t is int and type(value) is int:
            return
        if t is str and type(value) is str:
            return
    names = " or ".join(
        "null" if t is type(None) else getattr(t, "__name__", str(t)) for t in allowed
    )
    raise ParamsError(
        f"{kind}: parameter {key!r} expects {names}, found {type(value).__name__} {value!r}"
    )


def build_params(kind: str, overrides: Mapping[str, object] | None) -> Any:
    """Validate ``overrides`` for ``kind`` and return its frozen params dataclass.

    Raises ParamsError (a ValueError) naming the offending key and the kind.
    """
    cls = _params_type(kind)
    hints = _type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ParamsError(
                f"{kind}: unknown parameter {key!r}; valid parameters are {sorted(valid)}"
            )
        _check_type(kind, key, value, hints[key])
        values[key] = value
    return cls(**values)
