"""`edgefleet verify` and `edgefleet status`: inspect a data dir without a running fleet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance.audit import DeviceReport, audit, default_root


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="verify every chain, peer header and replica in a data dir")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument(
        "--root",
        type=Path,
        help="fleet-root.json to trust (default: the data dir's own authority/fleet-root.json)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_verify)

    p = sub.add_parser("status", help="summarise the devices of a data dir (no signature checks)")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_status)


def _load(args: argparse.Namespace) -> tuple[DataDir, list[DeviceReport], bool]:
    data = DataDir(args.data)
    if not data.devices.is_dir():
        raise CliError(f"{args.data}: not a fleet data dir (no devices/ directory)")
    root = getattr(args, "root", None) or default_root(data)
    try:
        roots = keystore.load_roots(root)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    deep = args.func is _verify
    reports = []
    for rep in audit(data, roots, deep=deep):
        reports.append(rep)
        if deep and sys.stderr.isatty():
            print(f"\rverified {len(reports)} device(s)", end="", file=sys.stderr, flush=True)
    if deep and sys.stderr.isatty():
        print(file=sys.stderr)
    return data, reports, deep


def _table(reports: list[DeviceReport], deep: bool) -> str:
    cols = ["device", "kind", "site", "height", "pending", "peers", "peer hdrs", "replicas"]
    if deep:
        cols += ["readings", "result"]
    rows = []
    for r in reports:
        row = [
            r.name,
            r.kind,
            r.site,
            "-" if r.height is None else str(r.height),
            str(r.pending),
            str(r.peers),
            str(r.peer_headers),
            str(r.replicas),
        ]
        if deep:
            row += [str(r.readings), "ok" if r.ok else "FAILED"]
        rows.append(row)
    widths = [
        max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    _, reports, _ = _load(args)
    failed = [r for r in reports if not r.ok]
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not failed and bool(reports),
                    "devices": len(reports),
                    "failed": len(failed),
                    "reports": [r.as_json() for r in reports],
                },
                indent=2,
            )
        )
    else:
        print(_table(reports, deep=True))
        for r in reports:
            for e in r.epochs:
                print(
                    f"{r.name}: epoch {e['epoch']} follows epoch {e['from_epoch']} after height "
                    f"{e['after_height']} (signed epoch record: restored, head out of reach)"
                )
        for r in failed:
            for err in r.errors:
                print(f"{r.name}: {err}")
        total = sum(r.readings for r in reports)
        print(
            f"\n{len(reports) - len(failed)} of {len(reports)} device(s) verify; "
            f"{total} own readings checked"
        )
    if not reports:
        print("no devices found", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _status(args: argparse.Namespace) -> int:
    _, reports, _ = _load(args)
    if args.json:
        print(json.dumps({"devices": [r.as_json() for r in reports]}, indent=2))
    else:
        print(_table(reports, deep=False))
    return 0
