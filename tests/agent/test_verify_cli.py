"""`edgefleet verify` / `status` over a real data dir: all good -> 0; one flipped bit -> 1."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from ledger.chain import ChainWriter
from ledger.store import Store

FAST = (1, 8192)


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    keystore.init_authority(d.authority, b"pw", FAST)
    auth = keystore.load_authority(d.authority, b"pw")
    stores = {}
    for i, (name, kind) in enumerate(
        [("fridge-1", "refrigerator"), ("washer-1", "washing_machine")]
    ):
        e = keystore.enroll_device(
            d.authority,
            auth,
            d.device(name),
            b"pw",
            kind=kind,
            model="M1",
            site="house-1",
            now_ms=1_000,
            cost=FAST,
        )
        store = Store(d.store_path(name))
        w = ChainWriter(store, e.key, e.certificate.device_id)
        for b in range(3):
            for j in range(10):
                w.record(
                    1_000 + 100 * b + j,
                    "temp_mc",
                    4_000 + j + i,
                    tag="urn:epc:id:sgtin:4012345.011111.7" if j == 3 else None,
                )
            w.seal()
        w.record(5_000, "door.open", 1)
        w.flush()
        stores[name] = (store, e)
    # fridge-1 holds washer-1's headers, certificate and one replica.
    fstore, _ = stores["fridge-1"]
    wstore, we = stores["washer-1"]
    fstore.put_certificate(we.certificate.device_id, we.certificate.wire)
    for blk in wstore.blocks():
        fstore.put_peer_header(blk.header)
    replica = wstore.block(1)
    assert replica is not None
    fstore.put_replica(replica)
    for store, _ in stores.values():
        store.close()
    return d


def test_verify_passes_on_an_intact_data_dir(
    data: DataDir, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--data", str(data.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert out["devices"] == 2
    fridge = next(r for r in out["reports"] if r["name"] == "fridge-1")
    assert (fridge["height"], fridge["readings"], fridge["pending"]) == (2, 30, 1)
    assert (fridge["peers"], fridge["peer_headers"], fridge["replicas"]) == (1, 3, 1)


def test_verify_fails_on_a_flipped_bit_and_names_the_device(
    data: DataDir, capsys: pytest.CaptureFixture[str]
) -> None:
    db = sqlite3.connect(data.store_path("washer-1"))
    (first,) = db.execute("SELECT first_seq FROM blocks WHERE height=1").fetchone()
    (wire,) = db.execute("SELECT wire FROM readings WHERE seq=?", (first + 4,)).fetchone()
    bad = bytearray(wire)
    bad[-5] ^= 0x10  # inside the signature
    db.execute("UPDATE readings SET wire=? WHERE seq=?", (bytes(bad), first + 4))
    db.commit()
    db.close()
    assert main(["verify", "--data", str(data.root)]) == 1
    out = capsys.readouterr().out
    assert f"washer-1: {data.store_path('washer-1')}: own chain:" in out
    assert "1 of 2 device(s) verify" in out


def test_verify_against_a_foreign_root_fails(data: DataDir, tmp_path: Path) -> None:
    keystore.init_authority(tmp_path / "other", b"pw", FAST)
    rc = main(["verify", "--data", str(data.root), "--root", str(tmp_path / "other")])
    assert rc == 1


def test_status_table(data: DataDir, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--data", str(data.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["device", "kind", "site", "height"]
    assert lines[0].split()[:6] == ["device", "kind", "site", "height", "readings", "pending"]
    assert lines[1].split()[:6] == ["fridge-1", "refrigerator", "house-1", "2", "30", "1"]


def test_status_json_counts_what_verify_counts(
    data: DataDir, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` reports the sealed readings (it said 0), pending, peers, replicas, held
    bytes, lag and receipts, without checking a signature; its counts agree with verify's."""
    assert main(["status", "--data", str(data.root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert main(["verify", "--data", str(data.root), "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    fridge = next(r for r in status["devices"] if r["name"] == "fridge-1")
    assert (fridge["readings"], fridge["pending"], fridge["blocks"]) == (30, 1, 3)
    assert (fridge["peers"], fridge["peer_headers"], fridge["replicas"]) == (1, 3, 1)
    assert fridge["replica_bytes"] > 0
    # fridge-1 holds washer-1's headers up to its head: washer-1 lags by nothing.
    washer = next(r for r in status["devices"] if r["name"] == "washer-1")
    assert (washer["lag"], fridge["lag"]) == (0, 0)
    assert status["readings"] == 60 and status["ok"] is True
    counted = ("readings", "pending", "blocks", "peers", "peer_headers", "replicas", "lag")
    for s_rep, v_rep in zip(status["devices"], verified["reports"], strict=True):
        assert {k: s_rep[k] for k in counted} == {k: v_rep[k] for k in counted}


def test_not_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--data", str(tmp_path)]) == 2
    assert "not a fleet data dir" in capsys.readouterr().err
