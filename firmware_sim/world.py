"""The world of tagged items: who holds which item, and the schedules that move items around.

Households shop (food goes into the fridge), eat (food leaves the fridge and is gone for good) and
do laundry (garments go from the wardrobe into the washer and back). A blood chain collects
donations into a blood-station freezer, a transport freezer carries them (with loading and
unloading gaps on the way) to a hospital freezer, where transfusions use them up.

The world is a discrete-event model: ``next_event_ms()`` says when it next acts and
``run_until(now_ms, appliances)`` performs every due event, in time order, by calling the
appliances' ``insert_items`` / ``remove_items`` (and the washer's cycle) at the event's time.
It never reads a clock. Randomness comes from one ``random.Random`` per site or blood route,
derived from the seed, so a household's life does not change when another household is added.

The world is the single owner of item locations: an item is in at most one place at a time
(an appliance, a wardrobe, a transit leg, or consumed), and ``movements`` records every move.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.items import Item
from firmware_sim.samples import Sample

MIN_MS = 60_000
HOUR_MS = 60 * MIN_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)

CONSUMED = "consumed"
NEW = "new"
PEEK_MS = 8_000  # a look into the fridge at a meal when nothing is taken
LAUNDRY_START_DELAY_MS = 2 * MIN_MS  # between loading the drum and pressing start
WASHER_POLL_MS = 5 * MIN_MS  # how often the household checks whether the cycle is done
SITE_KINDS = ("household", "street", "blood_station", "transport", "hospital")


class WorldError(ValueError):
    """The world cannot be built as specified (a route names a missing freezer, ...)."""


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True, slots=True)
class ShoppingSpec:
    """A trip every ``every_ms`` at minute-of-day ``at_min`` (UTC) +- ``jitter_ms``; each trip
    puts ``items`` (min, max) food items into the household's first refrigerator."""

    enabled: bool = True
    every_ms: int = 3 * DAY_MS
    at_min: int = 17 * 60 + 30
    jitter_ms: int = 45 * MIN_MS
    items: tuple[int, int] = (6, 12)


@dataclass(frozen=True, slots=True)
class MealSpec:
    """At each minute-of-day in ``at_min`` (+- jitter) a household eats ``items`` (min, max)
    items from its fridges, oldest best-before first; expired food is thrown away then too."""

    enabled: bool = True
    at_min: tuple[int, ...] = (7 * 60 + 30, 12 * 60 + 30, 19 * 60)
    jitter_ms: int = 20 * MIN_MS
    items: tuple[int, int] = (0, 3)


@dataclass(frozen=True, slots=True)
class LaundrySpec:
    """On ``weekdays`` (Monday = 0) at ``at_min`` (+- jitter) a household loads ``garments``
    (min, max) from its wardrobe of ``wardrobe`` garments into its washer and starts a cycle;
    ``unload_ms`` after the cycle ends the garments go back to the wardrobe."""

    enabled: bool = True
    weekdays: tuple[int, ...] = (2, 5)
    at_min: int = 10 * 60
    jitter_ms: int = 60 * MIN_MS
    garments: tuple[int, int] = (3, 6)
    wardrobe: int = 14
    unload_ms: int = 30 * MIN_MS


@dataclass(frozen=True, slots=True)
class BloodRoute:
    """Device names of one chain: station freezer -> transport freezer -> hospital freezer."""

    station: str
    transport: str
    hospital: str


@dataclass(frozen=True, slots=True)
class BloodSpec:
    """Donation sessions every ``donation_every_ms`` at ``donation_at_min`` fill the station
    freezer with ``bags`` (min, max); a transport run every ``transport_every_ms`` at
    ``transport_at_min`` takes every bag from the station freezer, loads it into the transport
    freezer ``load_ms`` later, drives ``transit_ms``, and stores it in the hospital freezer
    ``unload_ms`` after arrival. Every ``transfusion_every_ms`` the hospital uses ``transfusions``
    (min, max) bags, oldest first. Empty ``routes``: one route per station/transport/hospital
    freezer triple, pairing them in device order (cycling the shorter lists)."""

    enabled: bool = True
    donation_every_ms: int = DAY_MS
    donation_at_min: int = 9 * 60
    bags: tuple[int, int] = (2, 6)
    transport_every_ms: int = DAY_MS
    transport_at_min: int = 15 * 60
    load_ms: int = 15 * MIN_MS
    transit_ms: int = 3 * HOUR_MS
    unload_ms: int = 20 * MIN_MS
    transfusion_every_ms: int = 8 * HOUR_MS
    transfusions: tuple[int, int] = (0, 3)
    jitter_ms: int = 30 * MIN_MS
    routes: tuple[BloodRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class WorldSpec:
    shopping: ShoppingSpec = field(default_factory=ShoppingSpec)
    meals: MealSpec = field(default_factory=MealSpec)
    laundry: LaundrySpec = field(default_factory=LaundrySpec)
    blood: BloodSpec = field(default_factory=BloodSpec)


@dataclass(frozen=True, slots=True)
class WorldDevice:
    """What the world needs to know about a device: its name, kind and where it stands."""

    name: str
    kind: str
    site: str
    site_kind: str


@dataclass(frozen=True, slots=True)
class Movement:
    """An item moved from one place to another at ``time_ms``. Places: ``appliance:<name>``,
    ``wardrobe:<site>``, ``transit:<route>``, ``new`` (just made), ``consumed``."""

    time_ms: int
    epc: str
    src: str
    dst: str


# --------------------------------------------------------------------------- catalogues

# (name, GS1 company prefix, item reference, shelf life in days); prefix + item ref = 13 digits.
FOODS: tuple[tuple[str, str, str, int], ...] = (
    ("milk 1 l", "4012345", "000101", 8),
    ("yoghurt 500 g", "4012345", "000214", 14),
    ("butter 250 g", "4012345", "000322", 40),
    ("cheddar 200 g", "5412345", "001007", 30),
    ("ham 150 g", "5412345", "001115", 6),
    ("eggs x6", "8712345", "002013", 21),
    ("orange juice 1 l", "8712345", "002208", 10),
    ("lettuce", "8712345", "002404", 4),
    ("chicken breast 400 g", "7612345", "003001", 3),
    ("salmon fillet 250 g", "7612345", "003109", 2),
    ("tomatoes 500 g", "7612345", "003206", 7),
    ("cream 200 ml", "4012345", "000430", 12),
)

# (name, brand, GS1 company prefix, item reference, fibres percent, care label max C, mass g,
#  colours it comes in)
GARMENTS: tuple[tuple[str, str, str, str, dict[str, int], int, int, tuple[str, ...]], ...] = (
    (
        "t-shirt",
        "Nordweave",
        "7312345",
        "100011",
        {"cotton": 100},
        60,
        180,
        ("white", "colour", "dark"),
    ),
    ("wool sweater", "Nordweave", "7312345", "100127", {"wool": 100}, 30, 450, ("colour", "dark")),
    ("jeans", "Denimco", "8012345", "200016", {"cotton": 98, "elastane": 2}, 40, 650, ("dark",)),
    (
        "sports shirt",
        "Denimco",
        "8012345",
        "200121",
        {"polyester": 100},
        40,
        150,
        ("colour", "dark"),
    ),
    ("bed sheet", "Casaluna", "8412345", "300019", {"cotton": 100}, 90, 700, ("white",)),
    (
        "blouse",
        "Casaluna",
        "8412345",
        "300124",
        {"viscose": 70, "polyester": 30},
        30,
        200,
        ("white", "colour"),
    ),
    (
        "socks",
        "Nordweave",
        "7312345",
        "100232",
        {"cotton": 80, "polyamide": 18, "elastane": 2},
        40,
        60,
        ("white", "dark"),
    ),
    ("towel", "Casaluna", "8412345", "300221", {"cotton": 100}, 90, 500, ("white", "colour")),
)

BLOOD_PREFIX = "9501101"  # GS1 company prefix of the (fictional) blood service
SGTIN_SERIAL_MAX = 2**38 - 1  # SGTIN-96 serial field


def sgtin_uri(company_prefix: str, item_ref: str, serial: int) -> str:
    """SGTIN pure-identity URI, checked against the SGTIN-96 field limits."""
    if not (
        company_prefix.isdigit()
        and item_ref.isdigit()
        and 6 <= len(company_prefix) <= 12
        and len(company_prefix) + len(item_ref) == 13
    ):
        raise WorldError(
            f"SGTIN needs a 6..12 digit company prefix and item reference of 13 "
            f"digits together, found {company_prefix!r}.{item_ref!r}"
        )
    if not 0 <= serial <= SGTIN_SERIAL_MAX:
        raise WorldError(f"SGTIN-96 serial must be 0..{SGTIN_SERIAL_MAX}, found {serial}")
    return f"urn:epc:id:sgtin:{company_prefix}.{item_ref}.{serial}"


def giai_uri(company_prefix: str, asset_ref: int) -> str:
    """GIAI pure-identity URI with a numeric asset reference (fits GIAI-96)."""
    if asset_ref < 0 or asset_ref >= 2 ** (82 - 24):  # 7-digit prefix partition
        raise WorldError(f"GIAI-96 asset reference out of range: {asset_ref}")
    return f"urn:epc:id:giai:{company_prefix}.{asset_ref}"


def utc_year(time_ms: int) -> int:
    """Calendar year (UTC) of a Unix millisecond time, without floats or time zones."""
    days = time_ms // DAY_MS
    # civil-from-days (H. Hinnant), integer only
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0)


def weekday(time_ms: int) -> int:
    """Monday = 0 ... Sunday = 6 (UTC)."""
    return (time_ms // DAY_MS + _EPOCH_WEEKDAY) % 7


class ItemFactory:
    """Makes items with unique EPCs: serials count up per GTIN from a seeded base."""

    def __init__(self, seed: int | str) -> None:
        rng = random.Random(f"{seed}/items")
        self._serial_base = rng.randrange(10**6, 10**9)
        self._serials: dict[tuple[str, str], int] = {}
        self._donations: dict[tuple[int, int], int] = {}

    def _serial(self, prefix: str, ref: str) -> int:
        n = self._serials.get((prefix, ref), self._serial_base)
        self._serials[(prefix, ref)] = n + 1
        return n

    def food(self, rng: random.Random, now_ms: int) -> Item:
        name, prefix, ref, shelf_days = rng.choice(FOODS)
        best_before = (now_ms // DAY_MS + shelf_days + rng.randint(-1, 2)) * DAY_MS
        return Item(
            epc=sgtin_uri(prefix, ref, self._serial(prefix, ref)),
            kind="food",
            name=name,
            best_before_ms=max(best_before, now_ms + DAY_MS),
        )

    def garment(self, rng: random.Random) -> Item:
        name, brand, prefix, ref, fibres, care, mass, colours = rng.choice(GARMENTS)
        return Item(
            epc=sgtin_uri(prefix, ref, self._serial(prefix, ref)),
            kind="garment",
            name=name,
            brand=brand,
            fibres=dict(fibres),
            care_max_c=care,
            wash_count=rng.randint(0, 40),
            colour=rng.choice(colours),
            mass_g=mass,
        )

    def blood_bag(self, station_no: int, now_ms: int) -> Item:
        """A plasma unit with an ISBT 128-like donation identification number (facility code,
        two-digit year, six-digit sequence) that is also the GIAI asset reference."""
        yy = utc_year(now_ms) % 100
        seq = self._donations.get((station_no, yy), 1)
        self._donations[(station_no, yy)] = seq + 1
        din = f"W{station_no:04d}{yy:02d}{seq:06d}"
        asset = int(f"{station_no}{yy:02d}{seq:06d}")
        return Item(
            epc=giai_uri(BLOOD_PREFIX, asset),
            kind="blood",
            name="plasma unit",
            donation_id=din,
            product="plasma",
            best_before_ms=now_ms + 365 * DAY_MS,
        )


# --------------------------------------------------------------------------- the world

Handler = Callable[..., list[tuple[str, Sample]]]


def appliance_place(name: str) -> str:
    return f"appliance:{name}"


class World:
    """Items, their places, and the event schedule that moves them between appliances."""

    def __init__(
        self,
        spec: WorldSpec,
        devices: Sequence[WorldDevice],
        seed: int | str,
        start_ms: int,
        *,
        keep_movements: bool = True,
    ) -> None:
        self.spec = spec
        self.start_ms = start_ms
        self.items: dict[str, Item] = {}
        self.place: dict[str, str] = {}  # epc -> place (see Movement)
        self.movements: list[Movement] = []
        self._by_place: dict[str, dict[str, None]] = {}  # place -> EPCs there, arrival order
        self._keep = keep_movements
        self._seed = seed
        self._factory = ItemFactory(seed)
        self._queue: list[tuple[int, int, Handler, tuple[Any, ...]]] = []
        self._seq = 0
        self._rngs: dict[str, random.Random] = {}
        self._washing: dict[str, list[str]] = {}  # washer name -> garment EPCs inside
        self._schedule_households(devices)
        self._schedule_blood(devices)

    # -- bookkeeping

    def rng(self, key: str) -> random.Random:
        r = self._rngs.get(key)
        if r is None:
            r = self._rngs[key] = random.Random(f"{self._seed}/world/{key}")
        return r

    def _at(self, t: int, handler: Handler, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, handler, args))

    def _move(self, t: int, epc: str, dst: str) -> None:
        src = self.place[epc]
        if src == dst:
            raise WorldError(f"{epc}: moved from {src} to itself at {t} ms")
        if src == CONSUMED:
            raise WorldError(f"{epc}: consumed at an earlier time, cannot move to {dst}")
        del self._by_place[src][epc]
        self.place[epc] = dst
        if dst != CONSUMED:
            self._by_place.setdefault(dst, {})[epc] = None
        if self._keep:
            self.movements.append(Movement(t, epc, src, dst))

    def _register(self, item: Item) -> Item:
        if item.epc in self.items:
            raise WorldError(f"duplicate EPC {item.epc}")
        self.items[item.epc] = item
        self.place[item.epc] = NEW
        self._by_place.setdefault(NEW, {})[item.epc] = None
        return item

    def at_place(self, place: str) -> list[str]:
        """EPCs currently at ``place``, in the order they arrived there."""
        return list(self._by_place.get(place, ()))

    def next_event_ms(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    def run_until(self, now_ms: int, appliances: Mapping[str, Any]) -> list[tuple[str, Sample]]:
        """Perform every event due at or before ``now_ms``; return (device, sample) in order."""
        out: list[tuple[str, Sample]] = []
        while self._queue and self._queue[0][0] <= now_ms:
            t, _, handler, args = heapq.heappop(self._queue)
            out.extend(handler(t, appliances, *args))
        return out

    # -- helpers that touch appliances (the only calls into appliance models)

    def _insert(
        self,
        t: int,
        appliances: Mapping[str, Any],
        device: str,
        items: Sequence[Item],
        out: list[tuple[str, Sample]],
    ) -> None:
        if not items:
            return
        out.extend((device, s) for s in appliances[device].insert_items(items, t))
        for item in items:
            self._move(t, item.epc, appliance_place(device))

    def _remove(
        self,
        t: int,
        appliances: Mapping[str, Any],
        device: str,
        epcs: Sequence[str],
        dst: str,
        out: list[tuple[str, Sample]],
    ) -> list[Item]:
        if not epcs:
            return []
        removed, samples = appliances[device].remove_items(epcs, t)
        out.extend((device, s) for s in samples)
        if [i.epc for i in removed] != list(epcs):
            raise WorldError(
                f"{device} at {t} ms: asked to remove {list(epcs)}, the appliance "
                f"gave {[i.epc for i in removed]}"
            )
        for item in removed:
            self._move(t, item.epc, dst)
        return list(removed)

    # -- households

    def _schedule_households(self, devices: Sequence[WorldDevice]) -> None:
        by_site: dict[str, list[WorldDevice]] = {}
        for d in devices:
            if d.site_kind == "household":
                by_site.setdefault(d.site, []).append(d)
        spec = self.spec
        for site, devs in by_site.items():
            fridges = tuple(d.name for d in devs if d.kind == "refrigerator")
            washers = tuple(d.name for d in devs if d.kind == "washing_machine")
            rng = self.rng(site)
            if fridges and spec.shopping.enabled:
                self._at(
                    self._first(spec.shopping.at_min, spec.shopping.jitter_ms, rng),
                    self._shop,
                    site,
                    fridges,
                    self._first_nominal(spec.shopping.at_min),
                )
            if fridges and spec.meals.enabled:
                for k, minute in enumerate(spec.meals.at_min):
                    nominal = self._first_nominal(minute)
                    self._at(
                        self._jitter(nominal, spec.meals.jitter_ms, rng) + k,
                        self._meal,
                        site,
                        fridges,
                        nominal,
                    )
            if washers and spec.laundry.enabled and spec.laundry.weekdays:
                for _ in range(spec.laundry.wardrobe):
                    garment = self._register(self._factory.garment(rng))
                    self._move(self.start_ms, garment.epc, f"wardrobe:{site}")
                nominal = self._next_weekday_nominal(self._first_nominal(spec.laundry.at_min))
                self._at(
                    self._jitter(nominal, spec.laundry.jitter_ms, rng),
                    self._laundry,
                    site,
                    washers[0],
                    nominal,
                )

    def _first_nominal(self, at_min: int) -> int:
        day0 = self.start_ms - self.start_ms % DAY_MS
        t = day0 + at_min * MIN_MS
        return t if t >= self.start_ms else t + DAY_MS

    def _next_weekday_nominal(self, t: int) -> int:
        while weekday(t) not in self.spec.laundry.weekdays:
            t += DAY_MS
        return t

    def _jitter(self, nominal: int, jitter_ms: int, rng: random.Random) -> int:
        j = rng.randint(-jitter_ms, jitter_ms) if jitter_ms else 0
        return max(self.start_ms, nominal + j)

    def _first(self, at_min: int, jitter_ms: int, rng: random.Random) -> int:
        return self._jitter(self._first_nominal(at_min), jitter_ms, rng)

    def _shop(
        self,
        t: int,
        appliances: Mapping[str, Any],
        site: str,
        fridges: tuple[str, ...],
        nominal: int,
    ) -> list[tuple[str, Sample]]:
        spec, rng = self.spec.shopping, self.rng(site)
        items = [
            self._register(self._factory.food(rng, t)) for _ in range(rng.randint(*spec.items))
        ]
        out: list[tuple[str, Sample]] = []
        self._insert(t, appliances, fridges[0], items, out)
        nxt = nominal + spec.every_ms
        self._at(max(t + 1, self._jitter(nxt, spec.jitter_ms, rng)), self._shop, site, fridges, nxt)
        return out

    def _meal(
        self,
        t: int,
        appliances: Mapping[str, Any],
        site: str,
        fridges: tuple[str, ...],
        nominal: int,
    ) -> list[tuple[str, Sample]]:
        spec, rng = self.spec.meals, self.rng(site)
        out: list[tuple[str, Sample]] = []
        wanted = rng.randint(*spec.items)
        taken = 0
        for fridge in fridges:
            inside = [self.items[e] for e in self.at_place(appliance_place(fridge))]
            expired = [
                i.epc for i in inside if i.best_before_ms is not None and i.best_before_ms <= t
            ]
            gone = set(expired)
            fresh = sorted(
                (i for i in inside if i.epc not in gone),
                key=lambda i: (i.best_before_ms or 0, i.epc),
            )
            eaten = [i.epc for i in fresh[:wanted]]
            wanted -= len(eaten)
            taken += len(self._remove(t, appliances, fridge, expired + eaten, CONSUMED, out))
        if not taken:  # nothing taken out: someone still opens the door and looks
            out.extend((fridges[0], s) for s in appliances[fridges[0]].open_door(t, PEEK_MS))
        nxt = nominal + DAY_MS
        self._at(max(t + 1, self._jitter(nxt, spec.jitter_ms, rng)), self._meal, site, fridges, nxt)
        return out

    def _laundry(
        self, t: int, appliances: Mapping[str, Any], site: str, washer: str, nominal: int
    ) -> list[tuple[str, Sample]]:
        spec, rng = self.spec.laundry, self.rng(site)
        out: list[tuple[str, Sample]] = []
        nxt = self._next_weekday_nominal(nominal + DAY_MS)
        self._at(
            max(t + 1, self._jitter(nxt, spec.jitter_ms, rng)), self._laundry, site, washer, nxt
        )
        if washer in self._washing:  # previous load still inside: skip this laundry day
            return out
        wardrobe = self.at_place(f"wardrobe:{site}")
        n = min(len(wardrobe), rng.randint(*spec.garments))
        if n == 0:
            return out
        load = [self.items[e] for e in sorted(rng.sample(wardrobe, n))]
        self._insert(t, appliances, washer, load, out)
        self._washing[washer] = [i.epc for i in load]
        self._at(t + LAUNDRY_START_DELAY_MS, self._start_washer, site, washer, rng.randint(1, 3))
        return out

    def _start_washer(
        self, t: int, appliances: Mapping[str, Any], site: str, washer: str, soil: int
    ) -> list[tuple[str, Sample]]:
        out = [(washer, s) for s in appliances[washer].start_cycle(t, soil=soil)]
        if appliances[washer].running:
            self._at(t + WASHER_POLL_MS, self._poll_washer, site, washer)
        else:  # the machine refused the load (a garment must not be washed): take it out
            self._at(t + LAUNDRY_START_DELAY_MS, self._unload_washer, site, washer)
        return out

    def _poll_washer(
        self, t: int, appliances: Mapping[str, Any], site: str, washer: str
    ) -> list[tuple[str, Sample]]:
        machine = appliances[washer]
        out = [(washer, s) for s in machine.advance(t)]
        if machine.running:
            self._at(t + WASHER_POLL_MS, self._poll_washer, site, washer)
        else:
            self._at(t + self.spec.laundry.unload_ms, self._unload_washer, site, washer)
        return out

    def _unload_washer(
        self, t: int, appliances: Mapping[str, Any], site: str, washer: str
    ) -> list[tuple[str, Sample]]:
        out: list[tuple[str, Sample]] = []
        epcs = self._washing.pop(washer)
        self._remove(t, appliances, washer, epcs, f"wardrobe:{site}", out)
        return out

    # -- blood logistics

    def _routes(self, devices: Sequence[WorldDevice]) -> tuple[BloodRoute, ...]:
        spec = self.spec.blood
        freezers = {d.name: d for d in devices if d.kind == "medical_freezer"}
        if spec.routes:
            for r in spec.routes:
                for role, name, site_kind in (
                    ("station", r.station, "blood_station"),
                    ("transport", r.transport, "transport"),
                    ("hospital", r.hospital, "hospital"),
                ):
                    if name not in freezers:
                        raise WorldError(
                            f"blood route {role} {name!r} is not a medical freezer "
                            f"of the fleet; freezers: {sorted(freezers)}"
                        )
                    if freezers[name].site_kind != site_kind:
                        raise WorldError(
                            f"blood route {role} {name!r} stands at a "
                            f"{freezers[name].site_kind} site, expected {site_kind}"
                        )
            return spec.routes
        by_kind = {
            k: [d.name for d in freezers.values() if d.site_kind == k]
            for k in ("blood_station", "transport", "hospital")
        }
        if not all(by_kind.values()):
            return ()
        n = max(len(v) for v in by_kind.values())
        return tuple(
            BloodRoute(
                by_kind["blood_station"][i % len(by_kind["blood_station"])],
                by_kind["transport"][i % len(by_kind["transport"])],
                by_kind["hospital"][i % len(by_kind["hospital"])],
            )
            for i in range(n)
        )

    def _schedule_blood(self, devices: Sequence[WorldDevice]) -> None:
        spec = self.spec.blood
        self.routes = self._routes(devices) if spec.enabled else ()
        stations = sorted({r.station for r in self.routes})
        hospitals = sorted({r.hospital for r in self.routes})
        for no, station in enumerate(stations, start=1):
            rng = self.rng(station)
            nominal = self._first_nominal(spec.donation_at_min)
            self._at(self._jitter(nominal, spec.jitter_ms, rng), self._donate, station, no, nominal)
        for k in range(len(self.routes)):
            rng = self.rng(f"route-{k}")
            nominal = self._first_nominal(spec.transport_at_min)
            self._at(self._jitter(nominal, spec.jitter_ms, rng), self._pick_up, k, nominal)
        for hospital in hospitals:
            nominal = self.start_ms + spec.transfusion_every_ms
            self._at(nominal, self._transfuse, hospital, nominal)

    def _donate(
        self, t: int, appliances: Mapping[str, Any], station: str, no: int, nominal: int
    ) -> list[tuple[str, Sample]]:
        spec, rng = self.spec.blood, self.rng(station)
        bags = [
            self._register(self._factory.blood_bag(no, t)) for _ in range(rng.randint(*spec.bags))
        ]
        out: list[tuple[str, Sample]] = []
        self._insert(t, appliances, station, bags, out)
        nxt = nominal + spec.donation_every_ms
        self._at(max(t + 1, self._jitter(nxt, spec.jitter_ms, rng)), self._donate, station, no, nxt)
        return out

    def _pick_up(
        self, t: int, appliances: Mapping[str, Any], k: int, nominal: int
    ) -> list[tuple[str, Sample]]:
        spec, route, rng = self.spec.blood, self.routes[k], self.rng(f"route-{k}")
        out: list[tuple[str, Sample]] = []
        nxt = nominal + spec.transport_every_ms
        self._at(max(t + 1, self._jitter(nxt, spec.jitter_ms, rng)), self._pick_up, k, nxt)
        epcs = self.at_place(appliance_place(route.station))
        bags = self._remove(t, appliances, route.station, epcs, f"transit:route-{k}", out)
        if bags:
            self._at(t + spec.load_ms, self._load_transport, k, tuple(b.epc for b in bags))
        return out

    def _load_transport(
        self, t: int, appliances: Mapping[str, Any], k: int, epcs: tuple[str, ...]
    ) -> list[tuple[str, Sample]]:
        spec, route = self.spec.blood, self.routes[k]
        out: list[tuple[str, Sample]] = []
        self._insert(t, appliances, route.transport, [self.items[e] for e in epcs], out)
        self._at(t + spec.transit_ms, self._arrive, k, epcs)
        return out

    def _arrive(
        self, t: int, appliances: Mapping[str, Any], k: int, epcs: tuple[str, ...]
    ) -> list[tuple[str, Sample]]:
        spec, route = self.spec.blood, self.routes[k]
        out: list[tuple[str, Sample]] = []
        bags = self._remove(t, appliances, route.transport, epcs, f"transit:route-{k}", out)
        if bags:
            self._at(t + spec.unload_ms, self._store_at_hospital, k, tuple(b.epc for b in bags))
        return out

    def _store_at_hospital(
        self, t: int, appliances: Mapping[str, Any], k: int, epcs: tuple[str, ...]
    ) -> list[tuple[str, Sample]]:
        route = self.routes[k]
        out: list[tuple[str, Sample]] = []
        self._insert(t, appliances, route.hospital, [self.items[e] for e in epcs], out)
        return out

    def _transfuse(
        self, t: int, appliances: Mapping[str, Any], hospital: str, nominal: int
    ) -> list[tuple[str, Sample]]:
        spec, rng = self.spec.blood, self.rng(hospital)
        out: list[tuple[str, Sample]] = []
        n = rng.randint(*spec.transfusions)
        stock = self.at_place(appliance_place(hospital))
        self._remove(t, appliances, hospital, stock[:n], CONSUMED, out)
        nxt = nominal + spec.transfusion_every_ms
        self._at(nxt, self._transfuse, hospital, nxt)
        return out
