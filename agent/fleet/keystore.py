"""Where keys and certificates live on disk, and how a passphrase is obtained.

Layout (all secret files 0600, written atomically, never overwritten; formats in
docs/PROTOCOL.md section 11):

    AUTH_DIR/authority.key      the fleet authority's Ed25519 key (encrypted, ledger.keyfile)
    AUTH_DIR/fleet-root.json    the authority's public key: what verifiers are configured with
    AUTH_DIR/issued.json        the last certificate serial issued
    DEV_DIR/device.key          a device's Ed25519 key (encrypted)
    DEV_DIR/device.cert         its enrollment certificate (ledger.certs wire bytes)
    OWNER.key / OWNER.pub       an owner's X25519 key pair (for private households): the secret
                                encrypted like a device key (role "owner"), the public in hex

The passphrase comes from ``--passphrase-file``, else ``$EDGEFLEET_PASSPHRASE``, else an
interactive prompt when stdin is a terminal; otherwise the caller gets a clear error.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nacl.public

from agent.errors import AgentError
from agent.fleet.datadir import DataDir
from ledger import keyfile
from ledger.certs import (
    Certificate,
    FleetRoots,
    decode_certificate,
    issue_certificate,
    verify_certificate,
)
from ledger.errors import KeyFileError
from ledger.identity import PublicKey, SigningKey

AUTHORITY_KEY = "authority.key"
FLEET_ROOT = "fleet-root.json"
ISSUED = "issued.json"
DEVICE_KEY = "device.key"
DEVICE_CERT = "device.cert"
DAY_MS = 86_400_000


class KeystoreError(AgentError, code="keystore"):
    """A user-fixable key problem (missing file, no passphrase, wrong passphrase)."""


def passphrase(file: str | None, *, confirm: bool = False) -> bytes:
    if file:
        try:
            return Path(file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeystoreError(f"{file}: cannot read passphrase file ({exc.strerror})") from None
    env = os.environ.get("EDGEFLEET_PASSPHRASE")
    if env is not None:
        return env.encode()
    if sys.stdin.isatty():
        first = getpass.getpass("passphrase: ").encode()
        if confirm and getpass.getpass("again: ").encode() != first:
            raise KeystoreError("passphrases do not match")
        return first
    raise KeystoreError("no passphrase: use --passphrase-file FILE or set EDGEFLEET_PASSPHRASE")


def _write_private(path: Path, data: bytes) -> None:
    try:
        keyfile.write_private(path, data)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None


# --- authority ---------------------------------------------------------------------------------


def init_authority(
    directory: Path, pw: bytes, cost: tuple[int, int] = keyfile.INTERACTIVE
) -> PublicKey:
    directory.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    try:
        keyfile.write(directory / AUTHORITY_KEY, key, pw, "authority", cost)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None
    root = {"format": "edgefleet-root/1", "public": key.public.hex(), "key_id": key.key_id.hex()}
    (directory / FLEET_ROOT).write_text(json.dumps(root, indent=2) + "\n")
    return key.public


def load_authority(directory: Path, pw: bytes) -> SigningKey:
    try:
        key, role = keyfile.read(directory / AUTHORITY_KEY, pw)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None
    if role != "authority":
        raise KeystoreError(f"{directory / AUTHORITY_KEY}: holds a {role} key, not an authority")
    return key


def load_roots(path: Path) -> FleetRoots:
    """Read a fleet-root.json (or a directory holding one)."""
    if path.is_dir():
        path = path / FLEET_ROOT
    try:
        doc = json.loads(path.read_text())
        key = PublicKey(bytes.fromhex(doc["public"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeystoreError(f"{path}: not a fleet root file ({exc})") from None
    return FleetRoots.of(key)


def _next_serial(directory: Path) -> int:
    path = directory / ISSUED
    last = json.loads(path.read_text())["last_serial"] if path.exists() else 0
    path.write_text(json.dumps({"last_serial": last + 1}) + "\n")
    return int(last) + 1


# --- devices -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrolled:
    key: SigningKey
    certificate: Certificate


def enroll_device(
    authority_dir: Path,
    authority: SigningKey,
    device_dir: Path,
    pw: bytes,
    *,
    kind: str,
    model: str,
    site: str,
    owner_x25519: bytes | None = None,
    valid_days: int = 3650,
    now_ms: int | None = None,
    cost: tuple[int, int] = keyfile.INTERACTIVE,
) -> Enrolled:
    device_dir.mkdir(parents=True, exist_ok=True)
    if (device_dir / DEVICE_KEY).exists():
        raise KeystoreError(f"{device_dir}: already holds a device key")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    key = SigningKey.generate()
    cert = issue_certificate(
        authority,
        key.public,
        kind=kind,
        model=model,
        site=site,
        owner_x25519=owner_x25519,
        not_before_ms=max(0, now - DAY_MS),
        not_after_ms=now + valid_days * DAY_MS,
        serial=_next_serial(authority_dir),
    )
    keyfile.write(device_dir / DEVICE_KEY, key, pw, "device", cost)
    _write_private(device_dir / DEVICE_CERT, cert.wire)
    return Enrolled(key, cert)


def load_device(device_dir: Path, pw: bytes, roots: FleetRoots | None = None) -> Enrolled:
    try:
        key, role = keyfile.read(device_dir / DEVICE_KEY, pw)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None
    if role != "device":
        raise KeystoreError(f"{device_dir / DEVICE_KEY}: holds a {role} key, not a device key")
    try:
        wire = (device_dir / DEVICE_CERT).read_bytes()
    except OSError as exc:
        raise KeystoreError(f"{device_dir / DEVICE_CERT}: cannot read ({exc.strerror})") from None
    cert = verify_certificate(wire, roots, None) if roots else decode_certificate(wire)
    if cert.device_key != key.public:
        raise KeystoreError(f"{device_dir}: certificate is for another key")
    return Enrolled(key, cert)


# --- owners ------------------------------------------------------------------------------------

OWNERS = "owners"  # DATA_DIR/owners/NAME.key: the owner keys of a simulated fleet
log = logging.getLogger("edgefleet.keys")


def init_owner(path: Path, pw: bytes, cost: tuple[int, int] = keyfile.INTERACTIVE) -> bytes:
    """Create an X25519 owner key pair: PATH (secret, encrypted under ``pw`` like a device key,
    0600) and PATH.pub (public, 64 hex characters and a newline). Returns the public key."""
    sk = nacl.public.PrivateKey.generate()
    try:
        keyfile.write_owner(path, bytes(sk), pw, cost)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None
    pub = bytes(sk.public_key)
    path.with_name(path.name + ".pub").write_text(pub.hex() + "\n")
    return pub


def fleet_passphrase_for(path: Path) -> bytes | None:
    """The passphrase file of the simulated fleet whose ``DIR/owners/NAME.key`` is ``path``
    (``DIR/passphrase``, its trailing newline stripped), or None when ``path`` is not one."""
    if path.parent.name != OWNERS:
        return None
    return DataDir(path.parent.parent).fleet_passphrase()


def read_owner_secret(path: Path, pw: bytes | None = None) -> bytes:
    """The X25519 secret of an owner key file, as ``init_owner`` writes it.

    The passphrase is ``pw``, else the simulated fleet's ``DIR/passphrase`` for a key in
    ``DIR/owners/``, else ``$EDGEFLEET_PASSPHRASE`` or a prompt (``passphrase``). The plain-hex
    form written before owner keys were encrypted (64 hex characters, mode 0600) is read once
    with a warning and re-written encrypted when a passphrase is at hand without a prompt.
    """
    try:
        data = keyfile.read_private(path)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None
    if not keyfile.is_key_file(data):
        return _read_plain_owner(path, data, pw)
    if pw is None:
        pw = fleet_passphrase_for(path)
    try:
        return keyfile.unseal_owner(data, pw if pw is not None else passphrase(None), str(path))
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None


def _read_plain_owner(path: Path, data: bytes, pw: bytes | None) -> bytes:
    text = data.decode("ascii", "replace").strip()
    if not _is_hex32(text):
        raise KeystoreError(f"{path}: expected an owner key file (edgefleet-key/1)")
    secret = bytes.fromhex(text)
    if pw is None:
        pw = fleet_passphrase_for(path)
    if pw is None and "EDGEFLEET_PASSPHRASE" in os.environ:
        pw = os.environ["EDGEFLEET_PASSPHRASE"].encode()
    if pw is None:
        log.warning(
            "%s: owner key stored in plain hex (an old form); it stays so until read with a "
            "passphrase at hand ($EDGEFLEET_PASSPHRASE), which re-writes it encrypted",
            path,
        )
        return secret
    try:
        keyfile.replace_private(path, keyfile.seal_owner(secret, pw, _owner_cost(path)))
    except OSError as exc:
        log.warning("%s: owner key stored in plain hex; re-writing it failed (%s)", path, exc)
        return secret
    log.warning("%s: owner key was stored in plain hex (an old form); re-written encrypted", path)
    return secret


def _owner_cost(path: Path) -> tuple[int, int]:
    # A simulated fleet's keys are unlocked by the passphrase file beside them: the KDF cost is
    # the library minimum there, as for its device keys (agent/fleet/provision.py).
    return keyfile.FAST if fleet_passphrase_for(path) is not None else keyfile.INTERACTIVE


def owner_secret_for(owners_dir: Path, public: bytes, pw: bytes | None = None) -> bytes | None:
    """The secret key in ``owners_dir`` (``NAME.key`` files) whose public key is ``public``."""
    for path in sorted(owners_dir.glob("*.key")):
        try:
            recorded = keyfile.public_of(path)
        except KeyFileError:
            recorded = None  # the old plain-hex form records no public key
        if recorded is not None and recorded != public:
            continue
        secret = read_owner_secret(path, pw)
        if bytes(nacl.public.PrivateKey(secret).public_key) == public:
            return secret
    return None


def read_owner_public(value: str) -> bytes:
    """An owner public key given as 64 hex characters or as a path to a .pub file."""
    text = value
    if not _is_hex32(value):
        try:
            text = Path(value).read_text().strip()
        except OSError as exc:
            raise KeystoreError(
                f"{value}: neither 64 hex characters nor a readable file ({exc.strerror})"
            ) from None
    if not _is_hex32(text):
        raise KeystoreError(f"{value}: an owner public key is 64 hex characters")
    return bytes.fromhex(text)


def _is_hex32(s: str) -> bool:
    try:
        return len(bytes.fromhex(s)) == 32
    except ValueError:
        return False
