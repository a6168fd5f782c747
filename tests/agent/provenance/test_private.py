"""Private households: readings sealed to the owner are read only with the owner key or a grant.

The data dir is enrolled by ``agent.fleet.provision`` (owner key pairs included) and each fridge's
chain is written by ``ledger.chain.ChainWriter`` with its owner's X25519 key, exactly as an agent
of a private site writes it, from a simulated week-end of two households (``firmware_sim``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.devices import load_fleet
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.fleet.provision import provision
from agent.provenance.gather import TraceSession
from agent.provenance.opening import NO_KEY, Opening
from firmware_sim.fleet import Fleet
from firmware_sim.world import Movement
from ledger import keyfile
from ledger.chain import ChainWriter
from ledger.private import make_grant, open_grant
from ledger.store import Store

HOUR_MS = 3_600_000
HOMES = """\
fleet: homes
seed: 4
sites:
  - {id: home-1, kind: household, private: true, owner: family-1}
  - {id: home-2, kind: household, private: true, owner: family-2}
devices:
  - {name: fridge-1, kind: refrigerator, site: home-1, sampling_period: 10m}
  - {name: fridge-2, kind: refrigerator, site: home-2, sampling_period: 10m}
world:
  laundry: {enabled: false}
"""


class Homes:
    def __init__(self, base: Path) -> None:
        (base / "devices.yaml").write_text(HOMES)
        cfg = load_fleet(base / "devices.yaml")
        self.data = DataDir(base / "data")
        prov = provision(cfg, self.data, cfg.start_ms)
        self.roots = prov.roots
        fleet = Fleet(cfg.fleet_spec())
        self.samples = list(fleet.run_until(cfg.start_ms + 48 * HOUR_MS))
        self.movements: list[Movement] = list(fleet.world.movements)
        self.ids = {name: prov.device_id(name) for name in prov.devices}
        for name, enrolled in prov.devices.items():
            owner = prov.owners[cfg.site(cfg.device(name).site).owner]
            with Store(self.data.store_path(name)) as store:
                w = ChainWriter(store, enrolled.key, self.ids[name], owner_x25519=owner)
                for dev, s in self.samples:
                    if dev == name:
                        w.record(s.time_ms, s.sensor, s.value, s.tag, s.text)
                        if w.pending_count() >= 64:
                            w.seal(64)
                while w.seal(64) is not None:
                    pass
        self.owner_key = base / "data" / "owners" / "family-1.key"

    def count(self, device: str, after_ms: int = -1) -> int:
        return sum(1 for d, s in self.samples if d == device and s.time_ms > after_ms)

    def eaten(self) -> tuple[str, Movement, Movement]:
        """A food item stocked into fridge-1 and taken out again within the run."""
        for m in self.movements:
            if m.dst == "appliance:fridge-1":
                out = [x for x in self.movements if x.epc == m.epc and x.src == m.dst]
                if out:
                    return m.epc, m, out[0]
        raise AssertionError("no item went in and out of fridge-1")


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Homes:
    return Homes(tmp_path_factory.mktemp("homes"))


def test_without_a_key_nothing_is_read_and_the_trace_says_what_is_withheld(homes: Homes) -> None:
    epc, _, _ = homes.eaten()
    with TraceSession(homes.data, homes.roots) as s:
        t = s.trace(epc)
        assert s.tags() == []  # private tags are sealed: not even listed
    assert t.verdict.custody == "unknown" and not t.stays and not t.verdict.ok
    held = sorted((t.device_name(w.device_id), w.count, w.in_custody, w.reason) for w in t.withheld)
    assert held == [
        ("fridge-1", homes.count("fridge-1"), False, NO_KEY),
        ("fridge-2", homes.count("fridge-2"), False, NO_KEY),
    ]


def test_the_owner_key_opens_its_own_fridge_only(homes: Homes) -> None:
    epc, into, out = homes.eaten()
    secret = keystore.read_owner_secret(homes.owner_key)
    with TraceSession(homes.data, homes.roots, Opening.owner(secret)) as s:
        t = s.trace(epc)
    (stay,) = t.stays
    assert t.device_name(stay.stay.device_id) == "fridge-1"
    assert (stay.stay.start_ms, stay.stay.stop_ms) == (into.time_ms, out.time_ms)
    assert all(e.evidence.private for e in t.timeline)
    expected = [
        v
        for d, smp in homes.samples
        if d == "fridge-1"
        and smp.sensor == "fridge.temp_mc"
        and into.time_ms <= smp.time_ms <= out.time_ms
        for v in [smp.value]
    ]
    assert [v for _, v in stay.temps] == expected
    assert t.verdict.custody == "continuous" and t.product.name == "chilled-food"
    assert [(t.device_name(w.device_id), w.in_custody, w.reason) for w in t.withheld] == [
        ("fridge-2", False, "sealed to another owner")
    ]


def test_a_grant_that_ends_during_the_stay_leaves_a_hole_in_custody(
    homes: Homes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "pw")  # unlocks the grantee's key in the CLI
    epc, into, out = homes.eaten()
    until = (into.time_ms + out.time_ms) // 2
    secret = keystore.read_owner_secret(homes.owner_key)
    grantee = tmp_path / "auditor.key"
    grantee_pub = keystore.init_owner(grantee, b"pw", keyfile.FAST)
    with Store(homes.data.store_path("fridge-1")) as store:
        readings = [sr for b in store.blocks() for sr in b.readings]
    blob = make_grant(secret, readings, grantee_pub, homes.ids["fridge-1"], 0, until)
    grant = open_grant(keystore.read_owner_secret(grantee, b"pw"), blob)
    with TraceSession(homes.data, homes.roots, Opening.granted(grant)) as s:
        t = s.trace(epc)
    (stay,) = t.stays
    assert stay.stay.left is None  # the departure is after the grant: not readable
    held = [w for w in t.withheld if w.in_custody]
    assert [(t.device_name(w.device_id), w.count, w.reason) for w in held] == [
        ("fridge-1", homes.count("fridge-1", after_ms=until), "outside the grant's time range")
    ]
    assert t.verdict.custody == "incomplete" and not t.verdict.ok

    path = tmp_path / "grant.bin"
    path.write_bytes(blob)
    args = ["trace", epc, "--data", str(homes.data.root), "--format", "json"]
    assert main([*args, "--grant", str(path), "--grantee-key", str(grantee)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"]["custody"] == "incomplete"


def test_the_cli_lists_and_traces_private_items_with_the_owner_key(
    homes: Homes, capsys: pytest.CaptureFixture[str]
) -> None:
    epc, _, _ = homes.eaten()
    assert os.stat(homes.owner_key).st_mode & 0o077 == 0
    data = str(homes.data.root)
    assert main(["tags", "--data", data, "--json", "--owner-key", str(homes.owner_key)]) == 0
    rows = {r["tag"]: r for r in json.loads(capsys.readouterr().out)["tags"]}
    stocked = {m.epc for m in homes.movements if m.dst == "appliance:fridge-1"}
    assert set(rows) == stocked
    main(["trace", epc, "--data", data, "--owner-key", str(homes.owner_key)])
    out = capsys.readouterr().out
    assert "fridge-1" in out and "arrived" in out and "sealed to another owner" in out


def test_owner_keys_are_encrypted_under_the_fleet_passphrase_and_old_plain_ones_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A simulated fleet's DIR/owners/NAME.key is an edgefleet-key/1 file (role owner) sealed
    under DIR/passphrase; one left in the old plain-hex form is re-written at the next start."""
    (tmp_path / "devices.yaml").write_text(HOMES)
    cfg = load_fleet(tmp_path / "devices.yaml")
    data = DataDir(tmp_path / "data")
    prov = provision(cfg, data, cfg.start_ms)
    pw = data.fleet_passphrase()
    assert pw is not None and (data.root / "passphrase").read_bytes() == pw + b"\n"
    key = data.root / "owners" / "family-1.key"
    doc = json.loads(key.read_bytes())
    assert (doc["format"], doc["role"], doc["kdf"]) == ("edgefleet-key/1", "owner", "argon2id")
    secret = keyfile.read_owner(key, pw)
    assert bytes.fromhex(doc["public"]) == prov.owners["family-1"]
    assert secret.hex() not in key.read_text()
    # The form written before: 64 hex characters and a newline, mode 0600.
    key.unlink()
    keyfile.write_private(key, secret.hex().encode() + b"\n")
    again = provision(cfg, data, cfg.start_ms)
    assert again.owners == prov.owners
    assert "plain hex" in caplog.text
    assert keyfile.is_key_file(key.read_bytes()) and os.stat(key).st_mode & 0o077 == 0
    assert keyfile.read_owner(key, pw) == secret
