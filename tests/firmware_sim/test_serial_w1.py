"""DS18B20 via w1_slave: reference text, CRC-8, NO lines, artefacts, 85 degC suspect flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.serial.ds18b20_driver import SUSPECT_POWER_ON, Ds18b20Sensor
from firmware_sim.serial.errors import PortNotFoundError
from firmware_sim.serial.w1 import (
    W1Parser,
    dallas_crc8,
    mc_to_raw,
    raw_to_mc,
    render_w1_slave,
)

# docs: /work/shared/reference/serial-sensors.md (DS18B20)
REFERENCE = "73 01 4b 46 7f ff 0d 10 41 : crc=41 YES\n73 01 4b 46 7f ff 0d 10 41 t=23187\n"
POWER_ON = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
TABLE = [
    (125_000, 0x07D0),
    (85_000, 0x0550),
    (25_062, 0x0191),  # +25.0625 degC; the kernel truncates to whole milli-degrees
    (500, 0x0008),
    (0, 0x0000),
    (-500, 0xFFF8),
    (-10_125, 0xFF5E),
    (-25_062, 0xFE6F),
    (-55_000, 0xFC90),
]


class Clock:
    def __init__(self) -> None:
        self.t = 5_000

    def __call__(self) -> int:
        return self.t


def test_reference_file_parses() -> None:
    reading = W1Parser().parse(REFERENCE)
    assert reading is not None
    assert reading.temp_mc == 23_187
    assert reading.raw == 0x0173
    assert dallas_crc8(reading.scratchpad[:8]) == 0x41
    assert render_w1_slave(0x0173) == REFERENCE


@pytest.mark.parametrize(("mc", "raw"), TABLE)
def test_datasheet_table(mc: int, raw: int) -> None:
    assert raw_to_mc(raw) == mc
    assert mc_to_raw(mc) == raw
    reading = W1Parser().parse(render_w1_slave(raw))
    assert reading is not None
    assert reading.temp_mc == mc


def test_no_line_yields_no_reading() -> None:
    parser = W1Parser()
    assert parser.parse(REFERENCE.replace("YES", "NO")) is None
    assert parser.stats.bad_checksum == 1


def test_crc_mismatch_is_rejected_even_if_the_kernel_said_yes() -> None:
    parser = W1Parser()
    text = REFERENCE.replace("73 01", "74 01")
    assert parser.parse(text) is None
    assert parser.stats.bad_checksum == 1


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("all-zero scratchpad (disconnected)", "00 " * 9 + ": crc=00 YES\n" + "00 " * 9 + "t=0\n"),
        ("t= disagrees with the bytes", REFERENCE.replace("t=23187", "t=23188")),
        ("lines carry different bytes", REFERENCE.replace("41 t=", "42 t=")),
        ("crc field differs from byte 8", REFERENCE.replace("crc=41", "crc=40")),
        ("one line only", REFERENCE.splitlines()[0]),
        ("empty", ""),
        ("huge", "73 " * 1000),
        ("out of range (+150 degC)", render_w1_slave(0x0960)),
    ],
)
def test_malformed_or_implausible_files(name: str, text: str) -> None:
    parser = W1Parser()
    assert parser.parse(text) is None, name
    assert parser.stats.malformed == 1, name


def test_power_on_scratchpad_is_85_degc() -> None:
    reading = W1Parser().parse(POWER_ON)
    assert reading is not None
    assert reading.is_power_on_value
    assert render_w1_slave(0x0550, count_remain=0x0C) == POWER_ON


def test_driver_flags_85_after_power_up_and_not_a_genuine_rise(tmp_path: Path) -> None:
    slave = tmp_path / "28-000005e2fdc3" / "w1_slave"
    slave.parent.mkdir()
    clock = Clock()
    slave.write_text(POWER_ON)
    sensor = Ds18b20Sensor(str(slave.parent), clock=clock, prefix="probe")

    def read_one(text: str) -> tuple[int, str | None]:
        slave.write_text(text)
        clock.t += 1000
        [sample] = sensor.read(1.0)
        assert sample.sensor == "probe.temp_mc"
        assert sample.time_ms == clock.t
        return sample.value, sample.text

    assert read_one(POWER_ON) == (85_000, SUSPECT_POWER_ON)  # first reading since open
    assert read_one(POWER_ON) == (85_000, SUSPECT_POWER_ON)  # still never converted
    assert read_one(REFERENCE) == (23_187, None)
    assert read_one(POWER_ON) == (85_000, SUSPECT_POWER_ON)  # a jump from 23 degC: re-powered
    assert read_one(render_w1_slave(0x0548)) == (84_500, None)
    assert read_one(POWER_ON) == (85_000, None)  # a genuine rise through 85 degC
    assert sensor.stats.suspect == 3

    slave.write_text(REFERENCE.replace("YES", "NO"))
    assert sensor.read(1.0) == []
    assert sensor.stats.bad_frames == 1
    assert "rejected w1_slave content" in str(sensor.stats.last_error)


def test_driver_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PortNotFoundError, match="no such w1_slave file"):
        Ds18b20Sensor(str(tmp_path / "28-nothing" / "w1_slave"))
    slave = tmp_path / "w1_slave"
    slave.write_text(REFERENCE)
    sensor = Ds18b20Sensor(str(slave))
    slave.unlink()
    with pytest.raises(PortNotFoundError, match="w1_slave disappeared"):
        sensor.read(1.0)
