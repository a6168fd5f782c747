"""Implementations this project did not write accept our C2SP artifacts and speak our witness
protocol: aics-tlog and aics-witness (PyPI).

Both need Python >= 3.12 and our environment is 3.11, so they cannot join the dev group: the tests
run ``aics_check.py`` under the interpreter named by ``EDGEFLEET_AICS_PYTHON`` (or the first
``python3.12``/``python3.13`` on PATH that imports both) and are skipped when there is none. Set
one up with ``python3.12 -m venv V && V/bin/pip install aics-tlog aics-witness`` and
``EDGEFLEET_AICS_PYTHON=V/bin/python``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger.chain import ChainWriter
from ledger.checkpoint import (
    Checkpoint,
    checkpoint_for,
    device_origin,
    device_signer,
    device_verifier,
    fleet_label,
    parse_checkpoint,
)
from ledger.cosignature import Cosigner, verify_cosigned
from ledger.errors import LedgerError
from ledger.identity import SigningKey
from ledger.merkle import consistency_proof
from ledger.note import Note, Signature, parse_note, sign_note
from ledger.store import Store
from ledger.tlogproof import export_header_proof, export_reading_proof
from ledger.witness import AddCheckpoint, Witness, http_status
from tests.ledger import test_note, test_tlogproof

HELPER = Path(__file__).with_name("aics_check.py")


def _aics_python() -> str | None:
    named = os.environ.get("EDGEFLEET_AICS_PYTHON")
    candidates = [named] if named else [shutil.which(n) for n in ("python3.12", "python3.13")]
    for exe in candidates:
        if (
            exe
            and subprocess.run(
                [exe, "-c", "import aics_tlog, aics_witness"],
                capture_output=True,
                timeout=60,
                check=False,
            ).returncode
            == 0
        ):
            return exe
    return None


AICS = _aics_python()
if AICS is None and os.environ.get("EDGEFLEET_AICS_PYTHON"):  # named, so never skipped
    raise RuntimeError(
        f"EDGEFLEET_AICS_PYTHON={os.environ['EDGEFLEET_AICS_PYTHON']}: cannot import "
        "aics_tlog and aics_witness"
    )
pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(
        AICS is None, reason="no Python >= 3.12 with aics-tlog and aics-witness installed"
    ),
]


def _run(checks: list[dict[str, object]]) -> list[object]:
    assert AICS is not None
    out = subprocess.run(
        [AICS, str(HELPER)],
        input=json.dumps(checks),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: list[object] = json.loads(out.stdout)
    return result


def test_aics_tlog_accepts_our_notes_checkpoints_cosignatures_and_proofs(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    head = chain_store.head()
    assert head is not None
    origin = device_origin(fleet, head.header.device_id, head.header.epoch)
    log_vkey = device_verifier(origin, device_key.public).vkey()
    witness = Cosigner("witness.edgefleet.invalid/w9", SigningKey(bytes(range(32))))
    old_note = witness.cosign_note(checkpoint_for(chain_store, fleet, device_key), 1_700_000_123)
    proof = export_header_proof(chain_store, 1, old_note)
    reading_proof = export_reading_proof(chain_store, 1, 0, old_note)
    writer = ChainWriter(chain_store, device_key, device_key.public.device_id)
    writer.record(2_000_000_000_000, "temp_mc", 1, None)
    writer.seal()
    new_note = checkpoint_for(chain_store, fleet, device_key)
    old, new = parse_checkpoint(old_note.text), parse_checkpoint(new_note.text)
    cons = consistency_proof(chain_store.own_header_hashes(), old.size, new.size)
    log_sig, cosig = old_note.signatures
    flipped = Signature(
        cosig.name, cosig.key_id, cosig.data[:7] + bytes([cosig.data[7] ^ 1]) + cosig.data[8:]
    )
    tampered = Note(old_note.text, (log_sig, flipped)).encode().decode()  # timestamp off by one

    checks: list[dict[str, object]] = [
        {
            "kind": "note",
            "note": sign_note(test_note.TEXT, test_note.peter_signer()).encode().decode(),
            "vkeys": [test_note.PETER_VKEY],
        },
        {
            "kind": "checkpoint",
            "note": test_tlogproof.V_NOTE.decode(),
            "origin": test_tlogproof.V_ORIGIN,
            "log": test_tlogproof.V_DEVICE_VKEY,
            "witnesses": [test_tlogproof.V_WITNESS_VKEY],
            "quorum": 1,
        },
        {
            "kind": "checkpoint",
            "note": old_note.encode().decode(),
            "origin": origin,
            "log": log_vkey,
            "witnesses": [witness.verifier.vkey()],
            "quorum": 1,
        },
        {
            "kind": "tlog-proof",
            "proof": proof.decode(),
            "origin": origin,
            "log": log_vkey,
            "leaf_hash": base64.b64encode(chain_store.own_header_hashes()[1]).decode(),
        },
        {
            "kind": "consistency",
            "old": old.text(),
            "new": new.text(),
            "proof": [base64.b64encode(h).decode() for h in cons],
        },
        {
            "kind": "tlog-proof",
            "proof": reading_proof.decode(),
            "origin": origin,
            "log": log_vkey,
            "leaf_hash": base64.b64encode(chain_store.own_header_hashes()[1]).decode(),
        },
        # Controls: the same checks must fail on a tampered cosignature and a wrong leaf.
        {
            "kind": "checkpoint",
            "note": tampered,
            "origin": origin,
            "log": log_vkey,
            "witnesses": [witness.verifier.vkey()],
            "quorum": 1,
        },
        {
            "kind": "tlog-proof",
            "proof": proof.decode(),
            "origin": origin,
            "log": log_vkey,
            "leaf_hash": base64.b64encode(chain_store.own_header_hashes()[2]).decode(),
        },
    ]
    assert _run(checks) == [True, True, True, True, True, True, False, False]


def test_aics_witness_cosigns_our_requests_and_we_accept_its_cosignatures(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    device = device_key.public.device_id
    origin = device_origin(fleet, device, 0)
    log = device_verifier(origin, device_key.public)
    seed = bytes(range(1, 33))
    theirs = Cosigner("aics.witness.invalid/w", SigningKey(seed))  # the same key, to verify with
    first = checkpoint_for(chain_store, fleet, device_key)
    writer = ChainWriter(chain_store, device_key, device)
    writer.record(2_000_000_000_000, "temp_mc", 1, None)
    writer.seal()
    second = checkpoint_for(chain_store, fleet, device_key)
    hashes = chain_store.own_header_hashes()
    proof = tuple(consistency_proof(hashes, 3, 4))
    fork = sign_note(Checkpoint(origin, 4, bytes(32)).text(), device_signer(origin, device_key))
    stranger = device_origin(fleet, device, 7)
    requests = [
        AddCheckpoint(0, (), first),  # cosigned
        AddCheckpoint(3, proof, second),  # cosigned
        AddCheckpoint(3, proof, second),  # 409: it last cosigned size 4
        AddCheckpoint(4, (), fork),  # 422: same size, another root
        AddCheckpoint(
            0,
            (),
            sign_note(
                parse_checkpoint(first.text).text().replace(origin, stranger),
                device_signer(stranger, device_key),
            ),
        ),  # 404
    ]
    (answers,) = _run(
        [
            {
                "kind": "witness",
                "name": theirs.name,
                "seed": seed.hex(),
                "origin": origin,
                "log": log.vkey(),
                "time": 1_700_000_000,
                "bodies": [r.encode().decode() for r in requests],
            }
        ]
    )
    assert answers[2:] == [409, 422, 404]
    for req, line in zip(requests[:2], answers[:2], strict=True):
        note = parse_note((req.note.text + "\n" + req.note.signatures[0].line() + line).encode())
        cosigned = verify_cosigned(note, log, [theirs.verifier], 1)
        assert cosigned.cosigners[0][0] == theirs.name
    # Our witness core gives the same answers to the same requests.
    ours = Witness(theirs, {origin: log})
    got: list[object] = []
    for req in requests:
        try:
            got.append(ours.add_checkpoint(req, now=1_700_000_000).line())
        except LedgerError as exc:
            got.append(http_status(exc))
    assert got[2:] == [409, 422, 404] and all(isinstance(g, str) for g in got[:2])
