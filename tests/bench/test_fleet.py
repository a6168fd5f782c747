"""bench.fleet: the merge of shard reports (exact, on made-up observations), the partition of
the bench fleet over shards, and a tiny sharded fleet on a real Mosquitto, end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from agent.device.runtime import DeviceAgent
from agent.fleet.runner import FleetRunner, RunOptions
from agent.gossip.actions import HeadersAccepted
from agent.protocol import auth
from bench.fleet import (
    GAUGES,
    GOALS,
    QUICK,
    QUICK_SHAPES,
    SHAPE_DEVICES,
    SHAPES,
    Plan,
    Recorder,
    ShardFailed,
    ShardReport,
    ShardSpec,
    Snapshot,
    _parser,
    _plan,
    _shapes,
    fleet_config,
    lag_cause,
    measure,
    merge,
    message_crypto_off,
    run_shard_processes,
    shape_plans,
)
from ledger.identity import SigningKey
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
    "machine_busy": (int, float),
    "process_busy": (int, float),
    "window_skew_ms": int,
    "start_skew_ms": int,
    "send_failures": int,
    "group_syncs_per_s": (int, float),
    "group_sync_mean_ms": (int, float),
    "header_verdicts": dict,
    "per_shard": list,
    "header_losses": dict,
    "backlogs": dict,
    "core_counters": dict,
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
    # The shards' CPU, every thread: 0.7 of a core, as a share of the machine's cores.
    assert out["machine_busy"] == round(0.7 / (os.cpu_count() or 1), 3)
    assert out["process_busy"] == 0.4  # the busier shard: 2 s of CPU over 5 s
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
def test_the_quick_run_compares_the_shapes_on_two_shards_and_its_figures_agree() -> None:
    require_mosquitto()
    # --quick: 16 devices per shape (domains of 4, 8 and 16; households of 2 in streets of 8)
    # as 2 shard processes (even devices in shard 0, odd in shard 1), blocks every 3 s,
    # anti-entropy every second; then the first shape again without the messages'
    # authentication cryptography.
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fleet", "--json", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    for key, kind in FIGURES.items():
        assert isinstance(out[key], kind), f"{key}: {out.get(key)!r}"
        assert out["fixed_16"][key] == out[key], f"fixed_16 differs on {key}"
    assert out["keeps_up"] is True, out["why_not"]
    assert out["devices"] == 16 and out["shards"] == 2 and out["meta"]["shards"] == 2
    assert list(out["trials"]) == ["16"]

    # The first shape: 4 domains of 4, every device sealed in the 5 s window, in both shards.
    shards = out["per_shard"]
    assert [s["devices"] for s in shards] == [8, 8]
    assert all(s["headers_sealed"] >= 1 for s in shards)
    assert sum(s["headers_sealed"] for s in shards) == out["headers_sealed"] >= 16
    # Needed pairs: each header to its 3 domain peers (1 in its shard, 2 in the other); all
    # arrived within the grace.
    assert out["header_pairs_needed"] == 3 * out["headers_sealed"]
    assert out["header_misses"] == 0 and out["header_miss_rate"] == 0
    assert out["header_arrivals"] == out["header_pairs_needed"]
    assert 3 * out["cross_shard_arrivals"] == 2 * out["header_arrivals"]
    assert 0 <= out["header_latency_p50_ms"] <= out["header_latency_p99_ms"] < 1_000
    # Broadcast push: every domain member gets one copy of each header, none forwarded.
    assert 0.8 <= out["dup_factor"] <= 1.5
    assert out["loop_busy"] == max(out["loop_busy_per_shard"])
    assert out["cpu_ms_per_device_s"] > 0 and out["rss_kb_per_device"] >= 0
    assert 0 < out["provision_s_per_device"] < 1
    assert 0 <= out["window_skew_ms"] < 1_000 and out["start_skew_ms"] >= 0
    assert out["lag_ms"] < 1_000
    assert out["max_pending"] <= out["keeps_up_rule"]["max_pending"] == 6

    # The accounting: every stage whole. Each header was handed to its connection; each
    # broadcast was routed once per connection subscribed to its domain (a connection per
    # device in fleets this small: 4 per domain).
    losses = out["header_losses"]
    assert losses["stage"] == ""
    assert losses["announce"]["not_announced"] == 0
    # Routed in the window per broadcast sent in it: a broadcast at an edge of the 5 s window
    # may be routed on the other side of it.
    assert 0.8 <= losses["broker"]["routed_share"] <= 1.2
    # A broadcast is counted when its connection took it, which may be after the window closed
    # for a header sealed at its end (CI counted 16 broadcasts for 19 headers): the same edge.
    expected = losses["broker"]["domain_messages_expected"]
    assert expected % 4 == 0 and expected >= 0.75 * 4 * out["headers_sealed"]
    assert losses["pairs"] == {
        "needed": out["header_pairs_needed"],
        "in_time": out["header_arrivals"],
        "late": 0,
        "never": 0,
        "late_p50_ms": None,
        "late_p99_ms": None,
    }
    assert set(out["backlogs"]) == set(GAUGES)
    assert out["broker_dropping_notices"] == 0 and out["send_failures"] == 0

    # Every shape side by side, each kept up with 16 devices.
    assert set(out["shapes"]) == {
        "domain_4",
        "domain_8",
        "domain_16",
        "households_2_in_streets_8",
    }
    for name, row in out["shapes_table"].items():
        assert row["keeps_up"] is True and row["devices"] == 16, (name, row)
        assert row["sent_per_device_s"] > 0 and row["received_per_device_s"] > 0
        assert out["shapes"][name]["devices"] == 16
    # A bigger domain: each broadcast reaches more members.
    table = out["shapes_table"]
    assert table["domain_16"]["received_per_device_s"] > table["domain_4"]["received_per_device_s"]

    # Authentication's cost: the same 16 devices without the signatures and their checks.
    cost = out["auth_cost"]
    assert cost["devices"] == 16 and cost["keeps_up_without"] is True
    assert cost["cpu_ms_per_device_s_with"] == out["cpu_ms_per_device_s"]
    assert cost["cpu_ms_per_device_s_without"] > 0

    # Issue 14's goals: 5,000 devices in domains of 32 and one domain of 1,000; these small
    # shapes have no size to reach, only to keep up at some size.
    assert SHAPE_DEVICES == {"domain_32": 5_000, "domain_1000": 1_000}
    assert out["goals"] == {**GOALS, "devices": 1}
    assert out["meets_goals"]["devices"] is True
    assert set(out["meets_goals"]) == set(GOALS)
    for row in table.values():
        assert set(row["meets_goals"]) == set(GOALS)


def _with_losses(
    reports: list[ShardReport], *, routed: int, announced: bool = True
) -> list[ShardReport]:
    """The two shards of ``_two_shards``, each with one connection on domain "cell": the three
    sealed headers broadcast once each (two in shard 0, one in shard 1), so 3 x 2 = 6 domain
    messages should be routed; each shard routed ``routed`` of them in the window."""
    out = []
    sent = {0: 2, 1: 1}
    for r in reports:
        assert r.open is not None and r.close is not None
        open_ = dataclasses.replace(r.open, broadcasts={"cell": 0}, routed={"domain": 0})
        close = dataclasses.replace(
            r.close,
            broadcasts={"cell": sent[r.index]},
            routed={"domain": routed},
            announced=sent[r.index] if announced else 0,
        )
        announces = tuple((d, h, t + 5) for d, h, t in r.sealed) if announced else ()
        out.append(
            dataclasses.replace(
                r, open=open_, close=close, announces=announces, subscribers={"cell": 1}
            )
        )
    return out


def test_the_losses_follow_the_header_deliveries_stage_by_stage() -> None:
    out = merge(PLAN, 4, _with_losses(_two_shards(), routed=3), provision_s=0.4)
    losses = out["header_losses"]
    assert losses["announce"] == {
        "headers": 3,
        "not_announced": 0,
        "not_announced_pairs": 0,
        "handover_p50_ms": 5,
        "handover_p99_ms": 5,
    }
    assert losses["broker"] == {
        "domain_messages_expected": 6,
        "domain_messages_routed": 6,
        "routed_share": 1.0,
    }
    assert losses["cores"] == {"offered": 9, "offered_share": 1.0}
    # d2/7 at device 3 came 2,100 ms after the seal: late (the grace is 2 s), not lost.
    assert losses["pairs"] == {
        "needed": 9,
        "in_time": 8,
        "late": 1,
        "never": 0,
        "late_p50_ms": 2_100,
        "late_p99_ms": 2_100,
    }
    # 1 in 9 missed (over 10%), every stage before acceptance whole: it came, but late.
    assert losses["stage"].startswith("accepted late: 1 pairs after the grace (p50 2100 ms)")


def test_the_stage_that_lost_the_deliveries_is_named() -> None:
    def stage(reports: list[ShardReport]) -> str:
        return str(merge(PLAN, 4, reports, provision_s=0.4)["header_losses"]["stage"])

    # Nothing arrived at all (the arrivals are taken away in each case below).
    bare = [dataclasses.replace(r, arrivals={}) for r in _two_shards()]
    assert stage(_with_losses(bare, routed=0, announced=False)).startswith(
        "not sent: 3 of 3 headers were not handed to the connection"
    )
    assert stage(_with_losses(bare, routed=1)).startswith(
        "sent, not received: the links routed 33% of the domain messages sent"
    )
    starved = [
        dataclasses.replace(r, close=dataclasses.replace(r.close, offers=r.open.offers))
        for r in _with_losses(bare, routed=3)
        if r.open is not None and r.close is not None
    ]
    assert stage(starved).startswith(
        "received, not offered: the gossip cores were offered 0% of the needed"
    )
    # Where they wait: a domain of 1,000 had its receive queues empty at every sample and up
    # to 2 MB unread in the hubs' sockets; the hint named the queues only.
    assert "see the inbox and rx backlogs" in stage(starved)
    assert stage(_with_losses(bare, routed=3)).startswith(
        "received, not accepted: 9 pairs never accepted by the stop"
    )


def test_a_trial_that_fell_behind_says_why() -> None:
    def cause(**figures: object) -> str:
        base: dict[str, object] = {
            "lag_ms": 16_000,
            "loop_busy": 0.6,
            "loop_lag_p50_ms": 20.0,
            "gc_ms_per_s": 30.0,
            "gc_max_pause_ms": 120.0,
            "backlogs": {"store_jobs": {"max": 3}, "send_waiters": {"max": 0}},
        }
        return lag_cause(PLAN, base | figures)

    assert cause(lag_ms=PLAN.lag_ms - 1) == ""  # kept pace: nothing to explain
    assert cause(loop_busy=0.95).startswith("CPU: the busiest event loop was 95% busy")
    stores = cause(backlogs={"store_jobs": {"max": 451}, "send_waiters": {"max": 0}})
    assert stores.startswith("the store threads: up to 451 store jobs waited")
    sends = cause(backlogs={"store_jobs": {"max": 0}, "send_waiters": {"max": 1382}})
    assert sends.startswith("the send window: up to 1382 senders waited for a slot")
    late = cause(loop_lag_p50_ms=222.7)
    assert late.startswith("the event loop ran late (p50 222.7 ms) with CPU to spare (60% busy)")
    # The loops 60% busy, but the shards' store threads and collectors took the machine's
    # other cores (bench.fleet, 4,000 devices in domains of 32: 89% of 2 cores): no CPU to spare.
    saturated = cause(
        machine_busy=0.89,
        loop_lag_p50_ms=297.2,
        backlogs={"store_jobs": {"max": 0}, "send_waiters": {"max": 3933}},
    )
    assert saturated.startswith("CPU: the shards used 89% of the machine's cores (the busiest")
    assert "the send window: up to 3933" in saturated and "CPU to spare" not in saturated
    # One shard on a 2-core machine (bench.fleet --profile, 1,500 devices): the machine half
    # idle, the loop 76% busy, but the process used 1.06 cores: no CPU to spare either.
    one = cause(machine_busy=0.53, process_busy=1.06, loop_busy=0.76, loop_lag_p50_ms=239.8)
    assert one.startswith("CPU: the busiest shard's process used 1.06 of a core (its event loop")
    assert "CPU to spare" not in one
    assert cause() == "no backlog stands out: see per_shard and the backlogs"
    both = cause(loop_busy=0.95, backlogs={"store_jobs": {"max": 60}, "send_waiters": {}})
    assert both.count("; ") == 1  # every cause that stands out, CPU first


def test_the_mixed_shape_puts_households_of_two_inside_streets() -> None:
    cfg = fleet_config(21, 8, seed=7, household=2)
    assert len(cfg.devices) == 21
    streets: dict[str, list[str]] = {}
    homes: dict[str, list[str]] = {}
    for d in cfg.devices:
        home, street = d.domains
        assert home == d.site and street.startswith("street-")
        streets.setdefault(street, []).append(d.name)
        homes.setdefault(home, []).append(d.name)
    assert sorted(len(v) for v in streets.values()) == [5, 8, 8]
    # 4 + 4 + 3 homes; every home holds 2 devices but the last of the short street.
    assert sorted(len(v) for v in homes.values()) == [1] + [2] * 10
    assert {d.kind for d in cfg.devices} == {"refrigerator", "washing_machine"}
    plain = fleet_config(21, 8, seed=7)
    assert all(len(d.domains) == 1 for d in plain.devices)
    with pytest.raises(ValueError, match="household < domain_size"):
        Plan(domain_size=4, household=4)


def test_shapes_come_from_the_command_line_and_each_gets_its_own_search() -> None:
    def shapes(*argv: str) -> tuple[tuple[int, int, int], ...]:
        return _shapes(_parser().parse_args(list(argv)))

    assert shapes() == SHAPES
    assert shapes("--quick") == QUICK_SHAPES
    assert shapes("--domain", "4", "--start", "8") == ((4, 0, 8),)
    assert shapes("--domain", "128", "--household", "2") == ((128, 2, 250),)
    assert shapes("--shapes", "32, 2x128,1000") == ((32, 0, 250), (128, 2, 256), (1000, 0, 1000))
    with pytest.raises(ValueError, match="expected N or HxN"):
        shapes("--shapes", "32,big")
    with pytest.raises(ValueError, match="not both"):
        shapes("--domain", "4", "--shapes", "32")

    plans = shape_plans(Plan(), SHAPES)
    assert [p.shape for p in plans] == [
        "domain_32",
        "domain_256",
        "domain_1000",
        "households_2_in_streets_128",
    ]
    # A domain of 1,000 is searched from 1,000 and never below one whole domain; only the
    # first shape keeps the fixed-size fleet of 500.
    big = plans[2]
    assert (big.start, big.min_devices, big.fixed) == (1_000, 1_000, 1_000)
    assert (plans[0].start, plans[0].fixed) == (250, 500)


def test_the_benchmark_can_leave_out_the_message_authentication_cryptography() -> None:
    key = SigningKey.generate()
    signed = key.sign(auth.MESSAGE, b"body")
    with message_crypto_off():
        assert key.sign(auth.MESSAGE, b"body") == bytes(64)
        key.public.verify(auth.MESSAGE, b"body", bytes(64), "message")  # passes unchecked
        record = key.sign(b"edgefleet/v1/other\x00", b"body")
        assert record != bytes(64)
        with pytest.raises(Exception, match="signature"):
            key.public.verify(b"edgefleet/v1/other\x00", b"body", bytes(64), "record")
    assert key.sign(auth.MESSAGE, b"body") == signed  # restored
    with pytest.raises(Exception, match="signature"):
        key.public.verify(auth.MESSAGE, b"body", bytes(64), "message")


def test_each_shape_is_judged_against_its_own_goal() -> None:
    """Issue 14's goals: domains of 32 must keep up with 5,000 devices, one domain of 1,000
    with its 1,000 (a p99 below 2 s, a dup factor of at most 1.5); 2,500 devices in domains of
    32 keeping up is not the goal met."""

    def trial(up_to: int, p99: int) -> Callable[[int], dict[str, Any]]:
        def run(n: int) -> dict[str, Any]:
            ok = n <= up_to
            return {
                "keeps_up": ok,
                "why_not": [] if ok else ["lag"],
                "dup_factor": 1.0,
                "header_latency_p99_ms": p99,
            }

        return run

    plan = Plan(start=2_500, max_devices=5_000, min_devices=500, fixed=2_500, bisect=0)
    small = measure(plan, trial(2_500, 900), lambda _: None)
    assert small["devices"] == 2_500 and small["goals"]["devices"] == 5_000
    assert small["meets_goals"] == {
        "devices": False,
        "dup_factor": True,
        "header_latency_p99_ms": True,
    }
    big = measure(plan, trial(5_000, 900), lambda _: None)
    assert all(big["meets_goals"].values())
    street = dataclasses.replace(plan, domain_size=1_000, start=1_000, min_devices=1_000)
    slow = measure(street, trial(1_000, 2_400), lambda _: None)
    assert slow["goals"]["devices"] == 1_000
    assert slow["meets_goals"]["devices"] is True
    assert slow["meets_goals"]["header_latency_p99_ms"] is False  # 2.4 s: not below 2 s
