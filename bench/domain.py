"""Dissemination inside one gossip domain as it grows: the flat domain against the mesh.

``python -m bench.domain --json [--quick] [--sizes 32,256,1000]`` runs, for each domain size and
each shape, real gossip cores (agent.gossip.GossipNode, real keys and signed chains) over the
in-memory broker (agent.transport.memory.MemoryNetwork) with Mosquitto's per-client limits
(``MOSQUITTO_DEFAULTS``: 20 in flight, 1,000 queued, 10 ms acknowledgements) and a 2-20 ms link
delay, in simulated time. The runtime's part is played here: the presence each node watches,
the actions it returns (``Send`` to an inbox, ``Broadcast`` on the domain topic), its timers.

Shapes (docs/PROTOCOL.md 12.10):

- ``flat`` (before): every node watches every member's presence, greets and hellos every peer
  that comes up, pushes its headers by domain broadcast, runs full anti-entropy exchanges
  (every held head, ``reply = 1``) with any peer.
- ``mesh-broadcast`` (after, what the MQTT runtime runs): every node watches its mesh
  neighbours only (``2 ceil(log2 n)`` at most, every member in domains of 32 or fewer), hellos,
  greets and runs anti-entropy with them, lazily (at most 128 entries) once it holds more
  chains; headers by domain broadcast (the broker's fan-out is the one-hop tree).
- ``mesh``: the same with ``push="tree"``: headers go down the origin's binomial tree (every
  member gets one copy, within ``ceil(log2 n)`` hops), for transports without a broadcast.

Two phases per run, each with its own figures:

- ``start``: every member attaches and boots at once (certificates preloaded, as a fleet's
  runtime loads them from its data dir); 10 s of simulated time: presence, hellos, greetings.
- ``steady``: ``sealers`` members (drawn from the seed) seal a block every 5 s for ``window_s``
  seconds, then 10 s settle. Figures: messages and bytes per device-second, sent and received
  (presence deliveries included); ``header_p50_ms``/``p99``/``max`` from each seal to each
  member's acceptance; ``dup_factor`` (header offers over deliveries needed, as bench.fleet);
  ``missed`` (member, header) pairs not held after the settle; broker ``dropped``; wall time.

The per-device figures are per simulated second and averaged over all members; ``per_header``
is the steady phase's messages received per device per sealed header.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.gossip import mesh
from agent.gossip.actions import Action, Broadcast, HeadersAccepted, Send, ServePull
from agent.gossip.inputs import (
    CertificateKnown,
    MessageReceived,
    OwnBlockSealed,
    PeerDown,
    PeerUp,
    PullLoaded,
)
from agent.gossip.node import GossipNode
from agent.gossip.tuning import GossipConfig
from agent.protocol.sim import START_MS, Authority, SimDevice
from agent.protocol.trust import TrustStore
from agent.transport.memory import MOSQUITTO_DEFAULTS, MemoryNetwork, MemoryTransport
from bench.common import emit, make_parser

DOMAIN = "street"
TICK_MS = 2
SHAPES = {
    "flat": GossipConfig(push="broadcast", mesh=False, round_entries=1024),
    "mesh": GossipConfig(push="tree", mesh=True),
    "mesh-broadcast": GossipConfig(push="broadcast", mesh=True),
}


@dataclass
class _Phase:
    sent: int = 0
    sent_bytes: int = 0
    received: int = 0
    received_bytes: int = 0
    presence: int = 0
    start_ms: int = 0
    end_ms: int = 0
    kinds: Counter[str] = field(default_factory=Counter)


class DomainRun:
    """One domain of ``n`` members in one shape."""

    def __init__(self, n: int, shape: str, seed: int) -> None:
        self.n = n
        self.shape = shape
        self.config = SHAPES[shape]
        self.rng = random.Random(seed)
        self.net = MemoryNetwork(random.Random(seed + 1), start_ms=START_MS)
        self.net.set_limits(MOSQUITTO_DEFAULTS)
        self.net.set_delay(2, 20)
        authority = Authority(self.rng)
        self.devices = [SimDevice(authority, self.rng) for _ in range(n)]
        self.ids = sorted(d.device_id for d in self.devices)
        self.by_id = {d.device_id: d for d in self.devices}
        members = frozenset(self.ids)
        # One trust store for the whole simulation: every runtime would load the same
        # certificates from its data dir; sharing it verifies each once.
        self.trust = TrustStore(authority.roots, max_devices=max(4_096, 2 * n))
        for d in self.devices:
            self.trust.learn("certificate", d.certificate, START_MS)
        self.nodes: dict[str, GossipNode] = {}
        self.transports: dict[str, MemoryTransport] = {}
        self.timers: list[tuple[int, str]] = []
        self.due: dict[str, int] = {}
        self.phase = _Phase(start_ms=START_MS)
        self.sealed_at: dict[tuple[str, int], int] = {}
        self.latencies: list[int] = []
        self.ring = mesh.ring(DOMAIN, members)
        self.members = members
        self._roots = authority.roots

    @property
    def now(self) -> int:
        return self.net.now_ms

    def boot(self) -> None:
        for dev in self.ids:
            t = self.net.attach(dev, (DOMAIN,))
            self.transports[dev] = t
        for dev in self.ids:
            node = GossipNode(
                dev,
                {DOMAIN: self.members},
                self._roots,
                random.Random(self.rng.getrandbits(64)),
                config=self.config,
                now_ms=self.now,
                trust=self.trust,
                signer=self.by_id[dev],
            )
            self.nodes[dev] = node
            self._feed(dev, CertificateKnown(self.by_id[dev].certificate))
            t = self.transports[dev]
            for peer in node.watched():
                t.watch_presence_nowait(peer)

    def _feed(self, dev: str, event: object) -> None:
        node = self.nodes[dev]
        self._execute(dev, node.handle(event, self.now))  # type: ignore[arg-type]

    def _execute(self, dev: str, actions: list[Action]) -> None:
        t = self.transports[dev]
        ph = self.phase
        for a in actions:
            if isinstance(a, Send):
                t.send_nowait(a.peer_id, a.payload)
                ph.sent += 1
                ph.sent_bytes += len(a.payload)
                ph.kinds[f"sent_type_{a.payload[2]}"] += 1
            elif isinstance(a, Broadcast):
                t.broadcast_nowait(a.domain, a.payload)
                ph.sent += 1
                ph.sent_bytes += len(a.payload)
                ph.kinds["sent_broadcast"] += 1
            elif isinstance(a, ServePull):
                dev_chain = self.by_id[a.device_id].blocks
                headers = tuple(
                    dev_chain[h].header.wire
                    for h in range(a.from_height, min(a.to_height + 1, len(dev_chain)))
                )
                self._execute(
                    dev,
                    self.nodes[dev].handle(
                        PullLoaded(a.peer_id, a.request_id, headers, ()), self.now
                    ),
                )
            elif isinstance(a, HeadersAccepted):
                for h in range(a.from_height, a.to_height + 1):
                    at = self.sealed_at.get((a.device_id, h))
                    if at is not None:
                        self.latencies.append(self.now - at)
        nd = self.nodes[dev].next_deadline()
        if nd is not None and self.due.get(dev) != nd:
            self.due[dev] = nd
            heapq.heappush(self.timers, (nd, dev))

    def run_until(self, t_end: int, seals: list[tuple[int, str]] | None = None) -> None:
        seals = sorted(seals or [])
        si = 0
        while True:
            nxt = [t_end]
            if self.net.next_due_ms() is not None:
                nxt.append(self.net.next_due_ms())  # type: ignore[arg-type]
            while self.timers and self.due.get(self.timers[0][1]) != self.timers[0][0]:
                heapq.heappop(self.timers)
            if self.timers:
                nxt.append(self.timers[0][0])
            if si < len(seals):
                nxt.append(seals[si][0])
            t = max(self.now, min(nxt))
            if t > t_end or (t == t_end and t == self.now and not self._busy(t_end)):
                break
            t = min(t_end, t + TICK_MS - 1)
            self.net.deliver_until(t)
            for dev in self.ids:
                tr = self.transports[dev]
                if tr._queue:
                    for d in tr.drain():
                        self._on_delivery(dev, d)
            while si < len(seals) and seals[si][0] <= t:
                _, dev = seals[si]
                si += 1
                block = self.by_id[dev].seal(self.now)
                self.sealed_at[(dev, block.header.header.height)] = self.now
                self._feed(dev, OwnBlockSealed(block))
            while self.timers and self.timers[0][0] <= t:
                due, dev = heapq.heappop(self.timers)
                if self.due.get(dev) != due:
                    continue
                del self.due[dev]
                self._execute(dev, self.nodes[dev].handle_timer(self.now))
            if t >= t_end:
                break

    def _busy(self, t_end: int) -> bool:
        due = self.net.next_due_ms()
        return due is not None and due <= t_end

    def _on_delivery(self, dev: str, d: object) -> None:
        ph = self.phase
        kind = d.kind  # type: ignore[attr-defined]
        payload: bytes = d.payload  # type: ignore[attr-defined]
        ph.received += 1
        ph.received_bytes += len(payload)
        if kind == "presence":
            ph.presence += 1
            peer = d.peer_id  # type: ignore[attr-defined]
            ev = PeerUp(peer) if payload.startswith(b"online") else PeerDown(peer)
            self._feed(dev, ev)
        elif kind in ("inbox", "domain"):
            self._feed(dev, MessageReceived(None, payload, kind == "domain"))

    # --- figures --------------------------------------------------------------------------------

    def new_phase(self) -> None:
        self.phase = _Phase(start_ms=self.now)

    def figures(self) -> dict[str, object]:
        ph = self.phase
        secs = max(1e-9, (self.now - ph.start_ms) / 1000)
        per = self.n * secs
        return {
            "sent_msgs_per_dev_s": round(ph.sent / per, 3),
            "recv_msgs_per_dev_s": round(ph.received / per, 3),
            "sent_bytes_per_dev_s": round(ph.sent_bytes / per, 1),
            "recv_bytes_per_dev_s": round(ph.received_bytes / per, 1),
            "presence_deliveries": ph.presence,
            "messages_sent": ph.sent,
            "messages_received": ph.received,
        }


def _pct(values: list[int], p: float) -> int | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def run(n: int, shape: str, seed: int, *, sealers: int, window_s: int) -> dict[str, object]:
    wall0 = time.perf_counter()
    r = DomainRun(n, shape, seed)
    r.boot()
    t0 = r.now
    r.run_until(t0 + 10_000)
    start = r.figures()
    start["dropped"] = r.net.stats().dropped_queue_full
    r.new_phase()
    dropped0 = r.net.stats().dropped_queue_full
    offers0 = _offers(r)
    pick = random.Random(seed + 2).sample(r.ids, min(sealers, n))
    t1 = r.now
    seals = [
        (t1 + 1 + (i * 5_000) // len(pick) + k * 5_000, dev)
        for i, dev in enumerate(pick)
        for k in range(window_s // 5)
    ]
    r.run_until(t1 + window_s * 1_000 + 10_000, seals)
    steady = r.figures()
    needed = len(seals) * (n - 1)
    missed = 0
    for dev in r.ids:
        node = r.nodes[dev]
        for s in pick:
            if s == dev:
                continue
            head = node.head(s)
            want = len(r.by_id[s].blocks)
            have = 0 if head is None else head.header.height + 1
            missed += max(0, want - have)
    offers = _offers(r) - offers0
    steady.update(
        {
            "headers_sealed": len(seals),
            "deliveries_needed": needed,
            "per_header_recv_msgs_per_dev": round(r.phase.received / n / max(1, len(seals)), 3),
            "header_p50_ms": _pct(r.latencies, 0.50),
            "header_p99_ms": _pct(r.latencies, 0.99),
            "header_max_ms": max(r.latencies) if r.latencies else None,
            "dup_factor": round(offers / needed, 3) if needed else None,
            "missed": missed,
            "dropped": r.net.stats().dropped_queue_full - dropped0,
        }
    )
    degree = max(len(node.watched()) for node in r.nodes.values())
    return {
        "n": n,
        "shape": shape,
        "watched_presences_per_dev": degree,
        "tree_depth": mesh.depth(n) if shape == "mesh" else 1,
        "start": start,
        "steady": steady,
        "wall_s": round(time.perf_counter() - wall0, 1),
    }


def _offers(r: DomainRun) -> int:
    total = 0
    for node in r.nodes.values():
        total += sum(v for k, v in node.counters.items() if k.startswith("header_"))
    return total


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser("bench.domain", __doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--sizes", default=None, help="comma-separated domain sizes")
    parser.add_argument("--shapes", default="flat,mesh,mesh-broadcast")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sealers", type=int, default=None, help="members that seal (32)")
    parser.add_argument("--window", type=int, default=None, help="seconds of sealing (20)")
    ns = parser.parse_args(argv)
    sizes = (
        [int(x) for x in ns.sizes.split(",")]
        if ns.sizes
        else ([32, 64] if ns.quick else [32, 256, 1000])
    )
    shapes = ns.shapes.split(",")
    sealers, window = (16, 10) if ns.quick else (32, 20)
    sealers = ns.sealers if ns.sealers is not None else sealers
    window = ns.window if ns.window is not None else window
    results = []
    for n in sizes:
        for shape in shapes:
            results.append(run(n, shape, ns.seed, sealers=sealers, window_s=window))
    out = {
        "sealers": sealers,
        "window_s": window,
        "limits": "MOSQUITTO_DEFAULTS (20 in flight, 1000 queued, ack 10 ms), delay 2-20 ms",
        "runs": results,
    }

    class _A:
        json = ns.json
        quick = ns.quick

    emit(out, _A(), "gossip inside one domain")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
