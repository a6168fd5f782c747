"""EPCIS 2.0: every item of a simulated week becomes a document that validates against the GS1
JSON schema (/work/shared/reference/epcis), with the formats the schema names checked too."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.cli.main import main
from agent.provenance import epcis
from tests.agent.provenance.conftest import Run

REFERENCE = Path("/work/shared/reference/epcis")
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")  # RFC 3986: scheme ":" something


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads((REFERENCE / "EPCIS-JSON-Schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    checker = jsonschema.FormatChecker()
    checker.checks("uri")(lambda v: not isinstance(v, str) or bool(URI.match(v)))
    checker.checks("date-time")(lambda v: not isinstance(v, str) or _rfc3339(v))
    return cls(schema, format_checker=checker)


def _rfc3339(value: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return [f"{list(e.path)}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def test_the_validator_accepts_the_gs1_examples_and_refuses_a_broken_event(
    validator: jsonschema.protocols.Validator,
) -> None:
    for name in ("Example_9.6.1-ObjectEvent.jsonld", "SensorDataExample1.jsonld"):
        assert _errors(validator, json.loads((REFERENCE / name).read_text())) == []
    doc = json.loads((REFERENCE / "Example_9.6.1-ObjectEvent.jsonld").read_text())
    doc["epcisBody"]["eventList"][0]["eventTime"] = "yesterday"
    assert _errors(validator, doc) != []


def test_every_item_of_a_simulated_week_gives_a_valid_epcis_document(
    week: Run, validator: jsonschema.protocols.Validator
) -> None:
    kinds: set[str] = set()
    with week.session() as s:
        tags = [r.tag for r in s.tags()]
        assert len(tags) >= 20, tags
        for epc in tags:
            t = s.trace(epc)
            doc = epcis.document(t, created_ms=week.cfg.start_ms + 7 * 86_400_000)
            assert _errors(validator, doc) == [], epc
            events = doc["epcisBody"]["eventList"]
            item = [e for e in events if e["eventID"].startswith("urn:edgefleet:reading:")]
            assert len(item) == sum(1 for ev in t.timeline if ev.about_item)
            hashes = {e.leaf_hash.hex() for e in t.evidence}
            for e in events:
                assert e["epcList"] == [epc]
                for el in e.get("sensorElementList", []):
                    h = el["sensorMetadata"].get("edgefleet:leafHash")
                    assert h is None or h in hashes
                if "edgefleet:leafHash" in e:
                    assert e["edgefleet:leafHash"] in hashes
            kinds.add(t.product.name)
    assert kinds == {"plasma", "chilled-food", "garment"}


def test_the_mapping_of_a_blood_bags_journey(
    blood: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    epc = next(m.epc for m in blood.truth.movements if m.dst == "appliance:freezer-hospital")
    main(["trace", epc, "--data", str(blood.data), "--format", "epcis"])
    events = json.loads(capsys.readouterr().out)["epcisBody"]["eventList"]
    steps = [(e["bizStep"], e.get("disposition"), e["readPoint"]["id"]) for e in events]
    ids = {name: f"urn:edgefleet:device:{i}" for name, i in _ids(blood).items()}
    station, van, hospital = ids["freezer-station"], ids["freezer-van"], ids["freezer-hospital"]
    assert steps[:4] == [
        ("receiving", "in_progress", station),
        ("storing", "in_progress", station),
        ("departing", "in_transit", station),
        ("receiving", "in_progress", van),
    ]
    assert ("sensor_reporting", None, van) in steps  # the bag's excursion record
    assert ("receiving", "in_progress", hospital) in steps
    storing = [e for e in events if e["bizStep"] == "storing"]
    van_temps = [
        el["sensorReport"][0]
        for e in storing
        if e["readPoint"]["id"] == van
        for el in e["sensorElementList"]
    ]
    alarms = [r for r in van_temps if r.get("exception") == "ALARM_CONDITION"]
    assert alarms and all(r["value"] > -25.0 for r in alarms)
    assert all(r["uom"] == "CEL" for r in van_temps)
    assert events[0]["bizLocation"] == {"id": "urn:edgefleet:site:blood-station-north"}


def _ids(run: Run) -> dict[str, str]:
    return dict(json.loads((run.data / "fleet.json").read_text())["devices"])
