"""bench.writer: the write path's cost per device-second, its one JSON object typed and
consistent (figures are not judged: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.agent.runner_helpers import REPO


@pytest.mark.slow
@pytest.mark.subprocess
def test_quick_run_reports_the_write_path_per_device_second() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.writer", "--json", "--quick", "--devices", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["devices"] == 20 and out["window_s"] == 20
    cpu, loop, store = (
        out[k] for k in ("cpu_ms_per_device_s", "loop_ms_per_device_s", "store_ms_per_device_s")
    )
    assert cpu > 0 and loop > 0 and store > 0
    assert abs(cpu - (loop + store)) < 0.01
    # Every device signed one reading per simulated second, and sealed a block every 10 s.
    seconds = out["warmup_s"] + out["window_s"]
    assert 20 * (seconds - 10) <= out["readings"] <= 20 * (seconds + 1)
    assert out["blocks"] >= 20 * (seconds // 10 - 1)
    assert out["group_syncs"] > 0
    assert 0 < out["ed25519_sign_us"] < 10_000
