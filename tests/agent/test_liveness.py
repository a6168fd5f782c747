"""Presence is a hint (agent/device/liveness.py, docs/PROTOCOL.md 13.3): an ``offline`` presence,
which anyone on the broker can publish, never takes a peer that keeps proving itself out of
service; a peer that is really gone leaves once its silence confirms the hint."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from agent.config.devices import load_fleet
from agent.device.liveness import Liveness
from agent.errors import UsageError
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from tests.agent.runner_helpers import HOUR_MS, REPLICATING_FLEET, write_fleet
from tests.agent.test_integration_fleet import _until_sim
from tests.conftest import FigureRecorder

MIN_MS = 60_000

P, Q = "efaaaaaaaaaaaaaaaaaaaaaaaa", "efbbbbbbbbbbbbbbbbbbbbbbbb"
SILENCE = 5_000


def test_an_offline_hint_from_a_peer_that_keeps_talking_never_takes_it_out() -> None:
    live = Liveness([P, Q], SILENCE)
    assert live.online(P) and not live.online(P)  # enters once
    heard = {P: 0}
    live.offline(P, 1_000)  # a retained spoofed 'offline'
    assert live.doubted(P) and live.deadline(1_000, heard.get) == 1_000 + SILENCE
    for t in range(1_000, 60_000, 2_000):  # it keeps sending proven messages
        heard[P] = t
        assert live.due(t + 1_999, heard.get) == []
    assert live.in_service(P) and live.drops[P] == 0


def test_on_a_coarse_clock_the_silence_also_counts_own_rounds() -> None:
    """A simulated minute may pass in one step with one round: time alone is not silence."""
    live = Liveness([P], SILENCE, silence_rounds=4)
    live.online(P)
    heard: dict[str, int] = {}
    live.offline(P, 0)
    t = 0
    for rounds in range(4):  # a minute per round, each longer than the silence
        t += 60_000
        assert live.due(t, heard.get, rounds) == []
        assert live.deadline(t, heard.get) is None  # only rounds are missing: no busy wake
    heard[P] = t  # it spoke: the count starts again
    for rounds in range(4, 8):
        t += 60_000
        assert live.due(t, heard.get, rounds) == []
    assert live.due(t + 60_000, heard.get, 8) == [P]


def test_a_silent_peer_leaves_after_the_silence_and_a_proven_message_brings_it_back() -> None:
    live = Liveness([P, Q], SILENCE)
    live.online(P)
    heard: dict[str, int] = {P: 500}
    live.offline(P, 1_000)
    assert live.due(1_000 + SILENCE - 1, heard.get) == []
    assert live.due(1_000 + SILENCE, heard.get) == [P]
    assert not live.in_service(P) and live.drops[P] == 1 and live.watching
    # An old proof (before it left) does not bring it back; a fresh one does, still in doubt.
    assert not live.heard(P, heard[P], 7_000)
    assert live.heard(P, 7_000, 7_000) and live.in_service(P) and live.doubted(P)
    assert live.due(7_000 + SILENCE, heard.get) == [P]
    # Its presence saying online clears the doubt and brings it in.
    assert live.online(P) and not live.doubted(P)
    assert live.due(10**9, heard.get) == []


def test_offline_for_a_peer_out_of_service_changes_nothing_and_strangers_are_ignored() -> None:
    live = Liveness([P], SILENCE)
    live.offline(P, 0)
    assert not live.in_service(P) and not live.doubted(P) and live.deadline(0, {}.get) is None
    assert not live.heard(Q, 5, 5)  # not a peer
    assert live.heard(P, 5, 5) and live.doubted(P)  # proven traffic brings a member in
    with pytest.raises(UsageError, match="silence must be positive"):
        Liveness([P], 0)


PROBE = 3_000
LONG = 10**9  # a silence rule that never fires: the probes alone decide


def _prober(**kw: int) -> Liveness:
    live = Liveness([P, Q], LONG, probe_ms=PROBE, **kw)
    live.online(P)
    live.online(Q)
    return live


def _yes(peer: str) -> bool:
    return True


def test_a_doubted_peer_is_asked_three_times_and_leaves_when_the_last_is_late() -> None:
    live = _prober()
    heard: dict[str, int] = {}
    live.offline(P, 1_000)
    assert live.to_probe(1_000, heard.get, 0, _yes) == [P]  # at once
    assert live.to_probe(1_000 + PROBE - 1, heard.get, 0, _yes) == []
    assert live.deadline(1_001, heard.get) == 1_000 + PROBE
    assert live.to_probe(1_000 + PROBE, heard.get, 0, _yes) == [P]
    assert live.to_probe(1_000 + 2 * PROBE, heard.get, 0, _yes) == [P]
    assert live.to_probe(1_000 + 3 * PROBE, heard.get, 0, _yes) == []  # three asked: enough
    assert live.deadline(1_000 + 2 * PROBE, heard.get) == 1_000 + 3 * PROBE
    assert live.due(1_000 + 3 * PROBE - 1, heard.get, link=0) == []
    assert live.due(1_000 + 3 * PROBE, heard.get, link=0) == [P]
    assert live.probes_sent == 3 and live.drops[P] == 1 and live.in_service(Q)


def test_a_peer_that_answers_stays_and_is_asked_ever_less_often() -> None:
    """A retained spoofed 'offline' that stands for an hour costs a handful of probes."""
    live = Liveness([P], 60_000, probe_ms=PROBE)
    live.online(P)
    heard: dict[str, int] = {}
    live.offline(P, 0)
    sent = []
    for t in range(0, 3_600_000, 500):
        if live.to_probe(t, heard.get, 0, _yes):
            sent.append(t)
            heard[P] = t + 100  # it answers within a round trip
        assert live.due(t, heard.get, link=0) == []
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    # doubling, up to the silence (plus the answer time, on a grid of 0.5 s)
    assert [g // 1_000 for g in gaps[:5]] == [6, 12, 24, 48, 60]
    assert {g // 1_000 for g in gaps[4:]} == {60} and len(sent) <= 64 and live.in_service(P)


def test_probes_over_a_broken_own_link_prove_nothing() -> None:
    live = _prober()
    heard: dict[str, int] = {}
    live.offline(P, 0)
    assert live.to_probe(0, heard.get, None, _yes) == []  # own link down: nothing asked
    assert live.to_probe(0, heard.get, 4, _yes) == [P]
    assert live.to_probe(PROBE, heard.get, 4, _yes) == [P]
    assert live.to_probe(2 * PROBE, heard.get, 4, _yes) == [P]
    # The watcher reconnected (its link's count moved): the three probes count for nothing.
    assert live.due(3 * PROBE, heard.get, link=5) == []
    assert live.due(3 * PROBE, heard.get, link=None) == []
    assert live.to_probe(3 * PROBE, heard.get, 5, _yes) == [P]  # asked afresh
    for k in (4, 5):
        assert live.to_probe(k * PROBE, heard.get, 5, _yes) == [P]
    assert live.due(6 * PROBE, heard.get, link=5) == [P]


def test_a_peer_that_cannot_be_probed_keeps_the_silence_rule() -> None:
    live = Liveness([P], SILENCE, probe_ms=PROBE)
    live.online(P)
    heard: dict[str, int] = {}
    live.offline(P, 0)
    for t in range(0, SILENCE, 500):
        assert live.to_probe(t, heard.get, 0, lambda p: False) == []
        assert live.due(t, heard.get, link=0) == []
    assert live.due(SILENCE, heard.get, link=0) == [P] and live.probes_sent == 0
    with pytest.raises(UsageError, match="probes must be positive"):
        Liveness([P], SILENCE, probe_ms=0)


def test_a_peer_whose_presence_is_not_yet_known_is_not_probed_until_it_says_offline() -> None:
    """At a start, proven traffic often arrives before presence: such a peer is in doubt for the
    silence rule alone (probes then, under the start's load, were answered too late and took
    thousands of live peers out of service in a street of 300)."""
    live = Liveness([P], LONG, probe_ms=PROBE)
    heard: dict[str, int] = {P: 0}
    assert live.heard(P, 0, 0) and live.doubted(P)
    for t in range(0, 10 * PROBE, 500):
        assert live.to_probe(t, heard.get, 0, _yes) == []
        assert live.due(t, heard.get, link=0) == []
    live.offline(P, 10 * PROBE)  # now it says offline: asked at once
    assert live.to_probe(10 * PROBE, heard.get, 0, _yes) == [P]
    assert live.online(P) is False and not live.doubted(P)


def test_a_peer_whose_presence_is_not_followed_enters_service_without_a_doubt() -> None:
    live = Liveness([P, Q], SILENCE, probe_ms=PROBE)
    live.watch([P])  # its mesh: Q's presence never comes
    assert live.heard(Q, 5, 5) and live.in_service(Q) and not live.doubted(Q)
    assert live.due(10**9, {}.get, 10**6, link=0) == [] and live.in_service(Q)
    assert live.heard(P, 5, 5) and live.doubted(P)  # followed, presence not yet seen
    live.watch([])  # no longer followed: the doubt that nothing could clear goes
    assert not live.doubted(P) and live.deadline(5, {}.get) is None


# --------------------------------------------------------------------------- in a running fleet

SPOOF_AT = HOUR_MS
STOP_AT = 3 * HOUR_MS
END = 4 * HOUR_MS
SUBJECT = "fridge-2"


async def _spoofed(runner: FleetRunner) -> tuple[RunResult, dict[str, int], dict[str, bool]]:
    """Spoof a retained 'offline' for SUBJECT at 1 h (it stays connected), cut its link at 3 h;
    what its peers did about it in between, and at the end."""
    run = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    clock = runner.data_clock
    assert clock is not None and runner.network is not None
    start = clock.now_ms()
    assert await _until_sim(clock, start + SPOOF_AT, run)
    subject = runner.agents[SUBJECT]
    peers = [a for a in runner.agents.values() if a is not subject]
    assert all(a.liveness.in_service(subject.device_id) for a in peers)
    runner.network.publish_presence(subject.device_id, False)
    out: dict[str, int] = {}
    t = start + SPOOF_AT
    while t < start + STOP_AT and await _until_sim(clock, t + MIN_MS, run):
        t += MIN_MS
        for a in peers:  # in service for both cores, every simulated minute
            rep = a.replicator
            up = a.node.peer_stats(subject.device_id)
            view = None if rep is None else rep.node.owner.views.get(subject.device_id)
            if up is None or not up.up or (view is not None and not view.up):
                out[a.name] = out.get(a.name, 0) + 1
    runner.network.disconnect(subject.device_id)
    assert await _until_sim(clock, start + END - MIN_MS, run)
    gone = {a.name: not a.liveness.in_service(subject.device_id) for a in peers}
    return await run, out, gone


def test_a_spoofed_offline_presence_keeps_a_talking_peer_in_service_and_a_cut_one_leaves(
    tmp_path: Path, figure: FigureRecorder
) -> None:
    """Regression (issue 13): a retained 'offline' published by anyone took a live device out
    of service at every peer at once; in replication its holders counted it down and re-placed
    its replicas after `repair_after`. Now only its silence does."""
    cfg = load_fleet(write_fleet(tmp_path, REPLICATING_FLEET))
    runner = FleetRunner(
        cfg,
        RunOptions(data=tmp_path / "data", for_ms=END, simulated_network=True, view=False),
    )
    result, out_of_service, gone = asyncio.run(_spoofed(runner))
    subject = result.devices[SUBJECT].device_id
    drops = {n: a.liveness.drops[subject] for n, a in result.devices.items() if n != SUBJECT}
    text = (
        f"peer-minutes out of service = {sum(out_of_service.values())} over "
        f"{(STOP_AT - SPOOF_AT) // MIN_MS} simulated min of a spoofed retained 'offline' for "
        f"{SUBJECT} at {len(drops)} peers; after its link was cut, {sum(gone.values())} of "
        f"{len(gone)} took it out"
    )
    figure("spoofed retained offline presence (simulated fleet)", text, seed=cfg.seed)
    assert out_of_service == {}, text
    assert all(gone.values()) and all(d == 1 for d in drops.values()), f"{text}: {drops}"
