"""Live samples of the real serial sensors of local devices (devices.yaml ``serial:``).

This module owns the agent's side of real sensors: opening a device's sensor from its ``serial:``
spec, one reader thread per sensor, and handing what the threads read to the code that drives
time. Two users:

- ``edgefleet record`` opens every sensor with ``open_sensors`` and reads it with a
  ``SerialReader``; the first failure stops the recording (a trace with a hole would lie).
- ``edgefleet run`` uses a ``SerialFeed``: a sensor that is missing or unplugged is reopened
  with exponential backoff (``BACKOFF_FIRST_S`` doubling up to ``BACKOFF_MAX_S``) while its device
  keeps running, and each change of state is a sample of ``serial.<prefix or driver>.up`` (1:
  reading, 0: down, text the ``PortError`` code) so that the outage and the recovery are signed
  in the device's chain. ``LiveSource`` merges the feed into the simulation's steps, both held
  ``LIVE_LAG_MS`` behind the step's time: a real sample goes to its device through the same
  ``DeviceAgent.submit`` as simulated samples, in time order with them.

The threads only block on the serial line (pyserial, firmware_sim/serial/port.py) and append to a
bounded deque; the event loop never waits for a port.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.config.devices import Device, FleetConfig, serial_up_sensor
from agent.fleet.sources import SampleSource
from firmware_sim.clock import RealClock
from firmware_sim.samples import Sample
from firmware_sim.serial.driver import SerialSensor
from firmware_sim.serial.errors import PortError, SensorConfigError

log = logging.getLogger("edgefleet.serial")

OpenSensor = Callable[..., SerialSensor]
READ_SLICE_S = 0.2  # a reader notices a stop request within this long
# Reopening a lost port: the first attempt this long after the loss, then twice as long after
# each failure, never longer than BACKOFF_MAX_S (a replugged adapter is back within 30 s).
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# Samples read but not yet taken by the runner. The runner takes them every step (1 s in real
# time); only a stalled loop fills this, and then the newest samples are dropped and counted.
MAX_QUEUED = 10_000
# A device never signs a time before its last reading (ledger/chain.py), and a reader thread
# stamps a sample a moment before the runner can take it: each step hands over what is at least
# this old, real and simulated alike, so that no real sample arrives behind a signed one.
LIVE_LAG_MS = 1_000
# Sensors that answer when asked: `run` asks once per the device's `sample_period_ms` (the period
# of the simulated sensor they replace); the others (RFID readers, bridges) speak on their own.
POLLED = frozenset({"xymd02", "ds18b20"})


class SerialSetupError(ValueError):
    """A ``serial:`` spec the driver refuses (or, for ``record``, a port that cannot be opened):
    one line naming the devices file, the device and the problem."""


def serial_devices(config: FleetConfig, names: list[str]) -> list[Device]:
    """The devices among ``names`` that have a serial sensor, in devices.yaml order."""
    wanted = set(names)
    return [d for d in config.devices if d.name in wanted and d.serial is not None]


def open_device_sensor(
    config: FleetConfig,
    device: Device,
    index: int,
    open_sensor: OpenSensor | None,
    clock: RealClock,
) -> SerialSensor:
    """Open serial sensor ``index`` of ``device``. ``PortError`` (the OS refused or lost the
    port) passes through; options the driver refuses are a ``SerialSetupError``."""
    assert device.serial is not None
    spec = device.serial[index]
    if open_sensor is None:
        from firmware_sim.serial.factory import open_sensor as factory_open

        open_sensor = factory_open
    options: dict[str, Any] = dict(spec.options)
    if spec.baud is not None:
        options["baud"] = spec.baud
    try:
        return open_sensor(spec.driver, spec.port, clock=clock.now_ms, **options)
    except SensorConfigError as exc:
        raise _setup_error(config, device, index, exc) from None


def _setup_error(
    config: FleetConfig, device: Device, index: int, exc: Exception
) -> SerialSetupError:
    field = "serial" if device.serial is None or len(device.serial) == 1 else f"serial[{index}]"
    return SerialSetupError(
        f"{config.source}: device {device.name!r} ({device.where}): field '{field}': {exc}"
    )


def open_sensors(
    config: FleetConfig, open_sensor: OpenSensor | None, clock: RealClock
) -> list[tuple[str, SerialSensor]]:
    """(device, sensor) for every serial sensor of the fleet, or none of them: any failure (a
    refused option, a port that cannot be opened) closes those already open and raises
    ``SerialSetupError``."""
    opened: list[tuple[str, SerialSensor]] = []
    try:
        for d in config.devices:
            for i in range(len(d.serial or ())):
                try:
                    opened.append((d.name, open_device_sensor(config, d, i, open_sensor, clock)))
                except (OSError, ValueError) as exc:
                    if isinstance(exc, SerialSetupError):
                        raise
                    raise _setup_error(config, d, i, exc) from None
    except BaseException:
        for _, sensor in opened:
            sensor.close()
        raise
    return opened


class SerialReader(threading.Thread):
    """Reads one sensor until stopped, appending (device, Sample) to a shared deque. The first
    error ends the thread and is kept in ``error`` for the caller to report."""

    def __init__(
        self,
        device: str,
        sensor: SerialSensor,
        sink: collections.deque[tuple[str, Sample]],
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"serial-{device}", daemon=True)
        self.device, self.sensor, self.sink, self.stop = device, sensor, sink, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for sample in self.sensor.read(READ_SLICE_S):
                    self.sink.append((self.device, sample))
        except Exception as exc:  # reported by the caller's thread
            self.error = exc


@dataclass(frozen=True, slots=True)
class Outage:
    """A serial sensor that is down: since when (host clock, ms) and why (the error's code)."""

    device: str
    driver: str
    port: str
    since_ms: int
    code: str

    def note(self) -> str:
        return (
            f"{self.device}: serial {self.driver} on {self.port} down ({self.code}), "
            "reopening with backoff"
        )


class _Keeper(threading.Thread):
    """Keeps one serial sensor of a device reading: reopens it with backoff whenever it is
    lost."""

    def __init__(self, feed: SerialFeed, device: Device, index: int) -> None:
        assert device.serial is not None
        spec = device.serial[index]
        self.up_sensor = serial_up_sensor(spec)
        super().__init__(name=f"{device.name}:{self.up_sensor}", daemon=True)
        self.feed = feed
        self.device = device
        self.index = index
        self.driver = spec.driver
        self.port = spec.port
        self.sensor: SerialSensor | None = None
        self.period_s = device.sample_period_ms / 1000 if self.driver in POLLED else 0.0
        self.retry = True  # False once the driver refused the options: reopening cannot help

    def open_first(self) -> None:
        """The first attempt, on the caller's thread: refused options raise; a port that cannot
        be opened is the first outage."""
        try:
            self.sensor = self._open()
        except PortError as exc:
            self._went_down(exc)
        else:
            self._emit(1, None)

    def run(self) -> None:
        stop = self.feed.stop
        delay = BACKOFF_FIRST_S
        next_poll = time.monotonic()
        while not stop.is_set() and self.retry:
            sensor = self.sensor
            if sensor is None:
                if stop.wait(delay):
                    break
                delay = min(delay * 2, BACKOFF_MAX_S)
                self._reopen()
                continue
            delay = BACKOFF_FIRST_S
            if self.period_s:
                if stop.wait(max(0.0, next_poll - time.monotonic())):
                    break
                next_poll = max(next_poll + self.period_s, time.monotonic())
            try:
                samples = sensor.read(READ_SLICE_S)
            except Exception as exc:  # the port is gone (or a driver bug): the device keeps on
                self._lose(exc)
                continue
            for sample in samples:
                self.feed.put(self.device.name, sample)
        if self.sensor is not None:
            self._close_quietly(self.sensor)

    def _reopen(self) -> None:
        try:
            self.sensor = self._open()
        except SerialSetupError as exc:  # first seen now (the port was missing at start)
            log.error("%s; it stays down", exc, extra={"device": self.device.name})
            self.feed.outages[self.name] = dataclasses.replace(
                self.feed.outages[self.name], code="config"
            )
            self.retry = False
            return
        except OSError as exc:  # still gone: stay down, say nothing new
            log.debug("%s still down: %s", self.port, exc, extra={"device": self.device.name})
            return
        self.feed.outages.pop(self.name, None)
        log.info(
            "serial %s on %s is back: reading again",
            self.driver,
            self.port,
            extra={"device": self.device.name},
        )
        self._emit(1, None)

    def _open(self) -> SerialSensor:
        feed = self.feed
        return open_device_sensor(
            feed.config, self.device, self.index, feed.open_sensor, feed.clock
        )

    def _lose(self, exc: Exception) -> None:
        sensor, self.sensor = self.sensor, None
        if sensor is not None:
            self._close_quietly(sensor)
        if not isinstance(exc, PortError):
            log.error(
                "serial %s on %s failed",
                self.driver,
                self.port,
                exc_info=exc,
                extra={"device": self.device.name},
            )
        self._went_down(exc)

    def _went_down(self, exc: Exception) -> None:
        code = exc.code if isinstance(exc, PortError) else "driver-error"
        now = self.feed.clock.now_ms()
        self.feed.outages[self.name] = Outage(self.device.name, self.driver, self.port, now, code)
        log.warning(
            "serial %s on %s is down (%s); the device keeps running, reopening with backoff "
            "(%.1f s doubling to %.0f s)",
            self.driver,
            self.port,
            exc,
            BACKOFF_FIRST_S,
            BACKOFF_MAX_S,
            extra={"device": self.device.name},
        )
        self._emit(0, code, now)

    def _emit(self, value: int, text: str | None, now: int | None = None) -> None:
        t = self.feed.clock.now_ms() if now is None else now
        self.feed.put(self.device.name, Sample(t, self.up_sensor, value, text=text))

    def _close_quietly(self, sensor: SerialSensor) -> None:
        try:
            sensor.close()
        except OSError as exc:  # closing a lost port may fail too: nothing left to release
            log.debug("closing %s: %s", self.port, exc, extra={"device": self.device.name})


class SerialFeed:
    """The serial sensors of some devices, each kept reading by its own thread.

    ``start`` opens them (refused options raise ``SerialSetupError``; a missing port is the
    sensor's first outage, not an error); ``take(until_ms)`` hands over the samples read so far
    whose time is at most ``until_ms``; ``close`` stops the threads and closes the ports.
    """

    def __init__(
        self,
        config: FleetConfig,
        devices: list[Device],
        *,
        open_sensor: OpenSensor | None = None,
        clock: RealClock | None = None,
    ) -> None:
        self.config = config
        self.open_sensor = open_sensor
        self.clock = clock or RealClock()
        self.stop = threading.Event()
        self.outages: dict[str, Outage] = {}  # sensor's thread -> its outage (set by threads)
        self.dropped = 0  # samples dropped because MAX_QUEUED were waiting
        self._queue: collections.deque[tuple[str, Sample]] = collections.deque()
        self._held: list[tuple[str, Sample]] = []  # taken from the queue, not yet due
        self._keepers = [_Keeper(self, d, i) for d in devices for i in range(len(d.serial or ()))]

    def describe(self) -> str:
        """``fridge-1 (rdm6300 /dev/ttyUSB0), ...`` for the log and the live view."""
        return ", ".join(f"{k.device.name} ({k.driver} {k.port})" for k in self._keepers)

    def start(self) -> None:
        try:
            for k in self._keepers:
                k.open_first()
        except BaseException:
            self.close()
            raise
        for k in self._keepers:
            k.start()

    def put(self, device: str, sample: Sample) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "%d serial samples wait for the fleet: dropping the newest (is the loop "
                    "stalled?)",
                    MAX_QUEUED,
                    extra={"device": device},
                )
            return
        self._queue.append((device, sample))

    def take(self, until_ms: int) -> list[tuple[str, Sample]]:
        """The samples read so far with a time at most ``until_ms``, in time order (later ones
        wait for a later step, so a device never receives a reading from its future)."""
        queue = self._queue
        while queue:
            self._held.append(queue.popleft())
        due = [x for x in self._held if x[1].time_ms <= until_ms]
        self._held = [x for x in self._held if x[1].time_ms > until_ms]
        due.sort(key=lambda x: x[1].time_ms)
        return due

    def down(self) -> list[Outage]:
        """The sensors down now."""
        return list(self.outages.values())

    def close(self) -> None:
        self.stop.set()
        for k in self._keepers:
            if k.is_alive():
                k.join(timeout=READ_SLICE_S * 10 + 2)
            elif k.sensor is not None:  # opened, thread never started
                k._close_quietly(k.sensor)
                k.sensor = None


class LiveSource:
    """A ``SampleSource`` whose step to ``t`` carries the simulation's samples and, merged in
    time order, the real samples of a ``SerialFeed``, both up to ``t - lag_ms`` (the simulation
    already leaves out the sensors a serial one replaces: firmware_sim.fleet). ``now_ms`` is
    where the simulation stands, ``lag_ms`` behind: a run that stops leaves that last stretch
    unsigned, and the next run resumes there."""

    def __init__(self, inner: SampleSource, feed: SerialFeed, lag_ms: int = LIVE_LAG_MS) -> None:
        self.inner = inner
        self.feed = feed
        self.lag_ms = lag_ms

    @property
    def now_ms(self) -> int:
        return self.inner.now_ms

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        self.inner.now_ms = value

    def targets(self, until_ms: int) -> Iterator[int]:
        return self.inner.targets(until_ms)

    def step(self, until_ms: int) -> list[tuple[str, Sample]]:
        cut = until_ms - self.lag_ms
        batch = self.inner.step(cut) if cut >= self.inner.now_ms else []
        batch += self.feed.take(cut)
        batch.sort(key=lambda x: x[1].time_ms)  # stable: the simulation's order breaks ties
        return batch
