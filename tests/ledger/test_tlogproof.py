""".tlog-proof files: formats' marshal vectors, strict parsing with named mutations, edgefleet
header proofs from a real store, and the byte-exact vectors of docs/PROTOCOL.md section 16."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.checkpoint import (
    Checkpoint,
    checkpoint_for,
    device_origin,
    device_signer,
    device_verifier,
    fleet_label,
)
from ledger.cosignature import Cosigner
from ledger.errors import DecodeError, ProofError, SignatureError, UsageError, VerificationError
from ledger.identity import SigningKey
from ledger.merkle import inclusion_proof, root_from_leaf_hashes
from ledger.note import Note, parse_note, sign_note
from ledger.store import Store
from ledger.tlogproof import (
    TlogProof,
    export_header_proof,
    export_reading_proof,
    parse_tlog_proof,
    verify_header_proof,
    verify_reading_proof,
    verify_tlog_proof,
)


def _seed(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(label.encode()).digest())


# --- the vectors of docs/PROTOCOL.md section 16 ---------------------------------------------------
FLEET_KEY = _seed("edgefleet-c2sp-fleet")
DEVICE_KEY = _seed("edgefleet-c2sp-device")
WITNESS_KEY = _seed("edgefleet-c2sp-witness")
LEAVES = [hashlib.sha256(b"edgefleet-c2sp-leaf" + bytes([i])).digest() for i in range(5)]
TIMESTAMP = 1_700_000_000

V_ORIGIN = "edgefleet/6b32440361a9381f/ef4gvfbklktcb7krh5afolunsz/epoch/0"
V_DEVICE_VKEY = f"{V_ORIGIN}+8af9eeb2+AXsD+a3veSENsMLNr4MM/DFJPSx+LQkCI3mHKQYty5ZU"
V_WITNESS_VKEY = (
    "witness.edgefleet.invalid/w1+92b5b100+BPOoKcofikW7k3fnD0YV1lF1DTuEtrnmbRGneMvkG58a"
)
V_TEXT = f"{V_ORIGIN}\n5\nM1WRzQdqAsi+5u6326XfyBHOi32H6Az3/pJzWM+E5RU=\n"
V_NOTE = (
    V_TEXT + "\n"
    f"\u2014 {V_ORIGIN} ivnusoP7/KjaJRr2vnE185UaQ1gyW7LwTZH/s4ZfTALEBUPHyF2VpPedsx+IkZHekD3q0KgG8N"
    "TVKB8Squ/e3bUHfQk=\n"
    "\u2014 witness.edgefleet.invalid/w1 krWxAAAAAABlU/EA6BwDjJ8nnzqLioK2MGtCbpEcDlcsfVm+DfLymAa+W"
    "bd88ZyKRZIJnSfzITc+JO1zIs0YC1upQUCuDzhtLyyuBQ==\n"
).encode()
V_PROOF = (
    b"c2sp.org/tlog-proof@v1\nextra bGVhZiAy\nindex 2\n"
    b"4UYorIJY0Eke2NULhyonXGmpsnIIuOlaAjcCn5XQ0Qk=\n"
    b"SjefxPek38cC84QCmclj3AUA1yTROShLhTGdx/atMFA=\n"
    b"W8kpL+G8jkyS4nrO+j42l0V9sBa5NRvTNqWRDKTad3E=\n\n" + V_NOTE
)


def vector_note() -> tuple[str, Note]:
    fleet = fleet_label(FLEET_KEY.public)
    origin = device_origin(fleet, DEVICE_KEY.public.device_id, 0)
    cp = Checkpoint(origin, len(LEAVES), root_from_leaf_hashes(LEAVES))
    note = sign_note(cp.text(), device_signer(origin, DEVICE_KEY))
    witness = Cosigner("witness.edgefleet.invalid/w1", WITNESS_KEY)
    return origin, witness.cosign_note(note, TIMESTAMP)


def vector_proof() -> bytes:
    _, note = vector_note()
    return TlogProof(2, tuple(inclusion_proof(LEAVES, 2)), note, b"leaf 2").encode()


def test_vectors_are_byte_exact() -> None:
    origin, note = vector_note()
    assert origin == V_ORIGIN
    assert device_verifier(origin, DEVICE_KEY.public).vkey() == V_DEVICE_VKEY
    witness = Cosigner("witness.edgefleet.invalid/w1", WITNESS_KEY)
    assert witness.verifier.vkey() == V_WITNESS_VKEY
    assert note.encode() == V_NOTE
    assert vector_proof() == V_PROOF
    proof = parse_tlog_proof(V_PROOF)
    got = verify_tlog_proof(
        proof, LEAVES[2], device_verifier(origin, DEVICE_KEY.public), [witness.verifier], 1
    )
    assert got.cosigners == (("witness.edgefleet.invalid/w1", TIMESTAMP),)


# --- transparency-dev/formats proof/tlog_proof_test.go: TestMarshal ------------------------------
H1 = hashlib.sha256(b"hash1").digest()
H2 = hashlib.sha256(b"hash2").digest()
CHECKPOINT_NOTE = sign_note(
    "example.com/log\n10\n" + base64.b64encode(bytes(32)).decode() + "\n",
    device_signer("example.com/log", _seed("c2sp-formats")),
)


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def test_layout_matches_formats_marshal() -> None:
    body = CHECKPOINT_NOTE.encode()
    p = TlogProof(5, (H1, H2), CHECKPOINT_NOTE)
    assert (
        p.encode() == f"c2sp.org/tlog-proof@v1\nindex 5\n{_b64(H1)}\n{_b64(H2)}\n\n".encode() + body
    )
    extra = b"extra information"
    p = TlogProof(10, (H1,), CHECKPOINT_NOTE, extra)
    want = f"c2sp.org/tlog-proof@v1\nextra {_b64(extra)}\nindex 10\n{_b64(H1)}\n\n".encode() + body
    assert p.encode() == want
    assert (
        TlogProof(0, (), CHECKPOINT_NOTE).encode() == b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + body
    )
    for q in (p, TlogProof(0, (), CHECKPOINT_NOTE)):
        assert parse_tlog_proof(q.encode()) == q


GOOD = TlogProof(5, (H1, H2), CHECKPOINT_NOTE, b"x").encode()
BODY = CHECKPOINT_NOTE.encode()
PROOF_MUTATIONS = [
    ("missing-header", GOOD.replace(b"c2sp.org/tlog-proof@v1", b"wrong-header")),
    ("header-v2", GOOD.replace(b"@v1", b"@v2")),
    ("extra-not-base64", GOOD.replace(b"extra eA==", b"extra !!notbase64!!")),
    ("extra-empty", GOOD.replace(b"extra eA==", b"extra ")),
    ("extra-after-index", b"c2sp.org/tlog-proof@v1\nindex 0\nextra eA==\n\n" + BODY),
    ("missing-index", b"c2sp.org/tlog-proof@v1\n\n" + BODY),
    ("index-not-a-number", b"c2sp.org/tlog-proof@v1\nindex notanumber\n\n" + BODY),
    ("index-negative", b"c2sp.org/tlog-proof@v1\nindex -5\n\n" + BODY),
    ("index-leading-zero", b"c2sp.org/tlog-proof@v1\nindex 05\n\n" + BODY),
    ("index-2^63", f"c2sp.org/tlog-proof@v1\nindex {1 << 63}\n\n".encode() + BODY),
    ("hash-not-base64", b"c2sp.org/tlog-proof@v1\nindex 0\n!!notbase64!!\n\n" + BODY),
    ("hash-64-bytes", f"c2sp.org/tlog-proof@v1\nindex 0\n{_b64(bytes(64))}\n\n".encode() + BODY),
    (
        "64-hashes",
        b"c2sp.org/tlog-proof@v1\nindex 0\n" + (_b64(H1) + "\n").encode() * 64 + b"\n" + BODY,
    ),
    ("no-empty-line", GOOD.replace(b"\n\n", b"\n", 1)),
    ("crlf", GOOD.replace(b"\n", b"\r\n")),
    ("trailing-garbage", GOOD + b"garbage\n"),
    ("no-checkpoint", b"c2sp.org/tlog-proof@v1\nindex 0\n\n"),
    ("huge-line", b"c2sp.org/tlog-proof@v1\nindex 0\n" + b"a" * (65 * 1024) + b"\n\n" + BODY),
]


@pytest.mark.parametrize(
    "data", [m[1] for m in PROOF_MUTATIONS], ids=[m[0] for m in PROOF_MUTATIONS]
)
def test_proof_mutation_is_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_tlog_proof(data)


def test_every_truncation_is_refused() -> None:
    for n in range(len(GOOD)):
        with pytest.raises(DecodeError):
            parse_tlog_proof(GOOD[:n])


# --- verification ---------------------------------------------------------------------------------


def _refused(name: str, error: type[Exception], fn: Callable[..., object], *args: object) -> None:
    """Assert that ``fn(*args)`` raises ``error``, naming the mutation when it does not."""
    try:
        fn(*args)
    except error:
        return
    raise AssertionError(f"mutation {name!r} was accepted")


def test_inclusion_mutations() -> None:
    origin, note = vector_note()
    log = device_verifier(origin, DEVICE_KEY.public)
    path = tuple(inclusion_proof(LEAVES, 2))
    verify_tlog_proof(TlogProof(2, path, note), LEAVES[2], log)
    cases = [
        ("wrong-leaf", TlogProof(2, path, note), LEAVES[3], ProofError),
        ("wrong-index", TlogProof(3, path, note), LEAVES[2], ProofError),
        ("index-beyond-size", TlogProof(5, path, note), LEAVES[2], ProofError),
        (
            "modified-proof[0]-bit-@3",
            TlogProof(2, (bytes([path[0][0] ^ 8]) + path[0][1:], *path[1:]), note),
            LEAVES[2],
            ProofError,
        ),
        ("proof-too-short", TlogProof(2, path[:-1], note), LEAVES[2], ProofError),
        ("proof-extended", TlogProof(2, (*path, path[0]), note), LEAVES[2], ProofError),
    ]
    for name, proof, leaf, error in cases:
        _refused(name, error, verify_tlog_proof, proof, leaf, log)
    tampered = Note(note.text.replace("\n5\n", "\n6\n"), note.signatures)
    with pytest.raises(SignatureError):
        verify_tlog_proof(TlogProof(2, path, tampered), LEAVES[2], log)
    with pytest.raises(VerificationError):
        verify_tlog_proof(
            TlogProof(2, path, note), LEAVES[2], device_verifier(origin, FLEET_KEY.public)
        )


def test_header_proof_from_a_store(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    note = checkpoint_for(chain_store, fleet, device_key)
    head = chain_store.head()
    assert head is not None
    log = device_verifier(
        device_origin(fleet, head.header.device_id, head.header.epoch), device_key.public
    )
    for height in range(head.header.height + 1):
        data = export_header_proof(chain_store, height, note)
        header, cosigned = verify_header_proof(data, log)
        assert header.wire == chain_store.header_at(height).wire  # type: ignore[union-attr]
        assert cosigned.checkpoint.size == head.header.height + 1
    with pytest.raises(UsageError):
        export_header_proof(chain_store, head.header.height + 1, note)
    # The index must be the header's height, even with a path that would fit another leaf.
    p = parse_tlog_proof(export_header_proof(chain_store, 0, note))
    moved = TlogProof(1, p.hashes, p.note, p.extra).encode()
    with pytest.raises(ProofError):
        verify_header_proof(moved, log)
    without_extra = TlogProof(0, p.hashes, p.note).encode()
    with pytest.raises(DecodeError, match="extra"):
        verify_header_proof(without_extra, log)
    assert parse_note(note.encode()) == note


def _doc_block(name: str) -> bytes:
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    begin, end = f"<!-- c2sp-{name}:begin -->\n```\n", f"```\n<!-- c2sp-{name}:end -->"
    return doc[doc.index(begin) + len(begin) : doc.index(end)].encode()


def test_protocol_md_shows_the_vectors_byte_for_byte() -> None:
    assert _doc_block("note") == V_NOTE
    assert _doc_block("proof") == V_PROOF


def test_protocol_md_table_values_are_the_code_s() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = doc[doc.index("## 16. Checkpoints") :]
    _, note = vector_note()
    values = [
        FLEET_KEY.seed.hex(),
        FLEET_KEY.public.raw.hex(),
        FLEET_KEY.key_id.hex(),
        DEVICE_KEY.seed.hex(),
        DEVICE_KEY.public.raw.hex(),
        DEVICE_KEY.public.device_id,
        WITNESS_KEY.seed.hex(),
        WITNESS_KEY.public.raw.hex(),
        root_from_leaf_hashes(LEAVES).hex(),
        inclusion_proof(LEAVES, 2)[1].hex(),
        *(s.data.hex() for s in note.signatures),
        *(h.hex()[:8] for h in LEAVES),
    ]
    for value in values:
        assert f"`{value}" in section, value


def test_export_refuses_a_checkpoint_of_another_tree(
    chain_store: Store, device_key: SigningKey
) -> None:
    # Same origin and size as the store's, another root: the proof would not verify, so no file.
    head = chain_store.head()
    assert head is not None
    origin = device_origin(fleet_label(FLEET_KEY.public), head.header.device_id, head.header.epoch)
    foreign = Checkpoint(origin, head.header.height + 1, bytes(32))
    note = sign_note(foreign.text(), device_signer(origin, device_key))
    with pytest.raises(UsageError, match="not of this store"):
        export_header_proof(chain_store, 0, note)


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, (1 << 63) - 2),
    hashes=st.lists(st.binary(min_size=32, max_size=32), max_size=63),
    extra=st.binary(max_size=64),
)
def test_round_trip(index: int, hashes: list[bytes], extra: bytes) -> None:
    p = TlogProof(index, tuple(hashes), CHECKPOINT_NOTE, extra)
    assert parse_tlog_proof(p.encode()) == p


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | st.builds(
        lambda i, b: GOOD[:i] + b + GOOD[i:], st.integers(0, len(GOOD)), st.binary(max_size=4)
    )
)
def test_fuzz_only_decode_errors_escape_parse(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_tlog_proof(data)


def test_reading_proofs_from_a_store(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    note = checkpoint_for(chain_store, fleet, device_key)
    head = chain_store.head()
    assert head is not None
    log = device_verifier(
        device_origin(fleet, head.header.device_id, head.header.epoch), device_key.public
    )
    for height in range(head.header.height + 1):
        block = chain_store.block(height)
        assert block is not None
        for i, stored in enumerate(block.readings):
            data = export_reading_proof(chain_store, height, i, note)
            reading, header, _ = verify_reading_proof(data, log)
            assert (reading.wire, header.wire) == (stored.wire, block.header.wire)
            reading.verify(
                device_key.public
            )  # the caller's part: signatures under the key in force
    with pytest.raises(UsageError):
        export_reading_proof(chain_store, 0, 99, note)


def _reading_extra(data: bytes) -> tuple[TlogProof, list[object]]:
    p = parse_tlog_proof(data)
    return p, msgpack.unpackb(p.extra)


def _with_extra(p: TlogProof, fields: list[object]) -> bytes:
    return TlogProof(p.index, p.hashes, p.note, msgpack.packb(fields)).encode()


def test_reading_proof_mutations(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    note = checkpoint_for(chain_store, fleet, device_key)
    head = chain_store.head()
    assert head is not None
    log = device_verifier(
        device_origin(fleet, head.header.device_id, head.header.epoch), device_key.public
    )
    p, f = _reading_extra(export_reading_proof(chain_store, 1, 1, note))
    other = _reading_extra(export_reading_proof(chain_store, 1, 2, note))[1]
    path = f[4]
    assert isinstance(path, list) and path
    cases: list[tuple[str, list[object], type[Exception]]] = [
        ("format-2", [2, *f[1:]], DecodeError),
        ("index-of-another-reading", [*f[:3], 2, f[4]], ProofError),
        ("reading-of-another-index", [f[0], f[1], other[2], f[3], f[4]], ProofError),
        (
            "modified-path[0]-bit-@3",
            [*f[:4], [bytes([path[0][0] ^ 8]) + path[0][1:], *path[1:]]],
            ProofError,
        ),
        ("path-too-short", [*f[:4], path[:-1]], ProofError),
        ("index-beyond-block", [*f[:3], 99, f[4]], ProofError),
        ("four-fields", f[:4], DecodeError),
        ("header-of-another-block", [f[0], chain_store.header_at(2).wire, *f[2:]], ProofError),  # type: ignore[union-attr]
    ]
    verify_reading_proof(_with_extra(p, f), log)
    for name, fields, error in cases:
        _refused(name, error, verify_reading_proof, _with_extra(p, fields), log)
    with pytest.raises(DecodeError):
        verify_reading_proof(TlogProof(p.index, p.hashes, p.note, b"\xc1").encode(), log)
