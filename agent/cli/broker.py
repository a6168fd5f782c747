"""`edgefleet broker config` and `edgefleet keys broker-cert`: the broker as a second line.

``keys broker-cert`` issues X.509 certificates from the fleet authority (agent/fleet/brokertls.py):
a client certificate per device (CN = its device id), a server certificate for the broker, and
one for a shared connection (hub). A device on another machine makes its own TLS key and a
request (``--request``), the authority certifies it (``--csr``), the device installs it
(``--install``): the key never travels. ``broker config`` writes a Mosquitto configuration with
a TLS listener that admits only those certificates and ACLs binding each device's topics to its
identity (docs/DEPLOY.md section 7)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import brokertls, keystore
from agent.fleet.datadir import DataDir
from agent.transport.brokers import MosquittoTls, mosquitto_acl, mosquitto_limits
from agent.transport.errors import InvalidNameError
from agent.transport.topics import DEFAULT_PREFIX, Topics
from ledger.identity import SigningKey

MAX_VALID_DAYS = 100 * 366
x509_errors = (ValueError, TypeError, OSError)  # a PEM file that is not what it says
CONFIG = "mosquitto.conf"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`edgefleet broker ...`"""
    broker = sub.add_parser("broker", help="a Mosquitto configuration for the fleet (TLS, ACLs)")
    bsub = broker.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    p = bsub.add_parser(
        "config",
        help="write a Mosquitto config: TLS with the fleet's client certificates, per-device ACLs",
        description="Write DATA/broker/mosquitto.conf and DATA/broker/acl for a Mosquitto that "
        "admits only clients with a certificate of the fleet CA (keys broker-cert), takes the "
        "certificate's CN as user name and client id, and lets each device read only its own "
        "inbox and publish only its own presence. Hubs issued in DATA get their own rules.",
    )
    p.add_argument("--data", required=True, type=Path, help="the fleet's data dir")
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    p.add_argument("--bind", help="address to listen on (default: every interface)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default edgefleet)")
    p.add_argument("--out", type=Path, help=f"config file (default DATA/broker/{CONFIG})")
    p.add_argument(
        "--user",
        help="the user Mosquitto switches to when started as root (Mosquitto's default: "
        "mosquitto); it must be able to read the server key",
    )
    p.set_defaults(func=_config)


def register_keys(ksub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`edgefleet keys broker-cert`, added to the `keys` group by agent/cli/keys.py."""
    p = ksub.add_parser(
        "broker-cert",
        help="X.509 certificates for the MQTT broker's TLS: devices, the broker, hubs",
        description="On the authority's machine (--data DIR): a client certificate for each "
        "--device NAME enrolled in DIR (or --all), the broker's --server certificate, or a "
        "--hub ID's. For a device on another machine: --request on the device, --csr on the "
        "authority's machine, --install back on the device. Keys are PEM files, mode 0600.",
    )
    p.add_argument("--data", type=Path, help="the fleet's data dir (holds authority/)")
    p.add_argument("--device", action="append", default=[], metavar="NAME", help="repeatable")
    p.add_argument("--all", action="store_true", help="every device enrolled in --data")
    p.add_argument("--server", action="store_true", help="the broker's server certificate")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="with --server: a name or address clients connect to (repeatable; default "
        "localhost, 127.0.0.1, ::1)",
    )
    p.add_argument("--hub", metavar="ID", help="a shared connection carrying the --device list")
    p.add_argument("--dir", type=Path, help="on a device: its directory (DATA/devices/NAME)")
    p.add_argument("--request", action="store_true", help="with --dir: make a key and broker.csr")
    p.add_argument("--csr", type=Path, help="on the authority: certify a device's broker.csr")
    p.add_argument("--authority", type=Path, help="with --csr: the authority directory")
    p.add_argument("--out", type=Path, help="with --csr: the certificate file to write")
    p.add_argument("--install", type=Path, metavar="CERT", help="with --dir: install CERT")
    p.add_argument("--ca", type=Path, help="with --install: the broker-ca.pem that came with it")
    p.add_argument("--yes", action="store_true", help="with --csr: issue without asking")
    p.add_argument("--valid-days", type=int, default=brokertls.DEFAULT_VALID_DAYS)
    p.add_argument(
        "--passphrase-file",
        help="passphrase of the authority key (else DATA/passphrase, $EDGEFLEET_PASSPHRASE or a "
        "prompt)",
    )
    p.set_defaults(func=_broker_cert)


# --------------------------------------------------------------------------- keys broker-cert


def _broker_cert(args: argparse.Namespace) -> int:
    if not 1 <= args.valid_days <= MAX_VALID_DAYS:
        raise CliError(f"--valid-days: expected 1 to {MAX_VALID_DAYS}, found {args.valid_days}")
    try:
        if args.request or args.install is not None:
            return _on_device(args)
        if args.csr is not None:
            return _certify_request(args)
        if args.data is None:
            raise CliError(
                "keys broker-cert: expected --data DIR (with --device, --all, --server or --hub), "
                "--dir DEVDIR --request, --csr FILE or --dir DEVDIR --install CERT"
            )
        return _issue_in_data(args)
    except (brokertls.BrokerTlsError, keystore.KeystoreError) as exc:
        raise CliError(str(exc)) from None


def _authority(directory: Path, args: argparse.Namespace, data: DataDir | None) -> SigningKey:
    if not (directory / keystore.AUTHORITY_KEY).exists():
        raise CliError(
            f"{directory / keystore.AUTHORITY_KEY}: no fleet authority here; broker certificates "
            "are issued on the authority's machine"
        )
    pw = None
    if args.passphrase_file is None and data is not None:
        pw = data.fleet_passphrase()  # a simulated fleet's own passphrase file
    if pw is None:
        pw = keystore.passphrase(args.passphrase_file)
    return keystore.load_authority(directory, pw)


def _issue_in_data(args: argparse.Namespace) -> int:
    data = DataDir(args.data)
    if args.device and args.all:
        raise CliError("--device and --all: one or the other")
    listed = bool(args.device or args.all)
    wants = sum([listed and args.hub is None, args.server, args.hub is not None])
    if wants != 1 or (args.server and listed):
        raise CliError(
            "keys broker-cert --data: expected exactly one of --device NAME, --all, --server, "
            "--hub ID (with --device NAMEs)"
        )
    names = data.device_names() if args.all else list(args.device)
    missing = [n for n in names if not (data.device(n) / keystore.DEVICE_CERT).exists()]
    if missing:
        raise CliError(f"--device {missing[0]}: not enrolled in {data.devices} (no device.cert)")
    if args.host and not args.server:
        raise CliError("--host goes with --server")
    authority = _authority(data.authority, args, data)
    if args.server:
        hosts = tuple(args.host) or brokertls.DEFAULT_HOSTS
        files = brokertls.issue_server(data, authority, hosts, valid_days=args.valid_days)
        print(f"broker server certificate for {', '.join(hosts)}")
        _print_files(files)
        return 0
    if args.hub is not None:
        if not names:
            raise CliError("--hub: name the devices it carries with --device (or --all)")
        ids = [brokertls.device_id_of(data.device(n)) for n in names]
        files = brokertls.issue_hub(data, authority, args.hub, ids, valid_days=args.valid_days)
        print(f"hub {args.hub} (user {brokertls.HUB_PREFIX}{args.hub}): {len(ids)} devices")
        _print_files(files)
        return 0
    if not names:
        raise CliError(f"--all: no device is enrolled in {data.devices}")
    rows: list[tuple[str, ...]] = []
    for name in names:
        device_id, files = brokertls.issue_device(
            data.device(name), data.authority, authority, valid_days=args.valid_days
        )
        rows.append((name, device_id, str(files.cert), str(files.key)))
    _table(("device", "identity (CN)", "certificate", "key (0600)"), rows)
    print(f"CA: {data.authority / brokertls.CA_CERT}")
    return 0


def _on_device(args: argparse.Namespace) -> int:
    if args.dir is None:
        raise CliError("--request and --install need --dir DEVDIR (the device's directory)")
    if args.request and args.install is not None:
        raise CliError("--request and --install: one at a time")
    if args.request:
        device_id, csr = brokertls.make_request(args.dir)
        print(f"broker key and request for {device_id}")
        print(f"  key      {args.dir / brokertls.CLIENT_KEY}  (0600, stays on this device)")
        print(f"  request  {csr}  (send it to the fleet authority: keys broker-cert --csr)")
        return 0
    if args.ca is None:
        raise CliError("--install: give the CA that came with the certificate (--ca broker-ca.pem)")
    device_id = brokertls.install(args.dir, args.install, args.ca)
    print(f"installed the broker certificate of {device_id}")
    _print_files(brokertls.device_files(args.dir))
    return 0


def _certify_request(args: argparse.Namespace) -> int:
    if args.authority is None or args.out is None:
        raise CliError("--csr needs --authority AUTHDIR and --out FILE")
    if args.out.exists():
        raise CliError(f"{args.out}: already exists; remove it or choose another --out")
    device_id, _ = brokertls.read_request(args.csr)
    print(f"{args.csr}: a broker certificate request for device {device_id}")
    print("  (signed by the TLS key it names: check that this is the device's enrolled id)")
    if not args.yes and sys.stdin.isatty() and input("issue? [y/N] ").strip() != "y":
        raise CliError(f"{args.csr}: not issued (answer y to issue it)")
    authority = _authority(args.authority, args, None)
    device_id, ca = brokertls.issue_from_request(
        args.csr, args.out, args.authority, authority, valid_days=args.valid_days
    )
    print(f"issued {args.out} for {device_id}, valid {args.valid_days} days")
    print(f"  give the device {args.out} and {ca} (keys broker-cert --dir DEVDIR --install)")
    return 0


def describe_pem(path: Path, root: Path | None) -> dict[str, object]:
    """`keys show` of a PEM file: a broker certificate, request or key."""
    try:
        roots = None
        if root is not None:
            roots = [k.raw for k in keystore.load_roots(root).keys.values()]
        return brokertls.describe(path, roots)
    except (brokertls.BrokerTlsError, keystore.KeystoreError) as exc:
        raise CliError(str(exc)) from None
    except x509_errors as exc:
        raise CliError(f"{path}: {exc}") from None


def _print_files(files: brokertls.TlsFiles) -> None:
    print(f"  certificate  {files.cert}")
    print(f"  key          {files.key}  (PEM, mode 0600)")
    print(f"  CA           {files.ca}")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- broker config


def config_text(
    data: DataDir, *, port: int, bind: str | None, acl: Path, user: str | None = None
) -> str:
    """The Mosquitto configuration `broker config` writes (a standalone broker)."""
    files = brokertls.server_files(data)
    listener = MosquittoTls(files.ca, files.cert, files.key, acl_file=acl)
    lines = [
        "# generated by `edgefleet broker config` (docs/DEPLOY.md section 7)",
        "per_listener_settings false",
        "allow_anonymous false",
        *([f"user {user}"] if user else []),
        f"listener {port}{' ' + bind if bind else ''}",
        *listener.lines(),
        *mosquitto_limits(len(data.device_names())),
    ]
    return "\n".join(lines) + "\n"


def _config(args: argparse.Namespace) -> int:
    data = DataDir(args.data.resolve())  # Mosquitto reads the paths from its own directory
    if not 1 <= args.port <= 65535:
        raise CliError(f"--port: expected 1 to 65535, found {args.port}")
    for option, value in (("--bind", args.bind), ("--user", args.user)):
        if value is not None and (not value or any(c.isspace() or c == "#" for c in value)):
            raise CliError(f"{option}: expected one word, found {value!r}")
    try:
        topics = Topics(args.prefix)
    except InvalidNameError as exc:
        raise CliError(f"--prefix: {exc}") from None
    files = brokertls.server_files(data)
    try:
        brokertls.check_files(files, brokertls.SERVER_CN)
        hubs = brokertls.hubs(data)
    except brokertls.BrokerTlsError as exc:
        raise CliError(
            f"{exc} (issue it with `edgefleet keys broker-cert --data {data.root} --server "
            "--host NAME`)"
        ) from None
    out: Path = args.out or data.root / brokertls.BROKER / CONFIG
    acl = out.parent / brokertls.ACL_FILE
    acl_text = mosquitto_acl(topics, hubs)
    text = config_text(data, port=args.port, bind=args.bind, acl=acl.resolve(), user=args.user)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        acl.write_text(acl_text)
        out.write_text(text)
    except OSError as exc:
        raise CliError(f"{exc.filename or out}: cannot write ({exc.strerror})") from None
    devices = data.device_names()
    with_certs = [n for n in devices if (data.device(n) / brokertls.CLIENT_CERT).exists()]
    print(f"wrote {out} and {acl}")
    print(f"  listener     {args.bind or '*'}:{args.port}, TLS, client certificates required")
    print(f"  identities   {len(with_certs)} of {len(devices)} devices here have a broker cert")
    print(f"  hubs         {', '.join(sorted(hubs)) or 'none'}")
    print(f"  run it       mosquitto -c {out}")
    return 0
