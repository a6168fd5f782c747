"""One trust store per device, shared by its gossip and replication cores: a credential is
verified once whichever core learns it first, and the replication core still acts on what the
gossip core learned (a holder's site and key)."""

from __future__ import annotations

import random

import pytest

from agent.gossip.inputs import CertificateKnown
from agent.gossip.node import GossipNode
from agent.protocol import trust as trust_module
from agent.protocol.trust import TrustStore
from agent.replication import wire
from agent.replication.inputs import CredentialKnown, OwnBlockSealed, PeerUp
from agent.replication.node import ReplicationNode
from tests.agent.replication.helpers import T0, World, config, msg_from, sent_of, world


def _device(w: World, store: TrustStore) -> tuple[GossipNode, ReplicationNode]:
    members = {"d": [d.device_id for d in w.devices]}
    gossip = GossipNode(
        w.id(0),
        members,
        w.authority.roots,
        random.Random(1),
        now_ms=T0,
        trust=store,
        signer=w.devices[0],
    )
    replication = ReplicationNode(
        w.id(0),
        w.devices[0].key,
        members,
        w.authority.roots,
        config=config(),
        now_ms=T0,
        trust=store,
    )
    return gossip, replication


def test_a_certificate_is_verified_once_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    w = world()
    calls: list[bytes] = []
    verify = trust_module.verify_certificate

    def counting(wire_: bytes, *args: object) -> object:
        calls.append(wire_)
        return verify(wire_, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(trust_module, "verify_certificate", counting)
    gossip, replication = _device(w, TrustStore(w.authority.roots))
    for c in w.certificates:
        gossip.handle(CertificateKnown(c), T0)
        replication.handle(CredentialKnown("certificate", c), T0)
    assert sorted(calls) == sorted(w.certificates)
    assert gossip.counters["certificate_new"] == len(w.certificates)
    assert replication.counters["credential_known"] == len(w.certificates)


def test_replication_places_a_stalled_block_once_gossip_learned_the_holders() -> None:
    w = world()
    gossip, replication = _device(w, TrustStore(w.authority.roots))
    adverts = [msg_from(w.id(i), wire.Space(w.id(i), 10_000, 10_000)) for i in (1, 2, 3, 4)]
    for i, advert in zip((1, 2, 3, 4), adverts, strict=True):
        replication.handle(PeerUp(w.id(i)), T0)
        replication.handle(advert, T0)
    out = replication.handle(OwnBlockSealed(w.devices[0].blocks[0]), T0)
    assert sent_of(out, wire.Store) == []  # no holder's key is known: no advert is proven
    # members whose credentials have not arrived yet: held, not counted unproven
    assert replication.counters["held_for_credentials"] == 4
    assert replication.counters["unattributable"] == 0
    for c in w.certificates:
        gossip.handle(CertificateKnown(c), T0)
    out = []
    for advert in adverts:  # the adverts come again (each holder re-advertises), proven now
        out += replication.handle(advert, T0 + 1)
    out += replication.handle(CredentialKnown("certificate", w.certificates[1]), T0 + 1)
    assert len(sent_of(out, wire.Store)) == replication.config.replicas
    assert replication.counters["proven_late"] == 4  # the held adverts, proven once learned
    assert replication.counters["unattributable"] == 0
