"""What `edgefleet run` and `edgefleet replay` share: broker and speed options, the fleet log."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet.metrics import Listen

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(device)s %(message)s"
BROKER_HELP = (
    "embedded (default), mosquitto, memory, or a URL: mqtt://host:port, "
    "mqtts://host:port?ca=FILE&cert=FILE&key=FILE"
)


def add_broker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="embedded", help=BROKER_HELP)


def add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics",
        type=_listen,
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at /metrics (host 127.0.0.1 unless named; "
        "shard I of N listens on PORT+I)",
    )


def _listen(text: str) -> Listen:
    try:
        return Listen.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_speed(text: str) -> float | None:
    """``max`` -> None (as fast as the fleet keeps up); else a finite number > 0."""
    if text == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        raise CliError(f"--speed: expected a number or max, found {text!r}") from None
    if not math.isfinite(speed) or speed <= 0:
        raise CliError(f"--speed: expected a number > 0 or max, found {text!r}")
    return speed


@contextmanager
def fleet_log(path: Path) -> Iterator[None]:
    """Log the fleet at INFO into ``path`` (every line names its device, '-' if none) while
    the block runs; the terminal stays for the live view."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, defaults={"device": "-"}))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
