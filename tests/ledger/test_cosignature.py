"""cosignature/v1: the spec's message and example line, a vector from x/mod's published key,
named mutations and the k-of-n quorum a trace asks for."""

from __future__ import annotations

import base64
import hashlib

import pytest

from ledger.cosignature import (
    CosignatureVerifier,
    Cosigner,
    cosignature_timestamp,
    cosigned_message,
    verify_cosigned,
)
from ledger.errors import DecodeError, SignatureError, UsageError, VerificationError
from ledger.identity import SigningKey
from ledger.note import Ed25519Signer, Ed25519Verifier, Note, Signature, parse_note, sign_note

# c2sp.org/tlog-cosignature: the example checkpoint, its cosignature line and signed message.
TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_COSIGNED = (
    TEXT + "\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q"
    "1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2o"
    "yin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
).encode()
SPEC_MESSAGE = (
    b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
    b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)

# x/mod's published PeterNeumann seed as a cosigner over the spec's checkpoint at the spec's time:
# formats' NewSignerForCosignatureV1 accepts this key (type 0x01 seed, key ID with 0x04).
PETER_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
W1_VKEY = "witness.example.com/w1+d46a2b1b+BBpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
W1_LINE = (
    "— witness.example.com/w1 1GorGwAAAABkGFDLJeR//pqzhnEKVvEm2wWbh2RJ6oru5+cUUfm5X9NnlaGr8aSH9QE5R"
    "VZD4QGlxl2F5UpVIIi94p178KLfqPPsAA==\n"
)


def _key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"edgefleet-tests/" + label.encode()).digest())


def test_signed_message_is_the_spec_s() -> None:
    assert cosigned_message(TEXT, 1679315147) == SPEC_MESSAGE


def test_spec_example_line_parses_with_its_timestamp() -> None:
    note = parse_note(SPEC_COSIGNED)
    w = note.signatures[1]
    assert (w.name, w.key_id, len(w.data)) == ("witness.example.com/w1", 0x8D66CF3F, 72)
    assert cosignature_timestamp(w) == 1679315147  # the "time" line of the spec's message


def test_vector_from_a_published_key_is_byte_exact() -> None:
    c = Cosigner("witness.example.com/w1", SigningKey(PETER_SEED))
    assert c.verifier.vkey() == W1_VKEY
    assert c.cosign(TEXT, 1679315147).line() == W1_LINE
    v = CosignatureVerifier.from_vkey(W1_VKEY)
    sig = parse_note((TEXT + "\n" + W1_LINE).encode()).signatures[0]
    v.verify(TEXT.encode(), sig.data)
    # The key ID commits to type 0x04: the same key as a plain note key has another ID.
    assert Ed25519Signer("witness.example.com/w1", SigningKey(PETER_SEED)).key_id != v.key_id
    with pytest.raises(DecodeError):
        Ed25519Verifier.from_vkey(W1_VKEY)
    with pytest.raises(DecodeError):
        CosignatureVerifier.from_vkey(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )


LOG = Ed25519Signer("example.com/log", _key("c2sp-log"))
WITNESSES = [Cosigner(f"w{i}.example.com", _key(f"c2sp-witness-{i}")) for i in range(3)]
CP = "example.com/log\n5\n" + base64.b64encode(hashlib.sha256(b"r").digest()).decode() + "\n"


def _cosigned(n: int, ts: int = 1_700_000_000) -> bytes:
    note = sign_note(CP, LOG)
    for w in WITNESSES[:n]:
        note = w.cosign_note(note, ts)
    return note.encode()


def test_quorum_counts_verified_witnesses() -> None:
    vs = [w.verifier for w in WITNESSES]
    got = verify_cosigned(_cosigned(2), LOG.verifier, vs, 2)
    assert got.cosigners == (("w0.example.com", 1_700_000_000), ("w1.example.com", 1_700_000_000))
    with pytest.raises(VerificationError, match="cosignatures"):
        verify_cosigned(_cosigned(2), LOG.verifier, vs, 3)
    assert verify_cosigned(_cosigned(0), LOG.verifier, vs, 0).cosigners == ()
    with pytest.raises(UsageError):
        verify_cosigned(_cosigned(2), LOG.verifier, vs, 4)


def test_a_witness_alone_does_not_make_a_checkpoint() -> None:
    note = sign_note(CP, LOG)
    only_witness = parse_note(WITNESSES[0].cosign_note(note, 1).encode())
    stripped = only_witness.signatures[1:]
    with pytest.raises(VerificationError, match="log key"):
        verify_cosigned(Note(CP, stripped), LOG.verifier, [WITNESSES[0].verifier], 1)


def _mutate_cosig(data: bytes, index: int) -> bytes:
    lines = data.decode().split("\n")
    name, b64 = lines[-2].rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    lines[-2] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
    return "\n".join(lines).encode()


COSIG_MUTATIONS = [
    ("timestamp[11]-bit-@0", _mutate_cosig(_cosigned(1), 11), SignatureError),
    ("signature[40]-bit-@0", _mutate_cosig(_cosigned(1), 40), SignatureError),
    ("key-id[2]-bit-@0", _mutate_cosig(_cosigned(1), 2), VerificationError),  # unknown: too few
    ("checkpoint-size", _cosigned(1).replace(b"\n5\n", b"\n6\n"), SignatureError),
    ("truncated-cosignature", _cosigned(1)[:-8] + b"AAAA=\n", DecodeError),
]


@pytest.mark.parametrize(
    ("data", "error"), [m[1:] for m in COSIG_MUTATIONS], ids=[m[0] for m in COSIG_MUTATIONS]
)
def test_cosignature_mutation_is_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        verify_cosigned(data, LOG.verifier, [WITNESSES[0].verifier], 1)


def test_timestamps_are_bounded_and_cover_checkpoints_only() -> None:
    w = WITNESSES[0]
    with pytest.raises(UsageError):
        w.cosign(CP, 1 << 63)
    with pytest.raises(UsageError):
        w.cosign("not a checkpoint\n", 1)
    assert cosignature_timestamp(w.cosign(CP, (1 << 63) - 1)) == (1 << 63) - 1
    with pytest.raises(DecodeError):
        cosignature_timestamp(Signature("w", 1, b"\xff" * 72))
    with pytest.raises(SignatureError):
        w.verifier.verify(CP.encode(), b"\x00" * 71)


def test_witness_keys_must_be_distinct() -> None:
    twin = CosignatureVerifier("other.example.com", WITNESSES[0].verifier.public)
    with pytest.raises(UsageError):
        verify_cosigned(_cosigned(1), LOG.verifier, [WITNESSES[0].verifier, twin], 1)
