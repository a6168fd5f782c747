"""RFC 9162 Merkle trees: known answers, a naive reference, properties and named mutations."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger.errors import ProofError, UsageError, VerificationError
from ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from tests.ledger.merkle_reference import mth, path, proof

# --- known answers ------------------------------------------------------------------------------
# Leaves, node hashes and roots: transparency-dev/merkle testonly/constants.go (LeafInputs,
# NodeHashes, RootHashes). Proof vectors: transparency-dev/merkle proof/verify_test.go
# (inclusionProofs, consistencyProofs); their leaf numbers are 1-based, ours are 0-based indices.

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (index, size, proof)
INCLUSION_VECTORS = [
    (0, 1, []),
    (0, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (5, 8, ["bc1a0643", "ca854ea1", "d37ee418"]),
    (2, 3, ["fac54203"]),
    (1, 5, ["6e340b9c", "5f083f0a", "bc1a0643"]),
]
# (old_size, new_size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (1, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (6, 8, ["0ebc5d34", "ca854ea1", "d37ee418"]),
    (2, 5, ["5f083f0a", "bc1a0643"]),
    (6, 7, ["0ebc5d34", "b08693ec", "d37ee418"]),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
KAT_HASHES = [leaf_hash(d) for d in LEAVES]


def _full(prefix: str) -> bytes:
    """Expand an 8-hex-digit prefix to the full known node hash it names (they are unique)."""
    (match,) = {h for level in NODE_HASHES for h in level if h.startswith(prefix)}
    return bytes.fromhex(match)


def _root(size: int) -> bytes:
    return bytes.fromhex(ROOTS[size])


def test_hash_primitives_match_rfc_definitions() -> None:
    assert bytes.fromhex(ROOTS[0]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    )
    assert node_hash(b"L" * 32, b"R" * 32) != node_hash(b"R" * 32, b"L" * 32)


def test_known_node_hashes_of_complete_subtrees() -> None:
    for level, hashes in enumerate(NODE_HASHES):
        width = 1 << level
        for j, expected in enumerate(hashes):
            subtree = KAT_HASHES[j * width : (j + 1) * width]
            assert root_from_leaf_hashes(subtree).hex() == expected, (level, j)


def test_known_roots_for_every_prefix() -> None:
    tree = MerkleTree.from_leaves(LEAVES)
    for size in range(9):
        assert root_from_leaf_hashes(KAT_HASHES[:size]) == _root(size), size
        assert tree.root(size) == _root(size), size
    assert tree.root() == bytes.fromhex(
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


@pytest.mark.parametrize(("index", "size", "expected"), INCLUSION_VECTORS)
def test_known_inclusion_proofs(index: int, size: int, expected: list[str]) -> None:
    want = [_full(p) for p in expected]
    assert inclusion_proof(KAT_HASHES[:size], index) == want
    verify_inclusion(KAT_HASHES[index], index, size, want, _root(size))
    assert _accepted(_inclusion_probes(KAT_HASHES[index], index, size, want, _root(size))) == []


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY_VECTORS)
def test_known_consistency_proofs(old: int, new: int, expected: list[str]) -> None:
    want = [_full(p) for p in expected]
    assert consistency_proof(KAT_HASHES, old, new) == want
    verify_consistency(old, new, _root(old), _root(new), want)
    if old < new:
        assert _accepted(_consistency_probes(old, new, _root(old), _root(new), want)) == []


def test_known_answer_edge_cases_of_the_reference_verifier() -> None:
    one = leaf_hash(b"data")
    verify_inclusion(one, 0, 1, [], one)  # a one-leaf tree's root is its leaf hash
    for leaf, root in ((one, b""), (b"", one), (b"", b"")):
        with pytest.raises(ProofError):
            verify_inclusion(leaf, 0, 1, [], root)
    for index, size in ((0, 0), (1, 0), (2, 1), (1, 1)):
        with pytest.raises(ProofError):
            verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
    r1, r2 = leaf_hash(b"1"), leaf_hash(b"2")
    verify_consistency(1, 1, r2, r2, [])
    failing: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (1, 1, r1, r2, []),  # equal sizes, different roots
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),  # equal sizes, non-empty proof
        (1, 0, r1, r2, []),  # time travel to the past
        (2, 1, r1, r2, []),
        (1, 2, r1, r2, []),  # empty proof
        (0, 1, EMPTY_ROOT, r1, []),  # no consistency from the empty tree (RFC 9162: 0 < m)
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, []),
    ]
    for old, new, root1, root2, prf in failing:
        with pytest.raises(ProofError):
            verify_consistency(old, new, root1, root2, prf)


# --- named mutations (after transparency-dev/merkle proof/verify_test.go) -----------------------

Probe = tuple[str, Callable[[], None]]


def _accepted(probes: Iterable[Probe]) -> list[str]:
    """Names of the probes that verified; any exception other than ProofError escapes."""
    wrong = []
    for desc, probe in probes:
        try:
            probe()
        except ProofError:
            continue
        wrong.append(desc)
    return wrong


def _flip(proof_: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof_)
    element = bytearray(out[i])
    element[bit // 8] ^= 1 << (bit % 8)
    out[i] = bytes(element)
    return out


def _inclusion_probes(
    leaf: bytes, index: int, size: int, prf: list[bytes], root: bytes
) -> Iterator[Probe]:
    def v(desc: str, i: int, n: int, p: list[bytes], lf: bytes = leaf, r: bytes = root) -> Probe:
        return desc, lambda: verify_inclusion(lf, i, n, p, r)

    yield v("index - 1", index - 1, size, prf)
    yield v("index + 1", index + 1, size, prf)
    yield v("index ^ 2", index ^ 2, size, prf)
    yield v("size * 2", index, size * 2, prf)
    yield v("size // 2", index, size // 2, prf)
    yield v("wrong leaf", index, size, prf, lf=leaf_hash(b"WrongLeaf"))
    yield v("short leaf", index, size, prf, lf=b"WrongLeaf")
    yield v("empty root", index, size, prf, r=EMPTY_ROOT)
    yield v("random root", index, size, prf, r=SOME_HASH)
    yield v("trailing garbage", index, size, [*prf, b""])
    yield v("trailing root", index, size, [*prf, root])
    yield v("preceding garbage", index, size, [b"", *prf])
    yield v("preceding root", index, size, [root, *prf])
    for i in range(len(prf)):
        yield v(f"modified proof[{i}] bit 3", index, size, _flip(prf, i, 3))
        yield v(f"short proof[{i}]", index, size, [*prf[:i], prf[i][:31], *prf[i + 1 :]])
    if prf:
        yield v("removed component", index, size, prf[:-1])
    if len(prf) > 1:
        yield v("inserted component", index, size, [prf[0], SOME_HASH, *prf[1:]])


def _consistency_probes(
    old: int, new: int, root1: bytes, root2: bytes, prf: list[bytes]
) -> Iterator[Probe]:
    def v(desc: str, m: int, n: int, r1: bytes, r2: bytes, p: list[bytes]) -> Probe:
        return desc, lambda: verify_consistency(m, n, r1, r2, p)

    yield v("old - 1", old - 1, new, root1, root2, prf)
    yield v("old + 1", old + 1, new, root1, root2, prf)
    yield v("old ^ 2", old ^ 2, new, root1, root2, prf)
    yield v("new * 2", old, new * 2, root1, root2, prf)
    yield v("new // 2", old, new // 2, root1, root2, prf)
    yield v("wrong old root", old, new, SOME_HASH, root2, prf)
    yield v("wrong new root", old, new, root1, SOME_HASH, prf)
    yield v("short old root", old, new, b"WrongRoot", root2, prf)
    yield v("swapped roots", old, new, root2, root1, prf)
    yield v("empty proof", old, new, root1, root2, [])
    yield v("trailing garbage", old, new, root1, root2, [*prf, b""])
    yield v("trailing root1", old, new, root1, root2, [*prf, root1])
    yield v("trailing root2", old, new, root1, root2, [*prf, root2])
    yield v("preceding garbage", old, new, root1, root2, [b"", *prf])
    yield v("preceding root1", old, new, root1, root2, [root1, *prf])
    yield v("preceding root2", old, new, root1, root2, [root2, *prf])
    yield v("preceding proof[0]", old, new, root1, root2, [prf[0], *prf])
    yield v("truncated proof", old, new, root1, root2, prf[:-1])
    for i in range(len(prf)):
        yield v(f"modified proof[{i}] bit 4", old, new, root1, root2, _flip(prf, i, 4))


# --- reference comparisons ----------------------------------------------------------------------


def _entries(seed: int, n: int) -> list[bytes]:
    """n distinct entries of varied length (0..31 bytes), including the empty entry."""
    return [hashlib.sha256(f"{seed}/{i}".encode()).digest()[: (seed + i) % 32] for i in range(n)]


@cache
def _path_len(m: int, n: int) -> int:
    """len(PATH(m, D[n])) from the recursion's shape alone (no hashing)."""
    if n == 1:
        return 0
    k = 1 << ((n - 1).bit_length() - 1)
    return 1 + (_path_len(m, k) if m < k else _path_len(m - k, n - k))


@cache
def _proof_len(m: int, n: int, whole: bool = True) -> int:
    """len(PROOF(m, D[n])) from the recursion's shape alone (no hashing)."""
    if m == n:
        return 0 if whole else 1
    k = 1 << ((n - 1).bit_length() - 1)
    return 1 + (_proof_len(m, k, whole) if m <= k else _proof_len(m - k, n - k, False))


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 300),
    seed=st.integers(0, 2**32),
    picks=st.lists(st.integers(0, 10**6), max_size=6),
)
def test_root_and_inclusion_proofs_match_the_reference(
    size: int, seed: int, picks: list[int]
) -> None:
    entries = _entries(seed, size)
    hashes = [leaf_hash(e) for e in entries]
    root = root_from_leaf_hashes(hashes)
    assert root == mth(entries)
    indices = range(size) if size <= 16 else {0, size - 1, *(p % size for p in picks)}
    for index in indices:
        got = inclusion_proof(hashes, index)
        assert got == path(index, entries)
        verify_inclusion(hashes[index], index, size, got, root)


def test_every_inclusion_proof_up_to_40_leaves_and_every_wrong_claim() -> None:
    for size in range(1, 41):
        entries = _entries(size, size)
        hashes = [leaf_hash(e) for e in entries]
        root = mth(entries)
        for index in range(size):
            prf = inclusion_proof(hashes, index)
            assert prf == path(index, entries), (index, size)
            verify_inclusion(hashes[index], index, size, prf, root)
            for other in range(-1, size + 2):
                if other != index:
                    with pytest.raises(ProofError):
                        verify_inclusion(hashes[index], other, size, prf, root)
            for i in range(len(prf)):
                with pytest.raises(ProofError):
                    verify_inclusion(hashes[index], index, size, _flip(prf, i, 7 * i + index), root)
            for other_size in range(size * 2 + 2):
                if other_size <= index or _path_len(index, other_size) != len(prf):
                    with pytest.raises(ProofError):
                        verify_inclusion(hashes[index], index, other_size, prf, root)
            probes = _inclusion_probes(hashes[index], index, size, prf, root)
            # size probes are checked against the proof shape just above
            assert _accepted(p for p in probes if "size" not in p[0]) == [], (index, size)


@pytest.mark.parametrize(("index", "size"), [(0, 2), (5, 13), (12, 13), (63, 64), (100, 300)])
def test_every_single_bit_flip_of_every_proof_element_fails(index: int, size: int) -> None:
    hashes = [leaf_hash(e) for e in _entries(7, size)]
    root = root_from_leaf_hashes(hashes)
    prf = inclusion_proof(hashes, index)
    for i in range(len(prf)):
        for bit in range(256):
            with pytest.raises(ProofError):
                verify_inclusion(hashes[index], index, size, _flip(prf, i, bit), root)


def test_the_tree_size_must_come_from_the_signed_header() -> None:
    # RFC 9162 proofs do not bind the size: index 0 has the same proof shape in trees of 3 and
    # 4 leaves, so a 3-leaf proof "verifies" against the 3-leaf root with size 4. The size is
    # only trustworthy when it is signed together with the root.
    hashes = [leaf_hash(e) for e in _entries(1, 3)]
    prf = inclusion_proof(hashes, 0)
    verify_inclusion(hashes[0], 0, 4, prf, root_from_leaf_hashes(hashes))


def test_every_consistency_proof_up_to_64_leaves_matches_the_reference_and_resists_tampering() -> (
    None
):
    entries = _entries(64, 64)
    hashes = [leaf_hash(e) for e in entries]
    roots = [root_from_leaf_hashes(hashes[:n]) for n in range(65)]
    assert roots[64] == mth(entries)
    for new in range(1, 65):
        for old in range(1, new + 1):
            prf = consistency_proof(hashes, old, new)
            assert prf == proof(old, entries[:new]), (old, new)
            verify_consistency(old, new, roots[old], roots[new], prf)
            if old == new:
                with pytest.raises(ProofError):
                    verify_consistency(old, new, roots[old], roots[new], [roots[old]])
                if new > 1:
                    with pytest.raises(ProofError):
                        verify_consistency(old, new, roots[old - 1], roots[new], prf)
                continue
            probes = _consistency_probes(old, new, roots[old], roots[new], prf)
            # size probes are checked against the proof shape below
            wrong = _accepted(p for p in probes if not p[0].startswith(("old", "new")))
            assert wrong == [], (old, new)
            for m, n in ((old - 1, new), (old + 1, new), (old, new - 1), (old, new + 1)):
                if not 0 < m <= n or _proof_len(m, n) != len(prf):
                    with pytest.raises(ProofError):
                        verify_consistency(m, n, roots[old], roots[new], prf)


# --- errors say what was expected and what was calculated --------------------------------------


def test_root_mismatch_reports_expected_and_calculated_roots() -> None:
    prf = inclusion_proof(KAT_HASHES, 5)
    with pytest.raises(ProofError) as info:
        verify_inclusion(KAT_HASHES[5], 5, 8, prf, SOME_HASH)
    err = info.value
    assert isinstance(err, VerificationError)
    assert err.code == "bad-proof"
    assert err.expected == SOME_HASH
    assert err.found == _root(8)
    assert SOME_HASH[:8].hex() in str(err)
    assert _root(8)[:8].hex() in str(err)
    assert "calculated root" in str(err)


def test_consistency_mismatch_reports_which_root_and_both_values() -> None:
    prf = consistency_proof(KAT_HASHES, 6, 8)
    with pytest.raises(ProofError, match="old root") as old_info:
        verify_consistency(6, 8, SOME_HASH, _root(8), prf)
    assert (old_info.value.expected, old_info.value.found) == (SOME_HASH, _root(6))
    with pytest.raises(ProofError, match="new root") as new_info:
        verify_consistency(6, 8, _root(6), SOME_HASH, prf)
    assert (new_info.value.expected, new_info.value.found) == (SOME_HASH, _root(8))
    assert _root(8)[:8].hex() in str(new_info.value)


def test_precondition_failures_name_the_bound() -> None:
    with pytest.raises(ProofError, match="wrong number of hashes: expected 3, found 4"):
        verify_inclusion(KAT_HASHES[0], 0, 8, [SOME_HASH] * 4, _root(8))
    with pytest.raises(ProofError, match="element 1 length in bytes: expected 32, found 31"):
        verify_inclusion(KAT_HASHES[0], 0, 8, [SOME_HASH, SOME_HASH[1:], SOME_HASH], _root(8))
    with pytest.raises(ProofError, match="got index 8, size 8"):
        verify_inclusion(KAT_HASHES[0], 8, 8, [], _root(8))
    with pytest.raises(ProofError, match="got index -1, size 8"):
        verify_inclusion(KAT_HASHES[0], -1, 8, [], _root(8))
    with pytest.raises(ProofError, match="got old_size 0, new_size 8"):
        verify_consistency(0, 8, EMPTY_ROOT, _root(8), [])
    with pytest.raises(ProofError, match="got old_size 9, new_size 8"):
        verify_consistency(9, 8, _root(8), _root(8), [])
    with pytest.raises(ProofError, match="leaf hash length in bytes: expected 32, found 0"):
        verify_inclusion(b"", 0, 1, [], _root(1))


# --- generation misuse is ours: UsageError -----------------------------------------------------


def test_generation_rejects_misuse() -> None:
    with pytest.raises(UsageError, match="leaf hash 1: expected 32 bytes, found 3 bytes"):
        root_from_leaf_hashes([SOME_HASH, b"abc"])
    for index in (-1, 8):
        with pytest.raises(UsageError):
            inclusion_proof(KAT_HASHES, index)
    with pytest.raises(UsageError):
        inclusion_proof([], 0)
    for old, new in ((0, 4), (5, 4), (4, 9), (-1, 4)):
        with pytest.raises(UsageError):
            consistency_proof(KAT_HASHES, old, new)
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


def test_merkle_tree_rejects_misuse() -> None:
    tree = MerkleTree(KAT_HASHES[:3])
    with pytest.raises(UsageError):
        tree.append(b"\x00" * 31)
    with pytest.raises(UsageError):
        tree.root(4)
    with pytest.raises(UsageError):
        tree.inclusion_proof(2, 2)
    with pytest.raises(UsageError):
        tree.consistency_proof(2, 4)
    assert len(tree) == 3
    assert tree.leaf_hashes == tuple(KAT_HASHES[:3])


class MerkleTreeAgainstReference(RuleBasedStateMachine):
    """Appends interleaved with roots and proofs of random prefixes, checked against the RFC."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = MerkleTree()
        self.entries: list[bytes] = []

    @rule(data=st.binary(max_size=40))
    def append(self, data: bytes) -> None:
        assert self.tree.append(leaf_hash(data)) == len(self.entries)
        self.entries.append(data)

    @rule(pick=st.integers(0, 10**6))
    def root_of_a_prefix(self, pick: int) -> None:
        size = pick % (len(self.entries) + 1)
        assert self.tree.root(size) == mth(self.entries[:size])

    @precondition(lambda self: self.entries)
    @rule(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
    def proofs_of_a_prefix(self, a: int, b: int) -> None:
        size = 1 + b % len(self.entries)
        index = a % size
        prf = self.tree.inclusion_proof(index, size)
        assert prf == path(index, self.entries[:size])
        verify_inclusion(leaf_hash(self.entries[index]), index, size, prf, self.tree.root(size))
        old = 1 + a % size
        cons = self.tree.consistency_proof(old, size)
        assert cons == proof(old, self.entries[:size])
        verify_consistency(old, size, self.tree.root(old), self.tree.root(size), cons)

    @invariant()
    def whole_tree_root(self) -> None:
        assert len(self.tree) == len(self.entries)
        assert self.tree.root() == mth(self.entries)


MerkleTreeAgainstReference.TestCase.settings = settings(
    max_examples=25, stateful_step_count=40, deadline=None
)
TestMerkleTreeAgainstReference = MerkleTreeAgainstReference.TestCase
