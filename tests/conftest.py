"""The suite's marker rule: what `make test-fast` (``pytest -m "not slow"``) leaves out.

A test is ``slow`` when it is marked so (long in-process fleet runs, measured with
``--durations``) or when it needs a real Mosquitto, real child processes, a real
pseudo-terminal or a real browser, or is a benchmark test (tests/bench): those start and wait on
real components.
`make test` runs them all, as CI does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

SLOW_KINDS = ("mosquitto", "subprocess", "pty", "browser")
BENCH = Path(__file__).parent / "bench"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "figure" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.figures)
        if item.path.is_relative_to(BENCH) or any(
            item.get_closest_marker(kind) for kind in SLOW_KINDS
        ):
            item.add_marker(pytest.mark.slow)


# --------------------------------------------------------------------------- reliability figures
# Each row of the fault matrix (../shared/RELIABILITY.md, docs/RELIABILITY.md) is a test that
# reports a figure in the form "lost = 0 of N over K faults". A test takes the ``figure``
# fixture and calls it with the matrix row and the figure; the figures are printed together as a
# table at the end of every run (the fault-matrix summary), and ``--figures-json PATH`` writes them
# as one JSON object for an issue note.


@dataclass(frozen=True)
class Figure:
    row: str  # the matrix row: the fault or attack
    text: str  # the figure, e.g. "lost = 0 of 1,204 readings over 3 faults"
    seed: int | None
    test: str  # the test's node id


FIGURES = pytest.StashKey[list[Figure]]()


class FigureRecorder:
    """``figure(row, text, seed=...)``: record one figure of the fault matrix for this test."""

    def __init__(self, config: pytest.Config, test: str) -> None:
        self._config = config
        self._test = test

    def __call__(self, row: str, text: str, *, seed: int | None = None) -> str:
        self._config.stash.setdefault(FIGURES, []).append(Figure(row, text, seed, self._test))
        print(f"{row}: {text}" + ("" if seed is None else f" (seed {seed})"))
        return text


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> FigureRecorder:
    return FigureRecorder(request.config, request.node.nodeid)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--figures-json",
        metavar="PATH",
        help="write the fault-matrix figures the tests reported to PATH as one JSON object",
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if not figures:
        return
    rows = [[f.row, f.text, "-" if f.seed is None else str(f.seed)] for f in figures]
    head = ["fault or attack", "figure", "seed"]
    widths = [min(56, max(len(h), *(len(r[i]) for r in rows))) for i, h in enumerate(head)]
    terminalreporter.section(f"fault matrix: {len(figures)} figure(s) reported")
    for r in [head, *rows]:
        cells = [r[0][: widths[0]].ljust(widths[0]), r[2].ljust(widths[2]), r[1]]
        terminalreporter.write_line("  ".join(cells).rstrip())
    path = config.getoption("--figures-json")
    if path:
        doc = {"figures": [asdict(f) for f in figures]}
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")
