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


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for pkg in ("ledger", "firmware_sim", "agent"):
        (tmp_path / pkg).mkdir(exist_ok=True)
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_catches_io_in_a_core_and_a_foreign_library_outside_its_adapter(
    tmp_path: Path,
) -> None:
    root = _tree(
        tmp_path,
        {
            "agent/gossip/node.py": "import asyncio\n",
            "agent/replication/holder.py": "def f():\n    import time\n",
            "agent/device/runtime.py": "import aiomqtt\nimport asyncio\n",
            "agent/transport/mqtt.py": "import aiomqtt\n",
        },
    )
    assert violations(root) == [
        "agent/device/runtime.py:1: only agent/transport/mqtt.py may import aiomqtt",
        "agent/gossip/node.py:1: the core agent.gossip.node must not import asyncio (I/O)",
        "agent/replication/holder.py:2: the core agent.replication.holder"
        " must not import time (I/O)",
    ]


def test_checker_catches_rooms_importing_against_the_direction(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "agent/protocol/trust.py": "from agent.gossip import wire\n",
            "agent/gossip/node.py": "from agent.protocol import trust\n",
            "agent/replication/owner.py": "from agent.gossip.node import X\n",
            "agent/device/runtime.py": "from agent.fleet.runner import FleetRunner\n",
            "agent/fleet/runner.py": "from agent.device.runtime import DeviceAgent\n",
        },
    )
    found = violations(root)
    assert "agent/gossip/node.py:1: agent.protocol must not import" not in " ".join(found)
    assert found[:3] == [
        "agent/device/runtime.py:1: agent.device must not import agent.fleet.runner",
        "agent/protocol/trust.py:1: agent.protocol must not import agent.gossip"
        " (it is shared by every core)",
        "agent/replication/owner.py:1: agent.replication must not import agent.gossip.node",
    ]


def test_checker_finds_cycles_static_and_hidden_behind_importlib(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "agent/cli/main.py": "import importlib\nfrom agent.cli import run\n",
            "agent/cli/run.py": "from agent.cli.main import CliError\n",
            "agent/cli/show.py": (
                "import importlib\nfor n in ['agent.cli.run']:\n    importlib.import_module(n)\n"
            ),
        },
    )
    assert violations(root) == [
        "agent/cli/show.py:3: import_module with a computed name hides an import; import it",
        "import cycle: agent.cli.main <-> agent.cli.run",
    ]
