"""A Hypothesis state machine: one GossipNode against a simple model of the chains it holds.

Announces arrive in any order, duplicated, forged (a flipped bit) or from any peer; requests the
node sends are answered honestly, late or never; time jumps. The model says which height each
device's head must be at after every step: a header is accepted exactly when it extends the
head, so the store never receives a duplicate or a header out of order, and nothing forged is
ever stored or forwarded.
"""

from __future__ import annotations

import random
from functools import cache

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from agent.gossip import wire
from agent.gossip.actions import Action, Send, StoreHeaders
from agent.gossip.inputs import CertificateKnown, MessageReceived, PeerUp
from agent.gossip.node import GossipNode
from agent.gossip.tuning import GossipConfig
from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from ledger.block import decode_header

CHAIN = 10


@cache
def _world() -> tuple[Authority, tuple[SimDevice, ...]]:
    rng = random.Random(77)
    authority = Authority(rng)
    devices = tuple(SimDevice(authority, rng) for _ in range(4))
    for d in devices[1:3]:
        for k in range(CHAIN):
            d.seal(START_MS + k)
    return authority, devices


class NodeAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        authority, devices = _world()
        self.devices = devices
        self.ids = [d.device_id for d in devices]
        self.config = GossipConfig(
            fanout=2, mute_threshold=10**9, anti_entropy_ms=2_000, jitter_ms=300
        )
        self.now = START_MS
        self.node = GossipNode(
            self.ids[0],
            {"d": self.ids},
            authority.roots,
            random.Random(1),
            config=self.config,
            now_ms=self.now,
            signer=devices[0],
        )
        for d in devices:
            self.node.handle(CertificateKnown(d.certificate), self.now)
        for i in self.ids[1:]:
            self.node.handle(PeerUp(i), self.now)
        self.head = {self.ids[1]: -1, self.ids[2]: -1}
        self.stored: set[tuple[str, int]] = set()
        self.requests: dict[int, tuple[str, wire.Request, int]] = {}

    def _run(self, event: MessageReceived) -> list[Action]:
        out = self.node.handle(event, self.now)
        self._absorb(out)
        return out

    def _absorb(self, out: list[Action]) -> None:
        for a in out:
            if isinstance(a, StoreHeaders):
                for w in a.headers:
                    h = wire_height(w)
                    assert (a.device_id, h) not in self.stored, "stored duplicate"
                    assert h == self.head[a.device_id] + 1, "stored out of order"
                    self.head[a.device_id] = h
                    self.stored.add((a.device_id, h))
            elif isinstance(a, Send):
                m = wire.decode(unseal(a.payload))
                if isinstance(m, wire.Request):
                    deadline = self.now + self.config.request_timeout_ms
                    self.requests[m.request_id] = (a.peer_id, m, deadline)
                elif isinstance(m, wire.Announce):
                    genuine = {w for d in self.devices for w in d.header_wires()}
                    assert set(m.headers) <= genuine, "forwarded a forged header"

    @rule(
        dev=st.sampled_from([1, 2]),
        height=st.integers(0, CHAIN - 1),
        sender=st.sampled_from([1, 2, 3]),
    )
    def announce(self, dev: int, height: int, sender: int) -> None:
        device_id = self.ids[dev]
        before = self.head[device_id]
        w = self.devices[dev].header_wires()[height]
        out = self._run(
            MessageReceived(
                self.ids[sender], sealed(wire.encode(wire.Announce(self.ids[sender], (w,))))
            )
        )
        if height == before + 1:
            assert self.head[device_id] == height
            targets = [
                a.peer_id
                for a in out
                if isinstance(a, Send) and isinstance(wire.decode(unseal(a.payload)), wire.Announce)
            ]
            assert len(targets) <= self.config.fanout
            assert self.ids[sender] not in targets and device_id not in targets
        else:
            assert self.head[device_id] == before

    @rule(
        dev=st.sampled_from([1, 2]), height=st.integers(0, CHAIN - 1), bit=st.integers(0, 8 * 200)
    )
    def forged_announce(self, dev: int, height: int, bit: int) -> None:
        w = bytearray(self.devices[dev].header_wires()[height])
        bit %= len(w) * 8
        w[bit // 8] ^= 1 << (bit % 8)
        before = dict(self.head)
        self._run(
            MessageReceived(
                self.ids[3], sealed(wire.encode(wire.Announce(self.ids[3], (bytes(w),))))
            )
        )
        assert self.head == before

    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        if not self.requests:
            return
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        peer, req, _ = self.requests.pop(rid)
        chain = next(d for d in self.devices if d.device_id == req.device_id).header_wires()
        headers = tuple(chain[req.from_height : req.to_height + 1])
        before = self.head.get(req.device_id, -1)
        self._run(
            MessageReceived(
                peer,
                sealed(
                    wire.encode(wire.Response(peer, rid, req.device_id, (), (), (), headers, ()))
                ),
            )
        )
        if req.device_id in self.head and headers and req.from_height <= before + 1:
            assert self.head[req.device_id] == max(before, req.from_height + len(headers) - 1)

    @rule(ms=st.integers(1, 6_000))
    def tick(self, ms: int) -> None:
        self.now += ms
        while (deadline := self.node.next_deadline()) is not None and deadline <= self.now:
            self._absorb(self.node.handle_timer(deadline))
        self.requests = {k: v for k, v in self.requests.items() if v[2] > self.now}

    @invariant()
    def heads_match_the_model(self) -> None:
        for device_id, h in self.head.items():
            held = self.node.head(device_id)
            assert (-1 if held is None else held.header.height) == h


def wire_height(w: bytes) -> int:
    return decode_header(w).header.height


NodeAgainstModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestNodeAgainstModel = NodeAgainstModel.TestCase
