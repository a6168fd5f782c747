"""Shared benchmark plumbing: arguments, interleaved timing rounds, and output.

Every benchmark is ``python -m bench.<name> [--json] [--quick]``: ``--json`` prints exactly one
JSON object on stdout, ``--quick`` runs a smaller workload that finishes in a few seconds. The
machines are shared and noisy, so a baseline and the path it is compared with are timed in
alternating rounds (``interleave``) and summarized by their median (``Timing``); each case times
its own work so that set-up stays outside the measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BenchArgs:
    json: bool
    quick: bool


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with ``--json`` and ``--quick``; add a benchmark's own options to it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small workload (a few seconds)")
    return parser


def parse_args(prog: str, description: str, argv: Sequence[str] | None = None) -> BenchArgs:
    ns = make_parser(prog, description).parse_args(argv)
    return BenchArgs(json=ns.json, quick=ns.quick)


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_call_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call: the gap is time spent waiting (I/O)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass(frozen=True, slots=True)
class Timing:
    """Durations of one case over the rounds, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    def per_second(self, count: int) -> float:
        """Operations per second at the median duration."""
        return count / self.median


def interleave(cases: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, Timing]:
    """Run every case once per round, in order, for ``rounds`` rounds.

    Each case returns the seconds its measured part took (so its set-up is not counted).
    Alternating the cases spreads the machine's noise over all of them instead of letting one
    case catch a quiet minute and another a busy one. Garbage is collected before each case.
    """
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, found {rounds}")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            gc.collect()
            samples[name].append(case())
    return {name: Timing(tuple(durations)) for name, durations in samples.items()}


def environment() -> dict[str, object]:
    """Where the figures were taken: interpreter, platform and CPU count."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
    }


def emit(result: Mapping[str, object], args: BenchArgs, title: str) -> None:
    """Print ``result`` as one JSON object (``--json``) or as a readable two-column table."""
    if args.json:
        json.dump(result, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
        return
    print(title)
    for key, value in _flatten(result):
        print(f"  {key:<34} {_show(value)}")


def _flatten(obj: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in obj.items():
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
