"""The fleet's heads log on disk (ledger/headlog.py): ``DIR/fleetlog/``.

- ``entries``: the log's entries in order, one signed header wire in hex a line; append-only
  (written with fsync before the checkpoint that covers them).
- ``checkpoint``: the latest signed checkpoint note, with any cosignatures public witnesses
  returned (``add_cosignatures``); replaced atomically.

``append`` is what an operator runs at a low rate where the fleet authority's key lives (a cron
job of the simulated fleet's machine, or the authority's own machine with a copy of the data
dir): it reads each device's own store, verifies its head against the fleet root, appends the
heads that moved, and signs a new checkpoint with the authority key. The web app serves
``checkpoint`` at ``/log/checkpoint`` (docs/WEB.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from ledger.block import decode_header
from ledger.certs import DeviceKeys, FleetRoots, decode_rotation
from ledger.checkpoint import fleet_label, parse_checkpoint
from ledger.errors import LedgerError
from ledger.headlog import add_checkpoint_request, heads_checkpoint, open_heads_checkpoint
from ledger.identity import PublicKey, SigningKey
from ledger.note import Note, parse_note
from ledger.store import Store

DIRNAME = "fleetlog"
ENTRIES = "entries"
CHECKPOINT = "checkpoint"


class FleetLogError(AgentError, code="fleet-log"):
    """The heads log cannot be read, extended or served as asked."""


@dataclass(frozen=True, slots=True)
class Appended:
    note: Note
    added: tuple[str, ...]  # device ids whose head was appended
    skipped: tuple[str, ...]  # "name: why" of devices whose head was not


def log_dir(data: DataDir) -> Path:
    return data.root / DIRNAME


def read_entries(data: DataDir) -> list[bytes]:
    path = log_dir(data) / ENTRIES
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        try:
            out.append(bytes.fromhex(line))
        except ValueError:
            raise FleetLogError(f"{path}: line {i + 1} is not hex") from None
    return out


def read_checkpoint(data: DataDir) -> bytes | None:
    path = log_dir(data) / CHECKPOINT
    return path.read_bytes() if path.exists() else None


def _fleet(roots: FleetRoots) -> tuple[str, PublicKey]:
    if len(roots.keys) != 1:
        raise FleetLogError("the heads log is signed by one fleet root; found several")
    root = next(iter(roots.keys.values()))
    return fleet_label(root), root


def append(data: DataDir, roots: FleetRoots, authority: SigningKey) -> Appended:
    """Append every device head that moved since its last entry; sign the new checkpoint."""
    fleet, root = _fleet(roots)
    if authority.public != root:
        raise FleetLogError("the authority key is not the fleet root's: it cannot sign its log")
    entries = read_entries(data)
    last: dict[str, bytes] = {}
    for e in entries:
        sh = decode_header(e)
        last[sh.header.device_id] = sh.hash
    new: list[bytes] = []
    added: list[str] = []
    skipped: list[str] = []
    for name in data.device_names():
        try:
            with Store(data.store_path(name)) as store:
                head = store.head()
                cert = (data.device(name) / keystore.DEVICE_CERT).read_bytes()
                rotations = [w for d, w in store.credentials("rotation")]
                revocations = [w for d, w in store.credentials("revocation")]
            if head is None:
                continue
            dev = head.header.device_id
            keys = DeviceKeys.build(
                cert,
                roots,
                now_ms=None,
                rotations=[w for w in rotations if _for(w, dev)],
                revocations=revocations,
            )
            head.verify(keys.key_for(head.header.key_id, head.header.height))
        except (OSError, LedgerError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if last.get(dev) != head.hash:
            new.append(head.wire)
            added.append(dev)
    directory = log_dir(data)
    directory.mkdir(exist_ok=True)
    if new:
        with (directory / ENTRIES).open("a") as f:
            f.write("".join(w.hex() + "\n" for w in new))
            f.flush()
            os.fsync(f.fileno())
    note = heads_checkpoint(fleet, entries + new, authority)
    _replace(directory / CHECKPOINT, note.encode())
    return Appended(note, tuple(added), tuple(skipped))


def _for(rotation_wire: bytes, device_id: str) -> bool:
    try:
        return decode_rotation(rotation_wire).device_id == device_id
    except LedgerError:
        return False


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def witness_request(data: DataDir, roots: FleetRoots, old_size: int) -> bytes:
    """The add-checkpoint body for a public witness that last cosigned ``old_size``."""
    fleet, root = _fleet(roots)
    raw = read_checkpoint(data)
    if raw is None:
        raise FleetLogError(f"{log_dir(data)}: no checkpoint yet (run `edgefleet fleetlog append`)")
    entries = read_entries(data)
    note = parse_note(raw)
    cp = parse_checkpoint(note.text)
    if cp.size != len(entries):
        raise FleetLogError(
            f"{log_dir(data)}: checkpoint of {cp.size} entries, {len(entries)} held"
        )
    if not 0 <= old_size <= cp.size:
        raise FleetLogError(f"--old {old_size}: the log holds {cp.size} entries")
    try:
        open_heads_checkpoint(note, fleet, root)
    except LedgerError as exc:
        raise FleetLogError(f"{log_dir(data) / CHECKPOINT}: {exc}") from None
    return add_checkpoint_request(Note(note.text, note.signatures[:1]), entries, old_size)


def add_cosignatures(data: DataDir, lines: bytes) -> Note:
    """Add a witness's answer (its cosignature lines) to the stored checkpoint. They are kept as
    given: whoever relies on a witness checks its line with that witness's key."""
    raw = read_checkpoint(data)
    if raw is None:
        raise FleetLogError(f"{log_dir(data)}: no checkpoint to add cosignatures to")
    note = parse_note(raw)
    try:
        answer = parse_note(note.text.encode() + b"\n" + lines)
    except LedgerError as exc:
        raise FleetLogError(f"cosignature lines: {exc}") from None
    for sig in answer.signatures:
        note = note.with_signature(sig)
    _replace(log_dir(data) / CHECKPOINT, note.encode())
    return note
