"""Properties of every parser: split invariance, recovery through garbage, bounded buffers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.serial.bridge import BridgeFrame, BridgeParser
from firmware_sim.serial.modbus import ModbusResponseParser, ReadRequest, RegistersResponse
from firmware_sim.serial.rfid import RfidFrame, RfidParser, encode_id12la, encode_rdm6300
from firmware_sim.serial.stats import FrameParser
from firmware_sim.serial.w1 import W1Parser

F = TypeVar("F")
PROPS = settings(max_examples=150, deadline=None)

rfid_frames = st.builds(
    RfidFrame, st.binary(min_size=5, max_size=5), st.sampled_from(["rdm6300", "id12la"])
)
bridge_frames = st.builds(
    BridgeFrame,
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,15}", fullmatch=True),
    st.integers(-273_150, 2_000_000),
    st.integers(0, 0xFFFF),
)


def rfid_wire(frame: RfidFrame) -> bytes:
    return encode_rdm6300(frame.data) if frame.layout == "rdm6300" else encode_id12la(frame.data)


def split_feed(parser: FrameParser[F], data: bytes, cuts: list[int]) -> list[F]:
    out: list[F] = []
    last = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        out += parser.feed(data[last:cut])
        last = cut
    return out


def interleave(frames: list[bytes], garbage: list[bytes]) -> bytes:
    parts = []
    for i, frame in enumerate(frames):
        parts += [garbage[i % len(garbage)] if garbage else b"", frame]
    return b"".join(parts) + (garbage[-1] if garbage else b"")


def _no(sync: bytes) -> Callable[[bytes], bytes]:
    return lambda b: b.replace(sync, b"")


@PROPS
@given(
    st.lists(rfid_frames, max_size=6),
    st.lists(st.binary(max_size=20), max_size=4),
    st.lists(st.integers(0, 300), max_size=12),
)
def test_rfid_any_split_same_frames(
    frames: list[RfidFrame], garbage: list[bytes], cuts: list[int]
) -> None:
    data = interleave([rfid_wire(f) for f in frames], garbage)
    whole = RfidParser().feed(data)
    assert split_feed(RfidParser(), data, cuts) == whole


@PROPS
@given(
    st.lists(rfid_frames, max_size=6),
    st.lists(st.binary(max_size=20).map(_no(b"\x02")), max_size=4),
    st.lists(st.integers(0, 300), max_size=12),
)
def test_rfid_every_frame_survives_garbage_without_stx(
    frames: list[RfidFrame], garbage: list[bytes], cuts: list[int]
) -> None:
    data = interleave([rfid_wire(f) for f in frames], garbage)
    assert split_feed(RfidParser(), data, cuts) == frames


@PROPS
@given(
    st.lists(bridge_frames, max_size=6),
    st.lists(st.binary(max_size=50), max_size=4),
    st.lists(st.integers(0, 500), max_size=12),
)
def test_bridge_any_split_same_frames(
    frames: list[BridgeFrame], garbage: list[bytes], cuts: list[int]
) -> None:
    data = interleave([f.encode() for f in frames], garbage)
    assert split_feed(BridgeParser(), data, cuts) == BridgeParser().feed(data)


@PROPS
@given(
    st.lists(bridge_frames, max_size=6),
    st.lists(st.binary(max_size=50).map(_no(b"$")), max_size=4),
    st.lists(st.integers(0, 500), max_size=12),
)
def test_bridge_every_frame_survives_garbage_without_dollar(
    frames: list[BridgeFrame], garbage: list[bytes], cuts: list[int]
) -> None:
    data = interleave([f.encode() for f in frames], garbage)
    assert split_feed(BridgeParser(), data, cuts) == frames


@PROPS
@given(
    st.integers(1, 247),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8),
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.lists(st.integers(0, 120), max_size=10),
)
def test_modbus_response_found_through_garbage_at_any_split(
    address: int, registers: list[int], before: bytes, after: bytes, cuts: list[int]
) -> None:
    request = ReadRequest(address, 0x04, 1, len(registers))
    response = RegistersResponse(address, 0x04, tuple(registers))
    parser = ModbusResponseParser()
    parser.expect(request)
    assert split_feed(parser, before + response.encode() + after, cuts) == [response]


@PROPS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20))
def test_arbitrary_bytes_never_raise_and_buffers_stay_bounded(data: bytes, cuts: list[int]) -> None:
    modbus = ModbusResponseParser()
    modbus.expect(ReadRequest(1, 0x04, 1, 2))
    parsers: list[FrameParser[Any]] = [RfidParser(), BridgeParser(), modbus]
    for parser in parsers:
        last = 0
        for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
            parser.feed(data[last:cut])
            last = cut
            assert parser.buffered < parser.max_frame


@PROPS
@given(st.text(max_size=300))
def test_w1_parser_never_raises(text: str) -> None:
    parser = W1Parser()
    assert parser.parse(text) is None or parser.stats.frames == 1
