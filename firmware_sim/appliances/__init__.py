"""Appliance models: refrigerator, washing machine, medical freezer, and their factory.

``make_appliance(kind, name, params, rng, start_ms)`` builds a model from a plain mapping of
parameter overrides (validated into the kind's frozen params dataclass). ``APPLIANCE_TYPES`` is the
one registry of appliance kinds: each kind's model class; ``PARAMS_TYPES`` maps each kind to its
params dataclass so configuration can list valid keys and defaults.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

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

# The one registry of appliance kinds: each kind's model class (its params dataclass is
# PARAMS_TYPES[kind]).
APPLIANCE_TYPES: dict[str, type[Appliance]] = {
    "refrigerator": Refrigerator,
    "washing_machine": WashingMachine,
    "medical_freezer": MedicalFreezer,
}
KINDS = tuple(PARAMS_TYPES)

__all__ = [
    "APPLIANCE_TYPES",
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
    model: Any = APPLIANCE_TYPES[kind]  # each class takes its own kind's params dataclass
    appliance: Appliance = model(name, rng, start_ms, built)
    return appliance
