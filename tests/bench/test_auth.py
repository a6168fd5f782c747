"""bench.auth: ``--json --quick`` prints one JSON object whose figures are consistent, and the
honest run it measures converges with not one message refused (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from bench import auth as bench_auth


def test_quick_run_prints_consistent_figures_and_honest_traffic_is_never_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_auth.main(["--json", "--quick"]) == 0
    out = json.loads(capsys.readouterr().out)
    run = out["run"]
    assert run["converged"] is True
    assert run["unattributable"] == 0  # every honest message authenticates
    assert run["cpu_us_per_device_s"] > run["without_auth_cpu_us_per_device_s"] > 0
    assert run["ratio"] > 1
    assert {"ANNOUNCE", "SUMMARY"} <= set(out["traffic"])
    assert out["traffic"]["ANNOUNCE"]["unicast_share"] == 0.0  # own headers go by broadcast
    options = out["options"]
    assert out["chosen"] in options
    every = options["ed25519_every_message"]["auth_cpu_us_per_device_s"]
    chosen = options[out["chosen"]]["auth_cpu_us_per_device_s"]
    assert 0 < chosen < every  # leaving own ANNOUNCEs unsigned saves their verifications
    for size in bench_auth.MESSAGE_SIZES:
        costs = out["primitives"][str(size)]
        assert costs["hmac_sha256_us"] > 0 and costs["ed25519_verify_us"] > 0
