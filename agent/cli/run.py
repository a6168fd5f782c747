"""`edgefleet run`: a fleet from devices.yaml, with a live view."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.cli.fleetopts import (
    add_broker,
    add_settle,
    check_seed,
    fleet_log,
    make_data_dir,
    parse_settle,
    parse_speed,
)
from agent.cli.haopts import add_homeassistant, bridge_running, homeassistant_bridge
from agent.config.devices import ConfigError, load_fleet, parse_duration_ms
from agent.device.sealing import SealPolicy
from agent.fleet.runner import FleetRunner, RunOptions, install_signal_handlers
from agent.transport.brokers import BrokerError
from agent.transport.errors import TransportError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a fleet from devices.yaml (live view; Ctrl-C stops)")
    p.add_argument("--devices", type=Path, default=Path("devices.yaml"))
    p.add_argument("--data", type=Path, required=True, help="data dir (created if missing)")
    add_broker(p)
    p.add_argument(
        "--for",
        dest="duration",
        help="simulated duration, e.g. 90s, 12h, 7d (default: until Ctrl-C)",
    )
    p.add_argument("--speed", default="max", help="simulated seconds per wall second, or max")
    p.add_argument("--seed", type=int, help="override the file's seed")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run on the wall clock: readings carry the real time (implies --speed 1)",
    )
    p.add_argument("--shard", default="0/1", help="run shard I of N (devices i %% N == I)")
    p.add_argument("--block-readings", type=int, default=64, help="seal at this many readings")
    p.add_argument("--block-age", default="10m", help="seal when the oldest reading is this old")
    add_settle(p, "wall seconds to wait at the end for gossip to converge")
    p.add_argument("--no-view", action="store_true", help="no live view (summary at the end)")
    add_homeassistant(p)
    p.set_defaults(func=_run)


def _parse(args: argparse.Namespace) -> RunOptions:
    try:
        for_ms = parse_duration_ms(args.duration) if args.duration else None
        age_ms = parse_duration_ms(args.block_age)
    except ValueError as exc:  # ConfigError is a ValueError too
        raise CliError(f"--for/--block-age: {exc}") from None
    speed = parse_speed(args.speed)
    try:
        i, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        raise CliError(f"--shard: expected I/N, found {args.shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise CliError(f"--shard {args.shard}: need 0 <= I < N")
    try:
        seal = SealPolicy(max_readings=args.block_readings, max_age_ms=age_ms)
    except ValueError as exc:
        raise CliError(f"--block-readings/--block-age: {exc}") from None
    return RunOptions(
        data=args.data,
        broker=args.broker,
        for_ms=for_ms,
        speed=speed,
        seed=check_seed(args.seed),
        shard=(i, n),
        seal=seal,
        settle_s=parse_settle(args.settle),
        view=not args.no_view,
        realtime=args.realtime,
    )


def _run(args: argparse.Namespace) -> int:
    opts = _parse(args)
    try:
        cfg = load_fleet(args.devices)
    except (ConfigError, OSError) as exc:
        raise CliError(str(exc)) from None
    bridge = homeassistant_bridge(args, cfg, opts)
    make_data_dir(args.data)
    runner = FleetRunner(cfg, opts)

    async def main() -> int:
        remove = install_signal_handlers(runner)
        try:
            async with bridge_running(bridge, runner):
                result = await runner.run()
        finally:
            remove()
        if result.interrupted:
            state = "interrupted before it converged" if not result.converged else "converged"
        else:
            state = "converged" if result.converged else "not converged within --settle"
        print(
            f"stopped at simulated {result.sim_end_ms - result.sim_start_ms} ms after "
            f"{result.wall_s:.1f} s: {result.samples} samples, gossip {state}; "
            f"data in {args.data}",
            file=sys.stderr,
        )
        return 0

    try:
        with fleet_log(args.data / "fleet.log"):
            return asyncio.run(main())
    except (BrokerError, TransportError) as exc:
        raise CliError(str(exc)) from None
