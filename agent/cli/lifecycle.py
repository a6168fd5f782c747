"""`edgefleet keys rotate` and `edgefleet keys revoke`: a device identity's later life.

``rotate`` hands a stopped device over to a fresh key (agent/fleet/lifecycle.py), in one step
where the authority's key is at hand, or in three (``rotate --request`` on the device,
``countersign`` on the authority's machine, ``rotate --install`` on the device); ``revoke``
signs the authority's revocation of a device and spreads it: retained on the broker's revocation
topic of a live fleet (``--broker``; every device of every machine gets it at once, and every
device that connects later on subscribing), and into a data dir's stores (``--data``; each device
feeds it to gossip at its next start). Registered by agent/cli/keys.py.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent.cli.errors import CliError
from agent.fleet import keystore, lifecycle
from agent.fleet.datadir import DataDir
from agent.transport.errors import TransportError
from agent.transport.topics import Topics
from ledger import keyfile
from ledger.certs import (
    FleetRoots,
    Revocation,
    decode_revocation,
    decode_rotation,
    verify_revocation,
)
from ledger.errors import KeyFileError, LedgerError
from ledger.identity import SigningKey


def register(ksub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = ksub.add_parser(
        "rotate",
        help="hand a stopped device over to a new key (the authority countersigns)",
        description="The device signs the hand-over from its current key to a new one, "
        "effective at its next height (readings still pending are sealed under the old key "
        "first); the authority countersigns it. The new key is stored encrypted like the old "
        "one, which is retired. The device must be stopped; it uses the new key from its next "
        "start, and its peers learn the rotation from its greeting. With the authority on "
        "another machine: --request here, `keys countersign` there, --install here.",
    )
    p.add_argument("--dir", required=True, type=Path, help="device directory (holds device.key)")
    p.add_argument(
        "--authority",
        type=Path,
        help="authority directory (default: DATA/authority when --dir is DATA/devices/NAME)",
    )
    p.add_argument(
        "--passphrase-file",
        help="passphrase of the device key (default: DATA/passphrase of a simulated fleet, "
        "else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.add_argument(
        "--authority-passphrase-file",
        help="passphrase of the authority key (default: the device key's)",
    )
    step = p.add_mutually_exclusive_group()
    step.add_argument(
        "--request",
        action="store_true",
        help="without the authority at hand: make the new key and write DEVDIR/rotate.req "
        "for `keys countersign` on the authority's machine",
    )
    step.add_argument(
        "--install",
        type=Path,
        metavar="ROTATION",
        help="install the rotation `keys countersign` made from this device's rotate.req",
    )
    p.set_defaults(func=_rotate)

    p = ksub.add_parser(
        "countersign",
        help="on the authority's machine: countersign a device's rotate.req",
    )
    p.add_argument("--authority", required=True, type=Path, help="authority directory")
    p.add_argument("--request", required=True, type=Path, help="the device's rotate.req")
    p.add_argument("--out", required=True, type=Path, help="rotation file to write")
    p.add_argument("--yes", action="store_true", help="countersign without asking")
    p.add_argument(
        "--passphrase-file",
        help="passphrase of the authority key (else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=_countersign)

    p = ksub.add_parser(
        "revoke",
        help="revoke a device: sign it with the authority and spread it to the fleet",
        description="The authority signs a revocation of the device from --from-height: its "
        "headers there and above are refused by every device that holds it. --broker publishes "
        "it retained on the fleet's broker (a live fleet, on every machine, at once); --data "
        "records it in a data dir's device stores (read at their next start).",
    )
    p.add_argument("--authority", required=True, type=Path, help="authority directory")
    p.add_argument("--device", required=True, help="device id, or a device name of --data")
    p.add_argument("--reason", required=True, help="why (1 to 64 bytes of UTF-8)")
    p.add_argument(
        "--from-height",
        type=int,
        help="first refused height (default with --data: one above the highest header of the "
        "device held there)",
    )
    p.add_argument("--broker", help="the live fleet's broker URL (mqtt://HOST:PORT, mqtts://...)")
    p.add_argument("--data", type=Path, help="a fleet data dir whose devices record it")
    p.add_argument(
        "--resend",
        action="store_true",
        help="publish the revocation already issued for the device again (no new signature)",
    )
    p.add_argument(
        "--passphrase-file",
        help="passphrase of the authority key (default: DATA/passphrase of a simulated fleet, "
        "else $EDGEFLEET_PASSPHRASE or a prompt)",
    )
    p.set_defaults(func=_revoke)


# --- rotate --------------------------------------------------------------------------------------


def _rotate(args: argparse.Namespace) -> int:
    ddir: Path = args.dir
    data = _data_dir_of(ddir)
    if args.request or args.install is not None:
        return _rotate_step(args, ddir, data)
    authority_dir = args.authority
    if authority_dir is None:
        if data is None or not (data.authority / keystore.AUTHORITY_KEY).exists():
            raise CliError(
                f"{ddir}: give --authority DIR (the authority countersigns the rotation; "
                "only a device dir DATA/devices/NAME of a simulated fleet finds DATA/authority)"
            )
        authority_dir = data.authority
    try:
        pw = _device_passphrase(args.passphrase_file, data)
        apw = pw
        if args.authority_passphrase_file:
            apw = keystore.passphrase(args.authority_passphrase_file)
        roots = _roots_for(ddir, data, authority_dir)
        done = lifecycle.rotate_device(ddir, authority_dir, roots, pw, apw)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    _print_rotated(done, ddir)
    return 0


def _rotate_step(args: argparse.Namespace, ddir: Path, data: DataDir | None) -> int:
    if args.authority is not None or args.authority_passphrase_file is not None:
        raise CliError(
            "keys rotate: --authority goes with neither --request nor --install (the "
            "authority countersigns on its own machine: keys countersign)"
        )
    try:
        pw = _device_passphrase(args.passphrase_file, data)
        roots = _roots_for(ddir, data, None)
        if args.request:
            requested = lifecycle.request_rotation(ddir, roots, pw)
            if isinstance(requested, lifecycle.Rotated):
                _print_rotated(requested, ddir)
                return 0
        else:
            try:
                wire = args.install.read_bytes()
            except OSError as exc:
                raise CliError(f"{args.install}: cannot read ({exc.strerror})") from None
            _print_rotated(lifecycle.install_rotation(ddir, roots, wire, pw), ddir)
            return 0
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    print(
        f"{requested.device_id}: hand-over from key {requested.old_key_id.hex()} to "
        f"{requested.new_key_id.hex()} signed, effective at height {requested.effective_height}"
    )
    if requested.sealed:
        print(f"  sealed     {requested.sealed} block(s) of pending readings under the old key")
    print(f"  request    {requested.path}  (send it to the fleet authority: keys countersign)")
    print(f"  new key    {ddir / lifecycle.NEXT_KEY}  (installed by keys rotate --install)")
    print("  keep the device stopped until the rotation is installed")
    return 0


def _countersign(args: argparse.Namespace) -> int:
    try:
        if args.out.exists():
            raise CliError(f"{args.out}: already exists; remove it or choose another --out")
        half, req = lifecycle.read_rotation_request(args.request)
        print(f"{args.request}: rotation request")
        print(f"  device id         {req.device_id}")
        print(f"  from key          {req.old_key_id.hex()}")
        print(f"  to key            {req.new_key_id.hex()}")
        print(f"  effective height  {req.effective_height}")
        print(f"  requested         {_iso(req.time_ms)}")
        if not args.yes and sys.stdin.isatty() and input("countersign? [y/N] ").strip() != "y":
            raise CliError(f"{args.request}: not countersigned (answer y to countersign it)")
        pw = keystore.passphrase(args.passphrase_file)
        authority = keystore.load_authority(args.authority, pw)
        wire = lifecycle.countersign(args.authority, authority, half)
        keyfile.write_private(args.out, wire)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    except KeyFileError as exc:
        raise CliError(str(exc)) from None
    print(f"countersigned {args.out}: give it to the device (keys rotate --install)")
    return 0


def _print_rotated(done: lifecycle.Rotated, ddir: Path) -> None:
    if done.finished_only:
        print(f"{done.device_id}: finished the interrupted rotation to key {done.new_key_id.hex()}")
    else:
        print(
            f"{done.device_id}: rotated from key {done.old_key_id.hex()} to "
            f"{done.new_key_id.hex()}, effective at height {done.effective_height}"
        )
        if done.sealed:
            print(f"  sealed     {done.sealed} block(s) of pending readings under the old key")
    print(f"  rotation   {done.path}")
    print(f"  key        {ddir / keystore.DEVICE_KEY}  (the old key is retired)")
    print("  start the device again: it signs with the new key, its peers learn the rotation")


def _data_dir_of(ddir: Path) -> DataDir | None:
    parent = ddir.resolve().parent
    data = DataDir(parent.parent)
    return data if data.devices == parent else None


def _device_passphrase(file: str | None, data: DataDir | None) -> bytes:
    if file is None and data is not None:
        pw = data.fleet_passphrase()
        if pw is not None:
            return pw
    return keystore.passphrase(file)


def _roots_for(ddir: Path, data: DataDir | None, authority_dir: Path | None) -> FleetRoots:
    for candidate in (
        ddir / keystore.FLEET_ROOT,
        data.authority / keystore.FLEET_ROOT if data is not None else None,
        authority_dir / keystore.FLEET_ROOT if authority_dir is not None else None,
    ):
        if candidate is not None and candidate.exists():
            return keystore.load_roots(candidate)
    raise keystore.KeystoreError(f"{ddir}: no {keystore.FLEET_ROOT} beside it or in its data dir")


# --- revoke --------------------------------------------------------------------------------------


def _revoke(args: argparse.Namespace) -> int:
    if args.broker is None and args.data is None:
        raise CliError(
            "keys revoke: give --broker URL (a live fleet) and/or --data DIR (where its devices "
            "record it for their next start)"
        )
    adir: Path = args.authority
    if not (adir / keystore.AUTHORITY_KEY).exists():
        raise CliError(
            f"{adir}: no {keystore.AUTHORITY_KEY}: not an authority directory (give the "
            "directory `edgefleet keys init-authority` created)"
        )
    data = DataDir(args.data) if args.data is not None else None
    if data is not None and not data.devices.is_dir():
        raise CliError(f"{args.data}: not a fleet data dir (no devices/ in it)")
    try:
        device_id = lifecycle.resolve_device(args.device, data)
        issued = lifecycle.issued_revocation(adir, device_id)
        if args.resend:
            if issued is None:
                raise CliError(f"--resend: {device_id} was never revoked by {adir}")
            rev = issued
        else:
            if issued is not None:
                raise CliError(
                    f"{device_id}: already revoked from height {issued.from_height} "
                    f"({issued.reason!r}, {_iso(issued.time_ms)}; "
                    f"{lifecycle.revocation_path(adir, device_id)}): "
                    "use --resend to publish it again"
                )
            rev = _sign(args, adir, data, device_id)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None
    verb = "revocation of" if args.resend else "revoked"
    print(f"{verb} {rev.device_id} from height {rev.from_height} ({rev.reason})")
    print(f"  recorded   {lifecycle.revocation_path(adir, device_id)}")
    if data is not None:
        try:
            names = lifecycle.store_in_data_dir(data, rev)
        except keystore.KeystoreError as exc:
            raise CliError(str(exc)) from None
        print(
            f"  data dir   recorded by {len(names)} device(s) of {data.root} (at their next start)"
        )
    if args.broker is not None:
        topic = _publish(args.broker, rev, adir, lambda: _unlock_authority(args, adir, data))
        print(f"  broker     published, retained, on {topic}")
    return 0


def _unlock_authority(args: argparse.Namespace, adir: Path, data: DataDir | None) -> SigningKey:
    """The authority key, checked against the fleet's root(s); unlocked once per command."""
    cached: SigningKey | None = getattr(args, "_authority_key", None)
    if cached is not None:
        return cached
    pw = _authority_passphrase(args.passphrase_file, adir)
    authority = keystore.load_authority(adir, pw)
    lifecycle.check_authority(adir, authority, keystore.load_roots(adir))
    if data is not None and (data.authority / keystore.FLEET_ROOT).exists():
        lifecycle.check_authority(adir, authority, keystore.load_roots(data.authority))
    args._authority_key = authority
    return authority


def _sign(args: argparse.Namespace, adir: Path, data: DataDir | None, device_id: str) -> Revocation:
    from_height = args.from_height
    if from_height is None:
        head = lifecycle.known_head(data, device_id) if data is not None else None
        if head is None:
            where = f"no store of {data.root} holds a header of it" if data else "no --data"
            raise CliError(f"--from-height: required ({where})")
        from_height = head + 1
    if from_height < 0:
        raise CliError(f"--from-height: expected 0 or more, found {from_height}")
    authority = _unlock_authority(args, adir, data)
    return lifecycle.sign_and_record(adir, authority, device_id, from_height, args.reason)


def _authority_passphrase(file: str | None, adir: Path) -> bytes:
    """``--passphrase-file``, else a simulated fleet's DATA/passphrase when ``adir`` is its
    DATA/authority, else $EDGEFLEET_PASSPHRASE or a prompt."""
    data = DataDir(adir.resolve().parent)
    if file is None and data.authority == adir.resolve():
        pw = data.fleet_passphrase()
        if pw is not None:
            return pw
    return keystore.passphrase(file)


def _publish(url: str, rev: Revocation, adir: Path, authority: Callable[[], SigningKey]) -> str:
    """Publish ``rev`` retained on its revocation topic. An ``mqtts://`` URL that names no
    client certificate (``cert=``) connects as the authority's own client
    (``edgefleet-authority``), with a certificate the authority issues itself for the day (the
    fleet CA is its key: agent/fleet/brokertls.py), which the broker's ACL lets publish
    revocations; the broker is verified against the fleet CA unless the URL names a ``ca=``."""
    # Imported here: the MQTT adapter (aiomqtt) and the TLS issuer (cryptography) only for the
    # commands that talk to a broker.
    from agent.transport.brokers import BrokerError, parse_broker_url
    from agent.transport.mqtt import MqttClient

    topics = Topics()
    topic = topics.revocation(rev.device_id)
    try:
        tls: dict[str, Path] = {}
        if url.startswith("mqtts://") and "cert=" not in url:
            from agent.fleet import brokertls

            files = brokertls.issue_authority_client(adir, authority())
            tls = {"cert": files.cert, "key": files.key}
            if "ca=" not in url:
                tls["ca"] = files.ca
        endpoint = parse_broker_url(url, **tls)
    except (TransportError, BrokerError, ValueError) as exc:
        raise CliError(f"--broker {url}: {exc}") from None

    async def publish() -> None:
        client = MqttClient(
            endpoint,
            f"edgefleet-authority-{secrets.token_hex(4)}",
            will_topic=f"{topics.root}/authority/presence",
            on_message=lambda _t, _p: None,
        )
        async with client:
            await client.publish(topic, rev.wire, retain=True)

    try:
        asyncio.run(publish())
    except TransportError as exc:
        raise CliError(
            f"--broker {url}: not published ({exc}); the revocation is recorded: "
            "publish it with --resend"
        ) from None
    return topic


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def describe(path: Path, data: bytes, root: Path | None) -> dict[str, object] | None:
    """`keys show` of a rotation (``.rot``), a rotation request (``rotate.req``) or a revocation
    (``.rev``); None for any other file. With ``root`` a revocation's signature is checked (a
    rotation's needs the key it rotates from: `edgefleet verify` checks it in place)."""
    name = path.name
    try:
        if name.endswith(".rot"):
            rot = decode_rotation(data)
            return {
                "file": "key rotation",
                "device_id": rot.device_id,
                "old_key_id": rot.old_key_id.hex(),
                "new_key_id": rot.new_key.key_id.hex(),
                "effective_height": rot.effective_height,
                "time": _iso(rot.time_ms),
                "authority_key_id": rot.authority_key_id.hex(),
            }
        if name == lifecycle.ROTATE_REQUEST or name.endswith("-" + lifecycle.ROTATE_REQUEST):
            _, req = lifecycle.read_rotation_request(path)
            return {
                "file": "rotation request",
                "device_id": req.device_id,
                "old_key_id": req.old_key_id.hex(),
                "new_key_id": req.new_key_id.hex(),
                "effective_height": req.effective_height,
                "requested": _iso(req.time_ms),
            }
        if name.endswith(".rev"):
            if root is not None:
                rev = verify_revocation(data, keystore.load_roots(root))
                status = "signature verifies against the fleet root"
            else:
                rev = decode_revocation(data)
                status = "not verified (pass --root)"
            return {
                "file": "revocation",
                "device_id": rev.device_id,
                "key_id": rev.key_id.hex() if rev.key_id is not None else "all (the device)",
                "from_height": rev.from_height,
                "reason": rev.reason,
                "time": _iso(rev.time_ms),
                "authority_key_id": rev.authority_key_id.hex(),
                "status": status,
            }
    except (LedgerError, keystore.KeystoreError) as exc:
        raise CliError(f"{path}: {exc}") from None
    return None
