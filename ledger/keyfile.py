"""Secret keys at rest: an Ed25519 seed encrypted under a passphrase, in a 0600 file.

File format (JSON, UTF-8): ``{"format": "edgefleet-key/1", "role": "device"|"authority",
"public": hex, "kdf": "argon2id", "opslimit": int, "memlimit": int, "salt": hex, "box": hex}``.
The key is ``argon2id(passphrase, salt, opslimit, memlimit)`` (libsodium, 32 bytes) and ``box`` is
a SecretBox (XSalsa20-Poly1305) of the 32-byte seed with its nonce prepended. Files are written
atomically with mode 0600 and refused on read when group or others can read them.
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

from ledger.errors import KeyFileError
from ledger.identity import SigningKey

FORMAT = "edgefleet-key/1"
INTERACTIVE = (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE)
# The cheapest parameters libsodium allows: for tests and large simulated fleets only.
FAST = (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN)


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )


def seal(
    key: SigningKey, passphrase: bytes, role: str, cost: tuple[int, int] = INTERACTIVE
) -> bytes:
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, *cost)).encrypt(key.seed)
    doc = {
        "format": FORMAT,
        "role": role,
        "public": key.public.hex(),
        "kdf": "argon2id",
        "opslimit": cost[0],
        "memlimit": cost[1],
        "salt": salt.hex(),
        "box": bytes(box).hex(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def unseal(data: bytes, passphrase: bytes, where: str = "key file") -> tuple[SigningKey, str]:
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
        seed = nacl.secret.SecretBox(_derive(passphrase, salt, ops, mem)).decrypt(box)
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"{where}: wrong passphrase or corrupted file") from None
    key = SigningKey(bytes(seed))
    if key.public.raw != public:
        raise KeyFileError(f"{where}: public key does not match the sealed secret")
    return key, role


def write(
    path: Path, key: SigningKey, passphrase: bytes, role: str, cost: tuple[int, int] = INTERACTIVE
) -> None:
    """Write atomically with mode 0600; never overwrite an existing key."""
    if path.exists():
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    write_private(path, seal(key, passphrase, role, cost))


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file atomically; refuse (KeyFileError) if ``path`` exists.

    The temporary file is created exclusively (a stale one from a crash is removed first, never
    reused with its old mode), fsynced, then hard-linked into place: ``link`` fails if the
    target appeared meanwhile, so an existing key is never overwritten.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path, passphrase: bytes) -> tuple[SigningKey, str]:
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
    return unseal(data, passphrase, str(path))


def public_of(path: Path) -> bytes:
    """The public key recorded in a key file (no passphrase needed)."""
    try:
        return bytes.fromhex(json.loads(path.read_bytes())["public"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot read the public key ({exc})") from None
