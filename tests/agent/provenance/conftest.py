"""Data dirs built once per test session by running the fleets of ``fleets`` (see there).

The data dirs go to a RAM file system (``/dev/shm``) when there is one: every simulation step
ends with an fsync per device (synchronous=FULL), which is what these runs would otherwise spend
most of their time on, and durability is not what the trace tests check.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config.devices import FleetConfig
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance.audit import default_root
from agent.provenance.gather import TraceSession
from ledger.certs import FleetRoots
from tests.agent.provenance import fleets


@dataclass(frozen=True)
class Run:
    cfg: FleetConfig
    data: Path
    for_ms: int
    truth: fleets.Truth

    @property
    def roots(self) -> FleetRoots:
        return keystore.load_roots(default_root(DataDir(self.data)))

    def session(self) -> TraceSession:
        return TraceSession(DataDir(self.data), self.roots)


def _run(base: Path, text: str, for_ms: int) -> Run:
    cfg = fleets.write(base, text)
    data = base / "data"
    fleets.run(cfg, data, for_ms)
    return Run(cfg, data, for_ms, fleets.truth(cfg, for_ms))


@pytest.fixture(scope="session")
def fast_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory on /dev/shm if it is writable (removed afterwards), else pytest's tmp."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="edgefleet-trace-", dir=shm))
        try:
            yield base
        finally:
            shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("trace")


@pytest.fixture(scope="session")
def blood(fast_base: Path) -> Run:
    """35 hours of the blood chain with a power cut in the van during the first transport."""
    return _run(fast_base / "blood", fleets.BLOOD, 35 * fleets.HOUR_MS)


@pytest.fixture(scope="session")
def slow_load(fast_base: Path) -> Run:
    """22 hours of the blood chain where loading the van takes 2 h."""
    return _run(fast_base / "slow", fleets.SLOW_LOAD, 22 * fleets.HOUR_MS)


@pytest.fixture(scope="session")
def week(fast_base: Path) -> Run:
    """A simulated week of a household and a blood chain."""
    return _run(fast_base / "week", fleets.WEEK, 7 * 24 * fleets.HOUR_MS)


@pytest.fixture
def session(blood: Run) -> Iterator[TraceSession]:
    with blood.session() as s:
        yield s
