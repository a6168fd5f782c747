"""Traces across the command line's key lifecycle: a bag whose custody crosses a rotation made
with `edgefleet keys rotate` stays OK (online and from its bundle, which carries the rotation);
after `edgefleet keys revoke`, the same trace says REVOKED, names the revocation, and its bundle
carries it so that the offline verifier says the same. test_keyflags.py covers the flags
themselves on hand-made credentials; this file drives them through the commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet.datadir import DataDir
from agent.provenance.gather import TraceSession
from ledger.bundle import verify_bundle
from ledger.certs import decode_rotation
from tests.agent.provenance import fleets
from tests.agent.provenance.conftest import Run

STATION = "freezer-station"
FIRST_MS = 34 * fleets.HOUR_MS  # the station's key is rotated here (bags 3-5 are in it)
TOTAL_MS = 40 * fleets.HOUR_MS


@pytest.fixture(scope="module")
def rotated(fast_base: Path) -> tuple[Run, int]:
    """The blood chain run to 34 h, the station's freezer rotated with `keys rotate`, then run on
    to 40 h. Returns the run and the rotation's effective height."""
    base = fast_base / "lifecycle"
    cfg = fleets.write(base, fleets.BLOOD)
    data = base / "data"
    fleets.run(cfg, data, FIRST_MS)
    assert main(["keys", "rotate", "--dir", str(data / "devices" / STATION)]) == 0
    rot = decode_rotation((data / "devices" / STATION / "rotations" / "0001.rot").read_bytes())
    fleets.run(cfg, data, TOTAL_MS - FIRST_MS)
    return Run(cfg, data, TOTAL_MS, fleets.truth(cfg, TOTAL_MS)), rot.effective_height


def _crossing(run: Run, effective: int) -> list[tuple[str, int]]:
    """Bags with station readings on both sides of the rotation: (epc, highest station height)."""
    out = []
    with run.session() as s:
        for epc in sorted({m.epc for m in run.truth.movements}):
            t = s.trace(epc)
            heights = [e.height for e in t.evidence if e.device_id == _station_id(run)]
            if heights and min(heights) < effective <= max(heights):
                out.append((epc, max(heights)))
    return out


def _station_id(run: Run) -> str:
    ids: dict[str, str] = json.loads((run.data / "fleet.json").read_text())["devices"]
    return ids[STATION]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().out


def test_custody_across_a_rotation_stays_ok_and_a_revocation_turns_it(
    rotated: tuple[Run, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, effective = rotated
    crossing = _crossing(run, effective)
    assert crossing, "no bag was at the station across the rotation"
    epc, top = crossing[0]
    data = str(run.data)
    with TraceSession(DataDir(run.data), run.roots) as s:
        t = s.trace(epc)
    assert t.verdict.ok and t.verdict.word == "OK" and not t.flagged, t.verdict.problems
    signed = {e.key_id for e in t.evidence if e.device_id == _station_id(run)}
    assert len(signed) == 2, "readings under the old key and the new one"

    bundle = tmp_path / "rotated.bundle"
    status, _ = _cli(capsys, "trace", epc, "--data", data, "--bundle", str(bundle))
    assert status == 0
    vb = verify_bundle(bundle.read_bytes(), roots=run.roots)
    assert not vb.flags
    status, out = _cli(capsys, "verify-bundle", str(bundle), "--json")
    assert status == 0 and json.loads(out)["verdict"] == "OK"

    # The authority revokes the station from its last height of this bag's custody.
    status, out = _cli(
        capsys,
        "keys",
        "revoke",
        "--authority",
        str(run.data / "authority"),
        "--device",
        STATION,
        "--reason",
        "key-compromise",
        "--from-height",
        str(top),
        "--data",
        data,
    )
    assert status == 0, out
    with TraceSession(DataDir(run.data), run.roots) as s:
        t = s.trace(epc)
    assert (t.verdict.ok, t.verdict.word) == (False, "REVOKED")
    (fl,) = t.flagged
    assert (fl.flag.kind, fl.flag.height, fl.flag.reason) == ("revoked", top, "key-compromise")
    revoked = tmp_path / "revoked.bundle"
    status, _ = _cli(capsys, "trace", epc, "--data", data, "--bundle", str(revoked))
    assert status == 1
    status, out = _cli(capsys, "verify-bundle", str(revoked), "--json")
    summary = json.loads(out)
    assert status == 1 and summary["verdict"] == "REVOKED"
    assert [(f["kind"], f["height"]) for f in summary["flags"]] == [("revoked", top)]
