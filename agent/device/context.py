"""The ports a device gives the drivers of its protocol cores: store jobs under the device's
lock, sends that count and never raise, notifications to observers, and the one network timer.

A driver (``gossip_driver``, ``replication_driver``) holds a ``DeviceContext`` and nothing of the
runtime around it: it feeds its core inputs, executes the core's actions through these ports and
tells the context when its core's deadline moved (``deadline_moved``); the runtime owns the
timer that context wakes.

Store jobs (``run_store``) are serialized per device by one lock and run off the event loop
(the runner's store threads, or any executor; inline in fully simulated runs, so a seed
reproduces the run). Accepted peer headers are not a job of their own: ``carry_headers`` queues
them, every job writes them first (in the job's first transaction, or just before a
one-statement one: ``ledger.store.connection.StoreBase._tx``), and when no job
comes they are written on their own ``HEADER_WRITE_MS`` after the first was queued
(``write_headers_if_due``, from the network timer).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, ClassVar, TypeVar

from agent.device.bodies import Damage
from agent.device.stats import DeviceStats
from agent.device.storework import StoreThreads
from agent.transport.base import Transport
from agent.transport.errors import TransportError
from firmware_sim.clock import Clock
from ledger.block import decode_header
from ledger.store import Store

T = TypeVar("T")

# Accepted peer headers ride along with the device's next store work (usually the readings it
# makes durable every step: one commit, one trip to the executor); when none comes, they are
# written on their own this long (network clock) after the first of them was accepted.
HEADER_WRITE_MS = 1000
# ... rounded up to a slot of this size: one wake per slot for every device on the clock.
HEADER_WRITE_SLOT_MS = 50


class HeaderWrites:
    """The timer of the peer headers no store work carried, shared by the devices of one event
    loop on one network clock: one task, waking once per slot of ``HEADER_WRITE_SLOT_MS`` at
    which some are due. Each device's own network timer woke for them about 0.6 times a
    second, most often to find them written already by its readings' job (2,500 devices in
    domains of 32: 6% of a hub's loop, cProfile). A slot's due time is never before an earlier
    one's (``now + HEADER_WRITE_MS``, rounded up), so the task sleeps until the first slot and
    is never re-armed."""

    # (loop, clock) -> its timer, while it runs
    _on: ClassVar[dict[tuple[int, int], HeaderWrites]] = {}

    def __init__(self, clock: Clock, key: tuple[int, int]) -> None:
        self._clock = clock
        self._key = key
        self._slots: dict[int, list[DeviceContext]] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def due(cls, ctx: DeviceContext, at_ms: int) -> None:
        """Write ``ctx``'s carried headers at ``at_ms`` (rounded up to a slot) unless a store
        job took them meanwhile."""
        loop = asyncio.get_running_loop()
        key = (id(loop), id(ctx.net_clock))
        timer = cls._on.get(key)
        if timer is None:
            timer = cls._on[key] = HeaderWrites(ctx.net_clock, key)
        slot = -(-at_ms // HEADER_WRITE_SLOT_MS) * HEADER_WRITE_SLOT_MS
        timer._slots.setdefault(slot, []).append(ctx)
        if timer._task is None:
            timer._task = loop.create_task(timer._run(), name="header-writes")

    async def _run(self) -> None:
        try:
            while self._slots:
                first = min(self._slots)
                await self._clock.sleep_until(first)
                now = self._clock.now_ms()
                for slot in sorted(s for s in self._slots if s <= now):
                    for ctx in self._slots.pop(slot):
                        ctx.write_headers_if_due(now)
        finally:
            if HeaderWrites._on.get(self._key) is self:
                del HeaderWrites._on[self._key]


class DeviceContext:
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        transport: Transport,
        net_clock: Clock,
        executor: Executor | None,
        stats: DeviceStats,
        log: logging.LoggerAdapter[logging.Logger],
        notify: Callable[[object], None],
        deadline_moved: Callable[[int | None], None],
    ) -> None:
        self.name = name
        self.store = store
        self.transport = transport
        self.net_clock = net_clock
        self.stats = stats
        self.log = log
        self.notify = notify  # an own seal or a core's notification, to the device's observers
        # A core's deadline may now be earlier than the one the network timer sleeps until.
        self.deadline_moved = deadline_moved
        self.lock = asyncio.Lock()  # one store job of this device at a time
        self.executor = executor
        self._unwritten: list[bytes] = []  # accepted peer headers not yet handed to the store
        self.headers_due: int | None = None  # when they are written on their own (net clock)
        self._closed = False  # shut down: nothing more is written on a timer
        self._background: deque[asyncio.Task[None]] = deque()
        # The device's failure hook (DeviceAgent.fail): a background job that raised fails the
        # device, as a failure of one of its tasks does (never "Task exception was never
        # retrieved").
        self.failed: Callable[[BaseException], None] | None = None
        # Stored bodies found damaged when read for sending (agent/device/bodies.py), by
        # (owner, height): each reported once; the device runs on and never sends them.
        self.damaged: dict[tuple[str, int], str] = {}

    # --- the network ---------------------------------------------------------------------------
    async def send(self, peer_id: str, payload: bytes) -> None:
        await self._sent(self.transport.send(peer_id, payload))

    async def broadcast(self, domain: str, payload: bytes) -> None:
        await self._sent(self.transport.broadcast(domain, payload))

    async def publish_evidence(self, device_id: str, evidence: bytes) -> None:
        await self._sent(self.transport.publish_evidence(device_id, evidence))

    async def _sent(self, op: Awaitable[None]) -> None:
        try:
            await op
            self.stats.sent += 1
        except TransportError as exc:
            # Best effort by design: the store is the outbox and anti-entropy re-offers.
            self.stats.send_failures += 1
            self.log.debug("send failed: %s", exc)

    # --- store jobs ----------------------------------------------------------------------------
    async def run_store(self, fn: Callable[..., T], *args: Any, carry: bool = False) -> T:
        """Run store work under the device's lock, shielded: once started it always completes
        (a stop cancels the tasks, but never a write a core already counted as done; ``flush``
        takes the same lock, so it waits for any write in flight). The accepted peer headers not
        yet written go first; ``carry=True``: ``fn`` makes a durable commit, and they join it."""

        async def locked() -> T:
            async with self.lock:
                return await self.off_loop(self.job, self.take_unwritten(), fn, args, carry)

        return await asyncio.shield(locked())

    async def flush(self, fn: Callable[[], object]) -> None:
        """At shutdown (the tasks are cancelled): the queued headers, then ``fn``, one commit.
        The shared header timer leaves this device alone from now on."""
        self.close_timers()
        async with self.lock:
            await self.off_loop(self.job, self.take_unwritten(), fn, (), True)

    def close_timers(self) -> None:
        """The device stopped or failed: the shared header timer writes nothing more for it
        (a stop writes what it carries in ``flush``; a failed device writes nothing more)."""
        self._closed = True

    def spawn(self, job: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``job`` in the background (serving a pull, writing headers), held until done."""
        task = asyncio.create_task(job, name=f"{self.name}:{name}")
        task.add_done_callback(self._background_done)
        self._background.append(task)
        while self._background and self._background[0].done():
            self._background.popleft()

    def report_damage(self, damage: Damage) -> None:
        key = (damage.owner_id, damage.height)
        if key not in self.damaged:
            self.damaged[key] = line = damage.line(self.name)
            self.stats.counters["damaged_blocks"] += 1
            self.log.error("%s", line)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if self.failed is None:  # a context on its own (tests): report it
                self.log.error("%s failed: %s", task.get_name(), exc)
            else:
                self.failed(exc)

    def carry_headers(self, wires: tuple[bytes, ...]) -> None:
        """Queue accepted peer headers for the store: they go with the next store job, or on
        their own ``HEADER_WRITE_MS`` from now. Every job writes them before it reads or writes
        anything else, so a pull served from the store sees them."""
        self._unwritten.extend(wires)
        if self.headers_due is None and not self._closed:
            self.headers_due = self.net_clock.now_ms() + HEADER_WRITE_MS
            HeaderWrites.due(self, self.headers_due)

    def write_headers_if_due(self, now_ms: int) -> None:
        if self.headers_due is not None and now_ms >= self.headers_due and not self._closed:
            self.headers_due = None
            if self._unwritten:
                self.spawn(self.run_store(_nothing), "headers")

    def take_unwritten(self) -> list[bytes]:
        wires, self._unwritten = self._unwritten, []
        self.headers_due = None
        return wires

    def job(
        self, wires: list[bytes], fn: Callable[..., T], args: tuple[Any, ...], carry: bool
    ) -> T:
        """One store job, off the loop: the peer headers accepted since the last job first
        (``carry``: with the first transaction ``fn`` opens), then ``fn``."""
        store = self.store
        if wires:
            store.carry_peer_headers([decode_header(w) for w in wires])
        if not carry:
            store.write_carried()
            return fn(*args)
        try:
            return fn(*args)
        finally:
            store.write_carried()  # fn opened no transaction (or failed): write them anyway

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        ex = self.executor
        if ex is None:  # simulated runs: inline, so a seed reproduces the run
            return fn(*args)
        if isinstance(ex, StoreThreads):  # results handed back in batches (storework.py)
            return await ex.run(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(ex, fn, *args)


def _nothing() -> None:
    """A store job that only writes the accepted peer headers (``DeviceContext._job``)."""
