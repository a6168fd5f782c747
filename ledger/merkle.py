"""Merkle trees of RFC 9162 (Certificate Transparency v2), section 2.1, with SHA-256.

This module owns the tree hash, inclusion proofs and consistency proofs:

- ``leaf_hash(data) = SHA-256(0x00 || data)`` and ``node_hash(l, r) = SHA-256(0x01 || l || r)``:
  the prefixes keep a leaf from ever being passed off as an interior node (RFC 9162 2.1.1).
- The tree over ``n`` leaves splits at the largest power of two below ``n`` (RFC 9162 2.1.1);
  built bottom-up this is the same as pairing neighbours level by level and carrying an odd last
  node up unchanged, which is how ``root_from_leaf_hashes`` computes it, without recursion.
- ``verify_inclusion`` and ``verify_consistency`` follow the algorithms of RFC 9162 2.1.3.2 and
  2.1.4.2 after checking their preconditions (sizes, exact proof length, 32-byte hashes). They
  raise ``ProofError`` and never return False; messages give the expected and the calculated
  value.

A proof binds a leaf to a root *for a given tree size*: two different sizes can share the shape
of a proof (index 0 of 5 leaves and of 6 leaves), so the size must come from the same signed
header as the root.

Proof generation is called with our own data: misuse (an index out of range, a hash that is not
32 bytes) raises ``UsageError``. Verification is called with what a peer sent: every failure
raises ``ProofError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from ledger.errors import ProofError, UsageError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()

_LEAF_PREFIX: Final = b"\x00"
# Copying a hasher already fed with the node prefix is the fastest way CPython offers to hash
# 0x01 || left || right (no concatenation of the 65-byte input); it is never updated itself.
_NODE_HASHER: Final = hashlib.sha256(b"\x01")


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf entry."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    h = _NODE_HASHER.copy()
    h.update(left)
    h.update(right)
    return h.digest()


# --- tree hash ----------------------------------------------------------------------------------


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (RFC 9162 MTH) of the leaves whose hashes are given, in order."""
    _check_leaf_hashes(hashes)
    if not hashes:
        return EMPTY_ROOT
    return _range_root(hashes, 0, len(hashes))


def _range_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of ``hashes[lo:hi]`` (non-empty), without copying the slice."""
    count = hi - lo
    if count == 1:
        return hashes[lo]
    first: Iterator[bytes]
    if lo == 0 and hi == len(hashes):
        first = iter(hashes)
    else:
        first = map(hashes.__getitem__, range(lo, hi))
    level = _hash_pairs(first)
    if count & 1:
        level.append(hashes[hi - 1])
    while len(level) > 1:
        nxt = _hash_pairs(iter(level))
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _hash_pairs(items: Iterator[bytes]) -> list[bytes]:
    """Hash neighbours (0,1), (2,3)...; an odd last item is left for the caller to carry up."""
    out: list[bytes] = []
    append = out.append
    fresh = _NODE_HASHER.copy
    for left, right in zip(items, items, strict=False):
        h = fresh()
        h.update(left)
        h.update(right)
        append(h.digest())
    return out


def _split(count: int) -> int:
    """The largest power of two strictly below ``count`` (``count >= 2``): RFC 9162's k."""
    return 1 << ((count - 1).bit_length() - 1)


# --- proof generation (our own data: misuse is a UsageError) ----------------------------------


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(index, D[n]) for the tree over all of ``hashes``, leaf side first."""
    _check_leaf_hashes(hashes)
    return _inclusion_path(hashes, index, len(hashes))


def consistency_proof(hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 2.1.4.1 PROOF(old_size, D[new_size]) over the first ``new_size`` of ``hashes``.

    Requires ``0 < old_size <= new_size <= len(hashes)``; equal sizes give an empty proof.
    """
    _check_leaf_hashes(hashes)
    return _consistency_path(hashes, old_size, new_size)


def _inclusion_path(hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    if not 0 <= index < size <= len(hashes):
        raise UsageError(
            f"inclusion proof: need 0 <= index < size <= {len(hashes)} leaves, "
            f"got index {index}, size {size}"
        )
    # Walk down from the root, keeping the subtree [lo, hi) that holds the leaf; the sibling
    # subtree at each split is one proof element (collected root side first, then reversed).
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            path.append(_range_root(hashes, mid, hi))
            hi = mid
        else:
            path.append(_range_root(hashes, lo, mid))
            lo = mid
    path.reverse()
    return path


def _consistency_path(hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    if not 0 < old_size <= new_size <= len(hashes):
        raise UsageError(
            f"consistency proof: need 0 < old_size <= new_size <= {len(hashes)} leaves, "
            f"got old_size {old_size}, new_size {new_size}"
        )
    # SUBPROOF(m, D[lo:hi], whole) unrolled: ``whole`` is RFC 9162's flag b, true while the
    # subtree is still a prefix-aligned subtree whose hash the verifier already knows.
    path: list[bytes] = []
    lo, hi, whole = 0, new_size, True
    while old_size != hi:
        mid = lo + _split(hi - lo)
        if old_size <= mid:
            path.append(_range_root(hashes, mid, hi))
            hi = mid
        else:
            path.append(_range_root(hashes, lo, mid))
            lo, whole = mid, False
    if not whole:
        path.append(_range_root(hashes, lo, hi))
    path.reverse()
    return path


def _check_leaf_hashes(hashes: Sequence[bytes]) -> None:
    if hashes and set(map(len, hashes)) != {HASH_SIZE}:
        bad = next(i for i, h in enumerate(hashes) if len(h) != HASH_SIZE)
        raise UsageError(
            f"leaf hash {bad}: expected {HASH_SIZE} bytes, found {len(hashes[bad])} bytes"
        )


# --- verification (peer data: every failure is a ProofError) ----------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    RFC 9162 2.1.3.2. Raises ``ProofError`` on any failure; returns None when the proof holds.
    """
    _check_hash("inclusion proof: leaf hash", leaf_hash)
    _check_hash("inclusion proof: root", root)
    if not 0 <= index < size:
        raise ProofError(f"inclusion proof: need 0 <= index < size, got index {index}, size {size}")
    _check_proof("inclusion proof", proof, _inclusion_proof_length(index, size))

    # RFC 9162 2.1.3.2 step 4. Once fn == sn the walk is on the tree's right border and stays
    # there, every remaining element is a left sibling, so the RFC's extra right-shifts in that
    # case only serve its final "sn is 0" test, which the exact length check above replaces.
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        # p is a left sibling when fn is a right child or the walk is on the right border.
        r = node_hash(p, r) if fn & 1 or fn == sn else node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if r != root:
        raise ProofError(
            "inclusion proof: calculated root does not match expected root",
            expected=root,
            found=r,
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` leaves with ``new_root`` extends the older tree.

    RFC 9162 2.1.4.2, for ``0 < old_size <= new_size``; equal sizes need an empty proof and equal
    roots. Raises ``ProofError`` on any failure; returns None when the proof holds.
    """
    _check_hash("consistency proof: old root", old_root)
    _check_hash("consistency proof: new root", new_root)
    if not 0 < old_size <= new_size:
        raise ProofError(
            "consistency proof: need 0 < old_size <= new_size, "
            f"got old_size {old_size}, new_size {new_size}"
        )
    _check_proof("consistency proof", proof, _consistency_proof_length(old_size, new_size))
    if old_size == new_size:
        if old_root != new_root:
            raise ProofError(
                "consistency proof: equal sizes but different roots",
                expected=old_root,
                found=new_root,
            )
        return

    # Steps 3-4: start at the lowest level where the old tree's last node is a left child.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 2: a power-of-two old tree is itself a subtree of the new one: its root seeds the walk.
    if old_size & (old_size - 1) == 0:
        seed, rest = old_root, 0
    else:
        seed, rest = proof[0], 1
    # Step 6, simplified on the right border as in verify_inclusion.
    fr = sr = seed
    for i in range(rest, len(proof)):
        c = proof[i]
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if fr != old_root:
        raise ProofError(
            "consistency proof: calculated old root does not match expected old root",
            expected=old_root,
            found=fr,
        )
    if sr != new_root:
        raise ProofError(
            "consistency proof: calculated new root does not match expected new root",
            expected=new_root,
            found=sr,
        )


def _inclusion_proof_length(index: int, size: int) -> int:
    # Below the level where the paths to ``index`` and to the last leaf part, every level has a
    # sibling; above it the path runs along the right border, where a level has a (left)
    # sibling exactly when that bit of the index is set.
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    if old_size == new_size:
        return 0
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    seed = 0 if old_size & (old_size - 1) == 0 else 1
    return seed + _inclusion_proof_length(fn, sn + 1)


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} length in bytes", expected=HASH_SIZE, found=len(value))


def _check_proof(what: str, proof: Sequence[bytes], length: int) -> None:
    if len(proof) != length:
        raise ProofError(f"{what}: wrong number of hashes", expected=length, found=len(proof))
    for i, p in enumerate(proof):
        if len(p) != HASH_SIZE:
            raise ProofError(
                f"{what}: element {i} length in bytes", expected=HASH_SIZE, found=len(p)
            )


# --- convenience ------------------------------------------------------------------------------


class MerkleTree:
    """An append-only list of leaf hashes with roots and proofs for any of its prefixes."""

    __slots__ = ("_hashes",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._hashes: list[bytes] = []
        for h in leaf_hashes:
            self.append(h)

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """A tree over raw leaf entries (each hashed with ``leaf_hash``)."""
        tree = cls()
        tree._hashes.extend(map(leaf_hash, leaves))
        return tree

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its index."""
        if len(leaf_hash) != HASH_SIZE:
            raise UsageError(f"leaf hash: expected {HASH_SIZE} bytes, found {len(leaf_hash)} bytes")
        self._hashes.append(bytes(leaf_hash))
        return len(self._hashes) - 1

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def leaf_hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (all of them by default)."""
        size = self._size(size)
        return EMPTY_ROOT if size == 0 else _range_root(self._hashes, 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index) in the tree of the first ``size`` leaves (all of them by default)."""
        return _inclusion_path(self._hashes, index, self._size(size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size) towards the tree of the first ``new_size`` leaves (default: all)."""
        return _consistency_path(self._hashes, old_size, self._size(new_size))

    def _size(self, size: int | None) -> int:
        if size is None:
            return len(self._hashes)
        if not 0 <= size <= len(self._hashes):
            raise UsageError(f"tree size: expected 0..{len(self._hashes)}, found {size}")
        return size
