"""`edgefleet replay`: drive a recorded trace (docs/TRACES.md) through real device agents.

The trace is checked whole before anything starts (every line, and every device against the
devices file), so a bad trace never leaves a half-replayed data dir. Then the fleet runner runs
the devices file with the trace as its sample source, from the trace's first sample through its
last: each device signs, seals, stores and gossips exactly the samples the trace recorded for it,
with their recorded times. Same live view and clean stop (Ctrl-C) as `edgefleet run`.

A replay always starts at the trace's first sample, so it refuses a data dir whose chains
already hold readings (they would be followed by readings from earlier times).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.cli.errors import CliError
from agent.cli.fleetopts import (
    add_broker,
    add_settle,
    fleet_log,
    make_data_dir,
    parse_settle,
    parse_speed,
)
from agent.config.devices import ConfigError, FleetConfig, load_fleet
from agent.fleet.datadir import DataDir
from agent.fleet.runner import FleetRunner, RunOptions, install_signal_handlers
from agent.fleet.sources import TraceSource
from agent.transport.brokers import BrokerError
from agent.transport.errors import TransportError
from firmware_sim.trace import TraceError, TraceHeader, TraceReader
from ledger.errors import LedgerError
from ledger.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a recorded trace through real device agents (live view; Ctrl-C stops)",
        description="Feed every sample of a trace (edgefleet record) to the agents of the "
        "devices file: they sign, seal, store and gossip exactly the recorded samples.",
    )
    p.add_argument("trace", type=Path, metavar="TRACE", help="trace file (JSON Lines)")
    p.add_argument(
        "--devices",
        type=Path,
        default=Path("devices.yaml"),
        help="devices file naming every device of the trace (default: devices.yaml)",
    )
    p.add_argument("--data", type=Path, required=True, help="a new or empty data dir (created)")
    add_broker(p)
    p.add_argument(
        "--speed",
        default="max",
        help="simulated seconds per wall second (1 = the recorded pace), or max (default)",
    )
    add_settle(p, "wall seconds to wait at the end for gossip to converge")
    p.add_argument("--no-view", action="store_true", help="no live view (summary at the end)")
    p.set_defaults(func=_replay)


@dataclass(frozen=True)
class TraceSummary:
    """What a full pass over a trace found: its header, sample count and last sample time."""

    header: TraceHeader
    samples: int
    last_ms: int | None

    @property
    def span_ms(self) -> int:
        """Simulated time from the trace's start through its last sample."""
        return 0 if self.last_ms is None else max(0, self.last_ms - self.header.start_ms)


def scan_trace(path: Path) -> TraceSummary:
    """Validate every line of the trace; TraceError / OSError say what is wrong and where."""
    reader = TraceReader(path)
    count = 0
    last = None
    for _, sample in reader:
        count += 1
        last = sample.time_ms
    return TraceSummary(reader.header, count, last)


def check_devices(trace: Path, header: TraceHeader, cfg: FleetConfig) -> None:
    """Every trace device must be in the devices file, with the same kind."""
    known = {d.name: d for d in cfg.devices}
    missing = [d.name for d in header.devices if d.name not in known]
    if missing:
        raise CliError(f"{trace}: line 1: trace devices not in {cfg.source}: {', '.join(missing)}")
    for d in header.devices:
        if known[d.name].kind != d.kind:
            raise CliError(
                f"{trace}: line 1: device {d.name!r} is a {d.kind} in the trace but a "
                f"{known[d.name].kind} in {cfg.source}"
            )


def check_fresh(data: DataDir, cfg: FleetConfig) -> None:
    """Refuse a data dir whose chains already hold readings of a device of ``cfg``."""
    for dev in cfg.devices:
        path = data.store_path(dev.name)
        if not path.exists():
            continue
        try:
            with Store(path) as store:
                last = store.last_seq()
        except LedgerError as exc:
            raise CliError(f"{path}: {exc}") from None
        if last is not None:
            raise CliError(
                f"{data.root}: device {dev.name!r} already holds {last + 1} readings; a replay "
                "starts at the trace's first sample, so give it a new data dir"
            )


def _replay(args: argparse.Namespace) -> int:
    speed = parse_speed(args.speed)
    settle = parse_settle(args.settle)
    trace: Path = args.trace
    try:
        cfg = load_fleet(args.devices)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        summary = scan_trace(trace)
    except TraceError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{trace}: cannot read the trace: {exc.strerror or exc}") from None
    check_devices(trace, summary.header, cfg)
    data = DataDir(args.data)
    check_fresh(data, cfg)
    opts = RunOptions(
        data=args.data,
        broker=args.broker,
        for_ms=summary.span_ms,
        speed=speed,
        settle_s=settle,
        view=not args.no_view,
        source=lambda c, step: TraceSource(str(trace), c, step),
        resume=False,
    )
    make_data_dir(args.data)
    runner = FleetRunner(cfg, opts)

    async def main() -> int:
        remove = install_signal_handlers(runner)
        try:
            result = await runner.run()
        finally:
            remove()
        gossip = "converged" if result.converged else "not converged within --settle"
        done = "interrupted: " if result.interrupted else ""
        print(
            f"{done}replayed {result.samples} of {summary.samples} samples of {trace} "
            f"(simulated {result.sim_end_ms - result.sim_start_ms} ms) in {result.wall_s:.1f} s, "
            f"gossip {gossip}; data in {args.data}",
            file=sys.stderr,
        )
        return 130 if result.interrupted else 0

    try:
        with fleet_log(args.data / "fleet.log"):
            return asyncio.run(main())
    except (BrokerError, TransportError) as exc:
        raise CliError(str(exc)) from None
