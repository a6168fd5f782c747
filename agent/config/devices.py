"""devices.yaml in, a FleetConfig out: the entry points of agent.config.

``load_fleet(path)`` reads a file with the safe loader of ``yamlload`` (bounded size and alias
expansion, duplicate keys refused, errors at their line); ``parse_fleet(data, source)`` checks
an already-loaded mapping. Both check the ``schema`` and ``expand`` groups into a ``FleetConfig``
of frozen values (``model``) with names checked, durations in milliseconds and appliance
parameters turned into the model's params dataclass, or raise ``ConfigError`` listing every
problem as ``<file>: line <n>: device '<name>' (devices[<i>]): field '<dotted.path>': <what was
expected / found>``. docs/DEVICES.md documents every key.

The names the rest of the code imports from here are re-exported below, so callers need one
import path whatever module owns a name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import ValidationError

from agent.config.errors import ConfigError
from agent.config.expand import expand, expand_pattern
from agent.config.model import (
    NAME_RE,
    Device,
    FleetConfig,
    Replication,
    SerialSensor,
    Site,
    serial_up_sensor,
)
from agent.config.schema import (
    DEFAULT_START,
    DEVICE_KINDS,
    EPOCH,
    MAX_COUNT,
    RawDevice,
    RawFleet,
    RawSite,
    describe_errors,
    parse_duration_ms,
)
from agent.config.yamlload import Lines, read_yaml
from firmware_sim.appliances import PARAMS_TYPES

__all__ = [
    "DEFAULT_START",
    "DEVICE_KINDS",
    "EPOCH",
    "MAX_COUNT",
    "NAME_RE",
    "ConfigError",
    "Device",
    "FleetConfig",
    "RawDevice",
    "RawFleet",
    "RawSite",
    "Replication",
    "SerialSensor",
    "Site",
    "expand_pattern",
    "load_fleet",
    "param_fields",
    "parse_duration_ms",
    "parse_fleet",
    "serial_up_sensor",
]


def load_fleet(path: str | Path) -> FleetConfig:
    """Read and validate a devices.yaml file."""
    data, lines = read_yaml(path)
    return parse_fleet(data, str(path), lines)


def parse_fleet(
    data: object, source: str = "devices.yaml", lines: Lines | None = None
) -> FleetConfig:
    """Validate an already-loaded devices.yaml document (``lines``: where its paths stand in
    the file it came from, for the line numbers of problems)."""
    lines = lines or Lines(None)
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: expected a mapping at the top level, found {type(data).__name__}"]
        )
    try:
        raw = RawFleet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(source, data, exc.errors(), lines)) from None
    return expand(source, raw, lines)


def param_fields(kind: str) -> list[tuple[str, object]]:
    """(name, default) of every parameter of ``kind``, for documentation and listings."""
    return [(f.name, f.default) for f in dataclasses.fields(PARAMS_TYPES[kind])]
