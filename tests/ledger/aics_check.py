"""Run under an interpreter that has aics-tlog and aics-witness (PyPI; Python >= 3.12), not
ours: it checks the C2SP artifacts test_c2sp_outside.py made with implementations this project
did not write, and has aics-witness answer our add-checkpoint requests.

Reads a JSON list of checks on stdin, prints a JSON list of results (one per check) on stdout:
a boolean, or for a ``witness`` check the list of its answers (a cosignature line, or the HTTP
status of a refusal). Imports nothing of edgefleet's.
"""

from __future__ import annotations

import base64
import itertools
import json
import sys
import tempfile
from pathlib import Path

import aics_tlog


def _witness(c: dict) -> list[object]:
    import aics_witness
    from aics_witness.store import parse_seed_hex

    answers: list[object] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = aics_witness.WitnessStore(Path(tmp) / "w.db", create=True)
        log = aics_witness.LogConfig(c["origin"], (aics_tlog.parse_vkey(c["log"]),))
        clock = itertools.count(c["time"])  # one second later at every reading
        w = aics_witness.Witness(
            c["name"], parse_seed_hex(c["seed"]), store, [log], clock=lambda: next(clock)
        )
        for body in c["bodies"]:
            try:
                answers.append(w.add_checkpoint(body.encode()).decode())
            except aics_witness.WitnessError as e:
                answers.append(e.status)
        store.close()
    return answers


def _check(c: dict) -> object:
    kind = c["kind"]
    if kind == "witness":
        return _witness(c)
    try:
        if kind == "note":
            note = aics_tlog.parse_note(c["note"])
            return aics_tlog.verify_note(note, [aics_tlog.parse_vkey(k) for k in c["vkeys"]])
        if kind == "checkpoint":
            note = aics_tlog.parse_note(c["note"])
            result = aics_tlog.verify_checkpoint(
                note,
                aics_tlog.parse_vkey(c["log"]),
                [aics_tlog.parse_vkey(k) for k in c["witnesses"]],
                c["quorum"],
                expected_origin=c["origin"],
            )
            return bool(result.ok)
        if kind == "tlog-proof":
            # c2sp.org/tlog-proof layout: header, [extra], index, hashes, empty line, checkpoint.
            head, _, note_text = c["proof"].partition("\n\n")
            lines = head.split("\n")
            if lines[0] != "c2sp.org/tlog-proof@v1":
                return False
            rest = lines[2:] if lines[1].startswith("extra ") else lines[1:]
            index = int(rest[0].removeprefix("index "))
            hashes = [base64.b64decode(h) for h in rest[1:]]
            cp, note = aics_tlog.checkpoint.checkpoint_from_note(note_text)
            ok = aics_tlog.verify_checkpoint(
                note, aics_tlog.parse_vkey(c["log"]), [], 0, expected_origin=c["origin"]
            ).ok
            leaf = base64.b64decode(c["leaf_hash"])
            return bool(ok) and aics_tlog.verify_inclusion(leaf, index, cp.size, hashes, cp.root)
        if kind == "consistency":
            old = aics_tlog.parse_checkpoint(c["old"])
            new = aics_tlog.parse_checkpoint(c["new"])
            proof = [base64.b64decode(h) for h in c["proof"]]
            return aics_tlog.verify_consistency(old.size, new.size, old.root, new.root, proof)
    except ValueError:
        return False
    raise SystemExit(f"unknown check {kind!r}")


if __name__ == "__main__":
    print(json.dumps([_check(c) for c in json.load(sys.stdin)]))
