"""What the pages show, read from a fleet data dir (``DIR/devices/NAME/store.sqlite`` and the
certificates), with no web framework in sight.

The fleet page reads what ``edgefleet status`` reads (``provenance.audit`` without signature
checks) plus each device's current alarms; a device page reads its own store (chain, readings,
receipts, replicas held); an item page is ``edgefleet trace``'s: a ``TraceSession`` verifies every
reading against the fleet root. Private readings are opened only with the owner key given
(``Opening``); otherwise they are counted as withheld and never shown. Each call opens the stores
afresh, so a page reflects the data dir as it is when it is asked for (a running fleet keeps
writing it: SQLite's readers see the last committed state).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.devices import FleetConfig, load_fleet
from agent.errors import AgentError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance import render
from agent.provenance.analysis import Trace
from agent.provenance.audit import DeviceReport, audit, audit_device, default_root, fill_lags
from agent.provenance.gather import TagSummary, TraceSession
from agent.provenance.opening import Opening
from firmware_sim.appliances.params import build_params
from ledger.certs import Certificate, FleetRoots, decode_certificate
from ledger.errors import LedgerError
from ledger.reading import SignedReading
from ledger.store import Store

BLOCKS_SHOWN = 50  # newest blocks listed on a device page
EVENTS_SHOWN = 100  # newest alarm readings (raised and cleared) listed


class WebError(AgentError, code="web"):
    """The data dir cannot be shown (not a data dir, no fleet root) or a page names nothing."""


class NotFound(WebError, code="web-not-found"):
    """A page names a device or item the data dir does not hold."""


class NotReady(WebError, code="web-not-ready"):
    """A live fleet's data dir is not provisioned yet (its fleet root is still to be made)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Alarm limits of one temperature sensor, in m°C (None: no limit on that side)."""

    sensor: str
    low_mc: int | None
    high_mc: int | None


@dataclass(frozen=True, slots=True)
class FleetRow:
    report: DeviceReport
    domains: tuple[str, ...]
    private: bool
    alarms: tuple[str, ...]  # alarm sensors raised at the device's last reading of each
    withheld: int  # private readings not opened (their alarms unknown)


@dataclass(frozen=True, slots=True)
class FleetPage:
    name: str
    rows: tuple[FleetRow, ...]
    config_found: bool

    @property
    def sites(self) -> dict[str, list[FleetRow]]:
        out: dict[str, list[FleetRow]] = {}
        for r in self.rows:
            out.setdefault(r.report.site, []).append(r)
        return out

    @property
    def converged(self) -> bool:
        """Every device's peers hold its whole chain (lag 0) and nothing failed."""
        return all(r.report.ok and r.report.lag == 0 for r in self.rows)


@dataclass(frozen=True, slots=True)
class BlockRow:
    height: int
    epoch: int
    hash_hex: str
    readings: int
    first_ms: int
    last_ms: int
    holders: tuple[str, ...]  # names (or ids) of the devices that gave a storage receipt


@dataclass(frozen=True, slots=True)
class DevicePage:
    name: str
    certificate: Certificate
    report: DeviceReport
    domains: tuple[str, ...]
    blocks: tuple[BlockRow, ...]  # newest first, at most BLOCKS_SHOWN
    temps: dict[str, list[tuple[int, int]]]  # sensor -> (time_ms, m°C), opened readings only
    limits: tuple[Limits, ...]
    events: tuple[
        tuple[int, str, int, str | None], ...
    ]  # alarms, newest first: time, sensor, value, text
    shown: int
    withheld: Counter[str]
    replicas_held: dict[str, list[int]]  # owner name -> heights of its blocks stored here
    limits_from: str  # where the limits came from (devices.yaml, or the kind's defaults)


@dataclass
class _AlarmScan:
    key: tuple[int, int] | None  # (epoch, height) of the last block read
    last: dict[str, int]  # alarm sensor -> its last value in the blocks read
    withheld: int  # private readings of those blocks that did not open


@dataclass
class FleetData:
    """A data dir, its fleet root, an optional owner key, and devices.yaml if it is still there."""

    data: DataDir
    roots: FleetRoots
    opening: Opening = field(default_factory=lambda: Opening(None))
    config: FleetConfig | None = None
    fleet_name: str = "fleet"
    names: dict[str, str] = field(default_factory=dict)  # device id -> name
    _scanned: dict[str, _AlarmScan] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls, root: Path, opening: Opening | None = None, config: Path | None = None
    ) -> FleetData:
        """``config``: the devices.yaml to take domains and alarm limits from (default: the
        one fleet.json names)."""
        data = DataDir(root)
        if not data.devices.is_dir():
            raise WebError(f"{root}: not a fleet data dir (no devices/ directory)")
        try:
            roots = keystore.load_roots(default_root(data))
        except keystore.KeystoreError as exc:
            raise WebError(str(exc)) from None
        fd = cls(data, roots, opening or Opening(None))
        fd._read_fleet_file()
        if config is not None:
            fd.config = load_fleet(config)
            fd.fleet_name = fd.config.name
        fd.names = {c.device_id: n for n, c in fd._certificates()}
        return fd

    @classmethod
    def open_when_ready(cls, root: Path, config: Path | None = None) -> FleetData:
        """``open`` for a fleet that is starting: NotReady until its fleet root exists."""
        if not default_root(DataDir(root)).exists():
            raise NotReady("the fleet is starting: its data dir is not provisioned yet")
        return cls.open(root, None, config)

    def _read_fleet_file(self) -> None:
        """fleet.json names the fleet and the devices.yaml it ran from: where the alarm limits
        and gossip domains are. A missing or unreadable file only costs those."""
        try:
            doc = json.loads((self.data.root / "fleet.json").read_text())
        except (OSError, ValueError):
            return
        self.fleet_name = str(doc.get("fleet") or self.fleet_name)
        source = doc.get("source")
        if isinstance(source, str):
            try:
                self.config = load_fleet(source)
            except (OSError, ValueError, AgentError):
                self.config = None

    def _certificates(self) -> Iterator[tuple[str, Certificate]]:
        for name in self.data.device_names():
            cert = self._certificate(name)
            if cert is not None:
                yield name, cert

    def _certificate(self, name: str) -> Certificate | None:
        try:
            return decode_certificate((self.data.device(name) / keystore.DEVICE_CERT).read_bytes())
        except (OSError, LedgerError):
            return None

    def _domains(self, name: str) -> tuple[str, ...]:
        if self.config is None:
            return ()
        try:
            return tuple(self.config.device(name).domains)
        except (KeyError, AgentError):
            return ()

    # -- the fleet ---------------------------------------------------------------------------

    def fleet(self) -> FleetPage:
        reports = list(audit(self.data, self.roots, deep=False))
        fill_lags(reports)
        rows = []
        for rep in reports:
            cert = self._certificate(rep.name)
            private = cert is not None and cert.owner_x25519 is not None
            alarms, withheld = self._alarms(rep.name, cert)
            rows.append(FleetRow(rep, self._domains(rep.name), private, alarms, withheld))
        return FleetPage(self.fleet_name, tuple(rows), self.config is not None)

    def _alarms(self, name: str, cert: Certificate | None) -> tuple[tuple[str, ...], int]:
        """The alarm sensors whose last reading raised them (value 1), and how many private
        readings could not be opened to tell. Sealed blocks never change: what was read of
        them is kept (``_scanned``) and only newer blocks and the pending readings are read
        on the next call, so a live fleet's page does not re-read whole chains each second."""
        if cert is None:
            return (), 0
        path = self.data.store_path(name)
        if not path.exists():
            return (), 0
        try:
            # Pages are served from a thread pool: one scan of a device's chain at a time.
            with self._lock, Store(path) as store:
                head = store.head()
                key = None if head is None else (head.header.epoch, head.header.height)
                scan = self._scanned.get(name)
                if scan is None or key is None or scan.key is None or scan.key[0] != key[0]:
                    scan = _AlarmScan(None, {}, 0)  # new, or a restored chain: from the start
                if key is not None and scan.key != key:
                    start = 0 if scan.key is None else scan.key[1] + 1
                    for block in store.blocks(start):
                        scan.withheld += self._note(block.readings, scan.last)
                    scan.key = key
                self._scanned[name] = scan
                last = dict(scan.last)
                withheld = scan.withheld + self._note(store.pending(), last)
        # SQLite's own errors come through the store's read paths ("database disk image is
        # malformed"); a damaged store is the fleet table's FAILED (audit says why), not a 500.
        except Exception:
            return (), 0
        return tuple(sorted(s for s, v in last.items() if v)), withheld

    def _note(self, readings: Iterable[SignedReading], last: dict[str, int]) -> int:
        """Record the alarm readings of ``readings`` in ``last``; return how many were sealed."""
        withheld = 0
        for sr in readings:
            r = self.opening.open(sr).reading
            if r is None:
                withheld += 1
            elif r.sensor.startswith("alarm."):
                last[r.sensor] = r.value
        return withheld

    def _own_readings(self, name: str) -> Iterator[SignedReading]:
        path = self.data.store_path(name)
        if not path.exists():
            return
        try:
            with Store(path) as store:
                for block in store.blocks():
                    yield from block.readings
                yield from store.pending()
        # As in ``_alarms``: a damaged store shows as FAILED on the fleet page, not as a 500.
        except Exception:
            return

    # -- one device ---------------------------------------------------------------------------

    def device(self, name: str) -> DevicePage:
        cert = self._certificate(name) if name in self.data.device_names() else None
        if cert is None:
            raise NotFound(f"no device {name!r} in {self.data.root}")
        rep = audit_device(self.data, name, self.roots, deep=False)
        temps: dict[str, list[tuple[int, int]]] = {}
        events: list[tuple[int, str, int, str | None]] = []
        withheld: Counter[str] = Counter()
        shown = 0
        for sr in self._own_readings(name):
            res = self.opening.open(sr)
            if res.reading is None:
                withheld[res.reason] += 1
                continue
            r = res.reading
            shown += 1
            if r.sensor.endswith("temp_mc"):
                temps.setdefault(r.sensor, []).append((r.time_ms, r.value))
            elif r.sensor.startswith("alarm."):
                events.append((r.time_ms, r.sensor, r.value, r.text))
        events.sort(key=lambda e: -e[0])
        blocks, held = self._chain(name)
        limits, source = self.limits(name, cert.kind)
        return DevicePage(
            name=name,
            certificate=cert,
            report=rep,
            domains=self._domains(name),
            blocks=blocks,
            temps=temps,
            limits=limits,
            events=tuple(events[:EVENTS_SHOWN]),
            shown=shown,
            withheld=withheld,
            replicas_held=held,
            limits_from=source,
        )

    def _chain(self, name: str) -> tuple[tuple[BlockRow, ...], dict[str, list[int]]]:
        path = self.data.store_path(name)
        if not path.exists():
            return (), {}
        rows = []
        held: dict[str, list[int]] = {}
        with Store(path) as store:
            holders: dict[int, list[str]] = {}
            for height, holder, _ in store.receipts():
                holders.setdefault(height, []).append(self.names.get(holder, holder))
            for info in store.own_block_infos(BLOCKS_SHOWN):
                sh = store.header_at(info.height)
                if sh is None:
                    continue
                h = sh.header
                rows.append(
                    BlockRow(
                        h.height,
                        h.epoch,
                        sh.hash.hex(),
                        h.count,
                        h.first_time_ms,
                        h.last_time_ms,
                        tuple(sorted(holders.get(h.height, []))),
                    )
                )
            for owner, height in store.replica_index():
                held.setdefault(self.names.get(owner, owner), []).append(height)
        rows.reverse()
        return tuple(rows), held

    def limits(self, name: str, kind: str) -> tuple[tuple[Limits, ...], str]:
        """The alarm limits the appliance model applies (firmware_sim's parameters: from
        devices.yaml when fleet.json still points at it, else the kind's defaults)."""
        params: Any
        source = "devices.yaml"
        try:
            params = self.config.device(name).params if self.config is not None else None
        except (KeyError, AgentError):
            params = None
        if params is None:
            source = f"the defaults of a {kind} (devices.yaml not found)"
            try:
                params = build_params(kind, None)
            except ValueError:
                return (), source
        if kind == "medical_freezer":
            low, high = params.resolved("band_low_mc"), params.resolved("band_high_mc")
            return (Limits("cabinet.temp_mc", low, high),), source
        if kind == "refrigerator":
            return (
                Limits("fridge.temp_mc", None, params.fridge_warm_mc),
                Limits("freezer.temp_mc", None, params.freezer_warm_mc),
            ), source
        return (), source

    # -- items --------------------------------------------------------------------------------

    def session(self) -> TraceSession:
        return TraceSession(self.data, self.roots, self.opening)

    def tags(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The tags the stores' indexes know (as ``edgefleet tags --json``), and the private
        devices whose tags stay sealed without a key that opens them."""
        with self.session() as session:
            rows: list[TagSummary] = session.tags()
            names = {d: i.name for d, i in session.devices.items()}
            sealed = sorted(
                i.name
                for d, i in session.devices.items()
                if i.private and not self._may_open(d, i.name)
            )
        return render.tags_json(rows, names), sealed

    def _may_open(self, device_id: str, name: str) -> bool:
        cert = self._certificate(name)
        return cert is not None and self.opening.may_open(device_id, cert)

    def trace(self, session: TraceSession, epc: str) -> Trace:
        trace = session.trace(epc)
        if not any(ev.about_item for ev in trace.timeline):
            sealed = " (private devices' readings stay sealed without --owner-key)"
            raise NotFound(
                f"no verified reading names {epc!r} in {self.data.root}"
                + (sealed if trace.withheld else "")
            )
        return trace
