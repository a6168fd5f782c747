"""A trace as text for people and as one JSON object for programs.

JSON keeps integers in their units (``_ms``, ``_mc``) and hashes in hex, so a program can check
every figure against the readings; the text rounds for reading at a glance.
"""

from __future__ import annotations

from typing import Any

from agent.provenance import rules
from agent.provenance.analysis import WORDS, Flagged, Trace
from agent.provenance.evidence import Evidence
from agent.provenance.gather import TagSummary

JSON_FORMAT = "edgefleet-trace/1"


def _ref(t: Trace, e: Evidence) -> dict[str, Any]:
    return {
        "device_id": e.device_id,
        "height": e.height,
        "index": e.index,
        "seq": e.seq,
        "leaf_hash": e.leaf_hash.hex(),
        "proof": e.proof,
        "private": e.private,
        "key_id": e.key_id.hex(),
        "flags": [WORDS[f.kind] for f in t.flags_of(e)],
    }


def flag_json(t: Trace, fl: Flagged) -> dict[str, Any]:
    """One key flag: what it is, the signed evidence (hex) and the readings it covers."""
    f = fl.flag
    return {
        "word": fl.word,
        "kind": f.kind,
        "device": t.device_name(f.device_id),
        "device_id": f.device_id,
        "key_id": None if f.key_id is None else f.key_id.hex(),
        "height": f.height,
        "header_hashes": [h.hex() for h in f.hashes],
        "reason": f.reason if f.kind == "revoked" else None,
        "text": f.describe(),
        "readings": len(fl.readings),
        "heights": [min(e.height for e in fl.readings), max(e.height for e in fl.readings)],
        "evidence": f.wire.hex(),
    }


def as_json(t: Trace) -> dict[str, Any]:
    """The whole trace; ``evidence`` lists every reading used (for re-checking)."""
    v = t.verdict
    return {
        "format": JSON_FORMAT,
        "epc": t.epc,
        "name": t.name,
        "product": {
            "name": t.product.name,
            "low_mc": t.product.low_mc,
            "high_mc": t.product.high_mc,
            "max_gap_ms": t.product.max_gap_ms,
            "cold_chain": t.product.cold_chain,
        },
        "verdict": {
            "ok": v.ok,
            "word": v.word,
            "flags": [flag_json(t, fl) for fl in t.flagged],
            "custody": v.custody,
            "final": v.final,
            "out_of_cold_ms": v.out_of_cold_ms,
            "problems": list(v.problems),
            "notes": list(v.notes),
        },
        "devices": {
            d: {
                "name": i.name,
                "kind": i.kind,
                "site": i.site,
                "model": i.model,
                "private": i.private,
            }
            for d, i in sorted(t.devices.items())
            if d in {e.device_id for e in t.evidence}
        },
        "timeline": [
            {
                "time_ms": ev.time_ms,
                "device": t.device_name(ev.device_id),
                "event": ev.event,
                "sensor": ev.evidence.sensor,
                "value": ev.evidence.value,
                "text": ev.evidence.text,
                "about_item": ev.about_item,
                "reading": _ref(t, ev.evidence),
            }
            for ev in t.timeline
        ],
        "stays": [
            {
                "device": t.device_name(s.stay.device_id),
                "device_id": s.stay.device_id,
                "arrived_ms": s.stay.start_ms,
                "left_ms": s.stay.stop_ms,
                "temp_sensor": s.temp_sensor,
                "temp_min_mc": s.temp_min,
                "temp_max_mc": s.temp_max,
                "temps": [[tm, val] for tm, val in s.temps],
                "readings": s.readings,
            }
            for s in t.stays
        ],
        "gaps": [
            {
                "from": t.device_name(g.from_device),
                "to": t.device_name(g.to_device),
                "left_ms": g.left_ms,
                "arrived_ms": g.arrived_ms,
                "duration_ms": g.duration_ms,
                "limit_ms": g.limit_ms,
                "over_limit": g.over_limit,
            }
            for g in t.gaps
        ],
        "excursions": [
            {
                "device": t.device_name(x.device_id),
                "direction": x.direction,
                "limit_mc": x.limit_mc,
                "start_ms": x.start_ms,
                "end_ms": x.end_ms,
                "duration_ms": x.duration_ms,
                "peak_mc": x.peak_mc,
                "basis": x.basis,
                "readings_beyond": x.readings_beyond,
                "ongoing": x.ongoing,
            }
            for x in t.excursions
        ],
        "washes": [
            {
                "device": t.device_name(w.device_id),
                "time_ms": w.time_ms,
                "programme": w.programme,
                "temp_c": w.temp_c,
                "detergent": w.detergent,
                "dose_ml": w.dose_ml,
                "water_peak_mc": w.water_peak_mc,
                "conflicts": list(w.conflicts),
                "care_exceeded": w.care_exceeded,
                "care_c": w.care_c,
            }
            for w in t.washes
        ],
        "wash_count": len(t.washes),
        "withheld": [
            {
                "device": t.device_name(w.device_id),
                "device_id": w.device_id,
                "count": w.count,
                "first_ms": w.first_ms,
                "last_ms": w.last_ms,
                "in_custody": w.in_custody,
                "reason": w.reason,
            }
            for w in t.withheld
        ],
        "unverified": [
            {"device_id": u.device_id, "height": u.height, "index": u.index, "reason": u.reason}
            for u in t.unverified
        ],
        "evidence": len(t.evidence),
    }


def _when(ms: int | None) -> str:
    return "-" if ms is None else rules.iso(ms).replace("T", " ").removesuffix("Z")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _detail(t: Trace, ev: Any) -> str:
    e: Evidence = ev.evidence
    if ev.event in (rules.ARRIVED, rules.LEFT):
        return e.text or ""
    if ev.event == rules.WASHED:
        return f"{e.text} at {e.value} C"
    if e.sensor == "bag.excursion":
        return f"excursion of {rules.fmt_ms(e.value)}, {e.text}"
    if not ev.about_item:
        return f"{e.sensor}: {e.text or e.value}"
    return f"{e.sensor} = {e.value}" + (f" ({e.text})" if e.text else "")


def as_text(t: Trace) -> str:
    v = t.verdict
    lines = [f"Trace of {t.epc}" + (f" ({t.name})" if t.name else "")]
    lines.append(f"Product rule: {t.product.describe()}")
    items = sum(1 for ev in t.timeline if ev.about_item)
    lines.append(
        f"Verified: {items} reading(s) naming the item and {len(t.evidence) - items} reading(s) "
        f"of its devices during its stays, each against a signed header of a verified chain"
    )
    lines.append("")
    rows = [["time (UTC)", "device", "kind", "site", "event", "detail"]]
    for ev in t.timeline:
        info = t.devices.get(ev.device_id)
        rows.append(
            [
                _when(ev.time_ms),
                t.device_name(ev.device_id),
                "?" if info is None else info.kind,
                "?" if info is None else info.site,
                ev.event if ev.about_item else "alarm (device)",
                _detail(t, ev) + "".join(f"  [{WORDS[f.kind]}]" for f in t.flags_of(ev.evidence)),
            ]
        )
    lines += _table(rows) if len(rows) > 1 else ["(no reading names this item)"]
    if t.stays:
        lines += ["", "Stays"]
        for s in t.stays:
            span = (
                rules.fmt_ms(s.stay.stop_ms - s.stay.start_ms)
                if s.stay.stop_ms is not None and s.stay.start_ms is not None
                else "open"
            )
            temps = (
                f"{s.temp_sensor} {rules.fmt_c(s.temp_min)}..{rules.fmt_c(s.temp_max)} "
                f"({len(s.temps)} readings)"
                if s.temp_min is not None and s.temp_max is not None
                else "no temperature readings"
            )
            lines.append(
                f"  {t.device_name(s.stay.device_id)}: {_when(s.stay.start_ms)} -> "
                f"{_when(s.stay.stop_ms)} ({span}); {temps}"
            )
    if t.gaps:
        lines += ["", "Out of any device"]
        for g in t.gaps:
            flag = " OVER LIMIT" if g.over_limit else ""
            lines.append(
                f"  {t.device_name(g.from_device)} -> {t.device_name(g.to_device)}: "
                f"{rules.fmt_ms(g.duration_ms)} from {_when(g.left_ms)}{flag}"
            )
    if t.excursions:
        lines += ["", "Excursions"]
        for x in t.excursions:
            more = "" if x.ongoing is None else f", still beyond {x.ongoing}"
            lines.append(
                f"  {t.device_name(x.device_id)}: {x.direction} {rules.fmt_c(x.limit_mc)} from "
                f"{_when(x.start_ms)} for {rules.fmt_ms(x.duration_ms)}, peak "
                f"{rules.fmt_c(x.peak_mc)} ({x.basis}; {x.readings_beyond} reading(s) beyond){more}"
            )
    if t.washes:
        lines += ["", f"Washes ({len(t.washes)})"]
        for w in t.washes:
            det = "" if w.detergent is None else f", {w.dose_ml} ml {w.detergent} detergent"
            water = (
                "" if w.water_peak_mc is None else f", water up to {rules.fmt_c(w.water_peak_mc)}"
            )
            flag = "  ABOVE CARE LABEL" if w.care_exceeded else ""
            lines.append(
                f"  {_when(w.time_ms)} {t.device_name(w.device_id)}: {w.programme} "
                f"{w.temp_c} C{det}{water}{flag}"
            )
    if t.withheld:
        lines += ["", "Withheld (private readings not opened)"]
        for wh in t.withheld:
            where = "during the item's stay" if wh.in_custody else "tags sealed"
            lines.append(
                f"  {t.device_name(wh.device_id)}: {wh.count} reading(s) {_when(wh.first_ms)} .. "
                f"{_when(wh.last_ms)} ({where}; {wh.reason})"
            )
    if t.flagged:
        lines += ["", "Keys in doubt (signed evidence against the keys of readings used)"]
        for fl in t.flagged:
            lines.append(f"  {fl.word} {t.device_name(fl.flag.device_id)}: {fl.flag.describe()}")
            lines.append(f"    covers {len(fl.readings)} reading(s) of this trace")
    lines += ["", f"Verdict: {v.word}"]
    lines.append(f"  custody: {v.custody}; {v.final}")
    if t.product.cold_chain:
        lines.append(f"  out of cold storage between devices: {rules.fmt_ms(v.out_of_cold_ms)}")
    if t.washes or t.product.name == "garment":
        lines.append(f"  washes: {len(t.washes)}")
    lines += [f"  problem: {p}" for p in v.problems]
    lines += [f"  note: {n}" for n in v.notes]
    return "\n".join(lines) + "\n"


def tags_json(rows: list[TagSummary], names: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "tag": r.tag,
            "name": r.name,
            "readings": r.readings,
            "devices": [names.get(d, d) for d in r.devices],
            "first_ms": r.first_ms,
            "last_ms": r.last_ms,
            "last_event": None if r.last_sensor is None else rules.event_of(r.last_sensor),
            "last_device": names.get(r.last_device, r.last_device),
            "kind": r.kind,
        }
        for r in rows
    ]


def tags_text(rows: list[TagSummary], names: dict[str, str]) -> str:
    table = [["tag", "name", "readings", "devices", "last seen (UTC)", "last event"]]
    for r in tags_json(rows, names):
        event = r["last_event"] or "?"
        table.append(
            [
                r["tag"],
                r["name"] or "-",
                str(r["readings"]),
                ",".join(r["devices"]),
                _when(r["last_ms"]),
                f"{event} {r['last_device']}",
            ]
        )
    if len(table) == 1:
        return "no tagged readings in the data dir\n"
    return "\n".join(_table(table)) + f"\n\n{len(rows)} tag(s)\n"
