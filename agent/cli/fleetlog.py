"""`edgefleet fleetlog`: the fleet's log of device heads, for public C2SP witnesses.

``append`` (run at a low rate where the authority key lives: a cron job) verifies each device's
head in the data dir and appends the heads that moved, then signs a new checkpoint with the
fleet authority key (agent/fleet/fleetlog.py, ledger/headlog.py). ``show`` prints the latest
checkpoint and its verifier key; ``request --old N`` prints the tlog-witness add-checkpoint body
for a witness that last cosigned size N (POST it to the witness's ``/add-checkpoint``);
``add-cosignature FILE`` keeps the witness's answer (its cosignature lines) with the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import fleetlog, keystore
from agent.fleet.datadir import DataDir
from agent.provenance.audit import default_root
from ledger.certs import FleetRoots
from ledger.checkpoint import fleet_label, parse_checkpoint
from ledger.headlog import heads_verifier
from ledger.note import parse_note


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("fleetlog", help="the fleet's log of device heads (C2SP, for witnesses)")
    fsub = top.add_subparsers(dest="fleetlog_command", metavar="ACTION", required=True)
    p = fsub.add_parser("append", help="append the heads that moved and sign a new checkpoint")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument(
        "--passphrase-file",
        help="passphrase of the authority key (else the data dir's own, $EDGEFLEET_PASSPHRASE "
        "or a prompt)",
    )
    p.set_defaults(func=_append)
    p = fsub.add_parser("show", help="print the latest checkpoint and the log's verifier key")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.set_defaults(func=_show)
    p = fsub.add_parser("request", help="print a tlog-witness add-checkpoint request body")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument("--old", type=int, default=0, help="the size the witness last cosigned")
    p.add_argument("--out", type=Path, help="write the body to FILE instead of stdout")
    p.set_defaults(func=_request)
    p = fsub.add_parser("add-cosignature", help="keep a witness's cosignature lines")
    p.add_argument("file", type=Path, help="the witness's answer (its cosignature lines)")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.set_defaults(func=_add)


def _roots(data: DataDir) -> FleetRoots:
    try:
        return keystore.load_roots(default_root(data))
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None


def _append(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    roots = _roots(data)
    try:
        pw = data.fleet_passphrase() if not args.passphrase_file else None
        if pw is None:
            pw = keystore.passphrase(args.passphrase_file)
        authority = keystore.load_authority(data.authority, pw)
    except keystore.KeystoreError as exc:
        raise CliError(f"the heads log is signed by the fleet authority: {exc}") from None
    done = fleetlog.append(data, roots, authority)
    for line in done.skipped:
        print(f"edgefleet: head left out, {line}", file=sys.stderr)
    cp = parse_checkpoint(done.note.text)
    print(
        f"heads log: {len(done.added)} head(s) appended, {cp.size} entries; checkpoint in "
        f"{fleetlog.log_dir(data) / fleetlog.CHECKPOINT}"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    roots = _roots(data)
    raw = fleetlog.read_checkpoint(data)
    if raw is None:
        raise CliError(f"{fleetlog.log_dir(data)}: no checkpoint yet (edgefleet fleetlog append)")
    root = next(iter(roots.keys.values()))
    sys.stdout.write(raw.decode("utf-8"))
    print(f"\nverifier key: {heads_verifier(fleet_label(root), root).vkey()}")
    return 0


def _request(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    body = fleetlog.witness_request(data, _roots(data), args.old)
    if args.out:
        try:
            args.out.write_bytes(body)
        except OSError as exc:
            raise CliError(f"{args.out}: cannot write ({exc.strerror})") from None
    else:
        sys.stdout.write(body.decode("utf-8"))
    return 0


def _add(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    try:
        lines = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: cannot read ({exc.strerror})") from None
    note = fleetlog.add_cosignatures(data, lines)
    print(
        f"heads log checkpoint now carries {len(parse_note(note.encode()).signatures) - 1} "
        "cosignature(s)"
    )
    return 0
