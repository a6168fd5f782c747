"""`edgefleet replay`: a recorded trace driven through real agents, and its error paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet.datadir import DataDir
from firmware_sim.trace import TraceReader
from ledger.store import Store

from .runner_helpers import owner_openers, plain

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ROOT / "devices.yaml"
CLI = (sys.executable, "-m", "agent.cli.main")
Row = tuple[int, str, int, str | None, str | None]


def record(tmp_path: Path, duration: str) -> Path:
    out = tmp_path / f"{duration}.jsonl"
    code = main(["record", "--devices", str(DEVICES), "--for", duration, "--out", str(out)])
    assert code == 0
    return out


def trace_rows(trace: Path) -> dict[str, list[Row]]:
    rows: dict[str, list[Row]] = defaultdict(list)
    for device, s in TraceReader(trace):
        rows[device].append((s.time_ms, s.sensor, s.value, s.tag, s.text))
    return rows


def chain_rows(data: Path, device: str) -> tuple[list[Row], list[int], int]:
    """(time, sensor, value, tag, text) of the device's sealed readings, their seqs, and how
    many readings are still pending."""
    owners = owner_openers(data)
    with Store(DataDir(data).store_path(device)) as store:
        readings = [plain(sr, owners) for b in store.blocks() for sr in b.readings]
        pending = store.pending_count()
    rows = [(r.time_ms, r.sensor, r.value, r.tag, r.text) for r in readings]
    return rows, [r.seq for r in readings], pending


def replay(trace: Path, data: Path, *extra: str, devices: Path = DEVICES) -> int:
    return main(["replay", str(trace), "--devices", str(devices), "--data", str(data), *extra])


@pytest.mark.slow
def test_replayed_chains_hold_exactly_the_recorded_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = record(tmp_path, "10h")
    capsys.readouterr()
    data = tmp_path / "data"
    assert replay(trace, data, "--broker", "memory", "--no-view", "--settle", "20") == 0
    err = capsys.readouterr().err
    expected = trace_rows(trace)
    total = sum(len(v) for v in expected.values())
    assert f"replayed {total} of {total} samples of {trace}" in err
    assert "gossip converged" in err
    assert any(tag for rows in expected.values() for (_, _, _, tag, _) in rows)
    for device in DataDir(data).device_names():
        rows, seqs, pending = chain_rows(data, device)
        assert rows == expected.get(device, []), device
        assert seqs == list(range(len(rows)))
        assert pending == 0
    assert main(["verify", "--data", str(data)]) == 0
    # A replay restarts at the trace's first sample: a used data dir is refused, untouched.
    before = {d: chain_rows(data, d)[0] for d in expected}
    assert replay(trace, data, "--broker", "memory", "--no-view") == 2
    assert "already holds" in capsys.readouterr().err
    assert {d: chain_rows(data, d)[0] for d in expected} == before


def write_trace(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


HEADER = (
    '{"devices":[{"kind":"refrigerator","name":"%s","site":"home-1"}],"fleet":"demo",'
    '"format":"edgefleet-trace","seed":42,"start_ms":1736121600000,"version":1}'
)
SAMPLE = '{"device":"fridge-1","sensor":"door.open","t":%d,"value":0}'


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [HEADER % "fridge-9", SAMPLE.replace("fridge-1", "fridge-9") % 1736121600000],
            "t.jsonl: line 1: trace devices not in {devices}: fridge-9",
        ),
        (
            [HEADER.replace("refrigerator", "washing_machine") % "fridge-1"],
            "t.jsonl: line 1: device 'fridge-1' is a washing_machine in the trace but a "
            "refrigerator in {devices}",
        ),
        (
            [HEADER % "fridge-1", SAMPLE % 1736121600000, SAMPLE % 1736121660000, "{oops"],
            "t.jsonl: line 4: not JSON",
        ),
        (
            [HEADER % "fridge-1", SAMPLE % 1736121660000, SAMPLE % 1736121600000],
            "t.jsonl: line 3: time 1736121600000 ms is before the previous sample's",
        ),
        (['{"format":"edgefleet-trace"}'], "t.jsonl: line 1: header"),
    ],
    ids=["unknown-device", "other-kind", "malformed-line", "time-backwards", "bad-header"],
)
def test_a_bad_trace_is_one_clear_error_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], message: str
) -> None:
    trace = write_trace(tmp_path, lines)
    data = tmp_path / "data"
    assert replay(trace, data, "--broker", "memory") == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet: error: ")
    assert message.format(devices=DEVICES) in err
    assert len(err.splitlines()) == 1
    assert not data.exists()


def test_a_missing_trace_or_bad_flag_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    assert replay(missing, tmp_path / "data") == 2
    assert f"{missing}: cannot read the trace" in capsys.readouterr().err
    trace = write_trace(tmp_path, [HEADER % "fridge-1"])
    assert replay(trace, tmp_path / "data", "--speed", "0") == 2
    assert "--speed: expected a number > 0 or max, found '0'" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.subprocess
def test_the_cli_replays_through_the_embedded_broker_with_a_live_view(tmp_path: Path) -> None:
    trace = write_trace(
        tmp_path,
        [HEADER % "fridge-1"]
        + [
            f'{{"device":"fridge-1","sensor":"fridge.temp_mc","t":{1736121600000 + i * 60_000},'
            f'"value":{4000 + i}}}'
            for i in range(30)
        ],
    )
    data = tmp_path / "data"
    done = subprocess.run(
        [*CLI, "replay", str(trace), "--devices", str(DEVICES), "--data", str(data)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 30 of 30 samples" in done.stderr and "gossip converged" in done.stderr
    assert "devices 9" in done.stdout  # the plain live view
    rows, _, _ = chain_rows(data, "fridge-1")
    assert rows == trace_rows(trace)["fridge-1"]
    assert chain_rows(data, "fridge-2")[0] == []  # in the devices file, not in the trace


@pytest.mark.subprocess
def test_ctrl_c_stops_cleanly_with_a_prefix_of_the_trace(tmp_path: Path) -> None:
    trace = record(tmp_path, "6h")
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    flags = ("--speed", "600", "--broker", "memory")
    proc = subprocess.Popen(
        [*CLI, "replay", str(trace), "--devices", str(DEVICES), "--data", str(data), *flags],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the live view's first summary: the replay is running
        assert first.startswith("sim "), first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted: replayed" in err
    expected = trace_rows(trace)
    replayed = 0
    for device, rows in expected.items():
        got, _, pending = chain_rows(data, device)
        assert pending == 0  # everything handed to a device was signed and sealed
        assert got == rows[: len(got)], device
        replayed += len(got)
    assert 0 < replayed < sum(len(v) for v in expected.values())
    assert main(["verify", "--data", str(data)]) == 0
