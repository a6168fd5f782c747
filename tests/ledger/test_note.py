"""C2SP signed notes: known answers from the spec and golang.org/x/mod, named mutations, vkey
manglings, truncations, a fuzz bound and a Hypothesis round trip."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import (
    DecodeError,
    LedgerError,
    SignatureError,
    UsageError,
    VerificationError,
)
from ledger.identity import SigningKey
from ledger.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    Signature,
    key_id,
    open_note,
    parse_note,
    parse_vkey,
    sign_note,
)

# --- published vectors ----------------------------------------------------------------------------

# c2sp.org/signed-note, "Verifier keys / Example".
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRK"
    "uwHjG1Yu72IneyaQM=\n"
).encode()

# golang.org/x/mod/sumdb/note, note_test.go (TestSign, TestOpen): a published private key.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpR"
    "Zb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox3"
    "3WWd1RvMc+QQ=\n"
)


def peter_signer() -> Ed25519Signer:
    # x/mod's private key form: PRIVATE+KEY+name+keyid+base64(0x01 || seed)
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 0x01
    return Ed25519Signer("PeterNeumann", SigningKey(raw[1:]))


PETER = Ed25519Verifier.from_vkey(PETER_VKEY)
ENOCH = Ed25519Verifier.from_vkey(ENOCH_VKEY)
NOTE = (TEXT + "\n" + PETER_SIG).encode()


def test_spec_example_verifies_under_its_vkey() -> None:
    v = Ed25519Verifier.from_vkey(SPEC_VKEY)
    opened = open_note(SPEC_NOTE, [v])
    assert opened.text == "This is an example message.\n"
    assert [s.name for s in opened.verified] == ["example.com/foo"]
    assert v.key_id == 0x530D903A and v.vkey() == SPEC_VKEY


def test_sign_is_byte_exact_to_x_mod() -> None:
    signer = peter_signer()
    assert signer.key_id == 0xC74F20A3
    assert signer.verifier.vkey() == PETER_VKEY
    assert sign_note(TEXT, signer).encode() == NOTE


def test_key_id_is_the_spec_formula() -> None:
    pub = base64.b64decode(PETER_VKEY.split("+", 2)[2])[1:]
    digest = hashlib.sha256(b"PeterNeumann\n\x01" + pub).digest()
    assert key_id("PeterNeumann", 0x01, pub) == int.from_bytes(digest[:4], "big") == 0xC74F20A3


def test_open_keeps_unknown_signatures_aside() -> None:
    both = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    opened = open_note(both, [PETER])
    assert [s.name for s in opened.verified] == ["PeterNeumann"]
    assert [(s.name, s.key_id) for s in opened.unverified] == [("EnochRoot", 0xAF0CFE78)]
    opened = open_note(both, [PETER, ENOCH])
    assert [s.name for s in opened.verified] == ["PeterNeumann", "EnochRoot"]
    assert opened.unverified == ()


def test_no_known_key_raises_never_returns() -> None:
    with pytest.raises(VerificationError, match="no signature from a known key"):
        open_note(NOTE, [ENOCH])
    with pytest.raises(VerificationError):
        open_note(NOTE, [])


def test_duplicated_verifier_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        open_note(NOTE, [PETER, Ed25519Verifier.from_vkey(PETER_VKEY)])


def test_with_signature_replaces_the_same_key() -> None:
    note = sign_note(TEXT, peter_signer())
    stale = Signature("PeterNeumann", 0xC74F20A3, b"\x00" * 64)
    assert Note(TEXT, (stale,)).with_signature(note.signatures[0]).encode() == NOTE


# --- vkeys: x/mod's manglings ---------------------------------------------------------------------


def _vkey_fails(text: str) -> None:
    with pytest.raises(DecodeError):
        Ed25519Verifier.from_vkey(text)


def test_vkey_every_proper_substring_is_refused() -> None:
    b = PETER_VKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                _vkey_fails(b[i:j])


def test_vkey_every_incremented_character_is_refused() -> None:
    for i, c in enumerate(PETER_VKEY):
        _vkey_fails(PETER_VKEY[:i] + chr(ord(c) + 1) + PETER_VKEY[i + 1 :])


def test_vkey_wrong_length_and_unknown_type_with_adjusted_ids() -> None:
    # x/mod's two: the first has non-canonical base64 too; the second is a well-formed vkey of an
    # unknown signature type (its key ID was adjusted), so only the Ed25519 verifier refuses it.
    _vkey_fails("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    bad_alg = "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    assert parse_vkey(bad_alg).sig_type == 0x65
    _vkey_fails(bad_alg)


def test_vkey_upper_case_hex_is_refused() -> None:
    _vkey_fails(PETER_VKEY.replace("c74f20a3", "C74F20A3"))


# --- named mutations (transparency-dev/merkle style) ----------------------------------------------


def _flip_sig_byte(note: bytes, index: int) -> bytes:
    """Flip one bit of byte ``index`` of the decoded signature line (key ID first)."""
    text, _, line = note.decode().rpartition("\n\n")
    prefix, _, b64 = line.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x08
    return f"{text}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n".encode()


NOTE_S = NOTE.decode()
MUTATIONS: list[tuple[str, bytes, type[LedgerError]]] = [
    *[(f"signature[{i}]-bit-@3", _flip_sig_byte(NOTE, i), SignatureError) for i in (4, 20, 67)],
    *[(f"key-id[{i}]-bit-@3", _flip_sig_byte(NOTE, i), VerificationError) for i in (0, 3)],
    ("text-bit-flip", NOTE.replace(b"answer", b"anSwer"), SignatureError),
    (
        "wrong-key-name",
        NOTE.replace(b"\xe2\x80\x94 PeterNeumann", "— PeterNeuman".encode()),
        VerificationError,
    ),
    ("trailing-garbage", NOTE + b"Unexpected line.\n", DecodeError),
    ("trailing-newline", NOTE + b"\n", DecodeError),
    ("missing-final-newline", NOTE[:-1], DecodeError),
    ("missing-blank-line", NOTE.replace(b"\n\n", b"\n"), DecodeError),
    ("no-signatures", TEXT.encode() + b"\n", DecodeError),
    ("text-only", TEXT.encode(), DecodeError),
    ("crlf", NOTE.replace(b"\n", b"\r\n"), DecodeError),
    ("cr-in-text", NOTE.replace(b"problem,\n", b"problem,\r\n"), DecodeError),
    ("nul-in-text", b"\x00" + NOTE, DecodeError),
    ("leading-control-byte", b"\x01" + NOTE, DecodeError),
    ("invalid-utf8", b"\xff" + NOTE, DecodeError),
    ("duplicated-signature-line", NOTE + PETER_SIG.encode(), DecodeError),
    ("signature-line-without-dash", NOTE.replace("— ".encode(), b"- "), DecodeError),
    ("hyphen-minus-instead-of-em-dash", NOTE.replace("—".encode(), b"--"), DecodeError),
    ("space-in-key-name", NOTE.replace(b"PeterNeumann", b"Peter Neumann"), DecodeError),
    ("plus-in-key-name", NOTE.replace(b"PeterNeumann", b"Peter+Neumann"), DecodeError),
    ("nbsp-in-key-name", NOTE.replace(b"PeterNeumann", "Peter\u00a0Neumann".encode()), DecodeError),
    ("non-canonical-base64", NOTE.replace(b"AM=\n", b"AN=\n"), DecodeError),
    ("unpadded-base64", NOTE.replace(b"AM=\n", b"AM\n"), DecodeError),
    ("urlsafe-base64", NOTE.replace(b"x08go/", b"x08go_"), DecodeError),
    ("key-id-only", (TEXT + "\n— PeterNeumann x08gow==\n").encode(), DecodeError),
    (
        "too-many-signatures",
        (TEXT + "\n" + "".join(f"— k{i} AAAAAAE=\n" for i in range(MAX_SIGNATURES + 1))).encode(),
        DecodeError,
    ),
    ("oversized", b"a" * (MAX_NOTE_BYTES - len(NOTE) + 1) + NOTE, DecodeError),
]


@pytest.mark.parametrize(
    ("data", "error"), [(m[1], m[2]) for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_mutation_is_refused(data: bytes, error: type[LedgerError]) -> None:
    with pytest.raises(error):
        open_note(data, [PETER])


def test_mutation_list_starts_from_a_valid_note() -> None:
    assert open_note(NOTE, [PETER]).verified


def test_two_signatures_from_one_known_key_are_refused() -> None:
    other = _flip_sig_byte(NOTE, 30).decode().rpartition("\n\n")[2]
    with pytest.raises(SignatureError, match="signed twice"):
        open_note(NOTE + other.encode(), [PETER])
    # From an unknown key, the same repetition is ignored (the spec's rule for unknown keys).
    assert open_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode(), [PETER])


def test_every_truncation_is_refused() -> None:
    for n in range(len(NOTE)):
        with pytest.raises(LedgerError):
            open_note(NOTE[:n], [PETER])


# --- properties -----------------------------------------------------------------------------------

_line = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
    min_size=0,
    max_size=40,
)
_name = st.text(
    alphabet=st.characters(
        min_codepoint=0x21, max_codepoint=0x2FFF, exclude_categories=("Cs", "Zs", "Zl", "Zp")
    ),
    min_size=1,
    max_size=30,
).filter(lambda s: "+" not in s and not any(c.isspace() for c in s))


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(_line, min_size=1, max_size=6),
    names=st.lists(_name, min_size=1, max_size=4, unique=True),
    seed=st.binary(min_size=32, max_size=32),
)
def test_round_trip(lines: list[str], names: list[str], seed: bytes) -> None:
    text = "".join(line + "\n" for line in lines)
    signers = [
        Ed25519Signer(n, SigningKey(hashlib.sha256(seed + n.encode()).digest())) for n in names
    ]
    note = sign_note(text, signers[0])
    for s in signers[1:]:
        note = note.with_signature(s.sign(text))
    wire = note.encode()
    assert parse_note(wire) == note
    opened = open_note(wire, [s.verifier for s in signers])
    assert opened.text == text and len(opened.verified) == len(signers)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(lambda a, b: a + NOTE + b, st.binary(max_size=8), st.binary(max_size=8))
)
def test_fuzz_only_decode_errors_escape_parse(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_note(data)
