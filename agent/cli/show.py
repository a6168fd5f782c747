"""`edgefleet show` and `edgefleet grant`: read a device's readings, private ones included.

``show`` prints the readings in a device's own store (sealed blocks, then pending). Private
readings (sealed to the owner of a household's device, docs/PRIVATE.md) are opened with the
owner's X25519 key (``--owner-key``) or a grant (``--grant`` + ``--grantee-key``); without one,
or outside what a grant covers, they are counted as withheld and never shown. ``show`` does not
check signatures: ``edgefleet verify`` does, and needs no owner key.

``grant`` lets the owner hand read access to one device's readings in one time range to another
party's X25519 key (a pair made by ``edgefleet keys init-owner``) without giving away the owner
key.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from ledger.certs import Certificate, decode_certificate
from ledger.errors import LedgerError, UsageError
from ledger.private import (
    GrantOpener,
    Opener,
    OpenError,
    OwnerOpener,
    make_grant,
    open_grant,
    open_reading,
)
from ledger.reading import Reading, SignedReading
from ledger.sealbox import public_key_of
from ledger.store import Store

_MAX_MS = (1 << 63) - 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("show", help="print a device's readings, opening private ones with a key")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument("--device", required=True, help="device name (DIR/devices/NAME)")
    p.add_argument("--owner-key", type=Path, help="owner X25519 secret key file")
    p.add_argument("--grant", type=Path, help="grant file (with --grantee-key)")
    p.add_argument("--grantee-key", type=Path, help="grantee X25519 secret key file")
    p.add_argument("--from", dest="from_ms", type=_time, help="ms since the epoch or ISO 8601")
    p.add_argument("--to", dest="to_ms", type=_time, help="ms since the epoch or ISO 8601")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_show)

    p = sub.add_parser("grant", help="grant read access to a device's private readings")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument("--device", required=True, help="device name (DIR/devices/NAME)")
    p.add_argument("--owner-key", required=True, type=Path, help="owner X25519 secret key file")
    p.add_argument(
        "--to-key", required=True, help="grantee public key: 64 hex characters or a .pub file"
    )
    p.add_argument("--from", dest="from_ms", required=True, type=_time, help="first time included")
    p.add_argument("--until", dest="until_ms", required=True, type=_time, help="last time included")
    p.add_argument("--out", required=True, type=Path, help="grant file to write")
    p.set_defaults(func=_grant)


def _time(value: str) -> int:
    """Milliseconds since the Unix epoch, or an ISO 8601 date-time (UTC unless it says)."""
    if value.isdigit():
        ms = int(value)
    else:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected milliseconds since the epoch or an ISO 8601 time, found {value!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ms = int(when.timestamp() * 1000)
    if not 0 <= ms <= _MAX_MS:
        raise argparse.ArgumentTypeError(f"time {value!r} is outside 0..2^63-1 ms")
    return ms


def read_x25519_secret(path: Path) -> bytes:
    """An X25519 secret key file as ``keystore.init_owner`` writes it (encrypted, mode 0600)."""
    try:
        return keystore.read_owner_secret(path)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None


@dataclass(frozen=True)
class _Device:
    name: str
    certificate: Certificate
    store_path: Path


def _device(data_arg: Path, name: str) -> _Device:
    data = DataDir(data_arg)
    if not data.devices.is_dir():
        raise CliError(f"{data_arg}: not a fleet data dir (no devices/ directory)")
    ddir = data.device(name)
    if not (ddir / keystore.DEVICE_CERT).exists():
        known = ", ".join(data.device_names()) or "none"
        raise CliError(f"{data_arg}: no device {name!r} (devices: {known})")
    try:
        cert = decode_certificate((ddir / keystore.DEVICE_CERT).read_bytes())
    except LedgerError as exc:
        raise CliError(f"{ddir / keystore.DEVICE_CERT}: {exc}") from None
    path = data.store_path(name)
    if not path.exists():
        raise CliError(f"{path}: no store (the device never ran)")
    return _Device(name, cert, path)


def _readings(path: Path) -> Iterator[tuple[SignedReading, bool]]:
    """Own readings in sequence order, each with whether it is still pending. A damaged store
    is a one-line error naming the file (``edgefleet verify`` says what else is damaged)."""
    try:
        with Store(path) as store:
            for block in store.blocks():
                for sr in block.readings:
                    yield sr, False
            for sr in store.pending():
                yield sr, True
    # The store's read paths let SQLite's own errors through ("database disk image is
    # malformed"); only store errors reach here, the consumer's never enter a generator.
    except Exception as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise CliError(
            f"{path}: damaged store: {reason} (`edgefleet verify` checks every device)"
        ) from None


def _opener(args: argparse.Namespace, dev: _Device) -> Opener | None:
    if args.owner_key and (args.grant or args.grantee_key):
        raise CliError("give either --owner-key or --grant with --grantee-key, not both")
    if args.owner_key:
        return OwnerOpener(read_x25519_secret(args.owner_key))
    if bool(args.grant) != bool(args.grantee_key):
        raise CliError("--grant and --grantee-key go together")
    if not args.grant:
        return None
    try:
        blob = args.grant.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.grant}: cannot read ({exc.strerror})") from None
    try:
        grant = open_grant(read_x25519_secret(args.grantee_key), blob)
    except LedgerError as exc:
        raise CliError(f"{args.grant}: {exc}") from None
    if grant.device_id != dev.certificate.device_id:
        raise CliError(
            f"{args.grant}: the grant is for device {grant.device_id}, "
            f"not {dev.name} ({dev.certificate.device_id})"
        )
    return GrantOpener(grant)


def _row(r: Reading, private: bool, pending: bool) -> dict[str, object]:
    return {
        "epoch": r.epoch,
        "seq": r.seq,
        "time_ms": r.time_ms,
        "sensor": r.sensor,
        "value": r.value,
        "tag": r.tag,
        "text": r.text,
        "private": private,
        "pending": pending,
    }


def _show(args: argparse.Namespace) -> int:
    dev = _device(args.data, args.device)
    opener = _opener(args, dev)
    lo = 0 if args.from_ms is None else args.from_ms
    hi = _MAX_MS if args.to_ms is None else args.to_ms
    rows: list[dict[str, object]] = []
    withheld: Counter[str] = Counter()
    private = opened = 0
    for sr, pending in _readings(dev.store_path):
        if not lo <= sr.reading.time_ms <= hi:
            continue
        private += sr.private
        try:
            r = open_reading(sr, opener)
        except OpenError as exc:
            withheld[exc.reason] += 1
            continue
        opened += sr.private
        rows.append(_row(r, sr.private, pending))
    _print(args, dev, rows, withheld, private)
    if opener is not None and private and not opened:
        reason = next(iter(withheld))
        print(
            f"edgefleet: the key given opens none of the {private} private reading(s): {reason}",
            file=sys.stderr,
        )
        return 1
    return 0


def _print(
    args: argparse.Namespace,
    dev: _Device,
    rows: list[dict[str, object]],
    withheld: Counter[str],
    private: int,
) -> None:
    if args.json:
        doc = {
            "device": dev.name,
            "device_id": dev.certificate.device_id,
            "site": dev.certificate.site,
            "owner_x25519": (dev.certificate.owner_x25519 or b"").hex() or None,
            "readings": rows,
            "shown": len(rows),
            "private": private,
            "withheld": sum(withheld.values()),
            "withheld_reasons": dict(withheld),
        }
        print(json.dumps(doc, indent=2))
        return
    cols = ["seq", "time", "sensor", "value", "tag", "text", ""]
    table = [
        [
            str(r["seq"]),
            _iso(int(str(r["time_ms"]))),
            str(r["sensor"]),
            str(r["value"]),
            str(r["tag"] or "-"),
            str(r["text"] or "-"),
            ("private " if r["private"] else "") + ("pending" if r["pending"] else ""),
        ]
        for r in rows
    ]
    widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(cols)]
    for line in [cols, *table]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    summary = f"\n{dev.name} ({dev.certificate.device_id}): {len(rows)} reading(s) shown"
    if withheld:
        why = "; ".join(f"{n}: {reason}" for reason, n in withheld.most_common())
        summary += f", {sum(withheld.values())} private reading(s) withheld ({why})"
    print(summary)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _grant(args: argparse.Namespace) -> int:
    dev = _device(args.data, args.device)
    owner_secret = read_x25519_secret(args.owner_key)
    certified = dev.certificate.owner_x25519
    if certified is None:
        raise CliError(f"{dev.name}: not a private device (its certificate names no owner key)")
    if public_key_of(owner_secret) != certified:
        raise CliError(
            f"{args.owner_key}: owner key {public_key_of(owner_secret).hex()} is not the one "
            f"{dev.name}'s certificate names ({certified.hex()})"
        )
    try:
        grantee = keystore.read_owner_public(args.to_key)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    if args.until_ms < args.from_ms:
        raise CliError(f"--until {args.until_ms} is before --from {args.from_ms}")
    readings = (sr for sr, _ in _readings(dev.store_path))
    try:
        blob = make_grant(
            owner_secret,
            readings,
            grantee,
            dev.certificate.device_id,
            args.from_ms,
            args.until_ms,
        )
    except (OpenError, UsageError) as exc:
        raise CliError(str(exc)) from None
    try:
        args.out.write_bytes(blob)
    except OSError as exc:
        raise CliError(f"{args.out}: cannot write ({exc.strerror})") from None
    print(
        f"grant: {args.out} lets {grantee.hex()} read {dev.name}'s private readings "
        f"from {_iso(args.from_ms)} to {_iso(args.until_ms)}"
    )
    return 0
