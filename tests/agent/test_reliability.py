"""Faults against whole runs (the reliability matrix): agent SIGKILL, SIGTERM, shards. The broker
SIGKILL runs on the 20-device fleet, in test_integration_fleet.py, with the stronger checks.

Every test reports its figure with its seed. Waiting is polling a condition (stores read through
read-only SQLite connections, or the runner's own state in process, checked on the run's
simulated clock: ``until``), never a fixed sleep; wall-clock limits only turn a hang into a
failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.devices import FleetConfig, load_fleet
from agent.fleet.runner import FleetRunner, RunResult
from agent.transport.brokers import MosquittoBroker
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import (
    HOUR_MS,
    SAMPLE_FLEET,
    ChainView,
    Content,
    device_ids,
    domain_pairs,
    missing_heads,
    poll,
    progress,
    read_fleet,
    run_fleet,
    verify,
    write_fleet,
)
from tests.conftest import FigureRecorder

pytestmark = pytest.mark.slow  # whole fleets, real brokers and processes: minutes in all

WAIT_S = 300.0  # hang guard for one awaited event of a subprocess; normally well under a second


def agent_cmd(fleet: Path, data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent",
        "run",
        "--devices",
        str(fleet),
        "--data",
        str(data),
        "--no-view",
        *extra,
    ]


# --------------------------------------------------------------------------- agent SIGKILL

KILL_SEED = 2024
KILLS = 6


@dataclasses.dataclass
class KillRecord:
    """Everything seen durable in the data dir after each kill, and what went wrong later."""

    blocks: dict[tuple[str, int], bytes] = dataclasses.field(default_factory=dict)
    readings: dict[tuple[str, int], bytes] = dataclasses.field(default_factory=dict)
    self_forks: list[str] = dataclasses.field(default_factory=list)
    lost: list[str] = dataclasses.field(default_factory=list)
    integrity: list[str] = dataclasses.field(default_factory=list)

    def observe(self, when: str, views: dict[str, ChainView]) -> None:
        own = {v.device_id: (name, v) for name, v in views.items()}
        for name, v in views.items():
            heights, seqs = sorted(v.blocks), sorted(v.readings)
            if heights != list(range(len(heights))):
                self.integrity.append(f"{when}: {name} heights {heights[:3]}..{heights[-3:]}")
            if seqs != list(range(len(seqs))):
                self.integrity.append(f"{when}: {name}: gap in reading sequence numbers")
            if v.evidence:
                self.self_forks.append(f"{when}: {name} holds {v.evidence} fork evidence")
            for (dev, h), digest in v.peer_headers.items():
                owner, ov = own[dev]
                if ov.blocks.get(h) != digest:
                    self.self_forks.append(
                        f"{when}: {name} holds {owner}@{h} that {owner}'s own chain does not"
                    )
        for (name, h), digest in self.blocks.items():
            if views[name].blocks.get(h) != digest:
                self.self_forks.append(f"{when}: {name}@{h} changed or vanished")
        for (name, seq), wire in self.readings.items():
            if views[name].readings.get(seq) != wire:
                self.lost.append(f"{when}: {name} reading {seq} changed or vanished")
        for name, v in views.items():
            self.blocks.update(((name, h), d) for h, d in v.blocks.items())
            self.readings.update(((name, s), w) for s, w in v.readings.items())


@dataclasses.dataclass(frozen=True)
class KilledFleet:
    cfg: FleetConfig
    data: Path
    record: KillRecord
    final: subprocess.CompletedProcess[str]
    moments: tuple[int, ...]  # readings durable at each kill

    def figure(self) -> str:
        return (
            f"integrity failures = {len(self.record.integrity)}, self-forks = "
            f"{len(self.record.self_forks)}, lost acknowledged = {len(self.record.lost)} of "
            f"{len(self.record.readings)} readings over {len(self.moments)} kills, seed {KILL_SEED}"
        )


def kill_after(fleet: Path, data: Path, target: int, log_path: Path) -> None:
    """Start the agent, wait for a new block and ``target`` durable readings, SIGKILL it."""
    blocks0, _ = progress(data)
    seen = (blocks0, 0)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            agent_cmd(fleet, data, "--for", "30d", "--speed", "max"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def ready() -> bool:
                nonlocal seen
                seen = progress(data)
                return proc.poll() is not None or (seen[0] > blocks0 and seen[1] >= target)

            poll(ready, WAIT_S, lambda: f"{target} durable readings, found {seen}")
            assert proc.poll() is None, (
                f"the agent exited with {proc.returncode} before its kill: "
                f"{log_path.read_text()[-2000:]}"
            )
        finally:
            proc.kill()  # SIGKILL: no clean stop, no goodbye
            proc.wait()


@pytest.fixture(scope="module")
def killed_fleet(tmp_path_factory: pytest.TempPathFactory) -> KilledFleet:
    """A small fleet under `edgefleet run` killed with SIGKILL at KILLS seeded moments.

    Each restart waits for a new block and a seeded number of new durable readings, then kills.
    Afterwards one clean run of 1 h completes.
    """
    root = tmp_path_factory.mktemp("killed")
    fleet = write_fleet(root)
    data = root / "data"
    rng = random.Random(KILL_SEED)
    record = KillRecord()
    moments = []
    for k in range(KILLS):
        _, readings0 = progress(data)
        kill_after(fleet, data, readings0 + rng.randint(20, 1500), root / f"run-{k}.log")
        moments.append(progress(data)[1])
        record.observe(f"after kill {k + 1}", read_fleet(data))
    final = subprocess.run(
        agent_cmd(fleet, data, "--for", "1h"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    record.observe("after the final run", read_fleet(data))
    return KilledFleet(load_fleet(fleet), data, record, final, tuple(moments))


@pytest.mark.subprocess
def test_sigkilled_agents_reopen_verified_with_no_gap_no_loss_and_no_self_fork(
    killed_fleet: KilledFleet, figure: FigureRecorder
) -> None:
    kf = killed_fleet
    assert kf.final.returncode == 0, kf.final.stderr[-2000:]
    assert "gossip converged" in kf.final.stderr, kf.final.stderr[-2000:]
    assert len(set(kf.moments)) == KILLS, f"kills did not land at distinct moments: {kf.moments}"
    report = verify(kf.data)
    assert report.ok, f"{kf.figure()}; verify: {report.failures()}"
    assert kf.record.integrity == [], f"{kf.figure()}: {kf.record.integrity[:5]}"
    assert kf.record.self_forks == [], f"{kf.figure()}: {kf.record.self_forks[:5]}"
    assert kf.record.lost == [], f"{kf.figure()}: {kf.record.lost[:5]}"
    assert report.readings == len(kf.record.readings), kf.figure()
    figure("agent SIGKILL at random points", kf.figure())


def _duplicates(contents: list[Content]) -> int:
    return len(contents) - len(set(contents))


def _backwards(contents: list[Content]) -> int:
    return sum(1 for a, b in itertools.pairwise(contents) if b.time_ms < a.time_ms)


@pytest.mark.subprocess
def test_sigkilled_agents_record_every_simulated_sample_exactly_once(
    killed_fleet: KilledFleet, tmp_path: Path
) -> None:
    """After the kills, each chain holds what one uninterrupted run of the same span records."""
    kf = killed_fleet
    span = int(json.loads((kf.data / "fleet.json").read_text())["sim_ms"])
    reference = tmp_path / "reference"
    run_fleet(
        kf.cfg,
        data=reference,
        for_ms=span - kf.cfg.start_ms,
        simulated_network=True,
        view=False,
    )
    got, want = read_fleet(kf.data), read_fleet(reference)
    problems = []
    for name in sorted(want):
        g, w = got[name].contents(), want[name].contents()
        if g != w:
            problems.append(
                f"{name}: {len(g)} readings vs {len(w)} uninterrupted; duplicates = "
                f"{_duplicates(g)}, time going back = {_backwards(g)}"
            )
    total = sum(len(v.readings) for v in want.values())
    assert problems == [], (
        f"devices whose readings differ from an uninterrupted run = {len(problems)} of "
        f"{len(want)} ({total} readings) after {KILLS} kills, seed {KILL_SEED}: {problems}"
    )


@pytest.mark.subprocess
def test_sigterm_stops_cleanly_and_the_next_run_continues_where_it_stopped(
    tmp_path: Path,
) -> None:
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    with open(tmp_path / "stopped.log", "w") as log:
        proc = subprocess.Popen(
            agent_cmd(fleet, data, "--for", "30d"), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            poll(
                lambda: proc.poll() is not None or progress(data)[0] >= 10,
                WAIT_S,
                lambda: "10 blocks",
            )
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=WAIT_S)
        finally:
            proc.kill()
            proc.wait()
    said = (tmp_path / "stopped.log").read_text()
    assert status == 0 and "stopped at simulated" in said, f"exit {status}: {said[-2000:]}"
    stopped_at = int(json.loads((data / "fleet.json").read_text())["sim_ms"])
    again = subprocess.run(
        agent_cmd(fleet, data, "--for", "1h"), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    cfg = load_fleet(fleet)
    reference = tmp_path / "reference"
    run_fleet(
        cfg,
        data=reference,
        for_ms=stopped_at + HOUR_MS - cfg.start_ms,
        simulated_network=True,
        view=False,
    )
    got, want = read_fleet(data), read_fleet(reference)
    differ = [n for n in want if got[n].contents() != want[n].contents()]
    assert differ == [], (
        f"after a SIGTERM at simulated +{(stopped_at - cfg.start_ms) // 60_000} min and a 1 h "
        f"resume, readings differ from an uninterrupted run for {differ}"
    )
    assert verify(data).ok


# --------------------------------------------------------------------------- waiting on a run

SAFETY_S = 900.0  # a hang guard for one awaited condition, never a budget: see until()


async def until(
    condition: Callable[[], bool],
    what: str,
    task: asyncio.Task[RunResult] | None = None,
    runner: FleetRunner | None = None,
    step_ms: int = 1_000,
) -> None:
    """Wait until ``condition()`` holds while a fleet runs (``task``: its ``run()``).

    With ``runner``, the condition is checked after every ``step_ms`` of the run's simulated
    time: a loaded machine slows the run and the checks alike, so no wall-clock budget can be
    missed. The limit that counts is the run's own end (``task`` done with the condition still
    false fails, with the run's own error if it raised). Before the run has made its clock, and
    without ``runner``, the condition is checked on every 10 ms turn of the loop. ``SAFETY_S``
    of wall time only turns a hang into a failure."""
    hang = time.monotonic() + SAFETY_S
    while not condition():
        if task is not None and task.done():
            task.result()  # raise the run's own error
            if condition():
                return
            raise AssertionError(f"the run ended while waiting for {what}")
        if time.monotonic() > hang:
            raise AssertionError(f"hung: {SAFETY_S} s of wall time waiting for {what}")
        clock = None if runner is None else runner.data_clock
        tick = asyncio.ensure_future(
            asyncio.sleep(0.01) if clock is None else clock.sleep_until(clock.now_ms() + step_ms)
        )
        waits: set[asyncio.Future[Any]] = {tick} if task is None else {tick, task}
        # Simulated time stops when the run does: the hang guard still bounds the tick.
        await asyncio.wait(waits, timeout=SAFETY_S, return_when=asyncio.FIRST_COMPLETED)
        tick.cancel()


# --------------------------------------------------------------------------- shards


@dataclasses.dataclass(frozen=True)
class ShardRun:
    cfg: FleetConfig
    data: Path
    procs: tuple[subprocess.CompletedProcess[str], ...]


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardRun]:
    """The sample fleet as two shards, two processes, one data dir and one Mosquitto, 1 h."""
    require_mosquitto()
    root = tmp_path_factory.mktemp("shards")
    data = root / "data"
    broker = MosquittoBroker(workdir=root / "mosquitto")
    broker.start_sync()
    try:
        procs = [
            subprocess.Popen(
                agent_cmd(
                    SAMPLE_FLEET, data, "--for", "1h", "--shard", f"{i}/2", "--broker", broker.url
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        done = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        yield ShardRun(load_fleet(SAMPLE_FLEET), data, tuple(done))
    finally:
        broker.stop_sync()


def _samples(stderr: str) -> int:
    m = re.search(r": (\d+) samples, gossip", stderr)
    assert m is not None, stderr
    return int(m.group(1))


@pytest.mark.mosquitto
@pytest.mark.subprocess
def test_two_shards_share_a_data_dir_and_each_device_runs_in_exactly_one(
    shard_run: ShardRun,
) -> None:
    run = shard_run
    for i, p in enumerate(run.procs):
        assert p.returncode == 0, f"shard {i}/2 exited {p.returncode}: {p.stderr[-2000:]}"
    report = verify(run.data)
    assert report.ok, report.failures()
    names = [d.name for d in run.cfg.devices]
    chains = {r["name"]: r["height"] for r in report.doc["reports"]}
    assert sorted(chains) == sorted(names)
    without = sorted(n for n, h in chains.items() if h is None)
    assert without == [], f"devices without a chain = {len(without)} of {len(names)}: {without}"
    for i, p in enumerate(run.procs):
        mine = [n for j, n in enumerate(names) if j % 2 == i]
        stored = sum(report.report(n)["readings"] + report.report(n)["pending"] for n in mine)
        assert stored == _samples(p.stderr), (
            f"shard {i}/2 handed {_samples(p.stderr)} samples to its devices, which hold {stored}"
        )
    shard_of = {n: j % 2 for j, n in enumerate(names)}
    ids = device_ids(run.data)
    views = read_fleet(run.data)
    cross = [(h, p) for h, p in domain_pairs(run.cfg) if shard_of[h] != shard_of[p]]
    empty = [
        f"{h} holds nothing of {p}"
        for h, p in cross
        if not any(dev == ids[p] for dev, _ in views[h].peer_headers)
    ]
    assert cross and empty == [], (
        f"cross-shard domain pairs without a header = {len(empty)} of {len(cross)}: {empty}"
    )


@pytest.mark.mosquitto
@pytest.mark.subprocess
def test_after_both_shards_stop_every_device_holds_every_domain_peers_final_head(
    shard_run: ShardRun,
) -> None:
    run = shard_run
    assert all(p.returncode == 0 for p in run.procs)
    missing = missing_heads(run.cfg, run.data)
    said = [p.stderr.strip().splitlines()[-1] for p in run.procs]
    assert missing == [], (
        f"missing final heads = {len(missing)} of {len(domain_pairs(run.cfg))} domain pairs "
        f"after two shards exited saying {said}: {missing}"
    )
