"""World invariants over a simulated week: items in one place at a time, blood moves in order,
consumed food is gone, EPCs are well-formed, and the same seed gives the same world."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from firmware_sim.fleet import DeviceSpec, Fleet, FleetSpec, SiteSpec
from firmware_sim.samples import Sample
from firmware_sim.world import (
    CONSUMED,
    DAY_MS,
    HOUR_MS,
    MIN_MS,
    BloodRoute,
    BloodSpec,
    LaundrySpec,
    MealSpec,
    Movement,
    ShoppingSpec,
    WorldDevice,
    WorldError,
    WorldSpec,
    giai_uri,
    sgtin_uri,
    utc_year,
    weekday,
)

START = 1_736_121_600_000  # 2025-01-06T00:00:00Z, a Monday
SGTIN_RE = re.compile(r"^urn:epc:id:sgtin:(\d{6,12})\.(\d{1,7})\.([1-9]\d*|0)$")
GIAI_RE = re.compile(r"^urn:epc:id:giai:(\d{7})\.([1-9]\d*)$")
DIN_RE = re.compile(r"^W\d{4}\d{2}\d{6}$")


def make_spec(
    seed: int = 11, world: WorldSpec | None = None, *, households_only: bool = False
) -> FleetSpec:
    sites = (
        SiteSpec("home-1", "household"),
        SiteSpec("home-2", "household"),
        SiteSpec("station", "blood_station"),
        SiteSpec("van", "transport"),
        SiteSpec("hospital", "hospital"),
    )
    devices: tuple[DeviceSpec, ...] = (
        DeviceSpec("fridge-1", "refrigerator", "home-1"),
        DeviceSpec("washer-1", "washing_machine", "home-1"),
        DeviceSpec("fridge-2", "refrigerator", "home-2"),
        DeviceSpec("washer-2", "washing_machine", "home-2"),
        DeviceSpec("f-station", "medical_freezer", "station"),
        DeviceSpec("f-van", "medical_freezer", "van"),
        DeviceSpec("f-hospital", "medical_freezer", "hospital"),
    )
    if households_only:
        devices = tuple(d for d in devices if d.site.startswith("home"))
    return FleetSpec("t", seed, START, sites, devices, world or WorldSpec())


Week = tuple[Fleet, list[tuple[str, Sample]]]


@pytest.fixture(scope="module")
def week() -> Week:
    fleet = Fleet(make_spec())
    return fleet, list(fleet.run_until(START + 7 * DAY_MS))


def rfid_events(samples: list[tuple[str, Sample]]) -> dict[str, list[tuple[int, str, str]]]:
    """EPC -> [(time, 'in'|'out', device)] from the trace's RFID samples."""
    out: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for device, s in samples:
        if s.sensor in ("rfid.in", "rfid.out"):
            assert s.tag is not None
            out[s.tag].append((s.time_ms, s.sensor[5:], device))
    return out


def test_the_week_has_every_kind_of_movement(week: Week) -> None:
    fleet, _ = week
    kinds = {(m.src.split(":")[0], m.dst.split(":")[0]) for m in fleet.world.movements}
    assert {
        ("new", "appliance"),
        ("appliance", CONSUMED),
        ("wardrobe", "appliance"),
        ("appliance", "wardrobe"),
        ("appliance", "transit"),
        ("transit", "appliance"),
    } <= kinds
    assert fleet.world.routes == (BloodRoute("f-station", "f-van", "f-hospital"),)


def test_an_item_is_never_in_two_appliances_at_once(week: Week) -> None:
    fleet, samples = week
    events = rfid_events(samples)
    assert len(events) > 60
    for epc, evs in events.items():
        inside: str | None = None
        for _, what, device in evs:
            if what == "in":
                assert inside is None, f"{epc} read in at {device} while inside {inside}"
                inside = device
            else:
                assert inside == device, f"{epc} read out at {device} while inside {inside}"
                inside = None
        # the world's bookkeeping agrees with the last RFID read
        expected = f"appliance:{inside}" if inside else None
        place = fleet.world.place[epc]
        assert (place if place.startswith("appliance:") else None) == expected


def test_world_places_match_the_appliances_inventories(week: Week) -> None:
    fleet, _ = week
    for name, app in fleet.appliances.items():
        assert [i.epc for i in app.items()] == fleet.world.at_place(f"appliance:{name}")


def test_blood_goes_station_then_transport_then_hospital_with_transit_gaps(
    week: Week,
) -> None:
    fleet, samples = week
    spec = fleet.spec.world.blood
    events = rfid_events(samples)
    bags = [epc for epc in events if epc.startswith("urn:epc:id:giai:")]
    arrived = 0
    for epc in bags:
        stays = [(t, d) for t, what, d in events[epc] if what == "in"]
        leaves = [(t, d) for t, what, d in events[epc] if what == "out"]
        devices = [d for _, d in stays]
        assert devices == ["f-station", "f-van", "f-hospital"][: len(devices)], (epc, devices)
        if len(stays) >= 2:
            assert stays[1][0] - leaves[0][0] == spec.load_ms
        if len(stays) == 3:
            assert stays[2][0] - leaves[1][0] == spec.unload_ms
            assert leaves[1][0] - stays[1][0] == spec.transit_ms
            arrived += 1
    assert arrived >= 10


def test_consumed_food_disappears_for_good(week: Week) -> None:
    fleet, samples = week
    consumed = {m.epc: m.time_ms for m in fleet.world.movements if m.dst == CONSUMED}
    assert sum(epc.startswith("urn:epc:id:sgtin:") for epc in consumed) > 20
    assert any(epc.startswith("urn:epc:id:giai:") for epc in consumed)  # transfusions
    for device, s in samples:
        if s.tag in consumed:
            assert s.time_ms <= consumed[s.tag], (device, s)
    for app in fleet.appliances.values():
        assert not {i.epc for i in app.items()} & consumed.keys()


def test_laundry_returns_garments_to_the_wardrobe_washed(week: Week) -> None:
    fleet, samples = week
    washed = [(d, s) for d, s in samples if s.sensor == "wash.garment"]
    assert washed
    for device, s in washed:
        site = "home-" + device[-1]
        # back home at the end
        assert s.tag is not None and fleet.world.place[s.tag] == f"wardrobe:{site}"
    # Wednesday and Saturday are laundry days by default
    days = {weekday(s.time_ms) for _, s in samples if s.sensor == "wash.programme"}
    assert days <= {2, 5}


def test_items_carry_their_identity(week: Week) -> None:
    fleet, _ = week
    kinds = defaultdict(list)
    for item in fleet.world.items.values():
        kinds[item.kind].append(item)
    assert set(kinds) == {"food", "garment", "blood"}
    for food in kinds["food"]:
        m = SGTIN_RE.match(food.epc)
        assert m and len(m.group(1) + m.group(2)) == 13 and int(m.group(3)) < 2**38
        assert food.best_before_ms is not None and food.best_before_ms > START
    for g in kinds["garment"]:
        assert SGTIN_RE.match(g.epc)
        assert g.brand and g.care_max_c in (30, 40, 60, 90) and sum(g.fibres.values()) == 100
    for bag in kinds["blood"]:
        assert GIAI_RE.match(bag.epc) and bag.donation_id and DIN_RE.match(bag.donation_id)
        assert bag.epc.endswith(bag.donation_id[1:].lstrip("0"))
    assert len({i.epc for i in fleet.world.items.values()}) == len(fleet.world.items)


def test_same_seed_same_world_other_seed_other_world() -> None:
    def movements(seed: int) -> list[Movement]:
        fleet = Fleet(make_spec(seed))
        list(fleet.run_until(START + 2 * DAY_MS))
        return fleet.world.movements

    first = movements(5)
    assert first == movements(5)
    assert first != movements(6)


def test_schedules_follow_the_spec() -> None:
    world = WorldSpec(
        shopping=ShoppingSpec(every_ms=DAY_MS, at_min=18 * 60, jitter_ms=0, items=(2, 2)),
        meals=MealSpec(enabled=False),
        laundry=LaundrySpec(enabled=False),
        blood=BloodSpec(enabled=False),
    )
    fleet = Fleet(make_spec(world=world, households_only=True))
    samples = list(fleet.run_until(START + 3 * DAY_MS))
    ins = [(d, s.time_ms) for d, s in samples if s.sensor == "rfid.in"]
    expected = [START + k * DAY_MS + 18 * HOUR_MS for k in range(3)]
    assert [t for d, t in ins if d == "fridge-1"] == [t for t in expected for _ in range(2)]
    assert [t for d, t in ins if d == "fridge-2"] == [t for t in expected for _ in range(2)]
    assert not [s for _, s in samples if s.sensor == "rfid.out"]
    assert not [d for d, _ in ins if not d.startswith("fridge")]


def test_expired_food_is_thrown_away_at_the_next_meal() -> None:
    world = WorldSpec(
        shopping=ShoppingSpec(every_ms=30 * DAY_MS, at_min=0, jitter_ms=0, items=(12, 12)),
        meals=MealSpec(at_min=(12 * 60,), jitter_ms=0, items=(0, 0)),
        laundry=LaundrySpec(enabled=False),
        blood=BloodSpec(enabled=False),
    )
    fleet = Fleet(make_spec(world=world, households_only=True))
    end = START + 20 * DAY_MS
    samples = list(fleet.run_until(end))
    items = fleet.world.items
    outs = [(s.time_ms, s.tag or "") for d, s in samples if s.sensor == "rfid.out"]
    assert len(outs) >= 12  # nothing is eaten: items leave only once expired
    for t, epc in outs:
        bb = items[epc].best_before_ms
        assert bb is not None and bb <= t < bb + DAY_MS and (t - START) % DAY_MS == 12 * HOUR_MS
    last_meal = START + 19 * DAY_MS + 12 * HOUR_MS
    for app in fleet.appliances.values():
        for item in app.items():
            assert item.best_before_ms is not None and item.best_before_ms > last_meal
    # a meal that takes nothing still opens the door for a look
    meal_doors = [
        s
        for d, s in samples
        if d == "fridge-1"
        and s.sensor == "door.open"
        and s.value == 1
        and (s.time_ms - START) % DAY_MS == 12 * HOUR_MS
    ]
    assert len(meal_doors) == 20


def test_explicit_routes_are_checked() -> None:
    devices = [
        WorldDevice("a", "medical_freezer", "s", "blood_station"),
        WorldDevice("b", "medical_freezer", "v", "transport"),
        WorldDevice("c", "medical_freezer", "h", "hospital"),
    ]
    from firmware_sim.world import World

    ok = BloodSpec(routes=(BloodRoute("a", "b", "c"),))
    assert World(WorldSpec(blood=ok), devices, 1, START).routes == ok.routes
    with pytest.raises(WorldError, match="transport 'c' stands at a hospital site"):
        World(WorldSpec(blood=BloodSpec(routes=(BloodRoute("a", "c", "c"),))), devices, 1, START)
    with pytest.raises(WorldError, match="station 'zz' is not a medical freezer"):
        World(WorldSpec(blood=BloodSpec(routes=(BloodRoute("zz", "b", "c"),))), devices, 1, START)


def test_identifier_helpers_known_answers() -> None:
    assert sgtin_uri("0614141", "812345", 6789) == "urn:epc:id:sgtin:0614141.812345.6789"
    with pytest.raises(WorldError, match="13 digits"):
        sgtin_uri("0614141", "81234", 1)
    with pytest.raises(WorldError, match="serial must be"):
        sgtin_uri("0614141", "812345", 2**38)
    assert giai_uri("9501101", 125000001) == "urn:epc:id:giai:9501101.125000001"
    assert utc_year(START) == 2025
    assert utc_year(START - 6 * DAY_MS + 1) == 2024  # 2024-12-31T00:00:00.001Z
    assert utc_year(951_782_400_000) == 2000  # 2000-02-29
    assert weekday(START) == 0 and weekday(START + 5 * DAY_MS + 23 * HOUR_MS + 59 * MIN_MS) == 5
