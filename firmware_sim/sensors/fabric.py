"""Fabric care: washing programmes, what a load of tagged garments tolerates, detergent advice.

Each garment's RFID "ID card" (``Item.fibres``, ``care_max_c``, ``colour``) tells the washer what
it is made of and the hottest wash its care label allows (ISO 3758 tub: 95/60/40/30/...; 0 means
do not wash; ``None`` means no label, treated as 30 C). A garment belongs to the most delicate
family its fibres put it in (wool > delicates > synthetics > cotton); a load runs the hottest
programme of its most delicate garment's family that no garment's label forbids, falling back to
``cold-20``. Running anything else is a conflict: too hot for a label, or mechanical action the
fibre does not survive (wool felts in a cotton programme).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from firmware_sim.items import Item

WOOL = frozenset({"wool", "cashmere", "alpaca", "mohair", "angora", "merino"})
DELICATE = frozenset({"silk", "viscose", "rayon", "modal", "cupro"})
SYNTHETIC = frozenset(
    {"polyester", "polyamide", "nylon", "acrylic", "elastane", "spandex", "polypropylene"}
)
FAMILY_ORDER = ("cotton", "synthetics", "delicates", "wool")  # increasingly delicate
UNLABELLED_CARE_C = 30
MIN_WASH_C = 20
MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class Programme:
    name: str
    temp_c: int
    family: str  # "cotton" | "synthetics" | "delicates" | "wool" | "any"
    wash_ms: int
    rinses: int
    spin_rpm: int


PROGRAMMES: dict[str, Programme] = {
    p.name: p
    for p in (
        Programme("cotton-90", 90, "cotton", 75 * MINUTE_MS, 3, 1400),
        Programme("cotton-60", 60, "cotton", 60 * MINUTE_MS, 3, 1400),
        Programme("cotton-40", 40, "cotton", 50 * MINUTE_MS, 3, 1200),
        Programme("synthetics-40", 40, "synthetics", 40 * MINUTE_MS, 2, 1000),
        Programme("delicates-30", 30, "delicates", 25 * MINUTE_MS, 2, 600),
        Programme("wool-30", 30, "wool", 20 * MINUTE_MS, 2, 600),
        Programme("cold-20", 20, "any", 30 * MINUTE_MS, 2, 800),
    )
}


def care_c(item: Item) -> int:
    """The hottest wash the garment's label allows (unlabelled: a conservative 30 C)."""
    return UNLABELLED_CARE_C if item.care_max_c is None else item.care_max_c


def family(item: Item) -> str:
    """The garment's fabric family from its fibre percentages."""
    share = {"wool": 0, "delicates": 0, "synthetics": 0}
    for fibre, pct in item.fibres.items():
        f = fibre.lower()
        if f in WOOL:
            share["wool"] += pct
        elif f in DELICATE:
            share["delicates"] += pct
        elif f in SYNTHETIC:
            share["synthetics"] += pct
    if share["wool"] >= 30:
        return "wool"
    if share["delicates"] >= 30:
        return "delicates"
    if share["synthetics"] >= 50:
        return "synthetics"
    return "cotton"


def load_family(garments: Sequence[Item]) -> str:
    return max((family(g) for g in garments), key=FAMILY_ORDER.index, default="cotton")


def select_programme(garments: Sequence[Item]) -> Programme | None:
    """The hottest programme every garment tolerates; None when some garment must not be
    washed at all (label below 20 C, e.g. 0 = do not wash)."""
    limit = min((care_c(g) for g in garments), default=90)
    fam = load_family(garments)
    candidates = [p for p in PROGRAMMES.values() if p.family in (fam, "any")]
    fitting = [p for p in candidates if p.temp_c <= limit]
    if not fitting:
        return None
    return max(fitting, key=lambda p: (p.temp_c, p.family != "any"))


def conflicts(garments: Sequence[Item], programme: Programme) -> list[tuple[Item, str]]:
    """Garments ``programme`` would harm, each with a short reason."""
    found: list[tuple[Item, str]] = []
    for g in garments:
        care = care_c(g)
        fam = family(g)
        if programme.temp_c > care:
            if care < MIN_WASH_C:
                label = "do not wash"
            elif g.care_max_c is None:
                label = f"unlabelled, {care} C"
            else:
                label = f"care {care} C"
            found.append((g, f"{programme.name} {programme.temp_c} C > {label}"))
        elif programme.family not in ("any", fam) and FAMILY_ORDER.index(fam) > FAMILY_ORDER.index(
            programme.family
        ):
            found.append((g, f"{fam} garment in {programme.name}"))
    return found


def composition(garments: Sequence[Item], masses: Sequence[int]) -> dict[str, int]:
    """Fibre -> percent of the load by mass (rounded; garments without fibres: "unknown")."""
    total = sum(masses)
    grams: dict[str, float] = {}
    for g, m in zip(garments, masses, strict=True):
        fibres = g.fibres or {"unknown": 100}
        pct_sum = sum(fibres.values()) or 1
        for fibre, pct in fibres.items():
            grams[fibre.lower()] = grams.get(fibre.lower(), 0.0) + m * pct / pct_sum
    if total <= 0:
        return {}
    return {f: round(100 * w / total) for f, w in sorted(grams.items())}


SOIL_FACTOR_QUARTERS = {1: 3, 2: 4, 3: 6}  # light, normal, heavy soiling


def detergent(garments: Sequence[Item], programme: Programme) -> str:
    """Detergent type for the load: wool/silk care, mild for synthetics, heavy-duty for
    all-white cotton, colour otherwise."""
    fam = load_family(garments)
    if fam in ("wool", "delicates") or programme.family in ("wool", "delicates"):
        return "wool"
    if fam == "synthetics":
        return "mild"
    if garments and all((g.colour or "").lower() == "white" for g in garments):
        return "heavy-duty"
    return "colour"


def dose_ml(mass_g: int, soil: int, ml_per_kg: int) -> int:
    """Dose in millilitres: a 20 ml base plus ``ml_per_kg`` per kilogram, scaled by soiling."""
    if soil not in SOIL_FACTOR_QUARTERS:
        raise ValueError(f"soil must be 1 (light), 2 (normal) or 3 (heavy), found {soil!r}")
    return 20 + mass_g * ml_per_kg * SOIL_FACTOR_QUARTERS[soil] // 4000
