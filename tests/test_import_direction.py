from __future__ import annotations

from pathlib import Path

from tests.importcheck import violations


def test_packages_respect_the_import_direction() -> None:
    assert violations() == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    for pkg in ("ledger", "firmware_sim", "agent"):
        (tmp_path / pkg).mkdir()
    (tmp_path / "ledger" / "bad.py").write_text("def f():\n    from agent import cli\n")
    (tmp_path / "firmware_sim" / "bad.py").write_text("import ledger.codec\n")
    (tmp_path / "agent" / "ok.py").write_text("import ledger\nimport firmware_sim\n")
    found = violations(tmp_path)
    assert found == [
        "ledger/bad.py:2: ledger must not import agent",
        "firmware_sim/bad.py:1: firmware_sim must not import ledger.codec",
    ]
