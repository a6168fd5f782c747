"""An in-memory network of transports with injected faults, for deterministic protocol tests.

``MemoryNetwork(rng)`` plays the broker: devices ``attach`` to it and get a ``MemoryTransport``
with the same interface as the MQTT adapter (inbox, domain broadcast echoed to the sender as MQTT
does, watched presence, retained fork evidence, size limit, counters, ``NotConnectedError`` while
a device's link is down). Nothing moves on its own: every copy of a message is scheduled at a
simulated due time and handed over only by ``deliver_until(t_ms)`` (or ``deliver_all``).

Faults, all drawn from the injected seeded ``random.Random`` (a seed reproduces a run):

- ``set_loss(p)``: each copy of an inbox or domain message is lost with probability p;
- ``set_duplication(p)``: with probability p a second copy is scheduled (its own delay);
- ``set_delay(min_ms, max_ms)``: each copy waits a uniform integer delay; a link (sender,
  receiver) stays FIFO, as MQTT keeps one publisher's order;
- ``set_reorder(p, window_ms)``: with probability p a copy leaves its link's FIFO and waits an
  extra 1..window_ms, so later messages overtake it;
- ``partition(groups)`` / ``heal()``: devices in different groups (devices named in no group form
  one more group) exchange nothing; a copy in flight when a partition starts is dropped at its
  due time. Healing re-sends every watcher the current presence it missed.

Broker limits (``set_limits(BrokerLimits(...))``, unlimited by default) model what a real broker
does to a subscriber that receives faster than it acknowledges, as Mosquitto does per client:
at most ``max_inflight`` messages are handed over and not yet acknowledged (each is acknowledged
``ack_ms`` after its hand-over), the next ``max_queued`` wait at the broker in arrival order, and
any further copy is dropped, counted (``NetworkStats.dropped_queue_full``, ``dropped_for``) and
warned. ``MOSQUITTO_DEFAULTS`` holds Mosquitto 2.0's defaults (``max_inflight_messages 20``,
``max_queued_messages 1000``). The limits apply to every kind, presence included, as they do
in the broker; a dropped presence is sent again on ``heal`` or ``reconnect``.

Presence and evidence behave as retained QoS 1 messages: delayed and partitioned, never lost or
duplicated (unless broker limits drop them). Time is the network's own ``now_ms`` (moved by
``deliver_until``) unless a clock with ``now_ms()`` is injected; nothing reads the wall clock.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from agent.transport.base import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_QUEUED, Delivery, Transport
from agent.transport.errors import AttachError, NotConnectedError, TransportClosedError
from agent.transport.presence import encode_presence
from agent.transport.topics import Topics, validate_device_id, validate_domain

log = logging.getLogger("edgefleet.transport")


class NowSource(Protocol):
    def now_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class NetworkStats:
    """What the network did to the copies it carried."""

    scheduled: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    partitioned: int = 0
    undeliverable: int = 0  # receiver gone or disconnected at the due time
    dropped_queue_full: int = 0  # the receiver's window and broker queue were full (limits)


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """Per-subscriber limits of the broker; ``None``: unbounded (see the module docstring)."""

    max_inflight: int | None = None
    max_queued: int | None = None
    ack_ms: int = 1

    def __post_init__(self) -> None:
        for name in ("max_inflight", "max_queued"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "max_inflight" else 0):
                raise ValueError(f"broker limits: {name} must be >= 1 or None, found {value}")
        if self.ack_ms < 0:
            raise ValueError(f"broker limits: ack_ms must be >= 0, found {self.ack_ms}")


UNLIMITED = BrokerLimits()
# Mosquitto 2.0 per client: max_inflight_messages 20, max_queued_messages 1000 (beyond the
# in-flight ones). ack_ms: a busy client's PUBACK round trip (a 124-device fleet in one process
# measured about 300 ms per QoS 1 round trip; an idle one answers in about a millisecond).
MOSQUITTO_DEFAULTS = BrokerLimits(max_inflight=20, max_queued=1000, ack_ms=10)


@dataclass(slots=True)
class _Window:
    """The broker's side of one subscriber: messages handed over and not acknowledged, and
    those waiting behind them."""

    inflight: int = 0
    queue: deque[_Copy] = field(default_factory=deque)


@dataclass(frozen=True, slots=True, order=True)
class _Copy:
    due_ms: int
    seq: int
    src: str
    dst: str
    delivery: Delivery | None  # None: the acknowledgement that frees a slot of dst's window


def _probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], found {p}")
    return p


class MemoryNetwork:
    """The broker of an in-memory fleet; see the module docstring."""

    def __init__(
        self,
        rng: random.Random,
        *,
        clock: NowSource | None = None,
        start_ms: int = 0,
        topics: Topics | None = None,
    ) -> None:
        self._rng = rng
        self._clock = clock
        self._now = start_ms
        self.topics = topics or Topics()
        self._loss = 0.0
        self._dup = 0.0
        self._reorder = 0.0
        self._reorder_window_ms = 0
        self._delay = (0, 0)
        self._group_of: dict[str, int] | None = None
        self._heap: list[_Copy] = []
        self._seq = 0
        self._link_due: dict[tuple[str, str], int] = {}
        self._transports: dict[str, MemoryTransport] = {}
        self._presence: dict[str, bool] = {}  # retained presence of every device ever attached
        self._evidence: dict[str, bytes] = {}  # retained evidence by accused device
        self._revocations: dict[str, bytes] = {}  # retained revocation by revoked device
        self._seen: dict[tuple[str, str], bool] = {}  # (watcher, peer) -> presence last sent
        self._stats = {k: 0 for k in NetworkStats.__dataclass_fields__}
        self._limits = UNLIMITED
        self._windows: dict[str, _Window] = {}
        self._acks: dict[int, _Window] = {}  # seq of an acknowledgement -> the window it frees
        self._dropped_for: Counter[str] = Counter()

    # -- time and controls

    @property
    def now_ms(self) -> int:
        return self._clock.now_ms() if self._clock is not None else self._now

    def set_loss(self, p: float) -> None:
        self._loss = _probability("loss", p)

    def set_duplication(self, p: float) -> None:
        self._dup = _probability("duplication", p)

    def set_reorder(self, p: float, window_ms: int = 100) -> None:
        if window_ms < 1:
            raise ValueError(f"reorder window: expected >= 1 ms, found {window_ms}")
        self._reorder = _probability("reorder", p)
        self._reorder_window_ms = window_ms

    def set_delay(self, min_ms: int, max_ms: int) -> None:
        if not 0 <= min_ms <= max_ms:
            raise ValueError(f"delay: expected 0 <= min_ms <= max_ms, found {min_ms}, {max_ms}")
        self._delay = (min_ms, max_ms)

    def set_limits(self, limits: BrokerLimits) -> None:
        """Apply these per-subscriber limits to copies arriving from now on."""
        self._limits = limits

    @property
    def limits(self) -> BrokerLimits:
        return self._limits

    def dropped_for(self, device_id: str) -> int:
        """Copies to ``device_id`` the broker dropped because its queue was full."""
        return self._dropped_for[device_id]

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        group_of: dict[str, int] = {}
        for i, group in enumerate(groups):
            for device_id in group:
                validate_device_id(device_id)
                if device_id in group_of:
                    raise ValueError(f"partition: device {device_id} is named in two groups")
                group_of[device_id] = i
        self._group_of = group_of

    def heal(self) -> None:
        self._group_of = None
        for watcher in self._transports.values():
            for peer in watcher._watched:
                self._send_presence(peer, watcher.device_id)

    def separated(self, a: str, b: str) -> bool:
        if self._group_of is None or a == b:
            return False
        return self._group_of.get(a, -1) != self._group_of.get(b, -1)

    # -- devices

    def attach(
        self,
        device_id: str,
        domains: Iterable[str] = (),
        *,
        evidence: bool = True,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> MemoryTransport:
        """Plug a device in (connected, presence online); its id must not be attached already."""
        validate_device_id(device_id)
        if device_id in self._transports:
            raise AttachError(
                f"device {device_id} is already attached to this network (one identity, one device)"
            )
        t = MemoryTransport(
            self,
            device_id,
            domains,
            evidence=evidence,
            max_payload=max_payload,
            max_queued=max_queued,
        )
        self._transports[device_id] = t
        self._set_presence(device_id, True)
        if evidence:
            for accused, payload in self._evidence.items():
                self._schedule(
                    accused, device_id, self._evidence_delivery(accused, payload), lossy=False
                )
            for revoked, payload in self._revocations.items():
                self._schedule(
                    revoked, device_id, self._revocation_delivery(revoked, payload), lossy=False
                )
        return t

    def disconnect(self, device_id: str) -> None:
        """Cut a device's link abruptly: its will marks it offline, sends fail until reconnect."""
        t = self._get(device_id)
        if t._link_up:
            t._link_up = False
            self._windows.pop(device_id, None)  # a clean session: the broker forgets its queue
            self._set_presence(device_id, False)

    def reconnect(self, device_id: str) -> None:
        t = self._get(device_id)
        if not t._link_up:
            t._link_up = True
            t._reconnect_count += 1
            self._set_presence(device_id, True)
            for peer in t._watched:  # what it missed while down
                self._seen.pop((device_id, peer), None)
                self._send_presence(peer, device_id)

    def publish_presence(self, device_id: str, online: bool) -> None:
        """Publish a retained presence for ``device_id`` as any client on the broker can
        (presence is not authenticated, docs/PROTOCOL.md 13.3.1); its link stays as it is."""
        self._set_presence(device_id, online)

    def transport(self, device_id: str) -> MemoryTransport:
        return self._get(device_id)

    def _get(self, device_id: str) -> MemoryTransport:
        try:
            return self._transports[device_id]
        except KeyError:
            raise AttachError(f"device {device_id} is not attached to this network") from None

    def _detach(self, t: MemoryTransport) -> None:
        if self._transports.get(t.device_id) is t:
            del self._transports[t.device_id]
            self._windows.pop(t.device_id, None)
            self._set_presence(t.device_id, False)

    # -- routing

    def _send_inbox(self, src: str, peer_id: str, payload: bytes) -> None:
        delivery = Delivery(self.topics.inbox(peer_id), "inbox", None, payload)
        if peer_id in self._transports:
            self._schedule(src, peer_id, delivery, lossy=True)
        else:
            self._stats["undeliverable"] += 1

    def _send_domain(self, src: str, domain: str, payload: bytes) -> None:
        delivery = Delivery(self.topics.domain(domain), "domain", None, payload, domain)
        for dst, t in self._transports.items():
            if domain in t.domains:
                self._schedule(src, dst, delivery, lossy=True)

    def _send_evidence(self, src: str, accused: str, payload: bytes) -> None:
        self._evidence[accused] = payload
        delivery = self._evidence_delivery(accused, payload)
        for dst, t in self._transports.items():
            if t.evidence:
                self._schedule(src, dst, delivery, lossy=False)

    def _evidence_delivery(self, accused: str, payload: bytes) -> Delivery:
        return Delivery(self.topics.evidence(accused), "evidence", accused, payload)

    def publish_revocation(self, revoked: str, payload: bytes) -> None:
        """What ``edgefleet keys revoke`` publishes to a broker: ``payload`` retained on the
        revocation topic of ``revoked``, delivered to every device watching fleet notices (now
        and whenever one attaches later)."""
        self._revocations[validate_device_id(revoked)] = payload
        delivery = self._revocation_delivery(revoked, payload)
        for dst, t in self._transports.items():
            if t.evidence:
                self._schedule(revoked, dst, delivery, lossy=False)

    def _revocation_delivery(self, revoked: str, payload: bytes) -> Delivery:
        return Delivery(self.topics.revocation(revoked), "revocation", revoked, payload)

    def _watch(self, watcher: str, peer: str) -> None:
        self._seen.pop((watcher, peer), None)
        self._send_presence(peer, watcher)

    def _unwatch(self, watcher: str, peer: str) -> None:
        self._seen.pop((watcher, peer), None)

    def _set_presence(self, device_id: str, online: bool) -> None:
        self._presence[device_id] = online
        for watcher in self._transports.values():
            if device_id in watcher._watched:
                self._send_presence(device_id, watcher.device_id)

    def _send_presence(self, peer: str, watcher: str) -> None:
        """Send ``watcher`` the retained presence of ``peer`` unless it already has it."""
        state = self._presence.get(peer)
        if state is None or self._seen.get((watcher, peer)) == state:
            return
        if self.separated(peer, watcher):
            self._stats["partitioned"] += 1
            return
        self._seen[(watcher, peer)] = state
        delivery = Delivery(self.topics.presence(peer), "presence", peer, encode_presence(state))
        self._schedule(peer, watcher, delivery, lossy=False)

    def _schedule(self, src: str, dst: str, delivery: Delivery, *, lossy: bool) -> None:
        if self.separated(src, dst):
            self._stats["partitioned"] += 1
            return
        rng = self._rng
        if lossy and self._loss > 0 and rng.random() < self._loss:
            self._stats["lost"] += 1
            return
        copies = 1
        if lossy and self._dup > 0 and rng.random() < self._dup:
            copies = 2
            self._stats["duplicated"] += 1
        for _ in range(copies):
            lo, hi = self._delay
            due = self.now_ms + (rng.randint(lo, hi) if hi > lo else lo)
            if lossy and self._reorder > 0 and rng.random() < self._reorder:
                due += rng.randint(1, self._reorder_window_ms)
                self._stats["reordered"] += 1
            else:
                due = max(due, self._link_due.get((src, dst), due))
                self._link_due[(src, dst)] = due
            self._seq += 1
            heapq.heappush(self._heap, _Copy(due, self._seq, src, dst, delivery))
            self._stats["scheduled"] += 1

    # -- delivery

    def next_due_ms(self) -> int | None:
        return self._heap[0].due_ms if self._heap else None

    def in_flight(self) -> int:
        """Copies not yet handed over: scheduled, or waiting in a subscriber's broker queue."""
        return len(self._heap) - len(self._acks) + sum(len(w.queue) for w in self._windows.values())

    def deliver_until(self, t_ms: int) -> int:
        """Hand over every copy due at or before ``t_ms``, in due order; return how many."""
        if self._clock is None and t_ms < self._now:
            raise ValueError(
                f"deliver_until: time moves forward only: now {self._now}, asked {t_ms}"
            )
        delivered = 0
        while self._heap and self._heap[0].due_ms <= t_ms:
            c = heapq.heappop(self._heap)
            if self._clock is None:
                self._now = c.due_ms
            delivered += self._arrive(c)
        if self._clock is None:
            self._now = t_ms
        return delivered

    def deliver_all(self, max_steps: int = 1_000_000) -> int:
        """Deliver until nothing is in flight (including copies scheduled meanwhile)."""
        total = 0
        for _ in range(max_steps):
            due = self.next_due_ms()
            if due is None:
                return total
            total += self.deliver_until(max(due, self.now_ms))
        raise RuntimeError(f"deliver_all: still busy after {max_steps} steps")

    def _arrive(self, c: _Copy) -> int:
        """A copy (or an acknowledgement) reaches the broker's side of its receiver."""
        if c.delivery is None:
            return self._acked(c)
        limit = self._limits.max_inflight
        if limit is None:
            return self._hand_over(c)
        window = self._windows.setdefault(c.dst, _Window())
        if window.inflight < limit:
            return self._hand_over_in(window, c)
        queued = self._limits.max_queued
        if queued is not None and len(window.queue) >= queued:
            self._drop_queue_full(c)
            return 0
        window.queue.append(c)
        return 0

    def _hand_over_in(self, window: _Window, c: _Copy) -> int:
        """Hand a copy over through a window; it holds a slot until acknowledged."""
        t = self._transports.get(c.dst)
        if t is not None and t._link_up and not self.separated(c.src, c.dst):
            window.inflight += 1
            self._seq += 1
            self._acks[self._seq] = window
            ack = _Copy(self.now_ms + self._limits.ack_ms, self._seq, "", c.dst, None)
            heapq.heappush(self._heap, ack)
        return self._hand_over(c)

    def _acked(self, ack: _Copy) -> int:
        window = self._acks.pop(ack.seq)
        if self._windows.get(ack.dst) is not window:
            return 0  # the receiver disconnected meanwhile: that window is gone
        window.inflight -= 1
        limit = self._limits.max_inflight
        delivered = 0
        while window.queue and (limit is None or window.inflight < limit):
            delivered += self._hand_over_in(window, window.queue.popleft())
        return delivered

    def _drop_queue_full(self, c: _Copy) -> None:
        assert c.delivery is not None
        self._stats["dropped_queue_full"] += 1
        self._dropped_for[c.dst] += 1
        if c.delivery.kind == "presence":
            self._seen.pop((c.dst, c.src), None)  # heal() or reconnect() sends it again
        n = self._dropped_for[c.dst]
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th...: a warning that does not flood
            log.warning(
                "memory broker: outgoing messages to %s are being dropped (queue of %s full "
                "behind %s in flight; %d dropped so far)",
                c.dst,
                self._limits.max_queued,
                self._limits.max_inflight,
                n,
            )

    def _hand_over(self, c: _Copy) -> int:
        assert c.delivery is not None
        t = self._transports.get(c.dst)
        if t is None or not t._link_up:
            self._stats["undeliverable"] += 1
            if c.delivery.kind == "presence":
                self._seen.pop((c.dst, c.src), None)
            return 0
        if self.separated(c.src, c.dst):
            self._stats["partitioned"] += 1
            if c.delivery.kind == "presence":
                self._seen.pop((c.dst, c.src), None)  # heal() will send it again
            return 0
        if t._accept(c.delivery):
            self._stats["delivered"] += 1
            return 1
        return 0

    def stats(self) -> NetworkStats:
        return NetworkStats(**self._stats)


class MemoryTransport(Transport):
    """A device's view of a ``MemoryNetwork``. The ``*_nowait`` methods serve synchronous tests."""

    def __init__(
        self,
        network: MemoryNetwork,
        device_id: str,
        domains: Iterable[str],
        *,
        evidence: bool,
        max_payload: int,
        max_queued: int,
    ) -> None:
        super().__init__(
            device_id, domains, evidence=evidence, max_payload=max_payload, max_queued=max_queued
        )
        self._network = network
        self._link_up = True
        self._reconnect_count = 0

    @property
    def connected(self) -> bool:
        return self._link_up and not self._closed

    async def connect(self) -> None:
        if self._closed:
            raise TransportClosedError(f"transport of {self.device_id} is closed")

    async def wait_connected(self) -> None:
        if not self.connected:
            raise NotConnectedError(
                f"{self.device_id} is disconnected from the memory network; "
                "only MemoryNetwork.reconnect brings it back"
            )

    async def close(self) -> None:
        self.close_nowait()

    def close_nowait(self) -> None:
        if not self._closed:
            self._network._detach(self)
            self._mark_closed()

    def _require_link(self) -> None:
        if not self._link_up:
            raise NotConnectedError(f"{self.device_id} is disconnected: nothing was sent")

    def _require_link_for(self, where: str) -> None:
        try:
            self._require_link()
        except NotConnectedError as exc:
            self._send_failed(where, exc)
            raise

    def send_nowait(self, peer_id: str, payload: bytes) -> None:
        self._check_out(validate_device_id(peer_id), payload)
        self._require_link_for(f"inbox of {peer_id}")
        self._network._send_inbox(self.device_id, peer_id, payload)
        self._counters.sent += 1

    def broadcast_nowait(self, domain: str, payload: bytes) -> None:
        self._check_out(validate_domain(domain), payload)
        self._require_link_for(f"domain {domain}")
        self._network._send_domain(self.device_id, domain, payload)
        self._counters.sent += 1

    def publish_evidence_nowait(self, device_id: str, payload: bytes) -> None:
        self._check_out(validate_device_id(device_id), payload)
        self._require_link_for(f"evidence against {device_id}")
        self._network._send_evidence(self.device_id, device_id, payload)
        self._counters.sent += 1

    def drain(self) -> list[Delivery]:
        """Take every queued delivery at once."""
        out = list(self._queue)
        self._queue.clear()
        if not self._closed:
            self._ready.clear()
        return out

    async def _send_inbox(self, peer_id: str, payload: bytes) -> None:
        self._require_link()
        self._network._send_inbox(self.device_id, peer_id, payload)

    async def _send_domain(self, domain: str, payload: bytes) -> None:
        self._require_link()
        self._network._send_domain(self.device_id, domain, payload)

    async def _send_evidence(self, device_id: str, payload: bytes) -> None:
        self._require_link()
        self._network._send_evidence(self.device_id, device_id, payload)

    async def _watch(self, peer_id: str) -> None:
        self._network._watch(self.device_id, peer_id)

    async def _unwatch(self, peer_id: str) -> None:
        self._network._unwatch(self.device_id, peer_id)

    def watch_presence_nowait(self, peer_id: str) -> None:
        validate_device_id(peer_id)
        if peer_id not in self._watched:
            self._watched.add(peer_id)
            self._network._watch(self.device_id, peer_id)

    def _reconnects(self) -> int:
        return self._reconnect_count
