"""Realtime runs and a wall clock that jumps (issue 15, "Time"), on an injected clock.

The runner's real clock is a ``RealClock`` whose monotonic time is the event loop's simulated
time and whose wall clock the test sets: a realtime run costs no wall time and the wall clock
jumps exactly when the test says. A restart with the wall clock behind what the fleet recorded
must resume where the fleet stands (never re-simulate from its origin and sign recorded time
slots again), and every jump, at a restart or while running, is signed by every device as a
``clock.jump_ms`` reading and logged as a warning naming the device.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path

import pytest

from agent.config.devices import FleetConfig, load_fleet
from agent.fleet.datadir import DataDir
from agent.fleet.provision import read_origin
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from firmware_sim.clock import JUMP_SENSOR, RealClock, SimClock
from tests.agent.runner_helpers import SAMPLE_FLEET, Content, read_fleet, write_fleet
from tests.conftest import FigureRecorder

WALL0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 24 * HOUR_MS


class SetWall:
    """Monotonic time = the loop's simulated time; the wall clock = that plus an offset the test
    sets now (``set_to``) or moves at a later loop time (``set_at``)."""

    def __init__(self, loop_clock: SimClock, wall_ms: int) -> None:
        self.loop = loop_clock
        self.offset_ms = wall_ms - loop_clock.now_ms()
        self.later: list[tuple[int, int]] = []  # (loop ms, by ms)

    def set_to(self, wall_ms: int) -> None:
        self.offset_ms = wall_ms - self.loop.now_ms()

    def set_at(self, loop_ms: int, by_ms: int) -> None:
        self.later.append((loop_ms, by_ms))

    def wall_ns(self) -> int:
        t = self.loop.now_ms()
        return (t + self.offset_ms + sum(by for at, by in self.later if t >= at)) * 1_000_000

    def mono_ns(self) -> int:
        return self.loop.now_ms() * 1_000_000

    def clock(self) -> RealClock:
        return RealClock(wall_ns=self.wall_ns, mono_ns=self.mono_ns)


@pytest.fixture
def cfg(tmp_path: Path) -> FleetConfig:
    return load_fleet(write_fleet(tmp_path / "cfg"))


def run_realtime(cfg: FleetConfig, data: Path, loop: SimClock, wall: SetWall) -> RunResult:
    opts = RunOptions(
        data=data,
        for_ms=3 * MINUTE_MS,
        realtime=True,
        simulated_network=True,
        view=False,
        clock=wall.clock(),
    )
    return loop.run(FleetRunner(cfg, opts).run())


def contents(data: Path) -> dict[str, list[Content]]:
    return {name: view.contents() for name, view in read_fleet(data).items()}


def assert_nothing_signed_twice_nor_back(found: dict[str, list[Content]]) -> None:
    for name, readings in found.items():
        back = [(a, b) for a, b in itertools.pairwise(readings) if b.time_ms < a.time_ms]
        assert back == [], f"{name}: time went back {len(back)} times: {back[:2]}"
        twice = [c for c, n in Counter(readings).items() if n > 1]
        assert twice == [], f"{name}: {len(twice)} readings signed twice: {twice[:3]}"


def test_a_restart_with_the_wall_clock_behind_the_origin_resumes_where_the_fleet_stands(
    cfg: FleetConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    loop = SimClock(WALL0_MS)
    wall = SetWall(loop, WALL0_MS)
    first = run_realtime(cfg, data, loop, wall)
    before = contents(data)
    assert first.sim_start_ms == WALL0_MS and first.samples > 0

    # While the fleet is off the wall clock is set back: an hour behind its last reading, and
    # behind its origin (fleet.json) too.
    wall.set_to(first.sim_end_ms - HOUR_MS)
    with caplog.at_level(logging.WARNING, logger="edgefleet.runner"):
        second = run_realtime(cfg, data, loop, wall)
    after = contents(data)

    assert second.sim_start_ms == first.sim_end_ms, (
        f"the restart began {first.sim_end_ms - second.sim_start_ms} ms before where the fleet "
        "stood: it re-simulated recorded time"
    )
    assert second.samples > 0
    assert_nothing_signed_twice_nor_back(after)
    for name, readings in after.items():
        old = before[name]
        assert readings[: len(old)] == old, f"{name}: recorded readings changed"
        new = readings[len(old) :]
        jumps = [c for c in new if c.sensor == JUMP_SENSOR]
        assert len(jumps) == 1, f"{name}: {len(jumps)} {JUMP_SENSOR} readings, expected 1"
        assert jumps[0].value == -HOUR_MS, jumps[0]
        assert new and min(c.time_ms for c in new) > max(c.time_ms for c in old)
        assert second.devices[name].stats.counters["time-refused"] == 0
    warned = {r.args[0] for r in caplog.records if "clock jump" in r.getMessage()}  # type: ignore[index]
    assert warned == set(after), f"warnings named {sorted(warned)}"


def test_a_wall_clock_set_back_while_running_is_signed_and_timers_keep_running(
    cfg: FleetConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture, figure: FigureRecorder
) -> None:
    data = tmp_path / "data"
    loop = SimClock(WALL0_MS)
    wall = SetWall(loop, WALL0_MS)
    wall.set_at(WALL0_MS + MINUTE_MS, -HOUR_MS)  # a minute into the run
    with caplog.at_level(logging.WARNING, logger="edgefleet.runner"):
        result = run_realtime(cfg, data, loop, wall)
    found = contents(data)
    assert_nothing_signed_twice_nor_back(found)
    assert result.sim_end_ms - result.sim_start_ms == 3 * MINUTE_MS
    for name, readings in found.items():
        jumps = [c for c in readings if c.sensor == JUMP_SENSOR]
        assert [(c.value, c.tag) for c in jumps] == [(-HOUR_MS, None)], f"{name}: {jumps}"
        at = jumps[0].time_ms - WALL0_MS
        assert MINUTE_MS <= at <= MINUTE_MS + 2_000, f"{name}: jump signed {at} ms into the run"
        # readings after the jump carry the fleet's own time, not the wall clock's hour back
        later = [c.time_ms for c in readings if c.time_ms > jumps[0].time_ms]
        assert later and min(later) > WALL0_MS + MINUTE_MS
    figure(
        "clock skew (wall clock set back 1 h while running)",
        f"signed twice = 0, back in time = 0 over {sum(map(len, found.values()))} readings of "
        f"{len(found)} devices; jump flagged {len(found)} of {len(found)} (signed reading)",
    )
    warned = {r.args[0] for r in caplog.records if "clock jump" in r.getMessage()}  # type: ignore[index]
    assert warned == set(found)


def test_the_sample_van_starts_a_realtime_run_without_its_scheduled_power_failure(
    tmp_path: Path,
) -> None:
    # The van's mains failure is scheduled at 4d15h: from the file's start in simulated runs,
    # from the fleet's origin (the first realtime run's "now") in realtime ones; the file's start
    # is long past by then, and an outage already due fired at once.
    cfg = load_fleet(SAMPLE_FLEET)
    loop = SimClock(WALL0_MS)
    result = run_realtime(cfg, tmp_path / "data", loop, SetWall(loop, WALL0_MS))
    assert result.sim_start_ms == WALL0_MS
    van = contents(tmp_path / "data")["freezer-van"]
    assert van and min(c.time_ms for c in van) == WALL0_MS
    assert [c for c in van if c.sensor.startswith("alarm.") and c.value] == []
    assert {c.value for c in van if c.sensor == "power.on"} <= {1}
    assert result.devices["freezer-van"].stats.alarms == set()


def test_a_first_realtime_run_after_a_refused_start_begins_now_not_at_the_refused_origin(
    cfg: FleetConfig, tmp_path: Path
) -> None:
    # A start refused after the origin was recorded (a Pi run before its certificate was
    # installed, a broker that would not connect) left fleet.json with an origin a day back and
    # nothing signed. The first run that signs starts at its own now: before, its readings were
    # stamped from the refused start's time (a day early) while the wall clock said otherwise.
    data = tmp_path / "data"
    data.mkdir()
    assert read_origin(DataDir(data), WALL0_MS - DAY_MS) == WALL0_MS - DAY_MS
    loop = SimClock(WALL0_MS)
    result = run_realtime(cfg, data, loop, SetWall(loop, WALL0_MS))
    assert result.sim_start_ms == WALL0_MS
    found = contents(data)
    assert found and all(found.values())
    first = min(c.time_ms for readings in found.values() for c in readings)
    assert first == WALL0_MS, f"first reading stamped {WALL0_MS - first} ms before the run began"

    # A later run keeps the origin (the fleet has signed here): it resumes where it stood.
    assert read_origin(DataDir(data), WALL0_MS + DAY_MS) == WALL0_MS


def test_a_simulated_run_on_a_realtime_fleets_data_dir_resumes_its_models_from_the_origin(
    cfg: FleetConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real-time fleet started 300 days after its file's start (make run on the sample file,
    # months later), then a simulated run on the same data dir: its models resume from the
    # origin the real-time run recorded. Before, they were stepped from the file's start over
    # the 300 days (11 months of the sample file: 100% CPU and 6.6 GB before it was killed).
    import agent.fleet.runner as runner

    data = tmp_path / "data"
    origin = cfg.start_ms + 300 * DAY_MS
    loop = SimClock(origin)
    first = run_realtime(cfg, data, loop, SetWall(loop, origin))
    assert first.sim_start_ms == origin and first.samples > 0
    before = contents(data)

    stepped: list[int] = []
    forward = runner.fast_forward

    def measured(source, until_ms, done, owed_until):  # type: ignore[no-untyped-def]
        stepped.append(until_ms - source.now_ms)
        if until_ms - source.now_ms > DAY_MS:
            raise AssertionError(f"the models were stepped over {until_ms - source.now_ms} ms")
        return forward(source, until_ms, done, owed_until)

    monkeypatch.setattr(runner, "fast_forward", measured)
    opts = RunOptions(data=data, for_ms=10 * MINUTE_MS, simulated_network=True, view=False)
    second = SimClock(0).run(FleetRunner(cfg, opts).run())
    assert stepped == [first.sim_end_ms - origin], stepped
    assert second.sim_start_ms == first.sim_end_ms and second.samples > 0
    after = contents(data)
    assert_nothing_signed_twice_nor_back(after)
    for name, old in before.items():
        assert after[name][: len(old)] == old, f"{name}: recorded readings changed"
