"""Washing machine: care labels respected, conflicts visible, cycle physics, detergent."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.appliances import ApplianceError, WashingMachine, build_params
from firmware_sim.items import Item
from firmware_sim.samples import Sample
from firmware_sim.sensors.fabric import PROGRAMMES, detergent, dose_ml, select_programme

START = 1_736_121_600_000
MIN = 60_000
HOUR = 3_600_000
_serial = iter(range(10**9))


def washer(seed: int = 1, **overrides: object) -> WashingMachine:
    return WashingMachine(
        "washer-1", random.Random(seed), START, build_params("washing_machine", overrides)
    )


def garment(
    name: str,
    fibres: dict[str, int],
    care: int | None,
    colour: str | None = "colour",
    mass_g: int | None = 400,
) -> Item:
    return Item(
        f"urn:epc:id:sgtin:4098765.022222.{next(_serial)}",
        "garment",
        name,
        brand="Acme",
        fibres=fibres,
        care_max_c=care,
        colour=colour,
        mass_g=mass_g,
    )


def shirt() -> Item:
    return garment("white shirt", {"cotton": 100}, 60, colour="white")


def sweater() -> Item:
    return garment("wool sweater", {"wool": 80, "polyamide": 20}, 30)


def of(samples: list[Sample], sensor: str) -> list[Sample]:
    return [s for s in samples if s.sensor == sensor]


def run_cycle(w: WashingMachine, items: list[Item], **kwargs: object) -> list[Sample]:
    out = w.insert_items(items, START + MIN)
    out += w.start_cycle(START + 2 * MIN, **kwargs)  # type: ignore[arg-type]
    return out + w.advance(START + 6 * HOUR)


FIBRES = ["cotton", "linen", "polyester", "elastane", "wool", "cashmere", "silk", "viscose"]
fibre_mixes = st.dictionaries(st.sampled_from(FIBRES), st.integers(1, 100), min_size=1, max_size=3)
garments = st.builds(
    garment,
    name=st.sampled_from(["shirt", "sock", "scarf", "dress"]),
    fibres=fibre_mixes,
    care=st.sampled_from([None, 20, 30, 40, 60, 95]),
    colour=st.sampled_from([None, "white", "colour", "dark"]),
    mass_g=st.one_of(st.none(), st.integers(50, 1500)),
)


@settings(max_examples=60, deadline=None)
@given(
    load=st.lists(garments, min_size=1, max_size=8),
    soil=st.integers(1, 3),
    seed=st.integers(0, 2**32),
    do_not_wash=st.integers(0, 4),
)
def test_never_washes_hotter_than_any_care_label(
    load: list[Item], soil: int, seed: int, do_not_wash: int
) -> None:
    if do_not_wash == 0:  # now and then a garment labelled "do not wash" joins the load
        load = [*load, garment("suit jacket", {"wool": 100}, 0)]
    w = washer(seed)
    samples = run_cycle(w, load, soil=soil)
    labels = [30 if g.care_max_c is None else g.care_max_c for g in load]
    programme = of(samples, "wash.programme")
    if min(labels) < 20:  # a do-not-wash garment: the machine refuses the load
        assert programme == []
        assert w.phase == "idle"
        refused = {s.tag for s in of(samples, "wash.conflict")}
        assert refused == {g.epc for g, care in zip(load, labels, strict=True) if care < 20}
        assert all(g.wash_count == 0 for g in load)
        return
    assert len(programme) == 1
    assert programme[0].value <= min(labels)
    assert of(samples, "wash.conflict") == [] or all(
        s.tag is None
        for s in of(samples, "wash.conflict")  # only an overload warning
    )
    washed = {s.tag: s.value for s in of(samples, "wash.garment")}
    assert washed == {g.epc: programme[0].value for g in load}
    assert all(washed[g.epc] <= care for g, care in zip(load, labels, strict=True))
    assert all(g.wash_count == 1 for g in load)
    # The water itself never got hotter than the programme (noise aside).
    water = [s.value for s in of(samples, "water.temp_mc")]
    assert max(water) <= programme[0].value * 1000 + 500


def test_hottest_tolerated_programme_is_chosen() -> None:
    cotton60 = garment("towel", {"cotton": 100}, 60)
    cotton95 = garment("sheet", {"cotton": 100}, 95, colour="white")
    jeans = garment("jeans", {"cotton": 98, "elastane": 2}, 40)
    fleece = garment("fleece", {"polyester": 100}, 40)
    silk = garment("blouse", {"silk": 100}, 30)
    assert select_programme([cotton95]) == PROGRAMMES["cotton-90"]
    assert select_programme([cotton95, cotton60]) == PROGRAMMES["cotton-60"]
    assert select_programme([cotton60, jeans]) == PROGRAMMES["cotton-40"]
    assert select_programme([cotton60, fleece]) == PROGRAMMES["synthetics-40"]
    assert select_programme([cotton60, silk]) == PROGRAMMES["delicates-30"]
    assert select_programme([cotton60, sweater()]) == PROGRAMMES["wool-30"]
    cold = garment("hand-wash scarf", {"wool": 100}, 20)
    assert select_programme([cold, cotton60]) == PROGRAMMES["cold-20"]
    assert select_programme([garment("suit", {"wool": 100}, 0)]) is None


def test_forced_hot_programme_runs_and_flags_each_harmed_garment() -> None:
    w = washer(2)
    s, sw, jeans = shirt(), sweater(), garment("jeans", {"cotton": 100}, 40)
    samples = run_cycle(w, [s, sw, jeans], programme="cotton-60")
    conflicts = {c.tag: (c.value, c.text) for c in of(samples, "wash.conflict")}
    assert conflicts == {
        sw.epc: (60, "cotton-60 60 C > care 30 C"),
        jeans.epc: (60, "cotton-60 60 C > care 40 C"),
    }
    assert [(p.value, p.text) for p in of(samples, "wash.programme")] == [(60, "cotton-60")]
    assert w.forced
    # The trace shows the garment washed hotter than its label.
    washed = {g.tag: g.value for g in of(samples, "wash.garment")}
    assert washed[sw.epc] == 60 > sw.care_max_c  # type: ignore[operator]
    water = [x.value for x in of(samples, "water.temp_mc")]
    assert max(water) > 58_000


def test_forced_gentle_programme_flags_fibre_mismatch_only_when_harmful() -> None:
    w = washer(3)
    sw = sweater()
    samples = run_cycle(w, [shirt(), sw], programme="cotton-40")
    assert [(c.tag, c.text) for c in of(samples, "wash.conflict")] == [
        (sw.epc, "cotton-40 40 C > care 30 C")
    ]
    w2 = washer(3)
    samples2 = run_cycle(w2, [shirt()], programme="wool-30")  # gentler than needed: harmless
    assert of(samples2, "wash.conflict") == []


def test_cycle_phases_in_order_with_physical_heating() -> None:
    w = washer(4, sensor_noise_mc=0)
    p = w.params
    load = [shirt(), garment("towel", {"cotton": 100}, 60, colour="white", mass_g=900)]
    samples = run_cycle(w, load)
    states = [(s.time_ms, s.text) for s in of(samples, "wash.state")]
    assert [t for _, t in states] == ["idle", "fill", "heat", "wash", "rinse", "spin", "done"]
    at = dict((text, t) for t, text in states)
    assert at["heat"] - at["fill"] == p.fill_ms
    prog = PROGRAMMES["cotton-60"]
    assert at["rinse"] - at["wash"] == prog.wash_ms + 10 * MIN  # normal soil adds 10 min
    assert at["spin"] - at["rinse"] == prog.rinses * p.rinse_ms
    assert at["done"] - at["spin"] == p.spin_ms
    # Heating time agrees with an energy balance: heating water + drum from the inlet
    # temperature to 60 C with the element, minus losses (bounded below by no losses).
    water_g = p.water_base_g + p.water_per_kg_g * 1300 // 1000
    capacity = water_g * 4.186 + p.drum_capacity_j_per_k
    heat_s = (at["wash"] - at["heat"]) / 1000
    lossless = capacity * (60 - 15.5) / p.heater_w
    assert lossless < heat_s < lossless * 1.4
    water = {s.time_ms: s.value for s in of(samples, "water.temp_mc")}
    during_wash = [v for t, v in water.items() if at["wash"] <= t < at["rinse"]]
    assert all(abs(v - 60_000) <= 20 for v in during_wash)
    during_heat = [v for t, v in water.items() if at["heat"] <= t < at["wash"]]
    assert during_heat == sorted(during_heat)  # heating is monotone
    after_rinse = [v for t, v in water.items() if at["rinse"] <= t < at["spin"]]
    assert max(after_rinse) < 40_000  # cold refill
    motor = {s.time_ms: s.value for s in of(samples, "motor.power_w")}
    spin = [v for t, v in motor.items() if at["spin"] <= t < at["done"]]
    wash = [v for t, v in motor.items() if at["wash"] <= t < at["rinse"]]
    assert min(spin) > max(wash)
    # Periodic samples only while running, on the cycle's own grid.
    times = sorted(water)
    assert times == list(range(at["fill"], at["done"], p.sample_period_ms))
    energy = of(samples, "wash.energy_wh")
    assert len(energy) == 1 and 500 < energy[0].value < 3_000
    assert energy[0].time_ms == at["done"]


def test_detergent_type_and_dose() -> None:
    whites = [shirt(), garment("sheet", {"cotton": 100}, 95, colour="white")]
    coloured = [shirt(), garment("tee", {"cotton": 100}, 40, colour="dark")]
    synth = [garment("fleece", {"polyester": 100}, 40)]
    assert detergent(whites, PROGRAMMES["cotton-60"]) == "heavy-duty"
    assert detergent(coloured, PROGRAMMES["cotton-40"]) == "colour"
    assert detergent(synth, PROGRAMMES["synthetics-40"]) == "mild"
    assert detergent([*whites, sweater()], PROGRAMMES["wool-30"]) == "wool"
    assert detergent([garment("blouse", {"silk": 100}, 30)], PROGRAMMES["delicates-30"]) == "wool"
    assert dose_ml(4_000, 1, 12) < dose_ml(4_000, 2, 12) < dose_ml(4_000, 3, 12)
    assert dose_ml(2_000, 2, 12) < dose_ml(6_000, 2, 12)
    assert dose_ml(5_000, 2, 12) == 20 + 60
    w = washer(5)
    samples = run_cycle(w, whites, soil=3)
    dose = of(samples, "detergent.dose_ml")
    assert [(d.value, d.text) for d in dose] == [(dose_ml(800, 3, 12), "heavy-duty")]


def test_load_sensor_reports_mass_and_composition() -> None:
    w = washer(6)
    load = [
        garment("tee", {"cotton": 100}, 40, mass_g=300),
        garment("leggings", {"polyester": 80, "elastane": 20}, 40, mass_g=200),
    ]
    samples = run_cycle(w, load)
    masses = [s.value for s in of(samples, "load.mass_g")]
    assert all(abs(m - 500) <= 100 for m in masses)
    pct = {s.text: s.value for s in of(samples, "load.fibre_pct")}
    assert pct == {"cotton": 60, "elastane": 8, "polyester": 32}


def test_overload_is_flagged_without_a_tag() -> None:
    w = washer(7)
    load = [garment(f"towel {k}", {"cotton": 100}, 60, mass_g=1_000) for k in range(9)]
    conflicts = of(run_cycle(w, load), "wash.conflict")
    assert [(c.tag, c.text) for c in conflicts] == [(None, "overload 9000 g > 8000 g")]


def test_door_is_locked_while_running_and_no_sample_is_lost() -> None:
    w = washer(8)
    load = [shirt()]
    w.insert_items(load, START + MIN)
    w.start_cycle(START + 2 * MIN)
    assert w.running
    with pytest.raises(ApplianceError, match="door locked during the heat phase"):
        w.insert_items([sweater()], START + 10 * MIN)
    with pytest.raises(ApplianceError, match="door locked"):
        w.remove_items([load[0].epc], START + 11 * MIN)
    with pytest.raises(ApplianceError, match="is running"):
        w.start_cycle(START + 12 * MIN)
    later = w.advance(START + 13 * MIN)
    times = [s.time_ms for s in of(later, "water.temp_mc")]
    assert times == list(range(START + 2 * MIN + 30_000, START + 13 * MIN + 1, 30_000))
    assert w.items() == load


def test_start_errors() -> None:
    w = washer(9)
    with pytest.raises(ApplianceError, match="nothing loaded"):
        w.start_cycle(START)
    w.insert_items([shirt()], START)
    with pytest.raises(ApplianceError, match="unknown programme 'boil'"):
        w.start_cycle(START, programme="boil")
    with pytest.raises(ApplianceError, match="soil must be 1, 2 or 3"):
        w.start_cycle(START, soil=7)


def test_wash_count_grows_per_cycle_and_machine_returns_to_idle() -> None:
    w = washer(10)
    s = shirt()
    w.insert_items([s], START)
    t = START
    for n in range(1, 4):
        w.start_cycle(t + MIN)
        t += 4 * HOUR
        w.advance(t)
        assert w.phase == "done"
        assert s.wash_count == n
    _, out = w.remove_items([s.epc], t)
    assert w.phase == "idle"
    assert [x.text for x in of(out, "wash.state")] == ["idle"]
    assert w.cycles_done == 3


def test_same_seed_same_samples() -> None:
    def run(seed: int) -> list[Sample]:
        global _serial
        _serial = iter(range(10**9))
        return run_cycle(washer(seed), [shirt(), sweater()], soil=2)

    assert run(1) == run(1)
    assert run(1) != run(2)
