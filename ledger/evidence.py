"""Fork evidence: two validly signed headers of one device at the same (epoch, height) with
different hashes. Self-contained: it carries the device certificate and any rotations, so anyone
with the fleet root can verify it offline.

Wire: ``[format=1, certificate_wire, [rotation_wire...], header_a_wire, header_b_wire]`` with the
two headers ordered by hash (smaller first), so one fork has one encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import codec
from ledger.block import SignedHeader, decode_header
from ledger.certs import DeviceKeys, FleetRoots
from ledger.errors import DecodeError, ForkError

FORMAT = 1
_LIMITS = codec.Limits(max_bytes=4096, max_array=8, max_str=0, max_bin=512, shape=(5, 8))


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    certificate: bytes
    rotations: tuple[bytes, ...]
    a: SignedHeader
    b: SignedHeader

    def encode(self) -> bytes:
        return codec.encode(
            [FORMAT, self.certificate, list(self.rotations), self.a.wire, self.b.wire]
        )

    @property
    def device_id(self) -> str:
        return self.a.header.device_id


def make_evidence(
    certificate: bytes, rotations: tuple[bytes, ...], x: SignedHeader, y: SignedHeader
) -> ForkEvidence:
    a, b = sorted((x, y), key=lambda s: s.hash)
    return ForkEvidence(certificate, rotations, a, b)


def is_fork(x: SignedHeader, y: SignedHeader) -> bool:
    hx, hy = x.header, y.header
    return (
        hx.device_id == hy.device_id
        and hx.epoch == hy.epoch
        and hx.height == hy.height
        and x.hash != y.hash
    )


def decode_evidence(wire: bytes) -> ForkEvidence:
    w = "fork evidence"
    f = codec.array(codec.decode(wire, _LIMITS, w), 5, w)
    if type(f[0]) is not int or f[0] != FORMAT:
        raise DecodeError(w, f"field format: expected {FORMAT}, found {f[0]!r}")
    cert = codec.bin_(f[1], w, "certificate", maximum=512)
    if not isinstance(f[2], list):
        raise DecodeError(w, "field rotations: expected an array")
    rotations = tuple(codec.bin_(r, w, "rotation", maximum=512) for r in f[2])
    a = decode_header(codec.bin_(f[3], w, "header_a", maximum=512))
    b = decode_header(codec.bin_(f[4], w, "header_b", maximum=512))
    if a.hash >= b.hash:
        raise DecodeError(w, "headers must be distinct and ordered by hash")
    return ForkEvidence(cert, rotations, a, b)


def verify_evidence(wire: bytes, roots: FleetRoots) -> ForkEvidence:
    """Raise unless ``wire`` proves that an enrolled device signed two headers at one height.

    Certificate validity windows are not applied: a fork stays a fork after expiry.
    """
    ev = decode_evidence(wire)
    keys = DeviceKeys.build(ev.certificate, roots, now_ms=None, rotations=ev.rotations)
    ha, hb = ev.a.header, ev.b.header
    if keys.device_id != ha.device_id or ha.device_id != hb.device_id:
        raise ForkError("fork evidence: device", keys.device_id, f"{ha.device_id} / {hb.device_id}")
    if (ha.epoch, ha.height) != (hb.epoch, hb.height):
        raise ForkError(
            "fork evidence: position", f"{ha.epoch}/{ha.height}", f"{hb.epoch}/{hb.height}"
        )
    for sh in (ev.a, ev.b):
        sh.verify(keys.key_for(sh.header.key_id, sh.header.height, honour_revocations=False))
    return ev
