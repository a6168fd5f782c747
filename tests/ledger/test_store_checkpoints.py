"""ledger/store/checkpoints.py: the witness state survives a reopen and never moves back; own
checkpoint notes are replaced by the same text with more cosignatures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ledger.errors import IntegrityError
from ledger.store import Store

ORIGIN = "edgefleet/0123456789abcdef/efaaaaaaaaaaaaaaaaaaaaaaaa/epoch/0"


def root(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def test_witness_state_is_durable_and_only_moves_forward(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with Store(path) as s:
        assert s.witness_states() == []
        s.put_witness_state(ORIGIN, 3, root("3"))
        s.put_witness_state(ORIGIN, 3, root("3"))  # the same again: harmless
        s.put_witness_state(ORIGIN, 5, root("5"))
    with Store(path) as s:
        assert s.witness_states() == [(ORIGIN, 5, root("5"))]
        with pytest.raises(IntegrityError, match="held size 5, refusing size 4"):
            s.put_witness_state(ORIGIN, 4, root("4"))
        with pytest.raises(IntegrityError, match="with another root"):
            s.put_witness_state(ORIGIN, 5, root("fork"))
        assert s.witness_states() == [(ORIGIN, 5, root("5"))]


def test_own_checkpoint_notes_are_kept_per_origin_and_size(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite") as s:
        s.put_checkpoint(ORIGIN, 3, b"note 3")
        s.put_checkpoint(ORIGIN, 3, b"note 3 cosigned")
        s.put_checkpoint(ORIGIN, 5, b"note 5")
        other = ORIGIN.replace("epoch/0", "epoch/1")
        s.put_checkpoint(other, 1, b"note e1")
        assert s.checkpoint_notes(ORIGIN) == [
            (ORIGIN, 3, b"note 3 cosigned"),
            (ORIGIN, 5, b"note 5"),
        ]
        assert [n for _, _, n in s.checkpoint_notes()] == [
            b"note 3 cosigned",
            b"note 5",
            b"note e1",
        ]
