"""`edgefleet record` through main([...]): real files, byte-identical reruns, exact replay."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import record
from agent.cli.main import main
from agent.config.devices import load_fleet
from firmware_sim.clock import SimClock
from firmware_sim.fleet import Fleet
from firmware_sim.samples import Sample
from firmware_sim.serial.bridge import encode_bridge_line
from firmware_sim.trace import TraceReader, replay

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ROOT / "devices.yaml"
DAY_MS = 86_400_000


def rec(tmp_path: Path, name: str, *extra: str, duration: str = "1d") -> tuple[int, Path]:
    out = tmp_path / name
    code = main(["record", "--devices", str(DEVICES), "--for", duration, "--out", str(out), *extra])
    return code, out


def test_record_twice_gives_identical_files_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code1, first = rec(tmp_path, "a.jsonl")
    captured = capsys.readouterr()
    code2, second = rec(tmp_path, "b.jsonl")
    assert (code1, code2) == (0, 0)
    assert first.read_bytes() == second.read_bytes()
    assert captured.err == ""  # stderr is not a terminal: no progress line
    lines = captured.out.splitlines()
    assert lines[0].startswith(
        f"recorded {sum(1 for _ in TraceReader(first)):,} samples of 1d to {first}"
    )
    kinds = {line.split()[0]: (int(line.split()[1]), line.split()[2]) for line in lines[2:]}
    assert set(kinds) == {"refrigerator", "washing_machine", "medical_freezer"}
    assert all(n == 3 for n, _ in kinds.values())
    assert not list(tmp_path.glob("*.partial"))


def test_the_trace_is_what_the_simulation_produces_and_replays_exactly(tmp_path: Path) -> None:
    code, path = rec(tmp_path, "t.jsonl")
    assert code == 0
    config = load_fleet(DEVICES)
    expected = list(Fleet(config.fleet_spec()).run_until(config.start_ms + DAY_MS))
    reader = TraceReader(path)
    assert reader.header == config.fleet_spec().trace_header()
    assert list(reader) == expected
    clock = SimClock(0)

    async def replayed(speed: float | None) -> list[tuple[str, Sample]]:
        return [item async for item in replay(reader, clock, speed)]

    assert clock.run(replayed(None)) == expected
    assert clock.run(replayed(1.0)) == expected
    assert clock.now_ms() == expected[-1][1].time_ms - expected[0][1].time_ms


def test_the_seed_flag_overrides_the_file_seed(tmp_path: Path) -> None:
    _, default = rec(tmp_path, "a.jsonl", duration="6h")
    _, seeded = rec(tmp_path, "b.jsonl", "--seed", "7", duration="6h")
    assert TraceReader(default).header.seed == 42 and TraceReader(seeded).header.seed == 7
    assert default.read_bytes() != seeded.read_bytes()


@pytest.mark.parametrize("bad", ["7 days", "0s", "-1d", ""])
def test_a_bad_duration_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["record", f"--for={bad}", "--out", str(tmp_path / "t.jsonl")])
    assert info.value.code == 2
    assert "argument --for: expected a duration" in capsys.readouterr().err


def test_a_bad_devices_file_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "devices.yaml"
    bad.write_text(
        DEVICES.read_text().replace("params: {mode: plasma}", "params: {mode: plasma, colour: red}")
    )
    out = tmp_path / "t.jsonl"
    assert main(["record", "--devices", str(bad), "--for", "1h", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = 1 + next(n for n, text in enumerate(bad.read_text().splitlines()) if "colour" in text)
    assert err.startswith(
        f"edgefleet: error: {bad}: line {line}: device 'freezer-station' (devices[2]): "
        "field 'params.colour': unknown parameter 'colour'"
    )
    assert not out.exists()


def test_an_unwritable_output_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = rec(tmp_path, "missing-dir/t.jsonl", duration="1h")
    assert code == 2
    assert "edgefleet: error: cannot write" in capsys.readouterr().err


def test_ctrl_c_keeps_a_valid_trace_of_what_was_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = Fleet.run_until

    def interrupted(self: Fleet, until_ms: int) -> Iterator[tuple[str, Sample]]:
        for n, item in enumerate(real(self, until_ms)):
            if n == 500:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Fleet, "run_until", interrupted)
    code, path = rec(tmp_path, "t.jsonl")
    assert code == 130
    assert len(list(TraceReader(path))) == 500
    assert "interrupted" in capsys.readouterr().out


def test_progress_shows_simulated_time_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = record.Progress(stream, 0, 7 * DAY_MS)
    progress.update(DAY_MS + 3_600_000, 1024)
    progress.update(2 * DAY_MS, 2048)  # too soon after the last line: not shown
    progress.done()
    assert stream.getvalue() == (
        "\rrecord: simulated 1d01h00m00s / 7d (14%), 1,024 samples\033[K\r\033[K"
    )
    silent = io.StringIO()
    record.Progress(silent, 0, DAY_MS).update(5, 1024)
    assert silent.getvalue() == ""


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (90_000, "1m30s"),
        (7 * DAY_MS, "7d"),
        (DAY_MS + 1000, "1d00h00m01s"),
        (3_600_000, "1h"),
    ],
)
def test_fmt_duration(ms: int, text: str) -> None:
    assert record.fmt_duration(ms) == text


@pytest.mark.subprocess
def test_traces_do_not_depend_on_hash_randomisation(tmp_path: Path) -> None:
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"t{hash_seed}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.cli.main",
                "record",
                "--devices",
                str(DEVICES),
                "--for",
                "12h",
                "--out",
                str(out),
            ],
            check=True,
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.pty
def test_a_real_serial_sensor_replaces_the_simulated_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    devices = tmp_path / "devices.yaml"
    devices.write_text(f"""
fleet: bench
sites: [{{id: home, kind: household}}]
devices:
  - name: fridge-1
    kind: refrigerator
    site: home
    serial:
      driver: bridge
      port: {port}
      options: {{prefix: fridge}}
      sensors: [fridge.temp_mc]
world: {{shopping: {{enabled: false}}, meals: {{enabled: false}}}}
""")
    stop = threading.Event()
    sent: list[int] = []

    def probe() -> None:  # a microcontroller printing one reading every 100 ms
        seq = 0
        while not stop.is_set():
            value = 4000 + seq
            os.write(master, encode_bridge_line("probe1", value, seq))
            sent.append(value)
            seq += 1
            stop.wait(0.1)

    writer = threading.Thread(target=probe, daemon=True)
    writer.start()
    out = tmp_path / "live.jsonl"
    before = time.time_ns() // 1_000_000
    try:
        code = main(["record", "--devices", str(devices), "--for", "2s", "--out", str(out)])
    finally:
        stop.set()
        writer.join()
        os.close(master)
        os.close(slave)
    assert code == 0, capsys.readouterr().err
    reader = TraceReader(out)
    assert before - 1000 <= reader.header.start_ms <= before + 1000
    samples = [s for _, s in reader]
    real = [s for s in samples if s.sensor == "fridge.temp_mc"]
    assert len(real) >= 5
    assert all(s.text == "probe1" for s in real)  # not one simulated reading slipped in
    values = [s.value for s in real]
    assert values == sorted(values) and set(values) <= set(sent)
    assert any(s.sensor == "freezer.temp_mc" for s in samples)  # still simulated
    assert all(
        reader.header.start_ms <= s.time_ms <= reader.header.start_ms + 2000 for s in samples
    )
