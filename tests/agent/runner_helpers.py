"""Shared by the fleet runner tests: small fleets, in-process runs, audits, read-only chain views.

``read_fleet`` reads a data dir's SQLite stores through read-only connections (``mode=ro``), so it
can poll a store another process is writing, and looks at a killed process's files without
checkpointing or recovering them: the next run sees exactly the state the kill left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli.main import main
from agent.config.devices import FleetConfig
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.gossip.tuning import GossipConfig
from ledger.block import decode_header
from ledger.private import OpenError, OwnerOpener, open_reading
from ledger.reading import Reading, SignedReading, decode_reading
from ledger.store import Store

HOUR_MS = 3_600_000
REPO = Path(__file__).resolve().parents[2]
SAMPLE_FLEET = REPO / "devices.yaml"

# Anti-entropy every ~0.3 s instead of ~5 s: real-broker runs converge in a second, not ten.
FAST_GOSSIP = GossipConfig(
    anti_entropy_ms=300, jitter_ms=100, hedge_ms=300, request_timeout_ms=1_000
)

# Three devices in one gossip domain (the blood chain) plus the fridge's own household.
SMALL_FLEET = """\
fleet: small
seed: 5
sites:
  - id: home-1
    kind: household
  - id: blood-station-north
    kind: blood_station
  - id: city-hospital
    kind: hospital
gossip_domains:
  - id: blood-chain
devices:
  - name: fridge-1
    kind: refrigerator
    site: home-1
    domains: [home-1, blood-chain]
    sampling_period: 30s
  - name: freezer-station
    kind: medical_freezer
    site: blood-station-north
    domains: [blood-chain]
    sampling_period: 30s
  - name: freezer-hospital
    kind: medical_freezer
    site: city-hospital
    domains: [blood-chain]
    sampling_period: 30s
"""


def write_fleet(directory: Path, text: str = SMALL_FLEET, name: str = "fleet.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def run_fleet(cfg: FleetConfig, **options: Any) -> RunResult:
    """One in-process run of ``FleetRunner`` with these ``RunOptions``."""
    return asyncio.run(FleetRunner(cfg, RunOptions(**options)).run())


@dataclass(frozen=True)
class Verified:
    status: int
    doc: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 0 and self.doc.get("ok") is True

    def failures(self) -> list[str]:
        return [f"{r['name']}: {e}" for r in self.doc.get("reports", []) for e in r["errors"]]

    def report(self, name: str) -> dict[str, Any]:
        return next(r for r in self.doc["reports"] if r["name"] == name)

    @property
    def readings(self) -> int:
        """Own readings of every device, sealed or pending."""
        return sum(r["readings"] + r["pending"] for r in self.doc["reports"])


def verify(data: Path) -> Verified:
    """``edgefleet verify --json`` on a data dir, through the CLI entry point."""
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["verify", "--data", str(data), "--json"])
    return Verified(status, json.loads(out.getvalue()))


def device_ids(data: Path) -> dict[str, str]:
    """Device name -> device id, from the data dir's fleet.json."""
    ids: dict[str, str] = json.loads((data / "fleet.json").read_text())["devices"]
    return ids


def domain_pairs(cfg: FleetConfig) -> list[tuple[str, str]]:
    """(holder, peer) name pairs that share a gossip domain."""
    return sorted(
        (a.name, b.name)
        for a in cfg.devices
        for b in cfg.devices
        if a.name != b.name and set(a.domains) & set(b.domains)
    )


def missing_heads(cfg: FleetConfig, data: Path) -> list[str]:
    """Domain pairs where the holder's store lacks the peer's own head (store.peer_head)."""
    ids = device_ids(data)
    dd = DataDir(data)
    heads = {}
    for dev in cfg.devices:
        with Store(dd.store_path(dev.name)) as s:
            head = s.head()
            heads[dev.name] = None if head is None else head.hash
    by_holder: dict[str, list[str]] = {}
    for holder, peer in domain_pairs(cfg):
        by_holder.setdefault(holder, []).append(peer)
    missing = []
    for holder, peers in by_holder.items():  # each store opened once (a street: 300, not 89,700)
        with Store(dd.store_path(holder)) as s:
            for peer in peers:
                if heads[peer] is None:
                    continue
                held = s.peer_head(ids[peer])
                if held is None or held.hash != heads[peer]:
                    got = "nothing" if held is None else f"height {held.header.height}"
                    missing.append(f"{holder} holds {got} of {peer}")
    return missing


# --------------------------------------------------------------------------- read-only views


@dataclass(frozen=True)
class Content:
    """What a reading says, without who signed it: equal across data dirs with the same seed."""

    time_ms: int
    sensor: str
    value: int
    tag: str | None


@dataclass(frozen=True)
class ChainView:
    """One device's durable state as its SQLite file holds it."""

    device_id: str
    blocks: dict[int, bytes]  # height -> header hash
    readings: dict[int, bytes]  # seq -> signed reading wire
    peer_headers: dict[tuple[str, int], bytes]  # (device id, height) -> header hash
    evidence: int

    owners: tuple[OwnerOpener, ...] = ()  # the data dir's owner keys, for private readings

    def contents(self) -> list[Content]:
        out = []
        for seq in sorted(self.readings):
            r = plain(decode_reading(self.readings[seq]), self.owners)
            out.append(Content(r.time_ms, r.sensor, r.value, r.tag))
        return out


def owner_openers(data: Path) -> tuple[OwnerOpener, ...]:
    """An opener per owner key of the data dir (DIR/owners/NAME.key)."""
    owners = data / "owners"
    return tuple(OwnerOpener(keystore.read_owner_secret(p)) for p in sorted(owners.glob("*.key")))


def plain(sr: SignedReading, owners: tuple[OwnerOpener, ...]) -> Reading:
    """The reading's content: as signed, or opened by whichever owner it was sealed to."""
    if not sr.private:
        return open_reading(sr, None)
    for opener in owners:
        try:
            return open_reading(sr, opener)
        except OpenError:
            continue
    raise AssertionError(f"no owner key of the data dir opens private reading {sr.reading.seq}")


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def read_view(path: Path, device_id: str) -> ChainView:
    db = _ro(path)
    try:
        blocks = {int(h): bytes(x) for h, x in db.execute("SELECT height, hash FROM blocks")}
        readings = {int(s): bytes(w) for s, w in db.execute("SELECT seq, wire FROM readings")}
        peers = {
            (str(d), int(h)): decode_header(bytes(w)).hash
            for d, h, w in db.execute("SELECT device_id, height, header FROM peer_headers")
        }
        (evidence,) = db.execute("SELECT count(*) FROM evidence").fetchone()
    finally:
        db.close()
    return ChainView(device_id, blocks, readings, peers, int(evidence))


def read_fleet(data: Path) -> dict[str, ChainView]:
    """Every device of the data dir that has a store, by name (read-only)."""
    dd = DataDir(data)
    ids = device_ids(data)
    owners = owner_openers(data)
    return {
        name: dataclasses.replace(read_view(dd.store_path(name), ids[name]), owners=owners)
        for name in dd.device_names()
        if dd.store_path(name).exists()
    }


def progress(data: Path) -> tuple[int, int]:
    """(blocks, readings) durable in the data dir right now; (0, 0) before the stores exist."""
    dd = DataDir(data)
    blocks = readings = 0
    for name in dd.device_names():
        path = dd.store_path(name)
        if not path.exists():
            continue
        try:
            db = _ro(path)
            try:
                blocks += db.execute("SELECT count(*) FROM blocks").fetchone()[0]
                readings += db.execute("SELECT count(*) FROM readings").fetchone()[0]
            finally:
                db.close()
        except sqlite3.OperationalError:
            continue  # created but not yet initialised by its writer
    return blocks, readings


def poll(condition: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    """Wait until ``condition()`` holds, checking every few milliseconds, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what()}")
        time.sleep(0.005)


# Four fridges of one street lending spare storage to each other: replication with R = 2, audited
# every 10 simulated minutes, on the in-memory network with the real network clock (a `--speed
# max` run: a simulated week passes in seconds of wall time).
REPLICATING_FLEET = """\
fleet: replicating
seed: 9
sites:
  - id: home-{i}
    count: 4
    kind: household
  - id: elm-street
    kind: street
replication:
  copies: 2
  audit_every: 10m
  repair_after: 1h
devices:
  - name: fridge-{i}
    count: 4
    kind: refrigerator
    site: home-{i}
    domains: [elm-street]
    sampling_period: 15m
    spare_storage_mb: 4
"""


def replication_counters(result: RunResult) -> dict[str, Counter[str]]:
    """Each device's replication core counters after a run (sent_challenge, audits_passed...)."""
    return {
        name: agent.replicator.node.counters
        for name, agent in result.devices.items()
        if agent.replicator is not None
    }
