"""The write path's cost per device-second, without the network's receive path.

``python -m bench.writer --json [--quick]`` runs ``agent.fleet.runner.FleetRunner`` on a fleet
of ``--devices`` appliances (1,000; ``--quick`` 100) that each sit alone in their gossip domain,
on the in-memory network, with the runner's real store threads and group commit
(``ledger/groupsync.py``) on SQLite files in a temp dir: every device signs one ``temp_mc``
sample per simulated second (``bench.fleet.SyntheticSource``, staggered so that blocks are not
all sealed in the same second), makes it durable, seals a block every 10 simulated seconds
(signed header, Merkle root) and announces it (to nobody: no peer hears it, so nothing is
received or verified). What is left is the device's write path and its share of the runner's
stepping: sample generation, ingest, signing, the store job, group sync, sealing, the seal
timer, and the asyncio machinery around them.

Steps are one simulated second each, as fast as the fleet takes them (``speed`` 4: the runner's
largest speed with steps of one second, which these fleets do not keep up with, so it never
waits). After a warm-up (``--warmup`` simulated seconds: 15; blocks are sealed from the 10th),
the window (``--window``: 60; ``--quick``: 20) is measured on the event loop's thread at the
source's steps:

- ``cpu_ms_per_device_s``: process CPU time (every thread) over the window per device-second
  (one device-second: one device's one simulated second: a reading, a store commit and a tenth
  of a block); ``loop_ms_per_device_s``: the event loop thread's share; ``store_ms_per_device_s``:
  the rest (the store threads and the group sync);
- ``wall_ms_per_device_s`` and ``device_s_per_wall_s``: how fast the window went (on a quiet
  machine, the write path's capacity);
- ``group_syncs`` over the window, ``readings`` (signed in the window), ``blocks``;
- ``ed25519_sign_us``: one raw Ed25519 signature over a reading's bytes on this machine (thread
  CPU, median of rounds): the one cost the write path cannot avoid per reading;
- ``devices``, ``window_s``, ``warmup_s``, ``meta``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.config.devices import FleetConfig, parse_fleet
from agent.device.sealing import SealPolicy
from agent.fleet.datadir import DataDir
from agent.fleet.provision import provision
from agent.fleet.runner import FleetRunner, RunOptions
from bench.common import BenchArgs, emit, environment
from bench.fleet import SyntheticSource
from ledger import domains
from ledger.identity import SigningKey
from ledger.reading import Reading

_PROG = "python -m bench.writer"
SEAL_AGE_MS = 10_000
SPEED = 4.0  # the runner's largest speed with one-second steps (agent/fleet/runner._step_ms)


def fleet_alone(devices: int, seed: int = 7) -> FleetConfig:
    """``devices`` refrigerators, each alone at its own site (its gossip domain)."""
    doc: dict[str, Any] = {
        "fleet": "bench-writer",
        "seed": seed,
        "replication": {"copies": 0},
        "sites": [{"id": "home-{i}", "kind": "household", "count": devices}],
        "devices": [
            {
                "name": f"d{k}",
                "kind": "refrigerator",
                "site": f"home-{k + 1}",
                "sampling_period": "1s",
            }
            for k in range(devices)
        ],
    }
    return parse_fleet(doc, _PROG)


class Window:
    """CPU and wall clocks at the first step of the window and at its last."""

    def __init__(self, devices: int, warmup_s: int, window_s: int) -> None:
        self.devices = devices
        self.open_ms = warmup_s * 1000
        self.close_ms = (warmup_s + window_s) * 1000
        self.start: tuple[float, float, float] | None = None
        self.end: tuple[float, float, float] | None = None
        self.runner: FleetRunner | None = None
        self.syncs: list[int] = []

    def on_step(self, elapsed_ms: int, lag_ms: float) -> None:
        if self.start is None and elapsed_ms >= self.open_ms:
            self.start = _clocks()
            self.syncs.append(self._syncs())
        elif self.end is None and elapsed_ms >= self.close_ms:
            self.end = _clocks()
            self.syncs.append(self._syncs())

    def _syncs(self) -> int:
        group = None if self.runner is None else self.runner.group_sync
        return 0 if group is None else group.syncs

    def figures(self) -> dict[str, Any]:
        if self.start is None or self.end is None:
            raise RuntimeError("bench.writer: the window never closed")
        (wall0, cpu0, loop0), (wall1, cpu1, loop1) = self.start, self.end
        device_s = self.devices * (self.close_ms - self.open_ms) / 1000
        per = 1000 / device_s  # seconds -> ms per device-second
        return {
            "cpu_ms_per_device_s": round((cpu1 - cpu0) * per, 4),
            "loop_ms_per_device_s": round((loop1 - loop0) * per, 4),
            "store_ms_per_device_s": round(((cpu1 - cpu0) - (loop1 - loop0)) * per, 4),
            "wall_ms_per_device_s": round((wall1 - wall0) * per, 4),
            "device_s_per_wall_s": round(device_s / max(wall1 - wall0, 1e-9)),
            "group_syncs": self.syncs[1] - self.syncs[0],
        }


def _clocks() -> tuple[float, float, float]:
    """(wall, process CPU, this thread's CPU): called on the event loop's thread."""
    return time.perf_counter(), time.process_time(), time.thread_time()


def run(devices: int, warmup_s: int, window_s: int, workdir: Path) -> dict[str, Any]:
    cfg = fleet_alone(devices)
    data = workdir / "fleet"
    provision(cfg, DataDir(data), cfg.start_ms)
    window = Window(devices, warmup_s, window_s)

    def source(c: FleetConfig, step_ms: int) -> SyntheticSource:
        return SyntheticSource(c, step_ms, SEAL_AGE_MS // 1000, window.on_step)

    opts = RunOptions(
        data=data,
        broker="memory",
        for_ms=(warmup_s + window_s + 1) * 1000,
        speed=SPEED,
        seal=SealPolicy(max_readings=64, max_age_ms=SEAL_AGE_MS),
        settle_s=0.5,
        view=False,
        source=source,
        resume=False,
    )
    runner = window.runner = FleetRunner(cfg, opts)
    result = asyncio.run(runner.run())
    if result.failed:
        raise RuntimeError(f"bench.writer: devices failed: {sorted(result.failed.values())[:3]}")
    out = window.figures()
    out["readings"] = sum(a.stats.readings for a in result.devices.values())
    out["blocks"] = sum(a.stats.blocks for a in result.devices.values())
    return out


def sign_us(rounds: int = 7, count: int = 2_000) -> float:
    """Thread CPU of one raw Ed25519 signature over a reading's domain and body, in µs."""
    key = SigningKey(bytes(range(32)))
    body = Reading(key.public.device_id, 0, 1, 1_000, "temp_mc", 4_000).encode_body()
    times = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(count):
            key.sign(domains.READING, body)
        times.append((time.thread_time() - t0) / count)
    return round(statistics.median(times) * 1e6, 2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n", 1)[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="100 devices, a 20 s window")
    p.add_argument("--devices", type=int, help="fleet size (1,000; --quick 100)")
    p.add_argument("--warmup", type=int, default=15, help="simulated seconds before the window")
    p.add_argument("--window", type=int, help="simulated seconds measured (60; --quick 20)")
    return p


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> int:
    ns = _parser().parse_args(argv)
    devices = ns.devices or (100 if ns.quick else 1_000)
    window_s = ns.window or (20 if ns.quick else 60)
    if devices < 1 or window_s < 1 or ns.warmup * 1000 < SEAL_AGE_MS:
        _parser().error(
            f"expected --devices >= 1, --window >= 1 and --warmup >= {SEAL_AGE_MS // 1000}"
        )
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
        out = run(devices, ns.warmup, window_s, Path(tmp))
    out.update(
        devices=devices,
        window_s=window_s,
        warmup_s=ns.warmup,
        ed25519_sign_us=sign_us(),
        meta=environment(),
    )
    emit(out, BenchArgs(json=ns.json, quick=ns.quick), f"write path, {devices} devices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
