"""The live view: per-device table for small fleets, per-kind aggregation for large ones, plain
summary lines when the output is not a terminal."""

from __future__ import annotations

import dataclasses
import io

from agent.device.sealing import SealPolicy
from agent.fleet.view import DeviceRow, FleetSnapshot, LiveView, render, summary_line

T0 = 1_736_121_600_000  # 2025-01-06 00:00 UTC


def row(i: int, kind: str = "refrigerator", alarms: tuple[str, ...] = ()) -> DeviceRow:
    return DeviceRow(
        name=f"dev-{i}",
        kind=kind,
        site=f"home-{i}",
        height=i,
        pending=3,
        readings=10 * i,
        temps_mc=(("fridge.temp_mc", 4000 + i * 100),),
        alarms=alarms,
        peers_online=2,
        peers_total=3,
        lag=i % 2,
    )


def snap(rows: list[DeviceRow], wall_s: float = 1.0) -> FleetSnapshot:
    return FleetSnapshot(
        sim_ms=T0 + 3_600_000,
        wall_s=wall_s,
        speed=3600.0,
        devices=tuple(rows),
        sent_per_s=12.0,
        received_per_s=30.0,
        broker="embedded amqtt 127.0.0.1:1883",
    )


def test_small_fleet_shows_one_row_per_device() -> None:
    lines = render(snap([row(1), row(2, alarms=("alarm.door_open",))]))
    assert lines[0].startswith("edgefleet  sim 2025-01-06 01:00  x3,600")
    assert "blocks 5" in lines[0]  # heights 1 and 2 -> 2 + 3 blocks
    assert "alarms 1" in lines[0]
    table = lines[3:]
    assert table[0].split()[:4] == ["device", "kind", "site", "height"]
    assert table[2].split()[:7] == ["dev-2", "fridge", "home-2", "2", "3", "2/3", "0"]
    assert "fridge 4.2°C" in table[2]
    assert table[2].endswith("door_open")


def test_large_fleet_is_aggregated_per_kind() -> None:
    rows = [row(i) for i in range(40)] + [row(i, kind="medical_freezer") for i in range(5)]
    lines = render(snap(rows))
    table = lines[3:]
    assert len(table) == 3  # header + two kinds, not 45 rows
    fridge = table[2].split()
    assert fridge[:3] == ["fridge", "40", "0/19/39"]
    assert table[1].split()[:2] == ["freezer", "5"]


def test_plain_output_prints_a_summary_every_few_seconds() -> None:
    out = io.StringIO()
    view = LiveView(out, plain_every_s=5.0)
    for wall in (0.0, 1.0, 4.9, 5.0, 6.0):
        view.show(snap([row(1)], wall_s=wall))
    view.show(snap([row(1)], wall_s=6.5), final=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 0 s, at 5 s, and the final one
    assert all(line.startswith("sim 2025-01-06 01:00") for line in lines)
    assert "\x1b" not in out.getvalue()


def test_seal_policy_by_size_and_by_age() -> None:
    p = SealPolicy(max_readings=4, max_age_ms=1000)
    assert not p.due(0, None, 5)
    assert not p.due(3, 100, 1099)
    assert p.due(3, 100, 1100)
    assert p.due(4, 100, 101)
    assert p.deadline(100) == 1100
    assert p.deadline(None) is None


def test_replication_shows_copies_and_lent_storage_when_on() -> None:
    import dataclasses

    rows = [
        dataclasses.replace(row(1), replicated=(5, 6), held_bytes=3 << 20, quota_bytes=128 << 20),
        dataclasses.replace(row(2), replicated=(2, 2), held_bytes=512, quota_bytes=64 << 20),
    ]
    lines = render(snap(rows))
    assert lines[2] == "replication  7/8 blocks at full copies  held 3.0M of 192.0M lent"
    table = lines[4:]
    assert table[0].split()[7:9] == ["copies", "held"]
    assert table[1].split()[7:9] == ["5/6", "3.0M"]
    assert table[2].split()[7:9] == ["2/2", "512B"]
    off = render(snap([row(1)]))
    assert not any(line.startswith("replication") for line in off)
    assert off[4].split()[7:9] == ["-", "-"]


def test_a_lost_serial_sensor_is_marked_on_its_device() -> None:
    down = dataclasses.replace(row(2), serial_down=True)
    table = render(snap([row(1), down]))[3:]
    assert table[1].split()[0] == "dev-1"
    assert table[2].split()[:2] == ["dev-2", "SERIAL-DOWN"]
    assert summary_line(snap([row(1), down])).endswith(" serial-down dev-2")
    assert "serial-down" not in summary_line(snap([row(1)]))
