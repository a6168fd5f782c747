"""bench.replication: the message meter, the availability rule and the stepped source on exact
inputs, then ``python -m bench.replication --json --quick`` end to end (a subprocess: restore,
a simulated 30-device run and, when the binary is installed, a real Mosquitto run), its JSON
checked for presence, types and consistency (no timing is asserted)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import subprocess
import sys
from types import SimpleNamespace
from typing import Any, cast

import pytest

from agent.device.runtime import DeviceAgent
from agent.gossip import wire as gwire
from agent.replication import wire as rwire
from agent.replication.inputs import MessageReceived, PeerUp
from agent.transport.memory import MemoryNetwork
from bench.replication import (
    QUICK,
    TYPE_NAMES,
    Plan,
    R,
    SteppedSource,
    WireMeter,
    availability,
    message_type,
)
from firmware_sim.samples import Sample
from tests.agent.runner_helpers import REPO

A = "efaaaaaaaaaaaaaaaaaaaaaaaa"
B = "efbbbbbbbbbbbbbbbbbbbbbbbb"
H = bytes(range(32))

MESSAGES: dict[str, rwire.Message] = {
    "store": rwire.Store(A, 7, b"\x01\x02\x03", None),
    "receipt": rwire.ReceiptMsg(A, 7, b"\xaa\xbb\xcc"),
    "refuse": rwire.Refuse(A, 7, rwire.FULL, 4096),
    "challenge": rwire.Challenge(A, 9, 300, H, bytes(range(16))),
    "proof": rwire.Proof(A, 9, H),
    "release": rwire.Release(A, 300, H),
    "space": rwire.Space(A, 1 << 26, 1 << 20),
}


def test_every_replication_type_is_named_and_gossip_is_not_counted() -> None:
    assert sorted(MESSAGES) == sorted(TYPE_NAMES.values())
    for name, msg in MESSAGES.items():
        assert message_type(rwire.encode(msg)) == name
    gossip = gwire.encode(gwire.Summary(A, False, ()))
    assert message_type(gossip) is None
    assert message_type(b"") is None


@pytest.mark.parametrize(
    ("holders", "down", "expected"),
    [
        pytest.param({}, 2, 1.0, id="no-blocks"),
        pytest.param({1: {"a", "b", "c"}}, 2, 1.0, id="three-holders-two-down"),
        pytest.param({1: {"a", "b"}}, 2, 0.0, id="two-holders-two-down"),
        pytest.param({1: {"a"}}, 2, 0.0, id="fewer-holders-than-down"),
        pytest.param({1: {"a", "b", "c"}, 2: {"a", "b"}, 3: set()}, 1, 2 / 3, id="mixed"),
        pytest.param({1: {"a", "b", "c"}, 2: {"a", "b", "c", "d"}}, 3, 0.5, id="r-down"),
    ],
)
def test_a_block_survives_exactly_when_it_has_more_holders_than_are_down(
    holders: dict[Any, set[str]], down: int, expected: float
) -> None:
    assert availability(holders, down) == pytest.approx(expected)


def test_the_meter_counts_replication_bytes_published_and_delivered_by_phase() -> None:
    net = MemoryNetwork(random.Random(1))
    ta, tb = net.attach(A, ["street"]), net.attach(B, ["street"])
    handled: list[object] = []

    async def handle(event: object) -> None:
        handled.append(event)

    agents = {
        name: cast(
            DeviceAgent,
            SimpleNamespace(name=name, transport=t, replicator=SimpleNamespace(handle=handle)),
        )
        for name, t in (("a", ta), ("b", tb))
    }
    meter = WireMeter()
    for agent in agents.values():
        meter.attach(agent)
        meter.attach(agent)  # twice: still counted once
    store = rwire.encode(MESSAGES["store"])
    space = rwire.encode(MESSAGES["space"])
    gossip = gwire.encode(gwire.Summary(A, False, ()))

    async def deliver() -> None:
        net.deliver_all()
        for agent in agents.values():
            assert agent.replicator is not None
            for d in cast(Any, agent.transport).drain():
                await agent.replicator.handle(MessageReceived(None, d.payload))

    async def exchange() -> None:
        a = agents["a"]
        await a.transport.send(B, store)
        await a.transport.send(B, gossip)
        await deliver()
        meter.phase = "repair"
        await a.transport.broadcast("street", space)
        await deliver()
        assert a.replicator is not None
        await a.replicator.handle(PeerUp(B))  # not a message: passed on, not counted

    asyncio.run(exchange())
    assert meter.published.by_type("steady") == {"store": {"count": 1, "bytes": len(store)}}
    assert meter.published.by_type("repair") == {"space": {"count": 1, "bytes": len(space)}}
    # Delivered: the STORE once (B), the gossip payload never, the broadcast to both (echo).
    assert meter.delivered.by_type("steady") == {"store": {"count": 1, "bytes": len(store)}}
    assert meter.delivered.by_type("repair") == {"space": {"count": 2, "bytes": 2 * len(space)}}
    assert meter.delivered.bytes("steady") == len(store)
    assert len(handled) == 5  # STORE, gossip, SPACE twice, PeerUp: every event reached handle


class Grid:
    """A source whose samples name the step they came from."""

    def __init__(self) -> None:
        self.now_ms = 0

    def targets(self, until_ms: int) -> Any:
        raise AssertionError("SteppedSource chooses its own targets")

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        out = [("d", Sample(until_ms, "temp_mc", self.now_ms))]
        self.now_ms = until_ms
        return out


def test_the_stepped_source_steps_finely_in_its_window_and_reports_the_state_before() -> None:
    seen: list[int] = []
    src = SteppedSource(Grid(), 60_000, 1_000, lambda t: 120_000 <= t < 123_000, seen.append)
    targets = []
    for t in src.targets(300_000):
        targets.append(t)
        src.step(t)
    assert targets == [0, 60_000, 120_000, 121_000, 122_000, 123_000, 183_000, 243_000, 300_000]
    assert seen == [0, *targets[:-1]]  # each step first sees where the fleet got to
    assert src.now_ms == 300_000
    with pytest.raises(ValueError, match="fine <= coarse"):
        SteppedSource(Grid(), 1_000, 2_000, lambda t: False, seen.append)


def test_a_plan_whose_run_ends_before_the_repair_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="sim_after_ms > 900000, found 600000"):
        Plan(sim_after_ms=600_000)
    assert QUICK.restore_blocks == 1_000


# --------------------------------------------------------------------------- end to end

TYPED: dict[str, type | tuple[type, ...]] = {
    "restore_blocks_per_s": int,
    "raw_verify_commit_blocks_per_s": int,
    "restore_ratio": (int, float),
    "replication_bytes_per_block": (int, float),
    "repair_s": (int, float),
    "repair_mode": str,
    "availability": (int, float),
    "availability_by_down": dict,
    "blocks_considered": int,
    "blocks_at_r": int,
    "restore": dict,
    "replication": dict,
    "repair": dict,
    "meta": dict,
}


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.replication", "--json", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, found {len(lines)}"
    doc: dict[str, Any] = json.loads(lines[0])
    return doc


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.mosquitto
def test_quick_run_prints_every_figure_typed_and_consistent(quick: dict[str, Any]) -> None:
    doc = quick
    for key, kind in TYPED.items():
        assert isinstance(doc.get(key), kind), f"{key}: expected {kind}, found {doc.get(key)!r}"
    # restore: the whole chain came back, byte for byte, in its epoch
    restore = doc["restore"]
    assert restore["chain_blocks"] == QUICK.restore_blocks
    assert restore["blocks"] == restore["chain_blocks"]
    assert restore["identical"] is True and restore["same_epoch"] is True
    assert doc["restore_blocks_per_s"] > 0 and doc["raw_verify_commit_blocks_per_s"] > 0
    ratio = doc["restore_blocks_per_s"] / doc["raw_verify_commit_blocks_per_s"]
    assert doc["restore_ratio"] == pytest.approx(ratio, rel=0.01)
    # wire cost: every placed body went to R holders, so at least R body bytes each
    rep = doc["replication"]
    bpb = doc["replication_bytes_per_block"]
    assert rep["placed_blocks"] > 0 and bpb >= R and rep["ideal"] == R
    assert rep["bytes_ratio"] == pytest.approx(bpb / R, abs=0.001)
    delivered = rep["by_type"]["delivered"]
    assert set(delivered) <= set(TYPE_NAMES.values()) and {"store", "receipt"} <= set(delivered)
    assert delivered["store"]["count"] >= R * rep["placed_blocks"]
    body = rep["placed_blocks"] * rep["mean_block_bytes"]
    total = sum(v["bytes"] for v in delivered.values())
    assert total / body == pytest.approx(bpb, rel=0.001)
    published = rep["by_type"]["published"]
    for kind, v in published.items():  # a broadcast is delivered to many, a send to one
        assert delivered[kind]["count"] >= v["count"], kind
    # availability: the share of blocks with at least R live exact copies
    considered, at_r = doc["blocks_considered"], doc["blocks_at_r"]
    assert considered > 0
    assert doc["availability"] == pytest.approx(at_r / considered, abs=1e-6)
    if at_r == considered:
        assert doc["availability"] == 1.0
    curve = [doc["availability_by_down"][str(d)] for d in range(R + 1)]
    assert curve == sorted(curve, reverse=True) and curve[R - 1] == doc["availability"]
    # repair: back at R, confirmed by the stores, marks that add up
    live = shutil.which("mosquitto") is not None
    assert doc["repair_mode"] == ("live" if live else "simulated")
    for mode, fig in doc["repair"].items():
        if fig is None:
            assert mode == "live" and not live
            continue
        assert fig["repaired"] is True and fig["tracked_blocks"] > 0, (mode, fig)
        assert fig["tracked_short_in_stores"] == 0, (mode, fig)
        if mode == "live":  # the poll, plus how far the data clock fell behind its pace
            assert fig["data_clock_lag_max_s"] >= 0
            assert fig["resolution_s"] == pytest.approx(
                0.05 + fig["data_clock_lag_max_s"], abs=0.002
            )
        assert fig["detection_s"] >= 0 and fig["replacement_s"] >= -fig["resolution_s"]
        assert math.isclose(
            fig["repair_s"], fig["detection_s"] + fig["replacement_s"], abs_tol=0.002
        )
        assert math.isclose(
            fig["back_at_r_s"], fig["repair_s"] + fig["repair_after_s"], abs_tol=0.002
        )
    assert doc["repair_s"] == doc["repair"][doc["repair_mode"]]["repair_s"]
    assert doc["meta"]["quick"] is True and doc["meta"]["replicas"] == R
