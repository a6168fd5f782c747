"""docs/PROTOCOL.md vectors: they are what the code produces, and an independent verifier written
from the document alone (plain msgpack, cryptography's Ed25519, hashlib; no ledger code) accepts
them and rejects tampered copies.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.vectors import generate

V: dict[str, Any] = json.loads(generate.JSON_PATH.read_text())


def test_vectors_file_matches_the_code() -> None:
    assert generate.build() == V, "run: python -m tests.vectors.generate --write"


def test_protocol_document_shows_the_vectors() -> None:
    doc = generate.DOC_PATH.read_text()
    assert generate.render_doc_block(V) in doc, "run: python -m tests.vectors.generate --write"


# --- an independent verifier, from docs/PROTOCOL.md only -----------------------------------------


def dom(name: str) -> bytes:
    return {
        "READING": b"edgefleet/v1/reading",
        "HEADER": b"edgefleet/v1/header",
        "HEADER_HASH": b"edgefleet/v1/header-hash",
        "CERTIFICATE": b"edgefleet/v1/certificate",
        "ROTATION": b"edgefleet/v1/key-rotation",
        "ROTATION_COUNTERSIGN": b"edgefleet/v1/key-rotation-countersign",
        "REVOCATION": b"edgefleet/v1/revocation",
        "DEVICE_ID": b"edgefleet/v1/device-id",
        "KEY_ID": b"edgefleet/v1/key-id",
    }[name] + b"\x00"


def unpack(data: bytes) -> Any:
    obj = msgpack.unpackb(data, raw=False)
    assert msgpack.packb(obj, use_bin_type=True) == data, "not canonical"
    return obj


def ed_verify(pub: bytes, sig: bytes, msg: bytes) -> None:
    Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return sha(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def open_envelope(wire: bytes, domain: str, pub: bytes) -> list[Any]:
    body, sig = unpack(wire)
    ed_verify(pub, sig, dom(domain) + body)
    return unpack(body)


def device_id(pub: bytes) -> str:
    return "ef" + base64.b32encode(sha(dom("DEVICE_ID") + pub)[:15]).decode().lower()


def test_names() -> None:
    pub = bytes.fromhex(V["device"]["public"])
    assert device_id(pub) == V["device"]["device_id"]
    assert sha(dom("KEY_ID") + pub)[:8].hex() == V["device"]["key_id"]
    for name, hexed in V["domains"].items():
        assert bytes.fromhex(hexed) == dom(name)


def test_certificate_verifies_under_the_fleet_root() -> None:
    root = bytes.fromhex(V["authority"]["public"])
    f = open_envelope(bytes.fromhex(V["certificate"]["wire"]), "CERTIFICATE", root)
    assert f[0] == 1 and f[1].hex() == V["device"]["public"]
    assert f[2] == device_id(f[1]) and f[10].hex() == V["authority"]["key_id"]
    assert f[7] <= f[8]


def test_reading_signature_fields_and_leaf() -> None:
    pub = bytes.fromhex(V["device"]["public"])
    wire = bytes.fromhex(V["reading"]["wire"])
    assert open_envelope(wire, "READING", pub) == V["reading"]["fields"]
    assert sha(b"\x00" + wire).hex() == V["reading"]["leaf_hash"]


def test_block_header_root_and_inclusion_proof() -> None:
    pub = bytes.fromhex(V["device"]["public"])
    b = V["block0"]
    readings = [bytes.fromhex(r) for r in b["readings"]]
    leaves = [sha(b"\x00" + r) for r in readings]
    assert [x.hex() for x in leaves] == b["leaf_hashes"]
    header_wire = bytes.fromhex(b["header_wire"])
    h = open_envelope(header_wire, "HEADER", pub)
    body = unpack(header_wire)[0]
    assert sha(dom("HEADER_HASH") + body).hex() == b["header_hash"]
    assert h[3] == 0 and h[4] == bytes(32) and h[5] == sha(b"")
    assert h[6] == mth(leaves) and h[6].hex() == b["merkle_root"] and h[7] == 3
    for r in readings:
        fields = open_envelope(r, "READING", pub)
        assert fields[1] == h[1] and fields[2] == h[2]
    # RFC 9162 PATH for index 1 of 3 leaves: [leaf 0, leaf 2]
    assert b["inclusion_proof_index_1"] == [leaves[0].hex(), leaves[2].hex()]
    assert unpack(bytes.fromhex(b["block_wire"])) == [header_wire, readings]


def test_chain_links_and_history_roots() -> None:
    pub = bytes.fromhex(V["device"]["public"])
    c = V["chain"]
    hashes: list[bytes] = []
    for height, hexed in enumerate(c["header_wires"]):
        wire = bytes.fromhex(hexed)
        h = open_envelope(wire, "HEADER", pub)
        assert h[3] == height
        assert h[4] == (hashes[-1] if hashes else bytes(32))
        assert h[5] == mth(hashes) and h[5].hex() == c["history_roots"][height]
        hashes.append(sha(dom("HEADER_HASH") + unpack(wire)[0]))
    assert [x.hex() for x in hashes] == c["header_hashes"]
    ext = unpack(bytes.fromhex(c["extension_2_to_4"]))
    assert ext[:3] == [1, 2, 4]
    # inclusion of header 2's hash at index 2 in the tree of size 4: [hash 3, MTH(0..2)]
    assert ext[4] == [hashes[3], mth(hashes[0:2])]
    # consistency 2 -> 4 (RFC 9162): the old tree is a complete subtree: proof = [MTH(2..4)]
    assert ext[3] == [mth(hashes[2:4])]


def test_fork_evidence() -> None:
    root = bytes.fromhex(V["authority"]["public"])
    ev = unpack(bytes.fromhex(V["fork_evidence"]["wire"]))
    assert ev[0] == 1 and ev[2] == []
    cert = open_envelope(ev[1], "CERTIFICATE", root)
    a = open_envelope(ev[3], "HEADER", cert[1])
    b = open_envelope(ev[4], "HEADER", cert[1])
    assert (a[1], a[2], a[3]) == (b[1], b[2], b[3])
    ha = sha(dom("HEADER_HASH") + unpack(ev[3])[0])
    hb = sha(dom("HEADER_HASH") + unpack(ev[4])[0])
    assert ha < hb


def test_rotation_and_revocation() -> None:
    root = bytes.fromhex(V["authority"]["public"])
    old = bytes.fromhex(V["device"]["public"])
    body, old_sig, auth_sig = unpack(bytes.fromhex(V["rotation"]["wire"]))
    ed_verify(old, old_sig, dom("ROTATION") + body)
    ed_verify(root, auth_sig, dom("ROTATION_COUNTERSIGN") + body + old_sig)
    f = unpack(body)
    assert f[2].hex() == V["device"]["key_id"] and f[3].hex() == V["rotation"]["new_public"]
    rev = open_envelope(bytes.fromhex(V["revocation"]["wire"]), "REVOCATION", root)
    assert rev[1] == V["device"]["device_id"] and rev[2].hex() == V["device"]["key_id"]


@pytest.mark.parametrize("path", ["reading.wire", "block0.header_wire", "certificate.wire"])
def test_independent_verifier_rejects_a_flipped_bit(path: str) -> None:
    section, key = path.split(".")
    wire = bytearray(bytes.fromhex(V[section][key]))
    signer = V["authority"]["public"] if section == "certificate" else V["device"]["public"]
    domain = {"reading": "READING", "block0": "HEADER", "certificate": "CERTIFICATE"}[section]
    wire[len(wire) // 3] ^= 0x01  # inside the body
    with pytest.raises((InvalidSignature, ValueError, msgpack.UnpackException, AssertionError)):
        open_envelope(bytes(wire), domain, bytes.fromhex(signer))
