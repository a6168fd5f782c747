"""The blood chain end to end: custody, gaps and a power-cut excursion, against the world's truth.

The fleet (``fleets.BLOOD``) is run by the real runner; the expected figures come from running
the same devices.yaml through ``firmware_sim`` alone: the world's movements give arrival and
departure times, the van's model gives its excursion (start, duration, peak) to the millisecond.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet.datadir import DataDir
from agent.provenance.gather import TraceSession
from ledger.bundle import verify_bundle
from ledger.reading import decode_reading
from tests.agent.provenance.conftest import Run

MIN_MS = 60_000


def _route_bags(run: Run) -> list[str]:
    """Bags the world moved station -> van -> hospital within the run."""
    out = []
    for epc in sorted({m.epc for m in run.truth.movements}):
        places = [m.dst for m in run.truth.moves(epc)]
        if "appliance:freezer-hospital" in places:
            out.append(epc)
    return out


def test_every_bag_that_reached_the_hospital_has_continuous_custody_and_the_worlds_gaps(
    blood: Run, session: TraceSession
) -> None:
    bags = _route_bags(blood)
    assert len(bags) >= 2, f"the run moved only {bags} to the hospital"
    for epc in bags:
        t = session.trace(epc)
        moves = blood.truth.moves(epc)
        into = [m for m in moves if m.dst.startswith("appliance:")]
        out_of = [m for m in moves if m.src.startswith("appliance:")]
        assert t.verdict.custody == "continuous", (epc, t.verdict.problems)
        assert [t.device_name(s.stay.device_id) for s in t.stays] == [
            "freezer-station",
            "freezer-van",
            "freezer-hospital",
        ]
        assert [s.stay.start_ms for s in t.stays] == [m.time_ms for m in into]
        assert [s.stay.left.time_ms for s in t.stays if s.stay.left] == [m.time_ms for m in out_of]
        assert [g.duration_ms for g in t.gaps] == [15 * MIN_MS, 20 * MIN_MS]
        assert not any(g.over_limit for g in t.gaps)
        assert t.verdict.out_of_cold_ms == 35 * MIN_MS
        assert t.product.name == "plasma" and t.name == "plasma unit"
        assert not t.unverified


def test_the_power_cut_in_the_van_is_one_excursion_with_the_models_start_duration_and_peak(
    blood: Run, session: TraceSession
) -> None:
    ((start, duration, peak),) = blood.truth.excursions["freezer-van"]
    for epc in _route_bags(blood):
        t = session.trace(epc)
        (x,) = t.excursions
        assert (t.device_name(x.device_id), x.direction, x.limit_mc) == (
            "freezer-van",
            "above",
            -25_000,
        )
        assert (x.start_ms, x.duration_ms, x.end_ms, x.peak_mc) == (
            start,
            duration,
            start + duration,
            peak,
        )
        assert x.basis == "device" and x.ongoing is None
        van = next(s for s in t.stays if t.device_name(s.stay.device_id) == "freezer-van")
        assert van.stay.start_ms is not None and van.stay.stop_ms is not None
        beyond = [
            v
            for _, v in blood.truth.temps(
                "freezer-van", "cabinet.temp_mc", van.stay.start_ms, van.stay.stop_ms
            )
            if v > -25_000
        ]
        assert x.readings_beyond == len(beyond) > 0
        assert max(beyond) <= peak, "a sampled reading above the model's true peak"
        assert not t.verdict.ok
        assert t.verdict.problems == (
            f"excursion above -25.0 C at freezer-van from {_iso(start)} for "
            f"{_fmt(duration)}, peak {peak / 1000:.1f} C",
        )
        events = [(e.event, t.device_name(e.device_id)) for e in t.timeline if e.about_item]
        assert ("alarm", "freezer-van") in events  # the van's bag.excursion for this bag


def _iso(ms: int) -> str:
    from agent.provenance.rules import iso

    return iso(ms)


def _fmt(ms: int) -> str:
    from agent.provenance.rules import fmt_ms

    return fmt_ms(ms)


def test_a_bag_still_at_the_station_is_ok_and_the_cli_says_so_with_its_exit_status(
    blood: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    at_station = [
        epc
        for epc in sorted({m.epc for m in blood.truth.movements})
        if [m.dst for m in blood.truth.moves(epc)][-1] == "appliance:freezer-station"
    ]
    assert at_station, "no bag was donated on the second day"
    status = main(["trace", at_station[0], "--data", str(blood.data), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert doc["verdict"]["ok"] is True and doc["verdict"]["custody"] == "continuous"
    assert doc["verdict"]["final"].startswith("inside freezer-station since")
    assert [s["device"] for s in doc["stays"]] == ["freezer-station"]

    hot = _route_bags(blood)[0]
    assert main(["trace", hot, "--data", str(blood.data)]) == 1
    out = capsys.readouterr().out
    assert "Verdict: NOT OK" in out and "freezer-van: above -25.0 C" in out


def test_tags_lists_every_bag_with_its_last_event(
    blood: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tags", "--data", str(blood.data), "--json", "--kind", "blood"]) == 0
    rows = {r["tag"]: r for r in json.loads(capsys.readouterr().out)["tags"]}
    epcs = {m.epc for m in blood.truth.movements}
    assert set(rows) == epcs
    for epc in epcs:
        last = blood.truth.moves(epc)[-1]
        device = (last.dst if last.dst.startswith("appliance:") else last.src).split(":", 1)[1]
        event = "arrived" if last.dst.startswith("appliance:") else "left"
        assert (rows[epc]["last_event"], rows[epc]["last_device"]) == (event, device), epc
        assert rows[epc]["name"] == "plasma unit"
    assert main(["tags", "--data", str(blood.data), "--json", "--kind", "food"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == []


def test_a_bundle_verifies_offline_and_gives_the_same_verdict(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epc = _route_bags(blood)[0]
    bundle = tmp_path / "bag.bundle"
    assert (
        main(["trace", epc, "--data", str(blood.data), "--format", "json", "--bundle", str(bundle)])
        == 1
    )
    local = json.loads(capsys.readouterr().out)
    verified = verify_bundle(bundle.read_bytes(), roots=blood.roots)
    assert verified.subject == epc
    assert len(verified.readings) == local["evidence"]
    root = str(blood.data / "authority" / "fleet-root.json")
    assert main(["trace", "--from-bundle", str(bundle), "--root", root, "--format", "json"]) == 1
    remote = json.loads(capsys.readouterr().out)
    for key in ("ok", "custody", "out_of_cold_ms"):
        assert remote["verdict"][key] == local["verdict"][key]
    strip = ("device",)
    for section in ("gaps", "excursions"):
        mine = [
            {k: v for k, v in x.items() if k not in (*strip, "from", "to")} for x in local[section]
        ]
        theirs = [
            {k: v for k, v in x.items() if k not in (*strip, "from", "to")} for x in remote[section]
        ]
        assert mine == theirs, section
    assert [e["reading"]["leaf_hash"] for e in remote["timeline"]] == [
        e["reading"]["leaf_hash"] for e in local["timeline"]
    ]


def test_a_reading_altered_on_disk_is_replaced_by_a_replica_or_left_out(
    blood: Run, tmp_path: Path
) -> None:
    epc = _route_bags(blood)[0]
    data = tmp_path / "data"
    shutil.copytree(blood.data, data)
    dd = DataDir(data)
    forged: dict[bytes, bytes] = {}
    db = sqlite3.connect(dd.store_path("freezer-van"))
    try:
        for seq, wire in db.execute("SELECT seq, wire FROM readings").fetchall():
            r = decode_reading(bytes(wire)).reading
            if r.tag == epc and r.sensor == "rfid.in":
                forged[bytes(wire)] = bytes(wire).replace(b"plasma unit", b"plasma unix")
                db.execute("UPDATE readings SET wire=? WHERE seq=?", (forged[bytes(wire)], seq))
        db.commit()
    finally:
        db.close()
    assert len(forged) == 1
    with TraceSession(dd, blood.roots) as s:
        t = s.trace(epc)
    replicated = any(
        sqlite3.connect(dd.store_path(n)).execute("SELECT count(*) FROM replicas").fetchone()[0]
        for n in ("freezer-station", "freezer-hospital")
    )
    if replicated:  # the van's block is also held by its peers: the trace uses their copy
        assert t.verdict.custody == "continuous" and not t.unverified

    ((old, new),) = forged.items()
    for name in ("freezer-station", "freezer-hospital"):
        db = sqlite3.connect(dd.store_path(name))
        try:
            for dev, height, blob in db.execute("SELECT device_id, height, block FROM replicas"):
                if old in bytes(blob):
                    db.execute(
                        "UPDATE replicas SET block=? WHERE device_id=? AND height=?",
                        (bytes(blob).replace(old, new), dev, height),
                    )
            db.commit()
        finally:
            db.close()
    with TraceSession(dd, blood.roots) as s:
        t = s.trace(epc)
    assert [t.device_name(s_.stay.device_id) for s_ in t.stays if s_.stay.arrived is None] == [
        "freezer-van"
    ]
    assert t.verdict.custody == "broken"
    assert any("Merkle root" in u.reason for u in t.unverified), t.unverified
    assert any("left freezer-van without a recorded arrival" in p for p in t.verdict.problems)
