"""Modbus RTU: CRC, requests, responses (incl. exceptions), resync, profiles, simulator, driver."""

from __future__ import annotations

import re

import pytest

from firmware_sim.serial.errors import SensorConfigError
from firmware_sim.serial.link import MemoryLink
from firmware_sim.serial.modbus import (
    ExceptionResponse,
    ModbusRequestParser,
    ModbusResponseParser,
    ReadRequest,
    RegistersResponse,
    WriteRequest,
    WriteResponse,
    crc16_modbus,
    with_crc,
)
from firmware_sim.serial.profiles import XYMD02, XYMD02_256, THProfile, get_profile
from firmware_sim.serial.sim import XyMd02Sim
from firmware_sim.serial.xymd02_driver import DeviceSettings, XyMd02Sensor

# docs: /work/shared/reference/serial-sensors.md (XY-MD02 known answers)
REQ_ONE = bytes.fromhex("01 04 00 01 00 01 60 0A")
RESP_30_5 = bytes.fromhex("01 04 02 01 31 79 74")
RESP_MINUS_20_5 = bytes.fromhex("01 04 02 FF 33 B8 D5")
REQ_BOTH = bytes.fromhex("01 04 00 01 00 02 20 0B")
RESP_BOTH = bytes.fromhex("01 04 04 01 31 02 22 2A CE")
RESP_EXCEPTION = bytes.fromhex("01 84 02 C2 C1")
ONE = ReadRequest(1, 0x04, 1, 1)
BOTH = ReadRequest(1, 0x04, 1, 2)


class Clock:
    def __init__(self, t: int = 1_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_crc_check_value() -> None:
    assert with_crc(bytes.fromhex("01 03 00 00 00 0A"))[-2:] == bytes.fromhex("C5 CD")
    assert crc16_modbus(bytes.fromhex("01 03 00 00 00 0A")) == 0xCDC5


def test_request_builder_known_answers() -> None:
    assert ONE.encode() == REQ_ONE
    assert BOTH.encode() == REQ_BOTH
    assert XYMD02.measurement_request(1) == BOTH
    assert ONE.response_len == len(RESP_30_5)


@pytest.mark.parametrize(
    ("request_", "wire", "registers"),
    [(ONE, RESP_30_5, (0x0131,)), (ONE, RESP_MINUS_20_5, (0xFF33,)), (BOTH, RESP_BOTH, (305, 546))],
)
def test_response_known_answers(
    request_: ReadRequest, wire: bytes, registers: tuple[int, ...]
) -> None:
    parser = ModbusResponseParser()
    parser.expect(request_)
    assert parser.feed(wire) == [RegistersResponse(1, 4, registers)]
    assert parser.pending is None


def test_decoded_units() -> None:
    assert XYMD02.decode((0x0131,)) == (30_500, None)
    assert XYMD02.decode((0xFF33,)) == (-20_500, None)
    assert XYMD02.decode((0x0131, 0x0222)) == (30_500, 546)


def test_exception_response() -> None:
    parser = ModbusResponseParser()
    parser.expect(ONE)
    [exc] = parser.feed(RESP_EXCEPTION)
    assert exc == ExceptionResponse(1, 4, 2)
    assert exc.describe() == "device 1 answered exception 2 (illegal data address)"
    assert exc.encode() == RESP_EXCEPTION


@pytest.mark.parametrize("wire", [RESP_30_5, RESP_BOTH, RESP_EXCEPTION])
def test_every_split_point_and_byte_at_a_time(wire: bytes) -> None:
    req = ONE if len(wire) != len(RESP_BOTH) else BOTH
    reference = ModbusResponseParser()
    reference.expect(req)
    expected = reference.feed(wire)
    assert len(expected) == 1
    for cut in range(len(wire) + 1):
        parser = ModbusResponseParser()
        parser.expect(req)
        assert parser.feed(wire[:cut]) + parser.feed(wire[cut:]) == expected, f"cut at {cut}"
    parser = ModbusResponseParser()
    parser.expect(req)
    assert [f for i in range(len(wire)) for f in parser.feed(wire[i : i + 1])] == expected


def test_leading_garbage_and_a_bad_crc_copy_then_resync() -> None:
    parser = ModbusResponseParser()
    parser.expect(BOTH)
    corrupt = bytearray(RESP_BOTH)
    corrupt[4] ^= 0x10
    frames = parser.feed(b"\x00\x01\x01\x04\x99" + bytes(corrupt) + RESP_BOTH + b"\x01\x04")
    assert frames == [RegistersResponse(1, 4, (305, 546))]
    assert parser.stats.bad_checksum == 1
    assert parser.stats.malformed >= 2
    assert parser.stats.garbage_bytes >= 2  # the trailing bytes: no request is pending


def test_bad_crc_is_never_emitted() -> None:
    parser = ModbusResponseParser()
    for i in range(len(RESP_30_5) * 8):
        parser.expect(ONE)
        wire = bytearray(RESP_30_5)
        wire[i // 8] ^= 1 << (i % 8)
        assert parser.feed(bytes(wire)) == [], f"bit {i} flipped"
    assert parser.stats.frames == 0


def test_response_for_another_address_or_function_is_not_taken() -> None:
    parser = ModbusResponseParser()
    parser.expect(ReadRequest(2, 0x04, 1, 1))
    assert parser.feed(RESP_30_5) == []
    parser.expect(ReadRequest(1, 0x03, 1, 1))
    assert parser.feed(RESP_30_5) == []


def test_nothing_pending_means_garbage() -> None:
    parser = ModbusResponseParser()
    assert parser.feed(RESP_30_5) == []
    assert parser.stats.garbage_bytes == len(RESP_30_5)
    assert parser.buffered == 0


def test_write_is_answered_by_its_echo_only() -> None:
    req = WriteRequest(1, 0x0101, 5)
    parser = ModbusResponseParser()
    parser.expect(req)
    assert parser.feed(req.encode()) == [WriteResponse(1, 0x0101, 5)]
    parser.expect(req)
    assert parser.feed(WriteRequest(1, 0x0101, 6).encode()) == []
    assert parser.stats.malformed >= 1  # the wrong echo, then resync attempts inside it
    assert parser.stats.frames == 1


def test_buffer_bound() -> None:
    parser = ModbusResponseParser()
    parser.expect(ReadRequest(1, 0x04, 0, 125))
    parser.feed(b"\x01\x04\xfa" + b"\x00" * 5000)
    assert parser.buffered < 2 * parser.max_frame


def test_request_validation_messages() -> None:
    with pytest.raises(ValueError, match=re.escape("address must be 1..247, found 0")):
        ReadRequest(0, 4, 1, 1)
    with pytest.raises(ValueError, match=re.escape("count must be 1..125, found 126")):
        ReadRequest(1, 4, 1, 126)
    with pytest.raises(ValueError, match="0x03 or 0x04, found 0x06"):
        ReadRequest(1, 6, 1, 1)


def test_request_parser_resyncs_on_the_slave_side() -> None:
    parser = ModbusRequestParser()
    noisy = bytearray(REQ_BOTH)
    noisy[3] ^= 0x01
    got = parser.feed(b"\xff\x00" + bytes(noisy) + REQ_ONE + REQ_BOTH[:5])
    assert got == [ONE]
    assert parser.stats.bad_checksum == 1
    assert parser.feed(REQ_BOTH[5:]) == [BOTH]


# --- profiles and the simulator -----------------------------------------------------------------


def test_simulator_answers_the_reference_requests() -> None:
    sim = XyMd02Sim(temp_mc=30_500, humidity_pm=546)
    assert sim.respond(REQ_ONE) == RESP_30_5
    assert sim.respond(REQ_BOTH) == RESP_BOTH
    sim.temp_mc = -20_500
    assert sim.respond(REQ_ONE) == RESP_MINUS_20_5
    assert sim.respond(ReadRequest(1, 4, 3, 1).encode()) == RESP_EXCEPTION
    assert sim.respond(ReadRequest(7, 4, 1, 1).encode()) == b""  # not its address


@pytest.mark.parametrize(("profile", "first"), [(XYMD02, 0x0101), (XYMD02_256, 0x0100)])
def test_settings_registers_follow_the_profile(profile: THProfile, first: int) -> None:
    assert profile is get_profile(profile.name)
    sim = XyMd02Sim(profile=profile, address=9, baud_code=2)
    assert (
        sim.respond(ReadRequest(9, 3, first, 2).encode())
        == RegistersResponse(9, 3, (9, 2)).encode()
    )
    other = 0x0101 if first == 0x0100 else 0x0100
    assert sim.respond(ReadRequest(9, 3, other, 2).encode()) == ExceptionResponse(9, 3, 2).encode()


def test_simulator_address_change_echoes_from_the_old_address() -> None:
    sim = XyMd02Sim()
    req = WriteRequest(1, 0x0101, 17)
    assert sim.respond(req.encode()) == req.encode()
    assert sim.address == 17
    assert sim.respond(REQ_ONE) == b""


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(SensorConfigError, match="unknown Modbus profile 'nope'; expected one of"):
        get_profile("nope")


# --- driver over the in-memory link ------------------------------------------------------------


def test_driver_polls_with_function_4_and_emits_integer_units() -> None:
    sim = XyMd02Sim(temp_mc=-20_500, humidity_pm=987)
    link = MemoryLink(responder=sim.respond)
    clock = Clock()
    sensor = XyMd02Sensor(link, clock=clock, prefix="freezer")
    samples = sensor.read(1.0)
    assert link.written == [REQ_BOTH]
    assert [(s.sensor, s.value, s.time_ms) for s in samples] == [
        ("freezer.temp_mc", -20_500, clock.t),
        ("freezer.humidity_pm", 987, clock.t),
    ]


def test_driver_counts_timeouts_and_exceptions() -> None:
    sim = XyMd02Sim(address=2)
    sensor = XyMd02Sensor(MemoryLink(responder=sim.respond), clock=Clock(), address=1)
    assert sensor.read(0.2) == []
    assert sensor.stats.timeouts == 1
    assert "no valid answer from Modbus address 1 within 0.2 s" in str(sensor.stats.last_error)

    bad = XyMd02Sensor(MemoryLink(responder=lambda _req: RESP_EXCEPTION), clock=Clock())
    assert bad.read(0.2) == []
    assert bad.stats.device_errors == 1
    assert bad.stats.last_error == "device 1 answered exception 2 (illegal data address)"


def test_driver_reads_settings_of_a_variant_profile() -> None:
    sim = XyMd02Sim(profile=XYMD02_256, address=3, baud_code=1)
    link = MemoryLink(responder=sim.respond)
    sensor = XyMd02Sensor(link, profile=XYMD02_256, address=3, clock=Clock())
    assert sensor.read_settings(0.5) == DeviceSettings(address=3, baud_code=1, baud=14400)
    assert link.written == [ReadRequest(3, 3, 0x0100, 2).encode()]


def test_driver_drops_a_late_answer_to_an_earlier_poll() -> None:
    link = MemoryLink()
    sensor = XyMd02Sensor(link, clock=Clock())
    link.inject(RESP_BOTH)  # a late answer already waiting in the OS buffer
    assert sensor.read(0.1) == []  # discarded before the new request goes out
    assert sensor.stats.timeouts == 1
