"""bench.fleet end to end: a tiny fleet on a real Mosquitto, through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.fleet import GOALS
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import REPO

FIGURES = (
    "devices",
    "keeps_up",
    "header_latency_p50_ms",
    "header_latency_p99_ms",
    "header_misses",
    "dup_factor",
    "cpu_ms_per_device_s",
    "rss_kb_per_device",
    "provision_s_per_device",
)


@pytest.mark.mosquitto
@pytest.mark.subprocess
def test_a_tiny_fleet_keeps_up_and_reports_every_documented_figure() -> None:
    require_mosquitto()
    # 8 devices in two domains of 4, blocks every 2 s, anti-entropy every second: one trial,
    # which is also the fixed-size fleet.
    argv = "--json --start 8 --max 8 --fixed 8 --domain 4 --warmup 3 --window 3"
    argv += " --seal-age 2000 --anti-entropy 1000"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fleet", *argv.split()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    for key in FIGURES:
        assert key in out, f"missing {key}"
        assert key in out["fixed_8"], f"fixed_8 lacks {key}"
    assert out["keeps_up"] is True, out["why_not"]
    assert out["devices"] == 8
    assert list(out["trials"]) == ["8"]
    assert out["fixed_8"] == out["trials"]["8"]

    # Every device sealed in the 3 s window (blocks every ~3 s) and every header reached the
    # other 3 members of its domain, within the 2 s grace.
    assert out["headers_sealed"] >= 4
    assert out["header_misses"] == 0 and out["header_miss_rate"] == 0
    assert 0 <= out["header_latency_p50_ms"] <= out["header_latency_p99_ms"] < 2_000
    # Fanout 3 in a domain of 4: the sealer pushes to all 3 peers, each accepting peer forwards
    # once to the one peer left, so each needed delivery arrives about twice.
    assert 1.0 <= out["dup_factor"] <= 4.0
    assert out["cpu_ms_per_device_s"] > 0
    assert out["rss_kb_per_device"] >= 0
    assert 0 < out["provision_s_per_device"] < 1
    assert out["lag_ms"] < 1_000
    assert out["max_pending"] <= out["keeps_up_rule"]["max_pending"] == 4

    assert out["goals"] == GOALS
    assert out["meets_goals"]["devices"] is False  # 8 < 2,000
    assert set(out["meets_goals"]) == set(GOALS)
