"""`edgefleet web`: serve a web page over a fleet data dir (agent/web/, docs/WEB.md).

The web framework is an optional extra (``pip install 'edgefleet[web]'``): it is imported when
the command runs, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from agent.cli.errors import CliError
from agent.cli.show import read_x25519_secret
from agent.provenance.opening import Opening


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
    p.set_defaults(func=_web)


def _web(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: expected 0..65535")
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(
            f"`edgefleet web` needs {' and '.join(missing)}: pip install 'edgefleet[web]'"
        )
    from agent.web.app import serve  # the framework only now: an optional extra
    from agent.web.data import FleetData, WebError

    opening = Opening.owner(read_x25519_secret(args.owner_key)) if args.owner_key else None
    try:
        fd = FleetData.open(args.data, opening)
    except WebError as exc:
        raise CliError(str(exc)) from None
    print(f"edgefleet web: serving {args.data} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    serve(fd, args.host, args.port)
    return 0
