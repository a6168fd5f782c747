"""The keys a fleet runner starts with: a simulated fleet's automatic enrollment, or the keys of
devices enrolled elsewhere.

Two kinds of data dir (``pre_enrolled`` tells them apart):

- A simulated fleet's own (its authority key is here, or the data dir is new): enrolled
  automatically, as below.
- A pre-enrolled device's (docs/DEPLOY.md section 2: a fleet root and device keys, no authority
  key): nothing is created. The selected devices' keys are unlocked with the passphrase the
  caller obtains (``--passphrase-file``, ``$EDGEFLEET_PASSPHRASE`` or a prompt); a selected device
  without its key and certificate is refused with the commands that enroll it.

In a simulated fleet's data dir, the first process to start the fleet creates the fleet
authority, a random passphrase file (``DIR/passphrase``, 0600: 64 hex characters and a newline,
which readers strip), an X25519 key pair per owner of a private site (``DIR/owners/NAME.key``,
encrypted like the device keys, and ``NAME.key.pub``), and a key and certificate for every device
of devices.yaml. It holds an exclusive lock on ``DIR/.lock`` while it does, so shards started
together enroll each device exactly once. Later starts only load.

Simulated fleets unlock their keys from the passphrase file beside them, so their argon2id cost
is the library minimum (the file, not the KDF, is the protection there). Real devices create
their keys with ``edgefleet keys init-device`` at the interactive cost.
"""

from __future__ import annotations

import fcntl
import json
import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.config.devices import Device, FleetConfig
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from ledger import keyfile, sealbox
from ledger.certs import FleetRoots
from ledger.errors import LedgerError

SIM_COST = keyfile.FAST
FLEET_FILE = "fleet.json"


@dataclass(frozen=True)
class Provisioned:
    roots: FleetRoots
    devices: dict[str, keystore.Enrolled]  # by device name
    owners: dict[str, bytes]  # owner name -> X25519 public key
    # Devices whose key or certificate would not load (mode too open, wrong passphrase,
    # damaged): each fails alone, the others run (the runner decides what to do with them).
    failed: dict[str, keystore.KeystoreError] = field(default_factory=dict)

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


def pre_enrolled(data: DataDir) -> bool:
    """True for a data dir of devices enrolled elsewhere: it holds a fleet root or a device key
    but no authority key. A simulated fleet's data dir holds its authority key, or nothing yet."""
    if (data.authority / keystore.AUTHORITY_KEY).exists():
        return False
    if (data.authority / keystore.FLEET_ROOT).exists():
        return True
    return data.devices.is_dir() and any(
        (d / keystore.DEVICE_KEY).exists() for d in data.devices.iterdir()
    )


def provision(
    cfg: FleetConfig,
    data: DataDir,
    now_ms: int,
    *,
    local: Sequence[str] | None = None,
    passphrase: Callable[[], bytes] | None = None,
) -> Provisioned:
    """The keys to run with.

    A simulated fleet's data dir: enroll what is missing, then load every device of ``cfg`` (all
    shards' devices; ``local`` and ``passphrase`` are not used). A pre-enrolled data dir: load
    the ``local`` devices (default: all of ``cfg``) with the passphrase ``passphrase()`` returns
    (called once, and only when there is a key to unlock), creating nothing."""
    if pre_enrolled(data):
        names = [d.name for d in cfg.devices] if local is None else list(local)
        return load_enrolled(cfg, data, names, passphrase)
    with _locked(data):
        pw = data.fleet_passphrase(create=True)
        assert pw is not None
        if not (data.authority / keystore.AUTHORITY_KEY).exists():
            keystore.init_authority(data.authority, pw, SIM_COST)
        authority = keystore.load_authority(data.authority, pw)
        owners = _owners(cfg, data, pw)
        devices = {}
        failed = {}
        for dev in cfg.devices:
            ddir = data.device(dev.name)
            if not (ddir / keystore.DEVICE_KEY).exists():
                try:
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
                except keystore.KeystoreError as exc:
                    if not (ddir / keystore.DEVICE_CERT).exists():
                        raise  # nothing enrolled yet (a full disk, say): the run's error
                    # Enrolled before and its key lost since: this device fails alone, as one
                    # whose key will not open does (README, "Exit status of run").
                    failed[dev.name] = exc
                    continue
            try:
                devices[dev.name] = _load_device(ddir, pw)
            except keystore.KeystoreError as exc:
                failed[dev.name] = exc
        _write_fleet_file(cfg, data, devices, merge=bool(failed))
    return Provisioned(keystore.load_roots(data.authority), devices, owners, failed)


def _load_device(ddir: Path, pw: bytes) -> keystore.Enrolled:
    """A simulated fleet's device key and certificate (a certificate that no longer decodes
    is the device's KeystoreError, like a key that does not open)."""
    try:
        return keystore.load_device(ddir, pw)
    except LedgerError as exc:
        raise keystore.KeystoreError(
            f"{ddir / keystore.DEVICE_CERT}: {exc}: the certificate is damaged; restore the "
            "file from a backup"
        ) from None


def load_enrolled(
    cfg: FleetConfig,
    data: DataDir,
    names: Sequence[str],
    passphrase: Callable[[], bytes] | None,
) -> Provisioned:
    """Unlock the keys of the devices ``names`` in a pre-enrolled data dir; nothing is written
    but fleet.json (the runner's own record). Every refusal is a KeystoreError saying what is
    missing and what to do."""
    missing = [n for n in names if not _enrolled_here(data, n)]
    if missing:
        raise keystore.KeystoreError(enroll_instructions(cfg, data, missing, names))
    root_path = data.authority / keystore.FLEET_ROOT
    if not root_path.exists():
        raise keystore.KeystoreError(
            f"{root_path}: missing: the data dir of pre-enrolled devices reads its fleet root "
            "there (`edgefleet keys install-cert` writes it; or copy a device dir's "
            f"{keystore.FLEET_ROOT} there)"
        )
    roots = keystore.load_roots(root_path)
    if not names:
        return Provisioned(roots, {}, {})
    if passphrase is None:
        raise keystore.KeystoreError(
            f"{data.device(names[0]) / keystore.DEVICE_KEY}: no passphrase given to unlock it"
        )
    try:
        pw = passphrase()
    except keystore.KeystoreError as exc:
        key = data.device(names[0]) / keystore.DEVICE_KEY
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise keystore.KeystoreError(f"{key}{more}: cannot unlock it: {exc}") from None
    devices = {}
    failed = {}
    for name in names:
        try:
            devices[name] = _load_enrolled_device(cfg.device(name), data, pw, roots, cfg.source)
        except keystore.KeystoreError as exc:
            failed[name] = exc
    with _locked(data):
        _write_fleet_file(cfg, data, devices, merge=True)
    return Provisioned(roots, devices, {}, failed)


def _enrolled_here(data: DataDir, name: str) -> bool:
    ddir = data.device(name)
    return (ddir / keystore.DEVICE_KEY).exists() and (ddir / keystore.DEVICE_CERT).exists()


def _load_enrolled_device(
    dev: Device, data: DataDir, pw: bytes, roots: FleetRoots, source: str
) -> keystore.Enrolled:
    ddir = data.device(dev.name)
    try:
        enrolled = keystore.load_device(ddir, pw, roots)
    except LedgerError as exc:  # the certificate does not verify against the fleet root
        raise keystore.KeystoreError(
            f"{ddir / keystore.DEVICE_CERT}: {exc}: install a certificate of this fleet "
            "(edgefleet keys install-cert)"
        ) from None
    cert = enrolled.certificate
    # The simulation and the gossip domains follow devices.yaml, the signatures the certificate:
    # a device certified as something else would sign readings under the wrong identity.
    if (cert.kind, cert.site) != (dev.kind, dev.site):
        raise keystore.KeystoreError(
            f"{ddir / keystore.DEVICE_CERT}: certifies a {cert.kind} at site {cert.site}, but "
            f"{source} has {dev.name} as a {dev.kind} at site {dev.site}: correct the file, or "
            "enroll the device with its attributes"
        )
    if dev.device_id is not None and dev.device_id != cert.device_id:
        raise keystore.KeystoreError(
            f"{ddir / keystore.DEVICE_CERT}: certifies device {cert.device_id}, but {source} "
            f"gives {dev.name} the id {dev.device_id}: correct its `id:` in the file (every "
            "machine of the fleet uses the same file)"
        )
    return enrolled


MAX_INSTRUCTED = 5  # devices whose enrollment commands a refusal spells out


def enroll_instructions(
    cfg: FleetConfig, data: DataDir, missing: Sequence[str], selected: Sequence[str]
) -> str:
    """What is missing for each device of ``missing`` in a pre-enrolled data dir, and the exact
    commands that enroll it (docs/DEPLOY.md section 1)."""
    present = [n for n in selected if n not in missing]
    lines = [
        f"{data.root}: holds no enrolled key for {_names(missing)} "
        f"(a data dir of pre-enrolled devices: its authority is elsewhere, docs/DEPLOY.md)"
    ]
    if present:
        flags = " ".join(f"--device {shlex.quote(n)}" for n in present[:MAX_INSTRUCTED])
        more = " ..." if len(present) > MAX_INSTRUCTED else ""
        lines.append(f"  it holds {_names(present)}: `{flags}{more}` runs only those")
    for name in missing[:MAX_INSTRUCTED]:
        lines += _device_instructions(cfg, data, name)
    if len(missing) > MAX_INSTRUCTED:
        lines.append(f"  ... and {len(missing) - MAX_INSTRUCTED} more devices, enrolled alike")
    return "\n".join(lines)


def _device_instructions(cfg: FleetConfig, data: DataDir, name: str) -> list[str]:
    dev = cfg.device(name)
    ddir = data.device(name)
    key, cert = ddir / keystore.DEVICE_KEY, ddir / keystore.DEVICE_CERT
    if cert.exists() and not key.exists():
        return [
            f"  {name}: {cert} but no {keystore.DEVICE_KEY}: restore the key from its backup, "
            f"or remove {keystore.DEVICE_CERT} and enroll the device afresh"
        ]
    q = shlex.quote
    req = ddir / keystore.ENROLL_REQUEST
    out = f"{name}.cert"
    site = cfg.site(dev.site)
    owner = f" --owner {q(site.owner + '.key.pub')}" if site.private and site.owner else ""
    init = (
        f"edgefleet keys init-device --dir {q(str(ddir))} --kind {q(dev.kind)} "
        f"--model {q(dev.model)} --site {q(dev.site)}{owner}"
    )
    enroll = (
        f"edgefleet keys enroll --authority AUTHORITY_DIR --request {q(str(req))} --out {q(out)}"
    )
    install = f"edgefleet keys install-cert --dir {q(str(ddir))} {q(out)} --root fleet-root.json"
    if key.exists():
        head = f"  {name}: {key} has no certificate yet; send {req} to the fleet authority:"
        steps = [("on the authority's machine", enroll), ("back here", install)]
    else:
        head = f"  {name} ({dev.kind}, model {dev.model}, site {dev.site}): no key; enroll it:"
        steps = [
            ("here", init),
            ("on the authority's machine", enroll),
            ("back here", install),
        ]
    return [head, *(f"    {where + ':':<28} {cmd}" for where, cmd in steps)]


def _names(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


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
    cfg: FleetConfig,
    data: DataDir,
    devices: dict[str, keystore.Enrolled],
    *,
    merge: bool = False,
) -> None:
    """Record the fleet and its devices' ids in fleet.json. ``merge``: keep the devices other
    runs recorded (a pre-enrolled data dir's devices may run in separate processes)."""
    path = data.root / FLEET_FILE
    doc = json.loads(path.read_text()) if path.exists() else {}
    ids = dict(doc.get("devices") or {}) if merge else {}
    ids.update({n: e.certificate.device_id for n, e in devices.items()})
    doc.update({"fleet": cfg.name, "seed": cfg.seed, "source": cfg.source, "devices": ids})
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_sim_time(data: DataDir) -> int | None:
    """Simulated time a previous run of this data dir reached (None: never ran)."""
    path = data.root / FLEET_FILE
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get("sim_ms")
    return int(value) if value is not None else None


def read_origin(data: DataDir, now_ms: int, *, first: bool = False) -> int:
    """The start time of a real-time fleet: set (to ``now_ms``, whole seconds) by its first run.
    ``first``: nothing was signed here yet, so an origin already recorded is one a start that
    was refused afterwards (no certificate yet, a broker that would not connect) left behind;
    the fleet starts now, not back then with its readings stamped in the past."""
    path = data.root / FLEET_FILE
    with _locked(data):
        doc = json.loads(path.read_text()) if path.exists() else {}
        if doc.get("origin_ms") is None or first:
            doc["origin_ms"] = now_ms - now_ms % 1000
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return int(doc["origin_ms"])


def recorded_origin(data: DataDir) -> int | None:
    """The origin a real-time run recorded in ``data`` (None: no real-time run set one)."""
    path = data.root / FLEET_FILE
    if not path.exists():
        return None
    with _locked(data):
        doc = json.loads(path.read_text())
    origin = doc.get("origin_ms")
    return origin if isinstance(origin, int) else None


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
