"""``--speed max`` waits for the receivers, not only the writers (agent/fleet/keepup.py).

Before, a max-speed run advanced simulated time as soon as every device had stored its samples:
a 300-fridge street over one shared MQTT connection sealed a simulated day in 9 minutes while
its devices' receive queues grew past a million deliveries, and it ended not converged
(docs/PROTOCOL.md 13.10)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from agent.config.devices import parse_fleet
from agent.fleet.keepup import KeepUp
from agent.fleet.runner import FleetRunner, RunOptions
from agent.transport.base import Delivery, Transport
from agent.transport.memory import MemoryNetwork
from tests.agent.conftest import require_mosquitto
from tests.agent.runner_helpers import missing_heads
from tests.agent.test_transport_street import street


def _queue(network: MemoryNetwork, device_id: str, n: int) -> Transport:
    t = network.attach(device_id)
    for _ in range(n):
        assert t._accept(Delivery("t", "inbox", None, b"x" * 40))
    return t


def test_keep_up_waits_until_every_queue_is_at_most_the_bound() -> None:
    async def scenario() -> tuple[KeepUp, list[int]]:
        network = MemoryNetwork(random.Random(1))
        a = _queue(network, "efaaaaaaaaaaaaaaaaaaaaaaaa", 10)
        b = _queue(network, "efbbbbbbbbbbbbbbbbbbbbbbbb", 3)
        seen: list[int] = []

        async def reader() -> None:  # one delivery per turn, as a receive loop would
            while a.pending() or b.pending():
                for t in (a, b):
                    t.receive_nowait()
                await asyncio.sleep(0)

        keep = KeepUp(2, poll_s=0)

        def transports() -> list[Transport]:
            seen.append(keep.backlog([a, b]))
            return [a, b]

        task = asyncio.create_task(reader())
        await keep.wait(transports, asyncio.Event())
        left = [a.pending(), b.pending()]
        await task
        return keep, left

    keep, left = asyncio.run(scenario())
    assert max(left) <= 2, left
    assert max(left) >= 1  # it went on as soon as the bound allowed, not at an empty queue
    assert keep.stats.steps == 1 and keep.stats.peak == 10 and keep.stats.peak_after <= 2
    assert keep.stats.stalls == 0
    assert "longest queue 10 before a step" in keep.summary()


def test_keep_up_goes_on_when_the_backlog_stops_shrinking() -> None:
    """A receive loop stuck on something the next step would not help: the run never hangs."""
    ticks = iter(range(1_000_000))

    async def scenario() -> KeepUp:
        network = MemoryNetwork(random.Random(1))
        stuck = _queue(network, "efaaaaaaaaaaaaaaaaaaaaaaaa", 5)
        keep = KeepUp(1, poll_s=0, stall_s=10, clock=lambda: float(next(ticks)))
        await keep.wait(lambda: [stuck], asyncio.Event())
        return keep

    keep = asyncio.run(scenario())
    assert keep.stats.stalls == 1 and keep.stats.peak_after == 5


def test_keep_up_returns_at_once_on_stop_and_refuses_a_negative_bound() -> None:
    async def scenario() -> KeepUp:
        network = MemoryNetwork(random.Random(1))
        stop = asyncio.Event()
        stop.set()
        queued = _queue(network, "efaaaaaaaaaaaaaaaaaaaaaaaa", 3)
        keep = KeepUp(0, poll_s=0)
        await keep.wait(lambda: [queued], stop)
        return keep

    stats = asyncio.run(scenario()).stats
    assert stats.stalls == 0 and stats.peak_after == 3
    with pytest.raises(ValueError, match="keep-up bound"):
        KeepUp(-1)


@pytest.mark.slow
@pytest.mark.mosquitto
def test_a_max_speed_street_on_a_shared_connection_keeps_its_receivers_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 fridges in one domain through one shared connection (as streets above 200 devices
    are run), three simulated hours at max speed, a tight bound of 4 queued deliveries per
    device: every step started with every queue within the bound, and the street converged."""
    require_mosquitto()
    monkeypatch.setattr("agent.fleet.runner.SHARED_CONNECTION_ABOVE", 0)
    cfg = parse_fleet(street(40), "street.yaml")
    data = tmp_path / "data"
    opts = RunOptions(data=data, broker="mosquitto", for_ms=3 * 3_600_000, view=False)
    opts.settle_s = 60.0
    runner = FleetRunner(cfg, opts)
    runner.keep_up = KeepUp(4)
    result = asyncio.run(runner.run())
    stats = runner.keep_up.stats
    print(runner.keep_up.summary())
    # The bound bit (queues above it before some steps): a run it never held back proves nothing.
    assert stats.steps > 0 and stats.peak > 4, stats
    assert stats.stalls == 0, stats
    assert stats.peak_after <= 4, stats
    assert result.converged, stats
    assert missing_heads(cfg, data) == []
