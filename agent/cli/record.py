"""`edgefleet record`: write a trace of the fleet in devices.yaml.

Without serial sensors the whole fleet is simulated as fast as the CPU allows and the trace is a
pure function of the file and the seed (record twice, get the same bytes). When devices.yaml
names serial sensors, recording runs in real time from now: those sensors' samples come from the
real devices (one reader thread each, agent/fleet/serial_source.py) and replace the simulated
ones they stand for; the first serial failure stops the recording.

Progress (simulated time done / total) goes to stderr when it is a terminal; a summary of the
samples per device kind is printed at the end. Ctrl-C stops early and keeps a valid trace of
what was recorded so far (exit status 130).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from agent.cli.errors import CliError
from agent.config.devices import ConfigError, FleetConfig, load_fleet, parse_duration_ms
from agent.fleet.serial_source import OpenSensor, SerialReader, SerialSetupError, open_sensors
from firmware_sim.clock import RealClock
from firmware_sim.fleet import DEFAULT_STEP_MS, Fleet, FleetSpec
from firmware_sim.samples import Sample
from firmware_sim.trace import TraceError, TraceWriter

LIVE_STEP_MS = 1_000
LIVE_LAG_MS = 2_000  # serial samples may reach us this late and still be written in order
PROGRESS_EVERY_S = 0.2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "record",
        help="record a trace of the fleet (simulated, or with real serial sensors)",
        description="Record the samples of every device in devices.yaml into a JSON Lines trace "
        "(docs/TRACES.md).",
    )
    p.add_argument(
        "--devices",
        type=Path,
        default=Path("devices.yaml"),
        help="fleet description (default: devices.yaml)",
    )
    p.add_argument(
        "--for",
        dest="duration_ms",
        required=True,
        type=_duration,
        metavar="DURATION",
        help="how much time to record: 90s, 30m, 12h, 7d, 1h30m",
    )
    p.add_argument("--seed", type=int, help="seed of the simulation (default: the file's seed)")
    p.add_argument("--out", type=Path, required=True, help="trace file to write")
    p.add_argument(
        "--step",
        dest="step_ms",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="simulation step (default 60s for simulation, 1s when recording real serial sensors)",
    )
    p.set_defaults(func=run)


def _duration(text: str) -> int:
    try:
        ms = parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if ms <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration > 0, found {text!r}")
    return ms


def run(args: argparse.Namespace, *, open_sensor: OpenSensor | None = None) -> int:
    try:
        config = load_fleet(args.devices)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    spec = config.fleet_spec()
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    live = any(d.serial is not None for d in config.devices)
    if live:
        spec = spec.starting_at(RealClock().now_ms() // 1000 * 1000)
    fleet = Fleet(spec, step_ms=args.step_ms or (LIVE_STEP_MS if live else DEFAULT_STEP_MS))
    end_ms = spec.start_ms + args.duration_ms
    rec = _Recording(args.out, spec, Progress(sys.stderr, spec.start_ms, args.duration_ms))
    wall = time.perf_counter()
    try:
        if live:
            asyncio.run(_record_live(config, fleet, end_ms, open_sensor, rec))
        else:
            for device, sample in fleet.run_until(end_ms):
                rec.write(device, sample)
    except KeyboardInterrupt:
        rec.interrupted = True
    except (OSError, TraceError) as exc:
        rec.writer.abort()
        raise CliError(f"recording failed: {exc}") from None
    except BaseException:
        rec.writer.abort()
        raise
    rec.writer.close()
    rec.progress.done()
    _summary(sys.stdout, rec, time.perf_counter() - wall, fleet.now_ms - spec.start_ms)
    return 130 if rec.interrupted else 0


class _Recording:
    """The trace being written, with its counters and progress line."""

    def __init__(self, path: Path, spec: FleetSpec, progress: Progress) -> None:
        self.path = path
        self.spec = spec
        self.progress = progress
        self.counts: collections.Counter[str] = collections.Counter()
        self.late = 0  # serial samples that arrived too late to be written in time order
        self.interrupted = False
        try:
            self.writer = TraceWriter(path, spec.trace_header())
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc}") from None

    def write(self, device: str, sample: Sample) -> None:
        self.writer.write(device, sample)
        self.counts[device] += 1
        self.progress.update(sample.time_ms, self.writer.count)


def _summary(out: TextIO, rec: _Recording, wall_s: float, sim_ms: int) -> None:
    total = sum(rec.counts.values())
    speed = f", {sim_ms / 1000 / wall_s:,.0f}x real time" if wall_s > 0 else ""
    note = " (interrupted: the trace ends there)" if rec.interrupted else ""
    print(
        f"recorded {total:,} samples of {fmt_duration(sim_ms)} to {rec.path} in {wall_s:.1f} s"
        f"{speed}{note}",
        file=out,
    )
    if rec.late:
        print(
            f"  {rec.late} serial samples arrived more than {LIVE_LAG_MS} ms late and were dropped",
            file=out,
        )
    by_kind: dict[str, list[int]] = {}
    for d in rec.spec.devices:
        row = by_kind.setdefault(d.kind, [0, 0])
        row[0] += 1
        row[1] += rec.counts[d.name]
    print(f"  {'kind':<18}{'devices':>8}{'samples':>12}", file=out)
    for kind in sorted(by_kind):
        n, samples = by_kind[kind]
        print(f"  {kind:<18}{n:>8}{samples:>12,}", file=out)


def fmt_duration(ms: int) -> str:
    """``7d``, ``1d02h30m``, ``90s`` style, to the second."""
    s = ms // 1000
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    parts += [
        f"{v:02d}{u}" if parts else f"{v}{u}"
        for v, u in ((h, "h"), (m, "m"), (s, "s"))
        if v or (parts and any((h, m, s)))
    ]
    return "".join(parts) or "0s"


class Progress:
    """``simulated 2d03h / 7d (30%), 52,311 samples`` on one rewritten stderr line (terminals
    only)."""

    def __init__(self, stream: TextIO, start_ms: int, total_ms: int) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.start_ms = start_ms
        self.total_ms = total_ms
        self._next = 0.0
        self._shown = False

    def update(self, time_ms: int, samples: int) -> None:
        if not self.enabled or samples & 1023:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + PROGRESS_EVERY_S
        done = max(0, time_ms - self.start_ms)
        pct = 100 * done // self.total_ms if self.total_ms else 100
        self.stream.write(
            f"\rrecord: simulated {fmt_duration(done)} / "
            f"{fmt_duration(self.total_ms)} ({pct}%), {samples:,} samples\033[K"
        )
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


# --------------------------------------------------------------------------- live recording


async def _record_live(
    config: FleetConfig, fleet: Fleet, end_ms: int, open_sensor: OpenSensor | None, rec: _Recording
) -> None:
    """Real-time recording: the simulated part paced on the wall clock, merged in time order
    with the samples of the real serial sensors (held back ``LIVE_LAG_MS`` to sort them)."""
    clock = RealClock()
    try:
        sensors = open_sensors(config, open_sensor, clock)
    except SerialSetupError as exc:
        raise CliError(str(exc)) from None
    sink: collections.deque[tuple[str, Sample]] = collections.deque()
    stop = threading.Event()
    readers = [SerialReader(name, s, sink, stop) for name, s in sensors]
    for r in readers:
        r.start()
    buffer: list[tuple[str, Sample]] = []
    last_t = fleet.spec.start_ms
    try:
        for target in fleet.targets(end_ms):
            await clock.sleep_until(target)
            for r in readers:
                if r.error is not None:
                    raise CliError(f"device {r.device!r}: serial sensor failed: {r.error}")
            buffer.extend(fleet.step(target))
            final = target >= end_ms
            if final:
                stop.set()
                for r in readers:
                    await asyncio.to_thread(r.join)
            while sink:
                buffer.append(sink.popleft())
            buffer.sort(key=lambda x: x[1].time_ms)
            cutoff = end_ms if final else target - LIVE_LAG_MS
            keep = []
            for device, sample in buffer:
                if sample.time_ms > cutoff:
                    keep.append((device, sample))
                elif sample.time_ms < last_t:
                    rec.late += 1
                else:
                    last_t = sample.time_ms
                    rec.write(device, sample)
            buffer = [x for x in keep if x[1].time_ms <= end_ms]
    finally:
        stop.set()
        for r in readers:
            r.join(timeout=2)
        for _, s in sensors:
            s.close()
