"""Where keys and certificates live on disk, and how a passphrase is obtained.

Layout (all secret files 0600, written atomically, never overwritten; formats in
docs/PROTOCOL.md section 11):

    AUTH_DIR/authority.key      the fleet authority's Ed25519 key (encrypted, ledger.keyfile)
    AUTH_DIR/fleet-root.json    the authority's public key: what verifiers are configured with
    AUTH_DIR/issued.json        the last certificate serial issued
    DEV_DIR/device.key          a device's Ed25519 key (encrypted)
    DEV_DIR/device.cert         its enrollment certificate (ledger.certs wire bytes)
    DEV_DIR/enroll.req          its enrollment request (ledger.enroll), made by `init_device`
    DEV_DIR/rotations/NNNN.rot  the device's own key rotations, in order (`keys rotate`); its
                                device.key is then the key the last one hands over to
    DEV_DIR/fleet-root.json     a copy of the fleet root, put there by `install_certificate`
                                (with DATA/authority/fleet-root.json when DEV_DIR is
                                DATA/devices/NAME: docs/DEPLOY.md)
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
from ledger import domains, keyfile
from ledger.certs import (
    Certificate,
    FleetRoots,
    decode_certificate,
    decode_rotation,
    issue_certificate,
    verify_certificate,
)
from ledger.enroll import EnrollRequest, sign_request, verify_request
from ledger.errors import DecodeError, KeyFileError, LedgerError, SignatureError
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
        try:
            first = getpass.getpass("passphrase: ").encode()
            if confirm and getpass.getpass("again: ").encode() != first:
                raise KeystoreError("passphrases do not match")
        except EOFError:  # Ctrl-D at the prompt (it was a traceback)
            raise KeystoreError(
                "no passphrase: the prompt was closed (end of input); type it, or use "
                "--passphrase-file FILE or set EDGEFLEET_PASSPHRASE"
            ) from None
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
    if (directory / FLEET_ROOT).exists() and not (directory / AUTHORITY_KEY).exists():
        # A pre-enrolled device's data dir (docs/DEPLOY.md): the root is another machine's
        # authority; a new authority here would silently start a second fleet.
        raise KeystoreError(
            f"{directory / FLEET_ROOT}: holds a fleet root but no {AUTHORITY_KEY}: its authority "
            "lives elsewhere; enroll devices with `edgefleet keys init-device`, `keys enroll "
            "--request` on the authority's machine and `keys install-cert` (docs/DEPLOY.md)"
        )
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
        text = path.read_text()
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot read the fleet root ({exc.strerror})") from None
    try:
        doc = json.loads(text)
        key = PublicKey(bytes.fromhex(doc["public"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeystoreError(f"{path}: not a fleet root file ({exc})") from None
    return FleetRoots.of(key)


def _root_json(key: PublicKey) -> bytes:
    doc = {"format": "edgefleet-root/1", "public": key.hex(), "key_id": key.key_id.hex()}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _replace_public(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed into place): a crash
    leaves the old bytes or the new ones, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot write ({exc.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _next_serial(directory: Path) -> int:
    path = directory / ISSUED
    last = json.loads(path.read_text())["last_serial"] if path.exists() else 0
    _replace_public(path, (json.dumps({"last_serial": last + 1}) + "\n").encode())
    return int(last) + 1


# --- devices -----------------------------------------------------------------------------------
#
# Two ways to enroll. A simulated fleet (and `keys enroll --out DEVDIR`) creates the key and the
# certificate together on the authority's machine (``enroll_device``). A real device creates its
# key itself and sends only a signed request (``init_device``); the authority certifies the key
# the request names (``issue_from_request``) and the device installs the certificate with a copy
# of the fleet root (``install_certificate``). The second way never moves a secret.

ENROLL_REQUEST = "enroll.req"


@dataclass(frozen=True)
class Enrolled:
    key: SigningKey
    certificate: Certificate


def _validity(now_ms: int | None, valid_days: int) -> tuple[int, int]:
    if valid_days < 1:
        raise KeystoreError(f"--valid-days {valid_days}: a certificate is valid for 1 day or more")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    # A day of slack before now: a device whose clock runs a little behind still accepts it.
    return max(0, now - DAY_MS), now + valid_days * DAY_MS


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
    _refuse_cert_without_key(device_dir)
    not_before, not_after = _validity(now_ms, valid_days)
    key = SigningKey.generate()
    cert = issue_certificate(
        authority,
        key.public,
        kind=kind,
        model=model,
        site=site,
        owner_x25519=owner_x25519,
        not_before_ms=not_before,
        not_after_ms=not_after,
        serial=_next_serial(authority_dir),
    )
    keyfile.write(device_dir / DEVICE_KEY, key, pw, "device", cost)
    _write_private(device_dir / DEVICE_CERT, cert.wire)
    return Enrolled(key, cert)


def _refuse_cert_without_key(device_dir: Path) -> None:
    if (device_dir / DEVICE_CERT).exists() and not (device_dir / DEVICE_KEY).exists():
        raise KeystoreError(
            f"{device_dir}: holds {DEVICE_CERT} but no {DEVICE_KEY}: restore the key from its "
            f"backup, or remove {DEVICE_CERT} and enroll the device afresh "
            "(edgefleet keys init-device)"
        )


def init_device(
    device_dir: Path,
    pw: bytes,
    *,
    kind: str,
    model: str,
    site: str,
    owner_x25519: bytes | None = None,
    now_ms: int | None = None,
    cost: tuple[int, int] = keyfile.INTERACTIVE,
) -> EnrollRequest:
    """Create ``DEVDIR/device.key`` and ``DEVDIR/enroll.req`` (the request for the authority).

    Never overwrites a key. The attributes are checked before anything is written, and the
    request is removed again if the key cannot be written (and the key if the request cannot)."""
    if (device_dir / DEVICE_KEY).exists():
        raise KeystoreError(
            f"{device_dir / DEVICE_KEY}: already exists and is never overwritten: choose "
            "another --dir, or send the enroll.req made with it"
        )
    _refuse_cert_without_key(device_dir)
    key = SigningKey.generate()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        request = sign_request(
            key, kind=kind, model=model, site=site, owner_x25519=owner_x25519, time_ms=now
        )
    except DecodeError as exc:
        raise KeystoreError(f"{device_dir}: {exc}") from None
    device_dir.mkdir(parents=True, exist_ok=True)
    try:
        keyfile.write(device_dir / DEVICE_KEY, key, pw, "device", cost)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None
    try:
        _replace_public(device_dir / ENROLL_REQUEST, request.wire)
    except KeystoreError:
        # The key is ours, seconds old: without its request it would only be in the way.
        (device_dir / DEVICE_KEY).unlink(missing_ok=True)
        raise
    return request


def read_request(path: Path) -> EnrollRequest:
    """A device's enrollment request, its proof of possession checked."""
    try:
        wire = path.read_bytes()
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return verify_request(wire)
    except SignatureError:
        raise KeystoreError(
            f"{path}: the request is not signed by the key it names (altered, or signed by "
            "another key): ask the device for a new one (edgefleet keys init-device)"
        ) from None
    except LedgerError as exc:
        raise KeystoreError(
            f"{path}: not a valid enrollment request ({exc}): ask the device for a new one"
        ) from None


def issue_from_request(
    authority_dir: Path,
    authority: SigningKey,
    request: EnrollRequest,
    out: Path,
    *,
    valid_days: int = 3650,
    now_ms: int | None = None,
) -> Certificate:
    """Certify the key ``request`` names with the attributes it asks for, under the authority's
    next serial, and write the certificate to ``out`` (a new file, written atomically)."""
    if out.exists():
        raise KeystoreError(f"{out}: already exists; remove it or choose another --out")
    not_before, not_after = _validity(now_ms, valid_days)
    cert = issue_certificate(
        authority,
        request.device_key,
        kind=request.kind,
        model=request.model,
        site=request.site,
        owner_x25519=request.owner_x25519,
        not_before_ms=not_before,
        not_after_ms=not_after,
        serial=_next_serial(authority_dir),
    )
    _write_private(out, cert.wire)
    return cert


@dataclass(frozen=True)
class Installed:
    certificate: Certificate
    roots_written: tuple[Path, ...]  # where the fleet root was copied to


def data_dir_root_path(device_dir: Path) -> Path | None:
    """Where a runner reads the fleet root when ``device_dir`` is ``DATA/devices/NAME``:
    ``DATA/authority/fleet-root.json`` (agent/fleet/datadir.py); None for a device dir elsewhere."""
    parent = device_dir.resolve().parent
    data = DataDir(parent.parent)
    return data.authority / FLEET_ROOT if data.devices == parent else None


def install_certificate(
    device_dir: Path, cert_path: Path, root_path: Path, pw: bytes, *, now_ms: int | None = None
) -> Installed:
    """Check that the certificate at ``cert_path`` is for the key in ``device_dir`` (unlocked with
    ``pw``) and is signed by the fleet root at ``root_path``, then install it as
    ``DEVDIR/device.cert`` with the fleet root beside it (``DEVDIR/fleet-root.json``) and, for a
    device dir inside a data dir, where the runner reads it (``data_dir_root_path``).

    Everything is checked before anything is written; each file is replaced atomically, the
    certificate last, so an interrupted install leaves no certificate without its root."""
    _refuse_cert_without_key(device_dir)
    if not (device_dir / DEVICE_KEY).exists():
        raise KeystoreError(
            f"{device_dir}: no {DEVICE_KEY}: install the certificate in the directory where "
            "`edgefleet keys init-device` created the key"
        )
    roots = load_roots(root_path)
    (root,) = roots.keys.values()
    try:
        wire = cert_path.read_bytes()
    except OSError as exc:
        raise KeystoreError(f"{cert_path}: cannot read ({exc.strerror})") from None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        cert = decode_certificate(wire)
        if cert.authority_key_id not in roots.keys:
            raise KeystoreError(
                f"{cert_path}: issued by another fleet (authority key id "
                f"{cert.authority_key_id.hex()}), not by the fleet root in {root_path} "
                f"({root.key_id.hex()}): install the certificate with the fleet root of the "
                "authority that issued it"
            )
        cert = verify_certificate(wire, roots, now)
    except LedgerError as exc:
        raise KeystoreError(
            f"{cert_path}: {exc}: ask the authority to issue it again from {ENROLL_REQUEST}"
        ) from None
    key = _unlock_device(device_dir, pw)
    if cert.device_key != key.public:
        raise KeystoreError(
            f"{cert_path}: certificate is for device {cert.device_id}, but "
            f"{device_dir / DEVICE_KEY} is device {key.public.device_id}: install the "
            f"certificate issued from this device's {ENROLL_REQUEST}"
        )
    targets = [device_dir / FLEET_ROOT]
    runner_root = data_dir_root_path(device_dir)
    if runner_root is not None:
        targets.append(runner_root)
    to_write = [t for t in targets if not _same_root(t, root, cert_path)]
    for target in to_write:
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_public(target, _root_json(root))
    if (device_dir / DEVICE_CERT).exists():
        # A renewal (or a corrected attribute): the new certificate is for the key in this
        # directory and chains to the fleet root, so it may replace whatever was there.
        try:
            keyfile.replace_private(device_dir / DEVICE_CERT, wire)
        except OSError as exc:
            raise KeystoreError(
                f"{device_dir / DEVICE_CERT}: cannot write ({exc.strerror})"
            ) from None
    else:
        _write_private(device_dir / DEVICE_CERT, wire)
    return Installed(cert, tuple(to_write))


def _same_root(path: Path, root: PublicKey, cert_path: Path) -> bool:
    """True when ``path`` already holds ``root``; refuse (KeystoreError) another fleet's root."""
    if not path.exists():
        return False
    held = load_roots(path)
    if root.key_id in held.keys:
        return True
    other = ", ".join(k.hex() for k in held.keys)
    raise KeystoreError(
        f"{path}: holds the root of another fleet (key id {other}), not the one that issued "
        f"{cert_path} ({root.key_id.hex()}): install into a device dir of this fleet"
    )


def _unlock_device(device_dir: Path, pw: bytes) -> SigningKey:
    _refuse_cert_without_key(device_dir)
    try:
        key, role = keyfile.read(device_dir / DEVICE_KEY, pw)
    except KeyFileError as exc:
        hint = ""
        if "wrong passphrase" in str(exc):
            hint = ": give the passphrase the key was created with (--passphrase-file or "
            hint += "$EDGEFLEET_PASSPHRASE)"
        raise KeystoreError(f"{exc}{hint}") from None
    if role != "device":
        raise KeystoreError(f"{device_dir / DEVICE_KEY}: holds a {role} key, not a device key")
    return key


def load_device(device_dir: Path, pw: bytes, roots: FleetRoots | None = None) -> Enrolled:
    key = _unlock_device(device_dir, pw)
    try:
        wire = (device_dir / DEVICE_CERT).read_bytes()
    except OSError as exc:
        raise KeystoreError(f"{device_dir / DEVICE_CERT}: cannot read ({exc.strerror})") from None
    cert = verify_certificate(wire, roots, None) if roots else decode_certificate(wire)
    current = rotated_key(device_dir, cert) or cert.device_key
    if current != key.public:
        if current == cert.device_key:
            raise KeystoreError(f"{device_dir}: certificate is for another key")
        raise KeystoreError(
            f"{device_dir}: {DEVICE_KEY} is not the key its {ROTATIONS}/ hand over to last "
            f"({current.key_id.hex()}): an interrupted `edgefleet keys rotate`? run it again"
        )
    return Enrolled(key, cert)


ROTATIONS = "rotations"  # DEV_DIR/rotations/NNNN.rot: the device's own key rotations, in order


def own_rotations(device_dir: Path) -> list[bytes]:
    """The rotation wires in ``DEVDIR/rotations/`` (``edgefleet keys rotate``), oldest first."""
    folder = device_dir / ROTATIONS
    if not folder.is_dir():
        return []
    try:
        return [p.read_bytes() for p in sorted(folder.glob("*.rot"))]
    except OSError as exc:
        raise KeystoreError(f"{folder}: cannot read ({exc.strerror})") from None


def rotated_key(device_dir: Path, cert: Certificate) -> PublicKey | None:
    """The key the device's rotations hand over to last (each signed by the key before it), or
    None without rotations. The authority's countersignatures are checked by whoever verifies
    with the fleet roots (the trust store); here only the hand-over chain."""
    current = cert.device_key
    try:
        for wire in own_rotations(device_dir):
            rot = decode_rotation(wire)
            if rot.device_id != cert.device_id or rot.old_key_id != current.key_id:
                raise KeystoreError(
                    f"{device_dir / ROTATIONS}: rotation to key {rot.new_key.key_id.hex()} does "
                    f"not follow key {current.key_id.hex()} of {cert.device_id}"
                )
            current.verify(domains.ROTATION, rot.body, rot.old_sig, f"rotation of {cert.device_id}")
            current = rot.new_key
    except LedgerError as exc:
        raise KeystoreError(f"{device_dir / ROTATIONS}: {exc}") from None
    return None if current is cert.device_key else current


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
