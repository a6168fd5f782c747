"""Home Assistant MQTT discovery for a fleet's appliances: the payloads, and nothing else.

This module owns what the Home Assistant bridge (``agent.fleet.homeassistant``) publishes, as
pure functions of values:

- ``HaTopics``: where everything goes (discovery under Home Assistant's prefix, JSON state under
  the fleet's own ``<prefix>/ha/``);
- ``discovery_config``: one device-based discovery payload per appliance
  (``<discovery prefix>/device/<object id>/config`` with ``dev``, ``o`` and ``cmps``), its
  components chosen by the appliance's kind;
- ``Readings``: the latest readings of one appliance, fed sample by sample, and
  ``readings_state`` / ``health_state``: the JSON states the components' templates read.

The payload format is Home Assistant's (https://www.home-assistant.io/integrations/mqtt/,
"MQTT Discovery", "Device discovery payload"); keys are abbreviated as in
home-assistant/core ``homeassistant/components/mqtt/abbreviations.py``. docs/HOMEASSISTANT.md
describes the result; tests/agent/ha_rules.py checks it against Home Assistant's rules.
"""

from __future__ import annotations

import importlib.metadata
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.fleet.view import DeviceRow
from agent.transport.topics import DEFAULT_PREFIX, validate_device_id, validate_prefix
from firmware_sim.appliances.washing_machine import PHASES
from firmware_sim.samples import Sample
from firmware_sim.sensors.fabric import PROGRAMMES

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
ORIGIN_NAME = "edgefleet"
# The origin carries no support_url: it is optional in Home Assistant's origin schema, and the
# project has no public address to name yet (an invented one would mislead users).
MANUFACTURER = "edgefleet (simulated appliance)"
NO_PROGRAMME = "none"  # the programme sensor's state before the first wash
# Tag reads kept per device between two publications; older ones are dropped (and counted).
MAX_TAG_EVENTS = 32
# Retained device presence is "online", "online:<hub id>" (through a shared connection) or
# "offline" (agent/transport/presence.py); Home Assistant compares the rendered text with
# payload_available ("online").
PRESENCE_TEMPLATE = "{{ 'online' if value.startswith('online') else 'offline' }}"
TEMP_SENSORS = {
    "fridge.temp_mc": ("fridge_temp", "Fridge temperature"),
    "freezer.temp_mc": ("freezer_temp", "Freezer temperature"),
    "cabinet.temp_mc": ("cabinet_temp", "Cabinet temperature"),
    "water.temp_mc": ("water_temp", "Water temperature"),
}
KIND_TEMPS = {
    "refrigerator": ("fridge.temp_mc", "freezer.temp_mc"),
    "medical_freezer": ("cabinet.temp_mc",),
    "washing_machine": ("water.temp_mc",),
}


def version() -> str:
    try:
        return importlib.metadata.version("edgefleet")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class HaTopics:
    """Topic layout: discovery and Home Assistant's status under ``discovery_prefix``; states
    and the bridge's availability under ``<fleet prefix>/ha/``."""

    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX
    fleet_prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_prefix(self.discovery_prefix)
        validate_prefix(self.fleet_prefix)

    def config(self, object_id: str) -> str:
        return f"{self.discovery_prefix}/device/{object_id}/config"

    def config_filter(self) -> str:
        return f"{self.discovery_prefix}/device/+/config"

    def status(self) -> str:
        """Home Assistant's birth and last-will topic: ``online`` asks for discovery again."""
        return f"{self.discovery_prefix}/status"

    def state(self, device_id: str) -> str:
        return f"{self.fleet_prefix}/ha/{validate_device_id(device_id)}/state"

    def health(self, device_id: str) -> str:
        return f"{self.fleet_prefix}/ha/{validate_device_id(device_id)}/health"

    def tag(self, device_id: str) -> str:
        return f"{self.fleet_prefix}/ha/{validate_device_id(device_id)}/tag"

    def bridge(self, bridge_id: str) -> str:
        validate_prefix(bridge_id)  # one topic level of [A-Za-z0-9._-]
        return f"{self.fleet_prefix}/ha/bridge/{bridge_id}/availability"

    def presence(self, device_id: str) -> str:
        return f"{self.fleet_prefix}/v1/dev/{validate_device_id(device_id)}/presence"

    def hub_presence(self, hub_id: str) -> str:
        return f"{self.fleet_prefix}/v1/hub/{hub_id}/presence"


@dataclass(frozen=True, slots=True)
class HaDevice:
    """One appliance as Home Assistant sees it.

    ``fleet_tag`` scopes object ids to one fleet (the fleet authority's key id), so that a bridge
    removes only its own fleet's departed devices. ``readings`` is False for a private household
    whose owner key the bridge was not given: it then shows ledger health only.
    """

    name: str
    device_id: str
    kind: str
    model: str
    site: str
    fleet_tag: str
    private: bool = False
    readings: bool = True

    @property
    def object_id(self) -> str:
        return object_id(self.fleet_tag, self.device_id)


def object_id(fleet_tag: str, device_id: str) -> str:
    return f"edgefleet_{fleet_tag}_{device_id}"


def _availability(dev: HaDevice, t: HaTopics, bridge_id: str, hub_id: str | None) -> list[Any]:
    avty: list[Any] = [{"t": t.presence(dev.device_id), "val_tpl": PRESENCE_TEMPLATE}]
    if hub_id is not None:  # a shared connection's last-will covers the devices on it
        avty.append({"t": t.hub_presence(hub_id)})
    avty.append({"t": t.bridge(bridge_id)})
    return avty


def _entity(dev: HaDevice, key: str, platform: str, name: str, topic: str) -> dict[str, Any]:
    return {
        "p": platform,
        "name": name,
        "uniq_id": f"{dev.object_id}_{key}",
        "stat_t": topic,
        "val_tpl": f"{{{{ value_json.{key} }}}}",
    }


def _temperature(dev: HaDevice, t: HaTopics, sensor: str) -> tuple[str, dict[str, Any]]:
    key, name = TEMP_SENSORS[sensor]
    c = _entity(dev, key, "sensor", name, t.state(dev.device_id))
    c.update({"dev_cla": "temperature", "stat_cla": "measurement", "unit_of_meas": "°C"})
    return key, c


def _binary(
    dev: HaDevice, t: HaTopics, key: str, name: str, device_class: str, attrs: str | None = None
) -> tuple[str, dict[str, Any]]:
    c = _entity(dev, key, "binary_sensor", name, t.state(dev.device_id))
    c["dev_cla"] = device_class
    if attrs is not None:  # a JSON object of the state, shown as the entity's attributes
        c["json_attr_t"] = t.state(dev.device_id)
        c["json_attr_tpl"] = f"{{{{ value_json.{attrs} | tojson }}}}"
    return key, c


def _enum(
    dev: HaDevice, t: HaTopics, key: str, name: str, options: list[str]
) -> tuple[str, dict[str, Any]]:
    c = _entity(dev, key, "sensor", name, t.state(dev.device_id))
    c.update({"dev_cla": "enum", "ops": options})
    return key, c


def _measure(
    dev: HaDevice, t: HaTopics, key: str, name: str, device_class: str | None, unit: str | None
) -> tuple[str, dict[str, Any]]:
    c = _entity(dev, key, "sensor", name, t.state(dev.device_id))
    if device_class is not None:
        c["dev_cla"] = device_class
    if unit is not None:
        c["unit_of_meas"] = unit
    c["stat_cla"] = "measurement"
    return key, c


def _health(dev: HaDevice, t: HaTopics, key: str, name: str) -> tuple[str, dict[str, Any]]:
    c = _entity(dev, key, "sensor", name, t.health(dev.device_id))
    c.update({"stat_cla": "measurement", "ent_cat": "diagnostic"})
    return key, c


def _reading_components(dev: HaDevice, t: HaTopics) -> list[tuple[str, dict[str, Any]]]:
    out = [_temperature(dev, t, s) for s in KIND_TEMPS.get(dev.kind, ())]
    out.append(_binary(dev, t, "door", "Door", "door"))
    out.append(_binary(dev, t, "problem", "Alarm", "problem", attrs="alarms"))
    if dev.kind == "washing_machine":
        out.append(_enum(dev, t, "programme", "Programme", [NO_PROGRAMME, *PROGRAMMES]))
        out.append(_enum(dev, t, "phase", "Phase", list(PHASES)))
        fabric = _entity(dev, "fabric", "sensor", "Fabric detected", t.state(dev.device_id))
        fabric["json_attr_t"] = t.state(dev.device_id)
        fabric["json_attr_tpl"] = "{{ value_json.fabric_pct | tojson }}"
        out.append(("fabric", fabric))
        out.append(_measure(dev, t, "load", "Load", "weight", "g"))
        out.append(
            _binary(dev, t, "care_warning", "Care-label warning", "problem", attrs="care_labels")
        )
        out.append(_measure(dev, t, "heater_power", "Heater power", "power", "W"))
        out.append(_measure(dev, t, "motor_power", "Motor power", "power", "W"))
    if dev.kind == "medical_freezer":
        out.append(_binary(dev, t, "power", "Mains power", "power"))
    # The appliance's RFID reader: every tag read in or out is a "tag scanned" event.
    out.append(("rfid", {"p": "tag", "t": t.tag(dev.device_id), "val_tpl": "{{ value_json.epc }}"}))
    return out


def _health_components(dev: HaDevice, t: HaTopics) -> list[tuple[str, dict[str, Any]]]:
    return [
        _health(dev, t, "height", "Chain height"),
        _health(dev, t, "pending", "Pending readings"),
        _health(dev, t, "replicated", "Blocks at full copies"),
        _health(dev, t, "peers", "Peers online"),
    ]


def discovery_config(
    dev: HaDevice, t: HaTopics, *, bridge_id: str, hub_id: str | None = None
) -> dict[str, Any]:
    """The device-based discovery payload of one appliance (abbreviated keys)."""
    components = _health_components(dev, t)
    if dev.readings:
        components = _reading_components(dev, t) + components
    avty = _availability(dev, t, bridge_id, hub_id)
    for _, c in components:
        if c["p"] != "tag":  # a tag scanner is not an entity: it has no availability
            c.update({"avty": avty, "avty_mode": "all"})
    return {
        "dev": {
            "ids": [dev.object_id],
            "name": dev.name,
            "mf": MANUFACTURER,
            "mdl": dev.model or dev.kind,
            "sw": version(),
            "sn": dev.device_id,
            "sa": dev.site,
        },
        "o": {"name": ORIGIN_NAME, "sw": version()},
        "cmps": dict(components),
    }


# --- states ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Readings:
    """The latest readings of one appliance, fed with its samples in time order.

    A wash's load (its fibre composition and care-label conflicts) is replaced as a whole when
    the next load is weighed: the machine reports them together at the start of a wash.
    """

    sim_ms: int | None = None
    values: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    alarms: dict[str, str] = field(default_factory=dict)  # active alarm -> its text
    fibres: dict[str, int] = field(default_factory=dict)
    care: list[str] = field(default_factory=list)
    tags: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=MAX_TAG_EVENTS))
    tags_dropped: int = 0
    _load_ms: int | None = None

    def add(self, s: Sample) -> None:
        self.sim_ms = s.time_ms
        if s.sensor.startswith("alarm."):
            if s.value:
                self.alarms[s.sensor.removeprefix("alarm.")] = s.text or ""
            else:
                self.alarms.pop(s.sensor.removeprefix("alarm."), None)
            return
        if s.sensor in ("load.fibre_pct", "wash.conflict") and s.time_ms != self._load_ms:
            self._load_ms = s.time_ms
            self.fibres.clear()
            self.care.clear()
        if s.sensor == "load.fibre_pct":
            self.fibres[s.text or "unknown"] = s.value
        elif s.sensor == "wash.conflict":
            self.care.append(f"{s.tag}: {s.text}" if s.tag else s.text or "")
        elif s.sensor in ("rfid.in", "rfid.out") and s.tag is not None:
            if len(self.tags) == self.tags.maxlen:
                self.tags_dropped += 1
            event = "in" if s.sensor == "rfid.in" else "out"
            self.tags.append({"epc": s.tag, "event": event, "item": s.text or ""})
        self.values[s.sensor] = s.value
        if s.text is not None:
            self.texts[s.sensor] = s.text

    def take_tags(self) -> list[dict[str, str]]:
        out = list(self.tags)
        self.tags.clear()
        return out


def _on_off(value: int | None) -> str | None:
    return None if value is None else ("ON" if value else "OFF")


def _celsius(mc: int | None) -> float | None:
    return None if mc is None else round(mc / 1000, 3)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def readings_state(dev: HaDevice, r: Readings) -> dict[str, Any]:
    """The JSON state of an appliance's reading components (None: not known yet, which Home
    Assistant renders as ``None`` and shows as unknown)."""
    v = r.values
    state: dict[str, Any] = {"sim_time": _iso(r.sim_ms)}
    for sensor in KIND_TEMPS.get(dev.kind, ()):
        state[TEMP_SENSORS[sensor][0]] = _celsius(v.get(sensor))
    state["door"] = _on_off(v.get("door.open"))
    state["problem"] = _on_off(len(r.alarms))
    state["alarms"] = dict(sorted(r.alarms.items()))
    if dev.kind == "washing_machine":
        state["programme"] = r.texts.get("wash.programme", NO_PROGRAMME)
        state["phase"] = r.texts.get("wash.state", PHASES[0])
        state["fabric"] = max(r.fibres, key=lambda f: (r.fibres[f], f)) if r.fibres else None
        state["fabric_pct"] = dict(sorted(r.fibres.items()))
        state["load"] = v.get("load.mass_g")
        state["care_warning"] = _on_off(len(r.care))
        state["care_labels"] = {"warnings": list(r.care)}
        state["heater_power"] = v.get("heater.power_w")
        state["motor_power"] = v.get("motor.power_w")
    if dev.kind == "medical_freezer":
        state["power"] = _on_off(v.get("power.on"))
    return state


def health_state(row: DeviceRow) -> dict[str, Any]:
    """The JSON state of the ledger-health (diagnostic) components, from the fleet's snapshot."""
    return {
        "height": row.height,
        "pending": row.pending,
        "replicated": None if row.replicated is None else row.replicated[0],
        "replicated_of": None if row.replicated is None else row.replicated[1],
        "peers": row.peers_online,
        "peers_total": row.peers_total,
        "forked": row.forked,
    }
