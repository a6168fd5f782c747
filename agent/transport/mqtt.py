"""The MQTT adapter: the only module that imports aiomqtt (and, through it, paho-mqtt).

Three ways to connect, one view type for devices (``MqttTransport``, a ``base.Transport``):

- ``MqttTransport(endpoint, device_id, domains)``: one connection per device, client id = device
  id, whose last-will marks the device offline. For real devices and small fleets.
- ``MqttHub(endpoint)``: one connection shared by the devices of one process;
  ``await hub.attach(device_id, domains)`` returns a device's view, which subscribes its own
  inbox. The hub's last-will marks the hub offline; each device announces ``online:<hub id>`` and
  watchers resolve it against the hub's presence (``presence.PresenceBook``).
- ``MqttClient(endpoint, client_id, ...)``: a plain connection on topics of the caller's choosing,
  for bridges to other systems (``agent.fleet.homeassistant``); not a ``Transport``.

A ``_Link`` owns one aiomqtt client: it connects (MQTT 3.1.1, clean session), subscribes
reference-counted topics (restored after every reconnect), routes every received message to the
views by its topic, publishes at QoS 1, and reconnects with exponential backoff and full jitter
(``ReconnectPolicy`` with an injected ``random.Random`` and sleep). A send while the link is down
raises ``NotConnectedError``: nothing is queued behind the runtime's back.

Inbox and domain sends are pipelined: they return once handed to the connection, at most
``max_unacked`` per connection await their acknowledgement (a further send waits for a slot:
backpressure, not failure), and one the broker does not acknowledge (the link died, or
``publish_timeout_s``) is counted and warned on the sending view (``send_failures``). Retained
publishes (presence, evidence) and every send with ``confirm_sends`` return only once
acknowledged. Waiting for each PUBACK in the caller made a device's receive loop wait a round
trip per send: 280-400 ms each in a 124-device street, where every peer coming up costs sends.
aiomqtt's ``MqttError`` and ``OSError`` become ``TransportError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import logging
import random
import secrets
import sys
import termios
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as _paho

from agent.transport.base import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_QUEUED, Delivery, Transport
from agent.transport.endpoint import Endpoint
from agent.transport.errors import (
    AttachError,
    NotConnectedError,
    RefusedError,
    TransportClosedError,
    TransportError,
)
from agent.transport.presence import (
    PRESENCE_OFFLINE,
    PRESENCE_ONLINE,
    PresenceBook,
    PresenceChange,
    decode_hub_presence,
    decode_presence,
    encode_presence,
)
from agent.transport.reconnect import ReconnectPolicy
from agent.transport.topics import Topics, validate_hub_id

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
_SUBACK_FAILURE = 0x80
READ_BATCH = 256  # packets paho reads per turn of the event loop (more to empty the buffer)
RECV_CHUNK = 65_536  # bytes read from the socket at once (paho asks for one byte at a time)
EXPIRY_CHECK_S = 1.0  # how often overdue PUBACKs are looked for


class _RecvBuffer:
    """paho reads each packet with three or four ``recv`` calls (its first byte, its length a
    byte at a time, then the rest): 85,000 system calls in 30 s for one hub of 1,250 devices,
    7% of its event loop (bench.fleet, cProfile). This serves those reads from one ``recv`` of
    up to RECV_CHUNK bytes; a read that finds it empty reads the socket (raising what paho's
    own read raises: BlockingIOError when nothing is there)."""

    __slots__ = ("_data", "_pos", "_read", "draining")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read  # paho's own socket read (TLS included)
        self._data = b""
        self._pos = 0
        # Finishing a turn: serve what was read, read the socket no more (a packet cut at the
        # end waits in paho, the rest in the socket, for the next turn).
        self.draining = False

    def pending(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._data) - self._pos

    def recv(self, size: int) -> bytes:
        data, pos = self._data, self._pos
        if pos >= len(data):
            if self.draining:
                raise BlockingIOError
            if size >= RECV_CHUNK:
                return self._read(size)
            data = self._read(RECV_CHUNK)
            if not data:  # the connection closed: paho's answer to an empty read
                return data
            self._data, pos = data, 0
        end = pos + size
        self._pos = min(end, len(data))
        return data[pos:end]


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """Tuning of one MQTT connection and the views on it (docs/PROTOCOL.md (section 13))."""

    topics: Topics = field(default_factory=Topics)
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 10.0
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_queued: int = DEFAULT_MAX_QUEUED
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    subscribe_batch: int = 100  # topics per SUBSCRIBE packet when restoring subscriptions
    announce_concurrency: int = 64  # presence publishes in flight when a hub (re)connects
    # paho's window of QoS 1 publishes on the wire unacknowledged (0: none; max_unacked then
    # bounds them). paho queues the rest (and scans its queue on every PUBACK), but the window
    # is also the flow control that keeps a burst from overflowing a subscriber's queue at the
    # broker: without it, 3,000 pipelined broadcasts lost messages on a default Mosquitto.
    max_inflight: int = 100
    # Pipelined sends awaiting their PUBACK, per connection; beyond, a send waits (backpressure).
    max_unacked: int = 1_000
    confirm_sends: bool = False  # True: every send returns only once acknowledged

    def __post_init__(self) -> None:
        for name in ("keepalive_s", "subscribe_batch", "announce_concurrency", "max_unacked"):
            if getattr(self, name) < 1:
                raise ValueError(f"MQTT options: expected {name} >= 1, found {getattr(self, name)}")
        if self.max_inflight < 0:
            raise ValueError(f"MQTT options: expected max_inflight >= 0, found {self.max_inflight}")
        if self.connect_timeout_s <= 0 or self.publish_timeout_s <= 0:
            raise ValueError("MQTT options: timeouts must be > 0 seconds")


def hub_options(devices: int, base: MqttOptions | None = None) -> MqttOptions:
    """The tuning of a shared connection (``MqttHub``) carrying ``devices`` devices: paho's
    window of unacknowledged publishes is one per device (``max_inflight``, from the single
    connection's 100 up to ``max_unacked``). A hub's sends all go through one window, and a
    window of 100 per PUBACK round trip capped what 1,000 devices could send: bench.fleet, 2,000
    devices in domains of 32 on two hubs, the windows full (1,000 sends waiting per hub, 2,000 to
    3,500 senders queued for a slot), announcements 1.6-2.4 s late, 48-78% of the header
    deliveries missed while the loops were half idle; with a window per device, every one in
    time. The broker must queue the bursts this lets through: ``mosquitto_limits`` sizes
    Mosquitto's per-client queue to the fleet (docs/PROTOCOL.md 13.8)."""
    if devices < 0:
        raise ValueError(f"hub options: expected a device count >= 0, found {devices}")
    base = base or MqttOptions()
    window = min(base.max_unacked, max(base.max_inflight, devices))
    return replace(base, max_inflight=window)


def _unread_bytes(sock: Any) -> int:
    """Bytes waiting in a socket's receive buffer (0 when unknown: no socket, not Linux)."""
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    return int.from_bytes(raw, sys.byteorder, signed=True)


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("background MQTT call failed: %s", task.exception())


class _Link:
    """One aiomqtt client, its reconnect loop, its subscriptions and the views routed through it."""

    def __init__(
        self,
        endpoint: Endpoint,
        options: MqttOptions,
        *,
        client_id: str,
        hub_id: str | None,
        will_topic: str,
        rng: random.Random,
        sleep: Sleep,
        raw: Callable[[str, bytes], None] | None = None,
        on_up: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.options = options
        self.topics = options.topics
        self.client_id = client_id
        self.hub_id = hub_id
        self._will_topic = will_topic
        self._rng = rng
        self._sleep = sleep
        self._rx = _RecvBuffer(lambda size: b"")  # the connected client's, once there is one
        self._views: dict[str, MqttTransport] = {}
        self._domain_views: dict[str, set[MqttTransport]] = {}
        self._evidence_views: set[MqttTransport] = set()
        self._watchers: dict[str, set[MqttTransport]] = {}
        self._book = PresenceBook()
        self._hubs_seen: set[str] = set()
        self._subs: dict[str, int] = {}
        self._sub_lock = asyncio.Lock()
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Future[None] | None = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._unacked = asyncio.Semaphore(options.max_unacked)
        # Pipelined sends awaiting their PUBACK, by paho message id, in send order:
        # (deadline on the loop's clock, topic, whom to tell if it is never acknowledged).
        self._pending: dict[int, tuple[float, str, Callable[[TransportError], None]]] = {}
        self._started = False
        self._stopped = False
        self.reconnects = 0
        self.unroutable = 0
        # Messages received from the broker and routed, by kind (inbox, domain, presence, ...).
        self.routed: Counter[str] = Counter()
        # An ``MqttClient``'s link: every message goes to ``raw`` unparsed, and ``on_up`` runs
        # (in the background) after every connection, the first included.
        self._raw = raw
        self._on_up = on_up

    @property
    def connected(self) -> bool:
        return self._client is not None

    def backlog(self) -> dict[str, int]:
        """What waits inside this connection now (diagnostics: ``bench.fleet`` samples it).

        ``rx``: bytes the broker sent that paho has not read from the socket yet; ``unacked``:
        pipelined sends awaiting their PUBACK; ``send_waiters``: senders waiting for a free
        slot among those; ``out_messages``: QoS 1 publishes paho holds unacknowledged (beyond
        its ``max_inflight`` window they wait unsent); ``out_packets``: packets paho has not
        yet written to the socket."""
        paho = getattr(self._client, "_client", None)
        waiters = getattr(self._unacked, "_waiters", None)
        return {
            "rx": _unread_bytes(getattr(paho, "_sock", None)) + self._rx.pending(),
            "unacked": self.options.max_unacked - self._unacked._value,
            "send_waiters": len(waiters) if waiters else 0,
            "out_messages": len(getattr(paho, "_out_messages", ())),
            "out_packets": len(getattr(paho, "_out_packet", ())),
        }

    @property
    def started(self) -> bool:
        return self._started and not self._stopped

    # -- lifecycle

    async def start(self) -> None:
        """Connect once (raise TransportError on failure), then keep reconnecting until stop."""
        if self._stopped:
            raise TransportClosedError(f"MQTT connection {self.client_id} was stopped")
        if self._started:
            return
        client = await self._open()
        self._started = True
        self._task = asyncio.create_task(self._run(client), name=f"mqtt-{self.client_id}")

    async def stop(self) -> None:
        """Announce offline (what the will would say), disconnect cleanly, close every view."""
        if self._stopped:
            return
        self._stopped = True
        client = self._client
        if client is not None:
            try:
                await self.publish(self._will_topic, PRESENCE_OFFLINE, retain=True)
            except TransportError as exc:
                log.info("%s: could not announce offline: %s", self.client_id, exc)
        tasks = [t for t in (self._task, *self._bg) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._mark_down()
        if client is not None:
            await self._close_client(client)
        for view in list(self._views.values()):
            view._mark_closed()

    async def wait_up(self) -> None:
        if self._stopped:
            raise TransportClosedError(f"MQTT connection {self.client_id} was stopped")
        await self._up.wait()

    async def _open(self) -> aiomqtt.Client:
        e = self.endpoint
        try:
            client = aiomqtt.Client(
                e.host,
                e.port,
                username=e.username,
                password=e.password,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V311,
                will=aiomqtt.Will(self._will_topic, PRESENCE_OFFLINE, qos=1, retain=True),
                clean_session=True,
                keepalive=self.options.keepalive_s,
                timeout=self.options.connect_timeout_s,
                tls_context=e.tls,
                max_inflight_messages=self.options.max_inflight,
            )
            client.pending_calls_threshold = 1 << 30  # aiomqtt would log every pending publish
            await self._enter(client)
            self._hook(client)
        except (aiomqtt.MqttError, OSError) as exc:
            raise TransportError(
                f"cannot connect to the MQTT broker at {e.url} as {self.client_id}: {exc}"
            ) from exc
        try:
            await self._on_connect(client)
        except BaseException:
            self._mark_down()
            await self._close_client(client)
            raise
        return client

    def _hook(self, client: aiomqtt.Client) -> None:
        """Take the hot paths of a connected client from aiomqtt to paho directly.

        aiomqtt hands each received message to its iterator through a queue, a task and an
        ``asyncio.wait`` (two or three event-loop turns per message), and paho reads one packet
        per turn of the loop: a shared connection whose loop also runs a thousand devices
        routed fewer messages a second than its domains sent, and the rest waited unseen in
        aiomqtt's queue (bench.fleet: 2,000 devices, every header late, the loops half idle).
        Here paho routes each message as it parses it (``on_message``), reads every packet the
        socket holds per turn (``loop_read``), and acknowledges pipelined sends through
        ``on_publish`` (no task per send). aiomqtt keeps the connection, the subscriptions and
        the confirmed publishes."""
        paho = getattr(client, "_client", None)
        if paho is None or not hasattr(paho, "_packet_read"):
            raise TransportError(
                f"MQTT connection {self.client_id}: this aiomqtt/paho version is not supported "
                "(expected aiomqtt 2 over paho-mqtt 2)"
            )
        aiomqtt_ack = paho.on_publish
        rx = self._rx = _RecvBuffer(paho._sock_recv)

        def on_message(_c: object, _userdata: object, message: Any) -> None:
            self._dispatch(message.topic, message.payload)

        def on_publish(c: object, userdata: object, mid: int, *rest: object) -> None:
            if self._pending.pop(mid, None) is None:
                aiomqtt_ack(c, userdata, mid, *rest)  # a publish aiomqtt awaits
            else:
                self._unacked.release()

        def loop_read(max_packets: int = 1) -> int:
            # Up to READ_BATCH packets, then what the buffer still holds, without reading the
            # socket again: the loop calls this again only when the socket is readable, and
            # bytes in the buffer are not; reading on while a busy broker keeps the socket full
            # would never give the loop back.
            packets = 0
            try:
                while True:
                    if paho._sock is None:
                        return int(_paho.MQTT_ERR_NO_CONN)
                    rc = paho._packet_read()
                    if rc > 0:
                        return int(paho._loop_rc_handle(rc))
                    if rc == _paho.MQTT_ERR_AGAIN:
                        break
                    packets += 1
                    if packets >= READ_BATCH:
                        if not rx.pending():
                            break
                        rx.draining = True
            finally:
                rx.draining = False
            return int(_paho.MQTT_ERR_SUCCESS)

        full_scan = paho._update_inflight

        def update_inflight() -> int:
            # paho calls this on every PUBACK and scans every publish it holds for one waiting
            # for the window: O(window) per acknowledgement, 4% of a hub's CPU with 1,000 in
            # flight (bench.fleet, 2,500 devices). When every publish held is counted in flight
            # (sends wait for a slot in ``_unacked`` before paho sees them), none waits.
            if len(paho._out_messages) <= paho._inflight_messages:
                return int(_paho.MQTT_ERR_SUCCESS)
            return int(full_scan())

        paho.on_message = on_message
        paho.on_publish = on_publish
        paho.loop_read = loop_read
        paho._sock_recv = rx.recv
        paho._update_inflight = update_inflight

    async def _enter(self, client: aiomqtt.Client) -> None:
        """Connect; if cancelled meanwhile, let the attempt end and close it so no socket leaks.

        aiomqtt connects in an executor thread that cancellation cannot stop.
        """
        attempt = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            try:
                await attempt
            except (aiomqtt.MqttError, OSError):
                pass
            else:
                await self._close_client(client)
            raise

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        async with self._sub_lock:
            # Retained presence arrives again and rebuilds the book. Cleared first: messages are
            # routed as paho reads them (``_hook``), so a retained presence may be routed
            # before the SUBACK's waiter resumes here; cleared after, it was lost.
            self._book.clear()
            await self._subscribe(client, list(self._subs))
            self._lost = asyncio.get_running_loop().create_future()
            self._client = client
        await self._announce()
        self._up.set()
        if self._on_up is not None:
            self._spawn(self._on_up())

    async def _announce(self) -> None:
        """Publish retained presence: the hub first, then every device on this connection."""
        if self.hub_id is not None:
            await self._publish_logged(self.topics.hub_presence(self.hub_id), PRESENCE_ONLINE)
        sem = asyncio.Semaphore(self.options.announce_concurrency)

        async def one(device_id: str) -> None:
            async with sem:
                await self._publish_logged(
                    self.topics.presence(device_id), encode_presence(True, self.hub_id)
                )

        await asyncio.gather(*(one(d) for d in list(self._views)))

    async def _publish_logged(self, topic: str, payload: bytes) -> None:
        try:
            await self.publish(topic, payload, retain=True)
        except TransportError as exc:  # the receive loop notices a dead link and reconnects
            log.info("%s: presence on %s not published: %s", self.client_id, topic, exc)

    async def _run(self, client: aiomqtt.Client) -> None:
        """Messages are routed as paho parses them (``_hook``); this waits for the connection
        to end, failing the sends the broker has not acknowledged in time once a second."""
        while True:
            lost: asyncio.Future[None] = client._disconnected
            while not lost.done():
                await asyncio.wait({lost}, timeout=EXPIRY_CHECK_S)
                self._expire(asyncio.get_running_loop().time())
            exc = lost.exception()
            log.info(
                "%s: connection to %s lost: %s",
                self.client_id,
                self.endpoint.url,
                exc or "disconnected",
            )
            self._mark_down()
            await self._close_client(client)
            client = await self._reconnect()
            self.reconnects += 1

    async def _reconnect(self) -> aiomqtt.Client:
        attempt = 0
        while True:
            delay_ms = self.options.reconnect.delay_ms(attempt, self._rng)
            attempt += 1
            await self._sleep(delay_ms / 1000)
            try:
                return await self._open()
            except TransportError as exc:
                log.info("%s: reconnect attempt %d failed: %s", self.client_id, attempt, exc)

    def _mark_down(self) -> None:
        self._client = None
        self._up.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        pending, self._pending = self._pending, {}
        for _, topic, failed in pending.values():
            self._unacked.release()
            failed(
                NotConnectedError(
                    f"connection to {self.endpoint.url} lost before the broker "
                    f"acknowledged a publish to {topic}"
                )
            )

    def _expire(self, now: float) -> None:
        """Fail the pipelined sends whose PUBACK is overdue (the oldest come first)."""
        pending = self._pending
        while pending:
            mid = next(iter(pending))
            deadline, topic, failed = pending[mid]
            if deadline > now:
                return
            del pending[mid]
            self._unacked.release()
            failed(
                TransportError(
                    f"publish to {topic} at {self.endpoint.url} failed: not acknowledged "
                    f"within {self.options.publish_timeout_s:g} s"
                )
            )

    async def _close_client(self, client: aiomqtt.Client) -> None:
        try:
            await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError) as exc:
            log.debug("%s: disconnect: %s", self.client_id, exc)

    # -- publishing and subscribing

    async def send(
        self, topic: str, payload: bytes, failed: Callable[[TransportError], None]
    ) -> None:
        """QoS 1 publish, pipelined (see the module docstring): ``failed`` hears of a publish
        the broker did not acknowledge after this returned. Handed to paho at once; its PUBACK
        (``_hook``) frees the slot, no task waits for it."""
        if self.options.confirm_sends:
            await self.publish(topic, payload)
            return
        if self._client is None:
            raise NotConnectedError(
                f"not connected to {self.endpoint.url}: nothing published to {topic}"
            )
        await self._unacked.acquire()
        client = self._client  # again: the link may have gone while this waited for a slot
        try:
            if client is None:
                raise NotConnectedError(
                    f"not connected to {self.endpoint.url}: nothing published to {topic}"
                )
            try:
                info = client._client.publish(topic, payload, 1)
            except (ValueError, OSError) as exc:
                raise TransportError(f"publish to {topic} at {self.endpoint.url}: {exc}") from exc
            if info.rc != _paho.MQTT_ERR_SUCCESS:
                raise NotConnectedError(
                    f"publish to {topic} at {self.endpoint.url} failed: "
                    f"{_paho.error_string(info.rc)}"
                )
        except BaseException:
            self._unacked.release()
            raise
        deadline = asyncio.get_running_loop().time() + self.options.publish_timeout_s
        self._pending[info.mid] = (deadline, topic, failed)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish; return once the broker acknowledged it, else raise."""
        client, lost = self._client, self._lost
        if client is None or lost is None:
            raise NotConnectedError(
                f"not connected to {self.endpoint.url}: nothing published to {topic}"
            )
        task = asyncio.ensure_future(
            client.publish(
                topic, payload, qos=1, retain=retain, timeout=self.options.publish_timeout_s
            )
        )
        task.add_done_callback(_consume)
        try:
            done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task not in done:
            task.cancel()
            raise NotConnectedError(
                f"connection to {self.endpoint.url} lost before the broker "
                f"acknowledged a publish to {topic}"
            )
        try:
            task.result()
        except aiomqtt.MqttError as exc:
            if lost.done():
                raise NotConnectedError(
                    f"connection to {self.endpoint.url} lost while publishing to {topic}: {exc}"
                ) from exc
            raise TransportError(
                f"publish to {topic} at {self.endpoint.url} failed: {exc}"
            ) from exc

    async def _subscribe(self, client: aiomqtt.Client, topics: Sequence[str]) -> None:
        batch = self.options.subscribe_batch
        for i in range(0, len(topics), batch):
            chunk = topics[i : i + batch]
            try:
                codes = await client.subscribe([(t, 1) for t in chunk])
            except aiomqtt.MqttError as exc:
                raise TransportError(
                    f"subscribing to {len(chunk)} topics at {self.endpoint.url} failed: {exc}"
                ) from exc
            for topic, code in zip(chunk, codes, strict=False):
                value = getattr(code, "value", code)
                if not isinstance(value, int) or value >= _SUBACK_FAILURE:
                    raise RefusedError(
                        f"the broker at {self.endpoint.url} refused the "
                        f"subscription to {topic} (check its ACL)"
                    )

    async def _ref(self, topics: Iterable[str]) -> None:
        """Want these topics (reference-counted); subscribe the newly wanted ones if connected.

        A topic stays wanted after a failed subscribe and is requested again on reconnect.
        """
        async with self._sub_lock:
            new = []
            for t in topics:
                self._subs[t] = self._subs.get(t, 0) + 1
                if self._subs[t] == 1:
                    new.append(t)
            client = self._client
            if new and client is not None:
                try:
                    await self._subscribe(client, new)
                except TransportError:
                    if self._client is client:
                        raise

    async def _unref(self, topics: Iterable[str]) -> None:
        async with self._sub_lock:
            gone = []
            for t in topics:
                n = self._subs.get(t, 0) - 1
                if n <= 0:
                    self._subs.pop(t, None)
                    gone.append(t)
                else:
                    self._subs[t] = n
            client = self._client
            if gone and client is not None:
                try:
                    await client.unsubscribe(gone)
                except aiomqtt.MqttError as exc:  # a clean session forgets them on reconnect
                    log.debug("%s: unsubscribe: %s", self.client_id, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        task.add_done_callback(_consume)

    # -- views

    def _view_topics(self, view: MqttTransport) -> list[str]:
        topics = [self.topics.inbox(view.device_id)]
        topics += [self.topics.domain(d) for d in view.domains]
        if view.evidence:  # fleet-wide notices: fork evidence and revocations
            topics += [self.topics.evidence_filter(), self.topics.revocation_filter()]
        return topics

    async def add_view(self, view: MqttTransport) -> None:
        if self._stopped:
            raise TransportClosedError(f"MQTT connection {self.client_id} was stopped")
        if view.device_id in self._views:
            raise AttachError(
                f"device {view.device_id} is already attached to MQTT "
                f"connection {self.client_id} (one identity, one device)"
            )
        self._views[view.device_id] = view
        for d in view.domains:
            self._domain_views.setdefault(d, set()).add(view)
        if view.evidence:
            self._evidence_views.add(view)
        await self._ref(self._view_topics(view))
        if self._client is not None:
            await self._publish_logged(
                self.topics.presence(view.device_id), encode_presence(True, self.hub_id)
            )

    async def remove_view(self, view: MqttTransport, *, announce: bool) -> None:
        if self._views.get(view.device_id) is not view:
            return
        if announce and self._client is not None:
            await self._publish_logged(self.topics.presence(view.device_id), PRESENCE_OFFLINE)
        del self._views[view.device_id]
        for d in view.domains:
            members = self._domain_views.get(d)
            if members is not None:
                members.discard(view)
                if not members:
                    del self._domain_views[d]
        self._evidence_views.discard(view)
        for peer in [p for p, ws in self._watchers.items() if view in ws]:
            await self.unwatch(view, peer)
        await self._unref(self._view_topics(view))

    async def watch_many(self, view: MqttTransport, peer_ids: Sequence[str]) -> None:
        """``watch`` for many peers: new topics go in SUBSCRIBE packets of ``subscribe_batch``."""
        for peer_id in peer_ids:
            self._watchers.setdefault(peer_id, set()).add(view)
            known = self._book.effective(peer_id)
            if known is not None:  # the retained message will not come again on this connection
                view._accept(
                    Delivery(
                        self.topics.presence(peer_id), "presence", peer_id, encode_presence(known)
                    )
                )
        await self._ref([self.topics.presence(p) for p in peer_ids])

    async def unwatch(self, view: MqttTransport, peer_id: str) -> None:
        watchers = self._watchers.get(peer_id)
        if watchers is None or view not in watchers:
            return
        watchers.discard(view)
        if not watchers:
            del self._watchers[peer_id]
            self._book.forget(peer_id)
        await self._unref([self.topics.presence(peer_id)])

    # -- routing

    def _dispatch(self, topic: str, payload: bytes) -> None:
        try:
            self._route(topic, payload)
        except Exception:  # a bug must not kill the receive loop; remote garbage never gets here
            log.exception("%s: routing a message on %r failed", self.client_id, topic)

    def _route(self, topic: str, payload: bytes) -> None:
        if self._raw is not None:
            self._raw(topic, payload)
            return
        route = self.topics.parse(topic)
        if route is None:
            self.unroutable += 1
            return
        self.routed[route.kind] += 1
        name = route.name
        if route.kind == "inbox":
            view = self._views.get(name)
            if view is not None:
                view._accept(Delivery(topic, "inbox", None, payload))
        elif route.kind == "domain":
            delivery = Delivery(topic, "domain", None, payload, name)  # immutable: one for all
            for view in list(self._domain_views.get(name, ())):
                view._accept(delivery)
        elif route.kind == "evidence":
            if payload:  # an empty retained message only clears the topic
                for view in list(self._evidence_views):
                    view._accept(Delivery(topic, "evidence", name, payload))
        elif route.kind == "revocation":
            if payload:
                for view in list(self._evidence_views):
                    view._accept(Delivery(topic, "revocation", name, payload))
        elif route.kind == "presence":
            self._route_presence(topic, name, payload)
        else:
            online = decode_hub_presence(payload)
            if online is None:
                self.unroutable += 1
                return
            self._emit(topic, self._book.hub_update(name, online))

    def _route_presence(self, topic: str, device_id: str, payload: bytes) -> None:
        watchers = self._watchers.get(device_id)
        if not watchers:
            return
        state = decode_presence(payload)
        if state is None:
            for w in watchers:
                w._count_malformed()
            return
        if state.hub is not None and state.hub not in self._hubs_seen:
            # Hubs are few; their presence stays subscribed for the life of the link.
            self._hubs_seen.add(state.hub)
            self._spawn(self._ref([self.topics.hub_presence(state.hub)]))
        self._emit(topic, self._book.device_update(device_id, state))

    def _emit(self, topic: str, changes: list[PresenceChange]) -> None:
        for change in changes:
            payload = encode_presence(change.online)
            for w in list(self._watchers.get(change.device_id, ())):
                w._accept(Delivery(topic, "presence", change.device_id, payload))


class MqttTransport(Transport):
    """A device's transport over MQTT: on its own connection, or a view on an ``MqttHub``.

    ``MqttTransport(endpoint, device_id, domains)`` owns a connection; ``connect()`` makes it
    (TransportError if the broker cannot be reached) and later losses are repaired in the
    background. ``MqttTransport(hub, device_id, domains)`` shares the hub's connection.
    """

    def __init__(
        self,
        via: Endpoint | MqttHub,
        device_id: str,
        domains: Iterable[str] = (),
        *,
        evidence: bool = True,
        options: MqttOptions | None = None,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if isinstance(via, MqttHub):
            if options is not None or rng is not None or sleep is not None:
                raise ValueError("a view on an MqttHub takes the hub's options, rng and sleep")
            options = via.options
        options = options or MqttOptions()
        super().__init__(
            device_id,
            domains,
            evidence=evidence,
            max_payload=options.max_payload,
            max_queued=options.max_queued,
        )
        self._owns_link = not isinstance(via, MqttHub)
        if isinstance(via, MqttHub):
            self._link = via._link
        else:
            self._link = _Link(
                via,
                options,
                client_id=device_id,
                hub_id=None,
                will_topic=options.topics.presence(device_id),
                rng=rng or random.Random(),
                sleep=sleep or asyncio.sleep,
            )
        self._registered = False

    @property
    def connected(self) -> bool:
        return self._registered and not self._closed and self._link.connected

    @property
    def connection(self) -> _Link:
        """The MQTT connection this view sends and receives through (its own, or its hub's):
        diagnostics read its ``backlog()`` and ``routed`` counts."""
        return self._link

    async def connect(self) -> None:
        if self._closed:
            raise TransportClosedError(f"transport of {self.device_id} is closed")
        if self._registered:
            return
        if not self._owns_link and not self._link.started:
            raise AttachError(f"cannot attach {self.device_id}: the MqttHub is not started")
        await self._link.add_view(self)
        self._registered = True
        if self._owns_link:
            try:
                await self._link.start()
            except BaseException:
                self._registered = False
                await self._link.remove_view(self, announce=False)
                raise

    async def close(self) -> None:
        if self._closed:
            return
        if self._owns_link:
            await self._link.stop()
        elif self._registered:
            await self._link.remove_view(self, announce=True)
        self._mark_closed()

    async def wait_connected(self) -> None:
        if self._closed:
            raise TransportClosedError(f"transport of {self.device_id} is closed")
        await self._link.wait_up()

    async def _send_inbox(self, peer_id: str, payload: bytes) -> None:
        where = f"inbox of {peer_id}"
        await self._link.send(
            self._link.topics.inbox(peer_id), payload, lambda e: self._send_failed(where, e)
        )

    async def _send_domain(self, domain: str, payload: bytes) -> None:
        where = f"domain {domain}"
        await self._link.send(
            self._link.topics.domain(domain), payload, lambda e: self._send_failed(where, e)
        )

    async def _send_evidence(self, device_id: str, payload: bytes) -> None:
        await self._link.publish(self._link.topics.evidence(device_id), payload, retain=True)

    async def _watch(self, peer_id: str) -> None:
        await self._link.watch_many(self, [peer_id])

    async def _watch_many(self, peer_ids: list[str]) -> None:
        await self._link.watch_many(self, peer_ids)

    async def _unwatch(self, peer_id: str) -> None:
        await self._link.unwatch(self, peer_id)

    def _reconnects(self) -> int:
        return self._link.reconnects


def new_hub_id() -> str:
    """A fresh random hub id: 'h' and 16 base32 characters (so a restarted hub is a new one)."""
    return "h" + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


class MqttHub:
    """One MQTT connection shared by many devices of one process (each keeps its own inbox).

    Its client id is ``efhub-<hub id>`` and its will marks ``{prefix}/v1/hub/<hub id>/presence``
    offline, which takes every device announced ``online:<hub id>`` offline for its watchers.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        hub_id: str | None = None,
        options: MqttOptions | None = None,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.hub_id = validate_hub_id(hub_id) if hub_id is not None else new_hub_id()
        self.options = options or MqttOptions()
        self._link = _Link(
            endpoint,
            self.options,
            client_id=f"efhub-{self.hub_id}",
            hub_id=self.hub_id,
            will_topic=self.options.topics.hub_presence(self.hub_id),
            rng=rng or random.Random(),
            sleep=sleep or asyncio.sleep,
        )

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def reconnects(self) -> int:
        return self._link.reconnects

    @property
    def unroutable(self) -> int:
        """Messages received on topics that name nothing of ours (dropped)."""
        return self._link.unroutable

    def devices(self) -> tuple[str, ...]:
        return tuple(self._link._views)

    async def start(self) -> None:
        await self._link.start()

    async def attach(
        self, device_id: str, domains: Iterable[str] = (), *, evidence: bool = True
    ) -> MqttTransport:
        view = MqttTransport(self, device_id, domains, evidence=evidence)
        await view.connect()
        return view

    async def wait_connected(self) -> None:
        await self._link.wait_up()

    async def close(self) -> None:
        await self._link.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class MqttClient:
    """A plain MQTT connection for bridges to other systems (Home Assistant): any topic.

    It publishes (QoS 1, retained or not) and subscribes to topic filters of its own choosing;
    every message received goes to ``on_message(topic, payload)`` unparsed (it must be quick and
    must not raise: it runs in the receive loop). Its last-will publishes ``offline``, retained,
    on ``will_topic``, and a clean ``close()`` does the same; ``on_connected`` runs after every
    connection (the first and each reconnect), which is where a bridge announces itself online
    and republishes what a broker restart may have lost. Reconnects, errors and the publish
    contract are those of the device transports (``TransportError``, ``NotConnectedError``).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        client_id: str,
        *,
        will_topic: str,
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[], Coroutine[Any, Any, None]] | None = None,
        options: MqttOptions | None = None,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self._link = _Link(
            endpoint,
            options or MqttOptions(),
            client_id=client_id,
            hub_id=None,
            will_topic=will_topic,
            rng=rng or random.Random(),
            sleep=sleep or asyncio.sleep,
            raw=on_message,
            on_up=on_connected,
        )

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def reconnects(self) -> int:
        return self._link.reconnects

    async def start(self) -> None:
        """Connect (TransportError if the broker cannot be reached); reconnect until closed."""
        await self._link.start()

    async def wait_connected(self) -> None:
        await self._link.wait_up()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1; return once the broker acknowledged it (NotConnectedError while down)."""
        await self._link.publish(topic, payload, retain=retain)

    async def subscribe(self, filters: Iterable[str]) -> None:
        """Subscribe (QoS 1); the subscriptions are restored after every reconnect."""
        await self._link._ref(filters)

    async def close(self) -> None:
        """Publish ``offline`` on the will topic, disconnect, stop reconnecting."""
        await self._link.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
