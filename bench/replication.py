"""Edge replication: restore speed, wire cost per placed body, repair time and availability.

``python -m bench.replication --json [--quick]`` prints one JSON object with four figures and
what they rest on. Three runs make them, each through the real code path:

**1. Restore** (``restore_blocks_per_s``). A 10,000-block chain (``--quick``: 1,000) of one
device, ``restored``, is written with ``ChainWriter`` into its own SQLite store (4 readings per
block, signed with its provisioned key). Three domain peers (``holder-1..3``, the R = 3 holders
the chain would have) get its headers (``Store.put_peer_headers``) and every body as a replica
(``Store.put_replica``, the table replication fills and restore serves from): the placement is
given, not produced by a run, because sealing 10,000 blocks through a live fleet takes hours of
simulated time and says nothing more about the restore. The device's store is then wiped (key and
certificate kept) and it is restored by ``agent.fleet.restore_device.restore_device``: the fleet
runner with
the four devices on the in-memory network and simulated time (``simulated_network``; no broker),
so the figure is the protocol's and the machine's, not a broker's. Each round runs in a fresh
interpreter (a restored device has verified none of its headers before; the process-wide header
memo would flatter a second round). Timed: from the moment the restoring device is built (its
restore requested, nothing delivered yet) to its ``RestoreFinished`` notification: discovery,
header and body fetches, verification and durable commits. ``restore_blocks_per_s`` = blocks
restored / that time, at the median round. Baseline, in alternating rounds in this process:
``raw_verify_commit_blocks_per_s``, the same block wires decoded, linked (``verify_link``,
history root), verified (``verify_block``: header and every reading signature, Merkle root) and
committed with ``Store.commit_restored`` in batches of 16 (a response's bodies) into a fresh
store. ``restore_ratio`` = restore / baseline (1.0: the protocol costs nothing beyond checking and
storing). ``restore.identical``: the restored headers are byte for byte the published ones, and
``restore.blocks`` = the chain's length.

**2. Wire cost and availability** (``replication_bytes_per_block``, ``availability``), and the
simulated repair. Thirty private fridges of ten households on one street (one replication
domain, ``replication: copies 3``, default audits every 10 min, repair after 10 min, 1 MB spare
storage each) run on the in-memory network in simulated time (``--quick``: 40 min, then 25 min
after the leave; full: 2 h, then 40 min). Every replication message (routed by
``wire.is_replication_message``) is counted where a device's replication core receives it (the
wrapped ``ReplicationDriver.handle``: every copy the network delivered, a SPACE broadcast once per
receiver, the sender's own echo included, as MQTT delivers it) and where it is published (the
wrapped ``Transport.send`` / ``broadcast``); payload bytes, MQTT framing and topics not counted.
``replication_bytes_per_block`` = bytes delivered, all seven types, from the start to the leave,
over the bytes of the block bodies (block wires) that had R signed receipts at the leave
(``replication.placed_blocks``, ``mean_block_bytes``): the ideal is R = 3.0 (each body carried
exactly R times, nothing else); ``replication.bytes_ratio`` is the figure over R,
``published_bytes_per_block`` the same with each message counted once as published (a SPACE
broadcast once), ``by_type`` the split (count and bytes per type, delivered and published), and
``repair_bytes_by_type`` what was delivered after the leave (repair, audits, adverts).
``availability``: after the run, from the stores (ground truth: a holder counts only if its store
holds the owner's exact block wire, and the device that left counts for nothing), the share of
the blocks (``blocks_considered``: each owner's blocks sealed at least 5 simulated minutes before
the end, the leaver's at least 5 minutes before it left) still retrievable when the worst R-1 = 2
of their holders are down as well: equivalently, the share held by at least R live holders
(``blocks_at_r``). ``availability_by_down`` gives the share for 0..R holders down. Device keys
are enrolled afresh each run, so placements (and which blocks the leaver holds) differ from run
to run. The device that left keeps running offline in the simulation: its own audits of others
time out (the runtime's warnings are silenced; nothing it does reaches anyone).

**3. Repair** (``repair_s``). At the leave, one holder (``pantry-7``) disconnects for good; the
blocks tracked are every other owner's blocks for which it had signed a receipt. Done when each
has R healthy holders other than the leaver in its owner's replication core (receipts signed
after the holder's durable write), confirmed afterwards in the stores. ``detection_s``: until
every tracked owner took the leaver out of service (its presence said offline, which is only a
hint, and it answered none of 3 probes, one per gossip request timeout: docs/PROTOCOL.md
13.3.1); ``replacement_s``: what remains after
detection and the configured ``repair_after`` delay (during which a short absence causes no
churn); ``repair_s`` = detection + replacement = the time to return to R copies minus
``repair_after``. Measured twice: in the simulated run above (``repair.simulated``, simulated
seconds; steps of 1 s around the leave and the repair deadline, 60 s elsewhere, so its
resolution is 1 s, and the network has no latency), and over a real Mosquitto in real time
(``repair.live``: the same 30 devices, each with its own MQTT connection, simulated data at 600
times real time, ``repair_after`` 5 s of wall time (3,000 s of the data clock it runs on), the
leaver's transport closed cleanly (a switched-off device: presence goes offline at once; a crash
would add the MQTT keep-alive),
polled every 50 ms: wall seconds; its ``resolution_s`` is the poll plus
``data_clock_lag_max_s``, the most the data clock, on which ``repair_after`` runs, fell behind
its pace during the leave: a loaded machine delays the steps that advance it). Each says
``tracked_blocks``, ``back_at_r_s`` (repair_after included), ``resolution_s`` and
``tracked_short_in_stores`` (tracked blocks with fewer than R exact copies in the live
holders' stores after the run: 0 when the owners' view was true).
``repair_s`` is the live figure when the ``mosquitto`` binary is installed (``repair_mode`` says
which), the simulated one otherwise; ``--no-live`` skips the Mosquitto run.

Plus ``meta`` (environment, plan, timings of each part).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.devices import FleetConfig, parse_fleet
from agent.device.runtime import DeviceAgent
from agent.fleet.datadir import DataDir
from agent.fleet.provision import provision
from agent.fleet.restore_device import restore_device
from agent.fleet.runner import FleetRunner, RunOptions
from agent.fleet.sources import SampleSource, simulation
from agent.gossip.actions import RestoreFinished
from agent.gossip.tuning import GossipConfig
from agent.replication import wire as rwire
from agent.replication.inputs import MessageReceived as ReplicationMessage
from agent.transport.brokers import MosquittoBroker
from bench.common import BenchArgs, Timing, emit, environment, time_call
from firmware_sim.samples import Sample
from ledger.block import Block, SignedHeader, decode_block, decode_header
from ledger.chain import ChainWriter
from ledger.history import CompactRange
from ledger.identity import PublicKey
from ledger.store import Store
from ledger.verify import verify_block, verify_link

_PROG = "python -m bench.replication"
R = 3
MIN_MS = 60_000
HOUR_MS = 60 * MIN_MS
RESTORED = "restored"
HOLDERS = ("holder-1", "holder-2", "holder-3")
BATCH = 16  # bodies per restore response (agent.gossip.wire.MAX_RESPONSE_BLOCKS)
LEAVER = "pantry-7"
COARSE_STEP_MS = 60_000  # the runner's own step at full speed
FINE_STEP_MS = 1_000  # around the leave and the repair deadline
MARGIN_MS = 5 * MIN_MS  # blocks sealed this close to the end are left out of availability
POLL_S = 0.05  # the live run's polling period
TYPE_NAMES = {
    rwire.STORE: "store",
    rwire.RECEIPT: "receipt",
    rwire.REFUSE: "refuse",
    rwire.CHALLENGE: "challenge",
    rwire.PROOF: "proof",
    rwire.RELEASE: "release",
    rwire.SPACE: "space",
}


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one benchmark run."""

    restore_blocks: int = 10_000
    block_readings: int = 4
    restore_rounds: int = 3
    sim_leave_ms: int = 2 * HOUR_MS
    sim_after_ms: int = 40 * MIN_MS
    live: bool = True  # the Mosquitto run (skipped without the binary)
    live_speed: float = 600.0
    live_warmup_s: float = 20.0
    live_repair_after_ms: int = 5_000
    live_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        for name in ("restore_blocks", "block_readings", "restore_rounds", "sim_leave_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"plan: expected {name} >= 1, found {getattr(self, name)}")
        if self.sim_after_ms <= 10 * MIN_MS + MARGIN_MS:
            raise ValueError(
                f"plan: the run after the leave must outlast the repair delay (10 min) and the "
                f"margin, expected sim_after_ms > {10 * MIN_MS + MARGIN_MS}, "
                f"found {self.sim_after_ms}"
            )


QUICK = Plan(
    restore_blocks=1_000,
    restore_rounds=1,
    sim_leave_ms=40 * MIN_MS,
    sim_after_ms=25 * MIN_MS,
    live_warmup_s=8.0,
    live_timeout_s=40.0,
)


# --------------------------------------------------------------------------- pure helpers


def message_type(payload: bytes) -> str | None:
    """The replication type name of a payload, or None if it is not a replication message."""
    if not rwire.is_replication_message(payload):
        return None
    return TYPE_NAMES.get(payload[2], f"type-{payload[2]}")


@dataclass
class Tally:
    """Count and payload bytes of replication messages, per phase and type."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    sizes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, phase: str, kind: str, size: int) -> None:
        self.counts[phase, kind] += 1
        self.sizes[phase, kind] += size

    def bytes(self, phase: str) -> int:
        return sum(v for (p, _), v in self.sizes.items() if p == phase)

    def by_type(self, phase: str) -> dict[str, dict[str, int]]:
        return {
            kind: {"count": self.counts[p, kind], "bytes": self.sizes[p, kind]}
            for (p, kind) in sorted(self.sizes)
            if p == phase
        }


class WireMeter:
    """Counts replication messages of a running fleet: published (wrapped ``send`` and
    ``broadcast`` of each device's transport) and delivered (wrapped ``handle`` of the device's
    replication driver, which receives every copy the network hands the device). ``phase``
    names the current window."""

    def __init__(self) -> None:
        self.phase = "steady"
        self.published = Tally()
        self.delivered = Tally()
        self._wrapped: set[str] = set()

    def attach(self, agent: DeviceAgent) -> None:
        rep = agent.replicator
        if rep is None or agent.name in self._wrapped:
            return
        self._wrapped.add(agent.name)
        transport = agent.transport
        send, broadcast, handle = transport.send, transport.broadcast, rep.handle

        async def counted_send(peer_id: str, payload: bytes) -> None:
            await send(peer_id, payload)
            self._published(payload)

        async def counted_broadcast(domain: str, payload: bytes) -> None:
            await broadcast(domain, payload)
            self._published(payload)

        async def counted_handle(event: Any) -> None:
            if isinstance(event, ReplicationMessage):
                kind = message_type(event.payload)
                if kind is not None:
                    self.delivered.add(self.phase, kind, len(event.payload))
            await handle(event)

        # Instance attributes shadow the bound methods: the runtime calls these by attribute.
        setattr(transport, "send", counted_send)  # noqa: B010
        setattr(transport, "broadcast", counted_broadcast)  # noqa: B010
        setattr(rep, "handle", counted_handle)  # noqa: B010

    def _published(self, payload: bytes) -> None:
        kind = message_type(payload)
        if kind is not None:
            self.published.add(self.phase, kind, len(payload))


def availability(holders: Mapping[Any, set[str]], down: int) -> float:
    """Share of blocks still held by a live holder when the worst ``down`` of its holders are
    down too: a block with h holders survives exactly when h > down. 1.0 with no blocks."""
    if not holders:
        return 1.0
    return sum(1 for held in holders.values() if len(held) > down) / len(holders)


class SteppedSource:
    """A ``SampleSource`` around another: steps of ``fine_ms`` while ``fine(now)`` holds,
    ``coarse_ms`` otherwise; ``on_step(now_ms)`` runs before each step (``now_ms``: where the
    source got to, i.e. the state the fleet has quiesced at)."""

    def __init__(
        self,
        inner: SampleSource,
        coarse_ms: int,
        fine_ms: int,
        fine: Callable[[int], bool],
        on_step: Callable[[int], None],
    ) -> None:
        if not 0 < fine_ms <= coarse_ms:
            raise ValueError(f"steps: expected 0 < fine <= coarse, found {fine_ms}, {coarse_ms}")
        self.inner = inner
        self.coarse_ms = coarse_ms
        self.fine_ms = fine_ms
        self.fine = fine
        self.on_step = on_step
        self._started = False

    @property
    def now_ms(self) -> int:
        return self.inner.now_ms

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        self.inner.now_ms = value

    def targets(self, until_ms: int) -> Iterator[int]:
        t = self.inner.now_ms
        if not self._started:
            yield t
        while t < until_ms:
            t = min(t + (self.fine_ms if self.fine(t) else self.coarse_ms), until_ms)
            yield t

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        self.on_step(self.inner.now_ms)
        self._started = True
        return self.inner.step(until_ms)


class NoSamples:
    """A ``SampleSource`` with nothing to say: the restore run signs nothing after it."""

    def __init__(self, cfg: FleetConfig, step_ms: int) -> None:
        self.now_ms = cfg.start_ms

    def targets(self, until_ms: int) -> Iterator[int]:
        return iter(())

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        return []


# --------------------------------------------------------------------------- 1. restore


def restore_fleet() -> FleetConfig:
    """The restored device and its three holders, one site, one domain, no live replication
    (the placement is given)."""
    doc = {
        "fleet": "bench-restore",
        "seed": 11,
        "sites": [{"id": "depot", "kind": "street"}],
        "devices": [
            {"name": "holder-{i}", "count": len(HOLDERS), "kind": "refrigerator", "site": "depot"},
            {"name": RESTORED, "kind": "refrigerator", "site": "depot"},
        ],
        "replication": {"copies": 0},
    }
    return parse_fleet(doc, "bench.replication restore")


def _remove_store(path: Path) -> None:
    for leftover in path.parent.glob(path.name + "*"):  # the file, its -wal and -shm
        leftover.unlink()


@dataclass(frozen=True, slots=True)
class Chain:
    """The published chain: its block wires and the key that verifies them."""

    wires: tuple[bytes, ...]
    key: PublicKey

    @property
    def body_bytes(self) -> int:
        return sum(map(len, self.wires))


def build_restore_template(data: Path, blocks: int, readings: int) -> Chain:
    """Provision the restore fleet in ``data``, write the chain, give it to the holders, wipe
    the restored device's store; return the chain as published."""
    cfg = restore_fleet()
    dd = DataDir(data)
    prov = provision(cfg, dd, cfg.start_ms)
    enrolled = prov.devices[RESTORED]
    dev_id = enrolled.certificate.device_id
    with Store(dd.store_path(RESTORED)) as store:
        writer = ChainWriter(store, enrolled.key, dev_id)
        for b in range(blocks):
            for k in range(readings):
                seq = b * readings + k
                sensor = ("temp_mc", "door", "power_w", "temp_mc")[seq % 4]
                writer.record(cfg.start_ms + seq * 1_000, sensor, 4_000 + seq % 700)
            writer.seal(max_readings=readings)
        if store.block_count() != blocks:
            raise RuntimeError(f"expected {blocks} sealed blocks, found {store.block_count()}")
        wires = tuple(w for h in range(blocks) if (w := store.block_wire(h)) is not None)
        headers = [decode_header(w) for w in store.own_header_wires()]
    first = dd.store_path(HOLDERS[0])
    with Store(first) as store:
        store.put_peer_headers(headers)
        for w in wires:
            store.put_replica(decode_block(w))
    for name in HOLDERS[1:]:  # the same replicas on every holder: copy the file
        shutil.copyfile(first, dd.store_path(name))
    _remove_store(dd.store_path(RESTORED))
    return Chain(wires, enrolled.key.public)


def baseline_round(chain: Chain, scratch: Path) -> float:
    """Seconds to decode, link, verify and commit the chain into a fresh store, in batches."""
    path = scratch / "baseline.sqlite"
    _remove_store(path)
    try:
        with Store(path) as store:

            def work() -> None:
                prev: SignedHeader | None = None
                history = CompactRange()
                after: int | None = None
                batch: list[Block] = []
                for w in chain.wires:
                    block = decode_block(w)
                    sh = block.header
                    verify_link(prev, sh)
                    if sh.header.history_root != history.root():
                        raise RuntimeError(f"history root at height {sh.header.height}")
                    verify_block(block, chain.key, after_seq=after)
                    history.append(sh.hash)
                    prev, after = sh, block.readings[-1].reading.seq
                    batch.append(block)
                    if len(batch) == BATCH:
                        store.commit_restored(batch)
                        batch = []
                store.commit_restored(batch)

            seconds = time_call(work)
            if store.block_count() != len(chain.wires):
                raise RuntimeError(f"baseline committed {store.block_count()} blocks")
    finally:
        _remove_store(path)
    return seconds


async def restore_once(template: Path, work: Path) -> dict[str, Any]:
    """Copy the template and restore the wiped device through ``restore_device``; the timing
    and what came back (see the module docstring)."""
    shutil.copytree(template, work)
    cfg = restore_fleet()
    marks: dict[str, float] = {}

    def finished(agent: DeviceAgent, event: object, now_ms: int) -> None:
        if isinstance(event, RestoreFinished) and "end" not in marks:
            marks["end"] = time.perf_counter()

    async def watch(runner: FleetRunner) -> None:
        # Built last: once it is there its restore is requested, and nothing has been delivered
        # yet. No event says "built", so look at every turn of the loop (set-up, not timed).
        while RESTORED not in runner.agents:  # noqa: ASYNC110
            await asyncio.sleep(0)
        marks["start"] = time.perf_counter()
        runner.agents[RESTORED].observers.append(finished)

    tasks: list[asyncio.Task[None]] = []
    opts = RunOptions(
        data=work, for_ms=0, simulated_network=True, view=False, source=NoSamples, resume=False
    )
    try:
        outcome = await restore_device(
            cfg,
            opts,
            RESTORED,
            runner_ready=lambda runner: tasks.append(asyncio.create_task(watch(runner))),
        )
    finally:
        for t in tasks:
            t.cancel()
    dd = DataDir(work)
    with Store(dd.store_path(HOLDERS[0])) as s:
        published = s.peer_header_wires(outcome.device_id)
    with Store(dd.store_path(RESTORED)) as s:
        restored = s.own_header_wires()
        blocks = s.block_count()
    if "start" not in marks or "end" not in marks:
        raise RuntimeError(f"restore not timed: marks {sorted(marks)}")
    r = outcome.result
    return {
        "seconds": marks["end"] - marks["start"],
        "blocks": blocks,
        "finished_height": r.height,
        "new_epoch": r.new_epoch,
        "identical": restored == published,
    }


def restore_in_child(template: Path, work: Path) -> dict[str, Any]:
    """One restore round in a fresh interpreter (``--restore-round``)."""
    spec = json.dumps({"template": str(template), "work": str(work)})
    proc = subprocess.run(
        [sys.executable, "-m", "bench.replication", "--restore-round", spec],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"restore round: exit {proc.returncode}; stderr ends: {tail}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def measure_restore(plan: Plan, root: Path) -> dict[str, Any]:
    template = root / "restore-template"
    t0 = time.perf_counter()
    chain = build_restore_template(template, plan.restore_blocks, plan.block_readings)
    build_s = time.perf_counter() - t0
    rounds: list[dict[str, Any]] = []
    base: list[float] = []
    for i in range(plan.restore_rounds):  # alternating: the machine's noise hits both
        gc.collect()
        base.append(baseline_round(chain, root))
        rounds.append(restore_in_child(template, root / f"restore-{i}"))
        shutil.rmtree(root / f"restore-{i}")
    n = len(chain.wires)
    restore_t = Timing(tuple(r["seconds"] for r in rounds))
    base_t = Timing(tuple(base))
    rate, raw = restore_t.per_second(n), base_t.per_second(n)
    return {
        "restore_blocks_per_s": round(rate),
        "raw_verify_commit_blocks_per_s": round(raw),
        "restore_ratio": round(rate / raw, 3),
        "restore": {
            "chain_blocks": n,
            "blocks": min(r["blocks"] for r in rounds),
            "identical": all(r["identical"] for r in rounds),
            "same_epoch": not any(r["new_epoch"] for r in rounds),
            "readings_per_block": plan.block_readings,
            "mean_block_bytes": round(chain.body_bytes / n, 1),
            "seconds": [round(s, 3) for s in restore_t.samples],
            "baseline_seconds": [round(s, 3) for s in base_t.samples],
            "rounds": plan.restore_rounds,
            "holders": len(HOLDERS),
            "network": "in-memory, simulated time (agent.fleet.restore_device.restore_device)",
            "build_s": round(build_s, 1),
        },
    }


# --------------------------------------------------------------------------- 2. the fleet


def street_fleet(repair_after_ms: int, audit_every_ms: int = 10 * MIN_MS) -> FleetConfig:
    """Ten private households of three fridges on one street: 30 devices, one street domain,
    R = 3 (as tests/agent/test_replication_fleet.py)."""
    groups = [
        {
            "name": f"{room}-{{i}}",
            "count": 10,
            "kind": "refrigerator",
            "site": "home-{i}",
            "domains": ["elm-street"],
            "sampling_period": "60s",
            "spare_storage_mb": 1,
        }
        for room in ("kitchen", "pantry", "garage")
    ]
    doc = {
        "fleet": "bench-replication",
        "seed": 21,
        "sites": [
            {
                "id": "home-{i}",
                "count": 10,
                "kind": "household",
                "private": True,
                "owner": "family-{i}",
            },
            {"id": "elm-street", "kind": "street"},
        ],
        "replication": {
            "copies": R,
            "audit_every": f"{audit_every_ms}ms",
            "repair_after": f"{repair_after_ms}ms",
        },
        "devices": groups,
    }
    return parse_fleet(doc, "bench.replication fleet")


def tracked_blocks(agents: Mapping[str, DeviceAgent], leaver_id: str) -> set[tuple[str, int]]:
    """(owner name, height) of every other owner's block the leaver signed a receipt for."""
    out = set()
    for name, agent in agents.items():
        rep = agent.replicator
        if rep is None or agent.device_id == leaver_id:
            continue
        for h in rep.node.own_heights():
            if leaver_id in rep.node.holders(h):
                out.add((name, h))
    return out


def placed_blocks(agents: Mapping[str, DeviceAgent]) -> set[tuple[str, int]]:
    """(owner name, height) of every block with R receipts (R holders said: stored)."""
    out: set[tuple[str, int]] = set()
    for name, agent in agents.items():
        rep = agent.replicator
        if rep is None:
            continue
        node = rep.node
        out.update((name, h) for h in node.own_heights() if len(node.holders(h)) >= R)
    return out


def short_of_r(
    agents: Mapping[str, DeviceAgent], blocks: set[tuple[str, int]], leaver_id: str
) -> int:
    """Tracked blocks whose owner does not yet count R healthy holders besides the leaver."""
    short = 0
    for name, h in blocks:
        rep = agents[name].replicator
        assert rep is not None
        if len(set(rep.node.healthy_holders(h)) - {leaver_id}) < R:
            short += 1
    return short


def all_see_offline(agents: Mapping[str, DeviceAgent], owners: set[str], leaver_id: str) -> bool:
    """Every tracked owner took the leaver out of service: its presence said offline and it
    answered none of the owner's probes (docs/PROTOCOL.md 13.3.1)."""
    return not any(agents[o].liveness.in_service(leaver_id) for o in owners)


@dataclass
class RepairWatch:
    """Times of one leave: when it happened, when every tracked owner saw it, when every
    tracked block was back at R (same clock, ms or s)."""

    repair_after: float
    left: float | None = None
    detected: float | None = None
    done: float | None = None
    tracked: set[tuple[str, int]] = field(default_factory=set)

    def figures(self, scale: float) -> dict[str, Any]:
        """Seconds (``scale``: clock units per second); None where a mark is missing."""
        if self.left is None or self.detected is None or self.done is None:
            return {"repaired": False, "tracked_blocks": len(self.tracked)}
        total = (self.done - self.left) / scale
        detection = (self.detected - self.left) / scale
        after = self.repair_after / scale
        return {
            "repaired": True,
            "tracked_blocks": len(self.tracked),
            "repair_s": round(total - after, 3),
            "detection_s": round(detection, 3),
            "replacement_s": round(total - after - detection, 3),
            "repair_after_s": round(after, 3),
            "back_at_r_s": round(total, 3),
        }


def ground_truth(
    data: Path, names: Sequence[str], down: set[str], cutoff_ms: Mapping[str, int] | None
) -> dict[tuple[str, int], set[str]]:
    """(owner, height) -> names of live holders (not in ``down``) whose store holds the owner's
    exact block wire; the blocks of each owner whose last reading is before its cutoff (every
    block without ``cutoff_ms``)."""
    dd = DataDir(data)
    stores = {n: Store(dd.store_path(n)) for n in names}
    try:
        out: dict[tuple[str, int], set[str]] = {}
        for owner, s in stores.items():
            cutoff = None if cutoff_ms is None else cutoff_ms[owner]
            for block in s.blocks():
                h = block.header.header
                if cutoff is not None and block.readings[-1].reading.time_ms >= cutoff:
                    continue
                w = block.encode()
                out[owner, h.height] = {
                    n
                    for n, hs in stores.items()
                    if n != owner and n not in down and hs.replica_wire(h.device_id, h.height) == w
                }
        return out
    finally:
        for s in stores.values():
            s.close()


def block_sizes(data: Path, blocks: set[tuple[str, int]]) -> int:
    dd = DataDir(data)
    total = 0
    for owner in sorted({o for o, _ in blocks}):
        with Store(dd.store_path(owner)) as s:
            for o, h in blocks:
                if o == owner:
                    w = s.block_wire(h)
                    if w is None:
                        raise RuntimeError(f"{owner} lost its own block {h}")
                    total += len(w)
    return total


async def simulated_run(plan: Plan, data: Path) -> dict[str, Any]:
    """The 30-device run on simulated time: wire cost, simulated repair, availability."""
    repair_after = 10 * MIN_MS
    cfg = street_fleet(repair_after)
    meter = WireMeter()
    watch = RepairWatch(float(repair_after))
    box: dict[str, Any] = {}
    runner: FleetRunner | None = None
    leave_at = cfg.start_ms + plan.sim_leave_ms

    def fine(t: int) -> bool:
        # ``t``: the state the next on_step will see; the step that follows the leave (and
        # every step near the repair deadline) is fine, so both marks have a 1 s resolution.
        if watch.left is None:
            return t >= leave_at
        if watch.done is not None:
            return False
        since = t - watch.left
        return since < 60_000 or since >= repair_after - 10_000

    def on_step(now: int) -> None:
        assert runner is not None
        agents = runner.agents
        for agent in agents.values():
            meter.attach(agent)
        leaver_id = agents[LEAVER].device_id
        if watch.left is None and now >= leave_at:
            assert runner.network is not None
            watch.tracked = tracked_blocks(agents, leaver_id)
            box["placed"] = placed_blocks(agents)
            meter.phase = "repair"
            runner.network.disconnect(leaver_id)
            watch.left = now
            return
        if watch.left is None or watch.done is not None:
            return
        owners = {o for o, _ in watch.tracked}
        if watch.detected is None and all_see_offline(agents, owners, leaver_id):
            watch.detected = now
        if watch.detected is not None and not short_of_r(agents, watch.tracked, leaver_id):
            watch.done = now

    def source(c: FleetConfig, step_ms: int) -> SampleSource:
        return SteppedSource(
            simulation(c, FINE_STEP_MS), COARSE_STEP_MS, FINE_STEP_MS, fine, on_step
        )

    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            for_ms=plan.sim_leave_ms + plan.sim_after_ms,
            simulated_network=True,
            view=False,
            source=source,
            resume=False,
        ),
    )
    t0 = time.perf_counter()
    result = await runner.run()
    wall = time.perf_counter() - t0
    names = [d.name for d in cfg.devices]
    end = result.sim_end_ms
    # The leaver's blocks up to its leave (a device that left seals nothing more it could
    # place; the simulated one keeps sampling offline), everyone else's up to the end.
    left = end if watch.left is None else int(watch.left)
    cutoffs = {n: (left if n == LEAVER else end) - MARGIN_MS for n in names}
    held = ground_truth(data, names, {LEAVER}, cutoffs)
    placed: set[tuple[str, int]] = box.get("placed", set())
    body = block_sizes(data, placed)
    steady = meter.delivered.bytes("steady")
    tracked_short = [k for k in watch.tracked if len(held.get(k, set())) < R]
    return {
        "bytes_per_block": round(steady / body, 3) if body else None,
        "placed_blocks": len(placed),
        "placed_body_bytes": body,
        "mean_block_bytes": round(body / len(placed), 1) if placed else None,
        "delivered_bytes": steady,
        "published_bytes": meter.published.bytes("steady"),
        "by_type": {
            "delivered": meter.delivered.by_type("steady"),
            "published": meter.published.by_type("steady"),
        },
        "repair_bytes_by_type": meter.delivered.by_type("repair"),
        "held": held,
        "repair": {
            **watch.figures(1000.0),
            "tracked_short_in_stores": len(tracked_short),
            "resolution_s": FINE_STEP_MS / 1000,
            "clock": "simulated",
        },
        "wall_s": round(wall, 1),
        "simulated_s": (end - result.sim_start_ms) // 1000,
    }


# --------------------------------------------------------------------------- 3. live repair


async def live_repair(plan: Plan, data: Path, broker_url: str) -> dict[str, Any]:
    """The same fleet over Mosquitto in real time: a holder leaves, wall time to R copies."""
    # Repair delays run on the data clock (docs/REPLICATION.md 15.6): at live_speed times real
    # time, repair_after of the devices file is live_speed times the wall delay wanted.
    cfg = street_fleet(round(plan.live_repair_after_ms * plan.live_speed))
    gossip = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200, hedge_ms=500)
    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            broker=broker_url,
            speed=plan.live_speed,
            view=False,
            gossip=gossip,
            settle_s=5.0,
            resume=False,
        ),
    )
    watch = RepairWatch(plan.live_repair_after_ms / 1000)
    task = asyncio.create_task(runner.run())
    note = ""
    try:
        agents = runner.agents
        await _until(
            lambda: len(agents) == len(cfg.devices) and runner.data_clock is not None, task, 120
        )
        await _sleep_or_end(plan.live_warmup_s, task)
        leaver = agents[LEAVER]
        leaver_id = leaver.device_id
        watch.tracked = tracked_blocks(agents, leaver_id)
        owners = {o for o, _ in watch.tracked}
        watch.left = time.monotonic()
        await leaver.transport.close()  # a device switched off: presence goes offline
        deadline = watch.left + plan.live_timeout_s
        # repair_after runs on the data clock, which falls behind its pace when the machine is
        # loaded and then catches up: by as much, in wall time, a repair can come before
        # detection + repair_after. The figure's resolution says so.
        lag_s = runner.pace_lag_ms() / 1000 / plan.live_speed
        while time.monotonic() < deadline and not task.done():
            now = time.monotonic()
            lag_s = max(lag_s, runner.pace_lag_ms() / 1000 / plan.live_speed)
            if watch.detected is None and all_see_offline(agents, owners, leaver_id):
                watch.detected = now
            if watch.detected is not None and not short_of_r(agents, watch.tracked, leaver_id):
                watch.done = now
                break
            await asyncio.sleep(POLL_S)
        if watch.done is None:
            note = f"not back at R within {plan.live_timeout_s:.0f} s"
    finally:
        runner.request_stop()
        await task
    names = [d.name for d in cfg.devices]
    held = ground_truth(data, names, {LEAVER}, None)
    short = [k for k in watch.tracked if len(held.get(k, set())) < R]
    return {
        **watch.figures(1.0),
        "tracked_short_in_stores": len(short),
        "resolution_s": round(POLL_S + lag_s, 3),
        "data_clock_lag_max_s": round(lag_s, 3),
        "clock": "wall",
        "broker": "mosquitto",
        "speed": plan.live_speed,
        "note": note,
    }


async def _until(cond: Callable[[], bool], task: asyncio.Task[Any], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if task.done():
            task.result()
            raise RuntimeError("the live run ended before it started")
        if time.monotonic() > end:
            raise RuntimeError(f"the live fleet did not start within {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)


async def _sleep_or_end(seconds: float, task: Awaitable[Any]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if isinstance(task, asyncio.Task) and task.done():
            task.result()
            raise RuntimeError("the live run ended during its warm-up")
        await asyncio.sleep(POLL_S)


def run_live(plan: Plan, root: Path) -> dict[str, Any] | None:
    """The Mosquitto run, or None without the binary (or with ``plan.live`` off)."""
    if not plan.live or shutil.which("mosquitto") is None:
        return None
    broker = MosquittoBroker(workdir=root / "mosquitto")
    broker.start_sync()
    try:
        return asyncio.run(live_repair(plan, root / "live", broker.url))
    finally:
        broker.stop_sync()


# --------------------------------------------------------------------------- the whole


def run(plan: Plan, args: BenchArgs) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-replication-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        restore = measure_restore(plan, root)
        t1 = time.perf_counter()
        sim = asyncio.run(simulated_run(plan, root / "sim"))
        t2 = time.perf_counter()
        live = run_live(plan, root)
        t3 = time.perf_counter()
    return summarize(plan, args, restore, sim, live, (t1 - t0, t2 - t1, t3 - t2))


def summarize(
    plan: Plan,
    args: BenchArgs,
    restore: Mapping[str, Any],
    sim: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    parts_s: tuple[float, float, float],
) -> dict[str, Any]:
    held: dict[tuple[str, int], set[str]] = sim["held"]
    repair = live if live is not None and live.get("repaired") else sim["repair"]
    at_r = sum(1 for h in held.values() if len(h) >= R)
    bpb = sim["bytes_per_block"]
    return {
        "restore_blocks_per_s": restore["restore_blocks_per_s"],
        "raw_verify_commit_blocks_per_s": restore["raw_verify_commit_blocks_per_s"],
        "restore_ratio": restore["restore_ratio"],
        "replication_bytes_per_block": bpb,
        "repair_s": repair.get("repair_s"),
        "repair_mode": "live" if repair is live else "simulated",
        "availability": round(availability(held, R - 1), 6),
        "availability_by_down": {str(d): round(availability(held, d), 6) for d in range(R + 1)},
        "restore": restore["restore"],
        "replication": {
            "ideal": float(R),
            "bytes_ratio": None if bpb is None else round(bpb / R, 3),
            "published_bytes_per_block": round(sim["published_bytes"] / sim["placed_body_bytes"], 3)
            if sim["placed_body_bytes"]
            else None,
            "placed_blocks": sim["placed_blocks"],
            "mean_block_bytes": sim["mean_block_bytes"],
            "by_type": sim["by_type"],
            "repair_bytes_by_type": sim["repair_bytes_by_type"],
            "simulated_s": sim["simulated_s"],
        },
        "blocks_considered": len(held),
        "blocks_at_r": at_r,
        "repair": {"simulated": sim["repair"], "live": live},
        "meta": {
            **environment(),
            "quick": args.quick,
            "plan": dataclasses.asdict(plan),
            "replicas": R,
            "devices": 30,
            "leaver": LEAVER,
            "parts_s": {
                "restore": round(parts_s[0], 1),
                "simulated": round(parts_s[1], 1),
                "live": round(parts_s[2], 1),
            },
            "sim_wall_s": sim["wall_s"],
        },
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n")[0] if __doc__ else "")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="1,000 blocks, short runs (under a minute)")
    p.add_argument("--no-live", action="store_true", help="skip the Mosquitto run")
    p.add_argument("--restore-round", help=argparse.SUPPRESS)  # internal: one round, JSON spec
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.restore_round is not None:
        spec = json.loads(ns.restore_round)
        out = asyncio.run(restore_once(Path(spec["template"]), Path(spec["work"])))
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        return 0
    # Expected warnings (the leaver, cut off, fails its own audits): the figures say what counts.
    logging.getLogger("edgefleet").setLevel(logging.ERROR)
    plan = QUICK if ns.quick else Plan()
    if ns.no_live:
        plan = dataclasses.replace(plan, live=False)
    args = BenchArgs(json=ns.json, quick=ns.quick)
    emit(run(plan, args), args, "edge replication: restore, wire cost, repair, availability")
    return 0


if __name__ == "__main__":
    sys.exit(main())
