"""`edgefleet web` (pages over a fleet data dir) and `run ... --web [HOST:]PORT` (the same pages
next to a running fleet, with live updates): agent/web/, docs/WEB.md.

The web framework is an optional extra (``pip install 'edgefleet[web]'``): it is imported when
a command needs it, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent.cli.errors import CliError
from agent.cli.show import read_x25519_secret
from agent.errors import AgentError
from agent.fleet.runner import FleetRunner
from agent.provenance.opening import Opening
from ledger.errors import LedgerError
from ledger.private import open_grant


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="serve web pages of a data dir: fleet, devices, item traces")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this host)"
    )
    p.add_argument(
        "--owner-key",
        type=Path,
        help="owner X25519 secret key file: show that household's readings",
    )
    p.add_argument(
        "--grant", type=Path, help="grant file (with --grantee-key): show what it covers"
    )
    p.add_argument("--grantee-key", type=Path, help="grantee X25519 secret key file")
    p.set_defaults(func=_web)


def add_live_web(p: argparse.ArgumentParser) -> None:
    """``run --web [HOST:]PORT``."""
    p.add_argument(
        "--web",
        type=_listen,
        metavar="[HOST:]PORT",
        help="serve the web pages of the data dir, with live updates (host 127.0.0.1 unless "
        "named; shard I of N listens on PORT+I)",
    )


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or int(port) > 65535 or (sep and not host):
        raise argparse.ArgumentTypeError(
            f"expected PORT or HOST:PORT (port 0-65535), found {text!r}"
        )
    return host, int(port)


@asynccontextmanager
async def live_web(args: argparse.Namespace, runner: FleetRunner) -> AsyncIterator[None]:
    """Serve the pages next to the run for as long as it lasts (nothing without ``--web``)."""
    if args.web is None:
        yield
        return
    _check_installed()
    from agent.web.app import LiveWeb  # the framework only now: an optional extra

    host, port = args.web
    if port:
        port += runner.opts.shard[0]
    web = LiveWeb(args.data, args.devices, runner.snapshot, host, port)
    try:
        await web.start()
    except OSError as exc:  # the port is taken, or the host is not ours
        raise CliError(f"--web {host}:{port}: cannot listen ({exc.strerror or exc})") from None
    print(f"web pages at {web.url}", file=sys.stderr)
    try:
        yield
    finally:
        await web.stop()


def _check_installed() -> None:
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"the web pages need {' and '.join(missing)}: pip install 'edgefleet[web]'")


def _web(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: expected 0..65535")
    _check_installed()
    from agent.web.app import listen, serve  # the framework only now: an optional extra
    from agent.web.data import FleetData, WebError

    opening = _opening(args)
    try:
        fd = FleetData.open(args.data, opening)
    except WebError as exc:
        raise CliError(str(exc)) from None
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:  # the port is taken, or the host is not ours
        raise CliError(
            f"--host {args.host} --port {args.port}: cannot listen ({exc.strerror or exc})"
        ) from None
    port = sock.getsockname()[1]
    print(f"edgefleet web: serving {args.data} on http://{args.host}:{port}/ (Ctrl-C stops)")
    serve(fd, sock)
    return 0


def _opening(args: argparse.Namespace) -> Opening | None:
    """What private readings the pages may open: an owner's, a grant's, or none (as ``trace``)."""
    if args.owner_key and (args.grant or args.grantee_key):
        raise CliError("give either --owner-key or --grant with --grantee-key, not both")
    if args.owner_key:
        return Opening.owner(read_x25519_secret(args.owner_key))
    if bool(args.grant) != bool(args.grantee_key):
        raise CliError("--grant and --grantee-key go together")
    if not args.grant:
        return None
    try:
        blob = args.grant.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.grant}: cannot read ({exc.strerror})") from None
    try:
        return Opening.granted(open_grant(read_x25519_secret(args.grantee_key), blob))
    except (AgentError, LedgerError) as exc:
        raise CliError(f"{args.grant}: {exc}") from None
