"""The files shipped in deploy/ for real machines: the systemd unit and the example devices.yaml.

The unit is checked by ``systemd-analyze verify`` where systemd is installed (an instance of the
template, with the venv's path pointed at this one's ``edgefleet``), and everywhere by its
structure: the sections a service needs, and an ``ExecStart`` whose arguments edgefleet's own
parser accepts (an option renamed in the CLI would otherwise ship a unit that never starts).
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import build_parser
from agent.config.devices import load_fleet

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "edgefleet@.service"
VENV_EDGEFLEET = "/opt/edgefleet/venv/bin/edgefleet"


def _unit() -> configparser.ConfigParser:
    # systemd units are INI-like: repeated keys and line continuations are not configparser's,
    # but this unit uses neither beyond the backslash continuations joined here.
    text = UNIT.read_text().replace("\\\n", " ")
    parser = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_the_unit_has_what_a_service_needs() -> None:
    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["User"] == "edgefleet" and "dialout" in service["SupplementaryGroups"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a refused start is not retried
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_units_command_line_parses_with_edgefleets_own_parser() -> None:
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert argv[0] == VENV_EDGEFLEET
    args = build_parser().parse_args(
        [a.replace("%i", "pi-fridge").replace("${BROKER}", "mqtts://b:8883") for a in argv[1:]]
    )
    assert args.device == ["pi-fridge"]
    assert args.passphrase_file == "/etc/edgefleet/passphrase"
    assert args.broker == "mqtts://b:8883" and args.realtime and args.no_view


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_analyze_verifies_an_instance_of_the_unit(tmp_path: Path) -> None:
    edgefleet = Path(sys.executable).with_name("edgefleet")
    if not edgefleet.exists():
        pytest.skip(f"{edgefleet}: no console script next to this Python")
    instance = tmp_path / "edgefleet@pi-fridge.service"
    instance.write_text(UNIT.read_text().replace(VENV_EDGEFLEET, str(edgefleet)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, check=False
    )
    # Unknown keys and bad values are warnings with exit 0: any output at all is a failure.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_the_example_devices_yaml_loads_with_its_tag_reader_and_probe() -> None:
    fleet = load_fleet(DEPLOY / "pi" / "devices.yaml")
    pi = fleet.device("pi-fridge")
    assert pi.serial is not None
    assert [(s.driver, s.sensors) for s in pi.serial] == [
        ("rdm6300", ("rfid.in", "rfid.out")),
        ("xymd02", ("fridge.temp_mc",)),
    ]
    others = {d.name for d in fleet.devices if "cold-chain" in d.domains} - {"pi-fridge"}
    assert others == {"freezer-station", "freezer-hospital"}  # its domain peers, elsewhere


def test_the_bridge_example_carries_the_fleets_topics_both_ways() -> None:
    lines = [
        line.split()
        for line in (DEPLOY / "mosquitto" / "bridge.conf.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    directives = {words[0]: words[1:] for words in lines}
    assert directives["topic"] == ["edgefleet/#", "both", "1"]
    assert directives["try_private"] == ["true"]
    assert "connection" in directives and "address" in directives
