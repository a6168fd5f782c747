"""The rules a trace judges custody by: product limits, what each sensor means, care labels.

Everything the verdict depends on is a value here, so docs/PROVENANCE.md can quote it and the tests
can pin it:

- ``PRODUCTS``: cold-chain limits per product (milli-degrees C, both ends inclusive as "within")
  and the longest time the item may spend outside any device between two devices.
- ``TEMP_SENSOR``: the temperature sensor that describes the item's surroundings in each kind
  of appliance (the cabinet of a medical freezer, the fridge compartment, the wash water).
- ``EVENTS``: the sensors whose readings name the item (tag = EPC) and the event each one is.
- ``care_exceeded``: whether a washer's conflict text says a wash went above the care label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

MIN_MS = 60_000


@dataclass(frozen=True, slots=True)
class ProductRule:
    """Limits for one product. ``low_mc``/``high_mc``: the acceptable temperature range (None:
    unbounded on that side); a reading strictly beyond a limit is an excursion. ``max_gap_ms``:
    the longest acceptable time between leaving one device and arriving at the next (None: not
    a cold-chain item, gaps are reported but never a problem)."""

    name: str
    low_mc: int | None
    high_mc: int | None
    max_gap_ms: int | None
    cold_chain: bool

    def describe(self) -> str:
        if not self.cold_chain:
            return f"{self.name} (no cold-chain limits)"
        if self.low_mc is not None and self.high_mc is not None:
            band = f"{_c(self.low_mc)}..{_c(self.high_mc)}"
        elif self.high_mc is not None:
            band = f"at most {_c(self.high_mc)}"
        else:
            band = f"at least {_c(self.low_mc or 0)}"
        gap = (
            ""
            if self.max_gap_ms is None
            else f", out of cold storage at most {fmt_ms(self.max_gap_ms)}"
        )
        return f"{self.name}: {band}{gap}"


PRODUCTS: dict[str, ProductRule] = {
    p.name: p
    for p in (
        # Fresh frozen plasma: stored at -25 C or colder; a transfer out of storage is short.
        ProductRule("plasma", None, -25_000, 30 * MIN_MS, True),
        # Red cell concentrates: +2..+6 C.
        ProductRule("red-cells", 2_000, 6_000, 30 * MIN_MS, True),
        # Platelets: +20..+24 C.
        ProductRule("platelets", 20_000, 24_000, 30 * MIN_MS, True),
        # Chilled food: at most 8 C (the fridge's own warm alarm); two hours out of the fridge.
        ProductRule("chilled-food", None, 8_000, 120 * MIN_MS, True),
        # Garments and anything else: no cold chain; washes are judged by the care label.
        ProductRule("garment", None, None, None, False),
        ProductRule("unknown", None, None, None, False),
    )
}

# Which temperature sensor tells the item's surroundings, by appliance kind.
TEMP_SENSOR: dict[str, str] = {
    "medical_freezer": "cabinet.temp_mc",
    "refrigerator": "fridge.temp_mc",
    "washing_machine": "water.temp_mc",
}
COLD_STORAGE_KINDS = frozenset({"medical_freezer", "refrigerator"})

ARRIVED = "arrived"
LEFT = "left"
WASHED = "washed"
ALARM = "alarm"
EVENTS: dict[str, str] = {
    "rfid.in": ARRIVED,
    "rfid.out": LEFT,
    "wash.garment": WASHED,
    "wash.conflict": "wash conflict",
    "bag.excursion": ALARM,
    "food.expired": "expired",
}


def event_of(sensor: str) -> str:
    """The timeline event a reading about the item is (unknown sensors keep their name)."""
    if sensor.startswith("alarm."):
        return ALARM
    return EVENTS.get(sensor, sensor)


def product_for(first_kind: str | None, name: str | None) -> ProductRule:
    """The product rule of an item: by the kind of the first appliance that held it, refined by
    the item name its RFID reads gave (``plasma unit``, ``red cells``, ``platelets``)."""
    label = (name or "").lower()
    if first_kind == "medical_freezer" or any(w in label for w in ("plasma", "red cell", "platel")):
        if "red cell" in label or "red-cell" in label:
            return PRODUCTS["red-cells"]
        if "platel" in label:
            return PRODUCTS["platelets"]
        if "plasma" in label:
            return PRODUCTS["plasma"]
        return PRODUCTS["unknown"]
    if first_kind == "refrigerator":
        return PRODUCTS["chilled-food"]
    if first_kind == "washing_machine":
        return PRODUCTS["garment"]
    return PRODUCTS["unknown"]


_CARE = re.compile(r"> (?:care (\d+) C|unlabelled, (\d+) C|(do not wash))")


def care_exceeded(conflict_text: str | None) -> tuple[bool, int | None]:
    """(exceeded, care label C) from a washer's ``wash.conflict`` text such as
    ``cotton-60 60 C > care 40 C``; a "do not wash" label is care 0."""
    m = _CARE.search(conflict_text or "")
    if m is None:
        return False, None
    if m.group(3):
        return True, 0
    return True, int(m.group(1) or m.group(2))


def _c(mc: int) -> str:
    return f"{mc / 1000:.1f} C"


def fmt_c(mc: int) -> str:
    return _c(mc)


def fmt_ms(ms: int) -> str:
    """A duration as ``2h05m``, ``38m53.173s`` or ``250ms``."""
    neg = ms < 0
    ms = abs(ms)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    if h:
        out = f"{h}h{m:02d}m" + (f"{s:02d}s" if s or milli else "")
    elif m:
        out = f"{m}m{s:02d}" + (f".{milli:03d}s" if milli else "s")
    elif s:
        out = f"{s}" + (f".{milli:03d}s" if milli else "s")
    else:
        out = f"{milli}ms"
    return ("-" if neg else "") + out


def iso(ms: int) -> str:
    """UTC time with milliseconds: ``2025-01-06T17:22:44.074Z``."""
    when = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
