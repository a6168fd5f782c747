"""The fleet runner: every device of a devices.yaml in one process (or one shard of it).

It provisions the data dir, starts the broker (embedded by default), connects one transport per
device, builds each device (``agent.fleet.build.build_device``), and drives the simulation: the
world and appliance models step through simulated time, each step's samples go to their devices,
and the runner waits until every device has made them durable before the next step
(backpressure), so simulated time never runs ahead of the fleet. ``speed`` paces simulated time
against the wall clock (``None``: as fast as the fleet keeps up).

Two clocks: the *data* clock is the simulation's (readings' times, sealing by age); the *network*
clock is real time on the monotonic clock (gossip timers and timeouts measure the network; setting
the wall clock moves no timer). A run resumes where the fleet as a whole stands (the clean stop
recorded in fleet.json, or the latest durable reading of any device after a kill): the models are
fast-forwarded to that time, and each device is handed the samples after its own last durable
reading on the way (none, unless it was stopped behind the others), so nothing is signed twice
and nothing is skipped. A realtime run resumes at the wall clock's time, the models skipping the
time the fleet was off, but never before where the fleet stands: a wall clock behind it, or one
set while running, is a jump that every device signs (``clock.jump_ms``, docs/TRACES.md).

Stopping (end of ``--for``, Ctrl-C) is clean: samples already handed to devices are signed and
durable, transports say goodbye (presence offline), and a broker the runner started is stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.config.devices import FleetConfig
from agent.device.faults import describe, first_cause
from agent.device.runtime import DeviceAgent, RestoreError, ingest
from agent.device.sealing import SealPolicy
from agent.device.storework import StoreThreads
from agent.errors import AgentError
from agent.fleet import brokertls
from agent.fleet.build import boot_inputs, build_device, replication_config
from agent.fleet.datadir import DataDir
from agent.fleet.health import stall_ms
from agent.fleet.keepup import KeepUp
from agent.fleet.keystore import own_rotations
from agent.fleet.process import raise_fd_limit
from agent.fleet.provision import (
    Provisioned,
    provision,
    read_origin,
    read_sim_time,
    recorded_origin,
    shard_mark,
    write_sim_time,
)
from agent.fleet.runlock import DeviceInUse, lock_device
from agent.fleet.serial_source import LiveSource, SerialFeed, serial_devices
from agent.fleet.sources import (
    SampleSource,
    SensorGuard,
    fast_forward,
    jump_samples,
    simulation,
)
from agent.fleet.view import DeviceRow, FleetSnapshot, LiveView, SyncTotals
from agent.fleet.watch import FleetWatch, domain_gaps
from agent.gossip import actions as A
from agent.gossip.tuning import GossipConfig
from agent.transport.base import Transport
from agent.transport.brokers import (
    MOSQUITTO_TLS,
    Broker,
    BrokerError,
    MosquittoBroker,
    broker_from_spec,
    client_tls,
)
from agent.transport.endpoint import Endpoint
from agent.transport.errors import TransportError
from agent.transport.memory import MemoryNetwork
from agent.transport.mqtt import MqttHub, MqttTransport, hub_options
from agent.transport.topics import Topics
from firmware_sim.clock import JUMP_BACK_MS, Clock, RealClock, SimClock, WallJumps
from firmware_sim.samples import Sample
from ledger.errors import StoreError
from ledger.groupsync import GroupSync
from ledger.store import Store

log = logging.getLogger("edgefleet.runner")

# Fleets larger than this share one MQTT connection per process (whatever the shard's size).
SHARED_CONNECTION_ABOVE = 200
VIEW_PERIOD_S = 0.25
WATCH_PERIOD_S = 1.0  # the health tick and the run-status file: once a second
WATCH_SHARE = 20  # ... or less often, so that it never takes more than 1/20 of the loop
MAX_STEP_MS = 60_000
# Collector thresholds while a fleet runs. A young collection starts once 100,000 more
# container objects are alive than at the last one (700 by default) and scans those that still
# are: a fleet keeps tens of thousands of coroutines, futures and messages in flight, so a
# collection costs about the same whatever the threshold, and a higher one runs it less often.
# A 1,000-device shard spent 55 ms/s collecting at 20,000 (pauses of 20-150 ms) and 10-25 ms/s
# at 100,000 (pauses up to ~250 ms, every few seconds).
RUN_GC_THRESHOLDS = (100_000, 20, 20)
# Threads for the devices' store work. Each job takes the GIL back after every SQLite call, and
# waits for it while the event loop is busy: more threads keep more jobs moving meanwhile (a
# 1,000-device shard fell 10 s behind with 4; it kept up with 12, at the cost of latency).
STORE_THREADS = 8
# The interpreter's thread switch interval while a fleet runs. Store work runs on executor
# threads that take the GIL back after each SQLite call; with the default 5 ms, each of those
# waits up to 5 ms whenever the event loop is busy, so a busy loop starves its own store work
# (a 700-device shard fell 15 s behind at 60% loop load). 0.5 ms bounds that wait.
RUN_SWITCH_INTERVAL_S = 0.0005
# After a stop is asked for (Ctrl-C, SIGTERM), how long the clean stop may take before the run
# is cancelled where it is: a stop must never wait on a device that cannot finish.
STOP_GRACE_S = 5.0
# How long stopping a broker the runner started may take before it is left behind.
CLOSE_TIMEOUT_S = 5.0


class FleetError(AgentError, code="fleet"):
    """The fleet cannot run at all (every selected device failed to start)."""


@dataclass
class RunOptions:
    data: Path
    broker: str = "embedded"  # "embedded" | "mosquitto" | URL | "memory"
    for_ms: int | None = None  # simulated duration; None: until stopped
    speed: float | None = None  # simulated seconds per wall second; None: max
    seed: int | None = None  # overrides the file's seed
    shard: tuple[int, int] = (0, 1)
    seal: SealPolicy = field(default_factory=SealPolicy)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    settle_s: float = 10.0  # after the last step: wait up to this long for gossip to converge
    view: bool = True
    out: TextIO | None = None
    # Where samples come from (default: the simulation of the devices file); see
    # agent.fleet.sources.
    source: Callable[[FleetConfig, int], SampleSource] | None = None
    # Everything on simulated time, for tests: the in-memory network (broker "memory"), gossip
    # timers on the simulation clock, settle measured in simulated seconds. No wall clock.
    simulated_network: bool = False
    resume: bool = True  # continue where the data dir's previous run stopped
    # Run only these devices of the shard (empty: all): `run --device`, and restore
    # (agent/fleet/restore_device.py), which also restores
    # these from their peers before anything runs (their stores must be empty). Devices whose
    # store is missing or empty in a fleet that ran before are restored without being named.
    only: tuple[str, ...] = ()
    restore: tuple[str, ...] = ()
    # Real time: readings carry the wall clock. The fleet's start is the first real-time run's
    # start (kept in fleet.json); a later run fast-forwards the models over the time it was off.
    realtime: bool = False
    # The passphrase of pre-enrolled device keys (a data dir without its authority key,
    # docs/DEPLOY.md): called once, only if such a key is to be unlocked (agent/fleet/provision.py).
    passphrase: Callable[[], bytes] | None = None
    # Real time (the network clock of live runs, the wall clock realtime runs start from); tests
    # inject one whose wall clock jumps. None: firmware_sim.clock.RealClock().
    clock: RealClock | None = None


@dataclass
class RunResult:
    sim_start_ms: int
    sim_end_ms: int
    wall_s: float
    devices: dict[str, DeviceAgent]
    converged: bool
    samples: int
    interrupted: bool = False
    # Devices that failed alone (at start or while running): name -> the one line saying
    # what failed, in which file, and the fix (agent/device/faults.py).
    failed: dict[str, str] = field(default_factory=dict)
    # Those of them that never started (no agent): name -> (kind, site, line), for the view.
    failed_at_start: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # Not converged: per gossip domain, the heads a local member lacks (agent/fleet/watch.py).
    unconverged: dict[str, list[str]] = field(default_factory=dict)

    @property
    def damaged(self) -> dict[str, list[str]]:
        """Devices that found stored blocks damaged when reading them to send (withheld, the
        device ran on): name -> one line per block."""
        return {n: list(a.ctx.damaged.values()) for n, a in self.devices.items() if a.ctx.damaged}

    def snapshot(self) -> FleetSnapshot:
        return _snapshot(
            self.devices,
            self.sim_end_ms,
            self.wall_s,
            0.0,
            "",
            {},
            failed_at_start=self.failed_at_start,
        )


class FleetRunner:
    def __init__(self, cfg: FleetConfig, opts: RunOptions) -> None:
        if opts.seed is not None:
            cfg = _with_seed(cfg, opts.seed)
        self.cfg = cfg
        self.opts = opts
        self.data = DataDir(opts.data)
        index, count = opts.shard
        if not (count >= 1 and 0 <= index < count):
            raise ValueError(f"--shard {index}/{count}: need 0 <= I < N")
        names = [d.name for d in cfg.devices]
        self.local = [n for i, n in enumerate(names) if i % count == index]
        if opts.only:
            self.local = [n for n in self.local if n in opts.only]
        self._restoring: set[str] = set()
        self.data_clock: SimClock | None = None
        self.real_clock = opts.clock or RealClock()
        self.net_clock: Clock = self.real_clock
        # The local devices' real serial sensors (agent/fleet/serial_source.py): they imply
        # real time.
        self._serial = self._serial_feed()
        if self._serial is not None:
            opts.realtime = True
        # Realtime runs watch the wall clock being set: each jump is signed by every device.
        self._jumps = WallJumps(self.real_clock) if opts.realtime else None
        self.agents: dict[str, DeviceAgent] = {}
        self.network: MemoryNetwork | None = None
        self._stop = asyncio.Event()
        self._broker: Broker | None = None
        self._hub: MqttHub | None = None
        self._tls: brokertls.FleetTls | None = None  # --broker mosquitto-tls
        # device id -> its own TLS client files (mosquitto-tls, or mqtts:// naming no cert=)
        self._device_tls: dict[str, brokertls.TlsFiles] = {}
        self._transports: list[Transport] = []
        # Real-time runs: the stores' durable commits are synced as a group (one syncfs for all
        # the commits a sync finds, ledger/groupsync.py); the store threads hand a job back once
        # it is synced. Simulated runs write inline, each commit synced by itself.
        self._group = None if opts.simulated_network else GroupSync()
        self._executor = StoreThreads(STORE_THREADS, group=self._group)
        self._broker_note = ""
        self._notes: tuple[str, ...] = ()
        self._done_until: dict[str, int] = {}  # device -> samples up to here are durable
        self._backlog: list[tuple[str, Sample]] = []  # samples a resume still owes devices
        self._flags: list[tuple[int, str]] = []  # clock jumps to sign: (jump ms, why)
        self._locks: list[int] = []  # the local devices' directories, locked (runlock.py)
        self._sim_start = cfg.start_ms  # where this run's simulated time began (its speed's)
        self._wall0 = time.monotonic()
        self._rates: dict[str, tuple[float, int, int]] = {}  # snapshot()'s, for its rates
        # Devices that failed before they could run (key, store): name -> (kind, site, line).
        self._failed_at_start: dict[str, tuple[str, str, str]] = {}
        self._main: asyncio.Task[Any] | None = None
        # Device id -> name of the fleet's devices (the lines naming a peer), and the watch
        # that writes the run-status file and tracks convergence per domain (agent/fleet/watch.py).
        self._names: dict[str, str] = {}
        self._sensors = SensorGuard(None, cfg)  # the source's, once it is made
        g = opts.gossip
        self._watch = FleetWatch(
            self.data.root,
            opts.shard,
            stall_ms(g.anti_entropy_ms, g.jitter_ms, g.request_timeout_ms, g.anti_entropy_backoff),
            {d.name: d.domains for d in cfg.devices},
        )
        self.forced = False  # the run was cancelled: it did not stop within STOP_GRACE_S
        self.keep_up = KeepUp()  # --speed max waits for the receivers too (agent/fleet/keepup.py)

    @property
    def failed(self) -> dict[str, str]:
        """Every local device that failed alone, at start or while running: name -> line."""
        out = {n: line for n, (_, _, line) in self._failed_at_start.items()}
        out.update({n: a.failure for n, a in self.agents.items() if a.failure is not None})
        return out

    def _running(self) -> dict[str, DeviceAgent]:
        return {n: a for n, a in self.agents.items() if a.failure is None}

    def _lock_devices(self, names: list[str]) -> None:
        """One process per device (runlock.py): a device another run holds fails alone; when
        every one is held, the whole run is refused (the fleet started twice)."""
        busy: dict[str, DeviceInUse] = {}
        for name in names:
            try:
                self._locks.append(lock_device(self.data.device(name)))
            except DeviceInUse as exc:
                busy[name] = exc
        if busy and len(busy) == len(names):
            raise FleetError(
                f"{self.data.root}: {'its device is' if len(names) == 1 else 'every device is'}"
                " in use by another edgefleet run on this data dir: stop that run first "
                f"(`edgefleet status --data {self.data.root}` shows it)"
            )
        for name, held in busy.items():
            self._device_failed(name, held)

    def _device_failed(self, name: str, exc: BaseException) -> None:
        """A device that cannot start: reported once, the others start."""
        dev = self.cfg.device(name)
        line = describe(name, first_cause(exc))
        self._failed_at_start[name] = (dev.kind, dev.site, line)
        log.error("%s", line, extra={"device": name})
        log.debug("failure of %s", name, exc_info=exc)

    @property
    def endpoint(self) -> Endpoint | None:
        """The MQTT broker the fleet runs on (None unless it is up, and on the in-memory net)."""
        try:
            return None if self._broker is None else self._broker.endpoint
        except BrokerError:  # created, not started yet (or stopped)
            return None

    @property
    def ready(self) -> bool:
        """Every local device is built and the data clock runs (``snapshot`` shows them all)."""
        built = len(self.agents) + len(self._failed_at_start)  # failed ones are built too
        return self.data_clock is not None and built >= len(self.local)

    @property
    def group_sync(self) -> GroupSync | None:
        """The group sync of the stores' durable commits (None in simulated runs)."""
        return self._group

    def request_stop(self) -> None:
        self._stop.set()

    def force_stop(self) -> None:
        """Cancel the run where it is (a stop that did not finish within STOP_GRACE_S, or a
        second signal): what is committed stays; what was in flight is not waited for."""
        if self._main is not None and not self._main.done():
            self.forced = True
            self._main.cancel()

    def snapshot(self) -> FleetSnapshot:
        """The fleet now, as the live view sees it (call it on the event loop's thread)."""
        now = self.data_clock.now_ms() if self.data_clock else self.cfg.start_ms
        wall = time.monotonic() - self._wall0
        speed = self._speed(self._wall0) if self.data_clock else 0.0
        snap = _snapshot(
            self.agents,
            now,
            wall,
            speed,
            self._broker_note,
            self._rates,
            self._live_notes(),
            self._serial_down(),
            failed_at_start=self._failed_at_start,
            network=self.network,
        )
        group = self._group
        sync = None if group is None else SyncTotals(group.syncs, group.synced_stores, group.sync_s)
        return dataclasses.replace(snap, group_sync=sync, domains=self._watch.health)

    # --- the run -------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        self._main = asyncio.current_task()
        try:
            return await self._run()
        except asyncio.CancelledError:
            if not self.forced or self._main is None:
                raise
            self._main.uncancel()
            failed = self.failed
            raise FleetError(
                f"stopped without waiting for the devices (the clean stop did not finish "
                f"within {STOP_GRACE_S:.0f} s, or a second signal): what they committed is "
                "kept" + (f"; failed: {'; '.join(failed.values())}" if failed else "")
            ) from None
        finally:
            for fd in self._locks:  # after the stores closed: the devices may run elsewhere
                os.close(fd)
            self._locks = []

    async def _run(self) -> RunResult:
        raise_fd_limit()
        if self._serial is None:
            return await self._run_fleet()
        # Options a driver refuses fail here, before anything is written; a missing port is
        # the sensor's first outage and the run goes on.
        await asyncio.to_thread(self._serial.start)
        try:
            return await self._run_fleet()
        finally:
            await asyncio.to_thread(self._serial.close)

    async def _run_fleet(self) -> RunResult:
        if self._serial is not None:
            log.info("real time: serial sensors of %s", self._serial.describe())
        # Where the fleet stands (each local store read once; provisioning adds no reading).
        resume = recorded = self._recorded_time()
        if self.opts.realtime:
            # One process of the fleet (no shards sharing fleet.json) whose devices never signed
            # here starts now, whatever origin a refused start recorded.
            first = self.opts.resume and self.opts.shard[1] == 1 and recorded is None
            origin = read_origin(self.data, self.real_clock.wall_ms(), first=first)
            self.cfg = _with_start(self.cfg, origin)
            self.opts.speed = 1.0
        elif self.opts.resume and (origin_ms := recorded_origin(self.data)) is not None:
            # A real-time fleet's data dir: its models started at the origin, so a simulated
            # run resumes them from there too. From the file's start they were stepped over
            # every second between it and the real-time runs (11 months of steps, 6.6 GB).
            self.cfg = _with_start(self.cfg, origin_ms)
        cfg = self.cfg
        self._restoring = self._restore_candidates()
        prov = provision(
            cfg, self.data, cfg.start_ms, local=self.local, passphrase=self.opts.passphrase
        )
        broken = [n for n in self.local if n in prov.failed]
        if broken and len(broken) == len(self.local):
            raise prov.failed[broken[0]]  # nothing could run: the run itself fails
        for name in broken:
            self._device_failed(name, prov.failed[name])
        self._lock_devices([n for n in self.local if n in prov.devices and n not in broken])
        make = self.opts.source or simulation
        fleet = make(cfg, self._step_ms())
        self._sensors = SensorGuard(fleet, cfg)  # a model that raises fails its device alone
        if self.opts.realtime and recorded is not None:
            resume = self._realtime_resume(recorded)
        if resume is not None and resume >= fleet.now_ms:
            # A device's samples after its own last durable reading, up to where the fleet as
            # a whole stood, are still to sign; the rest is skipped (realtime: time off).
            owed = -1 if recorded is None else recorded
            self._backlog = fast_forward(fleet, resume, self._done_until, owed)
        start = self._sim_start = fleet.now_ms
        end = None if self.opts.for_ms is None else start + self.opts.for_ms
        self.data_clock = SimClock(start)
        if self.opts.simulated_network:
            self.net_clock = self.data_clock
        wall0 = self._wall0 = time.monotonic()
        samples = 0
        log.info(
            "fleet %s: %d local devices of %d (shard %d/%d), simulated start %d, until %s",
            cfg.name,
            len(self.local),
            len(cfg.devices),
            *self.opts.shard,
            start,
            "stopped" if end is None else end,
        )
        stores: list[Store] = []
        gc_thresholds = gc.get_threshold()
        switch_interval = sys.getswitchinterval()
        try:
            if self._serial is not None:
                fleet = LiveSource(fleet, self._serial)
            await self._connect(prov)
            stores = await self._build_agents(prov)
            # Keys, certificates, stores and cores live as long as the run: move them out of
            # the collector's sight, so that collections scan only what the run allocates.
            gc.collect()
            gc.freeze()
            gc.set_threshold(*RUN_GC_THRESHOLDS)
            sys.setswitchinterval(RUN_SWITCH_INTERVAL_S)
            async with asyncio.TaskGroup() as tg:
                runs = [tg.create_task(a.run(), name=f"agent:{n}") for n, a in self.agents.items()]
                view = tg.create_task(self._view_loop(wall0), name="view")
                try:
                    await self._restore_phase()
                    samples = await self._simulate(fleet, end)
                    converged = await self._settle()
                    gaps = {} if converged or self._stop.is_set() else self._gaps()
                finally:
                    task = asyncio.current_task()
                    if task is None or not task.cancelling():  # a forced stop waits for nothing
                        for a in self.agents.values():
                            await a.drained()
                    for task in [*runs, view]:
                        task.cancel()
            for a in self.agents.values():
                await a.shutdown()
            try:
                write_sim_time(self.data, fleet.now_ms)
            except OSError as exc:  # a full disk: the stores know where each device stopped
                log.warning("cannot record the simulated time reached in fleet.json: %s", exc)
            result = RunResult(
                start,
                fleet.now_ms,
                time.monotonic() - wall0,
                self.agents,
                converged,
                samples,
                self._stop.is_set(),
                self.failed,
                dict(self._failed_at_start),
                gaps,
            )
            self._final_view(result)
            return result
        finally:
            gc.unfreeze()  # the run's objects may go now (tests run many fleets per process)
            gc.set_threshold(*gc_thresholds)
            sys.setswitchinterval(switch_interval)
            await self._close()
            self._executor.shutdown(wait=True)
            for s in stores:
                s.close()  # syncs a store the group has not synced yet
            if self._group is not None:
                self._group.close()

    def _serial_feed(self) -> SerialFeed | None:
        """The serial sensors of the local devices when samples come from the simulation (a
        replayed trace already holds what they read); None when there are none."""
        if self.opts.source is not None or self.opts.simulated_network:
            return None
        devices = serial_devices(self.cfg, self.local)
        return SerialFeed(self.cfg, devices, clock=self.real_clock) if devices else None

    def _live_notes(self) -> tuple[str, ...]:
        """The view's notes: the broker's, and the serial sensors' state."""
        if self._serial is None:
            return self._notes
        down = [o.note() for o in self._serial.down()]
        return (*self._notes, f"real time: serial sensors of {self._serial.describe()}", *down)

    def _serial_down(self) -> set[str]:
        """The local devices with a serial sensor down now."""
        return set() if self._serial is None else {o.device for o in self._serial.down()}

    def _step_ms(self) -> int:
        speed = self.opts.speed
        if speed is None:
            return MAX_STEP_MS
        # About four steps per wall second, at least one simulated second each.
        return int(min(MAX_STEP_MS, max(1000, speed * 250)))

    async def _simulate(self, fleet: SampleSource, end: int | None) -> int:
        assert self.data_clock is not None
        speed = self.opts.speed
        # Paced on the loop's clock: monotonic in a live run (setting the wall clock changes
        # nothing), simulated under a SimEventLoop (a paced run then costs no wall time).
        loop = asyncio.get_running_loop()
        sim0, wall0 = fleet.now_ms, loop.time()
        total = 0
        horizon = end if end is not None else (1 << 62)
        for target in fleet.targets(horizon):
            if self._stop.is_set():
                break
            if speed is not None:
                wait = wall0 + (target - sim0) / 1000 / speed - loop.time()
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), wait)
                        break
                    except TimeoutError:
                        pass
            batch = fleet.step(target)
            for name, exc in self._sensors.new().items():
                if name in self.agents:
                    self.agents[name].fail(exc)
            jump = None if self._jumps is None else self._jumps.check()
            if jump is not None:
                self._flags.append((jump, "wall clock set " + ("back" if jump < 0 else "forward")))
            if self._backlog or self._flags:  # ahead of the step's own samples, flags after
                batch = [*self._backlog, *batch, *self._flag_samples(target)]
                self._backlog = []
            self.data_clock.advance_to(target)
            per_device: dict[str, list[Sample]] = defaultdict(list)
            done = self._done_until
            for name, sample in batch:
                if name in self.agents and sample.time_ms > done.get(name, -1):
                    per_device[name].append(sample)
            running = self._running()
            steps = [(running[n], items) for n, items in per_device.items() if n in running]
            total += sum(len(items) for _, items in steps)
            await ingest(steps)  # a few store jobs for the whole step (agent/device/runtime.py)
            for a in running.values():
                if a.busy:  # batches queued: a restoring device, or one busy with a store job
                    await a.drained()
            if self.network is not None:
                await self._quiesce()
            if speed is None:  # and taken in by the receivers (agent/fleet/keepup.py)
                await self.keep_up.wait(self._receivers, self._stop)
            if not self._running():
                log.error("every device of this run has failed: stopping")
                break
        if speed is None:
            log.info("%s", self.keep_up.summary())
        return total

    def _receivers(self) -> list[Transport]:
        return [a.transport for a in self._running().values()]

    async def _quiesce(self, max_rounds: int = 50) -> None:
        """Deliver and let every task run until nothing more is sent: an exchange (summary,
        request, response) completes within the simulated instant it starts, as the memory
        network has no delay. Otherwise each hop waits for the next step (up to 60 s) while the
        gossip timeouts run on the same clock: every pull would time out and be dropped."""
        assert self.network is not None
        await _yield_all()
        for _ in range(max_rounds):
            if self.network.deliver_all() == 0:
                return
            await _yield_all()

    def _recorded_time(self) -> int | None:
        """Where the fleet as a whole stands (None: it never ran, or ``resume`` is off): the
        later of the clean stop's time in fleet.json and the last durable reading of any local
        device. Also notes each device's own last durable reading: a device resumes from there.

        fleet.json is written at a clean stop only: after a kill the stores know better. Each
        step's samples are committed per device in one transaction, so a device holds every
        sample up to its last durable reading's time and none after; a device that had nothing
        to say for hours (a washer between cycles) does not hold the fleet back."""
        if not self.opts.resume:
            return None
        self._done_until = self._last_durable_times()
        times = [t for t in (read_sim_time(self.data), *self._done_until.values()) if t is not None]
        return max(times, default=None)

    def _realtime_resume(self, recorded: int) -> int:
        """Where a realtime run resumes: now on the wall clock, the models skipping the time the
        fleet was off; but never before where the fleet stands, which would sign its recorded
        time slots again: a wall clock behind that is a jump, signed by every device."""
        wall = self.real_clock.wall_ms()
        if wall < recorded - JUMP_BACK_MS:
            self._flags.append((wall - recorded, "wall clock behind the last reading"))
        return max(wall, recorded)

    def _flag_samples(self, t_ms: int) -> list[tuple[str, Sample]]:
        """The noted clock jumps as samples of every local device at ``t_ms``, each logged as a
        warning naming the device; the notes are cleared."""
        out = []
        for jump, why in self._flags:
            for name, sample in jump_samples(self.agents, t_ms, jump, why):
                log.warning("%s: clock jump of %+d ms (%s): signed at %d", name, jump, why, t_ms)
                out.append((name, sample))
        self._flags = []
        return out

    def _last_durable_times(self) -> dict[str, int]:
        """Time of each local device's last durable reading (devices with none are left out)."""
        out = {}
        for name in self.local:
            path = self.data.store_path(name)
            if not path.exists():
                continue
            try:
                with Store(path) as store:
                    t = store.last_reading_time()
            except StoreError:
                continue  # a damaged store: the device fails when it is built
            if t is not None:
                out[name] = t
        return out

    async def _settle(self) -> bool:
        """Seal what is pending, then wait until every local peer holds every local head."""
        if self.opts.simulated_network:  # one at a time: a seed reproduces the run
            for agent in self.agents.values():
                await agent.seal_now()
            return await self._settle_simulated()
        await asyncio.gather(*(agent.seal_now() for agent in self.agents.values()))
        if not self._running():
            return False
        deadline = time.monotonic() + self.opts.settle_s
        count = self.opts.shard[1]
        key = f"end-{self.data_clock.now_ms() if self.data_clock else 0}"
        sharded = count > 1
        if sharded:  # phase 1: every shard has sealed its last blocks
            await self._barrier(key, "sealed", deadline)
        remote = self._remote_heads() if sharded else {}
        converged = False
        while True:
            if self.network is not None:
                self.network.deliver_all()
            if _converged(self._running(), remote):
                converged = True
                break
            if time.monotonic() >= deadline or self._stop.is_set():
                break
            await asyncio.sleep(0.05)
        if sharded:  # phase 2: nobody leaves while another shard may still pull from it
            await self._barrier(key, "converged" if converged else "gave-up", deadline)
        return converged

    async def _barrier(self, key: str, state: str, deadline: float) -> None:
        index, count = self.opts.shard
        order = ("sealed", "converged", "gave-up")
        while True:
            states = shard_mark(self.data, key, index, count, state)
            ready = len(states) == count and all(
                order.index(s) >= order.index(state) or s == "gave-up" for s in states.values()
            )
            if ready or time.monotonic() >= deadline or self._stop.is_set():
                return
            await asyncio.sleep(0.1)

    def _remote_heads(self) -> dict[str, bytes]:
        """Head hashes of the devices other shards run, read from their stores (same data dir)."""
        heads = {}
        for dev in self.cfg.devices:
            if dev.name in self.agents or not self.data.store_path(dev.name).exists():
                continue
            try:
                with Store(self.data.store_path(dev.name)) as store:
                    head = store.head()
            except StoreError:
                continue  # a damaged store: its shard reports the device
            if head is not None:
                heads[head.header.device_id] = head.hash
        return heads

    async def _settle_simulated(self) -> bool:
        """Settle on simulated time: deliver, let every task run, advance 100 ms, repeat."""
        assert self.data_clock is not None and self.network is not None
        limit = self.data_clock.now_ms() + int(self.opts.settle_s * 1000)
        while True:
            for _ in range(3):
                self.network.deliver_all()
                await _yield_all()
            if _converged(self._running()):
                return True
            if self.data_clock.now_ms() >= limit:
                return False
            self.data_clock.advance_to(self.data_clock.now_ms() + 100)

    # --- wiring --------------------------------------------------------------------------------
    async def _connect(self, prov: Provisioned) -> None:
        spec = "memory" if self.opts.simulated_network else self.opts.broker
        if spec == "memory":
            self.network = MemoryNetwork(random.Random(self.cfg.seed))
            self._broker_note = "in-memory network"
            return
        shared = len(self.cfg.devices) > SHARED_CONNECTION_ABOVE
        local = {prov.device_id(n): self.data.device(n) for n in self.local if n in prov.devices}
        if spec == MOSQUITTO_TLS:
            self._broker = await self._tls_broker(local, shared)
            self._device_tls = self._tls.devices if self._tls is not None else {}
        else:
            self._broker = broker_from_spec(
                spec, workdir=self.data.root, devices=len(self.cfg.devices)
            )
            try:
                self._device_tls = brokertls.url_device_files(spec, local)
            except brokertls.BrokerTlsError as exc:
                raise BrokerError(str(exc)) from None
            if self._device_tls:  # one identity per connection: no shared one
                shared = False
        await self._broker.start()
        url = self._broker.endpoint.url
        if self._tls is not None:  # the clients' endpoints carry the TLS, the broker's does not
            url = url.replace("mqtt://", "mqtts://", 1)
        log.info("broker: %s %s", self._broker.kind, url)
        self._broker_note = f"{self._broker.kind} {url}"
        self._notes = (self._broker.note,) if self._broker.note else ()
        if shared:
            options = hub_options(len(local))  # a window per device it carries
            if self._tls is not None and self._tls.hub is not None:
                self._hub = MqttHub(
                    self._tls_endpoint(self._tls.hub), hub_id=brokertls.HUB_ID, options=options
                )
            else:
                self._hub = MqttHub(self._broker.endpoint, options=options)
            await self._hub.start()

    async def _tls_broker(self, devices: dict[str, Path], shared: bool) -> MosquittoBroker:
        """A Mosquitto with a TLS listener that takes only the fleet's certificates, and an ACL
        binding each device's topics to its certificate (agent/fleet/brokertls.py); the
        certificates are issued from the fleet authority in the data dir when missing."""
        try:
            self._tls = await asyncio.to_thread(
                brokertls.prepare_fleet,
                self.data,
                devices,
                hub=shared,
                topics=Topics(),
                passphrase=self.data.fleet_passphrase(),
            )
        except brokertls.BrokerTlsError as exc:
            raise BrokerError(str(exc)) from None
        broker = MosquittoBroker(
            workdir=self.data.root / brokertls.BROKER,
            tls=self._tls.listener,
            devices=len(self.cfg.devices),
        )
        broker.kind = MOSQUITTO_TLS
        return broker

    def _tls_endpoint(self, files: brokertls.TlsFiles) -> Endpoint:
        assert self._broker is not None
        e = self._broker.endpoint
        return dataclasses.replace(e, tls=client_tls(files.ca, files.cert, files.key))

    async def _transport(self, device_id: str, domains: Sequence[str]) -> Transport:
        if self.network is not None:
            return self.network.attach(device_id, domains)
        if self._hub is not None:
            return await self._hub.attach(device_id, domains)
        assert self._broker is not None
        endpoint = self._broker.endpoint
        if device_id in self._device_tls:  # each device on its own certificate
            endpoint = self._tls_endpoint(self._device_tls[device_id])
        t = MqttTransport(endpoint, device_id, domains)
        await t.connect()
        return t

    async def _build_agents(self, prov: Provisioned) -> list[Store]:
        assert self.data_clock is not None
        cfg = self.cfg
        members: dict[str, set[str]] = defaultdict(set)
        unnamed: list[str] = []
        here = {d for n in self.local for d in cfg.device(n).domains}
        for dev in cfg.devices:
            if dev.name in prov.devices:
                member = prov.device_id(dev.name)
            elif dev.device_id is not None:
                # Enrolled on another machine, named by its `id:` in the file: its certificate
                # comes over the wire (CERTS) and is verified against the fleet root.
                member = dev.device_id
            else:  # enrolled on another machine and not named: unknown here
                if here.intersection(dev.domains):
                    unnamed.append(dev.name)
                continue
            self._names[member] = dev.name
            for dom in dev.domains:
                members[dom].add(member)
        if unnamed:
            unheard = (
                f"{', '.join(unnamed)}: not enrolled in {self.data.root} and without an `id:` in "
                f"{cfg.source}: the devices run here do not hear "
                f"{'it' if len(unnamed) == 1 else 'them'} (give each its device id, "
                "docs/DEPLOY.md 6.2)"
            )
            log.warning("%s", unheard)
            self._notes = (*self._notes, unheard)  # under the live view's table too
        by_id = {e.certificate.device_id: e.certificate.wire for e in prov.devices.values()}
        stores: list[Store] = []
        for name in self.local:
            if name in self._failed_at_start:
                continue
            try:
                await self._build_agent(name, prov, members, by_id, stores)
            except TransportError:
                raise  # the broker, not the device: the fleet cannot run
            except Exception as exc:  # contained: this device fails, the others start
                self._device_failed(name, exc)
        if self._group is not None:  # what start-up committed here, on the loop's thread
            await asyncio.to_thread(self._group.sync)
            self._group.take_noted()
        if self._failed_at_start and not self.agents:
            raise FleetError("no device could start: " + "; ".join(self.failed.values()))
        return stores

    async def _build_agent(
        self,
        name: str,
        prov: Provisioned,
        members: dict[str, set[str]],
        by_id: dict[str, bytes],
        stores: list[Store],
    ) -> None:
        """Open one device's store, connect it, build and start it (``self.agents[name]``).
        On failure nothing of it is left open."""
        assert self.data_clock is not None
        cfg = self.cfg
        dev = cfg.device(name)
        enrolled = prov.devices[name]
        dev_id = enrolled.certificate.device_id
        store = Store(self.data.store_path(name), group=self._group)
        transport: Transport | None = None
        try:
            domains = {d: members[d] for d in dev.domains}
            # The device keeps the certificates it verifies its peers with: its data dir then
            # verifies offline on its own (edgefleet verify).
            missing = [
                (peer, by_id[peer])
                for peer in sorted(set().union(*domains.values()) | {dev_id})
                if peer in by_id and store.certificate(peer) is None
            ]
            if missing:
                store.put_certificates(missing)
            for wire in own_rotations(self.data.device(name)):  # `keys rotate`: a wiped or
                store.put_credential(dev_id, "rotation", wire)  # older store learns them too
            transport = await self._transport(dev_id, dev.domains)
            agent = build_device(
                name=name,
                kind=dev.kind,
                site=dev.site,
                key=enrolled.key,
                # Devices at private sites seal every reading to the owner their certificate
                # names.
                owner_x25519=enrolled.certificate.owner_x25519,
                device_id=dev_id,  # after `keys rotate`, the key no longer derives it
                store=store,
                domains=domains,
                roots=prov.roots,
                transport=transport,
                data_clock=self.data_clock,
                net_clock=self.net_clock,
                seed=cfg.seed,
                policy=self.opts.seal,
                gossip=self.opts.gossip,
                replication=replication_config(cfg.replication, dev.spare_storage_mb),
                executor=None if self.opts.simulated_network else self._executor,
            )
            # Only the certificates this device tracks (its domains' members): fleet-wide
            # lists would cost every device a verification per device of the fleet.
            tracked = sorted(set().union(*domains.values()) | {dev_id})
            await agent.start(
                boot_inputs(store, [by_id[p] for p in tracked if p in by_id], dev_id),
                restore=name in self._restoring,
            )
        except BaseException:
            if transport is not None:
                await _quietly(transport.close())
            try:
                store.close()
            except StoreError as exc:
                log.debug("closing the store of %s: %s", name, exc)
            raise
        stores.append(store)
        self._transports.append(transport)
        agent.stats.names = self._names  # the log names a muted peer or excluded holder
        self.agents[name] = agent

    # --- restore (agent/fleet/restore_device.py) ---------------------------------------------
    def _restore_candidates(self) -> set[str]:
        """Local devices to restore from their peers before this run: those named in
        ``opts.restore``, and those already enrolled whose store is missing or empty while the
        fleet has run before (a clean stop recorded its time, or another device holds blocks):
        a wiped store. A device enrolled by this very start is new and starts fresh."""
        forced = set(self.opts.restore) & set(self.local)
        wiped = {
            n
            for n in self.local
            if (self.data.device(n) / "device.key").exists() and _store_empty(self.data, n)
        }
        if wiped - forced and not self._fleet_ran(wiped):
            wiped = set()
        for name in forced:
            if not _store_empty(self.data, name):
                raise RestoreError(
                    f"{name}: its store {self.data.store_path(name)} is not empty: "
                    "nothing to restore (restore a wiped device only)"
                )
        return forced | wiped

    def _fleet_ran(self, wiped: set[str]) -> bool:
        if read_sim_time(self.data) is not None:
            return True
        return any(
            not _store_empty(self.data, n) for n in self.data.device_names() if n not in wiped
        )

    async def _restore_phase(self) -> None:
        """Wait until every restoring device has restored (or failed) before samples flow:
        nothing is signed meanwhile. Simulated runs deliver and advance time here themselves."""
        restoring = [a for a in self.agents.values() if a.restoring]
        if not restoring:
            return
        log.info("restoring %s from their peers", ", ".join(a.name for a in restoring))
        if self.network is not None:  # the in-memory network delivers when told to
            await self._restore_memory(restoring)
        else:
            waiters = [asyncio.ensure_future(a.restore_settled.wait()) for a in restoring]
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                pending = set(waiters)
                while pending and not stop.done():
                    _, pending = await asyncio.wait(
                        {*pending, stop}, return_when=asyncio.FIRST_COMPLETED
                    )
                    pending.discard(stop)
            finally:
                for f in [*waiters, stop]:
                    f.cancel()
        failed = [a for a in restoring if a.restoring]
        if failed:
            why = "; ".join(
                f"{a.name}: {a.restore_result.reason}"
                if isinstance(a.restore_result, A.RestoreFailed)
                else f"{a.name}: not finished"
                for a in failed
            )
            raise RestoreError(f"restore did not finish, nothing was signed: {why}")

    async def _restore_memory(self, restoring: list[DeviceAgent]) -> None:
        """Deliver the in-memory network until the restores settle; on simulated time, advance
        it 100 ms at a time (bounded by the restore's own deadlines)."""
        assert self.data_clock is not None and self.network is not None
        cfg = self.opts.gossip
        limit = self.data_clock.now_ms() + cfg.restore_discovery_ms + 4 * cfg.restore_body_wait_ms
        while not all(a.restore_settled.is_set() for a in restoring) and not self._stop.is_set():
            for _ in range(3):
                self.network.deliver_all()
                await _yield_all()
            if all(a.restore_settled.is_set() for a in restoring):
                return
            if not self.opts.simulated_network:
                await asyncio.sleep(0.02)  # gossip timers run on the wall clock
            elif self.data_clock.now_ms() >= limit:
                return
            else:
                self.data_clock.advance_to(self.data_clock.now_ms() + 100)

    async def _close(self) -> None:
        for t in self._transports:
            await _quietly(t.close())
        if self._hub is not None:
            await _quietly(self._hub.close())
        if self._broker is not None:
            # Bounded: amqtt's shutdown can wait forever on a client session that never
            # finishes closing (seen after devices failed on a full disk); the process must end.
            await _quietly(self._broker.stop(), timeout_s=CLOSE_TIMEOUT_S)

    # --- view ----------------------------------------------------------------------------------
    async def _view_loop(self, wall0: float) -> None:
        """Every tick: the domains' convergence and the run-status file (with or without a
        view), and the view when there is one."""
        view = LiveView(self.opts.out) if self.opts.view else None
        due = 0.0
        while True:
            # The watch (convergence, the status file) once a second, or less often when it
            # costs more than 1/WATCH_SHARE of the loop (a snapshot and a look at every
            # tracker: ~20-40 ms for a 124-fridge street); the view repaints in between.
            start = time.monotonic()
            if start >= due:
                snap = self.observe()
                due = start + max(WATCH_PERIOD_S, WATCH_SHARE * (time.monotonic() - start))
            else:
                snap = self.snapshot()
            if view is not None:
                view.show(snap)
                await asyncio.sleep(VIEW_PERIOD_S)
            else:
                await asyncio.sleep(max(0.0, due - time.monotonic()))

    def observe(self) -> FleetSnapshot:
        """One tick of the watch: the snapshot with each domain's convergence, written to the
        run-status file (agent/fleet/watch.py). On the event loop's thread, while running."""
        return self._watch.observe(self.snapshot(), self.agents, self.net_clock.now_ms())

    def _gaps(self) -> dict[str, list[str]]:
        """Per domain, the heads a local member lacks at the end of an unconverged run."""
        remote = self._remote_heads() if self.opts.shard[1] > 1 else {}
        domains = {d.name: d.domains for d in self.cfg.devices}
        return domain_gaps(self._running(), domains, self._names, remote)

    def pace_lag_ms(self) -> float:
        """How far a paced run's data clock is behind its pace (``--speed`` times the wall time
        since the run's start), in data ms: the steps wait for the devices' store jobs, so a
        loaded machine falls behind, then catches up. 0 before the run or without a pace."""
        speed = self.opts.speed
        if self.data_clock is None or speed is None:
            return 0.0
        due = self._sim_start + (time.monotonic() - self._wall0) * 1000 * speed
        return max(0.0, due - self.data_clock.now_ms())

    def _speed(self, wall0: float) -> float:
        assert self.data_clock is not None
        wall = time.monotonic() - wall0
        # This run's simulated time, not the fleet's since the file's start: a resumed run's
        # speed read x421,169 at its start and crept down towards --speed 60 over minutes.
        return 0.0 if wall <= 0 else (self.data_clock.now_ms() - self._sim_start) / 1000 / wall

    def _final_view(self, result: RunResult) -> None:
        """The last run-status file (every device STOPPED or FAILED), and the view's last
        screen."""
        snap = _snapshot(
            self.agents,
            result.sim_end_ms,
            result.wall_s,
            (result.sim_end_ms - result.sim_start_ms) / 1000 / max(result.wall_s, 1e-9),
            self._broker_note,
            {},
            failed_at_start=self._failed_at_start,
            network=self.network,
        )
        self._watch.stopped(
            snap,
            self.agents,
            converged=result.converged,
            gaps=result.unconverged,
            interrupted=result.interrupted,
        )
        if self.opts.view:
            LiveView(self.opts.out).show(snap, final=True)


async def _yield_all(rounds: int = 20) -> None:
    """Let every ready task (and executor callback) run a few times."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def _key_status(a: DeviceAgent) -> dict[str, Any]:
    """The device's key life as its own node holds it (rotations; a revocation it received)."""
    rotations, revoked_from = a.node.key_status(a.device_id)
    return {"rotations": rotations, "revoked_from": revoked_from}


def _replication_row(a: DeviceAgent) -> dict[str, Any]:
    rep = a.replicator
    if rep is None:
        return {}
    node = rep.node
    heights = node.own_heights()
    # A device with fewer domain peers than the copies wanted can at best have every peer hold
    # a copy: that is its target (the live view says so), not a standing shortfall.
    wanted = node.config.replicas
    target = min(wanted, len(node.members()))
    full = sum(1 for h in heights if len(node.healthy_holders(h)) >= target)
    return {
        "replicated": (full, len(heights)),
        "copies_wanted": wanted,
        "copies_target": target,
        "held_bytes": node.used_bytes(),
        "quota_bytes": node.config.quota_bytes,
    }


def _counters(a: DeviceAgent, network: MemoryNetwork | None = None) -> dict[str, int]:
    """The device's event counters by source (DeviceRow.counters)."""
    s = a.stats
    out = {"device.blocks": s.blocks, "device.send_failures": s.send_failures}
    if network is not None:  # copies the in-memory broker dropped for this device (queue full)
        out["network.dropped_queue_full"] = network.dropped_for(a.device_id)
    out.update((f"device.{k}", v) for k, v in s.counters.items())
    out.update((f"gossip.{k}", v) for k, v in a.node.counters.items())
    out.update((f"transport.{k}", v) for k, v in dataclasses.asdict(a.transport.stats()).items())
    if a.replicator is not None:
        out.update((f"replication.{k}", v) for k, v in a.replicator.node.counters.items())
    return out


def _store_empty(data: DataDir, name: str) -> bool:
    """No store file, or a store holding no block and no reading (opened only if it exists)."""
    path = data.store_path(name)
    if not path.exists():
        return True
    try:
        with Store(path) as store:
            return store.block_count() == 0 and store.last_seq() is None
    except StoreError:
        return False  # there, but damaged: the device fails when it is built, never restored


def _converged(agents: dict[str, DeviceAgent], remote: dict[str, bytes] | None = None) -> bool:
    """Every local device holds the head of every domain peer whose head is known here (local
    devices, and ``remote`` heads of devices other shards run), and a chain of every domain
    peer in service (agent/device/liveness.py; presence alone is a hint) whose head is not:
    one that runs on another machine is known only from what it sends, so a run there is done
    once it has received that peer's chain."""
    heads = {a.device_id: h.hash for a in agents.values() if (h := a.writer.store.head())}
    heads.update(remote or {})
    here = {a.device_id for a in agents.values()}
    for agent in agents.values():
        for peer in agent.peer_ids:
            want = heads.get(peer)
            if want is None:
                elsewhere = peer not in here and agent.liveness.in_service(peer)
                if elsewhere and agent.node.head(peer) is None:
                    return False  # online elsewhere, and nothing of its chain received yet
                continue  # nothing sealed, or unknown
            held = agent.node.head(peer)
            if held is None or held.hash != want:
                if agent.node.key_status(peer)[1] is not None:
                    continue  # revoked (`keys revoke`): its later headers are refused for good
                return False
    return True


def _snapshot(
    agents: dict[str, DeviceAgent],
    sim_ms: int,
    wall_s: float,
    speed: float,
    broker: str,
    last: dict[str, tuple[float, int, int]],
    notes: tuple[str, ...] = (),
    serial_down: Collection[str] = frozenset(),
    *,
    failed_at_start: dict[str, tuple[str, str, str]] | None = None,
    network: MemoryNetwork | None = None,
) -> FleetSnapshot:
    rows = []
    sent = received = invalid = unproven = 0
    # device id -> the local devices that track it (once per snapshot: a scrape of a street of
    # hundreds of devices must not cost N^2 lookups in peer tuples per device)
    trackers: dict[str, list[DeviceAgent]] = defaultdict(list)
    for p in agents.values():
        for peer in p.peer_ids:
            trackers[peer].append(p)
    for name, a in agents.items():
        head = a.writer.store.head()
        height = None if head is None else head.header.height
        lows = [p.node.head(a.device_id) for p in trackers[a.device_id]]
        lowest = min((-1 if h is None else h.header.height for h in lows), default=height or -1)
        # The mesh it follows (presence of the rest is not watched), in service (presence is
        # a hint a spoofed retained offline can set; liveness is what the device acts on).
        online = sum(1 for p in a.watched if a.liveness.in_service(p))
        cert = a.node.device_id
        rows.append(
            DeviceRow(
                name=name,
                kind=_kind(a),
                site=_site(a),
                height=height,
                pending=a.writer.pending_count(),
                # Every reading the chain holds, like the height: what the store held when this
                # run began plus what the run signed (the writer's next sequence number).
                readings=a.writer.next_seq,
                temps_mc=a.temperatures(),
                alarms=tuple(sorted(a.stats.alarms)),
                peers_online=online,
                peers_total=len(a.watched),
                lag=0 if height is None else max(0, height - lowest),
                forked=cert in a.node.forked(),
                **_key_status(a),
                serial_down=name in serial_down,
                failure=a.failure,
                damaged=tuple(a.ctx.damaged.values()),
                **_replication_row(a),
                private=a.writer.owner_x25519 is not None,
                counters=_counters(a, network),
                muted=tuple(
                    (a.stats.peer_name(p), why) for p, why in sorted(a.stats.muted.items())
                ),
                excluded=tuple(
                    (a.stats.peer_name(p), f"score {score}")
                    for p, score in sorted(a.stats.excluded.items())
                ),
            )
        )
        sent += a.stats.sent
        received += a.stats.received
        invalid += a.node.counters.get("penalty_invalid", 0) + a.node.counters.get(
            "penalty_malformed", 0
        )
        cores = [a.node.counters] + ([a.replicator.node.counters] if a.replicator else [])
        unproven += sum(c.get("unattributable", 0) + c.get("old_version", 0) for c in cores)
    now = time.monotonic()
    prev = last.get("rates")
    sent_rate = recv_rate = 0.0
    if prev is not None and now > prev[0]:
        sent_rate = (sent - prev[1]) / (now - prev[0])
        recv_rate = (received - prev[2]) / (now - prev[0])
    last["rates"] = (now, sent, received)
    for name, (kind, site, line) in (failed_at_start or {}).items():
        rows.append(DeviceRow(name, kind, site, None, 0, 0, (), (), 0, 0, 0, failure=line))
    return FleetSnapshot(
        sim_ms=sim_ms,
        wall_s=wall_s,
        speed=speed,
        devices=tuple(rows),
        sent_per_s=sent_rate,
        received_per_s=recv_rate,
        invalid=invalid,
        unproven=unproven,
        broker=broker,
        notes=notes,
    )


def _kind(a: DeviceAgent) -> str:
    return a.kind


def _site(a: DeviceAgent) -> str:
    return a.site


def _with_seed(cfg: FleetConfig, seed: int) -> FleetConfig:
    return dataclasses.replace(cfg, seed=seed)


def _with_start(cfg: FleetConfig, start_ms: int) -> FleetConfig:
    return cfg.starting_at(start_ms)


async def _quietly(op: Awaitable[object], *, timeout_s: float | None = None) -> None:
    try:
        await asyncio.wait_for(op, timeout_s)
    except TimeoutError:
        log.warning("closing did not finish within %.0f s: left behind", timeout_s)
    except Exception as exc:  # closing must never hide the run's own result
        log.debug("error while closing: %s", exc)


def install_signal_handlers(
    runner: FleetRunner, grace_s: float = STOP_GRACE_S
) -> Callable[[], None]:
    """The first Ctrl-C or SIGTERM stops cleanly; a second one, or a clean stop that has not
    finished ``grace_s`` later, cancels the run where it is (``FleetRunner.force_stop``). A
    stop never waits on a device that cannot finish (a full disk, a store thread that hangs)."""
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def on_signal() -> None:
        hits["n"] += 1
        if hits["n"] == 1:
            runner.request_stop()
            loop.call_later(grace_s, runner.force_stop)
        else:
            runner.force_stop()

    loop.add_signal_handler(signal.SIGINT, on_signal)
    loop.add_signal_handler(signal.SIGTERM, on_signal)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)

    return remove
