"""bench.fleet: the merge of shard reports (exact, on made-up observations), the partition of
the bench fleet over shards, and a tiny sharded fleet on a real Mosquitto, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from agent.device.runtime import DeviceAgent
from agent.fleet.runner import FleetRunner, RunOptions
from agent.gossip.actions import HeadersAccepted
from bench.fleet import (
    GOALS,
    QUICK,
    Plan,
    Recorder,
    ShardFailed,
    ShardReport,
    ShardSpec,
    Snapshot,
    _parser,
    _plan,
    fleet_config,
    merge,
    run_shard_processes,
)
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import REPO

FIGURES: dict[str, type | tuple[type, ...]] = {
    "devices": int,
    "shards": int,
    "keeps_up": bool,
    "header_latency_p50_ms": int,
    "header_latency_p99_ms": int,
    "header_misses": int,
    "header_pairs_needed": int,
    "header_arrivals": int,
    "cross_shard_arrivals": int,
    "headers_sealed": int,
    "dup_factor": (int, float),
    "cpu_ms_per_device_s": (int, float),
    "broker_cpu_ms_per_device_s": (int, float),
    "rss_kb_per_device": (int, float),
    "provision_s_per_device": (int, float),
    "loop_busy": (int, float),
    "loop_busy_per_shard": list,
    "window_skew_ms": int,
    "start_skew_ms": int,
    "send_failures": int,
    "group_syncs_per_s": (int, float),
    "group_sync_mean_ms": (int, float),
    "header_verdicts": dict,
    "per_shard": list,
}
# Quick-sized timing: warm-up 5 s (acceptances recorded from 2.5 s), grace 2 s.
PLAN = QUICK


def _snap(wall: float, net_ms: int, **counters: float) -> Snapshot:
    base: dict[str, float] = dict(
        cpu=0.0,
        loop_cpu=0.0,
        broker_cpu=0.0,
        rss_kb=0,
        offers=0,
        sent=0,
        received=0,
        dropped=0,
        send_failures=0,
        accepted=0,
        syncs=0,
        sync_s=0.0,
    )
    base.update(counters)
    return Snapshot(
        wall=wall,
        net_ms=net_ms,
        cpu=base["cpu"],
        loop_cpu=base["loop_cpu"],
        broker_cpu=base["broker_cpu"],
        rss_kb=int(base["rss_kb"]),
        offers=int(base["offers"]),
        sent=int(base["sent"]),
        received=int(base["received"]),
        dropped=int(base["dropped"]),
        send_failures=int(base["send_failures"]),
        verdicts={"header_accepted": int(base["accepted"])},
        syncs=int(base["syncs"]),
        sync_s=base["sync_s"],
    )


def _two_shards() -> list[ShardReport]:
    """One domain of 4 devices (fleet indices 0..3, ids d0..d3), devices 0 and 2 in shard 0,
    1 and 3 in shard 1, as the runner splits them. Shard 1 started last (4,000 ms): the window
    is [9,000, 14,000) (quick plan: 5 s of warm-up, 5 s of window). Three headers sealed in it;
    shard 1 snapshots its opening 300 ms late."""
    peers = 3
    shard0 = ShardReport(
        index=0,
        count=2,
        devices=2,
        start_ms=3_000,
        window=(9_000, 14_000),
        peers={"d0": peers, "d2": peers},
        sealed=(("d0", 5, 10_000), ("d2", 7, 10_500)),
        arrivals={
            # d1/4 sealed in shard 1, accepted by devices 0 and 2 here: cross-shard.
            "d1": (4, 0, 11_400, 4, 2, 11_500),
            # d0/5 accepted by device 2, same shard.
            "d0": (5, 2, 10_050),
            # d2/7 accepted by device 0; d3/2 was sealed before any window: ignored.
            "d2": (7, 0, 10_600),
            "d3": (2, 0, 9_000),
        },
        open=_snap(100.0, 9_000, cpu=1.0, loop_cpu=0.5, broker_cpu=1.0, rss_kb=10_300, offers=100),
        close=_snap(
            105.0,
            14_000,
            cpu=3.0,
            loop_cpu=2.5,
            broker_cpu=1.5,
            rss_kb=10_400,
            offers=105,
            sent=100,
            received=200,
            dropped=1,
            send_failures=2,
            accepted=90,
            syncs=100,
            sync_s=1.5,
        ),
        rss0_kb=10_000,
        recorder_kb=100,
        lag_ms=5.0,
        max_pending=2,
        aborted="",
        gc_pauses_ms=(10.0, 20.0),
        loop_lags_ms=(1.0, 3.0),
    )
    shard1 = ShardReport(
        index=1,
        count=2,
        devices=2,
        start_ms=4_000,
        window=(9_000, 14_000),
        peers={"d1": peers, "d3": peers},
        sealed=(("d1", 4, 11_000),),
        arrivals={
            # d0/5 at devices 1 (twice: the first counts) and 3; d2/7 at 1, and at 3 too late
            # (2,100 ms > the 2 s grace): a miss.
            "d0": (5, 1, 10_100, 5, 3, 10_200, 5, 1, 10_900),
            "d2": (7, 1, 10_800, 7, 3, 12_600),
            "d1": (4, 3, 11_050),
        },
        open=_snap(200.0, 9_300, rss_kb=20_100, offers=50),
        close=_snap(
            205.0,
            14_400,
            cpu=1.5,
            loop_cpu=3.0,
            broker_cpu=2.08,
            rss_kb=20_600,
            offers=54,
            sent=50,
            received=100,
            dropped=2,
            send_failures=1,
            accepted=4,
            syncs=50,
            sync_s=0.3,
        ),
        rss0_kb=20_000,
        recorder_kb=0,
        lag_ms=12.0,
        max_pending=3,
        aborted="",
        gc_pauses_ms=(5.0,),
        loop_lags_ms=(2.0,),
    )
    return [shard0, shard1]


def test_merge_counts_every_header_peer_pair_across_shards_once() -> None:
    out = merge(PLAN, 4, _two_shards(), provision_s=0.4)

    assert out["shards"] == 2
    assert out["headers_sealed"] == 3
    assert out["header_pairs_needed"] == 3 * 3  # sealed headers x domain peers
    # Every pair but d2/7 at device 3 (too late) arrived; the repeated acceptance counts once.
    assert out["header_arrivals"] == 8
    assert out["header_misses"] == 1
    assert out["header_miss_rate"] == round(1 / 9, 5)
    assert out["cross_shard_arrivals"] == 5  # d0/5 at 1 and 3, d2/7 at 1, d1/4 at 0 and 2
    # Latencies 50, 50, 100, 100, 200, 300, 400, 500: nearest rank.
    assert out["header_latency_p50_ms"] == 100
    assert out["header_latency_p99_ms"] == 500
    assert out["dup_factor"] == 1.0  # 5 + 4 offers for 9 needed deliveries


def test_merge_sums_costs_over_shards_and_takes_the_worst_shard() -> None:
    out = merge(PLAN, 4, _two_shards(), provision_s=0.4)

    # 2 s CPU over 5 s, plus 1.5 s over 5 s: 700 ms per wall second, for 4 devices.
    assert out["cpu_ms_per_device_s"] == 175.0
    assert out["loop_busy_per_shard"] == [0.4, 0.6]
    assert out["loop_busy"] == 0.6
    # Broker CPU from the first opening to the last closing: 1.08 s over 5.4 s, 4 devices.
    assert out["broker_cpu_ms_per_device_s"] == 50.0
    # RSS growth less the recorder's buffers: 300 + 600 KB for 4 devices.
    assert out["rss_kb_per_device"] == 225.0
    assert out["sent_per_s"] == 30 and out["received_per_s"] == 60 and out["dropped"] == 3
    assert out["send_failures"] == 3 and out["header_verdicts"] == {"header_accepted": 94}
    # Group syncs: 100 in 5 s and 50 in 5 s; 1.8 s of syncing over the 150.
    assert out["group_syncs_per_s"] == 30.0 and out["group_sync_mean_ms"] == 12.0
    assert out["gc_ms_per_s"] == 7.0 and out["gc_max_pause_ms"] == 20.0
    assert out["lag_ms"] == 12 and out["max_pending"] == 3
    assert out["window_skew_ms"] == 300 and out["start_skew_ms"] == 1_000
    assert out["provision_s_per_device"] == 0.1
    assert [s["start_ms"] for s in out["per_shard"]] == [0, 1_000]
    assert [s["window_open_ms"] for s in out["per_shard"]] == [0, 300]
    assert [s["cpu_ms_per_device_s"] for s in out["per_shard"]] == [200.0, 150.0]
    assert [s["rss_kb_per_device"] for s in out["per_shard"]] == [150.0, 300.0]
    assert [s["headers_sealed"] for s in out["per_shard"]] == [2, 1]
    # The one miss in 9 breaks the 0.1% rule, and only that rule.
    assert out["keeps_up"] is False
    assert out["why_not"] == ["1 header deliveries missed (11.11%)"]


def test_merge_names_the_shard_that_failed_and_leaves_window_figures_out() -> None:
    shard0, shard1 = _two_shards()
    broken = ShardReport.from_json(
        {**shard1.to_json(), "close": None, "aborted": "lag 16.0 s: stopped early"}
    )
    out = merge(PLAN, 4, [shard0, broken], provision_s=0.4)

    assert out["keeps_up"] is False
    assert out["why_not"] == [
        "shard 1: lag 16.0 s: stopped early",
        "the window never closed (shards [1])",
    ]
    assert out["cpu_ms_per_device_s"] is None and out["dup_factor"] is None
    assert out["per_shard"][1]["loop_busy"] is None
    assert out["per_shard"][0]["loop_busy"] == 0.4


def test_merge_refuses_shards_that_disagree_on_the_window() -> None:
    shard0, shard1 = _two_shards()
    other = ShardReport.from_json({**shard1.to_json(), "window": [9_250, 14_250]})
    out = merge(PLAN, 4, [shard0, other], provision_s=0.4)

    assert out["keeps_up"] is False
    assert "the shards disagree on the window: ['(9000, 14000)', '(9250, 14250)']" in out["why_not"]


def test_the_window_opens_a_warm_up_after_the_last_shard_started(tmp_path: Path) -> None:
    first = Recorder(PLAN, (0, 2), None, rendezvous=tmp_path)
    first.start_ms = 1_000
    (tmp_path / "start-0").write_text("1000")
    assert first._common_window() is None  # shard 1 has not started: still warming up
    (tmp_path / "start-1").write_text("3500")
    assert first._common_window() == (8_500, 13_500)  # 3,500 + 5 s warm-up, then 5 s
    first.window = first._common_window()
    assert first.stop_ms == 15_500  # the 2 s grace after the closing

    # Acceptances count from the opening on (receiver: the device's index in the fleet file).
    first._index = {"c1-d2": 1}
    device = cast(DeviceAgent, SimpleNamespace(name="c1-d2"))
    first.observe(device, HeadersAccepted("dX", 3, 4, b"h", "dY"), 8_499)
    first.observe(device, HeadersAccepted("dX", 5, 6, b"h", "dY"), 8_500)
    first.observe(device, HeadersAccepted("dX", 7, 7, b"h", "dY"), 14_000)
    assert list(first._arrivals["dX"]) == [5, 1, 8_500, 6, 1, 8_500, 7, 1, 14_000]

    with pytest.raises(ValueError, match="needs a rendezvous directory"):
        Recorder(PLAN, (1, 2), None)


def test_a_shard_report_survives_json_and_a_wrong_one_is_refused() -> None:
    report = _two_shards()[1]
    text = json.dumps(report.to_json())
    assert ShardReport.from_json(json.loads(text)) == report

    doc = report.to_json()
    del doc["sealed"]
    with pytest.raises(ValueError, match=r"expected the keys .* found"):
        ShardReport.from_json(doc)


def test_every_gossip_domain_of_the_bench_fleet_straddles_the_shards(tmp_path: Path) -> None:
    cfg = fleet_config(100, 32, seed=7)
    shards = 3
    local = [
        set(FleetRunner(cfg, RunOptions(data=tmp_path, shard=(i, shards))).local)
        for i in range(shards)
    ]
    assert sum(len(s) for s in local) == 100 and set().union(*local) == {
        d.name for d in cfg.devices
    }
    for site in {d.site for d in cfg.devices}:
        members = {d.name for d in cfg.devices if d.site == site}
        assert all(members & s for s in local), f"{site} is not in every shard"


def test_shards_default_to_the_cores_two_at_most_for_quick_and_one_for_a_profile() -> None:
    cores = os.cpu_count() or 1
    assert _plan(_parser().parse_args([])).shards == cores
    assert _plan(_parser().parse_args(["--quick"])).shards == min(2, cores)
    assert _plan(_parser().parse_args(["--shards", "3"])).shards == 3
    assert _plan(_parser().parse_args(["--profile", "p.out"])).shards == 1
    with pytest.raises(ValueError, match="--profile runs one shard"):
        _plan(_parser().parse_args(["--profile", "p.out", "--shards", "2"]))
    with pytest.raises(ValueError, match="shards >= 1"):
        Plan(shards=0)
    assert Plan(shards=4).shards_for(3) == 3


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_text():
                pids.append(int(proc.name))
        except OSError:
            continue  # gone meanwhile
    return pids


@pytest.mark.subprocess
def test_a_failed_shard_is_reported_with_its_stderr_and_no_shard_outlives_the_trial(
    tmp_path: Path,
) -> None:
    # Nothing listens on port 1: the shards exit at start-up, each with a traceback.
    specs = [
        ShardSpec(PLAN, 4, tmp_path / "data", "mqtt://127.0.0.1:1", None, (i, 2), tmp_path)
        for i in range(2)
    ]
    with pytest.raises(ShardFailed) as failed:
        run_shard_processes(specs, tmp_path / "refused", budget_s=60)
    assert failed.value.reasons, "no reason given"
    for reason in failed.value.reasons:
        assert reason.startswith(("shard 0: exit 1; stderr ends:", "shard 1: exit 1; stderr ends:"))
        assert "cannot connect to the MQTT broker at mqtt://127.0.0.1:1" in reason
    assert _processes_mentioning(str(tmp_path / "data")) == []

    # A budget they cannot meet: both are killed and named.
    with pytest.raises(ShardFailed) as late:
        run_shard_processes(specs, tmp_path / "late", budget_s=0.2)
    assert [r.split(";")[0] for r in late.value.reasons] == [
        "shard 0: no report in 0 s",
        "shard 1: no report in 0 s",
    ]
    assert _processes_mentioning(str(tmp_path / "data")) == []


@pytest.mark.mosquitto
@pytest.mark.subprocess
def test_a_tiny_fleet_on_two_shards_keeps_up_and_its_merged_figures_agree() -> None:
    require_mosquitto()
    # 8 devices in two domains of 4, as 2 shard processes (devices 0, 2, 4, 6 and 1, 3, 5, 7):
    # each device has 1 domain peer in its own shard and 2 in the other. Blocks every 2 s,
    # anti-entropy every second: one trial, which is also the fixed-size fleet.
    argv = "--json --start 8 --max 8 --fixed 8 --domain 4 --warmup 3 --window 3"
    argv += " --seal-age 2000 --anti-entropy 1000 --shards 2"
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

    for key, kind in FIGURES.items():
        assert isinstance(out[key], kind), f"{key}: {out.get(key)!r}"
        assert out["fixed_8"][key] == out[key], f"fixed_8 differs on {key}"
    assert out["keeps_up"] is True, out["why_not"]
    assert out["devices"] == 8 and out["shards"] == 2 and out["meta"]["shards"] == 2
    assert list(out["trials"]) == ["8"]

    # Every device sealed in the 3 s window, in both shards.
    shards = out["per_shard"]
    assert [s["devices"] for s in shards] == [4, 4]
    assert all(s["headers_sealed"] >= 1 for s in shards)
    assert sum(s["headers_sealed"] for s in shards) == out["headers_sealed"] >= 4
    # Needed pairs: each header to its 3 domain peers; all arrived within the 2 s grace, two
    # thirds of them in the other shard (through the broker).
    assert out["header_pairs_needed"] == 3 * out["headers_sealed"]
    assert out["header_misses"] == 0 and out["header_miss_rate"] == 0
    assert out["header_arrivals"] == out["header_pairs_needed"]
    assert 3 * out["cross_shard_arrivals"] == 2 * out["header_arrivals"]
    assert 0 <= out["header_latency_p50_ms"] <= out["header_latency_p99_ms"] < 2_000
    # Broadcast push: every domain member gets one copy of each header, none forwarded.
    assert 0.8 <= out["dup_factor"] <= 1.5
    assert out["loop_busy"] == max(out["loop_busy_per_shard"])
    assert len(out["loop_busy_per_shard"]) == 2
    assert out["cpu_ms_per_device_s"] > 0 and out["rss_kb_per_device"] >= 0
    assert 0 < out["provision_s_per_device"] < 1
    # Both shards opened the common window at their first step after it (4 steps a second).
    assert 0 <= out["window_skew_ms"] < 1_000
    assert out["start_skew_ms"] >= 0
    assert out["lag_ms"] < 1_000
    assert out["max_pending"] <= out["keeps_up_rule"]["max_pending"] == 4

    assert out["goals"] == GOALS
    assert out["meets_goals"]["devices"] is False  # 8 < 2,000
    assert set(out["meets_goals"]) == set(GOALS)
