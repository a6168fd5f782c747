"""Tagged items that move through the fleet: food (SGTIN-96), garments, blood bags.

An Item is mutable only where the physical thing changes (a garment's wash count); everything
else is fixed at creation. EPCs are GS1 pure-identity URIs (urn:epc:id:sgtin:...), the same
strings a real RFID reader's EPC decodes to, so traces cross from simulation to real readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Item:
    epc: str
    kind: str  # "food" | "garment" | "blood"
    name: str  # human label: "milk 1 l", "wool sweater", "plasma unit"
    # food
    best_before_ms: int | None = None
    # garment "ID card"
    brand: str | None = None
    fibres: dict[str, int] = field(default_factory=dict)  # fibre -> percent, sums to 100
    care_max_c: int | None = None  # care-label maximum wash temperature, degrees C; 0: do not wash
    wash_count: int = 0
    colour: str | None = None  # garment: "white" | "colour" | "dark"; None: unknown
    # blood
    donation_id: str | None = None
    product: str | None = None  # "plasma" | "red-cells" | "platelets"
    # any kind: mass in grams; None lets the appliance assume its configured typical mass
    mass_g: int | None = None
