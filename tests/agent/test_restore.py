"""Restore of a wiped device (docs/RESTORE.md): the gossip core's inputs and actions one by one,
a direct-wired simulation (agent/gossip/sim.py), whole fleet runs on the in-memory network with
simulated time, and `edgefleet restore` as a subprocess over a real Mosquitto.

The promises: a restored device recovers 100% of what its peers serve, byte for byte; it never
signs a height it already published in the same epoch (no fork evidence anywhere); if its
published head is out of reach it opens a new epoch with a signed record that peers accept.
"""

from __future__ import annotations

import io
import random
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.devices import FleetConfig, load_fleet
from agent.device.runtime import RestoreError
from agent.fleet.datadir import DataDir
from agent.fleet.runner import RunResult
from agent.gossip import wire
from agent.gossip.actions import (
    Action,
    EpochAccepted,
    RestoreFinished,
    RewindChain,
    Send,
    StoreEpoch,
    StoreHeaders,
)
from agent.gossip.inputs import (
    CertificateKnown,
    ChainLoaded,
    ChainRewound,
    MessageReceived,
    PeerUp,
    RestoreRequested,
)
from agent.gossip.node import GossipNode
from agent.gossip.sim import SimNet
from agent.gossip.tuning import GossipConfig
from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from agent.transport.brokers import MosquittoBroker
from ledger.block import Block, build_header, decode_header, sign_header
from ledger.epoch import EpochRecord, sign_epoch
from ledger.errors import UsageError
from ledger.history import CompactRange
from ledger.identity import SigningKey
from ledger.reading import Reading, sign_reading
from ledger.store import Store
from tests.agent.runner_helpers import (
    HOUR_MS,
    device_ids,
    missing_heads,
    read_fleet,
    run_fleet,
    verify,
    write_fleet,
)

T0 = START_MS
ALWAYS = GossipConfig(want_bodies=lambda d, h: True, restore_body_wait_ms=5_000)


def of_type(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def sent(actions: list[Action]) -> list[tuple[str, wire.Message]]:
    return [(a.peer_id, wire.decode(unseal(a.payload))) for a in actions if isinstance(a, Send)]


# ---------------------------------------------------------------- one core, input by input


@dataclass
class World:
    authority: Authority
    devices: list[SimDevice]

    def id(self, i: int) -> str:
        return self.devices[i].device_id

    def node(self, me: int = 0, members: tuple[int, ...] = (0, 1, 2)) -> GossipNode:
        node = GossipNode(
            self.id(me),
            {"d": [self.id(i) for i in members]},
            self.authority.roots,
            random.Random(3),
            now_ms=T0,
            signer=self.devices[me],
        )
        for d in self.devices:
            node.handle(CertificateKnown(d.certificate), T0)
        return node


@pytest.fixture
def world() -> World:
    rng = random.Random(7)
    authority = Authority(rng)
    devices = [SimDevice(authority, rng) for _ in range(3)]
    for k in range(10):
        devices[1].seal(T0 + k)
    return World(authority, devices)


def summary(world: World, sender: int, entries: tuple[wire.SummaryEntry, ...]) -> MessageReceived:
    return MessageReceived(
        world.id(sender), sealed(wire.encode(wire.Summary(world.id(sender), False, entries)))
    )


def head_entry(device: SimDevice) -> wire.SummaryEntry:
    head = device.blocks[-1].header
    return wire.SummaryEntry(device.device_id, head.header.epoch, head.header.height, head.hash)


@pytest.mark.parametrize(
    ("claims", "expect"),
    [
        pytest.param((None, None), "fresh", id="nobody-holds-anything"),
        pytest.param((9, None), "request", id="one-peer-holds-up-to-9"),
        pytest.param((4, 9), "request", id="the-highest-claim-wins"),
    ],
)
def test_discovery_learns_the_published_head_before_anything_is_signed(
    world: World, claims: tuple[int | None, int | None], expect: str
) -> None:
    """Device 1 restores; devices 0 and 2 answer with what they hold of it (or nothing)."""
    node = world.node(me=1)
    node.handle(RestoreRequested(), T0)
    assert node.restoring
    for i in (0, 2):
        up = node.handle(PeerUp(world.id(i)), T0)
        assert [type(m) for _, m in sent(up)] == [wire.Certs, wire.Summary]  # hello, then ask
    out: list[Action] = []
    for sender, height in zip((0, 2), claims, strict=True):
        entries: tuple[wire.SummaryEntry, ...] = ()
        if height is not None:
            h = world.devices[1].blocks[height].header
            entries = (wire.SummaryEntry(world.id(1), 0, height, h.hash),)
        out = node.handle(summary(world, sender, entries), T0)
    if expect == "fresh":
        assert of_type(out, RestoreFinished) == [RestoreFinished(0, -1, 0, -1, False)]
        assert not node.restoring
        return
    requests = [(p, m) for p, m in sent(out) if isinstance(m, wire.Request)]
    top = max(h for h in claims if h is not None)
    claimant = world.id(0) if claims[0] == top else world.id(2)
    assert requests[0] == (claimant, requests[0][1])
    req = requests[0][1]
    assert isinstance(req, wire.Request)
    assert (req.device_id, req.from_height, req.to_height) == (world.id(1), 0, top)
    assert node.restore_state() is not None and node.restore_state().target_height == top  # type: ignore[union-attr]
    assert node.restoring and not of_type(out, RestoreFinished)


def test_a_device_without_peers_has_nothing_to_restore(world: World) -> None:
    node = world.node(me=0, members=(0,))
    out = node.handle(RestoreRequested(), T0)
    assert of_type(out, RestoreFinished) == [RestoreFinished(0, -1, 0, -1, False)]
    with pytest.raises(UsageError, match="already"):
        node.handle(RestoreRequested(), T0)


# ---------------------------------------------------------------- epoch records at a peer


def _new_epoch_block(dev: SimDevice, after: int, epoch: int, time_ms: int) -> Block:
    """The first block of ``epoch``, linked to ``dev``'s block at height ``after``."""
    prev = dev.blocks[after].header
    history = CompactRange()
    for b in dev.blocks[: after + 1]:
        history.append(b.header.hash)
    seq = dev.blocks[after].readings[-1].reading.seq + 1
    reading = sign_reading(
        Reading(dev.device_id, epoch, seq, time_ms, "fridge.temp_mc", 4_200), dev.key
    )
    header = build_header(
        device_id=dev.device_id,
        epoch=epoch,
        prev=prev,
        history_root=history.root(),
        readings=[reading],
        key_id=dev.key.key_id,
    )
    return Block(sign_header(header, dev.key), (reading,))


def _record(dev: SimDevice, after: int, key: SigningKey | None = None) -> bytes:
    head = dev.blocks[after].header
    rec = EpochRecord(dev.device_id, 1, 0, after, head.hash, T0)
    return sign_epoch(rec, key or dev.key).wire


@pytest.mark.parametrize(
    ("case", "stored", "rewinds", "penalized"),
    [
        pytest.param("valid", True, True, False, id="valid-record-rewinds-the-held-chain"),
        pytest.param("wrong-key", False, False, True, id="signed-by-another-key"),
        pytest.param("bit-flip", False, False, True, id="signature-bit-flip"),
        pytest.param("unrelated-hash", True, False, False, id="names-a-header-not-held"),
    ],
)
def test_epochs_message_at_a_peer(
    world: World, case: str, stored: bool, rewinds: bool, penalized: bool
) -> None:
    """Node 0 holds device 1's chain 0..9; device 1 says epoch 0 closed at height 5."""
    node = world.node(me=0)
    dev = world.devices[1]
    node.handle(ChainLoaded(dev.device_id, tuple(dev.header_wires())), T0)
    node.handle(PeerUp(world.id(2)), T0)
    record = _record(dev, 5)
    if case == "wrong-key":
        record = _record(dev, 5, key=world.devices[2].key)
    elif case == "bit-flip":
        record = record[:-1] + bytes([record[-1] ^ 1])
    elif case == "unrelated-hash":
        rec = EpochRecord(dev.device_id, 1, 0, 5, bytes(32), T0)
        record = sign_epoch(rec, dev.key).wire
    msg = MessageReceived(world.id(2), sealed(wire.encode(wire.Epochs(world.id(2), (record,)))))
    out = node.handle(msg, T0)
    assert bool(of_type(out, StoreEpoch)) == stored
    assert bool(of_type(out, EpochAccepted)) == stored
    assert of_type(out, RewindChain) == ([RewindChain(dev.device_id, 5, 1)] if rewinds else [])
    stats = node.peer_stats(world.id(2))
    assert stats is not None and (stats.invalid > 0) == penalized


def test_after_a_rewind_the_new_epoch_links_and_superseded_headers_are_not_forks(
    world: World,
) -> None:
    node = world.node(me=0)
    dev = world.devices[1]
    node.handle(ChainLoaded(dev.device_id, tuple(dev.header_wires())), T0)
    node.handle(PeerUp(world.id(1)), T0)
    node.handle(PeerUp(world.id(2)), T0)
    record = _record(dev, 5)
    node.handle(
        MessageReceived(world.id(1), sealed(wire.encode(wire.Epochs(world.id(1), (record,))))), T0
    )
    first = _new_epoch_block(dev, 5, 1, T0 + 100)
    announce = MessageReceived(
        world.id(1), sealed(wire.encode(wire.Announce(world.id(1), (first.header.wire,))))
    )
    assert not of_type(node.handle(announce, T0), StoreHeaders)  # still rewinding
    node.handle(ChainRewound(dev.device_id, tuple(dev.header_wires()[:6])), T0)
    head = node.head(dev.device_id)
    assert head is not None and head.header.height == 5
    out = node.handle(announce, T0 + 1)
    assert of_type(out, StoreHeaders) == [StoreHeaders(dev.device_id, (first.header.wire,))]
    # device 2 still offers the old epoch's height 7: valid history, superseded, not a fork
    old = MessageReceived(
        world.id(2), sealed(wire.encode(wire.Announce(world.id(2), (dev.blocks[7].header.wire,))))
    )
    out = node.handle(old, T0 + 2)
    assert node.counters["header_superseded"] == 1 and not node.forked()
    assert [type(m) for p, m in sent(out) if p == world.id(2)] == [wire.Epochs]


# --------------------------------------------------------------------------- direct-wired nodes


def _sim(seed: int, n: int = 4) -> SimNet:
    net = SimNet(seed)
    for _ in range(n):
        net.add_device(config=ALWAYS)
    net.start(preload_certificates=True)
    return net


def _finished(net: SimNet, dev: str) -> RestoreFinished | None:
    done = of_type(net.peers[dev].events, RestoreFinished)
    return done[-1] if done else None  # type: ignore[return-value]


def _seal_and_spread(net: SimNet, dev: str, blocks: int) -> None:
    for _ in range(blocks):
        net.seal(dev)
        net.run_for(2_000)
    assert net.run_for(60_000, lambda: net.converged()), net.missing()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_wired_nodes_restore_a_wiped_device_byte_for_byte_and_it_continues(seed: int) -> None:
    net = _sim(seed)
    me = sorted(net.peers)[0]
    _seal_and_spread(net, me, 40)
    net.restore(me)
    assert net.run_for(60_000, lambda: _finished(net, me) is not None)
    done = _finished(net, me)
    assert done == RestoreFinished(0, 39, 0, 39, False)
    peer = net.peers[me]
    assert peer.device.header_wires() == peer.published  # 100%, byte-identical headers
    block = net.seal(me)
    assert block.header.header.height == 40 and block.header.header.epoch == 0
    assert block.header.header.prev_hash == decode_header(peer.published[-1]).hash
    assert net.run_for(60_000, lambda: net.converged()), net.missing()
    assert all(not p.store.evidence for p in net.peers.values())
    assert net.stored_duplicates() == 0 and net.out_of_order() == 0


@pytest.mark.parametrize("seed", [4, 5])
def test_wired_nodes_open_a_new_epoch_when_the_newest_bodies_are_nowhere(seed: int) -> None:
    net = _sim(seed)
    me = sorted(net.peers)[0]
    _seal_and_spread(net, me, 30)
    for p in net.peers.values():  # the bodies of heights 21..29 are lost everywhere
        for key in [k for k in p.store.blocks if k[0] == me and k[1] > 20]:
            del p.store.blocks[key]
    net.restore(me)
    assert net.run_for(120_000, lambda: _finished(net, me) is not None)
    assert _finished(net, me) == RestoreFinished(1, 20, 0, 29, True)
    peer = net.peers[me]
    assert peer.device.header_wires() == peer.published[:21]
    first = net.seal(me)
    h = first.header.header
    assert (h.epoch, h.height, h.prev_hash) == (1, 21, decode_header(peer.published[20]).hash)
    assert net.run_for(60_000, lambda: net.converged()), net.missing()
    for p in net.peers.values():
        if p.device_id == me:
            continue
        assert (me, 1) in p.store.epochs  # every peer accepted and kept the record
        assert len(p.store.superseded.get(me, {})) == 9  # old heights 21..29 kept aside
        assert not p.store.evidence
    assert net.stored_duplicates() == 0


# --------------------------------------------------------------------------- whole fleet runs

WIPED = "fridge-1"  # domains home-1 (alone) and blood-chain (two freezers): two peers


@dataclass(frozen=True)
class Ran:
    cfg: FleetConfig
    data: Path
    published: list[bytes]  # WIPED's own headers before the wipe
    result: RunResult


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """The small fleet, 2 simulated hours, every peer keeping its domain peers' bodies."""
    root = tmp_path_factory.mktemp("restore")
    cfg = load_fleet(write_fleet(root))
    data = root / "data"
    result = run_fleet(
        cfg, data=data, for_ms=2 * HOUR_MS, simulated_network=True, view=False, gossip=ALWAYS
    )
    with Store(DataDir(data).store_path(WIPED)) as s:
        published = s.own_header_wires()
    assert len(published) > 8, "too few blocks to show anything"
    return Ran(cfg, data, published, result)


def _copy_and_wipe(ran: Ran, to: Path) -> Path:
    data = to / "data"
    shutil.copytree(ran.data, data)
    store = DataDir(data).store_path(WIPED)
    for p in store.parent.glob(store.name + "*"):
        p.unlink()  # the store and its WAL: the identity (device.key, device.cert) stays
    return data


def _own(data: Path, name: str) -> list[bytes]:
    with Store(DataDir(data).store_path(name)) as s:
        return s.own_header_wires()


def _self_forks(data: Path, published: list[bytes]) -> list[str]:
    """Heights the device signed twice in one epoch (before and after the wipe), and fork
    evidence held anywhere."""
    before = {(h.header.epoch, h.header.height): h.hash for h in map(decode_header, published)}
    out = [
        f"{WIPED} re-signed epoch {h.header.epoch} height {h.header.height}"
        for h in map(decode_header, _own(data, WIPED))
        if before.get((h.header.epoch, h.header.height), h.hash) != h.hash
    ]
    out += [f"{n}: {v.evidence} fork evidence" for n, v in read_fleet(data).items() if v.evidence]
    return out


@pytest.mark.slow
def test_a_wiped_device_restores_100_percent_and_continues_its_chain_in_the_same_epoch(
    ran: Ran, tmp_path: Path
) -> None:
    data = _copy_and_wipe(ran, tmp_path)
    result = run_fleet(
        ran.cfg, data=data, for_ms=HOUR_MS, simulated_network=True, view=False, gossip=ALWAYS
    )
    done = result.devices[WIPED].restore_result
    n = len(ran.published)
    figure = f"restored {done} of {n} published blocks, seed {ran.cfg.seed}"
    assert done == RestoreFinished(0, n - 1, 0, n - 1, False), figure
    after = _own(data, WIPED)
    assert after[:n] == ran.published, figure  # 100%, byte-identical headers
    nxt = decode_header(after[n])  # the run went on: its next block links to the old head
    assert (nxt.header.epoch, nxt.header.height) == (0, n), figure
    assert nxt.header.prev_hash == decode_header(ran.published[-1]).hash, figure
    assert _self_forks(data, ran.published) == [], figure
    report = verify(data)
    assert report.ok, report.failures()
    assert missing_heads(ran.cfg, data) == []  # every peer holds (and verified) the new head
    assert report.report(WIPED)["epochs"] == []
    # Replication tracks the restored blocks again: their holders promised them anew.
    with Store(DataDir(data).store_path(WIPED)) as s:
        receipted = {h for h, _, _ in s.receipts()}
    assert set(range(n)) <= receipted, f"{figure}; no receipt for {set(range(n)) - receipted}"
    print(f"{figure}; next block at height {n} links to the old head, no fork")


@pytest.mark.slow
def test_a_wiped_device_whose_newest_bodies_are_nowhere_opens_a_new_epoch(
    ran: Ran, tmp_path: Path
) -> None:
    data = _copy_and_wipe(ran, tmp_path)
    ids = device_ids(data)
    keep = len(ran.published) // 2  # bodies of heights keep.. are lost on every peer
    for name in ids.keys() - {WIPED}:
        with closing(sqlite3.connect(DataDir(data).store_path(name))) as db, db:
            db.execute("DELETE FROM replicas WHERE device_id=? AND height>=?", (ids[WIPED], keep))
    result = run_fleet(
        ran.cfg, data=data, for_ms=HOUR_MS, simulated_network=True, view=False, gossip=ALWAYS
    )
    n = len(ran.published)
    done = result.devices[WIPED].restore_result
    assert done == RestoreFinished(1, keep - 1, 0, n - 1, True)
    after = _own(data, WIPED)
    assert after[:keep] == ran.published[:keep]
    first = decode_header(after[keep])
    assert (first.header.epoch, first.header.height) == (1, keep)
    assert first.header.prev_hash == decode_header(ran.published[keep - 1]).hash
    assert _self_forks(data, ran.published) == []
    for name in ids:  # every store holds the signed record; peers set the old heights aside
        with Store(DataDir(data).store_path(name)) as s:
            assert len(s.epoch_wires(ids[WIPED])) == 1, name
            if name != WIPED:
                assert len(s.superseded_header_wires(ids[WIPED])) == n - keep, name
    report = verify(data)
    assert report.ok, report.failures()
    assert report.report(WIPED)["epochs"] == [
        {"epoch": 1, "after_height": keep - 1, "from_epoch": 0}
    ]
    assert missing_heads(ran.cfg, data) == []
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["verify", "--data", str(data)]) == 0
    assert f"{WIPED}: epoch 1 follows epoch 0 after height {keep - 1}" in out.getvalue()
    # a plain restart later: every store loads its chains across the change, and it goes on
    run_fleet(ran.cfg, data=data, for_ms=HOUR_MS // 2, simulated_network=True, view=False)
    later = _own(data, WIPED)
    assert later[: len(after)] == after and len(later) > len(after)
    assert decode_header(later[-1]).header.epoch == 1
    assert verify(data).ok and missing_heads(ran.cfg, data) == []
    assert _self_forks(data, ran.published) == []


@pytest.mark.slow
def test_restore_refuses_a_store_that_is_not_empty(ran: Ran, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(ran.data, data)
    with pytest.raises(RestoreError, match="not empty"):
        run_fleet(
            ran.cfg, data=data, for_ms=0, simulated_network=True, view=False, restore=(WIPED,)
        )


# --------------------------------------------------------------------------- the command


@pytest.mark.mosquitto
@pytest.mark.subprocess
def test_edgefleet_restore_over_mosquitto_recovers_the_chain(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = write_fleet(tmp_path)
    cfg = load_fleet(fleet)
    data = tmp_path / "data"
    # The fleet's history is made on simulated time (every body reaches its peers before the
    # run ends); the restore then runs for real: a subprocess, every device on Mosquitto.
    run_fleet(cfg, data=data, for_ms=HOUR_MS, simulated_network=True, view=False, gossip=ALWAYS)
    published = _own(data, WIPED)
    ids = device_ids(data)
    with Store(DataDir(data).store_path("freezer-station")) as s:
        held = {h for d, h in s.replica_index() if d == ids[WIPED]}
    assert held == set(range(len(published))), "precondition: a peer holds every body"
    store = DataDir(data).store_path(WIPED)
    for p in store.parent.glob(store.name + "*"):
        p.unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "restore",
            "--device",
            WIPED,
            "--data",
            str(data),
            "--devices",
            str(fleet),
            "--broker",
            mosquitto.endpoint.url,
            "--settle",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{WIPED}: restored 100% of its chain, heights 0..{len(published) - 1}" in proc.stdout
    assert _own(data, WIPED) == published
    assert verify(data).ok
    assert _self_forks(data, published) == []
