"""The store's rows become the replication core's start-up inputs by field name
(agent/device/replicator.py, runtime.py): the two sides must keep the same names."""

from __future__ import annotations

import dataclasses

from agent.replication import inputs as RI
from ledger.store import OwnBlockRow, ReplicaRow


def test_store_rows_and_replication_inputs_share_their_field_names() -> None:
    assert OwnBlockRow._fields == tuple(f.name for f in dataclasses.fields(RI.OwnBlockInfo))
    assert ReplicaRow._fields == tuple(f.name for f in dataclasses.fields(RI.ReplicaInfo))
    row = ReplicaRow("a" * 26, 3, 1, b"h" * 32, 120, True)
    assert RI.ReplicaInfo(**row._asdict()) == RI.ReplicaInfo("a" * 26, 3, 1, b"h" * 32, 120, True)
