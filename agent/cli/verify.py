"""`edgefleet verify` and `edgefleet status`: inspect a data dir, with or without a running fleet.

``status`` reads the stores (no signature checks) and, when a fleet runs on the data dir, merges
in what its runner last wrote to ``DATA/run-status.json`` (agent/fleet/health.py): each device's
state (RUNNING, FAILED with its line, STOPPED), its trouble figures and the peers it mutes or
excludes, and each gossip domain's convergence. A file whose process is gone without a clean
stop is shown as ``stale``: what it says is the last the run knew, not the fleet now.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.fleet.health import RunStatus, read_run_status, trouble_cell
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


def _table(
    reports: list[DeviceReport], deep: bool, live: dict[str, dict[str, object]] | None = None
) -> str:
    cols = ["device", "kind", "site", "height", "readings", "pending", "peers", "lag"]
    cols += ["peer hdrs", "replicas", "held", "min copies", "result"]
    if live:
        cols += ["run", "trouble"]
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
            *(_live_cells(live.get(r.name)) if live else []),
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


def _live_cells(d: dict[str, object] | None) -> list[str]:
    if d is None:
        return ["-", "-"]
    counts = d.get("trouble")
    return [str(d.get("state")), trouble_cell(counts) if isinstance(counts, dict) else "-"]


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
    data, reports, _ = _load(args)
    failed = [r for r in reports if not r.ok]
    runs = read_run_status(data.root)
    live = _live_devices(runs)
    run_failed = sorted(n for n, d in live.items() if d["state"] == "FAILED")
    stalled = sorted({dom for run in runs if run.state == "running" for dom in _stalled(run)})
    unconverged = sorted({dom for run in runs for dom in run.doc.get("not_converged", [])})
    ok = not failed and not run_failed and not stalled and not unconverged
    if args.json:
        devices = []
        for r in reports:
            doc = r.as_json()
            if r.name in live:
                doc["run"] = live[r.name]
            devices.append(doc)
        out = {
            "ok": ok,
            "devices": devices,
            "failed": len(failed),
            "readings": sum(r.readings for r in reports),
            "run": _run_json(runs),
            "not_converging": stalled,
            "not_converged": unconverged,
            "run_failed": run_failed,
        }
        print(json.dumps(out, indent=2))
    else:
        print(_table(reports, deep=False, live=live))
        _errors(failed)
        for line in _run_lines(runs):
            print(line)
    return 0 if ok else 1


def _live_devices(runs: list[RunStatus]) -> dict[str, dict[str, object]]:
    """Device name -> what the run-status file says of it, with the file's state: RUNNING of a
    run whose process is gone reads ``RUNNING (stale)``."""
    out: dict[str, dict[str, object]] = {}
    for run in runs:
        for name, d in run.devices().items():
            d = dict(d)
            d["run_state"] = run.state
            if run.state == "stale" and d.get("state") == "RUNNING":
                d["state"] = "RUNNING (stale)"
            out[name] = d
    return out


def _stalled(run: RunStatus) -> list[str]:
    return [d["domain"] for d in run.doc.get("domains", []) if not d.get("converging", True)]


def _run_json(runs: list[RunStatus]) -> list[dict[str, object]]:
    keys = (
        *("pid", "host", "shard", "started", "updated", "sim_ms", "sim_time", "stopped"),
        *("interrupted", "converged", "trouble", "domains"),
    )
    return [
        {"file": str(run.path), "state": run.state, **{k: run.doc.get(k) for k in keys}}
        for run in runs
    ]


def _run_lines(runs: list[RunStatus]) -> list[str]:
    """Under the table: each run-status file in a line, then the domains that do not converge
    (or did not, at a run's end), the devices that failed, and the peers muted or excluded."""
    lines = []
    for run in runs:
        doc = run.doc
        what = {
            "running": f"running (pid {doc.get('pid')})",
            "stopped": "stopped" + (" (interrupted)" if doc.get("interrupted") else ""),
            "stale": f"STALE: process {doc.get('pid')} is gone without a clean stop",
        }[run.state]
        domains = doc.get("domains", [])
        # Running: converging (every head reaches every member within the grace period); at
        # the end: converged (every member holds every other's last head).
        word = "converging" if run.state == "running" else "converged"
        ok = sum(1 for d in domains if d.get(word))
        cell = trouble_cell(doc.get("trouble", {}))
        lines.append(
            f"\nrun {run.path.name}: {what}; updated {doc.get('updated')}, simulated "
            f"{doc.get('sim_time')}; domains {ok}/{len(domains)} {word}; trouble {cell}"
        )
        for d in domains:
            if run.state == "running" and not d.get("converging", True):
                lines.append(
                    f"NOT CONVERGING {d['domain']}: {d['behind']} of {d['members']} chains behind "
                    f"for {d['behind_s']:.0f} s ({d['reason']})"
                )
            elif d["domain"] in doc.get("not_converged", []):
                lines.append(f"NOT CONVERGED {d['domain']} at the run's end: {d['reason']}")
        for dev in doc.get("devices", []):
            if dev.get("error"):
                lines.append(f"FAILED {dev['error']}")
            for m in dev.get("muted", []):
                lines.append(f"{dev['name']} mutes {m['peer']} ({m['reason']})")
            for x in dev.get("excluded", []):
                lines.append(f"{dev['name']} excludes {x['peer']} ({x['reason']})")
    return lines
