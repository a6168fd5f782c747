"""Enrollment requests: a device asks a fleet authority for a certificate without either side
handing over a secret.

The device creates its key and signs a request with it (proof of possession); the authority
checks that signature and the requested attributes, then issues a certificate
(``ledger.certs.issue_certificate``) for the key the request names. Only public bytes travel.

Wire form (docs/PROTOCOL.md section 9.5): a signed envelope (``ledger.envelope``), domain
ENROLL_REQUEST, signed by the key in the body. Body, at most 400 bytes:
``[format=1, device_pubkey, device_id, kind, model, site, owner_x25519|nil, time_ms]`` with the
field rules of a certificate (``device_id`` derived from ``device_pubkey``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger import codec, domains, envelope
from ledger.certs import MODEL_RE, NAME_RE
from ledger.errors import DecodeError
from ledger.identity import PUBLIC_KEY_SIZE, PublicKey, SigningKey, device_id_for, is_device_id

FORMAT = 1
MAX_BODY = 400  # the largest body the field rules allow is 304 bytes (test_enroll)
_LIMITS = codec.Limits(max_bytes=MAX_BODY, max_array=8, max_str=64, max_bin=32)
_WHAT = "enrollment request"


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """What a device asks to be certified as; ``wire`` is the signed envelope it came in."""

    device_key: PublicKey
    device_id: str
    kind: str
    model: str
    site: str
    owner_x25519: bytes | None
    time_ms: int
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
                self.time_ms,
            ]
        )


def sign_request(
    key: SigningKey,
    *,
    kind: str,
    model: str,
    site: str,
    owner_x25519: bytes | None,
    time_ms: int,
) -> EnrollRequest:
    """The device's request for a certificate of ``key``, signed by ``key`` itself.

    Raises DecodeError for an attribute a certificate could not hold (refused here rather than
    on the authority's machine)."""
    # The values are checked before encoding so a too-long attribute is named (the decoder's
    # limits would only say that some string is too long).
    body = codec.encode(
        _check_fields(
            [FORMAT, key.public.raw, key.public.device_id, kind, model, site, owner_x25519, time_ms]
        )
    )
    return decode_request(envelope.wrap(body, key.sign(domains.ENROLL_REQUEST, body)))


def _parse_body(body: bytes) -> list[Any]:
    w = _WHAT
    return _check_fields(codec.array(codec.decode(body, _LIMITS, w), 8, w))


def _check_fields(f: list[Any]) -> list[Any]:
    w = _WHAT
    if type(f[0]) is not int or f[0] != FORMAT:
        raise DecodeError(w, f"field format: expected {FORMAT}, found {f[0]!r}")
    codec.bin_(f[1], w, "device_pubkey", PUBLIC_KEY_SIZE)
    codec.text(f[2], w, "device_id", 26, is_device_id)
    if f[2] != device_id_for(f[1]):
        raise DecodeError(
            w,
            f"field device_id: {f[2]} is not derived from the device key "
            f"(expected {device_id_for(f[1])})",
        )
    codec.text(f[3], w, "kind", 64, lambda s: bool(NAME_RE.fullmatch(s)))
    codec.text(f[4], w, "model", 64, lambda s: bool(MODEL_RE.fullmatch(s)))
    codec.text(f[5], w, "site", 64, lambda s: bool(NAME_RE.fullmatch(s)))
    if f[6] is not None:
        codec.bin_(f[6], w, "owner_x25519", 32)
    codec.uint(f[7], w, "time_ms")
    return f


def _unwrap(wire: bytes) -> tuple[bytes, bytes, EnrollRequest]:
    body, sig = envelope.unwrap(wire, _WHAT, MAX_BODY)
    f = _parse_body(body)
    request = EnrollRequest(PublicKey(f[1]), f[2], f[3], f[4], f[5], f[6], f[7], wire)
    return body, sig, request


def decode_request(wire: bytes) -> EnrollRequest:
    """Decode (structure only). Use ``verify_request`` before certifying anything."""
    return _unwrap(wire)[2]


def verify_request(wire: bytes) -> EnrollRequest:
    """Decode and check the proof of possession: the body is signed by the key it names.

    Raises DecodeError for malformed bytes and SignatureError when the signature is not by that
    key (the request was altered, or signed by another key)."""
    body, sig, request = _unwrap(wire)
    request.device_key.verify(domains.ENROLL_REQUEST, body, sig, f"{_WHAT} of {request.device_id}")
    return request
