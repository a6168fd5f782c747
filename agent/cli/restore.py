"""`edgefleet restore`: bring a wiped device's chain back from its peers (docs/RESTORE.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.cli.fleetopts import add_broker, add_settle, fleet_log, parse_settle, parse_speed
from agent.config.devices import ConfigError, load_fleet, parse_duration_ms
from agent.device.runtime import RestoreError
from agent.fleet.datadir import DataDir
from agent.fleet.restore_device import resolve_device, restore_device
from agent.fleet.runner import RunOptions, install_signal_handlers
from agent.transport.brokers import BrokerError
from agent.transport.errors import TransportError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "restore",
        help="restore a wiped device's chain from its peers, then let it continue",
        description=(
            "Restore the chain of a device whose store was wiped (its identity kept) from its "
            "peers, verified against its certificate and the fleet root. By default the whole "
            "fleet of the data dir runs (the peers serve from their stores); with --alone only "
            "this device runs and its peers must run elsewhere on the same broker."
        ),
    )
    p.add_argument("--device", required=True, help="device name or device id")
    p.add_argument("--data", type=Path, required=True, help="fleet data dir")
    p.add_argument("--devices", type=Path, default=Path("devices.yaml"))
    add_broker(p)
    p.add_argument("--alone", action="store_true", help="run only this device")
    p.add_argument(
        "--for",
        dest="duration",
        default="0s",
        help="simulated time to run on after the restore, e.g. 1h (default: stop when restored)",
    )
    p.add_argument("--speed", default="max", help="simulated seconds per wall second, or max")
    add_settle(p, "wall seconds to converge at the end")
    p.set_defaults(func=_restore)


def _restore(args: argparse.Namespace) -> int:
    speed, settle = parse_speed(args.speed), parse_settle(args.settle)
    try:
        cfg = load_fleet(args.devices)
        for_ms = parse_duration_ms(args.duration)
    except (ConfigError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    data = DataDir(args.data)
    if not data.devices.is_dir():
        raise CliError(f"{args.data}: not a fleet data dir (no devices/ directory)")
    try:
        name = resolve_device(data, cfg, args.device)
    except RestoreError as exc:
        raise CliError(str(exc)) from None
    opts = RunOptions(
        data=args.data,
        broker=args.broker,
        for_ms=for_ms,
        speed=speed,
        settle_s=settle,
        view=False,
    )

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async def main() -> int:
        removers = []
        try:
            outcome = await restore_device(
                cfg,
                opts,
                name,
                alone=args.alone,
                progress=say,
                runner_ready=lambda r: removers.append(install_signal_handlers(r)),
            )
        finally:
            for remove in removers:
                remove()
        print(outcome.describe())
        return 0

    try:
        with fleet_log(args.data / "fleet.log"):
            return asyncio.run(main())
    except (RestoreError, BrokerError, TransportError) as exc:
        raise CliError(str(exc)) from None
