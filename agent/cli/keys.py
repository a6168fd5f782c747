"""`edgefleet keys`: create a fleet authority, enroll devices, create owner keys, inspect files."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import keystore
from ledger import keyfile
from ledger.certs import decode_certificate, verify_certificate
from ledger.errors import LedgerError
from ledger.identity import device_id_for

KINDS = ("refrigerator", "washing_machine", "medical_freezer")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="fleet authority, device enrollment and key files")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    p = ksub.add_parser("init-authority", help="create a fleet authority key and fleet root")
    p.add_argument("--dir", required=True, type=Path, help="directory for the authority files")
    p.add_argument(
        "--passphrase-file",
        help="file holding the passphrase (else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=_init_authority)

    p = ksub.add_parser("enroll", help="create a device key and sign its certificate")
    p.add_argument("--authority", required=True, type=Path, help="authority directory")
    p.add_argument("--out", required=True, type=Path, help="device directory to create")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--model", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--owner", help="owner X25519 public key: 64 hex characters or a .pub file")
    p.add_argument("--valid-days", type=int, default=3650)
    p.add_argument(
        "--passphrase-file", help="passphrase for both the authority and the new device key"
    )
    p.set_defaults(func=_enroll)

    p = ksub.add_parser(
        "init-owner", help="create an owner X25519 key pair (FILE encrypted, FILE.pub)"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--passphrase-file",
        help="file holding the passphrase (else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=_init_owner)

    p = ksub.add_parser("show", help="describe a key file, certificate or fleet root")
    p.add_argument("path", type=Path)
    p.add_argument(
        "--root",
        type=Path,
        help="fleet-root.json (or its directory) to verify a certificate against",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_show)


def _init_authority(args: argparse.Namespace) -> int:
    try:
        pw = keystore.passphrase(args.passphrase_file, confirm=True)
        public = keystore.init_authority(args.dir, pw)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    print(f"fleet authority created in {args.dir}")
    print(f"  fleet root key id  {public.key_id.hex()}")
    print(f"  fleet root         {args.dir / keystore.FLEET_ROOT}  (give this to verifiers)")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    try:
        pw = keystore.passphrase(args.passphrase_file)
        authority = keystore.load_authority(args.authority, pw)
        owner = keystore.read_owner_public(args.owner) if args.owner else None
        enrolled = keystore.enroll_device(
            args.authority,
            authority,
            args.out,
            pw,
            kind=args.kind,
            model=args.model,
            site=args.site,
            owner_x25519=owner,
            valid_days=args.valid_days,
        )
    except (keystore.KeystoreError, LedgerError) as exc:
        raise CliError(str(exc)) from None
    cert = enrolled.certificate
    print(
        f"enrolled {cert.device_id} ({cert.kind}, {cert.model}, site {cert.site}), "
        f"serial {cert.serial}"
    )
    print(f"  key          {args.out / keystore.DEVICE_KEY}")
    print(f"  certificate  {args.out / keystore.DEVICE_CERT}")
    return 0


def _init_owner(args: argparse.Namespace) -> int:
    try:
        pw = keystore.passphrase(args.passphrase_file, confirm=True)
        pub = keystore.init_owner(args.out, pw)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    print(f"owner key pair: {args.out} (secret), {args.out}.pub (public {pub.hex()})")
    return 0


def _show(args: argparse.Namespace) -> int:
    path: Path = args.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc.strerror})") from None
    info = _describe(path, data, args.root)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def _describe(path: Path, data: bytes, root: Path | None) -> dict[str, object]:
    if data.lstrip().startswith(b"{"):
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise CliError(f"{path}: invalid JSON ({exc})") from None
        if doc.get("format") == keyfile.FORMAT:
            public = bytes.fromhex(doc["public"])
            info: dict[str, object] = {
                "file": "encrypted key",
                "role": doc["role"],
                "public": public.hex(),
                "kdf": doc["kdf"],
            }
            if doc["role"] == "device":
                info["device_id"] = device_id_for(public)
            return info
        if doc.get("format") == "edgefleet-root/1":
            return {"file": "fleet root", "public": doc["public"], "key_id": doc["key_id"]}
        raise CliError(f"{path}: JSON file of unknown format {doc.get('format')!r}")
    try:
        if root is not None:
            cert = verify_certificate(data, keystore.load_roots(root), None)
            status = "signature verifies against the fleet root"
        else:
            cert = decode_certificate(data)
            status = "not verified (pass --root)"
    except (LedgerError, keystore.KeystoreError) as exc:
        raise CliError(f"{path}: {exc}") from None
    return {
        "file": "device certificate",
        "device_id": cert.device_id,
        "kind": cert.kind,
        "model": cert.model,
        "site": cert.site,
        "serial": cert.serial,
        "owner_x25519": cert.owner_x25519.hex() if cert.owner_x25519 else None,
        "not_before": _iso(cert.not_before_ms),
        "not_after": _iso(cert.not_after_ms),
        "authority_key_id": cert.authority_key_id.hex(),
        "status": status,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
