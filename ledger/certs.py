"""Enrollment: fleet roots, device certificates, key rotations and revocations.

A fleet authority (the manufacturer) holds an Ed25519 key; its public key is the **fleet root**
that every verifier is configured with. Trust always walks certificate -> root:

- **Certificate** (domain CERTIFICATE, signed by a root): ``[format=1, device_pubkey, device_id,
  kind, model, site, owner_x25519|nil, not_before_ms, not_after_ms, serial, authority_key_id]``.
  ``device_id`` must be derived from ``device_pubkey``.
- **Rotation**: ``[body, old_sig, authority_sig]`` with body ``[format=1, device_id, old_key_id,
  new_pubkey, effective_height, time_ms, authority_key_id]``; ``old_sig`` by the current key over
  ROTATION || body, ``authority_sig`` by a root over ROTATION_COUNTERSIGN || body || old_sig.
  Headers at ``effective_height`` and above are signed by the new key.
- **Revocation** (domain REVOCATION, signed by a root): ``[format=1, device_id, key_id|nil,
  from_height, reason, time_ms, authority_key_id]``; ``key_id`` nil revokes the device. Blocks at
  ``from_height`` and above signed by the revoked key (or any key) are rejected; earlier ones,
  accepted before the compromise, stay valid.

``DeviceKeys`` folds a certificate, rotations and revocations into one answer: which public key may
sign a header at a given height.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger import codec, domains, envelope
from ledger.errors import CertificateError, DecodeError, RevokedError, VerificationError
from ledger.identity import (
    KEY_ID_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    PublicKey,
    SigningKey,
    device_id_for,
    is_device_id,
)

FORMAT = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MODEL_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,62}[\x21-\x7e]|[\x21-\x7e]")
_MAX_BODY = 400
_LIMITS = codec.Limits(max_bytes=_MAX_BODY, max_array=11, max_str=64, max_bin=32)
_MAX_HEIGHT = (1 << 63) - 1


def _name(value: object, what: str, field_: str) -> str:
    return codec.text(value, what, field_, 64, lambda s: bool(NAME_RE.fullmatch(s)))


def _format(value: object, what: str) -> None:
    if type(value) is not int or value != FORMAT:
        raise DecodeError(what, f"field format: expected {FORMAT}, found {value!r}")


@dataclass(frozen=True, slots=True)
class FleetRoots:
    """The authority public keys a verifier trusts, by key id."""

    keys: Mapping[bytes, PublicKey]

    @classmethod
    def of(cls, *keys: PublicKey) -> FleetRoots:
        return cls({k.key_id: k for k in keys})

    def get(self, key_id: bytes, what: str) -> PublicKey:
        key = self.keys.get(key_id)
        if key is None:
            known = ", ".join(k.hex() for k in self.keys) or "none"
            raise CertificateError(
                f"{what}: signed by an authority that is not a fleet root",
                f"one of [{known}]",
                key_id.hex(),
            )
        return key


# --- certificates --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    device_key: PublicKey
    device_id: str
    kind: str
    model: str
    site: str
    owner_x25519: bytes | None
    not_before_ms: int
    not_after_ms: int
    serial: int
    authority_key_id: bytes
    wire: bytes = field(default=b"", compare=False)

    def body(self) -> bytes:
        return codec.encode(
            [
                FORMAT,
                self.device_key.raw,
                self.device_id,
                self.kind,
                self.model,
                self.site,
                self.owner_x25519,
                self.not_before_ms,
                self.not_after_ms,
                self.serial,
                self.authority_key_id,
            ]
        )


def issue_certificate(
    authority: SigningKey,
    device_key: PublicKey,
    *,
    kind: str,
    model: str,
    site: str,
    owner_x25519: bytes | None,
    not_before_ms: int,
    not_after_ms: int,
    serial: int,
) -> Certificate:
    cert = Certificate(
        device_key,
        device_key.device_id,
        kind,
        model,
        site,
        owner_x25519,
        not_before_ms,
        not_after_ms,
        serial,
        authority.key_id,
    )
    body = cert.body()
    _parse_cert_body(body)  # refuse to sign what a verifier would refuse to decode
    wire = envelope.wrap(body, authority.sign(domains.CERTIFICATE, body))
    return decode_certificate(wire)


def _parse_cert_body(body: bytes) -> list[Any]:
    w = "certificate"
    f = codec.array(codec.decode(body, _LIMITS, w), 11, w)
    _format(f[0], w)
    codec.bin_(f[1], w, "device_pubkey", PUBLIC_KEY_SIZE)
    codec.text(f[2], w, "device_id", 26, is_device_id)
    if f[2] != device_id_for(f[1]):
        raise DecodeError(
            w,
            f"field device_id: {f[2]} is not derived from the device key "
            f"(expected {device_id_for(f[1])})",
        )
    _name(f[3], w, "kind")
    codec.text(f[4], w, "model", 64, lambda s: bool(MODEL_RE.fullmatch(s)))
    _name(f[5], w, "site")
    if f[6] is not None:
        codec.bin_(f[6], w, "owner_x25519", 32)
    codec.uint(f[7], w, "not_before_ms")
    codec.uint(f[8], w, "not_after_ms")
    if f[8] < f[7]:
        raise DecodeError(w, "field not_after_ms: earlier than not_before_ms")
    codec.uint(f[9], w, "serial")
    codec.bin_(f[10], w, "authority_key_id", KEY_ID_SIZE)
    return f


def decode_certificate(wire: bytes) -> Certificate:
    """Decode (structure only). Use ``verify_certificate`` to check it against the fleet roots."""
    body, _sig = envelope.unwrap(wire, "certificate", _MAX_BODY)
    f = _parse_cert_body(body)
    return Certificate(
        PublicKey(f[1]),
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        f[7],
        f[8],
        f[9],
        f[10],
        wire,
    )


# Certificates whose root signature already verified in this process, keyed by (root key,
# certificate wire): every device of a fleet verifies its peers' certificates, and one process
# may run thousands of devices. Only the signature is remembered (a pure function of its
# inputs); decoding and the validity window are checked on every call. Bounded, oldest first.
_VERIFIED: dict[tuple[bytes, bytes], bool] = {}
_VERIFIED_MAX = 16_384


def verify_certificate(wire: bytes, roots: FleetRoots, now_ms: int | None) -> Certificate:
    """Decode and verify a certificate: signed by a fleet root, valid at ``now_ms`` if given."""
    body, sig = envelope.unwrap(wire, "certificate", _MAX_BODY)
    cert = decode_certificate(wire)
    root = roots.get(cert.authority_key_id, f"certificate of {cert.device_id}")
    if (root.raw, wire) not in _VERIFIED:
        root.verify(domains.CERTIFICATE, body, sig, f"certificate of {cert.device_id}")
        _VERIFIED[(root.raw, wire)] = True
        if len(_VERIFIED) > _VERIFIED_MAX:
            del _VERIFIED[next(iter(_VERIFIED))]
    if now_ms is not None and not cert.not_before_ms <= now_ms <= cert.not_after_ms:
        raise CertificateError(
            f"certificate of {cert.device_id} is not valid at {now_ms} ms",
            f"{cert.not_before_ms}..{cert.not_after_ms}",
            now_ms,
        )
    return cert


# --- rotations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rotation:
    device_id: str
    old_key_id: bytes
    new_key: PublicKey
    effective_height: int
    time_ms: int
    authority_key_id: bytes
    wire: bytes
    body: bytes
    old_sig: bytes
    authority_sig: bytes


def _rotation_body(
    device_id: str,
    old_key_id: bytes,
    new_key: PublicKey,
    effective_height: int,
    time_ms: int,
    authority_key_id: bytes,
) -> bytes:
    return codec.encode(
        [FORMAT, device_id, old_key_id, new_key.raw, effective_height, time_ms, authority_key_id]
    )


def sign_rotation(
    device_id: str,
    old: SigningKey,
    new_key: PublicKey,
    effective_height: int,
    time_ms: int,
    authority_key_id: bytes,
) -> bytes:
    """The device's half: returns ``[body, old_sig]`` bytes for the authority to countersign."""
    body = _rotation_body(
        device_id, old.key_id, new_key, effective_height, time_ms, authority_key_id
    )
    return codec.encode([body, old.sign(domains.ROTATION, body)])


def countersign_rotation(half: bytes, authority: SigningKey) -> bytes:
    w = "rotation request"
    f = codec.array(codec.decode(half, codec.Limits(512, 2, 0, 256), w), 2, w)
    body = codec.bin_(f[0], w, "body", maximum=256)
    old_sig = codec.bin_(f[1], w, "old_sig", SIGNATURE_SIZE)
    _parse_rotation_body(body)
    return codec.encode(
        [body, old_sig, authority.sign(domains.ROTATION_COUNTERSIGN, body + old_sig)]
    )


def _parse_rotation_body(body: bytes) -> list[Any]:
    w = "rotation"
    f = codec.array(codec.decode(body, codec.Limits(256, 7, 26, 32), w), 7, w)
    _format(f[0], w)
    codec.text(f[1], w, "device_id", 26, is_device_id)
    codec.bin_(f[2], w, "old_key_id", KEY_ID_SIZE)
    codec.bin_(f[3], w, "new_pubkey", PUBLIC_KEY_SIZE)
    codec.uint(f[4], w, "effective_height")
    codec.uint(f[5], w, "time_ms")
    codec.bin_(f[6], w, "authority_key_id", KEY_ID_SIZE)
    return f


def decode_rotation(wire: bytes) -> Rotation:
    w = "rotation"
    f = codec.array(codec.decode(wire, codec.Limits(512, 3, 0, 256), w), 3, w)
    body = codec.bin_(f[0], w, "body", maximum=256)
    old_sig = codec.bin_(f[1], w, "old_sig", SIGNATURE_SIZE)
    auth_sig = codec.bin_(f[2], w, "authority_sig", SIGNATURE_SIZE)
    b = _parse_rotation_body(body)
    return Rotation(
        b[1],
        b[2],
        PublicKey(b[3]),
        b[4],
        b[5],
        b[6],
        wire,
        body,
        old_sig,
        auth_sig,
    )


# --- revocations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revocation:
    device_id: str
    key_id: bytes | None
    from_height: int
    reason: str
    time_ms: int
    authority_key_id: bytes
    wire: bytes
    body: bytes
    signature: bytes


def sign_revocation(
    authority: SigningKey,
    device_id: str,
    key_id: bytes | None,
    from_height: int,
    reason: str,
    time_ms: int,
) -> bytes:
    body = codec.encode([FORMAT, device_id, key_id, from_height, reason, time_ms, authority.key_id])
    _parse_revocation_body(body)
    return envelope.wrap(body, authority.sign(domains.REVOCATION, body))


def _parse_revocation_body(body: bytes) -> list[Any]:
    w = "revocation"
    f = codec.array(codec.decode(body, codec.Limits(256, 7, 64, 8), w), 7, w)
    _format(f[0], w)
    codec.text(f[1], w, "device_id", 26, is_device_id)
    if f[2] is not None:
        codec.bin_(f[2], w, "key_id", KEY_ID_SIZE)
    codec.uint(f[3], w, "from_height")
    codec.text(f[4], w, "reason", 64)
    codec.uint(f[5], w, "time_ms")
    codec.bin_(f[6], w, "authority_key_id", KEY_ID_SIZE)
    return f


def decode_revocation(wire: bytes) -> Revocation:
    body, sig = envelope.unwrap(wire, "revocation", 256)
    f = _parse_revocation_body(body)
    return Revocation(f[1], f[2], f[3], f[4], f[5], f[6], wire, body, sig)


def verify_revocation(wire: bytes, roots: FleetRoots) -> Revocation:
    rev = decode_revocation(wire)
    root = roots.get(rev.authority_key_id, f"revocation of {rev.device_id}")
    root.verify(domains.REVOCATION, rev.body, rev.signature, f"revocation of {rev.device_id}")
    return rev


# --- the resolver ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _KeySpan:
    key: PublicKey
    from_height: int
    until_height: int  # exclusive


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """Which key may sign what, for one enrolled device, after rotations and revocations."""

    certificate: Certificate
    spans: tuple[_KeySpan, ...]
    revoked_from: Mapping[bytes | None, int]  # key id (None: whole device) -> first bad height

    @property
    def device_id(self) -> str:
        return self.certificate.device_id

    def key_for(self, key_id: bytes, height: int, *, honour_revocations: bool = True) -> PublicKey:
        """The public key that signs the header at ``height`` if it names ``key_id``."""
        for bad_key in (None, key_id) if honour_revocations else ():
            start = self.revoked_from.get(bad_key)
            if start is not None and height >= start:
                who = "device" if bad_key is None else f"key {key_id.hex()}"
                raise RevokedError(
                    f"{self.device_id}: {who} is revoked from height {start}",
                    f"height < {start}",
                    height,
                )
        for span in self.spans:
            if span.from_height <= height < span.until_height:
                if span.key.key_id != key_id:
                    raise VerificationError(
                        f"{self.device_id}: wrong key for height {height}",
                        span.key.key_id.hex(),
                        key_id.hex(),
                    )
                return span.key
        raise VerificationError(f"{self.device_id}: no key covers height {height}")

    def key_at(self, height: int) -> PublicKey:
        """The key in force at ``height`` by rotations alone (what signs pending readings)."""
        for span in self.spans:
            if span.from_height <= height < span.until_height:
                return span.key
        raise VerificationError(f"{self.device_id}: no key covers height {height}")

    @classmethod
    def build(
        cls,
        certificate_wire: bytes,
        roots: FleetRoots,
        *,
        now_ms: int | None,
        rotations: Iterable[bytes] = (),
        revocations: Iterable[bytes] = (),
    ) -> DeviceKeys:
        cert = verify_certificate(certificate_wire, roots, now_ms)
        spans: list[_KeySpan] = []
        current, start = cert.device_key, 0
        for rwire in rotations:
            rot = decode_rotation(rwire)
            what = f"rotation of {cert.device_id} at height {rot.effective_height}"
            if rot.device_id != cert.device_id:
                raise VerificationError(f"{what}: device", cert.device_id, rot.device_id)
            if rot.old_key_id != current.key_id:
                raise VerificationError(
                    f"{what}: old key id", current.key_id.hex(), rot.old_key_id.hex()
                )
            if rot.effective_height <= start:
                raise VerificationError(
                    f"{what}: rotations must move forward", f"> {start}", rot.effective_height
                )
            current.verify(domains.ROTATION, rot.body, rot.old_sig, what)
            roots.get(rot.authority_key_id, what).verify(
                domains.ROTATION_COUNTERSIGN, rot.body + rot.old_sig, rot.authority_sig, what
            )
            spans.append(_KeySpan(current, start, rot.effective_height))
            current, start = rot.new_key, rot.effective_height
        spans.append(_KeySpan(current, start, _MAX_HEIGHT + 1))
        revoked: dict[bytes | None, int] = {}
        for vwire in revocations:
            rev = verify_revocation(vwire, roots)
            if rev.device_id != cert.device_id:
                continue
            prev = revoked.get(rev.key_id)
            revoked[rev.key_id] = rev.from_height if prev is None else min(prev, rev.from_height)
        return cls(cert, tuple(spans), revoked)

    def check_not_revoked(self) -> None:
        if None in self.revoked_from and self.revoked_from[None] == 0:
            raise RevokedError(f"{self.device_id}: device is revoked")
