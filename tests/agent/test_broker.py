"""Brokers: embedded amqtt, a Mosquitto child process, external brokers by URL (with TLS)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import socket
import ssl
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.transport.brokers import (
    BrokerError,
    EmbeddedBroker,
    ExternalBroker,
    MosquittoBroker,
    MosquittoTls,
    broker_from_spec,
    mosquitto_limits,
    parse_broker_url,
)
from agent.transport.errors import TransportError
from agent.transport.mqtt import MqttOptions, MqttTransport
from ledger.identity import device_id_for
from tests.agent.conftest import require_mosquitto

A, B = device_id_for(b"\x01" * 32), device_id_for(b"\x02" * 32)
CONNECT = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05probe"  # MQTT 3.1.1, clean, id "probe"
CONNACK_OK = b"\x20\x02\x00\x00"


def handshake(port: int) -> bytes:
    """Send a raw CONNECT and return the first four bytes the broker answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(CONNECT)
        answer = b""
        while len(answer) < 4:
            chunk = s.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
        return answer


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def handshake_async(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CONNECT)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readexactly(4), 5)
    writer.close()
    await writer.wait_closed()
    return answer


# --------------------------------------------------------------------------- embedded


def test_embedded_broker_serves_on_a_free_port_quietly_and_stops_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> int:
        broker = EmbeddedBroker()
        with pytest.raises(BrokerError, match="not started"):
            _ = broker.endpoint
        async with broker:
            port = broker.endpoint.port
            assert broker.endpoint.host == "127.0.0.1" and port > 0
            assert broker.url == f"mqtt://127.0.0.1:{port}"
            assert await handshake_async(port) == CONNACK_OK
            async with (
                MqttTransport(broker.endpoint, A) as a,
                MqttTransport(broker.endpoint, B) as b,
            ):
                await a.send(B, b"via amqtt")
                got = await asyncio.wait_for(b.receive(), 5)
                assert got.payload == b"via amqtt"
        return port

    port = asyncio.run(main())
    assert refused(port)
    noisy = [r for r in caplog.records if r.name.startswith(("amqtt", "transitions"))]
    assert noisy == []


def test_embedded_broker_reports_a_taken_port() -> None:
    async def main() -> None:
        async with EmbeddedBroker() as first:
            with pytest.raises(BrokerError, match="could not listen"):
                await EmbeddedBroker(port=first.endpoint.port).start()

    asyncio.run(main())


# --------------------------------------------------------------------------- Mosquitto


@pytest.mark.mosquitto
def test_mosquitto_fixture_runs_a_generated_config_and_restarts_on_the_same_port(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    port = mosquitto.port
    assert port is not None and mosquitto.running
    conf = mosquitto.config_path
    assert conf is not None and conf.parent == tmp_path / "mosquitto"
    assert f"listener {port} 127.0.0.1" in conf.read_text().splitlines()
    assert handshake(port) == CONNACK_OK
    mosquitto.kill()
    assert not mosquitto.running and refused(port)
    mosquitto.start_sync()
    assert mosquitto.port == port and handshake(port) == CONNACK_OK


@pytest.mark.mosquitto
def test_mosquitto_broker_stops_and_removes_its_temporary_directory() -> None:
    require_mosquitto()

    async def main() -> None:
        broker = broker_from_spec("mosquitto")
        assert isinstance(broker, MosquittoBroker)
        async with broker:
            port, pid, conf = broker.endpoint.port, broker.pid, broker.config_path
            assert pid is not None and conf is not None and conf.is_file()
            assert await handshake_async(port) == CONNACK_OK
        assert not broker.running
        assert not conf.parent.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert refused(port)

    asyncio.run(main())


def test_missing_mosquitto_binary_is_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-mosquitto")
    with pytest.raises(BrokerError, match=f"binary '{missing}' was not found"):
        MosquittoBroker(binary=missing).start_sync()


def fake_mosquitto(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-mosquitto"
    path.write_text(f"#!{sys.executable}\nimport signal, sys, time\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.subprocess
def test_a_broker_that_ignores_sigterm_is_killed_after_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    binary = fake_mosquitto(
        tmp_path,
        (
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('1: mosquitto version 0 running', file=sys.stderr, flush=True)\n"
            "signal.pause()"
        ),
    )
    broker = MosquittoBroker(binary=binary, workdir=tmp_path / "w", stop_timeout_s=0.3)
    broker.start_sync()
    pid = broker.pid
    assert pid is not None and broker.running
    broker.stop_sync()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert any("ignored SIGTERM" in r.getMessage() for r in caplog.records)


@pytest.mark.subprocess
def test_a_broker_that_fails_to_start_reports_its_log(tmp_path: Path) -> None:
    binary = fake_mosquitto(
        tmp_path,
        (
            "print('1: Error: Unable to open pwfile \"/nope\".', file=sys.stderr, flush=True)\n"
            "sys.exit(1)"
        ),
    )
    broker = MosquittoBroker(binary=binary, workdir=tmp_path / "w")
    with pytest.raises(BrokerError, match=r"did not start.*Unable to open pwfile"):
        broker.start_sync()
    assert not broker.running


# --------------------------------------------------------------------------- URLs and TLS


def test_plain_urls_give_host_port_and_credentials() -> None:
    assert parse_broker_url("mqtt://broker.example").port == 1883
    e = parse_broker_url("mqtt://fleet%40site:p%3Ass@10.0.0.5:1999")
    assert (e.host, e.port, e.tls, e.username, e.password) == (
        "10.0.0.5",
        1999,
        None,
        "fleet@site",
        "p:ss",
    )
    assert parse_broker_url("mqtt://[::1]:1884").url == "mqtt://[::1]:1884"
    assert ExternalBroker("mqtt://h:1").endpoint.port == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "scheme mqtt:// or mqtts://"),
        ("h:1883", "scheme"),
        ("mqtt://:1883", "host name"),
        ("mqtt://h:99999", "out of range"),
        ("mqtt://h/topic", "no path"),
        ("mqtt://h?ca=x", "need mqtts://"),
        ("mqtts://h?cafile=x", "unknown option 'cafile'"),
        ("mqtts://h?ca=/no/such.pem", "ca file '/no/such.pem' does not exist"),
        ("mqtts://h?ca=a&ca=b", "given 2 times"),
    ],
)
def test_bad_urls_are_rejected_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(BrokerError, match=message):
        parse_broker_url(url)


def test_broker_from_spec_picks_the_kind() -> None:
    assert isinstance(broker_from_spec("embedded"), EmbeddedBroker)
    assert isinstance(broker_from_spec("mqtt://h:2"), ExternalBroker)
    with pytest.raises(BrokerError, match="'embedded', 'mosquitto' or an mqtt://"):
        broker_from_spec("rabbit")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def cert(
        cn: str,
        key: ec.EllipticCurvePrivateKey,
        *,
        ca: bool,
        eku: x509.ObjectIdentifier | None = None,
        san: x509.GeneralName | None = None,
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name("edgefleet test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
        if eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName([san]), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    files: dict[str, Path] = {}

    def write(name: str, c: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        files[name] = d / f"{name}.pem"
        files[name].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            files[name + "-key"] = d / f"{name}-key.pem"
            files[name + "-key"].write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    write("ca", cert("edgefleet test CA", ca_key, ca=True), None)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    write(
        "server",
        cert(
            "broker",
            server_key,
            ca=False,
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
            san=x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ),
        server_key,
    )
    write("client", cert(A, client_key, ca=False, eku=ExtendedKeyUsageOID.CLIENT_AUTH), client_key)
    return files


def test_mqtts_url_builds_a_verifying_client_context(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    url = f"mqtts://127.0.0.1?ca={pki['ca']}&cert={pki['client']}&key={pki['client-key']}"
    e = parse_broker_url(url)
    assert e.port == 8883 and e.url == "mqtts://127.0.0.1:8883"
    assert e.tls is not None
    assert e.tls.verify_mode == ssl.CERT_REQUIRED and e.tls.check_hostname
    explicit = parse_broker_url(
        "mqtts://127.0.0.1:8884", ca=pki["ca"], cert=pki["client"], key=pki["client-key"]
    )
    assert explicit.port == 8884 and explicit.tls is not None
    with pytest.raises(BrokerError, match="cannot load TLS files"):
        parse_broker_url("mqtts://h", ca=pki["ca"], cert=pki["ca"])  # a cert without its key
    with pytest.raises(BrokerError, match="needs its certificate"):
        parse_broker_url(f"mqtts://h?key={pki['client-key']}")


@pytest.mark.mosquitto
def test_tls_with_client_certificates_against_mosquitto(tmp_path: Path) -> None:
    require_mosquitto()
    pki = make_pki(tmp_path)
    tls = MosquittoTls(cafile=pki["ca"], certfile=pki["server"], keyfile=pki["server-key"])
    broker = MosquittoBroker(
        workdir=tmp_path / "mosquitto", tls=tls, extra_config=["tls_version tlsv1.2"]
    )
    broker.start_sync()
    try:
        port = broker.port
        url = (
            f"mqtts://127.0.0.1:{port}?ca={pki['ca']}&cert={pki['client']}&key={pki['client-key']}"
        )

        async def main() -> None:
            endpoint = ExternalBroker(url).endpoint
            async with MqttTransport(endpoint, A) as a, MqttTransport(endpoint, B) as b:
                await a.send(B, b"over TLS")
                assert (await asyncio.wait_for(b.receive(), 5)).payload == b"over TLS"
            anonymous = ExternalBroker(f"mqtts://127.0.0.1:{port}?ca={pki['ca']}").endpoint
            stranger = MqttTransport(anonymous, A, options=MqttOptions(connect_timeout_s=1))
            with pytest.raises(TransportError, match=f"mqtts://127.0.0.1:{port}"):
                await stranger.connect()

        asyncio.run(main())
    finally:
        broker.stop_sync()


def test_the_generated_mosquitto_limits_grow_with_the_fleet() -> None:
    assert (
        mosquitto_limits(0)
        == mosquitto_limits(3)
        == [
            "max_queued_messages 1000",  # Mosquitto's own default is the floor
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
        ]
    )
    assert mosquitto_limits(124)[0] == "max_queued_messages 31744"
    assert mosquitto_limits(5000)[0] == "max_queued_messages 1280000"
    with pytest.raises(BrokerError, match="device count"):
        mosquitto_limits(-1)
    broker = broker_from_spec("mosquitto", devices=124)
    assert isinstance(broker, MosquittoBroker)
    lines = broker._config(1883).splitlines()
    assert all(line in lines for line in mosquitto_limits(124))


@pytest.mark.mosquitto
def test_mosquitto_dropping_a_slow_clients_messages_is_a_warning_and_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber that never acknowledges: 1 in flight, 5 queued, the rest dropped. Mosquitto
    says so once in its log; the fleet's log must say so too, not only the broker's stderr."""
    require_mosquitto()
    caplog.set_level(logging.WARNING, logger="agent.transport.brokers")
    broker = MosquittoBroker(
        workdir=tmp_path / "mosquitto",
        extra_config=["max_inflight_messages 1", "max_queued_messages 5"],
    )
    broker.start_sync()
    try:
        port = broker.port
        assert port is not None
        topic = b"slow/t"
        subscribe = b"\x82" + bytes([2 + 2 + len(topic) + 1]) + b"\x00\x01"
        subscribe += len(topic).to_bytes(2, "big") + topic + b"\x01"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(CONNECT + subscribe)
            assert slow.recv(4) == CONNACK_OK
            assert slow.recv(5)[:1] == b"\x90"  # SUBACK; from now on this client reads nothing

            async def publish() -> None:
                async with MqttTransport(broker.endpoint, A) as a:
                    for i in range(50):
                        await a._link.publish("slow/t", i.to_bytes(2, "big"))

            asyncio.run(publish())
            for _ in range(100):  # the drainer thread reads mosquitto's log line by line
                if broker.dropping_clients:
                    break
                asyncio.run(asyncio.sleep(0.05))
        assert broker.dropping_clients >= 1
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("drops QoS 1 messages to a client that cannot keep up" in w for w in warned)
        assert any("max_queued_messages" in w for w in warned)
    finally:
        broker.stop_sync()
