"""`edgefleet keys`: create a fleet authority, enroll devices, create owner keys, inspect files.

A real device enrolls without the authority's secret leaving its machine: ``init-device`` on the
device, ``enroll --request`` on the authority's machine, ``install-cert`` back on the device
(docs/DEPLOY.md). ``enroll --out DEVDIR`` creates key and certificate together, as simulated
fleets do."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.cli import broker, lifecycle
from agent.cli.errors import CliError
from agent.fleet import keystore
from ledger import keyfile
from ledger.certs import decode_certificate, verify_certificate
from ledger.errors import LedgerError
from ledger.identity import device_id_for

KINDS = ("refrigerator", "washing_machine", "medical_freezer")


MAX_VALID_DAYS = 100 * 366  # a certificate's not-after stays a small, sane time


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

    p = ksub.add_parser(
        "init-device",
        help="on a device: create its key and an enrollment request (DIR/enroll.req)",
    )
    p.add_argument("--dir", required=True, type=Path, help="device directory (DATA/devices/NAME)")
    _attribute_options(p, required=True)
    p.add_argument(
        "--passphrase-file",
        help="file holding the passphrase (else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=_init_device)

    p = ksub.add_parser(
        "enroll",
        help="sign a device's certificate: from its enroll.req (--request), or create both",
        description="With --request: check a device's enrollment request and write its "
        "certificate to --out (the authority key stays here). Without: create a device key and "
        "certificate together in the directory --out.",
    )
    p.add_argument("--authority", required=True, type=Path, help="authority directory")
    p.add_argument("--request", type=Path, help="the device's enroll.req (keys init-device)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="certificate file to write (with --request), else device directory to create",
    )
    _attribute_options(p, required=False)
    p.add_argument("--valid-days", type=int, default=3650)
    p.add_argument("--yes", action="store_true", help="with --request: issue without asking")
    p.add_argument(
        "--passphrase-file",
        help="passphrase of the authority key (and, without --request, of the new device key)",
    )
    p.set_defaults(func=_enroll)

    p = ksub.add_parser(
        "install-cert",
        help="on a device: install its certificate and the fleet root after checking both",
    )
    p.add_argument("--dir", required=True, type=Path, help="device directory (holds device.key)")
    p.add_argument("certificate", type=Path, help="the device.cert the authority issued")
    p.add_argument(
        "--root", required=True, type=Path, help="the fleet's fleet-root.json (or its directory)"
    )
    p.add_argument(
        "--passphrase-file",
        help="passphrase of the device key (else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=_install_cert)

    p = ksub.add_parser(
        "init-owner", help="create an owner X25519 key pair (FILE encrypted, FILE.pub)"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--passphrase-file",
        help="file holding the passphrase (else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=_init_owner)

    p = ksub.add_parser(
        "show",
        help="describe a key file, certificate, enrollment or rotation request, fleet root, "
        "rotation (.rot) or revocation (.rev)",
    )
    p.add_argument("path", type=Path)
    p.add_argument(
        "--root",
        type=Path,
        help="fleet-root.json (or its directory) to verify a certificate against",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_show)

    broker.register_keys(ksub)  # keys broker-cert: X.509 for the broker's TLS (agent/cli/broker.py)
    lifecycle.register(ksub)  # rotate, countersign, revoke (agent/cli/lifecycle.py)


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


def _attribute_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--kind", required=required, choices=KINDS)
    p.add_argument("--model", required=required)
    p.add_argument("--site", required=required)
    p.add_argument("--owner", help="owner X25519 public key: 64 hex characters or a .pub file")


def _init_device(args: argparse.Namespace) -> int:
    try:
        owner = keystore.read_owner_public(args.owner) if args.owner else None
        pw = keystore.passphrase(args.passphrase_file, confirm=True)
        request = keystore.init_device(
            args.dir, pw, kind=args.kind, model=args.model, site=args.site, owner_x25519=owner
        )
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    print(f"device key created for {request.device_id} ({request.kind}, {request.model})")
    print(f"  key      {args.dir / keystore.DEVICE_KEY}  (stays on this device)")
    print(f"  request  {args.dir / keystore.ENROLL_REQUEST}  (send it to the fleet authority)")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    if not 1 <= args.valid_days <= MAX_VALID_DAYS:
        raise CliError(f"--valid-days: expected 1 to {MAX_VALID_DAYS}, found {args.valid_days}")
    if args.request is not None:
        return _enroll_request(args)
    missing = [f"--{n}" for n in ("kind", "model", "site") if getattr(args, n) is None]
    if missing:
        raise CliError(f"keys enroll: {', '.join(missing)} required (or --request enroll.req)")
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


def _enroll_request(args: argparse.Namespace) -> int:
    given = [f"--{n}" for n in ("kind", "model", "site", "owner") if getattr(args, n) is not None]
    if given:
        raise CliError(
            f"{args.request}: {', '.join(given)} cannot be set here: the request carries the "
            "attributes, signed by the device; drop the option"
        )
    try:
        request = keystore.read_request(args.request)
        if args.out.exists():
            raise keystore.KeystoreError(
                f"{args.out}: already exists; remove it or choose another --out"
            )
        print(f"{args.request}: signed by the key it names (proof of possession)")
        print(f"  device id   {request.device_id}")
        print(f"  kind        {request.kind}")
        print(f"  model       {request.model}")
        print(f"  site        {request.site}")
        owner = request.owner_x25519.hex() if request.owner_x25519 else "none (not private)"
        print(f"  owner       {owner}")
        print(f"  requested   {_iso(request.time_ms)}")
        print(f"  valid for   {args.valid_days} days from now")
        if not args.yes and sys.stdin.isatty() and input("issue? [y/N] ").strip() != "y":
            raise CliError(f"{args.request}: not issued (answer y to issue it)")
        pw = keystore.passphrase(args.passphrase_file)
        authority = keystore.load_authority(args.authority, pw)
        cert = keystore.issue_from_request(
            args.authority, authority, request, args.out, valid_days=args.valid_days
        )
    except (keystore.KeystoreError, LedgerError) as exc:
        raise CliError(str(exc)) from None
    print(f"issued {args.out}: serial {cert.serial}, valid until {_iso(cert.not_after_ms)}")
    print(
        f"  give the device {args.out} and {args.authority / keystore.FLEET_ROOT} "
        "(keys install-cert)"
    )
    return 0


def _install_cert(args: argparse.Namespace) -> int:
    try:
        pw = keystore.passphrase(args.passphrase_file)
        installed = keystore.install_certificate(args.dir, args.certificate, args.root, pw)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    cert = installed.certificate
    print(
        f"installed the certificate of {cert.device_id} ({cert.kind}, site {cert.site}), "
        f"serial {cert.serial}, valid until {_iso(cert.not_after_ms)}"
    )
    print(f"  certificate  {args.dir / keystore.DEVICE_CERT}")
    for path in installed.roots_written:
        print(f"  fleet root   {path}")
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
    if data.lstrip().startswith(b"-----BEGIN"):  # X.509 for the broker (keys broker-cert)
        return broker.describe_pem(path, root)
    described = lifecycle.describe(path, data, root)  # rotations, rotate.req, revocations
    if described is not None:
        return described
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
    if path.name.endswith(".req"):
        return _describe_request(path)
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


def _describe_request(path: Path) -> dict[str, object]:
    try:
        request = keystore.read_request(path)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    return {
        "file": "enrollment request",
        "device_id": request.device_id,
        "kind": request.kind,
        "model": request.model,
        "site": request.site,
        "owner_x25519": request.owner_x25519.hex() if request.owner_x25519 else None,
        "requested": _iso(request.time_ms),
        "status": "signed by the key it names (proof of possession)",
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
