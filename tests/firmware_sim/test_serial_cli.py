"""`edgefleet sensor read` argument handling and one-line errors (no device needed)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import serial

from agent.cli import main as cli
from firmware_sim.serial.w1 import render_w1_slave


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["sensor", "read", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_missing_port_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "--driver", "rdm6300", "--port", "/dev/ttyEDGEFLEET-NONE")
    assert status == 2
    assert out == ""
    assert err == (
        "edgefleet: error: /dev/ttyEDGEFLEET-NONE: no such device "
        "(is the adapter plugged in and the path right?)\n"
    )


def test_permission_denied_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**_kwargs: object) -> None:
        raise serial.SerialException(errno.EACCES, "could not open port /dev/ttyAMA0")

    monkeypatch.setattr(serial, "Serial", refuse)
    status, _, err = run(capsys, "--driver", "xymd02", "--port", "/dev/ttyAMA0")
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("edgefleet: error: /dev/ttyAMA0: permission denied")
    assert "dialout" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--driver", "rdm6300", "--address", "2"], "--address and --profile apply to xymd02"),
        (["--driver", "ds18b20", "--baud", "9600"], "--baud does not apply to ds18b20"),
        (["--driver", "bridge", "--interval", "-1"], "--interval: expected a finite number"),
        (["--driver", "bridge", "--interval", "nan"], "--interval: expected a finite number"),
        (["--driver", "bridge", "--timeout", "inf"], "--timeout: expected a finite number"),
        (["--driver", "xymd02", "--address", "0"], "Modbus address must be 1..247, found 0"),
    ],
)
def test_flag_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    status, _, err = run(capsys, *argv, "--port", "/dev/ttyEDGEFLEET-NONE")
    assert status == 2
    assert message in err


def test_ds18b20_file_prints_json_lines_and_a_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    slave = tmp_path / "w1_slave"
    slave.write_text(render_w1_slave(0xFF5E))
    argv = ["--driver", "ds18b20", "--port", str(slave), "--count", "2", "--interval", "0"]
    status, out, err = run(capsys, *argv)
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert all('"sensor": "temp_mc", "value": -10125' in line for line in lines)
    assert err.splitlines()[-1].startswith(
        f"edgefleet: ds18b20 on {slave}: 2 samples, 2 frames, 0 bad frames"
    )


def test_timeout_without_samples_exits_1_with_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    slave = tmp_path / "w1_slave"
    slave.write_text(render_w1_slave(0x0191, kernel_crc_ok=False))
    argv = ["--driver", "ds18b20", "--port", str(slave), "--count", "1", "--timeout", "0.05"]
    status, out, err = run(capsys, *argv)
    assert status == 1
    assert out == ""
    summary = err.splitlines()[-1]
    assert "0 samples" in summary
    assert "bad checksum" in summary
    assert "last error:" in summary
