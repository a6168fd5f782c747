"""Chain-extension proofs: a peer holding an old head checks that a new head extends it.

Every header commits, in ``history_root``, to the RFC 9162 tree over the hashes of all earlier
headers. For an old head at height m and a new head at height n > m, the prover sends:

- ``consistency``: the RFC 9162 consistency proof from size m to size n (empty when m == 0),
  linking the old head's ``history_root`` to the new head's;
- ``inclusion``: the RFC 9162 inclusion proof of the old head's hash at index m in the tree of
  size n, so the new history contains the very header the peer holds.

Both are O(log n) hashes; the peer needs neither the intermediate headers nor the bodies.
Wire: ``[format=1, old_height, new_height, [consistency...], [inclusion...]]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger import codec
from ledger.block import SignedHeader
from ledger.errors import DecodeError, ProofError
from ledger.merkle import consistency_proof, inclusion_proof, verify_consistency, verify_inclusion

FORMAT = 1
_LIMITS = codec.Limits(max_bytes=8192, max_array=128, max_str=0, max_bin=32)


@dataclass(frozen=True, slots=True)
class ExtensionProof:
    old_height: int
    new_height: int
    consistency: tuple[bytes, ...]
    inclusion: tuple[bytes, ...]

    def encode(self) -> bytes:
        return codec.encode(
            [FORMAT, self.old_height, self.new_height, list(self.consistency), list(self.inclusion)]
        )


def prove_extension(
    header_hashes: Sequence[bytes], old_height: int, new_height: int
) -> ExtensionProof:
    """``header_hashes[i]`` is the hash of the header at height i, for i < new_height at least."""
    m, n = old_height, new_height
    if not 0 <= m < n <= len(header_hashes):
        raise ProofError(
            "extension proof: need 0 <= old < new <= known headers",
            f"0 <= {m} < {n} <= {len(header_hashes)}",
        )
    cons = consistency_proof(header_hashes[:n], m, n) if m > 0 else []
    incl = inclusion_proof(header_hashes[:n], m)
    return ExtensionProof(m, n, tuple(cons), tuple(incl))


def decode_extension(wire: bytes) -> ExtensionProof:
    w = "extension proof"
    f = codec.array(codec.decode(wire, _LIMITS, w), 5, w)
    if type(f[0]) is not int or f[0] != FORMAT:
        raise DecodeError(w, f"field format: expected {FORMAT}, found {f[0]!r}")
    m = codec.uint(f[1], w, "old_height")
    n = codec.uint(f[2], w, "new_height")
    lists = []
    for name, value in (("consistency", f[3]), ("inclusion", f[4])):
        if not isinstance(value, list) or len(value) > 64:
            raise DecodeError(w, f"field {name}: expected an array of at most 64 hashes")
        lists.append(tuple(codec.bin_(h, w, name, 32) for h in value))
    return ExtensionProof(m, n, lists[0], lists[1])


def verify_extension(old: SignedHeader, new: SignedHeader, proof: ExtensionProof) -> None:
    """Raise ProofError unless ``new`` is a descendant of ``old`` in the same device's chain.

    Both headers must already be signature-checked by the caller.
    """
    o, n = old.header, new.header
    if o.device_id != n.device_id:
        raise ProofError("extension proof: device", o.device_id, n.device_id)
    if (proof.old_height, proof.new_height) != (o.height, n.height):
        raise ProofError(
            "extension proof: heights",
            f"{o.height}->{n.height}",
            f"{proof.old_height}->{proof.new_height}",
        )
    if not o.height < n.height:
        raise ProofError("extension proof: new head must be higher", f"> {o.height}", n.height)
    if o.height > 0:
        verify_consistency(o.height, n.height, o.history_root, n.history_root, proof.consistency)
    elif proof.consistency:
        raise ProofError(
            "extension proof: consistency from an empty history is empty", 0, len(proof.consistency)
        )
    verify_inclusion(old.hash, o.height, n.height, proof.inclusion, n.history_root)
