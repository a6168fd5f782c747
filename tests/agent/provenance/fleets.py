"""Fleets the trace tests run, and the ground truth they are checked against.

Each fleet is a devices.yaml written here and run by the real fleet runner (``FleetRunner``,
every device signing, sealing, storing and gossiping over the in-memory network, all on
simulated time). The simulation steps a simulated hour at a time instead of a minute: every
device's samples are the same whatever the step (docs/TRACES.md), and the runs take a fraction
of the time. ``truth`` runs the same file through ``firmware_sim`` alone, so the tests compare
the trace with where the world moved the items and what the appliance models computed, not
with anything the tracer produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config.devices import FleetConfig, load_fleet
from agent.fleet.runner import FleetRunner, RunOptions
from agent.fleet.sources import SampleSource, simulation
from firmware_sim.fleet import Fleet
from firmware_sim.samples import Sample
from firmware_sim.world import Movement

HOUR_MS = 3_600_000
STEP_MS = 60 * 60_000

# The sample fleet's blood chain (devices.yaml: same device names, kinds, models, sites' kinds),
# with the van's cabinet made lighter (it warms in a power cut within an hour) and a 2 h mains
# failure while the first day's bags are in the van (seed 3: loaded 15:23, unloaded 18:23).
BLOOD = """\
fleet: blood
seed: 3
sites:
  - {id: blood-station-north, kind: blood_station}
  - {id: blood-van-1, kind: transport}
  - {id: city-hospital, kind: hospital}
gossip_domains:
  - id: blood-chain
devices:
  - name: freezer-station
    kind: medical_freezer
    site: blood-station-north
    domains: [blood-chain]
    model: Polar MF-80
    params: {mode: plasma}
  - name: freezer-van
    kind: medical_freezer
    site: blood-van-1
    domains: [blood-chain]
    model: Polar MF-20T
    sampling_period: 30s
    params: {capacity_j_per_k: 30000}
    faults:
      - {kind: power, start: 15h50m, end: 17h50m}
  - name: freezer-hospital
    kind: medical_freezer
    site: city-hospital
    domains: [blood-chain]
    model: Polar MF-80
world:
  blood: {bags: [2, 3], transfusions: [0, 1]}
"""

# The same chain where loading the van takes two hours: the bags wait outside cold storage.
SLOW_LOAD = BLOOD.replace(
    "world:\n  blood: {bags: [2, 3], transfusions: [0, 1]}",
    "world:\n  blood: {bags: [2, 3], transfusions: [0, 1], load: 2h}",
).replace(
    "      - {kind: power, start: 15h50m, end: 17h50m}\n",
    "      - {kind: power, start: 5d, end: 6d}\n",
)

# A week of a household and a blood chain, sampling every 10 minutes (EPCIS for every item).
WEEK = """\
fleet: week
seed: 11
sites:
  - {id: home-1, kind: household}
  - {id: station, kind: blood_station}
  - {id: van, kind: transport}
  - {id: hospital, kind: hospital}
devices:
  - {name: fridge-1, kind: refrigerator, site: home-1, sampling_period: 10m}
  - {name: washer-1, kind: washing_machine, site: home-1, sampling_period: 10m}
  - {name: freezer-station, kind: medical_freezer, site: station, sampling_period: 10m}
  - {name: freezer-van, kind: medical_freezer, site: van, sampling_period: 10m}
  - {name: freezer-hospital, kind: medical_freezer, site: hospital, sampling_period: 10m}
world:
  shopping: {every: 3d, items: [3, 5]}
  laundry: {days: [wed, sat], garments: [2, 3], wardrobe: 5}
  blood: {bags: [1, 3], transfusions: [1, 3]}
"""


def write(directory: Path, text: str) -> FleetConfig:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "devices.yaml"
    path.write_text(text)
    return load_fleet(path)


def run(
    cfg: FleetConfig,
    data: Path,
    for_ms: int,
    source: Callable[[FleetConfig, int], SampleSource] | None = None,
) -> None:
    """The real runner, simulated network and time, 15-minute simulation steps."""
    opts = RunOptions(
        data=data,
        for_ms=for_ms,
        simulated_network=True,
        view=False,
        source=source or (lambda c, _step: simulation(c, STEP_MS)),
    )
    result = asyncio.run(FleetRunner(cfg, opts).run())
    assert result.converged, "the fleet did not converge"


@dataclass(frozen=True)
class Truth:
    movements: list[Movement]
    samples: list[tuple[str, Sample]]
    excursions: dict[str, list[tuple[int, int, int]]]  # freezer -> (start, duration, peak)

    def moves(self, epc: str) -> list[Movement]:
        return [m for m in self.movements if m.epc == epc]

    def temps(self, device: str, sensor: str, lo: int, hi: int) -> list[tuple[int, int]]:
        return [
            (s.time_ms, s.value)
            for d, s in self.samples
            if d == device and s.sensor == sensor and lo < s.time_ms < hi
        ]


def truth(cfg: FleetConfig, for_ms: int) -> Truth:
    fleet = Fleet(cfg.fleet_spec(), step_ms=STEP_MS)
    samples = list(fleet.run_until(cfg.start_ms + for_ms))
    excursions = {
        name: list(getattr(app, "excursions", []))
        for name, app in fleet.appliances.items()
        if app.kind == "medical_freezer"
    }
    return Truth(list(fleet.world.movements), samples, excursions)
