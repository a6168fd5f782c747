"""`edgefleet keys`: a fleet authority enrolls a device; files are encrypted, 0600, verifiable."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from ledger import keyfile
from ledger.certs import verify_certificate
from ledger.errors import RevokedError
from ledger.identity import is_device_id
from ledger.sealbox import public_key_of


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "test passphrase")
    assert main(["keys", "init-authority", "--dir", str(tmp_path / "auth")]) == 0
    return tmp_path


def test_enroll_then_show_verifies_against_the_fleet_root(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init-owner", "--out", str(fleet / "owner.key")]) == 0
    rc = main(
        [
            "keys",
            "enroll",
            "--authority",
            str(fleet / "auth"),
            "--out",
            str(fleet / "fridge"),
            "--kind",
            "refrigerator",
            "--model",
            "FR-200",
            "--site",
            "house-1",
            "--owner",
            str(fleet / "owner.key.pub"),
        ]
    )
    assert rc == 0
    for name in ("device.key", "device.cert"):
        assert stat.S_IMODE((fleet / "fridge" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((fleet / "auth" / "authority.key").stat().st_mode) == 0o600
    capsys.readouterr()
    assert (
        main(
            [
                "keys",
                "show",
                str(fleet / "fridge" / "device.cert"),
                "--root",
                str(fleet / "auth"),
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert is_device_id(info["device_id"])
    assert info["site"] == "house-1"
    assert info["owner_x25519"] == (fleet / "owner.key.pub").read_text().strip()
    assert info["status"] == "signature verifies against the fleet root"
    roots = keystore.load_roots(fleet / "auth")
    enrolled = keystore.load_device(fleet / "fridge", b"test passphrase", roots)
    assert enrolled.certificate.device_id == info["device_id"]
    cert = verify_certificate((fleet / "fridge" / "device.cert").read_bytes(), roots, None)
    assert cert.kind == "refrigerator"


def test_secret_is_encrypted_and_wrong_passphrase_is_refused(
    fleet: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "keys",
            "enroll",
            "--authority",
            str(fleet / "auth"),
            "--out",
            str(fleet / "w"),
            "--kind",
            "washing_machine",
            "--model",
            "WM-1",
            "--site",
            "house-1",
        ]
    )
    key = keystore.load_device(fleet / "w", b"test passphrase").key
    assert key.seed.hex() not in (fleet / "w" / "device.key").read_text()
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "wrong")
    capsys.readouterr()
    rc = main(
        [
            "keys",
            "enroll",
            "--authority",
            str(fleet / "auth"),
            "--out",
            str(fleet / "x"),
            "--kind",
            "refrigerator",
            "--model",
            "M",
            "--site",
            "s",
        ]
    )
    assert rc == 2
    assert "wrong passphrase" in capsys.readouterr().err
    assert not (fleet / "x" / "device.key").exists()


def test_enroll_rejects_a_bad_site_name_and_existing_device(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "keys",
            "enroll",
            "--authority",
            str(fleet / "auth"),
            "--out",
            str(fleet / "d"),
            "--kind",
            "refrigerator",
            "--model",
            "FR",
            "--site",
            "house/1",
        ]
    )
    assert rc == 2
    assert "field site" in capsys.readouterr().err
    args = [
        "keys",
        "enroll",
        "--authority",
        str(fleet / "auth"),
        "--out",
        str(fleet / "e"),
        "--kind",
        "refrigerator",
        "--model",
        "FR",
        "--site",
        "h",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a device key" in capsys.readouterr().err


def test_group_readable_key_file_is_refused(fleet: Path) -> None:
    (fleet / "auth" / "authority.key").chmod(0o640)
    with pytest.raises(keystore.KeystoreError, match="too open"):
        keystore.load_authority(fleet / "auth", b"test passphrase")


def test_serials_increase_and_revocation_blocks_the_device(fleet: Path) -> None:
    from ledger.certs import DeviceKeys, sign_revocation

    auth = keystore.load_authority(fleet / "auth", b"test passphrase")
    serials = []
    for name in ("a", "b"):
        e = keystore.enroll_device(
            fleet / "auth",
            auth,
            fleet / name,
            b"pw",
            kind="refrigerator",
            model="M",
            site="s",
            cost=(1, 8192),
        )
        serials.append(e.certificate.serial)
    assert serials[1] == serials[0] + 1
    cert = (fleet / "b" / "device.cert").read_bytes()
    dev = keystore.load_device(fleet / "b", b"pw").certificate.device_id
    rev = sign_revocation(auth, dev, None, 0, "stolen", 0)
    keys = DeviceKeys.build(
        cert, keystore.load_roots(fleet / "auth"), now_ms=None, revocations=[rev]
    )
    with pytest.raises(RevokedError):
        keys.key_for(keys.certificate.device_key.key_id, 0)


def test_init_owner_writes_an_encrypted_key_file(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fleet / "owner.key"
    assert main(["keys", "init-owner", "--out", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_bytes())
    assert (doc["format"], doc["role"], doc["kdf"]) == ("edgefleet-key/1", "owner", "argon2id")
    public = (fleet / "owner.key.pub").read_text()
    assert public == doc["public"] + "\n"
    secret = keystore.read_owner_secret(path, b"test passphrase")
    assert public_key_of(secret).hex() == doc["public"]
    assert secret.hex() not in path.read_text()
    with pytest.raises(keystore.KeystoreError, match="wrong passphrase"):
        keystore.read_owner_secret(path, b"another passphrase")
    capsys.readouterr()
    assert main(["keys", "show", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["file"], info["role"], info["public"]) == ("encrypted key", "owner", doc["public"])


def _plain_owner_key(path: Path) -> bytes:
    """An owner key in the form written before owner keys were encrypted."""
    secret = bytes(range(1, 33))
    keyfile.write_private(path, secret.hex().encode() + b"\n")
    return secret


def test_an_old_plain_owner_key_is_read_once_and_rewritten_encrypted(
    fleet: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = fleet / "owner.key"
    secret = _plain_owner_key(path)
    with caplog.at_level(logging.WARNING, "edgefleet.keys"):
        assert keystore.read_owner_secret(path) == secret  # $EDGEFLEET_PASSPHRASE is at hand
    assert "plain hex" in caplog.text and "re-written encrypted" in caplog.text
    assert json.loads(path.read_bytes())["role"] == "owner"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    caplog.clear()
    assert keystore.read_owner_secret(path) == secret
    assert caplog.text == ""  # once
    assert keyfile.read_owner(path, b"test passphrase") == secret


def test_an_old_plain_owner_key_without_a_passphrase_is_read_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE", raising=False)
    path = tmp_path / "owner.key"
    secret = _plain_owner_key(path)
    with caplog.at_level(logging.WARNING, "edgefleet.keys"):
        assert keystore.read_owner_secret(path) == secret
    assert "plain hex" in caplog.text and "stays so" in caplog.text
    assert path.read_bytes() == secret.hex().encode() + b"\n"


def test_a_simulated_fleets_owner_key_opens_with_its_passphrase_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIR/passphrase ends in a newline, stripped; it unlocks DIR/owners/NAME.key unasked."""
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE", raising=False)
    data = DataDir(tmp_path / "data")
    pw = data.fleet_passphrase(create=True)
    assert pw is not None and (data.root / "passphrase").read_bytes() == pw + b"\n"
    path = data.root / "owners" / "family-1.key"
    path.parent.mkdir()
    public = keystore.init_owner(path, pw, keyfile.FAST)
    assert public_key_of(keystore.read_owner_secret(path)) == public
    assert keystore.owner_secret_for(path.parent, public) is not None
    assert keystore.owner_secret_for(path.parent, bytes(32)) is None
