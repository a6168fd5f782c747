"""Run under an interpreter that has aics-tlog (PyPI; Python >= 3.12), not ours: it checks the
C2SP artifacts test_c2sp_outside.py made with an implementation this project did not write.

Reads a JSON list of checks on stdin, prints a JSON list of booleans (one per check) on stdout.
Imports nothing of edgefleet's: only aics_tlog and the standard library.
"""

from __future__ import annotations

import base64
import json
import sys

import aics_tlog


def _check(c: dict) -> bool:
    kind = c["kind"]
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
