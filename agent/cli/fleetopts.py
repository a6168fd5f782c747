"""What `edgefleet run`, `replay` and `restore` share: the broker, speed, settle and seed options,
the data dir and the fleet log.

Every option is checked before anything is created on disk, and every refusal is a CliError of
one line naming the option, what was expected and what was found: numbers must be finite and in
their range (``float("nan")`` compares false with everything, so a plain ``< 0`` lets it through).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet.metrics import Listen

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(device)s %(message)s"
BROKER_HELP = (
    "embedded (default), mosquitto, mosquitto-tls (client certificates from the fleet "
    "authority and per-device ACLs), memory, or a URL: mqtt://host:port, "
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


MAX_SETTLE_S = 24 * 3600.0
SEED_RANGE = (-(2**63), 2**63 - 1)  # as devices.yaml's seed


def add_settle(p: argparse.ArgumentParser, help: str) -> None:
    # An upper bound: a run that converges stops waiting at once. 30 s lets a street of 124
    # appliances in one domain spread its last headers over MQTT (10 s was just short of it).
    p.add_argument("--settle", default="30", help=f"{help} (default 30)")


def parse_settle(text: str) -> float:
    """Wall seconds to wait for gossip at the end: a finite number in 0..MAX_SETTLE_S."""
    try:
        settle = float(text)
    except ValueError:
        raise CliError(f"--settle: expected a number of seconds, found {text!r}") from None
    if not (math.isfinite(settle) and 0 <= settle <= MAX_SETTLE_S):
        raise CliError(
            f"--settle: expected seconds from 0 to {MAX_SETTLE_S:.0f} (a day), found {text!r}"
        )
    return settle


def check_seed(seed: int | None) -> int | None:
    """``--seed``: None (the file's) or a signed 64-bit integer."""
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise CliError(f"--seed: expected a signed 64-bit integer, found {seed}")
    return seed


def make_data_dir(path: Path) -> None:
    """Create the data dir ``path`` (and its parents) or say in one line why it cannot be."""
    if path.exists() and not path.is_dir():
        raise CliError(f"--data {path}: expected a directory, found a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"--data {path}: cannot create the data dir: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else "")
        ) from None


class _FleetLogHandler(logging.FileHandler):
    """A file handler that survives its disk: when the file cannot be written (a full disk),
    one line on stderr says so, instead of a traceback for every record and at close."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            why = getattr(exc, "strerror", None) or exc
            print(f"{self.baseFilename}: cannot write the fleet log ({why})", file=sys.stderr)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # reported by handleError; closed all the same
            super().close()


@contextmanager
def fleet_log(path: Path) -> Iterator[None]:
    """Log the fleet at INFO into ``path`` (every line names its device, '-' if none) while
    the block runs; the terminal stays for the live view."""
    try:
        handler = _FleetLogHandler(path, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot write the fleet log: {exc.strerror or exc}") from None
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
