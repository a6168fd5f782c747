"""`edgefleet verify-bundle FILE`: exit 0 only for a bundle that verifies, 1 with the reason
otherwise, 2 for a file it cannot read or a malformed --root-key; and it works in a fresh
process with nothing but the file (no data dir, no fleet)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from ledger.bundle import BundleBuilder
from ledger.certs import FleetRoots, issue_certificate
from ledger.chain import ChainWriter
from ledger.identity import SigningKey
from ledger.store import Store

EPC = "urn:epc:id:sgtin:4012345.011111.7"
T0 = 1_700_000_000_000


def key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"edgefleet-tests/cli-bundle/" + label.encode()).digest())


AUTHORITY = key("authority")


def make_bundle(tmp_path: Path) -> Path:
    """Two devices sealed by ChainWriter into real stores; the readings that name EPC."""
    b = BundleBuilder(FleetRoots.of(AUTHORITY.public), subject=EPC, created_ms=T0 + 60_000)
    for n, kind in enumerate(("refrigerator", "washing_machine")):
        dk = key(f"device-{n}")
        cert = issue_certificate(
            AUTHORITY,
            dk.public,
            kind=kind,
            model="M1",
            site="house-1",
            owner_x25519=None,
            not_before_ms=T0,
            not_after_ms=T0 + 10**10,
            serial=n + 1,
        )
        store = Store(tmp_path / f"{n}.db")
        w = ChainWriter(store, dk, cert.device_id)
        for blk in range(3):
            for j in range(5):
                w.record(T0 + 100 * blk + j, "temp_mc", 4_000 + j, EPC if j == 3 else None)
            w.seal()
        head = store.head()
        assert head is not None
        hashes = [h.hash for h in (store.header_at(i) for i in range(2)) if h is not None]
        b.add_device(cert.device_id, [cert.wire], head, hashes)
        for hit in store.tag_hits(EPC):
            block = store.block(hit.height)
            assert block is not None
            b.add_reading(cert.device_id, block, hit.idx)
        store.close()
    path = tmp_path / "milk.bundle"
    path.write_bytes(b.build())
    return path


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


def tampered(path: Path, pos: int) -> Path:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    out = path.with_name("tampered.bundle")
    out.write_bytes(bytes(data))
    return out


def test_verifies_and_reports_subject_root_devices_and_readings(
    bundle_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify-bundle", str(bundle_file)]) == 0
    out = capsys.readouterr().out
    assert f"subject:     {EPC}" in out
    assert f"key id {AUTHORITY.key_id.hex()}" in out
    assert "NOT pinned" in out
    for n in range(2):
        assert f"{key(f'device-{n}').public.device_id}  " in out
    assert out.count("head height 2") == 2
    assert "readings:    6 proved" in out
    assert "OK, the bundle verifies" in out


def test_json_output(bundle_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = AUTHORITY.public.hex()
    assert main(["verify-bundle", str(bundle_file), "--json", "--root-key", root]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert (doc["subject"], doc["readings"], doc["root_pinned"]) == (EPC, 6, True)
    assert doc["root_key_id"] == AUTHORITY.key_id.hex()
    assert sorted(d["kind"] for d in doc["devices"]) == ["refrigerator", "washing_machine"]
    assert {(d["head_height"], d["readings"]) for d in doc["devices"]} == {(2, 3)}


def test_tampered_bundle_fails_with_the_reason(
    bundle_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = bundle_file.stat().st_size
    bad = tampered(bundle_file, size - 200)  # inside the last device's last reading entry
    assert main(["verify-bundle", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"bundle {bad} does NOT verify: ")
    assert "OK" not in out
    assert main(["verify-bundle", str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["code"] in {"bad-signature", "bad-proof", "decode"}
    assert "reading" in doc["error"]


def test_wrong_root_key_fails(bundle_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = key("someone-else").public.hex()
    assert main(["verify-bundle", str(bundle_file), "--root-key", other]) == 1
    out = capsys.readouterr().out
    assert f"fleet root {AUTHORITY.key_id.hex()} is not a trusted root" in out


@pytest.mark.parametrize("bad", ["zz", "00" * 8, "00" * 33])
def test_malformed_root_key_is_a_usage_error(
    bundle_file: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify-bundle", str(bundle_file), "--root-key", bad]) == 2
    assert "--root-key: expected a 64-hex-digit public key" in capsys.readouterr().err


def test_missing_or_foreign_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify-bundle", str(tmp_path / "nope.bundle")]) == 2
    assert "cannot read" in capsys.readouterr().err
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    assert main(["verify-bundle", str(other)]) == 1
    assert "not an edgefleet bundle" in capsys.readouterr().out


@pytest.mark.subprocess
def test_fresh_process_with_only_the_file(tmp_path: Path) -> None:
    """A new interpreter, run from a directory holding nothing but the bundle."""
    (tmp_path / "maker").mkdir()
    made = make_bundle(tmp_path / "maker")
    alone = tmp_path / "alone"
    alone.mkdir()
    good = alone / "milk.bundle"
    good.write_bytes(made.read_bytes())
    bad = tampered(good, 40)  # the subject: only the digest covers it

    def run(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "verify-bundle", name],
            cwd=alone,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = run(good.name)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK, the bundle verifies" in ok.stdout
    failed = run(bad.name)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "digest does not match" in failed.stdout
    assert sorted(p.name for p in alone.iterdir()) == ["milk.bundle", "tampered.bundle"]
