"""The live view: per-device table for small fleets, per-kind aggregation for large ones, plain
summary lines when the output is not a terminal; a screen that fits 80 x 24 whatever the names
and figures; the snapshot's readings and copies figures."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from agent.config.devices import load_fleet
from agent.config.model import MAX_NAME
from agent.device.sealing import SealPolicy
from agent.fleet.view import NAME_WIDTH, DeviceRow, FleetSnapshot, LiveView, render, summary_line
from tests.agent.runner_helpers import HOUR_MS, run_fleet, verify, write_fleet

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
    assert lines[0] == "edgefleet  sim 2025-01-06 01:00  x3,600  wall 1s"
    # heights 1 and 2 -> 2 + 3 blocks
    assert lines[1] == "devices 2  blocks 5  readings 30  alarms 1"
    table = lines[4:]
    assert table[0].split()[:4] == ["device", "kind", "site", "height"]
    assert table[2].split()[:7] == ["dev-2", "fridge", "home-2", "2", "3", "2/3", "0"]
    assert table[2].endswith("door_open  4.2°C")
    assert table[1].endswith("-          4.1°C")


def test_large_fleet_is_aggregated_per_kind() -> None:
    rows = [row(i) for i in range(40)] + [row(i, kind="medical_freezer") for i in range(5)]
    lines = render(snap(rows))
    table = lines[4:]
    assert len(table) == 3  # header + two kinds, not 45 rows
    assert table[0].split() == [
        "kind",
        "count",
        "alarms",
        "forked",
        "pending",
        "lag",
        "height",
        "lo/med/hi",
        "°C",
        "lo/med/hi",
    ]
    fridge = table[2].split()
    assert fridge == ["fridge", "40", "0", "0", "120", "1", "0/19/39", "4.0/6.0/7.9"]
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
    rows = [
        dataclasses.replace(row(1), replicated=(5, 6), held_bytes=3 << 20, quota_bytes=128 << 20),
        dataclasses.replace(row(2), replicated=(2, 2), held_bytes=512, quota_bytes=64 << 20),
    ]
    lines = render(snap(rows), width=200)
    assert lines[3] == "replication  7/8 blocks at full copies  held 3.0M of 192.0M lent"
    table = lines[5:]
    assert table[0].split()[7:9] == ["copies", "held"]
    assert table[1].split()[7:9] == ["5/6", "3.0M"]
    assert table[2].split()[7:9] == ["2/2", "512B"]
    off = render(snap([row(1)]), width=200)
    assert not any(line.startswith("replication") for line in off)
    assert off[5].split()[7:9] == ["-", "-"]


def long_row(i: int, kind: str = "medical_freezer") -> DeviceRow:
    """A row as wide as the config allows: 63-character names and sites, two alarms, forked,
    replication on with fewer peers than copies, big figures."""
    return dataclasses.replace(
        row(i, kind=kind, alarms=("alarm.door_open", "alarm.temp_high")),
        name=(f"{i}-" + "n" * MAX_NAME)[:MAX_NAME],
        site=(f"{i}-" + "s" * MAX_NAME)[:MAX_NAME],
        height=1_000_000 + i,
        pending=12_345,
        readings=98_765_432,
        temps_mc=(("fridge.temp_mc", -123_400), ("freezer.temp_mc", -234_500)),
        lag=99_999,
        forked=i % 3 == 0,
        replicated=(1_000_000, 1_000_001),
        held_bytes=123 << 30,
        quota_bytes=512 << 30,
        copies_wanted=3,
        copies_target=2,
    )


def wide_snap(rows: list[DeviceRow]) -> FleetSnapshot:
    return dataclasses.replace(
        snap(rows),
        speed=1_234_567.0,
        wall_s=9_876_543.0,
        sent_per_s=1_234_567.0,
        received_per_s=7_654_321.0,
        invalid=123_456,
        broker="mqtts://" + "b" * 63 + ".example:8883?ca=/etc/edgefleet/ca.pem",
        notes=("device " + "n" * MAX_NAME + " stopped: " + "x" * 100,),
    )


@pytest.mark.parametrize("n", [1, 9, 23, 24, 25, 40, 500])
@pytest.mark.parametrize("kinds", [("refrigerator",), ("refrigerator", "washing_machine")])
def test_no_line_is_wider_than_80_columns_for_any_fleet_size_or_name(
    n: int, kinds: tuple[str, ...]
) -> None:
    rows = [long_row(i, kinds[i % len(kinds)]) for i in range(n)]
    for lines in (render(wide_snap(rows)), render(snap([row(i) for i in range(n)]))):
        too_wide = [(len(line), line) for line in lines if len(line) > 80]
        assert too_wide == [], too_wide
        assert all("\n" not in line for line in lines)
        assert len(lines) <= 24
    lines = render(wide_snap(rows))
    assert lines[2].startswith("gossip") and lines[2].endswith("…")  # the broker URL, cut
    assert lines[-1].startswith("! device nnn") and lines[-1].endswith("…")


def test_long_device_names_are_cut_with_an_ellipsis_and_keep_the_forked_mark() -> None:
    rows = [long_row(i) for i in range(3)]
    table = render(wide_snap(rows), width=300)[5:]
    names = [r.split("  ")[0] for r in table[1:4]]
    assert names == [
        "0-nnnnnnnnnnnnnnnnn… FORKED",
        "1-nnnnnnnnnnnnnnnnn…",
        "2-nnnnnnnnnnnnnnnnn…",
    ]
    assert all(len(n.removesuffix(" FORKED")) == NAME_WIDTH for n in names)


def test_a_narrow_table_drops_site_then_kind_then_held() -> None:
    rows = [long_row(i) for i in range(3)]
    header = {w: render(wide_snap(rows), width=w)[5].split() for w in (300, 140, 120)}
    full = ["device", "kind", "site", "height", "pend", "peers", "lag", "copies", "held"]
    assert header[300] == [*full, "alarms", "temps"]
    assert header[140] == [c for c in full if c != "site"] + ["alarms", "temps"]
    assert header[120] == [c for c in full if c not in ("site", "kind", "held")] + [
        "alarms",
        "temps",
    ]
    # Narrower still, the end of the line is cut.
    assert render(wide_snap(rows), width=80)[5].endswith("…")


def test_on_an_80_by_24_terminal_the_header_stays_and_rows_are_cut_with_a_count() -> None:
    rows = [long_row(i) for i in range(20)]  # per device (<= 24), with a note: too many rows
    lines = render(wide_snap(rows), width=80, height=24)
    assert len(lines) == 24
    assert lines[0].startswith("edgefleet  sim 2025-01-06 01:00  x1,234,567  wall 9,876,543s")
    assert lines[1] == "devices 20  blocks 20,000,210  readings 1,975,308,640  alarms 40"
    assert lines[2].startswith("gossip  sent 1,234,567/s")
    assert lines[3].startswith("replication  20,000,000/20,000,020 blocks at full copies")
    assert lines[5].startswith("device ")
    shown = [line for line in lines[6:] if line[:1].isdigit()]
    more = lines[6 + len(shown)]
    assert more == f"… {20 - len(shown)} more devices"
    assert len(shown) == 24 - 5 - 1 - 1 - 2  # header, table header, "more", blank + note
    assert lines[-1].startswith("! device")

    # 40 devices are aggregated per kind; with figures this wide only the temperatures are cut.
    forty = [long_row(i, ("refrigerator", "medical_freezer")[i % 2]) for i in range(40)]
    lines = render(wide_snap(forty), width=80, height=24)
    assert lines[1] == "devices 40  blocks 40,000,820  readings 3,950,617,280  alarms 80"
    assert [line.split()[0] for line in lines[5:8]] == ["kind", "freezer", "fridge"]
    assert lines[6].split()[:7] == [
        "freezer",
        "20",
        "40",
        "7",
        "246900",
        "99999",
        "1000001/1000020/1000039",
    ]
    assert lines[6].endswith("-123.4…")

    # Kinds are rows too: 30 kinds (no replication line: a 4-line head) leave 24 - 4 - 2 rows.
    many = render(snap([row(i, kind=f"kind-{i:02}") for i in range(30)]), height=24)
    assert len(many) == 24 and many[-1] == f"… {30 - (24 - 4 - 2)} more kinds"

    # A tiny terminal keeps the title, the totals and the alarms first.
    assert render(wide_snap(rows), width=80, height=2) == [
        "edgefleet  sim 2025-01-06 01:00  x1,234,567  wall 9,876,543s",
        "devices 20  blocks 20,000,210  readings 1,975,308,640  alarms 40",
    ]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_view_paints_one_screen_that_fits_the_terminal() -> None:
    out = Tty()
    view = LiveView(out, size=lambda: (80, 24))
    view.show(wide_snap([long_row(i) for i in range(20)]))
    view.show(wide_snap([long_row(i) for i in range(20)]))
    screens = out.getvalue().split("\x1b[H\x1b[J")
    assert screens[0].startswith("\x1b[2J\x1b[H") and len(screens) == 2
    for screen in (screens[0].removeprefix("\x1b[2J\x1b[H"), screens[1]):
        # 23 lines and the newline after the last: 24 rows, the title does not scroll away
        assert screen.count("\n") == 23 and screen.endswith("\n")
        assert screen.startswith("edgefleet  sim")
        assert max(len(line) for line in screen.splitlines()) <= 80


def test_copies_name_the_peers_when_a_device_has_fewer_than_copies_wanted() -> None:
    base = dataclasses.replace(row(1), replicated=(19, 19), copies_wanted=3)
    cells = {
        t: render(snap([dataclasses.replace(base, copies_target=t)]), width=200)[6].split("  ")
        for t in (3, 2, 1, 0)
    }
    assert "19/19" in cells[3] and not any("peer" in c for c in cells[3])
    assert "19/19 (2 peers)" in cells[2]
    assert "19/19 (1 peer)" in cells[1]
    assert "19/19 (0 peers)" in cells[0]


def test_readings_are_counted_across_restarts_like_blocks(tmp_path: Path) -> None:
    cfg = load_fleet(write_fleet(tmp_path / "cfg"))
    data = tmp_path / "data"
    run_fleet(cfg, data=data, for_ms=HOUR_MS, simulated_network=True, view=False)
    second = run_fleet(cfg, data=data, for_ms=HOUR_MS, simulated_network=True, view=False)
    report = verify(data)
    assert report.ok, report.failures()
    for d in second.snapshot().devices:
        stored = report.report(d.name)
        this_run = second.devices[d.name].stats.readings
        assert 0 < this_run < d.readings == stored["readings"] + stored["pending"], (
            f"{d.name}: the view counts {d.readings}, the store holds "
            f"{stored['readings']} + {stored['pending']} pending, this run signed {this_run}"
        )
        assert d.height == stored["blocks"] - 1, d.name


def test_a_terminal_whose_size_cannot_be_read_gets_80_by_24() -> None:
    out = Tty()  # isatty, but no file descriptor to ask for the size
    LiveView(out).show(wide_snap([long_row(i) for i in range(20)]))
    screen = out.getvalue().removeprefix("\x1b[2J\x1b[H")
    assert screen.count("\n") == 23
    assert max(len(line) for line in screen.splitlines()) <= 80


def test_invalid_and_unproven_messages_are_shown_apart() -> None:
    """Invalid: proven senders that sent something wrong (charged to them). Unproven: messages
    nobody could be proven to have sent (forged, bit-flipped, older wire): counted, charged to
    nobody. Both are on the gossip line of the view and in the plain summary."""
    s = dataclasses.replace(snap([row(1)]), invalid=2, unproven=3000)
    gossip = render(s)[2]
    assert "invalid 2" in gossip and "unproven 3000" in gossip
    assert summary_line(s).endswith("invalid 2 unproven 3000")


def test_a_lost_serial_sensor_is_marked_on_its_device() -> None:
    down = dataclasses.replace(row(2), serial_down=True)
    table = render(snap([row(1), down]))[4:]
    assert table[1].split()[0] == "dev-1"
    assert table[2].split()[:2] == ["dev-2", "SERIAL-DOWN"]
    assert summary_line(snap([row(1), down])).endswith(" serial-down dev-2")
    assert "serial-down" not in summary_line(snap([row(1)]))
