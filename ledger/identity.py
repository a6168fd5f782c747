"""Keys and names: Ed25519 signing keys, device ids and key ids.

- A **device id** is derived from the device's first public key:
  ``"ef" + base32(SHA-256(DEVICE_ID || pubkey)[:15])`` in lower case without padding, 26
  characters of ``[a-z2-7]``. It can never hold an MQTT wildcard, a slash or a NUL, so it is a safe
  topic level. It stays the same across key rotations.
- A **key id** names one public key: ``SHA-256(KEY_ID || pubkey)[:8]``.

Keys are typed values checked on construction; ``verify`` raises and never returns False.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.signing

from ledger import domains
from ledger.errors import SignatureError, UsageError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_ID_SIZE = 8
DEVICE_ID_RE = re.compile(r"^ef[a-z2-7]{24}$")


def device_id_for(public_key: bytes) -> str:
    digest = hashlib.sha256(domains.DEVICE_ID + public_key).digest()[:15]
    return "ef" + base64.b32encode(digest).decode("ascii").lower()


def key_id_for(public_key: bytes) -> bytes:
    return hashlib.sha256(domains.KEY_ID + public_key).digest()[:KEY_ID_SIZE]


def is_device_id(value: str) -> bool:
    return bool(DEVICE_ID_RE.fullmatch(value))


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key that verifies domain-separated signatures."""

    raw: bytes
    _vk: nacl.signing.VerifyKey = field(init=False, repr=False, compare=False)
    # Made once: every header checked asks which key signs it (one hash each time, before).
    _key_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.raw) is not bytes or len(self.raw) != PUBLIC_KEY_SIZE:
            raise UsageError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
        object.__setattr__(self, "_vk", nacl.signing.VerifyKey(self.raw))
        object.__setattr__(self, "_key_id", key_id_for(self.raw))

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def device_id(self) -> str:
        return device_id_for(self.raw)

    def verify(self, domain: bytes, message: bytes, signature: bytes, what: str) -> None:
        """Raise SignatureError unless ``signature`` signs ``domain || message`` under this key."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError(f"{what}: signature length", SIGNATURE_SIZE, len(signature))
        try:
            self._vk.verify(domain + message, signature)
        except nacl.exceptions.BadSignatureError:
            raise SignatureError(
                f"{what}: signature does not verify under key {self.key_id.hex()}"
            ) from None

    def hex(self) -> str:
        return self.raw.hex()


@dataclass(frozen=True, slots=True, eq=False)
class SigningKey:
    """An Ed25519 secret key (its 32-byte seed). Never printed, never compared by value."""

    seed: bytes = field(repr=False)
    public: PublicKey = field(init=False, compare=False)
    _sk: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.seed) is not bytes or len(self.seed) != 32:
            raise UsageError("an Ed25519 seed is 32 bytes")
        pk, sk = nacl.bindings.crypto_sign_seed_keypair(self.seed)
        object.__setattr__(self, "_sk", sk)
        object.__setattr__(self, "public", PublicKey(pk))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def key_id(self) -> bytes:
        return self.public.key_id

    def sign(self, domain: bytes, message: bytes) -> bytes:
        """Detached Ed25519 signature over ``domain || message``."""
        signed = nacl.bindings.crypto_sign(domain + message, self._sk)
        return signed[:SIGNATURE_SIZE]
