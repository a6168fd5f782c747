"""Offline verification of a data dir: every own chain, pending reading, peer header and replica.

Used by ``edgefleet verify`` and ``edgefleet status``; needs no running fleet and trusts nothing
in the data dir but the fleet root it is given (by default the data dir's own fleet-root.json).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.fleet.datadir import DataDir
from ledger.certs import DeviceKeys, FleetRoots
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
    epoch: int | None = None  # the own chain's current epoch
    epochs: list[dict[str, int]] = field(default_factory=list)  # own epoch changes (restores)
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
                "epoch",
                "epochs",
                "errors",
                "ok",
            )
        }


def audit(data: DataDir, roots: FleetRoots, *, deep: bool = True) -> Iterator[DeviceReport]:
    """Yield one report per device directory. ``deep=False`` skips signature checks (status)."""
    for name in data.device_names():
        yield audit_device(data, name, roots, deep=deep)


def audit_device(data: DataDir, name: str, roots: FleetRoots, *, deep: bool) -> DeviceReport:
    rep = DeviceReport(name)
    try:
        keys = DeviceKeys.build(
            (data.device(name) / "device.cert").read_bytes(), roots, now_ms=None
        )
    except (OSError, LedgerError) as exc:
        rep.errors.append(f"certificate: {exc}")
        return rep
    cert = keys.certificate
    rep.device_id, rep.kind, rep.site = cert.device_id, cert.kind, cert.site
    path = data.store_path(name)
    if not path.exists():
        return rep
    try:
        store = Store(path)
    except LedgerError as exc:
        rep.errors.append(str(exc))
        return rep
    with store:
        _own_chain(store, keys, rep, deep)
        _peers(store, roots, rep, deep)
        _replicas(store, roots, rep, deep)
        rep.evidence = len(store.evidence())
    return rep


def _own_chain(store: Store, keys: DeviceKeys, rep: DeviceReport, deep: bool) -> None:
    head = store.head()
    rep.height = None if head is None else head.header.height
    rep.epoch = None if head is None else head.header.epoch
    rep.blocks = store.block_count()
    rep.pending = store.pending_count()
    try:
        epochs = _epochs(store, rep.device_id)
    except LedgerError as exc:
        rep.errors.append(f"own epoch records: {exc}")
        return
    rep.epochs = [
        {"epoch": e, "after_height": se.record.last_height, "from_epoch": se.record.prev_epoch}
        for e, se in sorted(epochs.items())
    ]
    if not deep:
        return
    try:
        _, rep.readings = verify_chain(store.blocks(), keys.key_for, epochs)
        signer = keys.key_at(0 if head is None else head.header.height + 1)
        for sr in store.pending():
            sr.verify(signer)
    except LedgerError as exc:
        rep.errors.append(f"own chain: {exc}")


def _epochs(store: Store, device_id: str) -> EpochIndex:
    """The device's epoch records held in ``store`` (signatures are checked where a chain
    crosses them)."""
    return index_epochs((decode_epoch(w) for w in store.epoch_wires(device_id)), device_id)


def _peer_keys(store: Store, device_id: str, roots: FleetRoots) -> DeviceKeys:
    wire = store.certificate(device_id)
    if wire is None:
        raise LedgerError(f"no certificate held for peer {device_id}")
    return DeviceKeys.build(wire, roots, now_ms=None)


def _peers(store: Store, roots: FleetRoots, rep: DeviceReport, deep: bool) -> None:
    devices = store.peer_devices()
    rep.peers = len(devices)
    for dev in devices:
        headers = store.peer_headers(dev)
        rep.peer_headers += len(headers)
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
                        raise LedgerError(
                            f"peer {dev}: gap or broken link at height {sh.header.height}"
                        )
                    sh.verify(keys.key_for(sh.header.key_id, sh.header.height))
                    prev = sh
        except LedgerError as exc:
            rep.errors.append(f"peer {dev}: {exc}")


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
            rep.errors.append(f"replica {dev}@{height}: {exc}")


def default_root(data: DataDir) -> Path:
    return data.authority / "fleet-root.json"
