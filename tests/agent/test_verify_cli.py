"""`edgefleet verify` / `status` over a real data dir: all good -> 0; one flipped bit -> 1."""

from __future__ import annotations

import json
import os
import shutil
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


def test_status_lag_is_the_height_the_holder_of_a_chain_is_behind(
    data: DataDir, capsys: pytest.CaptureFixture[str]
) -> None:
    db = sqlite3.connect(data.store_path("fridge-1"))
    db.execute("DELETE FROM peer_headers WHERE height=2")  # fridge-1 now holds washer-1 up to 1
    db.commit()
    db.close()
    assert main(["status", "--data", str(data.root), "--json"]) == 0
    lags = {r["name"]: r["lag"] for r in json.loads(capsys.readouterr().out)["devices"]}
    assert lags == {"fridge-1": 0, "washer-1": 1}


def test_not_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--data", str(tmp_path)]) == 2
    assert "not a fleet data dir" in capsys.readouterr().err


# --- one damaged device among healthy ones ---------------------------------------------------
# A real data dir made by a short simulated run of three devices (plus one pending reading the
# fridge signs afterwards with its own key), then one device's files damaged the way a disk, a
# careless chmod or a bad copy damages them. verify reports that device, the file and what is
# wrong, in one line each, verifies the two others, and exits 1.

DAMAGED = "fridge-1"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.config.devices import load_fleet

    from .runner_helpers import run_fleet, write_fleet

    base = tmp_path_factory.mktemp("ran")
    data = base / "data"
    run_fleet(
        load_fleet(write_fleet(base)),
        data=data,
        for_ms=3_600_000,
        simulated_network=True,
        view=False,
    )
    d = DataDir(data)
    pw = d.fleet_passphrase()
    assert pw is not None
    e = keystore.load_device(d.device(DAMAGED), pw)
    with Store(d.store_path(DAMAGED)) as store:
        last = store.last_reading_time()
        assert last is not None and store.head() is not None
        w = ChainWriter(store, e.key, e.certificate.device_id)
        w.record(last + 1_000, "door.open", 1)
        w.record(last + 2_000, "door.open", 0)
        w.flush()
    return data


@pytest.fixture
def fleet_copy(ran: Path, tmp_path: Path) -> DataDir:
    copy = tmp_path / "data"
    shutil.copytree(ran, copy)
    return DataDir(copy)


def _flip_row(path: Path, sql: str) -> None:
    """Flip one bit in the middle of the wire the query selects (seq, wire), through a second
    connection as any other process could."""
    db = sqlite3.connect(path)
    seq, wire = db.execute(sql).fetchone()
    bad = bytearray(wire)
    bad[len(bad) // 2] ^= 0x04
    db.execute("UPDATE readings SET wire=? WHERE seq=?", (bytes(bad), seq))
    db.commit()
    db.close()


def _overwrite_header(d: DataDir) -> None:
    with open(d.store_path(DAMAGED), "r+b") as f:
        f.write(b"this is no database!")  # over "SQLite format 3\0"


def _truncate(d: DataDir) -> None:
    path = d.store_path(DAMAGED)
    os.truncate(path, path.stat().st_size // 3)


def _garbage_page(d: DataDir) -> None:
    """The page holding a sealed reading overwritten with garbage: the file opens, reading that
    table fails (SQLite's "database disk image is malformed")."""
    path = d.store_path(DAMAGED)
    db = sqlite3.connect(path)
    (wire,) = db.execute("SELECT wire FROM readings ORDER BY seq LIMIT 1 OFFSET 20").fetchone()
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    raw = path.read_bytes()
    at = raw.find(bytes(wire))
    assert at > 0 and raw.find(bytes(wire), at + 1) == -1
    with open(path, "r+b") as f:
        f.seek(at - at % page)
        f.write(bytes(range(256)) * (page // 256))


def _flip_pending(d: DataDir) -> None:
    _flip_row(
        d.store_path(DAMAGED),
        "SELECT seq, wire FROM readings WHERE seq > (SELECT max(last_seq) FROM blocks) "
        "ORDER BY seq LIMIT 1",
    )


def _flip_sealed(d: DataDir) -> None:
    _flip_row(
        d.store_path(DAMAGED),
        "SELECT seq, wire FROM readings WHERE seq <= (SELECT max(last_seq) FROM blocks) "
        "ORDER BY seq LIMIT 1 OFFSET 7",
    )


def _open_key(d: DataDir) -> None:
    (d.device(DAMAGED) / keystore.DEVICE_KEY).chmod(0o644)


def _corrupt_key(d: DataDir) -> None:
    """One hex digit of the sealed secret changed: the file parses, the key does not open."""
    path = d.device(DAMAGED) / keystore.DEVICE_KEY
    doc = json.loads(path.read_text())
    box = doc["box"]
    doc["box"] = box[:40] + ("0" if box[40] != "0" else "1") + box[41:]
    path.write_text(json.dumps(doc))


def _garbage_cert(d: DataDir) -> None:
    (d.device(DAMAGED) / keystore.DEVICE_CERT).write_bytes(b"\x93garbage, not a certificate")


def _no_cert(d: DataDir) -> None:
    (d.device(DAMAGED) / keystore.DEVICE_CERT).unlink()


DAMAGES = {
    # name: (damage, file damaged, what the line says, whether status (no checks) notices it)
    "sqlite-header-overwritten": (_overwrite_header, "store", "file is not a database", True),
    "store-truncated": (_truncate, "store", "malformed", True),
    "page-garbage": (_garbage_page, "store", "malformed", False),
    "pending-reading-bit": (_flip_pending, "store", "pending reading seq", False),
    "sealed-reading-bit": (_flip_sealed, "store", "own chain:", False),
    "key-mode-0644": (_open_key, "key", "permissions 0o644 are too open", True),
    "key-corrupted": (_corrupt_key, "key", "wrong passphrase or corrupted file", False),
    "certificate-garbage": (_garbage_cert, "cert", "certificate", True),
    "certificate-missing": (_no_cert, "cert", "missing", True),
}


def _file(d: DataDir, which: str) -> Path:
    return {
        "store": d.store_path(DAMAGED),
        "key": d.device(DAMAGED) / keystore.DEVICE_KEY,
        "cert": d.device(DAMAGED) / keystore.DEVICE_CERT,
    }[which]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_one_damaged_device_fails_alone_and_the_others_verify(
    fleet_copy: DataDir, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--data", str(fleet_copy.root)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    do, which, says, _ = DAMAGES[damage]
    do(fleet_copy)

    assert main(["verify", "--data", str(fleet_copy.root)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "2 of 3 device(s) verify" in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith(f"{DAMAGED}: ")]
    assert lines, out
    assert lines[0].startswith(f"{DAMAGED}: {_file(fleet_copy, which)}: "), lines
    assert says in lines[0], lines

    assert main(["verify", "--data", str(fleet_copy.root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    results = {r["name"]: r["ok"] for r in doc["reports"]}
    assert results == {DAMAGED: False, "freezer-station": True, "freezer-hospital": True}
    healthy = [r for r in doc["reports"] if r["ok"]]
    assert all(r["readings"] > 0 and r["height"] is not None for r in healthy)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_status_names_a_damaged_device_and_lists_the_others(
    fleet_copy: DataDir, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """status checks no signature and reads no reading, but a file it cannot open or read is
    that device's failure; whatever the damage, the others are listed with their counts."""
    do, which, says, noticed = DAMAGES[damage]
    do(fleet_copy)
    assert main(["status", "--data", str(fleet_copy.root), "--json"]) == (1 if noticed else 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    doc = json.loads(out)
    by_name = {r["name"]: r for r in doc["devices"]}
    assert set(by_name) == {DAMAGED, "freezer-station", "freezer-hospital"}
    if noticed:
        assert (doc["ok"], doc["failed"]) == (False, 1)
        assert by_name[DAMAGED]["errors"][0].startswith(f"{_file(fleet_copy, which)}: ")
        assert says in by_name[DAMAGED]["errors"][0]
    for name in ("freezer-station", "freezer-hospital"):
        assert by_name[name]["ok"] and by_name[name]["readings"] > 0, by_name[name]


def test_status_min_copies_and_forked(data: DataDir, capsys: pytest.CaptureFixture[str]) -> None:
    """The view's "copies" and FORKED, offline: the fewest storage receipts any own block holds,
    and whether the device holds fork evidence against itself (status reads, never checks)."""

    def fridge() -> dict[str, object]:
        assert main(["status", "--data", str(data.root), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        return next(r for r in doc["devices"] if r["name"] == "fridge-1")

    assert (fridge()["min_copies"], fridge()["forked"]) == (0, False)
    device_id = str(fridge()["device_id"])
    with Store(data.store_path("fridge-1")) as store:
        for height in range(3):
            store.put_receipt(height, "holder-a", b"receipt")
        store.put_receipt(0, "holder-b", b"receipt")
        store.put_evidence(device_id, b"evidence")
    assert (fridge()["min_copies"], fridge()["receipts"], fridge()["forked"]) == (1, 4, True)
    assert main(["status", "--data", str(data.root)]) == 0
    assert "fridge-1 FORKED" in capsys.readouterr().out
