"""RFID reader at an appliance's door: the inventory of tagged items inside.

Every item put in yields an ``rfid.in`` sample and every item taken out an ``rfid.out`` sample,
with ``tag`` = the item's EPC, ``text`` = its name and ``value`` = the number of tagged items
inside after the move.
"""

from __future__ import annotations

from collections.abc import Iterable

from firmware_sim.items import Item
from firmware_sim.samples import MAX_TAG_LEN, MAX_TEXT_LEN, Sample

SENSOR_IN = "rfid.in"
SENSOR_OUT = "rfid.out"


class InventoryError(ValueError):
    """An item was inserted twice or has no usable EPC."""


class RfidInventory:
    __slots__ = ("_items", "owner")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._items: dict[str, Item] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, epc: object) -> bool:
        return epc in self._items

    def get(self, epc: str) -> Item:
        return self._items[epc]

    def items(self) -> list[Item]:
        return list(self._items.values())

    def check_insertable(self, items: Iterable[Item]) -> list[Item]:
        """The batch as a list; raises InventoryError (before anything changes) when an EPC is
        already inside or repeated in the batch."""
        batch = list(items)
        seen: set[str] = set()
        for item in batch:
            if not 0 < len(item.epc) <= MAX_TAG_LEN:
                raise InventoryError(
                    f"{self.owner}: item {item.name!r}: EPC length must be 1..{MAX_TAG_LEN}, "
                    f"found {len(item.epc)}"
                )
            if item.epc in self._items or item.epc in seen:
                raise InventoryError(f"{self.owner}: item {item.epc} is already inside")
            seen.add(item.epc)
        return batch

    def insert(self, item: Item, t_ms: int) -> Sample:
        if item.epc in self._items:
            raise InventoryError(f"{self.owner}: item {item.epc} is already inside")
        self._items[item.epc] = item
        return Sample(t_ms, SENSOR_IN, len(self._items), item.epc, item.name[:MAX_TEXT_LEN])

    def remove(self, epcs: Iterable[str], t_ms: int) -> tuple[list[Item], list[Sample]]:
        """Remove the items whose EPC is inside (others are ignored), in the order given."""
        taken: list[Item] = []
        samples: list[Sample] = []
        for epc in epcs:
            item = self._items.pop(epc, None)
            if item is None:
                continue
            taken.append(item)
            samples.append(
                Sample(t_ms, SENSOR_OUT, len(self._items), item.epc, item.name[:MAX_TEXT_LEN])
            )
        return taken, samples
