"""A simulated week of nine appliances: fast enough, complete, and physically sane."""

from __future__ import annotations

import random
import time
from collections import Counter

from firmware_sim.appliances import (
    MedicalFreezer,
    Refrigerator,
    WashingMachine,
    make_appliance,
)
from firmware_sim.items import Item
from firmware_sim.samples import Sample

START = 1_736_121_600_000
MIN = 60_000
HOUR = 3_600_000
DAY = 24 * HOUR
WEEK = 7 * DAY
STEP = MIN  # the fleet's default step


def simulate_week(seed: int, days: int = 7) -> dict[str, list[Sample]]:
    rng = random.Random(seed)
    kinds = ["refrigerator"] * 3 + ["washing_machine"] * 3 + ["medical_freezer"] * 3
    apps = {
        f"{kind}-{k}": make_appliance(
            kind,
            f"{kind}-{k}",
            {"mode": "blood_bank"} if k == 8 else None,
            random.Random(f"{seed}/{k}"),
            START,
        )
        for k, kind in enumerate(kinds)
    }
    out: dict[str, list[Sample]] = {name: [] for name in apps}
    serial = 0
    for t in range(START + STEP, START + days * DAY + 1, STEP):
        for name, app in apps.items():
            if isinstance(app, Refrigerator) and rng.random() < 0.004:
                serial += 1
                item = Item(
                    f"urn:epc:id:sgtin:4012345.011111.{serial}",
                    "food",
                    "milk",
                    best_before_ms=t + 3 * DAY,
                )
                out[name] += app.insert_items([item], t)
                out[name] += app.open_door(t, 40_000)  # a look for something else
            elif isinstance(app, WashingMachine) and not app.running and rng.random() < 0.002:
                if app.items():
                    _, samples = app.remove_items([i.epc for i in app.items()], t)
                    out[name] += samples
                serial += 1
                shirt = Item(
                    f"urn:epc:id:sgtin:4098765.022222.{serial}",
                    "garment",
                    "shirt",
                    fibres={"cotton": 100},
                    care_max_c=60,
                )
                out[name] += app.insert_items([shirt], t)
                out[name] += app.start_cycle(t, soil=rng.randint(1, 3))
            elif isinstance(app, MedicalFreezer) and rng.random() < 0.0005:
                out[name] += app.fail_power(t, rng.randint(10 * MIN, 10 * HOUR))
            out[name] += app.advance(t)
    return out


def test_a_week_of_nine_appliances_runs_well_under_ten_seconds() -> None:
    began = time.perf_counter()
    week = simulate_week(1)
    elapsed = time.perf_counter() - began
    assert elapsed < 5.0, f"a simulated week took {elapsed:.2f} s"
    counts = Counter(s.sensor for samples in week.values() for s in samples)
    per_temp_sensor = WEEK // MIN + 1
    assert counts["fridge.temp_mc"] == counts["freezer.temp_mc"] == 3 * per_temp_sensor
    assert counts["cabinet.temp_mc"] == 3 * per_temp_sensor
    assert counts["wash.garment"] >= 3
    assert counts["rfid.in"] > 10
    for samples in week.values():
        times = [s.time_ms for s in samples]
        assert times == sorted(times)
        assert all(START <= t <= START + WEEK for t in times)


def test_the_week_is_reproducible() -> None:
    assert simulate_week(2, days=2) == simulate_week(2, days=2)
