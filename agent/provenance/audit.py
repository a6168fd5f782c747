"""Offline verification of a data dir: every own chain, pending reading, peer header and replica.

Used by ``edgefleet verify`` and ``edgefleet status``; needs no running fleet and trusts nothing
in the data dir but the fleet root it is given (by default the data dir's own fleet-root.json).

Each device is audited on its own: a damaged key file, certificate or store (a malformed SQLite
file, a truncated one, a flipped byte in a reading) becomes an error line of that device's report,
naming the file and what is wrong, and the audit goes on with the next device.
"""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.fleet.datadir import STORE, DataDir
from agent.fleet.keystore import DEVICE_CERT, DEVICE_KEY
from ledger import keyfile
from ledger.certs import DeviceKeys, FleetRoots, decode_rotation
from ledger.epoch import EpochIndex, decode_epoch, index_epochs
from ledger.errors import LedgerError
from ledger.store import Store
from ledger.verify import verify_block, verify_chain, verify_headers


@dataclass
class DeviceReport:
    name: str
    device_id: str = "?"
    kind: str = "?"
    site: str = "?"
    height: int | None = None
    blocks: int = 0
    readings: int = 0
    pending: int = 0
    peers: int = 0
    peer_headers: int = 0
    replicas: int = 0
    replica_bytes: int = 0
    evidence: int = 0
    lag: int = 0  # own height minus the lowest height another device holds of it (as in the view)
    forked: bool = False  # it holds fork evidence against itself (FORKED in the view)
    min_copies: int | None = None  # fewest storage receipts of any own block (None: no block)
    receipts: int = 0  # storage receipts held for the own blocks (copies placed on peers)
    epoch: int | None = None  # the own chain's current epoch
    epochs: list[dict[str, int]] = field(default_factory=list)  # own epoch changes (restores)
    peer_heads: dict[str, int] = field(default_factory=dict)  # peer device id -> height held
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_json(self) -> dict[str, object]:
        return {
            k: getattr(self, k)
            for k in (
                "name",
                "device_id",
                "kind",
                "site",
                "height",
                "blocks",
                "readings",
                "pending",
                "peers",
                "peer_headers",
                "replicas",
                "replica_bytes",
                "evidence",
                "lag",
                "forked",
                "min_copies",
                "receipts",
                "epoch",
                "epochs",
                "errors",
                "ok",
            )
        }


def audit(data: DataDir, roots: FleetRoots, *, deep: bool = True) -> Iterator[DeviceReport]:
    """Yield one report per device directory. ``deep=False`` skips signature checks (status)."""
    for name in _device_dirs(data):
        yield audit_device(data, name, roots, deep=deep)


def _device_dirs(data: DataDir) -> list[str]:
    """Every device directory holding any of a device's files: one whose certificate is gone
    is reported as damaged, not passed over."""
    if not data.devices.is_dir():
        return []
    return sorted(
        p.name
        for p in data.devices.iterdir()
        if any((p / f).exists() for f in (DEVICE_CERT, DEVICE_KEY, STORE))
    )


def fill_lags(reports: list[DeviceReport]) -> None:
    """Set each report's ``lag``: its height minus the lowest height of its chain that another
    device of the data dir holds (among those holding any of it), as the live view counts it."""
    held: dict[str, list[int]] = {}
    for r in reports:
        for dev, height in r.peer_heads.items():
            held.setdefault(dev, []).append(height)
    for r in reports:
        lows = held.get(r.device_id)
        if r.height is not None and lows:
            r.lag = max(0, r.height - min(lows))


def audit_device(data: DataDir, name: str, roots: FleetRoots, *, deep: bool) -> DeviceReport:
    """Audit one device; whatever is damaged in its directory becomes an error of its report,
    one line each: the file, then what is wrong (and the fix where there is one)."""
    rep = DeviceReport(name)
    ddir = data.device(name)
    cert_path = ddir / DEVICE_CERT
    try:
        # The device's own rotations (`edgefleet keys rotate`): its key file holds the last key.
        rotations = [p.read_bytes() for p in sorted((ddir / "rotations").glob("*.rot"))]
        keys = DeviceKeys.build(cert_path.read_bytes(), roots, now_ms=None, rotations=rotations)
    except FileNotFoundError:
        rep.errors.append(
            f"{cert_path}: missing (restore it from a backup of the device directory)"
        )
        keys = None
    except OSError as exc:
        rep.errors.append(f"{cert_path}: cannot read ({exc.strerror})")
        keys = None
    except LedgerError as exc:
        rep.errors.append(_line(cert_path, exc))
        keys = None
    if keys is not None:
        cert = keys.certificate
        rep.device_id, rep.kind, rep.site = cert.device_id, cert.kind, cert.site
    key_error = _check_key(
        ddir / DEVICE_KEY,
        None if keys is None else keys.spans[-1].key.raw,
        data.fleet_passphrase() if deep else None,
    )
    if key_error:
        rep.errors.append(key_error)
    if keys is None:
        return rep  # without a certificate nothing in the store can be checked
    path = data.store_path(name)
    if not path.exists():
        return rep
    _audit_store(path, keys, roots, rep, deep)
    return rep


_RESTORE = "(to repair: move the store aside, then `edgefleet restore` the device from its peers)"


def _line(path: Path, exc: BaseException, what: str = "") -> str:
    """``path: what: reason`` once, whether or not the error already names the path."""
    reason = str(exc) or type(exc).__name__
    if reason.startswith(f"{path}: "):
        reason = reason[len(f"{path}: ") :]
    return f"{path}: {what}: {reason}" if what else f"{path}: {reason}"


def _check_key(path: Path, public: bytes | None, passphrase: bytes | None) -> str | None:
    """What is wrong with a device's key file, or None. With the data dir's own passphrase (a
    simulated fleet's) the key is opened too, so a corrupted sealed secret is found; without it
    its permissions, format and public key are checked."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path}: missing (the device cannot sign; restore the file from a backup)"
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror})"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path}: permissions {oct(mode & 0o777)} are too open; "
            f"expected 0600 (chmod 600 {path})"
        )
    try:
        if passphrase is None:
            held = keyfile.public_of(path)
        else:
            key, role = keyfile.read(path, passphrase)
            if role != "device":
                return f"{path}: holds a {role} key, not a device key"
            held = key.public.raw
    except LedgerError as exc:
        return _line(path, exc)
    if public is not None and held != public:
        return (
            f"{path}: holds key {held.hex()[:16]}…, the certificate (and its rotations) name "
            f"{public.hex()[:16]}…"
        )
    return None


def _audit_store(
    path: Path, keys: DeviceKeys, roots: FleetRoots, rep: DeviceReport, deep: bool
) -> None:
    try:
        store = Store(path)
    except Exception as exc:  # opening reads the head: SQLite's errors come through as well
        rep.errors.append(f"{_line(path, exc)} {_RESTORE}")
        return
    with store:
        checks: list[tuple[str, Callable[[], None]]] = [
            ("own chain", lambda: _own_chain(store, keys, rep, deep)),
            ("peer headers", lambda: _peers(store, roots, rep, deep)),
            ("replicas", lambda: _replicas(store, roots, rep, deep)),
            ("index and records", lambda: _rest(store, rep, deep)),
        ]
        for what, check in checks:
            # The store's read paths let SQLite's own errors through ("database disk image is
            # malformed"); this is the boundary where one device's damage must become its
            # failure and never stop the audit of the others.
            try:
                check()
            except Exception as exc:
                rep.errors.append(f"{_line(path, exc, what)} {_RESTORE}")


def _own_chain(store: Store, keys: DeviceKeys, rep: DeviceReport, deep: bool) -> None:
    head = store.head()
    rep.height = None if head is None else head.header.height
    rep.epoch = None if head is None else head.header.epoch
    rep.blocks = store.block_count()
    rep.pending = store.pending_count()
    rep.readings = store.sealed_reading_count()  # sealed; pending ones are counted apart
    epochs = _epochs(store, rep.device_id)
    rep.epochs = [
        {"epoch": e, "after_height": se.record.last_height, "from_epoch": se.record.prev_epoch}
        for e, se in sorted(epochs.items())
    ]
    if not deep:
        return
    _, rep.readings = verify_chain(store.blocks(), keys.key_for, epochs)
    signer = keys.key_at(0 if head is None else head.header.height + 1)
    for sr in store.pending():
        try:
            sr.verify(signer)
        except LedgerError as exc:
            raise LedgerError(f"pending reading seq {sr.reading.seq}: {exc}") from None


def _rest(store: Store, rep: DeviceReport, deep: bool) -> None:
    """The tables no check above reads: the tag index, storage receipts and fork evidence.
    Reading them walks their pages, so a damaged page there is found as well."""
    rep.evidence = len(store.evidence())
    rep.forked = bool(store.evidence(rep.device_id))
    receipts = store.receipts()
    rep.receipts = len(receipts)
    if rep.height is not None:
        holders = Counter(height for height, _, _ in receipts)
        rep.min_copies = min(holders[h] for h in range(rep.height + 1))
    if deep:
        store.all_tag_hits()


def _epochs(store: Store, device_id: str) -> EpochIndex:
    """The device's epoch records held in ``store`` (signatures are checked where a chain
    crosses them)."""
    return index_epochs((decode_epoch(w) for w in store.epoch_wires(device_id)), device_id)


def _peer_keys(store: Store, device_id: str, roots: FleetRoots) -> DeviceKeys:
    wire = store.certificate(device_id)
    if wire is None:
        raise LedgerError(f"no certificate held for peer {device_id}")
    # Its rotations, in order of effective height (a rotated key signs the later blocks); its
    # revocations are a trace's verdict, not damage to what this store holds.
    rotations = sorted(
        (w for d, w in store.credentials("rotation") if d == device_id),
        key=lambda w: decode_rotation(w).effective_height,
    )
    return DeviceKeys.build(wire, roots, now_ms=None, rotations=rotations)


def _peers(store: Store, roots: FleetRoots, rep: DeviceReport, deep: bool) -> None:
    devices = store.peer_devices()
    rep.peers = len(devices)
    for dev in devices:
        headers = store.peer_headers(dev)
        rep.peer_headers += len(headers)
        if headers:
            rep.peer_heads[dev] = headers[-1].header.height
        if not deep:
            continue
        try:
            keys = _peer_keys(store, dev, roots)
            if headers and headers[0].header.height == 0:
                verify_headers(headers, keys.key_for, _epochs(store, dev))
            else:  # a peer may hold a suffix only: check signatures and links within it
                prev = None
                for sh in headers:
                    if prev is not None and sh.header.prev_hash != prev.hash:
                        raise LedgerError(f"gap or broken link at height {sh.header.height}")
                    sh.verify(keys.key_for(sh.header.key_id, sh.header.height))
                    prev = sh
        except LedgerError as exc:
            rep.errors.append(_line(store.path, exc, f"peer {dev}"))


def _replicas(store: Store, roots: FleetRoots, rep: DeviceReport, deep: bool) -> None:
    rep.replica_bytes = store.replica_bytes()
    for dev, height in store.replica_index():
        rep.replicas += 1
        if not deep:
            continue
        try:
            block = store.replica(dev, height)
            if block is None:
                raise LedgerError("replica vanished while auditing")
            keys = _peer_keys(store, dev, roots)
            h = block.header.header
            verify_block(block, keys.key_for(h.key_id, h.height))
        except LedgerError as exc:
            rep.errors.append(_line(store.path, exc, f"replica {dev}@{height}"))


def default_root(data: DataDir) -> Path:
    return data.authority / "fleet-root.json"
