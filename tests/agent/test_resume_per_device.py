"""Resume is per device: each device continues from its own last durable reading, the fleet's
progress from where the fleet as a whole stands (issue 15, "Time").

A washer says nothing between wash cycles, so its last reading can be hours behind the rest of
the fleet: a resume from the earliest device's last reading would re-run the fleet from its start
and a ``--for`` would sign nothing new. Simulated runs (no wall clock) on real SQLite stores.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from agent.config.devices import FleetConfig, load_fleet
from agent.fleet.datadir import DataDir
from agent.fleet.provision import provision
from agent.fleet.runner import RunResult
from tests.agent.runner_helpers import HOUR_MS, SAMPLE_FLEET, Content, read_fleet, run_fleet, verify


@pytest.fixture(scope="module")
def cfg() -> FleetConfig:
    return load_fleet(SAMPLE_FLEET)


@pytest.fixture(scope="module")
def keys(cfg: FleetConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("keys") / "data"
    provision(cfg, DataDir(base), cfg.start_ms)
    return base


@pytest.fixture(scope="module")
def straight(cfg: FleetConfig, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three simulated hours in one run: what any sequence of resumed runs must record."""
    data = tmp_path_factory.mktemp("straight") / "data"
    shutil.copytree(keys, data)
    simulate(cfg, data, 3)
    return data


def simulate(cfg: FleetConfig, data: Path, hours: int, **options: object) -> RunResult:
    return run_fleet(
        cfg, data=data, for_ms=hours * HOUR_MS, simulated_network=True, view=False, **options
    )


def forget_clean_stop(data: Path) -> None:
    """What a kill at a step boundary leaves: the stores hold every step, fleet.json no stop."""
    path = data / "fleet.json"
    doc = json.loads(path.read_text())
    doc.pop("sim_ms", None)
    path.write_text(json.dumps(doc))


def assert_time_never_goes_back(data: Path) -> dict[str, list[Content]]:
    """Per device: reading times never decrease along the chain and no reading is signed twice
    (the same sensor, time, value and tag); a burst of one sensor at one instant (one
    ``load.fibre_pct`` per fibre) is one slot signed once, whole."""
    out = {}
    for name, view in read_fleet(data).items():
        contents = view.contents()
        back = [
            (a.time_ms, b.time_ms) for a, b in itertools.pairwise(contents) if b.time_ms < a.time_ms
        ]
        assert back == [], f"{name}: time went back {len(back)} times: {back[:3]}"
        twice = [c for c, n in Counter(contents).items() if n > 1]
        assert twice == [], f"{name}: {len(twice)} readings signed twice: {twice[:3]}"
        out[name] = contents
    return out


def assert_same_as(data: Path, straight: Path) -> None:
    got, want = assert_time_never_goes_back(data), assert_time_never_goes_back(straight)
    differ = {n: (len(got[n]), len(want[n])) for n in want if got.get(n) != want[n]}
    assert differ == {}, f"readings (resumed, straight) differ for {len(differ)} devices: {differ}"
    report = verify(data)
    assert report.ok, report.failures()


@pytest.mark.parametrize("stop", ["clean", "killed"])
def test_three_resumed_hours_record_what_three_straight_hours_record(
    cfg: FleetConfig, keys: Path, straight: Path, tmp_path: Path, stop: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(keys, data)
    runs = []
    for _ in range(3):
        runs.append(simulate(cfg, data, 1))
        if stop == "killed":
            forget_clean_stop(data)
    spans = [(r.sim_start_ms - cfg.start_ms, r.sim_end_ms - cfg.start_ms) for r in runs]
    assert spans == [(0, HOUR_MS), (HOUR_MS, 2 * HOUR_MS), (2 * HOUR_MS, 3 * HOUR_MS)], (
        f"{stop}: runs covered {spans} ms from the fleet's start"
    )
    produced = [r.samples for r in runs]
    assert all(n > 0 for n in produced), f"{stop}: samples signed per run = {produced}"
    assert_same_as(data, straight)


def test_a_device_that_missed_a_run_catches_up_from_its_own_last_reading(
    cfg: FleetConfig, keys: Path, straight: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(keys, data)
    simulate(cfg, data, 1)
    fridges = tuple(d.name for d in cfg.devices if d.kind == "refrigerator")
    simulate(cfg, data, 1, only=fridges)  # the others stop at 1 h, the fleet stands at 2 h
    forget_clean_stop(data)  # where the fleet stands now comes from the fridges' stores alone
    third = simulate(cfg, data, 1)
    assert (third.sim_start_ms, third.sim_end_ms) == (
        cfg.start_ms + 2 * HOUR_MS,
        cfg.start_ms + 3 * HOUR_MS,
    )
    late = {n: a.stats.readings for n, a in third.devices.items() if n not in fridges}
    freezers = [n for n, d in late.items() if cfg.device(n).kind == "medical_freezer"]
    # They sign their missed hour and the new one (the washers had no cycle in three hours).
    assert all(late[n] > 0 for n in freezers), f"readings of those that missed a run: {late}"
    assert_same_as(data, straight)


def test_a_run_told_not_to_resume_replays_the_past_and_the_devices_sign_none_of_it(
    cfg: FleetConfig, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(keys, data)
    first = simulate(cfg, data, 1)
    before = assert_time_never_goes_back(data)
    with caplog.at_level(logging.WARNING, logger="edgefleet"):
        again = simulate(cfg, data, 1, resume=False)  # the models start over at the origin
    assert again.sim_start_ms == first.sim_start_ms
    refused = {n: a.stats.counters["time-refused"] for n, a in again.devices.items()}
    signed = {n: a.stats.readings for n, a in again.devices.items()}
    assert sum(refused.values()) == again.samples == first.samples, (refused, again.samples)
    assert set(signed.values()) == {0}, f"signed again: {signed}"
    assert assert_time_never_goes_back(data) == before
    warned = {m.split(":")[0] for m in caplog.messages if "samples not signed" in m}
    assert warned == {n for n, k in refused.items() if k}, warned
