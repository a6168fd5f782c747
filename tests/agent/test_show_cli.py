"""`edgefleet show` / `edgefleet grant` on a real data dir with a household and a blood bank.

The household fridge writes private readings (sealed to its owner's key named in its certificate,
as the runner does for private sites); the blood bank's medical freezer writes plain ones. Without
a key the fridge's readings are withheld, never shown; the owner reads them all; a grantee reads
exactly the granted range; `verify` needs no key at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from ledger.chain import ChainWriter
from ledger.store import Store

FAST = (1, 8192)
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
EPC = "urn:epc:id:sgtin:4012345.011111.7"


@dataclass(frozen=True)
class Fleet:
    data: DataDir
    owner_key: Path
    grantee_key: Path
    # by device: (seq, time_ms, sensor, value, tag) of every reading recorded
    recorded: dict[str, list[tuple[int, int, str, int, str | None]]]


def _record(w: ChainWriter, out: list[tuple[int, int, str, int, str | None]], i: int) -> None:
    t, value, tag = T0 + 60_000 * i, 4_000 + 10 * i, EPC if i % 4 == 1 else None
    sr = w.record(t, "fridge.temp_mc", value, tag)
    out.append((sr.reading.seq, t, "fridge.temp_mc", value, tag))


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    # Owner keys are encrypted; the commands unlock them with $EDGEFLEET_PASSPHRASE.
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "pw")
    d = DataDir(tmp_path / "data")
    keystore.init_authority(d.authority, b"pw", FAST)
    auth = keystore.load_authority(d.authority, b"pw")
    owner_key = d.root / "owners" / "alice.key"
    owner_key.parent.mkdir(parents=True)
    owner_pub = keystore.init_owner(owner_key, b"pw", FAST)
    grantee_key = tmp_path / "vet.key"
    keystore.init_owner(grantee_key, b"pw", FAST)
    recorded: dict[str, list[tuple[int, int, str, int, str | None]]] = {}
    for name, kind, site, owner in [
        ("fridge-1", "refrigerator", "house-1", owner_pub),
        ("freezer-1", "medical_freezer", "bloodbank-1", None),
    ]:
        e = keystore.enroll_device(
            d.authority,
            auth,
            d.device(name),
            b"pw",
            kind=kind,
            model="M1",
            site=site,
            owner_x25519=owner,
            now_ms=T0,
            cost=FAST,
        )
        out = recorded.setdefault(name, [])
        with Store(d.store_path(name)) as store:
            w = ChainWriter(
                store, e.key, e.certificate.device_id, owner_x25519=e.certificate.owner_x25519
            )
            for b in range(3):
                for i in range(4 * b, 4 * b + 4):
                    _record(w, out, i)
                assert w.seal() is not None
            _record(w, out, 12)
            w.flush()  # one reading stays pending
    return Fleet(d, owner_key, grantee_key, recorded)


def _run_json(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, device: str, *extra: str
) -> tuple[int, dict[str, object], str]:
    rc = main(["show", "--data", str(fleet.data.root), "--device", device, "--json", *extra])
    out, err = capsys.readouterr()
    return rc, json.loads(out) if out else {}, err


def _grant_args(fleet: Fleet, device: str, owner: Path, start: str, out: Path) -> list[str]:
    data = str(fleet.data.root)
    to_key = f"{fleet.grantee_key}.pub"
    return ["grant", "--data", data, "--device", device, "--owner-key", str(owner),
            "--to-key", to_key, "--from", start, "--out", str(out)]  # fmt: skip


def _rows(doc: dict[str, object]) -> list[tuple[int, int, str, int, str | None]]:
    rows = doc["readings"]
    assert isinstance(rows, list)
    return [(r["seq"], r["time_ms"], r["sensor"], r["value"], r["tag"]) for r in rows]


def test_plain_readings_of_the_blood_bank_freezer_are_readable_without_a_key(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc, _ = _run_json(capsys, fleet, "freezer-1")
    assert rc == 0
    assert _rows(doc) == fleet.recorded["freezer-1"]
    assert (doc["shown"], doc["private"], doc["withheld"]) == (13, 0, 0)
    assert doc["owner_x25519"] is None


def test_household_readings_are_withheld_without_a_key(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc, _ = _run_json(capsys, fleet, "fridge-1")
    assert rc == 0
    assert doc["readings"] == []
    assert (doc["private"], doc["withheld"]) == (13, 13)
    assert doc["withheld_reasons"] == {"no key given": 13}
    assert main(["show", "--data", str(fleet.data.root), "--device", "fridge-1"]) == 0
    out = capsys.readouterr().out
    assert "fridge.temp_mc" not in out and EPC not in out
    assert "0 reading(s) shown, 13 private reading(s) withheld (13: no key given)" in out


def test_the_owner_reads_every_reading_with_the_owner_key(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc, _ = _run_json(capsys, fleet, "fridge-1", "--owner-key", str(fleet.owner_key))
    assert rc == 0
    assert _rows(doc) == fleet.recorded["fridge-1"]
    assert (doc["shown"], doc["private"], doc["withheld"]) == (13, 13, 0)
    rows = doc["readings"]
    assert isinstance(rows, list)
    assert [r["pending"] for r in rows] == [False] * 12 + [True]
    # The text table shows the same readings, tagged private.
    assert main(["show", "--data", str(fleet.data.root), "--device", "fridge-1",
                 "--owner-key", str(fleet.owner_key)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["seq", "time", "sensor", "value", "tag", "text"]
    assert lines[2].split() == [
        "1", "2023-11-14T22:14:20.000+00:00", "fridge.temp_mc", "4010", EPC, "-", "private"
    ]  # fmt: skip
    assert lines[13].split()[-2:] == ["private", "pending"]


def test_a_wrong_owner_key_opens_nothing_and_says_why(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc, _ = _run_json(capsys, fleet, "fridge-1", "--owner-key", str(fleet.grantee_key))
    assert rc == 1
    assert doc["readings"] == [] and doc["withheld_reasons"] == {
        "sealed to another key, or altered": 13
    }
    assert main(["show", "--data", str(fleet.data.root), "--device", "fridge-1",
                 "--owner-key", str(fleet.grantee_key)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "opens none of the 13 private reading(s): sealed to another key, or altered" in err


def test_a_grant_opens_exactly_the_granted_range(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    grant = tmp_path / "vet.grant"
    args = _grant_args(fleet, "fridge-1", fleet.owner_key, str(T0 + 3 * 60_000), grant)
    assert main([*args, "--until", "2023-11-14T22:20:20"]) == 0
    assert "lets" in capsys.readouterr().out
    assert keystore.read_owner_secret(fleet.owner_key).hex() not in grant.read_bytes().hex()
    with_grant = ["--grant", str(grant), "--grantee-key", str(fleet.grantee_key)]
    rc, doc, _ = _run_json(capsys, fleet, "fridge-1", *with_grant)
    assert rc == 0
    granted = [r for r in fleet.recorded["fridge-1"] if 3 <= r[0] <= 7]  # 22:16:20 .. 22:20:20
    assert _rows(doc) == granted
    assert doc["withheld_reasons"] == {"outside the grant's time range": 8}
    # Asked for the granted window only, nothing is withheld.
    rc, doc, _ = _run_json(
        capsys,
        fleet,
        "fridge-1",
        *with_grant,
        "--from",
        str(T0 + 180_000),
        "--to",
        str(T0 + 420_000),
    )
    assert (rc, _rows(doc), doc["withheld"]) == (0, granted, 0)
    # The owner's key file is not a grantee key for this grant.
    rc, _, err = _run_json(capsys, fleet, "fridge-1", "--grant", str(grant), "--grantee-key",
                           str(fleet.owner_key))  # fmt: skip
    assert rc == 2
    assert "grant is sealed to another grantee key" in err
    # A grant for the fridge says so when shown against the freezer.
    assert main(["show", "--data", str(fleet.data.root), "--device", "freezer-1",
                 *with_grant]) == 2  # fmt: skip
    assert "the grant is for device" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "key", "message"),
    [
        ("fridge-1", "grantee", "is not the one fridge-1's certificate names"),
        ("freezer-1", "owner", "not a private device"),
    ],
)
def test_grant_refuses_a_key_the_certificate_does_not_name(
    fleet: Fleet,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    device: str,
    key: str,
    message: str,
) -> None:
    owner = fleet.owner_key if key == "owner" else fleet.grantee_key
    args = _grant_args(fleet, device, owner, str(T0), tmp_path / "g")
    assert main([*args, "--until", str(T0 + 600_000)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_verify_needs_no_key_for_private_readings(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--data", str(fleet.data.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert {r["name"]: r["readings"] for r in out["reports"]} == {"fridge-1": 12, "freezer-1": 12}


def test_show_refuses_unknown_devices_and_open_key_files(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "--data", str(fleet.data.root), "--device", "nope"]) == 2
    assert "no device 'nope' (devices: freezer-1, fridge-1)" in capsys.readouterr().err
    fleet.owner_key.chmod(0o644)
    args = ["show", "--data", str(fleet.data.root), "--device", "fridge-1"]
    assert main([*args, "--owner-key", str(fleet.owner_key)]) == 2
    assert "too open" in capsys.readouterr().err


def test_a_fleet_run_seals_household_readings_and_only_the_owner_opens_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runner wires the owner key of a private site into its devices' chain writers."""
    from agent.config.devices import load_fleet
    from ledger.reading import decode_reading

    from .runner_helpers import SMALL_FLEET, run_fleet, verify, write_fleet

    text = SMALL_FLEET.replace(
        "  - id: home-1\n    kind: household\n",
        "  - id: home-1\n    kind: household\n    private: true\n    owner: family-1\n",
    )
    cfg = load_fleet(write_fleet(tmp_path, text))
    data = tmp_path / "data"
    run_fleet(cfg, data=data, for_ms=2 * 3_600_000, simulated_network=True, view=False)
    assert verify(data).ok  # verifying needs no key
    dd = DataDir(data)
    for name, private in [("fridge-1", True), ("freezer-station", False)]:
        with Store(dd.store_path(name)) as store:
            wires = [sr.wire for b in store.blocks() for sr in b.readings]
            assert wires, name
            assert {decode_reading(w).private for w in wires} == {private}, name
            if private:
                assert store.tags() == []  # nothing of the household in the clear
    key = data / "owners" / "family-1.key"
    assert main(["show", "--data", str(data), "--device", "fridge-1", "--json"]) == 0
    withheld = json.loads(capsys.readouterr().out)
    assert withheld["readings"] == [] and withheld["withheld"] == withheld["private"] > 0
    assert main(["show", "--data", str(data), "--device", "fridge-1", "--json",
                 "--owner-key", str(key)]) == 0  # fmt: skip
    opened = json.loads(capsys.readouterr().out)
    assert opened["withheld"] == 0 and opened["shown"] == withheld["private"]
    assert {r["sensor"] for r in opened["readings"]} >= {"fridge.temp_mc"}


def test_tags_without_a_key_say_that_private_readings_need_the_owner_key(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The household fridge's readings are private: a keyless `tags --kind food` lists nothing
    and says why, instead of a bare "no tagged readings"; the owner key lists its item."""
    data = str(fleet.data.root)
    assert main(["tags", "--data", data, "--kind", "food"]) == 0
    out, err = capsys.readouterr()
    assert EPC not in out
    assert "private readings need --owner-key" in err and "(fridge-1)" in err
    assert main(["tags", "--data", data, "--kind", "food", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["tags"], doc["sealed_devices"]) == ([], ["fridge-1"])
    # The owner key opens the fridge's readings: its item is listed (with the freezer's plain
    # readings of the same EPC; no --kind, which goes by the device that saw it first, a tie
    # here) and nothing is said.
    assert main(["tags", "--data", data, "--owner-key", str(fleet.owner_key)]) == 0
    out, err = capsys.readouterr()
    assert EPC in out and err == ""
    # No private device of that kind: nothing to say.
    assert main(["tags", "--data", data, "--kind", "blood"]) == 0
    assert capsys.readouterr().err == ""


def test_a_damaged_store_is_one_line_naming_the_file(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """show of a device whose SQLite header was overwritten fails with one line naming the
    store; tags leaves that device out, says so, and still lists the others' items."""
    data, path = str(fleet.data.root), fleet.data.store_path("freezer-1")
    with open(path, "r+b") as f:
        f.write(b"this is no database!")
    assert main(["show", "--data", data, "--device", "freezer-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.splitlines() == [
        f"edgefleet: error: {path}: damaged store: cannot open store (file is not a database) "
        "(`edgefleet verify` checks every device)"
    ]
    owner = str(fleet.owner_key)
    assert main(["tags", "--data", data, "--owner-key", owner, "--json"]) == 0
    out, err = capsys.readouterr()
    assert [r["tag"] for r in json.loads(out)["tags"]] == [EPC]  # the fridge's, opened
    assert f"edgefleet: left out, {path}: cannot open store" in err


def test_a_garbage_page_in_a_store_is_one_line_naming_the_file(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file opens, but the page holding a reading is garbage: SQLite's own error comes out
    of the store's read, and show reports it as the store's damage."""
    import sqlite3

    path = fleet.data.store_path("freezer-1")
    db = sqlite3.connect(path)
    (wire,) = db.execute("SELECT wire FROM readings ORDER BY seq LIMIT 1 OFFSET 5").fetchone()
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    at = path.read_bytes().find(bytes(wire))
    assert at > 0
    with open(path, "r+b") as f:
        f.seek(at - at % page)
        f.write(bytes(range(256)) * (page // 256))
    assert main(["show", "--data", str(fleet.data.root), "--device", "freezer-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"edgefleet: error: {path}: damaged store: "), err
    assert "malformed" in err
