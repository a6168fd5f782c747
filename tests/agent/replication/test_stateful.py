"""A Hypothesis state machine: seven replication nodes against a simple model of who is honest,
who is online and what each owner sealed.

Holders join and leave (a node that comes back restarts from its disk), owners seal blocks, time
jumps, one small holder fills up, and up to two nodes lie about storage: one claims space it
refuses to lend, one drops the bodies it signed receipts for, one answers audits with garbage.

After every step: no holder's disk exceeds its quota by more than one block, and every receipt an
owner holds verifies under its holder's key. After ``settle`` (repair delay plus several audit
rounds with nobody joining or leaving): every block of an online owner has R healthy holders that
are online, honest and really hold its bytes, whenever the model says enough honest room exists;
no owner counts a lying holder as healthy; and every liar an owner dealt with lost score there.
"""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.replication.sim import Behaviour, ReplicationNet
from agent.replication.tuning import ReplicationConfig
from ledger.receipt import verify_receipt

SITES = ["a", "a", "b", "b", "c", "c", "d"]
BLOCK = 366  # bytes of every simulated block
BIG = 30 * BLOCK
SMALL = 2 * BLOCK  # node 6: fills up after two replicas
MAX_BLOCKS = 12
R = 3
CONFIG = ReplicationConfig(
    rng=random.Random(0),
    repair_delay_ms=60_000,
    audit_interval_ms=10_000,
    audit_timeout_ms=5_000,
    store_timeout_ms=5_000,
    advert_interval_ms=15_000,
    retry_ms=5_000,
    recover_ms=10**9,  # a caught liar stays caught for the length of a run
)
SETTLE_MS = CONFIG.repair_delay_ms + 10 * CONFIG.audit_interval_ms
LIES = [Behaviour.CLAIMS_SPACE, Behaviour.DROPS_BODIES, Behaviour.WRONG_ANSWERS]


class Fleet(RuleBasedStateMachine):
    @initialize(
        seed=st.integers(0, 2**16),
        liars=st.dictionaries(st.integers(0, 5), st.sampled_from(LIES), max_size=2),
    )
    def build(self, seed: int, liars: dict[int, Behaviour]) -> None:
        quotas = [BIG] * 6 + [SMALL]
        for i, b in liars.items():
            if b is Behaviour.CLAIMS_SPACE:
                quotas[i] = 0  # it lends nothing, whatever it says
        self.net = ReplicationNet(SITES, seed=seed, config=CONFIG, quotas=quotas)
        self.ids = self.net.ids
        self.liars = {self.ids[i]: b for i, b in liars.items()}
        for dev, b in self.liars.items():
            self.net.set_behaviour(dev, b)
        self.net.start()
        self.net.run_for(1_000)
        self.sealed = 0

    def online(self) -> list[str]:
        return [i for i in self.ids if self.net.holders[i].online]

    @precondition(lambda self: self.sealed < MAX_BLOCKS)
    @rule(who=st.integers(0, 6))
    def seal(self, who: int) -> None:
        dev = self.ids[who]
        if self.net.holders[dev].online and dev not in self.liars:
            self.net.seal(dev)
            self.sealed += 1

    @rule(who=st.integers(0, 6))
    def leave(self, who: int) -> None:
        dev = self.ids[who]
        if self.net.holders[dev].online and len(self.online()) > 5:
            self.net.take_offline(dev)

    @rule(who=st.integers(0, 6))
    def join(self, who: int) -> None:
        dev = self.ids[who]
        if not self.net.holders[dev].online:
            self.net.bring_online(dev)

    @rule(ms=st.integers(1, 30_000))
    def tick(self, ms: int) -> None:
        self.net.run_for(ms)

    @rule()
    def settle(self) -> None:
        self.net.run_for(SETTLE_MS)
        honest_big = {i for i in self.online() if i not in self.liars and i != self.ids[6]}
        for owner in self.online():
            node = self.net.holders[owner].node
            enough = len(honest_big - {owner}) >= R
            for height in node.own_heights():
                healthy = node.healthy_holders(height)
                truly = set(self.net.live_copies(owner, height))
                assert not set(healthy) & set(self.liars), ("liar counted", owner, height)
                if enough:
                    good = [h for h in healthy if h in truly]
                    assert len(good) >= R, (owner, height, healthy, sorted(truly))
            for liar in set(self.liars) - {owner}:
                view = node.owner.views[liar]
                if view.failed or view.refused:
                    assert view.score < CONFIG.score_initial, (owner, liar)

    @invariant()
    def quotas_hold(self) -> None:
        for h in self.net.holders.values():
            assert h.disk.replica_bytes() <= h.config.quota_bytes + BLOCK
            if h.online:
                assert h.node.used_bytes() <= h.config.quota_bytes

    @invariant()
    def receipts_verify(self) -> None:
        for h in self.net.holders.values():
            if not h.online:
                continue
            for height in h.node.own_heights():
                for holder, receipt in h.node.holders(height).items():
                    key = self.net.holders[holder].device.key.public
                    r = verify_receipt(receipt, key).receipt
                    assert (r.owner_id, r.height) == (h.device_id, height)


Fleet.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestFleet = Fleet.TestCase
