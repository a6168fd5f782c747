"""Enrollment requests (ledger.enroll): proof of possession, field rules, named mutations, and
an independent reading of the bytes from docs/PROTOCOL.md section 9.5."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import domains
from ledger.certs import FleetRoots, issue_certificate, verify_certificate
from ledger.enroll import MAX_BODY, decode_request, sign_request, verify_request
from ledger.errors import DecodeError, LedgerError, SignatureError
from ledger.identity import SigningKey

from .conftest import NOW_MS

DEVICE = SigningKey(hashlib.sha256(b"enroll test device").digest())
OTHER = SigningKey(hashlib.sha256(b"enroll test other").digest())
OWNER = bytes(range(32))


def request_wire(key: SigningKey = DEVICE, **changes: object) -> bytes:
    attrs: dict[str, object] = {
        "kind": "refrigerator",
        "model": "FR-200",
        "site": "house-1",
        "owner_x25519": OWNER,
        "time_ms": NOW_MS,
    }
    attrs.update(changes)
    return sign_request(key, **attrs).wire  # type: ignore[arg-type]


def envelope(body: bytes, sig: bytes) -> bytes:
    return msgpack.packb([body, sig], use_bin_type=True)  # type: ignore[no-any-return]


def test_round_trip_names_the_key_and_the_attributes() -> None:
    wire = request_wire()
    req = verify_request(wire)
    assert req.device_key == DEVICE.public and req.device_id == DEVICE.public.device_id
    assert (req.kind, req.model, req.site) == ("refrigerator", "FR-200", "house-1")
    assert (req.owner_x25519, req.time_ms, req.wire) == (OWNER, NOW_MS, wire)
    assert decode_request(wire) == req
    assert verify_request(request_wire(owner_x25519=None)).owner_x25519 is None


def test_bytes_as_the_protocol_document_lays_them_out() -> None:
    """Read with plain msgpack and PyNaCl-free checks: section 9.5 and nothing else."""
    body, sig = msgpack.unpackb(request_wire(), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    assert fields == [
        1,
        DEVICE.public.raw,
        DEVICE.public.device_id,
        "refrigerator",
        "FR-200",
        "house-1",
        OWNER,
        NOW_MS,
    ]
    assert domains.ENROLL_REQUEST == b"edgefleet/v1/enroll-request\x00"
    DEVICE.public.verify(b"edgefleet/v1/enroll-request\x00", body, sig, "request")


def test_a_request_signed_by_another_key_is_refused() -> None:
    body, _ = msgpack.unpackb(request_wire(), raw=False)
    forged = envelope(body, OTHER.sign(domains.ENROLL_REQUEST, body))
    assert decode_request(forged).device_key == DEVICE.public  # well formed...
    with pytest.raises(SignatureError, match="does not verify"):
        verify_request(forged)  # ...but no proof of possession


def test_an_altered_attribute_breaks_the_signature() -> None:
    body, sig = msgpack.unpackb(request_wire(), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields[5] = "house-2"
    with pytest.raises(SignatureError):
        verify_request(envelope(msgpack.packb(fields, use_bin_type=True), sig))


def test_the_signature_is_domain_separated_from_a_certificate() -> None:
    """A request's signature is over ENROLL_REQUEST || body: it is not a certificate signature
    by the device key, nor can a certificate body signed by an authority pass as a request."""
    body, sig = msgpack.unpackb(request_wire(), raw=False)
    with pytest.raises(SignatureError):
        DEVICE.public.verify(domains.CERTIFICATE, body, sig, "cross-domain")
    cert = issue_certificate(
        OTHER,
        DEVICE.public,
        kind="refrigerator",
        model="FR-200",
        site="house-1",
        owner_x25519=None,
        not_before_ms=0,
        not_after_ms=NOW_MS,
        serial=1,
    )
    with pytest.raises(DecodeError, match="max_array_len"):
        verify_request(cert.wire)
    assert verify_certificate(cert.wire, FleetRoots.of(OTHER.public), None).serial == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("site", "house/1", "field site"),
        ("kind", "", "field kind"),
        ("model", " FR", "field model"),
        ("model", "m" * 65, "field model"),
        ("owner_x25519", bytes(31), "field owner_x25519"),
        ("time_ms", -1, "field time_ms"),
    ],
)
def test_attributes_a_certificate_could_not_hold_are_refused_when_signing(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        request_wire(**{field: value})


def _resigned(fields: list[object]) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True)
    return envelope(body, DEVICE.sign(domains.ENROLL_REQUEST, body))


def test_named_mutations_are_decode_errors() -> None:
    good = request_wire()
    body, _ = msgpack.unpackb(good, raw=False)
    fields = msgpack.unpackb(body, raw=False)
    mutations = {
        "trailing-garbage": good + b"\x00",
        "truncated": good[:-1],
        "format-2": _resigned([2, *fields[1:]]),
        "device-id-of-another-key": _resigned([*fields[:2], OTHER.public.device_id, *fields[3:]]),
        "missing-time": _resigned(fields[:7]),
        "extra-field": _resigned([*fields, 0]),
        "signature-63-bytes": envelope(body, bytes(63)),
    }
    for name, wire in mutations.items():
        with pytest.raises(DecodeError):
            verify_request(wire)
        assert name


def test_the_largest_request_fits_the_limit() -> None:
    wire = request_wire(kind="k" * 64, model="m" * 64, site="s" * 64, time_ms=(1 << 63) - 1)
    body, _ = msgpack.unpackb(wire, raw=False)
    assert (len(body), len(wire)) == (304, 374)
    assert len(body) <= MAX_BODY
    doc = " ".join((Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text().split())
    section = doc[doc.index("### 9.5 Enrollment request") : doc.index("## 10. Fork evidence")]
    assert "the largest the field rules allow is 304 bytes, its envelope 374" in section
    assert f"decoders allow {MAX_BODY + 72})" in section
    assert "`edgefleet/v1/enroll-request` followed by `00`" in section


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_any_corrupted_byte_raises_only_ledger_errors(position: int, xor: int) -> None:
    wire = bytearray(request_wire())
    wire[position % len(wire)] ^= xor
    try:
        req = verify_request(bytes(wire))
    except LedgerError:
        return
    # The only bytes a flip may leave valid are none: every byte is signed or frames the body.
    pytest.fail(f"corrupted request verified: {req}")
