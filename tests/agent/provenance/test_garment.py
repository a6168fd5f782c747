"""Garments: wash count, programmes, detergent, and a wash too hot for the care label.

The world's washers always pick a programme every garment tolerates, so a too-hot wash needs a
user who forces one: ``ForcedWash`` is a sample source (what the runner drives) around a real
``WashingMachine`` model, scripted to wash jeans (care label 40 C) and a t-shirt at cotton-60,
then the jeans alone on the programme the machine picks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.devices import FleetConfig
from agent.fleet.datadir import DataDir
from agent.provenance.gather import TraceSession
from firmware_sim.appliances.params import WashingMachineParams
from firmware_sim.appliances.washing_machine import WashingMachine
from firmware_sim.items import Item
from firmware_sim.samples import Sample
from firmware_sim.sensors import fabric
from firmware_sim.world import sgtin_uri
from tests.agent.provenance import fleets
from tests.agent.provenance.conftest import Run

HOUR_MS = fleets.HOUR_MS
JEANS = sgtin_uri("8012345", "200016", 1001)
SHIRT = sgtin_uri("7312345", "100011", 2002)

HOUSE = """\
fleet: laundry
seed: 1
sites:
  - {id: home-1, kind: household}
devices:
  - {name: washer-1, kind: washing_machine, site: home-1, sampling_period: 30s}
"""


class ForcedWash:
    def __init__(self, cfg: FleetConfig, step_ms: int) -> None:
        import random

        self.now_ms = cfg.start_ms
        self.step_ms = step_ms
        self.washer = WashingMachine("washer-1", random.Random(1), cfg.start_ms)
        jeans = Item(
            JEANS,
            "garment",
            "jeans",
            fibres={"cotton": 98, "elastane": 2},
            care_max_c=40,
            mass_g=650,
        )
        shirt = Item(SHIRT, "garment", "t-shirt", fibres={"cotton": 100}, care_max_c=60, mass_g=180)
        w, t0 = self.washer, cfg.start_ms
        self.script: list[tuple[int, Callable[[int], list[Sample]]]] = [
            (t0 + 1 * HOUR_MS, lambda t: w.insert_items([jeans, shirt], t)),
            (t0 + 1 * HOUR_MS + 120_000, lambda t: w.start_cycle(t, soil=2, programme="cotton-60")),
            (t0 + 5 * HOUR_MS, lambda t: w.remove_items([JEANS, SHIRT], t)[1]),
            (t0 + 6 * HOUR_MS, lambda t: w.insert_items([jeans], t)),
            (t0 + 6 * HOUR_MS + 120_000, lambda t: w.start_cycle(t, soil=1)),
            (t0 + 9 * HOUR_MS, lambda t: w.remove_items([JEANS], t)[1]),
        ]
        self._started = False

    def targets(self, until_ms: int) -> Iterator[int]:
        t = self.now_ms
        if not self._started:
            yield t
        while t < until_ms:
            t = min(t + self.step_ms, until_ms)
            yield t

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        self._started = True
        out: list[Sample] = []
        while self.script and self.script[0][0] <= until_ms:
            at, action = self.script.pop(0)
            out += action(at)
        out += self.washer.advance(until_ms)
        self.now_ms = until_ms
        return [("washer-1", s) for s in out]


@pytest.fixture(scope="module")
def laundry(fast_base: Path) -> Run:
    base = fast_base / "laundry"
    cfg = fleets.write(base, HOUSE)
    fleets.run(cfg, base / "data", 10 * HOUR_MS, source=lambda c, _s: ForcedWash(c, fleets.STEP_MS))
    return Run(cfg, base / "data", 10 * HOUR_MS, fleets.truth(cfg, 0))


def test_a_garment_washed_above_its_care_label_is_flagged(laundry: Run) -> None:
    with TraceSession(DataDir(laundry.data), laundry.roots) as s:
        t = s.trace(JEANS)
    assert t.product.name == "garment" and t.name == "jeans"
    assert [(w.programme, w.temp_c, w.care_exceeded, w.care_c) for w in t.washes] == [
        ("cotton-60", 60, True, 40),
        ("cotton-40", 40, False, None),
    ]
    hot, mild = t.washes
    assert hot.conflicts == ("cotton-60 60 C > care 40 C",)
    garments = [
        Item(JEANS, "garment", "jeans", fibres={"cotton": 98, "elastane": 2}, care_max_c=40),
        Item(SHIRT, "garment", "t-shirt", fibres={"cotton": 100}, care_max_c=60),
    ]
    per_kg = WashingMachineParams().detergent_ml_per_kg
    assert (hot.detergent, hot.dose_ml) == (
        fabric.detergent(garments, fabric.PROGRAMMES["cotton-60"]),
        fabric.dose_ml(650 + 180, 2, per_kg),
    )
    assert hot.water_peak_mc is not None and 55_000 <= hot.water_peak_mc <= 61_000
    assert mild.water_peak_mc is not None and mild.water_peak_mc <= 41_000
    assert t.verdict.custody == "continuous" and not t.verdict.ok
    assert t.verdict.problems == (
        f"washed at 60 C (cotton-60) at washer-1 on {_iso(hot.time_ms)}: "
        "above the care label (40 C)",
    )
    assert [g.over_limit for g in t.gaps] == [False]  # an hour in the wardrobe is no problem


def test_the_shirt_in_the_same_load_is_within_its_label(
    laundry: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", SHIRT, "--data", str(laundry.data), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["wash_count"] == 1
    assert doc["washes"][0]["programme"] == "cotton-60" and not doc["washes"][0]["care_exceeded"]
    assert doc["verdict"]["ok"] is True


def _iso(ms: int) -> str:
    from agent.provenance.rules import iso

    return iso(ms)
