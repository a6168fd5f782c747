"""Fleet capacity on Mosquitto: the largest fleet one runner process keeps up with in real time.

``python -m bench.fleet --json [--quick]`` runs ``agent.runner.FleetRunner`` in real time
(``speed=1.0``) against a Mosquitto broker of its own (``agent.broker.MosquittoBroker``, default
config, a free port) on a synthetic fleet: every device emits one ``temp_mc`` sample per second
(deterministic values; device k starts at second ``1 + k % 10`` so that blocks are not all sealed
in the same second), seals a block every 10 s (``SealPolicy(max_readings=64, max_age_ms=10_000)``)
and gossips in a domain of 32 devices (``agent.config.parse_fleet``: a site per domain, a counted
device group per site; the default ``GossipConfig``). Each trial runs in a fresh process (its RSS
and CPU are that fleet's alone): start-up, a warm-up (15 s), a measurement window (30 s), then a
grace period (two anti-entropy intervals, 10 s) in which headers sealed in the window may arrive.

Sizes double from 250 while fleets keep up (halve while they do not), then two bisection steps.
The JSON object holds the figures of the largest fleet that kept up (``devices``; 0 if none did,
with the smallest fleet's figures, ``tried_devices`` says which):

- ``keeps_up``: every rule of ``keeps_up_rule`` held: at the end of the window the simulation lags
  the wall clock by less than ``lag_ms`` (1 s; the runner waits for every sample to be durable
  before the next step); no device holds more than ``max_pending`` unsealed readings (20; sealing
  on time leaves about 11); at most 0.1% of the (header, peer) deliveries missed
  (``header_miss_rate``: a rare straggler is noise, a queue that drops or delays is not); and
  ``header_latency_p99_ms`` is below ``latency_p99_ms`` (one anti-entropy interval: a header may
  need one repair round, but no queue may build up). ``why_not`` lists the rules broken;
- ``header_latency_p50_ms`` / ``header_latency_p99_ms``: from the seal (observer event
  ``OwnBlockSealed`` at the sealing device) to acceptance (``HeadersAccepted`` covering that
  height) at each domain peer (all devices are live), network clock, over every (header, peer)
  pair of headers sealed in the window; a pair not accepted within the grace period is a miss
  (``header_misses``, and ``header_miss_rate`` of the pairs), left out of the percentiles;
- ``dup_factor``: header deliveries over deliveries needed, in the window. Deliveries: header
  entries of ANNOUNCE and RESPONSE messages offered to the gossip cores, whatever the verdict
  (accepted, duplicate, gap, ...), i.e. the growth of the sum of ``GossipNode.counters
  ["header_*"]`` over all devices; needed: headers sealed in the window times their device's
  domain peers. In steady state the two count the same headers; a fleet that falls behind shows a
  factor below 1 (most deliveries never happen);
- ``cpu_ms_per_device_s``: process CPU time (``time.process_time``, every thread) over the window
  per device per wall second; ``loop_busy``: CPU share of the event loop's own thread (1.0: one
  core, saturated); ``broker_cpu_ms_per_device_s``: Mosquitto's CPU (``/proc/PID/stat``);
- ``rss_kb_per_device``: RSS growth (``/proc/self/status``) from before the runner started to the
  end of the window, per device;
- ``provision_s_per_device``: enrollment (keys and certificates at ``keyfile.FAST``), done and
  timed before the runner starts, excluded from every other figure;
- diagnostics: ``lag_ms``, ``max_pending``, ``headers_sealed``, ``sent_per_s`` /
  ``received_per_s`` (MQTT messages, all devices), ``dropped`` (deliveries transports dropped on
  overflow), ``loop_lag_p50_ms`` / ``loop_lag_p99_ms`` (how late a 50 ms timer fires),
  ``gc_ms_per_s`` / ``gc_max_pause_ms`` (garbage collections, via ``gc.callbacks``).

Beside them: ``fixed_500`` (the same figures for 500 devices), ``trials`` (every size tried, by
size), ``goals`` and ``meets_goals`` (dup factor and p99 judged at ``devices``), ``meta``.
``--quick`` runs 16 and 32 devices with blocks every 3 s and anti-entropy every second (its fixed
fleet is ``fixed_32``), in about 45 s. ``--profile FILE --start N`` runs one trial of N devices in
this process with cProfile on the event loop's thread over the window. Trial options (``--start``,
``--window``, ``--seal-age``, ...) override the plan; ``--help`` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.broker import MosquittoBroker
from agent.config import FleetConfig, parse_fleet
from agent.datadir import DataDir
from agent.gossip import actions as A
from agent.gossip import inputs as I
from agent.gossip.config import GossipConfig
from agent.provision import provision
from agent.runner import FleetRunner, RunOptions
from agent.runtime import DeviceAgent
from agent.sealing import SealPolicy
from bench.common import BenchArgs, emit, environment
from firmware_sim.samples import Sample

SENSOR = "temp_mc"
GOALS: dict[str, int | float] = {
    "devices": 2_000,
    "dup_factor": 1.5,
    "header_latency_p99_ms": 1_000,
}
_PROG = "python -m bench.fleet"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
PROBE_S = 0.05
MISS_TOLERANCE = 0.001  # keeps up: at most this share of (header, peer) deliveries missed


@dataclass(frozen=True, slots=True)
class Plan:
    """One benchmark run: the sizes to search, the fixed size, and each trial's timing."""

    start: int = 250  # first size tried; sizes double from here
    max_devices: int = 8_000  # never try more
    min_devices: int = 16  # nor fewer
    fixed: int = 500
    bisect: int = 2  # bisection steps after the first failure
    domain_size: int = 32
    warmup_s: int = 15
    window_s: int = 30
    seal_age_ms: int = 10_000
    anti_entropy_ms: int = GossipConfig().anti_entropy_ms
    lag_ms: int = 1_000  # keeps up: lag at the end of the window below this
    seed: int = 7

    def __post_init__(self) -> None:
        for name in ("start", "max_devices", "min_devices", "fixed", "window_s", "seal_age_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"plan: expected {name} >= 1, found {getattr(self, name)}")
        if self.domain_size < 2 or self.bisect < 0:
            raise ValueError(
                f"plan: expected domain_size >= 2 and bisect >= 0, found {self.domain_size} "
                f"and {self.bisect}"
            )
        if self.warmup_s * 1000 < self.seal_age_ms:
            raise ValueError(
                f"plan: the warm-up must last a block age at least (no block before it), "
                f"expected warmup_s >= {-(-self.seal_age_ms // 1000)}, found {self.warmup_s}"
            )

    @property
    def grace_s(self) -> int:
        """Time a header sealed in the window has to reach every peer: two anti-entropy rounds."""
        return max(2, 2 * self.anti_entropy_ms // 1000)

    @property
    def latency_p99_ms(self) -> int:
        """Keeps up: p99 below one anti-entropy interval (a repair pull, not a growing queue)."""
        return self.anti_entropy_ms

    @property
    def max_pending(self) -> int:
        return 2 * self.seal_age_ms // 1000

    def gossip(self) -> GossipConfig:
        jitter = GossipConfig().jitter_ms * self.anti_entropy_ms // GossipConfig().anti_entropy_ms
        return GossipConfig(anti_entropy_ms=self.anti_entropy_ms, jitter_ms=jitter)


# Tiny fleets, blocks every 3 s and anti-entropy every second, so that a trial lasts seconds.
QUICK = Plan(
    start=16,
    max_devices=32,
    min_devices=16,
    fixed=32,
    bisect=0,
    warmup_s=5,
    window_s=5,
    seal_age_ms=3_000,
    anti_entropy_ms=1_000,
)


# --------------------------------------------------------------------------- the fleet


def fleet_config(devices: int, domain_size: int, seed: int) -> FleetConfig:
    """``devices`` appliances in gossip domains of ``domain_size`` (a site each, the last one
    possibly smaller), built through ``parse_fleet`` with one counted device group per site."""
    if devices < 1 or domain_size < 2:
        raise ValueError(
            f"fleet: expected >= 1 devices in domains of >= 2, found {devices} in {domain_size}"
        )
    cells = -(-devices // domain_size)
    groups = [
        {
            "name": f"c{j}-d{{i}}",
            "count": min(domain_size, devices - (j - 1) * domain_size),
            "kind": "refrigerator",
            "site": f"cell-{j}",
            "sampling_period": "1s",
        }
        for j in range(1, cells + 1)
    ]
    doc = {
        "fleet": "bench",
        "seed": seed,
        "sites": [{"id": "cell-{i}", "kind": "street", "count": cells}],
        "devices": groups,
    }
    return parse_fleet(doc, "bench.fleet")


class SyntheticSource:
    """A ``SampleSource``: one ``temp_mc`` sample per device per second, the first one of device
    ``k`` at second ``1 + k % stagger_s``. Values are a pure function of (device, second).

    ``on_step(elapsed_ms, lag_ms)`` is called at every step: simulated ms since the first step
    was asked for, and how far the wall clock has run ahead of that."""

    def __init__(
        self,
        cfg: FleetConfig,
        step_ms: int,
        stagger_s: int,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.names = [d.name for d in cfg.devices]
        self.start_ms = self.now_ms = cfg.start_ms
        self.step_ms = step_ms
        self.stagger_s = max(1, stagger_s)
        self.on_step = on_step
        self.wall0: float | None = None

    def targets(self, until_ms: int) -> Iterator[int]:
        if self.wall0 is None:
            self.wall0 = time.monotonic()
        t = self.now_ms
        while t < until_ms:
            t = min(t + self.step_ms, until_ms)
            yield t

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        if self.on_step is not None and self.wall0 is not None:
            elapsed = until_ms - self.start_ms
            self.on_step(elapsed, (time.monotonic() - self.wall0) * 1000 - elapsed)
        out = []
        first = (self.now_ms - self.start_ms) // 1000 + 1
        last = (until_ms - self.start_ms) // 1000
        for second in range(first, last + 1):
            t = self.start_ms + second * 1000
            for k, name in enumerate(self.names):
                if second >= 1 + k % self.stagger_s:
                    out.append((name, Sample(t, SENSOR, sample_value(k, second))))
        self.now_ms = max(self.now_ms, until_ms)
        return out


def sample_value(device: int, second: int) -> int:
    """Milli-degrees C between 3,000 and 5,000, deterministic."""
    return 3_000 + (device * 7_919 + second * 104_729) % 2_001


# --------------------------------------------------------------------------- one trial


@dataclass
class _Snapshot:
    wall: float
    net_ms: int
    cpu: float
    loop_cpu: float
    broker_cpu: float
    rss_kb: int
    offers: int
    sent: int
    received: int
    dropped: int


class Recorder:
    """Watches one run: lag at each step, seals and acceptances, counters at the window edges."""

    def __init__(self, plan: Plan, devices: int, broker_pid: int | None) -> None:
        self.plan = plan
        self.devices = devices
        self.broker_pid = broker_pid
        self.runner: FleetRunner | None = None
        self.profiler: cProfile.Profile | None = None  # enabled over the window only
        self.rss0 = rss_kb()
        self.lag_ms = 0.0
        self.open: _Snapshot | None = None
        self.close: _Snapshot | None = None
        self.max_pending = 0
        self.aborted = ""
        self.started = asyncio.Event()  # set at the first step of the simulation
        self._peers: dict[str, int] = {}
        self._sealed: dict[tuple[str, int], int] = {}  # (device, height) -> seal time (net ms)
        self._arrived: dict[tuple[str, int], int] = {}  # -> peers that accepted it in time
        self.latencies: list[int] = []
        self.gc_pauses: list[float] = []  # ms of each garbage collection during the window
        self._gc_start = 0.0
        self.loop_lags: list[float] = []  # ms an asyncio timer fired late, during the window
        self._probe: asyncio.Task[None] | None = None

    def source(self, cfg: FleetConfig, step_ms: int) -> SyntheticSource:
        return SyntheticSource(cfg, step_ms, self.plan.seal_age_ms // 1000, self.on_step)

    def on_step(self, elapsed_ms: int, lag_ms: float) -> None:
        runner = self.runner
        assert runner is not None
        if not self.started.is_set():
            for agent in runner.agents.values():
                agent.observers.append(self.observe)
                self._peers[agent.device_id] = len(agent.peer_ids)
            self.started.set()
            self._probe = asyncio.get_running_loop().create_task(self._loop_probe())
            gc.callbacks.append(self._on_gc)
        self.lag_ms = lag_ms
        plan = self.plan
        if self.open is None and elapsed_ms >= plan.warmup_s * 1000:
            self.open = self._snapshot(runner)
            if self.profiler is not None:
                self.profiler.enable()
        elif self.close is None and elapsed_ms >= (plan.warmup_s + plan.window_s) * 1000:
            self._close_window(runner)
        if lag_ms > max(10_000, plan.window_s * 500) and not self.aborted:
            self.aborted = f"lag {lag_ms / 1000:.1f} s: stopped early"
            if self.open is not None and self.close is None:
                self._close_window(runner)  # the figures then cover the window up to here
            runner.request_stop()

    def _close_window(self, runner: FleetRunner) -> None:
        if self.profiler is not None:
            self.profiler.disable()
        self.close = self._snapshot(runner)
        self.max_pending = max(a.writer.pending_count() for a in runner.agents.values())

    def observe(self, agent: DeviceAgent, event: object, now_ms: int) -> None:
        if isinstance(event, I.OwnBlockSealed):
            if self.open is not None and self.close is None:
                h = event.block.header.header
                self._sealed[(h.device_id, h.height)] = now_ms
        elif isinstance(event, A.HeadersAccepted):
            limit = self.plan.grace_s * 1000
            for height in range(event.from_height, event.to_height + 1):
                key = (event.device_id, height)
                sealed = self._sealed.get(key)
                if sealed is not None and now_ms - sealed <= limit:
                    self.latencies.append(now_ms - sealed)
                    self._arrived[key] = self._arrived.get(key, 0) + 1

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self.open is not None and self.close is None:
            self.gc_pauses.append((time.perf_counter() - self._gc_start) * 1000)

    def detach(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    async def _loop_probe(self) -> None:
        """How late a 50 ms timer fires: the event loop's backlog, sampled through the window."""
        while self.close is None:
            t = time.monotonic()
            await asyncio.sleep(PROBE_S)
            if self.open is not None and self.close is None:
                self.loop_lags.append((time.monotonic() - t - PROBE_S) * 1000)

    async def watchdog(self) -> None:
        """Stop a run that falls far behind (its steps come late or not at all)."""
        plan = self.plan
        await self.started.wait()  # start-up (connections, boot inputs) has no time limit here
        await asyncio.sleep(plan.warmup_s + plan.window_s + plan.grace_s + 30)
        if self.runner is not None:
            if self.close is None:
                self.aborted = self.aborted or "watchdog: the window did not close in time"
            self.runner.request_stop()  # after the window: only cuts the settling short

    def _snapshot(self, runner: FleetRunner) -> _Snapshot:
        agents = runner.agents.values()
        stats = [a.transport.stats() for a in agents]
        return _Snapshot(
            wall=time.monotonic(),
            net_ms=runner.net_clock.now_ms(),
            cpu=time.process_time(),
            loop_cpu=time.thread_time(),  # called from the event loop's thread
            broker_cpu=process_cpu_s(self.broker_pid),
            rss_kb=rss_kb(),
            offers=sum(_header_offers(a) for a in agents),
            sent=sum(s.sent for s in stats),
            received=sum(s.received for s in stats),
            dropped=sum(s.dropped_overflow for s in stats),
        )

    def result(self, provision_s: float) -> dict[str, Any]:
        plan, n = self.plan, self.devices
        first, last = self.open, self.close
        needed = sum(self._peers.get(dev, 0) for dev, _ in self._sealed)
        arrived = sum(self._arrived.values())
        lat = sorted(self.latencies)
        out: dict[str, Any] = {
            "devices": n,
            "header_latency_p50_ms": percentile(lat, 50),
            "header_latency_p99_ms": percentile(lat, 99),
            "header_misses": needed - arrived,
            "header_miss_rate": round((needed - arrived) / needed, 5) if needed else None,
            "headers_sealed": len(self._sealed),
            "dup_factor": None,
            "cpu_ms_per_device_s": None,
            "broker_cpu_ms_per_device_s": None,
            "loop_busy": None,
            "rss_kb_per_device": None,
            "provision_s_per_device": round(provision_s / n, 6),
            "lag_ms": round(self.lag_ms),
            "loop_lag_p50_ms": _rounded(percentile(sorted(self.loop_lags), 50)),
            "loop_lag_p99_ms": _rounded(percentile(sorted(self.loop_lags), 99)),
            "gc_ms_per_s": None,
            "gc_max_pause_ms": _rounded(max(self.gc_pauses, default=0.0)),
            "max_pending": self.max_pending,
            "sent_per_s": None,
            "received_per_s": None,
            "dropped": None,
        }
        if first is not None and last is not None:
            span = max(last.wall - first.wall, 1e-9)
            out |= {
                "dup_factor": round((last.offers - first.offers) / needed, 3) if needed else None,
                "cpu_ms_per_device_s": round((last.cpu - first.cpu) * 1000 / n / span, 4),
                "gc_ms_per_s": round(sum(self.gc_pauses) / span, 1),
                "loop_busy": round((last.loop_cpu - first.loop_cpu) / span, 3),
                "broker_cpu_ms_per_device_s": round(
                    (last.broker_cpu - first.broker_cpu) * 1000 / n / span, 4
                ),
                "rss_kb_per_device": round(max(0, last.rss_kb - self.rss0) / n, 2),
                "sent_per_s": round((last.sent - first.sent) / span),
                "received_per_s": round((last.received - first.received) / span),
                "dropped": last.dropped - first.dropped,
            }
        reasons = self.failures(out, plan)
        out["keeps_up"] = not reasons
        out["why_not"] = reasons
        return out

    def failures(self, out: dict[str, Any], plan: Plan) -> list[str]:
        reasons = [self.aborted] if self.aborted else []
        if self.close is None:
            reasons.append("the window never closed")
            return reasons
        if out["lag_ms"] >= plan.lag_ms:
            reasons.append(f"lag {out['lag_ms']} ms >= {plan.lag_ms}")
        if out["max_pending"] > plan.max_pending:
            reasons.append(f"pending {out['max_pending']} > {plan.max_pending}")
        if not self._sealed:
            reasons.append("no header sealed in the window")
        rate = out["header_miss_rate"]
        if rate is not None and rate > MISS_TOLERANCE:
            reasons.append(f"{out['header_misses']} header deliveries missed ({rate:.2%})")
        p99 = out["header_latency_p99_ms"]
        if p99 is not None and p99 >= plan.latency_p99_ms:
            reasons.append(f"p99 {p99} ms >= {plan.latency_p99_ms}")
        return reasons


def _header_offers(agent: DeviceAgent) -> int:
    return sum(v for k, v in agent.node.counters.items() if k.startswith("header_"))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def percentile(sorted_values: Sequence[Any], q: int) -> Any:
    """Nearest-rank percentile (None for no values)."""
    if not sorted_values:
        return None
    rank = max(1, -(-q * len(sorted_values) // 100))
    return sorted_values[rank - 1]


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status: expected a VmRSS line, found none")


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of another process (0.0 when unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


async def run_trial(
    plan: Plan, devices: int, workdir: Path, profiler: cProfile.Profile | None = None
) -> dict[str, Any]:
    """One fleet of ``devices`` on its own Mosquitto, measured (see the module docstring);
    ``profiler`` runs over the window, on the event loop's thread."""
    cfg = fleet_config(devices, plan.domain_size, plan.seed)
    data = workdir / f"fleet-{devices}"
    t0 = time.perf_counter()
    provision(cfg, DataDir(data), cfg.start_ms)
    provision_s = time.perf_counter() - t0
    broker = MosquittoBroker(workdir=workdir / f"mosquitto-{devices}")
    await broker.start()
    try:
        rec = Recorder(plan, devices, broker.pid)
        rec.profiler = profiler
        opts = RunOptions(
            data=data,
            broker=broker.endpoint.url,
            for_ms=(plan.warmup_s + plan.window_s + plan.grace_s) * 1000,
            speed=1.0,
            seal=SealPolicy(max_readings=64, max_age_ms=plan.seal_age_ms),
            gossip=plan.gossip(),
            settle_s=1.0,
            view=False,
            source=rec.source,
            resume=False,
        )
        rec.runner = FleetRunner(cfg, opts)
        watchdog = asyncio.create_task(rec.watchdog())
        try:
            await rec.runner.run()
        finally:
            watchdog.cancel()
            rec.detach()
    finally:
        await broker.stop()
    return rec.result(provision_s)


# --------------------------------------------------------------------------- the search


Trial = Callable[[int], dict[str, Any]]


def trial_in_process(plan: Plan, workdir: Path) -> Trial:
    return lambda n: asyncio.run(run_trial(plan, n, workdir))


def trial_in_subprocess(plan: Plan, workdir: Path) -> Trial:
    """Each trial in a fresh interpreter (its own RSS, CPU and event loop); the child's process
    group is killed if it overruns."""

    def trial(n: int) -> dict[str, Any]:
        spec = json.dumps({"plan": dataclasses.asdict(plan), "devices": n, "dir": str(workdir)})
        budget = plan.warmup_s + plan.window_s + plan.grace_s + 300 + n // 4
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", "--trial", spec],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"devices": n, "keeps_up": False, "why_not": [f"no result in {budget} s"]}
        if proc.returncode != 0:
            return {"devices": n, "keeps_up": False, "why_not": [f"exit {proc.returncode}"]}
        result: dict[str, Any] = json.loads(out)
        return result

    return trial


def search(plan: Plan, trial: Trial, log: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """Double from ``plan.start`` while fleets keep up (up to ``max_devices``), or halve while
    they do not (down to ``min_devices``); then bisect between the last good and first bad."""
    results: dict[int, dict[str, Any]] = {}

    def run(n: int) -> bool:
        results[n] = trial(n)
        r = results[n]
        log(f"{n} devices: {'keeps up' if r['keeps_up'] else 'behind: ' + '; '.join(r['why_not'])}")
        return bool(r["keeps_up"])

    good, bad = 0, None
    n = plan.start
    if run(n):
        good = n
        while n * 2 <= plan.max_devices:
            n *= 2
            if not run(n):
                bad = n
                break
            good = n
    else:
        bad = n
        while n // 2 >= plan.min_devices:
            n //= 2
            if run(n):
                good = n
                break
            bad = n
    for _ in range(plan.bisect):
        if bad is None or not good:
            break
        mid = _round_size((good + bad) // 2, good)
        if mid <= good or mid >= bad:
            break
        if run(mid):
            good = mid
        else:
            bad = mid
    return results


def _round_size(n: int, low: int) -> int:
    step = 50 if low >= 200 else 8 if low >= 16 else 1
    return n - n % step


def measure(plan: Plan, trial: Trial, log: Callable[[str], None]) -> dict[str, Any]:
    results = search(plan, trial, log)
    if plan.fixed not in results:
        results[plan.fixed] = trial(plan.fixed)
    passing = [n for n, r in results.items() if r["keeps_up"]]
    best = max(passing) if passing else min(results)
    head = dict(results[best])
    head["devices"] = best if passing else 0
    head["tried_devices"] = best
    meets = {
        "devices": head["devices"] >= GOALS["devices"],
        "dup_factor": head.get("dup_factor") is not None
        and head["dup_factor"] <= GOALS["dup_factor"],
        "header_latency_p99_ms": head.get("header_latency_p99_ms") is not None
        and head["header_latency_p99_ms"] < GOALS["header_latency_p99_ms"],
    }
    return {
        **head,
        f"fixed_{plan.fixed}": results[plan.fixed],
        "trials": {str(n): results[n] for n in sorted(results)},
        "goals": GOALS,
        "meets_goals": meets,
        "keeps_up_rule": {
            "lag_ms": plan.lag_ms,
            "max_pending": plan.max_pending,
            "header_miss_rate": MISS_TOLERANCE,
            "latency_p99_ms": plan.latency_p99_ms,
            "grace_s": plan.grace_s,
        },
        "meta": {
            **environment(),
            "plan": dataclasses.asdict(plan),
            "broker": "mosquitto",
            "readings_per_device_s": 1,
        },
    }


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n")[0] if __doc__ else "")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="tiny fleets, short trials (~1 min)")
    p.add_argument("--start", type=int, help="first fleet size (then doubling)")
    p.add_argument("--max", type=int, dest="max_devices", help="largest fleet size to try")
    p.add_argument("--fixed", type=int, help="the fixed-size fleet reported beside (500)")
    p.add_argument("--bisect", type=int, help="bisection steps after the first failure")
    p.add_argument("--domain", type=int, dest="domain_size", help="devices per gossip domain")
    p.add_argument("--warmup", type=int, dest="warmup_s", help="seconds before the window")
    p.add_argument("--window", type=int, dest="window_s", help="seconds measured")
    p.add_argument("--seal-age", type=int, dest="seal_age_ms", help="block age in ms (10000)")
    p.add_argument("--anti-entropy", type=int, dest="anti_entropy_ms", help="gossip round ms")
    p.add_argument("--in-process", action="store_true", help="run trials in this process")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="one trial of --start devices in this process, cProfile over the window saved "
        "to FILE (pstats); the top functions go to stderr",
    )
    p.add_argument("--trial", help=argparse.SUPPRESS)  # internal: one trial, JSON spec
    return p


def _plan(ns: argparse.Namespace) -> Plan:
    base = QUICK if ns.quick else Plan()
    names = [f.name for f in dataclasses.fields(Plan)]
    given = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    return dataclasses.replace(base, **given)


def _run_child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    plan = Plan(**spec["plan"])
    result = asyncio.run(run_trial(plan, int(spec["devices"]), Path(spec["dir"])))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _profile(plan: Plan, path: Path, args: BenchArgs) -> int:
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        result = asyncio.run(run_trial(plan, plan.start, Path(tmp), profiler))
    profiler.dump_stats(path)
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    emit(result, args, f"one trial of {plan.start} devices, profiled over the window")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.trial is not None:
        return _run_child(ns.trial)
    try:
        plan = _plan(ns)
    except ValueError as exc:
        parser.error(str(exc))
    args = BenchArgs(json=ns.json, quick=ns.quick)
    if ns.profile is not None:
        return _profile(plan, ns.profile, args)

    def log(line: str) -> None:
        print(f"bench.fleet: {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = Path(tmp)
        make = trial_in_process if ns.in_process else trial_in_subprocess
        result = measure(plan, make(plan, workdir), log)
    emit(result, args, f"fleet capacity on Mosquitto, real time (devices: {result['devices']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
