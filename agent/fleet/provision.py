"""Automatic enrollment of a simulated fleet on first start.

The first process to start a fleet in a data dir creates the fleet authority, a random passphrase
file (``DIR/passphrase``, 0600: 64 hex characters and a newline, which readers strip), an X25519
key pair per owner of a private site (``DIR/owners/NAME.key``, encrypted like the device keys, and
``NAME.key.pub``), and a key and certificate for every device of devices.yaml. It holds an
exclusive lock on ``DIR/.lock`` while it does, so shards started together enroll each device
exactly once. Later starts only load.

Simulated fleets unlock their keys from the passphrase file beside them, so their argon2id cost
is the library minimum (the file, not the KDF, is the protection there). Real devices are
enrolled with ``edgefleet keys enroll`` at the interactive cost.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from agent.config.devices import Device, FleetConfig
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from ledger import keyfile, sealbox
from ledger.certs import FleetRoots

SIM_COST = keyfile.FAST
FLEET_FILE = "fleet.json"


@dataclass(frozen=True)
class Provisioned:
    roots: FleetRoots
    devices: dict[str, keystore.Enrolled]  # by device name
    owners: dict[str, bytes]  # owner name -> X25519 public key

    def device_id(self, name: str) -> str:
        return self.devices[name].certificate.device_id


@contextmanager
def _locked(data: DataDir) -> Iterator[None]:
    data.root.mkdir(parents=True, exist_ok=True)
    with open(data.root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def provision(cfg: FleetConfig, data: DataDir, now_ms: int) -> Provisioned:
    """Enroll what is missing, then load every device of ``cfg`` (all shards' devices)."""
    with _locked(data):
        pw = data.fleet_passphrase(create=True)
        assert pw is not None
        if not (data.authority / keystore.AUTHORITY_KEY).exists():
            keystore.init_authority(data.authority, pw, SIM_COST)
        authority = keystore.load_authority(data.authority, pw)
        owners = _owners(cfg, data, pw)
        devices = {}
        for dev in cfg.devices:
            ddir = data.device(dev.name)
            if not (ddir / keystore.DEVICE_KEY).exists():
                keystore.enroll_device(
                    data.authority,
                    authority,
                    ddir,
                    pw,
                    kind=dev.kind,
                    model=dev.model,
                    site=dev.site,
                    owner_x25519=_owner_key(cfg, dev, owners),
                    now_ms=now_ms,
                    cost=SIM_COST,
                )
            devices[dev.name] = keystore.load_device(ddir, pw)
        _write_fleet_file(cfg, data, devices)
    return Provisioned(keystore.load_roots(data.authority), devices, owners)


def _owners(cfg: FleetConfig, data: DataDir, pw: bytes) -> dict[str, bytes]:
    """One X25519 key pair per owner of a private site: DIR/owners/NAME.key (encrypted under the
    fleet's passphrase file, like its device keys) and NAME.key.pub. An owner key left in the
    old plain-hex form is re-written encrypted here."""
    out = {}
    for site in cfg.sites:
        if not site.private or not site.owner:
            continue
        path = data.root / keystore.OWNERS / f"{site.owner}.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        pub = path.with_name(path.name + ".pub")
        if not path.exists():
            out[site.owner] = keystore.init_owner(path, pw, SIM_COST)
            continue
        if pub.exists() and keyfile.is_key_file(path.read_bytes()):
            out[site.owner] = bytes.fromhex(pub.read_text().strip())
            continue
        # The old plain form (re-written encrypted by reading it), or a lost .pub file.
        secret = keystore.read_owner_secret(path, pw)
        out[site.owner] = sealbox.public_key_of(secret)
    return out


def _owner_key(cfg: FleetConfig, dev: Device, owners: dict[str, bytes]) -> bytes | None:
    site = cfg.site(dev.site)
    return owners.get(site.owner) if site.private and site.owner else None


def _write_fleet_file(
    cfg: FleetConfig, data: DataDir, devices: dict[str, keystore.Enrolled]
) -> None:
    path = data.root / FLEET_FILE
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(
        {
            "fleet": cfg.name,
            "seed": cfg.seed,
            "source": cfg.source,
            "devices": {n: e.certificate.device_id for n, e in devices.items()},
        }
    )
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_sim_time(data: DataDir) -> int | None:
    """Simulated time a previous run of this data dir reached (None: never ran)."""
    path = data.root / FLEET_FILE
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get("sim_ms")
    return int(value) if value is not None else None


def read_origin(data: DataDir, now_ms: int) -> int:
    """The start time of a real-time fleet: set (to ``now_ms``, whole seconds) by its first run."""
    path = data.root / FLEET_FILE
    with _locked(data):
        doc = json.loads(path.read_text()) if path.exists() else {}
        if doc.get("origin_ms") is None:
            doc["origin_ms"] = now_ms - now_ms % 1000
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return int(doc["origin_ms"])


def shard_mark(data: DataDir, key: str, index: int, count: int, state: str) -> dict[int, str]:
    """Record that shard ``index`` of ``count`` reached ``state`` in the run named ``key``;
    return every shard's state for that run (a barrier shared through fleet.json)."""
    path = data.root / FLEET_FILE
    with _locked(data):
        doc = json.loads(path.read_text()) if path.exists() else {}
        runs = doc.setdefault("shards", {})
        if key not in runs:
            runs.clear()  # only the current run's barrier is kept
            runs[key] = {}
        runs[key][str(index)] = state
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return {int(i): s for i, s in runs[key].items() if int(i) < count}


def write_sim_time(data: DataDir, sim_ms: int) -> None:
    path = data.root / FLEET_FILE
    with _locked(data):
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc["sim_ms"] = max(sim_ms, int(doc.get("sim_ms") or 0))
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
