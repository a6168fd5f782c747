"""Trace files: record samples as canonical JSON Lines and replay them exactly.

A trace is UTF-8 JSON Lines (docs/TRACES.md is the reference). Line 1 is the header::

    {"devices":[{"kind":"refrigerator","name":"fridge-1","site":"home-1"}],
     "fleet":"demo","format":"edgefleet-trace","seed":7,"start_ms":1736121600000,"version":1}

then one sample per line, the device name next to ``Sample.to_json()``::

    {"device":"fridge-1","sensor":"fridge.temp_mc","t":1736121660000,"value":4012}

Every line is canonical (sorted keys, no spaces, ASCII, ``\\n`` terminated), so one seed gives
byte-identical files. Samples are in non-decreasing time order. The reader validates the header
and every line and names the line number in each error; ``replay`` yields the samples again at
their recorded pace, faster, or as fast as possible.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from firmware_sim.clock import Clock
from firmware_sim.samples import Sample, SampleError

FORMAT = "edgefleet-trace"
VERSION = 1
_HEADER_KEYS = frozenset({"format", "version", "fleet", "seed", "start_ms", "devices"})
_DEVICE_KEYS = frozenset({"name", "kind", "site"})
_SAMPLE_KEYS = frozenset({"device", "t", "sensor", "value"})
_OPTIONAL_SAMPLE_KEYS = frozenset({"tag", "text"})


class TraceError(ValueError):
    """A trace file is malformed; the message names the file and line."""


def canonical(obj: object) -> str:
    """The one serialisation used in trace files (sorted keys, compact, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class TraceDevice:
    name: str
    kind: str
    site: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "site": self.site}


@dataclass(frozen=True, slots=True)
class TraceHeader:
    fleet: str
    seed: int
    start_ms: int
    devices: tuple[TraceDevice, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "fleet": self.fleet,
            "seed": self.seed,
            "start_ms": self.start_ms,
            "devices": [d.to_json() for d in self.devices],
        }

    @classmethod
    def from_json(cls, d: object) -> TraceHeader:
        if not isinstance(d, dict):
            raise ValueError(f"header must be a JSON object, found {type(d).__name__}")
        fmt = d.get("format")
        if fmt != FORMAT:
            raise ValueError(f"header 'format' must be {FORMAT!r}, found {fmt!r}")
        version = d.get("version")
        if version != VERSION:
            raise ValueError(f"header 'version' {version!r} is not supported (expected {VERSION})")
        _exact_keys(d, _HEADER_KEYS, frozenset(), "header")
        fleet, seed, start_ms, devices = d["fleet"], d["seed"], d["start_ms"], d["devices"]
        if not isinstance(fleet, str):
            raise ValueError(f"header 'fleet' must be a string, found {fleet!r}")
        if type(seed) is not int or type(start_ms) is not int:
            raise ValueError(
                f"header 'seed' and 'start_ms' must be integers, found {seed!r} and {start_ms!r}"
            )
        if not isinstance(devices, list) or not devices:
            raise ValueError(f"header 'devices' must be a non-empty list, found {devices!r}")
        parsed = []
        for i, dev in enumerate(devices):
            if not isinstance(dev, dict):
                raise ValueError(f"header devices[{i}] must be an object, found {dev!r}")
            _exact_keys(dev, _DEVICE_KEYS, frozenset(), f"header devices[{i}]")
            if not all(isinstance(dev[k], str) and dev[k] for k in _DEVICE_KEYS):
                raise ValueError(
                    f"header devices[{i}]: name, kind, site must be non-empty "
                    f"strings, found {dev!r}"
                )
            parsed.append(TraceDevice(dev["name"], dev["kind"], dev["site"]))
        names = [p.name for p in parsed]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"header devices: duplicate names {dupes}")
        return cls(fleet, seed, start_ms, tuple(parsed))


def _exact_keys(
    d: dict[str, Any], required: frozenset[str], optional: frozenset[str], what: str
) -> None:
    keys = set(d)
    missing = required - keys
    unknown = keys - required - optional
    if missing or unknown:
        raise ValueError(
            f"{what}: expected keys {sorted(required)}"
            f"{' (optional ' + str(sorted(optional)) + ')' if optional else ''}, "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}"
        )


def sample_line(device: str, sample: Sample) -> str:
    """One canonical sample line, without the newline."""
    d = sample.to_json()
    d["device"] = device
    return canonical(d)


class TraceWriter:
    """Writes a header then samples; refuses samples out of time order or for unknown devices.

    Writes to ``<path>.partial`` and renames onto ``path`` on ``close()``, so a reader never
    sees a half-written trace under the final name. ``abort()`` removes the partial file.
    """

    def __init__(self, path: str | os.PathLike[str], header: TraceHeader) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._devices = frozenset(d.name for d in header.devices)
        self._last_t: int | None = None
        self.count = 0
        self._f: IO[str] | None = open(  # noqa: SIM115 - closed in close()/abort()
            self._tmp, "w", encoding="ascii", newline="\n"
        )
        self._f.write(canonical(header.to_json()) + "\n")

    def write(self, device: str, sample: Sample) -> None:
        if self._f is None:
            raise TraceError(f"{self.path}: writer is closed")
        if device not in self._devices:
            raise TraceError(f"{self.path}: device {device!r} is not in the header")
        if self._last_t is not None and sample.time_ms < self._last_t:
            raise TraceError(
                f"{self.path}: sample at {sample.time_ms} ms after one at "
                f"{self._last_t} ms (samples must be in time order)"
            )
        self._last_t = sample.time_ms
        self._f.write(sample_line(device, sample) + "\n")
        self.count += 1

    def write_all(self, items: Iterable[tuple[str, Sample]]) -> None:
        for device, sample in items:
            self.write(device, sample)

    def close(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._f is None:
            return
        self._f.close()
        self._f = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class TraceReader:
    """Validates and yields the samples of a trace file (``iter`` it for ``(device, Sample)``).

    The header is read and checked on construction. Each sample line must be canonical JSON with
    exactly the sample keys, name a device of the header, hold a valid Sample, end with a newline
    and not go back in time; any violation raises TraceError naming the line number.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            first = f.readline()
        if not first:
            raise TraceError(f"{self.path}: line 1: empty file, expected a trace header")
        text = self._decode(first, 1)
        try:
            self.header = TraceHeader.from_json(json.loads(text))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise TraceError(f"{self.path}: line 1: {exc}") from None
        if canonical(self.header.to_json()) != text:
            raise TraceError(
                f"{self.path}: line 1: header is not in canonical form "
                "(sorted keys, compact separators)"
            )
        self._devices = frozenset(d.name for d in self.header.devices)

    def _decode(self, raw: bytes, lineno: int) -> str:
        if not raw.endswith(b"\n"):
            raise TraceError(f"{self.path}: line {lineno}: truncated (no newline at end of line)")
        try:
            return raw[:-1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise TraceError(
                f"{self.path}: line {lineno}: not ASCII ({exc.reason} at byte {exc.start})"
            ) from None

    def __iter__(self) -> Iterator[tuple[str, Sample]]:
        last_t: int | None = None
        with self.path.open("rb") as f:
            f.readline()
            for lineno, raw in enumerate(f, start=2):
                device, sample = self._parse(raw, lineno)
                if last_t is not None and sample.time_ms < last_t:
                    raise TraceError(
                        f"{self.path}: line {lineno}: time {sample.time_ms} ms is "
                        f"before the previous sample's {last_t} ms"
                    )
                last_t = sample.time_ms
                yield device, sample

    def _parse(self, raw: bytes, lineno: int) -> tuple[str, Sample]:
        text = self._decode(raw, lineno)
        where = f"{self.path}: line {lineno}"
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise TraceError(f"{where}: not JSON ({exc})") from None
        if not isinstance(d, dict):
            raise TraceError(f"{where}: expected a JSON object, found {type(d).__name__}")
        try:
            _exact_keys(d, _SAMPLE_KEYS, _OPTIONAL_SAMPLE_KEYS, "sample")
        except ValueError as exc:
            raise TraceError(f"{where}: {exc}") from None
        device = d.pop("device")
        if device not in self._devices:
            raise TraceError(f"{where}: device {device!r} is not in the header")
        try:
            sample = Sample.from_json(d)
        except (SampleError, ValueError) as exc:
            raise TraceError(f"{where}: {exc}") from None
        if sample_line(device, sample) != text:
            raise TraceError(
                f"{where}: not in canonical form (sorted keys, compact separators, integer values)"
            )
        return device, sample


async def replay(
    reader: TraceReader, clock: Clock, speed: float | None = 1.0
) -> AsyncIterator[tuple[str, Sample]]:
    """Yield the trace's samples again, unchanged, paced on ``clock``.

    The first sample is yielded at once; each later one when ``(t - t_first) / speed`` ms have
    passed on ``clock`` since the replay began. ``speed=None`` means as fast as possible (no
    waiting). The samples keep their recorded ``time_ms``.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be > 0 or None (as fast as possible), found {speed!r}")
    begin = clock.now_ms()
    first_t: int | None = None
    for device, sample in reader:
        if first_t is None:
            first_t = sample.time_ms
        if speed is not None:
            due = begin + int((sample.time_ms - first_t) / speed)
            if due > clock.now_ms():
                await clock.sleep_until(due)
        yield device, sample
