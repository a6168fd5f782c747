"""End to end through real pseudo-terminal pairs: one side plays the sensor, the driver (through
pyserial) opens the other side's path. No sleeps: every wait is a blocking read with a timeout.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.cli import main as cli
from firmware_sim.serial.bridge import encode_bridge_line
from firmware_sim.serial.factory import open_sensor
from firmware_sim.serial.profiles import XYMD02_256
from firmware_sim.serial.rfid import encode_rdm6300
from firmware_sim.serial.sim import XyMd02Sim
from firmware_sim.serial.xymd02_driver import DeviceSettings, XyMd02Sensor

pytestmark = pytest.mark.pty

CARD = bytes.fromhex("62E3086CED")
TAG = "em4100:62E3086CED"
FRAME = encode_rdm6300(CARD)
BAD_FRAME = b"\x02" + b"68003B51C6CB" + b"\x03"  # reference checksum mismatch


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000_000

    def __call__(self) -> int:
        return self.t


@contextmanager
def pty_pair(*, packet: bool = False) -> Iterator[tuple[int, str]]:
    """(master fd, slave path). With ``packet`` the master reports when the slave flushes its
    input, which pyserial does as the last step of opening: that is how we know it is open."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    if packet:
        fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def wait_until_opened(master: int, timeout_s: float = 15.0) -> None:
    while True:
        ready, _, _ = select.select([master], [], [], timeout_s)
        assert ready, f"nobody opened the port within {timeout_s} s"
        if os.read(master, 64)[0] & termios.TIOCPKT_FLUSHREAD:
            return


class Responder:
    """A thread answering Modbus requests from the master side of a pty."""

    def __init__(self, master: int, sim: XyMd02Sim) -> None:
        self.master = master
        self.sim = sim
        self.mangle: Callable[[bytes], bytes] = lambda answer: answer
        self.error: BaseException | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.master, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                answer = self.sim.respond(os.read(self.master, 256))
                if answer:
                    os.write(self.master, self.mangle(answer))
        except BaseException as exc:  # reported by close()
            self.error = exc

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        os.close(self._stop_r)
        os.close(self._stop_w)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


def test_rdm6300_tag_arrived_and_left() -> None:
    clock = Clock()
    with pty_pair() as (master, path):
        sensor = open_sensor("rdm6300", path, clock=clock)
        try:
            os.write(master, b"\xff\x03" + FRAME + BAD_FRAME + FRAME)
            [arrived] = sensor.read(10.0)
            assert (arrived.sensor, arrived.value, arrived.tag) == ("rfid.in", 1, TAG)
            assert sensor.read(0) == []
            seen_at = clock.t
            clock.t += 500
            [left] = sensor.read(0)
            assert (left.sensor, left.value, left.tag, left.time_ms) == (
                "rfid.out",
                0,
                TAG,
                seen_at + 500,
            )
            stats = sensor.stats
            # garbage: the 2 leading bytes and the 13 bytes after the rejected frame's STX
            assert (stats.parser.frames, stats.bad_frames, stats.parser.garbage_bytes) == (2, 1, 15)
        finally:
            sensor.close()


def test_xymd02_polling_with_a_responder() -> None:
    clock = Clock()
    with pty_pair() as (master, path):
        sim = XyMd02Sim(temp_mc=21_300, humidity_pm=455)
        responder = Responder(master, sim)
        sensor = open_sensor("xymd02", path, clock=clock)
        try:
            assert [(s.sensor, s.value) for s in sensor.read(10.0)] == [
                ("temp_mc", 21_300),
                ("humidity_pm", 455),
            ]
            sim.temp_mc, sim.humidity_pm = -7_300, 1000
            clock.t += 1000
            samples = sensor.read(10.0)
            assert [(s.value, s.time_ms) for s in samples] == [(-7_300, clock.t), (1000, clock.t)]

            # Bus noise: garbage and a corrupted copy before the good answer.
            def noisy(answer: bytes) -> bytes:
                bad = bytearray(answer)
                bad[4] ^= 0x04
                return b"\x00\x01\x07" + bytes(bad) + answer

            responder.mangle = noisy
            sim.temp_mc = 4_000
            assert [s.value for s in sensor.read(10.0)] == [4_000, 1000]
            assert sensor.stats.parser.bad_checksum == 1
            assert sim.requests == 3
        finally:
            sensor.close()
            responder.close()


def test_xymd02_variant_profile_and_silent_address() -> None:
    with pty_pair() as (master, path):
        sim = XyMd02Sim(profile=XYMD02_256, address=5, baud_code=2)
        responder = Responder(master, sim)
        sensor = open_sensor("xymd02", path, address=5, profile="xymd02-256")
        other = None
        try:
            assert isinstance(sensor, XyMd02Sensor)
            assert sensor.read_settings(10.0) == DeviceSettings(5, 2, 19200)
            sensor.close()
            other = open_sensor("xymd02", path, address=6, profile="xymd02-256")
            assert other.read(0.3) == []  # nobody at address 6
            assert other.stats.timeouts == 1
        finally:
            sensor.close()
            if other is not None:
                other.close()
            responder.close()


def test_bridge_lines() -> None:
    with pty_pair() as (master, path):
        sensor = open_sensor("bridge", path, clock=lambda: 42)
        try:
            os.write(master, b"boot v1\r\n" + encode_bridge_line("t1", -18_250, 7))
            [sample] = sensor.read(10.0)
            assert (sample.sensor, sample.value, sample.text, sample.time_ms) == (
                "temp_mc",
                -18_250,
                "t1",
                42,
            )
        finally:
            sensor.close()


def _check_cli_output(out: str, err: str) -> None:
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["sensor"], d["value"], d["tag"]) for d in lines] == [
        ("rfid.in", 1, TAG),
        ("rfid.out", 0, TAG),
    ]
    assert lines[1]["t"] - lines[0]["t"] >= 500
    summary = err.strip().splitlines()[-1]
    assert "2 samples, 2 frames, 1 bad frames (bad checksum 1, malformed 0)" in summary


def test_cli_sensor_read_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pty_pair(packet=True) as (master, path):
        status: list[int] = []
        argv = ["sensor", "read", "--driver", "rdm6300", "--port", path, "--count", "2"]
        worker = threading.Thread(
            target=lambda: status.append(cli.main([*argv, "--timeout", "20"]))
        )
        worker.start()
        wait_until_opened(master)
        os.write(master, FRAME + BAD_FRAME + FRAME)
        worker.join(30)
        assert not worker.is_alive()
    assert status == [0]
    captured = capsys.readouterr()
    _check_cli_output(captured.out, captured.err)


def _edgefleet() -> list[str]:
    script = Path(sys.executable).with_name("edgefleet")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from agent.cli.main import main; sys.exit(main())"]


@pytest.mark.subprocess
def test_cli_sensor_read_as_a_real_process() -> None:
    with pty_pair(packet=True) as (master, path):
        argv = ["sensor", "read", "--driver", "rdm6300", "--port", path, "--count", "2"]
        proc = subprocess.Popen(
            [*_edgefleet(), *argv, "--timeout", "20"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until_opened(master)
            os.write(master, FRAME + BAD_FRAME + FRAME)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert err.startswith(f"edgefleet: reading rdm6300 on {path}")
    _check_cli_output(out, err)
