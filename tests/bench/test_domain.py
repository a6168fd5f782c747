"""bench.domain: the flat domain against the mesh, its one JSON object typed and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.agent.runner_helpers import REPO


@pytest.mark.slow
@pytest.mark.subprocess
def test_quick_run_compares_flat_and_mesh() -> None:
    """48 members (a mesh of 12 neighbours each): every shape delivers every header once, and
    the mesh follows fewer presences and receives fewer messages at the start than flat."""
    args = ["--json", "--quick", "--sizes", "48", "--sealers", "8", "--window", "5"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.domain", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    runs = {r["shape"]: r for r in out["runs"]}
    assert set(runs) == {"flat", "mesh", "mesh-broadcast"}
    for r in runs.values():
        steady = r["steady"]
        assert r["n"] == 48
        assert steady["missed"] == 0
        assert steady["headers_sealed"] == 8
        assert steady["deliveries_needed"] == 8 * 47
        assert 1.0 <= steady["dup_factor"] <= 1.5
        assert isinstance(steady["header_p99_ms"], int)
        assert steady["recv_msgs_per_dev_s"] > 0
    flat, mesh = runs["flat"], runs["mesh-broadcast"]
    assert flat["watched_presences_per_dev"] == 47
    assert mesh["watched_presences_per_dev"] <= 12
    assert mesh["start"]["messages_received"] < flat["start"]["messages_received"] / 2
    assert runs["mesh"]["tree_depth"] == 6
