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
from ledger.identity import device_id_for, is_device_id
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


@pytest.mark.parametrize("days", ["0", "-5", str(10**9)])
def test_a_validity_out_of_range_is_one_line_before_any_file(
    fleet: Path, capsys: pytest.CaptureFixture[str], days: str
) -> None:
    args = ["keys", "enroll", "--authority", str(fleet / "auth"), "--out", str(fleet / "d")]
    args += ["--kind", "refrigerator", "--model", "m", "--site", "s", "--valid-days", days]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"edgefleet: error: --valid-days: expected 1 to 36600, found {days}\n"
    assert not (fleet / "d").exists()


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


# --- enrollment without the authority's secret: init-device, enroll --request, install-cert ----

ATTRS = ["--kind", "refrigerator", "--model", "FR-200", "--site", "house-1"]


def _init_device(devdir: Path, *extra: str) -> int:
    return main(["keys", "init-device", "--dir", str(devdir), *ATTRS, *extra])


def _enroll_request(fleet: Path, request: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "keys",
            "enroll",
            "--authority",
            str(fleet / "auth"),
            "--request",
            str(request),
            "--out",
            str(out),
            *extra,
        ]
    )


def _install(devdir: Path, cert: Path, root: Path) -> int:
    return main(["keys", "install-cert", "--dir", str(devdir), str(cert), "--root", str(root)])


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _last_serial(fleet: Path) -> int:
    path = fleet / "auth" / "issued.json"
    return int(json.loads(path.read_text())["last_serial"]) if path.exists() else 0


def test_a_device_enrolls_without_the_authority_secret_leaving_its_machine(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Authority in A, device in B's data dir; only enroll.req and device.cert travel."""
    assert main(["keys", "init-owner", "--out", str(fleet / "owner.key")]) == 0
    b = fleet / "B"
    devdir = b / "devices" / "pi"
    assert _init_device(devdir, "--owner", str(fleet / "owner.key.pub")) == 0
    assert _files(b) == {"devices/pi/device.key", "devices/pi/enroll.req"}
    assert stat.S_IMODE((devdir / "device.key").stat().st_mode) == 0o600
    capsys.readouterr()

    cert_file = fleet / "outbox" / "pi.cert"
    cert_file.parent.mkdir()
    assert _enroll_request(fleet, devdir / "enroll.req", cert_file, "--valid-days", "30") == 0
    shown = capsys.readouterr().out
    public = keyfile.public_of(devdir / "device.key")
    assert device_id_for(public) in shown
    for expected in ("proof of possession", "refrigerator", "FR-200", "house-1", "30 days"):
        assert expected in shown
    assert (fleet / "owner.key.pub").read_text().strip() in shown

    assert _install(devdir, cert_file, fleet / "auth" / "fleet-root.json") == 0
    assert _files(b) == {
        "authority/fleet-root.json",
        "devices/pi/device.cert",
        "devices/pi/device.key",
        "devices/pi/enroll.req",
        "devices/pi/fleet-root.json",
    }
    assert (b / "authority" / "fleet-root.json").read_bytes() == (
        fleet / "auth" / "fleet-root.json"
    ).read_bytes()

    # What a runner of B's data dir has: no authority key, its device listed, the key loadable.
    data = DataDir(b)
    assert not (data.authority / "authority.key").exists()
    assert data.device_names() == ["pi"]
    roots = keystore.load_roots(data.authority)
    enrolled = keystore.load_device(data.device("pi"), b"test passphrase", roots)
    assert enrolled.key.public.raw == public
    cert = verify_certificate((devdir / "device.cert").read_bytes(), roots, None)
    assert (cert.kind, cert.model, cert.site) == ("refrigerator", "FR-200", "house-1")
    assert cert.owner_x25519 == bytes.fromhex((fleet / "owner.key.pub").read_text())
    assert cert.not_after_ms - cert.not_before_ms == 31 * keystore.DAY_MS
    assert cert.serial == _last_serial(fleet) == 1

    # The minimal layout of docs/DEPLOY.md loads as well: the root and the two device files.
    c = DataDir(fleet / "C")
    c.device("pi").mkdir(parents=True)
    c.authority.mkdir()
    for name in ("device.key", "device.cert"):
        (c.device("pi") / name).write_bytes((devdir / name).read_bytes())
        (c.device("pi") / name).chmod(0o600)
    (c.authority / "fleet-root.json").write_bytes((fleet / "auth" / "fleet-root.json").read_bytes())
    again = keystore.load_device(
        c.device("pi"), b"test passphrase", keystore.load_roots(c.authority)
    )
    assert again.certificate == enrolled.certificate


def test_keys_show_describes_an_enrollment_request(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    capsys.readouterr()
    assert main(["keys", "show", str(fleet / "d" / "enroll.req"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["file"] == "enrollment request"
    assert info["device_id"] == device_id_for(keyfile.public_of(fleet / "d" / "device.key"))
    assert (info["kind"], info["site"], info["owner_x25519"]) == ("refrigerator", "house-1", None)


# --- bad input: one line naming the file and what to do; nothing written -----------------------


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("edgefleet: error: ") and err.count("\n") == 1, err
    return err


def _signed_by_another_key(request: Path) -> None:
    """Re-sign the request's body with a key that is not the one it names."""
    import msgpack

    from ledger import domains
    from ledger.identity import SigningKey

    body, _sig = msgpack.unpackb(request.read_bytes())
    sig = SigningKey.generate().sign(domains.ENROLL_REQUEST, body)
    request.write_bytes(msgpack.packb([body, sig], use_bin_type=True))


def test_a_request_signed_by_another_key_is_refused_and_nothing_issued(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    _signed_by_another_key(fleet / "d" / "enroll.req")
    capsys.readouterr()
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", fleet / "d.cert") == 2
    err = _error(capsys)
    assert str(fleet / "d" / "enroll.req") in err
    assert "signed by another key" in err and "keys init-device" in err
    assert not (fleet / "d.cert").exists()
    assert _last_serial(fleet) == 0


def test_a_request_with_its_attribute_altered_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    req = fleet / "d" / "enroll.req"
    req.write_bytes(req.read_bytes().replace(b"house-1", b"house-2"))
    capsys.readouterr()
    assert _enroll_request(fleet, req, fleet / "d.cert") == 2
    assert "not signed by the key it names" in _error(capsys)
    assert not (fleet / "d.cert").exists()


def test_enroll_request_with_a_wrong_authority_passphrase_issues_nothing(
    fleet: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "wrong")
    capsys.readouterr()
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", fleet / "d.cert") == 2
    err = _error(capsys)
    assert "authority.key" in err and "wrong passphrase" in err
    assert not (fleet / "d.cert").exists()
    assert _last_serial(fleet) == 0


def test_enroll_request_takes_the_attributes_from_the_request_only(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    capsys.readouterr()
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", fleet / "c", "--site", "x") == 2
    assert "--site cannot be set here" in _error(capsys)
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", fleet / "c", "--valid-days", "0") == 2
    assert "--valid-days: expected 1 to 36600, found 0" in _error(capsys)
    (fleet / "c").write_bytes(b"")
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", fleet / "c") == 2
    assert "already exists" in _error(capsys)
    assert (fleet / "c").read_bytes() == b"" and _last_serial(fleet) == 0
    assert main(["keys", "enroll", "--authority", str(fleet / "auth"), "--out", "x"]) == 2
    assert "--kind, --model, --site required" in _error(capsys)


def _issued(fleet: Path, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    """A device dir ``name`` holding a key, and the certificate issued for it (not installed)."""
    assert _init_device(fleet / name) == 0
    out = fleet / f"{name}.cert"
    assert _enroll_request(fleet, fleet / name / "enroll.req", out) == 0
    capsys.readouterr()
    return out


def test_a_certificate_for_another_key_is_not_installed(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _issued(fleet, "x", capsys)
    y_cert = _issued(fleet, "y", capsys)
    before = _files(fleet / "x")
    assert _install(fleet / "x", y_cert, fleet / "auth") == 2
    err = _error(capsys)
    assert str(y_cert) in err and "certificate is for device" in err and "enroll.req" in err
    assert _files(fleet / "x") == before  # no certificate, no fleet root


def test_a_certificate_of_another_fleet_is_not_installed(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = _issued(fleet, "d", capsys)
    assert main(["keys", "init-authority", "--dir", str(fleet / "other")]) == 0
    capsys.readouterr()
    assert _install(fleet / "d", cert, fleet / "other" / "fleet-root.json") == 2
    err = _error(capsys)
    assert str(cert) in err and "another fleet" in err
    assert _files(fleet / "d") == {"device.key", "enroll.req"}


def test_a_data_dir_of_another_fleet_is_refused_before_anything_is_written(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init-authority", "--dir", str(fleet / "B" / "authority")]) == 0
    devdir = fleet / "B" / "devices" / "pi"
    assert _init_device(devdir) == 0
    assert _enroll_request(fleet, devdir / "enroll.req", fleet / "pi.cert") == 0
    capsys.readouterr()
    assert _install(devdir, fleet / "pi.cert", fleet / "auth") == 2
    err = _error(capsys)
    assert str(fleet / "B" / "authority" / "fleet-root.json") in err and "another fleet" in err
    assert _files(devdir) == {"device.key", "enroll.req"}


def test_a_device_dir_with_a_certificate_but_no_key_is_refused(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = _issued(fleet, "d", capsys)
    lost = fleet / "lost"
    lost.mkdir()
    (lost / "device.cert").write_bytes(cert.read_bytes())
    assert _install(lost, cert, fleet / "auth") == 2
    assert str(lost) in (err := _error(capsys)) and "no device.key" in err and "backup" in err
    assert _init_device(lost) == 2
    assert "no device.key" in _error(capsys)
    assert _files(lost) == {"device.cert"}
    with pytest.raises(keystore.KeystoreError, match=r"no device\.key: restore the key"):
        keystore.load_device(lost, b"test passphrase")


def test_init_device_never_overwrites_a_key(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    key, req = ((fleet / "d" / n).read_bytes() for n in ("device.key", "enroll.req"))
    capsys.readouterr()
    assert _init_device(fleet / "d") == 2
    err = _error(capsys)
    assert str(fleet / "d" / "device.key") in err and "never overwritten" in err
    assert (fleet / "d" / "device.key").read_bytes() == key
    assert (fleet / "d" / "enroll.req").read_bytes() == req


def test_init_device_with_a_bad_attribute_writes_nothing(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["keys", "init-device", "--dir", str(fleet / "d"), *ATTRS[:4], "--site", "a/b"])
    assert rc == 2
    assert "field site" in _error(capsys)
    assert not (fleet / "d").exists()


def test_install_cert_with_a_wrong_passphrase_writes_nothing(
    fleet: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = _issued(fleet, "d", capsys)
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "wrong")
    assert _install(fleet / "d", cert, fleet / "auth") == 2
    err = _error(capsys)
    assert str(fleet / "d" / "device.key") in err and "wrong passphrase" in err
    assert "--passphrase-file" in err
    assert _files(fleet / "d") == {"device.key", "enroll.req"}


def test_a_renewed_certificate_replaces_the_installed_one(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _issued(fleet, "d", capsys)
    assert _install(fleet / "d", first, fleet / "auth") == 0
    second = fleet / "renewed.cert"
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", second) == 0
    assert _install(fleet / "d", second, fleet / "auth") == 0
    assert (fleet / "d" / "device.cert").read_bytes() == second.read_bytes()
    assert keystore.load_device(fleet / "d", b"test passphrase").certificate.serial == 2


def test_no_new_authority_is_created_over_an_installed_fleet_root(fleet: Path) -> None:
    """A pre-enrolled data dir holds the fleet root without its key: creating an authority
    there would start a second fleet under the devices' feet."""
    b = DataDir(fleet / "B")
    b.authority.mkdir(parents=True)
    root = (fleet / "auth" / "fleet-root.json").read_bytes()
    (b.authority / "fleet-root.json").write_bytes(root)
    with pytest.raises(keystore.KeystoreError, match=r"no authority\.key: its authority"):
        keystore.init_authority(b.authority, b"pw", keyfile.FAST)
    assert (b.authority / "fleet-root.json").read_bytes() == root
    assert not (b.authority / "authority.key").exists()


def test_enroll_at_a_terminal_asks_before_signing(
    fleet: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    capsys.readouterr()
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", fleet / "d.cert") == 2
    assert "not issued" in _error(capsys)
    assert not (fleet / "d.cert").exists() and _last_serial(fleet) == 0
    assert _enroll_request(fleet, fleet / "d" / "enroll.req", fleet / "d.cert") == 0
    assert _last_serial(fleet) == 1


def test_an_expired_certificate_is_not_installed(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init_device(fleet / "d") == 0
    auth = keystore.load_authority(fleet / "auth", b"test passphrase")
    request = keystore.read_request(fleet / "d" / "enroll.req")
    old = fleet / "old.cert"
    keystore.issue_from_request(fleet / "auth", auth, request, old, valid_days=1, now_ms=10**9)
    capsys.readouterr()
    assert _install(fleet / "d", old, fleet / "auth") == 2
    err = _error(capsys)
    assert str(old) in err and "is not valid at" in err and "issue it again" in err
    assert _files(fleet / "d") == {"device.key", "enroll.req"}
