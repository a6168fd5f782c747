"""From verified readings to a timeline and a verdict: custody, gaps, excursions, washes.

Pure functions over ``evidence`` values (no store, no clock), so a trace computed from a data
dir and one recomputed from an offline bundle agree. The rules, in order (docs/PROVENANCE.md):

1. **Stays.** The item's ``rfid.in`` / ``rfid.out`` readings, in time order, make stays: an
   arrival at a device opens one, a departure from the same device closes it. An arrival while a
   stay is open, or a departure from a device the item is not recorded in, is a **custody
   break**. A stay's readings are those of its device after the arrival and before the
   departure, in chain order (height, leaf index), never by clock.
2. **Gaps.** From a departure to the next arrival the item is in no device: out of cold storage
   for that long. A gap longer than the product's ``max_gap_ms`` is a problem.
3. **Excursions.** In stays at cold-storage appliances, the device's temperature readings
   strictly beyond the product's limits form excursions: from the first reading beyond to the
   first reading back within (or the end of the stay), with the extreme reading as peak. When the
   device itself recorded the excursion with the same limit (``excursion.start`` at the limit,
   ``excursion.end`` with its duration, ``excursion.peak_mc``: exact crossing times and the true
   peak), those figures are used (basis ``device``) instead of the sampled ones.
4. **Washes.** Each ``wash.garment`` reading is a wash: programme and temperature, the detergent
   dosed in that cycle, the hottest water measured, and any ``wash.conflict`` for this garment
   in the cycle; one naming the care label means the wash exceeded it.
5. **Key flags.** A reading the trace uses whose block header was signed by a forked key, by a
   revoked key at or above its revocation height, or by a key rotated away at or below its
   height (``ledger.bundle.KeyFlag``) turns the verdict: its word is ``FORKED``, ``REVOKED`` or
   ``ROTATED-AWAY`` (in that order when several apply), and each flag is a problem naming its
   evidence and the readings it covers.
6. **Verdict.** OK when custody is continuous (no break, nothing withheld during a stay), no gap
   exceeds its limit, no excursion happened, no wash exceeded the care label and no reading is
   under a flagged key. Its ``word`` is ``OK``, a flag's word, or ``NOT OK``.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.provenance import rules
from agent.provenance.evidence import DeviceInfo, Evidence, Unverified, Withheld
from ledger.bundle import FORKED, REVOKED, ROTATED_AWAY, KeyFlag

CONTINUOUS = "continuous"
BROKEN = "broken"
INCOMPLETE = "incomplete"
UNKNOWN = "unknown"
_MOVES = {"rfid.in": 1, "rfid.out": 0}  # a departure sorts before an arrival at the same ms
OK = "OK"
NOT_OK = "NOT OK"
WORDS = {FORKED: "FORKED", REVOKED: "REVOKED", ROTATED_AWAY: "ROTATED-AWAY"}  # by precedence


@dataclass(frozen=True, slots=True)
class Stay:
    """The item inside one device: from ``arrived`` (None: not recorded) to ``left`` (None: still
    there, or ``end_ms`` when a contradicting event elsewhere bounds it)."""

    device_id: str
    arrived: Evidence | None
    left: Evidence | None
    end_ms: int | None = None

    @property
    def start_ms(self) -> int | None:
        return None if self.arrived is None else self.arrived.time_ms

    @property
    def stop_ms(self) -> int | None:
        return self.left.time_ms if self.left is not None else self.end_ms

    def holds(self, r: Evidence) -> bool:
        """``r`` (a reading of any device) was made during this stay, by chain position."""
        if r.device_id != self.device_id or self.arrived is None:
            return False
        if r.position <= self.arrived.position:
            return False
        if self.left is not None and r.position >= self.left.position:
            return False
        return self.end_ms is None or r.time_ms <= self.end_ms


@dataclass(frozen=True, slots=True)
class Break:
    time_ms: int
    device_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Gap:
    from_device: str
    to_device: str
    left_ms: int
    arrived_ms: int
    limit_ms: int | None

    @property
    def duration_ms(self) -> int:
        return self.arrived_ms - self.left_ms

    @property
    def over_limit(self) -> bool:
        return self.limit_ms is not None and self.duration_ms > self.limit_ms


@dataclass(frozen=True, slots=True)
class Excursion:
    device_id: str
    direction: str  # "above" | "below"
    limit_mc: int
    start_ms: int
    end_ms: int | None  # None: still beyond at the last reading of an open stay
    duration_ms: int  # so far, when end_ms is None
    peak_mc: int
    basis: str  # "device" (its own excursion record) | "readings" (sampled temperatures)
    readings_beyond: int
    ongoing: str | None = None  # "at departure" | "at the last reading"


@dataclass(frozen=True, slots=True)
class Wash:
    device_id: str
    time_ms: int
    programme: str | None
    temp_c: int
    detergent: str | None
    dose_ml: int | None
    water_peak_mc: int | None
    conflicts: tuple[str, ...]
    care_exceeded: bool
    care_c: int | None


@dataclass(frozen=True, slots=True)
class StayReport:
    stay: Stay
    temp_sensor: str | None
    temps: tuple[tuple[int, int], ...]  # (time_ms, value_mc) in chain order
    readings: int  # readings of the device during the stay that the trace holds

    @property
    def temp_min(self) -> int | None:
        return min((v for _, v in self.temps), default=None)

    @property
    def temp_max(self) -> int | None:
        return max((v for _, v in self.temps), default=None)


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    time_ms: int
    device_id: str
    event: str
    evidence: Evidence
    about_item: bool  # the reading names the item (else: the device's own alarm during a stay)


@dataclass(frozen=True, slots=True)
class Flagged:
    """A key flag that covers readings the trace uses (rule 5), with those readings."""

    flag: KeyFlag
    readings: tuple[Evidence, ...]  # by device and chain position

    @property
    def word(self) -> str:
        return WORDS[self.flag.kind]


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    custody: str  # continuous | broken | incomplete | unknown
    final: str
    out_of_cold_ms: int
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    word: str  # OK | FORKED | REVOKED | ROTATED-AWAY | NOT OK


@dataclass(frozen=True, slots=True)
class Trace:
    epc: str
    name: str | None
    product: rules.ProductRule
    devices: Mapping[str, DeviceInfo]
    timeline: tuple[TimelineEvent, ...]
    stays: tuple[StayReport, ...]
    gaps: tuple[Gap, ...]
    excursions: tuple[Excursion, ...]
    washes: tuple[Wash, ...]
    breaks: tuple[Break, ...]
    withheld: tuple[Withheld, ...]
    unverified: tuple[Unverified, ...]
    verdict: Verdict
    flagged: tuple[Flagged, ...]  # key flags covering readings of ``evidence``
    evidence: tuple[Evidence, ...] = field(repr=False)  # every reading the verdict used

    def flags_of(self, e: Evidence) -> tuple[KeyFlag, ...]:
        return tuple(f.flag for f in self.flagged if f.flag.covers(e.device_id, e.key_id, e.height))

    def device_name(self, device_id: str) -> str:
        info = self.devices.get(device_id)
        return device_id if info is None else info.name


# --- 1. stays ---------------------------------------------------------------------------------


def _order(e: Evidence) -> tuple[int, int, str, int, int]:
    return (e.time_ms, _MOVES.get(e.sensor, 2), e.device_id, e.height, e.index)


def custody(
    events: Iterable[Evidence], names: Mapping[str, DeviceInfo] | None = None
) -> tuple[list[Stay], list[Break]]:
    """Stays and custody breaks from the item's arrival and departure readings (rule 1)."""

    def name(device_id: str) -> str:
        info = (names or {}).get(device_id)
        return device_id if info is None else info.name

    stays: list[Stay] = []
    breaks: list[Break] = []
    inside: Evidence | None = None
    for e in sorted((e for e in events if e.sensor in _MOVES), key=_order):
        if e.sensor == "rfid.in":
            if inside is not None:
                breaks.append(
                    Break(
                        e.time_ms,
                        e.device_id,
                        f"arrived at {name(e.device_id)} while still recorded inside "
                        f"{name(inside.device_id)}",
                    )
                )
                stays.append(Stay(inside.device_id, inside, None, e.time_ms))
            inside = e
            continue
        if inside is not None and inside.device_id == e.device_id:
            stays.append(Stay(e.device_id, inside, e))
        else:
            if inside is not None:
                breaks.append(
                    Break(
                        e.time_ms,
                        e.device_id,
                        f"left {name(e.device_id)} while recorded inside {name(inside.device_id)}",
                    )
                )
                stays.append(Stay(inside.device_id, inside, None, e.time_ms))
            breaks.append(
                Break(
                    e.time_ms, e.device_id, f"left {name(e.device_id)} without a recorded arrival"
                )
            )
            stays.append(Stay(e.device_id, None, e))
        inside = None
    if inside is not None:
        stays.append(Stay(inside.device_id, inside, None))
    return stays, breaks


def gaps(stays: Sequence[Stay], limit_ms: int | None) -> list[Gap]:
    """Time in no device between a departure and the next arrival (rule 2)."""
    out: list[Gap] = []
    ordered = sorted(stays, key=lambda s: s.start_ms if s.start_ms is not None else -1)
    for prev, nxt in itertools.pairwise(ordered):
        if prev.left is not None and nxt.arrived is not None:
            out.append(
                Gap(prev.device_id, nxt.device_id, prev.left.time_ms, nxt.arrived.time_ms, limit_ms)
            )
    return out


# --- 3. excursions ----------------------------------------------------------------------------


def _beyond(v: int, rule: rules.ProductRule) -> str | None:
    if rule.high_mc is not None and v > rule.high_mc:
        return "above"
    if rule.low_mc is not None and v < rule.low_mc:
        return "below"
    return None


@dataclass
class _Run:
    direction: str
    start_ms: int
    peak: int
    count: int
    back_ms: int | None = None


def _sampled_runs(temps: Sequence[tuple[int, int]], rule: rules.ProductRule) -> list[_Run]:
    runs: list[_Run] = []
    cur: _Run | None = None
    for t, v in temps:
        d = _beyond(v, rule)
        if cur is not None and d != cur.direction:
            cur.back_ms = t
            cur = None
        if d is None:
            continue
        if cur is None:
            cur = _Run(d, t, v, 0)
            runs.append(cur)
        cur.count += 1
        cur.peak = max(cur.peak, v) if d == "above" else min(cur.peak, v)
    return runs


@dataclass
class _Episode:
    direction: str
    start: Evidence
    end: Evidence | None = None
    peak: int | None = None


def _device_episodes(ctx: Sequence[Evidence], rule: rules.ProductRule) -> list[_Episode]:
    """The device's own excursion records whose limit is the product's limit."""
    limit = {"above": rule.high_mc, "below": rule.low_mc}
    out: list[_Episode] = []
    cur: _Episode | None = None
    last: _Episode | None = None
    for r in ctx:
        text = r.text or ""
        if r.sensor == "excursion.start":
            d = "above" if text.startswith("above") else "below" if text.startswith("below") else ""
            cur = _Episode(d, r) if d and limit.get(d) == r.value else None
            if cur is not None:
                out.append(cur)
        elif r.sensor == "excursion.end" and cur is not None and text == cur.direction:
            cur.end = r
            last, cur = cur, None
        elif (
            r.sensor == "excursion.peak_mc"
            and last is not None
            and last.end is not None
            and last.end.time_ms == r.time_ms
            and text == last.direction
            and last.peak is None
        ):
            last.peak = r.value
    return out


def excursions(
    report: StayReport, ctx: Sequence[Evidence], rule: rules.ProductRule
) -> list[Excursion]:
    """Excursions during one stay (rule 3)."""
    stay = report.stay
    limit = {"above": rule.high_mc, "below": rule.low_mc}
    runs = _sampled_runs(report.temps, rule)
    stop = stay.stop_ms
    last_t = report.temps[-1][0] if report.temps else None
    ongoing = "at departure" if stop is not None else "at the last reading"
    out: list[Excursion] = []
    used: set[int] = set()
    for ep in _device_episodes(ctx, rule):
        s = ep.start.time_ms
        e = ep.end.time_ms if ep.end is not None else stop
        mine = [
            i
            for i, run in enumerate(runs)
            if run.direction == ep.direction
            and (e is None or run.start_ms <= e)
            and (run.back_ms is None or run.back_ms >= s)
        ]
        used.update(mine)
        count = sum(runs[i].count for i in mine)
        sampled = [runs[i].peak for i in mine]
        if ep.end is not None:
            peak = (
                ep.peak if ep.peak is not None else _extreme(ep.direction, sampled, ep.start.value)
            )
            out.append(
                Excursion(
                    stay.device_id,
                    ep.direction,
                    ep.start.value,
                    s,
                    ep.end.time_ms,
                    ep.end.value,
                    peak,
                    "device",
                    count,
                )
            )
        else:
            end = e if e is not None else last_t
            out.append(
                Excursion(
                    stay.device_id,
                    ep.direction,
                    ep.start.value,
                    s,
                    e,
                    max(0, (end or s) - s),
                    _extreme(ep.direction, sampled, ep.start.value),
                    "device",
                    count,
                    ongoing,
                )
            )
    for i, run in enumerate(runs):
        if i in used:
            continue
        end = run.back_ms if run.back_ms is not None else stop
        so_far = end if end is not None else (last_t or run.start_ms)
        lim = limit[run.direction]
        assert lim is not None
        out.append(
            Excursion(
                stay.device_id,
                run.direction,
                lim,
                run.start_ms,
                end,
                so_far - run.start_ms,
                run.peak,
                "readings",
                run.count,
                None if run.back_ms is not None else ongoing,
            )
        )
    out.sort(key=lambda x: x.start_ms)
    return out


def _extreme(direction: str, values: Sequence[int], default: int) -> int:
    pool = [*values, default]
    return max(pool) if direction == "above" else min(pool)


# --- 4. washes --------------------------------------------------------------------------------


def washes(stay: Stay, ctx: Sequence[Evidence], events: Sequence[Evidence]) -> list[Wash]:
    out: list[Wash] = []
    mine = [e for e in events if stay.holds(e) or e is stay.left]
    for w in (e for e in mine if e.sensor == "wash.garment"):
        before = [r for r in ctx if r.position < w.position]
        dose = next((r for r in reversed(before) if r.sensor == "detergent.dose_ml"), None)
        water = [r.value for r in before if r.sensor == "water.temp_mc"]
        conflicts = tuple(
            e.text or "" for e in mine if e.sensor == "wash.conflict" and e.position < w.position
        )
        judged = [rules.care_exceeded(t) for t in conflicts]
        exceeded = any(x for x, _ in judged)
        cares = [c for x, c in judged if x and c is not None]
        out.append(
            Wash(
                w.device_id,
                w.time_ms,
                w.text,
                w.value,
                None if dose is None else dose.text,
                None if dose is None else dose.value,
                max(water) if water else None,
                conflicts,
                exceeded,
                min(cares) if cares else None,
            )
        )
    return out


# --- 5. everything ------------------------------------------------------------------------------


def analyse(
    epc: str,
    devices: Mapping[str, DeviceInfo],
    readings: Iterable[Evidence],
    withheld: Sequence[Withheld] = (),
    unverified: Sequence[Unverified] = (),
    product: str | None = None,
    flags: Sequence[KeyFlag] = (),
) -> Trace:
    """The whole trace of ``epc`` from verified readings (the item's and its devices'), and the
    key flags against their devices (those covering a reading the trace uses turn the verdict).
    """
    unique = {(r.device_id, r.height, r.index): r for r in readings}
    by_device: dict[str, list[Evidence]] = {}
    for r in sorted(unique.values(), key=lambda r: (r.device_id, r.position)):
        by_device.setdefault(r.device_id, []).append(r)
    events = sorted((r for r in unique.values() if r.tag == epc), key=_order)
    stays, breaks = custody(events, devices)
    first_kind = None
    if stays:
        info = devices.get(stays[0].device_id)
        first_kind = None if info is None else info.kind
    name = next((e.text for e in events if e.sensor in _MOVES and e.text), None)
    rule = rules.PRODUCTS[product] if product else rules.product_for(first_kind, name)
    reports: list[StayReport] = []
    found_exc: list[Excursion] = []
    found_wash: list[Wash] = []
    timeline = [
        TimelineEvent(e.time_ms, e.device_id, rules.event_of(e.sensor), e, True) for e in events
    ]
    used: dict[tuple[str, int, int], Evidence] = {
        (e.device_id, e.height, e.index): e for e in events
    }
    for stay in stays:
        ctx = _stay_readings(stay, by_device.get(stay.device_id, []))
        info = devices.get(stay.device_id)
        kind = None if info is None else info.kind
        sensor = None if kind is None else rules.TEMP_SENSOR.get(kind)
        temps = tuple((r.time_ms, r.value) for r in ctx if r.sensor == sensor)
        report = StayReport(stay, sensor, temps, len(ctx))
        reports.append(report)
        for r in ctx:
            used[(r.device_id, r.height, r.index)] = r
            if r.sensor.startswith("alarm.") and r.value == 1 and r.tag is None:
                timeline.append(TimelineEvent(r.time_ms, r.device_id, rules.ALARM, r, False))
        if rule.cold_chain and kind in rules.COLD_STORAGE_KINDS:
            found_exc.extend(excursions(report, ctx, rule))
        if kind == "washing_machine":
            found_wash.extend(washes(stay, ctx, events))
    found_gaps = gaps(stays, rule.max_gap_ms)
    timeline.sort(key=lambda t: (t.time_ms, t.evidence.device_id, t.evidence.position))
    trace_withheld = tuple(withheld)
    evidence = tuple(sorted(used.values(), key=lambda r: (r.device_id, r.position)))
    flagged = flagged_by(flags, evidence)
    verdict = _verdict(
        devices,
        rule,
        events,
        stays,
        breaks,
        found_gaps,
        found_exc,
        found_wash,
        trace_withheld,
        unverified,
        flagged,
    )
    return Trace(
        epc,
        name,
        rule,
        dict(devices),
        tuple(timeline),
        tuple(reports),
        tuple(found_gaps),
        tuple(found_exc),
        tuple(found_wash),
        tuple(breaks),
        trace_withheld,
        tuple(unverified),
        verdict,
        flagged,
        evidence,
    )


def flagged_by(flags: Iterable[KeyFlag], evidence: Sequence[Evidence]) -> tuple[Flagged, ...]:
    """The flags that cover at least one of ``evidence`` (rule 5), most serious first."""
    out = []
    for f in dict.fromkeys(flags):
        covered = tuple(e for e in evidence if f.covers(e.device_id, e.key_id, e.height))
        if covered:
            out.append(Flagged(f, covered))
    order = list(WORDS)
    return tuple(sorted(out, key=lambda x: (order.index(x.flag.kind), x.flag.device_id)))


def _stay_readings(stay: Stay, device_readings: list[Evidence]) -> list[Evidence]:
    if stay.arrived is None:
        return []
    keys = [r.position for r in device_readings]
    lo = bisect.bisect_right(keys, stay.arrived.position)
    hi = len(keys) if stay.left is None else bisect.bisect_left(keys, stay.left.position)
    return [r for r in device_readings[lo:hi] if stay.holds(r)]


def _verdict(
    devices: Mapping[str, DeviceInfo],
    rule: rules.ProductRule,
    events: Sequence[Evidence],
    stays: Sequence[Stay],
    breaks: Sequence[Break],
    found_gaps: Sequence[Gap],
    found_exc: Sequence[Excursion],
    found_wash: Sequence[Wash],
    withheld: Sequence[Withheld],
    unverified: Sequence[Unverified],
    flagged: Sequence[Flagged],
) -> Verdict:
    def name(device_id: str) -> str:
        info = devices.get(device_id)
        return device_id if info is None else info.name

    problems = []
    for fl in flagged:
        heights = [e.height for e in fl.readings]
        problems.append(
            f"{fl.word}: {name(fl.flag.device_id)}: {fl.flag.describe()}; {len(fl.readings)} "
            f"reading(s) this trace uses are under it (heights {min(heights)}..{max(heights)})"
        )
    problems += [f"custody break at {rules.iso(b.time_ms)}: {b.text}" for b in breaks]
    for w in (w for w in withheld if w.in_custody):
        problems.append(
            f"{w.count} private reading(s) of {name(w.device_id)} during the item's stay were "
            f"withheld ({w.reason}): what happened there is unknown"
        )
    for g in found_gaps:
        if g.over_limit:
            assert g.limit_ms is not None
            problems.append(
                f"out of cold storage {rules.fmt_ms(g.duration_ms)} between "
                f"{name(g.from_device)} and {name(g.to_device)} from {rules.iso(g.left_ms)} "
                f"(limit {rules.fmt_ms(g.limit_ms)})"
            )
    for x in found_exc:
        end = "" if x.ongoing is None else f" (still beyond {x.ongoing})"
        problems.append(
            f"excursion {x.direction} {rules.fmt_c(x.limit_mc)} at {name(x.device_id)} from "
            f"{rules.iso(x.start_ms)} for {rules.fmt_ms(x.duration_ms)}{end}, "
            f"peak {rules.fmt_c(x.peak_mc)}"
        )
    for wash in found_wash:
        if wash.care_exceeded:
            care = "the care label" if wash.care_c is None else f"the care label ({wash.care_c} C)"
            problems.append(
                f"washed at {wash.temp_c} C ({wash.programme}) at {name(wash.device_id)} on "
                f"{rules.iso(wash.time_ms)}: above {care}"
            )
    notes: list[str] = []
    if unverified:
        notes.append(
            f"{len(unverified)} reading(s) the tag index names did not verify and were left out"
        )
    elsewhere = [w for w in withheld if not w.in_custody]
    if elsewhere:
        total = sum(w.count for w in elsewhere)
        notes.append(
            f"{total} private reading(s) of {len(elsewhere)} device(s) were not opened; their tags "
            "are sealed, so they may or may not mention this item"
        )
    for e in events:
        if e.sensor == "food.expired":
            notes.append(
                f"passed its best-before time in {name(e.device_id)} at {rules.iso(e.time_ms)}"
            )
    if not stays:
        status = UNKNOWN
        final = "no reading in the data dir records this item's arrival or departure"
        problems.append(final)
    else:
        status = (
            BROKEN if breaks else INCOMPLETE if any(w.in_custody for w in withheld) else CONTINUOUS
        )
        last = max(stays, key=lambda s: (s.stop_ms or s.start_ms or 0, s.left is None))
        if last.left is None and last.end_ms is None and last.arrived is not None:
            final = f"inside {name(last.device_id)} since {rules.iso(last.arrived.time_ms)}"
        elif last.left is not None:
            final = (
                f"left {name(last.device_id)} at {rules.iso(last.left.time_ms)}; not recorded since"
            )
        else:
            final = f"last recorded at {name(last.device_id)}"
    out_of_cold = sum(g.duration_ms for g in found_gaps) if rule.cold_chain else 0
    word = flagged[0].word if flagged else OK if not problems else NOT_OK
    return Verdict(not problems, status, final, out_of_cold, tuple(problems), tuple(notes), word)
