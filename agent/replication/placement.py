"""Where a block body goes: weighted rendezvous hashing over candidate holders, sites first.

Pure and deterministic: the same block hash, candidates, weights and sites give the same holders
on every machine. For holder ``i`` with weight ``w_i`` (its free bytes, at most its quota):

    x_i = first 8 bytes of SHA-256(PLACEMENT || block_hash || holder_id) as a big-endian
          integer, shifted right by 12 (52 bits)
    u_i = (x_i + 0.5) / 2**52                 exact in binary64, strictly inside (0, 1)
    score_i = -w_i / ln(u_i)                  binary64; higher is better

Candidates are ranked by score, highest first, ties by holder id ascending. This is the
logarithmic method of weighted rendezvous hashing: holder ``i`` ranks first with probability
``w_i / sum(w)``, and adding or removing one holder moves only the blocks it wins or held.

``choose`` walks the ranking twice: first it takes holders whose site is not used yet (by the
block's current holders or an earlier pick), then, if fewer than ``count`` were found because the
domain has too few sites, it fills up with the best remaining holders whatever their site.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from ledger import domains

PLACEMENT: Final = domains.PLACEMENT
_SCALE: Final = float(1 << 52)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A holder that may receive the block: its weight (> 0) and its site."""

    weight: int
    site: str


def draw(block_hash: bytes, holder_id: str) -> float:
    """The holder's uniform draw ``u`` in (0, 1) for this block (exact binary64)."""
    digest = hashlib.sha256(PLACEMENT + block_hash + holder_id.encode("ascii")).digest()
    x = int.from_bytes(digest[:8], "big") >> 12
    return (x + 0.5) / _SCALE


def score(block_hash: bytes, holder_id: str, weight: int) -> float:
    """``-weight / ln(u)``: the holder's rendezvous score for this block (weight > 0)."""
    return -weight / math.log(draw(block_hash, holder_id))


def rank(block_hash: bytes, weights: Mapping[str, int]) -> list[str]:
    """Holders with a positive weight, best first (ties: holder id ascending)."""
    scored = [(-score(block_hash, h, w), h) for h, w in weights.items() if w > 0]
    return [h for _, h in sorted(scored)]


def choose(
    block_hash: bytes,
    candidates: Mapping[str, Candidate],
    count: int,
    used_sites: Iterable[str] = (),
) -> list[str]:
    """Up to ``count`` holders for the block, distinct sites first (see the module docstring)."""
    ranked = rank(block_hash, {h: c.weight for h, c in candidates.items()})
    sites = set(used_sites)
    picked: list[str] = []
    for h in ranked:
        if len(picked) == count:
            return picked
        if candidates[h].site not in sites:
            picked.append(h)
            sites.add(candidates[h].site)
    for h in ranked:
        if len(picked) == count:
            break
        if h not in picked:
            picked.append(h)
    return picked
