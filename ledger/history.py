"""The history tree of a device's chain: an RFC 9162 tree whose leaves are header hashes.

Each header carries ``history_root``, the root of the tree over the hashes of all earlier headers
(heights 0..h-1), so a peer holding an old head can check a new head extends it with a consistency
proof plus an inclusion proof of the old head's hash (docs/PROTOCOL.md, "Chain proofs").

``CompactRange`` keeps only the roots of the perfect subtrees (one per set bit of the size), so
appending and computing the root cost O(log n) whatever the chain length.
"""

from __future__ import annotations

from ledger.merkle import EMPTY_ROOT, node_hash

__all__ = ["EMPTY_ROOT", "CompactRange"]


class CompactRange:
    """Append-only RFC 9162 tree of leaf hashes, storing O(log n) subtree roots."""

    __slots__ = ("_peaks", "size")

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes] = []  # perfect subtree roots, largest first

    def append(self, leaf_hash: bytes) -> None:
        node = leaf_hash
        n = self.size
        # Merge while the lowest bit of the size is set: two equal perfect subtrees join.
        while n & 1:
            node = node_hash(self._peaks.pop(), node)
            n >>= 1
        self._peaks.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        node = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            node = node_hash(peak, node)
        return node

    def copy(self) -> CompactRange:
        other = CompactRange()
        other.size = self.size
        other._peaks = list(self._peaks)
        return other
