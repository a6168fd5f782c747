"""bench.agent: the quick run as a real process, its one JSON object typed and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.agent import GOALS
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import REPO

TYPED: dict[str, type | tuple[type, ...]] = {
    "rss_mb_max": (int, float),
    "rss_mb_mean": (int, float),
    "rss_mb_peak": (int, float),
    "cpu_pct_mean": (int, float),
    "cpu_pct_p95": (int, float),
    "cpu_pct_max": (int, float),
    "readings_per_s": (int, float),
    "window_s": int,
    "warmup_s": int,
    "exit_code": int,
    "goals": dict,
    "meets_goals": bool,
    "meta": dict,
}


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.mosquitto
@pytest.mark.pty
def test_quick_run_prints_every_figure_typed_and_consistent() -> None:
    require_mosquitto()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.agent", "--json", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = proc.stdout.strip().splitlines()
    doc = json.loads(line)
    for key, kind in TYPED.items():
        assert isinstance(doc.get(key), kind), f"{key}: expected {kind}, found {doc.get(key)!r}"
    assert set(doc) == set(TYPED)
    assert doc["exit_code"] == 0  # SIGINT stopped the agent cleanly
    # The probe is polled every 2 s (two readings) and a card comes and goes every 10 s.
    assert 0.5 <= doc["readings_per_s"] <= 3
    assert 0 < doc["rss_mb_mean"] <= doc["rss_mb_max"] <= doc["rss_mb_peak"]
    assert (
        0 <= doc["cpu_pct_mean"] <= doc["cpu_pct_max"] and doc["cpu_pct_p95"] <= doc["cpu_pct_max"]
    )
    assert doc["goals"] == GOALS
    meets = (
        doc["rss_mb_max"] <= GOALS["rss_mb_max"] and doc["cpu_pct_mean"] <= GOALS["cpu_pct_mean"]
    )
    assert doc["meets_goals"] == meets
