"""The live terminal view of a running fleet, and its plain-text fallback.

``render`` is a pure function from a ``FleetSnapshot`` to lines of text: per device when the fleet
is small, aggregated per kind when it is large. ``LiveView`` repaints it a few times per second on
a terminal (one screen, redrawn in place), or prints a one-line summary every few seconds when the
output is not a terminal (logs, CI).

The screen fits the terminal (80 x 24 unless told otherwise): no line is wider than ``width``
(a longer value ends in an ellipsis, nothing wraps) and there are at most ``height`` lines. The
header comes first and always stays: the title, the totals with the alarms, the gossip and the
replication lines. A per-device table too wide drops its least needed columns first (site, then
kind, then held) and names longer than ``NAME_WIDTH`` are cut; rows that do not fit the height
end in ``… N more devices``.

Figures: ``readings`` and ``height`` are the chain's, across restarts (not this run's); ``pend``
is readings signed and not sealed yet. ``copies`` is own blocks at full copies over own blocks
tracked, where full is the copies wanted (``replication.copies``), or every domain peer when a
device has fewer peers than that, and then the cell names its peers: ``19/19 (2 peers)`` is a
freezer of a three-freezer blood chain whose every block is on both other freezers, not a
shortfall of one copy. ``temps`` are the latest values of the device's probes, its first probe
first (a fridge: the fridge, then the freezer compartment). Per kind, ranges are lo/med/hi (min,
median, max) and the temperature is each device's first probe.

Never healthy when it is not: the gossip line counts the domains converging (``domains 4/5 ok``;
red on a terminal when one is not, with a ``! NOT CONVERGING`` line naming it and the reason).
When any device has trouble (agent/fleet/health.py ``TROUBLE``), a ``trouble`` line gives the
fleet's totals and a ``trouble`` column (after ``lag``; per kind, a sum) each device's, in short
codes: ``u`` unproven, ``i`` invalid, ``r`` rejected, ``m`` muted, ``x`` excluded, ``d`` dropped,
``s`` send failures, ``t`` timeouts, and ``m:NAME`` for each peer the device mutes now. An honest
fleet's screen has neither.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from agent.fleet.health import TROUBLE, DomainHealth, trouble, trouble_cell

PER_DEVICE_LIMIT = 24
WIDTH, HEIGHT = 80, 24  # the terminal render() fits when not told its size
NAME_WIDTH = 20  # device names are cut to this (config allows 63: agent.config.model.MAX_NAME)
ELLIPSIS = "…"
# Per-device columns a narrow screen goes without, least needed first.
OPTIONAL_COLUMNS = ("site", "kind", "held")
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
    rotations: int = 0  # key rotations applied (`edgefleet keys rotate`)
    revoked_from: int | None = None  # a revocation refuses its headers from this height
    serial_down: bool = False  # a real serial sensor of the device is lost (being reopened)
    # Edge replication (None: off): own blocks with their full healthy copies, of the own
    # blocks tracked; bytes of peers' blocks this device holds, and its quota. Full is
    # ``copies_target``: the copies wanted, or every domain peer when the device has fewer.
    replicated: tuple[int, int] | None = None
    held_bytes: int = 0
    quota_bytes: int = 0
    copies_wanted: int = 0
    copies_target: int = 0
    # The device failed alone (agent/device/faults.py): the line naming the file and the fix.
    failure: str | None = None
    # Stored blocks found damaged when read for sending (withheld; the device runs on).
    damaged: tuple[str, ...] = ()
    # Sealed for its owner (a private household): its readings' values are the owner's.
    private: bool = False
    # Event counters since this process started, by source: ``device.`` (runtime),
    # ``gossip.`` and ``replication.`` (the cores), ``transport.`` (the device's transport),
    # ``network.`` (the in-memory broker's drops for it).
    counters: Mapping[str, int] = field(default_factory=dict)
    # Peers this device mutes now (name, offence) and holders it excludes now (name, why).
    muted: tuple[tuple[str, str], ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def trouble(self) -> dict[str, int]:
        """The trouble figures (agent/fleet/health.py ``TROUBLE``): zero in an honest fleet."""
        return trouble(self.counters)


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
    # messages dropped because nobody could be proven to have sent them (forged, bit-flipped,
    # unknown sender, an older wire version): counted, charged to nobody (PROTOCOL 12.1.5)
    unproven: int = 0
    broker: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    group_sync: SyncTotals | None = None  # None: every commit synced by itself (simulated runs)
    # Gossip convergence per domain of the local devices (agent/fleet/health.py); empty: not
    # tracked (a snapshot taken outside a run's ticks).
    domains: tuple[DomainHealth, ...] = ()

    def stalled(self) -> tuple[DomainHealth, ...]:
        """The domains whose gossip is not converging."""
        return tuple(d for d in self.domains if not d.converging)


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _temps(row: DeviceRow) -> str:
    if not row.temps_mc:
        return "-"
    return " ".join(f"{v / 1000:.1f}" for _, v in row.temps_mc) + "°C"


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + ELLIPSIS


def render(snap: FleetSnapshot, *, width: int = WIDTH, height: int = HEIGHT) -> list[str]:
    n = len(snap.devices)
    sealed = sum(0 if d.height is None else d.height + 1 for d in snap.devices)
    readings = sum(d.readings for d in snap.devices)
    alarms = sum(len(d.alarms) for d in snap.devices)
    head = [
        f"edgefleet  sim {_clock(snap.sim_ms)}  x{snap.speed:,.0f}  wall {snap.wall_s:,.0f}s",
        f"devices {n}  blocks {sealed:,}  readings {readings:,}  alarms {alarms}",
        f"gossip  sent {snap.sent_per_s:,.0f}/s  received {snap.received_per_s:,.0f}/s  "
        f"invalid {snap.invalid}  unproven {snap.unproven}{_domains(snap)}  broker {snap.broker}",
        *_replication_line(snap),
        *_trouble_line(snap),
        "",
    ]
    per_device = n <= PER_DEVICE_LIMIT
    body = _per_device(snap, width) if per_device else _per_kind(snap)
    tail = [f"! {note}" for note in snap.notes]
    faults = [f"! {NOT_CONVERGING} {_stall(d)}" for d in snap.stalled()]
    faults += [f"! FAILED {d.failure}" for d in snap.devices if d.failure]
    faults += [f"! DAMAGED {line}" for d in snap.devices for line in d.damaged]
    faults += [f"! {d.name} mutes {p} ({why})" for d in snap.devices for p, why in d.muted]
    faults += [f"! {d.name} excludes {p} ({why})" for d in snap.devices for p, why in d.excluded]
    if len(faults) > FAULT_LINES:  # a full disk fails every device: the screen keeps its body
        more = len(faults) - FAULT_LINES + 1
        faults[FAULT_LINES - 1 :] = [f"! ... and {more} more (fleet.log has every one)"]
    tail += faults
    rows = "devices" if per_device else "kinds"
    return _fit(head, body, ["", *tail] if tail else [], rows, width, height)


NOT_CONVERGING = "NOT CONVERGING"
TROUBLE_WORDS = {"send_failures": "send failures"}


def _domains(snap: FleetSnapshot) -> str:
    """``  domains 2/3 ok`` (domains converging of those the local devices are in)."""
    if not snap.domains:
        return ""
    ok = sum(1 for d in snap.domains if d.converging)
    return f"  domains {ok}/{len(snap.domains)} ok"


def _stall(d: DomainHealth) -> str:
    return (
        f"{d.domain}: {d.behind} of {d.members} chains behind for {d.behind_ms / 1000:.0f} s "
        f"({d.reason})"
    )


def _totals(snap: FleetSnapshot) -> dict[str, int]:
    total = dict.fromkeys(TROUBLE, 0)
    for d in snap.devices:
        for k, n in d.trouble.items():
            total[k] += n
    return total


def _trouble_line(snap: FleetSnapshot) -> list[str]:
    """The fleet's trouble figures that are not zero (no line at all when every one is)."""
    parts = [f"{TROUBLE_WORDS.get(k, k)} {n:,}" for k, n in _totals(snap).items() if n]
    return ["trouble  " + "  ".join(parts)] if parts else []


def _fit(
    head: list[str], body: list[str], tail: list[str], rows: str, width: int, height: int
) -> list[str]:
    """The screen: the head whole, then the table's header line and as many rows as the height
    leaves (``… N more devices`` for the rest), then the notes; every line cut to ``width``."""
    room = height - len(head) - len(tail)
    if len(body) > room:
        shown = max(0, room - 2)  # the table's header line and the "more" line
        more = len(body) - 1 - shown
        body = [*body[: 1 + shown], f"{ELLIPSIS} {more} more {rows}"] if room >= 2 else []
    lines = head + body + tail
    return [_cut(line, width) for line in lines[:height]]


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
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def _copies(d: DeviceRow) -> str:
    if d.replicated is None:
        return "-"
    cell = f"{d.replicated[0]}/{d.replicated[1]}"
    if d.copies_target < d.copies_wanted:  # fewer peers than copies wanted: say the target
        cell += f" ({d.copies_target} peer{'' if d.copies_target == 1 else 's'})"
    return cell


def _table(cols: list[str], rows: list[list[str]], width: int | None = None) -> list[str]:
    """Aligned columns; with ``width``, the ``OPTIONAL_COLUMNS`` are left out, least needed
    first, while the table is wider than that (what is still too wide is cut by ``_fit``)."""
    keep = list(range(len(cols)))
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    for name in OPTIONAL_COLUMNS:
        if width is None or sum(widths[i] + 2 for i in keep) - 2 <= width:
            break
        if name in cols:
            keep.remove(cols.index(name))

    def fmt(r: list[str]) -> str:
        return "  ".join(r[i].ljust(widths[i]) for i in keep).rstrip()

    return [fmt(cols)] + [fmt(r) for r in rows]


def _per_device(snap: FleetSnapshot, width: int | None = None) -> list[str]:
    cols = ["device", "kind", "site", "height", "pend", "peers", "lag", "copies", "held"]
    cols += ["alarms", "temps"]
    # The trouble column (after lag) only when a device has some: an honest fleet's table is
    # the same as ever.
    troubled = any(any(d.trouble.values()) for d in snap.devices)
    if troubled:
        cols.insert(cols.index("lag") + 1, "trouble")
    rows = []
    for d in snap.devices:
        cells = (
            [trouble_cell(d.trouble) + "".join(f" m:{p}" for p, _ in d.muted)] if troubled else []
        )
        rows.append(
            [
                _cut(d.name, NAME_WIDTH)
                + (" FORKED" if d.forked else "")
                + (f" REVOKED@{d.revoked_from}" if d.revoked_from is not None else "")
                + (" ROTATED" if d.rotations else "")
                + (" SERIAL-DOWN" if d.serial_down else "")
                + (" FAILED" if d.failure else " DAMAGED" if d.damaged else ""),
                KIND_SHORT.get(d.kind, d.kind),
                _cut(d.site, NAME_WIDTH),
                "-" if d.height is None else str(d.height),
                str(d.pending),
                f"{d.peers_online}/{d.peers_total}",
                str(d.lag),
                *cells,
                _copies(d),
                "-" if d.replicated is None else _size(d.held_bytes),
                ",".join(a.removeprefix("alarm.") for a in d.alarms) or "-",
                _temps(d),
            ]
        )
    return _table(cols, rows, width)


def _per_kind(snap: FleetSnapshot) -> list[str]:
    # Ranges are min/median/max; the columns that need the least room come first, so that on a
    # narrow screen only the end of the temperatures is cut.
    cols = ["kind", "count", "alarms", "forked", "fail", "pend", "lag", "height lo/med/hi"]
    cols += ["°C lo/med/hi"]
    troubled = any(any(d.trouble.values()) for d in snap.devices)
    if troubled:
        cols.insert(2, "trouble")
    rows = []
    kinds = sorted({d.kind for d in snap.devices})
    for kind in kinds:
        ds = [d for d in snap.devices if d.kind == kind]
        heights = [d.height if d.height is not None else -1 for d in ds]
        temps = [v for d in ds for s, v in d.temps_mc[:1]]
        extra = [str(sum(sum(d.trouble.values()) for d in ds))] if troubled else []
        rows.append(
            [
                KIND_SHORT.get(kind, kind),
                str(len(ds)),
                *extra,
                str(sum(len(d.alarms) for d in ds)),
                str(sum(d.forked for d in ds)),
                str(sum(d.failure is not None for d in ds)),
                str(sum(d.pending for d in ds)),
                str(max(d.lag for d in ds)),
                f"{min(heights)}/{int(statistics.median(heights))}/{max(heights)}",
                "/".join(f"{mc / 1000:.1f}" for mc in _spread(temps)) if temps else "-",
            ]
        )
    return _table(cols, rows)


def _spread(values: list[int]) -> tuple[int, int, int]:
    return min(values), int(statistics.median(values)), max(values)


def summary_line(snap: FleetSnapshot) -> str:
    sealed = sum(0 if d.height is None else d.height + 1 for d in snap.devices)
    alarms = sum(len(d.alarms) for d in snap.devices)
    lag = max((d.lag for d in snap.devices), default=0)
    failed = [d.name for d in snap.devices if d.failure]
    return (
        f"sim {_clock(snap.sim_ms)} x{snap.speed:,.0f} devices {len(snap.devices)} "
        f"blocks {sealed} readings {sum(d.readings for d in snap.devices)} alarms {alarms} "
        f"lag {lag} sent/s {snap.sent_per_s:,.0f} invalid {snap.invalid} unproven {snap.unproven}"
        f"{_serial_down(snap)}"
        + (f" FAILED {len(failed)}: {', '.join(failed)}" if failed else "")
        + _trouble_summary(snap)
    )


def _trouble_summary(snap: FleetSnapshot) -> str:
    """`` trouble s52 t3`` and `` NOT CONVERGING street-1,street-2`` when there is any."""
    cell = trouble_cell(_totals(snap))
    out = "" if cell == "-" else f" trouble {cell}"
    stalled = snap.stalled()
    if stalled:
        out += f" {NOT_CONVERGING} {','.join(d.domain for d in stalled)}"
    return out


def _serial_down(snap: FleetSnapshot) -> str:
    down = [d.name for d in snap.devices if d.serial_down]
    return f" serial-down {','.join(down)}" if down else ""


class LiveView:
    """Repaint on a terminal; print a summary line every ``plain_every_s`` otherwise.

    On a terminal the screen is rendered to its size, read at every repaint (a resized window
    gets a fitting screen); ``size`` overrides that (columns, lines), for tests."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        plain_every_s: float = 5.0,
        size: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.plain_every_s = plain_every_s
        self._size = size or self._terminal_size
        self._last_plain = -1e9
        self._painted = False

    def _terminal_size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):  # not a real terminal after all: the default screen
            return WIDTH, HEIGHT
        return size.columns or WIDTH, size.lines or HEIGHT

    def show(self, snap: FleetSnapshot, *, final: bool = False) -> None:
        if self.tty:
            columns, lines = self._size()
            # One line fewer than the screen: the newline after the last one must not scroll
            # the title away.
            screen = render(snap, width=columns, height=max(1, lines - 1))
            text = "\n".join(_paint(line) for line in screen)
            # Home the cursor and clear to the end of the screen: one redraw, no scrolling.
            self.out.write(("\x1b[H\x1b[J" if self._painted else "\x1b[2J\x1b[H") + text + "\n")
            self._painted = True
        elif final or snap.wall_s - self._last_plain >= self.plain_every_s:
            self.out.write(summary_line(snap) + "\n")
            self._last_plain = snap.wall_s
        self.out.flush()


RED, RESET = "\x1b[31m", "\x1b[0m"


def _paint(line: str) -> str:
    """On a terminal: a domain that does not converge in red (its line, and the gossip line's
    figure when not every domain is ok)."""
    if line.startswith(f"! {NOT_CONVERGING}"):
        return RED + line + RESET
    if line.startswith("gossip  ") and " domains " in line:
        head, _, rest = line.partition(" domains ")
        figure, sep, after = rest.partition(" ok")
        done, _, total = figure.partition("/")
        if sep and done != total:
            return f"{head} {RED}domains {figure} ok{RESET}{after}"
    return line
