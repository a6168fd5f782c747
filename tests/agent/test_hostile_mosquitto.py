"""The attacks of issue 13, rerun by a hostile client on a real Mosquitto against a live fleet.

Seven fridges on one street (replication R = 2, audited every 10 simulated minutes) run in real
time at 900 simulated seconds per wall second over a real ``mosquitto`` process, each device on
its own MQTT connection (the real transport, built by the public fleet runner). The attacker is
one more MQTT client with nothing but a connection: no key, no certificate. It subscribes to
everything (``edgefleet/v1/#``; the broker has no ACL, the worst case), learns device ids and key
ids from what it captures, and then:

(a) publishes well-formed envelopes naming fridge-1 as sender whose content fails (forged
    authenticators, malformed bodies, bit-flipped headers of fridge-1's real chain), on the
    street topic and in every inbox, round after round;
(b) sends every owner messages naming one of its storage holders (forged RECEIPTs, PROOFs
    answering the challenges it sees go to the holder, REFUSEs, BUSYs, SPACEs and garbage);
(c) sends every peer REQUESTs naming a victim (and replication CHALLENGEs), and measures the
    bytes the fleet then sends to the victim's inbox in answer (amplification);
(d) republishes bit-flipped copies of real captured traffic, on the topics it was captured on;
(e) publishes a retained ``offline`` presence for a device that is up.

Each test reports its figure to the fault matrix (the ``figure`` fixture, tests/conftest.py)
and asserts it: nobody honest is muted, excluded, charged or dropped from service;
amplification <= 1 (0: a spoofed request draws nothing). Waits are on conditions (the messages
the attacker sent counted by their receivers), never on the wall clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from agent.config.devices import load_fleet
from agent.device.runtime import DeviceAgent
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from agent.gossip import wire
from agent.protocol import auth, envelope
from agent.replication import wire as rwire
from agent.transport.brokers import MosquittoBroker
from agent.transport.mqtt import MqttClient
from agent.transport.presence import PRESENCE_OFFLINE
from agent.transport.topics import Topics
from ledger import codec
from ledger.block import decode_header
from tests.agent.runner_helpers import FAST_GOSSIP, HOUR_MS, write_fleet
from tests.agent.test_reliability import until
from tests.conftest import FigureRecorder

pytestmark = pytest.mark.mosquitto

N = 7
SEED = 13  # the fleet's seed (the attacker's draws are seeded per test)
R = 2
LIVE_SPEED = 900.0  # simulated seconds per wall second: a block per device about every second
FLEET = f"""\
fleet: hostile
seed: {SEED}
sites:
  - id: home-{{i}}
    count: {N}
    kind: household
  - id: elm-street
    kind: street
replication:
  copies: {R}
  audit_every: 10m
  repair_after: 1h
devices:
  - name: fridge-{{i}}
    count: {N}
    kind: refrigerator
    site: home-{{i}}
    domains: [elm-street]
    sampling_period: 60s
    spare_storage_mb: 4
"""
TOPICS = Topics()
STREET = TOPICS.domain("elm-street")
T = TypeVar("T")


# --------------------------------------------------------------------------- the attacker


@dataclass
class Attacker:
    """One MQTT client with no identity: it captures everything and publishes what it likes."""

    captured: list[tuple[str, bytes]] = field(default_factory=list)
    mine: set[bytes] = field(default_factory=set)
    sent_bytes: int = 0
    sent: int = 0
    client: MqttClient | None = None

    def on_message(self, topic: str, payload: bytes) -> None:
        if payload not in self.mine:
            self.captured.append((topic, payload))

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self.client is not None
        self.mine.add(payload)
        self.sent_bytes += len(payload)
        self.sent += 1
        await self.client.publish(topic, payload, retain=retain)

    def key_id(self, device_id: str) -> bytes:
        """The key id of ``device_id``, read off a signed message of its the attacker saw."""
        for _, p in self.captured:
            if p[4:30] == device_id.encode() and p[-auth.TRAILER : -auth.AUTH_SIZE] == bytes(
                (0xC4, auth.AUTH_SIZE)
            ):
                return p[-auth.AUTH_SIZE : -auth.AUTH_SIZE + 8]
        raise AssertionError(f"no signed message of {device_id} captured")


def forged(body: bytes, key_id: bytes, rng: random.Random) -> bytes:
    """``body`` sealed with the victim's key id and a signature the attacker can only guess."""
    return (
        bytes([body[0] + 1]) + body[1:] + bytes((0xC4, auth.AUTH_SIZE)) + key_id + rng.randbytes(64)
    )


def _flip(payload: bytes, rng: random.Random) -> bytes:
    bad = bytearray(payload)
    bit = rng.randrange(len(bad) * 8)
    bad[bit // 8] ^= 1 << (bit % 8)
    return bytes(bad)


# --------------------------------------------------------------------------- the live fleet


@dataclass
class Live:
    runner: FleetRunner
    task: asyncio.Task[RunResult]
    atk: Attacker

    @property
    def agents(self) -> dict[str, DeviceAgent]:
        return self.runner.agents

    def agent(self, name: str) -> DeviceAgent:
        return self.runner.agents[name]

    def unattributable(self) -> int:
        """Messages every device counted unproven (both cores), in all."""
        total = 0
        for a in self.agents.values():
            total += a.node.counters[auth.UNATTRIBUTABLE]
            if a.replicator is not None:
                total += a.replicator.node.counters[auth.UNATTRIBUTABLE]
        return total

    def mutes(self) -> dict[tuple[str, str], int]:
        """(watcher, peer) -> mutes, where the gossip core muted a peer at least once."""
        out = {}
        for a in self.agents.values():
            for b in self.agents.values():
                s = a.node.peer_stats(b.device_id)
                if s is not None and s.mutes:
                    out[(a.name, b.name)] = s.mutes
        return out

    def charged(self) -> int:
        """Offences charged to anyone (gossip malformed and invalid, replication too)."""
        total = 0
        for a in self.agents.values():
            for b in self.agents.values():
                s = a.node.peer_stats(b.device_id)
                if s is not None:
                    total += s.malformed + s.invalid
            if a.replicator is not None:
                c = a.replicator.node.counters
                total += c["malformed"] + c["invalid"]
        return total

    def exclusions(self) -> list[tuple[str, str]]:
        """(owner, holder) where the owner excludes the holder, or ever did."""
        out = []
        for a in self.agents.values():
            if a.replicator is None:
                continue
            node = a.replicator.node
            if node.counters["holders_excluded"]:
                out.append((a.name, f"{node.counters['holders_excluded']} exclusion(s)"))
            out.extend((a.name, b.name) for b in self.agents.values() if node.excluded(b.device_id))
        return out

    def height(self, watcher: str, subject: str) -> int:
        a, s = self.agent(watcher), self.agent(subject)
        head = a.node.head(s.device_id)
        return -1 if head is None else head.header.height

    def own_height(self, name: str) -> int:
        head = self.agent(name).store.head()
        return -1 if head is None else head.header.height

    def replicas(self, limits: dict[str, int] | None = None) -> int:
        """Healthy holders of every owner's blocks (up to ``limits[owner]`` when given)."""
        total = 0
        for a in self.agents.values():
            if a.replicator is None:
                continue
            node = a.replicator.node
            for h in node.own_heights():
                if limits is None or h <= limits[a.name]:
                    total += len(node.healthy_holders(h))
        return total

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        await until(condition, what, self.task)

    async def spread(self, subject: str) -> None:
        """Wait until every peer holds ``subject``'s chain up to its own head now."""
        target = self.own_height(subject)
        names = [n for n in self.agents if n != subject]
        await self.until(
            lambda: all(self.height(n, subject) >= target for n in names),
            f"{subject}'s chain up to height {target} at every peer",
        )

    async def counted(self, before: int, expected: int) -> None:
        """Wait until the devices counted ``expected`` more unproven messages than ``before``."""
        await self.until(
            lambda: self.unattributable() >= before + expected,
            f"{expected} unproven messages counted (now {self.unattributable() - before})",
        )


def _ready(runner: FleetRunner) -> bool:
    agents = runner.agents
    if len(agents) < N or runner.data_clock is None:
        return False
    for a in agents.values():
        if a.store.block_count() < 3 or a.replicator is None:
            return False
        if len(a.replicator.node.healthy_holders(0)) < R:
            return False
        if any(a.node.head(b.device_id) is None for b in agents.values()):
            return False
    return True


async def _live(
    tmp_path: Path, mosquitto: MosquittoBroker, attack: Callable[[Live], Awaitable[T]]
) -> T:
    cfg = load_fleet(write_fleet(tmp_path, FLEET))
    runner = FleetRunner(
        cfg,
        RunOptions(
            data=tmp_path / "data",
            broker=mosquitto.endpoint.url,
            for_ms=48 * HOUR_MS,  # stopped once the attack is judged
            speed=LIVE_SPEED,
            view=False,
            gossip=FAST_GOSSIP,
            settle_s=1.0,
        ),
    )
    task = asyncio.create_task(runner.run())
    atk = Attacker()
    live = Live(runner, task, atk)
    try:
        t0 = time.monotonic()
        await until(lambda: _ready(runner), "every block 0 on R holders, every chain known", task)
        print(f"ready after {time.monotonic() - t0:.1f} s")
        atk.client = MqttClient(
            mosquitto.endpoint,
            "attacker",
            will_topic="attacker/presence",
            on_message=atk.on_message,
        )
        await atk.client.start()
        await atk.client.subscribe([f"{TOPICS.root}/#"])
        # Capture until every device was seen signing something.
        ids = [a.device_id.encode() for a in runner.agents.values()]
        await until(
            lambda: all(
                any(p[4:30] == i and p[-74:-72] == b"\xc4\x48" for _, p in atk.captured)
                for i in ids
            ),
            "a signed message of every device captured",
            task,
        )
        out = await attack(live)
        await atk.client.close()
        return out
    finally:
        runner.request_stop()
        await task


def _run(tmp_path: Path, mosquitto: MosquittoBroker, attack: Callable[[Live], Awaitable[T]]) -> T:
    return asyncio.run(_live(tmp_path, mosquitto, attack))


# --------------------------------------------------------------------------- (a) spoofed sender

ROUNDS = 6


def test_spoofed_envelopes_naming_a_fridge_mute_no_honest_device_and_its_chain_spreads(
    mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    row = "spoofed sender with failing content (live Mosquitto)"

    async def attack(live: Live) -> str:
        atk = live.atk
        fridge = live.agent("fridge-1")
        victim = fridge.device_id
        key_id = atk.key_id(victim)
        rng = random.Random(1)
        header = fridge.store.head()
        assert header is not None
        inboxes = [TOPICS.inbox(a.device_id) for a in live.agents.values() if a is not fridge]
        start = live.own_height("fridge-1")
        for k in range(ROUNDS):
            before = live.unattributable()
            expected = 0
            bad = bytearray(header.wire)
            bad[-1 - k] ^= 1  # its real header, one bit off
            bodies = [
                forged(wire.encode(wire.Summary(victim, True, ())), key_id, rng),
                forged(codec.encode([2, wire.SUMMARY, victim, 7]), key_id, rng),
                forged(wire.encode(wire.Request(victim, k, victim, 0, 5, 0)), key_id, rng),
                auth.seal_unsigned(wire.encode(wire.Announce(victim, (bytes(bad),)))),
                forged(rwire.encode(rwire.Space(victim, 0, 0)), key_id, rng),
            ]
            for body in bodies:
                await atk.publish(STREET, body)  # every member gets it, fridge-1 included
                # (fridge-1 drops an unsigned ANNOUNCE in its own name as its own echo)
                expected += N - (body[2] == wire.ANNOUNCE)
                for topic in inboxes:
                    await atk.publish(topic, body)
                    expected += 1
            await live.counted(before, expected)
        await live.spread("fridge-1")  # what it sealed during the attack reaches every peer
        mutes, charged, excl = live.mutes(), live.charged(), live.exclusions()
        text = (
            f"mosquitto, {N} devices: muted honest devices = {len(mutes)} of {N} after "
            f"{atk.sent} spoofed envelopes naming fridge-1 ({atk.sent_bytes} bytes, {ROUNDS} "
            f"rounds); charged = {charged}, exclusions = {len(excl)}; fridge-1's chain spread "
            f"from height {start} to {live.own_height('fridge-1')} at every peer"
        )
        figure(row, text, seed=SEED)
        assert not mutes, f"{text}: {mutes}"
        assert charged == 0 and not excl, f"{text}: {excl}"
        assert live.own_height("fridge-1") > start, text
        return text

    _run(tmp_path, mosquitto, attack)


# --------------------------------------------------------------------------- (b) a storage holder


def _receipts_from(live: Live, holder: str) -> int:
    """Own blocks of every owner that ``holder`` (a device id) holds with a receipt."""
    total = 0
    for a in live.agents.values():
        if a.replicator is not None and a.device_id != holder:
            node = a.replicator.node
            total += sum(holder in node.holders(h) for h in node.own_heights())
    return total


def test_spoofed_messages_naming_a_storage_holder_never_exclude_it_and_receipts_keep_coming(
    mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    row = "spoofed messages naming a holder (live Mosquitto)"

    async def attack(live: Live) -> None:
        atk = live.atk
        owner = live.agent("fridge-1")
        assert owner.replicator is not None
        hid = sorted(owner.replicator.node.healthy_holders(0))[0]
        holder = next(a for a in live.agents.values() if a.device_id == hid)
        key_id = atk.key_id(hid)
        rng = random.Random(2)
        owners = [a for a in live.agents.values() if a is not holder]

        # What the holder is asked: the challenges and stores on its inbox, captured.
        def asked() -> list[rwire.Message]:
            out = []
            for topic, p in atk.captured:
                if topic == TOPICS.inbox(hid) and rwire.is_replication_message(p):
                    try:
                        out.append(rwire.decode(auth.body_of(p)))
                    except Exception:  # a capture the attacker cannot read
                        continue
            return out

        def seen(kind: type) -> int:
            return sum(isinstance(m, kind) for m in asked())

        await live.until(
            lambda: seen(rwire.Challenge) >= 3 and seen(rwire.Store) >= 2,
            f"3 challenges and 2 stores to {holder.name} captured",
        )
        requests = asked()
        receipts_before = _receipts_from(live, hid)
        for _ in range(ROUNDS):
            before = live.unattributable()
            expected = 0
            bodies = [rwire.encode(rwire.Space(hid, 0, 0)), codec.encode([2, rwire.PROOF, hid, 7])]
            for m in requests[-20:]:
                if isinstance(m, rwire.Challenge):  # a wrong answer, and "busy", in its name
                    bodies.append(rwire.encode(rwire.Proof(hid, m.challenge_id, rng.randbytes(32))))
                    bodies.append(rwire.encode(rwire.Busy(hid, m.challenge_id, 1)))
                elif isinstance(m, rwire.Store):  # "invalid block" and "full" for its stores
                    bodies.append(rwire.encode(rwire.Refuse(hid, m.request_id, rwire.INVALID, 0)))
                    bodies.append(rwire.encode(rwire.Refuse(hid, m.request_id, rwire.FULL, 0)))
            for body in bodies:
                sealed = forged(body, key_id, rng)
                await atk.publish(STREET, sealed)
                expected += N
                for o in owners:
                    await atk.publish(TOPICS.inbox(o.device_id), sealed)
                    expected += 1
            await live.counted(before, expected)
        # The holder keeps being placed on and keeps answering: receipts keep coming.
        await live.until(
            lambda: _receipts_from(live, hid) >= receipts_before + 3,
            f"3 more receipts from {holder.name} (it had {receipts_before})",
        )
        excl, charged = live.exclusions(), live.charged()
        scores = {o.name: o.replicator.node.score(hid) for o in owners if o.replicator is not None}
        text = (
            f"mosquitto, {N} devices: excluded honest holders = {len(excl)} at {len(owners)} "
            f"owners after {atk.sent} spoofed messages naming {holder.name} ({atk.sent_bytes} "
            f"bytes); charged = {charged}; its receipts went from {receipts_before} to "
            f"{_receipts_from(live, hid)}; its lowest score {min(s or 0 for s in scores.values())}"
        )
        figure(row, text, seed=SEED)
        assert not excl and charged == 0, f"{text}: {excl}"

    _run(tmp_path, mosquitto, attack)


# --------------------------------------------------------------------------- (c) amplification

SPOOFED_ID = 0xA77A0000  # request and challenge ids of the attacker's own making


def _answer_id(payload: bytes) -> int | None:
    """The request or challenge id an answer on an inbox carries (None: not an answer)."""
    try:
        body = auth.body_of(payload)
        if rwire.is_replication_message(payload):
            m = rwire.decode(body)
            if isinstance(m, rwire.ReceiptMsg | rwire.Refuse):
                return m.request_id
            if isinstance(m, rwire.Proof | rwire.Busy):
                return m.challenge_id
            return None
        g = wire.decode(body)
    except Exception:  # not an answer the attacker can read
        return None
    return g.request_id if isinstance(g, wire.Response) else None


def test_spoofed_requests_naming_a_victim_draw_no_more_bytes_than_the_attacker_sent(
    mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    row = "spoofed, replayed requests (live Mosquitto)"

    async def attack(live: Live) -> None:
        atk = live.atk
        victim = live.agent("fridge-2")
        vid = victim.device_id
        key_id = atk.key_id(vid)
        rng = random.Random(3)
        others = [a for a in live.agents.values() if a is not victim]
        inbox = TOPICS.inbox(vid)

        # The victim's own real requests and challenges, captured: replayed too.
        def theirs(p: bytes) -> bool:
            return p[4:30] == vid.encode() and envelope.type_of(p) in (
                wire.REQUEST,
                rwire.CHALLENGE,
            )

        await live.until(
            lambda: sum(theirs(p) for t, p in atk.captured if t != inbox) >= 5,
            "5 requests or challenges of fridge-2 captured",
        )
        replays = [
            (t, p)
            for t, p in atk.captured
            if p[4:30] == vid.encode()
            and t != STREET
            and t != inbox
            and envelope.type_of(p) in (wire.REQUEST, rwire.CHALLENGE)
        ]
        replay_ids = {i for _, p in replays if (i := _request_id(p)) is not None}
        mark = len(atk.captured)
        sent_before = atk.sent_bytes
        heights = {a.name: live.own_height(a.name) for a in others}
        ids = set()
        replayed = 0
        for _ in range(ROUNDS):
            before = live.unattributable()
            expected = 0
            for o in others:
                for dev in live.agents.values():  # ask for every chain, bodies included
                    rid = SPOOFED_ID + len(ids)
                    ids.add(rid)
                    body = wire.encode(
                        wire.Request(vid, rid, dev.device_id, 0, 255, wire.FLAG_BODIES)
                    )
                    await atk.publish(TOPICS.inbox(o.device_id), forged(body, key_id, rng))
                    expected += 1
                if o.replicator is not None:
                    for h in range(3):
                        cid = SPOOFED_ID + len(ids)
                        ids.add(cid)
                        body = rwire.encode(
                            rwire.Challenge(vid, cid, h, rng.randbytes(32), rng.randbytes(16))
                        )
                        await atk.publish(TOPICS.inbox(o.device_id), forged(body, key_id, rng))
                        expected += 1
            for topic, p in replays:
                await atk.publish(topic, p)
                replayed += len(p)
            await live.counted(before, expected)
        # Everything the fleet will send in answer has been sent once every device made
        # durable two more blocks of its own (store jobs run in order) and broadcast them.
        await live.until(
            lambda: all(_announced(atk, a.device_id, mark) >= heights[a.name] + 2 for a in others),
            "two more own blocks announced by every device after the attack",
        )
        spent = atk.sent_bytes - sent_before
        answers = [
            (i, len(p))
            for t, p in atk.captured[mark:]
            if t == inbox and (i := _answer_id(p)) is not None
        ]
        drawn = sum(n for i, n in answers if i in ids)
        by_replays = sum(n for i, n in answers if i in replay_ids)
        text = (
            f"mosquitto, {N} devices: amplification = {(drawn + by_replays) / spent:.3f} (bytes "
            f"sent to the victim's inbox in answer {drawn + by_replays} / bytes the attacker "
            f"sent {spent}): {len(ids)} spoofed REQUESTs and CHALLENGEs naming fridge-2 drew "
            f"{drawn} bytes; {len(replays) * ROUNDS} replays of its real ones ({replayed} bytes) "
            f"drew {by_replays} ({by_replays / max(1, replayed):.3f})"
        )
        figure(row, text, seed=SEED)
        assert drawn == 0, text
        assert drawn + by_replays <= spent and by_replays <= replayed, text

    _run(tmp_path, mosquitto, attack)


def _request_id(payload: bytes) -> int | None:
    try:
        body = auth.body_of(payload)
        if rwire.is_replication_message(payload):
            m = rwire.decode(body)
            return m.challenge_id if isinstance(m, rwire.Challenge) else None
        g = wire.decode(body)
    except Exception:
        return None
    return g.request_id if isinstance(g, wire.Request) else None


def _announced(atk: Attacker, device_id: str, mark: int) -> int:
    """The highest own header ``device_id`` broadcast on the street after capture ``mark``."""
    best = -1
    for t, p in atk.captured[mark:]:
        if t != STREET or p[4:30] != device_id.encode() or envelope.type_of(p) != wire.ANNOUNCE:
            continue
        try:
            msg = wire.decode(auth.body_of(p) if p[-2:] != auth.EMPTY else _unsigned(p))
        except Exception:
            continue
        assert isinstance(msg, wire.Announce)
        for h in msg.headers:
            best = max(best, decode_header(h).header.height)
    return best


def _unsigned(p: bytes) -> bytes:
    return bytes((p[0] - 1,)) + p[1 : -len(auth.EMPTY)]


# --------------------------------------------------------------------------- (d) bit flips

FLIPS = 3_000
# Captured before flipping: at least this many real messages, of at least these types.
CAPTURE = 300
KINDS = {wire.ANNOUNCE, wire.SUMMARY, rwire.STORE, rwire.RECEIPT, rwire.CHALLENGE, rwire.PROOF}


def test_bit_flipped_copies_of_real_traffic_charge_nobody_and_leave_replicas_in_place(
    mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    row = "bit-flipped copies of real traffic (live Mosquitto)"

    async def attack(live: Live) -> None:
        atk = live.atk
        rng = random.Random(4)
        limits = {n: live.own_height(n) for n in live.agents}
        await live.until(
            lambda: all(
                len(a.replicator.node.healthy_holders(h)) >= R
                for a in live.agents.values()
                if a.replicator is not None
                for h in range(limits[a.name] + 1)
            ),
            "every block sealed so far on R holders",
        )
        replicas_before = live.replicas(limits)

        def real() -> list[tuple[str, bytes]]:
            return [(t, p) for t, p in atk.captured if envelope.type_of(p) is not None]

        await live.until(
            lambda: len(real()) >= CAPTURE and {p[2] for _, p in real()} >= KINDS,
            f"{CAPTURE} real messages captured, of every type in {sorted(KINDS)}",
        )
        captured = real()
        kinds = Counter(p[2] for _, p in captured)
        old = {a.name: a.node.counters[auth.OLD_VERSION] for a in live.agents.values()}
        copies = [(t, _flip(p, rng)) for t, p in (rng.choice(captured) for _ in range(FLIPS))]
        t0 = time.monotonic()
        for i in range(0, FLIPS, 100):  # 100 in flight at a time (each waits for its PUBACK)
            await asyncio.gather(*(atk.publish(t, p) for t, p in copies[i : i + 100]))
        print(f"published {FLIPS} copies in {time.monotonic() - t0:.1f} s")
        # A version-1 envelope after them in every inbox: once counted, the copies before it
        # were handled (one publisher: the broker and the device keep its order).
        marker = codec.encode([1, wire.SUMMARY, live.agent("fridge-1").device_id, False, []])
        for a in live.agents.values():
            await atk.publish(TOPICS.inbox(a.device_id), marker)
        await live.until(
            lambda: all(
                a.node.counters[auth.OLD_VERSION] > old[a.name] for a in live.agents.values()
            ),
            "the marker after the copies handled by every device",
        )
        mutes, charged, excl = live.mutes(), live.charged(), live.exclusions()
        replicas_after = live.replicas(limits)
        text = (
            f"mosquitto, {N} devices: charged = {charged}, muted = {len(mutes)}, exclusions = "
            f"{len(excl)} after {FLIPS} bit-flipped copies of {len(captured)} captured real "
            f"messages "
            f"(types {dict(sorted(kinds.items()))}); replicas of the blocks sealed before: "
            f"{replicas_before} before, {replicas_after} after"
        )
        figure(row, text, seed=SEED)
        assert charged == 0 and not mutes and not excl, f"{text}: {mutes} {excl}"
        assert replicas_after >= replicas_before, text

    _run(tmp_path, mosquitto, attack)


# --------------------------------------------------------------------------- (e) presence


def test_a_retained_spoofed_offline_presence_drops_no_peer_from_service(
    mosquitto: MosquittoBroker, tmp_path: Path, figure: FigureRecorder
) -> None:
    row = "spoofed retained offline presence (live Mosquitto)"

    async def attack(live: Live) -> None:
        atk = live.atk
        subject = live.agent("fridge-3")
        sid = subject.device_id
        others = [a for a in live.agents.values() if a is not subject]
        dropped: set[str] = set()

        def watch() -> None:
            for a in others:
                rec = a.node.peer_stats(sid)
                rep = None if a.replicator is None else a.replicator.node.owner.views.get(sid)
                if rec is None or not rec.up or (rep is not None and not rep.up):
                    dropped.add(a.name)

        def rounds(a: DeviceAgent) -> int:
            return a.node.counters["round_periods"]

        watch()
        assert not dropped
        start = live.own_height(subject.name)
        began = time.monotonic()
        await atk.publish(TOPICS.presence(sid), PRESENCE_OFFLINE, retain=True)
        # Every watcher got it (and doubts fridge-3): the attack reached its target.
        await live.until(
            lambda: all(not a.transport.presence(sid) and a.liveness.doubted(sid) for a in others),
            "the spoofed 'offline' of fridge-3 believed by every watcher's transport",
        )
        # Held for twice the silence that would take a really silent peer out (in each
        # watcher's own rounds, which also pass twice its time), while fridge-3 seals on.
        at = {a.name: rounds(a) for a in others}
        target = start + 4

        def held() -> bool:
            watch()
            return all(
                rounds(a) - at[a.name] >= 2 * a.liveness.silence_rounds
                and live.height(a.name, subject.name) >= target
                for a in others
            )

        await live.until(held, "twice the silence at every watcher")
        drops = sum(a.liveness.drops[sid] for a in others)
        text = (
            f"mosquitto, {N} devices: peers that dropped fridge-3 from service = "
            f"{len(dropped)} of {len(others)} ({drops} drops) while a retained spoofed "
            f"'offline' stood for {time.monotonic() - began:.1f} s (twice the silence, "
            f"{2 * others[0].liveness.silence_rounds} rounds); it answered the "
            f"{sum(a.liveness.probes_sent for a in others)} probes of its watchers; its chain "
            f"spread from height {start} to at least "
            f"{min(live.height(a.name, subject.name) for a in others)} at every peer meanwhile"
        )
        figure(row, text, seed=SEED)
        assert not dropped, f"{text}: {sorted(dropped)}"
        # Its real departure still takes it out of service (its silence confirms the hint).
        stopped = time.monotonic()
        await subject.transport.close()
        await live.until(
            lambda: all(not (s := a.node.peer_stats(sid)) or not s.up for a in others),
            "every peer took the stopped fridge-3 out of service",
        )
        figure(
            "a peer that really stops (live Mosquitto)",
            f"mosquitto, {N} devices: fridge-3 really stopped: out of service at {len(others)} "
            f"of {len(others)} peers after {time.monotonic() - stopped:.1f} s (3 probes "
            f"unanswered, one every {others[0].liveness.probe_ms or 0:.0f} ms; the silence "
            f"rule alone: {others[0].liveness.silence_ms / 1000:.1f} s)",
            seed=SEED,
        )

    _run(tmp_path, mosquitto, attack)
