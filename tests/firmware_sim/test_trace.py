"""Trace files: canonical bytes, strict reading with line numbers, exact paced replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.clock import SimClock
from firmware_sim.samples import Sample
from firmware_sim.trace import (
    TraceDevice,
    TraceError,
    TraceHeader,
    TraceReader,
    TraceWriter,
    replay,
    sample_line,
)

HEADER = TraceHeader(
    fleet="demo",
    seed=7,
    start_ms=1_736_121_600_000,
    devices=(
        TraceDevice("fridge-1", "refrigerator", "home-1"),
        TraceDevice("washer-1", "washing_machine", "home-1"),
    ),
)
SAMPLES = [
    ("fridge-1", Sample(1_736_121_660_000, "fridge.temp_mc", 4012)),
    (
        "washer-1",
        Sample(
            1_736_121_660_000, "rfid.in", 1, tag="urn:epc:id:sgtin:4012345.012345.9", text="wool"
        ),
    ),
    ("fridge-1", Sample(1_736_121_720_000, "fridge.temp_mc", -250)),
]
EXPECTED_BYTES = (
    b'{"devices":[{"kind":"refrigerator","name":"fridge-1","site":"home-1"},'
    b'{"kind":"washing_machine","name":"washer-1","site":"home-1"}],"fleet":"demo",'
    b'"format":"edgefleet-trace","seed":7,"start_ms":1736121600000,"version":1}\n'
    b'{"device":"fridge-1","sensor":"fridge.temp_mc","t":1736121660000,"value":4012}\n'
    b'{"device":"washer-1","sensor":"rfid.in","t":1736121660000,'
    b'"tag":"urn:epc:id:sgtin:4012345.012345.9","text":"wool","value":1}\n'
    b'{"device":"fridge-1","sensor":"fridge.temp_mc","t":1736121720000,"value":-250}\n'
)


def write(path: Path, samples: list[tuple[str, Sample]] = SAMPLES) -> Path:
    with TraceWriter(path, HEADER) as w:
        w.write_all(samples)
    return path


def test_known_answer_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl")
    assert path.read_bytes() == EXPECTED_BYTES
    assert not (tmp_path / "t.jsonl.partial").exists()


def test_reader_returns_header_and_samples_unchanged(tmp_path: Path) -> None:
    reader = TraceReader(write(tmp_path / "t.jsonl"))
    assert reader.header == HEADER
    assert list(reader) == SAMPLES


def test_writer_refuses_unknown_devices_and_time_going_back(tmp_path: Path) -> None:
    w = TraceWriter(tmp_path / "t.jsonl", HEADER)
    w.write(*SAMPLES[2])
    with pytest.raises(TraceError, match="'fridge-9' is not in the header"):
        w.write("fridge-9", SAMPLES[0][1])
    with pytest.raises(TraceError, match="must be in time order"):
        w.write(*SAMPLES[0])
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_block_leaves_no_file(tmp_path: Path) -> None:
    def interrupted_recording() -> None:
        with TraceWriter(tmp_path / "t.jsonl", HEADER) as w:
            w.write(*SAMPLES[0])
            raise RuntimeError("recording interrupted")

    with pytest.raises(RuntimeError):
        interrupted_recording()
    assert list(tmp_path.iterdir()) == []


def _mutate(lines: list[bytes], lineno: int, new: bytes) -> bytes:
    out = list(lines)
    out[lineno - 1] = new
    return b"".join(out)


GOOD_LINES = EXPECTED_BYTES.splitlines(keepends=True)
MUTATIONS = {
    "header-not-json": (1, b"{nope\n", "line 1: "),
    "header-wrong-format": (
        1,
        GOOD_LINES[0].replace(b"edgefleet-trace", b"other"),
        "line 1: header 'format' must be 'edgefleet-trace'",
    ),
    "header-future-version": (
        1,
        GOOD_LINES[0].replace(b'"version":1', b'"version":2'),
        "line 1: header 'version' 2 is not supported",
    ),
    "header-extra-key": (
        1,
        GOOD_LINES[0].replace(b'"fleet"', b'"x":1,"fleet"'),
        "line 1: header: expected keys",
    ),
    "header-not-canonical": (
        1,
        GOOD_LINES[0].replace(b'"fleet":', b'"fleet": '),
        "line 1: header is not in canonical form",
    ),
    "sample-unknown-device": (
        3,
        GOOD_LINES[2].replace(b"washer-1", b"washer-2"),
        "line 3: device 'washer-2' is not in the header",
    ),
    "sample-float-value": (
        2,
        GOOD_LINES[1].replace(b"4012", b"40.12"),
        "line 2: malformed sample object",
    ),
    "sample-missing-key": (
        4,
        b'{"device":"fridge-1","t":1736121720000,"value":-250}\n',
        "line 4: sample: expected keys",
    ),
    "sample-unknown-key": (
        4,
        GOOD_LINES[3].replace(b'"value"', b'"unit":"mc","value"'),
        "line 4: sample: expected keys",
    ),
    "sample-bad-sensor": (
        2,
        GOOD_LINES[1].replace(b"fridge.temp_mc", b"Fridge Temp"),
        "line 2: sensor name 'Fridge Temp' does not match",
    ),
    "sample-not-canonical": (
        2,
        GOOD_LINES[1].replace(b',"t"', b', "t"'),
        "line 2: not in canonical form",
    ),
    "sample-not-object": (3, b"[1,2]\n", "line 3: expected a JSON object, found list"),
    "sample-time-goes-back": (
        4,
        GOOD_LINES[3].replace(b"1736121720000", b"1736121000000"),
        "line 4: time 1736121000000 ms is before",
    ),
    "sample-not-ascii": (
        2,
        GOOD_LINES[1].replace(b"fridge-1", b"fridge-\xc3\xa9"),
        "line 2: not ASCII",
    ),
    "trailing-garbage": (4, GOOD_LINES[3] + b"garbage\n", "line 5: not JSON"),
    "truncated-last-line": (4, GOOD_LINES[3][:-9], "line 4: truncated"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_named_mutations_are_rejected_with_their_line_number(tmp_path: Path, name: str) -> None:
    lineno, new, message = MUTATIONS[name]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_mutate(GOOD_LINES, lineno, new))
    with pytest.raises(TraceError) as info:
        list(TraceReader(path))
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    with pytest.raises(TraceError, match="line 1: empty file"):
        TraceReader(tmp_path / "e.jsonl")


sensor_names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True)
samples_st = st.builds(
    Sample,
    time_ms=st.integers(0, 2**53),
    sensor=sensor_names,
    value=st.integers(-(2**63), 2**63 - 1),
    tag=st.none()
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=96),
    text=st.none() | st.text(max_size=64),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fridge-1", "washer-1"]), samples_st), max_size=20))
def test_any_samples_round_trip_byte_identically(
    tmp_path_factory: pytest.TempPathFactory, items: list[tuple[str, Sample]]
) -> None:
    items = sorted(items, key=lambda x: x[1].time_ms)
    d = tmp_path_factory.mktemp("rt")
    first = write(d / "a.jsonl", items)
    back = list(TraceReader(first))
    assert back == items
    again = write(d / "b.jsonl", back)
    assert first.read_bytes() == again.read_bytes()
    for line, (device, sample) in zip(first.read_bytes().splitlines()[1:], items, strict=True):
        assert json.loads(line) == {"device": device, **sample.to_json()}
        assert line.decode() == sample_line(device, sample)


def test_replay_at_recorded_pace_speed_and_max(tmp_path: Path) -> None:
    reader = TraceReader(write(tmp_path / "t.jsonl"))

    def run(speed: float | None) -> list[tuple[int, str, Sample]]:
        clock = SimClock(5_000)

        async def main() -> list[tuple[int, str, Sample]]:
            return [(clock.now_ms(), d, s) async for d, s in replay(reader, clock, speed)]

        return clock.run(main())

    recorded = run(1.0)
    assert [(d, s) for _, d, s in recorded] == SAMPLES
    assert [t for t, _, _ in recorded] == [5_000, 5_000, 65_000]
    assert [t for t, _, _ in run(60.0)] == [5_000, 5_000, 6_000]
    assert [t for t, _, _ in run(None)] == [5_000, 5_000, 5_000]
    assert [(d, s) for _, d, s in run(None)] == SAMPLES

    async def first_at_speed_zero() -> tuple[str, Sample]:
        return await anext(replay(reader, SimClock(0), 0))

    with pytest.raises(ValueError, match="speed must be > 0"):
        asyncio.run(first_at_speed_zero())
