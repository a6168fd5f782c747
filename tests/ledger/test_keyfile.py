"""Key files: passphrase-sealed seeds in 0600 files (cheapest argon2id cost to stay fast)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ledger import keyfile
from ledger.errors import KeyFileError
from ledger.identity import SigningKey
from ledger.sealbox import public_key_of

PASS = b"correct horse battery staple"


@pytest.fixture
def key_path(tmp_path: Path, device_key: SigningKey) -> Path:
    path = tmp_path / "device.key"
    keyfile.write(path, device_key, PASS, "device", keyfile.FAST)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_and_mode(key_path: Path, device_key: SigningKey) -> None:
    assert _mode(key_path) == 0o600
    key, role = keyfile.read(key_path, PASS)
    assert role == "device"
    assert key.seed == device_key.seed and key.public == device_key.public
    assert keyfile.public_of(key_path) == device_key.public.raw
    doc = json.loads(key_path.read_bytes())
    assert doc["format"] == "edgefleet-key/1" and doc["kdf"] == "argon2id"
    assert device_key.seed.hex() not in key_path.read_text()  # the seed is sealed, not stored
    assert not list(key_path.parent.glob(".*.tmp"))  # no temporary left behind


def test_round_trip_authority_role(tmp_path: Path, authority: SigningKey) -> None:
    path = tmp_path / "authority.key"
    keyfile.write(path, authority, PASS, "authority", keyfile.FAST)
    key, role = keyfile.read(path, PASS)
    assert (key.public, role) == (authority.public, "authority")


def test_each_write_uses_a_fresh_salt(tmp_path: Path, device_key: SigningKey) -> None:
    a = keyfile.seal(device_key, PASS, "device", keyfile.FAST)
    b = keyfile.seal(device_key, PASS, "device", keyfile.FAST)
    assert json.loads(a)["salt"] != json.loads(b)["salt"]
    assert json.loads(a)["box"] != json.loads(b)["box"]
    assert keyfile.unseal(a, PASS)[0].seed == keyfile.unseal(b, PASS)[0].seed == device_key.seed


@pytest.mark.parametrize("wrong", [b"", b"correct horse battery stapl", PASS + b" "])
def test_wrong_passphrase(key_path: Path, wrong: bytes) -> None:
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        keyfile.read(key_path, wrong)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601])
def test_files_readable_by_others_are_refused(key_path: Path, mode: int) -> None:
    os.chmod(key_path, mode)
    with pytest.raises(KeyFileError, match="too open"):
        keyfile.read(key_path, PASS)
    os.chmod(key_path, 0o400)  # stricter than 0600 is fine
    assert keyfile.read(key_path, PASS)[1] == "device"


def test_refuses_to_overwrite(key_path: Path, other_device_key: SigningKey) -> None:
    before = key_path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        keyfile.write(key_path, other_device_key, PASS, "device", keyfile.FAST)
    assert key_path.read_bytes() == before


def test_mode_is_0600_even_over_a_stale_temporary(tmp_path: Path, device_key: SigningKey) -> None:
    """A temporary left by a crashed write (created with a looser mode) must not leak the mode
    into the key file."""
    path = tmp_path / "device.key"
    stale = tmp_path / ".device.key.tmp"
    stale.write_bytes(b"half-written")
    os.chmod(stale, 0o644)
    keyfile.write(path, device_key, PASS, "device", keyfile.FAST)
    assert _mode(path) == 0o600
    assert keyfile.read(path, PASS)[0].public == device_key.public


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        keyfile.read(tmp_path / "absent.key", PASS)
    with pytest.raises(KeyFileError):
        keyfile.public_of(tmp_path / "absent.key")


def _rewrite(
    path: Path,
    edit: dict[str, object] | None = None,
    raw: bytes | None = None,
    drop: str | None = None,
) -> None:
    if raw is None:
        doc = json.loads(path.read_bytes())
        doc.update(edit or {})
        if drop:
            del doc[drop]
        raw = json.dumps(doc).encode()
    path.write_bytes(raw)
    os.chmod(path, 0o600)


@pytest.mark.parametrize(
    ("edit", "raw", "drop"),
    [
        (None, b"{not json", None),
        (None, b"", None),
        (None, b"\xff\xfe", None),
        (None, b"[1, 2]", None),
        (None, b"null", None),
        ({"format": "edgefleet-key/2"}, None, None),
        ({"kdf": "scrypt"}, None, None),
        ({"salt": "zz"}, None, None),
        ({"salt": "00"}, None, None),  # wrong salt length
        ({"box": "00" * 8}, None, None),  # shorter than a nonce and a MAC
        ({"opslimit": "many"}, None, None),
        ({"public": "00" * 32}, None, None),  # does not match the sealed secret
        (None, None, "box"),
        (None, None, "salt"),
        (None, None, "role"),
    ],
    ids=[
        "truncated-json",
        "empty",
        "not-utf8",
        "array",
        "null",
        "format",
        "kdf",
        "salt-hex",
        "salt-length",
        "box-short",
        "opslimit-type",
        "public-mismatch",
        "no-box",
        "no-salt",
        "no-role",
    ],
)
def test_corrupted_files_raise_key_file_error(
    key_path: Path, edit: dict[str, object] | None, raw: bytes | None, drop: str | None
) -> None:
    _rewrite(key_path, edit, raw, drop)
    with pytest.raises(KeyFileError):
        keyfile.read(key_path, PASS)


def test_flipped_bit_in_the_box_is_detected(key_path: Path) -> None:
    doc = json.loads(key_path.read_bytes())
    box = bytearray(bytes.fromhex(doc["box"]))
    box[-1] ^= 0x01
    _rewrite(key_path, {"box": box.hex()})
    with pytest.raises(KeyFileError, match="wrong passphrase or corrupted"):
        keyfile.read(key_path, PASS)


def test_owner_key_round_trip_and_roles(tmp_path: Path, device_key: SigningKey) -> None:
    """Owner keys (X25519) share the file format with role "owner"; neither kind of key file
    can be read as the other."""
    secret = bytes(range(32))
    path = tmp_path / "owner.key"
    keyfile.write_owner(path, secret, PASS, keyfile.FAST)
    assert _mode(path) == 0o600
    doc = json.loads(path.read_bytes())
    assert doc["role"] == "owner" and bytes.fromhex(doc["public"]) == public_key_of(secret)
    assert secret.hex() not in path.read_text()
    assert keyfile.read_owner(path, PASS) == secret
    assert keyfile.public_of(path) == public_key_of(secret)
    with pytest.raises(KeyFileError, match="not an Ed25519 signing key"):
        keyfile.read(path, PASS)
    device = tmp_path / "device.key"
    keyfile.write(device, device_key, PASS, "device", keyfile.FAST)
    with pytest.raises(KeyFileError, match="holds a device key, not an owner key"):
        keyfile.read_owner(device, PASS)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        keyfile.read_owner(path, PASS + b"!")
    with pytest.raises(KeyFileError, match="already exists"):
        keyfile.write_owner(path, secret, PASS, keyfile.FAST)


def test_a_swapped_owner_public_key_is_refused(tmp_path: Path) -> None:
    doc = json.loads(keyfile.seal_owner(bytes(range(32)), PASS, keyfile.FAST))
    doc["public"] = public_key_of(bytes(32)).hex()
    with pytest.raises(KeyFileError, match="does not match"):
        keyfile.unseal_owner(json.dumps(doc).encode(), PASS)


def test_fixed_salt_and_nonce_give_fixed_bytes() -> None:
    """What the published key-file vector relies on (tests/vectors)."""
    salt, nonce = bytes(16), bytes(24)
    a = keyfile.seal_secret(
        bytes(32), bytes(32), PASS, "owner", keyfile.FAST, salt=salt, nonce=nonce
    )
    b = keyfile.seal_secret(
        bytes(32), bytes(32), PASS, "owner", keyfile.FAST, salt=salt, nonce=nonce
    )
    assert a == b and json.loads(a)["box"].startswith(nonce.hex())


def test_replace_private_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    keyfile.write_private(path, b"old")
    keyfile.replace_private(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))
