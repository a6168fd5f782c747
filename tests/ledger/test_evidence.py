"""Fork evidence: two validly signed headers of one device at one (epoch, height) with different
hashes, verifiable offline by anyone holding the fleet root, and nothing else passes as one."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from ledger import domains
from ledger.block import SignedHeader
from ledger.certs import (
    Certificate,
    FleetRoots,
    countersign_rotation,
    issue_certificate,
    sign_rotation,
)
from ledger.errors import (
    CertificateError,
    DecodeError,
    ForkError,
    LedgerError,
    SignatureError,
    VerificationError,
)
from ledger.evidence import ForkEvidence, decode_evidence, is_fork, make_evidence, verify_evidence
from ledger.identity import SigningKey
from ledger.reading import Reading

from .conftest import NOT_AFTER_MS, NOW_MS, sample_readings, seal_chain_impl


def _fork(
    key: SigningKey | list[SigningKey], device_id: str | None = None, height: int = 1
) -> tuple[SignedHeader, SignedHeader]:
    """Two chains sharing their first blocks, differing at ``height``: the two headers there."""
    first = key if isinstance(key, SigningKey) else key[0]
    device_id = device_id or first.public.device_id
    base = sample_readings(device_id, [2] * (height + 1))
    other = [*base[:height], [dataclasses.replace(r, value=r.value + 1) for r in base[height]]]
    a = seal_chain_impl(key, base)[height].header
    b = seal_chain_impl(key, other)[height].header
    assert a.hash != b.hash
    return a, b


@pytest.fixture(scope="module")
def fork(device_key: SigningKey) -> tuple[SignedHeader, SignedHeader]:
    return _fork(device_key)


def test_fork_evidence_verifies_offline(
    cert: Certificate,
    roots: FleetRoots,
    fork: tuple[SignedHeader, SignedHeader],
    device_key: SigningKey,
) -> None:
    x, y = fork
    assert is_fork(x, y) and is_fork(y, x)
    wire = make_evidence(cert.wire, (), x, y).encode()
    assert make_evidence(cert.wire, (), y, x).encode() == wire  # one fork, one encoding
    ev = verify_evidence(wire, roots)  # nothing but the bytes and the fleet root
    assert isinstance(ev, ForkEvidence)
    assert ev.device_id == device_key.public.device_id
    assert {ev.a.hash, ev.b.hash} == {x.hash, y.hash} and ev.a.hash < ev.b.hash
    assert ev.certificate == cert.wire and ev.rotations == ()
    assert decode_evidence(wire).encode() == wire


def test_fork_stays_a_fork_after_the_certificate_expires(
    authority: SigningKey, device_key: SigningKey, fork: tuple[SignedHeader, SignedHeader]
) -> None:
    short = issue_certificate(
        authority,
        device_key.public,
        kind="k",
        model="m",
        site="s",
        owner_x25519=None,
        not_before_ms=0,
        not_after_ms=1,
        serial=3,
    )
    verify_evidence(make_evidence(short.wire, (), *fork).encode(), FleetRoots.of(authority.public))


def test_fork_after_a_rotation_carries_the_rotation(
    cert: Certificate,
    roots: FleetRoots,
    authority: SigningKey,
    device_key: SigningKey,
    next_device_key: SigningKey,
) -> None:
    device_id = device_key.public.device_id
    rotation = countersign_rotation(
        sign_rotation(device_id, device_key, next_device_key.public, 1, NOW_MS, authority.key_id),
        authority,
    )
    x, y = _fork([device_key, next_device_key])
    assert x.header.key_id == next_device_key.key_id
    ev = verify_evidence(make_evidence(cert.wire, (rotation,), x, y).encode(), roots)
    assert ev.rotations == (rotation,)
    with pytest.raises(VerificationError) as info:  # without the rotation the key is unknown
        verify_evidence(make_evidence(cert.wire, (), x, y).encode(), roots)
    assert type(info.value) is VerificationError


def _flip_sig(sh: SignedHeader) -> SignedHeader:
    wire = sh.wire[:-1] + bytes([sh.wire[-1] ^ 0x01])
    return dataclasses.replace(sh, wire=wire, signature=wire[-64:])


def _rejections(
    cert: Certificate,
    other_cert: Certificate,
    device_key: SigningKey,
    other_device_key: SigningKey,
    rogue_authority: SigningKey,
    fork: tuple[SignedHeader, SignedHeader],
) -> dict[str, tuple[bytes, type]]:
    x, y = fork
    chain = seal_chain_impl(device_key, sample_readings(device_key.public.device_id, [2, 2, 2]))
    later = chain[2].header  # same chain, another height
    epoch1 = seal_chain_impl(
        device_key, sample_readings(device_key.public.device_id, [2, 2], epoch=1)
    )[1].header
    ox, oy = _fork(other_device_key)
    forged_y = _signed_by(y, other_device_key)
    rogue_cert = issue_certificate(
        rogue_authority,
        device_key.public,
        kind="k",
        model="m",
        site="s",
        owner_x25519=None,
        not_before_ms=0,
        not_after_ms=NOT_AFTER_MS,
        serial=1,
    )
    good = make_evidence(cert.wire, (), x, y).encode()
    fields = msgpack.unpackb(good)
    swapped = msgpack.packb([fields[0], fields[1], fields[2], fields[4], fields[3]])
    return {
        "same-header-twice": (make_evidence(cert.wire, (), x, x).encode(), DecodeError),
        "different-heights": (make_evidence(cert.wire, (), x, later).encode(), ForkError),
        "different-epochs": (make_evidence(cert.wire, (), x, epoch1).encode(), ForkError),
        "different-devices": (make_evidence(cert.wire, (), x, ox).encode(), ForkError),
        "header-of-another-device": (make_evidence(cert.wire, (), ox, oy).encode(), ForkError),
        "certificate-of-another-device": (
            make_evidence(other_cert.wire, (), x, y).encode(),
            ForkError,
        ),
        "bad-signature-a": (make_evidence(cert.wire, (), _flip_sig(x), y).encode(), SignatureError),
        "bad-signature-b": (make_evidence(cert.wire, (), x, _flip_sig(y)).encode(), SignatureError),
        "header-signed-by-another-key": (
            make_evidence(cert.wire, (), x, forged_y).encode(),
            SignatureError,
        ),
        "certificate-unknown-root": (
            make_evidence(rogue_cert.wire, (), x, y).encode(),
            CertificateError,
        ),
        "headers-not-ordered": (swapped, DecodeError),
        "trailing-garbage": (good + b"\x00", DecodeError),
        "truncated": (good[:-1], DecodeError),
        "format-2": (msgpack.packb([2, *fields[1:]]), DecodeError),
        "rotation-garbage": (msgpack.packb([1, fields[1], [b"\x00"], *fields[3:]]), DecodeError),
    }


def _signed_by(sh: SignedHeader, key: SigningKey) -> SignedHeader:
    """``sh``'s body (naming the device's key id) signed by another key."""
    sig = key.sign(domains.HEADER, sh.body)
    wire = sh.wire[:-64] + sig
    return dataclasses.replace(sh, wire=wire, signature=sig)


REJECTIONS = [
    "same-header-twice",
    "different-heights",
    "different-epochs",
    "different-devices",
    "header-of-another-device",
    "certificate-of-another-device",
    "bad-signature-a",
    "bad-signature-b",
    "header-signed-by-another-key",
    "certificate-unknown-root",
    "headers-not-ordered",
    "trailing-garbage",
    "truncated",
    "format-2",
    "rotation-garbage",
]


@pytest.mark.parametrize("case", REJECTIONS)
def test_non_forks_and_bad_evidence_are_rejected(
    case: str,
    cert: Certificate,
    other_cert: Certificate,
    roots: FleetRoots,
    device_key: SigningKey,
    other_device_key: SigningKey,
    rogue_authority: SigningKey,
    fork: tuple[SignedHeader, SignedHeader],
) -> None:
    cases = _rejections(cert, other_cert, device_key, other_device_key, rogue_authority, fork)
    assert sorted(cases) == sorted(REJECTIONS)
    wire, expected = cases[case]
    with pytest.raises(LedgerError) as info:
        verify_evidence(wire, roots)
    assert type(info.value) is expected, f"expected {expected.__name__}, got {info.value!r}"


def test_is_fork_truth_table(
    fork: tuple[SignedHeader, SignedHeader], device_key: SigningKey, other_device_key: SigningKey
) -> None:
    x, y = fork
    assert is_fork(x, y)
    assert not is_fork(x, x)
    later = seal_chain_impl(device_key, sample_readings(device_key.public.device_id, [2, 2, 2]))[
        2
    ].header
    assert not is_fork(x, later)
    ox, _ = _fork(other_device_key)
    assert not is_fork(x, ox)
    r = Reading(device_key.public.device_id, 1, 0, 1, "t", 1)
    epoch1 = seal_chain_impl(device_key, [[r], [dataclasses.replace(r, seq=1)]])[1].header
    assert not is_fork(x, epoch1)
