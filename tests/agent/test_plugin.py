"""The edgefleet pytest plugin (agent.pytest_plugin): discovery, the fixture, and each query."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import pytest

from agent.config.devices import load_fleet
from agent.device.sealing import SealPolicy
from agent.gossip.tuning import GossipConfig
from agent.pytest_plugin import (
    Alarm,
    FleetReplay,
    FleetVerificationError,
    Replayer,
    TagEvent,
    run_fleet,
)
from firmware_sim.fleet import Fleet
from firmware_sim.samples import Sample
from firmware_sim.trace import TraceDevice, TraceHeader, TraceWriter

pytest_plugins = ["pytester"]

S = 1_736_121_600_000  # 2025-01-06T00:00:00Z, the devices file's start
BAG = "urn:epc:id:giai:9501101.125000001"
MINI = """\
fleet: mini
seed: 7
sites:
  - {id: home-1, kind: household}
  - {id: station, kind: blood_station}
  - {id: van, kind: transport}
gossip_domains:
  - {id: chain}
devices:
  - {name: fridge-1, kind: refrigerator, site: home-1, domains: [home-1]}
  - {name: freezer-station, kind: medical_freezer, site: station, domains: [chain]}
  - {name: freezer-van, kind: medical_freezer, site: van, domains: [chain]}
"""
SAMPLES: list[tuple[str, Sample]] = [
    ("fridge-1", Sample(S, "door.open", 0)),
    ("freezer-station", Sample(S, "door.open", 0)),
    ("freezer-van", Sample(S, "door.open", 0)),
    ("freezer-station", Sample(S + 60_000, "rfid.in", 1, BAG, "plasma unit")),
    ("fridge-1", Sample(S + 60_000, "door.open", 1)),
    ("fridge-1", Sample(S + 180_000, "alarm.door_open", 1, None, "door open > 120 s")),
    ("fridge-1", Sample(S + 240_000, "door.open", 0)),
    ("fridge-1", Sample(S + 240_000, "alarm.door_open", 0, None, "cleared")),
    ("freezer-station", Sample(S + 300_000, "rfid.out", 0, BAG, "plasma unit")),
    ("freezer-van", Sample(S + 360_000, "rfid.in", 1, BAG, "plasma unit")),
    # Same time at two devices: the trace has the van first, queries use devices-file order.
    ("freezer-van", Sample(S + 400_000, "alarm.temp_high", 1, None, "above -25.0 C")),
    ("fridge-1", Sample(S + 400_000, "alarm.fridge_warm", 1, None, "fridge above 8.0 C")),
    ("freezer-van", Sample(S + 500_000, "excursion.start", -24_990, None, "above -25.0 C")),
    *[
        ("freezer-van", Sample(S + 600_000 + i * 60_000, "cabinet.temp_mc", -24_000))
        for i in range(8)
    ],
]


def write_fixture_files(where: Path) -> tuple[Path, Path]:
    devices = where / "devices.yaml"
    devices.write_text(MINI)
    trace = where / "trace.jsonl"
    cfg = load_fleet(devices)
    header = TraceHeader(
        "mini", 7, S, tuple(TraceDevice(d.name, d.kind, d.site) for d in cfg.devices)
    )
    with TraceWriter(trace, header) as w:
        w.write_all(SAMPLES)
    return devices, trace


@pytest.fixture
def mini(tmp_path: Path, edgefleet_replay: Replayer) -> FleetReplay:
    devices, trace = write_fixture_files(tmp_path)
    return edgefleet_replay(
        trace,
        devices=devices,
        seal=SealPolicy(max_readings=2),  # many small blocks: most get replicated
        gossip=GossipConfig(want_bodies=lambda device_id, height: True),
    )


def test_chain_holds_the_trace_samples_of_each_device_in_order(mini: FleetReplay) -> None:
    assert mini.converged
    assert mini.samples == len(SAMPLES)
    assert mini.devices == ["fridge-1", "freezer-station", "freezer-van"]
    for name in mini.devices:
        chain = mini.chain(name)
        assert [(r.time_ms, r.sensor, r.value, r.tag, r.text) for r in chain] == [
            (s.time_ms, s.sensor, s.value, s.tag, s.text) for d, s in SAMPLES if d == name
        ]
        assert {r.device_id for r in chain} == {mini.device_ids[name]}
        assert [r.seq for r in chain] == list(range(len(chain)))


def test_heads_are_every_device_chain_head_and_gossip_carried_them(mini: FleetReplay) -> None:
    heads = mini.heads()
    assert set(heads) == set(mini.devices)
    for name, head in heads.items():
        assert head is not None
        assert head.header.device_id == mini.device_ids[name]
        assert head.header.height == mini.store(name).block_count() - 1
    station, van = mini.device_ids["freezer-station"], mini.device_ids["freezer-van"]
    held = mini.store("freezer-van").peer_head(station)
    assert held is not None and held.hash == heads["freezer-station"].hash  # type: ignore[union-attr]
    held = mini.store("freezer-station").peer_head(van)
    assert held is not None and held.hash == heads["freezer-van"].hash  # type: ignore[union-attr]


def test_alarms_by_time_with_devices_file_order_on_ties(mini: FleetReplay) -> None:
    fridge = [
        Alarm("fridge-1", S + 180_000, "alarm.door_open", True, "door open > 120 s"),
        Alarm("fridge-1", S + 240_000, "alarm.door_open", False, "cleared"),
        Alarm("fridge-1", S + 400_000, "alarm.fridge_warm", True, "fridge above 8.0 C"),
    ]
    van = [Alarm("freezer-van", S + 400_000, "alarm.temp_high", True, "above -25.0 C")]
    assert mini.alarms() == [*fridge, *van]  # fridge-1 before freezer-van at S + 400 s
    assert mini.alarms("fridge-1") == fridge
    assert mini.alarms("freezer-van") == van
    assert mini.alarms("freezer-station") == []
    assert mini.alarms("freezer-van")[0] == (
        "freezer-van",
        S + 400_000,
        "alarm.temp_high",
        True,
        "above -25.0 C",
    )


def test_tag_history_crosses_devices_and_counts_replicas_once(mini: FleetReplay) -> None:
    # The gossip config asked every peer for bodies: both freezers hold replicas of the other's
    # tagged blocks, so the tag index of each store names the bag twice.
    for holder, owner in (("freezer-van", "freezer-station"), ("freezer-station", "freezer-van")):
        hits = mini.store(holder).tag_hits(BAG)
        assert any(not h.own and h.device_id == mini.device_ids[owner] for h in hits)
    assert mini.tag_history(BAG) == [
        TagEvent("freezer-station", S + 60_000, "rfid.in", 1, "plasma unit"),
        TagEvent("freezer-station", S + 300_000, "rfid.out", 0, "plasma unit"),
        TagEvent("freezer-van", S + 360_000, "rfid.in", 1, "plasma unit"),
    ]
    assert mini.tag_history("urn:epc:id:giai:9501101.999") == []


def test_verify_passes_then_names_a_tampered_reading(mini: FleetReplay) -> None:
    reports = mini.verify()
    assert [r.name for r in reports] == sorted(mini.devices)
    assert sum(r.readings for r in reports) == len(SAMPLES)
    path = mini.data / "devices" / "fridge-1" / "store.sqlite"
    db = sqlite3.connect(path)
    try:
        (wire,) = db.execute("SELECT wire FROM readings WHERE seq = 1").fetchone()
        flipped = bytes(wire[:-1]) + bytes([wire[-1] ^ 0x01])  # one bit of the signature
        db.execute("UPDATE readings SET wire = ? WHERE seq = 1", (flipped,))
        db.commit()
    finally:
        db.close()
    with pytest.raises(
        FleetVerificationError,
        match=r"1 verification failure.*\n  fridge-1: \S+/fridge-1/store\.sqlite: own chain",
    ):
        mini.verify()


@pytest.mark.slow
def test_without_a_trace_the_fleet_is_simulated_for_a_duration(
    tmp_path: Path, edgefleet_replay: Replayer
) -> None:
    devices, _ = write_fixture_files(tmp_path)
    fleet = edgefleet_replay(devices=devices, duration="90m")
    cfg = load_fleet(devices)
    expected = list(Fleet(cfg.fleet_spec()).run_until(S + 90 * 60_000))
    assert fleet.converged
    assert (fleet.sim_start_ms, fleet.sim_end_ms) == (S, S + 90 * 60_000)
    assert fleet.samples == len(expected)
    for name in fleet.devices:
        assert [(r.time_ms, r.sensor, r.value) for r in fleet.chain(name)] == [
            (s.time_ms, s.sensor, s.value) for d, s in expected if d == name
        ]
    second = edgefleet_replay(devices=devices, duration="10m")  # each call: its own data dir
    assert second.data != fleet.data and second.sim_end_ms == S + 10 * 60_000


def test_run_fleet_refuses_a_used_data_dir_and_needs_a_trace_or_duration(tmp_path: Path) -> None:
    devices, _ = write_fixture_files(tmp_path)
    with pytest.raises(ValueError, match="give a trace to replay or a duration"):
        run_fleet(tmp_path / "a", devices)
    used = tmp_path / "used"
    used.mkdir()
    (used / "fleet.json").write_text("{}")
    with pytest.raises(ValueError, match=f"data dir {used} is not empty"):
        run_fleet(used, devices, duration="1m")


INNER_TEST = """
    from agent.pytest_plugin import TagEvent

    BAG = "urn:epc:id:giai:9501101.125000001"

    def test_replay(edgefleet_replay):
        fleet = edgefleet_replay("trace.jsonl")  # devices.yaml from the rootdir
        assert fleet.converged
        assert [e.device for e in fleet.tag_history(BAG)] == [
            "freezer-station", "freezer-station", "freezer-van"
        ]
        assert [a.sensor for a in fleet.alarms("fridge-1")] == [
            "alarm.door_open", "alarm.door_open", "alarm.fridge_warm"
        ]
        assert isinstance(fleet.tag_history(BAG)[0], TagEvent)
        fleet.verify()
"""


@pytest.mark.subprocess
def test_a_fresh_test_file_finds_the_fixture_through_the_entry_point(
    pytester: pytest.Pytester,
) -> None:
    write_fixture_files(pytester.path)
    pytester.makepyfile(test_user=textwrap.dedent(INNER_TEST))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # Without the plugin (its entry point is named edgefleet) the fixture does not exist.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:edgefleet")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'edgefleet_replay' not found*"])


def test_the_fixture_is_documented_in_pytest_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_inprocess("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["edgefleet_replay*", "*Run a real edgefleet fleet on simulated time*"]
    )
