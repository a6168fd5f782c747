"""Home Assistant's rules for MQTT discovery payloads, as a validator for the tests.

Home Assistant needs a newer Python than this machine has, so the tests check what the bridge
publishes against HA's rules instead, restated here from its source (home-assistant/core, the
MQTT integration as of 2024-2025) and docs (https://www.home-assistant.io/integrations/mqtt/,
"MQTT Discovery", "Device discovery payload"):

- ``homeassistant/components/mqtt/abbreviations.py``: ``ABBREVIATIONS`` (entity keys),
  ``DEVICE_ABBREVIATIONS`` and ``ORIGIN_ABBREVIATIONS``; the subset below is copied from it, and a
  key that is neither a listed abbreviation nor a full key of the component is refused.
- ``homeassistant/components/mqtt/discovery.py``: the discovery topic
  ``<prefix>/<component>/[<node_id>/]<object_id>/config`` (``TOPIC_MATCHER``, ids of
  ``[a-zA-Z0-9_-]``, subscribed as ``<prefix>/device/+/config`` for devices);
  ``_replace_all_abbreviations`` expands the root, ``device``, ``origin``, each component and
  each availability entry; ``_parse_device_payload``: an empty payload removes every component
  of the device; ``_merge_common_device_options``: ``SHARED_OPTIONS`` at the root are inherited
  by components that do not set them.
- ``homeassistant/components/mqtt/schemas.py``: ``DEVICE_DISCOVERY_SCHEMA`` (``device``,
  ``components`` and ``origin`` required; ``_COMPONENT_CONFIG_SCHEMA``: each component names a
  supported ``platform``; ``check_unique_id``: an entity platform's component needs a
  ``unique_id``), ``MQTT_ENTITY_DEVICE_INFO_SCHEMA`` (a device needs ``identifiers`` or
  ``connections``), ``MQTT_ORIGIN_INFO_SCHEMA`` (an origin needs a ``name``, ``support_url`` is
  a URL), ``MQTT_AVAILABILITY_SCHEMA`` (``availability_topic`` and
  ``availability`` exclude each other, each entry has a ``topic``, ``availability_mode`` is
  ``all``, ``any`` or ``latest``); ``mqtt/const.py`` (``payload_available`` defaults to
  ``online``, ``payload_not_available`` to ``offline``; a template that renders ``None``
  (``PAYLOAD_NONE``) leaves the state unknown).
- ``homeassistant/components/mqtt/sensor.py``: ``validate_sensor_state_and_device_class_config``
  (``options`` only for ``enum`` sensors, never empty, never with ``state_class`` or
  ``unit_of_measurement``; a unit must be one the device class allows) and
  ``homeassistant/components/sensor/const.py`` (``SensorDeviceClass``, ``DEVICE_CLASS_UNITS``,
  ``DEVICE_CLASS_STATE_CLASSES``, ``SensorStateClass``), of which the classes below are copied.
- ``homeassistant/components/binary_sensor/__init__.py`` (``BinarySensorDeviceClass``;
  ``payload_on``/``payload_off`` default ``ON``/``OFF`` in ``mqtt/binary_sensor.py``).
- ``homeassistant/components/mqtt/tag.py`` (a tag scanner: ``topic`` required,
  ``value_template`` optional, it is not an entity and has no ``unique_id``).
- ``homeassistant/const.py`` ``EntityCategory`` (``config``, ``diagnostic``); a sensor or
  binary_sensor cannot be a ``config`` entity (``sensor/__init__.py`` and
  ``binary_sensor/__init__.py`` refuse it when the entity is added).

Stricter than Home Assistant where that costs the bridge nothing: at the root of a device config
only ``dev``, ``o``, ``cmps`` and ``qos``/``state_topic``/``encoding`` are accepted (HA also
takes the availability options and ``command_topic`` there and shares them into the components;
the bridge puts availability in each component instead, so this check needs no merging).

Templates: HA renders Jinja2, which is not installed here, so this validator evaluates the few
forms the bridge uses and refuses any other (``{{ value_json.KEY }}``, ``{{ value_json.KEY |
tojson }}``, ``{{ 'A' if value.startswith('P') else 'B' }}``): a new form must be added here,
with its meaning, before the bridge may publish it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# --- copied from homeassistant/components/mqtt/abbreviations.py (the keys in use, and a few
# neighbours so that a wrong abbreviation is caught rather than passed as unknown) -------------
ABBREVIATIONS = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "cmps": "components",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "name": "name",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "ops": "options",
    "p": "platform",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {
    "cns": "connections",
    "cu": "configuration_url",
    "hw": "hw_version",
    "ids": "identifiers",
    "mdl": "model",
    "mdl_id": "model_id",
    "mf": "manufacturer",
    "name": "name",
    "sa": "suggested_area",
    "sn": "serial_number",
    "sw": "sw_version",
}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}

# --- the options each platform's discovery schema knows (mqtt/sensor.py, binary_sensor.py,
# tag.py, schemas.py MQTT_ENTITY_COMMON_SCHEMA and MQTT_AVAILABILITY_SCHEMA) -------------------
_ENTITY_COMMON = {
    "platform",
    "name",
    "unique_id",
    "object_id",
    "device",
    "state_topic",
    "value_template",
    "availability",
    "availability_mode",
    "availability_topic",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "entity_category",
    "enabled_by_default",
    "icon",
    "json_attributes_topic",
    "json_attributes_template",
    "encoding",
    "qos",
    "expire_after",
    "force_update",
}
PLATFORM_KEYS = {
    "sensor": _ENTITY_COMMON
    | {
        "device_class",
        "unit_of_measurement",
        "state_class",
        "options",
        "suggested_display_precision",
        "last_reset_value_template",
    },
    "binary_sensor": _ENTITY_COMMON | {"device_class", "payload_on", "payload_off", "off_delay"},
    "tag": {"platform", "topic", "value_template", "device", "qos", "encoding"},
}
ENTITY_PLATFORMS = {"sensor", "binary_sensor"}

# --- copied from homeassistant/components/sensor/const.py (the classes in use and a few more) --
SENSOR_DEVICE_CLASSES = {
    "temperature",
    "power",
    "weight",
    "energy",
    "humidity",
    "duration",
    "timestamp",
    "enum",
    "data_size",
}
DEVICE_CLASS_UNITS: dict[str, set[str | None]] = {
    "temperature": {"°C", "°F", "K"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "weight": {"g", "kg", "mg", "µg", "oz", "lb", "st"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal"},
    "humidity": {"%"},
    "duration": {"d", "h", "min", "s", "ms", "µs"},
    "data_size": {"B", "kB", "MB", "GB", "KiB", "MiB", "GiB"},
    "timestamp": {None},
    "enum": {None},
}
DEVICE_CLASS_STATE_CLASSES: dict[str, set[str]] = {
    "temperature": {"measurement"},
    "power": {"measurement"},
    "weight": {"measurement", "total", "total_increasing"},
    "energy": {"total", "total_increasing"},
    "humidity": {"measurement"},
    "duration": {"measurement", "total", "total_increasing"},
    "data_size": {"measurement", "total", "total_increasing"},
    "timestamp": set(),
    "enum": set(),
}
STATE_CLASSES = {"measurement", "total", "total_increasing", "measurement_angle"}
NUMERIC_DEVICE_CLASSES = {"temperature", "power", "weight", "energy", "humidity", "duration"}
# homeassistant/components/binary_sensor/__init__.py BinarySensorDeviceClass (a subset)
BINARY_DEVICE_CLASSES = {
    "battery",
    "connectivity",
    "door",
    "opening",
    "power",
    "problem",
    "running",
    "safety",
    "window",
}
ENTITY_CATEGORIES = {"config", "diagnostic"}
AVAILABILITY_MODES = {"all", "any", "latest"}
PAYLOAD_NONE = "None"

DISCOVERY_TOPIC = re.compile(r"^(?P<prefix>.+)/device/(?P<object_id>[a-zA-Z0-9_-]+)/config$")
ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?$")

# Presence payloads a device publishes (agent/transport/presence.py) and what HA must make of them.
PRESENCE_CASES = {"online": True, "online:habcdefgh": True, "offline": False, "": False}

_TPL_KEY = re.compile(r"^\{\{ value_json\.([a-z_][a-z0-9_]*) \}\}$")
_TPL_JSON = re.compile(r"^\{\{ value_json\.([a-z_][a-z0-9_]*) \| tojson \}\}$")
_TPL_IF = re.compile(r"^\{\{ '([^']*)' if value\.startswith\('([^']*)'\) else '([^']*)' \}\}$")


class TemplateError(ValueError):
    """A template outside the grammar below, or one that HA could not render on this input."""


def check_template(template: object) -> None:
    if not isinstance(template, str) or not (
        _TPL_KEY.match(template) or _TPL_JSON.match(template) or _TPL_IF.match(template)
    ):
        raise TemplateError(f"template {template!r} is outside the grammar this validator knows")


def render(template: str, payload: str) -> str:
    """Render ``template`` over ``payload`` as Home Assistant would (for the known forms)."""
    check_template(template)
    if m := _TPL_IF.match(template):
        return m.group(1) if payload.startswith(m.group(2)) else m.group(3)
    m = _TPL_KEY.match(template) or _TPL_JSON.match(template)
    assert m is not None
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise TemplateError(f"value_json on a payload that is not JSON: {payload[:60]!r}") from exc
    if not isinstance(doc, dict) or m.group(1) not in doc:
        raise TemplateError(f"value_json has no key {m.group(1)!r} in {payload[:80]!r}")
    value = doc[m.group(1)]
    if _TPL_JSON.match(template):
        return json.dumps(value)
    return PAYLOAD_NONE if value is None else str(value)


# --- expansion --------------------------------------------------------------------------------


def _expand(
    d: Mapping[str, Any], table: Mapping[str, str], where: str, out: list[str]
) -> dict[str, Any]:
    expanded: dict[str, Any] = {}
    for key, value in d.items():
        full = table.get(key, key)
        if full in expanded:
            out.append(f"{where}: {key!r} and another key both mean {full!r}")
        expanded[full] = value
    return expanded


@dataclass
class Entity:
    """One expanded component of a device config, with where it came from."""

    topic: str
    component_id: str
    config: dict[str, Any]

    @property
    def platform(self) -> str:
        return str(self.config.get("platform"))

    def where(self) -> str:
        return f"{self.topic} cmps.{self.component_id}"


@dataclass
class Report:
    """What a run of the validator found: problems (empty: valid) and the entities it read."""

    problems: list[str] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # object id -> device

    def ok(self) -> bool:
        return not self.problems


def expand_config(topic: str, payload: Mapping[str, Any], report: Report) -> dict[str, Any]:
    """Expand a device discovery payload's abbreviations (root, device, origin, components)."""
    p = report.problems
    root = _expand(payload, ABBREVIATIONS, topic, p)
    if isinstance(root.get("device"), Mapping):
        root["device"] = _expand(root["device"], DEVICE_ABBREVIATIONS, f"{topic} dev", p)
    if isinstance(root.get("origin"), Mapping):
        root["origin"] = _expand(root["origin"], ORIGIN_ABBREVIATIONS, f"{topic} o", p)
    comps = root.get("components")
    if isinstance(comps, Mapping):
        root["components"] = {
            cid: _expand(c, ABBREVIATIONS, f"{topic} cmps.{cid}", p)
            if isinstance(c, Mapping)
            else c
            for cid, c in comps.items()
        }
    return root


# --- the rules --------------------------------------------------------------------------------


def validate(retained: Mapping[str, bytes], prefix: str = "homeassistant") -> Report:
    """Check every retained device config under ``prefix`` and the retained states they name.

    ``retained`` maps topic -> payload as a subscriber to ``#`` collects them (empty payloads,
    which clear a topic, are not retained by a broker and so never appear).
    """
    report = Report()
    configs = {
        t: v for t, v in retained.items() if t.startswith(prefix + "/") and t.endswith("/config")
    }
    if not configs:
        report.problems.append(f"no retained config under {prefix}/")
    seen_ids: dict[str, str] = {}
    for topic, raw in sorted(configs.items()):
        for entity in _validate_device(topic, raw, prefix, report):
            _validate_entity(entity, report, retained)
            uid = entity.config.get("unique_id")
            if entity.platform in ENTITY_PLATFORMS and isinstance(uid, str):
                if uid in seen_ids:
                    report.problems.append(
                        f"{entity.where()}: unique_id {uid!r} also in {seen_ids[uid]}"
                    )
                seen_ids[uid] = entity.where()
    return report


def _validate_device(topic: str, raw: bytes, prefix: str, report: Report) -> Iterable[Entity]:
    p = report.problems
    m = DISCOVERY_TOPIC.match(topic)
    if m is None or m.group("prefix") != prefix:
        p.append(f"{topic}: not {prefix}/device/<object id of [a-zA-Z0-9_-]>/config")
        return []
    try:
        payload = json.loads(raw)
    except ValueError:
        p.append(f"{topic}: payload is not JSON")
        return []
    if not isinstance(payload, dict):
        p.append(f"{topic}: payload is not a JSON object")
        return []
    root = expand_config(topic, payload, report)
    for key in root:
        if key not in ("device", "origin", "components", "qos", "state_topic", "encoding"):
            p.append(f"{topic}: unknown key {key!r} at the root of a device config")
    dev, origin, comps = root.get("device"), root.get("origin"), root.get("components")
    if not isinstance(dev, dict):
        p.append(f"{topic}: no device (dev)")
    else:
        _validate_device_info(topic, dev, report)
        report.devices[m.group("object_id")] = dev
    if not isinstance(origin, dict):
        p.append(f"{topic}: no origin (o)")
    else:
        if not isinstance(origin.get("name"), str) or not origin["name"]:
            p.append(f"{topic}: origin without a name")
        url = origin.get("support_url")
        if url is not None and not (isinstance(url, str) and URL_RE.match(url)):
            p.append(f"{topic}: origin support_url {url!r} is not a URL")
        for key in origin:
            if key not in ORIGIN_ABBREVIATIONS.values():
                p.append(f"{topic}: unknown origin key {key!r}")
    if not isinstance(comps, dict) or not comps:
        p.append(f"{topic}: no components (cmps)")
        return []
    entities = []
    for cid, c in comps.items():
        if not ID_RE.match(cid):
            p.append(f"{topic}: component id {cid!r} is not [a-zA-Z0-9_-]+")
        if not isinstance(c, dict):
            p.append(f"{topic} cmps.{cid}: not an object")
            continue
        if "device" in c:
            p.append(f"{topic} cmps.{cid}: the device is named once, at the root (dev)")
        entities.append(Entity(topic, cid, c))
    return entities


def _validate_device_info(topic: str, dev: dict[str, Any], report: Report) -> None:
    p = report.problems
    for key in dev:
        if key not in DEVICE_ABBREVIATIONS.values() and key != "via_device":
            p.append(f"{topic}: unknown device key {key!r}")
    ids, cns = dev.get("identifiers"), dev.get("connections")
    if not ids and not cns:
        p.append(f"{topic}: device has neither identifiers nor connections")
    if ids is not None and not (
        isinstance(ids, str) or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))
    ):
        p.append(f"{topic}: device identifiers must be a string or a list of strings")
    if not isinstance(dev.get("name"), str) or not dev["name"]:
        p.append(f"{topic}: device without a name")


def _validate_entity(e: Entity, report: Report, retained: Mapping[str, bytes]) -> None:
    p, c, where = report.problems, e.config, e.where()
    platform = c.get("platform")
    if platform not in PLATFORM_KEYS:
        p.append(f"{where}: platform {platform!r} is not one of {sorted(PLATFORM_KEYS)}")
        return
    for key in c:
        if key not in PLATFORM_KEYS[platform]:
            p.append(f"{where}: {platform} has no option {key!r}")
    if platform == "tag":
        if not isinstance(c.get("topic"), str):
            p.append(f"{where}: a tag scanner needs a topic")
        if "value_template" in c:
            _template(where, c["value_template"], p)
        return
    if not isinstance(c.get("unique_id"), str) or not c["unique_id"]:
        p.append(f"{where}: an entity of a device config needs a unique_id")
    if not isinstance(c.get("state_topic"), str):
        p.append(f"{where}: no state_topic")
    cat = c.get("entity_category")
    if cat is not None and cat not in ENTITY_CATEGORIES:
        p.append(f"{where}: entity_category {cat!r} is not one of {sorted(ENTITY_CATEGORIES)}")
    if cat == "config":
        p.append(f"{where}: a {platform} cannot be a config entity")
    if platform == "sensor":
        _validate_sensor(where, c, p)
    else:
        dc = c.get("device_class")
        if dc is not None and dc not in BINARY_DEVICE_CLASSES:
            p.append(f"{where}: binary_sensor device_class {dc!r} unknown")
    _validate_availability(where, c, p)
    for key in ("value_template", "json_attributes_template"):
        if key in c:
            _template(where, c[key], p)
    _validate_states(e, retained, p)


def _validate_sensor(where: str, c: dict[str, Any], p: list[str]) -> None:
    dc, unit, sc, options = (
        c.get("device_class"),
        c.get("unit_of_measurement"),
        c.get("state_class"),
        c.get("options"),
    )
    if dc is not None and dc not in SENSOR_DEVICE_CLASSES:
        p.append(f"{where}: sensor device_class {dc!r} unknown")
        return
    if sc is not None and sc not in STATE_CLASSES:
        p.append(f"{where}: state_class {sc!r} unknown")
    if options is not None:
        if not isinstance(options, list) or not options:
            p.append(f"{where}: options must be a non-empty list")
        elif not all(isinstance(o, str) for o in options) or len(set(options)) != len(options):
            p.append(f"{where}: options must be distinct strings")
        if sc or unit:
            p.append(f"{where}: options with state_class or unit_of_measurement")
        if dc not in (None, "enum"):
            p.append(f"{where}: options with device_class {dc!r} (only enum takes options)")
    if dc == "enum" and options is None:
        p.append(f"{where}: an enum sensor needs options")
    if dc is None:
        return
    allowed_units = DEVICE_CLASS_UNITS.get(dc)
    if allowed_units is not None and unit not in allowed_units:
        p.append(f"{where}: unit {unit!r} is not one device_class {dc} allows: {allowed_units}")
    if sc is not None and sc not in DEVICE_CLASS_STATE_CLASSES.get(dc, STATE_CLASSES):
        p.append(f"{where}: state_class {sc!r} does not go with device_class {dc!r}")


def _validate_availability(where: str, c: dict[str, Any], p: list[str]) -> None:
    avty = c.get("availability")
    if avty is not None and "availability_topic" in c:
        p.append(f"{where}: availability and availability_topic together")
    mode = c.get("availability_mode")
    if mode is not None and mode not in AVAILABILITY_MODES:
        p.append(f"{where}: availability_mode {mode!r} unknown")
    if avty is None:
        return
    if not isinstance(avty, list) or not avty:
        p.append(f"{where}: availability must be a non-empty list")
        return
    for i, raw in enumerate(avty):
        if not isinstance(raw, dict):
            p.append(f"{where}: availability[{i}] is not an object")
            continue
        a = _expand(raw, ABBREVIATIONS, f"{where} availability[{i}]", p)
        for key in a:
            if key not in ("topic", "payload_available", "payload_not_available", "value_template"):
                p.append(f"{where}: availability[{i}] has no option {key!r}")
        topic = a.get("topic")
        if not isinstance(topic, str) or not topic or any(ch in topic for ch in "+#\0"):
            p.append(f"{where}: availability[{i}] topic {topic!r} is not a topic one can publish")
        up = a.get("payload_available", "online")
        down = a.get("payload_not_available", "offline")
        tpl = a.get("value_template")
        if tpl is None:
            continue
        try:
            for payload, online in PRESENCE_CASES.items():
                got = render(tpl, payload)
                if got != (up if online else down):
                    p.append(
                        f"{where}: availability[{i}] template renders {got!r} for presence "
                        f"{payload!r}, expected {up if online else down!r}"
                    )
        except TemplateError as exc:
            p.append(f"{where}: availability[{i}]: {exc}")


def _template(where: str, tpl: object, p: list[str]) -> None:
    try:
        check_template(tpl)
    except TemplateError as exc:
        p.append(f"{where}: {exc}")


def _validate_states(e: Entity, retained: Mapping[str, bytes], p: list[str]) -> None:
    """Render the entity's templates over the retained state it reads, if one was published."""
    c, where = e.config, e.where()
    raw = retained.get(str(c.get("state_topic")))
    if raw is None or "value_template" not in c:
        return
    text = raw.decode("utf-8", "replace")
    try:
        value = render(c["value_template"], text)
        attrs = None
        if "json_attributes_template" in c:
            attrs_raw = retained.get(str(c.get("json_attributes_topic")))
            if attrs_raw is not None:
                attrs = render(c["json_attributes_template"], attrs_raw.decode("utf-8", "replace"))
    except TemplateError as exc:
        p.append(f"{where}: {exc}")
        return
    if attrs is not None and not isinstance(json.loads(attrs), dict):
        p.append(f"{where}: json attributes render {attrs!r}, not a JSON object")
    if value == PAYLOAD_NONE:
        return  # unknown: allowed for every entity
    if e.platform == "binary_sensor":
        on, off = c.get("payload_on", "ON"), c.get("payload_off", "OFF")
        if value not in (on, off):
            p.append(f"{where}: state renders {value!r}, neither {on!r} nor {off!r}")
        return
    dc = c.get("device_class")
    if dc == "enum" and value not in c.get("options", []):
        p.append(f"{where}: state {value!r} is not one of its options")
    elif dc in NUMERIC_DEVICE_CLASSES or c.get("state_class") is not None:
        try:
            float(value)
        except ValueError:
            p.append(f"{where}: state {value!r} is not a number (device_class {dc})")
