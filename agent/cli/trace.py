"""`edgefleet trace` and `edgefleet tags`: follow one tagged item, or list the tagged items.

``trace EPC --data DIR`` verifies every reading about the item against the fleet root and prints
its timeline and verdict (``--format text|json|epcis``), optionally writing an offline proof
bundle (``--bundle FILE``). ``trace --from-bundle FILE`` verifies such a bundle and recomputes the
same trace from it alone. ``tags --data DIR`` lists the items the data dir's tag indexes know.
Private readings are read only with ``--owner-key`` or ``--grant`` + ``--grantee-key``.
Exit status of ``trace``: 0 when the verdict is OK, 1 when it is not (FORKED, REVOKED,
ROTATED-AWAY or NOT OK) or when ``--witnesses K`` is not met (a custodian whose checkpoints
covering the item's readings carry fewer than K verified cosignatures of other devices;
agent/provenance/witnessed.py), 2 on a usage error. ``tags --kind`` keeps the items whose kind
(``gather.item_kind``: the kind most of the devices that saw it share) is that one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agent.cli.errors import CliError
from agent.cli.show import read_x25519_secret
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance import epcis, render
from agent.provenance.analysis import Trace
from agent.provenance.audit import default_root
from agent.provenance.bundles import trace_bundle, write_bundle
from agent.provenance.gather import TraceError, TraceSession
from agent.provenance.opening import Opening
from agent.provenance.proofs import export_proofs, verify_proof
from agent.provenance.rules import PRODUCTS
from agent.provenance.verified_chains import ChainUnavailable
from agent.provenance.witnessed import WitnessReport, witness_reports
from ledger.bundle import MAX_BUNDLE_BYTES, BundleError, verify_bundle
from ledger.certs import FleetRoots
from ledger.errors import LedgerError, UsageError
from ledger.private import open_grant
from ledger.tlogproof import MAX_PROOF_BYTES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("trace", help="follow a tagged item through the fleet, with a verdict")
    p.add_argument("epc", nargs="?", help="the item's EPC (e.g. urn:epc:id:giai:9501101.1250001)")
    p.add_argument("--data", type=Path, help="fleet data directory")
    p.add_argument(
        "--format", choices=("text", "json", "epcis"), default="text", help="output format"
    )
    p.add_argument("--bundle", type=Path, help="also write an offline proof bundle to FILE")
    p.add_argument("--from-bundle", type=Path, help="trace from a bundle file instead of --data")
    p.add_argument("--product", choices=sorted(PRODUCTS), help="judge by this product's limits")
    p.add_argument("--out", type=Path, help="write the output to FILE instead of stdout")
    p.add_argument(
        "--witnesses",
        type=_count,
        metavar="K",
        help="require K cosignatures (domain peers as C2SP witnesses) on a checkpoint of each "
        "custodian covering the item's readings, and say whose",
    )
    p.add_argument(
        "--tlog-proof",
        type=Path,
        metavar="DIR",
        help="also write a C2SP .tlog-proof file per reading (and vkeys.txt) into DIR",
    )
    _key_args(p)
    p.set_defaults(func=_trace)

    p = sub.add_parser(
        "verify-proof", help="verify .tlog-proof files of readings with a data dir's keys"
    )
    p.add_argument("files", nargs="+", type=Path, help=".tlog-proof files")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory (its keys)")
    p.add_argument("--witnesses", type=_count, default=0, metavar="K", help="require K cosigners")
    _key_args(p)
    p.set_defaults(func=_verify_proof)

    p = sub.add_parser("tags", help="list the tagged items a data dir knows about")
    p.add_argument("--data", required=True, type=Path, help="fleet data directory")
    p.add_argument("--kind", choices=("blood", "food", "garment"), help="only items of this kind")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _key_args(p)
    p.set_defaults(func=_tags)


def _count(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 32:
        raise argparse.ArgumentTypeError(f"expected a number of witnesses 0..32, found {text!r}")
    return int(text)


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, help="fleet-root.json to trust (default: the data dir's)")
    p.add_argument("--owner-key", type=Path, help="owner X25519 secret key file (private readings)")
    p.add_argument("--grant", type=Path, help="grant file (with --grantee-key)")
    p.add_argument("--grantee-key", type=Path, help="grantee X25519 secret key file")


def _opening(args: argparse.Namespace) -> Opening:
    if args.owner_key and (args.grant or args.grantee_key):
        raise CliError("give either --owner-key or --grant with --grantee-key, not both")
    if args.owner_key:
        return Opening.owner(read_x25519_secret(args.owner_key))
    if bool(args.grant) != bool(args.grantee_key):
        raise CliError("--grant and --grantee-key go together")
    if not args.grant:
        return Opening(None)
    try:
        blob = args.grant.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.grant}: cannot read ({exc.strerror})") from None
    try:
        return Opening.granted(open_grant(read_x25519_secret(args.grantee_key), blob))
    except LedgerError as exc:
        raise CliError(f"{args.grant}: {exc}") from None


def _roots(args: argparse.Namespace, data: DataDir | None) -> FleetRoots | None:
    path = args.root if args.root else (None if data is None else default_root(data))
    if path is None:
        return None
    try:
        return keystore.load_roots(path)
    except keystore.KeystoreError as exc:
        raise CliError(str(exc)) from None


def _session(args: argparse.Namespace) -> TraceSession:
    data = DataDir(args.data)
    if not data.devices.is_dir():  # before the fleet root: the directory is what is wrong
        raise CliError(f"{args.data}: not a fleet data dir (no devices/ directory)")
    roots = _roots(args, data)
    assert roots is not None
    try:
        session = TraceSession(data, roots, _opening(args))
    except TraceError as exc:
        raise CliError(str(exc)) from None
    for line in session.unreadable:
        print(f"edgefleet: left out, {line} (`edgefleet verify` checks it)", file=sys.stderr)
    return session


def _emit(args: argparse.Namespace, text: str) -> None:
    if args.out:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise CliError(f"{args.out}: cannot write ({exc.strerror})") from None
    else:
        sys.stdout.write(text)


def _render(
    args: argparse.Namespace, trace: Trace, witnesses: list[WitnessReport] | None = None
) -> None:
    if args.format == "json":
        doc = render.as_json(trace)
        if witnesses is not None:
            doc["witnesses"] = _witnesses_json(trace, witnesses, args.witnesses)
        _emit(args, json.dumps(doc, indent=2) + "\n")
    elif args.format == "epcis":
        doc = epcis.document(trace, created_ms=int(time.time() * 1000))
        _emit(args, json.dumps(doc, indent=2) + "\n")
        if witnesses is not None:
            sys.stderr.write(_witnesses_text(trace, witnesses, args.witnesses))
    else:
        text = render.as_text(trace)
        if witnesses is not None:
            text += _witnesses_text(trace, witnesses, args.witnesses)
        _emit(args, text)


def _witnesses_json(trace: Trace, reports: list[WitnessReport], k: int) -> dict[str, object]:
    return {
        "required": k,
        "ok": all(r.met(k) for r in reports),
        "custodians": [
            {
                "device_id": r.device_id,
                "name": trace.device_name(r.device_id),
                "epoch": r.epoch,
                "height": r.height,
                "checkpoint_size": r.size,
                "cosigners": [{"device_id": w, "name": trace.device_name(w)} for w in r.cosigners],
                "ok": r.met(k),
                "problems": list(r.problems),
            }
            for r in reports
        ],
    }


def _witnesses_text(trace: Trace, reports: list[WitnessReport], k: int) -> str:
    lines = ["", f"Witnesses (required: {k} per custodian)"]
    for r in reports:
        who = trace.device_name(r.device_id)
        if r.size is None:
            lines.append(f"  {who}: no checkpoint covers height {r.height} (epoch {r.epoch})")
        else:
            names = ", ".join(trace.device_name(w) for w in r.cosigners) or "nobody"
            mark = "ok" if r.met(k) else f"only {len(r.cosigners)} of {k}"
            lines.append(
                f"  {who}: checkpoint of size {r.size} (epoch {r.epoch}) covers height "
                f"{r.height}; cosigned by {names} ({mark})"
            )
        lines += [f"    refused: {p}" for p in r.problems]
    missing = [trace.device_name(r.device_id) for r in reports if not r.met(k)]
    verdict = "OK" if not missing else f"NOT MET ({', '.join(missing)})"
    lines.append(f"Witness verdict: {verdict}")
    return "\n".join(lines) + "\n"


def _trace(args: argparse.Namespace) -> int:
    if args.from_bundle:
        if args.data or args.bundle or args.witnesses is not None or args.tlog_proof:
            raise CliError(
                "--from-bundle reads the bundle alone: no --data, --bundle, --witnesses or "
                "--tlog-proof"
            )
        trace = _trace_bundle(args)
    else:
        if not args.data or not args.epc:
            raise CliError("give an EPC and --data DIR (or --from-bundle FILE)")
        witnesses = None
        with _session(args) as session:
            trace = session.trace(args.epc, product=args.product)
            if args.bundle:
                _write_bundle(args, session, trace)
            if args.witnesses is not None:
                witnesses = witness_reports(session, trace)
            if args.tlog_proof:
                _write_proofs(args, session, trace)
        _render(args, trace, witnesses)
        if witnesses is not None and not all(r.met(args.witnesses) for r in witnesses):
            return 1
        return 0 if trace.verdict.ok else 1
    _render(args, trace)
    return 0 if trace.verdict.ok else 1


def _write_bundle(args: argparse.Namespace, session: TraceSession, trace: Trace) -> None:
    if not trace.evidence:
        raise CliError(f"{trace.epc}: no verified reading to put in a bundle")
    try:
        blob = write_bundle(session, trace, created_ms=int(time.time() * 1000))
    except (LedgerError, UsageError) as exc:
        raise CliError(f"bundle: {exc}") from None
    try:
        args.bundle.write_bytes(blob)
    except OSError as exc:
        raise CliError(f"{args.bundle}: cannot write ({exc.strerror})") from None
    print(
        f"bundle: {args.bundle} ({len(blob)} bytes, {len(trace.evidence)} readings); "
        f"check it with: edgefleet verify-bundle {args.bundle}",
        file=sys.stderr,
    )


def _write_proofs(args: argparse.Namespace, session: TraceSession, trace: Trace) -> None:
    try:
        done = export_proofs(session, trace, args.tlog_proof)
    except OSError as exc:
        raise CliError(f"{args.tlog_proof}: cannot write ({exc.strerror})") from None
    written = [d for d in done if d.path is not None]
    # One line per device and reason, not per reading: a day's trace has thousands.
    missed: dict[tuple[str, str], list[int]] = {}
    for d in done:
        if d.path is None:
            missed.setdefault((d.device_id, d.why), []).append(d.height)
    for (device_id, why), heights in missed.items():
        print(
            f"edgefleet: no .tlog-proof for {len(heights)} reading(s) of "
            f"{trace.device_name(device_id)} (heights {min(heights)}..{max(heights)}): {why}",
            file=sys.stderr,
        )
    if any(why.startswith("no kept checkpoint") for _, why in missed):
        print(
            "edgefleet: devices offer their checkpoints to their witnesses every 30 s of the "
            "network clock (the wall clock over a broker, even at --speed max): run the fleet "
            "a minute or more first (docs/PROTOCOL.md 12.9)",
            file=sys.stderr,
        )
    summary = f"tlog-proof: {len(written)} of {len(done)} readings written to {args.tlog_proof}"
    if written:
        summary += (
            f" (verifier keys in {args.tlog_proof / 'vkeys.txt'}); check them with: edgefleet "
            f"verify-proof {args.tlog_proof}/*.tlog-proof --data {args.data}"
        )
    print(summary, file=sys.stderr)


def _verify_proof(args: argparse.Namespace) -> int:
    failed = 0
    with _session(args) as session:
        for path in args.files:
            try:
                with path.open("rb") as f:
                    data = f.read(MAX_PROOF_BYTES + 1)
            except OSError as exc:
                raise CliError(f"{path}: cannot read ({exc.strerror})") from None
            try:
                check = verify_proof(session, data, args.witnesses)
            except (LedgerError, ChainUnavailable) as exc:
                print(f"{path}: does NOT verify: {exc}")
                failed += 1
                continue
            r = check.reading.reading
            who = ", ".join(
                session.devices[w].name if w in session.devices else w for w in check.cosigners
            )
            name = session.devices[check.device_id].name
            print(
                f"{path}: OK: reading seq {r.seq} of {name} at height {check.height}, in its "
                f"checkpoint of size {check.checkpoint_size} cosigned by {who or 'nobody'}"
            )
    return 1 if failed else 0


def _trace_bundle(args: argparse.Namespace) -> Trace:
    try:
        with args.from_bundle.open("rb") as f:
            blob = f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"{args.from_bundle}: cannot read ({exc.strerror})") from None
    roots = _roots(args, None)
    try:
        verified = verify_bundle(blob, roots=roots)
    except BundleError as exc:
        raise CliError(f"{args.from_bundle}: does not verify: {exc}") from None
    if roots is None:
        print(
            f"bundle fleet root {verified.root_key_id.hex()} (the bundle's own; pass --root to "
            "require yours)",
            file=sys.stderr,
        )
    if args.epc and args.epc != verified.subject:
        raise CliError(
            f"{args.from_bundle}: the bundle is about {verified.subject}, not {args.epc}"
        )
    return trace_bundle(verified, _opening(args), product=args.product)


_KINDS = {"blood": "medical_freezer", "food": "refrigerator", "garment": "washing_machine"}


def _tags(args: argparse.Namespace) -> int:
    with _session(args) as session:
        rows = session.tags()
        names = {d: i.name for d, i in session.devices.items()}
        keyless = not (args.owner_key or args.grant)
        # Without a key the tags of private devices are sealed: an empty or short list must say
        # so, or "no tagged readings" reads as "no items" (a household's food is all private).
        sealed = sorted(
            i.name
            for i in session.devices.values()
            if keyless and i.private and (not args.kind or i.kind == _KINDS[args.kind])
        )
    if args.kind:
        rows = [r for r in rows if r.kind == _KINDS[args.kind]]
    if args.json:
        print(
            json.dumps({"tags": render.tags_json(rows, names), "sealed_devices": sealed}, indent=2)
        )
    else:
        sys.stdout.write(render.tags_text(rows, names))
    if sealed:
        print(
            f"edgefleet: {len(sealed)} private device(s) ({', '.join(sealed)}) seal their "
            "readings, tags included, to their owners: private readings need --owner-key FILE "
            "(or --grant FILE --grantee-key FILE) to be listed",
            file=sys.stderr,
        )
    return 0
