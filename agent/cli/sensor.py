"""`edgefleet sensor read`: decode a real sensor on a serial port and print its samples.

Meant for checking wiring on a Raspberry Pi: each sample is printed as one JSON line on stdout
as soon as it is decoded; a one-line summary (frames, bad frames, timeouts, last error) goes to
stderr at the end. A missing port or a permission problem is a one-line error, exit status 2.
Exit status 1 when ``--timeout`` ran out before ``--count`` samples.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from agent.cli.errors import CliError
from firmware_sim.clock import RealClock
from firmware_sim.serial.errors import PortError, SensorConfigError
from firmware_sim.serial.factory import DRIVERS, open_sensor
from firmware_sim.serial.profiles import PROFILES

POLLED = frozenset({"xymd02", "ds18b20"})
READ_SLICE_S = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sensor = sub.add_parser("sensor", help="read real sensors on serial ports and 1-Wire")
    ssub = sensor.add_subparsers(dest="sensor_command", metavar="ACTION", required=True)
    p = ssub.add_parser(
        "read",
        help="print decoded samples as JSON lines",
        description="Print decoded samples as JSON lines (bad frames are counted on stderr).",
    )
    p.add_argument("--driver", required=True, choices=DRIVERS)
    p.add_argument(
        "--port", required=True, help="serial device (/dev/ttyUSB0) or, for ds18b20, w1_slave"
    )
    p.add_argument("--count", type=_positive_int, help="stop after N samples (default: run on)")
    p.add_argument("--baud", type=_positive_int, help="baud rate (default: the driver's)")
    p.add_argument("--address", type=int, help="Modbus address for xymd02 (default 1)")
    p.add_argument("--profile", choices=sorted(PROFILES), help="Modbus register map for xymd02")
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between polls for xymd02 and ds18b20 (default 1)",
    )
    p.add_argument(
        "--timeout", type=float, help="give up after this many seconds (default: run on)"
    )
    p.set_defaults(func=_read)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text}")
    return value


def _options(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {"clock": RealClock().now_ms}
    if args.address is not None or args.profile is not None:
        if args.driver != "xymd02":
            raise CliError(f"--address and --profile apply to xymd02, not {args.driver}")
        if args.address is not None:
            options["address"] = args.address
        if args.profile is not None:
            options["profile"] = args.profile
    if args.baud is not None:
        if args.driver == "ds18b20":
            raise CliError("--baud does not apply to ds18b20 (1-Wire through the kernel)")
        options["baud"] = args.baud
    for flag, value in (("--interval", args.interval), ("--timeout", args.timeout)):
        # not "value < 0": NaN compares false with everything and would pass
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise CliError(f"{flag}: expected a finite number of seconds >= 0, found {value}")
    return options


def _read(args: argparse.Namespace) -> int:
    try:
        sensor = open_sensor(args.driver, args.port, **_options(args))
    except (SensorConfigError, PortError) as exc:
        raise CliError(str(exc)) from exc
    print(f"edgefleet: reading {args.driver} on {args.port}", file=sys.stderr, flush=True)
    printed = 0
    started = time.monotonic()
    try:
        while args.count is None or printed < args.count:
            left = None if args.timeout is None else args.timeout - (time.monotonic() - started)
            if left is not None and left <= 0:
                return 1
            samples = sensor.read(READ_SLICE_S if left is None else min(READ_SLICE_S, left))
            for sample in samples[: None if args.count is None else args.count - printed]:
                print(json.dumps(sample.to_json()), flush=True)
                printed += 1
            if args.driver in POLLED and samples and printed != args.count:
                time.sleep(args.interval)  # pacing between polls, as a maker asked
        return 0
    except PortError as exc:
        raise CliError(str(exc)) from exc
    finally:
        sensor.close()
        _summary(args, sensor.stats.as_dict(), printed)


def _summary(args: argparse.Namespace, stats: dict[str, object], printed: int) -> None:
    parts = [
        f"{printed} samples",
        f"{stats['frames']} frames",
        f"{stats['bad_frames']} bad frames (bad checksum {stats['bad_checksum']}, "
        f"malformed {stats['malformed']})",
        f"{stats['garbage_bytes']} garbage bytes",
    ]
    for key in ("timeouts", "device_errors", "suspect", "duplicates", "seq_gaps", "unconfirmed"):
        if stats[key]:
            parts.append(f"{key.replace('_', ' ')} {stats[key]}")
    line = f"edgefleet: {args.driver} on {args.port}: " + ", ".join(parts)
    if "last_error" in stats:
        line += f"; last error: {stats['last_error']}"
    print(line, file=sys.stderr, flush=True)
