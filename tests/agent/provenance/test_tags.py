"""``tags --kind``: an item's kind is the one most of its devices agree on, deterministically.

It used to be the kind of the first device that saw the item, with ties at the same millisecond
broken by device id (random: derived from a fresh key), so the same data could list an item
under another kind in another enrollment.
"""

from __future__ import annotations

import json

import pytest

from agent.cli.main import main
from agent.provenance.evidence import DeviceInfo
from agent.provenance.gather import item_kind
from tests.agent.provenance.conftest import Run


def _devices(*rows: tuple[str, str, str]) -> dict[str, DeviceInfo]:
    return {d: DeviceInfo(d, name, kind, "site", "model", False) for d, name, kind in rows}


# Device ids sort the other way round from the names, as random ids may.
DEVICES = _devices(
    ("ez-fridge", "a-fridge", "refrigerator"),
    ("ey-washer", "b-washer", "washing_machine"),
    ("ex-washer", "c-washer", "washing_machine"),
    ("ew-fridge", "d-fridge", "refrigerator"),
)


@pytest.mark.parametrize(
    ("first_seen", "kind"),
    [
        # The kind most devices share wins, whoever saw the item first.
        ({"ez-fridge": 1, "ey-washer": 2, "ex-washer": 3}, "washing_machine"),
        # A tie: the kind of the device that saw it first.
        ({"ey-washer": 5, "ez-fridge": 7}, "washing_machine"),
        ({"ey-washer": 7, "ez-fridge": 5}, "refrigerator"),
        # A tie at the same millisecond: the first device by name, never by id.
        ({"ey-washer": 5, "ez-fridge": 5}, "refrigerator"),
        ({"ex-washer": 5, "ew-fridge": 5}, "washing_machine"),
        # Devices the data dir has no certificate for do not count.
        ({"unknown": 1, "ey-washer": 2}, "washing_machine"),
        ({"unknown": 1}, None),
    ],
)
def test_item_kind(first_seen: dict[str, int], kind: str | None) -> None:
    assert item_kind(first_seen, DEVICES) == kind
    assert item_kind(dict(reversed(first_seen.items())), DEVICES) == kind  # order-free


def test_tags_kind_of_the_blood_chain(blood: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tags", "--data", str(blood.data), "--json", "--kind", "blood"]) == 0
    rows = json.loads(capsys.readouterr().out)["tags"]
    assert rows and {r["kind"] for r in rows} == {"medical_freezer"}
    for kind in ("food", "garment"):
        assert main(["tags", "--data", str(blood.data), "--json", "--kind", kind]) == 0
        assert json.loads(capsys.readouterr().out)["tags"] == []
