"""The live terminal view of a running fleet, and its plain-text fallback.

``render`` is a pure function from a ``FleetSnapshot`` to lines of text: per device when the fleet
is small, aggregated per kind when it is large. ``LiveView`` repaints it a few times per second on
a terminal (one screen, redrawn in place), or prints a one-line summary every few seconds when the
output is not a terminal (logs, CI).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

PER_DEVICE_LIMIT = 24
FAULT_LINES = 8  # failed or damaged devices' lines shown under the table, at most
KIND_SHORT = {"refrigerator": "fridge", "washing_machine": "washer", "medical_freezer": "freezer"}


@dataclass(frozen=True, slots=True)
class DeviceRow:
    name: str
    kind: str
    site: str
    height: int | None  # own chain head (None: nothing sealed yet)
    pending: int
    readings: int
    temps_mc: tuple[tuple[str, int], ...]  # (sensor, latest value), e.g. fridge.temp_mc
    alarms: tuple[str, ...]  # active alarm sensor names
    peers_online: int
    peers_total: int
    lag: int  # own height minus the lowest height a domain peer holds of this chain
    forked: bool = False
    # Edge replication (None: off): own blocks with the full number of healthy copies, of the
    # own blocks tracked; bytes of peers' blocks this device holds, and its quota.
    replicated: tuple[int, int] | None = None
    held_bytes: int = 0
    quota_bytes: int = 0
    # The device failed alone (agent/device/faults.py): the line naming the file and the fix.
    failure: str | None = None
    # Stored blocks found damaged when read for sending (withheld; the device runs on).
    damaged: tuple[str, ...] = ()
    # Sealed for its owner (a private household): its readings' values are the owner's.
    private: bool = False
    # Event counters since this process started, by source: ``device.`` (runtime),
    # ``gossip.`` and ``replication.`` (the cores), ``transport.`` (the device's transport).
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SyncTotals:
    """The stores' group commit since the run started (ledger/groupsync.py)."""

    syncs: int  # syncs that had something to sync
    stores: int  # stores they covered, summed over syncs
    seconds: float  # wall time spent syncing


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    sim_ms: int
    wall_s: float
    speed: float  # simulated seconds per wall second, measured
    devices: tuple[DeviceRow, ...]
    sent_per_s: float = 0.0
    received_per_s: float = 0.0
    invalid: int = 0
    broker: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    group_sync: SyncTotals | None = None  # None: every commit synced by itself (simulated runs)


def _temp(mc: int) -> str:
    return f"{mc / 1000:6.1f}°C"


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _temps(row: DeviceRow) -> str:
    return " ".join(f"{s.split('.')[0]} {_temp(v).strip()}" for s, v in row.temps_mc) or "-"


def render(snap: FleetSnapshot) -> list[str]:
    n = len(snap.devices)
    sealed = sum(0 if d.height is None else d.height + 1 for d in snap.devices)
    readings = sum(d.readings for d in snap.devices)
    alarms = sum(len(d.alarms) for d in snap.devices)
    head = [
        f"edgefleet  sim {_clock(snap.sim_ms)}  x{snap.speed:,.0f}  wall {snap.wall_s:,.0f}s  "
        f"devices {n}  blocks {sealed:,}  readings {readings:,}  alarms {alarms}",
        f"gossip  sent {snap.sent_per_s:,.0f}/s  received {snap.received_per_s:,.0f}/s  "
        f"invalid {snap.invalid}  broker {snap.broker}",
        *_replication_line(snap),
        "",
    ]
    body = _per_device(snap) if n <= PER_DEVICE_LIMIT else _per_kind(snap)
    tail = [f"! {note}" for note in snap.notes]
    faults = [f"! FAILED {d.failure}" for d in snap.devices if d.failure]
    faults += [f"! DAMAGED {line}" for d in snap.devices for line in d.damaged]
    if len(faults) > FAULT_LINES:  # a full disk fails every device: the screen keeps its body
        more = len(faults) - FAULT_LINES + 1
        faults[FAULT_LINES - 1 :] = [f"! ... and {more} more (fleet.log has every one)"]
    tail += faults
    return head + body + (["", *tail] if tail else [])


def _replication_line(snap: FleetSnapshot) -> list[str]:
    rows = [d for d in snap.devices if d.replicated is not None]
    if not rows:
        return []
    full = sum(d.replicated[0] for d in rows if d.replicated is not None)
    total = sum(d.replicated[1] for d in rows if d.replicated is not None)
    held = sum(d.held_bytes for d in rows)
    quota = sum(d.quota_bytes for d in rows)
    return [
        f"replication  {full:,}/{total:,} blocks at full copies  "
        f"held {_size(held)} of {_size(quota)} lent"
    ]


def _size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def _copies(d: DeviceRow) -> str:
    return "-" if d.replicated is None else f"{d.replicated[0]}/{d.replicated[1]}"


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def fmt(r: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()

    return [fmt(cols)] + [fmt(r) for r in rows]


def _per_device(snap: FleetSnapshot) -> list[str]:
    cols = ["device", "kind", "site", "height", "pending", "peers", "lag", "copies", "held"]
    cols += ["temperatures", "alarms"]
    rows = []
    for d in snap.devices:
        rows.append(
            [
                d.name
                + (" FORKED" if d.forked else "")
                + (" FAILED" if d.failure else " DAMAGED" if d.damaged else ""),
                KIND_SHORT.get(d.kind, d.kind),
                d.site,
                "-" if d.height is None else str(d.height),
                str(d.pending),
                f"{d.peers_online}/{d.peers_total}",
                str(d.lag),
                _copies(d),
                "-" if d.replicated is None else _size(d.held_bytes),
                _temps(d),
                ",".join(a.removeprefix("alarm.") for a in d.alarms) or "-",
            ]
        )
    return _table(cols, rows)


def _per_kind(snap: FleetSnapshot) -> list[str]:
    cols = [
        "kind",
        "devices",
        "height min/med/max",
        "pending",
        "lag max",
        "temp min/med/max",
        "alarms",
        "forked",
        "failed",
    ]
    rows = []
    kinds = sorted({d.kind for d in snap.devices})
    for kind in kinds:
        ds = [d for d in snap.devices if d.kind == kind]
        heights = [d.height if d.height is not None else -1 for d in ds]
        temps = [v for d in ds for s, v in d.temps_mc[:1]]
        rows.append(
            [
                KIND_SHORT.get(kind, kind),
                str(len(ds)),
                f"{min(heights)}/{int(statistics.median(heights))}/{max(heights)}",
                str(sum(d.pending for d in ds)),
                str(max(d.lag for d in ds)),
                (
                    f"{_temp(min(temps)).strip()}/{_temp(int(statistics.median(temps))).strip()}/"
                    f"{_temp(max(temps)).strip()}"
                )
                if temps
                else "-",
                str(sum(len(d.alarms) for d in ds)),
                str(sum(d.forked for d in ds)),
                str(sum(d.failure is not None for d in ds)),
            ]
        )
    return _table(cols, rows)


def summary_line(snap: FleetSnapshot) -> str:
    sealed = sum(0 if d.height is None else d.height + 1 for d in snap.devices)
    alarms = sum(len(d.alarms) for d in snap.devices)
    lag = max((d.lag for d in snap.devices), default=0)
    failed = [d.name for d in snap.devices if d.failure]
    return (
        f"sim {_clock(snap.sim_ms)} x{snap.speed:,.0f} devices {len(snap.devices)} "
        f"blocks {sealed} readings {sum(d.readings for d in snap.devices)} alarms {alarms} "
        f"lag {lag} sent/s {snap.sent_per_s:,.0f} invalid {snap.invalid}"
        + (f" FAILED {len(failed)}: {', '.join(failed)}" if failed else "")
    )


class LiveView:
    """Repaint on a terminal; print a summary line every ``plain_every_s`` otherwise."""

    def __init__(self, out: TextIO | None = None, *, plain_every_s: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.plain_every_s = plain_every_s
        self._last_plain = -1e9
        self._painted = False

    def show(self, snap: FleetSnapshot, *, final: bool = False) -> None:
        if self.tty:
            text = "\n".join(render(snap))
            # Home the cursor and clear to the end of the screen: one redraw, no scrolling.
            self.out.write(("\x1b[H\x1b[J" if self._painted else "\x1b[2J\x1b[H") + text + "\n")
            self._painted = True
        elif final or snap.wall_s - self._last_plain >= self.plain_every_s:
            self.out.write(summary_line(snap) + "\n")
            self._last_plain = snap.wall_s
        self.out.flush()
