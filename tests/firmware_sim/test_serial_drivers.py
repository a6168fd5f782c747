"""Driver factory, option checking, RFID driver over the in-memory link, pyserial error mapping."""

from __future__ import annotations

import errno
import re
import time

import pytest
import serial

from firmware_sim.serial.bridge_driver import BridgeSensor
from firmware_sim.serial.errors import (
    PortBusyError,
    PortError,
    PortNotFoundError,
    PortPermissionError,
    SensorConfigError,
)
from firmware_sim.serial.factory import DRIVERS, open_sensor
from firmware_sim.serial.link import MemoryLink
from firmware_sim.serial.rfid import encode_id12la, encode_rdm6300
from firmware_sim.serial.rfid_driver import RfidSensor

CARD = bytes.fromhex("62E3086CED")
TAG = "em4100:62E3086CED"


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000_000

    def __call__(self) -> int:
        return self.t


def test_rfid_driver_arrival_confirmation_and_departure_on_simulated_time() -> None:
    link, clock = MemoryLink(), Clock()
    sensor = RfidSensor(link, clock=clock, confirm=2, prefix="door")
    link.inject(b"\x00noise" + encode_rdm6300(CARD))
    assert sensor.read(1.0) == []  # one frame is not yet a card (2 out of 2)
    clock.t += 100
    link.inject(encode_rdm6300(CARD))
    [arrived] = sensor.read(1.0)
    assert (arrived.sensor, arrived.value, arrived.tag, arrived.time_ms) == (
        "door.rfid.in",
        1,
        TAG,
        clock.t,
    )
    last = clock.t
    clock.t += 499
    assert sensor.read(0) == []
    assert sensor.present() == frozenset({TAG})
    clock.t += 1
    [left] = sensor.read(0)
    assert (left.sensor, left.value, left.tag, left.time_ms) == (
        "door.rfid.out",
        0,
        TAG,
        last + 500,
    )
    assert sensor.stats.parser.frames == 2
    assert sensor.stats.parser.garbage_bytes == 6


def test_rfid_driver_reads_once_reader_and_counts_bad_frames() -> None:
    link, clock = MemoryLink(), Clock()
    sensor = RfidSensor(link, driver="id12la", clock=clock, confirm=1)
    bad = bytearray(encode_id12la(CARD))
    bad[3] ^= 0x01
    link.inject(bytes(bad) + encode_id12la(CARD))
    assert [s.sensor for s in sensor.read(1.0)] == ["rfid.in"]
    assert sensor.stats.bad_frames == 1
    assert sensor.stats.as_dict()["bad_checksum"] == 1


def test_factory_rejects_unknown_drivers_and_options() -> None:
    with pytest.raises(SensorConfigError, match="unknown driver 'rdm630'; expected one of rdm6300"):
        open_sensor("rdm630", "/dev/null")
    with pytest.raises(SensorConfigError, match="driver rdm6300 does not take address"):
        open_sensor("rdm6300", "/dev/null", address=3)
    with pytest.raises(SensorConfigError, match="option baud must be int, found '9600'"):
        open_sensor("bridge", "/dev/null", baud="9600")
    with pytest.raises(
        SensorConfigError, match=re.escape("Modbus address must be 1..247, found 300")
    ):
        open_sensor("xymd02", "/dev/null", address=300)
    with pytest.raises(SensorConfigError, match="unknown Modbus profile"):
        open_sensor("xymd02", "/dev/null", profile="sht31")
    with pytest.raises(SensorConfigError, match="confirm >= 1, found 500 and 0"):
        open_sensor("rdm6300", "/dev/null", confirm=0)
    assert DRIVERS == ("rdm6300", "id12la", "xymd02", "ds18b20", "bridge")


@pytest.mark.parametrize("driver", ["rdm6300", "id12la", "xymd02", "bridge"])
def test_missing_port_is_port_not_found(driver: str) -> None:
    with pytest.raises(PortNotFoundError, match="/dev/ttyEDGEFLEET-NONE: no such device"):
        open_sensor(driver, "/dev/ttyEDGEFLEET-NONE")


def test_a_file_that_is_not_a_tty_is_a_port_error() -> None:
    with pytest.raises(PortError, match="could not open serial port"):
        open_sensor("rdm6300", "/dev/null")


@pytest.mark.parametrize(
    ("code", "error", "text"),
    [
        (errno.EACCES, PortPermissionError, "permission denied \\(add your user to the 'dialout'"),
        (errno.EBUSY, PortBusyError, "in use by another process"),
        (errno.EIO, PortError, "could not open serial port"),
    ],
)
def test_pyserial_open_errors_are_mapped(
    monkeypatch: pytest.MonkeyPatch, code: int, error: type[PortError], text: str
) -> None:
    # Running as root, a permission error cannot be produced for real: make pyserial raise it.
    def refuse(**_kwargs: object) -> None:
        raise serial.SerialException(code, f"could not open port /dev/ttyX: [Errno {code}]")

    monkeypatch.setattr(serial, "Serial", refuse)
    with pytest.raises(error, match=text) as info:
        open_sensor("rdm6300", "/dev/ttyX")
    assert type(info.value) is error
    assert info.value.port == "/dev/ttyX"


def test_invalid_prefix_closes_the_link(monkeypatch: pytest.MonkeyPatch) -> None:
    link = MemoryLink()
    monkeypatch.setattr("firmware_sim.serial.factory.open_port", lambda *_a, **_k: link)
    with pytest.raises(SensorConfigError, match="sensor prefix 'Bad Prefix' does not fit"):
        open_sensor("bridge", "/dev/ttyX", prefix="Bad Prefix")
    assert link.closed


class Babbler(MemoryLink):
    """A line that never falls silent: a floating RX pin picking up noise."""

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        return b"\x00\xff" * 8


def test_a_clock_stepping_backwards_cannot_stretch_a_read() -> None:
    ticks = iter(range(10**9, 0, -1000))  # the wall clock steps back a second per call

    sensor = BridgeSensor(Babbler(), clock=lambda: next(ticks))
    started = time.monotonic()
    assert sensor.read(0.05) == []
    assert time.monotonic() - started < 5  # bounded by the monotonic guard, not the clock
    assert sensor.stats.parser.garbage_bytes > 0
