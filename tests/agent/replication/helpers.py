"""Shared pieces for the replication tests: a small world of enrolled devices with real chains,
a node for device 0, and helpers to build messages from peers and read actions."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import cache

from agent.protocol.sim import START_MS, Authority, SimDevice, sealed, unseal
from agent.replication import wire
from agent.replication.actions import Action, Send
from agent.replication.inputs import CredentialKnown, MessageReceived, PeerUp
from agent.replication.node import ReplicationNode
from agent.replication.tuning import ReplicationConfig
from ledger.certs import issue_certificate

T0 = START_MS
SITES = ("home", "home", "shop", "farm", "farm")


@dataclass(frozen=True)
class World:
    authority: Authority
    devices: tuple[SimDevice, ...]
    certificates: tuple[bytes, ...]  # with the sites above

    def id(self, i: int) -> str:
        return self.devices[i].device_id

    def store(self, owner: int, height: int, rid: int = 1) -> wire.Store:
        blocks = self.devices[owner].blocks
        prev = blocks[height - 1].header.wire if height else None
        return wire.Store(self.id(owner), rid, blocks[height].encode(), prev)

    def node(
        self, config: ReplicationConfig | None = None, *, up: tuple[int, ...] = (1, 2, 3, 4)
    ) -> ReplicationNode:
        cfg = config or ReplicationConfig(rng=random.Random(3), quota_bytes=100_000)
        node = ReplicationNode(
            self.id(0),
            self.devices[0].key,
            {"d": [d.device_id for d in self.devices]},
            self.authority.roots,
            config=cfg,
            now_ms=T0,
        )
        for c in self.certificates:
            node.handle(CredentialKnown("certificate", c), T0)
        for i in up:
            node.handle(PeerUp(self.id(i)), T0)
        return node


@cache
def world() -> World:
    rng = random.Random(21)
    authority = Authority(rng)
    devices = tuple(SimDevice(authority, rng) for _ in SITES)
    certs = tuple(
        issue_certificate(
            authority.key,
            d.key.public,
            kind="refrigerator",
            model="FR-200",
            site=site,
            owner_x25519=None,
            not_before_ms=T0 - 86_400_000,
            not_after_ms=T0 + 365 * 86_400_000,
            serial=100 + i,
        ).wire
        for i, (d, site) in enumerate(zip(devices, SITES, strict=True))
    )
    for d in devices:
        for k in range(6):
            d.seal(T0 + k)
    return World(authority, devices, certs)


def config(**changes: object) -> ReplicationConfig:
    base = ReplicationConfig(rng=random.Random(3), quota_bytes=100_000)
    return replace(base, **changes)  # type: ignore[arg-type]


def msg_from(sender: str, msg: wire.Message) -> MessageReceived:
    return MessageReceived(sender, sealed(wire.encode(msg)))


def sent(actions: list[Action]) -> list[tuple[str, wire.Message]]:
    return [(a.peer_id, wire.decode(unseal(a.payload))) for a in actions if isinstance(a, Send)]


def sent_of(actions: list[Action], kind: type) -> list[tuple[str, wire.Message]]:
    return [(p, m) for p, m in sent(actions) if isinstance(m, kind)]


def of_type(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]
