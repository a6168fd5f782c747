"""Traces and offline proof bundles (``ledger.bundle``, docs/BUNDLE.md), both ways.

``write_bundle`` puts every reading a trace used (the item's own readings and its devices'
readings during its stays) into a bundle with each device's certificate, head and header hashes,
so anyone holding the fleet root can verify it with ``edgefleet verify-bundle`` and recompute the
same timeline and verdict with ``edgefleet trace --from-bundle`` (``from_bundle``), offline.
Private readings travel sealed, as signed: a reader needs the owner's key or a grant to open them.
The fork evidence and revocations behind a trace's key flags travel too (bundle format 2), so
the bundle's verdict is the trace's: FORKED, REVOKED or ROTATED-AWAY included.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from agent.provenance import analysis
from agent.provenance.evidence import DeviceInfo, Evidence, Withheld
from agent.provenance.gather import TraceSession
from agent.provenance.opening import Opening
from ledger.bundle import FORKED, REVOKED, BundleBuilder, BundledReading, VerifiedBundle
from ledger.certs import FleetRoots


def write_bundle(session: TraceSession, trace: analysis.Trace, *, created_ms: int) -> bytes:
    """A bundle proving every reading of ``trace`` (subject: the EPC)."""
    builder = BundleBuilder(session.roots, subject=trace.epc, created_ms=created_ms)
    devices = sorted({e.device_id for e in trace.evidence})
    for device_id in devices:
        chain = session.chain(device_id)
        builder.add_device(device_id, chain.credentials, chain.head, chain.hashes, chain.forks)
    for e in trace.evidence:
        builder.add_reading(e.device_id, session.block(e.device_id, e.height), e.index)
    return builder.build()


def from_bundle(
    bundle: VerifiedBundle, opening: Opening | None = None, epc: str | None = None
) -> tuple[str, dict[str, DeviceInfo], list[Evidence], list[Withheld]]:
    """The trace inputs a verified bundle holds: (epc, devices, readings, withheld)."""
    opening = opening or Opening(None)
    subject = epc or bundle.subject
    devices = {
        d: DeviceInfo(
            d,
            d,
            v.certificate.kind,
            v.certificate.site,
            v.certificate.model,
            v.certificate.owner_x25519 is not None,
        )
        for d, v in bundle.devices.items()
    }
    readings: list[Evidence] = []
    sealed: list[Evidence] = []
    why: dict[str, set[str]] = {}
    for br in bundle.readings:
        result = opening.open(br.reading)
        if result.reading is None:
            r = br.reading.reading
            sealed.append(
                Evidence(
                    br.device_id,
                    br.height,
                    br.index,
                    r.epoch,
                    r.seq,
                    r.time_ms,
                    "",
                    0,
                    None,
                    None,
                    True,
                    br.reading.leaf_hash,
                    "inclusion",
                    br.header.header.key_id,
                )
            )
            why.setdefault(br.device_id, set()).add(result.reason)
            continue
        readings.append(_evidence(br, result.reading))
    stays, _ = analysis.custody([e for e in readings if e.tag == subject], devices)
    groups: dict[tuple[str, bool], list[int]] = {}
    for e in sealed:
        inside = any(s.holds(e) for s in stays)
        groups.setdefault((e.device_id, inside), []).append(e.time_ms)
    withheld = [
        Withheld(d, len(ts), min(ts), max(ts), inside, "; ".join(sorted(why[d])))
        for (d, inside), ts in sorted(groups.items())
    ]
    return subject, devices, readings, withheld


def trace_bundle(
    bundle: VerifiedBundle,
    opening: Opening | None = None,
    product: str | None = None,
) -> analysis.Trace:
    """The trace a verified bundle holds. Its key flags are those the bundle proves; a note says
    that a fork or revocation the bundle does not carry cannot be seen offline
    (docs/BUNDLE.md section 6.3), so an OK from a bundle claims no more than the bundle shows."""
    epc, devices, readings, withheld = from_bundle(bundle, opening)
    trace = analysis.analyse(epc, devices, readings, withheld, product=product, flags=bundle.flags)
    carried = Counter(f.kind for d in bundle.devices.values() for f in d.flags)
    note = (
        f"key flags as far as this bundle shows: it carries {carried[FORKED]} fork evidence and "
        f"{carried[REVOKED]} revocation(s); a fork or revocation it does not carry cannot be "
        "seen offline"
    )
    verdict = dataclasses.replace(trace.verdict, notes=(*trace.verdict.notes, note))
    return dataclasses.replace(trace, verdict=verdict)


def _evidence(br: BundledReading, r: object) -> Evidence:
    from ledger.reading import Reading

    assert isinstance(r, Reading)
    sr = br.reading
    return Evidence(
        r.device_id,
        br.height,
        br.index,
        r.epoch,
        r.seq,
        r.time_ms,
        r.sensor,
        r.value,
        r.tag,
        r.text,
        sr.private,
        sr.leaf_hash,
        "inclusion",
        br.header.header.key_id,
    )


__all__ = ["FleetRoots", "from_bundle", "trace_bundle", "write_bundle"]
