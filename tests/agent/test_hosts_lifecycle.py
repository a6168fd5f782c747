"""Rotation and revocation on a fleet spread over machines: the three "hosts" of test_hosts.py
(three data dirs, three `edgefleet run` processes, real Mosquitto).

A revocation: the Pi on one Mosquitto and the freezers on another, joined by the bridge of
deploy/mosquitto/bridge.conf.example. The authority, on a machine of its own, publishes the Pi's
revocation to the freezers' broker with `edgefleet keys revoke --broker` before the hosts start;
it is retained, crosses the bridge, and every host receives it on subscribing: the freezers
refuse the Pi's headers from the revoked height on, and the Pi's own store holds it too.

A rotation: the Pi's host stops, rotates in three steps with the authority's machine, and runs
again; the other hosts follow its new key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet import lifecycle
from ledger.block import decode_header
from ledger.certs import decode_revocation, decode_rotation
from ledger.store import Store
from tests.agent import test_hosts as hosts
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import verify

pytestmark = [pytest.mark.subprocess, pytest.mark.mosquitto, pytest.mark.slow]

enrolled = hosts.enrolled
pi_device = hosts.pi_device
pi_args = hosts.pi_args
CUT = 2  # the Pi's headers from this height on are refused


def test_a_revocation_published_on_one_broker_reaches_every_host_across_the_bridge(
    enrolled: hosts.Enrolled, pi_device: str, pi_args: list[str], tmp_path: Path
) -> None:
    require_mosquitto()
    pi = enrolled.ids["pi-fridge"]
    authority = tmp_path / "authority"
    subprocess.run(["cp", "-a", str(enrolled.base / "authority"), str(authority)], check=True)
    with hosts.bridged_brokers(tmp_path) as (near, far):
        argv = [sys.executable, "-m", "agent.cli.main", "keys", "revoke"]
        argv += ["--authority", str(authority), "--device", pi, "--reason", "stolen"]
        argv += ["--from-height", str(CUT), "--broker", far]
        done = subprocess.run(argv, capture_output=True, text=True, env=hosts._env())
        assert done.returncode == 0, done.stderr
        assert f"edgefleet/v1/revocation/{pi}" in done.stdout
        fleet = hosts.run_hosts(enrolled, (near, far), pi_device, pi_args, tmp_path)
    wire = lifecycle.revocation_path(authority, pi).read_bytes()
    assert decode_revocation(wire).from_height == CUT
    with Store(fleet.data("pi") / "devices" / "pi-fridge" / "store.sqlite") as store:
        own = store.head()
        held = [w for d, w in store.credentials("revocation") if d == pi]
    assert own is not None and own.header.height >= CUT + 1, "the Pi signed on past the cut"
    assert held == [wire], "the Pi received it across the bridge"
    for host, name in (("station", "freezer-station"), ("hospital", "freezer-hospital")):
        with Store(fleet.data(host) / "devices" / name / "store.sqlite") as store:
            heights = [decode_header(w).header.height for w in store.peer_header_wires(pi)]
            revocations = [w for d, w in store.credentials("revocation") if d == pi]
        assert heights == list(range(CUT)), f"{host} holds the Pi's headers {heights}"
        assert revocations == [wire], f"{host} stored the revocation"


def test_a_device_rotated_on_its_own_machine_is_followed_by_the_other_hosts(
    enrolled: hosts.Enrolled,
    pi_device: str,
    pi_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Pi's host stops, rotates in three steps (the authority countersigns on its own
    machine), and runs again: the freezers on the other hosts learn the rotation from the Pi's
    greeting and accept its blocks signed by the new key; every host's data dir verifies."""
    require_mosquitto()
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", hosts.PASSPHRASE)
    pi = enrolled.ids["pi-fridge"]
    with hosts.one_broker(tmp_path) as urls:
        first = hosts.run_hosts(enrolled, urls, pi_device, pi_args, tmp_path / "first")
        pidir = first.data("pi") / "devices" / "pi-fridge"
        assert main(["keys", "rotate", "--dir", str(pidir), "--request"]) == 0
        rotation = tmp_path / "pi-fridge.rot"
        request = ["--request", str(pidir / lifecycle.ROTATE_REQUEST), "--out", str(rotation)]
        authority = ["--authority", str(enrolled.base / "authority")]
        assert main(["keys", "countersign", *authority, *request, "--yes"]) == 0
        assert main(["keys", "rotate", "--dir", str(pidir), "--install", str(rotation)]) == 0
        again = hosts.Enrolled(first.base, enrolled.ids)
        second = hosts.run_hosts(again, urls, pi_device, pi_args, tmp_path / "second")
    rot = decode_rotation(rotation.read_bytes())
    with Store(second.data("pi") / "devices" / "pi-fridge" / "store.sqlite") as store:
        signed = {
            decode_header(w).header.key_id for w in store.own_header_wires(rot.effective_height)
        }
    assert signed == {rot.new_key.key_id}
    for host, name in (("station", "freezer-station"), ("hospital", "freezer-hospital")):
        with Store(second.data(host) / "devices" / name / "store.sqlite") as store:
            top = decode_header(store.peer_header_wires(pi)[-1]).header.height
            rotations = [w for d, w in store.credentials("rotation") if d == pi]
        assert top > rot.effective_height, f"{host} follows the Pi past its rotation"
        assert rotations == [rotation.read_bytes()], f"{host} stored the rotation"
    for host in ("pi", "station", "hospital"):
        assert verify(second.data(host)).ok, (host, verify(second.data(host)).failures())
