"""The attacks of issue 13 on replication (six nodes wired directly, simulated time, seeded):
forged messages naming a storage holder, bit-flipped copies of its real messages and version-1
messages reach every owner; none of them lowers its score or excludes it, and each is counted.
"""

from __future__ import annotations

import random

from agent.protocol.sim import START_MS
from agent.replication import wire
from agent.replication.inputs import MessageReceived
from agent.replication.sim import ReplicationNet
from agent.replication.tuning import ReplicationConfig
from ledger import codec

SITES = ["north", "north", "south", "south", "east", "west"]
CONFIG = ReplicationConfig(
    rng=random.Random(0), audit_interval_ms=20_000, advert_interval_ms=20_000
)


def _net() -> ReplicationNet:
    net = ReplicationNet(SITES, seed=5, config=CONFIG)
    captured: list[tuple[str, bytes]] = []
    later = net._later

    def capture(dst: str, ev: object, delay_ms: int) -> None:
        if isinstance(ev, MessageReceived):
            captured.append((dst, ev.payload))
        later(dst, ev, delay_ms)  # type: ignore[arg-type]

    net._later = capture  # type: ignore[method-assign]
    net.captured = captured  # type: ignore[attr-defined]
    net.start()
    net.run_for(2_000)
    for _ in range(3):
        for o in net.ids:
            net.seal(o)
        net.run_for(2_000)
    net.run_for(30_000)
    return net


def _holder_standing(net: ReplicationNet, holder: str) -> list[tuple[int | None, bool]]:
    return [
        (h.node.score(holder), h.node.excluded(holder))
        for o, h in net.holders.items()
        if o != holder
    ]


def test_forged_and_flipped_messages_naming_a_holder_never_exclude_it() -> None:
    """Issue 13: three messages naming a storage holder excluded it at all five owners."""
    net = _net()
    captured: list[tuple[str, bytes]] = net.captured  # type: ignore[attr-defined]
    holder = net.ids[2]
    device = net.holders[holder].device
    before = _holder_standing(net, holder)
    assert all(not excluded for _, excluded in before)
    rng = random.Random(9)
    own = [(dst, p) for dst, p in captured if p[4:30] == holder.encode()]
    assert {p[2] for _, p in own} >= {wire.RECEIPT, wire.PROOF, wire.SPACE}
    injected = 0
    for owner in net.ids:
        if owner == holder:
            continue
        bodies = [
            codec.encode([2, wire.SPACE, holder, 1, 2]),  # malformed: free above quota
            wire.encode(wire.Proof(holder, rng.getrandbits(32), rng.randbytes(32))),
            wire.encode(wire.Refuse(holder, rng.getrandbits(32), wire.FULL, 0)),
            wire.encode(wire.ReceiptMsg(holder, rng.getrandbits(32), rng.randbytes(150))),
        ]
        for body in bodies:
            forged = bytes([body[0] + 1]) + body[1:] + b"\xc4\x48" + device.key.key_id
            net._later(owner, MessageReceived(None, forged + rng.randbytes(64)), 1)
            net._later(owner, MessageReceived(holder, forged + rng.randbytes(64)), 1)
            injected += 2
        for _ in range(30):  # bit-flipped copies of the holder's real messages
            _, payload = own[rng.randrange(len(own))]
            flipped = bytearray(payload)
            bit = rng.randrange(len(flipped) * 8)
            flipped[bit // 8] ^= 1 << (bit % 8)
            net._later(owner, MessageReceived(None, bytes(flipped)), 2)
            injected += 1
        v1 = codec.encode([1, wire.SPACE, holder, 1, 2])  # the old version: refused
        net._later(owner, MessageReceived(None, v1), 3)
    refused_before = sum(
        h.node.counters["unattributable"] for o, h in net.holders.items() if o != holder
    )
    net.run_for(5)
    refused = sum(h.node.counters["unattributable"] for o, h in net.holders.items() if o != holder)
    assert refused - refused_before == injected
    assert all(h.node.counters["old_version"] == 1 for o, h in net.holders.items() if o != holder)
    assert _holder_standing(net, holder) == before
    net.run_for(60_000)  # audits go on: the honest holder still passes them
    assert all(not excluded for _, excluded in _holder_standing(net, holder))
    assert all(h.node.counters["invalid"] + h.node.counters["malformed"] == 0 for h in net._all())


def test_nothing_is_answered_to_a_forged_challenge() -> None:
    """A CHALLENGE naming an owner, forged: no PROOF goes to that owner (no reflection)."""
    net = _net()
    owner, holder = net.ids[0], net.ids[3]
    key_id = net.holders[owner].device.key.key_id
    rng = random.Random(1)
    h = net.holders[owner].device.blocks[0].header.hash
    body = wire.encode(wire.Challenge(owner, 77, 0, h, rng.randbytes(16)))
    payload = bytes([body[0] + 1]) + body[1:] + b"\xc4\x48" + key_id + rng.randbytes(64)
    out = net.holders[holder].node.handle(MessageReceived(None, payload), START_MS + 10**7)
    assert [a for a in out if type(a).__name__ in ("Send", "Broadcast")] == []
    assert net.holders[holder].node.counters["unattributable_bad_signature"] == 1
