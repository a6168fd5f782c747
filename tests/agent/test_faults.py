"""The fault matrix of a running fleet, on real parts: real key files and SQLite stores damaged
on disk, a size-limited tmpfs, a real process stopped by SIGTERM.

What must hold (issue 15): a device whose key, store or disk fails is stopped with one line
naming the device, the file and the fix (live view, fleet.log, the run's summary and exit
status), and every other device runs on; a full disk ends the run with that line and nothing
committed lost; a damaged stored block is reported and never served nor signed over.

Each test reports its figure in the form of ../shared/RELIABILITY.md ("lost = 0 of N over K
faults") and asserts it. In-process runs are fully simulated (``simulated_network``: the
in-memory network and every timer on the simulation's clock, no sleeps).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.devices import FleetConfig, load_fleet
from agent.fleet.datadir import DataDir
from agent.fleet.runner import (
    FleetError,
    FleetRunner,
    RunOptions,
    RunResult,
    install_signal_handlers,
)
from agent.fleet.sources import SampleSource, simulation
from agent.fleet.view import FAULT_LINES, DeviceRow, FleetSnapshot, render
from ledger import keyfile
from ledger.chain import ChainWriter
from ledger.store import Store
from tests.agent.runner_helpers import HOUR_MS, REPO, SAMPLE_FLEET, verify
from tests.conftest import FigureRecorder

VICTIM = "fridge-2"
STORE_VICTIM = "washer-1"
RUNNING_VICTIM = "fridge-3"  # a reading every 30 s: it always holds pending readings


@pytest.fixture(scope="module")
def cfg() -> FleetConfig:
    return load_fleet(SAMPLE_FLEET)


@pytest.fixture(scope="module")
def ran(cfg: FleetConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample fleet (9 devices) after one simulated hour: keys, stores, blocks."""
    data = tmp_path_factory.mktemp("ran") / "data"
    simulate(cfg, data, HOUR_MS)
    return data


@pytest.fixture(scope="module")
def clean(cfg: FleetConfig, ran: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Readings per device after one more hour without a fault (the simulation is seeded:
    a device that ran on must hold exactly these)."""
    data = shutil.copytree(ran, tmp_path_factory.mktemp("clean") / "data")
    simulate(cfg, data, HOUR_MS)
    return readings(data)


def simulate(
    cfg: FleetConfig,
    data: Path,
    for_ms: int,
    source: Callable[[FleetConfig, int], SampleSource] | None = None,
    hook: Callable[[FleetRunner], None] | None = None,
) -> RunResult:
    runner = FleetRunner(
        cfg,
        RunOptions(data=data, for_ms=for_ms, simulated_network=True, view=False, source=source),
    )
    if hook is not None:
        hook(runner)
    return asyncio.run(runner.run())


def readings(data: Path) -> dict[str, int]:
    """Own readings (sealed and pending) each device's store holds."""
    out = {}
    for name in DataDir(data).device_names():
        db = sqlite3.connect(f"file:{DataDir(data).store_path(name)}?mode=ro", uri=True)
        try:
            out[name] = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        except sqlite3.DatabaseError:
            out[name] = -1  # the damaged store itself
        finally:
            db.close()
    return out


# --- the faults ----------------------------------------------------------------------------------
def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def key_mode_0644(data: Path) -> str:
    key = DataDir(data).device(VICTIM) / "device.key"
    key.chmod(0o644)
    return str(key)


def key_wrong_passphrase(data: Path) -> str:
    """The key re-encrypted under a passphrase the fleet does not have."""
    key = DataDir(data).device(VICTIM) / "device.key"
    pw = DataDir(data).fleet_passphrase()
    assert pw is not None
    sk, role = keyfile.read(key, pw)
    key.unlink()
    keyfile.write(key, sk, b"not the fleet's passphrase", role, keyfile.FAST)
    return str(key)


def key_missing(data: Path) -> str:
    """The key file gone (its certificate kept): it was the whole run's error, exit 2."""
    ddir = DataDir(data).device(VICTIM)
    (ddir / "device.key").unlink()
    return str(ddir)


def key_corrupted(data: Path) -> str:
    key = DataDir(data).device(VICTIM) / "device.key"
    flip(key, len(key.read_bytes()) // 2)
    return str(key)


def store_header_overwritten(data: Path) -> str:
    store = DataDir(data).store_path(STORE_VICTIM)
    raw = bytearray(store.read_bytes())
    raw[:16] = b"not a database!!"
    store.write_bytes(bytes(raw))
    return str(store)


def pending_reading_flipped(data: Path) -> str:
    """A reading signed and made durable as pending (as before a crash), then one bit of its
    signature flipped on disk."""
    dd = DataDir(data)
    pw = dd.fleet_passphrase()
    assert pw is not None
    key, _ = keyfile.read(dd.device(STORE_VICTIM) / "device.key", pw)
    with Store(dd.store_path(STORE_VICTIM)) as store:
        writer = ChainWriter(store, key, key.public.device_id)
        last = store.last_reading_time() or 0
        writer.record(last + 1, "washer.temp_mc", 20_000)
        writer.flush()
        seq = store.last_seq()
    db = sqlite3.connect(dd.store_path(STORE_VICTIM))
    (wire,) = db.execute("SELECT wire FROM readings WHERE seq=?", (seq,)).fetchone()
    bad = bytearray(wire)
    bad[-5] ^= 0x01
    db.execute("UPDATE readings SET wire=? WHERE seq=?", (bytes(bad), seq))
    db.commit()
    db.close()
    return str(dd.store_path(STORE_VICTIM))


START_FAULTS = {
    "key mode 0644": (key_mode_0644, VICTIM, "chmod 600"),
    "key wrong passphrase": (key_wrong_passphrase, VICTIM, "passphrase"),
    "key corrupted": (key_corrupted, VICTIM, "restore it from a backup"),
    "key missing": (key_missing, VICTIM, "restore the key from its backup"),
    "store header overwritten": (store_header_overwritten, STORE_VICTIM, "edgefleet restore"),
    "pending reading flipped": (pending_reading_flipped, STORE_VICTIM, "edgefleet restore"),
}


@pytest.mark.parametrize("fault", list(START_FAULTS))
def test_a_damaged_device_fails_alone_at_start(
    fault: str,
    cfg: FleetConfig,
    ran: Path,
    clean: dict[str, int],
    tmp_path: Path,
    figure: FigureRecorder,
) -> None:
    """One device with a damaged key or store: that device fails with one line naming it, the
    file and the fix; the other 8 run the next hour and lose nothing (verify)."""
    data = shutil.copytree(ran, tmp_path / "data")
    damage, victim, fix = START_FAULTS[fault]
    path = damage(data)
    before = readings(data)
    result = simulate(cfg, data, HOUR_MS)
    assert list(result.failed) == [victim], f"{fault}: failed {result.failed}"
    line = result.failed[victim]
    assert line.startswith(f"{victim}: ") and path in line and fix in line, line
    assert "\n" not in line
    # Shown in the view: the device's row says FAILED, the line is under the table (whole on a
    # wide terminal; cut at 80 columns, where fleet.log and the run's summary have it whole).
    wide = "\n".join(render(result.snapshot(), width=400, height=100))
    assert f"{victim} FAILED" in wide and f"! FAILED {line}" in wide
    assert f"! FAILED {victim}: " in "\n".join(render(result.snapshot()))
    after = readings(data)
    others = [n for n in after if n != victim]
    lost = sum(max(0, clean[n] - after[n]) for n in others)
    report = verify(data)
    broken = [r["name"] for r in report.doc["reports"] if r["name"] != victim and r["errors"]]
    figure(
        "damaged key or store at start",
        f"{fault}: {len(others)} other devices ran on (+"
        f"{sum(after[n] - before[n] for n in others)} readings); lost = {lost} of "
        f"{sum(clean[n] for n in others)} readings of the others over 1 fault",
    )
    assert len(others) == 8 and lost == 0, (clean, after)
    assert not broken, report.failures()


def test_run_exit_status_and_summary_name_the_failed_device(ran: Path, tmp_path: Path) -> None:
    """`edgefleet run --for`: exit status 1, the summary names the failed device, and
    fleet.log holds one error line naming it."""
    data = shutil.copytree(ran, tmp_path / "data")
    path = key_mode_0644(data)
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        status = main(
            [
                "run",
                "--devices",
                str(SAMPLE_FLEET),
                "--data",
                str(data),
                "--for",
                "30m",
                "--broker",
                "memory",
                "--settle",
                "0",
                "--no-view",
            ]
        )
    assert status == 1, err.getvalue()
    text = err.getvalue()
    assert f"1 device(s) failed: {VICTIM}" in text, text
    assert "Traceback" not in text
    logged = [
        line
        for line in (data / "fleet.log").read_text().splitlines()
        if VICTIM in line and path in line
    ]
    assert len(logged) == 1 and " ERROR " in logged[0], logged


# --- at run time ---------------------------------------------------------------------------------
class Tamper:
    """A sample source that, at simulated ``at_ms``, flips a pending reading of ``victim`` in
    its SQLite file through a second connection (the device's own connection is open): the
    device's next seal finds it changed since it was signed."""

    def __init__(self, victim: str, at_ms: int) -> None:
        self.victim = victim
        self.at_ms = at_ms
        self.data: Path | None = None
        self.done = False

    def source(self, cfg: FleetConfig, step_ms: int) -> SampleSource:
        inner = simulation(cfg, step_ms)
        tamper = self

        class Source:
            def __getattr__(self, name: str) -> object:
                return getattr(inner, name)

            def step(self, target: int) -> object:
                if not tamper.done and target >= tamper.at_ms:
                    tamper.done = tamper.flip_pending()
                return inner.step(target)

        return Source()  # type: ignore[return-value]

    def flip_pending(self) -> bool:
        assert self.data is not None
        db = sqlite3.connect(DataDir(self.data).store_path(self.victim))
        try:
            row = db.execute(
                "SELECT seq, wire FROM readings WHERE seq > "
                "(SELECT coalesce(max(last_seq), -1) FROM blocks) ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return False
            bad = bytearray(row[1])
            bad[-5] ^= 0x01
            db.execute("UPDATE readings SET wire=? WHERE seq=?", (bytes(bad), row[0]))
            db.commit()
            return True
        finally:
            db.close()


def test_a_device_damaged_while_running_fails_alone(
    cfg: FleetConfig, ran: Path, clean: dict[str, int], tmp_path: Path, figure: FigureRecorder
) -> None:
    """A pending reading flipped on disk while the fleet runs: that device fails at its next
    seal (never signs over it), the other 8 run on to the end of the run."""
    data = shutil.copytree(ran, tmp_path / "data")
    tamper = Tamper(RUNNING_VICTIM, cfg.start_ms + HOUR_MS + 20 * 60_000)
    tamper.data = data
    before = readings(data)
    result = simulate(cfg, data, HOUR_MS, source=tamper.source)
    assert tamper.done
    assert list(result.failed) == [RUNNING_VICTIM], result.failed
    line = result.failed[RUNNING_VICTIM]
    assert "changed on disk since it was signed" in line and str(data) in line, line
    after = readings(data)
    others = [n for n in after if n != RUNNING_VICTIM]
    lost = sum(max(0, clean[n] - after[n]) for n in others)
    report = verify(data)
    bad = [r["name"] for r in report.doc["reports"] if r["errors"]]
    figure(
        "pending reading flipped while running",
        f"pending reading flipped at run time: {RUNNING_VICTIM} failed at its next seal, "
        f"{len(others)} others ran to the end (+{sum(after[n] - before[n] for n in others)} "
        f"readings); lost = {lost} of {sum(clean[n] for n in others)} readings of the others "
        "over 1 fault",
    )
    assert lost == 0, (clean, after)
    assert bad == [RUNNING_VICTIM], report.failures()


# --- a full disk ---------------------------------------------------------------------------------
def mount_tmpfs(directory: Path, size: str) -> bool:
    """A size-limited tmpfs at ``directory`` (root only; False where it cannot be mounted)."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
    )
    return done.returncode == 0


def tmpfs(where: Path, size: str) -> Iterator[Path]:
    if not mount_tmpfs(where, size):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: room for the sample fleet's keys and a few hundred readings."""
    yield from tmpfs(tmp_path / "disk", "3m")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 100 kB tmpfs: not even room for the sample fleet's keys."""
    yield from tmpfs(tmp_path / "disk", "100k")


def test_a_disk_full_before_the_keys_are_written_is_one_line(tiny_disk: Path) -> None:
    """Enrolling the fleet on a full disk: one line naming the data dir and the fix, exit 2."""
    data = tiny_disk / "data"
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        status = main(
            [
                *("run", "--devices", str(SAMPLE_FLEET), "--data", str(data)),
                *("--for", "1h", "--broker", "memory", "--no-view"),
            ]
        )
    lines = err.getvalue().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert str(data) in lines[0] and "No space left on device" in lines[0], lines
    assert "free space" in lines[0]


def test_a_full_disk_stops_the_writing_devices_and_loses_nothing_committed(
    cfg: FleetConfig, small_disk: Path, figure: FigureRecorder
) -> None:
    """The sample fleet on a 3 MB tmpfs, on the real-time path (store threads, group sync),
    until the disk is full: each device stops at its first failed write with one line naming
    its store and the full disk, the run ends by itself, and every reading a device
    acknowledged (durable) is in its store, every committed block intact (verify)."""
    data = small_disk / "data"
    result = asyncio.run(
        FleetRunner(
            cfg,
            RunOptions(data=data, broker="memory", for_ms=7 * 24 * HOUR_MS, settle_s=0, view=False),
        ).run()
    )
    assert result.failed, "the disk never filled"
    for name, line in result.failed.items():
        store = str(DataDir(data).store_path(name))
        assert line.startswith(f"{name}: disk full: {store}") and "free space" in line, line
    stored = readings(data)
    acked = {n: a.stats.readings for n, a in result.devices.items()}
    lost = sum(max(0, acked[n] - stored[n]) for n in acked)
    report = verify(data)
    figure(
        "disk full (tmpfs)",
        f"disk full (3 MB tmpfs): {len(result.failed)} of {len(acked)} devices stopped at their "
        f"first failed write after {result.sim_end_ms - result.sim_start_ms} simulated ms; "
        f"lost = {lost} of {sum(acked.values())} acknowledged readings over "
        f"{len(result.failed)} faults; {sum(stored.values())} stored, verify "
        f"{'ok' if report.ok else 'FAILED'}",
    )
    assert lost == 0, (acked, stored)
    assert sum(acked.values()) > 0
    assert report.ok, report.failures()


def run_cli(data: Path, *args: str, broker: str = "memory") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "agent.cli.main", "run", "--devices", str(SAMPLE_FLEET)),
            *("--data", str(data), "--broker", broker, "--no-view", *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def finish(proc: subprocess.Popen[str], by_itself_s: float, after_term_s: float) -> float:
    """Wait for the process to end by itself; else SIGTERM it and wait again. Returns the
    seconds it took after SIGTERM (0: it ended by itself); fails if it outlives both."""
    try:
        proc.wait(by_itself_s)
        return 0.0
    except subprocess.TimeoutExpired:
        pass
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(after_term_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running {after_term_s} s after SIGTERM")
    return time.monotonic() - t0


@pytest.mark.subprocess
def test_a_full_disk_ends_the_run_with_one_line_per_device(
    small_disk: Path, figure: FigureRecorder
) -> None:
    """`edgefleet run` (no --for, the embedded broker, as in issue 15) on a full disk: it ends
    by itself (or on SIGTERM, within a few seconds), exit status 1, one line per device naming
    its store, no traceback, no "Task exception was never retrieved", no "cannot rollback";
    verify finds every committed block intact."""
    data = small_disk / "data"
    proc = run_cli(data, "--settle", "1", broker="embedded")
    after_term = finish(proc, by_itself_s=30, after_term_s=10)
    _, err = proc.communicate()
    assert proc.returncode == 1, err
    for bad in ("Traceback", "never retrieved", "cannot rollback", "Logging error"):
        assert bad not in err, err
    failed = [line for line in err.splitlines() if ": disk full: " in line]
    assert failed and all(str(data) in line for line in failed), err
    report = verify(data)
    how = "by itself" if not after_term else f"{after_term:.1f} s after SIGTERM"
    figure(
        "disk full, whole run (CLI)",
        f"run on a full disk: ended {how}, exit 1, {len(failed)} devices stopped with one "
        f"line each; verify: {report.readings} stored readings, every committed block "
        f"{'intact' if report.ok else 'NOT intact'}",
    )
    assert report.ok, report.failures()


@pytest.mark.subprocess
def test_sigterm_stops_a_running_fleet_within_seconds(
    tmp_path: Path, figure: FigureRecorder
) -> None:
    """A fleet running with no end (--speed max, no --for): SIGTERM stops it cleanly within a
    few seconds, exit status 0, and what it committed verifies."""
    data = tmp_path / "data"
    proc = run_cli(data)
    log = data / "fleet.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # a real process: poll its log
        if log.exists() and log.read_text().count(" started as ") >= 9:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    after_term = finish(proc, by_itself_s=0.5, after_term_s=10)
    _, err = proc.communicate()
    figure(
        "SIGTERM of a running fleet",
        f"SIGTERM: a running 9-device fleet stopped {after_term:.1f} s after it",
    )
    assert proc.returncode == 0 and 0 < after_term < 10, err
    assert verify(data).ok


# --- corruption at run time ----------------------------------------------------------------------
class OnStep:
    """A sample source that calls ``before(target)`` before each simulation step (the runner's
    devices exist by then)."""

    def __init__(self, before: Callable[[int], None]) -> None:
        self.before = before

    def source(self, cfg: FleetConfig, step_ms: int) -> SampleSource:
        inner = simulation(cfg, step_ms)
        before = self.before

        class Source:
            def __getattr__(self, name: str) -> object:
                return getattr(inner, name)

            def step(self, target: int) -> object:
                before(target)
                return inner.step(target)

        return Source()  # type: ignore[return-value]


def flip_sealed_reading(store: Path, height: int) -> None:
    """One bit of the first reading of own block ``height``, through a second connection."""
    db = sqlite3.connect(store)
    try:
        (seq,) = db.execute("SELECT first_seq FROM blocks WHERE height=?", (height,)).fetchone()
        (wire,) = db.execute("SELECT wire FROM readings WHERE seq=?", (seq,)).fetchone()
        bad = bytearray(wire)
        bad[len(bad) // 2] ^= 0x01
        db.execute("UPDATE readings SET wire=? WHERE seq=?", (bytes(bad), seq))
        db.commit()
    finally:
        db.close()


def test_a_sealed_block_damaged_on_disk_is_reported_and_never_served(
    cfg: FleetConfig, ran: Path, tmp_path: Path, figure: FigureRecorder
) -> None:
    """A bit of a sealed reading flipped in a running device's SQLite file (a second
    connection) right after the block is sealed, while its domain peers want its bodies: the
    peers' pull of that block gets no body (the device checks each body against its header
    before sending), the damage is reported once (device, height, file), the device never
    signs a block over it (its next seal fails it), and no peer holds a damaged copy."""
    from agent.device.bodies import body_damage
    from agent.gossip import inputs as I
    from agent.gossip.tuning import GossipConfig
    from ledger.block import decode_block

    data = shutil.copytree(ran, tmp_path / "data")
    victim = "fridge-1"
    store_path = DataDir(data).store_path(victim)
    flipped: list[int] = []

    def on_sealed(agent: object, event: object, now: int) -> None:
        if isinstance(event, I.OwnBlockSealed) and not flipped:
            height = event.block.header.header.height
            flip_sealed_reading(store_path, height)
            flipped.append(height)

    runner_box: list[FleetRunner] = []

    def attach(target: int) -> None:
        agent = runner_box[0].agents.get(victim)  # None while the models fast-forward
        if agent is not None and on_sealed not in agent.observers:
            agent.observers.append(on_sealed)

    victim_id = {"id": ""}
    gossip = GossipConfig(want_bodies=lambda dev, h: dev == victim_id["id"])
    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            for_ms=HOUR_MS,
            simulated_network=True,
            view=False,
            gossip=gossip,
            source=OnStep(attach).source,
        ),
    )
    runner_box.append(runner)
    victim_id["id"] = json.loads((data / "fleet.json").read_text())["devices"][victim]
    result = asyncio.run(runner.run())
    assert flipped, "the victim sealed nothing"
    height = flipped[0]
    agent = result.devices[victim]
    damaged = agent.ctx.damaged
    assert list(damaged) == [(victim_id["id"], height)], damaged
    line = damaged[(victim_id["id"], height)]
    assert line.startswith(f"{victim}: block {height} of ") and str(store_path) in line, line
    assert f"! DAMAGED {line}" in "\n".join(render(result.snapshot(), width=400, height=100))
    # Never signed over: the next seal found the block damaged and failed the device.
    assert victim in result.failed and "refusing to extend the chain" in result.failed[victim]
    with Store(store_path) as store:
        head = store.head()
        assert head is not None and head.header.height == height
    # No peer holds a damaged body of it (pulled bodies and replicas alike).
    held = damaged_held = 0
    for name in DataDir(data).device_names():
        if name == victim:
            continue
        with Store(DataDir(data).store_path(name)) as store:
            wire = store.replica_wire(victim_id["id"], height)
        if wire is not None:
            held += 1
            block = decode_block(wire)
            damaged_held += body_damage(block.header, [r.wire for r in block.readings]) is not None
    report = verify(data)
    others_bad = [r["name"] for r in report.doc["reports"] if r["errors"] and r["name"] != victim]
    served = agent.stats.counters["damaged_blocks"]
    figure(
        "stored bit flip",
        f"sealed reading flipped on disk at height {height}: reported {served} time(s), "
        f"withheld from the pull, signed over 0 times; {held} peers hold an intact copy, "
        f"damaged copies held = {damaged_held}; verify flags {victim} only",
    )
    assert damaged_held == 0 and served == 1
    assert not others_bad, report.failures()
    assert report.report(victim)["errors"], "verify must still find the damage"


def test_a_stop_that_does_not_finish_in_time_is_forced(
    cfg: FleetConfig, ran: Path, tmp_path: Path, figure: FigureRecorder
) -> None:
    """SIGTERM to this very process mid-run, with no grace for the clean stop
    (``install_signal_handlers(grace_s=0)``): the run is cancelled where it is and ends with
    one FleetError line; every block committed before verifies."""
    data = shutil.copytree(ran, tmp_path / "data")
    sent: list[int] = []

    def kill_once(target: int) -> None:
        if not sent and target >= cfg.start_ms + HOUR_MS + 10 * 60_000:
            sent.append(target)
            os.kill(os.getpid(), signal.SIGTERM)

    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            for_ms=HOUR_MS,
            simulated_network=True,
            view=False,
            source=OnStep(kill_once).source,
        ),
    )

    async def main() -> RunResult:
        remove = install_signal_handlers(runner, grace_s=0)
        try:
            return await runner.run()
        finally:
            remove()

    with pytest.raises(FleetError, match="stopped without waiting for the devices"):
        asyncio.run(main())
    assert sent and runner.forced
    report = verify(data)
    before = verify(ran)
    lost = sum(
        max(0, r["readings"] - report.report(r["name"])["readings"]) for r in before.doc["reports"]
    )
    figure(
        "stop that does not finish",
        f"forced stop mid-run: lost = {lost} of {sum(r['readings'] for r in before.doc['reports'])}"
        f" sealed readings over 1 forced stop (verify {'ok' if report.ok else 'FAILED'})",
    )
    assert lost == 0 and report.ok, report.failures()


@pytest.mark.subprocess
def test_two_sigterms_end_a_running_fleet_without_a_traceback(
    tmp_path: Path, figure: FigureRecorder
) -> None:
    """Two SIGTERMs in a row: the fleet ends within seconds, without a traceback, and what
    was committed verifies. (The kernel may merge the two: the clean stop then ends it, exit 0;
    otherwise the second cancels the run where it is, one line, exit 1. The forced path itself
    is shown in process by test_a_stop_that_does_not_finish_in_time_is_forced.)"""
    data = tmp_path / "data"
    proc = run_cli(data)
    log = data / "fleet.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # a real process: poll its log
        if log.exists() and log.read_text().count(" started as ") >= 9:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still running 10 s after two SIGTERMs")
    took = time.monotonic() - t0
    figure("two SIGTERMs", f"two SIGTERMs: the fleet stopped {took:.1f} s after them; verify ok")
    assert proc.returncode in (0, 1), err  # 0: the clean stop won the race
    assert "Traceback" not in err, err
    if proc.returncode == 1:
        assert "stopped without waiting for the devices" in err, err
    assert verify(data).ok


def test_the_view_bounds_its_fault_lines() -> None:
    """300 devices failed on one full disk: the view shows a FAILED count per kind and at most
    FAULT_LINES lines under the table, the last saying how many more fleet.log holds."""
    rows = tuple(
        DeviceRow(
            f"fridge-{i:03d}",
            "refrigerator",
            "home",
            None,
            0,
            0,
            (),
            (),
            0,
            0,
            0,
            failure=f"fridge-{i:03d}: disk full: /data/devices/fridge-{i:03d}/store.sqlite",
        )
        for i in range(300)
    )
    lines = render(FleetSnapshot(0, 1.0, 1.0, rows))
    faults = [line for line in lines if line.startswith("! ")]
    assert len(faults) == FAULT_LINES, faults
    assert faults[-1] == f"! ... and {300 - FAULT_LINES + 1} more (fleet.log has every one)"
    header = next(line for line in lines if line.startswith("kind ")).split()
    table = next(line for line in lines if line.startswith("fridge ")).split()
    assert table[header.index("fail")] == "300", table  # the per-kind table's failed column
