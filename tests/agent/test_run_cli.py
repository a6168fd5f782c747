"""`edgefleet run` through the CLI entry point: runs, output, and refusals of bad input.

A refused flag exits 2 with one line naming what was expected and what was found, before
anything is created on disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.agent.runner_helpers import write_fleet

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^sim \d{4}-\d\d-\d\d \d\d:\d\d x[\d,]+ devices (\d+) blocks (\d+) readings (\d+) "
    r"alarms \d+ lag \d+ sent/s [\d,]+ invalid (\d+) unproven \d+( serial-down \S+)?$"
)
STOPPED = re.compile(
    r"stopped at simulated (\d+) ms after [\d.]+ s: (\d+) samples, gossip (converged|[a-z ]+)"
)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return write_fleet(tmp_path)


def test_run_for_an_hour_exits_0_and_the_data_dir_verifies(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    status = main(["run", "--devices", str(fleet), "--data", str(data), "--for", "1h", "--no-view"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out == "", f"--no-view printed to stdout: {out!r}"
    m = STOPPED.search(err)
    assert m is not None, f"no end-of-run line on stderr: {err!r}"
    assert int(m.group(1)) == 3_600_000
    assert m.group(3) == "converged", err
    samples = int(m.group(2))

    assert main(["verify", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 device(s) verify" in out, out
    checked = int(re.search(r"(\d+) own readings checked", out).group(1))  # type: ignore[union-attr]
    assert checked == samples, f"lost = {samples - checked} of {samples} samples"


def test_the_view_prints_summary_lines_when_the_output_is_not_a_terminal(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    args = ["run", "--devices", str(fleet), "--data", str(data), "--for", "1h"]
    assert main([*args, "--broker", "memory"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b[" not in out, "terminal escapes written to a non-terminal"
    lines = out.splitlines()
    assert lines, "no summary line at all"
    parsed = [SUMMARY.match(line) for line in lines]
    assert all(parsed), (
        f"lines that are not summaries: {[x for x, p in zip(lines, parsed, strict=True) if not p]}"
    )
    final = parsed[-1]
    assert final is not None
    samples = int(STOPPED.search(err).group(2))  # type: ignore[union-attr]
    devices, blocks, readings, invalid = (int(final.group(i)) for i in range(1, 5))
    assert (devices, readings, invalid) == (3, samples, 0), lines[-1]
    assert blocks >= 3, lines[-1]


def test_a_bad_devices_file_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_fleet(tmp_path, "fleet: x\nsites: []\ndevices: []\ncolour: blue\n", "bad.yaml")
    data = tmp_path / "data"
    assert main(["run", "--devices", str(bad), "--data", str(data), "--for", "1h"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet: error: ") and str(bad) in err, err
    assert "Traceback" not in err

    missing = tmp_path / "nowhere.yaml"
    assert main(["run", "--devices", str(missing), "--data", str(data), "--for", "1h"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err, err
    assert not (data / "devices").exists(), "a refused run enrolled devices"


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--speed", "0", "--speed"),
        ("--speed", "fast", "--speed: expected a number or max, found 'fast'"),
        ("--speed", "nan", "--speed"),  # NaN is not a speed
        ("--shard", "2/2", "--shard 2/2: need 0 <= I < N"),
        ("--shard", "1-2", "--shard: expected I/N, found '1-2'"),
        ("--shard", "0/0", "--shard 0/0: need 0 <= I < N"),
        ("--for", "an hour", "found 'an hour'"),
        ("--for", "90", "found '90'"),
        ("--block-age", "5", "found '5'"),
        ("--block-readings", "0", "--block-readings/--block-age: max_readings must be in 1..4096"),
        ("--settle", "-1", "--settle: expected seconds from 0 to 86400 (a day), found '-1'"),
        ("--settle", "nan", "--settle: expected seconds from 0 to 86400 (a day), found 'nan'"),
        ("--settle", "inf", "--settle: expected seconds from 0 to 86400 (a day), found 'inf'"),
        ("--settle", "soon", "--settle: expected a number of seconds, found 'soon'"),
        ("--seed", str(2**64), f"--seed: expected a signed 64-bit integer, found {2**64}"),
        ("--for", "99999999999w", "expected a duration of at most 100 years"),
        ("--device", "fridge-2", "--device fridge-2: no device of that name in "),
    ],
)
def test_a_bad_flag_exits_2_with_one_clear_line_and_touches_nothing(
    fleet: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    expected: str,
) -> None:
    data = tmp_path / "data"
    args = ["run", "--devices", str(fleet), "--data", str(data), "--no-view"]
    if flag != "--for":
        args += ["--for", "1m"]
    try:
        status = main([*args, f"{flag}={value}", "--broker", "memory"])
    except Exception as exc:  # what a user would see as a traceback
        pytest.fail(f"{flag}={value}: {type(exc).__name__} escaped the CLI: {exc}")
    err = capsys.readouterr().err
    assert (status, err.count("\n")) == (2, 1), f"{flag}={value}: exit {status}, stderr {err!r}"
    assert err.startswith("edgefleet: error: ") and expected in err, err
    assert not data.exists(), f"{flag}={value}: the refused run created {data}"


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_a_data_dir_that_cannot_be_one_exits_2_with_one_line(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    data = tmp_path / where
    args = ["run", "--devices", str(fleet), "--data", str(data), "--for", "1m", "--no-view"]
    status = main([*args, "--broker", "memory"])
    err = capsys.readouterr().err
    assert (status, err.count("\n")) == (2, 1), f"exit {status}, stderr {err!r}"
    expected = {
        "a-file": f"--data {data}: expected a directory, found a file",
        "a-file/below": f"--data {data}: cannot create the data dir: Not a directory",
    }[where]
    assert err.startswith(f"edgefleet: error: {expected}"), err
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


@pytest.mark.subprocess
def test_json_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`edgefleet ... --json | head`: the reader is gone before we write; no traceback."""
    root = tmp_path / "fleet-root.json"
    root.write_text(
        json.dumps({"format": "edgefleet-root/1", "public": "ab" * 32, "key_id": "cd" * 8})
    )
    read, write = os.pipe()
    os.close(read)  # the reader has gone: every write to the pipe fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli.main", "keys", "show", str(root), "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, b"")
