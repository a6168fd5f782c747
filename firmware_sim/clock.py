"""Clocks: one interface, a real-time clock and a simulated clock that jumps to the next deadline.

Everything that waits does so through a ``Clock``: ``now_ms()`` (Unix milliseconds, an int) and
``await sleep_until(t_ms)``. ``RealClock`` is real time on the monotonic clock (``WallJumps``
notices the wall clock being set). ``SimClock`` keeps an integer
simulated time that only moves when every task of its event loop is waiting: it then jumps
straight to the earliest deadline, so a simulated week runs as fast as the CPU allows and a seed
reproduces a run.

``SimClock.run(coro)`` (or ``SimClock.new_event_loop()``) gives an asyncio event loop whose own
timers (``asyncio.sleep``, ``asyncio.timeout``, ``loop.call_later``) also run on simulated time.
The loop polls real I/O without blocking before each jump, so sockets and pipes still work; a
thread working in the background does not hold simulated time back.

A SimClock can also be driven synchronously (``advance_to``) by code that is not async, such as
the fleet simulation generator.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import selectors
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


class ClockError(RuntimeError):
    """A clock was misused (time moved backwards, a loop bound to another clock)."""


@runtime_checkable
class Clock(Protocol):
    """What every waiting component needs from time."""

    def now_ms(self) -> int:
        """Current time, Unix milliseconds."""
        ...

    async def sleep_until(self, t_ms: int) -> None:
        """Return once ``now_ms() >= t_ms`` (at once, after one yield, if it already is)."""
        ...

    def resolve_at(self, t_ms: int, fut: asyncio.Future[None]) -> None:
        """Set ``fut``'s result once ``now_ms() >= t_ms`` (on a later turn of its loop if it
        already is), unless ``fut`` is done by then: its owner may settle or cancel it first.
        A task that waits for a deadline *or* another wake-up needs one future this way, not a
        task per source of wake-ups."""
        ...


# A wall clock set back by more than this, or forward by more than JUMP_FORWARD_MS, between two
# looks is a jump (``WallJumps``): NTP slews by far less, a forward step of a few seconds harms
# nothing (times still move on), and a step back is what could make a device sign the past.
JUMP_BACK_MS = 1_000
JUMP_FORWARD_MS = 60_000
# The sensor a device signs a jump with (docs/TRACES.md): value = the jump, ms, negative = back.
JUMP_SENSOR = "clock.jump_ms"


class RealClock:
    """Real time as Unix milliseconds that advance with the monotonic clock: anchored to the wall
    clock once, when created, so that setting the wall clock (by hand, NTP stepping it) never
    stops or fires a timer early; ``wall_skew_ms`` says how far the wall clock has moved away
    since. Sleeping uses the running asyncio loop (whose clock is monotonic too).

    ``wall_ns`` and ``mono_ns`` stand for ``time.time_ns`` and ``time.monotonic_ns``: tests
    inject clocks that jump."""

    def __init__(
        self,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._wall_ns = wall_ns
        self._mono_ns = mono_ns
        self._anchor_ns = wall_ns() - mono_ns()

    def now_ms(self) -> int:
        return (self._anchor_ns + self._mono_ns()) // 1_000_000

    def wall_ms(self) -> int:
        """The wall clock now, as it reads (it may have been set since this clock was made)."""
        return self._wall_ns() // 1_000_000

    def wall_skew_ms(self) -> int:
        """How far the wall clock has been set away from ``now_ms`` (negative: behind)."""
        return self.wall_ms() - self.now_ms()

    async def sleep_until(self, t_ms: int) -> None:
        while True:
            remaining = t_ms - self.now_ms()
            if remaining <= 0:
                await asyncio.sleep(0)
                return
            await asyncio.sleep(remaining / 1000)

    def resolve_at(self, t_ms: int, fut: asyncio.Future[None]) -> None:
        loop = fut.get_loop()
        handle: list[asyncio.TimerHandle] = []

        def fire() -> None:
            if fut.done():
                return
            remaining = t_ms - self.now_ms()
            if remaining > 0:  # the loop's monotonic clock ran ahead of the wall clock
                handle[0] = loop.call_later(remaining / 1000, fire)
                return
            fut.set_result(None)

        handle.append(loop.call_later(max(t_ms - self.now_ms(), 0) / 1000, fire))
        fut.add_done_callback(lambda _: handle[0].cancel())  # settled early: drop the timer


class WallJumps:
    """Notices the wall clock being set under a ``RealClock``: ``check()`` returns the jump (ms,
    negative: set back) once, when the wall clock moved by more than ``back_ms`` back or
    ``forward_ms`` forward against monotonic time since the previous check; None otherwise.
    Drift within the bounds is followed, so slow corrections never add up to a jump."""

    def __init__(
        self, clock: RealClock, back_ms: int = JUMP_BACK_MS, forward_ms: int = JUMP_FORWARD_MS
    ) -> None:
        self._clock = clock
        self._back_ms = back_ms
        self._forward_ms = forward_ms
        self._skew = clock.wall_skew_ms()

    def check(self) -> int | None:
        skew = self._clock.wall_skew_ms()
        jump, self._skew = skew - self._skew, skew
        return jump if jump < -self._back_ms or jump > self._forward_ms else None


class SimClock:
    """Simulated time in integer milliseconds that jumps to the earliest pending deadline.

    Deadlines registered by ``sleep_until`` wake in (deadline, registration order): two sleepers
    with one deadline wake in the order they went to sleep, which keeps runs deterministic.
    """

    def __init__(self, start_ms: int = 0) -> None:
        if type(start_ms) is not int:
            raise ClockError(f"start_ms must be int milliseconds, found {type(start_ms).__name__}")
        self._now = start_ms
        self._seq = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []

    def now_ms(self) -> int:
        return self._now

    def advance_to(self, t_ms: int) -> None:
        """Move time forward to ``t_ms`` and wake every sleeper whose deadline has come."""
        if t_ms < self._now:
            raise ClockError(f"time cannot go back: now {self._now} ms, asked for {t_ms} ms")
        self._now = t_ms
        while self._waiters and self._waiters[0][0] <= t_ms:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    def next_deadline(self) -> int | None:
        """Earliest deadline a live sleeper waits for, or None."""
        while self._waiters and self._waiters[0][2].done():  # cancelled sleepers
            heapq.heappop(self._waiters)
        return self._waiters[0][0] if self._waiters else None

    async def sleep_until(self, t_ms: int) -> None:
        if t_ms <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (t_ms, self._seq, fut))
        await fut

    def resolve_at(self, t_ms: int, fut: asyncio.Future[None]) -> None:
        if t_ms <= self._now:
            fut.get_loop().call_soon(_resolve, fut)
            return
        self._seq += 1
        heapq.heappush(self._waiters, (t_ms, self._seq, fut))  # skipped once done

    async def sleep(self, ms: int) -> None:
        """Sleep ``ms`` simulated milliseconds."""
        await self.sleep_until(self._now + ms)

    def new_event_loop(self) -> SimEventLoop:
        """An event loop on this clock's time; close it when done."""
        return SimEventLoop(self)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on a fresh simulated-time event loop."""
        with asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(coro)


class Wakeup:
    """Wakes one timer task early: ``wait(clock, deadline)`` returns at ``deadline`` on
    ``clock`` or once ``set`` is called, whichever is first, and clears the wake-up. A ``set``
    while nobody waits makes the next ``wait`` return (after one yield to the loop).

    One future per wait and no task: thousands of devices each re-arm a few timers a second,
    and racing ``Event.wait`` against ``sleep_until`` costs two tasks, a cancellation and a
    reference cycle (the cancelled task's exception) per wait."""

    __slots__ = ("_flag", "_fut")

    def __init__(self) -> None:
        self._flag = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def is_set(self) -> bool:
        return self._flag

    def earlier(self, clock: Clock, deadline: int) -> None:
        """The waiter's deadline is now ``deadline`` on ``clock``, earlier than the one it waits
        for: a wait in progress returns then (or at its own deadline, or a ``set``, whichever
        is first) without waking now to wait again; with no wait in progress, as ``set``."""
        fut = self._fut
        if fut is None or fut.done():
            self.set()
        else:
            clock.resolve_at(deadline, fut)

    async def wait(self, clock: Clock, deadline: int | None) -> None:
        if self._flag:
            await asyncio.sleep(0)
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if deadline is not None:
                clock.resolve_at(deadline, fut)
            self._fut = fut
            try:
                await fut
            finally:
                self._fut = None
                if not fut.done():  # the waiter was cancelled: the clock forgets the deadline
                    fut.cancel()
        self._flag = False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _JumpingSelector(selectors.BaseSelector):
    """Wraps a real selector: polls real I/O without blocking, and when nothing is ready and
    the loop would wait, jumps simulated time to the earliest deadline instead of waiting."""

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        clock = self._clock
        # timeout is the distance to the loop's own earliest timer (None: it has none)
        loop_deadline = (
            None if timeout is None else clock.now_ms() + math.ceil(round(timeout * 1000, 6))
        )
        own = clock.next_deadline()
        candidates = [d for d in (loop_deadline, own) if d is not None]
        if not candidates:
            # nothing simulated will ever happen: only real I/O can wake the loop
            return self._real.select(None)
        clock.advance_to(max(clock.now_ms(), min(candidates)))
        return []


class SimEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is the SimClock's simulated time."""

    def __init__(self, clock: SimClock) -> None:
        self.sim_clock = clock
        super().__init__(selector=_JumpingSelector(clock))
        # The loop runs a timer once time() + resolution passes its deadline. Simulated time
        # is Unix time, about 1.8e9 s, where a float's step is 2.4e-7 s: the monotonic clock's
        # 1e-9 s would vanish in the sum, a timer due exactly now would never run and the loop
        # would spin. Simulated time moves in whole milliseconds; a microsecond is safe.
        self._clock_resolution = 1e-6

    def time(self) -> float:
        return self.sim_clock.now_ms() / 1000
