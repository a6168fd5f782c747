"""devices.yaml: the sample loads, groups expand, and every bad file names file, device, field."""

from __future__ import annotations

import copy
import re
import time
import tracemalloc
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.main import build_parser, main
from agent.config.devices import (
    DEVICE_KINDS,
    ConfigError,
    RawDevice,
    RawSite,
    load_fleet,
    parse_duration_ms,
    parse_fleet,
    serial_up_sensor,
)
from agent.config.yamlload import MAX_NODES, read_yaml
from firmware_sim.appliances import (
    APPLIANCE_TYPES,
    PARAMS_TYPES,
    RefrigeratorParams,
    WashingMachineParams,
)
from firmware_sim.fleet import Fleet, Outage
from firmware_sim.sensors.faults import FaultSpec
from firmware_sim.world import DAY_MS, HOUR_MS, SITE_KINDS

ROOT = Path(__file__).resolve().parents[2]
START = 1_736_121_600_000

BASE: dict[str, Any] = {
    "fleet": "t",
    "sites": [
        {"id": "home-1", "kind": "household"},
        {"id": "home-2", "kind": "household"},
        {"id": "lab", "kind": "hospital"},
    ],
    "devices": [
        {"name": "fridge-1", "kind": "refrigerator", "site": "home-1"},
        {"name": "washer-1", "kind": "washing_machine", "site": "home-1"},
        {"name": "fridge-3", "kind": "refrigerator", "site": "home-2"},
        {"name": "freezer", "kind": "medical_freezer", "site": "lab"},
    ],
}


def doc(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def with_device(k: int, **changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["devices"][k].update(changes)
    return d


def test_the_sample_devices_yaml_loads() -> None:
    cfg = load_fleet(ROOT / "devices.yaml")
    assert cfg.name == "demo" and cfg.seed == 42 and cfg.start_ms == START
    assert [d.name for d in cfg.devices] == [
        "fridge-1",
        "fridge-2",
        "fridge-3",
        "washer-1",
        "washer-2",
        "washer-3",
        "freezer-station",
        "freezer-van",
        "freezer-hospital",
    ]
    assert {s.kind for s in cfg.sites} == set(SITE_KINDS)
    fridge2 = cfg.device("fridge-2")
    assert (fridge2.site, fridge2.owner, fridge2.domains) == (
        "home-2",
        "family-2",
        ("home-2", "elm-street"),
    )
    assert cfg.site("home-2").private and not cfg.site("city-hospital").private
    assert fridge2.sample_period_ms == 60_000 == fridge2.params.sample_period_ms
    assert fridge2.spare_storage_mb == 128 and fridge2.model == "ColdCo FR-300"
    assert isinstance(fridge2.params, RefrigeratorParams)
    van = cfg.device("freezer-van")
    assert van.domains == ("blood-chain",) and van.owner == "blood-service"
    assert van.faults == (
        FaultSpec(
            "cabinet.temp_mc", "drift", START + 2 * DAY_MS, START + 3 * DAY_MS, magnitude=200
        ),
    )
    assert van.outages == (Outage("power", START + 4 * DAY_MS + 15 * HOUR_MS, HOUR_MS),)
    assert cfg.device("freezer-hospital").owner == "city-hospital"  # default: the site's owner
    assert "blood-chain" in cfg.domains and "elm-street" in cfg.domains
    assert cfg.world.shopping.at_min == 17 * 60 + 30
    assert cfg.world.laundry.weekdays == (2, 5)
    assert cfg.world.blood.transit_ms == 3 * HOUR_MS
    spec = cfg.fleet_spec()  # firmware_sim's own specs, handed over as they are, not copied
    assert spec.devices == tuple(d.spec for d in cfg.devices)
    assert spec.sites == tuple(s.spec for s in cfg.sites)


def test_serial_is_one_sensor_or_a_list_of_them() -> None:
    rfid = {"driver": "rdm6300", "port": "/dev/ttyAMA0", "sensors": ["rfid.in", "rfid.out"]}
    probe = {"driver": "xymd02", "port": "/dev/ttyUSB0", "options": {"prefix": "fridge"}}
    one = parse_fleet(with_device(0, serial=rfid), "x.yaml").device("fridge-1")
    two = parse_fleet(with_device(0, serial=[rfid, probe]), "x.yaml").device("fridge-1")
    assert one.serial is not None and two.serial is not None
    assert [s.driver for s in one.serial] == ["rdm6300"]
    assert [(s.driver, s.prefix) for s in two.serial] == [("rdm6300", ""), ("xymd02", "fridge")]
    assert [serial_up_sensor(s) for s in two.serial] == ["serial.rdm6300.up", "serial.fridge.up"]
    # The simulation drops what the real sensors replace: all of it when one lists no sensor.
    sim = Fleet(parse_fleet(with_device(0, serial=[rfid, probe]), "x.yaml").fleet_spec())
    assert not any(d == "fridge-1" for d, _ in sim.step(sim.now_ms + HOUR_MS))
    sim = Fleet(parse_fleet(with_device(0, serial=rfid), "x.yaml").fleet_spec())
    sensors = {s.sensor for d, s in sim.step(sim.now_ms + HOUR_MS) if d == "fridge-1"}
    assert "fridge.temp_mc" in sensors and not sensors & {"rfid.in", "rfid.out"}


def test_the_kinds_and_default_models_are_firmware_sims() -> None:
    cfg = parse_fleet(BASE, "x.yaml")
    assert {d.kind for d in cfg.devices} == set(APPLIANCE_TYPES) == set(DEVICE_KINDS)
    for d in cfg.devices:
        assert d.model == APPLIANCE_TYPES[d.kind].model_name != ""
    assert cfg.device("fridge-1").model == "edgefleet sim fridge-freezer"  # in certificates


def test_defaults_fill_everything_not_given() -> None:
    cfg = parse_fleet(BASE, "x.yaml")
    fridge = cfg.device("fridge-1")
    assert fridge.params == RefrigeratorParams()
    assert fridge.domains == ("home-1",) and fridge.owner == "home-1"
    assert fridge.serial is None and fridge.faults == () and fridge.spare_storage_mb == 64
    assert cfg.seed == 0 and cfg.start_ms == START
    other = parse_fleet(doc(start=datetime(2025, 3, 1, 12, 0, 0, 1000, tzinfo=UTC)), "x.yaml")
    assert other.start_ms == 1_740_830_400_001
    assert cfg.world.meals.at_min == (450, 750, 1140)


def test_counted_groups_expand_with_patterns() -> None:
    d = doc(
        sites=[
            {"id": "home-{i:03d}", "count": 50, "kind": "household", "owner": "fam-{i}"},
            {"id": "street", "kind": "street"},
        ],
        devices=[
            {
                "name": "fridge-{i:03d}",
                "count": 50,
                "kind": "refrigerator",
                "site": "home-{i:03d}",
                "domains": ["home-{i:03d}", "street"],
                "sampling_period": "2m",
            },
            {
                "name": "w{i}",
                "count": 3,
                "first": 7,
                "kind": "washing_machine",
                "site": "home-001",
                "params": {"heater_w": 2500},
            },
        ],
    )
    cfg = parse_fleet(d, "big.yaml")
    assert len(cfg.sites) == 51 and len(cfg.devices) == 53
    f = cfg.device("fridge-050")
    assert (f.site, f.owner, f.domains) == ("home-050", "fam-50", ("home-050", "street"))
    assert f.params.sample_period_ms == 120_000 and f.where == "devices[0] i=50"
    assert [d.name for d in cfg.devices[50:]] == ["w7", "w8", "w9"]
    assert cfg.device("w8").params == WashingMachineParams(heater_w=2500)


def test_site_kind_and_device_kind_lists_match_the_models() -> None:
    assert typing.get_args(RawSite.model_fields["kind"].annotation) == SITE_KINDS
    assert typing.get_args(RawDevice.model_fields["kind"].annotation) == DEVICE_KINDS
    assert set(DEVICE_KINDS) == set(PARAMS_TYPES)


F = "bad.yaml"
BAD_FILES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-top-level-key": (
        doc(colour="red"),
        f"{F}: field 'colour': unknown key; expected one of ['devices', ",
    ),
    "unknown-device-key": (
        with_device(2, colour="red"),
        f"{F}: device 'fridge-3' (devices[2]): field 'colour': unknown key",
    ),
    "unknown-param": (
        with_device(2, params={"fridge_setpoint_c": 4}),
        f"{F}: device 'fridge-3' (devices[2]): field 'params.fridge_setpoint_c': "
        "unknown parameter 'fridge_setpoint_c'",
    ),
    "param-wrong-type": (
        with_device(2, params={"fridge_setpoint_mc": "4 C"}),
        f"{F}: device 'fridge-3' (devices[2]): field 'params.fridge_setpoint_mc'"
        ": parameter 'fridge_setpoint_mc' expects int, found str '4 C'",
    ),
    "param-float": (
        with_device(2, params={"fridge_setpoint_mc": 4.5}),
        f"{F}: device 'fridge-3' (devices[2]): field 'params.fridge_setpoint_mc': "
        "parameter 'fridge_setpoint_mc' expects int, found float",
    ),
    "param-inconsistent-with-defaults": (
        with_device(2, params={"defrost_duration_ms": 30_000_000}),
        f"{F}: device 'fridge-3' (devices[2]): field 'params.defrost_duration_ms': "
        "defrost_duration_ms (30000000) must be shorter",
    ),
    "params-inconsistent": (
        with_device(
            2, params={"defrost_duration_ms": 10_000_000, "defrost_interval_ms": 5_000_000}
        ),
        f"{F}: device 'fridge-3' (devices[2]): field 'params': "
        "defrost_duration_ms (10000000) must be shorter",
    ),
    "param-out-of-range": (
        with_device(3, params={"mode": "lava"}),
        f"{F}: device 'freezer' (devices[3]): field 'params.mode': mode must be one of",
    ),
    "bad-kind": (
        with_device(1, kind="toaster"),
        f"{F}: device 'washer-1' (devices[1]): field 'kind': Input should be "
        "'refrigerator', 'washing_machine' or 'medical_freezer', found 'toaster'",
    ),
    "unknown-site": (
        with_device(0, site="home-9"),
        f"{F}: device 'fridge-1' (devices[0]): field 'site': no site 'home-9'",
    ),
    "missing-site": (
        doc(devices=[{"name": "fridge-1", "kind": "refrigerator"}]),
        f"{F}: device 'fridge-1' (devices[0]): field 'site': required key is missing",
    ),
    "bad-duration": (
        with_device(0, sampling_period="1 minute"),
        f"{F}: device 'fridge-1' (devices[0]): field 'sampling_period': expected a "
        "duration like '90s'",
    ),
    "zero-duration": (
        with_device(0, sampling_period="0s"),
        f"{F}: device 'fridge-1' (devices[0]): field 'sampling_period': expected a duration > 0",
    ),
    "period-twice": (
        with_device(0, sampling_period="30s", params={"sample_period_ms": 1000}),
        f"{F}: device 'fridge-1' (devices[0]): field 'params.sample_period_ms': "
        "conflicts with 'sampling_period'",
    ),
    "unquoted-time": (
        doc(world={"shopping": {"at": 1050}}),
        f"{F}: field 'world.shopping.at': expected a quoted time of day like "
        "'17:30', found the number 1050",
    ),
    "bad-weekday": (
        doc(world={"laundry": {"days": ["caturday"]}}),
        f"{F}: field 'world.laundry.days[0]': expected a weekday",
    ),
    "bad-span": (
        doc(world={"meals": {"items": [3, 1]}}),
        f"{F}: field 'world.meals.items': expected [min, max] with 0 <= min <= max",
    ),
    "duplicate-name": (
        doc(
            devices=[
                {"name": "fridge-{i}", "count": 2, "kind": "refrigerator", "site": "home-1"},
                {"name": "fridge-2", "kind": "refrigerator", "site": "home-1"},
            ]
        ),
        f"{F}: device 'fridge-2' (devices[1]): field 'name': 'fridge-2' is already used by "
        "device 'fridge-2' (devices[0] i=2)",
    ),
    "bad-placeholder": (
        doc(devices=[{"name": "fridge-{n}", "count": 2, "kind": "refrigerator", "site": "home-1"}]),
        f"{F}: device 'fridge-{{n}}' (devices[0] i=1): field 'name': only the placeholder {{i}}",
    ),
    "placeholder-without-count": (
        with_device(0, name="fridge-{i}"),
        f"{F}: device 'fridge-{{i}}' (devices[0]): field 'name': "
        "'fridge-{i}' has a {...} placeholder but no 'count'",
    ),
    "group-name-without-placeholder": (
        with_device(0, count=2),
        f"{F}: device 'fridge-1' (devices[0] i=1): field 'name': 'fridge-1' needs an {{i}} "
        "placeholder",
    ),
    "bad-format-spec": (
        with_device(0, name="f-{i:q}", count=2),
        f"{F}: device 'f-{{i:q}}' (devices[0] i=1): field 'name': bad pattern 'f-{{i:q}}'",
    ),
    "bad-name": (
        with_device(0, name="Fridge/#"),
        f"{F}: device 'Fridge/#' (devices[0]): field 'name': must match",
    ),
    "zero-count": (
        with_device(0, name="f{i}", count=0),
        f"{F}: device 'f{{i}}' (devices[0]): field 'count': Input should be greater "
        "than or equal to 1",
    ),
    "unknown-domain": (
        with_device(0, domains=["home-1", "strete"]),
        f"{F}: device 'fridge-1' (devices[0]): field 'domains[1]': 'strete' is "
        "neither a site nor a declared gossip domain",
    ),
    "bad-fault-kind": (
        with_device(0, faults=[{"sensor": "fridge.temp_mc", "kind": "gremlin"}]),
        f"{F}: device 'fridge-1' (devices[0]): field 'faults[0]': fault kind must be one of",
    ),
    "fault-without-sensor": (
        with_device(0, faults=[{"kind": "noise", "magnitude": 5}]),
        f"{F}: device 'fridge-1' (devices[0]): field 'faults[0].sensor': "
        "required for a 'noise' sensor fault",
    ),
    "outage-on-a-fridge": (
        with_device(0, faults=[{"kind": "power", "start": "1h", "end": "2h"}]),
        f"{F}: device 'fridge-1' (devices[0]): field 'faults[0].kind': a "
        "refrigerator has no 'power' outage; only ['medical_freezer'] do",
    ),
    "outage-without-end": (
        with_device(3, faults=[{"kind": "power", "start": "1h"}]),
        f"{F}: device 'freezer' (devices[3]): field 'faults[0].end': a 'power' outage needs an end",
    ),
    "unknown-serial-driver": (
        with_device(0, serial={"driver": "morse", "port": "/dev/ttyS0"}),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial.driver': expected one of",
    ),
    "unknown-serial-key": (
        with_device(0, serial={"driver": "bridge", "port": "/dev/ttyS0", "speed": 9600}),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial.speed': unknown "
        "key; expected one of ['baud', 'driver', 'options', 'port', "
        "'sensors']",
    ),
    "unknown-serial-driver-in-a-list": (
        with_device(
            0,
            serial=[
                {"driver": "bridge", "port": "/dev/ttyACM0"},
                {"driver": "morse", "port": "/dev/ttyS0"},
            ],
        ),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial[1].driver': expected one of",
    ),
    "unknown-serial-key-in-a-list": (
        with_device(0, serial=[{"driver": "bridge", "port": "/dev/ttyS0", "speed": 1}]),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial[0].speed': unknown key",
    ),
    "empty-serial-list": (
        with_device(0, serial=[]),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial': List should have at least 1 item",
    ),
    "two-serial-sensors-of-one-name": (
        with_device(
            0,
            serial=[
                {"driver": "ds18b20", "port": "/sys/bus/w1/devices/28-1"},
                {"driver": "ds18b20", "port": "/sys/bus/w1/devices/28-2"},
            ],
        ),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial[1].options.prefix': serial[0] has "
        "the same driver: give each sensor of the device its own prefix",
    ),
    "serial-prefix-too-long-for-its-up-sensor": (
        with_device(
            0, serial={"driver": "bridge", "port": "/dev/x", "options": {"prefix": "a" * 23}}
        ),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial.options.prefix': too long for the "
        "sensor 'serial.aaaaaaaaaaaaaaaaaaaaaaa.up'",
    ),
    "serial-prefix-not-a-sensor-name": (
        with_device(0, serial={"driver": "bridge", "port": "/dev/x", "options": {"prefix": "_a"}}),
        f"{F}: device 'fridge-1' (devices[0]): field 'serial.options.prefix': expected a sensor "
        "name prefix",
    ),
    "route-to-a-fridge": (
        doc(
            world={
                "blood": {
                    "routes": [
                        {"station": "freezer", "transport": "fridge-1", "hospital": "freezer"}
                    ]
                }
            }
        ),
        f"{F}: field 'world.blood.routes[0].transport': expected the name of a medical_freezer "
        "device, found 'fridge-1'",
    ),
    "bad-site-kind": (
        doc(sites=[{"id": "home-1", "kind": "castle"}]),
        f"{F}: site 'home-1' (sites[0]): field 'kind': Input should be",
    ),
    "naive-start": (
        doc(start="2025-01-06T00:00:00"),
        f"{F}: field 'start': expected a time with a time zone",
    ),
    "duplicate-site": (
        doc(
            sites=[
                {"id": "h{i}", "count": 2, "kind": "household"},
                {"id": "h2", "kind": "hospital"},
            ]
        ),
        f"{F}: site 'h2' (sites[1]): field 'id': 'h2' is already used by site 'h2' (sites[0] i=2)",
    ),
    "bad-owner-pattern": (
        doc(sites=[{"id": "h{i}", "count": 2, "kind": "household", "owner": "o{j}"}]),
        f"{F}: site 'h1' (sites[0] i=1): field 'owner': only the placeholder",
    ),
    "no-devices": (doc(devices=[]), f"{F}: field 'devices': List should have at least 1 item"),
    "too-many-devices": (
        doc(
            devices=[
                {"name": f"f{k}-{{i}}", "count": 60_000, "kind": "refrigerator", "site": "home-1"}
                for k in range(1000)
            ]
        ),
        f"{F}: field 'devices': expected at most 100,000 devices in all, found 60,000,000",
    ),
    "seed-not-int": (doc(seed="42"), f"{F}: field 'seed': Input should be a valid integer"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_file_names_file_device_and_field(name: str) -> None:
    data, expected = BAD_FILES[name]
    with pytest.raises(ConfigError) as info:
        parse_fleet(data, F)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    d = with_device(0, colour="red", site="nowhere")
    d["devices"][2]["params"] = {"fridge_setpoint_mc": "cold"}
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    assert len(info.value.problems) == 1  # schema errors first: the params check comes after
    d["devices"][0].pop("colour")
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    assert sorted(p.split(": field ")[1].split(":")[0] for p in info.value.problems) == [
        "'params.fridge_setpoint_mc'",
        "'site'",
    ]
    lines = path.read_text().splitlines()
    keys = ("fridge_setpoint_mc", "site")
    for problem, key in zip(sorted(info.value.problems), keys, strict=True):
        # each problem names the file and the line of its field, then the device
        n = int(problem.removeprefix(f"{path}: line ").split(":")[0])
        assert problem.startswith(f"{path}: line {n}: device "), problem
        assert lines[n - 1].strip().startswith(f"{key}:"), (problem, lines[n - 1])


def test_files_that_are_not_yaml_mappings(tmp_path: Path) -> None:
    cases = {"missing.yaml": None, "broken.yaml": "devices: [unclosed", "list.yaml": "- 1\n"}
    expected = {
        "missing.yaml": "cannot read",
        "broken.yaml": r"line 2, column 1: not valid YAML: did not find expected ',' or ']' "
        r"\(while parsing a flow sequence at line 1\)$",
        "list.yaml": "expected a mapping at the top level, found list",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {expected[name]}"):
            load_fleet(path)


def test_yaml_unquoted_pattern_in_a_flow_list_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(BASE) + "gossip_domains: [{id: x-{i}}]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fleet(path)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90s", 90_000),
        ("30m", 1_800_000),
        ("12h", 43_200_000),
        ("7d", 604_800_000),
        ("2w", 1_209_600_000),
        ("250ms", 250),
        ("1h30m", 5_400_000),
        ("0s", 0),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "90", "s", "1.5h", "1h 30m", "-5s", "3y", "30mm"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like '90s'"):
        parse_duration_ms(text)


# ------------------------------------------------------------------ input edges, through the CLI
# Each hostile or mistaken devices.yaml is refused by `edgefleet run` with exit 2 and one line
# on stderr naming the file, the line and what was expected, before anything is created.

FLEET_HEAD = """\
fleet: t
start: 2025-01-06T00:00:00Z
sites:
  - {id: home-1, kind: household}
"""
FRIDGE = "  - {name: fridge-1, kind: refrigerator, site: home-1}\n"


def run_refused(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI on ``text`` as devices.yaml; return its one line of error (without prefix)."""
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    data = tmp_path / "data"
    args = ["run", "--devices", str(path), "--data", str(data), "--for", "1m", "--no-view"]
    status = main([*args, "--broker", "memory"])
    err = capsys.readouterr().err
    assert (status, err.count("\n")) == (2, 1), f"exit {status}, stderr {err[:2000]!r}"
    assert err.startswith(f"edgefleet: error: {path}: "), err
    assert not data.exists(), "a refused devices.yaml created the data dir"
    return err.removeprefix(f"edgefleet: error: {path}: ").rstrip("\n")


def test_an_alias_bomb_is_refused_fast_and_small(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nine levels of nine aliases: 9**9 (387 million) strings from 700 bytes of YAML.
    bomb = 'lol0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"lol{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]\n" for k in range(1, 9)
    )
    text = FLEET_HEAD + "devices:\n" + FRIDGE + bomb
    build_parser()  # import every command first: what is measured is the refusal alone
    tracemalloc.start()
    started = time.perf_counter()
    try:
        err = run_refused(tmp_path, text, capsys)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # line 12 (lol5, 9**6 strings) is the first to expand past the budget
    assert err == (
        f"line 12: the document expands to more than {MAX_NODES:,} nodes, each alias counted "
        "as a copy of what it names; a devices.yaml needs far fewer (an alias bomb?)"
    )
    assert took < 1.0, f"refusing the bomb took {took:.2f} s"
    assert peak < 20 << 20, f"refusing the bomb peaked at {peak >> 20} MiB"


def test_a_recursive_alias_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_refused(tmp_path, FLEET_HEAD + "devices:\n" + FRIDGE + "loop: &x [*x]\n", capsys)
    assert err == "line 7: an alias contains itself (a recursive alias); remove it"


def test_a_document_within_the_node_budget_still_loads(tmp_path: Path) -> None:
    # Aliases are fine while their expansion stays under the budget (here 9**4 = 6,561 nodes).
    ok = 'x0: &a0 ["a","a","a","a","a","a","a","a","a"]\n' + "".join(
        f"x{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]\n" for k in range(1, 4)
    )
    path = tmp_path / "devices.yaml"
    path.write_text(ok)
    data, _ = read_yaml(path)
    assert isinstance(data, dict) and len(data["x3"][8][8][8]) == 9


@pytest.mark.parametrize("width", ["99999999", "999999999", "64"])
def test_a_huge_width_in_a_name_template_is_one_short_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], width: str
) -> None:
    text = (
        FLEET_HEAD
        + "devices:\n"
        + f"  - {{name: 'f-{{i:>{width}}}', count: 2, kind: refrigerator, site: home-1}}\n"
    )
    err = run_refused(tmp_path, text, capsys)
    assert err == (
        f"line 6: device 'f-{{i:>{width}}}' (devices[0] i=1): field 'name': bad pattern "
        f"'f-{{i:>{width}}}': width or precision {int(width)} is above 63 (the longest name)"
    )


def test_a_long_name_pattern_is_refused_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "f{i}" + "x" * 100_000
    text = FLEET_HEAD + "devices:\n" + f"  - {{name: '{name}', count: 300, kind: refrigerator, "
    err = run_refused(tmp_path, text + "site: home-1}\n", capsys)
    assert "field 'name': expected at most 200 characters, found 100,004" in err, err
    assert len(err) < 400, err


def test_an_impossible_date_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = FLEET_HEAD.replace("2025-01-06T00:00:00Z", "2025-13-45") + "devices:\n" + FRIDGE
    err = run_refused(tmp_path, text, capsys)
    assert err == (
        "line 2, column 8: not valid YAML: cannot read '2025-13-45' as timestamp: "
        "month must be in 1..12"
    )


def test_a_duplicate_key_names_the_key_and_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = FLEET_HEAD + "devices:\n  - name: fridge-1\n    kind: refrigerator\n"
    text += "    site: home-1\n    kind: washing_machine\n"
    err = run_refused(tmp_path, text, capsys)
    assert err == (
        "line 9: duplicate key 'kind' (first at line 7): YAML would keep only the last; remove one"
    )


def test_a_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_refused(tmp_path, FLEET_HEAD + "devices:\n  - {name: f, kind: [\n", capsys)
    assert err.startswith("line 7, column 1: not valid YAML: "), err
    assert "<unicode string>" not in err


def test_a_wrong_site_pattern_in_a_group_of_300_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = FLEET_HEAD + "devices:\n" + FRIDGE
    text += "  - name: fridge-{i:03d}\n    count: 300\n    kind: refrigerator\n"
    text += "    site: home-{i:03d}\n"
    err = run_refused(tmp_path, text, capsys)
    assert err == (
        "line 10: 300 devices of group 'fridge-{i:03d}' (devices[1] i=1..300; the first "
        "shown): field 'site': no site 'home-001'; sites are ['home-1']"
    )


def test_a_broken_site_pattern_counts_each_device_of_the_group_once() -> None:
    # A '}' forgotten in the sample file's `site: home-{i}`: it said "6 devices" of a group of 3.
    group = {"name": "f-{i}", "count": 3, "kind": "refrigerator", "site": "home-{i"}
    with pytest.raises(ConfigError) as info:
        parse_fleet(doc(devices=[group]), F)
    site = [p for p in info.value.problems if "field 'site'" in p]
    assert site == [
        f"{F}: 3 devices of group 'f-{{i}}' (devices[0] i=1..3; the first shown): field 'site': "
        "bad pattern 'home-{i': expected '}' before end of string"
    ], info.value.problems


def test_a_start_outside_the_supported_years_is_refused() -> None:
    with pytest.raises(ConfigError, match="field 'start': expected a start from 1970 to 2999"):
        parse_fleet(doc(start=datetime(1969, 12, 31, tzinfo=UTC)), F)


def test_a_bad_param_in_a_group_is_one_problem_and_a_good_one_is_shared() -> None:
    group = {"name": "f-{i}", "count": 300, "kind": "refrigerator", "site": "home-1"}
    with pytest.raises(ConfigError) as info:
        parse_fleet(doc(devices=[{**group, "params": {"fridge_setpoint_mc": "cold"}}]), F)
    assert info.value.problems == (
        f"{F}: 300 devices of group 'f-{{i}}' (devices[0] i=1..300; the first shown): field "
        "'params.fridge_setpoint_mc': parameter 'fridge_setpoint_mc' expects int, found str "
        "'cold'",
    )
    cfg = parse_fleet(doc(devices=[{**group, "params": {"fridge_setpoint_mc": 4500}}]), F)
    assert {d.params for d in cfg.devices} == {RefrigeratorParams(fridge_setpoint_mc=4500)}


ID_A = "ef" + "a" * 24
ID_B = "ef" + "b" * 24


def test_a_device_enrolled_elsewhere_is_named_by_its_id() -> None:
    cfg = parse_fleet(with_device(3, id=ID_A), F)
    assert cfg.device("freezer").device_id == ID_A
    assert cfg.device("fridge-1").device_id is None  # optional: a device enrolled here needs none


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"id": "fridge-1"},
            "field 'id': expected a device id (ef + 24 base32 letters, as `keys init-device` "
            "prints), found 'fridge-1'",
        ),
        ({"id": ID_A, "name": "f-{i}", "count": 2}, "a device id names one device: not with"),
    ],
)
def test_a_bad_device_id_is_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_fleet(with_device(0, **changes), F)


def test_one_id_for_two_devices_is_refused() -> None:
    d = with_device(0, id=ID_B)
    d["devices"][3]["id"] = ID_B
    with pytest.raises(ConfigError) as info:
        parse_fleet(d, F)
    assert info.value.problems == (
        f"{F}: device 'freezer' (devices[3]): field 'id': {ID_B} is already the id of device "
        "'fridge-1' (devices[0])",
    )
