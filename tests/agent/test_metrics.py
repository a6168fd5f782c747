"""`run --metrics`: a real fleet scraped over real HTTP, parsed, compared with the run and its
stores, and linted by promtool; the shard ports; the Grafana dashboard and the docs name only
metrics the collector exports.

promtool comes with Debian's ``prometheus`` package. Without it the lint is skipped locally and
fails when CI is set, so CI never silently skips it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agent.cli.main import main
from agent.config.devices import FleetConfig, load_fleet
from agent.fleet import metrics
from agent.fleet.metrics import BY_NAME, FAMILIES, Listen, serve_metrics
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.fleet.view import DeviceRow, FleetSnapshot
from agent.transport.brokers import MosquittoBroker
from tests.agent.runner_helpers import (
    FAST_GOSSIP,
    HOUR_MS,
    REPO,
    SAMPLE_FLEET,
    verify,
    write_fleet,
)

DASHBOARD = REPO / "deploy" / "grafana" / "edgefleet.json"
DOCS = REPO / "docs" / "DEPLOY.md"
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def require_promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must lint the metrics")
        pytest.skip(msg)
    return path


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def samples(text: str) -> dict[str, list[Sample]]:
    """Family name (as exposed, counters with _total) -> its samples."""
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = list(fam.samples)
    return out


def by_device(fams: dict[str, list[Sample]], name: str, **match: str) -> dict[str, float]:
    """One series per device (the samples of ``name`` whose other labels are ``match``)."""
    picked = [
        s
        for s in fams[name]
        if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
    ]
    out = {s.labels["device"]: s.value for s in picked}
    assert len(out) == len(picked), f"{name}{match}: several series per device: {picked}"
    return out


async def run_scraped(runner: FleetRunner) -> tuple[RunResult, str, str, str]:
    """Run the fleet with metrics on an ephemeral port (as `edgefleet run` does) and scrape
    once it has stopped, before the server stops."""
    server = await serve_metrics(Listen("127.0.0.1", 0), runner.snapshot, runner.opts.shard)
    assert server is not None
    try:
        result = await runner.run()
        url = server.url
        content_type, text = await asyncio.to_thread(get, url)
    finally:
        await server.stop()
    return result, url, content_type, text


@pytest.fixture(scope="module")
def sample_fleet() -> FleetConfig:
    return load_fleet(SAMPLE_FLEET)


@pytest.fixture(scope="module")
def scraped(
    sample_fleet: FleetConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, Path, str, str, str]:
    """The sample fleet (replication, private households, a blood chain) for two simulated
    hours on the in-memory network, scraped at its end."""
    data = tmp_path_factory.mktemp("metrics") / "data"
    opts = RunOptions(data=data, for_ms=2 * HOUR_MS, simulated_network=True, view=False)
    result, url, content_type, text = asyncio.run(run_scraped(FleetRunner(sample_fleet, opts)))
    return result, data, url, content_type, text


def test_the_scrape_exports_every_family_and_agrees_with_the_stores(
    scraped: tuple[RunResult, Path, str, str, str],
) -> None:
    result, data, _, content_type, text = scraped
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    fams = samples(text)
    ours = {n for n in fams if n.startswith("edgefleet_")}
    assert ours == set(BY_NAME), f"missing {set(BY_NAME) - ours}, unexpected {ours - set(BY_NAME)}"
    assert "process_cpu_seconds_total" in fams, "the stock process collector is registered"

    report = verify(data)
    assert report.ok, report.failures()
    signed = by_device(fams, "edgefleet_readings_signed_total")
    sealed = by_device(fams, "edgefleet_blocks_sealed_total")
    chain = by_device(fams, "edgefleet_chain_blocks")
    pending = by_device(fams, "edgefleet_readings_pending")
    assert set(signed) == set(result.devices), f"devices: {sorted(signed)}"
    for name, agent in result.devices.items():
        stored = report.report(name)
        assert signed[name] == stored["readings"] + stored["pending"] == agent.stats.readings, (
            f"{name}: scraped {signed[name]} readings, stores hold {stored['readings']} sealed "
            f"+ {stored['pending']} pending, the agent counted {agent.stats.readings}"
        )
        assert sealed[name] == chain[name] == stored["blocks"], (
            f"{name}: sealed {sealed[name]}, chain {chain[name]}, stored {stored['blocks']}"
        )
        assert pending[name] == stored["pending"] == 0, f"{name}: pending {pending[name]}"
    assert sum(signed.values()) == result.samples > 0, f"samples {result.samples}"


def test_gossip_transport_and_replication_figures_are_the_devices_own(
    scraped: tuple[RunResult, Path, str, str, str],
) -> None:
    result, data, _, _, text = scraped
    fams = samples(text)
    report = verify(data)
    accepted = by_device(fams, "edgefleet_gossip_headers_accepted_total")
    sent = by_device(fams, "edgefleet_transport_sent_total")
    full = by_device(fams, "edgefleet_replication_blocks_full_copies")
    tracked = by_device(fams, "edgefleet_replication_blocks")
    passed = by_device(fams, "edgefleet_replication_audits_total", result="passed")
    snap = {d.name: d for d in result.snapshot().devices}
    for name, agent in result.devices.items():
        stored = report.report(name)
        # A fresh fleet: every peer header a store holds was accepted from gossip once.
        assert accepted[name] == stored["peer_headers"] > 0, (
            f"{name}: accepted {accepted[name]}, stored peer headers {stored['peer_headers']}"
        )
        assert sent[name] == agent.transport.stats().sent > 0, name
        row = snap[name]
        assert row.replicated is not None, f"{name}: replication is on in the sample fleet"
        assert (full[name], tracked[name]) == row.replicated, name
        assert tracked[name] == stored["blocks"], f"{name}: tracks {tracked[name]} blocks"
    assert sum(full.values()) > 0 and sum(passed.values()) > 0, (full, passed)
    lag = by_device(fams, "edgefleet_chain_lag_blocks")
    for name, agent in result.devices.items():  # the naive reference: every pair of devices
        own = agent.writer.store.head()
        assert own is not None, name
        held = [
            -1 if (h := p.node.head(agent.device_id)) is None else h.header.height
            for p in result.devices.values()
            if agent.device_id in p.peer_ids
        ]
        assert lag[name] == max(0, own.header.height - min(held, default=own.header.height))
    forks = [s for s in fams["edgefleet_gossip_forks_total"] if s.value]
    assert forks == [], f"an honest fleet proved forks: {forks}"
    refused = {s.labels["reason"] for s in fams["edgefleet_gossip_headers_refused_total"]}
    assert "accepted" not in refused, refused


def test_temperatures_are_celsius_and_private_households_are_withheld(
    scraped: tuple[RunResult, Path, str, str, str],
) -> None:
    result, _, _, _, text = scraped
    fams = samples(text)
    temps = {
        (s.labels["device"], s.labels["sensor"]): s.value
        for s in fams["edgefleet_temperature_celsius"]
    }
    alarms = by_device(fams, "edgefleet_alarms_active")
    private = {n for n, a in result.devices.items() if a.writer.owner_x25519 is not None}
    assert private == {f"{k}-{i}" for k in ("fridge", "washer") for i in (1, 2, 3)}, private
    for name, agent in result.devices.items():
        want = {(name, s.removesuffix("_mc")): mc / 1000 for s, mc in agent.temperatures()}
        got = {k: v for k, v in temps.items() if k[0] == name}
        if name in private:
            assert got == {} and name not in alarms, f"{name}: private readings exported"
        else:
            assert got == pytest.approx(want), f"{name}: scraped {got}, latest {want}"
            assert alarms[name] == len(agent.stats.alarms), name
    assert any(-40 < v < -15 for (n, _), v in temps.items() if n.startswith("freezer")), temps


def test_promtool_accepts_the_scrape(
    scraped: tuple[RunResult, Path, str, str, str],
) -> None:
    promtool = require_promtool()
    text = scraped[-1]
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"promtool: {done.stdout}{done.stderr}"
    assert done.stdout == done.stderr == "", f"promtool warned: {done.stdout}{done.stderr}"


def test_the_server_stops_with_the_run(
    scraped: tuple[RunResult, Path, str, str, str],
) -> None:
    url = scraped[2]
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        get(url)


def test_a_real_time_run_reports_group_syncs_and_event_loop_lag(tmp_path: Path) -> None:
    """Not simulated (the wall clock, the in-memory broker): stores commit through the group
    sync, and the lag probe wakes up on the real loop."""
    cfg = load_fleet(write_fleet(tmp_path))
    opts = RunOptions(data=tmp_path / "data", broker="memory", for_ms=HOUR_MS, view=False)
    runner = FleetRunner(cfg, opts)
    result, _, _, text = asyncio.run(run_scraped(runner))
    fams = samples(text)
    group = runner.group_sync
    assert group is not None and group.syncs > 0
    sync = {s.name: s.value for s in fams["edgefleet_group_sync_duration_seconds"]}
    assert sync["edgefleet_group_sync_duration_seconds_count"] == group.syncs, sync
    assert sync["edgefleet_group_sync_duration_seconds_sum"] == pytest.approx(group.sync_s)
    (stores,) = fams["edgefleet_group_sync_stores_total"]
    assert stores.value == group.synced_stores >= group.syncs, stores
    lag = {s.labels.get("le", s.name): s.value for s in fams["edgefleet_event_loop_lag_seconds"]}
    assert lag["+Inf"] == lag["edgefleet_event_loop_lag_seconds_count"] > 0, lag
    assert result.samples == sum(by_device(fams, "edgefleet_readings_signed_total").values())


@pytest.mark.slow
@pytest.mark.mosquitto
def test_a_fleet_on_a_real_mosquitto_is_scraped_while_it_runs(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Scrapes from another thread while the fleet runs over MQTT: every one parses and passes
    promtool, counters never go back, and the last agrees with the stores."""
    promtool = require_promtool()
    cfg = load_fleet(write_fleet(tmp_path))
    data = tmp_path / "data"
    opts = RunOptions(
        data=data,
        broker=mosquitto.endpoint.url,
        for_ms=6 * HOUR_MS,
        speed=3600.0,  # a simulated hour per second: a few seconds of wall time
        view=False,
        gossip=FAST_GOSSIP,
        settle_s=30.0,
    )
    runner = FleetRunner(cfg, opts)

    async def scenario() -> tuple[RunResult, list[str]]:
        server = await serve_metrics(Listen("127.0.0.1", 0), runner.snapshot, opts.shard)
        assert server is not None
        texts = []
        try:
            run = asyncio.create_task(runner.run())
            while not run.done():
                texts.append((await asyncio.to_thread(get, server.url))[1])
                await asyncio.wait({run}, timeout=0.5)
            result = await run
            texts.append((await asyncio.to_thread(get, server.url))[1])
        finally:
            await server.stop()
        return result, texts

    result, texts = asyncio.run(scenario())
    assert len(texts) >= 3, f"{len(texts)} scrapes while the fleet ran"
    totals = [sum(by_device(samples(t), "edgefleet_readings_signed_total").values()) for t in texts]
    assert totals == sorted(totals) and totals[-1] > totals[0], f"readings signed: {totals}"
    for text in texts[:: max(1, len(texts) // 3)] + texts[-1:]:
        done = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and done.stdout == done.stderr == "", done.stdout + done.stderr
    fams = samples(texts[-1])
    report = verify(data)
    assert report.ok, report.failures()
    signed = by_device(fams, "edgefleet_readings_signed_total")
    assert signed == {n: float(report.report(n)["readings"]) for n in result.devices}, signed
    sync = {s.name: s.value for s in fams["edgefleet_group_sync_duration_seconds"]}
    assert sync["edgefleet_group_sync_duration_seconds_count"] > 0, sync
    online = by_device(fams, "edgefleet_peers_online")
    assert sum(online.values()) > 0, f"no peer online over MQTT: {online}"


def test_a_scrape_fails_while_the_event_loop_is_blocked_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop owns the devices' counters: a scrape waits for it, and rather than serve stale
    figures it fails (HTTP 500) when the loop does not answer in time."""
    monkeypatch.setattr(metrics, "SCRAPE_TIMEOUT_S", 0.2)
    snap = FleetSnapshot(1_700_000_000_000, 0.0, 0.0, ())

    async def scenario() -> tuple[int, str]:
        server = await serve_metrics(Listen("127.0.0.1", 0), lambda: snap, (0, 1))
        assert server is not None
        try:
            blocked = asyncio.get_running_loop().run_in_executor(None, _status, server.url)
            # Block the loop on purpose: the scrape cannot take its snapshot meanwhile.
            time.sleep(1.0)  # noqa: ASYNC251
            status = await blocked
            _, text = await asyncio.to_thread(get, server.url)
        finally:
            await server.stop()
        return status, text

    status, text = asyncio.run(scenario())
    assert status == 500, f"a scrape of a blocked loop answered {status}"
    assert "edgefleet_simulated_time_seconds 1.7e+09" in text, text[:300]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_without_prometheus_client_only_metrics_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """prometheus-client is an optional extra: the CLI imports without it, and --metrics says
    how to install it."""
    code = "import sys, agent.cli.main; print('prometheus_client' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.stdout.strip() == "False", f"the CLI imports prometheus_client: {done}"
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails, as if missing
    snap = FleetSnapshot(0, 0.0, 0.0, ())
    with pytest.raises(metrics.MetricsError, match=r"pip install 'edgefleet\[metrics\]'"):
        asyncio.run(serve_metrics(Listen("127.0.0.1", 0), lambda: snap, (0, 1)))


def test_the_collector_maps_counters_by_reason_and_withholds_private_rows() -> None:
    from agent.fleet.metrics import fleet_families

    row = DeviceRow(
        "fridge-9", "refrigerator", "home-9", 4, 2, 300, (("fridge.temp_mc", 4125),), ("a",),
        1, 2, 0, counters={"gossip.header_gap": 3, "gossip.header_accepted": 5,
                           "gossip.malformed_unattributed": 7, "transport.dropped_overflow": 2},
    )  # fmt: skip
    snap = FleetSnapshot(1_700_000_000_000, 1.0, 1.0, (row,))
    fams = {f.name: f for f in fleet_families(snap)}

    def value(name: str, **labels: str) -> float | None:
        found = [s.value for s in fams[name].samples if labels.items() <= s.labels.items()]
        return found[0] if found else None

    assert value("edgefleet_gossip_headers_refused", reason="gap") == 3
    assert value("edgefleet_gossip_headers_accepted") == 5
    assert value("edgefleet_gossip_messages_dropped", reason="unattributable") == 7
    assert value("edgefleet_transport_dropped", reason="overflow") == 2
    assert value("edgefleet_chain_blocks") == 5
    assert value("edgefleet_temperature_celsius", sensor="fridge.temp") == 4.125
    assert value("edgefleet_alarms_active") == 1
    hidden = {f.name: f for f in fleet_families(FleetSnapshot(0, 0, 0, (_private(row),)))}
    assert hidden["edgefleet_temperature_celsius"].samples == []
    assert hidden["edgefleet_alarms_active"].samples == []
    assert hidden["edgefleet_readings_signed"].samples[0].value == 300


def _private(row: DeviceRow) -> DeviceRow:
    import dataclasses

    return dataclasses.replace(row, private=True)


@pytest.mark.parametrize(
    ("text", "listen"),
    [
        ("9400", Listen("127.0.0.1", 9400)),
        ("0.0.0.0:9400", Listen("0.0.0.0", 9400)),
        ("[::1]:0", Listen("::1", 0)),
    ],
)
def test_listen_addresses(text: str, listen: Listen) -> None:
    assert Listen.parse(text) == listen


@pytest.mark.parametrize("text", ["", "abc", "host:", ":9400", "9400x", "70000", "-1"])
def test_bad_listen_addresses_say_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected PORT or HOST:PORT"):
        Listen.parse(text)


def test_each_shard_listens_on_port_plus_its_index() -> None:
    assert Listen("127.0.0.1", 9400).for_shard(3) == Listen("127.0.0.1", 9403)
    assert Listen("127.0.0.1", 0).for_shard(3) == Listen("127.0.0.1", 0)


def test_the_cli_refuses_a_bad_metrics_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--devices", str(fleet), "--data", str(data), "--metrics", "nope"])
    assert exc.value.code == 2
    assert "--metrics: expected PORT or HOST:PORT" in capsys.readouterr().err
    assert not data.exists()


def test_the_cli_names_the_metrics_url_and_refuses_a_port_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path)
    args = ["run", "--devices", str(fleet), "--broker", "memory", "--for", "10m", "--no-view"]
    assert main([*args, "--data", str(tmp_path / "a"), "--metrics", "127.0.0.1:0"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^metrics at http://127\.0\.0\.1:\d+/metrics$", err, re.M), err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = main([*args, "--data", str(tmp_path / "b"), "--metrics", f"127.0.0.1:{port}"])
    assert status == 2
    assert f"--metrics: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    assert len(exprs) >= 10, f"{len(exprs)} queries"
    used = set()
    for expr in exprs:
        for series in re.findall(r"\b(?:edgefleet|process|python)_[a-z_]+", expr):
            used.add(series)
            family = series if series in BY_NAME else _family(series)
            if series.startswith("edgefleet_"):
                assert family in BY_NAME, f"{expr!r} names {series}: not exported"
    needed = {
        "edgefleet_readings_signed_total",
        "edgefleet_blocks_sealed_total",
        "edgefleet_gossip_headers_refused_total",
        "edgefleet_transport_dropped_total",
        "edgefleet_replication_blocks_full_copies",
        "edgefleet_temperature_celsius",
        "edgefleet_event_loop_lag_seconds_bucket",
        "edgefleet_group_sync_duration_seconds_sum",
    }
    assert needed <= used, f"the dashboard does not plot {needed - used}"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule: `promtool check
    rules` parses its PromQL."""
    promtool = require_promtool()
    dashboard = json.loads(DASHBOARD.read_text())
    fill = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".*", "$site": ".*", "$kind": ".*"}
    rules = []
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    for i, target in enumerate(targets):
        expr = target["expr"]
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"an unfilled variable in {target['expr']!r}"
        rules.append({"record": f"edgefleet:dashboard_{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"promtool: {done.stdout}{done.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout


def _family(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in BY_NAME:
            return series.removesuffix(suffix)
    return series


def test_every_metric_is_documented() -> None:
    text = DOCS.read_text()
    missing = [f.name for f in FAMILIES if f"`{f.name}`" not in text]
    assert missing == [], f"docs/DEPLOY.md does not list {missing}"
