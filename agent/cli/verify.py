"""`edgefleet verify` and `edgefleet status`: inspect a data dir without a running fleet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance.audit import DeviceReport, audit, default_root, fill_lags


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
    fill_lags(reports)
    return data, reports, deep


def _table(reports: list[DeviceReport], deep: bool) -> str:
    cols = ["device", "kind", "site", "height", "readings", "pending", "peers", "lag"]
    cols += ["peer hdrs", "replicas", "held", "min copies", "result"]
    rows = [
        [
            r.name + (" FORKED" if r.forked else ""),
            r.kind,
            r.site,
            "-" if r.height is None else str(r.height),
            str(r.readings),
            str(r.pending),
            str(r.peers),
            str(r.lag),
            str(r.peer_headers),
            str(r.replicas),
            _size(r.replica_bytes),
            "-" if r.min_copies is None else str(r.min_copies),
            ("ok" if deep else "readable") if r.ok else "FAILED",
        ]
        for r in reports
    ]
    widths = [
        max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _errors(reports: list[DeviceReport]) -> None:
    """One line per thing found wrong, each naming the device and the file."""
    for r in reports:
        for err in r.errors:
            print(f"{r.name}: {err}")


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
        _errors(failed)
        total = sum(r.readings for r in reports if r.ok)
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
    failed = [r for r in reports if not r.ok]
    if args.json:
        doc = {
            "ok": not failed,
            "devices": [r.as_json() for r in reports],
            "failed": len(failed),
            "readings": sum(r.readings for r in reports),
        }
        print(json.dumps(doc, indent=2))
    else:
        print(_table(reports, deep=False))
        _errors(failed)
    return 1 if failed else 0
