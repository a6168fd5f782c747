"""Fleet capacity on Mosquitto: the largest fleet this machine keeps up with in real time.

``python -m bench.fleet --json [--quick]`` runs ``agent.fleet.runner.FleetRunner`` in real time
(``speed=1.0``) against a Mosquitto broker of its own
(``agent.transport.brokers.MosquittoBroker``, its limits sized to the fleet as ``edgefleet run
--broker mosquitto`` sizes them, a free port) on a synthetic fleet: every device emits one
``temp_mc`` sample per second (deterministic values; device k starts at second ``1 + k % 10`` so
that blocks are not all sealed in the same second), seals a block every 10 s
(``SealPolicy(max_readings=64, max_age_ms=10_000)``) and gossips in domains of one **shape**
(``agent.config.devices.parse_fleet``; the default ``GossipConfig``; edge replication off: it is
measured by ``bench.replication``). Each trial runs in a fresh process: it
provisions the data dir (timed), starts Mosquitto, then runs the fleet for a warm-up (15 s), a
measurement window (30 s) and a grace period (two anti-entropy intervals, 10 s) in which headers
sealed in the window may arrive.

Shards. One runner process uses one core, so a trial runs the fleet as S shard processes
(``--shards S``, default ``os.cpu_count()``; ``python -m bench.fleet --shard-trial SPEC``), each a
``FleetRunner`` with ``shard=(i, S)`` on the trial's data dir and its Mosquitto (by URL). The
runner runs device k of the fleet (file order) in shard ``k % S``, so every gossip domain of 32
straddles all shards and most header traffic crosses processes through the broker. Each shard
prints its raw observations as JSON (``ShardReport``) and the trial process merges them
(``merge``). S=1 runs the one runner in the trial process itself (no child), as ``--profile``
does.

Windows. Start-up (keys, stores, connections) takes each shard a different time, tens of seconds
on a loaded machine, so windows are set on the network clock (wall time in ms, the same in every
process), common to all shards: each shard notes the time of its first simulation step in a
rendezvous directory; once every shard has started, the window opens a warm-up (15 s) after the
last start, closes 30 s later, and every shard stops a grace period after that (a shard that
started early warms up longer). The population is the headers sealed, in any shard, between the
opening and the closing; acceptances count from the opening to the stop; each shard snapshots its
counters on event-loop timers set for each edge (``window_skew_ms``: first to last opening
snapshot, i.e. how late a busy loop ran them). S=1 is the same timeline with one start.

Sizes double from 250 while fleets keep up (halve while they do not), then two bisection steps.
The JSON object holds the figures of the largest fleet that kept up (``devices``; 0 if none did,
with the smallest fleet's figures, ``tried_devices`` says which). Merged figures:

- ``keeps_up``: every rule of ``keeps_up_rule`` held (and every shard kept the same window): at
  the end of the window no shard's simulation lags the wall clock by ``lag_ms`` (1 s; the runner
  waits for every sample to be durable before the next step) or more; no device holds more
  than ``max_pending`` unsealed readings (20; sealing on time leaves about 11); at most 0.1% of
  the (header, peer) deliveries missed (``header_miss_rate``: a rare straggler is noise, a queue
  that drops or delays is not); and ``header_latency_p99_ms`` is below ``latency_p99_ms`` (one
  anti-entropy interval: a header may need one repair round, but no queue may build up).
  ``why_not`` lists the rules broken (and a shard's failure, with its stderr tail);
  ``lag_cause``: when the lag rule broke, why in words (``lag_cause``: the busiest loop at 90%
  or more, 50 or more store jobs waiting, 100 or more senders waiting for a send slot, or the
  loop running late with CPU to spare);
- ``header_latency_p50_ms`` / ``header_latency_p99_ms``: from the seal (observer event
  ``OwnBlockSealed`` at the sealing device) to acceptance (``HeadersAccepted`` covering that
  height) at each domain peer (all devices are live), network clock (wall time in ms, the same
  in every process), over every (header, peer) pair of the population, whichever shards the
  sealer and the peer are in; a pair not accepted within the grace period is a miss
  (``header_misses``, and ``header_miss_rate`` of the pairs), left out of the percentiles.
  ``header_pairs_needed`` = the population's headers times their sealer's domain peers;
  ``header_arrivals`` = pairs accepted in time (a peer's first acceptance counts, once);
  ``cross_shard_arrivals`` = those whose peer is in another shard than the sealer;
- ``dup_factor``: header deliveries over deliveries needed. Deliveries: header entries of
  ANNOUNCE and RESPONSE messages offered to the gossip cores, whatever the verdict (accepted,
  duplicate, gap, ...), i.e. the growth of the sum of ``GossipNode.counters["header_*"]`` over
  each shard's devices in its window, summed over shards; needed: ``header_pairs_needed``. In
  steady state the two count the same headers; a fleet that falls behind shows a factor below 1;
- ``cpu_ms_per_device_s``: process CPU time (``time.process_time``, every thread) of each shard
  over its window per wall second, summed over shards, per device: what a device-second costs
  only in a trial that keeps up (one that falls behind does less than a second of its devices'
  work each second: 3,000 behind read 0.47-0.56 ms the day 2,000 keeping up read 0.69-0.73;
  compare costs at sizes that keep up); ``loop_busy``: CPU share of a
  shard's event-loop thread (1.0: one core, saturated), the busiest shard (every shard's in
  ``loop_busy_per_shard``); ``machine_busy``: the shards' process CPU (every thread), summed, as
  a share of the machine's cores (1.0: every core saturated); ``process_busy``: the busiest
  shard's process CPU (every thread), in cores (its Python runs on one core at a time, under
  the GIL); ``broker_cpu_ms_per_device_s``:
  Mosquitto's CPU (``/proc/PID/stat``) from the first window opening to the last closing, per
  device;
- ``rss_kb_per_device``: RSS growth (``/proc/self/status``) of each shard from before its runner
  started to the end of its window, less the recorder's own arrival buffers, summed, per device;
- ``provision_s_per_device``: enrollment (keys and certificates at ``keyfile.FAST``), done once
  by the trial process and timed before any runner starts, excluded from every other figure;
- diagnostics: ``lag_ms`` and ``max_pending`` (worst shard), ``headers_sealed`` (population),
  ``sent_per_s`` / ``received_per_s`` (MQTT messages, all devices, summed), ``dropped``
  (deliveries transports dropped on overflow, summed), ``loop_lag_p50_ms`` / ``loop_lag_p99_ms``
  (how late a 50 ms timer fires, over every shard's samples), ``gc_ms_per_s`` (collector pauses
  per wall second, summed over shards) / ``gc_max_pause_ms`` (longest, any shard),
  ``send_failures`` (publishes the transports refused, summed), ``group_syncs_per_s`` (group
  syncs of the stores' durable commits, ``ledger/groupsync.py``, summed) and
  ``group_sync_mean_ms`` (their mean wall time), ``header_verdicts`` (the
  window's header offers by the gossip cores' verdict: ``header_accepted``, ``header_gap``,
  ``header_duplicate``, ...; summed over shards, zero counts left out), ``shards``,
  ``window_skew_ms``, ``start_skew_ms`` (first to last shard start) and ``per_shard`` (each
  shard's devices, headers sealed, loop_busy, CPU and RSS per device of its own, lag, start and
  window opening relative to the first).

Why a trial missed its deliveries (issue 14: 2,000 devices "behind: 100% missed" with the loops
half idle): ``header_losses`` follows the window's headers stage by stage. ``announce``: headers
whose ANNOUNCE was not handed to the connection within the grace (``not_announced``) and the
seal-to-handover p50/p99 (sends that wait for a slot); ``broker``: domain messages the shards'
connections should have routed (each broadcast once per connection subscribed to its domain)
against those they routed in the window (``routed_share`` < 1: they wait in paho's queues, the
broker or the socket); ``cores``: header entries offered to the gossip cores per needed delivery
(``offered_share`` < 1: they wait in the devices' receive queues); ``pairs``: ``in_time``,
``late`` (first accepted after the grace, before the stop; p50/p99) and ``never``; ``stage``: the
first stage that lost more than 10%, in words. ``backlogs``: where messages wait, sampled each
second of the window (largest sample in any shard, mean of the shards' sums): ``rx`` (bytes the
broker sent that the connections have not read), ``unacked`` / ``send_waiters`` (pipelined sends
awaiting their PUBACK, senders waiting for a slot), ``out_messages`` / ``out_packets`` (QoS 1
publishes paho holds, packets not yet written), ``inbox`` / ``inbox_max`` (deliveries in the
devices' receive queues), ``store_jobs``. ``core_counters``: the gossip cores' other counters
over the window (HELLOs, CERTS, summaries, ...); ``broker_dropping_notices``: Mosquitto's "Outgoing
messages are being dropped" notices. ``window_s`` / ``grace_s``: the window used.

Found with it: aiomqtt hands each received message to its iterator through a queue, a task and
an ``asyncio.wait`` (two or three turns of the event loop per message) and paho read one packet
per turn, so a shared connection whose loop also runs a thousand devices routed fewer messages
than its domains sent; the rest waited, uncounted, in aiomqtt's queue (1,000 devices on a loaded
machine: 23,000-31,000 messages waiting, ``routed_share`` 0, ``header_arrivals`` 0). The MQTT
link now routes each message as paho parses it and acknowledges sends without a task each
(``agent.transport.mqtt._Link._hook``). Then (2,000 devices in domains of 32, load about 2)
``routed_share`` is 0.97 and 26% of the pairs arrive in time instead of none; the next stage
shows: the hub's sends (1,378 a second: paho's window of 100 per PUBACK round trip, which the
loop's lag of 69 ms p50 stretches) are full (``unacked`` 1,000, up to 2,605 ``send_waiters``),
announces wait 2.9 s p50 for a slot, the devices' receive loops wait on their sends (``inbox``
100,000, ``offered_share`` 0.47), and the gossip cores' start-up traffic fills the window
(56,169 CERTS and 10,294 HELLOs in the window). A hub window of 1,000 (tried, not kept: it also
protects a default-sized broker's queues) put 71% of the pairs in time, but the loops then
saturated (lag 15.8 s): what remains is the cores' traffic per device (issue 14 section 1).

In one domain of 500 (shape ``1000`` at 500 devices) the loss was upstream of the cores
(``offered_share`` 0.21, ``routed_share`` 0.75, lag 18 s) and the profile (``--profile``, one
shard of 250) named it: the runtime's liveness scanned every member in doubt (in a large domain,
every one whose presence it does not follow) on every message and timer, half the CPU. With that
gone and a few per-delivery costs (docs/PROTOCOL.md 13.10), every pair arrives in time (p99
1.8 s) and what remains is CPU: each (header, member) delivery costs about 36 us all-in, and a
domain of 1,000 needs 99,900 of them a second.

Where a device-second goes (issue 14 section 3, the 0.3 ms goal). 1,000 devices in domains of
32 on 2 shards (main at f52bf3d, the 2-core machine under other workers' load: 1.0 CPU ms per
device-second in all): the event loop's thread 0.79 ms, the store threads 0.23 ms. Of the
loop (py-spy samples over the window): the receive loop (decode, authentication, the gossip
cores) 47%, the network timer (anti-entropy rounds, summaries, witness) 13%, paho's reads and
the hub's routing 10% (writes 2%), the watch and status file 5%, the write path's scheduling
(a queue wake-up, a shielded task, a lock, a store-job future and a gather task per device and
step, the seal timers, the runner's step) 10%, the rest asyncio's own. The store threads are
the write path: per device and step a signature (raw Ed25519 17 us of CPU here), a commit
(BEGIN, INSERT, COMMIT: 14 us of SQLite, 40 us with our Python around it uncontended, about
twice that against the GIL of a busy loop), a tenth of a seal (about 210 us: stored readings
read back and compared, the previous block re-hashed, header signed, committed) and a share of
the group syncs (about 140 us of CPU each). ``python -m bench.writer`` measures that path alone
(no peers, nothing received). Since then a step is a few store jobs of 32 devices each
(``agent.device.runtime.ingest``), a reading one SQL statement (the peer headers riding along
one more, in a commit of their own), and a network-timer deadline that moves earlier no longer
wakes the timer to sleep again (accepted headers did that about once a second per device: 500
devices, 10,715 wake-ups in 30 s, 3,339 with gossip work due). Paired with main in one session:
bench.writer at 2,000 devices 0.23 -> 0.14 CPU ms per device-second (loop 0.10 -> 0.03, store
threads 0.13 -> 0.11); this benchmark at 500 devices in domains of 32, two alternations, 1.19
-> 0.99 ms (0.83x; the loop's thread 0.86x), every trial keeping up. What is left of a
device-second is the receive path and the network timer's gossip work: the write path's floor
is about 0.06 ms (a signature, a commit, a tenth of a seal), so 0.3 ms per device-second needs
the receive side below about 0.2 ms.

The cliff at 2,000 devices (issue 14: "behind, 100% missed" with the loops half idle) was the
hubs' send window. Paired on a quiet machine (load 1-3), 1,000 and 2,000 devices in domains of
32, two shards, main before and after the write path above: at 1,000 both keep up, 0.955 ->
0.861 CPU ms per device-second (0.90x, two alternations); at 2,000 both are behind (48% and
78% of the deliveries late) with the same signature: each shard's hub holds 1,000 sends
awaiting their PUBACK (``unacked``), 2,000-3,500 senders wait for a slot, announcements leave
1.6-2.4 s after their seal, and the start-up's credential exchange (62,000 hellos) is still
running when the window opens. paho kept 100 publishes in flight per connection, so a hub of
1,000 devices sent about 900 messages a second, whatever the CPU. A hub now gets one in flight
per device it carries (``agent.transport.mqtt.hub_options``, up to 1,000): 2,000 devices keep
up (every pair in time, p99 2.1 s, dup 1.09, lag 1 ms, 0.87 CPU ms per device-second, loops
62-64% busy; 0.70 ms and 50% on a quiet machine). 2,500 get every pair in time but fall
behind the wall clock (lag 1.7 s: ``lag_cause`` names up to 1,118 senders waiting for a send
slot, and the loops running 180 ms late with CPU to spare, the collector taking 59 ms a second).
3,000 do not: the start-up exchange of 93,000 hellos was still running 15 s after the last shard
started, and reading the whole socket each turn instead of 256 packets changed nothing. Nor did
letting a step go on while the blocks it sealed wait for their announcement (at 2,500: 64% of
the pairs missed, the sends' window still full): the connections do not read their PUBACKs
fast enough (1 MB unread) while the loops run late.

Shapes (issue 14 section 3). The gossip domains' shape is a dimension: ``--shapes`` (default
``32,256,1000,2x128``) lists plain domains of N devices, and ``HxN``, the sample devices.yaml's
shape: households of H devices (a fridge, a washing machine, ...; each household a site and a
domain) inside streets of N devices (each street a domain). Each shape gets its own search (from
250 for 32, 512 for 256, 1,000 for 1,000 and 256 for 2x128; domains of 256 or more never below
one whole domain); the first shape's figures are at the top (as before), every shape's under
``shapes`` (all its figures and trials) and side by side in ``shapes_table`` (devices kept up,
CPU and RSS per device, broker CPU, MQTT messages sent and received per device-second, p99, dup
factor, miss rate, the loss stage). ``--domain N [--household H]`` measures one shape.

Authentication's cost (issue 13): ``auth_cost`` runs the first shape's largest fleet that kept
up again with ``message_crypto_off`` (benchmarks only: messages keep wire version 2 and its sizes,
with zeros where the signature goes, and nobody checks them; records, headers and certificates
are still signed and checked) and reports ``cpu_ms_per_device_s`` with and without, their
difference (``auth_cpu_ms_per_device_s``) and ratio. ``--no-auth`` runs every trial that way;
``--no-auth-cost`` skips the extra trial.

Beside them: ``fixed_500`` (the same figures for 500 devices), ``trials`` (every size tried, by
size), ``goals`` and ``meets_goals`` (issue 14's, per shape: 5,000 devices in domains of 32, one
domain of 1,000, any size for the other shapes; a p99 below 2 s and a dup factor of at most 1.5,
judged at ``devices``; also in ``shapes_table``), ``meta`` (with
``shards``). ``--quick`` runs each of the shapes 4, 8, 16 and 2x8 with 16 devices on S = min(2,
cores) shards, blocks every 3 s and anti-entropy every second (its fixed fleet is ``fixed_16``),
then ``auth_cost`` at 16: five trials, two or three minutes; tests/bench runs it.
``--profile FILE --start N`` runs one trial of N devices in this process (one shard) with
cProfile on the event loop's thread over the window. Trial options (``--start``, ``--min``,
``--max``, ``--window``, ``--seal-age``, ``--shards``, ...) override the plan; ``--help`` lists
them.

Measuring commands (the figures in the issue-14 report came from these, on the 2-core machine):

- the cliff: ``python -m bench.fleet --json --start 2000 --max 2000 --min 2000 --bisect 0
  --fixed 2000 --domain 32 --no-auth-cost`` (``header_losses.stage`` names where the deliveries
  went; ``--min`` keeps a failing size from halving);
- the shapes: ``python -m bench.fleet --json --shapes 32,256,1000,2x128``;
- authentication's cost at a size: ``python -m bench.fleet --json --domain 32 --start N --max N
  --min N --bisect 0 --fixed N`` (its ``auth_cost``);
- before and after a change, paired on one size: the same ``--trial`` spec run alternately from
  a worktree of main (``git worktree add --detach ../base main``) and from the branch, e.g.
  ``python -m bench.fleet --trial '{"plan": {...Plan(start=N, max_devices=N, fixed=N, bisect=0,
  shards=2) as JSON...}, "devices": N, "dir": "/tmp/x"}'`` (each prints one trial's JSON);
- a profile of a keeping-up fleet: ``python -m bench.fleet --profile /tmp/fleet.prof --start 300
  --window 30`` (one shard, this process; top functions on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config.devices import FleetConfig, parse_fleet
from agent.device.runtime import DeviceAgent
from agent.device.sealing import SealPolicy
from agent.fleet.datadir import DataDir
from agent.fleet.provision import provision
from agent.fleet.runner import FleetRunner, RunOptions
from agent.gossip import actions as A
from agent.gossip import inputs as I
from agent.gossip.tuning import GossipConfig
from agent.protocol import auth
from agent.transport.brokers import MosquittoBroker
from agent.transport.mqtt import MqttTransport
from bench.common import BenchArgs, emit, environment
from firmware_sim.samples import Sample
from ledger.identity import PublicKey, SigningKey

SENSOR = "temp_mc"
# Issue 14's goals, judged at the largest fleet of a shape that kept up: at least ``devices``
# (per shape: ``SHAPE_DEVICES``; a shape without a target must keep up at some size), every
# header to every member with a p99 below 2 s and a dup factor of at most 1.5.
GOALS: dict[str, int | float] = {
    "devices": 5_000,
    "dup_factor": 1.5,
    "header_latency_p99_ms": 2_000,
}
SHAPE_DEVICES: dict[str, int] = {"domain_32": 5_000, "domain_1000": 1_000}
_PROG = "python -m bench.fleet"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
PROBE_S = 0.05
GAUGE_S = 1.0  # backlogs sampled this often through the window
GAUGES = (
    "rx",
    "unacked",
    "send_waiters",
    "out_messages",
    "out_packets",
    "inbox",
    "inbox_max",
    "store_jobs",
)
MISS_TOLERANCE = 0.001  # keeps up: at most this share of (header, peer) deliveries missed
STOP_LATE_S = 30  # a run still going this long after its planned stop is stopped (watchdog)
STDERR_TAIL = 5  # lines of a failed shard's stderr quoted in why_not


@dataclass(frozen=True, slots=True)
class Plan:
    """One benchmark run: the sizes to search, the fixed size, the shards and each trial's
    timing."""

    start: int = 250  # first size tried; sizes double from here
    max_devices: int = 8_000  # never try more
    min_devices: int = 16  # nor fewer
    fixed: int = 500
    bisect: int = 2  # bisection steps after the first failure
    domain_size: int = 32  # devices per gossip domain (with household: per street)
    household: int = 0  # > 0: households of this many devices inside the streets (mixed shape)
    auth: bool = True  # False: wire-v2 authentication without its cryptography (bench only)
    warmup_s: int = 15
    window_s: int = 30
    seal_age_ms: int = 10_000
    anti_entropy_ms: int = GossipConfig().anti_entropy_ms
    lag_ms: int = 1_000  # keeps up: lag at the end of the window below this
    seed: int = 7
    shards: int = 1  # runner processes per trial (the command line defaults to the cores)

    def __post_init__(self) -> None:
        names = ("start", "max_devices", "min_devices", "fixed", "window_s", "seal_age_ms")
        for name in (*names, "shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"plan: expected {name} >= 1, found {getattr(self, name)}")
        if self.domain_size < 2 or self.bisect < 0:
            raise ValueError(
                f"plan: expected domain_size >= 2 and bisect >= 0, found {self.domain_size} "
                f"and {self.bisect}"
            )
        if self.household < 0 or self.household >= self.domain_size:
            raise ValueError(
                f"plan: expected 0 <= household < domain_size, found {self.household} in "
                f"streets of {self.domain_size}"
            )
        if self.warmup_s * 1000 < self.seal_age_ms:
            raise ValueError(
                f"plan: the warm-up must last a block age at least (no block before it), "
                f"expected warmup_s >= {-(-self.seal_age_ms // 1000)}, found {self.warmup_s}"
            )

    @property
    def grace_s(self) -> int:
        """Time a header sealed in the window has to reach every peer: two anti-entropy rounds."""
        return max(2, 2 * self.anti_entropy_ms // 1000)

    @property
    def latency_p99_ms(self) -> int:
        """Keeps up: p99 below one anti-entropy interval (a repair pull, not a growing queue)."""
        return self.anti_entropy_ms

    @property
    def max_pending(self) -> int:
        return 2 * self.seal_age_ms // 1000

    @property
    def shape(self) -> str:
        """The fleet's shape: ``domain_32``, or ``households_2_in_streets_128``."""
        if self.household:
            return f"households_{self.household}_in_streets_{self.domain_size}"
        return f"domain_{self.domain_size}"

    def fleet(self, devices: int) -> FleetConfig:
        return fleet_config(devices, self.domain_size, self.seed, self.household)

    def shards_for(self, devices: int) -> int:
        """Shards of a trial: never more than devices (a shard of none measures nothing)."""
        return min(self.shards, devices)

    def gossip(self) -> GossipConfig:
        jitter = GossipConfig().jitter_ms * self.anti_entropy_ms // GossipConfig().anti_entropy_ms
        return GossipConfig(anti_entropy_ms=self.anti_entropy_ms, jitter_ms=jitter)

    def budget_s(self, devices: int) -> int:
        """Wall seconds a trial's shards may take, start-up included (it is I/O bound: about
        0.3 s per device and shard on a busy 2-core machine)."""
        return self.warmup_s + self.window_s + self.grace_s + 300 + devices // 2


# Tiny fleets, blocks every 3 s and anti-entropy every second, so that a trial lasts seconds.
QUICK = Plan(
    start=16,
    max_devices=16,
    min_devices=16,
    fixed=16,
    bisect=0,
    warmup_s=5,
    window_s=5,
    seal_age_ms=3_000,
    anti_entropy_ms=1_000,
)


# --------------------------------------------------------------------------- the fleet


def fleet_config(devices: int, domain_size: int, seed: int, household: int = 0) -> FleetConfig:
    """``devices`` appliances in gossip domains of ``domain_size`` (a site each, the last one
    possibly smaller), built through ``parse_fleet`` with one counted device group per site.

    ``household`` > 0: the sample devices.yaml's shape instead: streets of ``domain_size``
    devices, each street a gossip domain, made of households of ``household`` devices (a fridge,
    a washing machine, ...), each household a site and a gossip domain of its own; every device
    is in its household's domain and its street's."""
    if devices < 1 or domain_size < 2:
        raise ValueError(
            f"fleet: expected >= 1 devices in domains of >= 2, found {devices} in {domain_size}"
        )
    cells = -(-devices // domain_size)
    sizes = [min(domain_size, devices - j * domain_size) for j in range(cells)]
    # Gossip capacity only: edge replication has its own benchmark (bench.replication).
    doc: dict[str, Any] = {"fleet": "bench", "seed": seed, "replication": {"copies": 0}}
    if not household:
        doc["sites"] = [{"id": "cell-{i}", "kind": "street", "count": cells}]
        doc["devices"] = [
            {
                "name": f"c{j}-d{{i}}",
                "count": size,
                "kind": "refrigerator",
                "site": f"cell-{j}",
                "sampling_period": "1s",
            }
            for j, size in enumerate(sizes, 1)
        ]
        return parse_fleet(doc, "bench.fleet")
    kinds = ("refrigerator", "washing_machine", "dishwasher", "oven")
    sites: list[dict[str, Any]] = [{"id": "street-{i}", "kind": "street", "count": cells}]
    groups: list[dict[str, Any]] = []
    for j, size in enumerate(sizes, 1):
        homes = -(-size // household)
        sites.append({"id": f"s{j}-home-{{i}}", "kind": "household", "count": homes})
        for m in range(household):
            count = len(range(m, size, household))  # the m-th device of each home, if it has one
            if count:
                groups.append(
                    {
                        "name": f"s{j}-a{m}-{{i}}",
                        "count": count,
                        "kind": kinds[m % len(kinds)],
                        "site": f"s{j}-home-{{i}}",
                        "domains": [f"s{j}-home-{{i}}", f"street-{j}"],
                        "sampling_period": "1s",
                    }
                )
    doc["sites"] = sites
    doc["devices"] = groups
    return parse_fleet(doc, "bench.fleet")


class SyntheticSource:
    """A ``SampleSource``: one ``temp_mc`` sample per device per second, the first one of device
    ``k`` at second ``1 + k % stagger_s``. Values are a pure function of (device, second).

    ``on_step(elapsed_ms, lag_ms)`` is called at every step: simulated ms since the first step
    was asked for, and how far the wall clock has run ahead of that."""

    def __init__(
        self,
        cfg: FleetConfig,
        step_ms: int,
        stagger_s: int,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.names = [d.name for d in cfg.devices]
        self.start_ms = self.now_ms = cfg.start_ms
        self.step_ms = step_ms
        self.stagger_s = max(1, stagger_s)
        self.on_step = on_step
        self.wall0: float | None = None

    def targets(self, until_ms: int) -> Iterator[int]:
        if self.wall0 is None:
            self.wall0 = time.monotonic()
        t = self.now_ms
        while t < until_ms:
            t = min(t + self.step_ms, until_ms)
            yield t

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        if self.on_step is not None and self.wall0 is not None:
            elapsed = until_ms - self.start_ms
            self.on_step(elapsed, (time.monotonic() - self.wall0) * 1000 - elapsed)
        out = []
        first = (self.now_ms - self.start_ms) // 1000 + 1
        last = (until_ms - self.start_ms) // 1000
        for second in range(first, last + 1):
            t = self.start_ms + second * 1000
            for k, name in enumerate(self.names):
                if second >= 1 + k % self.stagger_s:
                    out.append((name, Sample(t, SENSOR, sample_value(k, second))))
        self.now_ms = max(self.now_ms, until_ms)
        return out


def sample_value(device: int, second: int) -> int:
    """Milli-degrees C between 3,000 and 5,000, deterministic."""
    return 3_000 + (device * 7_919 + second * 104_729) % 2_001


# --------------------------------------------------------------------------- one shard


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A shard's counters at one window edge."""

    wall: float  # time.monotonic(), s
    net_ms: int  # network clock (wall time), ms
    cpu: float  # process CPU, s
    loop_cpu: float  # CPU of the event loop's thread, s
    broker_cpu: float  # Mosquitto's CPU, s
    rss_kb: int
    offers: int  # header entries offered to the gossip cores
    sent: int
    received: int
    dropped: int
    send_failures: int
    verdicts: Mapping[str, int]  # header verdicts of the gossip cores (header_accepted, ...)
    syncs: int = 0  # group syncs of the runner's stores (ledger/groupsync.py)
    sync_s: float = 0.0  # wall time in them, s
    core: Mapping[str, int] = dataclasses.field(default_factory=dict)  # other core counters
    broadcasts: Mapping[str, int] = dataclasses.field(default_factory=dict)  # by domain
    routed: Mapping[str, int] = dataclasses.field(default_factory=dict)  # by kind, at the links
    announced: int = 0  # own headers whose ANNOUNCE was handed to the connection


@dataclass(frozen=True, slots=True)
class ShardReport:
    """One shard's raw observations, as its process prints them (``to_json``) for the merge.

    ``arrivals`` maps a sealer's device id to flat triples ``(height, receiver, net ms)``: every
    ``HeadersAccepted`` at this shard's devices from the window's opening to the stop;
    ``receiver`` is the device's index in the fleet file."""

    index: int
    count: int
    devices: int
    start_ms: int | None  # net ms of the shard's first simulation step (None: never started)
    window: tuple[int, int] | None  # the common window [open, close), net ms (None: unknown)
    peers: Mapping[str, int]  # local device id -> its domain peers
    sealed: tuple[tuple[str, int, int], ...]  # (device id, height, seal net ms) in the window
    arrivals: Mapping[str, Sequence[int]]
    open: Snapshot | None
    close: Snapshot | None
    rss0_kb: int  # before the runner started
    recorder_kb: int  # the arrival buffers at the window's close (not the fleet's memory)
    lag_ms: float  # at the last step seen
    max_pending: int  # at the window's close
    aborted: str  # why the shard stopped early ("" if it did not)
    gc_pauses_ms: tuple[float, ...]
    loop_lags_ms: tuple[float, ...]
    # (device id, height, net ms): own headers of the window whose ANNOUNCE was handed to the
    # connection (a broadcast returned), up to the stop.
    announces: tuple[tuple[str, int, int], ...] = ()
    # Connections of this shard subscribed to each domain (a hub: 1; a connection per device:
    # its local members): how many copies of a domain message the shard's links should route.
    subscribers: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # Backlogs sampled once a second through the window (``GAUGES``), one list per gauge.
    gauges: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        doc["open"] = None if self.open is None else dataclasses.asdict(self.open)
        doc["close"] = None if self.close is None else dataclasses.asdict(self.close)
        doc["arrivals"] = {k: list(v) for k, v in self.arrivals.items()}
        doc["peers"] = dict(self.peers)
        doc["subscribers"] = dict(self.subscribers)
        doc["gauges"] = {k: list(v) for k, v in self.gauges.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ShardReport:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(doc) != names:
            raise ValueError(
                f"shard report: expected the keys {sorted(names)}, found {sorted(doc)}"
            )
        return cls(
            index=int(doc["index"]),
            count=int(doc["count"]),
            devices=int(doc["devices"]),
            start_ms=None if doc["start_ms"] is None else int(doc["start_ms"]),
            window=None
            if doc["window"] is None
            else (int(doc["window"][0]), int(doc["window"][1])),
            peers={str(k): int(v) for k, v in doc["peers"].items()},
            sealed=tuple((str(d), int(h), int(t)) for d, h, t in doc["sealed"]),
            arrivals={str(k): tuple(v) for k, v in doc["arrivals"].items()},
            open=None if doc["open"] is None else _snapshot(doc["open"]),
            close=None if doc["close"] is None else _snapshot(doc["close"]),
            rss0_kb=int(doc["rss0_kb"]),
            recorder_kb=int(doc["recorder_kb"]),
            lag_ms=float(doc["lag_ms"]),
            max_pending=int(doc["max_pending"]),
            aborted=str(doc["aborted"]),
            gc_pauses_ms=tuple(float(x) for x in doc["gc_pauses_ms"]),
            loop_lags_ms=tuple(float(x) for x in doc["loop_lags_ms"]),
            announces=tuple((str(d), int(h), int(t)) for d, h, t in doc["announces"]),
            subscribers={str(k): int(v) for k, v in doc["subscribers"].items()},
            gauges={str(k): tuple(int(x) for x in v) for k, v in doc["gauges"].items()},
        )


def _snapshot(doc: Mapping[str, Any]) -> Snapshot:
    fields = dict(doc)
    for name in ("verdicts", "core", "broadcasts", "routed"):
        fields[name] = {str(k): int(v) for k, v in doc.get(name, {}).items()}
    return Snapshot(**fields)


class Recorder:
    """Watches one shard's run: lag at each step, the common window (from the rendezvous), its
    seals in the window, acceptances at its devices, counters at the window edges; stops the run
    a grace period after the window closes."""

    def __init__(
        self,
        plan: Plan,
        shard: tuple[int, int],
        broker_pid: int | None,
        parent_pid: int | None = None,
        rendezvous: Path | None = None,
    ) -> None:
        if shard[1] > 1 and rendezvous is None:
            raise ValueError(f"recorder: shard {shard[0]}/{shard[1]} needs a rendezvous directory")
        self.plan = plan
        self.shard = shard
        self.broker_pid = broker_pid
        self.parent_pid = parent_pid  # a shard process stops if its trial process goes
        self.rendezvous = rendezvous
        self.runner: FleetRunner | None = None
        self.profiler: cProfile.Profile | None = None  # enabled over the window only
        self.rss0 = rss_kb()
        self.lag_ms = 0.0
        self.start_ms: int | None = None
        self.window: tuple[int, int] | None = None  # [open, close), net ms, once every shard ran
        self.open: Snapshot | None = None
        self.close: Snapshot | None = None
        self.max_pending = 0
        self.recorder_kb = 0
        self.aborted = ""
        self.started = asyncio.Event()  # set at the first step of the simulation
        self._index: dict[str, int] = {}  # device name -> index in the fleet file
        self._peers: dict[str, int] = {}
        self._sealed: list[tuple[str, int, int]] = []
        self._arrivals: dict[str, array[int]] = {}
        self.gc_pauses: list[float] = []  # ms of each garbage collection during the window
        self._gc_start = 0.0
        self.loop_lags: list[float] = []  # ms an asyncio timer fired late, during the window
        self._probe: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._broadcasts: Counter[str] = Counter()  # domain broadcasts handed to connections
        self._announcing: dict[str, tuple[str, int, int]] = {}  # device name -> sealed, waiting
        self._announces: list[tuple[str, int, int]] = []
        self._subscribers: Counter[str] = Counter()
        self.gauges: dict[str, list[int]] = {g: [] for g in GAUGES}

    @property
    def stop_ms(self) -> int | None:
        """When the run stops (net ms): a grace period after the window closes."""
        return None if self.window is None else self.window[1] + self.plan.grace_s * 1000

    def source(self, cfg: FleetConfig, step_ms: int) -> SyntheticSource:
        self._index = {d.name: k for k, d in enumerate(cfg.devices)}
        return SyntheticSource(cfg, step_ms, self.plan.seal_age_ms // 1000, self.on_step)

    def on_step(self, elapsed_ms: int, lag_ms: float) -> None:
        runner = self.runner
        assert runner is not None
        now = runner.net_clock.now_ms()
        if not self.started.is_set():
            self._start(runner, now)
        self.lag_ms = lag_ms
        if self.window is None:
            self.window = self._common_window()
            if self.window is not None:
                self._schedule(runner, now)
        plan = self.plan
        if lag_ms > max(10_000, plan.window_s * 500) and not self.aborted:
            self.aborted = f"lag {lag_ms / 1000:.1f} s: stopped early"
            self._close_window()  # if open, the figures then cover the window up to here
            runner.request_stop()

    def _start(self, runner: FleetRunner, now: int) -> None:
        subscribed: set[tuple[int, str]] = set()
        for agent in runner.agents.values():
            agent.observers.append(self.observe)
            self._peers[agent.device_id] = len(agent.peer_ids)
            self._count_broadcasts(agent)
            conn = connection_of(agent)
            for domain in agent.transport.domains:
                subscribed.add((id(agent) if conn is None else id(conn), domain))
        self._subscribers = Counter(domain for _, domain in subscribed)
        self.start_ms = now
        if self.rendezvous is not None:
            tmp = self.rendezvous / f".start-{self.shard[0]}"
            tmp.write_text(str(now))
            tmp.replace(self.rendezvous / f"start-{self.shard[0]}")  # whole, or not there
        self.started.set()
        self._probe = asyncio.get_running_loop().create_task(self._loop_probe())
        self._gauge_task = asyncio.get_running_loop().create_task(self._gauge_probe(runner))
        gc.callbacks.append(self._on_gc)

    def _count_broadcasts(self, agent: DeviceAgent) -> None:
        """Count the device's domain broadcasts, and note when the ANNOUNCE of each own header
        sealed in the window was handed to its connection (the first broadcast after the seal:
        the gossip core announces a sealed block at once, in the same call)."""
        ctx = agent.ctx
        send = ctx.broadcast
        name = agent.name

        async def broadcast(domain: str, payload: bytes) -> None:
            await send(domain, payload)
            self._broadcasts[domain] += 1
            sealed = self._announcing.pop(name, None)
            if sealed is not None:
                self._announces.append((sealed[0], sealed[1], ctx.net_clock.now_ms()))

        ctx.broadcast = broadcast  # type: ignore[method-assign]

    def _schedule(self, runner: FleetRunner, now: int) -> None:
        """Timers at the window's edges and at the stop (net ms, which runs with the loop's
        monotonic clock): every shard snapshots at the same instants, give or take the loop's
        own lag."""
        assert self.window is not None and self.stop_ms is not None
        loop = asyncio.get_running_loop()
        opens, closes = self.window
        for at, action in (
            (opens, self._open_window),
            (closes, self._close_window),
            (self.stop_ms, runner.request_stop),
        ):
            self._timers.append(loop.call_later(max(0, at - now) / 1000, action))

    def _open_window(self) -> None:
        if self.open is None and not self.aborted and self.runner is not None:
            self.open = self._snapshot(self.runner)
            if self.profiler is not None:
                self.profiler.enable()

    def _common_window(self) -> tuple[int, int] | None:
        """The window once every shard has started: a warm-up after the last start."""
        if self.rendezvous is None:
            starts = [] if self.start_ms is None else [self.start_ms]
        else:
            starts = []
            for i in range(self.shard[1]):
                path = self.rendezvous / f"start-{i}"
                if not path.exists():
                    return None
                starts.append(int(path.read_text()))
        if not starts:
            return None
        opens = max(starts) + self.plan.warmup_s * 1000
        return opens, opens + self.plan.window_s * 1000

    def _close_window(self) -> None:
        runner = self.runner
        if self.open is None or self.close is not None or runner is None:
            return
        if self.profiler is not None:
            self.profiler.disable()
        self.recorder_kb = sum(len(a) * a.itemsize for a in self._arrivals.values()) // 1024
        self.close = self._snapshot(runner)
        self.max_pending = max(
            (a.writer.pending_count() for a in runner.agents.values()), default=0
        )

    def observe(self, agent: DeviceAgent, event: object, now_ms: int) -> None:
        window = self.window
        if window is None or now_ms < window[0]:
            return
        if isinstance(event, I.OwnBlockSealed):
            if now_ms < window[1]:
                h = event.block.header.header
                self._sealed.append((h.device_id, h.height, now_ms))
                self._announcing[agent.name] = (h.device_id, h.height, now_ms)
        elif isinstance(event, A.HeadersAccepted):
            buf = self._arrivals.get(event.device_id)
            if buf is None:
                buf = self._arrivals[event.device_id] = array("q")
            receiver = self._index[agent.name]
            for height in range(event.from_height, event.to_height + 1):
                buf.extend((height, receiver, now_ms))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self.open is not None and self.close is None:
            self.gc_pauses.append((time.perf_counter() - self._gc_start) * 1000)

    def detach(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in (self._probe, self._gauge_task):
            if task is not None:
                task.cancel()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    async def _loop_probe(self) -> None:
        """How late a 50 ms timer fires: the event loop's backlog, sampled through the window."""
        while self.close is None:
            t = time.monotonic()
            await asyncio.sleep(PROBE_S)
            if self.open is not None and self.close is None:
                self.loop_lags.append((time.monotonic() - t - PROBE_S) * 1000)

    async def _gauge_probe(self, runner: FleetRunner) -> None:
        """Where messages wait, sampled once a second through the window (``GAUGES``)."""
        while self.close is None:
            await asyncio.sleep(GAUGE_S)
            if self.open is not None and self.close is None:
                for name, value in backlogs(runner).items():
                    self.gauges[name].append(value)

    async def watchdog(self) -> None:
        """Stop a run that overruns its planned stop (its steps come late or not at all)."""
        while True:
            await asyncio.sleep(1.0)
            stop = self.stop_ms
            runner = self.runner
            if stop is None or runner is None:
                continue  # start-up and the wait for the other shards: the trial's budget
            if runner.net_clock.now_ms() > stop + STOP_LATE_S * 1000:
                if self.close is None:
                    self.aborted = self.aborted or "watchdog: the window did not close in time"
                runner.request_stop()
                return

    async def orphan_guard(self) -> None:
        """Stop the run if the trial process that started this shard is gone."""
        while self.parent_pid is not None:
            await asyncio.sleep(1.0)
            if os.getppid() != self.parent_pid and self.runner is not None:
                self.aborted = self.aborted or "the trial process is gone"
                self.runner.request_stop()
                return

    def _snapshot(self, runner: FleetRunner) -> Snapshot:
        agents = runner.agents.values()
        stats = [a.transport.stats() for a in agents]
        return Snapshot(
            wall=time.monotonic(),
            net_ms=runner.net_clock.now_ms(),
            cpu=time.process_time(),
            loop_cpu=time.thread_time(),  # called from the event loop's thread
            broker_cpu=process_cpu_s(self.broker_pid),
            rss_kb=rss_kb(),
            offers=sum(_header_offers(a) for a in agents),
            sent=sum(s.sent for s in stats),
            received=sum(s.received for s in stats),
            dropped=sum(s.dropped_overflow for s in stats),
            send_failures=sum(a.stats.send_failures for a in agents),
            verdicts=_verdicts(agents),
            syncs=0 if runner.group_sync is None else runner.group_sync.syncs,
            sync_s=0.0 if runner.group_sync is None else runner.group_sync.sync_s,
            core=_core_counters(agents),
            broadcasts=dict(self._broadcasts),
            routed=_routed(agents),
            announced=len(self._announces),
        )

    def report(self) -> ShardReport:
        return ShardReport(
            index=self.shard[0],
            count=self.shard[1],
            devices=0 if self.runner is None else len(self.runner.local),
            start_ms=self.start_ms,
            window=self.window,
            peers=dict(self._peers),
            sealed=tuple(self._sealed),
            arrivals={k: tuple(v) for k, v in self._arrivals.items()},
            open=self.open,
            close=self.close,
            rss0_kb=self.rss0,
            recorder_kb=self.recorder_kb,
            lag_ms=self.lag_ms,
            max_pending=self.max_pending,
            aborted=self.aborted,
            gc_pauses_ms=tuple(self.gc_pauses),
            loop_lags_ms=tuple(self.loop_lags),
            announces=tuple(self._announces),
            subscribers=dict(self._subscribers),
            gauges={k: tuple(v) for k, v in self.gauges.items()},
        )


# --------------------------------------------------------------------------- the merge


@dataclass(frozen=True, slots=True)
class Deliveries:
    """The (header, peer) pairs of a trial's population: needed, and accepted within grace."""

    sealed: int  # headers in the population
    needed: int
    latencies: tuple[int, ...]  # ms, one per pair accepted in time, sorted
    cross_shard: int  # of those, pairs whose peer runs in another shard than the sealer
    late: tuple[int, ...] = ()  # ms, pairs first accepted after the grace (before the stop)
    unannounced: int = 0  # population headers whose ANNOUNCE was not handed on within grace
    unannounced_pairs: int = 0  # their (header, peer) pairs
    announce_ms: tuple[int, ...] = ()  # seal to ANNOUNCE handed to the connection, sorted


def deliveries(reports: Sequence[ShardReport], grace_ms: int) -> Deliveries:
    """Match every shard's acceptances against every shard's seals. A peer's first acceptance
    of a header counts (once) if it came within ``grace_ms`` of the seal; a later first
    acceptance is ``late``."""
    sealed: dict[tuple[str, int], tuple[int, int]] = {}  # (device, height) -> (net ms, shard)
    peers: dict[str, int] = {}
    announced: dict[tuple[str, int], int] = {}
    for r in reports:
        peers.update(r.peers)
        for dev, height, t in r.sealed:
            sealed[(dev, height)] = (t, r.index)
        for dev, height, t in r.announces:
            announced.setdefault((dev, height), t)
    first: dict[tuple[str, int, int], tuple[int, bool]] = {}  # -> (latency, cross-shard)
    for r in reports:
        for dev, flat in r.arrivals.items():
            for j in range(0, len(flat) - 2, 3):
                height, receiver, t = flat[j], flat[j + 1], flat[j + 2]
                seal = sealed.get((dev, height))
                if seal is None:
                    continue
                key = (dev, height, receiver)
                latency = t - seal[0]
                if key not in first or latency < first[key][0]:
                    first[key] = (latency, seal[1] != r.index)
    in_time = {k: v for k, v in first.items() if v[0] <= grace_ms}
    announce_ms = [announced[k] - t for k, (t, _) in sealed.items() if k in announced]
    unannounced = [k for k in sealed if announced.get(k, 1 << 62) - sealed[k][0] > grace_ms]
    return Deliveries(
        sealed=len(sealed),
        needed=sum(peers.get(dev, 0) for dev, _ in sealed),
        latencies=tuple(sorted(lat for lat, _ in in_time.values())),
        cross_shard=sum(1 for _, cross in in_time.values() if cross),
        late=tuple(sorted(lat for lat, _ in first.values() if lat > grace_ms)),
        unannounced=len(unannounced),
        unannounced_pairs=sum(peers.get(dev, 0) for dev, _ in unannounced),
        announce_ms=tuple(sorted(announce_ms)),
    )


def losses(
    got: Deliveries, windows: Sequence[tuple[ShardReport, Snapshot, Snapshot]]
) -> dict[str, Any]:
    """Where the window's header deliveries went, stage by stage (``header_losses``):

    - ``announce``: population headers, those whose ANNOUNCE was not handed to the connection
      within the grace (``not_announced``), and seal-to-handover p50/p99;
    - ``broker``: domain messages the shards' links should have routed (each broadcast once per
      subscribed connection) and those they did route in the window (``routed_share``: below
      1, messages wait or were lost between the sending and the receiving connection: paho's
      queues, the broker, the socket);
    - ``cores``: header entries offered to the gossip cores per needed delivery
      (``offered_share``) and their verdicts;
    - ``pairs``: the needed (header, peer) pairs: ``in_time``, ``late`` (first accepted after
      the grace, before the stop; p50/p99 of their latency) and ``never`` (not by the stop);
    - ``stage``: the first stage that lost more than 10%, in words (the verdict's reason).
    """
    needed = got.needed
    in_time = len(got.latencies)
    late = len(got.late)
    subscribers: Counter[str] = Counter()
    broadcasts: Counter[str] = Counter()
    routed = 0
    announced = 0
    offers = 0
    for r, o, c in windows:
        subscribers.update(r.subscribers)
        broadcasts.update({d: n - o.broadcasts.get(d, 0) for d, n in c.broadcasts.items()})
        routed += c.routed.get("domain", 0) - o.routed.get("domain", 0)
        announced += c.announced - o.announced
        offers += c.offers - o.offers
    expected = sum(n * subscribers.get(d, 0) for d, n in broadcasts.items())
    out: dict[str, Any] = {
        "announce": {
            "headers": got.sealed,
            "not_announced": got.unannounced,
            "not_announced_pairs": got.unannounced_pairs,
            "handover_p50_ms": percentile(got.announce_ms, 50),
            "handover_p99_ms": percentile(got.announce_ms, 99),
        },
        "broker": {
            "domain_messages_expected": expected,
            "domain_messages_routed": routed,
            "routed_share": round(routed / expected, 3) if expected else None,
        },
        "cores": {
            "offered": offers,
            "offered_share": round(offers / needed, 3) if needed else None,
        },
        "pairs": {
            "needed": needed,
            "in_time": in_time,
            "late": late,
            "never": needed - in_time - late,
            "late_p50_ms": percentile(got.late, 50),
            "late_p99_ms": percentile(got.late, 99),
        },
    }
    out["stage"] = _loss_stage(out)
    return out


def _loss_stage(doc: Mapping[str, Any]) -> str:
    """The first stage of ``losses`` that lost more than 10%, as a sentence ("" if none)."""
    pairs = doc["pairs"]
    if not pairs["needed"] or pairs["in_time"] >= 0.9 * pairs["needed"]:
        return ""
    ann = doc["announce"]
    if ann["headers"] and ann["not_announced"] > 0.1 * ann["headers"]:
        return (
            f"not sent: {ann['not_announced']} of {ann['headers']} headers were not handed to "
            "the connection within the grace (sends wait: see the unacked and send_waiters "
            "backlogs)"
        )
    share = doc["broker"]["routed_share"]
    if share is not None and share < 0.9:
        return (
            f"sent, not received: the links routed {share:.0%} of the domain messages sent "
            "(they wait in paho's queues, the broker or the socket: see the out_messages and "
            "rx backlogs, and the broker's drops)"
        )
    offered = doc["cores"]["offered_share"]
    if offered is not None and offered < 0.9:
        return (
            f"received, not offered: the gossip cores were offered {offered:.0%} of the needed "
            "header deliveries (they wait in the devices' receive queues, or unread in the "
            "connections' sockets: see the inbox and rx backlogs)"
        )
    if pairs["late"] > pairs["never"]:
        return (
            f"accepted late: {pairs['late']} pairs after the grace (p50 {pairs['late_p50_ms']} "
            "ms): offered, but accepted only after a repair (see the header verdicts)"
        )
    return (
        f"received, not accepted: {pairs['never']} pairs never accepted by the stop (see the "
        "header verdicts and core counters)"
    )


def merge(
    plan: Plan, devices: int, reports: Sequence[ShardReport], provision_s: float
) -> dict[str, Any]:
    """A trial's figures (see the module docstring) from its shards' reports."""
    n = devices
    got = deliveries(reports, plan.grace_s * 1000)
    arrived = len(got.latencies)
    lags = sorted(x for r in reports for x in r.loop_lags_ms)
    windows = [(r, r.open, r.close) for r in reports if r.open is not None and r.close is not None]
    opens = [r.open.net_ms for r in reports if r.open is not None]
    starts = [r.start_ms for r in reports if r.start_ms is not None]
    out: dict[str, Any] = {
        "devices": n,
        "shards": len(reports),
        "header_latency_p50_ms": percentile(got.latencies, 50),
        "header_latency_p99_ms": percentile(got.latencies, 99),
        "header_misses": got.needed - arrived,
        "header_miss_rate": round((got.needed - arrived) / got.needed, 5) if got.needed else None,
        "header_pairs_needed": got.needed,
        "header_arrivals": arrived,
        "cross_shard_arrivals": got.cross_shard,
        "headers_sealed": got.sealed,
        "dup_factor": None,
        "cpu_ms_per_device_s": None,
        "broker_cpu_ms_per_device_s": None,
        "loop_busy": None,
        "loop_busy_per_shard": None,
        "machine_busy": None,
        "process_busy": None,
        "rss_kb_per_device": None,
        "provision_s_per_device": round(provision_s / n, 6),
        "lag_ms": round(max((r.lag_ms for r in reports), default=0.0)),
        "loop_lag_p50_ms": _rounded(percentile(lags, 50)),
        "loop_lag_p99_ms": _rounded(percentile(lags, 99)),
        "gc_ms_per_s": None,
        "gc_max_pause_ms": _rounded(max((x for r in reports for x in r.gc_pauses_ms), default=0.0)),
        "max_pending": max((r.max_pending for r in reports), default=0),
        "sent_per_s": None,
        "received_per_s": None,
        "dropped": None,
        "send_failures": None,
        "group_syncs_per_s": None,
        "group_sync_mean_ms": None,
        "header_verdicts": None,
        "window_skew_ms": max(opens) - min(opens) if opens else None,
        "start_skew_ms": max(starts) - min(starts) if starts else None,
        "window_s": plan.window_s,
        "grace_s": plan.grace_s,
        "header_losses": None,
        "core_counters": None,
        "backlogs": backlog_figures(reports),
        "per_shard": [
            _shard_figures(r, min(starts, default=0), min(opens, default=0)) for r in reports
        ],
    }
    if windows and len(windows) == len(reports):
        spans = [max(c.wall - o.wall, 1e-9) for _, o, c in windows]
        edges = list(zip(windows, spans, strict=True))

        def rate(field: str) -> float:  # summed over shards, per wall second of each window
            return sum(
                (float(getattr(c, field)) - float(getattr(o, field))) / s for (_, o, c), s in edges
            )

        busy = [round((c.loop_cpu - o.loop_cpu) / s, 3) for (_, o, c), s in edges]
        first = min((o for _, o, _ in windows), key=lambda snap: snap.net_ms)
        last = max((c for _, _, c in windows), key=lambda snap: snap.net_ms)
        broker_span = max((last.net_ms - first.net_ms) / 1000, 1e-9)
        offers = sum(c.offers - o.offers for _, o, c in windows)
        out |= {
            "dup_factor": round(offers / got.needed, 3) if got.needed else None,
            "cpu_ms_per_device_s": round(rate("cpu") * 1000 / n, 4),
            "gc_ms_per_s": round(sum(sum(r.gc_pauses_ms) / s for (r, _, _), s in edges), 1),
            "loop_busy": max(busy),
            "loop_busy_per_shard": busy,
            "machine_busy": round(rate("cpu") / (os.cpu_count() or 1), 3),
            "process_busy": max(round((c.cpu - o.cpu) / s, 3) for (_, o, c), s in edges),
            "broker_cpu_ms_per_device_s": round(
                (last.broker_cpu - first.broker_cpu) * 1000 / n / broker_span, 4
            ),
            "rss_kb_per_device": round(sum(_rss_growth(r, c) for r, _, c in windows) / n, 2),
            "sent_per_s": round(rate("sent")),
            "received_per_s": round(rate("received")),
            "dropped": sum(c.dropped - o.dropped for _, o, c in windows),
            "send_failures": sum(c.send_failures - o.send_failures for _, o, c in windows),
            "group_syncs_per_s": round(rate("syncs"), 1),
            "group_sync_mean_ms": _rounded(
                1000 * sum(c.sync_s - o.sync_s for _, o, c in windows) / syncs
                if (syncs := sum(c.syncs - o.syncs for _, o, c in windows))
                else None
            ),
            "header_verdicts": {
                k: v
                for k in sorted({k for _, _, c in windows for k in c.verdicts})
                if (v := sum(c.verdicts.get(k, 0) - o.verdicts.get(k, 0) for _, o, c in windows))
            },
            "core_counters": {
                k: v
                for k in sorted({k for _, _, c in windows for k in c.core})
                if (v := sum(c.core.get(k, 0) - o.core.get(k, 0) for _, o, c in windows))
            },
            "header_losses": losses(got, windows),
        }
    reasons = failures(plan, out, reports)
    out["keeps_up"] = not reasons
    out["why_not"] = reasons
    out["lag_cause"] = lag_cause(plan, out)
    return out


# What counts as standing out in a trial that fell behind (``lag_cause``).
LAG_BUSY = 0.9  # the busiest loop's CPU share: the machine's CPU is what it lacks
LAG_MACHINE_BUSY = 0.85  # the shards' CPU, every thread, as a share of the machine's cores
LAG_PROCESS_BUSY = 0.85  # one shard's process CPU, every thread, in cores
LAG_STORE_JOBS = 50  # store jobs waiting at once, largest sample
LAG_SEND_WAITERS = 100  # senders waiting for a slot in a connection's window, largest sample
LAG_LOOP_LATE_MS = 100  # loop lag p50 with CPU to spare


def lag_cause(plan: Plan, out: Mapping[str, Any]) -> str:
    """Why the simulation fell behind the wall clock, in words ("" when it kept pace). A step
    waits until its readings are durable and the blocks it sealed are announced, so a lag is
    CPU, the store threads or the send window; the backlogs sampled in the window say which."""
    lag = out.get("lag_ms")
    if lag is None or lag < plan.lag_ms:
        return ""
    backlogs = out.get("backlogs") or {}
    busy = out.get("loop_busy") or 0.0
    jobs = backlogs.get("store_jobs", {}).get("max", 0)
    waiters = backlogs.get("send_waiters", {}).get("max", 0)
    late = out.get("loop_lag_p50_ms") or 0.0
    machine = out.get("machine_busy") or 0.0
    process = out.get("process_busy") or 0.0
    causes = []
    if busy >= LAG_BUSY:
        causes.append(f"CPU: the busiest event loop was {busy:.0%} busy")
    elif machine >= LAG_MACHINE_BUSY:
        causes.append(
            f"CPU: the shards used {machine:.0%} of the machine's cores (the busiest event loop "
            f"{busy:.0%}, the rest their store threads and collectors): the backlogs named next "
            "wait for CPU"
        )
    elif process >= LAG_PROCESS_BUSY:
        causes.append(
            f"CPU: the busiest shard's process used {process:.2f} of a core (its event loop up "
            f"to {busy:.0%}, the rest its store threads and collector), and its Python runs on "
            "one core at a time (the GIL): the backlogs named next wait for it"
        )
    if jobs >= LAG_STORE_JOBS:
        causes.append(
            f"the store threads: up to {jobs} store jobs waited (each member writes each header "
            "of its domain to its own store, and a step's commits queue behind them)"
        )
    if waiters >= LAG_SEND_WAITERS:
        causes.append(
            f"the send window: up to {waiters} senders waited for a slot (a step waits for the "
            "announcements of the blocks it sealed)"
        )
    spare = busy < LAG_BUSY and machine < LAG_MACHINE_BUSY and process < LAG_PROCESS_BUSY
    if spare and late >= LAG_LOOP_LATE_MS:
        causes.append(
            f"the event loop ran late (p50 {late} ms) with CPU to spare ({busy:.0%} busy): it "
            f"waited for the GIL the store threads hold, or for the collector "
            f"({out.get('gc_ms_per_s')} ms a second, pauses up to {out.get('gc_max_pause_ms')} ms)"
        )
    return "; ".join(causes) or "no backlog stands out: see per_shard and the backlogs"


def backlog_figures(reports: Sequence[ShardReport]) -> dict[str, Any]:
    """Each backlog gauge through the window: its largest sample in any shard (``max``) and
    the mean of the shards' sums (``mean``); ``{}`` when no shard sampled any."""
    out: dict[str, Any] = {}
    for name in GAUGES:
        series = [r.gauges.get(name, ()) for r in reports]
        series = [s for s in series if s]
        if not series:
            continue
        span = min(len(s) for s in series)
        sums = [sum(s[i] for s in series) for i in range(span)]
        out[name] = {
            "max": max(max(s) for s in series),
            "mean": round(sum(sums) / span, 1) if span else None,
        }
    return out


def _rss_growth(r: ShardReport, close: Snapshot) -> int:
    return max(0, close.rss_kb - r.rss0_kb - r.recorder_kb)


def _shard_figures(r: ShardReport, first_start_ms: int, first_open_ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "shard": r.index,
        "devices": r.devices,
        "headers_sealed": len(r.sealed),
        "lag_ms": round(r.lag_ms),
        "start_ms": None if r.start_ms is None else r.start_ms - first_start_ms,
        "window_open_ms": None if r.open is None else r.open.net_ms - first_open_ms,
        "loop_busy": None,
        "cpu_ms_per_device_s": None,
        "rss_kb_per_device": None,
    }
    o, c = r.open, r.close
    if o is not None and c is not None and r.devices:
        span = max(c.wall - o.wall, 1e-9)
        out |= {
            "loop_busy": round((c.loop_cpu - o.loop_cpu) / span, 3),
            "cpu_ms_per_device_s": round((c.cpu - o.cpu) * 1000 / r.devices / span, 4),
            "rss_kb_per_device": round(_rss_growth(r, c) / r.devices, 2),
        }
    return out


def failures(plan: Plan, out: Mapping[str, Any], reports: Sequence[ShardReport]) -> list[str]:
    """The keeps-up rules a trial broke (empty: it kept up)."""
    many = len(reports) > 1
    reasons = [f"shard {r.index}: {r.aborted}" if many else r.aborted for r in reports if r.aborted]
    unclosed = [r.index for r in reports if r.close is None]
    if unclosed:
        reasons.append(
            f"the window never closed (shards {unclosed})" if many else "the window never closed"
        )
        return reasons
    windows = {r.window for r in reports}
    if len(windows) != 1:
        reasons.append(f"the shards disagree on the window: {sorted(map(str, windows))}")
    if out["lag_ms"] >= plan.lag_ms:
        reasons.append(f"lag {out['lag_ms']} ms >= {plan.lag_ms}")
    if out["max_pending"] > plan.max_pending:
        reasons.append(f"pending {out['max_pending']} > {plan.max_pending}")
    if not out["headers_sealed"]:
        reasons.append("no header sealed in the window")
    rate = out["header_miss_rate"]
    if rate is not None and rate > MISS_TOLERANCE:
        reasons.append(f"{out['header_misses']} header deliveries missed ({rate:.2%})")
    p99 = out["header_latency_p99_ms"]
    if p99 is not None and p99 >= plan.latency_p99_ms:
        reasons.append(f"p99 {p99} ms >= {plan.latency_p99_ms}")
    return reasons


def _header_offers(agent: DeviceAgent) -> int:
    return sum(v for k, v in agent.node.counters.items() if k.startswith("header_"))


class Connection(Protocol):
    """What the benchmark reads of an MQTT connection (``agent.transport.mqtt``'s link)."""

    routed: Counter[str]

    def backlog(self) -> dict[str, int]: ...


def connection_of(agent: DeviceAgent) -> Connection | None:
    """The MQTT connection a device's transport uses (None: not MQTT)."""
    t = agent.transport
    return t.connection if isinstance(t, MqttTransport) else None


def _connections(agents: Iterable[DeviceAgent]) -> list[Connection]:
    seen: dict[int, Connection] = {}
    for a in agents:
        conn = connection_of(a)
        if conn is not None:
            seen.setdefault(id(conn), conn)
    return list(seen.values())


def backlogs(runner: FleetRunner) -> dict[str, int]:
    """The shard's backlogs now (``GAUGES``): summed over its MQTT connections
    (``Connection.backlog``), its devices' receive queues (``inbox``: delivered, not yet taken
    by the device's receive loop; ``inbox_max``: the longest) and the store jobs waiting for a
    thread."""
    agents = list(runner.agents.values())
    out = dict.fromkeys(GAUGES, 0)
    for conn in _connections(agents):
        for k, v in conn.backlog().items():
            out[k] += v
    queued = [a.transport.pending() for a in agents]
    out["inbox"] = sum(queued)
    out["inbox_max"] = max(queued, default=0)
    executor = getattr(runner, "_executor", None)
    jobs = getattr(executor, "_jobs", None)
    out["store_jobs"] = jobs.qsize() if jobs is not None else 0
    return out


def _routed(agents: Iterable[DeviceAgent]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for conn in _connections(agents):
        total.update(conn.routed)
    return dict(total)


def _core_counters(agents: Iterable[DeviceAgent]) -> dict[str, int]:
    """The gossip cores' counters other than the header verdicts, summed."""
    total: Counter[str] = Counter()
    for a in agents:
        total.update({k: v for k, v in a.node.counters.items() if not k.startswith("header_")})
    return dict(total)


def _verdicts(agents: Iterable[DeviceAgent]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for a in agents:
        total.update({k: v for k, v in a.node.counters.items() if k.startswith("header_")})
    return dict(sorted(total.items()))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def percentile(sorted_values: Sequence[Any], q: int) -> Any:
    """Nearest-rank percentile (None for no values)."""
    if not sorted_values:
        return None
    rank = max(1, -(-q * len(sorted_values) // 100))
    return sorted_values[rank - 1]


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status: expected a VmRSS line, found none")


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of another process (0.0 when unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# --------------------------------------------------------------------------- one trial


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """What a shard process needs (``--shard-trial``, as JSON)."""

    plan: Plan
    devices: int
    data: Path
    broker_url: str
    broker_pid: int | None
    shard: tuple[int, int]
    rendezvous: Path | None = None  # where shards note their start (needed for S > 1)

    def to_json(self) -> str:
        return json.dumps(
            {
                "plan": dataclasses.asdict(self.plan),
                "devices": self.devices,
                "data": str(self.data),
                "broker_url": self.broker_url,
                "broker_pid": self.broker_pid,
                "shard": list(self.shard),
                "rendezvous": None if self.rendezvous is None else str(self.rendezvous),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ShardSpec:
        doc = json.loads(text)
        index, count = doc["shard"]
        return cls(
            plan=Plan(**doc["plan"]),
            devices=int(doc["devices"]),
            data=Path(doc["data"]),
            broker_url=str(doc["broker_url"]),
            broker_pid=None if doc["broker_pid"] is None else int(doc["broker_pid"]),
            shard=(int(index), int(count)),
            rendezvous=None if doc["rendezvous"] is None else Path(doc["rendezvous"]),
        )


class ShardFailed(Exception):
    """A shard process gave no report: each reason names the shard and quotes its stderr."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


async def run_shard(
    spec: ShardSpec,
    profiler: cProfile.Profile | None = None,
    parent_pid: int | None = None,
) -> ShardReport:
    """Shard ``spec.shard`` of the trial's fleet (provisioned in ``spec.data``), against the
    trial's broker, observed over the plan's window; ``profiler`` runs over the window, on the
    event loop's thread."""
    plan = spec.plan
    cfg = plan.fleet(spec.devices)
    rec = Recorder(plan, spec.shard, spec.broker_pid, parent_pid, spec.rendezvous)
    rec.profiler = profiler
    opts = RunOptions(
        data=spec.data,
        broker=spec.broker_url,
        for_ms=None,  # the recorder stops the run, a grace period after the common window
        speed=1.0,
        shard=spec.shard,
        seal=SealPolicy(max_readings=64, max_age_ms=plan.seal_age_ms),
        gossip=plan.gossip(),
        settle_s=1.0,  # a stopped run seals what is pending and leaves (no shard barrier)
        view=False,
        source=rec.source,
        resume=False,
    )
    rec.runner = FleetRunner(cfg, opts)
    guards = [asyncio.create_task(rec.watchdog()), asyncio.create_task(rec.orphan_guard())]
    crypto = contextlib.nullcontext() if plan.auth else message_crypto_off()
    try:
        with crypto:
            await rec.runner.run()
    finally:
        for task in guards:
            task.cancel()
        rec.detach()
    return rec.report()


@contextlib.contextmanager
def message_crypto_off() -> Iterator[None]:
    """For benchmarks only: protocol messages keep wire version 2 byte for byte in size (an
    authenticator with the key id and 64 bytes where the signature goes), but are not signed
    (``SigningKey.sign`` under the ``agent.protocol.auth.MESSAGE`` domain returns zeros) and
    not checked (``PublicKey.verify`` under that domain passes). Everything else (records,
    headers, certificates) is signed and checked as ever, so the difference in CPU is what
    authenticating the messages costs."""
    sign, verify = SigningKey.sign, PublicKey.verify
    blank = bytes(64)

    def unsigned(self: SigningKey, domain: bytes, message: bytes) -> bytes:
        return blank if domain == auth.MESSAGE else sign(self, domain, message)

    def unchecked(
        self: PublicKey, domain: bytes, message: bytes, signature: bytes, what: str
    ) -> None:
        if domain != auth.MESSAGE:
            verify(self, domain, message, signature, what)

    SigningKey.sign = unsigned  # type: ignore[method-assign]
    PublicKey.verify = unchecked  # type: ignore[method-assign]
    try:
        yield
    finally:
        SigningKey.sign = sign  # type: ignore[method-assign]
        PublicKey.verify = verify  # type: ignore[method-assign]


def run_shard_processes(specs: Sequence[ShardSpec], workdir: Path, budget_s: float) -> list[str]:
    """Run one ``--shard-trial`` process per spec, together; their stdout (JSON reports), in
    shard order. Each child has its own process group, killed on timeout, on any shard's failure
    and on the way out; a failure raises ``ShardFailed`` with every failed shard's stderr tail."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    outs = [workdir / f"shard-{s.shard[0]}.json" for s in specs]
    errs = [workdir / f"shard-{s.shard[0]}.err" for s in specs]
    try:
        for spec, out, err in zip(specs, outs, errs, strict=True):
            with open(out, "wb") as fo, open(err, "wb") as fe:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.fleet", "--shard-trial", spec.to_json()],
                        stdin=subprocess.DEVNULL,
                        stdout=fo,
                        stderr=fe,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + budget_s
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                raise ShardFailed([f"shard {i}: exit {c}{_tail(errs[i])}" for i, c in failed])
            if all(c == 0 for c in codes):
                return [out.read_text() for out in outs]
            if time.monotonic() >= deadline:
                late = [i for i, c in enumerate(codes) if c is None]
                raise ShardFailed(
                    [f"shard {i}: no report in {budget_s:.0f} s{_tail(errs[i])}" for i in late]
                )
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p.pid, signal.SIGKILL)
            p.wait()


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pid, sig)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "; stderr ends: " + " | ".join(lines[-STDERR_TAIL:]) if lines else "; no stderr"


def run_trial(
    plan: Plan, devices: int, workdir: Path, profiler: cProfile.Profile | None = None
) -> dict[str, Any]:
    """One fleet of ``devices`` on its own Mosquitto, as ``plan.shards_for(devices)`` shards,
    measured and merged (see the module docstring). One shard runs in this process (with
    ``profiler`` over its window, if given); more run as child processes."""
    shards = plan.shards_for(devices)
    if profiler is not None and shards != 1:
        raise ValueError(f"profile: expected one shard (this process), found {shards}")
    cfg = plan.fleet(devices)
    label = f"{plan.shape}{'' if plan.auth else '-noauth'}-{devices}"
    data = workdir / f"fleet-{label}"
    t0 = time.perf_counter()
    provision(cfg, DataDir(data), cfg.start_ms)
    provision_s = time.perf_counter() - t0
    # Sized to the fleet as `edgefleet run --broker mosquitto` sizes it (brokers.mosquitto_limits).
    broker = MosquittoBroker(workdir=workdir / f"mosquitto-{label}", devices=devices)
    broker.start_sync()
    try:
        rendezvous = workdir / f"shards-{label}" / "start"
        rendezvous.mkdir(parents=True, exist_ok=True)
        specs = [
            ShardSpec(plan, devices, data, broker.url, broker.pid, (i, shards), rendezvous)
            for i in range(shards)
        ]
        if shards == 1:
            reports = [asyncio.run(run_shard(specs[0], profiler))]
        else:
            try:
                outs = run_shard_processes(
                    specs, workdir / f"shards-{label}", plan.budget_s(devices)
                )
                reports = [ShardReport.from_json(json.loads(text)) for text in outs]
            except ShardFailed as exc:
                return failed_trial(devices, shards, exc.reasons)
            except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                return failed_trial(devices, shards, [f"unreadable shard report: {exc!r}"])
    finally:
        broker.stop_sync()
    out = merge(plan, devices, reports, provision_s)
    out["broker_dropping_notices"] = broker.dropping_clients
    return out


def failed_trial(devices: int, shards: int, reasons: list[str]) -> dict[str, Any]:
    """A trial that produced no figures: why, and nothing else."""
    return {"devices": devices, "shards": shards, "keeps_up": False, "why_not": reasons}


# --------------------------------------------------------------------------- the search


Trial = Callable[[int], dict[str, Any]]


def trial_in_process(plan: Plan, workdir: Path) -> Trial:
    return lambda n: run_trial(plan, n, workdir)


def trial_in_subprocess(plan: Plan, workdir: Path) -> Trial:
    """Each trial in a fresh interpreter (its own RSS, CPU and event loop). If it overruns, its
    process group gets SIGTERM (the trial process then kills its shards and stops its broker),
    then SIGKILL."""

    def trial(n: int) -> dict[str, Any]:
        spec = json.dumps({"plan": dataclasses.asdict(plan), "devices": n, "dir": str(workdir)})
        budget = plan.budget_s(n) + 60  # the trial's own shard budget, and room to clean up
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", "--trial", spec],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.communicate()
            return failed_trial(n, plan.shards_for(n), [f"no result in {budget} s"])
        if proc.returncode != 0:
            return failed_trial(n, plan.shards_for(n), [f"trial process: exit {proc.returncode}"])
        result: dict[str, Any] = json.loads(out)
        return result

    return trial


def search(plan: Plan, trial: Trial, log: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """Double from ``plan.start`` while fleets keep up (up to ``max_devices``), or halve while
    they do not (down to ``min_devices``); then bisect between the last good and first bad."""
    results: dict[int, dict[str, Any]] = {}

    def run(n: int) -> bool:
        results[n] = trial(n)
        r = results[n]
        log(f"{n} devices: {'keeps up' if r['keeps_up'] else 'behind: ' + '; '.join(r['why_not'])}")
        return bool(r["keeps_up"])

    good, bad = 0, None
    n = plan.start
    if run(n):
        good = n
        while n * 2 <= plan.max_devices:
            n *= 2
            if not run(n):
                bad = n
                break
            good = n
    else:
        bad = n
        while n // 2 >= plan.min_devices:
            n //= 2
            if run(n):
                good = n
                break
            bad = n
    for _ in range(plan.bisect):
        if bad is None or not good:
            break
        mid = _round_size((good + bad) // 2, good)
        if mid <= good or mid >= bad:
            break
        if run(mid):
            good = mid
        else:
            bad = mid
    return results


def _round_size(n: int, low: int) -> int:
    step = 50 if low >= 200 else 8 if low >= 16 else 1
    return n - n % step


def measure(plan: Plan, trial: Trial, log: Callable[[str], None]) -> dict[str, Any]:
    results = search(plan, trial, log)
    if plan.fixed not in results:
        results[plan.fixed] = trial(plan.fixed)
    passing = [n for n, r in results.items() if r["keeps_up"]]
    best = max(passing) if passing else min(results)
    head = dict(results[best])
    head["devices"] = best if passing else 0
    head["tried_devices"] = best
    goals = {**GOALS, "devices": SHAPE_DEVICES.get(plan.shape, 1)}
    meets = {
        "devices": head["devices"] >= goals["devices"],
        "dup_factor": head.get("dup_factor") is not None
        and head["dup_factor"] <= goals["dup_factor"],
        "header_latency_p99_ms": head.get("header_latency_p99_ms") is not None
        and head["header_latency_p99_ms"] < goals["header_latency_p99_ms"],
    }
    return {
        **head,
        f"fixed_{plan.fixed}": results[plan.fixed],
        "trials": {str(n): results[n] for n in sorted(results)},
        "goals": goals,
        "meets_goals": meets,
        "keeps_up_rule": {
            "lag_ms": plan.lag_ms,
            "max_pending": plan.max_pending,
            "header_miss_rate": MISS_TOLERANCE,
            "latency_p99_ms": plan.latency_p99_ms,
            "grace_s": plan.grace_s,
        },
        "meta": {
            **environment(),
            "plan": dataclasses.asdict(plan),
            "shards": plan.shards,
            "broker": "mosquitto",
            "readings_per_device_s": 1,
            "load_average": list(os.getloadavg()),
        },
    }


# Shapes the benchmark compares (issue 14): plain gossip domains of 32, 256 and 1,000 devices,
# and the sample devices.yaml's: households of 2 inside streets (of 128 devices here). A shape
# is (devices per domain or street, devices per household or 0, first size tried).
SHAPES: tuple[tuple[int, int, int], ...] = (
    (32, 0, 250),
    (256, 0, 512),
    (1_000, 0, 1_000),
    (128, 2, 256),
)
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = ((4, 0, 16), (8, 0, 16), (16, 0, 16), (8, 2, 16))
# Figures of each shape set side by side in ``shapes_table``.
TABLE = (
    "devices",
    "keeps_up",
    "cpu_ms_per_device_s",
    "rss_kb_per_device",
    "broker_cpu_ms_per_device_s",
    "sent_per_device_s",
    "received_per_device_s",
    "header_latency_p99_ms",
    "dup_factor",
    "header_miss_rate",
    "loss_stage",
    "lag_cause",
    "meets_goals",
)


def shape_plans(base: Plan, shapes: Sequence[tuple[int, int, int]]) -> list[Plan]:
    """One plan per shape: the base plan's timing, the shape's domains, a search that starts
    at the shape's first size and never goes below one whole domain of 256 or more (a smaller
    fleet would be another shape). The fixed-size fleet is kept for the first shape only."""
    plans = []
    for k, (size, household, start) in enumerate(shapes):
        first = max(base.start, start) if base.start != Plan().start else start
        low = size if size >= 256 else base.min_devices
        plans.append(
            dataclasses.replace(
                base,
                domain_size=size,
                household=household,
                start=first,
                min_devices=min(low, first),
                max_devices=max(base.max_devices, first),
                fixed=base.fixed if k == 0 else first,
            )
        )
    return plans


def measure_shapes(
    plans: Sequence[Plan],
    make: Callable[[Plan], Trial],
    log: Callable[[str], None],
    *,
    auth_cost: bool = True,
) -> dict[str, Any]:
    """Each shape measured (``measure``); the first shape's figures at the top, as before, and
    every shape's under ``shapes`` (with ``shapes_table``: their headline figures side by
    side). ``auth_cost``: the first shape's largest fleet that kept up is run again without
    the cryptography of message authentication (``auth_cost``)."""
    results: dict[str, dict[str, Any]] = {}
    for plan in plans:
        log(f"shape {plan.shape}")
        results[plan.shape] = measure(
            plan, make(plan), lambda line, p=plan: log(f"{p.shape}: {line}")
        )
    head = dict(results[plans[0].shape])
    out: dict[str, Any] = {**head, "shapes": {}, "shapes_table": {}}
    for name, r in results.items():
        shape = {k: v for k, v in r.items() if k not in ("goals", "meta")}
        out["shapes"][name] = shape
        out["shapes_table"][name] = {k: _table_value(r, k) for k in TABLE}
    if auth_cost:
        out["auth_cost"] = measure_auth_cost(plans[0], head, make, log)
    return out


def _table_value(r: Mapping[str, Any], key: str) -> Any:
    n = r.get("tried_devices") or r.get("devices") or 0
    if key in ("sent_per_device_s", "received_per_device_s"):
        rate = r.get(key.replace("_device", ""))
        return None if rate is None or not n else round(rate / n, 3)
    if key == "loss_stage":
        losses_doc = r.get("header_losses") or {}
        return losses_doc.get("stage")
    return r.get(key)


def measure_auth_cost(
    plan: Plan, head: Mapping[str, Any], make: Callable[[Plan], Trial], log: Callable[[str], None]
) -> dict[str, Any]:
    """The CPU that message authentication (wire v2: an Ed25519 signature on every message but
    an ANNOUNCE of one's own headers, checked on receipt) costs at the shape's largest fleet
    that kept up: that trial's figures against the same fleet run again with
    ``message_crypto_off`` (same messages, same sizes, no signing and no checking)."""
    n = head["devices"] or head["tried_devices"]
    log(f"{plan.shape}: {n} devices again without the message authentication's cryptography")
    off = make(dataclasses.replace(plan, auth=False))(n)
    on = head
    out: dict[str, Any] = {
        "devices": n,
        "keeps_up_with": on["keeps_up"],
        "keeps_up_without": off["keeps_up"],
    }
    for key in ("cpu_ms_per_device_s", "loop_busy", "header_latency_p99_ms"):
        out[f"{key}_with"] = on.get(key)
        out[f"{key}_without"] = off.get(key)
    with_cpu, without_cpu = on.get("cpu_ms_per_device_s"), off.get("cpu_ms_per_device_s")
    if with_cpu is not None and without_cpu:
        out["auth_cpu_ms_per_device_s"] = round(with_cpu - without_cpu, 4)
        out["ratio"] = round(with_cpu / without_cpu, 3)
    out["why_not_without"] = off.get("why_not")
    return out


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n")[0] if __doc__ else "")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="tiny fleets, short trials (~1 min)")
    p.add_argument("--start", type=int, help="first fleet size (then doubling)")
    p.add_argument("--max", type=int, dest="max_devices", help="largest fleet size to try")
    p.add_argument("--min", type=int, dest="min_devices", help="smallest fleet size to try")
    p.add_argument("--fixed", type=int, help="the fixed-size fleet reported beside (500)")
    p.add_argument("--bisect", type=int, help="bisection steps after the first failure")
    p.add_argument(
        "--domain",
        type=int,
        dest="domain_size",
        help="one shape: devices per gossip domain (per street with --household)",
    )
    p.add_argument(
        "--household",
        type=int,
        help="with --domain: households of this many devices inside streets of --domain",
    )
    p.add_argument(
        "--shapes",
        help="shapes to compare, comma-separated: N (domains of N) or HxN (households of H in "
        "streets of N); default 32,256,1000,2x128 (--quick: 4,8,16,2x8)",
    )
    p.add_argument(
        "--no-auth-cost",
        action="store_true",
        help="skip the trial without message authentication (auth_cost)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="run without the message authentication's cryptography (benchmarks only)",
    )
    p.add_argument("--warmup", type=int, dest="warmup_s", help="seconds before the window")
    p.add_argument("--window", type=int, dest="window_s", help="seconds measured")
    p.add_argument("--seal-age", type=int, dest="seal_age_ms", help="block age in ms (10000)")
    p.add_argument("--anti-entropy", type=int, dest="anti_entropy_ms", help="gossip round ms")
    p.add_argument(
        "--shards",
        type=int,
        help="runner processes per trial (default: the CPU count; --quick: at most 2)",
    )
    p.add_argument("--in-process", action="store_true", help="run trials in this process")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="one trial of --start devices in this process (one shard), cProfile over the "
        "window saved to FILE (pstats); the top functions go to stderr",
    )
    p.add_argument("--trial", help=argparse.SUPPRESS)  # internal: one trial, JSON spec
    p.add_argument("--shard-trial", help=argparse.SUPPRESS)  # internal: one shard, JSON spec
    return p


def _plan(ns: argparse.Namespace) -> Plan:
    base = QUICK if ns.quick else Plan()
    names = [f.name for f in dataclasses.fields(Plan)]
    given = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    if ns.profile is not None:
        if given.get("shards", 1) != 1:
            raise ValueError(f"--profile runs one shard, found --shards {given['shards']}")
        given["shards"] = 1
    elif "shards" not in given:
        cores = os.cpu_count() or 1
        given["shards"] = min(2, cores) if ns.quick else cores
    if getattr(ns, "no_auth", False):
        given["auth"] = False
    return dataclasses.replace(base, **given)


def _shapes(ns: argparse.Namespace) -> tuple[tuple[int, int, int], ...]:
    """The shapes to measure: --domain (and --household) name one, --shapes a list."""
    default = QUICK_SHAPES if ns.quick else SHAPES
    if ns.domain_size is not None:
        if ns.shapes is not None:
            raise ValueError("give --domain or --shapes, not both")
        return ((ns.domain_size, ns.household or 0, ns.start or Plan().start),)
    if ns.household is not None:
        raise ValueError("--household needs --domain (the street's size)")
    if ns.shapes is None:
        return default
    starts = {(d, h): s for d, h, s in (*SHAPES, *QUICK_SHAPES)}
    out = []
    for item in ns.shapes.split(","):
        text = item.strip()
        try:
            household, _, size = text.rpartition("x")
            key = (int(size), int(household) if household else 0)
        except ValueError:
            raise ValueError(
                f"--shapes: expected N or HxN (e.g. 32 or 2x128), found {text!r}"
            ) from None
        out.append((*key, starts.get(key, key[0] if key[0] >= 256 else Plan().start)))
    return tuple(out)


def _run_child(spec_json: str) -> int:
    """A trial process: SIGTERM (the search's timeout) unwinds it, so that its shards are
    killed and its broker stopped on the way out."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    spec = json.loads(spec_json)
    plan = Plan(**spec["plan"])
    result = run_trial(plan, int(spec["devices"]), Path(spec["dir"]))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_shard_child(spec_json: str) -> int:
    report = asyncio.run(run_shard(ShardSpec.from_json(spec_json), parent_pid=os.getppid()))
    json.dump(report.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0


def _profile(plan: Plan, path: Path, args: BenchArgs) -> int:
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        result = run_trial(plan, plan.start, Path(tmp), profiler)
    profiler.dump_stats(path)
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    emit(result, args, f"one trial of {plan.start} devices, profiled over the window")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.shard_trial is not None:
        return _run_shard_child(ns.shard_trial)
    if ns.trial is not None:
        return _run_child(ns.trial)
    try:
        plan = _plan(ns)
    except ValueError as exc:
        parser.error(str(exc))
    args = BenchArgs(json=ns.json, quick=ns.quick)
    if ns.profile is not None:
        return _profile(plan, ns.profile, args)

    def log(line: str) -> None:
        print(f"bench.fleet: {line}", file=sys.stderr, flush=True)

    try:
        plans = shape_plans(plan, _shapes(ns))
    except ValueError as exc:
        parser.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = Path(tmp)
        factory = trial_in_process if ns.in_process else trial_in_subprocess
        result = measure_shapes(
            plans,
            lambda p: factory(p, workdir),
            log,
            auth_cost=not ns.no_auth_cost and plan.auth,
        )
    emit(result, args, f"fleet capacity on Mosquitto, real time (devices: {result['devices']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
