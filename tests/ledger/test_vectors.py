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
        "STORAGE_RECEIPT": b"edgefleet/v1/storage-receipt",
        "AUDIT": b"edgefleet/v1/audit",
        "PLACEMENT": b"edgefleet/v1/placement",
        "BUNDLE_DIGEST": b"edgefleet/v1/bundle-digest",
        "SEAL_EPHEMERAL": b"edgefleet/v1/seal-ephemeral",
        "EPOCH": b"edgefleet/v1/epoch",
        "ENROLL_REQUEST": b"edgefleet/v1/enroll-request",
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
    assert len(V["domains"]) == 16  # every tag of docs/PROTOCOL.md section 2
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


# (section.key, domain, who signs it)
SIGNED = [
    ("reading.wire", "READING", "device"),
    ("block0.header_wire", "HEADER", "device"),
    ("certificate.wire", "CERTIFICATE", "authority"),
    ("revocation.wire", "REVOCATION", "authority"),
    ("epoch_record.wire", "EPOCH", "device"),
    ("private_reading.wire", "READING", "device"),
    ("storage_receipt.wire", "STORAGE_RECEIPT", "holder"),
]


@pytest.mark.parametrize(("path", "domain", "signer"), SIGNED)
def test_independent_verifier_rejects_a_flipped_bit(path: str, domain: str, signer: str) -> None:
    section, key = path.split(".")
    wire = bytearray(bytes.fromhex(V[section][key]))
    pub = {
        "device": V["device"]["public"],
        "authority": V["authority"]["public"],
        "holder": V["storage_receipt"]["holder_public"],
    }[signer]
    open_envelope(bytes(wire), domain, bytes.fromhex(pub))  # the vector itself verifies
    wire[len(wire) // 3] ^= 0x01  # inside the body
    with pytest.raises((InvalidSignature, ValueError, msgpack.UnpackException, AssertionError)):
        open_envelope(bytes(wire), domain, bytes.fromhex(pub))


# --- the structures added to the vectors: each re-derived from the documents -------------------


def seed(label: str) -> bytes:
    return sha(b"edgefleet test vector " + label.encode())


def hexed(fields: list[Any]) -> list[Any]:
    """Decoded fields with byte strings as hex, as the vectors write them."""
    return [f.hex() if isinstance(f, bytes) else f for f in fields]


def x25519_public(secret: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def ed_public(seed_: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed_).public_key().public_bytes_raw()


def check_block(block_wire: bytes, pub: bytes) -> tuple[list[Any], bytes, list[list[Any]]]:
    """Section 6.3 from the document: header fields, header hash, reading fields."""
    header_wire, reading_wires = unpack(block_wire)
    h = open_envelope(header_wire, "HEADER", pub)
    fields = [open_envelope(r, "READING", pub) for r in reading_wires]
    assert h[6] == mth([sha(b"\x00" + r) for r in reading_wires]) and h[7] == len(fields)
    assert (h[8], h[9]) == (fields[0][4], fields[-1][4])
    assert all(f[1] == h[1] and f[2] == h[2] for f in fields)
    return h, sha(dom("HEADER_HASH") + unpack(header_wire)[0]), fields


def test_certificate_fields_and_owner_key() -> None:
    c = V["certificate"]
    body, _sig = unpack(bytes.fromhex(c["wire"]))
    assert body.hex() == c["body"] and hexed(unpack(body)) == c["fields"]
    assert c["fields"][6] == seed(c["owner_x25519_label"]).hex()


def test_readings_of_blocks_1_to_4_and_of_the_fork() -> None:
    pub = bytes.fromhex(V["device"]["public"])
    c = V["chain"]
    last_seq = 2  # block 0 ends at seq 2
    for height, wire in enumerate(c["block_wires"], start=1):
        h, hh, fields = check_block(bytes.fromhex(wire), pub)
        assert h[3] == height and hh.hex() == c["header_hashes"][height]
        assert fields == [c["reading_fields"][height - 1]]
        assert c["reading_wires"][height - 1] == unpack(bytes.fromhex(wire))[1][0].hex()
        assert fields[0][3] > last_seq
        last_seq = fields[0][3]
    f = V["fork_evidence"]
    h, hh, fields = check_block(bytes.fromhex(f["block_wire"]), pub)
    assert fields == [f["reading_fields"]] and hh.hex() == f["header_hash"]
    assert h[3] == 1 and hh.hex() != c["header_hashes"][1]
    ev = unpack(bytes.fromhex(f["wire"]))
    assert bytes.fromhex(f["header_wire"]) in (ev[3], ev[4])


def test_rotation_and_revocation_fields() -> None:
    r = V["rotation"]
    assert r["new_seed"] == seed(r["new_seed_label"]).hex()
    new_pub = ed_public(bytes.fromhex(r["new_seed"]))
    assert new_pub.hex() == r["new_public"]
    assert sha(dom("KEY_ID") + new_pub)[:8].hex() == r["new_key_id"]
    body, old_sig, auth_sig = unpack(bytes.fromhex(r["wire"]))
    assert (body.hex(), old_sig.hex(), auth_sig.hex()) == (
        r["body"],
        r["old_sig"],
        r["authority_sig"],
    )
    assert hexed(unpack(body)) == r["fields"]
    v = V["revocation"]
    body, sig = unpack(bytes.fromhex(v["wire"]))
    assert (body.hex(), sig.hex()) == (v["body"], v["signature"])
    assert hexed(unpack(body)) == v["fields"]


def test_epoch_record_and_the_first_block_of_the_new_epoch() -> None:
    pub = bytes.fromhex(V["device"]["public"])
    e = V["epoch_record"]
    record = open_envelope(bytes.fromhex(e["wire"]), "EPOCH", pub)
    assert hexed(record) == e["fields"] and unpack(bytes.fromhex(e["wire"]))[0].hex() == e["body"]
    _, _, new_epoch, prev_epoch, last_height, last_hash, _ = record
    assert new_epoch > prev_epoch and last_hash.hex() == V["chain"]["header_hashes"][last_height]
    h, hh, fields = check_block(bytes.fromhex(e["first_block_wire"]), pub)
    assert hh.hex() == e["first_header_hash"]
    # PROTOCOL.md 6.4: across an epoch record, height + 1, prev_hash = last_hash, the history
    # root over heights 0..last_height, and sequence numbers continuing.
    assert (h[2], h[3], h[4]) == (new_epoch, last_height + 1, last_hash)
    hashes = [bytes.fromhex(x) for x in V["chain"]["header_hashes"][: last_height + 1]]
    assert h[5] == mth(hashes)
    assert fields[0][3] > V["chain"]["reading_fields"][last_height - 1][3]


def test_storage_receipt_and_audit_answer() -> None:
    r = V["storage_receipt"]
    pub = ed_public(seed(r["holder_seed_label"]))
    assert pub.hex() == r["holder_public"] and device_id(pub) == r["holder_id"]
    fields = open_envelope(bytes.fromhex(r["wire"]), "STORAGE_RECEIPT", pub)
    assert hexed(fields) == r["fields"]
    block = bytes.fromhex(V["block0"]["block_wire"])
    assert fields[2] == V["device"]["device_id"] and fields[5].hex() == V["block0"]["header_hash"]
    assert fields[6] == len(block)
    a = V["audit"]
    assert sha(dom("AUDIT") + bytes.fromhex(a["nonce"]) + block).hex() == a["answer"]


def test_placement_draws_scores_and_choice() -> None:
    import math

    p = V["placement"]
    block_hash = bytes.fromhex(p["block_hash"])
    scores = {}
    for h in p["holders"]:
        x = int.from_bytes(sha(dom("PLACEMENT") + block_hash + h["holder_id"].encode())[:8]) >> 12
        u = (x + 0.5) / 2**52
        score = -h["weight"] / math.log(u)
        assert (x, u.hex(), score.hex()) == (h["x"], h["u"], h["score"])
        scores[h["holder_id"]] = score
    ranking = sorted(scores, key=lambda i: (-scores[i], i))
    assert ranking == p["ranking"]
    sites = {h["holder_id"]: h["site"] for h in p["holders"]}

    def choose(used: set[str]) -> list[str]:
        picked: list[str] = []
        for i in ranking:
            if len(picked) < 2 and sites[i] not in used:
                picked.append(i)
                used.add(sites[i])
        return picked + [i for i in ranking if i not in picked][: 2 - len(picked)]

    assert choose(set()) == p["choose_2"]
    assert choose({"site-b"}) == p["choose_2_site_b_used"]


def test_private_reading_with_its_derived_ephemeral_key_and_its_grant() -> None:
    from nacl import bindings
    from nacl.public import PrivateKey, SealedBox

    pr = V["private_reading"]
    pub = bytes.fromhex(V["device"]["public"])
    owner_secret = seed(pr["owner_secret_label"])
    owner = x25519_public(owner_secret)
    assert owner.hex() == pr["owner_public"]
    content = unpack(bytes.fromhex(pr["content"]))
    assert content == pr["plain_fields"][5:]
    # The ephemeral secret (docs/PRIVATE.md): keyed BLAKE2b-256 under the device seed.
    position = pr["plain_fields"][2].to_bytes(8, "big") + pr["plain_fields"][3].to_bytes(8, "big")
    msg = dom("SEAL_EPHEMERAL") + owner + position + sha(bytes.fromhex(pr["content"]))
    key = bytes.fromhex(V["device"]["seed"])
    esk = hashlib.blake2b(msg, key=key, digest_size=32).digest()
    assert esk.hex() == pr["ephemeral_secret"] and x25519_public(esk).hex() == pr["epk"]
    epk = bytes.fromhex(pr["epk"])
    k = bindings.crypto_box_beforenm(owner, esk)
    assert k == bindings.crypto_box_beforenm(epk, owner_secret) and k.hex() == pr["k"]
    nonce = hashlib.blake2b(epk + owner, digest_size=24).digest()
    ct = bindings.crypto_box_afternm(bytes.fromhex(pr["content"]), nonce, k)
    assert (nonce.hex(), ct.hex()) == (pr["nonce"], pr["ct"])
    fields = open_envelope(bytes.fromhex(pr["wire"]), "READING", pub)
    assert fields == [2, *pr["plain_fields"][1:5], epk, ct]
    g = V["grant"]
    grantee_secret = seed(g["grantee_secret_label"])
    assert x25519_public(grantee_secret).hex() == g["grantee_public"]
    magic, grantee, g_epk, g_ct = unpack(bytes.fromhex(g["file"]))
    assert (magic, grantee.hex()) == ("edgefleet-grant/1", g["grantee_public"])
    assert g_epk == x25519_public(seed(g["ephemeral_secret_label"]))
    plain = SealedBox(PrivateKey(grantee_secret)).decrypt(g_epk + g_ct)
    assert plain.hex() == g["content"]
    assert unpack(plain) == [1, owner, fields[1], fields[4], fields[4], [[0, 100, k]]]


@pytest.mark.parametrize("role", ["device", "owner"])
def test_key_files_open_with_the_passphrase(role: str) -> None:
    from nacl.pwhash import argon2id
    from nacl.secret import SecretBox

    kf = V["key_files"]
    doc = json.loads(kf[role])
    assert (doc["format"], doc["role"], doc["kdf"]) == ("edgefleet-key/1", role, "argon2id")
    salt = bytes.fromhex(doc["salt"])
    assert salt == seed(kf["salt_label"])[:16]
    file_key = argon2id.kdf(
        32, kf["passphrase"].encode(), salt, opslimit=doc["opslimit"], memlimit=doc["memlimit"]
    )
    box = bytes.fromhex(doc["box"])
    assert box[:24] == seed(kf["nonce_label"])[:24]
    secret = SecretBox(file_key).decrypt(box)
    if role == "device":
        assert secret.hex() == V["device"]["seed"] and doc["public"] == V["device"]["public"]
    else:
        assert secret == seed("owner secret") and doc["public"] == x25519_public(secret).hex()


def test_bundle_digest_layout_and_verification() -> None:
    from ledger.bundle import verify_bundle

    b = V["bundle"]
    data = bytes.fromhex(b["bytes"])
    top = unpack(data)
    assert top[:5] == [
        "edgefleet-bundle",
        1,
        b["subject"],
        b["created_ms"],
        bytes.fromhex(V["authority"]["public"]),
    ]
    assert data[-34:-32] == b"\xc4\x20"
    assert sha(dom("BUNDLE_DIGEST") + data[:-34]) == data[-32:] == top[6]
    device = unpack(top[5][0])
    assert device[0].hex() == V["certificate"]["wire"]
    assert device[3].hex() == V["chain"]["header_wires"][4]
    verified = verify_bundle(data)
    assert [(r.height, r.index) for r in verified.readings] == [(0, 1)]
    assert verified.readings[0].reading.wire.hex() == V["reading"]["wire"]


# --- the limits docs/PROTOCOL.md states, measured on the code's largest structures -------------

MAX_U63 = (1 << 63) - 1
EMOJI = "\U0001f600"  # 4 bytes in UTF-8


def test_reading_limits_count_bytes_and_the_largest_body_fits() -> None:
    from ledger.errors import UsageError
    from ledger.identity import SigningKey
    from ledger.reading import Reading, decode_reading, sign_reading

    key = SigningKey(seed("device"))
    dev = key.public.device_id
    largest = [
        Reading(dev, (1 << 32) - 1, MAX_U63, MAX_U63, "a" * 32, -(1 << 63), tag, text)
        for tag, text in (("t" * 96, "x" * 64), (EMOJI * 24, EMOJI * 16))
    ]
    for r in largest:
        sr = sign_reading(r, key)
        assert (len(sr.body), len(sr.wire)) == (259, 329)
        assert decode_reading(sr.wire).reading == r
    with pytest.raises(UsageError, match="100 UTF-8 bytes exceeds 96"):
        Reading(dev, 0, 0, 0, "a", 0, EMOJI * 25)
    with pytest.raises(UsageError, match="68 UTF-8 bytes exceeds 64"):
        Reading(dev, 0, 0, 0, "a", 0, None, EMOJI * 17)
    doc = generate.DOC_PATH.read_text()
    assert "the largest body is 259 bytes" in doc and "its envelope 329 bytes" in doc


def test_credential_sizes_stated_in_section_9() -> None:
    from ledger.certs import countersign_rotation, issue_certificate, sign_revocation, sign_rotation
    from ledger.identity import SigningKey

    root, dev, new = (SigningKey(seed(x)) for x in ("authority", "device", "device rotated"))
    cert = issue_certificate(
        root,
        dev.public,
        kind="k" * 64,
        model="m" * 64,
        site="s" * 64,
        owner_x25519=bytes(32),
        not_before_ms=MAX_U63,
        not_after_ms=MAX_U63,
        serial=MAX_U63,
    )
    rot = countersign_rotation(
        sign_rotation(dev.public.device_id, dev, new.public, MAX_U63, MAX_U63, root.key_id), root
    )
    rev = sign_revocation(root, dev.public.device_id, dev.key_id, MAX_U63, EMOJI * 16, MAX_U63)
    sizes = {
        "certificate": (len(cert.body()), len(cert.wire)),
        "rotation": (len(unpack(rot)[0]), len(rot)),
        "revocation": (len(unpack(rev)[0]), len(rev)),
    }
    assert sizes == {"certificate": (332, 402), "rotation": (101, 236), "revocation": (133, 202)}
    doc = " ".join(generate.DOC_PATH.read_text().split())
    for phrase in (
        "a 332-byte body and a 402-byte envelope",
        "the largest the field rules allow is 236). Body: array of 7, at most 256 bytes "
        "(largest: 101)",
        "the largest the field rules allow is 202). Body: array of 7, at most 256 bytes "
        "(largest: 133)",
    ):
        assert phrase in doc, phrase


def test_gossip_messages_carry_the_structures_as_section_12_lays_them_out() -> None:
    g = V["gossip"]
    dev, peer = V["device"]["device_id"], V["storage_receipt"]["holder_id"]
    wires = V["chain"]["header_wires"]
    cert, rot, rev = (
        bytes.fromhex(V[x]["wire"]) for x in ("certificate", "rotation", "revocation")
    )
    expected: dict[str, list[Any]] = {
        "announce": [2, 1, dev, [bytes.fromhex(wires[0])]],
        "summary": [2, 2, peer, 1, [[dev, 0, 2, bytes.fromhex(V["chain"]["header_hashes"][2])]]],
        "request": [2, 3, peer, 7, dev, 2, 4, 3],
        "response": [
            2,
            4,
            dev,
            7,
            dev,
            [cert],
            [rot],
            [rev],
            [bytes.fromhex(w) for w in wires[2:]],
            [bytes.fromhex(b) for b in V["chain"]["block_wires"][1:]],
        ],
        "evidence": [2, 5, peer, bytes.fromhex(V["fork_evidence"]["wire"])],
        "certs": [2, 6, peer, [cert], [rot], [rev]],
        "epochs": [2, 7, dev, [bytes.fromhex(V["epoch_record"]["wire"])]],
        "witness": [2, 8, dev, 9, V["witness_exchange"]["request"].encode()],
        "cosigned": [2, 9, peer, 9, 200, V["witness_exchange"]["cosignature"].encode()],
    }
    limits = {"announce": 8192, "summary": 98_304, "request": 128, "response": (1 << 20) - 74}
    limits |= {"evidence": 4160, "certs": 65_536, "epochs": 4096, "witness": 4160}
    limits |= {"cosigned": 576}
    for name, fields in expected.items():
        data = bytes.fromhex(g[name])
        assert unpack(data) == fields, name
        # 9N 02 TT ba: fixarray of the field count, version, type, then the 26-byte sender.
        assert data[:4] == bytes([0x90 + len(fields), 2, fields[1], 0xBA]), name
        assert len(data) <= limits[name], name


MESSAGE = b"edgefleet/v2/message\x00"
REPLICATION_TYPES = {
    "store": 32,
    "receipt": 33,
    "refuse": 34,
    "challenge": 35,
    "proof": 36,
    "release": 37,
    "space": 38,
    "busy": 39,
}


def open_sealed(data: bytes, keys: dict[str, bytes]) -> tuple[str, bytes, list[Any]]:
    """Section 12.1.5, read from the document alone: the sealed message is the body with one
    more field, ``bin(72) = key_id || Ed25519(MESSAGE || body)``, the body being the same
    array without it (its fixarray byte one lower). Returns (sender, body, body fields)."""
    fields = unpack(data)
    *body_fields, authenticator = fields
    assert isinstance(authenticator, bytes) and len(authenticator) == 72
    assert data[-74:-72] == b"\xc4\x48"
    body = bytes([data[0] - 1]) + data[1:-74]
    assert unpack(body) == body_fields
    sender = body_fields[2]
    assert data[4:30] == sender.encode()
    pub = keys[sender]
    assert authenticator[:8] == sha(dom("KEY_ID") + pub)[:8]
    ed_verify(pub, authenticator[8:], MESSAGE + body)
    return sender, body, body_fields


def _vector_keys() -> dict[str, bytes]:
    return {
        V["device"]["device_id"]: bytes.fromhex(V["device"]["public"]),
        V["storage_receipt"]["holder_id"]: bytes.fromhex(V["storage_receipt"]["holder_public"]),
    }


def test_sealed_messages_of_every_type_verify_under_their_senders_keys() -> None:
    sealed = V["sealed"]
    assert bytes.fromhex(sealed["domain"]) == MESSAGE
    keys = _vector_keys()
    for name, data_hex in sealed["gossip"].items():
        _, body, fields = open_sealed(bytes.fromhex(data_hex), keys)
        assert body == bytes.fromhex(V["gossip"][name]), name  # the body is the 12.1 vector
        assert fields[0] == 2
    assert set(sealed["replication"]) == set(REPLICATION_TYPES)
    dev, holder = V["device"]["device_id"], V["storage_receipt"]["holder_id"]
    for name, data_hex in sealed["replication"].items():
        sender, _, fields = open_sealed(bytes.fromhex(data_hex), keys)
        assert fields[:2] == [2, REPLICATION_TYPES[name]], name
        owner_side = name in ("store", "challenge", "release")
        assert sender == (dev if owner_side else holder), name
    own = bytes.fromhex(sealed["announce_own"])
    body = bytes.fromhex(V["gossip"]["announce"])
    assert own == bytes([body[0] + 1]) + body[1:] + b"\xc4\x00"  # an empty authenticator
    fields = unpack(own)
    headers = [unpack(unpack(h)[0]) for h in fields[3]]
    assert fields[4] == b"" and all(h[1] == fields[2] for h in headers)  # only its own headers
    store = unpack(bytes.fromhex(sealed["replication"]["store"]))
    assert store[4] == bytes.fromhex(V["block0"]["block_wire"]) and store[5] is None
    receipt = unpack(bytes.fromhex(sealed["replication"]["receipt"]))
    assert receipt[4] == bytes.fromhex(V["storage_receipt"]["wire"])
    proof = unpack(bytes.fromhex(sealed["replication"]["proof"]))
    assert proof[4] == bytes.fromhex(V["audit"]["answer"])


@pytest.mark.parametrize("name", ["request", "announce", "epochs"])
def test_a_flipped_bit_anywhere_in_a_sealed_message_fails_the_independent_check(
    name: str,
) -> None:
    data = bytes.fromhex(V["sealed"]["gossip"][name])
    keys = _vector_keys()
    for bit in range(0, len(data) * 8, 7):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            open_sealed(bytes(flipped), keys)
        except Exception:  # refused, whichever check caught it
            continue
        pytest.fail(f"{name} with bit {bit} flipped still verifies")


def _consistent(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2, written from the RFC (0 < old <= new)."""
    if old == new:
        return not proof and old_root == new_root
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        proof = [old_root, *proof]
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    if not proof:
        return False
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = sha(b"\x01" + c + fr)
            sr = sha(b"\x01" + c + sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = sha(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


def test_the_witness_exchange_is_a_c2sp_add_checkpoint_and_its_cosignature() -> None:
    """Section 12.9 from the document and the C2SP texts: the WITNESS body is a tlog-witness
    add-checkpoint request (old size, consistency proof, the device's signed checkpoint), the
    COSIGNED body the holder's cosignature/v1 line."""
    x, g = V["witness_exchange"], V["gossip"]
    dev, peer = V["device"]["device_id"], V["storage_receipt"]["holder_id"]
    request, line = x["request"].encode(), x["cosignature"].encode()
    assert unpack(bytes.fromhex(g["witness"])) == [2, 8, dev, 9, request]
    assert unpack(bytes.fromhex(g["cosigned"])) == [2, 9, peer, 9, 200, line]
    # The origin: edgefleet/<fleet root key id>/<device id>/epoch/0.
    origin = f"edgefleet/{V['authority']['key_id']}/{dev}/epoch/0"
    hashes = [bytes.fromhex(h) for h in V["chain"]["header_hashes"]]
    root = mth(hashes)
    text = f"{origin}\n{len(hashes)}\n{base64.b64encode(root).decode()}\n"
    assert x["checkpoint"] == text
    head, _, note = x["request"].partition("\n\n")
    lines = head.split("\n")
    assert lines[0] == "old 3"
    proof = [base64.b64decode(h) for h in lines[1:]]
    assert [p.hex() for p in proof] == x["consistency_proof"]
    assert _consistent(3, 5, mth(hashes[:3]), root, proof)
    assert not _consistent(3, 5, mth([*hashes[:2], sha(b"x")]), root, proof)
    # The note: the checkpoint text, an empty line, the device's Ed25519 note signature.
    assert note.startswith(text + "\n— " + origin + " ")
    raw = base64.b64decode(note[len(text) + 1 :].split(" ", 2)[2])
    pub = bytes.fromhex(V["device"]["public"])
    assert raw[:4] == sha(origin.encode() + b"\n\x01" + pub)[:4]
    ed_verify(pub, raw[4:], text.encode())
    # The cosignature: key ID over type 04, timestamp, Ed25519 over the cosignature/v1 message.
    name = f"edgefleet/{V['authority']['key_id']}/{peer}/witness"
    assert x["witness_name"] == name and x["cosignature"].startswith(f"— {name} ")
    sig = base64.b64decode(x["cosignature"].split(" ", 2)[2])
    holder = bytes.fromhex(V["storage_receipt"]["holder_public"])
    assert sig[:4] == sha(name.encode() + b"\n\x04" + holder)[:4]
    assert sig[:4].hex() == x["witness_key_id"]
    ts = int.from_bytes(sig[4:12], "big")
    assert ts == x["timestamp"]
    ed_verify(holder, sig[12:], f"cosignature/v1\ntime {ts}\n".encode() + text.encode())


def test_the_heads_log_is_a_plain_c2sp_log_signed_by_the_fleet_root() -> None:
    """Section 16.7: entries are header wires, leaves SHA-256(00 || wire), the origin
    <fleet>/heads, the note signed by the fleet root under that name."""
    x = V["heads_log"]
    origin = f"edgefleet/{V['authority']['key_id']}/heads"
    assert x["origin"] == origin
    entries = [bytes.fromhex(e) for e in x["entries"]]
    assert entries == [bytes.fromhex(V["chain"]["header_wires"][h]) for h in (2, 4)]
    leaves = [sha(b"\x00" + e) for e in entries]
    text = f"{origin}\n2\n{base64.b64encode(mth(leaves)).decode()}\n"
    assert x["note"].startswith(text + "\n— " + origin + " ")
    raw = base64.b64decode(x["note"][len(text) + 1 :].split(" ", 2)[2])
    root = bytes.fromhex(V["authority"]["public"])
    assert raw[:4] == sha(origin.encode() + b"\n\x01" + root)[:4]
    ed_verify(root, raw[4:], text.encode())
    vkey_name, vkey_id, vkey_key = x["vkey"].split("+", 2)
    assert (vkey_name, vkey_id) == (origin, raw[:4].hex())
    assert base64.b64decode(vkey_key) == b"\x01" + root
    # The add-checkpoint request from size 1: old 1, the consistency proof (leaf 1), the note.
    assert x["request_from_1"] == (f"old 1\n{base64.b64encode(leaves[1]).decode()}\n\n" + x["note"])
    assert _consistent(1, 2, leaves[0], mth(leaves), [leaves[1]])
