"""Direct-wired replication nodes with simulated time: the core's own test twin (no transport).

``ReplicationNet`` plays every runtime at once: it delivers ``Send``/``Broadcast`` payloads after
a seeded latency, answers ``LoadOwnBlock``/``StoreReplica``/``LoadReplica`` from a per-node
``Disk``, feeds presence changes, and restarts a node from its disk when it comes back. Time
jumps to the next delivery or node deadline, so an hour of replication takes milliseconds.

Nodes may be made to lie (``Behaviour``): advertise space they do not lend, drop the bodies they
promised to keep, or answer audits with garbage. A node may also be made slow
(``set_load``): its store jobs run one after another, each taking ``job_ms``, and what it sends
leaves ``lag_ms`` late, as on a saturated machine; slow is honest. The figures the tests check
come from the disks (the ground truth), not from what the nodes believe.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum

from agent.protocol import auth
from agent.protocol.sim import DAY_MS, START_MS, Authority, SimDevice
from agent.replication import wire
from agent.replication.actions import (
    Action,
    Broadcast,
    DeleteReplica,
    ForgetReceipt,
    HolderExcluded,
    LoadOwnBlock,
    LoadReplica,
    MarkSurplus,
    Send,
    StoreReceipt,
    StoreReplica,
)
from agent.replication.inputs import (
    CredentialKnown,
    Input,
    MessageReceived,
    OwnBlockInfo,
    OwnBlockLoaded,
    OwnBlockSealed,
    OwnChainLoaded,
    PeerDown,
    PeerUp,
    ReceiptKnown,
    ReplicaInfo,
    ReplicaLoaded,
    ReplicasLoaded,
    ReplicaStored,
)
from agent.replication.node import ReplicationNode
from agent.replication.tuning import ReplicationConfig
from ledger.block import Block
from ledger.certs import issue_certificate

__all__ = ["START_MS", "Behaviour", "Disk", "ReplicationNet", "SimHolder"]

DOMAIN = "fleet"


class Behaviour(Enum):
    HONEST = "honest"
    CLAIMS_SPACE = "claims_space"  # advertises room it refuses to lend
    DROPS_BODIES = "drops_bodies"  # signs receipts, keeps nothing
    WRONG_ANSWERS = "wrong_answers"  # keeps bodies, answers audits with garbage


@dataclass
class Disk:
    """What one node's runtime persisted (survives restarts)."""

    replicas: dict[tuple[str, int], tuple[bytes, ReplicaInfo]] = field(default_factory=dict)
    receipts: dict[tuple[int, str], bytes] = field(default_factory=dict)

    def replica_bytes(self) -> int:
        return sum(len(w) for w, _ in self.replicas.values())


@dataclass
class SimHolder:
    device: SimDevice
    site: str
    certificate: bytes
    config: ReplicationConfig
    node: ReplicationNode
    disk: Disk = field(default_factory=Disk)
    online: bool = True
    behaviour: Behaviour = Behaviour.HONEST
    deadline: int = 0  # the node's next_deadline() after the last input it handled
    job_ms: int = 0  # how long one store job takes on this (loaded) node's runtime
    lag_ms: int = 0  # extra delay of everything it sends
    free_at: int = 0  # when its store queue is next free

    @property
    def device_id(self) -> str:
        return self.device.device_id


class ReplicationNet:
    def __init__(
        self,
        sites: Iterable[str],
        *,
        seed: int = 1,
        config: ReplicationConfig | None = None,
        quotas: Iterable[int] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.authority = Authority(self.rng)
        self.now = START_MS
        base = config if config is not None else ReplicationConfig(rng=random.Random(0))
        self._base = base
        site_list = list(sites)
        quota_list = list(quotas) if quotas is not None else [base.quota_bytes] * len(site_list)
        self.holders: dict[str, SimHolder] = {}
        devices = [SimDevice(self.authority, self.rng) for _ in site_list]
        self.members = frozenset(d.device_id for d in devices)
        for i, (d, site, quota) in enumerate(zip(devices, site_list, quota_list, strict=True)):
            cert = issue_certificate(
                self.authority.key,
                d.key.public,
                kind="refrigerator",
                model="FR-200",
                site=site,
                owner_x25519=None,
                not_before_ms=START_MS - DAY_MS,
                not_after_ms=START_MS + 365 * DAY_MS,
                serial=1000 + i,
            ).wire
            cfg = replace(base, quota_bytes=quota, rng=random.Random(seed * 1000 + i))
            h = SimHolder(d, site, cert, cfg, self._new_node(d, cfg))
            self.holders[d.device_id] = h
        self._queue: list[tuple[int, int, str, Input]] = []
        self._seq = 0
        self.delivered = 0
        self.exclusions: list[tuple[int, str, str]] = []  # (time, owner, holder), every one

    @property
    def ids(self) -> list[str]:
        return list(self.holders)

    def _new_node(self, device: SimDevice, cfg: ReplicationConfig) -> ReplicationNode:
        return ReplicationNode(
            device.device_id,
            device.key,
            {DOMAIN: self.members},
            self.authority.roots,
            config=cfg,
            now_ms=self.now,
            signer=device,
        )

    # --- driving --------------------------------------------------------------------------------

    def start(self) -> None:
        for h in self.holders.values():
            self._boot(h)

    def _boot(self, h: SimHolder) -> None:
        inputs: list[Input] = [CredentialKnown("certificate", x.certificate) for x in self._all()]
        blocks = h.device.blocks
        infos = tuple(
            OwnBlockInfo(
                b.header.header.height, b.header.header.epoch, b.header.hash, len(b.encode())
            )
            for b in blocks
        )
        inputs.append(OwnChainLoaded(infos))
        inputs.extend(ReceiptKnown(w) for _, w in sorted(h.disk.receipts.items()))
        inputs.append(ReplicasLoaded(tuple(info for _, info in h.disk.replicas.values())))
        inputs.extend(PeerUp(o.device_id) for o in self._all() if o is not h and o.online)
        for ev in inputs:
            self._feed(h, ev)

    def _all(self) -> list[SimHolder]:
        return list(self.holders.values())

    def seal(self, device_id: str) -> Block:
        h = self.holders[device_id]
        block = h.device.seal(self.now)
        if h.online:
            self._feed(h, OwnBlockSealed(block))
        return block

    def take_offline(self, device_id: str) -> None:
        h = self.holders[device_id]
        h.online = False
        self._queue = [e for e in self._queue if e[2] != device_id]
        heapq.heapify(self._queue)
        for o in self._all():
            if o.online:
                self._feed(o, PeerDown(device_id))

    def bring_online(self, device_id: str) -> None:
        """Restart the node from its disk (memory lost) and announce it."""
        h = self.holders[device_id]
        h.online = True
        h.node = self._new_node(h.device, h.config)
        self._boot(h)
        for o in self._all():
            if o is not h and o.online:
                self._feed(o, PeerUp(device_id))

    def set_behaviour(self, device_id: str, behaviour: Behaviour) -> None:
        self.holders[device_id].behaviour = behaviour

    def set_load(self, device_id: str, *, job_ms: int = 0, lag_ms: int = 0) -> None:
        """Make a node slow (0, 0: not): store jobs queue up, ``job_ms`` each; sends lag."""
        h = self.holders[device_id]
        h.job_ms, h.lag_ms = job_ms, lag_ms

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms)

    def run_until(self, t_end: int) -> None:
        """Deliver and fire timers in time order up to ``t_end``. A node whose deadline does not
        move past a timer call is a bug in the core (a live runtime would spin): it raises."""
        spins = 0
        last: tuple[str, int] | None = None
        while True:
            t_msg = self._queue[0][0] if self._queue else None
            t_timer, who = None, None
            for h in self._all():
                if h.online and (t_timer is None or h.deadline < t_timer):
                    t_timer, who = h.deadline, h
            times = [t for t in (t_msg, t_timer) if t is not None]
            nxt = min(times) if times else None
            if nxt is None or nxt > t_end:
                self.now = max(self.now, t_end)
                return
            self.now = max(self.now, nxt)
            if t_msg is not None and t_msg == nxt:
                _, _, dst, ev = heapq.heappop(self._queue)
                target = self.holders[dst]
                if target.online:
                    self.delivered += 1
                    self._feed(target, ev)
            elif who is not None:
                spins = spins + 1 if last == (who.device_id, self.now) else 0
                if spins > 100:
                    raise AssertionError(f"{who.device_id}: deadline stuck at {self.now}")
                last = (who.device_id, self.now)
                self._execute(who, who.node.handle_timer(self.now))

    def _feed(self, h: SimHolder, ev: Input) -> None:
        self._execute(h, h.node.handle(ev, self.now))

    def _job(self, h: SimHolder, ev: Input) -> None:
        """A store job's answer, after the jobs queued before it on a loaded node."""
        done = max(self.now, h.free_at) + h.job_ms
        h.free_at = done
        self._later(h.device_id, ev, max(1, done - self.now))

    def _later(self, dst: str, ev: Input, delay_ms: int) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay_ms, self._seq, dst, ev))

    # --- the runtime ----------------------------------------------------------------------------

    def _execute(self, h: SimHolder, actions: list[Action]) -> None:
        h.deadline = h.node.next_deadline()
        for a in actions:
            if isinstance(a, Send):
                self._transmit(h, a.peer_id, a.payload)
            elif isinstance(a, Broadcast):
                for dst in sorted(self.members - {h.device_id}):
                    self._transmit(h, dst, a.payload)
            elif isinstance(a, LoadOwnBlock):
                blocks = h.device.blocks
                body = blocks[a.height].encode() if a.height < len(blocks) else None
                prev = blocks[a.height - 1].header.wire if 0 < a.height <= len(blocks) else None
                self._job(h, OwnBlockLoaded(a.height, body, prev))
            elif isinstance(a, StoreReplica):
                if h.behaviour is not Behaviour.DROPS_BODIES:
                    info = ReplicaInfo(a.owner_id, a.height, a.epoch, a.block_hash, len(a.block))
                    h.disk.replicas[(a.owner_id, a.height)] = (a.block, info)
                self._job(h, ReplicaStored(a.owner_id, a.height, a.block_hash, True))
            elif isinstance(a, DeleteReplica):
                h.disk.replicas.pop((a.owner_id, a.height), None)
            elif isinstance(a, MarkSurplus):
                held = h.disk.replicas.get((a.owner_id, a.height))
                if held is not None:
                    w, info = held
                    h.disk.replicas[(a.owner_id, a.height)] = (w, replace(info, surplus=True))
            elif isinstance(a, LoadReplica):
                held = h.disk.replicas.get((a.owner_id, a.height))
                ev2 = ReplicaLoaded(a.owner_id, a.height, None if held is None else held[0])
                self._job(h, ev2)
            elif isinstance(a, StoreReceipt):
                h.disk.receipts[(a.height, a.holder_id)] = a.receipt
            elif isinstance(a, ForgetReceipt):
                h.disk.receipts.pop((a.height, a.holder_id), None)
            elif isinstance(a, HolderExcluded):
                self.exclusions.append((self.now, h.device_id, a.holder_id))

    def _transmit(self, src: SimHolder, dst: str, payload: bytes) -> None:
        if not src.online or dst not in self.holders or not self.holders[dst].online:
            return
        payload = self._lie(src, payload)
        delay = self.rng.randint(2, 20) + src.lag_ms
        self._later(dst, MessageReceived(src.device_id, payload), delay)

    def _lie(self, src: SimHolder, payload: bytes) -> bytes:
        if src.behaviour is Behaviour.HONEST:
            return payload
        msg = wire.decode(auth.body_of(payload))  # its own message: it lies under its own key
        if src.behaviour is Behaviour.CLAIMS_SPACE and isinstance(msg, wire.Space):
            return auth.seal(wire.encode(wire.Space(msg.sender, 1 << 30, 1 << 30)), src.device)
        if src.behaviour is Behaviour.WRONG_ANSWERS and isinstance(msg, wire.Proof):
            lie = wire.Proof(msg.sender, msg.challenge_id, self.rng.randbytes(32))
            return auth.seal(wire.encode(lie), src.device)
        return payload

    # --- ground truth ---------------------------------------------------------------------------

    def live_copies(self, owner: str, height: int) -> list[str]:
        """Online devices whose disk holds the owner's block at ``height`` byte for byte."""
        body = self.holders[owner].device.blocks[height].encode()
        return sorted(
            h.device_id
            for h in self._all()
            if h.online
            and h.device_id != owner
            and (held := h.disk.replicas.get((owner, height))) is not None
            and held[0] == body
        )
