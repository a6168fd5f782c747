"""The microcontroller bridge line: byte-exact encoder, parser, resync, driver seq handling."""

from __future__ import annotations

import re

import pytest

from firmware_sim.serial.bridge import (
    MAX_LINE,
    BridgeFrame,
    BridgeParser,
    encode_bridge_line,
    line_crc,
)
from firmware_sim.serial.bridge_driver import SEQ_WINDOW, BridgeSensor
from firmware_sim.serial.link import MemoryLink

# The known answers printed in docs/SERIAL.md (a sketch must emit exactly these bytes).
DOC_LINES = [
    (("t1", 23187, 0), b"$T,t1,23187,0*0112\r\n"),
    (("freezer-2", -18250, 65535), b"$T,freezer-2,-18250,65535*0D4D\r\n"),
    (("probe_a", 0, 42), b"$T,probe_a,0,42*AA5B\r\n"),
    (("abcdefghijklmnop", -273150, 65535), b"$T,abcdefghijklmnop,-273150,65535*B269\r\n"),
]


def reference_crc16_modbus(data: bytes) -> int:
    """Bit by bit, as the C sketch in docs/SERIAL.md computes it (no table)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_reference_crc_has_the_catalogue_check_value() -> None:
    assert reference_crc16_modbus(b"123456789") == 0x4B37
    assert line_crc(b"123456789") == "4B37"


@pytest.mark.parametrize(("fields", "wire"), DOC_LINES)
def test_documented_lines(fields: tuple[str, int, int], wire: bytes) -> None:
    assert encode_bridge_line(*fields) == wire
    payload = wire[1 : wire.index(b"*")]
    crc_digits = wire[wire.index(b"*") + 1 : -2]
    assert int(crc_digits, 16) == reference_crc16_modbus(payload)
    assert crc_digits.decode("ascii") == line_crc(payload)
    assert BridgeParser().feed(wire) == [BridgeFrame(*fields)]


def test_longest_line_is_max_line() -> None:
    assert len(DOC_LINES[-1][1]) == MAX_LINE == 40


@pytest.mark.parametrize("wire", [w for _, w in DOC_LINES])
def test_every_split_point_and_byte_at_a_time(wire: bytes) -> None:
    expected = BridgeParser().feed(wire)
    for cut in range(len(wire) + 1):
        parser = BridgeParser()
        assert parser.feed(wire[:cut]) + parser.feed(wire[cut:]) == expected, f"cut at {cut}"
    parser = BridgeParser()
    assert [f for i in range(len(wire)) for f in parser.feed(wire[i : i + 1])] == expected


def test_bare_lf_is_accepted() -> None:
    assert BridgeParser().feed(b"$T,t1,23187,0*0112\n") == [BridgeFrame("t1", 23187, 0)]


def _signed(payload: bytes) -> bytes:
    """A line with a correct CRC, so only the rule under test can reject it."""
    return b"$" + payload + b"*" + line_crc(payload).encode("ascii") + b"\r\n"


@pytest.mark.parametrize(
    ("name", "line", "counter"),
    [
        ("checksum", b"$T,t1,23187,0*0113\r\n", "bad_checksum"),
        ("seq changed, CRC kept", b"$T,t1,23187,1*0112\r\n", "bad_checksum"),
        ("swapped CRC bytes", b"$T,t1,23187,0*1201\r\n", "bad_checksum"),
        ("lower-case checksum", b"$T,freezer-2,-18250,65535*0d4d\r\n", "malformed"),
        ("two-digit checksum", b"$T,t1,23187,0*12\r\n", "malformed"),
        ("five-digit checksum", b"$T,t1,23187,0*01120\r\n", "malformed"),
        ("leading zero", _signed(b"T,t1,023187,0"), "malformed"),
        ("minus zero", _signed(b"T,t1,-0,0"), "malformed"),
        ("plus sign", _signed(b"T,t1,+5,0"), "malformed"),
        ("upper-case id", _signed(b"T,T1,5,0"), "malformed"),
        ("seq too big", _signed(b"T,t1,5,65536"), "x"),
        ("milli-C too cold", _signed(b"T,t1,-273151,0"), "malformed"),
        ("unknown type", _signed(b"H,t1,5,0"), "malformed"),
    ],
)
def test_rejected_lines(name: str, line: bytes, counter: str) -> None:
    parser = BridgeParser()
    assert parser.feed(line) == [], name
    assert parser.stats.rejected == 1, name
    if counter != "x":
        assert getattr(parser.stats, counter) == 1, name


def test_garbage_truncated_lines_and_overlong_lines_resync() -> None:
    parser = BridgeParser()
    good = encode_bridge_line("t1", 1, 1)
    stream = b"boot\r\n$T,t1,1" + good + b"$" + b"9" * 80 + good + b"\xff\x00$T,"
    assert parser.feed(stream) == [BridgeFrame("t1", 1, 1)] * 2
    assert parser.stats.malformed == 2
    assert parser.buffered == 3  # "$T," waits for the rest


def test_encoder_validates() -> None:
    with pytest.raises(ValueError, match="sensor id must match"):
        encode_bridge_line("Probe", 1, 1)
    with pytest.raises(ValueError, match=re.escape("seq must be 0..65535, found 65536")):
        encode_bridge_line("p", 1, 65536)
    with pytest.raises(
        ValueError, match=re.escape("milli-C must be in -273150..2000000, found -300000")
    ):
        encode_bridge_line("p", -300_000, 1)


def test_driver_drops_duplicates_and_counts_gaps_across_the_wrap() -> None:
    link = MemoryLink()
    sensor = BridgeSensor(link, clock=lambda: 7_000)
    link.inject(
        encode_bridge_line("a", 1000, 65534)
        + encode_bridge_line("a", 1001, 65534)  # repeated
        + encode_bridge_line("b", -5, 9)
        + encode_bridge_line("a", 1002, 1)  # 65535 and 0 missing
    )
    samples = sensor.read(0.5)
    assert [(s.sensor, s.value, s.text, s.time_ms) for s in samples] == [
        ("temp_mc", 1000, "a", 7000),
        ("temp_mc", -5, "b", 7000),
        ("temp_mc", 1002, "a", 7000),
    ]
    assert sensor.stats.duplicates == 1
    assert sensor.stats.seq_gaps == 2
    assert sensor.read(0.5) == []


def test_driver_reads_a_seq_step_beyond_the_window_as_a_restart() -> None:
    link = MemoryLink()
    sensor = BridgeSensor(link, clock=lambda: 1)
    link.inject(
        encode_bridge_line("a", 1, 500)
        + encode_bridge_line("a", 2, 0)  # the board reset: back to 0, emitted, no gaps
        + encode_bridge_line("a", 3, SEQ_WINDOW)  # the widest step still counted as loss
        + encode_bridge_line("a", 4, 2 * SEQ_WINDOW + 1)  # one further: a restart again
    )
    assert [s.value for s in sensor.read(0.5)] == [1, 2, 3, 4]
    assert sensor.stats.seq_gaps == SEQ_WINDOW - 1
    assert sensor.stats.duplicates == 0


@pytest.mark.parametrize("wire", [w for _, w in DOC_LINES])
def test_every_one_and_two_bit_error_is_rejected(wire: bytes) -> None:
    """Named mutations: any one or two flipped bits, CRC digits and delimiters included."""
    nbits = len(wire) * 8
    accepted = []
    for i in range(nbits):
        for j in range(i, nbits):
            mutated = bytearray(wire)
            mutated[i // 8] ^= 1 << (i % 8)
            if j != i:
                mutated[j // 8] ^= 1 << (j % 8)
            if BridgeParser().feed(bytes(mutated)):
                accepted.append(f"flip-bit-@{i}" + ("" if j == i else f"-and-@{j}"))
    assert accepted == []
