"""A fleet split over three "hosts": three data dirs, three `edgefleet run` processes, real brokers.

Each host's data dir is made the way docs/DEPLOY.md tells a real machine to: an authority
elsewhere (`keys init-authority`), then `keys init-device`, `keys enroll --request` and `keys
install-cert` per device. A host holds its own device's key and certificate and the fleet root,
nothing else; the shared devices.yaml names every device and, for the devices enrolled on other
machines, their ids (`id:`). Everything a host knows of the others came over MQTT: their
certificates (the CERTS exchange, verified against the fleet root), headers and blocks.

Two topologies: one Mosquitto for everyone, and two Mosquittos joined by the bridge of
deploy/mosquitto/bridge.conf.example (the "Pi" on broker 1, the two freezers on broker 2).

Runs are on simulated time at a fixed speed, so tag reads happen on schedule (a shopping trip
every simulated hour) and a run is a few seconds. The freezers run two simulated hours longer
than the Pi: they are still online when the Pi seals its last block, so they receive it, and the
Pi's run ends on what it has received (docs/DEPLOY.md 6.2).

Real sensors: ``pi_device`` is the devices.yaml entry of the Pi's appliance and ``pi_args``
its extra `run` options (fixtures: the seam). The topology tests keep its sensors simulated; the
last test plugs an RDM6300 on a pty into it (tests/agent/test_run_serial.py's ``Adapter`` and
``Rdm6300``: repeating frames, noise, a bad checksum), read live in real time, and traces the
card from the other hosts. Unplugging and replugging a port is test_run_serial.py's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.transport.brokers import MosquittoBroker, MosquittoTls
from agent.transport.endpoint import Endpoint
from agent.transport.mqtt import MqttClient
from ledger.store import Store
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import verify
from tests.agent.test_run_serial import BAD_TAG, CARD, TAG, Adapter, Rdm6300

pytestmark = [pytest.mark.subprocess, pytest.mark.mosquitto, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BRIDGE_EXAMPLE = REPO / "deploy" / "mosquitto" / "bridge.conf.example"
PASSPHRASE = "host passphrase"
SPEED = "3600"  # a simulated hour per wall second
PI_FOR, OTHERS_FOR = "3h", "5h"
RUN_TIMEOUT_S = 90

FLEET_HEAD = """\
fleet: hosts
seed: 11
start: 2025-01-06T00:00:00Z
sites:
  - {id: shop-1, kind: household}
  - {id: blood-station-north, kind: blood_station}
  - {id: city-hospital, kind: hospital}
gossip_domains:
  - id: cold-chain
world:
  shopping: {every: 1h, at: "00:20", jitter: 0s, items: [2, 3]}
devices:
"""
FREEZERS = """\
  - name: freezer-station
    id: {freezer-station}
    kind: medical_freezer
    site: blood-station-north
    domains: [cold-chain]
    sampling_period: 60s
  - name: freezer-hospital
    id: {freezer-hospital}
    kind: medical_freezer
    site: city-hospital
    domains: [cold-chain]
    sampling_period: 60s
"""


@dataclass(frozen=True)
class Device:
    name: str
    kind: str
    site: str
    host: str


DEVICES = (
    Device("pi-fridge", "refrigerator", "shop-1", "pi"),
    Device("freezer-station", "medical_freezer", "blood-station-north", "station"),
    Device("freezer-hospital", "medical_freezer", "city-hospital", "hospital"),
)


@pytest.fixture(scope="module")
def pi_device() -> str:
    """The Pi's devices.yaml entry (its ``id`` is filled in): the seam for real serial sensors."""
    return """\
  - name: pi-fridge
    id: {pi-fridge}
    kind: refrigerator
    site: shop-1
    domains: [shop-1, cold-chain]
    sampling_period: 60s
"""


@pytest.fixture(scope="module")
def pi_args() -> list[str]:
    """Extra `run` options of the Pi (``--realtime`` once its sensors are real)."""
    return []


@dataclass(frozen=True)
class Enrolled:
    base: Path
    ids: dict[str, str]  # device name -> device id

    def data(self, host: str) -> Path:
        return self.base / host


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Enrolled:
    """An authority in ``authority/`` and one data dir per host, each enrolled by request."""
    base = tmp_path_factory.mktemp("hosts")
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEFLEET_PASSPHRASE", PASSPHRASE)
        auth = base / "authority"
        assert main(["keys", "init-authority", "--dir", str(auth)]) == 0
        for dev in DEVICES:
            devdir = base / dev.host / "devices" / dev.name
            attrs = ["--kind", dev.kind, "--model", "M-1", "--site", dev.site]
            assert main(["keys", "init-device", "--dir", str(devdir), *attrs]) == 0
            cert = base / f"{dev.name}.cert"
            request = ["--request", str(devdir / "enroll.req"), "--out", str(cert)]
            assert main(["keys", "enroll", "--authority", str(auth), *request, "--yes"]) == 0
            root = ["--root", str(auth / "fleet-root.json")]
            assert main(["keys", "install-cert", "--dir", str(devdir), str(cert), *root]) == 0
            ids[dev.name] = _device_id(cert)
    return Enrolled(base, ids)


def _device_id(cert: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "keys", "show", str(cert)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    ).stdout
    found = re.search(r"\bef[a-z2-7]{24}\b", out)
    assert found is not None, out
    return found.group(0)


def _env() -> dict[str, str]:
    env = dict(os.environ, EDGEFLEET_PASSPHRASE=PASSPHRASE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@dataclass(frozen=True)
class Fleet:
    """The three hosts after their runs: where their data dirs are, and the devices' ids."""

    base: Path
    ids: dict[str, str]

    def data(self, host: str) -> Path:
        return self.base / host


Urls = tuple[str, str]  # (the Pi's broker URL, the freezers' broker URL)


@contextmanager
def one_broker(tmp: Path) -> Iterator[Urls]:
    broker = MosquittoBroker(workdir=tmp / "mosquitto", stop_timeout_s=5.0)
    broker.start_sync()
    try:
        yield broker.endpoint.url, broker.endpoint.url
    finally:
        broker.stop_sync()


def bridge_lines(address: str) -> list[str]:
    """deploy/mosquitto/bridge.conf.example's directives, pointed at ``address``."""
    lines = []
    for line in BRIDGE_EXAMPLE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        lines.append(f"address {address}" if line.startswith("address ") else line)
    return lines


@contextmanager
def bridged_brokers(tmp: Path) -> Iterator[Urls]:
    far = MosquittoBroker(workdir=tmp / "broker2", stop_timeout_s=5.0)
    far.start_sync()
    near = None
    try:
        address = f"{far.endpoint.host}:{far.endpoint.port}"
        near = MosquittoBroker(
            workdir=tmp / "broker1", stop_timeout_s=5.0, extra_config=bridge_lines(address)
        )
        near.start_sync()
        _wait_for_bridge(far.endpoint)
        yield near.endpoint.url, far.endpoint.url
    finally:
        if near is not None:
            near.stop_sync()
        far.stop_sync()


@contextmanager
def tls_broker(tmp: Path, enrolled: Enrolled) -> Iterator[Urls]:
    """docs/DEPLOY.md section 7: the authority issues the broker's certificate, each host makes
    its own TLS key and request, the authority certifies it, the host installs it; the broker
    admits only those certificates, each device under its own identity. One URL for every host:
    each device connects with the files in its own directory."""
    base = enrolled.base
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEFLEET_PASSPHRASE", PASSPHRASE)
        server = ["--data", str(base), "--server", "--host", "127.0.0.1"]
        assert main(["keys", "broker-cert", *server]) == 0
        for dev in DEVICES:
            devdir = base / dev.host / "devices" / dev.name
            assert main(["keys", "broker-cert", "--dir", str(devdir), "--request"]) == 0
            cert = base / "issued" / f"{dev.name}.pem"
            csr = ["--csr", str(devdir / "broker.csr"), "--authority", str(base / "authority")]
            assert main(["keys", "broker-cert", *csr, "--out", str(cert), "--yes"]) == 0
            install = ["--install", str(cert), "--ca", str(cert.parent / "broker-ca.pem")]
            assert main(["keys", "broker-cert", "--dir", str(devdir), *install]) == 0
        assert main(["broker", "config", "--data", str(base)]) == 0
    files = base / "broker"
    listener = MosquittoTls(
        files / "ca.pem", files / "server.pem", files / "server.key", acl_file=files / "acl"
    )
    broker = MosquittoBroker(workdir=tmp / "mosquitto-tls", tls=listener, stop_timeout_s=5.0)
    broker.start_sync()
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        yield url, url
        # every device came in under its own certificate: Mosquitto names the user it took
        connected = "\n".join(broker.log_tail())
        for device_id in enrolled.ids.values():
            assert f"u'{device_id}'" in connected, connected
    finally:
        broker.stop_sync()


def _wait_for_bridge(far: Endpoint) -> None:
    """The bridge publishes its state, retained, on the far broker: ``1`` once connected."""

    async def wait() -> None:
        got: asyncio.Queue[bytes] = asyncio.Queue()
        client = MqttClient(
            far,
            "bridge-watcher",
            will_topic="edgefleet-test/bridge-watcher",
            on_message=lambda _t, payload: got.put_nowait(payload),
        )
        async with client:
            await client.subscribe(["edgefleet-bridge/+/state"])
            while await asyncio.wait_for(got.get(), 10) != b"1":
                pass

    asyncio.run(wait())


SIMULATED = (
    ["--for", PI_FOR, "--speed", SPEED],
    ["--for", OTHERS_FOR, "--speed", SPEED],
)


def run_hosts(
    enrolled: Enrolled,
    urls: tuple[str, str],
    pi_device: str,
    pi_args: list[str],
    tmp: Path,
    timing: tuple[list[str], list[str]] = SIMULATED,
) -> Fleet:
    """Copy the enrolled data dirs, write the shared devices.yaml, run the three processes
    (``timing``: the Pi's and the freezers' duration options)."""
    base = tmp / "run"
    for dev in DEVICES:
        src = enrolled.data(dev.host)
        (base / dev.host).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(src), str(base / dev.host)], check=True)
    text = FLEET_HEAD + pi_device + FREEZERS
    for name, dev_id in enrolled.ids.items():
        text = text.replace("{" + name + "}", dev_id)
    fleet_file = base / "devices.yaml"
    fleet_file.write_text(text)
    procs = []
    for dev in DEVICES:
        pi = dev.host == "pi"
        argv = [
            *(sys.executable, "-m", "agent.cli.main", "run"),
            *("--devices", str(fleet_file), "--data", str(base / dev.host)),
            *("--device", dev.name, "--broker", urls[0] if pi else urls[1]),
            *(timing[0] if pi else timing[1]),
            *("--no-view", "--settle", "20"),
            *(pi_args if pi else []),
        ]
        with (base / f"{dev.host}.log").open("w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env())
        procs.append((dev, proc))
    failed = []
    for dev, proc in procs:
        try:
            status = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        log_text = (base / f"{dev.host}.log").read_text()
        if status != 0 or "gossip converged" not in log_text:
            failed.append(f"{dev.host} (exit {status}):\n{log_text[-2000:]}")
    assert not failed, "\n".join(failed)
    return Fleet(base, enrolled.ids)


@pytest.fixture(scope="module", params=["one-broker", "bridged", "one-broker-tls"])
def fleet(
    request: pytest.FixtureRequest,
    enrolled: Enrolled,
    pi_device: str,
    pi_args: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Fleet:
    """The three hosts after their runs, on one broker or on two bridged ones (one run each,
    shared by the tests of this module)."""
    require_mosquitto()
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "one-broker-tls":  # on a copy: the other runs keep the plain hosts
        subprocess.run(["cp", "-a", str(enrolled.base), str(tmp / "enrolled")], check=True)
        tls_enrolled = Enrolled(tmp / "enrolled", enrolled.ids)
        with tls_broker(tmp, tls_enrolled) as urls:
            return run_hosts(tls_enrolled, urls, pi_device, pi_args, tmp)
    brokers = one_broker if request.param == "one-broker" else bridged_brokers
    with brokers(tmp) as urls:
        return run_hosts(enrolled, urls, pi_device, pi_args, tmp)


def test_every_chain_is_verified_by_its_domain_peers_on_the_other_hosts(fleet: Fleet) -> None:
    for dev in DEVICES:
        data = fleet.data(dev.host)
        checked = verify(data)  # edgefleet verify --json, exit 0 and ok
        assert checked.ok, (dev.host, checked.failures())
        report = checked.report(dev.name)
        assert report["peers"] == 2 and report["peer_headers"] > 0, report
        with Store(data / "devices" / dev.name / "store.sqlite") as store:
            for other in DEVICES:
                if other is dev:
                    continue
                other_id = fleet.ids[other.name]
                # Its certificate came over the wire (nobody copied it here), and its headers
                # verified against it.
                assert store.certificate(other_id) is not None, (dev.host, other.name)
                assert store.peer_header_wires(other_id), (dev.host, other.name)


def test_an_honest_fleet_on_three_hosts_shows_no_trouble(fleet: Fleet) -> None:
    """Each host learned the others' certificates from their CERTS, and their first broadcasts
    (replication's SPACE adverts, gossip's) can come before them: held until the credentials
    arrive and proven then, never counted unproven (docs/PROTOCOL.md 12.1.5, 13.x)."""
    for dev in DEVICES:
        status = json.loads((fleet.data(dev.host) / "run-status.json").read_text())
        [row] = status["devices"]
        assert row["name"] == dev.name and row["state"] == "STOPPED", row
        assert set(row["trouble"].values()) == {0}, (dev.host, row["trouble"])
        assert row["muted"] == [] and row["excluded"] == [], row


def test_a_tag_read_at_the_pi_is_traced_from_another_host_with_verified_proofs(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["tags", "--data", str(fleet.data("pi")), "--json"]) == 0
    tags = json.loads(capsys.readouterr().out)["tags"]
    epcs = [t["tag"] for t in tags if t["devices"] == ["pi-fridge"]]
    assert epcs, tags  # the shopping trips of the first hours put tagged food in the fridge
    pi_id = fleet.ids["pi-fridge"]
    for host in ("station", "hospital"):
        status = main(["trace", epcs[0], "--data", str(fleet.data(host)), "--format", "json"])
        trace = json.loads(capsys.readouterr().out)
        assert status == 0, trace["verdict"]
        about = [e for e in trace["timeline"] if e["about_item"]]
        # Read at the Pi, traced here from the blocks this host received, each reading proven
        # by inclusion under a header of the Pi's verified chain.
        assert about and {e["device"] for e in about} == {pi_id}, trace["timeline"]
        assert all(e["reading"]["proof"] == "inclusion" for e in about), about
        assert trace["unverified"] == [] and trace["evidence"] > 0, trace


def test_no_host_holds_another_hosts_key_or_the_authoritys(fleet: Fleet) -> None:
    for dev in DEVICES:
        data = fleet.data(dev.host)
        keys = sorted(str(p.relative_to(data)) for p in data.rglob("*.key"))
        tls = (data / "devices" / dev.name / "broker.pem").exists()  # its own TLS key, if any
        mine = [f"devices/{dev.name}/broker.key"] if tls else []
        assert keys == [*mine, f"devices/{dev.name}/device.key"], keys
        assert sorted(p.name for p in (data / "devices").iterdir()) == [dev.name]
        assert not (data / "passphrase").exists()


@pytest.mark.pty
def test_a_card_held_to_the_pis_rdm6300_is_traced_from_another_host(
    enrolled: Enrolled, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seam in use: the Pi's tag reader is an RDM6300 on a pty (repeating frames, noise,
    frames with a bad checksum), read live in real time; the freezers run in real time too and
    outlive it, so they receive its last block."""
    require_mosquitto()
    adapter = Adapter(tmp_path / "ttyRDM")
    reader = Rdm6300(adapter.plug(), CARD)
    pi_device = f"""\
  - name: pi-fridge
    id: {{pi-fridge}}
    kind: refrigerator
    site: shop-1
    domains: [shop-1, cold-chain]
    sampling_period: 5s
    serial:
      - {{driver: rdm6300, port: "{adapter.name}", sensors: [rfid.in, rfid.out]}}
"""
    try:
        with one_broker(tmp_path) as urls:
            timing = (["--for", "12s"], ["--realtime", "--for", "25s"])
            fleet = run_hosts(enrolled, urls, pi_device, [], tmp_path, timing)
    finally:
        reader.remove()
        adapter.unplug()
    assert reader.frames > 0
    pi_id = fleet.ids["pi-fridge"]
    for host in ("station", "hospital"):
        checked = verify(fleet.data(host))
        assert checked.ok, checked.failures()
        status = main(["trace", TAG, "--data", str(fleet.data(host)), "--format", "json"])
        trace = json.loads(capsys.readouterr().out)
        about = [e for e in trace["timeline"] if e["about_item"]]
        assert about and {e["device"] for e in about} == {pi_id}, (status, trace["timeline"])
        assert about[0]["sensor"] == "rfid.in", about
        assert all(e["reading"]["proof"] == "inclusion" for e in about), about
        assert trace["unverified"] == [], trace
        assert BAD_TAG not in json.dumps(trace)
