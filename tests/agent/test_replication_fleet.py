"""Edge replication in running fleets: 30 devices with R = 3, in simulated time on the in-memory
network (a holder leaves and another silently drops its replicas) and in real time over a real
Mosquitto (holders stopped mid-run).

Figures printed: availability with R - 1 holders down, blocks back at R copies after repair,
audits failed by the dropping holder, quota use. Every check reads the devices' SQLite stores:
an owner's receipts say where each block lives, and the holder's store must hold exactly the
owner's bytes.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config.devices import FleetConfig, load_fleet
from agent.device.runtime import DeviceAgent
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.transport.brokers import MosquittoBroker
from ledger.block import MAX_BLOCK_BYTES, decode_block
from ledger.errors import LedgerError
from ledger.private import OwnerOpener, open_reading
from ledger.store import Store
from tests.agent.runner_helpers import (
    FAST_GOSSIP,
    HOUR_MS,
    REPLICATING_FLEET,
    device_ids,
    replication_counters,
    run_fleet,
    verify,
    write_fleet,
)
from tests.agent.test_integration_fleet import _until_sim
from tests.conftest import FigureRecorder

R = 3
MIN_MS = 60_000
DAY_MS = 24 * HOUR_MS


def fleet_yaml(*, audit_every: str, repair_after: str, spare_mb: int = 1) -> str:
    """Ten private households of three fridges on one street: 30 devices, one street domain."""
    groups = "".join(
        f"""\
  - name: {room}-{{i}}
    count: 10
    kind: refrigerator
    site: home-{{i}}
    domains: [elm-street]
    sampling_period: 60s
    spare_storage_mb: {spare_mb}
"""
        for room in ("kitchen", "pantry", "garage")
    )
    return f"""\
fleet: replication
seed: 21
sites:
  - id: home-{{i}}
    count: 10
    kind: household
    private: true
    owner: family-{{i}}
  - id: elm-street
    kind: street
replication:
  copies: {R}
  audit_every: {audit_every}
  repair_after: {repair_after}
devices:
{groups}"""


@dataclass(frozen=True)
class Placement:
    """Where every sealed block of the fleet lives, from the owners' receipts and the holders'
    stores: (owner name, height) -> names of the holders whose store holds the owner's bytes."""

    holders: dict[tuple[str, int], set[str]]
    receipted: dict[tuple[str, int], set[str]]
    replica_bytes: dict[str, int]

    def availability(self, down: int) -> float:
        """Share of blocks still held by some live holder when the worst ``down`` of its holders
        are stopped (every choice of ``down`` holders is tried)."""
        ok = 0
        for held in self.holders.values():
            if len(held) > down and all(
                held - set(gone) for gone in itertools.combinations(sorted(held), down)
            ):
                ok += 1
        return ok / len(self.holders)


def placement(
    data: Path, names: list[str], before_height: dict[str, int] | None = None
) -> Placement:
    dd = DataDir(data)
    by_id = {v: k for k, v in device_ids(data).items()}
    stores = {n: Store(dd.store_path(n)) for n in names}
    try:
        holders: dict[tuple[str, int], set[str]] = {}
        receipted: dict[tuple[str, int], set[str]] = {}
        for owner, s in stores.items():
            limit = None if before_height is None else before_height.get(owner)
            for block in s.blocks():
                h = block.header.header.height
                if limit is not None and h >= limit:
                    continue
                wire = block.encode()
                key = (owner, h)
                receipted[key] = {by_id.get(d, d) for _, d, _ in s.receipts(h)}
                holders[key] = {
                    n
                    for n, hs in stores.items()
                    if n != owner and hs.replica_wire(block.header.header.device_id, h) == wire
                }
        sizes = {n: s.replica_bytes() for n, s in stores.items()}
    finally:
        for s in stores.values():
            s.close()
    return Placement(holders, receipted, sizes)


def heights_before(data: Path, names: list[str], cutoff_ms: int) -> dict[str, int]:
    """Per device, the first height whose block holds a reading at or after ``cutoff_ms``."""
    out = {}
    for n in names:
        with Store(DataDir(data).store_path(n)) as s:
            early = [
                b.header.header.height
                for b in s.blocks()
                if b.readings[-1].reading.time_ms < cutoff_ms
            ]
        out[n] = max(early) + 1 if early else 0
    return out


def assert_quotas(p: Placement, quota: int) -> None:
    over = {n: b for n, b in p.replica_bytes.items() if b > quota + MAX_BLOCK_BYTES}
    assert not over, f"quota of {quota} B (+ one block) exceeded: {over}"


# --------------------------------------------------------------------------- simulated time

LEAVER = "pantry-7"  # gone from 1 h on, for good
DROPPER = "garage-2"  # silently loses every replica at 3 h
LEAVE_AT, DROP_AT, RUN_MS = HOUR_MS, 3 * HOUR_MS, 5 * HOUR_MS


@dataclass(frozen=True)
class Churn:
    result: RunResult
    audits_failed_on_dropper: int
    dropped: int  # replicas the dropper lost


async def _churn(runner: FleetRunner) -> Churn:
    run = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    clock = runner.data_clock
    assert clock is not None and runner.network is not None
    start = clock.now_ms()
    failed: list[str] = []

    def watch(agent: DeviceAgent, event: object, now_ms: int) -> None:
        holder = getattr(event, "holder_id", None)
        if type(event).__name__ == "AuditFailed" and holder == dropper_id:
            failed.append(agent.name)

    assert await _until_sim(clock, start + LEAVE_AT, run), "the run ended early"
    runner.network.disconnect(runner.agents[LEAVER].device_id)
    dropper = runner.agents[DROPPER]
    dropper_id = dropper.device_id
    for a in runner.agents.values():
        a.observers.append(watch)
    assert await _until_sim(clock, start + DROP_AT, run), "the run ended early"
    # Silently: the holder's replication core still believes it holds them.
    dropped = dropper.store._db.execute("DELETE FROM replicas").rowcount
    return Churn(await run, len(failed), dropped)


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Churn, FleetConfig, Path]:
    d = tmp_path_factory.mktemp("churn")
    cfg = load_fleet(write_fleet(d, fleet_yaml(audit_every="2m", repair_after="20m")))
    data = d / "data"
    runner = FleetRunner(
        cfg, RunOptions(data=data, for_ms=RUN_MS, simulated_network=True, view=False)
    )
    return asyncio.run(_churn(runner)), cfg, data


@pytest.mark.slow
def test_repair_brings_every_block_back_to_r_live_copies_after_a_holder_leaves_and_another_drops(
    churn: tuple[Churn, FleetConfig, Path],
) -> None:
    out, cfg, data = churn
    names = [d.name for d in cfg.devices]
    stayed = [n for n in names if n != LEAVER]
    # Blocks sealed by the devices that stayed, up to an hour before the end (time to repair).
    p = placement(data, stayed, heights_before(data, stayed, cfg.start_ms + RUN_MS - HOUR_MS))
    # Copies the dropper holds now were stored again after the drop: they count.
    live = {k: v - {LEAVER} for k, v in p.holders.items()}
    short = {k: v for k, v in live.items() if len(v) < R}
    figure = (
        f"{len(p.holders)} blocks of {len(stayed)} devices: {len(p.holders) - len(short)} at "
        f"{R} live copies after {LEAVER} left (1 h) and {DROPPER} silently dropped "
        f"{out.dropped} replicas (3 h); audits failed on {DROPPER}: "
        f"{out.audits_failed_on_dropper}; availability with {R - 1} holders down: "
        f"{p.availability(R - 1):.2%}"
    )
    print(figure)
    assert out.dropped > 0, f"{DROPPER} held nothing to drop; {figure}"
    assert out.audits_failed_on_dropper > 0, f"no audit caught {DROPPER}; {figure}"
    assert not short, f"{len(short)} blocks short of {R} copies, e.g. {list(short.items())[:3]}"
    assert p.availability(R - 1) == 1.0, figure
    assert_quotas(p, 1 << 20)
    assert verify(data).ok


@pytest.mark.slow
def test_no_holder_can_read_a_household_reading_it_stores(
    churn: tuple[Churn, FleetConfig, Path],
) -> None:
    _, cfg, data = churn
    dd = DataDir(data)
    owner_of = {d.name: cfg.site(d.site).owner for d in cfg.devices}
    keys = {
        o: OwnerOpener(keystore.read_owner_secret(data / "owners" / f"{o}.key"))
        for o in set(owner_of.values())
    }
    name_of = {v: k for k, v in device_ids(data).items()}
    tried = 0
    for holder in (d.name for d in cfg.devices):
        mine = keys[owner_of[holder]]  # the key the holder's own household has
        with Store(dd.store_path(holder)) as s:
            for dev, h, *_ in s.replica_infos()[:20]:
                if owner_of[name_of[dev]] == owner_of[holder]:
                    continue  # a block of its own household: its family may read it
                block = decode_block(s.replica_wire(dev, h) or b"")
                for sr in block.readings:
                    assert sr.private, f"{holder} holds a clear reading of {dev}"
                    with pytest.raises(LedgerError):
                        open_reading(sr, mine)
                    tried += 1
    assert tried > 100, f"only {tried} replica readings tried"


# --------------------------------------------------------------------------- real Mosquitto

LIVE_SPEED = 900.0  # simulated seconds per wall second: 2 h take 8 s
STOP_AT = HOUR_MS // 2


@dataclass(frozen=True)
class Stopped:
    result: RunResult
    block: tuple[str, int]  # the block whose R - 1 holders were stopped
    stopped: tuple[str, ...]
    available_after_stop: float  # share of placed blocks with a live holder right after the stop
    limits: dict[str, int]  # per live device, its head height when the holders were stopped


async def _stop_holders(runner: FleetRunner) -> Stopped:
    from tests.agent.test_reliability import until

    task = asyncio.create_task(runner.run())
    agents = runner.agents

    def sim() -> int:
        return 0 if runner.data_clock is None else runner.data_clock.now_ms()

    start = runner.cfg.start_ms
    owner = agents.get("kitchen-1")

    def placed() -> bool:
        if len(agents) < 30 or sim() < start + STOP_AT:
            return False
        rep = agents["kitchen-1"].replicator
        return rep is not None and len(rep.node.healthy_holders(0)) >= R

    await until(placed, f"block 0 of kitchen-1 on {R} holders", task)
    owner = agents["kitchen-1"]
    assert owner.replicator is not None
    names = {a.device_id: n for n, a in agents.items()}
    holders = sorted(names[h] for h in owner.replicator.node.healthy_holders(0))
    stopped = tuple(holders[: R - 1])
    for n in stopped:
        await agents[n].transport.close()  # announces offline, as a device switched off would
    # Right after the stop: every placed block still has a live holder of its body?
    held = total = 0
    for a in agents.values():
        if a.name in stopped or a.replicator is None:
            continue
        node = a.replicator.node
        for h in node.own_heights():
            copies = set(node.holders(h))
            if len(copies) >= R:
                total += 1
                held += bool({names.get(c) for c in copies} - set(stopped))
    # Repair: every block sealed before the stop must return to R healthy live holders (the
    # stopped ones count once `repair_after` has passed). The fleet runs until then.
    limits = {
        a.name: -1 if (head := a.store.head()) is None else head.header.height
        for a in agents.values()
        if a.name not in stopped
    }
    gone = {agents[n].device_id for n in stopped}

    def repaired() -> bool:
        for a in agents.values():
            if a.name in stopped or a.replicator is None:
                continue
            node = a.replicator.node
            for h in range(limits[a.name] + 1):
                if len(set(node.healthy_holders(h)) - gone) < R:
                    return False
        return True

    await until(repaired, f"every block sealed before the stop back at {R} live copies", task)
    runner.request_stop()
    return Stopped(await task, ("kitchen-1", 0), stopped, held / max(1, total), limits)


@pytest.mark.mosquitto
def test_thirty_devices_over_mosquitto_survive_r_minus_1_holders_stopping_and_repair(
    mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    cfg = load_fleet(write_fleet(tmp_path, fleet_yaml(audit_every="10m", repair_after="2s")))
    data = tmp_path / "data"
    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            broker=mosquitto.endpoint.url,
            for_ms=12 * HOUR_MS,  # stopped early, once repaired
            speed=LIVE_SPEED,
            view=False,
            gossip=FAST_GOSSIP,
            settle_s=1.0,  # two devices stay stopped: the fleet never fully converges
        ),
    )
    out = asyncio.run(_stop_holders(runner))
    names = [d.name for d in cfg.devices if d.name not in out.stopped]
    p = placement(data, names, {n: h + 1 for n, h in out.limits.items()})
    live = {k: v - set(out.stopped) for k, v in p.holders.items()}
    short = {k: v for k, v in live.items() if len(v) < R}
    text = (
        f"mosquitto, 30 devices, R={R}: stopped {', '.join(out.stopped)} (holders of "
        f"{out.block[0]}@{out.block[1]}); availability right after: "
        f"{out.available_after_stop:.2%}; {len(p.holders) - len(short)} of {len(p.holders)} "
        f"blocks back at {R} live copies by the end; availability with {R - 1} more down: "
        f"{p.availability(R - 1):.2%}"
    )
    figure("holders offline (R-1 per block)", text)
    assert out.available_after_stop == 1.0, text
    assert not short, f"{text}; short: {list(short.items())[:3]}"
    assert p.availability(R - 1) == 1.0, text
    assert_quotas(p, 1 << 20)
    assert verify(data).ok


# --------------------------------------------------------------------------- a simulated week


@pytest.mark.slow
def test_a_simulated_week_at_full_speed_audits_its_replicas_and_they_pass(
    tmp_path: Path, figure: FigureRecorder
) -> None:
    """Audit rounds are due on the data clock (docs/REPLICATION.md 15.6): a `--speed max` week,
    whose network clock is real time (seconds), audits every holder; paced on the network."""
    cfg = load_fleet(write_fleet(tmp_path, REPLICATING_FLEET))
    result = run_fleet(cfg, data=tmp_path / "data", broker="memory", for_ms=7 * DAY_MS, view=False)
    assert result.sim_end_ms - result.sim_start_ms == 7 * DAY_MS
    counters = replication_counters(result)
    assert len(counters) == 4
    sent = {n: c["sent_challenge"] for n, c in counters.items()}
    passed = sum(c["audits_passed"] for c in counters.values())
    failed = sum(c[k] for c in counters.values() for k in ("audits_wrong", "audits_missing"))
    figure(
        "audits on the data clock (a simulated week)",
        f"4 devices: challenges sent {sum(sent.values())}, passed {passed}",
    )
    assert all(n > 0 for n in sent.values()), sent  # every owner audited its holders
    assert failed == 0 and sum(c["audits_timeout"] for c in counters.values()) == 0
    assert passed >= sum(sent.values()) - len(counters)  # the last ones may be in flight
    assert all(c["received_proof"] > 0 for c in counters.values())  # every holder answered
    assert verify(tmp_path / "data").ok
