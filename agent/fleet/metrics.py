"""Prometheus metrics of one runner process: `edgefleet run ... --metrics [HOST:]PORT`.

This module owns the metric names (``FAMILIES``, the one list the docs, the Grafana dashboard
and the tests are checked against), how a ``FleetSnapshot`` becomes them (``fleet_families``),
the event-loop lag probe, and the ``/metrics`` HTTP server. It is the only importer of
prometheus_client (the optional extra ``metrics``), which it imports when a server starts.

One collector reads one snapshot per scrape: nothing is updated on the devices' hot paths, the
counters they already keep are read when Prometheus asks. The server answers on its own thread,
while the devices' counters are only ever touched on the event loop's: a scrape therefore asks
the loop for the snapshot (and the lag figures) and waits for it, up to ``SCRAPE_TIMEOUT_S``. A
loop blocked longer than that fails the scrape (Prometheus marks the target down) rather than
serving stale figures.

Each shard of a fleet is its own process with its own server: shard I listens on PORT + I
(port 0: an ephemeral port each). Private households' temperatures and alarms are their owner's
readings and are not exported; their ledger health is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agent.errors import AgentError
from agent.fleet.view import DeviceRow, FleetSnapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

DEFAULT_HOST = "127.0.0.1"  # nothing leaves the machine unless a host is named
SCRAPE_TIMEOUT_S = 5.0
LAG_PERIOD_S = 0.25
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DEVICE = ("device", "kind", "site")

Type = Literal["counter", "gauge", "summary", "histogram"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its name as exposed (counters with ``_total``), type, help and labels."""

    name: str
    type: Type
    help: str
    labels: tuple[str, ...] = ()


FAMILIES = (
    Family("edgefleet_simulated_time_seconds", "gauge", "Simulated clock (Unix time)"),
    Family("edgefleet_readings_signed_total", "counter", "Readings signed", DEVICE),
    Family("edgefleet_blocks_sealed_total", "counter", "Blocks sealed", DEVICE),
    Family("edgefleet_chain_blocks", "gauge", "Blocks in the own chain", DEVICE),
    Family("edgefleet_readings_pending", "gauge", "Readings signed, not sealed yet", DEVICE),
    Family(
        "edgefleet_chain_lag_blocks",
        "gauge",
        "Own height minus the lowest height a local domain peer holds",
        DEVICE,
    ),
    Family("edgefleet_peers", "gauge", "Domain peers", DEVICE),
    Family("edgefleet_peers_online", "gauge", "Domain peers present on the broker", DEVICE),
    Family("edgefleet_forked", "gauge", "1 if fork evidence excludes this device", DEVICE),
    Family(
        "edgefleet_temperature_celsius",
        "gauge",
        "Latest temperature (private households withheld)",
        (*DEVICE, "sensor"),
    ),
    Family(
        "edgefleet_alarms_active",
        "gauge",
        "Alarms active now (private households withheld)",
        DEVICE,
    ),
    Family("edgefleet_gossip_headers_accepted_total", "counter", "Peer headers accepted", DEVICE),
    Family(
        "edgefleet_gossip_headers_refused_total",
        "counter",
        "Peer headers not accepted, by verdict",
        (*DEVICE, "reason"),
    ),
    Family(
        "edgefleet_gossip_forks_total",
        "counter",
        "Forks proven (detected here) or learned (evidence received)",
        (*DEVICE, "origin"),
    ),
    Family(
        "edgefleet_gossip_messages_dropped_total",
        "counter",
        "Gossip messages dropped before dispatch, by reason",
        (*DEVICE, "reason"),
    ),
    Family(
        "edgefleet_gossip_peer_offences_total",
        "counter",
        "Invalid or malformed messages (or broken promises) held against a peer",
        (*DEVICE, "offence"),
    ),
    Family("edgefleet_gossip_peers_muted_total", "counter", "Peers muted", DEVICE),
    Family("edgefleet_transport_sent_total", "counter", "Messages published", DEVICE),
    Family("edgefleet_transport_received_total", "counter", "Messages received", DEVICE),
    Family(
        "edgefleet_transport_dropped_total",
        "counter",
        "Received messages dropped by the transport, by reason",
        (*DEVICE, "reason"),
    ),
    Family("edgefleet_transport_send_failures_total", "counter", "Sends that failed", DEVICE),
    Family("edgefleet_transport_reconnects_total", "counter", "Broker reconnections", DEVICE),
    Family("edgefleet_replication_blocks", "gauge", "Own blocks tracked by replication", DEVICE),
    Family(
        "edgefleet_replication_blocks_full_copies",
        "gauge",
        "Own blocks with their full healthy copies (the copies wanted, or every domain peer when "
        "fewer)",
        DEVICE,
    ),
    Family("edgefleet_replication_held_bytes", "gauge", "Bytes of peers' blocks held", DEVICE),
    Family("edgefleet_replication_quota_bytes", "gauge", "Spare storage lent to peers", DEVICE),
    Family(
        "edgefleet_replication_audits_total",
        "counter",
        "Audits of this device's holders, by result",
        (*DEVICE, "result"),
    ),
    Family("edgefleet_replication_holders_excluded_total", "counter", "Holders excluded", DEVICE),
    Family(
        "edgefleet_trouble_total",
        "counter",
        "Trouble an honest fleet never has, by kind (the live view's trouble figures)",
        (*DEVICE, "trouble"),
    ),
    Family(
        "edgefleet_gossip_domain_converging",
        "gauge",
        "1 while every local member of the gossip domain keeps up with every other's head",
        ("domain",),
    ),
    Family(
        "edgefleet_gossip_domain_behind_seconds",
        "gauge",
        "How long the oldest shortfall of a head in the domain has lasted (network time)",
        ("domain",),
    ),
    Family(
        "edgefleet_group_sync_duration_seconds",
        "summary",
        "Group syncs of the stores' commits (real-time runs)",
    ),
    Family("edgefleet_group_sync_stores_total", "counter", "Stores covered by group syncs, summed"),
    Family(
        "edgefleet_event_loop_lag_seconds",
        "histogram",
        f"How late a {LAG_PERIOD_S} s sleep on the event loop wakes up",
    ),
)
BY_NAME = {f.name: f for f in FAMILIES}

# DeviceRow.counters key -> label value, per labelled family (absent keys export 0).
GOSSIP_DROPS = {
    "gossip.malformed_unattributed": "unattributable",  # undecodable, sender unknown
    "gossip.sender_mismatch": "sender_mismatch",
    "gossip.dropped_foreign": "foreign",  # not a peer of this device
    "gossip.dropped_muted": "muted",
    "gossip.dropped_own": "own",  # claims to be this device
    "gossip.unattributable": "unproven",  # no proof of its sender: forged, flipped, unknown key
    "gossip.old_version": "old_version",  # wire version 1
    "replication.unattributable": "unproven_replication",
    "replication.old_version": "old_version_replication",
}
OFFENCES = {f"gossip.penalty_{o}": o for o in ("invalid", "malformed", "promise")}
FORKS = {"gossip.forks_detected": "detected", "gossip.forks_learned": "learned"}
TRANSPORT_DROPS = {f"transport.dropped_{r}": r for r in ("oversize", "overflow", "malformed")}
AUDITS = {f"replication.audits_{r}": r for r in ("passed", "wrong", "missing", "timeout")}
HEADER = "gossip.header_"


class LoopLag:
    """Event-loop lag: how much later than asked a short sleep wakes up, as a histogram.

    A busy loop delays every device's timers and messages by this much; the figure is what the
    live view cannot show. ``run`` samples it until cancelled (one wake-up per period)."""

    def __init__(self, period_s: float = LAG_PERIOD_S) -> None:
        self.period_s = period_s
        self.counts = [0] * (len(LAG_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.sum_s = 0.0

    def record(self, lag_s: float) -> None:
        i = next((i for i, le in enumerate(LAG_BUCKETS) if lag_s <= le), len(LAG_BUCKETS))
        self.counts[i] += 1
        self.sum_s += lag_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.period_s)
            self.record(max(0.0, loop.time() - t0 - self.period_s))

    def totals(self) -> tuple[tuple[int, ...], float]:
        return tuple(self.counts), self.sum_s


@dataclass(frozen=True, slots=True)
class Listen:
    """Where one runner process serves /metrics."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """``PORT`` (on 127.0.0.1) or ``HOST:PORT``; ValueError says what was expected."""
        host, sep, port = text.rpartition(":")
        host = host.strip("[]") if sep else DEFAULT_HOST
        if not port.isdigit() or int(port) > 65535 or (sep and not host):
            raise ValueError(f"expected PORT or HOST:PORT (port 0-65535), found {text!r}")
        return cls(host, int(port))

    def for_shard(self, index: int) -> Listen:
        """Shard I of a fleet listens on PORT + I (port 0 stays ephemeral)."""
        return self if self.port == 0 else Listen(self.host, self.port + index)


def _empty(f: Family) -> Any:
    """prometheus_client's family for ``f``, without samples (Any: each type has its own
    ``add_metric``)."""
    from prometheus_client import metrics_core as core

    if f.type == "counter":
        return core.CounterMetricFamily(f.name, f.help, labels=f.labels)
    if f.type == "gauge":
        return core.GaugeMetricFamily(f.name, f.help, labels=f.labels)
    if f.type == "summary":
        return core.SummaryMetricFamily(f.name, f.help, labels=f.labels)
    return core.HistogramMetricFamily(f.name, f.help, labels=f.labels)


def fleet_families(
    snap: FleetSnapshot, lag: tuple[tuple[int, ...], float] | None = None
) -> list[Metric]:
    """Every family of ``FAMILIES``, in order, with the samples this snapshot gives them."""
    fams = {f.name: _empty(f) for f in FAMILIES}

    def add(name: str, labels: tuple[str, ...], value: float) -> None:
        fams[name].add_metric(list(labels), value)

    add("edgefleet_simulated_time_seconds", (), snap.sim_ms / 1000)
    for d in snap.devices:
        _device(d, add)
    for dom in snap.domains:
        add("edgefleet_gossip_domain_converging", (dom.domain,), int(dom.converging))
        add("edgefleet_gossip_domain_behind_seconds", (dom.domain,), dom.behind_ms / 1000)
    sync = snap.group_sync
    if sync is not None:
        summary = fams["edgefleet_group_sync_duration_seconds"]
        summary.add_metric([], count_value=sync.syncs, sum_value=sync.seconds)
        add("edgefleet_group_sync_stores_total", (), sync.stores)
    if lag is not None:
        counts, total_s = lag
        cumulative, buckets = 0, []
        for le, n in zip([*map(str, LAG_BUCKETS), "+Inf"], counts, strict=True):
            cumulative += n
            buckets.append((le, float(cumulative)))
        fams["edgefleet_event_loop_lag_seconds"].add_metric([], buckets, total_s)
    return list(fams.values())


def _device(d: DeviceRow, add: Callable[[str, tuple[str, ...], float], None]) -> None:
    who = (d.name, d.kind, d.site)
    c = d.counters
    add("edgefleet_readings_signed_total", who, d.readings)
    add("edgefleet_blocks_sealed_total", who, c.get("device.blocks", 0))
    add("edgefleet_chain_blocks", who, 0 if d.height is None else d.height + 1)
    add("edgefleet_readings_pending", who, d.pending)
    add("edgefleet_chain_lag_blocks", who, d.lag)
    add("edgefleet_peers", who, d.peers_total)
    add("edgefleet_peers_online", who, d.peers_online)
    add("edgefleet_forked", who, int(d.forked))
    if not d.private:
        for sensor, mc in d.temps_mc:
            add("edgefleet_temperature_celsius", (*who, sensor.removesuffix("_mc")), mc / 1000)
        add("edgefleet_alarms_active", who, len(d.alarms))
    add("edgefleet_gossip_headers_accepted_total", who, c.get(HEADER + "accepted", 0))
    for key, n in sorted(c.items()):
        if key.startswith(HEADER) and key != HEADER + "accepted":
            add("edgefleet_gossip_headers_refused_total", (*who, key.removeprefix(HEADER)), n)
    for name, table in (
        ("edgefleet_gossip_forks_total", FORKS),
        ("edgefleet_gossip_messages_dropped_total", GOSSIP_DROPS),
        ("edgefleet_gossip_peer_offences_total", OFFENCES),
        ("edgefleet_transport_dropped_total", TRANSPORT_DROPS),
    ):
        for key, label in table.items():
            add(name, (*who, label), c.get(key, 0))
    add("edgefleet_gossip_peers_muted_total", who, c.get("gossip.peers_muted", 0))
    add("edgefleet_transport_sent_total", who, c.get("transport.sent", 0))
    add("edgefleet_transport_received_total", who, c.get("transport.received", 0))
    add("edgefleet_transport_send_failures_total", who, c.get("device.send_failures", 0))
    add("edgefleet_transport_reconnects_total", who, c.get("transport.reconnects", 0))
    if d.replicated is not None:
        full, tracked = d.replicated
        add("edgefleet_replication_blocks", who, tracked)
        add("edgefleet_replication_blocks_full_copies", who, full)
        add("edgefleet_replication_held_bytes", who, d.held_bytes)
        add("edgefleet_replication_quota_bytes", who, d.quota_bytes)
        for key, label in AUDITS.items():
            add("edgefleet_replication_audits_total", (*who, label), c.get(key, 0))
        excluded = c.get("device.holders_excluded", 0)
        add("edgefleet_replication_holders_excluded_total", who, excluded)
    for kind, n in d.trouble.items():
        add("edgefleet_trouble_total", (*who, kind), n)


Scrape = tuple[FleetSnapshot, tuple[tuple[int, ...], float]]


class FleetCollector:
    """The one custom collector: every family from one snapshot taken on the loop per scrape."""

    def __init__(self, sample: Callable[[], Scrape]) -> None:
        self._sample = sample

    def describe(self) -> Iterator[Metric]:
        """The families without samples: the registry checks names with these, and never
        calls ``collect`` at registration (that would wait on the loop from the loop)."""
        for f in FAMILIES:
            yield _empty(f)

    def collect(self) -> Iterator[Metric]:
        snap, lag = self._sample()
        yield from fleet_families(snap, lag)


class MetricsServer:
    """``/metrics`` of one runner process: start it on the event loop, stop it after the run."""

    def __init__(self, snapshot: Callable[[], FleetSnapshot], listen: Listen) -> None:
        self._snapshot = snapshot
        self.listen = listen
        self.lag = LoopLag()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe: asyncio.Task[None] | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the ephemeral one when asked for port 0)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.listen.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    async def start(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.gc_collector import GCCollector
            from prometheus_client.process_collector import ProcessCollector
        except ImportError:
            raise MetricsError(
                "--metrics needs prometheus-client: pip install 'edgefleet[metrics]'"
            ) from None
        self._loop = asyncio.get_running_loop()
        registry = CollectorRegistry()
        registry.register(FleetCollector(self._sample))
        # Stock collectors: the process's CPU, memory, descriptors, and its GC's collections.
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        try:
            self._server, self._thread = start_http_server(
                self.listen.port, self.listen.host, registry
            )
        except OSError as exc:
            raise MetricsError(
                f"--metrics: cannot listen on {self.listen.host}:{self.listen.port} ({exc})"
            ) from None
        self._probe = self._loop.create_task(self.lag.run(), name="metrics-lag")

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._server is not None:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            await asyncio.to_thread(server.shutdown)  # waits for its serving loop to see it
            server.server_close()
            if thread is not None:
                thread.join()

    def _sample(self) -> Scrape:
        """On the server's thread: the snapshot and lag figures, taken on the event loop."""
        loop = self._loop
        assert loop is not None
        done: concurrent.futures.Future[Scrape] = concurrent.futures.Future()

        def take() -> None:
            if not done.set_running_or_notify_cancel():
                return  # the scrape gave up waiting
            try:
                done.set_result((self._snapshot(), self.lag.totals()))
            except Exception as exc:  # the scrape fails, the fleet runs on
                done.set_exception(exc)

        loop.call_soon_threadsafe(take)
        try:
            return done.result(timeout=SCRAPE_TIMEOUT_S)
        except TimeoutError:
            done.cancel()
            raise MetricsError(
                f"the event loop did not answer within {SCRAPE_TIMEOUT_S} s"
            ) from None


class MetricsError(AgentError, code="metrics"):
    """The metrics server cannot start (no prometheus-client, a port in use), or a scrape
    cannot be answered (the event loop is blocked)."""


async def serve_metrics(
    listen: Listen | None, snapshot: Callable[[], FleetSnapshot], shard: tuple[int, int]
) -> MetricsServer | None:
    """Start the server of shard ``shard[0]`` (None: metrics are off); stop it after the run."""
    if listen is None:
        return None
    server = MetricsServer(snapshot, listen.for_shard(shard[0]))
    await server.start()
    return server
