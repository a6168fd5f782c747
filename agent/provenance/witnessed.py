"""Which witnesses vouch for the chains of an item's readings (`edgefleet trace --witnesses K`).

Each device keeps its own C2SP checkpoints with the cosignatures its domain peers returned
(agent/gossip/witness.py, ``Store.checkpoint_notes``). For every custodian of a trace, this
module takes the checkpoints of the epoch of the item's readings on that device that cover the
highest of those readings (size above its height), and for each:

1. checks the device's signature (the key in force at the checkpoint's last height, from the
   verified chain's credentials) and every cosignature line of a known witness (any other device
   of the data dir, under ``<fleet>/<device id>/witness`` with its current key: a line that
   fails fails the checkpoint);
2. checks that its root is the root of the verified chain's header hashes at that size (a
   checkpoint of another history is a fork, said so, and never counted).

The report names, per custodian, the checkpoint with the most cosigners and them; a custodian
with fewer than K fails the requirement. Nothing is trusted that the fleet root does not prove.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.provenance.analysis import Trace
from agent.provenance.gather import TraceSession
from agent.provenance.verified_chains import ChainUnavailable
from ledger.checkpoint import device_origin, device_verifier, fleet_label
from ledger.cosignature import CosignatureVerifier, verify_cosigned, witness_name
from ledger.errors import LedgerError
from ledger.merkle import root_from_leaf_hashes

__all__ = ["WitnessReport", "witness_reports", "witness_verifiers"]


@dataclass(frozen=True, slots=True)
class WitnessReport:
    device_id: str
    epoch: int
    height: int  # the highest height of the item's readings on the device
    size: int | None  # the checkpoint used (None: none covers that height)
    cosigners: tuple[str, ...]  # witness device ids whose cosignatures verified
    problems: tuple[str, ...]  # checkpoints refused, and why

    def met(self, quorum: int) -> bool:
        return len(self.cosigners) >= quorum


def witness_reports(session: TraceSession, trace: Trace) -> list[WitnessReport]:
    """One report per custodian (device id order) of the trace's verified readings."""
    top: dict[str, tuple[int, int]] = {}  # device -> (epoch, height) of its highest reading
    for e in trace.evidence:
        held = top.get(e.device_id)
        if held is None or e.height > held[1]:
            top[e.device_id] = (e.epoch, e.height)
    witnesses = witness_verifiers(session)
    return [
        _report(session, dev, epoch, height, witnesses)
        for dev, (epoch, height) in sorted(top.items())
    ]


def witness_verifiers(session: TraceSession) -> dict[str, tuple[str, CosignatureVerifier]]:
    """Every device of the data dir whose credentials verify: (fleet, cosignature verifier)."""
    out: dict[str, tuple[str, CosignatureVerifier]] = {}
    for dev in sorted(session.devices):
        try:
            keys = session.keys(dev)
        except ChainUnavailable:
            continue
        root = session.roots.keys.get(keys.certificate.authority_key_id)
        if root is None or None in keys.revoked_from:
            continue
        fleet = fleet_label(root)
        out[dev] = (fleet, CosignatureVerifier(witness_name(fleet, dev), keys.spans[-1].key))
    return out


def _report(
    session: TraceSession,
    dev: str,
    epoch: int,
    height: int,
    witnesses: Mapping[str, tuple[str, CosignatureVerifier]],
) -> WitnessReport:
    problems: list[str] = []
    store = session.own_store(dev)
    try:
        chain = session.chain(dev)
    except ChainUnavailable as exc:
        return WitnessReport(dev, epoch, height, None, (), (str(exc),))
    root = session.roots.keys.get(chain.keys.certificate.authority_key_id)
    if store is None or root is None:
        return WitnessReport(dev, epoch, height, None, (), ("no own store in the data dir",))
    origin = device_origin(fleet_label(root), dev, epoch)
    hashes = [*chain.hashes, chain.head.hash]
    others = {w: v for w, (_, v) in witnesses.items() if w != dev}
    names = {v.name: w for w, v in others.items()}
    best: tuple[int, int, tuple[str, ...]] | None = None  # (cosigners, -size, ids)
    for _, size, note in reversed(store.checkpoint_notes(origin)):
        if size <= height:
            break
        if size > len(hashes):
            problems.append(f"checkpoint {size}: above the verified head, not checked")
            continue
        try:
            log = device_verifier(origin, chain.keys.key_at(size - 1))
            cosigned = verify_cosigned(note, log, others.values(), 0)
        except LedgerError as exc:
            problems.append(f"checkpoint {size}: {exc}")
            continue
        if cosigned.checkpoint.root_hash != root_from_leaf_hashes(hashes[:size]):
            problems.append(f"checkpoint {size}: its root is not the verified chain's (a fork)")
            continue
        ids = tuple(sorted(names[n] for n, _ in cosigned.cosigners))
        rank = (len(ids), -size, ids)
        if best is None or rank > best:
            best = rank
    if best is None:
        return WitnessReport(dev, epoch, height, None, (), tuple(problems))
    return WitnessReport(dev, epoch, height, -best[1], best[2], tuple(problems))
