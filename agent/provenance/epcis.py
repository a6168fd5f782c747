"""A trace as a GS1 EPCIS 2.0 JSON-LD document (docs/PROVENANCE.md has the mapping table).

One ``ObjectEvent`` (action ``OBSERVE``) per reading that names the item, plus one ``storing``
event per stay in a cold-storage appliance carrying the temperatures measured during the stay
as sensor elements. The device is the read point and its site the business location; both are
``urn:edgefleet:`` URNs because the fleet has no GLNs. Every event says which signed reading it
stands for: ``eventID`` names the reading (``urn:edgefleet:reading:<device>:<epoch>:<seq>``) and
the extension ``edgefleet:leafHash`` is the reading's Merkle leaf hash, the value its inclusion
proof and a bundle (docs/BUNDLE.md) prove; each temperature sensor element carries its
reading's leaf hash the same way.

The trace's verdict travels with the document: ``edgefleet:verdict`` (``OK``, ``FORKED``,
``REVOKED``, ``ROTATED-AWAY`` or ``NOT OK``) and ``edgefleet:problems`` at the top, and
``edgefleet:keyFlags`` on each event whose reading, or a storing event whose temperatures, a
flagged key signed.
"""

from __future__ import annotations

from typing import Any

from agent.provenance import rules
from agent.provenance.analysis import WORDS, StayReport, Trace
from agent.provenance.evidence import Evidence

CONTEXT_URL = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
NAMESPACE = "urn:edgefleet:epcis:"
PREFIX = "edgefleet"
WASHING = "urn:edgefleet:bizstep:washing"

# sensor of a reading naming the item -> (bizStep, disposition or None)
STEPS: dict[str, tuple[str, str | None]] = {
    "rfid.in": ("receiving", "in_progress"),
    "rfid.out": ("departing", "in_transit"),
    "wash.garment": (WASHING, None),
    "wash.conflict": ("inspecting", "non_conformant"),
    "bag.excursion": ("sensor_reporting", None),
    "food.expired": ("inspecting", "expired"),
}
OTHER_STEP = ("sensor_reporting", None)


def device_uri(device_id: str) -> str:
    return f"urn:edgefleet:device:{device_id}"


def site_uri(site: str) -> str:
    return f"urn:edgefleet:site:{site}"


def reading_uri(e: Evidence) -> str:
    return f"urn:edgefleet:reading:{e.device_id}:{e.epoch}:{e.seq}"


def _time(ms: int) -> str:
    return rules.iso(ms)


def _celsius(mc: int) -> float:
    return mc / 1000


def _base(t: Trace, e: Evidence, step: str, disposition: str | None) -> dict[str, Any]:
    info = t.devices.get(e.device_id)
    ev: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": _time(e.time_ms),
        "eventTimeZoneOffset": "+00:00",
        "eventID": reading_uri(e),
        "epcList": [t.epc],
        "action": "OBSERVE",
        "bizStep": step,
    }
    if disposition is not None:
        ev["disposition"] = disposition
    ev["readPoint"] = {"id": device_uri(e.device_id)}
    if info is not None:
        ev["bizLocation"] = {"id": site_uri(info.site)}
    ev[f"{PREFIX}:leafHash"] = e.leaf_hash.hex()
    ev[f"{PREFIX}:sensor"] = e.sensor
    ev[f"{PREFIX}:value"] = e.value
    if e.text is not None:
        ev[f"{PREFIX}:text"] = e.text
    _flags(t, ev, [e])
    return ev


def _flags(t: Trace, ev: dict[str, Any], readings: list[Evidence]) -> None:
    words = {WORDS[f.kind] for e in readings for f in t.flags_of(e)}
    if words:
        ev[f"{PREFIX}:keyFlags"] = [w for w in WORDS.values() if w in words]


def _temperature(t: Trace, e: Evidence) -> dict[str, Any]:
    report: dict[str, Any] = {"type": "Temperature", "value": _celsius(e.value), "uom": "CEL"}
    p = t.product
    if (p.high_mc is not None and e.value > p.high_mc) or (
        p.low_mc is not None and e.value < p.low_mc
    ):
        report["exception"] = "ALARM_CONDITION"
    return {
        "sensorMetadata": {
            "time": _time(e.time_ms),
            "deviceID": device_uri(e.device_id),
            f"{PREFIX}:leafHash": e.leaf_hash.hex(),
        },
        "sensorReport": [report],
    }


def _stay_temps(t: Trace, s: StayReport) -> list[Evidence]:
    stay = s.stay
    return [
        e
        for e in t.evidence
        if e.device_id == stay.device_id and e.sensor == s.temp_sensor and stay.holds(e)
    ]


def _item_event(t: Trace, e: Evidence) -> dict[str, Any]:
    step, disposition = STEPS.get(e.sensor, OTHER_STEP)
    ev = _base(t, e, step, disposition)
    if e.sensor == "bag.excursion":
        ev["sensorElementList"] = [
            {
                "sensorMetadata": {
                    "startTime": _time(e.time_ms - e.value),
                    "endTime": _time(e.time_ms),
                    "deviceID": device_uri(e.device_id),
                },
                "sensorReport": [
                    {
                        "type": "Temperature",
                        "exception": "ALARM_CONDITION",
                        "stringValue": e.text or "",
                    }
                ],
            }
        ]
    elif e.sensor == "wash.garment":
        wash = next(
            (w for w in t.washes if w.device_id == e.device_id and w.time_ms == e.time_ms), None
        )
        stay = next((s for s in t.stays if s.stay.holds(e) or s.stay.left == e), None)
        if wash is not None:
            ev[f"{PREFIX}:programme"] = wash.programme
            ev[f"{PREFIX}:washTempC"] = wash.temp_c
            ev[f"{PREFIX}:detergent"] = wash.detergent
            ev[f"{PREFIX}:doseMl"] = wash.dose_ml
            ev[f"{PREFIX}:careLabelExceeded"] = wash.care_exceeded
        if stay is not None:
            water = [x for x in _stay_temps(t, stay) if x.position < e.position]
            if water:
                ev["sensorElementList"] = [_temperature(t, x) for x in water]
    return ev


def _storing_event(t: Trace, s: StayReport) -> dict[str, Any] | None:
    stay = s.stay
    info = t.devices.get(stay.device_id)
    if stay.arrived is None or info is None or info.kind not in rules.COLD_STORAGE_KINDS:
        return None
    temps = _stay_temps(t, s)
    if not temps:
        return None
    last = temps[-1]
    ev: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": _time(last.time_ms),
        "eventTimeZoneOffset": "+00:00",
        "eventID": f"urn:edgefleet:stay:{stay.device_id}:{stay.arrived.epoch}:{stay.arrived.seq}",
        "epcList": [t.epc],
        "action": "OBSERVE",
        "bizStep": "storing",
        "disposition": "in_progress",
        "readPoint": {"id": device_uri(stay.device_id)},
        "bizLocation": {"id": site_uri(info.site)},
        "sensorElementList": [_temperature(t, e) for e in temps],
        f"{PREFIX}:arrivalLeafHash": stay.arrived.leaf_hash.hex(),
    }
    _flags(t, ev, [stay.arrived, *temps])
    return ev


def document(t: Trace, *, created_ms: int) -> dict[str, Any]:
    """The EPCIS 2.0 document of a trace (a JSON-serialisable dict)."""
    events: list[tuple[int, int, dict[str, Any]]] = []
    for ev in t.timeline:
        if ev.about_item:
            events.append((ev.time_ms, 0, _item_event(t, ev.evidence)))
    for s in t.stays:
        stored = _storing_event(t, s)
        if stored is not None:
            events.append((s.temps[-1][0] if s.temps else 0, 1, stored))
    events.sort(key=lambda x: (x[0], x[1]))
    return {
        "@context": [CONTEXT_URL, {PREFIX: NAMESPACE}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": _time(created_ms),
        f"{PREFIX}:verdict": t.verdict.word,
        f"{PREFIX}:problems": list(t.verdict.problems),
        "epcisBody": {"eventList": [e for _, _, e in events]},
    }
