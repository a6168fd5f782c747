"""A revocation reaches a fleet spread over machines and brokers: the three "hosts" of
test_hosts.py, the Pi on one Mosquitto and the freezers on another, joined by the bridge of
deploy/mosquitto/bridge.conf.example. The authority, on a machine of its own, publishes the Pi's
revocation to the freezers' broker with `edgefleet keys revoke --broker` before the hosts start;
it is retained, crosses the bridge, and every host receives it on subscribing: the freezers
refuse the Pi's headers from the revoked height on, and the Pi's own store holds it too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.fleet import lifecycle
from ledger.block import decode_header
from ledger.certs import decode_revocation
from ledger.store import Store
from tests.agent import test_hosts as hosts
from tests.agent.conftest import require_mosquitto

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
