"""SimClock jumps to deadlines in a deterministic order; its loop's timers are simulated too."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from firmware_sim.clock import Clock, ClockError, RealClock, SimClock, Wakeup, WallJumps

WEEK_MS = 7 * 24 * 3600 * 1000


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SimClock(0), Clock)
    assert isinstance(RealClock(), Clock)


def test_real_clock_reads_unix_milliseconds_and_past_deadlines_return_at_once() -> None:
    clock = RealClock()
    before = time.time_ns() // 1_000_000
    now = clock.now_ms()
    # anchored to the wall clock once: the two readings that anchor it are microseconds apart
    assert before - 1 <= now <= time.time_ns() // 1_000_000 + 1
    asyncio.run(clock.sleep_until(now - 1000))  # returns without waiting
    assert clock.now_ms() - now < 1000


def test_sleepers_wake_at_their_exact_deadlines_in_deadline_then_arrival_order() -> None:
    clock = SimClock(1_000)
    woke: list[tuple[str, int]] = []

    async def sleeper(name: str, t: int) -> None:
        await clock.sleep_until(t)
        woke.append((name, clock.now_ms()))

    async def main() -> None:
        await asyncio.gather(
            sleeper("late", 9_000),
            sleeper("early", 2_000),
            sleeper("tie-1", 5_000),
            sleeper("tie-2", 5_000),
            sleeper("past", 10),
        )

    clock.run(main())
    assert woke == [
        ("past", 1_000),
        ("early", 2_000),
        ("tie-1", 5_000),
        ("tie-2", 5_000),
        ("late", 9_000),
    ]
    assert clock.now_ms() == 9_000


def test_a_simulated_week_of_sleeping_takes_no_wall_time() -> None:
    clock = SimClock(0)
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        while clock.now_ms() < WEEK_MS:
            await clock.sleep(60_000)
            ticks += 1

    wall = time.perf_counter()
    clock.run(main())
    assert ticks == WEEK_MS // 60_000
    assert clock.now_ms() == WEEK_MS
    assert time.perf_counter() - wall < 5


def test_asyncio_timers_of_the_loop_run_on_simulated_time() -> None:
    clock = SimClock(0)
    seen: list[int] = []

    async def main() -> str:
        await asyncio.sleep(3600)
        seen.append(clock.now_ms())
        loop = asyncio.get_running_loop()
        loop.call_later(2.5, lambda: seen.append(clock.now_ms()))
        try:
            async with asyncio.timeout(10):
                await clock.sleep_until(clock.now_ms() + 60_000)
        except TimeoutError:
            return "timed out"
        return "slept"

    assert clock.run(main()) == "timed out"
    assert seen == [3_600_000, 3_602_500]
    assert clock.now_ms() == 3_610_000


def test_loop_timers_at_unix_times_run_when_due() -> None:
    """At Unix times a timer can fall due exactly on a jump; it must run, not spin the loop."""
    clock = SimClock(1_767_225_600_001)
    seen: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for delay in (1.0, 0.25, 0.001, 3600.0):
            done = loop.create_future()
            loop.call_later(delay, done.set_result, None)
            await done
            seen.append(clock.now_ms())

    clock.run(main())
    start = 1_767_225_600_001
    assert seen == [start + 1000, start + 1250, start + 1251, start + 3_601_251]


def test_a_cancelled_sleeper_does_not_hold_time_back() -> None:
    clock = SimClock(0)

    async def main() -> int:
        task = asyncio.create_task(clock.sleep_until(1_000_000))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.next_deadline() is None
        await clock.sleep_until(5)
        return clock.now_ms()

    assert clock.run(main()) == 5


def test_real_io_still_flows_while_time_is_simulated() -> None:
    clock = SimClock(0)

    async def main() -> bytes:
        a, b = socket.socketpair()
        with a, b:
            reader, writer = await asyncio.open_connection(sock=a)
            b.sendall(b"ping\n")
            line = await reader.readline()
            writer.close()
            return line

    assert clock.run(main()) == b"ping\n"


def test_sync_driving_wakes_due_sleepers_and_refuses_to_go_back() -> None:
    clock = SimClock(100)
    clock.advance_to(100)
    clock.advance_to(250)
    assert clock.now_ms() == 250
    with pytest.raises(ClockError, match="cannot go back: now 250 ms, asked for 249 ms"):
        clock.advance_to(249)
    with pytest.raises(ClockError, match="must be int"):
        SimClock(1.5)  # type: ignore[arg-type]


def test_same_program_same_interleaving() -> None:
    def run_once() -> list[tuple[int, int]]:
        clock = SimClock(0)
        out: list[tuple[int, int]] = []

        async def worker(i: int) -> None:
            for k in range(20):
                await clock.sleep((i * 7 + k * 13) % 50 + 1)
                out.append((i, clock.now_ms()))

        async def main() -> None:
            await asyncio.gather(*(worker(i) for i in range(5)))

        clock.run(main())
        return out

    first = run_once()
    assert len(first) == 100
    assert first == run_once()
    assert [t for _, t in first] == sorted(t for _, t in first)


# --------------------------------------------------------------------------- Wakeup


def test_a_wakeup_returns_at_its_deadline_or_when_set_whichever_is_first() -> None:
    clock = SimClock(0)
    wake = Wakeup()
    woke: list[tuple[str, int]] = []

    async def timer() -> None:
        await wake.wait(clock, 5_000)  # nobody sets it: the deadline
        woke.append(("deadline", clock.now_ms()))
        await wake.wait(clock, 60_000)  # set at 7,000: long before its deadline
        woke.append(("set", clock.now_ms()))
        await wake.wait(clock, None)  # no deadline: only a set ends it
        woke.append(("set again", clock.now_ms()))

    async def setter() -> None:
        await clock.sleep_until(7_000)
        wake.set()
        await clock.sleep_until(100_000)
        wake.set()

    async def main() -> None:
        await asyncio.gather(timer(), setter())

    clock.run(main())
    assert woke == [("deadline", 5_000), ("set", 7_000), ("set again", 100_000)]
    assert not wake.is_set()  # each wait clears what woke it


def test_an_earlier_deadline_ends_a_wait_then_without_waking_it_before() -> None:
    clock = SimClock(0)
    wake = Wakeup()
    woke: list[int] = []

    async def timer() -> None:
        await wake.wait(clock, 60_000)
        woke.append(clock.now_ms())
        await wake.wait(clock, 9_000)  # brought forward to 20,000: later than its own
        woke.append(clock.now_ms())

    async def mover() -> None:
        await clock.sleep_until(1_000)
        wake.earlier(clock, 5_000)
        await clock.sleep_until(3_000)
        assert woke == [], "woken before its new deadline"
        wake.earlier(clock, 4_000)  # and again
        await clock.sleep_until(6_000)
        wake.earlier(clock, 20_000)

    async def main() -> None:
        await asyncio.gather(timer(), mover())

    clock.run(main())
    assert woke == [4_000, 9_000]
    assert not wake.is_set()


def test_an_earlier_deadline_while_nobody_waits_ends_the_next_wait_as_a_set() -> None:
    clock = SimClock(0)
    wake = Wakeup()

    async def main() -> None:
        wake.earlier(clock, 50_000)
        await wake.wait(clock, 1_000_000)
        assert clock.now_ms() == 0

    clock.run(main())


def test_a_set_while_nobody_waits_ends_the_next_wait_after_one_yield() -> None:
    clock = SimClock(0)
    wake = Wakeup()
    order: list[str] = []

    async def other() -> None:
        order.append("other ran")

    async def main() -> None:
        wake.set()
        assert wake.is_set()
        task = asyncio.ensure_future(other())
        await wake.wait(clock, 1_000_000)
        order.append("wait returned")
        await task

    clock.run(main())
    assert order == ["other ran", "wait returned"]  # the wait yielded to the loop first
    assert clock.now_ms() == 0  # and never waited for its deadline


def test_a_cancelled_wait_leaves_no_deadline_behind() -> None:
    clock = SimClock(0)
    wake = Wakeup()

    async def main() -> None:
        waiter = asyncio.ensure_future(wake.wait(clock, 50_000))
        await clock.sleep_until(10)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert clock.next_deadline() is None  # the cancelled wait's deadline is gone
        await clock.sleep_until(20)

    clock.run(main())
    assert clock.now_ms() == 20


def test_a_wakeup_on_the_real_clock_makes_no_task_and_leaves_no_timer() -> None:
    clock = RealClock()
    wake = Wakeup()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks = len(asyncio.all_tasks())
        start = clock.now_ms()
        waiter = asyncio.ensure_future(wake.wait(clock, start + 30))
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == tasks + 1  # the waiter itself, nothing more
        await waiter
        assert clock.now_ms() >= start + 30
        # Set early: the deadline's timer is cancelled with the wait.
        waiter = asyncio.ensure_future(wake.wait(clock, clock.now_ms() + 60_000))
        await asyncio.sleep(0)
        wake.set()
        await asyncio.wait_for(waiter, 5)
        live = [h for h in loop._scheduled if not h.cancelled()]  # the loop's timer heap
        assert all(h.when() < loop.time() + 30 for h in live), live

    asyncio.run(main())


class SettableTime:
    """A wall clock someone can set, over a monotonic clock that only runs (nanoseconds)."""

    def __init__(self, wall_ms: int) -> None:
        self.mono = 5_000_000_000
        self.offset = wall_ms * 1_000_000 - self.mono

    def run(self, ms: int) -> None:
        self.mono += ms * 1_000_000

    def set_wall(self, by_ms: int) -> None:
        self.offset += by_ms * 1_000_000

    def clock(self) -> RealClock:
        return RealClock(wall_ns=lambda: self.mono + self.offset, mono_ns=lambda: self.mono)


def test_setting_the_wall_clock_moves_neither_the_real_clock_nor_its_deadlines() -> None:
    t = SettableTime(1_736_121_600_000)
    clock = t.clock()
    assert clock.now_ms() == clock.wall_ms() == 1_736_121_600_000
    t.run(2_000)
    t.set_wall(-3_600_000)  # set back an hour
    assert clock.now_ms() == 1_736_121_602_000, "real time followed the wall clock back"
    assert clock.wall_skew_ms() == -3_600_000
    t.set_wall(+7_200_000)
    t.run(1)
    assert (clock.now_ms(), clock.wall_skew_ms()) == (1_736_121_602_001, 3_600_000)


def test_wall_jumps_reports_each_jump_once_and_follows_drift_within_its_bounds() -> None:
    t = SettableTime(1_736_121_600_000)
    jumps = WallJumps(t.clock(), back_ms=1_000, forward_ms=60_000)
    seen = []
    for run_ms, set_ms in [
        (250, 0),
        (250, -900),  # within the bound back: drift, followed
        (250, -900),  # again: measured from the last look, still drift
        (250, -3_600_000),  # an hour back
        (250, 0),
        (250, 59_000),  # forward within the bound
        (250, 61_000),  # forward past it
        (250, 0),
    ]:
        t.run(run_ms)
        t.set_wall(set_ms)
        seen.append(jumps.check())
    assert seen == [None, None, None, -3_600_000, None, None, 61_000, None]


def test_a_real_clock_timer_fires_on_time_when_the_wall_clock_is_set_back_meanwhile() -> None:
    # The loop's clock stands in for the monotonic clock: the wait costs no wall time.
    loop_clock = SimClock(1_736_121_600_000)
    set_by_ms = [0]
    clock = RealClock(
        wall_ns=lambda: (loop_clock.now_ms() + set_by_ms[0]) * 1_000_000,
        mono_ns=lambda: loop_clock.now_ms() * 1_000_000,
    )
    woke: dict[str, int] = {}

    async def main() -> None:
        start = loop_clock.now_ms()
        fut = asyncio.get_running_loop().create_future()
        clock.resolve_at(clock.now_ms() + 5_000, fut)
        sleeper = asyncio.ensure_future(clock.sleep_until(clock.now_ms() + 7_000))
        await asyncio.sleep(1)
        set_by_ms[0] = -3_600_000  # an hour back, a second in: anti-entropy must not stop for it
        await fut
        woke["resolve_at"] = loop_clock.now_ms() - start
        await sleeper
        woke["sleep_until"] = loop_clock.now_ms() - start

    loop_clock.run(main())
    assert woke == {"resolve_at": 5_000, "sleep_until": 7_000}
