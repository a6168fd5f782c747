"""A fleet must never look healthy when it is not: trouble figures per device, gossip convergence
per domain (live, in fleet.log once per episode, in the run-status file, in the exit status),
mutes and exclusions warned once per peer, and a device whose simulated sensor raises failing
alone.

In-process runs are on simulated time over the in-memory network; the health tick is taken at
each simulation step through ``FleetRunner.observe`` (the same call the view loop makes), so the
figures do not depend on how fast the machine is. The CLI runs are real subprocesses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.cli.main import main
from agent.config.devices import FleetConfig, load_fleet
from agent.device.stats import DeviceStats
from agent.fleet.datadir import DataDir
from agent.fleet.health import (
    TROUBLE,
    Convergence,
    DomainHealth,
    read_run_status,
    stall_ms,
    status_path,
    trouble,
    trouble_cell,
    write_status,
)
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.fleet.sources import SampleSource, simulation
from agent.fleet.view import DeviceRow, FleetSnapshot, LiveView, render, summary_line
from agent.fleet.watch import FleetWatch
from agent.gossip import wire
from agent.protocol import auth
from agent.protocol.auth import KeySigner
from agent.replication import actions as RA
from ledger.store import Store
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import (
    FAST_GOSSIP,
    HOUR_MS,
    SAMPLE_FLEET,
    poll,
    run_fleet,
    write_fleet,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_736_121_600_000
ZERO = dict.fromkeys(TROUBLE, 0)


# --------------------------------------------------------------------------- pure parts


def test_trouble_folds_the_counters_an_honest_fleet_keeps_at_zero() -> None:
    counters = {
        "gossip.unattributable": 3,
        "replication.old_version": 1,
        "gossip.penalty_invalid": 2,
        "gossip.header_revoked": 4,
        "gossip.peers_muted": 1,
        "replication.holders_excluded": 1,
        "transport.dropped_overflow": 5,
        "network.dropped_queue_full": 6,
        "transport.send_failures": 52,
        "gossip.promises_broken": 7,
        # honest traffic: never trouble
        "gossip.dropped_own": 225,
        "gossip.header_accepted": 792,
        "replication.placement_stalled": 23_229,
    }
    got = trouble(counters)
    assert got == {
        "unproven": 4,
        "invalid": 2,
        "rejected": 4,
        "muted": 1,
        "excluded": 1,
        "dropped": 11,
        "send_failures": 52,
        "timeouts": 7,
    }
    assert trouble_cell(got) == "u4 i2 r4 m1 x1 d11 s52 t7"
    assert trouble_cell(ZERO) == "-"


def _chains(height: int, held: dict[str, int]) -> dict[str, tuple[int | None, dict[str, int]]]:
    return {"a": (height, held)}


def test_a_chain_that_keeps_spreading_is_converging_and_one_that_stalls_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edgefleet.health")
    conv = Convergence(stall_ms=15_000)
    domains = {"street": ["a", "b", "c"]}
    troubles = {"a": {**ZERO, "send_failures": 52}, "b": dict(ZERO), "c": dict(ZERO)}
    # A busy chain: a new block every second, each reaching both trackers a second later.
    for t in range(0, 60):
        held = {"b": t - 1, "c": t - 1}
        (h,) = conv.update(t * 1000, _chains(t, held), domains, troubles)
        assert h.converging, f"false alarm at {t} s: {h}"
    assert caplog.records == []
    # Then c stops receiving while a's sends fail: behind for more than 15 s is not
    # converging, said once, blaming what grew since it last converged (not the 52 before).
    states = []
    for t in range(60, 120):
        troubles["a"]["send_failures"] = 52 + (t - 59)
        held = {"b": t - 1, "c": 58}
        (h,) = conv.update(t * 1000, _chains(t, held), domains, troubles)
        states.append(h)
    assert states[10].converging and not states[-1].converging
    assert states[-1].behind == 1 and states[-1].behind_ms > 15_000
    assert states[-1].reason == "send failures 16"
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "gossip in domain street is not converging: 1 chain(s) have not reached every member "
        "for 16 s (send failures 16)"
    ], warnings
    # It catches up: converging again, said once.
    (h,) = conv.update(121_000, _chains(121, {"b": 121, "c": 121}), domains, troubles)
    assert h.converging and h.behind == 0
    assert caplog.records[-1].getMessage() == "gossip in domain street converges again"
    assert len(caplog.records) == 2


def test_a_shortfall_outside_a_domain_does_not_count_against_it() -> None:
    conv = Convergence(stall_ms=1_000)
    domains = {"home": ["a", "b"], "street": ["a", "c"]}
    for t in range(0, 10):  # c never gets a's chain; b always does
        (home, street) = conv.update(t * 1000, {"a": (5, {"b": 5, "c": -1})}, domains, {"a": ZERO})
    assert home.converging and home.behind == 0
    assert not street.converging and street.domain == "street"


def row(name: str, counters: dict[str, int] | None = None, **kw: Any) -> DeviceRow:
    return DeviceRow(
        name, "refrigerator", "home-1", 3, 0, 40, (), (), 2, 2, 0, counters=counters or {}, **kw
    )


def snap(rows: list[DeviceRow], domains: tuple[DomainHealth, ...] = ()) -> FleetSnapshot:
    return FleetSnapshot(T0, 1.0, 60.0, tuple(rows), broker="in-memory network", domains=domains)


def test_an_honest_fleet_shows_no_trouble_and_every_domain_ok() -> None:
    ok = (DomainHealth("street", 2, 0, True), DomainHealth("home-1", 1, 0, True))
    lines = render(snap([row("fridge-1"), row("fridge-2")], ok))
    text = "\n".join(lines)
    assert "domains 2/2 ok" in lines[2]
    assert "trouble" not in text and "NOT CONVERGING" not in text
    assert not summary_line(snap([row("fridge-1")], ok)).endswith("CONVERGING")


def test_trouble_is_shown_per_device_with_fleet_totals_and_the_peer_named() -> None:
    bad = row(
        "fridge-1",
        {"transport.send_failures": 52, "gossip.promises_broken": 3, "gossip.peers_muted": 1},
        muted=(("fridge-2", "invalid"),),
    )
    stalled = DomainHealth("street", 2, 1, False, 40_000, "send failures 52, requests timed out 3")
    lines = render(snap([bad, row("fridge-2")], (stalled,)), width=200)
    assert "domains 0/1 ok" in lines[2]
    assert lines[3] == "trouble  muted 1  send failures 52  timeouts 3"
    header = lines[5].split()
    assert header[header.index("lag") + 1] == "trouble"
    cells = {line.split()[0]: line for line in lines[6:8]}
    assert "m1 s52 t3 m:fridge-2" in cells["fridge-1"]
    assert re.search(r"fridge-2 .* - ", cells["fridge-2"])
    tail = [line for line in lines if line.startswith("!")]
    assert tail[0] == (
        "! NOT CONVERGING street: 1 of 2 chains behind for 40 s "
        "(send failures 52, requests timed out 3)"
    )
    assert "! fridge-1 mutes fridge-2 (invalid)" in tail
    summary = summary_line(snap([bad], (stalled,)))
    assert summary.endswith(" trouble m1 s52 t3 NOT CONVERGING street"), summary


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_domain_not_converging_is_red() -> None:
    stalled = DomainHealth("street", 2, 1, False, 40_000, "no send failure, drop or timeout")
    out = Tty()
    LiveView(out, size=lambda: (120, 30)).show(snap([row("a")], (stalled,)))
    screen = out.getvalue()
    assert "\x1b[31mdomains 0/1 ok\x1b[0m" in screen
    assert "\x1b[31m! NOT CONVERGING street" in screen
    out = Tty()
    LiveView(out, size=lambda: (120, 30)).show(snap([row("a")], (DomainHealth("s", 2, 0, True),)))
    assert "\x1b[31m" not in out.getvalue()


def test_the_status_file_is_replaced_whole_and_a_dead_pid_reads_stale(tmp_path: Path) -> None:
    path = status_path(tmp_path)
    doc = {"format": "edgefleet-run-status/1", "pid": os.getpid(), "stopped": False}
    write_status(path, doc)
    assert [p.name for p in tmp_path.iterdir()] == ["run-status.json"]  # no temporary left
    assert [r.state for r in read_run_status(tmp_path)] == ["running"]
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    write_status(path, {**doc, "pid": int(dead.stdout)})
    assert [r.state for r in read_run_status(tmp_path)] == ["stale"]
    write_status(path, {**doc, "stopped": True})
    assert [r.state for r in read_run_status(tmp_path)] == ["stopped"]
    assert status_path(tmp_path, (1, 3)).name == "run-status.shard-1-of-3.json"


def test_a_peer_is_named_and_warned_about_once() -> None:
    stats = DeviceStats(names={"ab" * 8: "fridge-2"})
    assert stats.peer_name("ab" * 8) == "fridge-2" and stats.peer_name("cd") == "cd"
    assert stats.first("muted", "ab" * 8)
    assert not stats.first("muted", "ab" * 8)
    assert stats.first("excluded", "ab" * 8)


# --------------------------------------------------------------------------- in-process runs


class FailingProbe:
    """A temperature probe that reads as the real one until ``after_ms``, then raises as a
    driver does on an I/O error."""

    def __init__(self, probe: Any, after_ms: int) -> None:
        self.probe = probe
        self.after_ms = after_ms

    def read(self, t: int, true_mc: float) -> object:
        if t > self.after_ms:
            raise OSError(5, "Input/output error reading the fridge probe")
        return self.probe.read(t, true_mc)

    def __getattr__(self, attr: str) -> object:
        return getattr(self.probe, attr)


class Hook:
    """A sample source that calls ``each(target)`` before each step of the simulation."""

    def __init__(self, each: Any, *, break_sensor: tuple[str, int] | None = None) -> None:
        self.each = each
        self.break_sensor = break_sensor

    def source(self, cfg: FleetConfig, step_ms: int) -> SampleSource:
        inner = simulation(cfg, step_ms)
        each = self.each
        if self.break_sensor is not None:
            name, after_ms = self.break_sensor
            app = inner.appliances[name]
            app._fridge_probe = FailingProbe(app._fridge_probe, after_ms)  # type: ignore[attr-defined]

        class Source:
            def __getattr__(self, attr: str) -> object:
                return getattr(inner, attr)

            def step(self, target: int) -> object:
                each(target)
                return inner.step(target)

        return Source()  # type: ignore[return-value]


def run(
    cfg: FleetConfig, data: Path, hours: float, hook: Hook, **kw: Any
) -> tuple[RunResult, FleetRunner]:
    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            for_ms=int(hours * HOUR_MS),
            simulated_network=True,
            view=False,
            source=hook.source,
            **kw,
        ),
    )
    hook.runner = runner  # type: ignore[attr-defined]
    return asyncio.run(runner.run()), runner


def test_an_honest_fleet_is_converged_with_zero_trouble_at_every_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = load_fleet(SAMPLE_FLEET)
    ticks: list[FleetSnapshot] = []
    hook = Hook(lambda t: ticks.append(hook.runner.observe()) if hook.runner.ready else None)
    hook.runner = None  # type: ignore[attr-defined]
    result, _ = run(cfg, tmp_path / "data", 3, hook)
    assert result.converged and result.unconverged == {}
    assert len(ticks) >= 3
    alarms = [(t.sim_ms, d.domain) for t in ticks for d in t.domains if not d.converging]
    assert alarms == [], f"false alarms: {alarms}"
    troubled = {d.name: d.trouble for t in ticks for d in t.devices if any(d.trouble.values())}
    assert troubled == {}, troubled
    assert {d.domain for d in ticks[-1].domains} == {
        "blood-chain",
        "elm-street",
        "home-1",
        "home-2",
        "home-3",
    }
    doc = json.loads((tmp_path / "data" / "run-status.json").read_text())
    assert doc["stopped"] and doc["converged"] is True and doc["not_converged"] == []
    assert {d["state"] for d in doc["devices"]} == {"STOPPED"}
    assert all(d["trouble"] == ZERO for d in doc["devices"])
    assert all(d["converged"] for d in doc["domains"])
    words = ("not converging", "muted peer", "excluded")
    noisy = [r.getMessage() for r in caplog.records if any(w in r.getMessage() for w in words)]
    assert noisy == []


def test_a_domain_cut_off_is_not_converging_live_in_the_log_the_status_and_the_result(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The blood chain's three freezers with the hospital's freezer cut off the network from
    the first step: its domain says so at the ticks (once in fleet.log), the run ends
    unconverged and names the domain and the missing heads, and the status file says so."""
    caplog.set_level(logging.WARNING)
    cfg = load_fleet(SAMPLE_FLEET)
    ticks: list[FleetSnapshot] = []

    def each(_t: int) -> None:
        runner = hook.runner
        if not runner.ready:
            return
        if runner.network is not None and not ticks:
            cut = runner.agents["freezer-hospital"].device_id
            rest = [a.device_id for n, a in runner.agents.items() if n != "freezer-hospital"]
            runner.network.partition([[cut], rest])
        ticks.append(runner.observe())

    hook = Hook(each)
    hook.runner = None  # type: ignore[attr-defined]
    result, _ = run(cfg, tmp_path / "data", 2, hook, settle_s=5.0)
    doc_at_stop = json.loads((tmp_path / "data" / "run-status.json").read_text())
    assert not result.converged
    assert set(result.unconverged) == {"blood-chain"}, result.unconverged
    missing = result.unconverged["blood-chain"]
    assert "freezer-station lacks freezer-hospital's head" in missing, missing
    assert "freezer-hospital lacks freezer-station's head" in missing, missing
    live = [(t.sim_ms, d) for t in ticks for d in t.domains if d.domain == "blood-chain"]
    first_alarm = next(i for i, (_, d) in enumerate(live) if not d.converging)
    assert all(not d.converging for _, d in live[first_alarm:]), "the alarm must hold"
    others = {d.domain for t in ticks for d in t.domains if not d.converging}
    assert others == {"blood-chain"}, others
    # What the run-status file said at that tick, as `status --json` reads it while the run's
    # process lives (this one): not ok, the domain named, exit 1.
    stalled_tick = ticks[first_alarm + 1]
    live_doc = FleetWatch(tmp_path, (0, 1), 15_000, {}).document(stalled_tick, False, None, False)
    assert live_doc["not_converging"] == ["blood-chain"] and live_doc["pid"] == os.getpid()
    write_status(tmp_path / "data" / "run-status.json", live_doc)
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["status", "--data", str(tmp_path / "data"), "--json"])
    live_status = json.loads(out.getvalue())
    assert (status, live_status["ok"], live_status["not_converging"]) == (
        1,
        False,
        ["blood-chain"],
    )
    assert live_status["run"][0]["state"] == "running"
    write_status(tmp_path / "data" / "run-status.json", doc_at_stop)
    warned = [r.getMessage() for r in caplog.records if "not converging" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("gossip in domain blood-chain"), warned
    doc = json.loads((tmp_path / "data" / "run-status.json").read_text())
    assert doc["stopped"] and doc["converged"] is False
    assert doc["not_converged"] == ["blood-chain"]
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["status", "--data", str(tmp_path / "data"), "--json"])
    got = json.loads(out.getvalue())
    assert status == 1 and got["ok"] is False and got["not_converged"] == ["blood-chain"]
    print(f"blood-chain: first alarm at tick {first_alarm} of {len(live)}; missing {missing}")


def test_a_sensor_that_raises_fails_its_device_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    cfg = load_fleet(SAMPLE_FLEET)
    broken_at = cfg.start_ms + HOUR_MS
    hook = Hook(lambda _t: None, break_sensor=("fridge-2", broken_at))
    result, _ = run(cfg, tmp_path / "data", 3, hook)
    assert set(result.failed) == {"fridge-2"}, result.failed
    line = result.failed["fridge-2"]
    assert line.startswith("fridge-2: its simulated sensors failed at 2025-01-06 01:0"), line
    assert "OSError" in line and str(cfg.source) in line and "run again" in line, line
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [line], errors
    # The others ran the whole three hours; the failed one stopped at its last good reading.
    for name, agent in result.devices.items():
        with Store(DataDir(tmp_path / "data").store_path(name)) as store:
            last = store.last_reading_time()
        assert last is not None
        if name == "fridge-2":
            assert last <= broken_at, f"fridge-2 signed at {last} after its sensor failed"
        elif agent.kind == "refrigerator":
            assert last > cfg.start_ms + 2 * HOUR_MS, f"{name} stopped at {last}"
    doc = json.loads((tmp_path / "data" / "run-status.json").read_text())
    states = {d["name"]: (d["state"], d["error"]) for d in doc["devices"]}
    assert states["fridge-2"] == ("FAILED", line)
    assert {s for n, (s, _) in states.items() if n != "fridge-2"} == {"STOPPED"}


# --------------------------------------------------------------------------- the CLI, for real


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli.main", *args]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _status(data: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        _cli("status", "--data", str(data), "--json"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.subprocess
def test_status_json_reads_a_running_fleet_and_a_killed_one_as_stale(tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    err = (tmp_path / "run.err").open("w")
    proc = subprocess.Popen(
        _cli("run", "--devices", str(fleet), "--data", str(data), "--for", "30d"),
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=ENV,
    )
    try:
        path = data / "run-status.json"

        def running() -> bool:
            if not path.exists():
                return False
            doc = json.loads(path.read_text())
            return any(d["height"] is not None for d in doc["devices"])

        poll(running, 120, lambda: f"a run-status file with a sealed block in {data}")
        status, doc = _status(data)
        assert proc.poll() is None, "the run ended before status read it"
        (run_doc,) = doc["run"]
        assert run_doc["state"] == "running" and run_doc["pid"] == proc.pid
        assert run_doc["stopped"] is False and run_doc["converged"] is None
        runs = {d["name"]: d["run"] for d in doc["devices"]}
        assert set(runs) == {"fridge-1", "freezer-station", "freezer-hospital"}
        assert {r["state"] for r in runs.values()} == {"RUNNING"}
        assert all(r["trouble"] == ZERO for r in runs.values()), runs
        assert doc["not_converging"] == [] and doc["run_failed"] == []
        assert all(d["converging"] for d in run_doc["domains"]), run_doc["domains"]
        assert (status, doc["ok"]) == (0, True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        err.close()
    status, doc = _status(data)
    (run_doc,) = doc["run"]
    assert run_doc["state"] == "stale", run_doc
    assert {d["run"]["state"] for d in doc["devices"]} == {"RUNNING (stale)"}
    done = subprocess.run(
        _cli("status", "--data", str(data)), capture_output=True, text=True, env=ENV, timeout=120
    )
    assert f"STALE: process {proc.pid} is gone without a clean stop" in done.stdout, done.stdout


@pytest.mark.subprocess
def test_a_run_that_ends_unconverged_exits_3_with_one_line_naming_the_domain(
    tmp_path: Path,
) -> None:
    """Shard 1 of 2 runs alone first (its freezer's chain lands in the shared data dir); shard 0
    then runs without its partner: the blood chain cannot converge, since nobody serves the
    station's chain to fridge-1 and the hospital's freezer."""
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    args = ["run", "--devices", str(fleet), "--data", str(data), "--for", "1h", "--no-view"]
    args += ["--broker", "memory", "--settle", "1"]
    first = subprocess.run(
        _cli(*args, "--shard", "1/2"), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert first.returncode == 0, first.stderr
    second = subprocess.run(
        _cli(*args, "--shard", "0/2"), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert second.returncode == 3, second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("gossip did not converge within --settle 1 s: blood-chain ("), last
    assert "fridge-1 lacks freezer-station's head" in last, last
    assert "Traceback" not in second.stderr
    doc = json.loads((data / "run-status.shard-0-of-2.json").read_text())
    assert doc["stopped"] and doc["converged"] is False and doc["not_converged"] == ["blood-chain"]
    status, st = _status(data)
    assert status == 1 and st["not_converged"] == ["blood-chain"]
    states = {r["shard"][0]: r["state"] for r in st["run"]}
    assert states == {0: "stopped", 1: "stopped"}
    print(f"unconverged run: exit {second.returncode}: {last}")


def test_row_trouble_is_computed_from_its_counters() -> None:
    r = dataclasses.replace(row("a"), counters={"transport.send_failures": 2})
    assert r.trouble == {**ZERO, "send_failures": 2}


def test_a_muted_peer_and_an_excluded_holder_are_warned_once_each_naming_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """fridge-1 sends fridge-2 malformed messages it signed itself, twice, a few minutes apart:
    fridge-2 mutes it twice; fleet.log warns once (fridge-2, fridge-1, why), the second mute is
    at info. The live tick shows the mute, named, while it lasts. An exclusion of a holder goes
    through the replication driver the same way (the action the owner core emits)."""
    caplog.set_level(logging.INFO)
    cfg = load_fleet(SAMPLE_FLEET)
    ticks: dict[int, FleetSnapshot] = {}
    step = {"n": 0}

    def garbage_from_fridge_1() -> None:
        runner = hook.runner
        sender, victim = runner.agents["fridge-1"], runner.agents["fridge-2"]
        signer = KeySigner(sender.writer.key)
        rng = random.Random(step["n"])
        for _ in range(6):
            body = msgpack.packb([2, wire.SUMMARY, sender.device_id, rng.randbytes(8)])
            sender.transport.send_nowait(victim.device_id, auth.seal(body, signer))

    def each(_t: int) -> None:
        runner = hook.runner
        if not runner.ready:
            return
        step["n"] += 1
        if step["n"] in (3, 8):  # two mutes, the mute lasting 60 s (one step) each
            garbage_from_fridge_1()
        if step["n"] in (5, 9):
            holder = runner.agents["fridge-3"].device_id
            replicator = runner.agents["washer-1"].replicator
            assert replicator is not None
            tasks.append(asyncio.ensure_future(replicator.execute([RA.HolderExcluded(holder, 10)])))
        ticks[step["n"]] = runner.observe()

    tasks: list[asyncio.Future[None]] = []
    hook = Hook(each)
    hook.runner = None  # type: ignore[attr-defined]
    result, _ = run(cfg, tmp_path / "data", 0.25, hook)
    assert not result.failed
    fridge_1 = result.devices["fridge-1"].device_id
    fridge_3 = result.devices["fridge-3"].device_id
    mutes = [
        (r.levelname, getattr(r, "device", "-"), r.getMessage())
        for r in caplog.records
        if r.getMessage().startswith("muted peer")
    ]
    why = f"muted peer fridge-1 ({fridge_1}): malformed messages from it"
    assert mutes == [("WARNING", "fridge-2", why), ("INFO", "fridge-2", why)], mutes
    excluded = [
        (r.levelname, getattr(r, "device", "-"), r.getMessage())
        for r in caplog.records
        if "excluded: score" in r.getMessage()
    ]
    said = (
        f"holder fridge-3 ({fridge_3}) excluded: score 10 after failed audits, late or "
        "invalid answers"
    )
    assert excluded == [("WARNING", "washer-1", said), ("INFO", "washer-1", said)], excluded
    muted_rows = {n: next(d for d in t.devices if d.name == "fridge-2") for n, t in ticks.items()}
    # Sent before step 3, delivered in it: the tick before step 4 sees the mute.
    assert muted_rows[4].muted == (("fridge-1", "malformed"),), muted_rows[4]
    assert muted_rows[4].trouble["muted"] == 1 and muted_rows[4].trouble["invalid"] >= 5
    assert muted_rows[7].muted == (), "the mute expired after 60 s"
    washer = next(d for d in ticks[9].devices if d.name == "washer-1")
    assert washer.excluded == (("fridge-3", "score 10"),)
    lines = render(ticks[4], width=200, height=60)
    assert "! fridge-2 mutes fridge-1 (malformed)" in lines


@pytest.mark.mosquitto
def test_an_honest_fleet_over_mosquitto_has_no_trouble_and_converges(tmp_path: Path) -> None:
    """No false alarm over a real broker either: the sample fleet for two simulated hours on a
    Mosquitto the runner starts; the end's status file shows zero trouble for every device and
    every domain converged."""
    require_mosquitto()
    cfg = load_fleet(SAMPLE_FLEET)
    data = tmp_path / "data"
    result = run_fleet(
        cfg, data=data, broker="mosquitto", for_ms=2 * HOUR_MS, gossip=FAST_GOSSIP, view=False
    )
    assert result.converged and not result.failed, result.unconverged
    doc = json.loads((data / "run-status.json").read_text())
    troubled = {d["name"]: d["trouble"] for d in doc["devices"] if any(d["trouble"].values())}
    assert troubled == {}, troubled
    assert doc["trouble"] == ZERO and doc["converged"] is True
    assert all(d["converged"] for d in doc["domains"]) and len(doc["domains"]) == 5, doc["domains"]
    print(f"honest fleet over mosquitto: trouble {doc['trouble']}, domains {len(doc['domains'])}")


def test_a_run_stopped_by_a_signal_is_not_called_unconverged(tmp_path: Path) -> None:
    """Ctrl-C does not wait for the last heads to spread: the stop's status file calls no
    domain unconverged, and `status` stays ok."""
    cfg = load_fleet(SAMPLE_FLEET)

    def each(_t: int) -> None:
        runner = hook.runner
        if runner.ready and runner.data_clock.now_ms() >= cfg.start_ms + HOUR_MS:
            runner.request_stop()

    hook = Hook(each)
    hook.runner = None  # type: ignore[attr-defined]
    result, _ = run(cfg, tmp_path / "data", 5, hook)
    assert result.interrupted and result.unconverged == {}
    doc = json.loads((tmp_path / "data" / "run-status.json").read_text())
    assert doc["stopped"] and doc["interrupted"] and doc["not_converged"] == []
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["status", "--data", str(tmp_path / "data")])
    assert status == 0, out.getvalue()
    assert "run-status.json: stopped (interrupted)" in out.getvalue()
    assert "NOT CONVERG" not in out.getvalue()


def test_a_large_fleet_sums_trouble_per_kind() -> None:
    rows = [row(f"f-{i}") for i in range(30)]
    rows[7] = row("f-7", {"transport.send_failures": 5})
    rows[9] = row("f-9", {"gossip.unattributable": 2})
    lines = render(snap(rows), width=120)
    assert lines[3] == "trouble  unproven 2  send failures 5"
    header = lines[5].split()
    assert header[:3] == ["kind", "count", "trouble"], header
    assert lines[6].split()[:3] == ["fridge", "30", "7"], lines[6]
    healthy = render(snap([row(f"f-{i}") for i in range(30)]), width=120)
    assert "trouble" not in "\n".join(healthy)


def test_the_grace_before_not_converging_covers_a_backed_off_round() -> None:
    """Rounds that find nothing back off (4 x anti_entropy_ms by default): after a lost header
    the first round may come that much later, then three at the base interval."""
    assert stall_ms(5_000, 1_000, 3_000) == 21_000
    assert stall_ms(5_000, 1_000, 3_000, backoff=4) == 36_000
    assert stall_ms(1_000, 200, 1_000, backoff=4) == 15_000  # never under 15 s
