"""agent/fleet/serial_source.py without hardware: how live samples are merged into the steps, and
how a sensor is kept (outage and recovery readings, one warning per outage) with an injected
opener. The reopening test waits for the feed's own events, bounded by a guard against a hang."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config.devices import parse_fleet
from agent.fleet.serial_source import (
    BACKOFF_FIRST_S,
    LIVE_LAG_MS,
    LiveSource,
    SerialFeed,
    SerialSetupError,
    serial_devices,
)
from firmware_sim.samples import Sample
from firmware_sim.serial.driver import SerialSensor
from firmware_sim.serial.errors import PortError, PortNotFoundError, SensorConfigError

HANG_GUARD_S = 30.0

DOC: dict[str, Any] = {
    "fleet": "unit",
    "sites": [{"id": "home", "kind": "household"}],
    "devices": [
        {
            "name": "pi",
            "kind": "refrigerator",
            "site": "home",
            "serial": [
                {"driver": "rdm6300", "port": "/dev/rfid", "sensors": ["rfid.in"]},
                {"driver": "bridge", "port": "/dev/acm", "options": {"prefix": "fridge"}},
            ],
        },
        {"name": "plain", "kind": "refrigerator", "site": "home"},
    ],
}
CONFIG = parse_fleet(DOC, "unit.yaml")


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000_000

    def now_ms(self) -> int:
        return self.t


class FakeSource:
    """A simulation with one sample per device every 100 ms."""

    def __init__(self, start: int) -> None:
        self.now_ms = start

    def targets(self, until_ms: int) -> Iterator[int]:
        yield until_ms

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        out = [("plain", Sample(t, "sim", 0)) for t in range(self.now_ms + 100, until_ms + 1, 100)]
        self.now_ms = max(self.now_ms, until_ms)
        return out


def test_a_step_hands_over_real_and_simulated_samples_a_lag_behind_in_time_order() -> None:
    t0 = 1_700_000_000_000
    feed = SerialFeed(CONFIG, [], clock=Clock())  # type: ignore[arg-type]
    source = LiveSource(FakeSource(t0), feed)
    for dt in (50, 950, 1_050, 2_500):
        feed.put("pi", Sample(t0 + dt, "rfid.in", 1, tag="em4100:0000000001"))
    assert source.step(t0) == []  # nothing is a second old yet
    first = source.step(t0 + 2 * LIVE_LAG_MS)
    times = [s.time_ms - t0 for _, s in first]
    assert times == sorted(times) and times[-1] == LIVE_LAG_MS
    assert [t for (d, _), t in zip(first, times, strict=True) if d == "pi"] == [50, 950]
    assert source.now_ms == t0 + LIVE_LAG_MS  # the simulation stands where the step cut
    second = source.step(t0 + 2 * LIVE_LAG_MS + 600)
    assert [s.time_ms - t0 for d, s in second if d == "pi"] == [1_050]  # 2_500 still waits


class FakeSensor(SerialSensor):
    """Hands out what the test queues; raises the queued error once."""

    driver = "fake"

    def __init__(self, box: Box) -> None:
        super().__init__()
        self.box = box

    def read(self, timeout_s: float) -> list[Sample]:
        fail = self.box.fail_reads.wait(timeout_s)
        if fail:
            self.box.fail_reads.clear()
            raise PortError("/dev/rfid", "read failed (device unplugged?): EIO")
        return []

    def close(self) -> None:
        self.box.closed += 1


class Box:
    """The injected opener: the port is missing while ``missing`` is set."""

    def __init__(self) -> None:
        self.missing = threading.Event()
        self.fail_reads = threading.Event()
        self.opens = 0
        self.attempts = 0
        self.closed = 0

    def open_sensor(self, driver: str, port: str, **options: object) -> SerialSensor:
        if driver == "bridge":  # the other sensor of the device: always there, silent
            return FakeSensor(Box())
        self.attempts += 1
        if self.missing.is_set():
            raise PortNotFoundError(port, "no such device")
        self.opens += 1
        return FakeSensor(self)


def wait_for_ups(feed: SerialFeed, wanted: int, got: list[Sample]) -> list[Sample]:
    """Collect the feed's ``serial.rdm6300.up`` samples until there are ``wanted``."""
    done = threading.Event()
    waited = 0.0
    while len(got) < wanted:
        got += [s for _, s in feed.take(1 << 62) if s.sensor == "serial.rdm6300.up"]
        assert waited < HANG_GUARD_S, f"{len(got)} of {wanted} up/down samples: {got}"
        done.wait(0.02)
        waited += 0.02
    return got


def test_a_lost_port_is_one_warning_an_outage_reading_and_a_recovery_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgefleet.serial")
    box = Box()
    clock = Clock()
    feed = SerialFeed(
        CONFIG,
        serial_devices(CONFIG, ["pi", "plain"]),
        open_sensor=box.open_sensor,
        clock=clock,  # type: ignore[arg-type]
    )
    box.missing.set()  # unplugged at start: the first outage, not an error
    feed.start()
    try:
        ups = wait_for_ups(feed, 1, [])
        assert [(s.value, s.text) for s in ups] == [(0, "port-not-found")]
        assert [(o.device, o.port, o.code) for o in feed.down()] == [
            ("pi", "/dev/rfid", "port-not-found")
        ]
        # Two failed attempts (at start, then 0.5 s later), then plugged in.
        while box.attempts < 2:
            threading.Event().wait(BACKOFF_FIRST_S / 5)
        box.missing.clear()
        clock.t += 5_000
        ups = wait_for_ups(feed, 2, ups)
        assert (ups[1].value, ups[1].text, ups[1].time_ms) == (1, None, clock.t)
        assert feed.down() == []
        box.fail_reads.set()  # unplugged while reading
        ups = wait_for_ups(feed, 3, ups)
        assert (ups[2].value, ups[2].text) == (0, "port-io")
        assert box.closed == 1  # the lost port was closed before reopening
        ups = wait_for_ups(feed, 4, ups)  # the path is still there: back at once
        assert ups[3].value == 1
    finally:
        feed.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per outage, however many attempts failed
    assert all(
        getattr(r, "device", None) == "pi" and "/dev/rfid" in r.getMessage() for r in warnings
    )
    assert box.attempts >= 3 and box.opens == 2


def test_options_the_driver_refuses_are_one_error_naming_file_device_and_sensor() -> None:
    box = Box()

    def refuse(driver: str, port: str, **options: object) -> SerialSensor:
        if driver == "bridge":
            raise SensorConfigError("driver bridge does not take colour")
        return FakeSensor(box)

    feed = SerialFeed(
        CONFIG,
        serial_devices(CONFIG, ["pi"]),
        open_sensor=refuse,
        clock=Clock(),  # type: ignore[arg-type]
    )
    with pytest.raises(SerialSetupError) as info:
        feed.start()
    assert str(info.value) == (
        "unit.yaml: device 'pi' (devices[0]): field 'serial[1]': driver bridge does not take colour"
    )
    assert feed.stop.is_set() and box.closed == 1  # the sensor opened first is closed again
