"""Secret keys at rest: a 32-byte secret encrypted under a passphrase, in a 0600 file.

File format (JSON, UTF-8, docs/PROTOCOL.md section 11): ``{"format": "edgefleet-key/1",
"role": "device"|"authority"|"owner", "public": hex, "kdf": "argon2id", "opslimit": int,
"memlimit": int, "salt": hex, "box": hex}``. The key is ``argon2id(passphrase, salt, opslimit,
memlimit)`` (libsodium, 32 bytes) and ``box`` is a SecretBox (XSalsa20-Poly1305) of the 32-byte
secret with its nonce prepended. The secret is an Ed25519 seed for the ``device`` and
``authority`` roles (``public`` is the Ed25519 public key) and an X25519 secret key for the
``owner`` role (``public`` is the X25519 public key). Files are written atomically with mode
0600 and refused on read when group or others can read them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from ledger import sealbox
from ledger.errors import KeyFileError
from ledger.identity import SigningKey

FORMAT = "edgefleet-key/1"
OWNER = "owner"  # the role of an X25519 owner key; the other roles hold Ed25519 seeds
SECRET_SIZE = 32
INTERACTIVE = (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE)
# The cheapest parameters libsodium allows: for tests and large simulated fleets only.
FAST = (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN)


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )


def seal_secret(
    secret: bytes,
    public: bytes,
    passphrase: bytes,
    role: str,
    cost: tuple[int, int] = INTERACTIVE,
    *,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """The key file bytes for ``secret``. ``salt`` and ``nonce`` are drawn fresh unless given
    (test vectors only: a reused salt and nonce would tie two files together)."""
    if salt is None:
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, *cost)).encrypt(secret, nonce)
    doc = {
        "format": FORMAT,
        "role": role,
        "public": public.hex(),
        "kdf": "argon2id",
        "opslimit": cost[0],
        "memlimit": cost[1],
        "salt": salt.hex(),
        "box": bytes(box).hex(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def seal(
    key: SigningKey, passphrase: bytes, role: str, cost: tuple[int, int] = INTERACTIVE
) -> bytes:
    return seal_secret(key.seed, key.public.raw, passphrase, role, cost)


def seal_owner(secret: bytes, passphrase: bytes, cost: tuple[int, int] = INTERACTIVE) -> bytes:
    """An owner key file: the X25519 ``secret`` under ``passphrase``."""
    return seal_secret(secret, sealbox.public_key_of(secret), passphrase, OWNER, cost)


def is_key_file(data: bytes) -> bool:
    """True when ``data`` looks like a key file of this module (a JSON object), whatever its
    content: callers tell it apart from the old plain-hex owner keys with it."""
    return data.lstrip().startswith(b"{")


def unseal_secret(
    data: bytes, passphrase: bytes, where: str = "key file"
) -> tuple[bytes, bytes, str]:
    """``(secret, public, role)`` from key file bytes; the caller checks that they match."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT or doc.get("kdf") != "argon2id":
            raise KeyFileError(f"{where}: not an {FORMAT} argon2id file")
        salt = bytes.fromhex(doc["salt"])
        box = bytes.fromhex(doc["box"])
        ops, mem, role = int(doc["opslimit"]), int(doc["memlimit"]), str(doc["role"])
        public = bytes.fromhex(doc["public"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"{where}: malformed key file ({exc})") from None
    try:
        secret = nacl.secret.SecretBox(_derive(passphrase, salt, ops, mem)).decrypt(box)
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"{where}: wrong passphrase or corrupted file") from None
    if len(secret) != SECRET_SIZE:
        raise KeyFileError(f"{where}: sealed secret has {len(secret)} bytes, expected 32")
    return bytes(secret), public, role


def unseal(data: bytes, passphrase: bytes, where: str = "key file") -> tuple[SigningKey, str]:
    """An Ed25519 signing key and its role (``device`` or ``authority``)."""
    seed, public, role = unseal_secret(data, passphrase, where)
    if role == OWNER:
        raise KeyFileError(f"{where}: holds an X25519 owner key, not an Ed25519 signing key")
    key = SigningKey(seed)
    if key.public.raw != public:
        raise KeyFileError(f"{where}: public key does not match the sealed secret")
    return key, role


def unseal_owner(data: bytes, passphrase: bytes, where: str = "key file") -> bytes:
    """The X25519 secret of an owner key file."""
    secret, public, role = unseal_secret(data, passphrase, where)
    if role != OWNER:
        raise KeyFileError(f"{where}: holds a {role} key, not an owner key")
    if sealbox.public_key_of(secret) != public:
        raise KeyFileError(f"{where}: public key does not match the sealed secret")
    return secret


def write(
    path: Path, key: SigningKey, passphrase: bytes, role: str, cost: tuple[int, int] = INTERACTIVE
) -> None:
    """Write atomically with mode 0600; never overwrite an existing key."""
    if path.exists():
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    write_private(path, seal(key, passphrase, role, cost))


def write_owner(
    path: Path, secret: bytes, passphrase: bytes, cost: tuple[int, int] = INTERACTIVE
) -> None:
    """Write an owner key file atomically with mode 0600; never overwrite an existing key."""
    if path.exists():
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    write_private(path, seal_owner(secret, passphrase, cost))


def _write_temporary(path: Path, data: bytes) -> Path:
    # Created exclusively (a stale one from a crash is removed first, never reused with its old
    # mode) and fsynced before it is moved into place.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file atomically; refuse (KeyFileError) if ``path`` exists.

    The temporary file is hard-linked into place: ``link`` fails if the target appeared
    meanwhile, so an existing key is never overwritten.
    """
    tmp = _write_temporary(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    finally:
        tmp.unlink(missing_ok=True)


def replace_private(path: Path, data: bytes) -> None:
    """Replace the file at ``path`` by a 0600 file holding ``data``, atomically (a reader sees
    the old bytes or the new ones). Only for re-writing a key in a new form, never a new key."""
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_private(path: Path) -> bytes:
    """The bytes of a secret file, refused when group or others may read it."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: permissions {oct(mode & 0o777)} are too open; "
            f"expected 0600 (chmod 600 {path})"
        )
    return data


def read(path: Path, passphrase: bytes) -> tuple[SigningKey, str]:
    return unseal(read_private(path), passphrase, str(path))


def read_owner(path: Path, passphrase: bytes) -> bytes:
    """The X25519 secret of the owner key file at ``path``."""
    return unseal_owner(read_private(path), passphrase, str(path))


def public_of(path: Path) -> bytes:
    """The public key recorded in a key file (no passphrase needed)."""
    try:
        return bytes.fromhex(json.loads(path.read_bytes())["public"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot read the public key ({exc})") from None
