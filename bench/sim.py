"""Simulation speed: how fast the sample fleet (devices.yaml) runs under the simulated clock.

``python -m bench.sim --json [--quick] [--devices FILE]`` prints one JSON object:

- ``samples_per_s``: samples produced per wall-clock second,
- ``sim_speedup``: simulated seconds per wall-clock second (at the fleet's configured sampling
  periods),
- ``week_wall_s``: wall-clock seconds for one simulated week (measured; with ``--quick`` one day
  is simulated and the week extrapolated, and ``extrapolated`` is true).

The goal is a simulated week of the sample fleet in under 10 s. Without ``--json`` a table is
printed instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agent.config.devices import load_fleet
from firmware_sim.fleet import Fleet

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
GOAL_WEEK_WALL_S = 10.0
ROOT = Path(__file__).resolve().parent.parent


def measure(devices: Path, sim_ms: int) -> dict[str, object]:
    config = load_fleet(devices)
    t0 = time.perf_counter()
    fleet = Fleet(config.fleet_spec(), keep_movements=False)
    samples = 0
    for _ in fleet.run_until(config.start_ms + sim_ms):
        samples += 1
    wall = time.perf_counter() - t0
    return {
        "devices": len(config.devices),
        "simulated_s": sim_ms // 1000,
        "wall_s": round(wall, 3),
        "samples": samples,
        "samples_per_s": round(samples / wall),
        "sim_speedup": round(sim_ms / 1000 / wall),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="simulate one day, extrapolate")
    parser.add_argument("--devices", type=Path, default=ROOT / "devices.yaml")
    args = parser.parse_args(argv)
    sim_ms = DAY_MS if args.quick else WEEK_MS
    result = measure(args.devices, sim_ms)
    wall = float(result["wall_s"])  # type: ignore[arg-type]
    result["week_wall_s"] = round(wall * WEEK_MS / sim_ms, 3)
    result["extrapolated"] = args.quick
    result["goal_week_wall_s"] = GOAL_WEEK_WALL_S
    result["meets_goal"] = result["week_wall_s"] < GOAL_WEEK_WALL_S  # type: ignore[operator]
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"sample fleet: {result['devices']} devices, {result['simulated_s']} s simulated")
        for key in ("samples", "wall_s", "samples_per_s", "sim_speedup", "week_wall_s"):
            print(f"  {key:<16}{result[key]:>14,}")
        print(f"  {'goal':<16}{'week < 10 s':>14}  {'met' if result['meets_goal'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
