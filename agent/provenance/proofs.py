"""C2SP ``.tlog-proof`` files of an item's readings (`edgefleet trace --tlog-proof DIR`) and their
verification against a data dir (`edgefleet verify-proof FILE... --data DIR`).

Export: for each reading the trace used whose device's own store is in the data dir, the file
``ledger.tlogproof.export_reading_proof`` writes: the reading and its header in the extra data,
the inclusion path of the header in the device's log, and the device's own checkpoint note
(docs/PROTOCOL.md 16.2, 16.4) with the cosignatures its witnesses returned (12.9): of the
checkpoints kept for the reading's epoch that cover its block, the one with the most
cosignatures, then the smallest. ``vkeys.txt`` beside them lists the C2SP verifier keys (the
devices' logs and every witness) for tools that know nothing of edgefleet.

Verify: the log key (the device's key in force at the checkpoint's last height) and the
witnesses' keys come from the data dir's verified credentials; the proof must verify with at
least ``quorum`` cosignatures, and the header's and reading's own signatures under the key in
force at the header's height (which the proof itself does not vouch for).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.provenance.analysis import Trace
from agent.provenance.gather import TraceSession
from agent.provenance.verified_chains import ChainUnavailable
from agent.provenance.witnessed import witness_verifiers
from ledger.checkpoint import device_origin, device_verifier, fleet_label, parse_device_origin
from ledger.cosignature import CosignedCheckpoint, verify_cosigned
from ledger.errors import LedgerError, UsageError, VerificationError
from ledger.note import parse_note
from ledger.reading import SignedReading
from ledger.tlogproof import export_reading_proof, parse_tlog_proof, verify_reading_proof

__all__ = ["Exported", "ProofCheck", "export_proofs", "verify_proof"]


@dataclass(frozen=True, slots=True)
class Exported:
    path: Path | None  # None: not exported (``why`` says why)
    device_id: str
    height: int
    index: int
    checkpoint_size: int | None
    cosigners: int
    why: str = ""


def export_proofs(session: TraceSession, trace: Trace, directory: Path) -> list[Exported]:
    """Write one ``.tlog-proof`` per verified reading of the trace, and ``vkeys.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    witnesses = witness_verifiers(session)
    out: list[Exported] = []
    vkeys: set[str] = set()
    for e in sorted(trace.evidence, key=lambda e: (e.device_id, e.height, e.index)):
        store = session.own_store(e.device_id)
        if store is None:
            out.append(Exported(None, e.device_id, e.height, e.index, None, 0, "no own store"))
            continue
        try:
            keys = session.keys(e.device_id)
        except ChainUnavailable as exc:
            out.append(Exported(None, e.device_id, e.height, e.index, None, 0, str(exc)))
            continue
        root = session.roots.keys.get(keys.certificate.authority_key_id)
        if root is None:
            continue
        origin = device_origin(fleet_label(root), e.device_id, e.epoch)
        others = [v for w, (_, v) in witnesses.items() if w != e.device_id]
        best: tuple[int, int, bytes, CosignedCheckpoint] | None = None
        for _, size, note in store.checkpoint_notes(origin):
            if size <= e.height:
                continue
            try:
                log = device_verifier(origin, keys.key_at(size - 1))
                cosigned = verify_cosigned(note, log, others, 0)
            except LedgerError:
                continue
            rank = (len(cosigned.cosigners), -size)
            if best is None or rank > best[:2]:
                best = (rank[0], rank[1], note, cosigned)
        if best is None:
            why = f"no kept checkpoint of {origin} covers their blocks yet"
            out.append(Exported(None, e.device_id, e.height, e.index, None, 0, why))
            continue
        count, _, note, cosigned = best
        try:
            data = export_reading_proof(store, e.height, e.index, parse_note(note))
        except (LedgerError, UsageError) as exc:
            out.append(Exported(None, e.device_id, e.height, e.index, None, 0, str(exc)))
            continue
        name = trace.device_name(e.device_id)
        path = directory / f"{name}-h{e.height}-r{e.index}.tlog-proof"
        path.write_bytes(data)
        vkeys.add(device_verifier(origin, keys.key_at(cosigned.checkpoint.size - 1)).vkey())
        vkeys.update(v.vkey() for v in others)
        size = cosigned.checkpoint.size
        out.append(Exported(path, e.device_id, e.height, e.index, size, count))
    if vkeys:
        (directory / "vkeys.txt").write_text("".join(v + "\n" for v in sorted(vkeys)))
    return out


@dataclass(frozen=True, slots=True)
class ProofCheck:
    device_id: str
    height: int
    reading: SignedReading
    checkpoint_size: int
    cosigners: tuple[str, ...]  # witness device ids


def verify_proof(session: TraceSession, data: bytes, quorum: int = 0) -> ProofCheck:
    """Verify a reading's ``.tlog-proof`` with keys from the data dir. Raises LedgerError (or
    ChainUnavailable for a device whose credentials the data dir lacks)."""
    proof = parse_tlog_proof(data)
    origin = proof.note.text.split("\n", 1)[0]
    log = parse_device_origin(origin)
    keys = session.keys(log.device_id)
    size_line = proof.note.text.split("\n", 2)[1]
    size = int(size_line) if size_line.isdigit() else 0
    if size < 1:
        raise VerificationError("tlog proof: checkpoint size", ">= 1", size_line)
    witnesses = witness_verifiers(session)
    others = {v.name: w for w, (_, v) in witnesses.items() if w != log.device_id}
    log_key = device_verifier(origin, keys.key_at(size - 1))
    verifiers = [v for w, (_, v) in witnesses.items() if w != log.device_id]
    reading, header, cosigned = verify_reading_proof(data, log_key, verifiers, quorum)
    h = header.header
    header_key = keys.key_for(h.key_id, h.height)
    header.verify(header_key)
    reading.verify(header_key)
    ids = tuple(sorted(others[n] for n, _ in cosigned.cosigners))
    return ProofCheck(log.device_id, h.height, reading, size, ids)
