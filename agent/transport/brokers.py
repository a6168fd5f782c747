"""MQTT brokers the fleet runs against: embedded (amqtt), a local Mosquitto, or one given by URL.

- ``EmbeddedBroker``: amqtt started in this process's event loop on a free loopback port; quiet
  logging; clean shutdown. The default: nothing to install. It is slow (~4.5k QoS 1 msg/s on a
  core) and matches every message against every filter: for small fleets.
- ``MosquittoBroker``: the ``mosquitto`` binary as a child process, on a free loopback port (kept
  across restarts), with a generated config in a temporary (or given) directory; stopped with
  SIGTERM, then SIGKILL after a timeout. Optional TLS listener with client certificates. Its
  per-client queue limits are sized to the fleet (``mosquitto_limits``), and the notice it logs
  when it drops a client's messages becomes a warning here and a count (``dropping_clients``).
- ``ExternalBroker``: any broker by URL: ``mqtt://[user:pass@]host[:1883]`` or
  ``mqtts://host[:8883]?ca=...&cert=...&key=...`` (or the same options passed explicitly).

``broker_from_spec("embedded" | "mosquitto" | URL)`` picks one. Every broker is an async context
manager and, once started, gives clients an ``Endpoint`` (host, port, TLS context, credentials).
This is the only module that imports amqtt.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import parse_qs, unquote, urlsplit

from agent.errors import AgentError
from agent.transport.endpoint import Endpoint
from agent.transport.topics import Topics, validate_hub_id

log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
_QUIET_LOGGERS = ("amqtt", "transitions")
_TLS_OPTIONS = ("ca", "cert", "key")
# `--broker mosquitto-tls`: a Mosquitto with client certificates and identity ACLs, which the
# fleet runner sets up (agent/fleet/brokertls.py issues the certificates); not a spec here.
MOSQUITTO_TLS = "mosquitto-tls"


class BrokerError(AgentError, code="broker"):
    """A broker could not be found, started, stopped, or described (bad URL or files)."""


class Broker(abc.ABC):
    """A broker the fleet's clients connect to. ``endpoint`` is valid once started."""

    kind: str = "broker"
    note: str = ""  # shown by the live view, e.g. capacity warnings

    @property
    @abc.abstractmethod
    def endpoint(self) -> Endpoint: ...

    @property
    def url(self) -> str:
        return self.endpoint.url

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- embedded (amqtt)


def _closing_broker_type() -> type:
    from amqtt.broker import Broker as AmqttBroker

    class ClosingBroker(AmqttBroker):  # type: ignore[misc]
        """amqtt 0.12 can end a client's session without closing its server-side stream (an
        unclosed transport, a ResourceWarning at garbage collection): close it when the
        connection's handler returns."""

        async def stream_connected(
            self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
        ) -> None:
            try:
                await super().stream_connected(reader, writer, listener_name)
            finally:
                if not writer.is_closing():
                    writer.close()

    return ClosingBroker


class EmbeddedBroker(Broker):
    """amqtt in this process's event loop, on ``host``:``port`` (0: a free port)."""

    kind = "embedded"
    note = (
        "embedded amqtt broker: about 4.5k QoS 1 messages/s; use --broker mosquitto for "
        "fleets beyond a few hundred devices"
    )

    def __init__(
        self, host: str = _LOOPBACK, port: int = 0, *, log_level: int = logging.ERROR
    ) -> None:
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._broker: object | None = None
        self._port: int | None = None

    @property
    def endpoint(self) -> Endpoint:
        if self._port is None:
            raise BrokerError("the embedded broker is not started: no endpoint yet")
        return Endpoint(self.host, self._port)

    async def start(self) -> None:
        if self._broker is not None:
            return
        from amqtt.errors import BrokerError as AmqttBrokerError

        for name in _QUIET_LOGGERS:  # amqtt logs every connection at INFO; keep a user's choice
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(self._log_level)
        bind = f"[{self.host}]" if ":" in self.host else self.host
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{bind}:{self._requested_port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        broker = _closing_broker_type()(config)
        try:
            await broker.start()
        except AmqttBrokerError as exc:
            raise BrokerError(
                f"the embedded amqtt broker could not listen on {bind}:"
                f"{self._requested_port}: {exc}"
            ) from exc
        self._broker = broker
        self._port = self._bound_port(broker)

    @staticmethod
    def _bound_port(broker: object) -> int:
        # amqtt 0.12 keeps its asyncio servers in ``_servers``; with port 0 it is the only way
        # to learn which port the kernel chose.
        servers = getattr(broker, "_servers", {})
        server = servers.get("default")
        sockets = getattr(getattr(server, "instance", None), "sockets", None)
        if not sockets:
            raise BrokerError(
                "the embedded amqtt broker started but exposes no listening socket "
                "(amqtt version other than 0.12?)"
            )
        port: int = sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        from amqtt.broker import Broker as AmqttBroker

        assert isinstance(broker, AmqttBroker)
        await broker.shutdown()
        self._port = None


# --------------------------------------------------------------------------- Mosquitto


@dataclass(frozen=True, slots=True)
class MosquittoTls:
    """A TLS listener: server certificate and key, and the CA that signs client certificates.

    ``acl_file`` (with ``require_certificate``): the broker takes each client's certificate CN as
    its user name and client id, refuses clients without a certificate, and applies the ACL
    file (``mosquitto_acl``)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True
    acl_file: Path | None = None

    def lines(self) -> list[str]:
        """The listener's TLS directives (after its ``listener`` line)."""
        out = [
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]
        if self.acl_file is not None:
            if not self.require_certificate:
                raise BrokerError(
                    "mosquitto TLS: an ACL bound to identities needs client certificates"
                )
            out += [
                "use_identity_as_username true",
                # the client id becomes the CN too: nobody can take over another's session
                "use_username_as_clientid true",
                f"acl_file {self.acl_file}",
            ]
        return out

    @property
    def identities(self) -> bool:
        return self.acl_file is not None


AUTHORITY_CLIENT = "edgefleet-authority"  # the CN (and client id) of `keys revoke --broker`


def mosquitto_acl(topics: Topics, hubs: Mapping[str, Sequence[str]] | None = None) -> str:
    """A Mosquitto ``acl_file`` that binds every device's topics to its certificate's identity
    (``%u``: the CN, i.e. the device id, with ``use_identity_as_username``): a device reads only
    its own inbox, publishes only its own presence (and last will), may send to any inbox and
    use the domain and evidence topics, and read the revocation topics, which only the
    authority's tool (user ``edgefleet-authority``) may publish. ``hubs`` (hub id -> device
    ids): each shared connection, user ``efhub-<hub id>``, gets its own rule set for its presence
    and its devices' inboxes and presence (docs/PROTOCOL.md section 13.7)."""
    r = topics.root
    lines = [
        "# generated by edgefleet (agent/transport/brokers.py, mosquitto_acl)",
        "# every client: %u is its certificate's CN (use_identity_as_username)",
        f"pattern write {r}/dev/+/inbox",
        f"pattern read {r}/dev/%u/inbox",
        f"pattern readwrite {r}/dev/%u/presence",
        f"pattern read {r}/dev/+/presence",
        f"pattern read {r}/hub/+/presence",
        f"pattern readwrite {r}/evidence/+",
        f"pattern readwrite {r}/domain/+",
        f"pattern read {r}/revocation/+",
        "",
        "# the fleet authority's tool (edgefleet keys revoke --broker): the only publisher of",
        "# revocations",
        f"user {AUTHORITY_CLIENT}",
        f"topic write {r}/revocation/+",
        f"topic write {r}/authority/presence",
    ]
    for hub_id, devices in sorted((hubs or {}).items()):
        validate_hub_id(hub_id)
        lines += [
            "",
            f"# shared connection {hub_id}: {len(devices)} devices",
            f"user efhub-{hub_id}",
        ]
        lines.append(f"topic readwrite {r}/hub/{hub_id}/presence")
        for device_id in sorted(devices):
            lines.append(f"topic read {topics.inbox(device_id)}")
            lines.append(f"topic readwrite {topics.presence(device_id)}")
    return "\n".join(lines) + "\n"


# Mosquitto 2.0 keeps at most max_inflight_messages (default 20) QoS 1 messages unacknowledged
# per client and queues max_queued_messages (default 1000) more; beyond that it drops them, for
# that client, with one notice in its log. A client of a domain of N can be sent a burst of
# about N messages per kind at once (every member's ANNOUNCE of a new block, every member's
# SUMMARY when it comes up), and a shared connection (MqttHub) carries the bursts of all of its
# devices: the queue is sized per device behind the connection, never below Mosquitto's default.
QUEUED_PER_DEVICE = 256
MIN_QUEUED = 1000
MAX_INFLIGHT = 100  # the client acknowledges on receipt: a wider window only saves round trips


def mosquitto_limits(devices: int) -> list[str]:
    """The generated config's per-client limits for a fleet of ``devices`` (docs/PROTOCOL.md
    section 13.8): a queue of ``QUEUED_PER_DEVICE`` messages per device (Mosquitto's 1,000 at
    least), ``MAX_INFLIGHT`` in flight, and no Nagle delay on small QoS 1 packets."""
    if devices < 0:
        raise BrokerError(f"mosquitto limits: expected a device count >= 0, found {devices}")
    return [
        f"max_queued_messages {max(MIN_QUEUED, QUEUED_PER_DEVICE * devices)}",
        f"max_inflight_messages {MAX_INFLIGHT}",
        "set_tcp_nodelay true",
    ]


class MosquittoBroker(Broker):
    """The ``mosquitto`` binary as a child process, with a generated config.

    The port (chosen free when 0) is kept across ``kill()`` / ``start`` so that clients can
    reconnect to a restarted broker. ``start_sync`` / ``stop_sync`` / ``kill`` block; the async
    ``start`` / ``stop`` run them in a thread.
    """

    kind = "mosquitto"

    def __init__(
        self,
        *,
        binary: str = "mosquitto",
        host: str = _LOOPBACK,
        port: int = 0,
        workdir: Path | None = None,
        tls: MosquittoTls | None = None,
        extra_config: Sequence[str] = (),
        devices: int = 0,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        for line in extra_config:
            if "\n" in line or "\r" in line:
                raise BrokerError(f"mosquitto extra_config: one directive per line, found {line!r}")
        self.binary = binary
        self.host = host
        self._port = port or None
        self._port_given = bool(port)
        self._workdir = workdir
        self._dir: Path | None = None
        self._own_dir = False
        self.tls = tls
        self.extra_config = tuple(extra_config)
        self.limits = tuple(mosquitto_limits(devices))
        self.dropping_clients = 0  # times Mosquitto said it drops a client's outgoing messages
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._drainer: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=200)

    @property
    def endpoint(self) -> Endpoint:
        if self._port is None or not self.running:
            raise BrokerError("mosquitto is not running: no endpoint")
        return Endpoint(self.host, self._port)

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def config_path(self) -> Path | None:
        return self._dir / "mosquitto.conf" if self._dir is not None else None

    def log_tail(self) -> list[str]:
        return list(self._tail)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    def start_sync(self) -> None:
        if self.running:
            return
        binary = shutil.which(self.binary)
        if binary is None:
            raise BrokerError(
                f"the Mosquitto broker binary {self.binary!r} was not found (on "
                "PATH or as a path): install it (Debian: apt-get install "
                "mosquitto) or use --broker embedded"
            )
        if self._dir is None:
            if self._workdir is not None:
                self._workdir.mkdir(parents=True, exist_ok=True)
                self._dir = self._workdir
            else:
                self._dir = Path(tempfile.mkdtemp(prefix="edgefleet-mosquitto-"))
                self._own_dir = True
        for _ in range(1 if self._port is not None else 5):
            port = self._port or _free_port(self.host)
            if self._spawn(binary, port):
                self._port = port
                return
        raise BrokerError(
            f"mosquitto could not listen on {self.host}:{self._port or 'a free port'}"
            f"; its log ends: {' | '.join(self.log_tail()[-5:])}"
        )

    def _config(self, port: int) -> str:
        lines = [
            "# generated by edgefleet (agent/transport/brokers.py)",
            f"listener {port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
            "connection_messages true",
            *self.limits,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and loses our files
        if self.tls is not None:
            lines += self.tls.lines()
            if self.tls.identities:
                lines[lines.index("allow_anonymous true")] = "allow_anonymous false"
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def _spawn(self, binary: str, port: int) -> bool:
        """Start mosquitto on ``port``; True once it runs, False if the port was taken."""
        assert self._dir is not None
        conf = self._dir / "mosquitto.conf"
        conf.write_text(self._config(port))
        self._tail.clear()
        proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stderr is not None
        settled, running = threading.Event(), threading.Event()
        drainer = threading.Thread(
            target=self._drain,
            args=(proc.stderr, settled, running),
            name=f"mosquitto-{proc.pid}-log",
            daemon=True,
        )
        drainer.start()
        self._proc, self._drainer = proc, drainer
        settled.wait(self.start_timeout_s)
        if self.running and running.is_set():
            return True
        busy = any("Address already in use" in line for line in self.log_tail())
        self._terminate()
        if busy and not self._port_given:
            return False
        raise BrokerError(
            f"mosquitto ({binary}) did not start on {self.host}:{port} within "
            f"{self.start_timeout_s} s; its log ends: "
            f"{' | '.join(self.log_tail()[-5:]) or '(nothing)'}"
        )

    def _drain(self, stream: IO[bytes], settled: threading.Event, running: threading.Event) -> None:
        """Keep mosquitto's stderr flowing (a full pipe would block it) and remember its tail."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            if "Outgoing messages are being dropped" in line:
                self.dropping_clients += 1
                log.warning(
                    "mosquitto (pid %s) drops QoS 1 messages to a client that cannot keep up "
                    "(%d times so far; its limits: %s): %s",
                    self.pid,
                    self.dropping_clients,
                    ", ".join(self.limits[:2]),
                    line,
                )
            if line.endswith(" running"):  # "mosquitto version 2.0.11 running": listening
                running.set()
                settled.set()
        settled.set()

    def kill(self) -> None:
        """SIGKILL the broker (a crash); ``start_sync`` brings it back on the same port."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def stop_sync(self) -> None:
        self._terminate()
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._own_dir = False

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "mosquitto (pid %d) ignored SIGTERM for %s s: killing it",
                    proc.pid,
                    self.stop_timeout_s,
                )
                proc.kill()
        self._reap()

    def _reap(self) -> None:
        proc, drainer = self._proc, self._drainer
        if proc is None:
            return
        proc.wait()
        if drainer is not None:
            drainer.join(timeout=self.stop_timeout_s)
        if proc.stderr is not None:
            proc.stderr.close()
        self._proc = self._drainer = None


# --------------------------------------------------------------------------- external, by URL


class ExternalBroker(Broker):
    """A broker someone else runs, given by URL; start and stop do nothing."""

    kind = "external"

    def __init__(
        self,
        url: str,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> None:
        self._endpoint = parse_broker_url(url, ca=ca, cert=cert, key=key)

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def parse_broker_url(
    url: str,
    *,
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> Endpoint:
    """``mqtt://[user:pass@]host[:port]`` or ``mqtts://host[:port][?ca=&cert=&key=]``.

    Explicit ``ca`` / ``cert`` / ``key`` override the query string. TLS verifies the broker's
    certificate and host name against ``ca`` (or the system's CAs); ``cert`` (with ``key``, unless
    the key is in the same file) is the client certificate.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BrokerError(f"broker URL {url!r}: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BrokerError(
            f"broker URL {url!r}: expected the scheme mqtt:// or mqtts://, found "
            f"{parts.scheme + '://' if parts.scheme else 'none'}"
        )
    if not parts.hostname:
        raise BrokerError(f"broker URL {url!r}: expected a host name")
    if parts.path not in ("", "/") or parts.fragment:
        raise BrokerError(f"broker URL {url!r}: expected no path or fragment")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - set(_TLS_OPTIONS))
    if unknown:
        raise BrokerError(
            f"broker URL {url!r}: unknown option {unknown[0]!r} (expected "
            f"{', '.join(_TLS_OPTIONS)})"
        )
    given = {"ca": ca, "cert": cert, "key": key}
    files: dict[str, Path | None] = {}
    for name in _TLS_OPTIONS:
        values = query.get(name, [])
        if len(values) > 1:
            raise BrokerError(f"broker URL {url!r}: option {name!r} given {len(values)} times")
        value = given[name] if given[name] is not None else (values[0] if values else None)
        files[name] = Path(value) if value else None
    tls = None
    if parts.scheme == "mqtts":
        tls = _client_tls(url, files["ca"], files["cert"], files["key"])
    elif any(files.values()):
        raise BrokerError(f"broker URL {url!r}: ca, cert and key need mqtts://")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Endpoint(parts.hostname, port or (8883 if tls else 1883), tls, username, password)


def _client_tls(url: str, ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    for name, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path is not None and not path.is_file():
            raise BrokerError(f"broker URL {url!r}: {name} file {str(path)!r} does not exist")
    if key is not None and cert is None:
        raise BrokerError(f"broker URL {url!r}: a client key needs its certificate (cert=)")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None
        )
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise BrokerError(f"broker URL {url!r}: cannot load TLS files: {exc}") from exc
    return context


def client_tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context that verifies the broker against ``ca`` (and its host name) and
    presents the client certificate ``cert`` with its key ``key``."""
    for path in (ca, cert, key):
        if not path.is_file():
            raise BrokerError(f"{path}: TLS file does not exist")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise BrokerError(
            f"{cert}: cannot load the TLS files ({ca}, {cert}, {key}): {exc}"
        ) from exc
    return context


def broker_from_spec(spec: str, *, workdir: Path | None = None, devices: int = 0) -> Broker:
    """``"embedded"``, ``"mosquitto"`` or a broker URL (see ``parse_broker_url``).

    ``devices``: the fleet's size, to which a started Mosquitto's queue limits are sized.
    """
    if spec == "embedded":
        return EmbeddedBroker()
    if spec == "mosquitto":
        return MosquittoBroker(workdir=workdir, devices=devices)
    if spec.startswith(("mqtt://", "mqtts://")):
        return ExternalBroker(spec)
    if spec == MOSQUITTO_TLS:
        raise BrokerError(
            "broker: mosquitto-tls needs the fleet's certificates: only `edgefleet run` starts "
            "it (agent/fleet/brokertls.py)"
        )
    raise BrokerError(
        f"broker: expected 'embedded', 'mosquitto' or an mqtt:// or mqtts:// URL, found {spec!r}"
    )
