"""The suite's marker rule: what `make test-fast` (``pytest -m "not slow"``) leaves out.

A test is ``slow`` when it is marked so (long in-process fleet runs, measured with
``--durations``) or when it needs a real Mosquitto, real child processes, a real
pseudo-terminal or a real browser, or is a benchmark test (tests/bench): those start and wait on
real components.
`make test` runs them all, as CI does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SLOW_KINDS = ("mosquitto", "subprocess", "pty", "browser")
BENCH = Path(__file__).parent / "bench"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(BENCH) or any(
            item.get_closest_marker(kind) for kind in SLOW_KINDS
        ):
            item.add_marker(pytest.mark.slow)
