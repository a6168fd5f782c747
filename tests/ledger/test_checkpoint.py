"""C2SP checkpoints: the spec's and sum.golang.org's published checkpoints, strict parsing with
named mutations, and the checkpoint of a real store's history tree, per device and epoch."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.chain import ChainWriter
from ledger.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    checkpoint_for,
    checkpoint_of_hashes,
    device_origin,
    device_verifier,
    fleet_label,
    open_checkpoint,
    parse_checkpoint,
    parse_device_origin,
    verify_checkpoint_consistency,
)
from ledger.errors import DecodeError, ProofError, SignatureError, UsageError, VerificationError
from ledger.identity import SigningKey
from ledger.merkle import EMPTY_ROOT, consistency_proof
from ledger.note import Ed25519Verifier, open_note, parse_note
from ledger.store import Store

# c2sp.org/tlog-checkpoint: the example's note text.
SPEC_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"

# transparency-dev/formats log/note_test.go: a checkpoint published by sum.golang.org, and its key.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n6476701\nmb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n\n"
    "— sum.golang.org Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95949rj4nPRYfvimWEP"
    "WL+o3GeoWwOoAw=\n"
).encode()


def test_spec_example_text_parses_and_re_encodes() -> None:
    cp = parse_checkpoint(SPEC_TEXT)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == () and cp.text() == SPEC_TEXT


def test_sumdb_checkpoint_verifies_under_its_published_key() -> None:
    log = Ed25519Verifier.from_vkey(SUMDB_VKEY)
    cp, _ = open_checkpoint(SUMDB_NOTE, log, origin="go.sum database tree")
    assert (cp.origin, cp.size) == ("go.sum database tree", 6476701)
    # Our own logs name their key after the origin; sum.golang.org does not, so by default the
    # origin check refuses it (formats' ParseCheckpoint checks the origin the same way).
    with pytest.raises(VerificationError, match="origin"):
        open_checkpoint(SUMDB_NOTE, log)
    with pytest.raises(SignatureError):
        open_checkpoint(
            SUMDB_NOTE.replace(b"6476701", b"6476702"), log, origin="go.sum database tree"
        )


def test_extension_lines_round_trip() -> None:
    cp = parse_checkpoint(SPEC_TEXT + "ext one\nanother\n")
    assert cp.extensions == ("ext one", "another")
    assert cp.text() == SPEC_TEXT + "ext one\nanother\n"


ROOT = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
TEXT_MUTATIONS = [
    ("empty-origin", f"\n1\n{ROOT}\n"),
    ("two-lines", "origin\n1\n"),
    ("missing-final-newline", f"origin\n1\n{ROOT}"),
    ("leading-zero-size", f"origin\n01\n{ROOT}\n"),
    ("negative-size", f"origin\n-1\n{ROOT}\n"),
    ("plus-size", f"origin\n+1\n{ROOT}\n"),
    ("size-2^63", f"origin\n{1 << 63}\n{ROOT}\n"),
    ("size-with-space", f"origin\n1 \n{ROOT}\n"),
    ("hex-size", f"origin\n0x10\n{ROOT}\n"),
    ("root-not-base64", "origin\n1\nThisIsn'tBase64\n"),
    ("root-31-bytes", f"origin\n1\n{base64.b64encode(bytes(31)).decode()}\n"),
    ("root-33-bytes", f"origin\n1\n{base64.b64encode(bytes(33)).decode()}\n"),
    ("root-unpadded", f"origin\n1\n{ROOT.rstrip('=')}\n"),
    ("empty-tree-wrong-root", f"origin\n0\n{ROOT}\n"),
    ("empty-extension-line", f"origin\n1\n{ROOT}\n\n"),
    ("extension-with-tab", f"origin\n1\n{ROOT}\na\tb\n"),
    ("too-many-extensions", f"origin\n1\n{ROOT}\n" + "x\n" * 17),
    ("origin-too-long", f"{'o' * 256}\n1\n{ROOT}\n"),
]


@pytest.mark.parametrize("text", [m[1] for m in TEXT_MUTATIONS], ids=[m[0] for m in TEXT_MUTATIONS])
def test_text_mutation_is_refused(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_checkpoint(text)


def test_empty_tree_and_largest_size() -> None:
    empty = f"origin\n0\n{base64.b64encode(EMPTY_ROOT).decode()}\n"
    assert parse_checkpoint(empty).size == 0
    assert parse_checkpoint(f"origin\n{MAX_TREE_SIZE}\n{ROOT}\n").size == MAX_TREE_SIZE


@settings(max_examples=200, deadline=None)
@given(
    origin=st.text(
        alphabet=st.characters(
            min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=("Cs",)
        ),
        min_size=1,
        max_size=60,
    ),
    size=st.integers(1, MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    ext=st.lists(st.text(alphabet="abc xyz=/+0129", min_size=1, max_size=20), max_size=4),
)
def test_round_trip(origin: str, size: int, root: bytes, ext: list[str]) -> None:
    cp = Checkpoint(origin, size, root, tuple(ext))
    assert parse_checkpoint(cp.text()) == cp


# --- edgefleet's device logs ------------------------------------------------------------------


def test_origin_names_fleet_device_and_epoch(authority: SigningKey, device_key: SigningKey) -> None:
    fleet = fleet_label(authority.public)
    assert fleet == "edgefleet/" + authority.key_id.hex()
    device = device_key.public.device_id
    origin = device_origin(fleet, device, 3)
    assert origin == f"{fleet}/{device}/epoch/3"
    log = parse_device_origin(origin)
    assert (log.fleet, log.device_id, log.epoch) == (fleet, device, 3)
    for bad in ("example.com/x", f"{fleet}/{device}/epoch/03", f"{fleet}/{device}/3"):
        with pytest.raises(DecodeError):
            parse_device_origin(bad)
    with pytest.raises(UsageError):
        device_origin("not a fleet", device, 0)
    # A new epoch is a new log: another origin, so another key name and key ID for one key.
    v0 = device_verifier(device_origin(fleet, device, 0), device_key.public)
    v1 = device_verifier(device_origin(fleet, device, 1), device_key.public)
    assert v0.key_id != v1.key_id


def test_checkpoint_for_a_store_commits_to_its_history(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    note = checkpoint_for(chain_store, fleet, device_key)
    head = chain_store.head()
    assert head is not None
    origin = device_origin(fleet, head.header.device_id, head.header.epoch)
    cp, _ = open_checkpoint(note.encode(), device_verifier(origin, device_key.public))
    hashes = chain_store.own_header_hashes()
    assert cp.size == len(hashes) == head.header.height + 1
    assert cp == checkpoint_of_hashes(origin, hashes)
    # The root of size n is the history_root the header at height n signs.
    writer = ChainWriter(chain_store, device_key, device_key.public.device_id)
    writer.record(2_000_000_000_000, "temp_mc", 1, None)
    writer.seal()
    new_head = chain_store.head()
    assert new_head is not None and new_head.header.history_root == cp.root_hash
    # And the next checkpoint is consistent with this one.
    new_cp = parse_checkpoint(checkpoint_for(chain_store, fleet, device_key).text)
    hashes = chain_store.own_header_hashes()
    verify_checkpoint_consistency(cp, new_cp, consistency_proof(hashes, cp.size, new_cp.size))
    with pytest.raises(ProofError):
        verify_checkpoint_consistency(cp, new_cp, [bytes(32)])
    other = Checkpoint(
        device_origin(fleet, head.header.device_id, 9), new_cp.size, new_cp.root_hash
    )
    with pytest.raises(ProofError, match="origin"):
        verify_checkpoint_consistency(cp, other, [])


def test_checkpoint_for_refuses_empty_chains_and_wrong_keys(
    tmp_path: Path, chain_store: Store, authority: SigningKey, other_device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    with pytest.raises(UsageError, match="key in force"):
        checkpoint_for(chain_store, fleet, other_device_key)
    with Store(tmp_path / "empty.db") as empty, pytest.raises(UsageError, match="empty"):
        checkpoint_for(empty, fleet, other_device_key)


def test_device_checkpoint_is_signed_under_its_origin(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    # The note parses back to itself and its only line is the device's, under the origin's name.
    note = checkpoint_for(chain_store, fleet_label(authority.public), device_key)
    assert parse_note(note.encode()) == note
    (sig,) = note.signatures
    assert sig.name == note.text.split("\n", 1)[0]
    opened = open_note(note.encode(), [device_verifier(sig.name, device_key.public)])
    assert opened.verified == (sig,)
