"""Traces that know about forks, revocations and rotated-away keys (docs/PROVENANCE.md, rule 6).

The blood chain of ``fleets.BLOOD`` is run once; each test copies its data dir and does to it
what a compromised or misbehaving device would leave behind: the station's freezer signs a
second header at its head's height (fork evidence, held by the hospital's store as gossip would
keep it), the fleet authority revokes the station's freezer from some height, or rotates it to a
new key while its old key goes on signing (the credential in the hospital's store). The trace
must flag the bags whose custody passes through that key and name the evidence, and the bundle
must carry it so that the offline verifier reaches the same verdict; evidence flipped in the
bundle is refused, evidence stripped is no longer seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import pytest

from agent.cli.main import main
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance.analysis import Trace
from agent.provenance.gather import TraceSession
from ledger.block import SignedHeader, sign_header
from ledger.bundle import verify_bundle
from ledger.certs import countersign_rotation, sign_revocation, sign_rotation
from ledger.evidence import make_evidence
from ledger.identity import SigningKey
from ledger.store import Store
from tests.agent.provenance.conftest import Run

STATION = "freezer-station"
DIGEST_DOMAIN = b"edgefleet/v1/bundle-digest\x00"
EPCIS_SCHEMA = Path("/work/shared/reference/epcis/EPCIS-JSON-Schema.json")


def _bags(run: Run) -> tuple[list[str], list[str]]:
    """(bags that went on to the hospital, bags still at the station at the end)."""
    went, stayed = [], []
    for epc in sorted({m.epc for m in run.truth.movements}):
        places = [m.dst for m in run.truth.moves(epc)]
        if "appliance:freezer-hospital" in places:
            went.append(epc)
        elif places[-1] == f"appliance:{STATION}":
            stayed.append(epc)
    assert went and stayed, (went, stayed)
    return went, stayed


def _copy(run: Run, tmp_path: Path) -> DataDir:
    shutil.copytree(run.data, tmp_path / "data")
    return DataDir(tmp_path / "data")


def _station(dd: DataDir) -> keystore.Enrolled:
    pw = dd.fleet_passphrase()
    assert pw is not None
    return keystore.load_device(dd.device(STATION), pw)


def _fork(dd: DataDir) -> tuple[SignedHeader, SignedHeader, bytes]:
    """The station's freezer signs a second header at its head's height; the hospital's store
    keeps the fork evidence. Returns the two headers (smaller hash first) and the evidence."""
    enrolled = _station(dd)
    with Store(dd.store_path(STATION)) as own:
        head = own.head()
    assert head is not None
    other = dataclasses.replace(head.header, merkle_root=hashlib.sha256(b"other").digest())
    forged = sign_header(other, enrolled.key)
    evidence = make_evidence(enrolled.certificate.wire, (), head, forged)
    with Store(dd.store_path("freezer-hospital")) as hospital:
        assert hospital.put_evidence(enrolled.certificate.device_id, evidence.encode())
    return evidence.a, evidence.b, evidence.encode()


def _revoke(dd: DataDir, from_height: int) -> str:
    pw = dd.fleet_passphrase()
    assert pw is not None
    authority = keystore.load_authority(dd.authority, pw)
    device_id = _station(dd).certificate.device_id
    wire = sign_revocation(authority, device_id, None, from_height, "key-compromise", 1)
    with Store(dd.store_path("freezer-hospital")) as hospital:
        hospital.put_credential(device_id, "revocation", wire)
    return device_id


def _trace(dd: DataDir, run: Run, epc: str) -> Trace:
    with TraceSession(dd, run.roots) as s:
        return s.trace(epc)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().out


def _reseal(data: bytes) -> bytes:
    """A bundle's digest recomputed, as anyone can after changing its bytes."""
    prefix = data[:-34]
    digest = hashlib.sha256(DIGEST_DOMAIN + prefix).digest()
    return prefix + msgpack.packb(digest, use_bin_type=True)


def test_a_fork_of_a_device_that_held_the_bag_turns_the_verdict_everywhere(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dd = _copy(blood, tmp_path)
    _, stayed = _bags(blood)
    epc = stayed[0]
    assert _trace(dd, blood, epc).verdict.word == "OK"
    a, b, _ = _fork(dd)

    t = _trace(dd, blood, epc)
    assert (t.verdict.ok, t.verdict.word) == (False, "FORKED")
    (fl,) = t.flagged
    assert (fl.flag.kind, fl.flag.device_id, fl.flag.height, fl.flag.hashes) == (
        "forked",
        a.header.device_id,
        a.header.height,
        (a.hash, b.hash),
    )
    assert {e.device_id for e in fl.readings} == {a.header.device_id}
    assert set(fl.readings) == {e for e in t.evidence if e.device_id == a.header.device_id}
    (problem,) = t.verdict.problems
    assert problem.startswith(f"FORKED: {STATION}: device {a.header.device_id} forked")
    assert f"height {a.header.height} ({a.hash.hex()} and {b.hash.hex()})" in problem

    # Text, JSON and EPCIS carry the word; the CLI fails as for any verdict that is not OK.
    data = str(dd.root)
    status, out = _cli(capsys, "trace", epc, "--data", data)
    assert status == 1 and "Verdict: FORKED" in out and "[FORKED]" in out
    status, out = _cli(capsys, "trace", epc, "--data", data, "--format", "json")
    doc = json.loads(out)
    assert status == 1 and doc["verdict"]["word"] == "FORKED"
    (flag,) = doc["verdict"]["flags"]
    assert flag["header_hashes"] == [a.hash.hex(), b.hash.hex()] and flag["device"] == STATION
    assert all(e["reading"]["flags"] == ["FORKED"] for e in doc["timeline"])
    status, out = _cli(capsys, "trace", epc, "--data", data, "--format", "epcis")
    epc_doc = json.loads(out)
    assert status == 1 and epc_doc["edgefleet:verdict"] == "FORKED"
    assert all(ev["edgefleet:keyFlags"] == ["FORKED"] for ev in epc_doc["epcisBody"]["eventList"])
    schema = json.loads(EPCIS_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(epc_doc)] == []

    # The bundle carries the evidence: offline, the same verdict.
    bundle = tmp_path / "bag.bundle"
    assert main(["trace", epc, "--data", data, "--bundle", str(bundle)]) == 1
    capsys.readouterr()
    vb = verify_bundle(bundle.read_bytes(), roots=blood.roots)
    assert vb.format == 2 and [f.hashes for f in vb.flags] == [(a.hash, b.hash)]
    status, out = _cli(capsys, "verify-bundle", str(bundle))
    assert status == 1 and "verdict:     FORKED" in out and a.hash.hex() in out
    root = str(dd.authority / "fleet-root.json")
    status, out = _cli(
        capsys, "trace", "--from-bundle", str(bundle), "--root", root, "--format", "json"
    )
    remote = json.loads(out)
    assert status == 1 and remote["verdict"]["word"] == "FORKED"
    strip = ("device",)  # a bundle names devices by id
    assert [{k: v for k, v in f.items() if k not in strip} for f in remote["verdict"]["flags"]] == [
        {k: v for k, v in f.items() if k not in strip} for f in doc["verdict"]["flags"]
    ]


def test_fork_evidence_flipped_in_the_bundle_is_refused_and_stripped_is_not_seen(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dd = _copy(blood, tmp_path)
    epc = _bags(blood)[1][0]
    _, _, evidence = _fork(dd)
    bundle = tmp_path / "bag.bundle"
    assert main(["trace", epc, "--data", str(dd.root), "--bundle", str(bundle)]) == 1
    capsys.readouterr()
    data = bundle.read_bytes()
    start = data.index(evidence)
    for pos in range(start, start + len(evidence), 97):
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        bad = tmp_path / f"flipped-{pos}.bundle"
        bad.write_bytes(_reseal(bytes(flipped)))
        status, out = _cli(capsys, "verify-bundle", str(bad))
        assert status == 1 and "does NOT verify" in out, out

    # Strip the evidence (format 2, every device's fork list emptied, digest recomputed): the
    # verifier cannot know what is not there, and says only what it can show.
    top = msgpack.unpackb(data, raw=False)
    devices = []
    for raw in top[5]:
        entry = msgpack.unpackb(raw, raw=False)
        entry[5] = []
        devices.append(msgpack.packb(entry, use_bin_type=True))
    top[5] = devices
    stripped = tmp_path / "stripped.bundle"
    stripped.write_bytes(_reseal(msgpack.packb(top, use_bin_type=True)))
    status, out = _cli(capsys, "verify-bundle", str(stripped))
    assert status == 0 and "verdict:     OK" in out
    assert "carries no fork evidence" in out and "cannot show" in out
    status, out = _cli(capsys, "trace", "--from-bundle", str(stripped))
    assert status == 0 and "Verdict: OK" in out
    assert "note: key flags as far as this bundle shows: it carries 0 fork evidence" in out
    assert "cannot be seen offline" in out


def test_readings_after_a_revocation_are_flagged_and_readings_before_it_stay_ok(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dd = _copy(blood, tmp_path)
    went, stayed = _bags(blood)
    before = {epc: _trace(dd, blood, epc) for epc in went}
    epc = stayed[0]
    arrival = next(e for e in _trace(dd, blood, epc).timeline if e.event == "arrived")
    cut = arrival.evidence.height + 1
    device_id = _revoke(dd, cut)

    t = _trace(dd, blood, epc)
    assert (t.verdict.ok, t.verdict.word) == (False, "REVOKED")
    (fl,) = t.flagged
    assert (fl.flag.kind, fl.flag.height, fl.flag.reason) == ("revoked", cut, "key-compromise")
    station = [e for e in t.evidence if e.device_id == device_id]
    assert set(fl.readings) == {e for e in station if e.height >= cut}
    assert not t.flags_of(arrival.evidence)  # signed before the revocation: still good
    assert "revoked from height" in t.verdict.problems[0]
    assert "(reason: key-compromise)" in t.verdict.problems[0]

    # Bags whose station readings are all below the revocation height: nothing changes.
    for other, was in before.items():
        now = _trace(dd, blood, other)
        assert now.verdict == was.verdict and not now.flagged, other
        assert not now.unverified

    bundle = tmp_path / "bag.bundle"
    status, _ = _cli(capsys, "trace", epc, "--data", str(dd.root), "--bundle", str(bundle))
    assert status == 1
    status, out = _cli(capsys, "verify-bundle", str(bundle), "--json")
    summary: dict[str, Any] = json.loads(out)
    assert status == 1 and summary["verdict"] == "REVOKED"
    assert [(f["kind"], f["height"], f["reason"]) for f in summary["flags"]] == [
        ("revoked", cut, "key-compromise")
    ]
    status, out = _cli(capsys, "trace", "--from-bundle", str(bundle))
    assert status == 1 and "Verdict: REVOKED" in out


def test_readings_signed_by_a_key_rotated_away_are_flagged(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The authority rotates the station's freezer to a new key at some height, but the freezer
    (or whoever holds its old key) goes on signing with the old one."""
    dd = _copy(blood, tmp_path)
    epc = _bags(blood)[1][0]
    arrival = next(e for e in _trace(dd, blood, epc).timeline if e.event == "arrived")
    cut = arrival.evidence.height + 1
    pw = dd.fleet_passphrase()
    assert pw is not None
    authority = keystore.load_authority(dd.authority, pw)
    station = _station(dd)
    device_id = station.certificate.device_id
    half = sign_rotation(
        device_id, station.key, SigningKey.generate().public, cut, 1, authority.key_id
    )
    with Store(dd.store_path("freezer-hospital")) as hospital:
        hospital.put_credential(device_id, "rotation", countersign_rotation(half, authority))

    t = _trace(dd, blood, epc)
    assert (t.verdict.ok, t.verdict.word) == (False, "ROTATED-AWAY")
    (fl,) = t.flagged
    assert (fl.flag.kind, fl.flag.key_id, fl.flag.height) == (
        "rotated-away",
        station.key.key_id,
        cut,
    )
    assert set(fl.readings) == {e for e in t.evidence if e.height >= cut}
    assert not t.flags_of(arrival.evidence) and not t.unverified

    bundle = tmp_path / "bag.bundle"
    status, _ = _cli(capsys, "trace", epc, "--data", str(dd.root), "--bundle", str(bundle))
    assert status == 1
    status, out = _cli(capsys, "verify-bundle", str(bundle))
    assert status == 1 and "verdict:     ROTATED-AWAY" in out


def test_a_fork_the_stores_show_without_evidence_is_found_by_the_trace(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hospital's store holds, as a peer header of the station's freezer, the other branch's
    header at the station's head height, and no fork evidence: the trace makes the evidence
    from the two signed headers itself, and the bundle carries it."""
    dd = _copy(blood, tmp_path)
    epc = _bags(blood)[1][0]
    enrolled = _station(dd)
    device_id = enrolled.certificate.device_id
    with Store(dd.store_path(STATION)) as own:
        head = own.head()
    assert head is not None
    other = dataclasses.replace(head.header, merkle_root=hashlib.sha256(b"other").digest())
    forged = sign_header(other, enrolled.key)
    db = sqlite3.connect(dd.store_path("freezer-hospital"))
    try:
        db.execute(
            "INSERT OR REPLACE INTO peer_headers VALUES (?, ?, ?, ?, ?)",
            (device_id, head.header.height, head.header.epoch, forged.hash, forged.wire),
        )
        db.commit()
    finally:
        db.close()
    with Store(dd.store_path("freezer-hospital")) as hospital:
        assert hospital.evidence(device_id) == []

    t = _trace(dd, blood, epc)
    assert t.verdict.word == "FORKED"
    (fl,) = t.flagged
    assert fl.flag.hashes == tuple(sorted((head.hash, forged.hash)))
    assert fl.flag.wire == make_evidence(enrolled.certificate.wire, (), head, forged).encode()

    bundle = tmp_path / "bag.bundle"
    status, _ = _cli(capsys, "trace", epc, "--data", str(dd.root), "--bundle", str(bundle))
    assert status == 1
    status, out = _cli(capsys, "verify-bundle", str(bundle))
    assert status == 1 and "verdict:     FORKED" in out and forged.hash.hex() in out
