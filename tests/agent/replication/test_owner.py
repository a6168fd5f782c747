"""The owner side, rule by rule: placement, receipts, refusals, audits, scores, gone holders."""

from __future__ import annotations

import random

from agent.replication import wire
from agent.replication.actions import (
    Action,
    AuditFailed,
    BlockReplicated,
    ForgetReceipt,
    HolderExcluded,
    HolderReadmitted,
    LoadOwnBlock,
    StoreReceipt,
)
from agent.replication.inputs import (
    OwnBlockInfo,
    OwnBlockLoaded,
    OwnBlockSealed,
    OwnChainLoaded,
    PeerDown,
    PeerUp,
    ReceiptKnown,
)
from agent.replication.node import ReplicationNode
from agent.replication.placement import draw
from ledger.block import Block
from ledger.receipt import Receipt, sign_receipt
from tests.agent.replication.helpers import (
    SITES,
    T0,
    World,
    config,
    msg_from,
    of_type,
    sent_of,
    world,
)

QUOTA = 10_000


def owner(w: World, **changes: object) -> ReplicationNode:
    """Device 0 as an owner whose four peers are up and advertised room."""
    node = w.node(config(**changes))
    for i in (1, 2, 3, 4):
        node.handle(msg_from(w.id(i), wire.Space(w.id(i), QUOTA, QUOTA)), T0)
    return node


def stores(out: list[Action]) -> dict[str, wire.Store]:
    return {p: m for p, m in sent_of(out, wire.Store) if isinstance(m, wire.Store)}


def receipt_for(w: World, holder: int, block: Block, *, key_of: int | None = None) -> bytes:
    r = Receipt(
        w.id(holder),
        w.id(0),
        0,
        block.header.header.height,
        block.header.hash,
        len(block.encode()),
        T0,
    )
    return sign_receipt(r, w.devices[holder if key_of is None else key_of].key).wire


def index(w: World, device_id: str) -> int:
    return next(i for i, d in enumerate(w.devices) if d.device_id == device_id)


def place(w: World, node: ReplicationNode, height: int, now: int = T0) -> dict[str, wire.Store]:
    """Seal-time placement of own block ``height``, every holder answering with a receipt."""
    block = w.devices[0].blocks[height]
    out = node.handle(OwnBlockSealed(block), now)
    placed = stores(out)
    for peer, msg in placed.items():
        rec = receipt_for(w, index(w, peer), block)
        node.handle(msg_from(peer, wire.ReceiptMsg(peer, msg.request_id, rec)), now)
    return placed


def test_a_sealed_block_goes_to_r_holders_on_distinct_sites() -> None:
    w = world()
    node = owner(w)
    block = w.devices[0].blocks[0]
    out = node.handle(OwnBlockSealed(block), T0)
    placed = stores(out)
    assert len(placed) == 3
    sites = {SITES[index(w, p)] for p in placed}
    assert sites == {"home", "shop", "farm"}  # device 0 is at home too: only one more there
    for msg in placed.values():
        assert msg.block == block.encode()
        assert msg.prev_header is None


def test_nothing_is_placed_before_holders_advertise_room() -> None:
    w = world()
    node = w.node(config())
    out = node.handle(OwnBlockSealed(w.devices[0].blocks[0]), T0)
    assert not stores(out)
    out = node.handle(msg_from(w.id(2), wire.Space(w.id(2), QUOTA, QUOTA)), T0)
    assert list(stores(out)) == [w.id(2)]  # the stalled block is tried as soon as room shows


def test_receipts_are_verified_stored_and_complete_the_block() -> None:
    w = world()
    node = owner(w)
    block = w.devices[0].blocks[0]
    placed = stores(node.handle(OwnBlockSealed(block), T0))
    acts: list[Action] = []
    for peer, msg in sorted(placed.items()):
        rec = receipt_for(w, index(w, peer), block)
        acts += node.handle(msg_from(peer, wire.ReceiptMsg(peer, msg.request_id, rec)), T0)
    assert len(of_type(acts, StoreReceipt)) == 3
    assert of_type(acts, BlockReplicated) == [BlockReplicated(0, 3)]
    assert node.healthy_holders(0) == sorted(placed)


def test_a_receipt_with_a_bad_signature_or_wrong_block_costs_the_holder() -> None:
    w = world()
    node = owner(w)
    block = w.devices[0].blocks[0]
    placed = stores(node.handle(OwnBlockSealed(block), T0))
    peer, msg = sorted(placed.items())[0]
    i = index(w, peer)
    forged = receipt_for(w, i, block, key_of=(i % 4) + 1)  # someone else's key
    out = node.handle(msg_from(peer, wire.ReceiptMsg(peer, msg.request_id, forged)), T0)
    assert not of_type(out, StoreReceipt)
    assert node.score(peer) == 100 - node.config.penalty_invalid
    other = receipt_for(w, i, w.devices[0].blocks[1])  # a block the owner has not sealed yet
    node.handle(msg_from(peer, wire.ReceiptMsg(peer, 99, other)), T0)
    assert node.counters["receipt_untracked"] == 1
    assert node.holders(0) == {}


def test_a_refusal_sends_the_block_elsewhere() -> None:
    w = world()
    node = owner(w)
    placed = stores(node.handle(OwnBlockSealed(w.devices[0].blocks[0]), T0))
    peer, msg = sorted(placed.items())[0]
    out = node.handle(msg_from(peer, wire.Refuse(peer, msg.request_id, wire.FULL, 0)), T0)
    again = stores(out)
    assert len(again) == 1
    assert peer not in again and not set(again) & set(placed)
    assert node.score(peer) == 100 - node.config.penalty_refused  # it advertised room


def test_an_unanswered_store_times_out_and_goes_elsewhere() -> None:
    w = world()
    node = owner(w)
    placed = stores(node.handle(OwnBlockSealed(w.devices[0].blocks[0]), T0))
    t = T0 + node.config.store_timeout_ms
    out = node.handle_timer(t)
    assert node.counters["stores_timed_out"] == 3
    assert all(node.score(p) == 100 - node.config.penalty_timeout for p in placed)
    # the only candidate left that has not failed this block is the one not chosen first
    assert len(stores(out)) == 1 and not set(stores(out)) & set(placed)


def audit_round(node: ReplicationNode, t: int) -> dict[str, wire.Challenge]:
    """Run the timer up to ``t``, stopping at the first audit round (its challenges)."""
    while node.next_deadline() <= t:
        out = node.handle_timer(node.next_deadline())
        challenges = {
            p: m for p, m in sent_of(out, wire.Challenge) if isinstance(m, wire.Challenge)
        }
        if challenges:
            return challenges
    return {}


def test_audits_pass_fail_and_time_out_with_their_scores() -> None:
    w = world()
    node = owner(w, audit_interval_ms=60_000, repair_delay_ms=10**9)
    placed = place(w, node, 0)
    body = w.devices[0].blocks[0].encode()
    challenges = audit_round(node, T0 + 60_000)
    assert set(challenges) == set(placed)  # every holder audited once per round
    honest, liar, silent = sorted(challenges)
    for peer in (honest, liar, silent):
        assert challenges[peer].height == 0
    sent = T0 + 60_000
    c = challenges[honest]
    node.handle(
        msg_from(honest, wire.Proof(honest, c.challenge_id, wire.audit_answer(c.nonce, body))),
        sent + 5,
    )
    c = challenges[liar]
    out = node.handle(msg_from(liar, wire.Proof(liar, c.challenge_id, bytes(32))), sent + 6)
    assert of_type(out, AuditFailed) == [AuditFailed(liar, 0, "wrong", 50)]
    assert ForgetReceipt(0, liar) in out
    assert len(stores(out)) == 1  # re-replicated at once
    assert node.score(honest) == 100
    t = T0 + 60_000 + node.config.audit_timeout_ms + 1
    node.handle_timer(t)
    # One silence costs points but not the copy: it is asked again one spacing later.
    assert node.score(silent) == 90 and silent in node.holders(0)
    assert node.counters["audits_silent"] == 1
    # Silent again and again, each time a spacing apart: the third voids its receipt.
    for _ in range(2):
        t += node.config.silence_spacing_ms
        out = node.handle_timer(t)
        assert [p for p, _ in sent_of(out, wire.Challenge)].count(silent) == 1
        node.network_heard(t + 1)  # the rest of the domain is heard meanwhile: the link works
        t += node.audit_timeout_of(silent) + 1
        out = node.handle_timer(t)
    assert [a.holder_id for a in of_type(out, AuditFailed)] == [silent]
    assert node.counters["audits_passed"] == 1
    assert liar not in node.holders(0) and silent not in node.holders(0)


def test_a_holder_that_admits_a_missing_body_loses_less() -> None:
    w = world()
    node = owner(w, repair_delay_ms=10**9)
    place(w, node, 0)
    challenges = audit_round(node, T0 + node.config.audit_interval_ms)
    peer, c = sorted(challenges.items())[0]
    out = node.handle(msg_from(peer, wire.Proof(peer, c.challenge_id, b"")), T0)
    assert of_type(out, AuditFailed) == [AuditFailed(peer, 0, "missing", 75)]


def answer_all(
    w: World, node: ReplicationNode, out: list[Action], liar: str, t: int
) -> list[Action]:
    """Play every holder: receipts for STOREs, proofs for CHALLENGEs (the liar's are wrong)."""
    acts: list[Action] = []
    for peer, m in sent_of(out, object):
        if isinstance(m, wire.Store):
            block = next(b for b in w.devices[0].blocks if b.encode() == m.block)
            rec = receipt_for(w, index(w, peer), block)
            reply: wire.Message = wire.ReceiptMsg(peer, m.request_id, rec)
        elif isinstance(m, wire.Challenge):
            body = w.devices[0].blocks[m.height].encode()
            good = wire.audit_answer(m.nonce, body)
            reply = wire.Proof(peer, m.challenge_id, bytes(32) if peer == liar else good)
        else:
            continue
        acts += node.handle(msg_from(peer, reply), t)
    return acts


def test_a_liar_is_excluded_its_blocks_move_and_it_is_readmitted_later() -> None:
    w = world()
    node = owner(w, repair_delay_ms=10**9, recover_ms=60_000)
    for h in range(5):
        place(w, node, h)
    liar = sorted(node.holders(0))[0]
    seen: list[Action] = []
    while not node.excluded(liar):
        t = node.next_deadline()
        out = node.handle_timer(t)
        while out:
            seen += out
            out = answer_all(w, node, out, liar, t)
        assert t < T0 + 10 * node.config.audit_interval_ms
    failures = [a for a in seen if isinstance(a, AuditFailed)]
    assert {a.holder_id for a in failures} == {liar}
    assert [a.outcome for a in failures] == ["wrong", "wrong"]
    [excluded] = [a for a in seen if isinstance(a, HolderExcluded)]
    assert excluded.holder_id == liar and excluded.score < node.config.score_min
    for h in range(5):
        assert liar not in node.healthy_holders(h)
        assert len(node.healthy_holders(h)) == 3  # every copy it held was placed again
    # 50 minutes without offence: back at the threshold
    t_back = node.owner.views[liar].scored_ms + 50 * 60_000
    seen = []
    while node.next_deadline() <= t_back:
        t = node.next_deadline()
        out = node.handle_timer(t)
        while out:
            seen += out
            out = answer_all(w, node, out, "nobody", t)
    assert HolderReadmitted(liar, 50) in seen
    assert not node.excluded(liar)


def test_a_holder_gone_longer_than_the_delay_is_replaced() -> None:
    w = world()
    node = owner(w, repair_delay_ms=300_000, audit_interval_ms=10**8)
    placed = place(w, node, 0)
    gone = sorted(placed)[0]
    node.handle(PeerDown(gone), T0 + 1000)
    out = node.handle_timer(T0 + 1000 + 299_999)
    assert not stores(out)  # a short absence causes no churn
    out = node.handle_timer(T0 + 1000 + 300_000)
    new = stores(out)
    assert len(new) == 1 and gone not in new
    [(peer, msg)] = new.items()
    rec = receipt_for(w, index(w, peer), w.devices[0].blocks[0])
    node.handle(msg_from(peer, wire.ReceiptMsg(peer, msg.request_id, rec)), T0 + 400_000)
    assert len(node.healthy_holders(0)) == 3
    # it comes back: four healthy copies, the lowest draw is released
    four = sorted(node.holders(0), key=lambda x: -draw(w.devices[0].blocks[0].header.hash, x))
    assert len(four) == 4
    out = node.handle(PeerUp(gone), T0 + 500_000)
    releases = sent_of(out, wire.Release)
    assert [p for p, _ in releases] == [four[-1]]
    assert len(node.healthy_holders(0)) == 3
    assert ForgetReceipt(0, four[-1]) in out


def test_boot_from_the_store_needs_no_new_placement() -> None:
    w = world()
    first = owner(w)
    place(w, first, 0)
    receipts = first.holders(0)
    node = owner(w)
    block = w.devices[0].blocks[0]
    info = OwnBlockInfo(0, 0, block.header.hash, len(block.encode()))
    node.handle(OwnChainLoaded((info,)), T0)  # this alone would ask for a load to place it...
    acts: list[Action] = []
    for wire_ in receipts.values():
        acts += node.handle(ReceiptKnown(wire_), T0)
    assert node.healthy_holders(0) == sorted(receipts)
    assert not stores(acts)


def test_blocks_from_the_store_are_loaded_then_sent_with_their_link() -> None:
    w = world()
    node = owner(w)
    blocks = w.devices[0].blocks
    infos = tuple(
        OwnBlockInfo(b.header.header.height, 0, b.header.hash, len(b.encode())) for b in blocks[:3]
    )
    out = node.handle(OwnChainLoaded(infos), T0)
    assert of_type(out, LoadOwnBlock) == [LoadOwnBlock(0), LoadOwnBlock(1), LoadOwnBlock(2)]
    out = node.handle(OwnBlockLoaded(2, blocks[2].encode(), blocks[1].header.wire), T0)
    sent2 = stores(out)
    assert len(sent2) == 3
    assert all(m.prev_header == blocks[1].header.wire for m in sent2.values())
    # a copy that is not the block the owner sealed is never sent
    out = node.handle(OwnBlockLoaded(1, blocks[0].encode(), None), T0)
    assert not stores(out)
    assert node.counters["own_block_corrupt"] == 1


def test_a_block_sealed_with_its_previous_header_is_placed_without_a_load() -> None:
    """The first seal after a restart (the core never saw height 1): with the header it chains
    to, the block goes out at once; without it, the core must load it back from the store."""
    w = world()
    block, prev = w.devices[0].blocks[2], w.devices[0].blocks[1].header.wire
    node = owner(w)
    out = node.handle(OwnBlockSealed(block, prev), T0)
    assert not of_type(out, LoadOwnBlock)
    placed = stores(out)
    assert len(placed) == 3
    assert all(m.block == block.encode() and m.prev_header == prev for m in placed.values())
    out = owner(w).handle(OwnBlockSealed(block), T0)
    assert of_type(out, LoadOwnBlock) == [LoadOwnBlock(2)]
    assert not stores(out)


def test_the_seeded_rng_reproduces_audit_choices() -> None:
    def run(seed: int) -> list[tuple[str, int, bytes]]:
        w = world()
        node = owner(w, rng=random.Random(seed))
        for h in range(4):
            place(w, node, h)
        out = audit_round(node, T0 + 2 * node.config.audit_interval_ms)
        return sorted((p, c.height, c.nonce) for p, c in out.items())

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_after_a_failed_audit_every_other_block_of_that_holder_is_audited_promptly() -> None:
    w = world()
    node = owner(w, repair_delay_ms=10**9, audit_interval_ms=3_600_000)
    placed = {h: set(place(w, node, h)) for h in range(3)}
    holder = next(p for p in sorted(placed[0]) if sum(p in s for s in placed.values()) >= 2)
    mine = {h for h, s in placed.items() if holder in s}
    t = T0 + node.config.audit_interval_ms
    c = audit_round(node, t)[holder]
    out = node.handle(msg_from(holder, wire.Proof(holder, c.challenge_id, b"")), t)
    assert of_type(out, AuditFailed) == [AuditFailed(holder, c.height, "missing", 75)]
    audited = {c.height}
    # Long before the next audit round, the holder's other blocks are challenged one by one.
    for k in range(1, 2 * len(mine) + 1):
        now = t + k * node.config.retry_ms
        for peer, m in sent_of(node.handle_timer(now), wire.Challenge):
            if peer == holder:
                assert isinstance(m, wire.Challenge)
                audited.add(m.height)
                body = w.devices[0].blocks[m.height].encode()
                proof = wire.Proof(holder, m.challenge_id, wire.audit_answer(m.nonce, body))
                node.handle(msg_from(holder, proof), now)
    assert audited == mine
    assert not node.owner.views[holder].suspect
    # (the other holders, never answering their round's challenge, timed out and are audited
    # block by block the same way)
    assert node.counters["audits_of_suspects"] >= len(mine) - 1


def test_audit_rounds_with_fewer_slots_than_holders_reach_every_holder_in_turn() -> None:
    w = world()
    node = owner(w, repair_delay_ms=10**9, max_audits=2)
    for h in range(4):
        place(w, node, h)
    holders = {p for h in range(4) for p in node.holders(h)}
    assert len(holders) == 4
    audited: list[set[str]] = []
    t = T0
    for _ in range(2):
        t += node.config.audit_interval_ms
        challenges = audit_round(node, t)
        assert len(challenges) == 2  # the slots are full
        audited.append(set(challenges))
        for peer, c in challenges.items():
            body = w.devices[0].blocks[c.height].encode()
            proof = wire.Proof(peer, c.challenge_id, wire.audit_answer(c.nonce, body))
            node.handle(msg_from(peer, proof), t)
    assert audited[0].isdisjoint(audited[1]) and audited[0] | audited[1] == holders


def test_timeouts_while_the_owner_hears_nothing_cost_nobody_and_are_asked_again() -> None:
    """The owner's own link (or its broker) is down: nothing at all arrives after its challenges
    and STOREs leave. Their timeouts say nothing of the holders: no score is lost, no audit
    fails, nothing is excluded, and the same holders are challenged again once the link works."""
    w = world()
    node = owner(w, audit_interval_ms=60_000, repair_delay_ms=10**9)
    placed = place(w, node, 0)
    body = w.devices[0].blocks[0].encode()
    challenges = audit_round(node, T0 + 60_000)
    assert set(challenges) == set(placed)
    t = T0 + 60_000
    for _ in range(5):  # five timeouts in a row: far past silent_failures
        t += max(node.audit_timeout_of(p) for p in placed) + 1
        out = node.handle_timer(t)
        assert of_type(out, AuditFailed) == []
        t += node.config.silence_spacing_ms
        out = node.handle_timer(t)
        challenges = {
            p: m for p, m in sent_of(out, wire.Challenge) if isinstance(m, wire.Challenge)
        } or challenges
    assert all(node.score(p) == 100 for p in placed), [node.score(p) for p in placed]
    assert all(p in node.holders(0) for p in placed)
    assert node.counters["timeouts_while_deaf"] >= 3 and node.counters["audits_silent"] == 0
    # The link is back: the holders answer the challenges they are sent now, and pass.
    challenges = {}
    while not challenges:
        t = node.next_deadline()
        out = node.handle_timer(t)
        challenges = {
            p: m for p, m in sent_of(out, wire.Challenge) if isinstance(m, wire.Challenge)
        }
    for p, c in challenges.items():
        answer = wire.Proof(p, c.challenge_id, wire.audit_answer(c.nonce, body))
        node.handle(msg_from(p, answer), t + 5)
    assert node.counters["audits_passed"] == len(challenges) > 0
    assert all(node.score(p) == 100 for p in placed)
