"""`edgefleet verify-bundle`: check an offline proof bundle with nothing but the file.

Exit 0 only when the bundle verifies (docs/BUNDLE.md) and none of its readings is under a
flagged key; 1 with the reason when it does not verify, and 1 with the verdict (``FORKED``,
``REVOKED``, ``ROTATED-AWAY``, the words ``edgefleet trace`` uses) and the evidence when it
verifies but proves readings signed under a forked, revoked or rotated-away key; 2 when the file
cannot be read or ``--root-key`` is malformed. Without ``--root-key`` the bundle's own fleet root
is used, and its key id is printed for the user to compare with the root they trust. A verdict
of OK says what the bundle shows, no more: fork evidence or a revocation it does not carry
cannot be seen offline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

from agent.cli.errors import CliError
from agent.provenance.analysis import WORDS
from ledger.bundle import (
    FORKED,
    MAX_BUNDLE_BYTES,
    REVOKED,
    BundleError,
    VerifiedBundle,
    verify_bundle,
)
from ledger.certs import FleetRoots
from ledger.errors import UsageError
from ledger.identity import PUBLIC_KEY_SIZE, PublicKey


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify-bundle", help="verify an offline proof bundle (no fleet, no network needed)"
    )
    p.add_argument("file", type=Path, help="bundle file written by `edgefleet trace --bundle`")
    p.add_argument(
        "--root-key",
        metavar="HEX",
        help="the fleet root public key to trust (64 hex digits); default: the bundle's own, "
        "printed for you to compare",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_verify_bundle)


def _root(text: str | None) -> FleetRoots | None:
    if text is None:
        return None
    try:
        raw = bytes.fromhex(text)
        if len(raw) != PUBLIC_KEY_SIZE:
            raise ValueError(f"{len(raw)} bytes")
        return FleetRoots.of(PublicKey(raw))
    except (ValueError, UsageError) as exc:
        raise CliError(
            f"--root-key: expected a {2 * PUBLIC_KEY_SIZE}-hex-digit public key ({exc})"
        ) from None


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            # One byte more than the limit is enough for the verifier to refuse an oversize file.
            return f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _when(ms: int) -> str:
    try:
        t = dt.datetime.fromtimestamp(ms // 1000, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _summary(vb: VerifiedBundle, pinned: bool) -> dict[str, Any]:
    per_device = Counter(r.device_id for r in vb.readings)
    carried = Counter(f.kind for d in vb.devices.values() for f in d.flags)
    flagged = Counter(f for r in vb.readings for f in vb.flags_of(r))
    return {
        "ok": True,
        "format": vb.format,
        "verdict": WORDS[vb.flags[0].kind] if vb.flags else "OK",
        "flags": [
            {
                "word": WORDS[f.kind],
                "kind": f.kind,
                "device_id": f.device_id,
                "key_id": None if f.key_id is None else f.key_id.hex(),
                "height": f.height,
                "header_hashes": [h.hex() for h in f.hashes],
                "reason": f.reason if f.kind == REVOKED else None,
                "text": f.describe(),
                "readings": flagged[f],
            }
            for f in vb.flags
        ],
        "fork_evidence": carried[FORKED],
        "revocations": carried[REVOKED],
        "subject": vb.subject,
        "created_ms": vb.created_ms,
        "root_key_id": vb.root_key_id.hex(),
        "root_public": vb.root_public.hex(),
        "root_pinned": pinned,
        "devices": [
            {
                "device_id": dev_id,
                "kind": d.certificate.kind,
                "model": d.certificate.model,
                "site": d.certificate.site,
                "head_height": d.head.header.height,
                "head_hash": d.head.hash.hex(),
                "readings": per_device[dev_id],
            }
            for dev_id, d in vb.devices.items()
        ],
        "readings": len(vb.readings),
    }


def _print_text(path: Path, s: dict[str, Any]) -> None:
    pin = (
        "pinned by --root-key"
        if s["root_pinned"]
        else "NOT pinned: compare it with the fleet root you trust, or pass --root-key"
    )
    print(f"bundle:      {path}")
    print(f"subject:     {s['subject']}  (label set by the bundle's maker; not signed)")
    print(f"created:     {_when(s['created_ms'])}  (not signed)")
    print(f"fleet root:  key id {s['root_key_id']}  ({pin})")
    print(f"             public {s['root_public']}")
    print("devices:")
    for d in s["devices"]:
        print(
            f"  {d['device_id']}  {d['kind']}  {d['site']}  head height {d['head_height']} "
            f"({d['head_hash'][:16]}…)  readings {d['readings']}"
        )
    print(f"readings:    {s['readings']} proved")
    print("result:      OK, the bundle verifies")
    if s["flags"]:
        print(f"verdict:     {s['verdict']}")
        for f in s["flags"]:
            print(f"  {f['word']}: {f['text']}; {f['readings']} proved reading(s) under it")
        return
    forks = s["fork_evidence"] or "no"
    print(
        f"verdict:     OK (no proved reading is under a flagged key; this bundle carries {forks} "
        f"fork evidence and {s['revocations']} revocation(s), and cannot show that no other "
        "fork or revocation exists: ask the fleet for the newest)"
    )


def _verify_bundle(args: argparse.Namespace) -> int:
    roots = _root(args.root_key)
    data = _read(args.file)
    try:
        vb = verify_bundle(data, roots=roots)
    except BundleError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "code": exc.cause}, indent=2))
        else:
            print(f"bundle {args.file} does NOT verify: {exc}")
        return 1
    summary = _summary(vb, pinned=roots is not None)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_text(args.file, summary)
    return 1 if vb.flags else 0
