"""Fixtures for agent tests: a real Mosquitto broker on a free loopback port.

``mosquitto`` starts the ``mosquitto`` binary with a config generated in ``tmp_path`` and stops
it after the test (SIGTERM, then SIGKILL). Without the binary the test is skipped locally and
fails when the environment variable CI is set, so CI never silently skips the real-broker tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.transport.brokers import MosquittoBroker


def require_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        msg = "the mosquitto binary is not installed (Debian: apt-get install mosquitto)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must run the real-broker tests")
        pytest.skip(msg)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    require_mosquitto()
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto", stop_timeout_s=5.0)
    broker.start_sync()
    try:
        yield broker
    finally:
        broker.stop_sync()
