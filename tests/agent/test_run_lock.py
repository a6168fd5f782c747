"""One process per device (agent/fleet/runlock.py). A second `edgefleet run` on a data dir whose
fleet is running was not refused: it ran to the end and said "gossip converged" while the first
run's devices failed on their stores' unique sequence numbers. Now the second is refused in one
line (exit 2), a device another process runs fails alone, and the lock goes with the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.agent.runner_helpers import write_fleet

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _run_args(fleet: Path, data: Path, *extra: str) -> list[str]:
    return ["run", "--devices", str(fleet), "--data", str(data), "--broker", "memory", *extra]


def _wait_running(data: Path, proc: subprocess.Popen[str], devices: int) -> None:
    """Until the run's status file shows every device RUNNING (a state, not a time)."""
    deadline = time.monotonic() + 120  # a loaded machine
    status = data / "run-status.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            doc = json.loads(status.read_text())
        except (OSError, ValueError):
            doc = {}
        states = [d.get("state") for d in doc.get("devices", [])]
        if doc.get("pid") == proc.pid and states.count("RUNNING") == devices:
            return
        time.sleep(0.1)
    raise AssertionError(f"the first run did not start: {status.read_text()}")


@pytest.mark.subprocess
def test_a_second_run_on_a_running_data_dir_is_refused_and_runs_after_it_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    assert main([*_run_args(fleet, data, "--for", "10m", "--no-view")]) == 0
    names = sorted(p.name for p in (data / "devices").iterdir())
    assert len(names) >= 2
    cmd = [sys.executable, "-m", "agent.cli.main", *_run_args(fleet, data, "--no-view")]
    first = subprocess.Popen(
        [*cmd, "--speed", "1"], env=ENV, cwd=ROOT, text=True, stderr=subprocess.PIPE
    )
    try:
        _wait_running(data, first, len(names))
        capsys.readouterr()
        heads = _heads(data)
        assert main([*_run_args(fleet, data, "--for", "10m", "--no-view")]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"edgefleet: error: {data}: every device is in use by another edgefleet run on this "
            f"data dir: stop that run first (`edgefleet status --data {data}` shows it)\n"
        ), err
        one = ["--device", names[0]]
        assert main([*_run_args(fleet, data, "--for", "10m", "--no-view", *one)]) == 2
        assert "its device is in use by another edgefleet run" in capsys.readouterr().err
        assert json.loads((data / "run-status.json").read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert "failed" not in first_err, first_err
    # Nothing the refused runs did reached the stores: the running fleet's chains went on alone.
    assert all(_heads(data)[n] >= heads[n] for n in names)
    # The lock went with the process.
    assert main([*_run_args(fleet, data, "--for", "10m", "--no-view")]) == 0


def test_a_device_another_process_runs_fails_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    assert main([*_run_args(fleet, data, "--for", "10m", "--no-view")]) == 0
    names = sorted(p.name for p in (data / "devices").iterdir())
    held = data / "devices" / names[0]
    holder = subprocess.Popen(  # another process holding the device, as a run of it does
        [sys.executable, "-c", _HOLD, str(held)],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        capsys.readouterr()
        status = main([*_run_args(fleet, data, "--for", "10m", "--no-view")])
        err = capsys.readouterr().err
    finally:
        holder.communicate("", timeout=60)
    assert status == 1, err
    assert f"1 device(s) failed: {names[0]}" in err, err
    assert f"{names[0]}: {held}: in use by another edgefleet run on this data dir" in err, err
    run = json.loads((data / "run-status.json").read_text())
    states = {d["name"]: d["state"] for d in run["devices"]}
    assert states == {n: "FAILED" if n == names[0] else "STOPPED" for n in names}, states


_HOLD = """
import sys
from pathlib import Path
from agent.fleet.runlock import lock_device
fd = lock_device(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def _heads(data: Path) -> dict[str, int]:
    from ledger.store import Store

    out = {}
    for ddir in (data / "devices").iterdir():
        with Store(ddir / "store.sqlite") as store:
            head = store.head()
        out[ddir.name] = -1 if head is None else head.header.height
    return out
