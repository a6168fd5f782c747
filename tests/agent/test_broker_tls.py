"""The broker as a second line: X.509 certificates from the fleet authority, a Mosquitto with
client certificates and identity ACLs (agent/fleet/brokertls.py, agent/cli/broker.py).

The real-broker tests start their own Mosquitto with the TLS listener `run --broker
mosquitto-tls` uses. An ACL denial is silent in MQTT (the publish is acknowledged and dropped, a
subscription is granted and gets nothing), so every denial is observed as a message that never
reaches a subscriber entitled to it, with a *barrier*: after the denied message the same client
publishes an allowed one that the same subscriber receives. The broker keeps one publisher's
QoS 1 messages in order, so once the barrier has arrived, the denied message would have been
there before it: no waiting on the wall clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.cli.main import main
from agent.config.devices import load_fleet
from agent.fleet import brokertls, keystore
from agent.fleet.datadir import DataDir
from agent.transport.brokers import (
    ExternalBroker,
    MosquittoBroker,
    MosquittoTls,
    broker_from_spec,
    client_tls,
    mosquitto_acl,
)
from agent.transport.endpoint import Endpoint
from agent.transport.errors import TransportError
from agent.transport.mqtt import MqttClient, MqttHub, MqttOptions, MqttTransport
from agent.transport.presence import PRESENCE_OFFLINE, PRESENCE_ONLINE
from agent.transport.topics import Topics
from ledger import keyfile
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import (
    FAST_GOSSIP,
    HOUR_MS,
    SAMPLE_FLEET,
    domain_pairs,
    missing_heads,
    run_fleet,
    verify,
)
from tests.conftest import FigureRecorder

PW = b"broker tls test"
T = Topics()
NAMES = ("alice", "bob", "carol", "hubbed-1", "hubbed-2")
WAIT_S = 10.0  # an upper bound on a message that must arrive (never a wait for one that must not)


@dataclass
class Pki:
    data: DataDir
    ids: dict[str, str]  # name -> device id

    def files(self, name: str) -> brokertls.TlsFiles:
        return brokertls.device_files(self.data.device(name))


def make_pki(root: Path) -> Pki:
    data = DataDir(root)
    keystore.init_authority(data.authority, PW, keyfile.FAST)
    authority = keystore.load_authority(data.authority, PW)
    ids = {}
    for name in NAMES:
        keystore.enroll_device(
            data.authority,
            authority,
            data.device(name),
            PW,
            kind="refrigerator",
            model="m",
            site="s",
            cost=keyfile.FAST,
        )
        ids[name], _ = brokertls.issue_device(data.device(name), data.authority, authority)
    brokertls.issue_server(data, authority)
    brokertls.issue_hub(data, authority, "hub-1", [ids["hubbed-1"], ids["hubbed-2"]])
    return Pki(data, ids)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "data")


# --------------------------------------------------------------------------- certificates


def test_certificates_name_the_device_and_chain_to_the_fleet_authority(pki: Pki) -> None:
    ca = brokertls.read_certificate(pki.data.authority / brokertls.CA_CERT)
    root = keystore.load_roots(pki.data.authority)
    ca_key = ca.public_key()
    assert isinstance(ca_key, ed25519.Ed25519PublicKey)
    raw = ca_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert [k.raw for k in root.keys.values()] == [raw], "the CA's key is the fleet root's"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name, device_id in pki.ids.items():
        files = pki.files(name)
        cert = brokertls.read_certificate(files.cert)
        cert.verify_directly_issued_by(ca)
        assert brokertls.common_name(cert) == device_id
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600, f"{files.key}: not 0600"
        assert files.ca.read_bytes() == ca.public_bytes(serialization.Encoding.PEM)
    server = brokertls.read_certificate(brokertls.server_files(pki.data).cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    hub = brokertls.read_certificate(brokertls.hub_files(pki.data, "hub-1").cert)
    assert brokertls.common_name(hub) == "efhub-hub-1"
    assert brokertls.hubs(pki.data) == {"hub-1": sorted([pki.ids["hubbed-1"], pki.ids["hubbed-2"]])}


def test_a_renewal_keeps_the_key_and_a_foreign_ca_is_refused(tmp_path: Path) -> None:
    p = make_pki(tmp_path / "data")
    files = p.files("alice")
    key_before, cert_before = files.key.read_bytes(), files.cert.read_bytes()
    authority = keystore.load_authority(p.data.authority, PW)
    brokertls.issue_device(p.data.device("alice"), p.data.authority, authority)
    assert files.key.read_bytes() == key_before and files.cert.read_bytes() != cert_before
    brokertls.check_files(files, p.ids["alice"])
    other = tmp_path / "other"
    keystore.init_authority(other, PW, keyfile.FAST)
    with pytest.raises(brokertls.BrokerTlsError, match="not this fleet authority's"):
        brokertls.fleet_ca(p.data.authority, keystore.load_authority(other, PW))
    files.key.chmod(0o644)
    with pytest.raises(brokertls.BrokerTlsError, match="too open"):
        brokertls.check_files(files, p.ids["alice"])


def test_a_remote_device_gets_its_certificate_without_its_key_travelling(tmp_path: Path) -> None:
    p = make_pki(tmp_path / "data")
    device = tmp_path / "pi" / "fridge"  # another machine: only device.key and device.cert
    device.mkdir(parents=True)
    for f in (keystore.DEVICE_KEY, keystore.DEVICE_CERT):
        (device / f).write_bytes((p.data.device("carol") / f).read_bytes())
        (device / f).chmod(0o600)
    device_id, csr = brokertls.make_request(device)
    assert device_id == p.ids["carol"] and csr == device / brokertls.CLIENT_REQUEST
    assert b"PRIVATE" not in csr.read_bytes()
    out = tmp_path / "authority-side" / "fridge.pem"
    authority = keystore.load_authority(p.data.authority, PW)
    _, ca = brokertls.issue_from_request(csr, out, p.data.authority, authority)
    assert brokertls.install(device, out, ca) == device_id
    brokertls.check_files(brokertls.device_files(device), device_id)
    # a certificate for another key (alice's request) is refused by the device
    _, alice_csr = brokertls.make_request(p.data.device("alice"))
    wrong = tmp_path / "wrong.pem"
    brokertls.issue_from_request(alice_csr, wrong, p.data.authority, authority)
    with pytest.raises(brokertls.BrokerTlsError, match="names"):
        brokertls.install(device, wrong, ca)


def test_the_acl_binds_inbox_and_presence_to_the_identity_and_hubs_to_their_devices() -> None:
    a, b = "ef" + "a" * 24, "ef" + "b" * 24
    lines = mosquitto_acl(T, {"h1": [b, a]}).splitlines()
    assert "pattern read edgefleet/v1/dev/%u/inbox" in lines
    assert "pattern readwrite edgefleet/v1/dev/%u/presence" in lines
    assert "pattern write edgefleet/v1/dev/+/inbox" in lines
    assert not any(x.startswith("pattern") and "+/presence" in x and "write" in x for x in lines)
    hub = lines[lines.index("user efhub-h1") + 1 :]
    assert hub == [
        "topic readwrite edgefleet/v1/hub/h1/presence",
        f"topic read edgefleet/v1/dev/{a}/inbox",
        f"topic readwrite edgefleet/v1/dev/{a}/presence",
        f"topic read edgefleet/v1/dev/{b}/inbox",
        f"topic readwrite edgefleet/v1/dev/{b}/presence",
    ]
    tls = MosquittoTls(Path("/c"), Path("/s"), Path("/k"), acl_file=Path("/acl"))
    conf = MosquittoBroker(tls=tls)._config(8883).splitlines()
    for line in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "acl_file /acl",
    ):
        assert line in conf
    assert "allow_anonymous true" not in conf


def test_keys_broker_cert_and_broker_config_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = make_pki(tmp_path / "data")
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", PW.decode())
    d = str(p.data.root)
    assert main(["keys", "broker-cert", "--data", d, "--all"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "device",
        "identity",
        "(CN)",
        "certificate",
        "key",
        "(0600)",
    ]
    assert all(p.ids[n] in out for n in NAMES)
    assert main(["keys", "broker-cert", "--data", d, "--server", "--host", "mqtt.example"]) == 0
    capsys.readouterr()
    assert main(["broker", "config", "--data", d, "--port", "18883"]) == 0
    conf = (p.data.root / "broker" / "mosquitto.conf").read_text().splitlines()
    assert "listener 18883" in conf and "require_certificate true" in conf
    assert "allow_anonymous false" in conf
    acl = (p.data.root / "broker" / "acl").read_text()
    assert "user efhub-hub-1\ntopic readwrite edgefleet/v1/hub/hub-1/presence\n" in acl
    for argv, message in (
        (["keys", "broker-cert", "--data", d], "expected exactly one of"),
        (
            ["keys", "broker-cert", "--data", d, "--device", "nobody"],
            "--device nobody: not enrolled",
        ),
        (["keys", "broker-cert", "--data", d, "--all", "--valid-days", "0"], "--valid-days"),
        (["keys", "broker-cert", "--data", d, "--hub", "EF!", "--all"], "hub id"),
        (["broker", "config", "--data", str(tmp_path / "empty")], "keys broker-cert --data"),
        (["broker", "config", "--data", d, "--port", "0"], "--port"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, (argv, err)


def test_mosquitto_tls_is_not_a_spec_for_a_bare_broker() -> None:
    with pytest.raises(Exception, match="only `edgefleet run` starts it"):
        broker_from_spec("mosquitto-tls")


# --------------------------------------------------------------------------- a real Mosquitto


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path) -> Iterator[MosquittoBroker]:
    require_mosquitto()
    acl = tmp_path / "acl"
    acl.write_text(mosquitto_acl(T, brokertls.hubs(pki.data)))
    files = brokertls.server_files(pki.data)
    broker = MosquittoBroker(
        workdir=tmp_path / "mosquitto",
        tls=MosquittoTls(files.ca, files.cert, files.key, acl_file=acl),
    )
    broker.start_sync()
    try:
        yield broker
    finally:
        broker.stop_sync()


def endpoint(broker: MosquittoBroker, files: brokertls.TlsFiles) -> Endpoint:
    return replace(broker.endpoint, tls=client_tls(files.ca, files.cert, files.key))


class Inbox:
    """What an MqttClient received, with a wait for one message that must arrive."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.event = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.got.append((topic, payload))
        self.event.set()

    async def until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including (topic, payload), which must come."""
        async with asyncio.timeout(WAIT_S):
            while (topic, payload) not in self.got:
                self.event.clear()
                await self.event.wait()
        return self.got[: self.got.index((topic, payload)) + 1]


def client(e: Endpoint, client_id: str, inbox: Inbox, will: str) -> MqttClient:
    return MqttClient(e, client_id, will_topic=will, on_message=inbox)


@pytest.mark.mosquitto
def test_a_client_without_an_enrolled_certificate_cannot_connect(
    pki: Pki, tls_broker: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    """No certificate, or a certificate naming a real device id but signed by another CA: the
    TLS handshake fails, so nothing is published or subscribed; the enrolled device connects."""
    alice = pki.ids["alice"]
    ca = pki.files("alice").ca
    fake_ca_key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet fleet CA forged")])
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, alice)]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(fake_ca_key, None)
    )
    (tmp_path / "forged.pem").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "forged.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(tmp_path / "forged.key", 0o600)
    bare = ssl.create_default_context(cafile=str(ca))
    attempts = {
        "no certificate": replace(tls_broker.endpoint, tls=bare),
        "no TLS at all": tls_broker.endpoint,
        "certificate of another CA": replace(
            tls_broker.endpoint,
            tls=client_tls(ca, tmp_path / "forged.pem", tmp_path / "forged.key"),
        ),
    }
    opts = MqttOptions(connect_timeout_s=3)

    async def run() -> None:
        watcher_inbox = Inbox()
        async with client(
            endpoint(tls_broker, pki.files("bob")),
            pki.ids["bob"],
            watcher_inbox,
            T.presence(pki.ids["bob"]),
        ) as watcher:
            await watcher.subscribe([T.presence(alice), T.inbox(pki.ids["bob"])])
            for what, e in attempts.items():
                stranger = MqttTransport(e, alice, options=opts)
                with pytest.raises(TransportError):
                    await stranger.connect()
                await stranger.close()
                print(f"{what}: refused")
            # the real alice connects; the watcher sees her presence only now
            async with MqttTransport(endpoint(tls_broker, pki.files("alice")), alice) as a:
                await a.send(pki.ids["bob"], b"from the real alice")
                seen = await watcher_inbox.until(T.inbox(pki.ids["bob"]), b"from the real alice")
            assert seen[0] == (T.presence(alice), PRESENCE_ONLINE), seen

    asyncio.run(run())
    figure(
        "client without an enrolled broker certificate",
        f"connected = 0 of {len(attempts)} attempts (no certificate, no TLS, a device id "
        "certified by another CA); the enrolled device connects",
    )


@pytest.mark.mosquitto
def test_a_device_cannot_speak_for_another_nor_read_its_inbox(
    pki: Pki, tls_broker: MosquittoBroker, figure: FigureRecorder
) -> None:
    """Alice, enrolled, acts as a hostile client: she publishes "offline" (retained) on Bob's
    presence, subscribes to Bob's inbox and connects with Bob's client id. Bob stays online at
    a watcher entitled to his presence and after a fresh subscribe; what Carol sends Bob reaches
    Bob and never Alice; Bob's connection is not taken over."""
    alice, bob, carol = (pki.ids[n] for n in ("alice", "bob", "carol"))

    async def run() -> None:
        watch, hostile, bob_got = Inbox(), Inbox(), Inbox()
        async with (
            client(endpoint(tls_broker, pki.files("carol")), carol, watch, T.presence(carol)) as w,
            client(endpoint(tls_broker, pki.files("bob")), bob, bob_got, T.presence(bob)) as b,
        ):
            await b.publish(T.presence(bob), PRESENCE_ONLINE, retain=True)
            await b.subscribe([T.inbox(bob)])
            await w.subscribe([T.presence(bob), T.presence(alice)])
            await watch.until(T.presence(bob), PRESENCE_ONLINE)
            alice_e = endpoint(tls_broker, pki.files("alice"))
            async with client(alice_e, alice, hostile, T.presence(alice)) as a:
                await a.subscribe([T.inbox(bob), T.inbox(alice)])
                # 1. spoofed presence, then a barrier on her own presence (allowed)
                await a.publish(T.presence(bob), PRESENCE_OFFLINE, retain=True)
                await a.publish(T.presence(alice), b"barrier-1", retain=True)
                seen = await watch.until(T.presence(alice), b"barrier-1")
                assert (T.presence(bob), PRESENCE_OFFLINE) not in seen, seen
                # 2. Carol writes to Bob's inbox, then to Alice's (the barrier)
                await w.publish(T.inbox(bob), b"for bob only")
                await w.publish(T.inbox(alice), b"barrier-2")
                got = await hostile.until(T.inbox(alice), b"barrier-2")
                assert (T.inbox(bob), b"for bob only") not in got, got
                await bob_got.until(T.inbox(bob), b"for bob only")
            # 3. Alice's certificate asking for Bob's client id: the broker gives her her own
            async with client(alice_e, bob, Inbox(), T.presence(alice)) as a2:
                await a2.publish(T.presence(alice), b"barrier-3", retain=True)
                await watch.until(T.presence(alice), b"barrier-3")
            await w.publish(T.inbox(bob), b"bob still here")
            await bob_got.until(T.inbox(bob), b"bob still here")
            assert b.connected and b.reconnects == 0, "Bob's session was taken over"
            assert [m for m in watch.got if m[0] == T.presence(bob)] == [
                (T.presence(bob), PRESENCE_ONLINE)
            ], watch.got

        # a fresh subscriber gets Bob's own retained presence, not the spoof
        fresh = Inbox()
        async with client(
            endpoint(tls_broker, pki.files("carol")), carol, fresh, T.presence(carol)
        ) as f:
            await f.subscribe([T.presence(bob)])
            retained = await fresh.until(T.presence(bob), PRESENCE_OFFLINE)  # Bob's clean close
            assert retained == [(T.presence(bob), PRESENCE_OFFLINE)]

    asyncio.run(run())
    figure(
        "enrolled device speaking for another at the broker",
        "spoofed presence delivered = 0 of 1, foreign inbox read = 0 of 1, session takeovers "
        "= 0 of 1 (each checked behind a barrier message that arrived)",
    )


@pytest.mark.mosquitto
def test_a_hub_carries_its_own_devices_only(
    pki: Pki, tls_broker: MosquittoBroker, figure: FigureRecorder
) -> None:
    """The hub's rule set names its devices: their inboxes reach it, another device's inbox
    does not (a hub that attaches alice gets nothing for her), and it cannot set her presence."""
    alice, carol = pki.ids["alice"], pki.ids["carol"]
    h1, h2 = pki.ids["hubbed-1"], pki.ids["hubbed-2"]

    async def run() -> None:
        watch = Inbox()
        hub_e = endpoint(tls_broker, brokertls.hub_files(pki.data, "hub-1"))
        async with (
            client(endpoint(tls_broker, pki.files("carol")), carol, watch, T.presence(carol)) as w,
            MqttHub(hub_e, hub_id="hub-1") as hub,
        ):
            await w.subscribe([T.presence(h1), T.presence(alice), T.inbox(carol)])
            v1 = await hub.attach(h1, ["s"])
            v2 = await hub.attach(h2, ["s"])
            intruder = await hub.attach(alice, ["s"])  # not in its rule set
            await v1.send(carol, b"barrier")  # after the hub announced alice online
            seen = await watch.until(T.inbox(carol), b"barrier")
            assert (T.presence(h1), b"online:hub-1") in seen, seen
            assert not [m for m in seen if m[0] == T.presence(alice)], seen
            await w.publish(T.inbox(alice), b"for alice")
            await w.publish(T.inbox(h2), b"for hubbed-2")
            await w.publish(T.inbox(h1), b"for hubbed-1")
            assert (await asyncio.wait_for(v2.receive(), WAIT_S)).payload == b"for hubbed-2"
            assert (await asyncio.wait_for(v1.receive(), WAIT_S)).payload == b"for hubbed-1"
            assert intruder.pending() == 0, "a hub received a device's inbox it does not carry"

    asyncio.run(run())
    figure(
        "shared connection beyond its devices at the broker",
        "foreign inbox delivered = 0 of 1, foreign presence announced = 0 of 1; own devices' "
        "inboxes delivered 2 of 2",
    )


# --------------------------------------------------------------------------- a fleet over it


@pytest.mark.mosquitto
@pytest.mark.parametrize("shared", [False, True], ids=["own-connections", "hub"])
def test_a_fleet_converges_over_its_own_tls_broker(
    tmp_path: Path, shared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mosquitto()
    if shared:  # the sample fleet is small: make the runner share one connection
        monkeypatch.setattr("agent.fleet.runner.SHARED_CONNECTION_ABOVE", 0)
    cfg = load_fleet(SAMPLE_FLEET)
    data = tmp_path / "data"
    result = run_fleet(
        cfg,
        data=data,
        broker="mosquitto-tls",
        for_ms=2 * HOUR_MS,
        view=False,
        gossip=FAST_GOSSIP,
        settle_s=30.0,
    )
    what = f"mosquitto-tls ({'hub' if shared else 'a connection per device'}), 2 h"
    sent = sum(a.stats.sent for a in result.devices.values())
    assert sent > 0, f"{what}: nothing was published"
    assert result.converged, f"{what}: not converged within 30 s of settling"
    missing = missing_heads(cfg, data)
    assert missing == [], f"{what}: missing heads = {len(missing)} of {len(domain_pairs(cfg))}"
    assert verify(data).ok
    conf = (data / "broker" / "mosquitto.conf").read_text().splitlines()
    assert "require_certificate true" in conf and "allow_anonymous false" in conf
    for dev in cfg.devices:
        assert (data / "devices" / dev.name / brokertls.CLIENT_CERT).is_file()
    acl = (data / "broker" / "acl").read_text()
    assert ("user efhub-local" in acl) == shared
    assert (data / "broker" / "hubs" / "local" / "hub.pem").is_file() == shared
    print(f"{what}: {len(cfg.devices)} devices, {sent} messages sent, converged")


@pytest.mark.mosquitto
def test_the_written_config_runs_a_broker_that_remote_devices_join_by_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`broker config` as a deployment uses it: Mosquitto started on the written file alone; two
    devices connect with `--broker mqtts://...?ca=&cert=&key=` (their own files) and talk; a
    third device's certificate cannot read their inboxes."""
    require_mosquitto()
    p = make_pki(tmp_path / "data")
    port = _free_port()
    argv = ["broker", "config", "--data", str(p.data.root), "--port", str(port)]
    argv += ["--bind", "127.0.0.1"] + (["--user", "root"] if os.geteuid() == 0 else [])
    assert main(argv) == 0
    conf = p.data.root / "broker" / "mosquitto.conf"
    assert f"run it       mosquitto -c {conf}" in capsys.readouterr().out
    proc = subprocess.Popen(
        [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    log: list[str] = []
    running = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            log.append(raw.decode(errors="replace").rstrip())
            if log[-1].endswith(" running"):
                running.set()
        running.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert running.wait(WAIT_S) and proc.poll() is None, log

        def url(name: str) -> str:
            f = p.files(name)
            return f"mqtts://127.0.0.1:{port}?ca={f.ca}&cert={f.cert}&key={f.key}"

        alice, bob, carol = (p.ids[n] for n in ("alice", "bob", "carol"))

        async def run() -> None:
            eve = Inbox()
            async with (
                MqttTransport(ExternalBroker(url("alice")).endpoint, alice) as a,
                MqttTransport(ExternalBroker(url("bob")).endpoint, bob) as b,
                client(ExternalBroker(url("carol")).endpoint, carol, eve, T.presence(carol)) as c,
            ):
                await c.subscribe([T.inbox(bob), T.inbox(carol)])
                await a.send(bob, b"over the deployed broker")
                await a.send(carol, b"barrier")
                assert (await asyncio.wait_for(b.receive(), WAIT_S)).payload == (
                    b"over the deployed broker"
                )
                got = await eve.until(T.inbox(carol), b"barrier")
                assert [t for t, _ in got] == [T.inbox(carol)], got

        asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        assert proc.stderr is not None
        proc.stderr.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_an_mqtts_url_without_a_certificate_takes_each_devices_own(tmp_path: Path) -> None:
    p = make_pki(tmp_path / "data")
    devices = {p.ids[n]: p.data.device(n) for n in ("alice", "bob")}
    own = brokertls.url_device_files("mqtts://broker.example:8883", devices)
    assert own == {p.ids[n]: p.files(n) for n in ("alice", "bob")}
    ca = tmp_path / "public-ca.pem"
    by_url = brokertls.url_device_files(f"mqtts://broker.example?ca={ca}", devices)
    assert {f.ca for f in by_url.values()} == {ca}
    assert brokertls.url_device_files("mqtt://broker.example", devices) == {}
    named = f"mqtts://h?cert={p.files('alice').cert}&key={p.files('alice').key}"
    assert brokertls.url_device_files(named, devices) == {}
    p.files("bob").cert.unlink()
    with pytest.raises(brokertls.BrokerTlsError, match="no broker certificate for this device"):
        brokertls.url_device_files("mqtts://broker.example", devices)
    p.files("alice").cert.unlink()
    assert brokertls.url_device_files("mqtts://broker.example", devices) == {}


def test_keys_show_describes_broker_files_and_checks_them_against_the_fleet_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = make_pki(tmp_path / "data")
    other = tmp_path / "other"
    keystore.init_authority(other, PW, keyfile.FAST)
    capsys.readouterr()
    cert, root = str(p.files("alice").cert), str(p.data.authority)
    assert main(["keys", "show", cert, "--root", root, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["subject"] == p.ids["alice"] and info["usage"] == "clientAuth"
    assert info["status"] == "signed by the fleet root's key"
    assert main(["keys", "show", cert, "--root", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "NOT signed by the fleet root's key"
    ca = str(p.data.authority / brokertls.CA_CERT)
    assert main(["keys", "show", ca, "--root", root]) == 0
    assert "signed by the fleet root's key (the fleet CA)" in capsys.readouterr().out
    assert main(["keys", "show", str(p.files("alice").key)]) == 0
    assert "unencrypted" in capsys.readouterr().out
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert main(["keys", "show", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a PEM X.509 certificate" in err, err
