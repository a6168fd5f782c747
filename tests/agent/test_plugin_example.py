"""An example of a test a user writes with the edgefleet pytest plugin (docs/TESTING.md).

It records one day of the sample fleet (devices.yaml) with one injected fault, a mains failure in
the blood van during the afternoon transport, replays the trace into real device agents with the
``edgefleet_replay`` fixture, and checks the cold chain from the devices' own signed stores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main as edgefleet
from agent.pytest_plugin import Alarm, FleetReplay, Replayer

HOUR = 3_600_000
BLOOD_CHAIN = ["freezer-station", "freezer-van", "freezer-hospital"]
POWER_FAULT = "      - {kind: power, start: 4d15h, end: 4d16h}\n"


def sample_fleet_with_van_outage(rootdir: Path, tmp_path: Path) -> Path:
    """devices.yaml, plus a mains failure in the van from 16:00 to 17:00 on the first day."""
    text = (rootdir / "devices.yaml").read_text()
    assert POWER_FAULT in text, "the van's fault list moved in devices.yaml"
    text = text.replace(POWER_FAULT, POWER_FAULT + "      - {kind: power, start: 16h, end: 17h}\n")
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def first_day(
    edgefleet_replay: Replayer, pytestconfig: pytest.Config, tmp_path: Path
) -> FleetReplay:
    devices = sample_fleet_with_van_outage(pytestconfig.rootpath, tmp_path)
    trace = tmp_path / "day.jsonl"
    assert edgefleet(["record", "--devices", str(devices), "--for", "1d", "--out", str(trace)]) == 0
    return edgefleet_replay(trace, devices=devices)


@pytest.mark.slow
def test_first_day_of_the_blood_chain(first_day: FleetReplay) -> None:
    fleet = first_day
    assert fleet.converged
    fleet.verify()  # every chain and every peer header checks out against the fleet root
    assert all(head is not None for head in fleet.heads().values())

    # The donations of the morning: every bag the station stored went station -> van -> hospital.
    stored = [r for r in fleet.chain("freezer-station") if r.sensor == "rfid.in"]
    assert 2 <= len(stored) <= 6  # devices.yaml: blood.bags [2, 6]
    for bag in stored:
        assert bag.tag is not None
        history = fleet.tag_history(bag.tag)
        # (the hospital may already issue it at midnight: a sixth event, rfid.out there)
        assert [(e.device, e.sensor) for e in history][:5] == [
            ("freezer-station", "rfid.in"),
            ("freezer-station", "rfid.out"),
            ("freezer-van", "rfid.in"),
            ("freezer-van", "rfid.out"),
            ("freezer-hospital", "rfid.in"),
        ]
        times = [e.time_ms for e in history]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert {e.text for e in history} == {"plasma unit"}
        # Nothing warmed the bags: no excursion reading about them anywhere.
        assert "bag.excursion" not in {e.sensor for e in history}

    # The van lost mains at 16:00 for an hour, while the bags were inside it.
    start = fleet.sim_start_ms
    van_in, van_out = [
        e.time_ms for e in fleet.tag_history(stored[0].tag or "") if e.device == "freezer-van"
    ]
    assert fleet.alarms("freezer-van") == [
        Alarm("freezer-van", start + 16 * HOUR, "alarm.power", True, "mains power lost"),
        Alarm("freezer-van", start + 17 * HOUR, "alarm.power", False, "cleared"),
    ]
    assert van_in < start + 16 * HOUR < start + 17 * HOUR < van_out
    assert fleet.alarms("freezer-station") == fleet.alarms("freezer-hospital") == []

    # Elsewhere only fridges warmed up after the 17:30 shopping, and every alarm was cleared.
    warm = [a for a in fleet.alarms() if a.device not in BLOOD_CHAIN]
    assert warm, "the 17:30 shopping warms at least one fridge above 8 C"
    assert {a.sensor for a in warm} == {"alarm.fridge_warm"}
    for device in {a.device for a in warm}:
        alarms = fleet.alarms(device)
        assert [a.raised for a in alarms] == [True, False] * (len(alarms) // 2)
        assert alarms[0].time_ms > start + 17 * HOUR + 30 * 60_000
