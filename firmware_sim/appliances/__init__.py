"""Appliance models: refrigerator, washing machine, medical freezer, and their factory.

``make_appliance(kind, name, params, rng, start_ms)`` builds a model from a plain mapping of
parameter overrides (validated into the kind's frozen params dataclass); ``PARAMS_TYPES`` maps each
kind to that dataclass so configuration can list valid keys and defaults.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from firmware_sim.appliances.base import Appliance, ApplianceError
from firmware_sim.appliances.medical_freezer import MedicalFreezer
from firmware_sim.appliances.params import (
    PARAMS_TYPES,
    MedicalFreezerParams,
    ParamsError,
    RefrigeratorParams,
    WashingMachineParams,
    build_params,
    param_defaults,
)
from firmware_sim.appliances.refrigerator import Refrigerator
from firmware_sim.appliances.washing_machine import WashingMachine

KINDS = tuple(PARAMS_TYPES)

__all__ = [
    "KINDS",
    "PARAMS_TYPES",
    "Appliance",
    "ApplianceError",
    "MedicalFreezer",
    "MedicalFreezerParams",
    "ParamsError",
    "Refrigerator",
    "RefrigeratorParams",
    "WashingMachine",
    "WashingMachineParams",
    "build_params",
    "make_appliance",
    "param_defaults",
]


def make_appliance(
    kind: str,
    name: str,
    params: Mapping[str, object] | None,
    rng: random.Random,
    start_ms: int,
) -> Appliance:
    """Build the model of ``kind`` named ``name``, starting at ``start_ms`` with ``rng``.

    Raises ParamsError (a ValueError) for an unknown kind or a bad parameter override.
    """
    built = build_params(kind, params)
    if kind == "refrigerator":
        return Refrigerator(name, rng, start_ms, built)
    if kind == "washing_machine":
        return WashingMachine(name, rng, start_ms, built)
    return MedicalFreezer(name, rng, start_ms, built)
