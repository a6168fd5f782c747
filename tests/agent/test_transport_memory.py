"""The in-memory network: faults behave as configured, a seed reproduces a run, same interface."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.transport import (
    MOSQUITTO_DEFAULTS,
    UNLIMITED,
    AttachError,
    BrokerLimits,
    Delivery,
    InvalidNameError,
    MemoryNetwork,
    MemoryTransport,
    NotConnectedError,
    PayloadTooLargeError,
    TransportClosedError,
)
from ledger.identity import device_id_for


def dev(i: int) -> str:
    return device_id_for(bytes([i]) * 32)


A, B, C, D = dev(1), dev(2), dev(3), dev(4)


def payloads(deliveries: list[Delivery]) -> list[bytes]:
    return [d.payload for d in deliveries]


def numbered(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def send_all(t: MemoryTransport, peer: str, msgs: list[bytes]) -> None:
    for m in msgs:
        t.send_nowait(peer, m)


def inversions(seq: list[bytes]) -> int:
    return sum(1 for x, y in itertools.pairwise(seq) if x > y)


# --------------------------------------------------------------------------- basics


def test_inbox_message_arrives_at_its_due_time_and_not_before() -> None:
    net = MemoryNetwork(random.Random(1))
    a, b = net.attach(A), net.attach(B)
    net.set_delay(50, 50)
    a.send_nowait(B, b"hello")
    assert net.deliver_until(49) == 0
    assert b.drain() == []
    assert net.deliver_until(50) == 1
    assert b.drain() == [Delivery(f"edgefleet/v1/dev/{B}/inbox", "inbox", None, b"hello")]
    assert a.stats().sent == 1 and b.stats().received == 1


def test_broadcast_reaches_domain_members_and_echoes_to_the_sender() -> None:
    net = MemoryNetwork(random.Random(1))
    a, b, c = net.attach(A, ["site1"]), net.attach(B, ["site1"]), net.attach(C, ["site2"])
    a.broadcast_nowait("site1", b"ann")
    net.deliver_all()
    expected = Delivery("edgefleet/v1/domain/site1", "domain", None, b"ann", "site1")
    assert a.drain() == [expected]
    assert b.drain() == [expected]
    assert c.drain() == []


def test_evidence_is_retained_for_devices_that_attach_later() -> None:
    net = MemoryNetwork(random.Random(1))
    a = net.attach(A)
    quiet = net.attach(B, evidence=False)
    a.publish_evidence_nowait(C, b"proof")
    net.deliver_all()
    assert payloads(a.drain()) == [b"proof"]
    assert quiet.drain() == []
    late = net.attach(D)
    net.deliver_all()
    assert late.drain() == [Delivery(f"edgefleet/v1/evidence/{C}", "evidence", C, b"proof")]


def test_presence_follows_attach_disconnect_reconnect_and_close() -> None:
    net = MemoryNetwork(random.Random(1))
    a, b = net.attach(A), net.attach(B)
    a.watch_presence_nowait(B)
    net.deliver_all()
    assert [(d.kind, d.peer_id, d.payload) for d in a.drain()] == [("presence", B, b"online")]
    assert a.presence(B) is True and a.online_peers() == {B}

    net.disconnect(B)
    net.deliver_all()
    assert payloads(a.drain()) == [b"offline"]
    assert not b.connected
    with pytest.raises(NotConnectedError, match="disconnected"):
        b.send_nowait(A, b"x")
    assert b.stats().sent == 0

    net.reconnect(B)
    b.send_nowait(A, b"back")
    net.deliver_all()
    assert payloads(a.drain()) == [b"online", b"back"]
    assert b.stats().reconnects == 1

    asyncio.run(b.close())
    net.deliver_all()
    assert payloads(a.drain()) == [b"offline"]
    assert a.presence(B) is False


def test_messages_to_a_disconnected_device_are_not_kept_for_it() -> None:
    net = MemoryNetwork(random.Random(1))
    a, b = net.attach(A), net.attach(B)
    net.disconnect(B)
    a.send_nowait(B, b"while down")
    net.deliver_all()
    net.reconnect(B)
    net.deliver_all()
    assert b.drain() == []
    assert net.stats().undeliverable == 1


def test_one_identity_cannot_attach_twice() -> None:
    net = MemoryNetwork(random.Random(1))
    net.attach(A)
    with pytest.raises(AttachError, match="already attached"):
        net.attach(A)
    with pytest.raises(AttachError, match=f"device {B} is not attached"):
        net.disconnect(B)


# --------------------------------------------------------------------------- limits and names


def test_oversize_payload_is_dropped_and_counted_by_the_receiver() -> None:
    net = MemoryNetwork(random.Random(1))
    a, b = net.attach(A), net.attach(B, max_payload=100)
    a.send_nowait(B, b"x" * 101)
    a.send_nowait(B, b"y" * 100)
    net.deliver_all()
    assert payloads(b.drain()) == [b"y" * 100]
    assert b.stats().dropped_oversize == 1 and b.stats().received == 1


def test_sending_more_than_the_own_limit_is_refused() -> None:
    net = MemoryNetwork(random.Random(1))
    a = net.attach(A, max_payload=10)
    net.attach(B)
    with pytest.raises(PayloadTooLargeError, match="11 bytes exceeds the limit of 10"):
        a.send_nowait(B, b"x" * 11)


def test_receive_queue_is_bounded_and_overflow_is_counted() -> None:
    net = MemoryNetwork(random.Random(1))
    a, b = net.attach(A), net.attach(B, max_queued=3)
    send_all(a, B, numbered(5))
    net.deliver_all()
    assert payloads(b.drain()) == numbered(3)
    assert b.stats().dropped_overflow == 2


@pytest.mark.parametrize(
    "bad",
    [
        "ef" + "a" * 23 + "+",
        "ef" + "a" * 23 + "#",
        "ef" + "a" * 11 + "/" + "a" * 12,
        "ef" + "a" * 23 + "\x00",
        "+",
        "#",
        "",
        "EF" + "A" * 24,
    ],
)
def test_device_ids_that_could_be_topic_wildcards_are_rejected(bad: str) -> None:
    net = MemoryNetwork(random.Random(1))
    a = net.attach(A)
    with pytest.raises(InvalidNameError, match="device id"):
        net.attach(bad)
    with pytest.raises(InvalidNameError, match="device id"):
        a.send_nowait(bad, b"x")
    with pytest.raises(InvalidNameError, match="device id"):
        a.watch_presence_nowait(bad)


def test_error_names_the_wildcard_it_found() -> None:
    net = MemoryNetwork(random.Random(1))
    with pytest.raises(InvalidNameError, match="MQTT wildcard '#'"):
        net.attach("ef" + "a" * 23 + "#")
    with pytest.raises(InvalidNameError, match="contains a '/'"):
        net.attach(A, ["site/1"])
    with pytest.raises(InvalidNameError, match="MQTT wildcard '\\+'"):
        net.attach(A, ["site+"])


# --------------------------------------------------------------------------- faults


def test_loss_drops_about_the_configured_fraction() -> None:
    net = MemoryNetwork(random.Random(7))
    a, b = net.attach(A), net.attach(B)
    net.set_loss(0.3)
    send_all(a, B, numbered(2000))
    net.deliver_all()
    got = payloads(b.drain())
    stats = net.stats()
    assert stats.lost + len(got) == 2000
    assert 0.26 < stats.lost / 2000 < 0.34
    assert got == sorted(got)  # loss alone never reorders


def test_duplication_adds_about_the_configured_fraction_of_copies() -> None:
    net = MemoryNetwork(random.Random(7))
    a, b = net.attach(A), net.attach(B)
    net.set_duplication(0.2)
    send_all(a, B, numbered(2000))
    net.deliver_all()
    got = payloads(b.drain())
    assert set(got) == set(numbered(2000))
    assert len(got) == 2000 + net.stats().duplicated
    assert 0.17 < net.stats().duplicated / 2000 < 0.23


def test_delay_jitter_keeps_each_link_in_order() -> None:
    net = MemoryNetwork(random.Random(7))
    a, b = net.attach(A), net.attach(B)
    net.set_delay(10, 500)
    for i, m in enumerate(numbered(300)):
        net.deliver_until(i)
        a.send_nowait(B, m)
    net.deliver_all()
    assert payloads(b.drain()) == numbered(300)


def test_reorder_lets_later_messages_overtake() -> None:
    net = MemoryNetwork(random.Random(7))
    a, b = net.attach(A), net.attach(B)
    net.set_reorder(0.25, window_ms=50)
    send_all(a, B, numbered(400))
    assert net.deliver_until(0) == 400 - net.stats().reordered  # held-back copies wait
    assert net.deliver_until(50) == net.stats().reordered
    got = payloads(b.drain())
    assert sorted(got) == numbered(400)
    assert inversions(got) > 0
    assert 0.2 < net.stats().reordered / 400 < 0.3


def test_partition_separates_groups_drops_in_flight_copies_and_heals() -> None:
    net = MemoryNetwork(random.Random(7))
    a, b, c = net.attach(A, ["d"]), net.attach(B, ["d"]), net.attach(C, ["d"])
    net.set_delay(10, 10)
    a.send_nowait(C, b"in flight")
    net.partition([[A, B]])  # C is in the group of everyone not named
    a.broadcast_nowait("d", b"ann")
    c.send_nowait(A, b"from c")
    net.deliver_all()
    assert payloads(a.drain()) == [b"ann"]
    assert payloads(b.drain()) == [b"ann"]
    assert c.drain() == []
    assert net.stats().partitioned == 3  # in flight to C, broadcast to C, C to A

    net.heal()
    c.send_nowait(A, b"healed")
    net.deliver_all()
    assert payloads(a.drain()) == [b"healed"]


def test_heal_resends_presence_missed_across_the_partition() -> None:
    net = MemoryNetwork(random.Random(7))
    a = net.attach(A)
    net.attach(B)
    a.watch_presence_nowait(B)
    net.deliver_all()
    a.drain()
    net.partition([[A], [B]])
    net.disconnect(B)
    net.deliver_all()
    assert a.drain() == [] and a.presence(B) is True
    net.heal()
    net.deliver_all()
    assert payloads(a.drain()) == [b"offline"]
    assert a.presence(B) is False


def run_faulty(seed: int) -> list[tuple[str, bytes]]:
    net = MemoryNetwork(random.Random(seed))
    ts = [net.attach(d, ["d"]) for d in (A, B, C)]
    net.set_loss(0.1)
    net.set_duplication(0.1)
    net.set_reorder(0.1, 30)
    net.set_delay(1, 40)
    for i, m in enumerate(numbered(200)):
        net.deliver_until(i * 3)
        ts[i % 3].send_nowait((A, B, C)[(i + 1) % 3], m)
        if i % 10 == 0:
            ts[i % 3].broadcast_nowait("d", m)
    net.deliver_all()
    return [(t.device_id, d.payload) for t in ts for d in t.drain()]


def test_a_seed_reproduces_the_run_exactly() -> None:
    assert run_faulty(11) == run_faulty(11)
    assert run_faulty(11) != run_faulty(12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    dup=st.sampled_from([0.0, 0.3]),
    delay=st.tuples(st.integers(0, 20), st.integers(0, 200)),
    reorder=st.sampled_from([0.0, 0.4]),
)
def test_without_loss_every_message_arrives_and_order_holds_without_reorder(
    seed: int, dup: float, delay: tuple[int, int], reorder: float
) -> None:
    net = MemoryNetwork(random.Random(seed))
    a, b = net.attach(A), net.attach(B)
    net.set_duplication(dup)
    net.set_delay(min(delay), max(delay))
    net.set_reorder(reorder, 25)
    msgs = numbered(60)
    for i, m in enumerate(msgs):
        net.deliver_until(i * 2)
        a.send_nowait(B, m)
    net.deliver_all()
    got = payloads(b.drain())
    assert set(got) == set(msgs)  # the model: nothing lost
    assert len(got) == 60 + net.stats().duplicated
    if dup == 0:
        assert len(got) == 60
    if reorder == 0:
        assert sorted(set(got)) == msgs
        first_seen = list(dict.fromkeys(got))
        assert first_seen == msgs


def test_fault_settings_are_validated() -> None:
    net = MemoryNetwork(random.Random(1))
    with pytest.raises(ValueError, match="probability"):
        net.set_loss(1.5)
    with pytest.raises(ValueError, match="min_ms <= max_ms"):
        net.set_delay(10, 5)
    with pytest.raises(ValueError, match="two groups"):
        net.partition([[A], [A]])
    net.deliver_until(10)
    with pytest.raises(ValueError, match="forward only"):
        net.deliver_until(5)


def test_an_injected_clock_sets_the_send_time() -> None:
    class Clock:
        t = 1_000

        def now_ms(self) -> int:
            return self.t

    clock = Clock()
    net = MemoryNetwork(random.Random(1), clock=clock)
    a, b = net.attach(A), net.attach(B)
    net.set_delay(5, 5)
    a.send_nowait(B, b"x")
    assert net.next_due_ms() == 1_005
    clock.t = 2_000  # the clock, not deliver_until, says what time it is
    assert net.now_ms == 2_000
    assert net.deliver_until(1_004) == 0
    assert net.deliver_until(1_005) == 1
    assert payloads(b.drain()) == [b"x"]


# --------------------------------------------------------------------------- async interface


def test_async_interface_receives_in_order_and_iteration_ends_on_close() -> None:
    async def main() -> list[bytes]:
        net = MemoryNetwork(random.Random(1))
        a, b = net.attach(A), net.attach(B)
        async with b:
            await a.send(B, b"one")
            await a.send(B, b"two")
            waiter = asyncio.ensure_future(b.receive())
            await asyncio.sleep(0)
            assert not waiter.done()  # nothing moves until the test moves time
            net.deliver_all()
            got = [(await waiter).payload]
            async for d in b:
                got.append(d.payload)
                await b.close()
        with pytest.raises(TransportClosedError):
            await b.receive()
        with pytest.raises(TransportClosedError):
            await b.send(A, b"x")
        return got

    assert asyncio.run(main()) == [b"one", b"two"]


# --------------------------------------------------------------------------- never silent


def test_failed_sends_are_counted_and_warned_with_the_device_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = MemoryNetwork(random.Random(1))
    a = net.attach(A, ["street"])
    net.attach(B)
    a.label = "fridge-001"
    net.disconnect(A)
    caplog.set_level("WARNING", logger="edgefleet.transport")
    for _ in range(12):
        with pytest.raises(NotConnectedError):
            a.send_nowait(B, b"x")
    with pytest.raises(NotConnectedError):
        asyncio.run(a.broadcast("street", b"y"))
    stats = a.stats()
    assert (stats.send_failures, stats.send_not_connected, stats.sent) == (13, 13, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings  # the 1st and the 10th: rate-limited, never silent
    assert warnings[0].startswith(f"fridge-001: send to inbox of {B} failed (link down, 1 such")
    assert "10 such of 10 failed sends" in warnings[1]


def test_dropped_deliveries_are_warned(caplog: pytest.LogCaptureFixture) -> None:
    net = MemoryNetwork(random.Random(1))
    a, b = net.attach(A), net.attach(B, max_queued=2)
    caplog.set_level("WARNING", logger="edgefleet.transport")
    send_all(a, B, numbered(5))
    net.deliver_all()
    assert b.stats().dropped_overflow == 3
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"{B}: dropped a received inbox message" in warning
    assert "(overflow: limit 2; 1 dropped so far)" in warning


# --------------------------------------------------------------------------- broker limits


def street(net: MemoryNetwork, n: int) -> list[MemoryTransport]:
    return [net.attach(dev(i), ["street"]) for i in range(1, n + 1)]


def test_a_start_burst_over_mosquittos_limits_is_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """60 devices each broadcast 20 messages at once: 1,200 copies per subscriber arrive in one
    instant; Mosquitto's defaults hand over 20, queue 1,000 and drop 180, for every member."""
    caplog.set_level("WARNING", logger="edgefleet.transport")
    for limits, kept in ((UNLIMITED, 1200), (MOSQUITTO_DEFAULTS, 1020)):
        net = MemoryNetwork(random.Random(1))
        net.set_limits(limits)
        devices = street(net, 60)
        for t in devices:
            for m in numbered(20):
                t.broadcast_nowait("street", m)
        net.deliver_all()
        assert [len(t.drain()) for t in devices] == [kept] * 60, limits
        assert net.stats().dropped_queue_full == (1200 - kept) * 60
        assert net.dropped_for(dev(7)) == 1200 - kept
        assert net.in_flight() == 0
    warned = [r.getMessage() for r in caplog.records]
    assert any(f"outgoing messages to {dev(1)} are being dropped" in w for w in warned)


def test_the_window_paces_hand_overs_by_acknowledgements_in_arrival_order() -> None:
    net = MemoryNetwork(random.Random(1))
    net.set_limits(BrokerLimits(max_inflight=2, max_queued=10, ack_ms=10))
    a, b = net.attach(A), net.attach(B)
    send_all(a, B, numbered(5))
    assert net.in_flight() == 5
    arrivals = []
    for t in range(0, 31, 5):
        net.deliver_until(t)
        arrivals.append((t, len(b.drain())))
    assert arrivals == [(0, 2), (5, 0), (10, 2), (15, 0), (20, 1), (25, 0), (30, 0)]
    assert net.in_flight() == 0 and net.stats().dropped_queue_full == 0


def test_a_disconnect_forgets_the_queue_and_late_acknowledgements() -> None:
    net = MemoryNetwork(random.Random(1))
    net.set_limits(BrokerLimits(max_inflight=1, max_queued=5, ack_ms=10))
    a, b = net.attach(A), net.attach(B)
    send_all(a, B, numbered(3))
    net.deliver_until(0)
    net.disconnect(B)  # one in flight, two queued: a clean session forgets them
    net.reconnect(B)
    b.drain()
    send_all(a, B, [b"new"])
    net.deliver_all()
    assert payloads(b.drain()) == [b"new"]
    assert net.in_flight() == 0


def test_a_dropped_presence_comes_again_on_reconnect() -> None:
    net = MemoryNetwork(random.Random(1))
    net.set_limits(BrokerLimits(max_inflight=1, max_queued=0, ack_ms=10))
    a, b = net.attach(A), net.attach(B)
    send_all(b, A, [b"busy"])
    a.watch_presence_nowait(B)
    net.deliver_all()
    assert [d.kind for d in a.drain()] == ["inbox"]  # the presence found the window full
    assert net.dropped_for(A) == 1 and a.presence(B) is None
    net.disconnect(A)
    net.reconnect(A)
    net.deliver_all()
    assert a.presence(B) is True


def test_broker_limits_are_validated() -> None:
    for bad in ({"max_inflight": 0}, {"max_queued": -1}, {"ack_ms": -1}):
        with pytest.raises(ValueError, match="broker limits"):
            BrokerLimits(**bad)  # type: ignore[arg-type]
