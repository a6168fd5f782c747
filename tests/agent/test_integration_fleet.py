"""A 20-device fleet end to end: real brokers, a broker SIGKILL, and one device offline.

The fleet (``TWENTY``, counted groups): five households on one street (a fridge and a washer
each), the blood chain of three medical freezers, and seven fridges of a market. Each test runs
``FleetRunner`` in process and then checks, for every device D and every domain peer P of D, that
P's store holds D's headers from 0 to D's head, exactly D's own, and that they verify from P's
stored certificate of D and the data dir's fleet root. Figures are reported as RELIABILITY.md
asks ("lost = 0 of N ..."), with the fleet's seed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import pytest

from agent.config.devices import FleetConfig, load_fleet
from agent.fleet.datadir import DataDir
from agent.fleet.keystore import load_roots
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.provenance.audit import default_root
from agent.transport.brokers import MosquittoBroker
from firmware_sim.clock import SimClock
from ledger.block import decode_header
from ledger.certs import DeviceKeys
from ledger.errors import LedgerError
from ledger.store import Store
from ledger.verify import verify_headers
from tests.agent.runner_helpers import (
    FAST_GOSSIP,
    HOUR_MS,
    device_ids,
    domain_pairs,
    missing_heads,
    read_fleet,
    run_fleet,
    verify,
    write_fleet,
)
from tests.agent.test_reliability import _duplicates, until
from tests.conftest import FigureRecorder

pytestmark = pytest.mark.slow  # whole fleets, real brokers and processes: minutes in all

SEED = 11
MIN_MS = 60_000

TWENTY = f"""\
fleet: street-and-chain
seed: {SEED}
sites:
  - id: home-{{i}}
    count: 5
    kind: household
  - id: elm-street
    kind: street
  - id: market
    kind: street
  - id: blood-station-north
    kind: blood_station
  - id: blood-van-1
    kind: transport
  - id: city-hospital
    kind: hospital
gossip_domains:
  - id: blood-chain
devices:
  - name: fridge-{{i}}
    count: 5
    kind: refrigerator
    site: home-{{i}}
    domains: ["home-{{i}}", elm-street]
    sampling_period: 60s
  - name: washer-{{i}}
    count: 5
    kind: washing_machine
    site: home-{{i}}
    domains: ["home-{{i}}", elm-street]
    sampling_period: 60s
  - name: freezer-station
    kind: medical_freezer
    site: blood-station-north
    domains: [blood-chain]
    sampling_period: 60s
  - name: freezer-van
    kind: medical_freezer
    site: blood-van-1
    domains: [blood-chain]
    sampling_period: 60s
  - name: freezer-hospital
    kind: medical_freezer
    site: city-hospital
    domains: [blood-chain]
    sampling_period: 60s
  - name: deli-fridge-{{i}}
    count: 7
    kind: refrigerator
    site: market
    domains: [market]
    sampling_period: 60s
"""
# Domain pairs (holder, peer): elm-street 10 x 9, blood-chain 3 x 2, market 7 x 6.
PAIRS = 10 * 9 + 3 * 2 + 7 * 6


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> FleetConfig:
    cfg = load_fleet(write_fleet(tmp_path_factory.mktemp("twenty"), TWENTY))
    assert len(cfg.devices) == 20 and len(domain_pairs(cfg)) == PAIRS
    return cfg


# --------------------------------------------------------------------------- the peer audit


@dataclasses.dataclass(frozen=True)
class PeerAudit:
    """Every (device, domain peer) pair: what the peer's store holds of the device's chain."""

    pairs: int
    bad_pairs: int  # pairs whose peer holds something else than the device's chain
    headers: int  # peer headers verified, over all pairs
    replicas: int  # replica rows, each checked against its owner's chain
    problems: tuple[str, ...]

    def figure(self) -> str:
        return (
            f"chains verified by every domain peer: {self.pairs - self.bad_pairs} of "
            f"{self.pairs} pairs, {self.headers} headers, {self.replicas} replicas; "
            f"problems = {len(self.problems)}, seed {SEED}"
        )


def _own_chains(cfg: FleetConfig, dd: DataDir) -> dict[str, list[bytes]]:
    """Device name -> its own header hashes by height, from its own store."""
    chains = {}
    for dev in cfg.devices:
        with Store(dd.store_path(dev.name)) as s:
            chains[dev.name] = [decode_header(w).hash for w in s.own_header_wires()]
    return chains


def audit_peers(cfg: FleetConfig, data: Path) -> PeerAudit:
    """For every device D and domain peer P: P's store holds D's headers 0..head(D), exactly
    D's own (one row per height, no row past the head, none for devices outside P's domains),
    verified by ``verify_headers`` with P's stored certificate of D and the fleet root; every
    replica P holds is a block of a domain peer's own chain."""
    dd = DataDir(data)
    roots = load_roots(default_root(dd))
    ids = device_ids(data)
    name_of = {v: k for k, v in ids.items()}
    chains = _own_chains(cfg, dd)
    peers_of: dict[str, list[str]] = defaultdict(list)
    for holder, peer in domain_pairs(cfg):
        peers_of[holder].append(peer)
    problems: list[str] = []
    headers = replicas = bad = 0
    for holder in sorted(peers_of):
        with Store(dd.store_path(holder)) as s:
            for peer in peers_of[holder]:
                pair = f"{holder} of {peer}"
                held = s.peer_headers(ids[peer])
                headers += len(held)
                got = [(sh.header.height, sh.hash) for sh in held]
                want = list(enumerate(chains[peer]))
                if got != want:
                    first = next(
                        (i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w),
                        min(len(got), len(want)),
                    )
                    problems.append(
                        f"{pair}: holds {len(got)} headers, {peer}'s chain has {len(want)}; "
                        f"they part at row {first}"
                    )
                    bad += 1
                    continue
                try:
                    cert = s.certificate(ids[peer])
                    if cert is None:
                        raise LedgerError(f"no certificate of {peer} held")
                    keys = DeviceKeys.build(cert, roots, now_ms=None)
                    verify_headers(held, keys.key_for)
                except LedgerError as exc:
                    problems.append(f"{pair}: does not verify: {exc}")
                    bad += 1
            domain = {ids[p] for p in peers_of[holder]}
            strangers = [name_of.get(d, d) for d in s.peer_devices() if d not in domain]
            if strangers:
                problems.append(f"{holder}: headers of devices outside its domains: {strangers}")
            for dev, height in s.replica_index():
                replicas += 1
                block = s.replica(dev, height)
                owner = name_of.get(dev, dev)
                chain = chains.get(owner, [])
                if dev not in domain or block is None or height >= len(chain):
                    problems.append(f"{holder}: replica {owner}@{height} is not a peer's block")
                elif block.header.hash != chain[height]:
                    problems.append(f"{holder}: replica {owner}@{height} differs from its chain")
    return PeerAudit(len(domain_pairs(cfg)), bad, headers, replicas, tuple(problems))


def stored_duplicates(data: Path) -> list[str]:
    """Own readings recorded twice (same time, sensor, value and tag under two sequence numbers),
    and gaps in sequence numbers or heights."""
    out = []
    for name, view in read_fleet(data).items():
        dup = _duplicates(view.contents())
        if dup:
            out.append(f"{name}: {dup} readings stored twice")
        if sorted(view.readings) != list(range(len(view.readings))):
            out.append(f"{name}: gap in reading sequence numbers")
        if sorted(view.blocks) != list(range(len(view.blocks))):
            out.append(f"{name}: gap in block heights")
    return out


def assert_fleet_whole(cfg: FleetConfig, data: Path, result: RunResult, what: str) -> str:
    """Nothing lost, nothing duplicated, every chain held and verified by every domain peer.
    Returns the figure."""
    report = verify(data)
    lost = result.samples - report.readings
    pending = sum(r["pending"] for r in report.doc["reports"])
    dups = stored_duplicates(data)
    peers = audit_peers(cfg, data)
    figure = (
        f"{what}: lost = {lost} of {result.samples} readings, pending = {pending}, stored "
        f"duplicates = {len(dups)}; {peers.figure()}"
    )
    assert result.samples > 20 * 60, f"{figure}: too few samples to show anything"
    assert report.ok, f"{figure}; verify: {report.failures()[:5]}"
    assert (lost, pending) == (0, 0), figure
    assert dups == [], f"{figure}: {dups[:5]}"
    assert peers.problems == (), f"{figure}: {list(peers.problems[:5])}"
    assert peers.headers > PAIRS * 5, f"{figure}: too few blocks to show anything"
    assert result.converged, f"{figure}; the run did not report convergence"
    evidence = sum(v.evidence for v in read_fleet(data).values())
    assert evidence == 0, f"{figure}; fork evidence = {evidence} in an honest run"
    return figure


# --------------------------------------------------------------------------- real brokers

RESTART_SPEED = 1_800.0  # simulated seconds per wall second: 2 h take about 4 s


@dataclasses.dataclass(frozen=True)
class Outage:
    result: RunResult
    sealed_while_down: int
    down_sim_ms: int
    drain_s: float


async def _ride_out(runner: FleetRunner, broker: MosquittoBroker, n: int) -> Outage:
    task = asyncio.create_task(runner.run())
    agents = runner.agents

    def sim() -> int:
        return 0 if runner.data_clock is None else runner.data_clock.now_ms()

    def heights() -> dict[str, int]:
        out = {}
        for a in agents.values():
            head = a.store.head()
            out[a.device_id] = -1 if head is None else head.header.height
        return out

    start = runner.cfg.start_ms
    await until(lambda: len(agents) == n and sim() >= start + HOUR_MS // 2, "30 min", task, runner)
    await asyncio.to_thread(broker.kill)
    await until(
        lambda: not any(a.transport.connected for a in agents.values()), "all offline", task, runner
    )
    down_at, before = sim(), sum(heights().values())
    await until(lambda: sim() >= down_at + HOUR_MS // 3, "20 min offline", task, runner)
    sealed = sum(heights().values()) - before
    await asyncio.to_thread(broker.start_sync)  # same port, an empty broker
    restarted, down_ms, target = time.monotonic(), sim() - down_at, heights()

    def drained() -> bool:
        for a in agents.values():
            for peer in a.peer_ids:
                held = a.node.head(peer)
                if (-1 if held is None else held.header.height) < target[peer]:
                    return False
        return True

    await until(drained, "every peer to hold what was sealed before the restart", task, runner)
    drain_s = time.monotonic() - restarted
    return Outage(await task, sealed, down_ms, drain_s)


def run_twenty(cfg: FleetConfig, data: Path, broker: str) -> RunResult:
    """2 simulated hours at RESTART_SPEED: about 4 wall seconds, then settling."""
    return run_fleet(
        cfg,
        data=data,
        broker=broker,
        for_ms=2 * HOUR_MS,
        speed=RESTART_SPEED,
        view=False,
        gossip=FAST_GOSSIP,
        settle_s=30.0,
    )


def test_twenty_devices_over_the_embedded_broker_are_verified_by_every_domain_peer(
    cfg: FleetConfig, tmp_path: Path, figure: FigureRecorder
) -> None:
    data = tmp_path / "data"
    result = run_twenty(cfg, data, "embedded")
    assert result.sim_end_ms - result.sim_start_ms == 2 * HOUR_MS
    figure(
        "honest fleet, embedded broker",
        assert_fleet_whole(cfg, data, result, "embedded amqtt, 20 devices, 2 h"),
    )


@pytest.mark.mosquitto
def test_twenty_devices_over_mosquitto_are_verified_by_every_domain_peer(
    cfg: FleetConfig, mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    data = tmp_path / "data"
    result = run_twenty(cfg, data, mosquitto.endpoint.url)
    assert result.sim_end_ms - result.sim_start_ms == 2 * HOUR_MS
    figure(
        "honest fleet, Mosquitto",
        assert_fleet_whole(cfg, data, result, "mosquitto, 20 devices, 2 h"),
    )


@pytest.mark.mosquitto
def test_twenty_devices_ride_out_a_mosquitto_sigkill_losing_and_duplicating_nothing(
    cfg: FleetConfig, mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    data = tmp_path / "data"
    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            broker=mosquitto.endpoint.url,
            for_ms=2 * HOUR_MS,
            speed=RESTART_SPEED,
            view=False,
            gossip=FAST_GOSSIP,
            # An upper bound, not a wait: a converged run stops at once. After the restart each
            # client's next attempt is up to its backoff (full jitter, 30 s cap) away, and on a
            # loaded machine the outage lasts long enough in wall time for the backoff to grow.
            settle_s=120.0,
        ),
    )
    out = asyncio.run(_ride_out(runner, mosquitto, len(cfg.devices)))
    result = out.result
    # The stores' durable commits went through group syncs (ledger/groupsync.py), whose loss
    # figures below are the ones that count.
    group = runner.group_sync
    assert group is not None and group.syncs > 0 and group.synced_stores >= group.syncs
    outage = (
        f"1 restart (SIGKILL, {out.down_sim_ms // MIN_MS} simulated min down, "
        f"{out.sealed_while_down} blocks sealed meanwhile, time to drain {out.drain_s:.2f} s)"
    )
    assert out.sealed_while_down > 0, f"{outage}: no block sealed while down, no outage"
    reconnects = sorted(a.transport.stats().reconnects for a in result.devices.values())
    assert reconnects[0] >= 1, f"{outage}: reconnects per device {reconnects}"
    assert result.sim_end_ms - result.sim_start_ms == 2 * HOUR_MS
    figure(
        "broker restart mid-run",
        assert_fleet_whole(cfg, data, result, f"mosquitto, 20 devices, 2 h, {outage}"),
    )


# --------------------------------------------------------------------------- one device offline

OFFLINE = "fridge-1"  # nine domain peers: its washer and the rest of elm-street
OFF_AT = HOUR_MS
ON_AT = 3 * HOUR_MS
RUN_MS = 4 * HOUR_MS


@dataclasses.dataclass(frozen=True)
class Offline:
    result: RunResult
    sealed_offline: int  # own blocks sealed while offline
    behind_at_return: int  # peers' headers it lacked when it came back
    unseen_at_return: int  # its headers its peers lacked when it came back
    caught_up_ms: int | None  # simulated time from its return until nothing was missing

    def figure(self) -> str:
        took = (
            "not within the hour left of the run"
            if self.caught_up_ms is None
            else f"within {self.caught_up_ms // MIN_MS} simulated min of returning"
        )
        return (
            f"{OFFLINE} caught up {self.behind_at_return} headers of its 9 peers, and they "
            f"{self.unseen_at_return} headers of its {self.sealed_offline} blocks sealed offline, "
            f"after {(ON_AT - OFF_AT) // MIN_MS} simulated min offline, {took}, seed {SEED}"
        )


async def _until_sim(clock: SimClock, t_ms: int, run: asyncio.Task[RunResult]) -> bool:
    """Sleep until simulated ``t_ms``; False if the run ended first (its error is raised)."""
    sleeper = asyncio.ensure_future(clock.sleep_until(t_ms))
    await asyncio.wait({sleeper, run}, return_when=asyncio.FIRST_COMPLETED)
    if not sleeper.done():
        sleeper.cancel()
        run.result()
        return False
    return True


async def _offline_run(runner: FleetRunner) -> Offline:
    run = asyncio.create_task(runner.run())
    await asyncio.sleep(0)  # run() makes its simulated clock before its first await
    clock = runner.data_clock
    assert clock is not None
    start = clock.now_ms()
    assert await _until_sim(clock, start + OFF_AT, run), "the run ended before the outage"
    assert runner.network is not None
    me = runner.agents[OFFLINE]
    peers = [a for a in runner.agents.values() if a.device_id in me.peer_ids]

    def height(store: Store, device_id: str | None = None) -> int:
        head = store.head() if device_id is None else store.peer_head(device_id)
        return -1 if head is None else head.header.height

    runner.network.disconnect(me.device_id)
    own_at_off = height(me.store)
    assert await _until_sim(clock, start + ON_AT, run), "the run ended during the outage"
    own = height(me.store)
    theirs = {p.device_id: height(p.store) for p in peers}
    behind = sum(h - height(me.store, d) for d, h in theirs.items())
    unseen = sum(own - height(p.store, me.device_id) for p in peers)
    runner.network.reconnect(me.device_id)

    def caught_up() -> bool:
        return all(height(me.store, d) >= h for d, h in theirs.items()) and all(
            height(p.store, me.device_id) >= own for p in peers
        )

    caught: int | None = None
    t = start + ON_AT
    while caught is None and await _until_sim(clock, t + MIN_MS, run):
        t += MIN_MS
        if caught_up():
            caught = t - (start + ON_AT)
    return Offline(await run, own - own_at_off, behind, unseen, caught)


@pytest.fixture(scope="module")
def offline(cfg: FleetConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[Offline, Path]:
    """4 simulated hours on the in-memory network; OFFLINE is cut off from 1 h to 3 h."""
    data = tmp_path_factory.mktemp("offline") / "data"
    runner = FleetRunner(
        cfg,
        RunOptions(data=data, for_ms=RUN_MS, simulated_network=True, view=False),
    )
    return asyncio.run(_offline_run(runner)), data


def test_a_device_offline_for_two_hours_catches_up_completely_after_it_returns(
    cfg: FleetConfig, offline: tuple[Offline, Path], figure: FigureRecorder
) -> None:
    out, data = offline
    text = out.figure()
    assert out.sealed_offline > 0, f"{text}: it sealed nothing while offline"
    assert out.behind_at_return > 0, f"{text}: it missed nothing while offline"
    assert out.unseen_at_return > 0, f"{text}: its peers missed nothing of it"
    assert out.caught_up_ms is not None, text
    assert out.caught_up_ms <= 10 * MIN_MS, f"{text}: slower than 10 simulated min"
    missing = missing_heads(cfg, data)
    assert missing == [], f"{text}; missing heads at the end: {missing}"
    figure("one device offline, then back", assert_fleet_whole(cfg, data, out.result, text))


# --------------------------------------------------------------------------- the checks can fail


def test_the_peer_audit_and_the_duplicate_check_see_tampered_stores(
    cfg: FleetConfig, offline: tuple[Offline, Path], tmp_path: Path
) -> None:
    """Four named mutations of a copy of a whole run's data dir, each seen by the checks above."""
    data = shutil.copytree(offline[1], tmp_path / "data")
    dd, ids = DataDir(data), device_ids(data)
    before, dups_before = audit_peers(cfg, data), stored_duplicates(data)  # judged elsewhere

    def db(name: str) -> sqlite3.Connection:
        return sqlite3.connect(dd.store_path(name), isolation_level=None)

    with closing(db("washer-1")) as c:  # missing-top-header: washer-1 lacks fridge-1's head
        c.execute(
            "DELETE FROM peer_headers WHERE device_id=? AND height="
            "(SELECT max(height) FROM peer_headers WHERE device_id=?)",
            (ids["fridge-1"], ids["fridge-1"]),
        )
    with closing(db("deli-fridge-2")) as src:  # foreign-row: a market header on elm-street
        row = src.execute(
            "SELECT device_id, height, epoch, hash, header FROM peer_headers WHERE device_id=?",
            (ids["deli-fridge-1"],),
        ).fetchone()
    with closing(db("fridge-2")) as c:
        c.execute("INSERT INTO peer_headers VALUES (?, ?, ?, ?, ?)", row)
    with closing(db("fridge-3")) as c:  # wrong-certificate: washer-2's chain under fridge-4's
        (cert,) = c.execute(
            "SELECT wire FROM certificates WHERE device_id=?", (ids["fridge-4"],)
        ).fetchone()
        c.execute("UPDATE certificates SET wire=? WHERE device_id=?", (cert, ids["washer-2"]))
    with closing(db("freezer-van")) as c:  # recorded-twice: the last reading again, next seq
        c.execute(
            "INSERT INTO readings SELECT seq + 1, wire FROM readings ORDER BY seq DESC LIMIT 1"
        )

    found = audit_peers(cfg, data)
    new = [p for p in found.problems if p not in before.problems]
    assert found.bad_pairs - before.bad_pairs == 2, new
    expected = (
        "washer-1 of fridge-1: holds",
        "fridge-2: headers of devices outside its domains: ['deli-fridge-1']",
        "fridge-3 of washer-2: does not verify",
    )
    for start in expected:
        assert any(p.startswith(start) for p in new), (start, new)
    assert len(new) == len(expected), new
    dups = [d for d in stored_duplicates(data) if d not in dups_before]
    assert dups == ["freezer-van: 1 readings stored twice"]
