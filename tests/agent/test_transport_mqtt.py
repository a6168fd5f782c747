"""The MQTT adapter against real brokers (embedded amqtt and Mosquitto), and its pure parts.

Real-broker tests wait for events (deliveries, reconnects) with upper-bound timeouts only; the
reconnect backoff sleeps through an injected function the test releases.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import dataclasses
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho_client
import pytest

from agent.transport import mqtt as mqtt_mod
from agent.transport.base import Delivery, Transport
from agent.transport.brokers import EmbeddedBroker, MosquittoBroker
from agent.transport.endpoint import Endpoint
from agent.transport.errors import (
    AttachError,
    InvalidNameError,
    NotConnectedError,
    RefusedError,
    TransportClosedError,
    TransportError,
)
from agent.transport.mqtt import MqttClient, MqttHub, MqttOptions, MqttTransport, hub_options
from agent.transport.presence import (
    PresenceBook,
    PresenceChange,
    PresenceState,
    decode_presence,
    encode_presence,
)
from agent.transport.reconnect import ReconnectPolicy
from agent.transport.topics import Route, Topics
from ledger.identity import device_id_for
from tests.agent.conftest import require_mosquitto


def dev(i: int) -> str:
    return device_id_for(bytes([i]) * 32)


A, B, C, D = dev(1), dev(2), dev(3), dev(4)
WAIT_S = 10.0  # upper bound for one expected event; normally milliseconds

Serve = Callable[[], AbstractAsyncContextManager[Endpoint]]


async def next_of(t: Transport, kind: str, peer: str | None = None) -> Delivery:
    """The next delivery of ``kind`` (about ``peer``), skipping others."""

    async def find() -> Delivery:
        while True:
            d = await t.receive()
            if d.kind == kind and (peer is None or d.peer_id == peer):
                return d

    return await asyncio.wait_for(find(), WAIT_S)


async def presence_of(t: Transport, peer: str, online: bool) -> None:
    while (await next_of(t, "presence", peer)).payload != encode_presence(online):
        pass


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def serve(request: pytest.FixtureRequest) -> Serve:
    """An async context manager yielding the endpoint of a running broker of the given kind."""
    mosquitto: MosquittoBroker | None = None
    if request.param == "mosquitto":
        mosquitto = request.getfixturevalue("mosquitto")

    @asynccontextmanager
    async def running() -> AsyncIterator[Endpoint]:
        if mosquitto is not None:
            yield mosquitto.endpoint
        else:
            async with EmbeddedBroker() as broker:
                yield broker.endpoint

    return running


# --------------------------------------------------------------------------- pure parts


def test_topic_layout_is_exact() -> None:
    t = Topics()
    assert t.inbox(A) == f"edgefleet/v1/dev/{A}/inbox"
    assert t.presence(A) == f"edgefleet/v1/dev/{A}/presence"
    assert t.evidence(A) == f"edgefleet/v1/evidence/{A}"
    assert t.evidence_filter() == "edgefleet/v1/evidence/+"
    assert t.domain("site-1.a_b") == "edgefleet/v1/domain/site-1.a_b"
    assert t.hub_presence("h1") == "edgefleet/v1/hub/h1/presence"
    assert Topics("acme/plant2").inbox(A) == f"acme/plant2/v1/dev/{A}/inbox"


def test_topics_parse_back_and_refuse_anything_else() -> None:
    t = Topics("acme")
    routes = {
        t.inbox(A): Route("inbox", A),
        t.presence(A): Route("presence", A),
        t.evidence(A): Route("evidence", A),
        t.domain("s"): Route("domain", "s"),
        t.hub_presence("h1"): Route("hub", "h1"),
    }
    for topic, route in routes.items():
        assert t.parse(topic) == route
    for foreign in [
        f"edgefleet/v1/dev/{A}/inbox",
        f"acme/v2/dev/{A}/inbox",
        "acme/v1/dev/x/inbox",
        f"acme/v1/dev/{A}/inbox/extra",
        "acme/v1/domain/Site",
        "acme/v1/evidence/",
        "acme/v1/domain/a/b",
        f"acme/v1/dev/{A}",
        "acme",
        "",
    ]:
        assert t.parse(foreign) is None, foreign


@pytest.mark.parametrize("prefix", ["", "a/", "/a", "a//b", "a/+", "#", "$SYS", "a b", "a\x00"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(InvalidNameError, match="topic prefix"):
        Topics(prefix)


@pytest.mark.parametrize(
    "bad",
    [
        "ef" + "a" * 23 + "+",
        "ef" + "a" * 23 + "#",
        "ef" + "a" * 11 + "/" + "a" * 12,
        "ef" + "a" * 23 + "\x00",
    ],
)
def test_wildcard_device_ids_are_rejected_before_any_io(bad: str) -> None:
    endpoint = Endpoint("127.0.0.1", 1)  # never connected to
    with pytest.raises(InvalidNameError, match="device id"):
        MqttTransport(endpoint, bad)
    t = MqttTransport(endpoint, A)
    with pytest.raises(InvalidNameError, match="device id"):
        asyncio.run(t.send(bad, b"x"))
    with pytest.raises(InvalidNameError, match="device id"):
        asyncio.run(t.publish_evidence(bad, b"x"))
    with pytest.raises(InvalidNameError, match="domain"):
        asyncio.run(t.broadcast("site/#", b"x"))
    with pytest.raises(InvalidNameError, match="domain"):
        MqttTransport(endpoint, A, ["site+"])
    with pytest.raises(InvalidNameError, match="device id"):
        Topics().inbox(bad)


def test_presence_payloads_round_trip_and_garbage_is_refused() -> None:
    assert encode_presence(True) == b"online"
    assert encode_presence(False) == b"offline"
    assert encode_presence(True, "h1") == b"online:h1"
    assert decode_presence(b"online:h1") == PresenceState(True, "h1")
    assert decode_presence(b"") == PresenceState(False)
    for garbage in [b"ONLINE", b"online:", b"online:H/1", b"online:\xff", b"\x00"]:
        assert decode_presence(garbage) is None


def test_presence_book_resolves_devices_through_their_hub() -> None:
    book = PresenceBook()
    assert book.device_update(A, PresenceState(True)) == [PresenceChange(A, True)]
    assert book.device_update(B, PresenceState(True, "h1")) == []  # hub unknown: no claim yet
    assert book.effective(B) is None
    assert book.device_update(C, PresenceState(True, "h1")) == []
    assert book.hub_update("h1", True) == [PresenceChange(B, True), PresenceChange(C, True)]
    assert book.device_update(C, PresenceState(False)) == [PresenceChange(C, False)]
    assert book.hub_update("h1", False) == [PresenceChange(B, False)]  # the hub's will
    assert book.hub_update("h1", False) == []
    assert book.device_update(A, PresenceState(True)) == []  # repeated retained message


def test_reconnect_backoff_is_exponential_with_full_jitter_and_seeded() -> None:
    policy = ReconnectPolicy(base_ms=100, cap_ms=3_000)
    assert [policy.ceiling_ms(n) for n in range(7)] == [100, 200, 400, 800, 1600, 3000, 3000]
    rng = random.Random(5)
    delays = [policy.delay_ms(n % 7, rng) for n in range(700)]
    assert all(0 <= d <= policy.ceiling_ms(n % 7) for n, d in enumerate(delays))
    capped = [d for n, d in enumerate(delays) if n % 7 >= 5]
    assert min(capped) < 300 and max(capped) > 2_700  # full jitter spans [0, cap]
    again = random.Random(5)
    assert delays == [policy.delay_ms(n % 7, again) for n in range(700)]
    with pytest.raises(ValueError, match="base_ms <= cap_ms"):
        ReconnectPolicy(base_ms=10, cap_ms=5)


def test_connect_failure_is_a_transport_error_naming_the_broker() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        t = MqttTransport(Endpoint("127.0.0.1", port), A)
        with pytest.raises(TransportError, match=f"mqtt://127.0.0.1:{port} as {A}"):
            asyncio.run(t.connect())
        assert not t.connected


def test_attaching_to_a_hub_that_was_never_started_is_our_misuse() -> None:
    hub = MqttHub(Endpoint("127.0.0.1", 1))
    with pytest.raises(AttachError, match=f"cannot attach {A}: the MqttHub is not started"):
        asyncio.run(hub.attach(A))


def test_a_subscription_the_broker_refuses_is_a_remote_refusal() -> None:
    # Mosquitto grants what its ACL denies, so no broker the tests start sends SUBACK 0x80:
    # a client that answers like one which does.
    class RefusingClient:
        async def subscribe(self, topics: list[tuple[str, int]]) -> list[int]:
            return [1 if t.endswith("/inbox") else 0x80 for t, _ in topics]

    hub = MqttHub(Endpoint("127.0.0.1", 1))
    topics = Topics()
    wanted = [topics.inbox(A), topics.domain("kitchen")]
    with pytest.raises(RefusedError, match=r"refused the subscription to .*/domain/kitchen"):
        asyncio.run(hub._link._subscribe(RefusingClient(), wanted))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- on real brokers


def test_two_devices_exchange_inbox_messages_and_domain_broadcasts(serve: Serve) -> None:
    async def main() -> None:
        async with (
            serve() as ep,
            MqttTransport(ep, A, ["site"]) as a,
            MqttTransport(ep, B, ["site", "other"]) as b,
            MqttTransport(ep, C, ["x"]) as c,
        ):
            await a.send(B, b"\x00\xffbinary")
            assert await next_of(b, "inbox") == Delivery(
                f"edgefleet/v1/dev/{B}/inbox", "inbox", None, b"\x00\xffbinary"
            )
            await b.send(A, b"reply")
            assert (await next_of(a, "inbox")).payload == b"reply"
            await a.broadcast("site", b"ann")
            want = Delivery("edgefleet/v1/domain/site", "domain", None, b"ann", "site")
            assert await next_of(b, "domain") == want
            assert await next_of(a, "domain") == want  # MQTT 3.1.1 echoes to the sender
            await c.send(A, b"after")  # c is in no shared domain: it saw no broadcast
            assert (await next_of(a, "inbox")).payload == b"after"
            assert c.pending() == 0
            assert a.stats().sent == 2 and b.stats().received == 2

    asyncio.run(main())


def test_evidence_is_retained_for_a_device_that_connects_later(serve: Serve) -> None:
    async def main() -> None:
        async with serve() as ep:
            async with MqttTransport(ep, A, evidence=False) as a:
                await a.publish_evidence(C, b"two headers at height 7")
                assert a.pending() == 0
            async with MqttTransport(ep, B) as b:
                got = await next_of(b, "evidence")
                assert got == Delivery(
                    f"edgefleet/v1/evidence/{C}", "evidence", C, b"two headers at height 7"
                )

    asyncio.run(main())


def test_oversize_payload_is_dropped_and_counted(serve: Serve) -> None:
    async def main() -> None:
        small = MqttOptions(max_payload=1000)
        async with (
            serve() as ep,
            MqttTransport(ep, A) as a,
            MqttTransport(ep, B, options=small) as b,
        ):
            await a.send(B, b"x" * 1001)
            await a.send(B, b"y" * 1000)
            assert (await next_of(b, "inbox")).payload == b"y" * 1000  # same publisher: in order
            assert b.stats().dropped_oversize == 1 and b.stats().received == 1

    asyncio.run(main())


def test_malformed_presence_is_counted_and_the_loop_keeps_running(serve: Serve) -> None:
    async def main() -> None:
        async with serve() as ep, MqttTransport(ep, A) as a, MqttTransport(ep, B) as b:
            await a.watch_presence(B)
            await presence_of(a, B, True)
            await b._link.publish(Topics().presence(B), b"\xffnot presence", retain=True)
            await b._link.publish(Topics().evidence_filter().replace("+", "not-an-id"), b"x")
            await b.send(A, b"still alive")
            assert (await next_of(a, "inbox")).payload == b"still alive"
            assert a.stats().dropped_malformed == 1
            assert a._link.unroutable == 1
            assert a.presence(B) is True

    asyncio.run(main())


def test_clean_close_announces_offline(serve: Serve) -> None:
    async def main() -> None:
        async with serve() as ep, MqttTransport(ep, A) as a:
            b = MqttTransport(ep, B)
            await a.watch_presence(B)
            async with b:
                await presence_of(a, B, True)
                assert a.online_peers() == {B}
            await presence_of(a, B, False)
            assert a.presence(B) is False
            with pytest.raises(TransportError, match="closed"):
                await b.send(A, b"x")

    asyncio.run(main())


def test_a_plain_client_sees_every_topic_raw_and_leaves_offline_on_its_will_topic(
    serve: Serve,
) -> None:
    """MqttClient (bridges): any topic, messages unparsed (a device's presence included),
    on_connected after connecting, and "offline" retained on its will topic when it closes."""

    async def main() -> None:
        got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        connected = asyncio.Event()

        async def on_connected() -> None:
            await bridge.publish("bridge/x/availability", b"online", retain=True)
            connected.set()

        bridge = MqttClient(
            ep_holder[0],
            "bridge-x",
            will_topic="bridge/x/availability",
            on_message=lambda t, p: got.put_nowait((t, p)),
            on_connected=on_connected,
        )
        async with bridge:
            await asyncio.wait_for(connected.wait(), WAIT_S)
            presence = Topics().presence(A)
            await bridge.subscribe(["zone/#", presence])
            async with MqttTransport(ep_holder[0], A):
                seen = {}
                while presence not in seen:
                    t, p = await asyncio.wait_for(got.get(), WAIT_S)
                    seen[t] = p
                assert seen[presence] == b"online"
                await bridge.publish("zone/1/state", b'{"t": 4.5}')
                assert await asyncio.wait_for(got.get(), WAIT_S) == ("zone/1/state", b'{"t": 4.5}')
        assert not bridge.connected

        watcher_got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        watcher = MqttClient(
            ep_holder[0],
            "watcher",
            will_topic="watcher/availability",
            on_message=lambda t, p: watcher_got.put_nowait((t, p)),
        )
        async with watcher:
            await watcher.subscribe(["bridge/x/availability"])
            # amqtt 0.12 hands this new client A's retained presence too, which it never
            # subscribed to (Mosquitto does not): a bridge must ignore topics it does not know.
            while (msg := await asyncio.wait_for(watcher_got.get(), WAIT_S))[0] != (
                "bridge/x/availability"
            ):
                pass
            assert msg[1] == b"offline"

    async def run() -> None:
        async with serve() as ep:
            ep_holder.append(ep)
            await main()

    ep_holder: list[Endpoint] = []
    asyncio.run(run())


@pytest.mark.mosquitto
def test_a_plain_client_runs_on_connected_again_after_a_broker_restart(
    mosquitto: MosquittoBroker,
) -> None:
    async def main() -> None:
        ups = asyncio.Queue[int]()
        count = 0

        async def on_connected() -> None:
            nonlocal count
            count += 1
            ups.put_nowait(count)

        opts = MqttOptions(reconnect=ReconnectPolicy(base_ms=50, cap_ms=200))
        client = MqttClient(
            mosquitto.endpoint,
            "bridge-r",
            will_topic="bridge/r/availability",
            on_message=lambda t, p: None,
            on_connected=on_connected,
            options=opts,
            rng=random.Random(4),
        )
        async with client:
            assert await asyncio.wait_for(ups.get(), WAIT_S) == 1
            await asyncio.to_thread(mosquitto.kill)
            await asyncio.to_thread(mosquitto.start_sync)
            assert await asyncio.wait_for(ups.get(), WAIT_S) == 2
            assert client.reconnects == 1
            await client.publish("after/restart", b"x")

    asyncio.run(main())


CLIENT = """
import asyncio, sys
from agent.transport.endpoint import Endpoint
from agent.transport.mqtt import MqttHub, MqttTransport

async def main():
    ep = Endpoint("127.0.0.1", int(sys.argv[1]))
    if sys.argv[2] == "single":
        await MqttTransport(ep, sys.argv[3]).connect()
    else:
        hub = MqttHub(ep)
        await hub.start()
        for d in sys.argv[3:]:
            await hub.attach(d)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def spawn_client(ep: Endpoint, mode: str, *ids: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(ep.port), mode, *ids, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), WAIT_S) == b"ready\n"
    return proc


@pytest.mark.subprocess
def test_last_will_marks_a_killed_device_offline(serve: Serve) -> None:
    async def main() -> None:
        async with serve() as ep, MqttTransport(ep, A) as a:
            await a.watch_presence(B)
            proc = await spawn_client(ep, "single", B)
            try:
                await presence_of(a, B, True)
            finally:
                proc.kill()  # no DISCONNECT: the broker sees the socket close and sends the will
                await proc.wait()
            await presence_of(a, B, False)
            assert a.presence(B) is False

    asyncio.run(main())


@pytest.mark.subprocess
def test_devices_of_a_killed_hub_go_offline_through_the_hub_will(serve: Serve) -> None:
    async def main() -> None:
        async with serve() as ep, MqttTransport(ep, A) as a:
            await a.watch_presence(B)
            await a.watch_presence(C)
            proc = await spawn_client(ep, "hub", B, C)
            try:
                await presence_of(a, B, True)
                await presence_of(a, C, True)
                await a.send(C, b"to a hub device")  # delivered into the other process
            finally:
                proc.kill()
                await proc.wait()
            await presence_of(a, B, False)
            await presence_of(a, C, False)
            assert a.online_peers() == frozenset()

    asyncio.run(main())


def test_hub_devices_share_one_connection_with_their_own_inboxes(serve: Serve) -> None:
    async def main() -> None:
        async with serve() as ep, MqttTransport(ep, A, ["site"]) as a, MqttHub(ep) as hub:
            b = await hub.attach(B, ["site"])
            c = await hub.attach(C, ["site"])
            assert hub.devices() == (B, C)
            await a.send(B, b"for b")
            await a.send(C, b"for c")
            assert (await next_of(b, "inbox")).payload == b"for b"
            assert (await next_of(c, "inbox")).payload == b"for c"
            await b.send(C, b"neighbour")  # through the broker, same connection both ways
            assert (await next_of(c, "inbox")).payload == b"neighbour"
            await a.broadcast("site", b"ann")
            assert (await next_of(b, "domain")).payload == b"ann"
            assert (await next_of(c, "domain")).payload == b"ann"
            assert b.pending() == 0 and c.pending() == 0  # one subscription, one copy each
            await a.watch_presence(B)
            await presence_of(a, B, True)
            await b.close()  # detaching one device announces it offline, the hub stays
            await presence_of(a, B, False)
            await c.send(A, b"c still here")
            assert (await next_of(a, "inbox")).payload == b"c still here"
            with pytest.raises(AttachError, match="already attached"):
                await hub.attach(C)

    asyncio.run(main())


@pytest.mark.mosquitto
def test_clients_reconnect_and_resubscribe_after_mosquitto_is_killed_and_restarted(
    mosquitto: MosquittoBroker,
) -> None:
    async def main() -> None:
        sleepers = 0
        both_down, back = asyncio.Event(), asyncio.Event()
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            nonlocal sleepers
            delays.append(seconds)
            sleepers += 1
            if sleepers == 3:  # two devices and one hub are waiting to reconnect
                both_down.set()
            await back.wait()

        opts = MqttOptions(
            reconnect=ReconnectPolicy(base_ms=100, cap_ms=1_000), publish_timeout_s=60.0
        )
        ep = mosquitto.endpoint
        confirming = dataclasses.replace(opts, confirm_sends=True)
        a = MqttTransport(ep, A, ["site"], options=opts, rng=random.Random(1), sleep=sleep)
        b = MqttTransport(ep, B, ["site"], options=confirming, rng=random.Random(2), sleep=sleep)
        hub = MqttHub(ep, options=opts, rng=random.Random(3), sleep=sleep)
        async with a, b, hub:
            c = await hub.attach(C, ["site"])
            await a.watch_presence(B)
            await presence_of(a, B, True)
            # b confirms its sends: "before" is acknowledged when this returns, so the one send
            # of a's left unacknowledged at the stop below is "pipelined" (a pipelined "before"
            # from a could still be waiting for its PUBACK, and be counted too).
            await b.send(A, b"before")
            assert (await next_of(a, "inbox")).payload == b"before"

            assert mosquitto.pid is not None
            os.kill(mosquitto.pid, signal.SIGSTOP)  # a publish now waits for a PUBACK in vain
            unacked = asyncio.ensure_future(b.send(A, b"never acknowledged"))
            await asyncio.sleep(0)
            assert not unacked.done()  # b confirms every send
            await a.send(B, b"pipelined")  # a's returns once handed to the connection
            assert a.stats().send_failures == 0
            await asyncio.to_thread(mosquitto.kill)
            with pytest.raises(NotConnectedError, match="lost before the broker acknowledged"):
                await asyncio.wait_for(unacked, WAIT_S)  # not after the 60 s publish timeout
            for _ in range(100):  # a's unacknowledged send is counted once the link is lost
                if a.stats().send_failures:
                    break
                await asyncio.sleep(0.05)
            assert (a.stats().send_failures, a.stats().send_not_connected) == (1, 1)
            await asyncio.wait_for(both_down.wait(), WAIT_S)
            assert not a.connected and not b.connected and not c.connected
            with pytest.raises(NotConnectedError):
                await a.send(B, b"while down")
            with pytest.raises(NotConnectedError):
                await c.broadcast("site", b"while down")

            await asyncio.to_thread(mosquitto.start_sync)  # same port, empty broker
            back.set()
            for t in (a, b, c):
                await asyncio.wait_for(t.wait_connected(), WAIT_S)
            await presence_of(a, B, True)  # re-announced to the fresh broker
            await a.send(B, b"after")
            assert (await next_of(b, "inbox")).payload == b"after"
            await c.send(A, b"hub after")
            assert (await next_of(a, "inbox")).payload == b"hub after"
            await b.broadcast("site", b"ann")
            for t in (a, b, c):
                assert (await next_of(t, "domain")).payload == b"ann"
            assert [t.stats().reconnects for t in (a, b, c)] == [1, 1, 1]
            assert len(delays) == 3 and all(0 <= d <= 0.1 for d in delays)

    asyncio.run(main())


@pytest.mark.mosquitto
def test_closing_while_the_broker_is_down_is_prompt_and_clean(mosquitto: MosquittoBroker) -> None:
    async def main() -> None:
        waiting = asyncio.Event()

        async def sleep(seconds: float) -> None:
            waiting.set()
            await asyncio.Event().wait()  # only cancellation ends this backoff

        a = MqttTransport(mosquitto.endpoint, A, sleep=sleep)
        await a.connect()
        await asyncio.to_thread(mosquitto.kill)
        await asyncio.wait_for(waiting.wait(), WAIT_S)
        await asyncio.wait_for(a.close(), WAIT_S)
        assert a.closed and not a.connected
        with pytest.raises(TransportClosedError):
            await a.receive()

    asyncio.run(main())


def test_only_the_adapters_import_the_mqtt_libraries() -> None:
    root = Path(__file__).resolve().parents[2]
    owners = {
        "aiomqtt": "agent/transport/mqtt.py",
        "paho": "agent/transport/mqtt.py",
        "amqtt": "agent/transport/brokers.py",
    }
    found = []
    for path in sorted((root / "agent").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            )
            for name in names:
                top = name.split(".")[0]
                if top in owners and owners[top] != rel:
                    found.append(f"{rel} imports {name}")
    assert found == []


def test_watching_a_domain_of_peers_takes_one_subscribe_per_batch(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device of a 251-device domain follows 250 presences: 3 SUBSCRIBE packets, not 250.

    One round trip per watched peer made a 124-device street spend 96-142 s subscribing
    (124 x 123 sequential round trips) before any gossip core ran.
    """
    import aiomqtt

    packets: list[int] = []
    original = aiomqtt.Client.subscribe

    async def counting(self: aiomqtt.Client, topic: object, *args: object, **kw: object) -> object:
        if isinstance(topic, list) and any("/presence" in t for t, _ in topic):
            packets.append(len(topic))
        return await original(self, topic, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(aiomqtt.Client, "subscribe", counting)
    peers = [dev(i) for i in range(5, 255)]

    async def main() -> None:
        async with serve() as ep, MqttTransport(ep, A) as a, MqttTransport(ep, B) as b:
            await a.watch_presences([B, *peers, B])
            assert packets == [100, 100, 51]
            await presence_of(a, B, True)  # B's retained presence came with the batch
            await b.close()
            await presence_of(a, B, False)
            assert a.presence(peers[0]) is None  # never online: nothing retained

    asyncio.run(main())


@pytest.mark.mosquitto
def test_pipelined_sends_wait_for_a_slot_when_the_broker_stops_acknowledging(
    mosquitto: MosquittoBroker,
) -> None:
    """Backpressure, not failure: with 2 sends awaiting their PUBACK, a third waits for one."""

    async def main() -> None:
        opts = MqttOptions(max_unacked=2)
        ep = mosquitto.endpoint
        async with MqttTransport(ep, A, options=opts) as a, MqttTransport(ep, B) as b:
            assert mosquitto.pid is not None
            os.kill(mosquitto.pid, signal.SIGSTOP)
            try:
                await a.send(B, b"1")
                await a.send(B, b"2")
                third = asyncio.ensure_future(a.send(B, b"3"))
                await asyncio.sleep(0.2)
                assert not third.done()
            finally:
                os.kill(mosquitto.pid, signal.SIGCONT)
            await asyncio.wait_for(third, WAIT_S)
            got = [(await next_of(b, "inbox")).payload for _ in range(3)]
            assert got == [b"1", b"2", b"3"]
            assert a.stats().send_failures == 0 and a.stats().sent == 3

    asyncio.run(main())


@pytest.mark.mosquitto
def test_a_burst_on_a_domain_reaches_every_device_of_a_hub_and_nothing_waits_inside(
    mosquitto: MosquittoBroker,
) -> None:
    """3,000 pipelined broadcasts from one connection reach all three devices of a hub in
    order; the hub routed each once (one subscription) and, at the end, nothing waits in its
    connection (the backlog the fleet benchmark samples)."""
    burst = 3_000

    async def main() -> None:
        ep = mosquitto.endpoint
        async with MqttTransport(ep, A, ["street"]) as a, MqttHub(ep) as hub:
            views = [await hub.attach(p, ["street"]) for p in (B, C, D)]
            rx = hub._link._rx
            reads = 0
            socket_read = rx._read

            def counted(size: int) -> bytes:
                nonlocal reads
                reads += 1
                return socket_read(size)

            rx._read = counted
            for k in range(burst):
                await a.broadcast("street", k.to_bytes(2, "big"))
            for view in views:
                got = [int.from_bytes((await next_of(view, "domain")).payload, "big")]
                while len(got) < burst:
                    got.append(int.from_bytes((await next_of(view, "domain")).payload, "big"))
                assert got == list(range(burst))
            conn = views[0].connection
            assert conn is hub._link and conn.routed["domain"] == burst
            for _ in range(1_000):  # the last PUBACKs may still be on their way
                if not a.connection.backlog()["unacked"]:
                    break
                await asyncio.sleep(0.01)
            assert a.connection.backlog() == dict.fromkeys(conn.backlog(), 0)
            assert conn.backlog() == {
                "rx": 0,
                "unacked": 0,
                "send_waiters": 0,
                "out_messages": 0,
                "out_packets": 0,
            }
            assert a.stats().sent == burst and a.stats().send_failures == 0
            # paho reads a packet in three or four socket reads; the hub reads what is there
            # at once (before: 9,000 and more for these 3,000 publishes).
            assert 0 < reads < burst // 4, reads

    asyncio.run(main())


class _Chunks:
    """A socket's reads: the chunks given, then BlockingIOError (nothing there), or b""."""

    def __init__(self, *chunks: bytes, closed: bool = False) -> None:
        self.chunks = list(chunks)
        self.closed = closed
        self.sizes: list[int] = []

    def __call__(self, size: int) -> bytes:
        self.sizes.append(size)
        if self.chunks:
            return self.chunks.pop(0)[:size]
        if self.closed:
            return b""
        raise BlockingIOError


def test_the_receive_buffer_serves_small_reads_from_one_socket_read() -> None:
    sock = _Chunks(b"\x30\x05hello\x30", b"\x02ok")
    rx = mqtt_mod._RecvBuffer(sock)
    assert [rx.recv(1), rx.recv(1), rx.recv(5)] == [b"\x30", b"\x05", b"hello"]
    assert sock.sizes == [mqtt_mod.RECV_CHUNK] and rx.pending() == 1
    assert rx.recv(4) == b"\x30"  # a short read: what the buffer holds, no socket read
    assert rx.pending() == 0 and len(sock.sizes) == 1
    assert [rx.recv(1), rx.recv(2)] == [b"\x02", b"ok"]
    with pytest.raises(BlockingIOError):  # nothing there: paho's "try again"
        rx.recv(1)
    big = _Chunks(b"x" * (mqtt_mod.RECV_CHUNK + 1))
    assert len(mqtt_mod._RecvBuffer(big).recv(mqtt_mod.RECV_CHUNK + 1)) == mqtt_mod.RECV_CHUNK + 1
    assert big.sizes == [mqtt_mod.RECV_CHUNK + 1]  # a large payload is read straight through
    assert mqtt_mod._RecvBuffer(_Chunks(closed=True)).recv(1) == b""  # closed: paho's answer
    ending = _Chunks(b"\x30\x05", b"never read")
    rx = mqtt_mod._RecvBuffer(ending)
    assert rx.recv(1) == b"\x30"
    rx.draining = True  # the end of a turn: what was read is served, the socket not read
    assert rx.recv(4) == b"\x05"
    with pytest.raises(BlockingIOError):
        rx.recv(5)
    assert ending.sizes == [mqtt_mod.RECV_CHUNK]


def _publish_packet(i: int, v5: bool) -> bytes:
    """A QoS 0 PUBLISH on topic ``t`` whose payload starts with ``i``."""
    body = b"\x00\x01t" + (b"\x00" if v5 else b"") + i.to_bytes(4, "big") + b"x" * 90
    n, length = len(body), bytearray()
    while True:
        n, digit = n // 128, n % 128
        length.append(digit | (0x80 if n else 0))
        if not n:
            return b"\x30" + bytes(length) + body


def test_one_turn_of_the_loop_reads_a_bounded_share_of_a_full_socket() -> None:
    """With the socket always holding more (a busy broker), one read turn takes READ_BATCH
    packets and what its last socket read brought, then gives the loop back; the next turns
    go on where it stopped, nothing lost or reordered. Before, it read on while the socket
    held anything: 3,000 packets in one turn here, the event loop held all along."""

    async def main() -> None:
        hub = MqttHub(Endpoint("127.0.0.1", 1883))
        client = aiomqtt.Client("127.0.0.1")
        hub._link._hook(client)
        paho = client._client
        got: list[int] = []
        hub._link._dispatch = lambda _t, p: got.append(int.from_bytes(p[:4], "big"))  # type: ignore[method-assign]
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        paho._sock = a
        try:
            v5 = paho._protocol == paho_client.MQTTv5
            b.sendall(b"".join(_publish_packet(i, v5) for i in range(3_000)))
            paho.loop_read()
            per_chunk = mqtt_mod.RECV_CHUNK // len(_publish_packet(0, v5)) + 1
            assert mqtt_mod.READ_BATCH <= len(got) <= mqtt_mod.READ_BATCH + per_chunk, len(got)
            turns = 1
            while len(got) < 3_000 and turns < 100:
                paho.loop_read()
                turns += 1
            assert got == list(range(3_000)) and turns > 3
        finally:
            paho._sock = None
            a.close()
            b.close()

    asyncio.run(main())


def test_a_hub_gets_a_window_of_unacknowledged_publishes_per_device_it_carries() -> None:
    assert hub_options(3).max_inflight == 100  # a small hub: the single connection's window
    assert hub_options(400).max_inflight == 400
    assert hub_options(1_000).max_inflight == 1_000
    assert hub_options(5_000).max_inflight == 1_000  # never beyond the pipelined sends
    base = MqttOptions(max_unacked=300, keepalive_s=7)
    assert hub_options(5_000, base) == dataclasses.replace(base, max_inflight=300)
    with pytest.raises(ValueError, match="device count"):
        hub_options(-1)


class _ScanCounting(collections.OrderedDict[int, object]):
    """paho's held publishes, counting the scans of them all."""

    scans = 0

    def values(self):  # type: ignore[no-untyped-def, override]
        self.scans += 1
        return super().values()


@pytest.mark.mosquitto
def test_a_hub_of_a_thousand_devices_keeps_its_window_full_and_a_sized_broker_drops_nothing(
    tmp_path: Path,
) -> None:
    """A hub sized for 1,000 devices hands paho 1,000 publishes before the first PUBACK is
    read (a single connection's window held 100, and a hub's sends queued behind it: bench.fleet,
    2,000 devices, most header deliveries late); the burst of 3,000 broadcasts reaches the
    devices of another hub whole and in order on a Mosquitto sized for the fleet, which drops
    nothing."""
    require_mosquitto()
    burst, devices = 3_000, 1_000
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto", devices=2 * devices)

    async def main() -> None:
        async with broker:
            ep = broker.endpoint
            async with MqttHub(ep, options=hub_options(devices)) as wide, MqttHub(ep) as hub:
                sender = await wide.attach(A, ["street"])
                views = [await hub.attach(p, ["street"]) for p in (B, C)]
                paho = wide._link._client._client  # type: ignore[union-attr]
                assert paho.max_inflight_messages == devices
                paho._out_messages = held = _ScanCounting(paho._out_messages)
                in_flight = 0
                for k in range(burst):
                    await sender.broadcast("street", k.to_bytes(2, "big"))
                    in_flight = max(in_flight, paho._inflight_messages)
                assert in_flight > 100, f"at most {in_flight} publishes in flight"
                for view in views:
                    got = []
                    while len(got) < burst:
                        got.append(int.from_bytes((await next_of(view, "domain")).payload, "big"))
                    assert got == list(range(burst))
                assert sender.stats().send_failures == 0
                # Every PUBACK made paho scan the publishes it held for one waiting for the
                # window (3,000 scans of up to 1,000): none waits when sends wait for a slot.
                assert held.scans == 0
            assert broker.dropping_clients == 0

    asyncio.run(main())


@pytest.mark.mosquitto
def test_a_pipelined_send_never_acknowledged_in_time_is_counted_and_frees_its_slot(
    mosquitto: MosquittoBroker,
) -> None:
    """The broker stops answering: a pipelined send returns at once, then fails after
    ``publish_timeout_s`` (counted on the sending view, not 'link down'); its slot is free
    again, so a later send does not wait for it."""

    async def main() -> None:
        opts = MqttOptions(max_unacked=1, publish_timeout_s=0.5)
        ep = mosquitto.endpoint
        async with MqttTransport(ep, A, options=opts) as a, MqttTransport(ep, B) as b:
            assert mosquitto.pid is not None
            os.kill(mosquitto.pid, signal.SIGSTOP)
            try:
                await a.send(B, b"late")
                for _ in range(200):  # failed after 0.5 s, found by the check once a second
                    if a.stats().send_failures:
                        break
                    await asyncio.sleep(0.05)
                assert a.stats().send_failures == 1
                assert a.connection.backlog()["unacked"] == 0
                assert a.stats().send_not_connected == 0
            finally:
                os.kill(mosquitto.pid, signal.SIGCONT)
            await asyncio.wait_for(a.send(B, b"next"), WAIT_S)
            payloads = {(await next_of(b, "inbox")).payload for _ in range(2)}
            assert payloads == {b"late", b"next"}  # paho still delivered the late one

    asyncio.run(main())
