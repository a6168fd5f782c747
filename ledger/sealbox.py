"""Sealed boxes whose per-message key can be recomputed and handed over on its own.

The construction is libsodium's sealed box (``crypto_box_seal``), spelled out so that the
per-message key is visible (docs/PRIVATE.md):

- the sender draws an ephemeral X25519 key pair ``(esk, epk)``;
- the **message key** is ``k = crypto_box_beforenm(recipient_pk, esk)`` (X25519 then HSalsa20),
  which the recipient recomputes as ``crypto_box_beforenm(epk, recipient_sk)``;
- the nonce is ``BLAKE2b-192(epk || recipient_pk)`` (unkeyed, 24-byte digest);
- the ciphertext is ``crypto_box_afternm(plaintext, nonce, k)``: the 16-byte Poly1305 tag
  followed by the XSalsa20 stream ciphertext.

``epk || ciphertext`` is byte for byte what ``nacl.public.SealedBox(recipient).encrypt`` yields,
but ``k`` opens exactly one message and reveals nothing about the recipient's secret key, so the
recipient can give ``k`` away to let someone else read that one message.
"""

from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions
import nacl.public

from ledger.errors import UsageError

X25519_SIZE = 32
KEY_SIZE = 32
MAC_SIZE = 16


def public_key_of(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret key."""
    _check32(secret, "X25519 secret key")
    return nacl.bindings.crypto_scalarmult_base(secret)


def check_public_key(pk: bytes, what: str = "X25519 public key") -> bytes:
    """``pk`` if it is a usable X25519 public key (32 bytes, not a low-order point)."""
    _check32(pk, what)
    try:
        nacl.bindings.crypto_box_beforenm(pk, _PROBE)
    except nacl.exceptions.CryptoError:
        raise UsageError(
            f"{what} {pk.hex()} is a low-order point: nothing sealed to it is secret"
        ) from None
    return pk


_PROBE = hashlib.sha256(b"edgefleet/v1/x25519-probe").digest()


def nonce(epk: bytes, recipient_pk: bytes) -> bytes:
    return hashlib.blake2b(epk + recipient_pk, digest_size=24).digest()


def seal(
    plaintext: bytes, recipient_pk: bytes, ephemeral_secret: bytes | None = None
) -> tuple[bytes, bytes]:
    """Seal ``plaintext`` to ``recipient_pk``: returns ``(epk, ciphertext)``.

    ``ephemeral_secret`` is for test vectors only; by default a fresh key is drawn per message.
    """
    check_public_key(recipient_pk, "recipient X25519 public key")
    esk = bytes(nacl.public.PrivateKey.generate()) if ephemeral_secret is None else ephemeral_secret
    epk = public_key_of(esk)
    k = nacl.bindings.crypto_box_beforenm(recipient_pk, esk)
    return epk, nacl.bindings.crypto_box_afternm(plaintext, nonce(epk, recipient_pk), k)


def message_key(epk: bytes, recipient_secret: bytes) -> bytes | None:
    """The recipient's side of ``k`` (None when ``epk`` is a low-order point: nothing opens)."""
    _check32(recipient_secret, "X25519 secret key")
    if len(epk) != X25519_SIZE:
        return None
    try:
        return nacl.bindings.crypto_box_beforenm(epk, recipient_secret)
    except nacl.exceptions.CryptoError:
        return None


def open_with_key(ciphertext: bytes, epk: bytes, recipient_pk: bytes, k: bytes) -> bytes | None:
    """Decrypt with the message key; None when the tag does not verify (wrong key or altered)."""
    if len(ciphertext) < MAC_SIZE or len(k) != KEY_SIZE:
        return None
    try:
        return nacl.bindings.crypto_box_open_afternm(ciphertext, nonce(epk, recipient_pk), k)
    except nacl.exceptions.CryptoError:
        return None


def _check32(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) != X25519_SIZE:
        found = len(value) if isinstance(value, bytes) else type(value).__name__
        raise UsageError(f"{what}: expected 32 bytes, found {found}")
