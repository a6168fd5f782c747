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
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

from agent.cli import (
    broker,
    bundle,
    fleetlog,
    keys,
    record,
    replay,
    restore,
    run,
    sensor,
    show,
    trace,
    verify,
    web,
)
from agent.cli.errors import CliError
from agent.errors import AgentError
from ledger.errors import LedgerError

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
    fleetlog,
    web,
    broker,
)


def _version() -> str:
    try:
        return version("edgefleet")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


class Parser(argparse.ArgumentParser):
    """Every parser of the CLI, subcommands' included (``add_subparsers`` makes its parsers of
    the class of the parser it is called on): options are never abbreviated. With abbreviations,
    ``run --device NAME`` was silently read as ``--devices NAME``; a prefix of an option is now
    an unrecognized argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
        status = int(func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not at interpreter exit
        return status
    except CliError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except (AgentError, LedgerError) as exc:
        # A typed error a command did not translate (a key that will not open under `restore`,
        # say): its message already names what was wrong and where; never a traceback.
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """Whoever read our output (``edgefleet verify --json | head``) has closed the pipe: stop
    quietly, as Python's documentation of SIGPIPE recommends: point stdout at devnull, so that
    the interpreter's last flush of what is still buffered does not fail again, and exit 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (captured in a test)
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
