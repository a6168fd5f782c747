"""The microcontroller bridge line: byte-exact encoder, parser, resync, driver seq handling."""

from __future__ import annotations

import functools
import operator
import re

import pytest

from firmware_sim.serial.bridge import (
    BridgeFrame,
    BridgeParser,
    encode_bridge_line,
    xor_checksum,
)
from firmware_sim.serial.bridge_driver import BridgeSensor
from firmware_sim.serial.link import MemoryLink

# The known answers printed in docs/SERIAL.md (a sketch must emit exactly these bytes).
DOC_LINES = [
    (("t1", 23187, 0), b"$T,t1,23187,0*32\r\n"),
    (("freezer-2", -18250, 65535), b"$T,freezer-2,-18250,65535*3D\r\n"),
    (("probe_a", 0, 42), b"$T,probe_a,0,42*1A\r\n"),
]


@pytest.mark.parametrize(("fields", "wire"), DOC_LINES)
def test_documented_lines(fields: tuple[str, int, int], wire: bytes) -> None:
    assert encode_bridge_line(*fields) == wire
    payload = wire[1 : wire.index(b"*")]
    assert functools.reduce(operator.xor, payload) == int(wire[-4:-2], 16) == xor_checksum(payload)
    assert BridgeParser().feed(wire) == [BridgeFrame(*fields)]


@pytest.mark.parametrize("wire", [w for _, w in DOC_LINES])
def test_every_split_point_and_byte_at_a_time(wire: bytes) -> None:
    expected = BridgeParser().feed(wire)
    for cut in range(len(wire) + 1):
        parser = BridgeParser()
        assert parser.feed(wire[:cut]) + parser.feed(wire[cut:]) == expected, f"cut at {cut}"
    parser = BridgeParser()
    assert [f for i in range(len(wire)) for f in parser.feed(wire[i : i + 1])] == expected


def test_bare_lf_is_accepted() -> None:
    assert BridgeParser().feed(b"$T,t1,23187,0*32\n") == [BridgeFrame("t1", 23187, 0)]


@pytest.mark.parametrize(
    ("name", "line", "counter"),
    [
        ("checksum", b"$T,t1,23187,0*33\r\n", "bad_checksum"),
        ("lower-case checksum", b"$T,freezer-2,-18250,65535*3d\r\n", "malformed"),
        ("leading zero", b"$T,t1,023187,0*02\r\n", "malformed"),
        ("minus zero", b"$T,t1,-0,0*2F\r\n", "malformed"),
        ("plus sign", b"$T,t1,+5,0*31\r\n", "malformed"),
        ("upper-case id", b"$T,T1,5,0*22\r\n", "malformed"),
        ("seq too big", encode_bridge_line("t1", 5, 6553).replace(b",6553*", b",65536*"), "x"),
        ("unknown type", b"$H,t1,5,0*3E\r\n", "malformed"),
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
