"""Entry point of the `edgefleet` console script.

Each command group lives in its own module under agent/cli/ and exposes
``register(subparsers) -> None``; the parser it adds sets ``func`` to a callable taking the parsed
namespace and returning an exit status. Modules are imported here and listed in COMMANDS, in the
order ``--help`` shows them; add an import and a line to add a command. Errors that users can fix
(bad file, bad flag) are raised as ``CliError`` (agent/cli/errors.py, so that no command imports
this module) and printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from agent.cli import bundle, keys, record, replay, restore, run, sensor, show, trace, verify
from agent.cli.errors import CliError

COMMANDS: tuple[ModuleType, ...] = (
    keys,
    verify,
    run,
    sensor,
    record,
    replay,
    show,
    bundle,
    restore,
    trace,
)


def _version() -> str:
    try:
        return version("edgefleet")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Simulate and run fleets of smart appliances with signed, gossiped records.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CliError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
