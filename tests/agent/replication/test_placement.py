"""Weighted rendezvous placement: determinism, proportional shares, sites first, little churn."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest

from agent.replication.placement import PLACEMENT, Candidate, choose, draw, rank, score

HOLDERS = [f"ef{c * 24}" for c in "abcdefgh"]


def block(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def test_draw_follows_the_documented_formula() -> None:
    h = bytes(range(32))
    digest = hashlib.sha256(PLACEMENT + h + HOLDERS[0].encode()).digest()
    x = int.from_bytes(digest[:8], "big") >> 12
    assert draw(h, HOLDERS[0]) == (x + 0.5) / 2**52
    assert score(h, HOLDERS[0], 1000) == -1000 / math.log((x + 0.5) / 2**52)


def test_draw_is_strictly_inside_the_unit_interval() -> None:
    lowest = 0.5 / 2**52
    highest = (2**52 - 0.5) / 2**52
    assert lowest > 0 and highest < 1  # both exact in binary64
    for i in range(2000):
        assert lowest <= draw(block(i), HOLDERS[i % 8]) <= highest


def test_ranking_is_deterministic_and_independent_of_input_order() -> None:
    weights = {h: 100 + i for i, h in enumerate(HOLDERS)}
    reverse = dict(reversed(list(weights.items())))
    for i in range(50):
        assert rank(block(i), weights) == rank(block(i), reverse)


def test_zero_weight_is_never_ranked() -> None:
    weights = dict.fromkeys(HOLDERS, 10)
    weights[HOLDERS[3]] = 0
    assert all(HOLDERS[3] not in rank(block(i), weights) for i in range(100))


def test_first_choice_is_proportional_to_weight() -> None:
    weights = {HOLDERS[0]: 1, HOLDERS[1]: 2, HOLDERS[2]: 5}
    n = 8000
    firsts = Counter(rank(block(i), weights)[0] for i in range(n))
    for h, w in weights.items():
        expected = n * w / 8
        assert abs(firsts[h] - expected) < 5 * math.sqrt(expected), (h, firsts[h], expected)


def test_removing_a_holder_moves_only_the_blocks_it_won() -> None:
    weights = {h: 50 + 10 * i for i, h in enumerate(HOLDERS)}
    without = {h: w for h, w in weights.items() if h != HOLDERS[2]}
    moved = 0
    for i in range(500):
        before = rank(block(i), weights)[0]
        after = rank(block(i), without)[0]
        if before != HOLDERS[2]:
            assert after == before
        else:
            moved += 1
    assert moved > 0


def cands(sites: dict[str, str], weight: int = 10) -> dict[str, Candidate]:
    return {h: Candidate(weight, s) for h, s in sites.items()}


@pytest.mark.parametrize(
    ("sites", "count", "used", "distinct"),
    [
        # four sites, three copies: three distinct sites, always
        ({HOLDERS[i]: "abcd"[i % 4] for i in range(8)}, 3, (), 3),
        # two sites only: both are used, the third copy goes wherever it ranks
        ({HOLDERS[i]: "ab"[i % 2] for i in range(8)}, 3, (), 2),
        # one site already holds a copy: the new ones avoid it
        ({HOLDERS[i]: "abcd"[i % 4] for i in range(8)}, 2, ("a",), 2),
        # a single site: everything there
        ({h: "a" for h in HOLDERS}, 3, (), 1),
    ],
)
def test_distinct_sites_first(
    sites: dict[str, str], count: int, used: tuple[str, ...], distinct: int
) -> None:
    pool = cands(sites)
    for i in range(100):
        picked = choose(block(i), pool, count, used)
        assert len(picked) == count
        assert len(set(picked)) == count
        picked_sites = [sites[h] for h in picked]
        assert len(set(picked_sites)) == distinct
        assert not set(picked_sites[:distinct]) & set(used)


def test_fewer_candidates_than_asked() -> None:
    pool = cands({HOLDERS[0]: "a", HOLDERS[1]: "a"})
    assert sorted(choose(block(1), pool, 3)) == sorted(HOLDERS[:2])
    assert choose(block(1), {}, 3) == []
    assert choose(block(1), pool, 0) == []


def test_choose_follows_the_ranking_within_the_site_rule() -> None:
    sites = {h: f"s{i}" for i, h in enumerate(HOLDERS)}  # every holder its own site
    pool = cands(sites)
    for i in range(50):
        assert choose(block(i), pool, 3) == rank(block(i), dict.fromkeys(HOLDERS, 10))[:3]
