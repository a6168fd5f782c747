"""A data dir made once per session by a short simulated run, and the web app serving it.

The fleet is the trace tests' blood chain (``tests/agent/provenance/fleets.py``: a freezer van
whose power fails while the first bags are in it, so a plasma unit has an excursion) plus one
private household's fridge, whose readings are sealed to its owner. It runs 35 simulated hours
through the real runner on the in-memory network (a few seconds), on /dev/shm when there is one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.web.app import running
from agent.web.data import FleetData
from tests.agent.provenance import fleets

HOUSEHOLD = fleets.BLOOD.replace(
    "  - {id: city-hospital, kind: hospital}\n",
    "  - {id: city-hospital, kind: hospital}\n"
    "  - {id: home-1, kind: household, private: true, owner: family-1}\n",
).replace(
    "world:\n",
    "  - {name: fridge-1, kind: refrigerator, site: home-1, sampling_period: 10m}\nworld:\n",
)
PLASMA = "urn:epc:id:giai:9501101.125000001"  # in the van during the power cut


@dataclass(frozen=True)
class WebFleet:
    data: Path
    owner_key: Path  # family-1's X25519 secret (opens fridge-1)


@pytest.fixture(scope="session")
def web_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebFleet]:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="edgefleet-web-", dir=shm))
    else:
        base = tmp_path_factory.mktemp("web")
    try:
        cfg = fleets.write(base, HOUSEHOLD)
        fleets.run(cfg, base / "data", 35 * fleets.HOUR_MS)
        yield WebFleet(base / "data", base / "data" / "owners" / "family-1.key")
    finally:
        if str(base).startswith("/dev/shm/"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def fleet_data(web_fleet: WebFleet) -> FleetData:
    return FleetData.open(web_fleet.data)


@pytest.fixture(scope="session")
def base_url(fleet_data: FleetData) -> Iterator[str]:
    with running(fleet_data) as url:
        yield url
