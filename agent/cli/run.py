"""`edgefleet run`: a fleet from devices.yaml, or some of its devices, with a live view.

``--device NAME`` (repeatable) runs only the named devices: a machine that holds some devices'
keys (a data dir of pre-enrolled devices, docs/DEPLOY.md) runs those. It cannot be combined with
``--shard``: the names already say exactly which devices this process runs. The keys of such a
data dir are unlocked with ``--passphrase-file``, ``$EDGEFLEET_PASSPHRASE`` or a prompt at a
terminal; a simulated fleet's own data dir keeps its generated passphrase file.

The ``serial:`` sensors of the devices this process runs are read live and imply ``--realtime``
(agent/fleet/serial_source.py; docs/DEVICES.md says what a lost port does).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.cli.fleetopts import (
    add_broker,
    add_metrics,
    add_settle,
    check_seed,
    fleet_log,
    make_data_dir,
    parse_settle,
    parse_speed,
)
from agent.cli.haopts import add_homeassistant, bridge_running, homeassistant_bridge
from agent.cli.web import add_live_web, live_web
from agent.config.devices import ConfigError, FleetConfig, load_fleet, parse_duration_ms
from agent.device.faults import is_disk_full
from agent.device.sealing import SealPolicy
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.fleet.metrics import MetricsError, serve_metrics
from agent.fleet.provision import pre_enrolled
from agent.fleet.runner import FleetRunner, RunOptions, install_signal_handlers
from agent.fleet.serial_source import SerialSetupError
from agent.fleet.watch import unconverged_line
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
    p.add_argument(
        "--speed",
        default="max",
        help="simulated seconds per wall second, or max (as fast as the devices keep up)",
    )
    p.add_argument("--seed", type=int, help="override the file's seed")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run on the wall clock: readings carry the real time (implies --speed 1; "
        "implied by serial sensors)",
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this device of --devices (repeat for more; not with --shard)",
    )
    p.add_argument(
        "--passphrase-file",
        help="passphrase of pre-enrolled device keys (else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.add_argument("--shard", help="run shard I of N (devices i %% N == I; default 0/1)")
    p.add_argument("--block-readings", type=int, default=64, help="seal at this many readings")
    p.add_argument("--block-age", default="10m", help="seal when the oldest reading is this old")
    add_settle(p, "wall seconds to wait at the end for gossip to converge")
    p.add_argument("--no-view", action="store_true", help="no live view (summary at the end)")
    add_metrics(p)
    add_homeassistant(p)
    add_live_web(p)
    p.set_defaults(func=_run)


def _parse(args: argparse.Namespace) -> RunOptions:
    try:
        for_ms = parse_duration_ms(args.duration) if args.duration else None
        age_ms = parse_duration_ms(args.block_age)
    except ValueError as exc:  # ConfigError is a ValueError too
        raise CliError(f"--for/--block-age: {exc}") from None
    speed = parse_speed(args.speed)
    i, n = _parse_shard(args.shard, args.device)
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
        only=tuple(dict.fromkeys(args.device)),
        passphrase=lambda: keystore.passphrase(args.passphrase_file),
    )


def _parse_shard(text: str | None, devices: list[str]) -> tuple[int, int]:
    if text is None:
        return 0, 1
    if devices:
        raise CliError(
            f"--device and --shard {text}: give one of them (--device names exactly the "
            "devices this process runs)"
        )
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise CliError(f"--shard: expected I/N, found {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise CliError(f"--shard {text}: need 0 <= I < N")
    return i, n


def _check_devices(cfg: FleetConfig, names: tuple[str, ...], source: Path) -> None:
    """Every ``--device`` names a device of the file, or one line with the closest names."""
    known = [d.name for d in cfg.devices]
    for name in names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"it has {len(known)} devices"
        raise CliError(f"--device {name}: no device of that name in {source} ({hint})")


def _check_passphrase_source(args: argparse.Namespace) -> None:
    """A passphrase file is for keys enrolled elsewhere: a simulated fleet's data dir unlocks
    its keys with its own generated passphrase file, and would ignore it."""
    if args.passphrase_file is not None and not pre_enrolled(DataDir(args.data)):
        raise CliError(
            f"--passphrase-file: {args.data} is a simulated fleet's data dir (its authority key "
            "is there, or it is new): its keys are unlocked by its own passphrase file; "
            "--passphrase-file is for a data dir of pre-enrolled devices (docs/DEPLOY.md)"
        )


# Exit statuses of a run (README "Exit status"): 0 every device ran and gossip converged, 1 a device
# failed or holds damaged blocks, 2 bad input (CliError), 3 it ended with gossip not converged.
EXIT_FAILED = 1
EXIT_UNCONVERGED = 3
SUMMARY_LINES = 20  # fault lines a run's summary prints; fleet.log holds them all


def _print_some(lines: list[str]) -> None:
    for line in lines[:SUMMARY_LINES]:
        print(f"  {line}", file=sys.stderr)
    if len(lines) > SUMMARY_LINES:
        print(f"  ... and {len(lines) - SUMMARY_LINES} more (fleet.log)", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    opts = _parse(args)
    try:
        cfg = load_fleet(args.devices)
    except (ConfigError, OSError) as exc:
        raise CliError(str(exc)) from None
    _check_devices(cfg, opts.only, args.devices)
    _check_passphrase_source(args)
    bridge = homeassistant_bridge(args, cfg, opts)
    make_data_dir(args.data)
    runner = FleetRunner(cfg, opts)

    async def main() -> int:
        metrics = await serve_metrics(args.metrics, runner.snapshot, opts.shard)
        if metrics is not None:
            print(f"metrics at {metrics.url}", file=sys.stderr)
        remove = install_signal_handlers(runner)
        try:
            async with bridge_running(bridge, runner), live_web(args, runner):
                result = await runner.run()
        finally:
            remove()
            if metrics is not None:
                await metrics.stop()
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
        if result.failed:  # the others ran on; the run's status says that some did not
            print(
                f"{len(result.failed)} device(s) failed: {', '.join(sorted(result.failed))}",
                file=sys.stderr,
            )
            _print_some(list(result.failed.values()))
        damaged = {n: lines for n, lines in result.damaged.items() if n not in result.failed}
        if damaged:  # ran on, but hold blocks they cannot serve
            print(
                f"{len(damaged)} device(s) hold damaged blocks: {', '.join(sorted(damaged))}",
                file=sys.stderr,
            )
            _print_some([line for lines in damaged.values() for line in lines])
        if result.failed or damaged:
            return EXIT_FAILED
        if not result.converged and not result.interrupted:
            # A run that ended unconverged must not look like one that did (README: exit status).
            print(unconverged_line(result.unconverged, opts.settle_s), file=sys.stderr)
            return EXIT_UNCONVERGED
        return 0

    try:
        with fleet_log(args.data / "fleet.log"):
            return asyncio.run(main())
    except (
        BrokerError,
        TransportError,
        keystore.KeystoreError,
        MetricsError,
        SerialSetupError,
    ) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # a file of the data dir the fleet-wide start-up writes (keys, ...)
        where = exc.filename or args.data
        fix = " (free space on that filesystem, then run again)" if is_disk_full(exc) else ""
        raise CliError(f"{where}: {exc.strerror or exc}{fix}") from None
