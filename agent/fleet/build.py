"""The assembly of one device: its chain writer, its cores, its runtime, and what it boots with.

``build_device`` is the one place a ``DeviceAgent`` is put together, whoever runs it: the fleet
runner (and through it restore, the pytest plugin and the benchmarks) and the tests that drive
one device. Its randomness is seeded from the fleet's seed and the device's name, so a seed
reproduces a run. ``boot_inputs`` is what a device's store and its fleet already know, for
``DeviceAgent.start``; ``replication_config`` turns a devices file's replication section into
one device's replication tunables.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import Executor

from agent.config.devices import Replication
from agent.device.runtime import DeviceAgent
from agent.device.sealing import SealPolicy
from agent.gossip import inputs as I
from agent.gossip.node import GossipNode
from agent.gossip.tuning import GossipConfig
from agent.gossip.witness import WitnessConfig
from agent.protocol.auth import KeySigner
from agent.protocol.trust import TrustStore
from agent.replication.node import ReplicationNode
from agent.replication.tuning import ReplicationConfig
from agent.transport.base import Transport
from firmware_sim.clock import Clock
from ledger.block import decode_header
from ledger.certs import FleetRoots
from ledger.chain import ChainWriter
from ledger.identity import SigningKey
from ledger.store import Store


def build_device(
    *,
    name: str,
    key: SigningKey,
    store: Store,
    domains: Mapping[str, Collection[str]],
    roots: FleetRoots,
    transport: Transport,
    data_clock: Clock,
    net_clock: Clock,
    seed: int | str,
    policy: SealPolicy,
    gossip: GossipConfig | None = None,
    replication: ReplicationConfig | None = None,
    executor: Executor | None = None,
    kind: str = "",
    site: str = "",
    owner_x25519: bytes | None = None,
    device_id: str | None = None,
) -> DeviceAgent:
    """One device, not started yet (``await agent.start(boot_inputs(...))``).

    ``domains``: each gossip domain of the device with its members (the device included); its
    peers are the other members. ``replication``: None, or no domain, and the device neither
    places nor holds replicas. ``executor``: where store work runs (None: inline, for fully
    simulated runs). ``owner_x25519``: a device at a private site seals every reading to its
    owner (the key named in its certificate). ``device_id``: the certificate's (default: the
    one ``key`` derives, which a device's first key does and a rotated key does not)."""
    device_id = device_id or key.public.device_id  # a rotated key no longer names the device
    writer = ChainWriter(store, key, device_id, owner_x25519=owner_x25519)
    now = net_clock.now_ms()
    gcfg = gossip or GossipConfig()
    # One trust store per device, shared by its cores: a credential is verified once.
    trust = TrustStore(
        roots,
        max_devices=gcfg.max_devices,
        max_pending=gcfg.max_pending_rotations,
        max_revocations=gcfg.max_revocations,
    )
    # One signer too: both cores authenticate what they send with the device's key.
    signer = KeySigner(key)
    node = GossipNode(
        device_id,
        domains,
        roots,
        random.Random(f"{seed}/gossip/{name}"),
        config=gcfg,
        now_ms=now,
        trust=trust,
        signer=signer,
        witness=WitnessConfig(),  # domain peers cosign its checkpoints (gossip/witness.py)
    )
    rep_node = None
    if replication is not None and domains:
        config = dataclasses.replace(replication, rng=random.Random(f"{seed}/replication/{name}"))
        rep_node = ReplicationNode(
            device_id, key, domains, roots, config=config, now_ms=now, trust=trust, signer=signer
        )
    peers = sorted({p for m in domains.values() for p in m} - {device_id})
    return DeviceAgent(
        name=name,
        kind=kind,
        site=site,
        writer=writer,
        node=node,
        transport=transport,
        data_clock=data_clock,
        net_clock=net_clock,
        policy=policy,
        executor=executor,
        peer_ids=peers,
        replication=rep_node,
    )


def replication_config(spec: Replication, spare_storage_mb: int) -> ReplicationConfig | None:
    """One device's replication tunables from the devices file (None: replication is off)."""
    if spec.copies == 0:
        return None
    return ReplicationConfig(
        replicas=spec.copies,
        quota_bytes=spare_storage_mb << 20,
        audit_interval_ms=spec.audit_every_ms,
        repair_delay_ms=spec.repair_after_ms,
    )


def boot_inputs(store: Store, certs: Iterable[bytes], self_id: str) -> list[I.Input]:
    """What the device's store already holds (credentials, evidence, epochs, its own chain and
    its peers' headers), after ``certs``, the certificates the fleet gives it (it gives each of
    those devices this one's: they need no hello, ``CertificateKnown.provisioned``)."""
    events: list[I.Input] = [I.CertificateKnown(w, provisioned=True) for w in certs]
    for _, w in store.credentials("certificate"):
        events.append(I.CertificateKnown(w))
    for _, w in store.credentials("rotation"):
        events.append(I.RotationKnown(w))
    for _, w in store.credentials("revocation"):
        events.append(I.RevocationKnown(w))
    for w in store.evidence():
        events.append(I.EvidenceKnown(w))
    for w in store.epoch_wires():  # before the chains: a chain may cross an epoch change
        events.append(I.EpochKnown(w))
    states = store.witness_states()
    if states:  # before any message: what this device cosigned as a witness
        events.append(I.WitnessStateKnown(tuple(states)))
    own = store.own_header_wires()
    if own:
        events.append(I.ChainLoaded(self_id, tuple(own)))
    for dev in store.peer_devices():
        wires = store.peer_header_wires(dev)
        if wires:
            events.append(I.ChainLoaded(dev, tuple(_contiguous(wires))))
    return events


def _contiguous(wires: list[bytes]) -> list[bytes]:
    """Peer headers from height 0 up to the first gap (ChainLoaded wants a contiguous run)."""
    out = []
    for i, w in enumerate(wires):
        if decode_header(w).header.height != i:
            break
        out.append(w)
    return out
