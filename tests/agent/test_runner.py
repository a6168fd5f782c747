"""The fleet runner end to end, in process: simulated runs, resume, and real MQTT brokers.

Simulated runs (``simulated_network=True``) put the network and gossip timers on simulated time:
no wall clock, and a seed reproduces the run. Real-broker runs use fast anti-entropy so they
converge within a second or two of wall time. Every assertion reports its figure.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest

from agent.config.devices import FleetConfig, load_fleet
from agent.fleet.datadir import DataDir
from agent.fleet.provision import provision
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.transport.brokers import MosquittoBroker
from agent.transport.mqtt import MqttTransport
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import (
    FAST_GOSSIP,
    HOUR_MS,
    SAMPLE_FLEET,
    domain_pairs,
    missing_heads,
    read_fleet,
    run_fleet,
    verify,
    write_fleet,
)

SEED = 42  # the sample fleet's own seed
OTHER_SEED = 7


@pytest.fixture(scope="module")
def cfg() -> FleetConfig:
    return load_fleet(SAMPLE_FLEET)


@pytest.fixture(scope="module")
def keys(cfg: FleetConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding only the sample fleet's authority and enrolled keys (no run yet).

    Keys are random per data dir (as they must be), so runs compare head hashes only between
    copies of this one.
    """
    base = tmp_path_factory.mktemp("keys") / "data"
    provision(cfg, DataDir(base), cfg.start_ms)
    return base


def copy_keys(keys: Path, dest: Path) -> Path:
    shutil.copytree(keys, dest)
    return dest


def heads(data: Path) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, view in read_fleet(data).items():
        out[name] = view.blocks[max(view.blocks)].hex() if view.blocks else None
    return out


def simulate(cfg: FleetConfig, data: Path, hours: int, seed: int | None = None) -> RunResult:
    return run_fleet(
        cfg, data=data, for_ms=hours * HOUR_MS, simulated_network=True, view=False, seed=seed
    )


def assert_nothing_lost(result: RunResult, data: Path, what: str) -> None:
    report = verify(data)
    assert report.ok, f"{what}: verify failed: {report.failures()}"
    for name, agent in result.devices.items():
        stored = report.report(name)
        assert stored["pending"] == 0, f"{what}: {name} left {stored['pending']} unsealed"
        assert stored["readings"] == agent.stats.readings, (
            f"{what}: {name}: lost = {agent.stats.readings - stored['readings']} of "
            f"{agent.stats.readings} readings handed to it"
        )
    lost = result.samples - report.readings
    assert lost == 0, f"{what}: lost = {lost} of {result.samples} samples"


# --------------------------------------------------------------------------- simulated mode


@pytest.fixture(scope="module")
def six_hours(
    cfg: FleetConfig, keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, Path]:
    data = copy_keys(keys, tmp_path_factory.mktemp("six") / "data")
    return simulate(cfg, data, 6), data


@pytest.mark.slow
def test_six_simulated_hours_of_the_sample_fleet_converge_verify_and_lose_nothing(
    cfg: FleetConfig, six_hours: tuple[RunResult, Path]
) -> None:
    result, data = six_hours
    assert result.sim_end_ms - result.sim_start_ms == 6 * HOUR_MS
    assert result.sim_start_ms == cfg.start_ms
    assert result.converged, "the simulated run did not converge within its settle time"
    assert_nothing_lost(result, data, f"6 h simulated, seed {SEED}")
    assert result.samples > 1_000, f"only {result.samples} samples in 6 h: nothing to check"
    pairs = domain_pairs(cfg)
    missing = missing_heads(cfg, data)
    assert missing == [], (
        f"missing heads = {len(missing)} of {len(pairs)} domain pairs, seed {SEED}: {missing}"
    )
    views = read_fleet(data)
    assert sorted(views) == sorted(d.name for d in cfg.devices)
    forks = sum(v.evidence for v in views.values())
    assert forks == 0, f"fork evidence = {forks} in an honest run, seed {SEED}"


@pytest.mark.slow
def test_the_same_seed_and_keys_give_identical_heads_and_another_seed_differs(
    cfg: FleetConfig,
    keys: Path,
    six_hours: tuple[RunResult, Path],
    tmp_path: Path,
) -> None:
    first, first_data = six_hours
    again = copy_keys(keys, tmp_path / "again")
    second = simulate(cfg, again, 6)
    a, b = heads(first_data), heads(again)
    differ = sorted(n for n in a if a[n] != b[n])
    assert differ == [], (
        f"heads differing = {len(differ)} of {len(a)} devices between two runs, seed {SEED}: "
        f"{differ}"
    )
    assert second.samples == first.samples

    other = copy_keys(keys, tmp_path / "other")
    simulate(cfg, other, 6, seed=OTHER_SEED)
    c = heads(other)
    changed = sorted(n for n in a if a[n] != c[n])
    # Washers idle on a Monday morning whatever the seed; fridges and freezers do not.
    assert {"fridge-1", "freezer-van"} <= set(changed), (
        f"seed {OTHER_SEED} vs {SEED}: heads differing = {len(changed)} of {len(a)}: {changed}"
    )


@pytest.mark.slow
def test_a_fresh_data_dir_with_the_same_seed_records_the_same_readings(
    cfg: FleetConfig, six_hours: tuple[RunResult, Path], tmp_path: Path
) -> None:
    _, first_data = six_hours
    fresh = tmp_path / "fresh"
    simulate(cfg, fresh, 6)
    a, b = read_fleet(first_data), read_fleet(fresh)
    differ = sorted(n for n in a if a[n].contents() != b[n].contents())
    assert differ == [], f"reading sequences differing = {len(differ)} of {len(a)}: {differ}"
    # New keys, new identities: the same readings hash differently (keys never come from a seed).
    assert heads(first_data)["fridge-1"] != heads(fresh)["fridge-1"]


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_a_second_run_resumes_the_chains_and_the_simulated_time(
    cfg: FleetConfig, keys: Path, tmp_path: Path
) -> None:
    data = copy_keys(keys, tmp_path / "resumed")
    first = simulate(cfg, data, 2)
    before = read_fleet(data)
    second = simulate(cfg, data, 2)
    after = read_fleet(data)

    assert (first.sim_start_ms, first.sim_end_ms) == (cfg.start_ms, cfg.start_ms + 2 * HOUR_MS)
    assert (second.sim_start_ms, second.sim_end_ms) == (
        first.sim_end_ms,
        first.sim_end_ms + 2 * HOUR_MS,
    ), (
        f"second run covered {second.sim_start_ms - cfg.start_ms}.."
        f"{second.sim_end_ms - cfg.start_ms} ms; expected {2 * HOUR_MS}..{4 * HOUR_MS}"
    )
    changed = [
        f"{name}@{h}"
        for name, view in before.items()
        for h, digest in view.blocks.items()
        if after[name].blocks.get(h) != digest
    ]
    total = sum(len(v.blocks) for v in before.values())
    assert changed == [], (
        f"blocks changed by the resumed run = {len(changed)} of {total}: {changed}"
    )
    for name, view in after.items():
        heights, seqs = sorted(view.blocks), sorted(view.readings)
        assert heights == list(range(len(heights))), f"{name}: heights {heights}"
        assert seqs == list(range(len(seqs))), f"{name}: gap in reading sequence numbers"
        old = len(before[name].readings)
        if second.devices[name].stats.readings:
            assert len(heights) > len(before[name].blocks), f"{name}: no block in the second run"
            contents = view.contents()
            last_old, first_new = contents[old - 1].time_ms, contents[old].time_ms
            assert first_new > last_old, (
                f"{name}: simulated time went back on resume: reading {old} at {first_new} "
                f"after reading {old - 1} at {last_old}"
            )
    report = verify(data)
    assert report.ok, report.failures()
    lost = first.samples + second.samples - report.readings
    assert lost == 0, f"lost = {lost} of {first.samples + second.samples} over one resume"

    # Two runs of 2 h record exactly what one run of 4 h records.
    whole = copy_keys(keys, tmp_path / "whole")
    simulate(cfg, whole, 4)
    straight = read_fleet(whole)
    differ = sorted(n for n in after if after[n].contents() != straight[n].contents())
    assert differ == [], f"2 h + 2 h differs from 4 h for {len(differ)} devices: {differ}"


# --------------------------------------------------------------------------- real brokers


def run_over(cfg: FleetConfig, data: Path, broker: str) -> RunResult:
    return run_fleet(
        cfg,
        data=data,
        broker=broker,
        for_ms=2 * HOUR_MS,
        view=False,
        gossip=FAST_GOSSIP,
        settle_s=30.0,
    )


def assert_converged_over_mqtt(cfg: FleetConfig, data: Path, result: RunResult, what: str) -> None:
    assert all(isinstance(a.transport, MqttTransport) for a in result.devices.values())
    sent = sum(a.stats.sent for a in result.devices.values())
    assert sent > 0, f"{what}: nothing was published"
    assert result.converged, f"{what}: not converged within 30 s of settling"
    pairs = domain_pairs(cfg)
    missing = missing_heads(cfg, data)
    assert missing == [], f"{what}: missing heads = {len(missing)} of {len(pairs)}: {missing}"
    assert_nothing_lost(result, data, what)


@pytest.mark.slow
def test_two_hours_over_the_embedded_broker_converge_and_verify(
    cfg: FleetConfig, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    result = run_over(cfg, data, "embedded")
    assert_converged_over_mqtt(cfg, data, result, "embedded amqtt, 2 h")


@pytest.mark.mosquitto
def test_two_hours_over_a_running_mosquitto_converge_and_verify(
    cfg: FleetConfig, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    result = run_over(cfg, data, mosquitto.endpoint.url)
    assert_converged_over_mqtt(cfg, data, result, f"mosquitto at {mosquitto.endpoint.url}, 2 h")


@pytest.mark.mosquitto
def test_the_runner_starts_and_stops_its_own_mosquitto(cfg: FleetConfig, tmp_path: Path) -> None:
    require_mosquitto()
    data = tmp_path / "data"
    result = run_over(cfg, data, "mosquitto")
    assert_converged_over_mqtt(cfg, data, result, "runner's own mosquitto, 2 h")
    conf = (data / "mosquitto.conf").read_text().splitlines()
    port = int(next(line.split()[1] for line in conf if line.startswith("listener ")))
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))  # the broker it started is gone with the run


def test_a_run_resumed_at_its_start_time_does_not_record_the_start_again(
    cfg: FleetConfig, keys: Path, tmp_path: Path
) -> None:
    data = copy_keys(keys, tmp_path / "zero")
    first = simulate(cfg, data, 0)  # `--for 0s`: only the samples at the start time
    second = simulate(cfg, data, 0)
    report = verify(data)
    assert first.samples > 0
    extra = report.readings - first.samples
    assert (second.samples, extra) == (0, 0), (
        f"the second zero-length run re-recorded {second.samples} samples of the start time "
        f"(stored readings {report.readings}, first run {first.samples})"
    )


def test_a_resumed_runs_speed_is_its_own_simulated_time_over_its_wall_time(tmp_path: Path) -> None:
    # The speed of the view and the summary line (x...) was the fleet's simulated time since
    # the file's start over this run's wall time: a run resumed a day in read x421,169 at once
    # and crept towards its --speed over minutes.
    cfg = load_fleet(write_fleet(tmp_path / "cfg"))
    data = tmp_path / "data"
    hour, minutes_10 = 3_600_000, 600_000
    opts = {"data": data, "simulated_network": True, "view": False}
    asyncio.run(FleetRunner(cfg, RunOptions(for_ms=hour, **opts)).run())
    second = FleetRunner(cfg, RunOptions(for_ms=minutes_10, **opts))
    result = asyncio.run(second.run())
    assert result.sim_start_ms == cfg.start_ms + hour
    snap = second.snapshot()
    simulated_s = (snap.sim_ms - result.sim_start_ms) / 1000
    assert minutes_10 / 1000 <= simulated_s < hour / 1000
    assert snap.speed * snap.wall_s == pytest.approx(simulated_s, rel=0.05)
