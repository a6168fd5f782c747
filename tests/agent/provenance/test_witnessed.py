"""`edgefleet trace --witnesses K` on the blood chain run by the real runner: each custodian's
checkpoints carry its domain peers' cosignatures (agent/gossip/witness.py), a trace requires K
and says whose it had; stripped, forged or forked checkpoints do not count.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance.gather import TraceSession
from ledger.checkpoint import Checkpoint, device_signer, parse_checkpoint
from ledger.cosignature import CosignatureVerifier
from ledger.note import Ed25519Verifier, Note, parse_note, sign_note
from ledger.store import Store
from ledger.tlogproof import parse_tlog_proof, verify_reading_proof
from tests.agent.provenance.conftest import Run

STATION = "freezer-station"
CUSTODIANS = ["freezer-hospital", "freezer-station", "freezer-van"]


def _bag(run: Run) -> str:
    for epc in sorted({m.epc for m in run.truth.movements}):
        if "appliance:freezer-hospital" in [m.dst for m in run.truth.moves(epc)]:
            return epc
    raise AssertionError("no bag reached the hospital")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(list(args))
    return status, capsys.readouterr().out


def _witnesses(
    capsys: pytest.CaptureFixture[str], data: Path, epc: str, k: int
) -> tuple[int, dict[str, Any]]:
    status, out = _cli(
        capsys, "trace", epc, "--data", str(data), "--witnesses", str(k), "--format", "json"
    )
    doc = json.loads(out)["witnesses"]
    return status, doc


def test_every_custodian_is_cosigned_by_its_two_domain_peers(
    blood: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    epc = _bag(blood)
    status, doc = _witnesses(capsys, blood.data, epc, 2)
    by_name = {c["name"]: c for c in doc["custodians"]}
    assert sorted(by_name) == CUSTODIANS
    for name, c in by_name.items():
        assert c["ok"] and c["checkpoint_size"] > c["height"], c
        assert sorted(w["name"] for w in c["cosigners"]) == sorted(
            n for n in CUSTODIANS if n != name
        ), c
        assert c["problems"] == []
    assert doc["ok"]  # (the exit status is the trace's: this bag had an excursion)
    # Each witness kept, durably, a state at least as far as what it cosigned for each log.
    dd = DataDir(blood.data)
    for name, c in by_name.items():
        for w in c["cosigners"]:
            with Store(dd.store_path(w["name"])) as store:
                states = {o: size for o, size, _ in store.witness_states()}
            mine = [size for o, size in states.items() if f"/{c['device_id']}/epoch/" in o]
            assert mine and mine[0] >= c["checkpoint_size"], (name, w, states)
    status, text = _cli(capsys, "trace", epc, "--data", str(blood.data), "--witnesses", "3")
    assert status == 1
    verdict = next(line for line in text.splitlines() if line.startswith("Witness verdict: "))
    assert verdict.startswith("Witness verdict: NOT MET (")
    assert all(name in verdict for name in CUSTODIANS), verdict
    assert text.count("(only 2 of 3)") == 3, text


def _copy(run: Run, tmp_path: Path) -> DataDir:
    shutil.copytree(run.data, tmp_path / "data")
    return DataDir(tmp_path / "data")


def _rewrite(dd: DataDir, name: str, change: object) -> None:
    with Store(dd.store_path(name)) as store:
        for origin, size, note in store.checkpoint_notes():
            new = change(parse_note(note))  # type: ignore[operator]
            store.put_checkpoint(origin, size, new)


def test_stripped_forged_and_forked_checkpoints_do_not_count(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epc = _bag(blood)
    dd = _copy(blood, tmp_path)

    # The van's notes lose their cosignatures: only the device's own signature is left.
    _rewrite(dd, "freezer-van", lambda n: Note(n.text, n.signatures[:1]).encode())

    # One of the hospital's cosignature bytes flipped: that checkpoint is refused.
    def flip(n: Note) -> bytes:
        raw = bytearray(n.encode())
        raw[-10] ^= 1
        return bytes(raw)

    _rewrite(dd, "freezer-hospital", flip)
    # The station signs checkpoints of another history (same sizes, other roots): a fork of its
    # own verified chain (no witness would cosign it: their lines are left out).
    pw = dd.fleet_passphrase()
    assert pw is not None
    station = keystore.load_device(dd.device(STATION), pw)

    def forked(n: Note) -> bytes:
        cp = parse_checkpoint(n.text)
        other = Checkpoint(cp.origin, cp.size, hashlib.sha256(b"other %d" % cp.size).digest())
        signed = sign_note(other.text(), device_signer(cp.origin, station.key))
        return signed.encode()

    _rewrite(dd, STATION, forked)

    status, doc = _witnesses(capsys, dd.root, epc, 1)
    assert status == 1 and not doc["ok"]
    by_name = {c["name"]: c for c in doc["custodians"]}
    assert by_name["freezer-van"]["cosigners"] == [] and by_name["freezer-van"]["problems"] == []
    assert by_name["freezer-hospital"]["cosigners"] == []
    assert any("signature" in p for p in by_name["freezer-hospital"]["problems"])
    assert by_name[STATION]["cosigners"] == []
    assert by_name[STATION]["problems"]
    assert all("not the verified chain's (a fork)" in p for p in by_name[STATION]["problems"])


def test_tlog_proofs_of_a_bags_readings_verify_and_tampering_fails(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epc = _bag(blood)
    out = tmp_path / "proofs"
    main(["trace", epc, "--data", str(blood.data), "--tlog-proof", str(out), "--format", "json"])
    err = capsys.readouterr().err
    files = sorted(out.glob("*.tlog-proof"))
    with TraceSession(DataDir(blood.data), blood.roots) as s:
        evidence = len(s.trace(epc).evidence)
    assert len(files) == evidence and f"{evidence} of {evidence} readings written" in err, err
    assert {f.name.rsplit("-h", 1)[0] for f in files} == set(CUSTODIANS)
    status, text = _cli(
        capsys, "verify-proof", *map(str, files), "--data", str(blood.data), "--witnesses", "2"
    )
    assert status == 0, text
    assert text.count(": OK: reading seq ") == len(files)
    # Each file is a C2SP tlog-proof: its checkpoint verifies with the keys of vkeys.txt alone.
    vkeys = (out / "vkeys.txt").read_text().split()
    logs = {v.split("+")[0]: Ed25519Verifier.from_vkey(v) for v in vkeys if "/epoch/" in v}
    witnesses = [
        CosignatureVerifier.from_vkey(v) for v in vkeys if v.split("+")[0].endswith("/witness")
    ]
    for f in files:
        proof = parse_tlog_proof(f.read_bytes())
        origin = proof.note.text.split("\n", 1)[0]
        others = [w for w in witnesses if w.public != logs[origin].public]  # not its own
        _, header, cosigned = verify_reading_proof(f.read_bytes(), logs[origin], others, 2)
        assert header.header.height == proof.index and len(cosigned.cosigners) == 2
        assert f.read_bytes().startswith(b"c2sp.org/tlog-proof@v1\nextra ")
    # Tampered: a byte of the extra data (the reading), and too many witnesses asked for.
    bad = tmp_path / "bad.tlog-proof"
    raw = bytearray(files[0].read_bytes())
    raw[40] = ord("A") if raw[40] != ord("A") else ord("B")
    bad.write_bytes(bytes(raw))
    status, text = _cli(capsys, "verify-proof", str(bad), "--data", str(blood.data))
    assert status == 1 and "does NOT verify" in text, text
    status, text = _cli(
        capsys, "verify-proof", str(files[0]), "--data", str(blood.data), "--witnesses", "3"
    )
    assert status == 1 and "does NOT verify" in text, text


def test_readings_no_checkpoint_covers_are_one_line_per_custodian_not_per_reading(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fleet run for less than a witnessing round (the README tour's `--speed max` day over a
    # broker: about 20 s of wall clock) has no checkpoints: each of the bag's 1,000-odd
    # readings was a line of its own on stderr.
    dd = _copy(blood, tmp_path)
    for name in CUSTODIANS:
        with sqlite3.connect(dd.store_path(name)) as db:
            db.execute("DELETE FROM checkpoints")
    epc = _bag(blood)
    out = tmp_path / "proofs"
    capsys.readouterr()
    main(["trace", epc, "--data", str(dd.root), "--tlog-proof", str(out), "--format", "json"])
    lines = capsys.readouterr().err.splitlines()
    with TraceSession(dd, blood.roots) as s:
        evidence = len(s.trace(epc).evidence)
    assert evidence > len(CUSTODIANS)
    missed = [line for line in lines if line.startswith("edgefleet: no .tlog-proof for ")]
    assert len(missed) == len(CUSTODIANS), lines
    counted = 0
    by_device = sorted(missed, key=lambda s: s.split(" of ")[1])
    for name, line in zip(sorted(CUSTODIANS), by_device, strict=True):
        assert f" reading(s) of {name} (heights " in line and "no kept checkpoint" in line, line
        counted += int(line.removeprefix("edgefleet: no .tlog-proof for ").split(" ")[0])
    assert counted == evidence
    assert any("every 30 s of the network clock" in line for line in lines), lines
    assert lines[-1] == f"tlog-proof: 0 of {evidence} readings written to {out}", lines
    assert list(out.glob("*.tlog-proof")) == []
