"""The mesh of a gossip domain: a bounded set of neighbours per member, and the tree a header
takes through it (docs/PROTOCOL.md 12.10).

Pure and deterministic: every member computes the same mesh from the domain's name and member
list alone, so no message grafts or prunes anything (and nobody can graft or prune on behalf of
another: there is nothing to forge).

- **Ring.** The members sorted by ``SHA-256(MESH_TAG || domain || 00 || device_id)`` (ties, which
  need a collision, by device id). Position ``i`` of ``n`` members.
- **Fingers.** Member ``i``'s forward fingers are the members at ``i + 2^k (mod n)`` for every
  ``2^k < n``; its **neighbours** are its forward and backward fingers (``i +- 2^k``), at most
  ``2 * ceil(log2 n)`` of them (10 for 32 members, 18 for 300, 20 for 1,000), and the relation is
  symmetric: ``a`` is a neighbour of ``b`` exactly when ``b`` is one of ``a``'s. A node watches
  the presence of its neighbours only, runs its anti-entropy rounds with them, and greets them.
- **Tree.** A header of device ``o`` spreads down the binomial tree rooted at ``o``: with
  ``r = (i - pos(o)) mod n`` (the member's rank relative to the origin), member ``r`` sends to
  ``r + 2^k`` for every ``2^k`` below the lowest set bit of ``r`` (every ``2^k < n`` for the
  origin, ``r = 0``) while ``r + 2^k < n``. Every member is reached exactly once, in at most
  ``ceil(log2 n)`` hops, and each member only ever sends to its forward fingers, so the presence
  it watches covers every child it has. A member's parent is ``r`` with its lowest set bit
  cleared; its ancestors are ``r`` with any number of its lowest set bits cleared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

MESH_TAG: Final = b"edgefleet/mesh/v1\x00"


def ring_key(domain: str, device_id: str) -> bytes:
    """A member's place on the domain's ring (lower first)."""
    return hashlib.sha256(
        MESH_TAG + domain.encode("ascii") + b"\x00" + device_id.encode("ascii")
    ).digest()


class Ring:
    """One domain's members in ring order, with positions."""

    __slots__ = ("domain", "order", "pos")

    def __init__(self, domain: str, members: Iterable[str]) -> None:
        self.domain = domain
        self.order: tuple[str, ...] = tuple(sorted(members, key=lambda m: (ring_key(domain, m), m)))
        self.pos: dict[str, int] = {m: i for i, m in enumerate(self.order)}

    def __len__(self) -> int:
        return len(self.order)

    def fingers(self, member: str) -> tuple[str, ...]:
        """Forward fingers ``i + 2^k``, nearest first, without repeats."""
        n = len(self.order)
        i = self.pos[member]
        out: list[str] = []
        step = 1
        while step < n:
            f = self.order[(i + step) % n]
            if f not in out:
                out.append(f)
            step <<= 1
        return tuple(out)

    def neighbours(self, member: str) -> frozenset[str]:
        """Forward and backward fingers: the member's mesh in this domain (symmetric)."""
        n = len(self.order)
        i = self.pos[member]
        out: set[str] = set()
        step = 1
        while step < n:
            out.add(self.order[(i + step) % n])
            out.add(self.order[(i - step) % n])
            step <<= 1
        out.discard(member)
        return frozenset(out)

    def rank(self, origin: str, member: str) -> int:
        """``member``'s rank in the tree of ``origin`` (0: the origin itself)."""
        return (self.pos[member] - self.pos[origin]) % len(self.order)

    def children(self, origin: str, member: str) -> tuple[str, ...]:
        """Who ``member`` passes a header of ``origin`` to (nearest finger first)."""
        return self._children_of_rank(origin, self.rank(origin, member))

    def _children_of_rank(self, origin: str, r: int) -> tuple[str, ...]:
        n = len(self.order)
        low = r & -r if r else n
        base = self.pos[origin]
        out: list[str] = []
        step = 1
        while step < low and r + step < n:
            out.append(self.order[(base + r + step) % n])
            step <<= 1
        return tuple(out)

    def grandchildren(self, origin: str, child: str) -> tuple[str, ...]:
        """The children of ``child`` in the tree of ``origin``: whom a parent that knows
        ``child`` is down sends to instead (one level of adoption)."""
        return self.children(origin, child)

    def is_ancestor(self, origin: str, ancestor: str, member: str) -> bool:
        """Whether ``ancestor`` lies on the path from ``origin`` to ``member`` (origin included,
        ``member`` excluded): ``member`` forwards what an ancestor hands it, since a parent
        that knew its child down sends to the grandchildren instead."""
        ra = self.rank(origin, ancestor)
        rm = self.rank(origin, member)
        if ra == rm:
            return False
        if ra == 0:
            return True
        low = ra & -ra
        return rm & ~(low - 1) == ra and rm != ra


@lru_cache(maxsize=256)
def ring(domain: str, members: frozenset[str]) -> Ring:
    """The ring of a domain (cached: every node of a simulation shares it)."""
    return Ring(domain, members)


def depth(n: int) -> int:
    """Hops from the origin to the farthest member of a tree of ``n`` members."""
    return max(0, (n - 1).bit_length())
