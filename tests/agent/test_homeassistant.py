"""The Home Assistant bridge: golden discovery payloads, the validator's teeth, the readings it
publishes, and whole runs with ``--homeassistant`` against a real Mosquitto.

The validator (tests/agent/ha_rules.py) restates Home Assistant's discovery rules with their
sources; the named mutations below prove that it refuses what Home Assistant would refuse.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.haopts import bridge_running
from agent.cli.main import main
from agent.config.devices import load_fleet
from agent.fleet import ha_discovery as hd
from agent.fleet import keystore
from agent.fleet import runner as runner_module
from agent.fleet.datadir import DataDir
from agent.fleet.homeassistant import (
    REALTIME_PERIOD_S,
    THROTTLED_PERIOD_S,
    HomeAssistantBridge,
    throttle_note,
)
from agent.fleet.provision import provision
from agent.fleet.view import DeviceRow, FleetSnapshot
from agent.transport.brokers import MosquittoBroker
from agent.transport.endpoint import Endpoint
from agent.transport.errors import TransportError
from agent.transport.mqtt import MqttClient
from firmware_sim.samples import Sample
from ledger.sealbox import public_key_of
from tests.agent.ha_fixtures import GOLDEN_BRIDGE, GOLDEN_DEVICES, GOLDEN_HUB, VERSION
from tests.agent.ha_rules import validate
from tests.agent.runner_helpers import write_fleet

GOLDEN = Path(__file__).parent / "golden" / "ha"
T = hd.HaTopics()


def _golden_config(kind: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(hd, "version", lambda: VERSION)
    hub = GOLDEN_HUB if kind == "medical_freezer" else None
    return hd.discovery_config(GOLDEN_DEVICES[kind], T, bridge_id=GOLDEN_BRIDGE, hub_id=hub)


def _retained(*configs: tuple[str, dict[str, Any]]) -> dict[str, bytes]:
    return {T.config(oid): json.dumps(cfg).encode() for oid, cfg in configs}


# --- golden payloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(GOLDEN_DEVICES))
def test_the_discovery_payload_is_the_golden_one_reviewed_by_hand(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = json.loads((GOLDEN / f"{kind}.json").read_text())
    assert _golden_config(kind, monkeypatch) == golden


@pytest.mark.parametrize("kind", sorted(GOLDEN_DEVICES))
def test_every_golden_payload_passes_the_validator(kind: str) -> None:
    golden = json.loads((GOLDEN / f"{kind}.json").read_text())
    report = validate(_retained((GOLDEN_DEVICES[kind].object_id, golden)))
    assert report.ok(), "\n".join(report.problems)


def test_a_private_household_without_its_key_shows_ledger_health_only() -> None:
    golden = json.loads((GOLDEN / "refrigerator_private.json").read_text())
    comps = golden["cmps"]
    assert set(comps) == {"height", "pending", "replicated", "peers"}
    assert {c["ent_cat"] for c in comps.values()} == {"diagnostic"}


# --- the validator refuses what Home Assistant refuses -----------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    def apply(cfg: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return apply


_DELETE = object()
MUTATIONS: dict[str, tuple[str, Mutation, str]] = {
    "enum-with-unit": ("washing_machine", _set("cmps.phase.unit_of_meas", "x"), "options with"),
    "enum-with-state-class": (
        "washing_machine",
        _set("cmps.programme.stat_cla", "measurement"),
        "options with",
    ),
    "enum-without-options": ("washing_machine", _set("cmps.phase.ops", _DELETE), "needs options"),
    "enum-empty-options": ("washing_machine", _set("cmps.phase.ops", []), "non-empty"),
    "options-on-temperature": (
        "refrigerator",
        _set("cmps.fridge_temp.ops", ["a"]),
        "only enum takes options",
    ),
    "temperature-in-percent": (
        "refrigerator",
        _set("cmps.fridge_temp.unit_of_meas", "%"),
        "is not one device_class temperature allows",
    ),
    "temperature-without-unit": (
        "medical_freezer",
        _set("cmps.cabinet_temp.unit_of_meas", _DELETE),
        "unit None",
    ),
    "temperature-total-increasing": (
        "refrigerator",
        _set("cmps.fridge_temp.stat_cla", "total_increasing"),
        "does not go with",
    ),
    "unknown-device-class": (
        "refrigerator",
        _set("cmps.door.dev_cla", "fridge_door"),
        "device_class 'fridge_door' unknown",
    ),
    "misspelt-abbreviation": (
        "refrigerator",
        _set("cmps.door.unit_of_measure", "x"),
        "has no option 'unit_of_measure'",
    ),
    "abbreviation-and-full-key": (
        "refrigerator",
        _set("cmps.door.state_topic", "x/y"),
        "both mean 'state_topic'",
    ),
    "no-unique-id": ("refrigerator", _set("cmps.door.uniq_id", _DELETE), "needs a unique_id"),
    "tag-with-unique-id": ("refrigerator", _set("cmps.rfid.uniq_id", "x"), "has no option"),
    "tag-without-topic": ("refrigerator", _set("cmps.rfid.t", _DELETE), "needs a topic"),
    "config-sensor": ("refrigerator", _set("cmps.height.ent_cat", "config"), "config entity"),
    "device-without-identifiers": ("refrigerator", _set("dev.ids", _DELETE), "neither"),
    "origin-without-name": ("refrigerator", _set("o.name", _DELETE), "origin without a name"),
    "origin-url-not-a-url": ("refrigerator", _set("o.url", "docs/HA.md"), "is not a URL"),
    "no-components": ("refrigerator", _set("cmps", {}), "no components"),
    "unknown-platform": ("refrigerator", _set("cmps.door.p", "door_sensor"), "platform"),
    "availability-template-inverted": (
        "refrigerator",
        _set(
            "cmps.door.avty",
            [
                {
                    "t": "a/b",
                    "val_tpl": "{{ 'offline' if value.startswith('online') else 'online' }}",
                }
            ],
        ),
        "template renders",
    ),
    "availability-template-unknown-form": (
        "refrigerator",
        _set("cmps.door.avty", [{"t": "a/b", "val_tpl": "{{ value | upper }}"}]),
        "outside the grammar",
    ),
    "availability-wildcard-topic": (
        "refrigerator",
        _set("cmps.door.avty", [{"t": "a/+/presence"}]),
        "not a topic one can publish",
    ),
    "availability-topic-and-list": (
        "refrigerator",
        _set("cmps.door.avty_t", "a/b"),
        "availability and availability_topic together",
    ),
    "availability-mode-unknown": (
        "refrigerator",
        _set("cmps.door.avty_mode", "most"),
        "availability_mode 'most'",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_validator_refuses_a_named_mutation(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, mutate, expected = MUTATIONS[name]
    cfg = copy.deepcopy(_golden_config(kind, monkeypatch))
    mutate(cfg)
    report = validate(_retained((GOLDEN_DEVICES[kind].object_id, cfg)))
    assert any(expected in p for p in report.problems), (name, report.problems)


def test_the_validator_refuses_a_unique_id_used_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    fridge = _golden_config("refrigerator", monkeypatch)
    twin = copy.deepcopy(fridge)
    report = validate(_retained(("fridge_a", fridge), ("fridge_b", twin)))
    assert any("also in" in p for p in report.problems), report.problems


def test_the_validator_refuses_states_the_entities_cannot_show(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    washer = _golden_config("washing_machine", monkeypatch)
    dev = GOLDEN_DEVICES["washing_machine"]
    good = hd.readings_state(dev, hd.Readings())
    retained = _retained((dev.object_id, washer))
    retained[T.state(dev.device_id)] = json.dumps(good).encode()
    assert validate(retained).ok(), validate(retained).problems
    for key, bad, expected in [
        ("programme", "boil-95", "is not one of its options"),
        ("door", "open", "neither 'ON' nor 'OFF'"),
        ("load", "heavy", "is not a number"),
        ("fabric_pct", [1, 2], "not a JSON object"),
    ]:
        state = dict(good, **{key: bad})
        retained[T.state(dev.device_id)] = json.dumps(state).encode()
        assert any(expected in p for p in validate(retained).problems), key
    del good["phase"]
    retained[T.state(dev.device_id)] = json.dumps(good).encode()
    assert any("no key 'phase'" in p for p in validate(retained).problems)


# --- readings and states -----------------------------------------------------------------------


def test_a_wash_shows_its_programme_phase_fabric_and_care_label_warnings() -> None:
    dev = GOLDEN_DEVICES["washing_machine"]
    r = hd.Readings()
    for s in [
        Sample(1_000, "load.mass_g", 3_000),
        Sample(1_000, "load.fibre_pct", 70, text="cotton"),
        Sample(1_000, "load.fibre_pct", 30, text="wool"),
        Sample(1_000, "wash.conflict", 60, "urn:epc:id:sgtin:1.2.3", "wool: hand wash 30 C"),
        Sample(1_000, "wash.programme", 60, text="cotton-60"),
        Sample(2_000, "wash.state", 2, text="heat"),
        Sample(2_000, "heater.power_w", 2_000),
        Sample(2_000, "water.temp_mc", 35_500),
    ]:
        r.add(s)
    state = hd.readings_state(dev, r)
    assert state["programme"] == "cotton-60" and state["phase"] == "heat"
    assert state["fabric"] == "cotton" and state["fabric_pct"] == {"cotton": 70, "wool": 30}
    assert state["care_warning"] == "ON"
    assert state["care_labels"] == {"warnings": ["urn:epc:id:sgtin:1.2.3: wool: hand wash 30 C"]}
    assert state["water_temp"] == 35.5 and state["heater_power"] == 2_000
    r.add(Sample(9_000, "load.fibre_pct", 100, text="polyester"))  # the next load
    state = hd.readings_state(dev, r)
    assert state["fabric_pct"] == {"polyester": 100} and state["care_warning"] == "OFF"


def test_alarms_raise_and_clear_the_problem_sensor() -> None:
    dev = GOLDEN_DEVICES["medical_freezer"]
    r = hd.Readings()
    r.add(Sample(1, "alarm.power", 1, text="mains power lost"))
    r.add(Sample(1, "power.on", 0))
    state = hd.readings_state(dev, r)
    assert state["problem"] == "ON" and state["alarms"] == {"power": "mains power lost"}
    assert state["power"] == "OFF"
    r.add(Sample(2, "alarm.power", 0, text="cleared"))
    assert hd.readings_state(dev, r)["problem"] == "OFF"


def test_tag_reads_are_bounded_between_two_publications() -> None:
    r = hd.Readings()
    for i in range(hd.MAX_TAG_EVENTS + 5):
        r.add(Sample(i, "rfid.in", i, f"urn:epc:id:sgtin:1.2.{i}", "milk"))
    events = r.take_tags()
    assert len(events) == hd.MAX_TAG_EVENTS and r.tags_dropped == 5
    assert events[-1] == {
        "epc": f"urn:epc:id:sgtin:1.2.{hd.MAX_TAG_EVENTS + 4}",
        "event": "in",
        "item": "milk",
    }
    assert r.take_tags() == []


def test_health_comes_from_the_fleet_snapshot() -> None:
    row = DeviceRow("f", "refrigerator", "home-1", 7, 3, 100, (), (), 2, 4, 0, replicated=(5, 8))
    assert hd.health_state(row) == {
        "height": 7,
        "pending": 3,
        "replicated": 5,
        "replicated_of": 8,
        "peers": 2,
        "peers_total": 4,
        "forked": False,
    }


# --- whole runs on a real Mosquitto ------------------------------------------------------------

HA_FLEET = """\
fleet: ha
seed: 7
start: 2025-01-08T09:30:00Z        # a Wednesday: laundry at 10:00
sites:
  - id: home-1
    kind: household
    private: true
    owner: family-1
  - id: blood-station-north
    kind: blood_station
gossip_domains:
  - id: blood-chain
devices:
  - name: fridge-1
    kind: refrigerator
    site: home-1
    domains: [home-1]
    sampling_period: 60s
  - name: washer-1
    kind: washing_machine
    site: home-1
    domains: [home-1]
    sampling_period: 60s
  - name: freezer-station
    kind: medical_freezer
    site: blood-station-north
    domains: [blood-chain]
    sampling_period: 60s
"""


async def _collect(endpoint: Endpoint, filters: list[str]) -> dict[str, bytes]:
    """Every retained message under ``filters``, with a plain client: subscribe, then publish a
    marker; the broker sends retained messages on subscribing, so the marker comes after them."""
    got: dict[str, bytes] = {}
    token = secrets.token_hex(4)
    marker = f"edgefleet-test/{token}/marker"
    done = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        if topic == marker:
            done.set()
        elif payload:
            got[topic] = payload

    async with MqttClient(
        endpoint,
        f"collector-{token}",
        will_topic=f"edgefleet-test/{token}/will",
        on_message=on_message,
    ) as client:
        await client.subscribe([*filters, marker])
        await client.publish(marker, b"end")
        await asyncio.wait_for(done.wait(), 10)
    return got


def _run(fleet: Path, data: Path, broker: MosquittoBroker, *extra: str) -> None:
    args = ["run", "--devices", str(fleet), "--data", str(data), "--broker"]
    args += [broker.endpoint.url, "--for", "2h", "--no-view", "--settle", "3", "--homeassistant"]
    assert main([*args, *extra]) == 0


def _device_ids(data: Path) -> dict[str, str]:
    devices: dict[str, str] = json.loads((DataDir(data).root / "fleet.json").read_text())["devices"]
    return devices


def _components(retained: dict[str, bytes], device_id: str) -> dict[str, Any]:
    for topic, raw in retained.items():
        if topic.endswith(f"_{device_id}/config"):
            cmps: dict[str, Any] = json.loads(raw)["cmps"]
            return cmps
    raise AssertionError(f"no config for {device_id}")


@pytest.mark.mosquitto
def test_a_fleet_run_publishes_configs_that_pass_the_validator(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = write_fleet(tmp_path, HA_FLEET)
    data = tmp_path / "data"
    _run(fleet, data, mosquitto)
    filters = ["homeassistant/#", "edgefleet/ha/#"]
    retained = asyncio.run(_collect(mosquitto.endpoint, filters))
    report = validate(retained)
    assert report.ok(), "\n".join(report.problems)
    ids = _device_ids(data)
    assert len(report.devices) == 3
    assert {d["name"] for d in report.devices.values()} == set(ids)
    # The household's readings are private: without the owner's key, ledger health only.
    for name in ("fridge-1", "washer-1"):
        assert set(_components(retained, ids[name])) == {"height", "pending", "replicated", "peers"}
        assert f"edgefleet/ha/{ids[name]}/state" not in retained
    freezer = json.loads(retained[f"edgefleet/ha/{ids['freezer-station']}/state"])
    assert isinstance(freezer["cabinet_temp"], float) and freezer["power"] == "ON"
    health = json.loads(retained[f"edgefleet/ha/{ids['freezer-station']}/health"])
    assert health["height"] is not None and health["height"] >= 0
    bridge = [t for t in retained if t.startswith("edgefleet/ha/bridge/")]
    assert len(bridge) == 1 and retained[bridge[0]] == b"offline"  # the run has ended

    # With the owner's key the household's appliances show their readings.
    _run(fleet, data, mosquitto, "--owner-key", str(data / "owners" / "family-1.key"))
    retained = asyncio.run(_collect(mosquitto.endpoint, filters))
    report = validate(retained)
    assert report.ok(), "\n".join(report.problems)
    washer = _components(retained, ids["washer-1"])
    assert washer["programme"]["dev_cla"] == "enum" and "unit_of_meas" not in washer["programme"]
    state = json.loads(retained[f"edgefleet/ha/{ids['washer-1']}/state"])
    assert state["programme"] in washer["programme"]["ops"]
    fridge = json.loads(retained[f"edgefleet/ha/{ids['fridge-1']}/state"])
    assert isinstance(fridge["fridge_temp"], float) and fridge["door"] in ("ON", "OFF")

    # The washer leaves the fleet: its retained config is cleared, Home Assistant removes it.
    smaller = (
        HA_FLEET.split("  - name: washer-1")[0]
        + "  - name: freezer-station"
        + (HA_FLEET.split("  - name: freezer-station")[1])
    )
    _run(write_fleet(tmp_path, smaller, "smaller.yaml"), data, mosquitto)
    retained = asyncio.run(_collect(mosquitto.endpoint, filters))
    report = validate(retained)
    assert report.ok(), "\n".join(report.problems)
    assert {d["name"] for d in report.devices.values()} == {"fridge-1", "freezer-station"}


def test_homeassistant_refuses_the_in_memory_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path, HA_FLEET)
    args = ["run", "--devices", str(fleet), "--data", str(tmp_path / "d"), "--broker", "memory"]
    assert main([*args, "--homeassistant"]) == 2
    assert "--homeassistant needs an MQTT broker" in capsys.readouterr().err
    assert main([*args, "--owner-key", "k"]) == 2
    assert "--owner-key goes with --homeassistant" in capsys.readouterr().err
    assert main([*args[:-1], "embedded", "--homeassistant", "home/+"]) == 2
    assert "--homeassistant: topic prefix" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# --- the bridge's reactions, with a recording client in place of MQTT ---------------------------


class _Recorder:
    """Stands in for the bridge's MqttClient: records what is published, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain))

    def take(self) -> list[tuple[str, bytes, bool]]:
        out, self.sent = self.sent, []
        return out


def _bridge(
    tmp_path: Path, speed: float | None = None, owner_keys: Iterable[bytes] = ()
) -> tuple[HomeAssistantBridge, _Recorder]:
    cfg = load_fleet(write_fleet(tmp_path, HA_FLEET))
    provision(cfg, DataDir(tmp_path / "data"), cfg.start_ms)
    bridge = HomeAssistantBridge(
        cfg, tmp_path / "data", topics=T, speed=speed, owner_keys=owner_keys
    )
    bridge.load_devices(d.name for d in cfg.devices)
    recorder = _Recorder()
    bridge._client = recorder  # type: ignore[assignment]
    return bridge, recorder


def _configs(sent: list[tuple[str, bytes, bool]]) -> dict[str, bytes]:
    return {t: p for t, p, retain in sent if t.endswith("/config") and retain}


def test_discovery_is_published_again_when_home_assistant_comes_online(tmp_path: Path) -> None:
    bridge, client = _bridge(tmp_path)
    asyncio.run(bridge.publish_once(None))
    first = _configs(client.take())
    assert len(first) == 3
    asyncio.run(bridge.publish_once(None))
    assert _configs(client.take()) == {}, "an unchanged config is not sent again"
    bridge._on_message("homeassistant/status", b"offline")
    asyncio.run(bridge.publish_once(None))
    assert _configs(client.take()) == {}
    bridge._on_message("homeassistant/status", b"online")
    asyncio.run(bridge.publish_once(None))
    assert _configs(client.take()) == first


def test_a_device_on_a_shared_connection_follows_its_hub_too(tmp_path: Path) -> None:
    bridge, client = _bridge(tmp_path)
    asyncio.run(bridge.publish_once(None))
    client.take()
    freezer = bridge.devices["freezer-station"]
    bridge._on_message(T.presence(freezer.device_id), b"online:hshared1")
    asyncio.run(bridge.publish_once(None))
    sent = _configs(client.take())
    assert list(sent) == [T.config(freezer.object_id)]
    avty = json.loads(sent[T.config(freezer.object_id)])["cmps"]["cabinet_temp"]["avty"]
    assert {"t": T.hub_presence("hshared1")} in avty


def test_a_retained_config_of_a_departed_device_is_cleared(tmp_path: Path) -> None:
    bridge, client = _bridge(tmp_path)
    gone = hd.object_id(bridge.fleet_tag, "ef" + "q" * 24)
    other_fleet = hd.object_id("ffffffff", "ef" + "q" * 24)
    ours = bridge.devices["fridge-1"].object_id
    for oid in (gone, other_fleet, ours):
        bridge._on_message(T.config(oid), b'{"dev": {}}')
    asyncio.run(bridge.publish_once(None))
    sent = client.take()
    cleared = [t for t, p, retain in sent if p == b"" and retain and t.endswith("/config")]
    assert cleared == [T.config(gone)], "only this fleet's departed device is removed"
    # The household's devices (no owner key given): any state an earlier run retained goes.
    ids = {bridge.devices[n].device_id for n in ("fridge-1", "washer-1")}
    assert {t for t, p, _ in sent if p == b"" and t.endswith("/state")} == {T.state(i) for i in ids}


def test_the_bridge_says_it_throttles_when_the_fleet_is_not_real_time(tmp_path: Path) -> None:
    realtime, _ = _bridge(tmp_path / "rt", speed=1.0)
    assert realtime.note is None and realtime.period_s == REALTIME_PERIOD_S
    fast, _ = _bridge(tmp_path / "fast", speed=600.0)
    assert fast.period_s == THROTTLED_PERIOD_S
    assert fast.note is not None and "--speed 600" in fast.note and "sim_time" in fast.note
    assert "--speed max" in (throttle_note(None) or "")


def test_a_run_on_the_embedded_broker_waits_for_it_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bridge asks the runner for the broker before it has started; it must wait, not fail."""
    fleet = write_fleet(tmp_path, HA_FLEET)
    args = ["run", "--devices", str(fleet), "--data", str(tmp_path / "d"), "--for", "1h"]
    assert main([*args, "--no-view", "--settle", "1", "--homeassistant"]) == 0
    err = capsys.readouterr().err
    assert "not in real time" in err and "stopped at simulated 3600000 ms" in err


@pytest.mark.mosquitto
def test_devices_on_a_shared_connection_are_available_through_their_hub_too(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "SHARED_CONNECTION_ABOVE", 1)  # a hub for 3 devices
    fleet = write_fleet(tmp_path, HA_FLEET)
    _run(fleet, tmp_path / "data", mosquitto)
    retained = asyncio.run(_collect(mosquitto.endpoint, ["homeassistant/#", "edgefleet/#"]))
    report = validate(retained)
    assert report.ok(), "\n".join(report.problems)
    hubs = {t for t in retained if "/v1/hub/" in t}
    assert len(hubs) == 1 and retained[next(iter(hubs))] == b"offline"
    for topic, raw in retained.items():
        if topic.endswith("/config"):
            for c in json.loads(raw)["cmps"].values():
                if c["p"] != "tag":
                    assert {"t": next(iter(hubs))} in c["avty"], topic


def test_a_bridge_that_fails_stops_the_fleet_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Runner:
        endpoint = None
        stopped = asyncio.Event()

        def snapshot(self) -> None:
            return None

        def request_stop(self) -> None:
            self.stopped.set()

    class Bridge:
        async def run(self, endpoint: object, snapshot: object) -> None:
            raise TransportError("cannot connect to the MQTT broker at mqtt://ha:1883")

    async def main() -> None:
        runner = Runner()
        async with bridge_running(Bridge(), runner):  # type: ignore[arg-type]
            await asyncio.wait_for(runner.stopped.wait(), 10)

    with pytest.raises(TransportError, match="mqtt://ha:1883"):
        asyncio.run(main())
    assert "Home Assistant bridge failed: cannot connect" in capsys.readouterr().err


def test_tag_reads_from_the_tap_become_tag_scans_and_states_are_sent_on_change(
    tmp_path: Path,
) -> None:
    bridge, client = _bridge(tmp_path / "a")
    owner = keystore.read_owner_secret(tmp_path / "a" / "data" / "owners" / "family-1.key")
    readable, client = _bridge(tmp_path / "a", owner_keys=[public_key_of(owner)])
    fridge = readable.devices["fridge-1"]
    assert fridge.private and fridge.readings and not bridge.devices["fridge-1"].readings

    class Source:
        now_ms = 0

        def targets(self, until_ms: int) -> Iterator[int]:
            yield until_ms

        def step(self, until_ms: int) -> list[tuple[str, Sample]]:
            return [
                ("fridge-1", Sample(until_ms, "fridge.temp_mc", 4_250)),
                ("fridge-1", Sample(until_ms, "rfid.in", 1, "urn:epc:id:sgtin:9.8.7", "milk")),
                ("freezer-station", Sample(until_ms, "cabinet.temp_mc", -30_000)),
            ]

    source = readable.tap(lambda cfg, step: Source())(readable.cfg, 1_000)
    source.step(60_000)
    row = DeviceRow("fridge-1", "refrigerator", "home-1", 0, 1, 2, (), (), 0, 1, 0)
    snap = FleetSnapshot(60_000, 0.0, 0.0, (row,))
    asyncio.run(readable.publish_once(snap))
    sent = client.take()
    tags = [(p, r) for t, p, r in sent if t == T.tag(fridge.device_id)]
    assert tags == [(b'{"epc": "urn:epc:id:sgtin:9.8.7", "event": "in", "item": "milk"}', False)]
    state = [json.loads(p) for t, p, r in sent if t == T.state(fridge.device_id) and r]
    assert state[0]["fridge_temp"] == 4.25
    asyncio.run(readable.publish_once(snap))
    assert client.take() == [], "nothing changed: nothing sent, no tag read twice"


def test_readings_kept_before_the_devices_were_known_are_dropped_where_private(
    tmp_path: Path,
) -> None:
    cfg = load_fleet(write_fleet(tmp_path, HA_FLEET))
    provision(cfg, DataDir(tmp_path / "data"), cfg.start_ms)
    bridge = HomeAssistantBridge(cfg, tmp_path / "data", topics=T, speed=None)
    bridge._sample("fridge-1", Sample(1, "fridge.temp_mc", 4_000))  # a resume's fast-forward
    bridge._sample("freezer-station", Sample(1, "cabinet.temp_mc", -30_000))
    bridge.load_devices(["fridge-1", "freezer-station"])
    assert set(bridge.readings) == {"freezer-station"}
    bridge._sample("fridge-1", Sample(2, "fridge.temp_mc", 4_000))
    bridge._sample("washer-1", Sample(2, "water.temp_mc", 20_000))  # another shard's device
    assert set(bridge.readings) == {"freezer-station"}
