"""A device identity's later life: key rotation on the device, revocation by the authority.

**Rotation** runs on a *stopped* device directory, in three steps as enrollment does
(``request_rotation`` on the device, ``countersign`` on the authority's machine,
``install_rotation`` on the device) or all at once where both keys are at hand
(``rotate_device``). The device's store is probed for another open connection and each step
refused while one is. The request seals the readings still pending under the old key, so the
hand-over falls on a block boundary, and takes effect at the next height; it writes the new key
encrypted like the old one (same passphrase and argon2id cost) as ``DEVDIR/device.key.next`` and
the device's signed half as ``DEVDIR/rotate.req``. The authority countersigns it (docs/PROTOCOL.md
9.3). The install checks the rotation as every verifier will, for that new key, at the height the
device is still at (a device that ran since its request must request again), and then, each step
durable before the next:

1. the rotation is written to ``DEVDIR/rotations/NNNN.rot`` and into the device's store (its
   credentials, so the device feeds it to its gossip core at start and its peers learn it from
   its greeting);
2. ``device.key.next`` replaces ``device.key``: the old key is retired (its file is gone; it can
   only ever sign heights below the rotation's, which verifiers already hold).

An interruption leaves ``device.key.next`` beside the old key: running the rotation again
finishes it. The fleet picks the new key up when the device next starts.

**Revocation** (``revoke``): the authority signs ``[1, device_id, nil, from_height, reason,
time_ms, authority_key_id]`` and records it as ``AUTH_DIR/revocations/DEVICE_ID.rev`` (a second
revocation of the same device is refused). The CLI spreads it: retained on the broker's
revocation topic, where every live device, on every machine of the fleet, receives it at once and
every device that connects later receives it on subscribing; and into the stores of a data dir's
devices, which feed it to gossip at their next start.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.fleet import keystore
from agent.fleet.datadir import STORE, DataDir
from agent.fleet.keystore import KeystoreError
from ledger import codec, keyfile
from ledger.block import decode_header
from ledger.certs import (
    Certificate,
    DeviceKeys,
    FleetRoots,
    Revocation,
    countersign_rotation,
    decode_certificate,
    decode_revocation,
    decode_rotation,
    sign_revocation,
    sign_rotation,
)
from ledger.chain import ChainWriter
from ledger.errors import KeyFileError, LedgerError
from ledger.identity import SIGNATURE_SIZE, SigningKey, is_device_id
from ledger.store import Store, open_elsewhere

NEXT_KEY = keystore.DEVICE_KEY + ".next"
REVOCATIONS = "revocations"  # AUTH_DIR/revocations/DEVICE_ID.rev
REASON_MAX = 64  # bytes of UTF-8 (ledger.certs: the reason is a text of at most 64)


def _now_ms() -> int:
    return int(time.time() * 1000)


def refuse_if_open(store_path: Path) -> None:
    """KeystoreError when another process holds ``store_path`` open (a running device)."""
    if open_elsewhere(store_path):
        raise KeystoreError(
            f"{store_path}: open in another process (is the device running?): stop it, rotate, "
            "and start it again (the fleet picks the new key up at start)"
        )


def _cost_of(path: Path) -> tuple[int, int]:
    """The argon2id cost of an existing key file (the new key is sealed at the same cost)."""
    try:
        doc = json.loads(path.read_text())
        return int(doc["opslimit"]), int(doc["memlimit"])
    except (OSError, ValueError, KeyError, TypeError):
        return keyfile.INTERACTIVE


def _unlock(path: Path, pw: bytes, role: str) -> SigningKey:
    try:
        key, found = keyfile.read(path, pw)
    except KeyFileError as exc:
        hint = ""
        if "wrong passphrase" in str(exc):
            hint = " (give the passphrase it was created with: --passphrase-file)"
        raise KeystoreError(f"{exc}{hint}") from None
    if found != role:
        raise KeystoreError(f"{path}: holds a {found} key, not a {role} key")
    return key


def check_authority(authority_dir: Path, authority: SigningKey, roots: FleetRoots) -> None:
    if authority.key_id not in roots.keys:
        known = ", ".join(k.hex() for k in roots.keys)
        raise KeystoreError(
            f"{authority_dir}: its authority key {authority.key_id.hex()} is not this fleet's "
            f"root ({known}): give the --authority directory that enrolled the device"
        )


@dataclass(frozen=True)
class Rotated:
    device_id: str
    old_key_id: bytes
    new_key_id: bytes
    effective_height: int
    sealed: int  # blocks sealed under the old key first (its pending readings)
    path: Path  # the rotation file written
    finished_only: bool = False  # an interrupted rotation was finished, no new one made


ROTATE_REQUEST = "rotate.req"  # DEV_DIR/rotate.req: the device's half, for the authority


@dataclass(frozen=True)
class _Device:
    """A stopped device directory, its certificate and rotations checked."""

    dir: Path
    cert: Certificate
    rotations: list[bytes]
    keys: DeviceKeys

    @property
    def key_path(self) -> Path:
        return self.dir / keystore.DEVICE_KEY

    @property
    def next_path(self) -> Path:
        return self.dir / NEXT_KEY


def _open_device(device_dir: Path, roots: FleetRoots) -> _Device:
    if not (device_dir / keystore.DEVICE_KEY).exists():
        raise KeystoreError(f"{device_dir}: no {keystore.DEVICE_KEY}: not a device directory")
    try:
        cert = decode_certificate((device_dir / keystore.DEVICE_CERT).read_bytes())
    except OSError as exc:
        raise KeystoreError(
            f"{device_dir / keystore.DEVICE_CERT}: cannot read ({exc.strerror})"
        ) from None
    except LedgerError as exc:
        raise KeystoreError(f"{device_dir / keystore.DEVICE_CERT}: {exc}") from None
    refuse_if_open(device_dir / STORE)
    rotations = keystore.own_rotations(device_dir)
    return _Device(device_dir, cert, rotations, _device_keys(device_dir, cert, roots, rotations))


def _unlock_current(dev: _Device, pw: bytes) -> SigningKey | Rotated:
    """The device's current key; or, after an interrupted rotation (its rotation written, the
    key swap not done), the swap finished and its ``Rotated``."""
    current = dev.keys.spans[-1].key
    old = _unlock(dev.key_path, pw, "device")
    if old.public == current:
        return old
    if dev.next_path.exists() and _unlock(dev.next_path, pw, "device").public == current:
        _finish(dev.dir, dev.rotations[-1], dev.cert.device_id, dev.key_path, dev.next_path)
        return Rotated(
            dev.cert.device_id,
            dev.keys.spans[-2].key.key_id,
            current.key_id,
            dev.keys.spans[-1].from_height,
            0,
            _rotation_path(dev.dir, len(dev.rotations)),
            finished_only=True,
        )
    raise KeystoreError(
        f"{dev.key_path}: key {old.key_id.hex()} is not the device's current key "
        f"{current.key_id.hex()}: restore the key file from its backup"
    )


@dataclass(frozen=True)
class Requested:
    device_id: str
    old_key_id: bytes
    new_key_id: bytes
    effective_height: int
    sealed: int
    half: bytes  # [body, old_sig]: what the authority countersigns
    path: Path  # DEV_DIR/rotate.req


def request_rotation(
    device_dir: Path, roots: FleetRoots, device_pw: bytes, *, now_ms: int | None = None
) -> Requested | Rotated:
    """The device's half of a rotation: seal what is pending under the current key, make the new
    key (``device.key.next``, encrypted like the current one) and sign the hand-over to it,
    effective at the next height, for the authority of ``roots`` to countersign; written to
    ``DEVDIR/rotate.req``. A ``Rotated`` when it only finished an interrupted rotation."""
    dev = _open_device(device_dir, roots)
    old = _unlock_current(dev, device_pw)
    if isinstance(old, Rotated):
        return old
    (authority_key_id,) = roots.keys  # a device's fleet-root.json holds its one fleet root
    now = _now_ms() if now_ms is None else now_ms
    sealed, head = 0, None
    if (device_dir / STORE).exists():  # a device that never ran has no store (none is made)
        with Store(device_dir / STORE) as store:
            sealed = _seal_pending(store, old, dev.cert)
            head = store.head()
    if head is None:
        raise KeystoreError(
            f"{device_dir}: the device has signed no block yet: nothing to hand over "
            "(enroll a new key instead: edgefleet keys init-device)"
        )
    effective = head.header.height + 1
    new = SigningKey.generate()
    half = sign_rotation(dev.cert.device_id, old, new.public, effective, now, authority_key_id)
    dev.next_path.unlink(missing_ok=True)  # a new key of a request never installed
    try:
        keyfile.write(dev.next_path, new, device_pw, "device", _cost_of(dev.key_path))
        keyfile.replace_private(device_dir / ROTATE_REQUEST, half)
    except (KeyFileError, OSError) as exc:
        raise KeystoreError(f"{device_dir}: {exc}") from None
    return Requested(
        dev.cert.device_id,
        old.key_id,
        new.key_id,
        effective,
        sealed,
        half,
        device_dir / ROTATE_REQUEST,
    )


@dataclass(frozen=True)
class RotationRequest:
    device_id: str
    old_key_id: bytes
    new_key_id: bytes
    effective_height: int
    time_ms: int


def read_rotation_request(path: Path) -> tuple[bytes, RotationRequest]:
    """A device's ``rotate.req``: its bytes and what it asks for (decoded; the device's
    signature is checked by the device and every verifier against the key it rotates from,
    which the authority does not keep)."""
    try:
        half = path.read_bytes()
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        rot = decode_rotation(codec_half(half))
    except LedgerError as exc:
        raise KeystoreError(f"{path}: not a rotation request ({exc})") from None
    return half, RotationRequest(
        rot.device_id, rot.old_key_id, rot.new_key.key_id, rot.effective_height, rot.time_ms
    )


def codec_half(half: bytes) -> bytes:
    """A rotation request ``[body, old_sig]`` with a placeholder third signature, so that the
    rotation decoder checks its body (the placeholder is never verified)."""
    body, old_sig = _split_half(half)
    return codec.encode([body, old_sig, bytes(SIGNATURE_SIZE)])


def _split_half(half: bytes) -> tuple[bytes, bytes]:
    w = "rotation request"
    f = codec.array(codec.decode(half, codec.Limits(512, 2, 0, 256), w), 2, w)
    return codec.bin_(f[0], w, "body", maximum=256), codec.bin_(f[1], w, "old_sig", SIGNATURE_SIZE)


def countersign(authority_dir: Path, authority: SigningKey, half: bytes) -> bytes:
    """The authority's half: countersign a device's rotation request."""
    roots = keystore.load_roots(authority_dir)
    check_authority(authority_dir, authority, roots)
    try:
        return countersign_rotation(half, authority)
    except LedgerError as exc:
        raise KeystoreError(f"rotation request: {exc}") from None


def install_rotation(
    device_dir: Path, roots: FleetRoots, wire: bytes, device_pw: bytes, *, sealed: int = 0
) -> Rotated:
    """Install the countersigned rotation: checked as every verifier will check it, for the key
    ``device.key.next`` holds, at the height the device is at; then written (``rotations/``, the
    store) and the key swapped (see the module docstring)."""
    dev = _open_device(device_dir, roots)
    old = _unlock_current(dev, device_pw)
    if isinstance(old, Rotated):
        return old
    try:
        rot = decode_rotation(wire)
        DeviceKeys.build(dev.cert.wire, roots, now_ms=None, rotations=[*dev.rotations, wire])
    except LedgerError as exc:
        raise KeystoreError(f"{device_dir}: the rotation does not verify: {exc}") from None
    if not dev.next_path.exists():
        raise KeystoreError(
            f"{device_dir}: no {NEXT_KEY}: the rotation was not requested here "
            "(edgefleet keys rotate --dir DEVDIR --request)"
        )
    new = _unlock(dev.next_path, device_pw, "device")
    if new.public != rot.new_key:
        raise KeystoreError(
            f"{device_dir}: the rotation hands over to key {rot.new_key.key_id.hex()}, not to "
            f"{new.key_id.hex()} in {NEXT_KEY}: install the rotation of this device's last request"
        )
    with Store(device_dir / STORE) as store:
        head = store.head()
        if head is None or head.header.height + 1 != rot.effective_height:
            at = "none" if head is None else head.header.height
            raise KeystoreError(
                f"{device_dir}: the rotation takes effect at height {rot.effective_height}, but "
                f"the device's head is at {at} (it ran since the request): request it again"
            )
        path = _rotation_path(device_dir, len(dev.rotations) + 1)
        path.parent.mkdir(exist_ok=True)
        try:
            keyfile.write_private(path, wire)
        except KeyFileError as exc:
            raise KeystoreError(str(exc)) from None
        store.put_credential(dev.cert.device_id, "rotation", wire)
    _finish(device_dir, wire, dev.cert.device_id, dev.key_path, dev.next_path)
    (device_dir / ROTATE_REQUEST).unlink(missing_ok=True)
    return Rotated(
        dev.cert.device_id, rot.old_key_id, new.key_id, rot.effective_height, sealed, path
    )


def rotate_device(
    device_dir: Path,
    authority_dir: Path,
    roots: FleetRoots,
    device_pw: bytes,
    authority_pw: bytes,
    *,
    now_ms: int | None = None,
) -> Rotated:
    """All three steps on one machine (the authority's key at hand): request, countersign,
    install."""
    authority = _unlock(authority_dir / keystore.AUTHORITY_KEY, authority_pw, "authority")
    check_authority(authority_dir, authority, roots)
    requested = request_rotation(device_dir, roots, device_pw, now_ms=now_ms)
    if isinstance(requested, Rotated):
        return requested
    wire = countersign(authority_dir, authority, requested.half)
    return install_rotation(device_dir, roots, wire, device_pw, sealed=requested.sealed)


def _rotation_path(device_dir: Path, n: int) -> Path:
    return device_dir / keystore.ROTATIONS / f"{n:04d}.rot"


def _device_keys(
    device_dir: Path, cert: Certificate, roots: FleetRoots, rotations: list[bytes]
) -> DeviceKeys:
    try:
        return DeviceKeys.build(cert.wire, roots, now_ms=None, rotations=rotations)
    except LedgerError as exc:
        raise KeystoreError(f"{device_dir}: certificate or rotations: {exc}") from None


def _seal_pending(store: Store, key: SigningKey, cert: Certificate) -> int:
    """Seal what the old key signed and the device never sealed (a rotation falls on a block
    boundary: every reading of a block is signed by the key its header names)."""
    if store.pending_count() == 0:
        return 0
    writer = ChainWriter(store, key, cert.device_id, owner_x25519=cert.owner_x25519)
    sealed = 0
    while writer.pending_count():
        if writer.seal() is None:
            break
        sealed += 1
    return sealed


def _finish(device_dir: Path, wire: bytes, device_id: str, key_path: Path, next_path: Path) -> None:
    with Store(device_dir / STORE) as store:  # idempotent: a finish after an interruption too
        store.put_credential(device_id, "rotation", wire)
    os.replace(next_path, key_path)
    fd = os.open(device_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- revocation ----------------------------------------------------------------------------------


def revocation_path(authority_dir: Path, device_id: str) -> Path:
    return authority_dir / REVOCATIONS / f"{device_id}.rev"


def issued_revocation(authority_dir: Path, device_id: str) -> Revocation | None:
    path = revocation_path(authority_dir, device_id)
    if not path.exists():
        return None
    try:
        return decode_revocation(path.read_bytes())
    except (OSError, LedgerError) as exc:
        raise KeystoreError(f"{path}: not a revocation ({exc})") from None


def sign_and_record(
    authority_dir: Path,
    authority: SigningKey,
    device_id: str,
    from_height: int,
    reason: str,
    *,
    now_ms: int | None = None,
) -> Revocation:
    """Sign a revocation of the whole device from ``from_height`` and record it in the authority
    dir (never overwritten: revoking twice is refused by the caller first)."""
    if not reason.strip() or len(reason.encode()) > REASON_MAX:
        raise KeystoreError(
            f"--reason: 1 to {REASON_MAX} bytes of UTF-8, found {len(reason.encode())}"
        )
    now = _now_ms() if now_ms is None else now_ms
    try:
        wire = sign_revocation(authority, device_id, None, from_height, reason, now)
    except LedgerError as exc:
        raise KeystoreError(f"revocation of {device_id}: {exc}") from None
    path = revocation_path(authority_dir, device_id)
    path.parent.mkdir(exist_ok=True)
    try:
        keyfile.write_private(path, wire)
    except KeyFileError as exc:
        raise KeystoreError(str(exc)) from None
    return decode_revocation(wire)


def data_dir_device_ids(data: DataDir) -> dict[str, str]:
    """Device name -> id of every device enrolled in ``data`` (from their certificates)."""
    out = {}
    for name in data.device_names():
        try:
            cert = decode_certificate((data.device(name) / keystore.DEVICE_CERT).read_bytes())
        except (OSError, LedgerError):
            continue
        out[name] = cert.device_id
    return out


def _stores(data: DataDir) -> list[tuple[str, Path]]:
    return [(n, data.store_path(n)) for n in data.device_names() if data.store_path(n).exists()]


def known_head(data: DataDir, device_id: str) -> int | None:
    """The highest header of ``device_id`` any store of ``data`` holds (its own or a peer's)."""
    ids = data_dir_device_ids(data)
    best: int | None = None
    for name, path in _stores(data):
        try:
            with Store(path) as store:
                wires = store.peer_header_wires(device_id)
                heights = [decode_header(wires[-1]).header.height] if wires else []
                head = store.head() if ids.get(name) == device_id else None
        except LedgerError:
            continue
        if head is not None:
            heights.append(head.header.height)
        for h in heights:
            best = h if best is None else max(best, h)
    return best


def store_in_data_dir(data: DataDir, rev: Revocation) -> list[str]:
    """Put the revocation into every store of ``data``: each device feeds it to its gossip core
    at its next start (and spreads it). Returns the names of the devices written to."""
    written = []
    for name, path in _stores(data):
        try:
            with Store(path) as store:
                store.put_credential(rev.device_id, "revocation", rev.wire)
        except LedgerError as exc:
            raise KeystoreError(f"{path}: cannot record the revocation ({exc})") from None
        written.append(name)
    return written


def resolve_device(value: str, data: DataDir | None) -> str:
    """A device id, or a device name of the data dir ``data``."""
    ids = data_dir_device_ids(data) if data is not None else {}
    if is_device_id(value):
        if data is not None and value not in ids.values() and not _known_in_stores(data, value):
            raise KeystoreError(
                f"--device {value}: unknown device: no device of {data.root} knows its "
                "certificate (check the id: edgefleet show)"
            )
        return value
    if value in ids:
        return ids[value]
    where = f" nor a device of {data.root}" if data is not None else " (give --data DIR to name it)"
    raise KeystoreError(
        f"--device {value}: unknown device: not a device id (ef + 24 characters){where}"
    )


def _known_in_stores(data: DataDir, device_id: str) -> bool:
    for _, path in _stores(data):
        try:
            with Store(path) as store:
                if store.certificate(device_id) is not None:
                    return True
        except LedgerError:
            continue
    return False
