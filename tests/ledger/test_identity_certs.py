"""Identities (typed keys, device ids, key ids) and enrollment (certificates, rotations,
revocations folded by ``DeviceKeys``)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import domains
from ledger.certs import (
    Certificate,
    DeviceKeys,
    FleetRoots,
    countersign_rotation,
    issue_certificate,
    sign_revocation,
    sign_rotation,
    verify_certificate,
    verify_revocation,
)
from ledger.errors import (
    CertificateError,
    DecodeError,
    RevokedError,
    SignatureError,
    UsageError,
    VerificationError,
)
from ledger.identity import (
    DEVICE_ID_RE,
    PublicKey,
    SigningKey,
    device_id_for,
    is_device_id,
    key_id_for,
)

from .conftest import NOT_AFTER_MS, NOT_BEFORE_MS, NOW_MS

STRICT_ID = re.compile(r"\Aef[a-z2-7]{24}\Z")


# --- device ids and key ids -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_device_ids_are_safe_topic_levels(seed: bytes) -> None:
    key = SigningKey(seed)
    device_id = key.public.device_id
    assert STRICT_ID.match(device_id) and DEVICE_ID_RE.match(device_id)
    assert len(device_id) == 26 and is_device_id(device_id)
    assert not set(device_id) & {"+", "#", "/", "\x00", "\n", " "}
    assert device_id == device_id_for(seed_public := key.public.raw)
    assert key.key_id == key_id_for(seed_public) == PublicKey(seed_public).key_id
    assert len(key.key_id) == 8


def test_device_and_key_ids_are_stable_and_distinct(
    device_key: SigningKey, other_device_key: SigningKey
) -> None:
    again = SigningKey(device_key.seed)
    assert again.public.device_id == device_key.public.device_id
    assert again.key_id == device_key.key_id
    assert PublicKey(device_key.public.raw).key_id == device_key.key_id
    assert device_key.public.device_id != other_device_key.public.device_id
    assert device_key.key_id != other_device_key.key_id
    digest = hashlib.sha256(domains.KEY_ID + device_key.public.raw).digest()
    assert device_key.key_id == digest[:8]


@pytest.mark.parametrize(
    "candidate",
    [
        "ef" + "a" * 23,
        "ef" + "a" * 25,
        "EF" + "a" * 24,
        "ef" + "A" * 24,
        "ef" + "a" * 23 + "1",  # base32 has no 0, 1, 8, 9
        "ef" + "a" * 23 + "+",
        "ef" + "a" * 23 + "#",
        "ef" + "a" * 23 + "/",
        "ef" + "a" * 23 + "\x00",
        "xx" + "a" * 24,
        "",
    ],
)
def test_is_device_id_rejects_malformed_ids(candidate: str) -> None:
    assert not is_device_id(candidate)


@pytest.mark.parametrize("suffix", ["\n", "\x00", "/", "#"])
def test_is_device_id_rejects_a_valid_id_with_anything_appended(
    suffix: str, device_key: SigningKey
) -> None:
    """``$`` also matches before a trailing newline: the check must anchor at the very end."""
    assert not is_device_id(device_key.public.device_id + suffix)


# --- typed keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64, bytearray(32), "a" * 32, None], ids=repr
)
def test_keys_of_the_wrong_size_or_type_are_refused(raw: object) -> None:
    with pytest.raises(UsageError):
        PublicKey(raw)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        SigningKey(raw)  # type: ignore[arg-type]


def test_secret_seed_is_never_printed(device_key: SigningKey) -> None:
    assert device_key.seed.hex() not in repr(device_key)
    assert repr(device_key.seed) not in repr(device_key)


def test_verify_raises_and_never_returns_false(
    device_key: SigningKey, other_device_key: SigningKey
) -> None:
    sig = device_key.sign(domains.READING, b"body")
    device_key.public.verify(domains.READING, b"body", sig, "x")  # raises if it fails
    cases = [
        (device_key.public, domains.HEADER, b"body", sig),  # another domain
        (device_key.public, domains.READING, b"bodz", sig),
        (other_device_key.public, domains.READING, b"body", sig),
        (device_key.public, domains.READING, b"body", sig[:63]),
        (device_key.public, domains.READING, b"body", sig + b"\x00"),
        (device_key.public, domains.READING, b"body", bytes(64)),
    ]
    for key, domain, body, signature in cases:
        with pytest.raises(SignatureError):
            key.verify(domain, body, signature, "x")


def test_signing_is_deterministic_and_domain_separated(device_key: SigningKey) -> None:
    a = device_key.sign(domains.READING, b"m")
    assert a == device_key.sign(domains.READING, b"m")
    assert a != device_key.sign(domains.HEADER, b"m")


# --- certificates ---------------------------------------------------------------------------


def test_certificate_fields_and_window(
    cert: Certificate, roots: FleetRoots, device_key: SigningKey, authority: SigningKey
) -> None:
    assert cert.device_key == device_key.public
    assert cert.device_id == device_key.public.device_id
    assert cert.authority_key_id == authority.key_id
    assert (cert.kind, cert.model, cert.site, cert.serial) == (
        "refrigerator",
        "RF-200",
        "store-12",
        1,
    )
    for now in (NOT_BEFORE_MS, NOW_MS, NOT_AFTER_MS, None):
        assert verify_certificate(cert.wire, roots, now) == cert
    for now in (NOT_BEFORE_MS - 1, NOT_AFTER_MS + 1, 0):
        with pytest.raises(CertificateError) as info:
            verify_certificate(cert.wire, roots, now)
        assert type(info.value) is CertificateError
        assert info.value.found == now


def test_certificate_needs_a_fleet_root(
    cert: Certificate, rogue_authority: SigningKey, device_key: SigningKey, authority: SigningKey
) -> None:
    with pytest.raises(CertificateError, match="not a fleet root"):
        verify_certificate(cert.wire, FleetRoots.of(rogue_authority.public), NOW_MS)
    with pytest.raises(CertificateError):
        verify_certificate(cert.wire, FleetRoots({}), NOW_MS)
    # A fleet may trust several roots: a certificate from any of them is accepted.
    two = FleetRoots.of(rogue_authority.public, authority.public)
    assert verify_certificate(cert.wire, two, NOW_MS) == cert
    by_rogue = issue_certificate(
        rogue_authority,
        device_key.public,
        kind="k",
        model="m",
        site="s",
        owner_x25519=None,
        not_before_ms=0,
        not_after_ms=NOT_AFTER_MS,
        serial=9,
    )
    assert verify_certificate(by_rogue.wire, two, NOW_MS).serial == 9


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", ""),
        ("kind", "has space"),
        ("model", "x" * 65),
        ("site", "-leading-dash"),
        ("site", "a/b"),
        ("owner_x25519", b"\x01" * 31),
        ("not_after_ms", NOT_BEFORE_MS - 1),
        ("serial", -1),
    ],
)
def test_issue_refuses_what_a_verifier_would_refuse(
    authority: SigningKey, device_key: SigningKey, field: str, value: object
) -> None:
    args: dict[str, object] = {
        "kind": "k",
        "model": "m",
        "site": "s",
        "owner_x25519": None,
        "not_before_ms": NOT_BEFORE_MS,
        "not_after_ms": NOT_AFTER_MS,
        "serial": 1,
    }
    args[field] = value
    with pytest.raises((DecodeError, UsageError, TypeError)):
        issue_certificate(authority, device_key.public, **args)  # type: ignore[arg-type]


# --- DeviceKeys: rotations and revocations --------------------------------------------------


def _rotation(device_key: SigningKey, new: SigningKey, height: int, authority: SigningKey) -> bytes:
    half = sign_rotation(
        device_key.public.device_id, device_key, new.public, height, NOW_MS, authority.key_id
    )
    return countersign_rotation(half, authority)


def test_key_for_follows_rotations(
    cert: Certificate,
    roots: FleetRoots,
    authority: SigningKey,
    device_key: SigningKey,
    next_device_key: SigningKey,
    other_device_key: SigningKey,
) -> None:
    third = SigningKey(hashlib.sha256(b"third").digest())
    rotations = [_rotation(device_key, next_device_key, 10, authority)]
    half = sign_rotation(
        device_key.public.device_id, next_device_key, third.public, 20, NOW_MS, authority.key_id
    )
    rotations.append(countersign_rotation(half, authority))
    keys = DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS, rotations=rotations)
    assert keys.device_id == device_key.public.device_id
    assert keys.key_for(device_key.key_id, 0) == device_key.public
    assert keys.key_for(device_key.key_id, 9) == device_key.public
    assert keys.key_for(next_device_key.key_id, 10) == next_device_key.public
    assert keys.key_for(next_device_key.key_id, 19) == next_device_key.public
    assert keys.key_for(third.key_id, 20) == third.public
    assert keys.key_for(third.key_id, 2**62) == third.public
    for key_id, height in (
        (device_key.key_id, 10),
        (next_device_key.key_id, 9),
        (next_device_key.key_id, 20),
        (third.key_id, 0),
        (other_device_key.key_id, 5),
    ):
        with pytest.raises(VerificationError) as info:
            keys.key_for(key_id, height)
        assert type(info.value) is VerificationError


def test_rotations_must_chain_from_the_current_key(
    cert: Certificate,
    roots: FleetRoots,
    authority: SigningKey,
    device_key: SigningKey,
    next_device_key: SigningKey,
) -> None:
    first = _rotation(device_key, next_device_key, 10, authority)
    again = _rotation(device_key, next_device_key, 20, authority)  # old key already rotated out
    with pytest.raises(VerificationError, match="old key id"):
        DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS, rotations=[first, again])


def test_revocations(
    cert: Certificate,
    roots: FleetRoots,
    authority: SigningKey,
    rogue_authority: SigningKey,
    device_key: SigningKey,
    other_device_key: SigningKey,
) -> None:
    device_id = device_key.public.device_id
    key_rev = sign_revocation(authority, device_id, device_key.key_id, 5, "compromise", NOW_MS)
    keys = DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS, revocations=[key_rev])
    assert keys.key_for(device_key.key_id, 4) == device_key.public
    with pytest.raises(RevokedError) as info:
        keys.key_for(device_key.key_id, 5)
    assert (info.value.expected, info.value.found) == ("height < 5", 5)
    assert keys.key_for(device_key.key_id, 5, honour_revocations=False) == device_key.public
    keys.check_not_revoked()

    whole = sign_revocation(authority, device_id, None, 0, "stolen", NOW_MS)
    revoked = DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS, revocations=[whole])
    with pytest.raises(RevokedError):
        revoked.check_not_revoked()
    with pytest.raises(RevokedError):
        revoked.key_for(device_key.key_id, 0)

    other = sign_revocation(authority, other_device_key.public.device_id, None, 0, "x", NOW_MS)
    DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS, revocations=[other]).check_not_revoked()

    forged = sign_revocation(rogue_authority, device_id, None, 0, "forged", NOW_MS)
    with pytest.raises(CertificateError):
        verify_revocation(forged, roots)
    with pytest.raises(CertificateError):
        DeviceKeys.build(cert.wire, roots, now_ms=NOW_MS, revocations=[forged])


def test_build_applies_the_certificate_window(cert: Certificate, roots: FleetRoots) -> None:
    with pytest.raises(CertificateError):
        DeviceKeys.build(cert.wire, roots, now_ms=NOT_AFTER_MS + 1)
    # now_ms=None (offline evidence) skips the window.
    assert DeviceKeys.build(cert.wire, roots, now_ms=None).certificate == cert


def test_revocation_reason_limits(authority: SigningKey, device_key: SigningKey) -> None:
    device_id = device_key.public.device_id
    ok = sign_revocation(authority, device_id, None, 0, "r" * 64, NOW_MS)
    assert verify_revocation(ok, FleetRoots.of(authority.public)).reason == "r" * 64
    with pytest.raises((DecodeError, UsageError)):
        sign_revocation(authority, device_id, None, 0, "r" * 65, NOW_MS)
    with pytest.raises((DecodeError, UsageError)):
        sign_revocation(authority, "not-a-device-id", None, 0, "r", NOW_MS)
