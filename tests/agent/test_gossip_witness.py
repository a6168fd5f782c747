"""Witnessing over gossip (agent/gossip/witness.py): domain peers cosign each other's C2SP
checkpoints, never two inconsistent ones, even across a restart.

Simulated nodes (agent/gossip/sim.py) with real keys and real signed chains; the cosigned notes
are checked with ledger's C2SP verifier (``verify_cosigned``), as a trace checks them.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from agent.gossip import wire
from agent.gossip.actions import CheckpointCosigned, Send, StoreWitnessState
from agent.gossip.inputs import MessageReceived
from agent.gossip.sim import SimNet, SimPeer
from agent.gossip.tuning import GossipConfig
from agent.gossip.witness import WitnessConfig
from agent.protocol import auth
from ledger.checkpoint import (
    Checkpoint,
    device_origin,
    device_signer,
    device_verifier,
    fleet_label,
    parse_checkpoint,
)
from ledger.cosignature import CosignatureVerifier, verify_cosigned, witness_name
from ledger.errors import DecodeError
from ledger.merkle import consistency_proof, root_from_leaf_hashes
from ledger.note import parse_note, sign_note
from ledger.witness import AddCheckpoint

FAST = GossipConfig(anti_entropy_ms=1_000, jitter_ms=200)
OFFER = WitnessConfig(interval_ms=5_000, count=2)


def fleet(seed: int, n: int = 3, offer: WitnessConfig | None = OFFER) -> tuple[SimNet, list[str]]:
    net = SimNet(seed)
    ids = [net.add_device(config=FAST, witness=offer).device_id for _ in range(n)]
    net.start(preload_certificates=True)
    return net, ids


def label(net: SimNet) -> str:
    return fleet_label(net.authority.key.public)


def witnesses_of(net: SimNet, log: str) -> list[CosignatureVerifier]:
    return [
        CosignatureVerifier(witness_name(label(net), p.device_id), p.device.key.public)
        for p in net.peers.values()
        if p.device_id != log
    ]


def latest_note(peer: SimPeer) -> tuple[Checkpoint, bytes]:
    _key, note = max(peer.store.checkpoints.items(), key=lambda kv: kv[0][1])
    return parse_checkpoint(parse_note(note).text), note


def test_domain_peers_cosign_each_checkpoint_and_follow_the_log_forward() -> None:
    net, ids = fleet(1)
    for _ in range(3):
        for i in ids:
            net.seal(i)
        net.run_for(500)
    net.run_for(12_000)
    sizes = {}
    for log in ids:
        peer = net.peers[log]
        cp, note = latest_note(peer)
        assert cp.size == 3
        origin = device_origin(label(net), log, 0)
        verified = verify_cosigned(
            note, device_verifier(origin, peer.device.key.public), witnesses_of(net, log), 2
        )
        assert {n for n, _ in verified.cosigners} == {
            witness_name(label(net), p) for p in ids if p != log
        }
        sizes[log] = cp.size
    # More blocks: the next checkpoints are cosigned from the old size, by consistency proofs.
    for _ in range(4):
        for i in ids:
            net.seal(i)
        net.run_for(300)
    net.run_for(12_000)
    for log in ids:
        cp, note = latest_note(net.peers[log])
        assert cp.size == 7
        origin = cp.origin
        verify_cosigned(
            note,
            device_verifier(origin, net.peers[log].device.key.public),
            witnesses_of(net, log),
            2,
        )
        for w in ids:
            if w != log:
                assert net.peers[w].store.witness_state[origin][0] == 7
    assert all(p.store.witness_rewinds == 0 for p in net.peers.values())
    cosigned = [
        e for p in net.peers.values() for e in p.events if isinstance(e, CheckpointCosigned)
    ]
    assert len(cosigned) == 2 * 2 * len(ids)  # two rounds, two witnesses each


def test_no_offer_without_a_witness_config_and_no_new_round_while_the_head_stands() -> None:
    net, ids = fleet(2, offer=None)
    net.seal(ids[0])
    net.run_for(30_000)
    assert all(not p.store.checkpoints for p in net.peers.values())
    net, ids = fleet(3)
    net.seal(ids[0])
    net.run_for(20_000)
    node = net.peers[ids[0]].node
    assert node is not None
    assert node.counters["witness_requests_sent"] == 2  # one round: the head did not move


# --- the witness's rule, message by message -------------------------------------------------


def request(
    net: SimNet, log: SimPeer, cp: Checkpoint, old: int, proof: list[bytes], rid: int = 7
) -> bytes:
    note = sign_note(cp.text(), device_signer(cp.origin, log.device.key))
    body = AddCheckpoint(old, tuple(proof), note).encode()
    return auth.seal(wire.encode(wire.WitnessRequest(log.device_id, rid, body)), log.device)


def answer(actions: list[object], log: str) -> wire.Cosigned:
    payloads = [a.payload for a in actions if isinstance(a, (Send, StoreWitnessState))]
    assert len(payloads) == 1, actions
    msg = wire.decode(auth.body_of(payloads[0]))
    assert isinstance(msg, wire.Cosigned)
    return msg


def chain_hashes(peer: SimPeer) -> list[bytes]:
    from ledger.block import decode_header

    return [decode_header(w).hash for w in peer.device.header_wires()]


def test_a_witness_never_cosigns_a_fork_of_what_it_cosigned_even_after_a_restart() -> None:
    net, ids = fleet(4, offer=None)
    log, w = net.peers[ids[0]], net.peers[ids[1]]
    for _ in range(4):
        net.seal(log.device_id)
    net.run_for(2_000)
    hashes = chain_hashes(log)
    origin = device_origin(label(net), log.device_id, 0)
    good2 = Checkpoint(origin, 2, root_from_leaf_hashes(hashes[:2]))
    acts = net.feed(w.device_id, MessageReceived(log.device_id, request(net, log, good2, 0, [])))
    ok = answer(acts, log.device_id)
    assert ok.status == 200 and w.store.witness_state[origin] == (2, good2.root_hash)
    witness = CosignatureVerifier(witness_name(label(net), w.device_id), w.device.key.public)
    note = parse_note(sign_note(good2.text(), device_signer(origin, log.device.key)).encode() + b"")
    line = parse_note(note.encode() + ok.body).signatures[-1]
    witness.verify(good2.text().encode(), line.data)

    # Restarted: the state comes back from its store, so a fork at size 3 is refused...
    net.take_offline(w.device_id)
    net.bring_online(w.device_id)
    net.run_for(3_000)  # credentials learned again from the peers
    fork = Checkpoint(origin, 3, hashlib.sha256(b"another history").digest())
    proof = consistency_proof(hashes, 2, 3)
    acts = net.feed(w.device_id, MessageReceived(log.device_id, request(net, log, fork, 2, proof)))
    assert answer(acts, log.device_id).status == 422
    acts = net.feed(w.device_id, MessageReceived(log.device_id, request(net, log, fork, 0, [], 8)))
    conflict = answer(acts, log.device_id)
    assert (conflict.status, conflict.body) == (409, b"2")
    assert w.store.witness_state[origin] == (2, good2.root_hash)
    # ...while the true history goes on from there.
    good4 = Checkpoint(origin, 4, root_from_leaf_hashes(hashes))
    acts = net.feed(
        w.device_id,
        MessageReceived(
            log.device_id, request(net, log, good4, 2, consistency_proof(hashes, 2, 4), 9)
        ),
    )
    assert answer(acts, log.device_id).status == 200
    assert w.store.witness_state[origin][0] == 4
    assert w.store.witness_rewinds == 0


def test_only_a_peers_own_log_is_witnessed_and_bad_signatures_are_charged() -> None:
    net, ids = fleet(5, offer=None)
    log, w, other = (net.peers[i] for i in ids)
    net.seal(log.device_id)
    net.seal(other.device_id)
    net.run_for(2_000)
    h = chain_hashes(other)
    theirs = Checkpoint(device_origin(label(net), other.device_id, 0), 1, root_from_leaf_hashes(h))
    acts = net.feed(w.device_id, MessageReceived(log.device_id, request(net, log, theirs, 0, [])))
    assert answer(acts, log.device_id).status == 404
    node = w.node
    assert node is not None
    stats = node.peer_stats(log.device_id)
    assert stats is not None and stats.invalid == 0
    # Signed by the wrong key under the right origin: 403, and the asker is charged.
    mine = Checkpoint(
        device_origin(label(net), log.device_id, 0), 1, root_from_leaf_hashes(chain_hashes(log))
    )
    forged = sign_note(mine.text(), device_signer(mine.origin, other.device.key))
    body = AddCheckpoint(0, (), forged).encode()
    payload = auth.seal(wire.encode(wire.WitnessRequest(log.device_id, 3, body)), log.device)
    acts = net.feed(w.device_id, MessageReceived(log.device_id, payload))
    assert answer(acts, log.device_id).status == 403
    stats = node.peer_stats(log.device_id)
    assert stats is not None and stats.invalid == 1
    assert mine.origin not in w.store.witness_state


def test_answers_draw_on_the_askers_budget() -> None:
    net = SimNet(6)
    tight = dataclasses.replace(FAST, answer_budget_bytes=150)
    ids = [net.add_device(config=tight).device_id for _ in range(2)]
    net.start(preload_certificates=True)
    log, w = net.peers[ids[0]], net.peers[ids[1]]
    net.seal(log.device_id)
    net.run_for(100)
    cp = Checkpoint(
        device_origin(label(net), log.device_id, 0), 1, root_from_leaf_hashes(chain_hashes(log))
    )
    acts = net.feed(w.device_id, MessageReceived(log.device_id, request(net, log, cp, 0, [])))
    assert not [a for a in acts if isinstance(a, (Send, StoreWitnessState))]
    assert w.node is not None and w.node.counters["answers_over_budget"] == 1
    assert not w.store.witness_state  # nothing cosigned, nothing kept


def test_wire_round_trip_and_limits() -> None:
    sender = "ef" + "a" * 24
    for msg in (
        wire.WitnessRequest(sender, 1, b"old 0\n\nx"),
        wire.Cosigned(sender, 2, 200, b"\xe2\x80\x94 w AAAA\n"),
        wire.Cosigned(sender, 3, 409, b"12"),
    ):
        assert wire.decode(wire.encode(msg)) == msg
    big = wire.encode(wire.WitnessRequest(sender, 1, b"x" * wire.WITNESS_REQUEST_MAX))
    assert len(big) <= wire.WITNESS_MAX_BYTES
    with pytest.raises(DecodeError, match="status"):
        wire.decode(wire.encode(wire.Cosigned(sender, 3, 200, b"")).replace(b"\xcc\xc8", b"\x63"))


def test_the_limits_table_of_section_12_1_3_is_the_codes() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    for mtype in (wire.WITNESS, wire.COSIGNED):
        name = wire.NAMES[mtype]
        row = next(line for line in doc.splitlines() if line.startswith(f"| {name} | "))
        cells = [c.strip().replace(",", "") for c in row.strip("|").split("|")]
        lim = wire._LIMITS[mtype]
        assert [int(c) for c in cells[1:5]] == [
            lim.max_bytes,
            lim.max_array,
            lim.max_str,
            lim.max_bin,
        ], name
        assert cells[5] == ", ".join(map(str, lim.shape)), name


def test_a_restarted_log_learns_its_witnesses_sizes_from_their_409s() -> None:
    """The log keeps no witness state: after a restart it offers from size 0, each witness
    answers 409 with the size it holds, and the next round is cosigned from there."""
    net, ids = fleet(7)
    log = ids[0]
    for _ in range(3):
        net.seal(log)
    net.run_for(12_000)
    assert latest_note(net.peers[log])[0].size == 3
    net.take_offline(log)
    net.bring_online(log)
    for _ in range(2):
        net.seal(log)
    net.run_for(30_000)
    cp, note = latest_note(net.peers[log])
    assert cp.size == 5
    key = net.peers[log].device.key.public
    verify_cosigned(note, device_verifier(cp.origin, key), witnesses_of(net, log), 2)
    node = net.peers[log].node
    assert node is not None and node.counters["witness_conflicts"] == 2
    for w in ids[1:]:
        assert net.peers[w].store.witness_state[cp.origin][0] == 5
