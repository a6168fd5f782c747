"""`run` with real serial sensors on pseudo-terminals, in real time.

One device, ``pi``, reads an RDM6300 (repeating frames, line noise, frames with a bad checksum)
and polls an XY-MD02 over Modbus RTU; its other sensors stay simulated. Each sensor's port is a
udev-like name (a symlink) to a pty: unplugging closes the pty and removes the name, plugging
back makes a new pty under the same name. Every wait is for a reading to be durable in the
device's store (read-only connections), with a generous guard against a hang, never a time
budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import tty
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.devices import load_fleet
from agent.fleet.datadir import DataDir
from agent.fleet.runner import FleetRunner, RunOptions, RunResult
from firmware_sim.serial.rfid import encode_rdm6300
from firmware_sim.serial.sim import XyMd02Sim
from ledger.reading import Reading, decode_reading
from tests.agent.runner_helpers import device_ids, plain, read_view, verify

pytestmark = pytest.mark.pty

HANG_GUARD_S = 90.0
CARD = bytes.fromhex("62E3086CED")
TAG = "em4100:62E3086CED"
CARD2 = bytes.fromhex("67003B51C6")
TAG2 = "em4100:67003B51C6"
BAD_FRAME = b"\x02" + b"68003B51C6CB" + b"\x03"  # the reference checksum mismatch
BAD_TAG = "em4100:68003B51C6"
NOISE = b"\xff\x00\x13garbage\x03\x02zz"

FLEET = """\
fleet: serial
seed: 3
sites: [{{id: shop, kind: household}}]
devices:
  - name: pi
    kind: refrigerator
    site: shop
    sampling_period: 1s
    serial:
      - {{driver: rdm6300, port: "{rfid}", sensors: [rfid.in, rfid.out]}}
      - driver: xymd02
        port: "{modbus}"
        options: {{prefix: fridge}}
        sensors: [fridge.temp_mc, fridge.humidity_pm]
  - name: other
    kind: refrigerator
    site: shop
world: {{shopping: {{enabled: false}}, meals: {{enabled: false}}}}
"""


class Adapter:
    """A USB serial adapter under a stable name: a pty pair whose slave is reached through a
    symlink. ``unplug`` closes the pty and removes the name, as udev does."""

    def __init__(self, name: Path) -> None:
        self.name = name
        self.master = -1
        self._slave = -1

    def plug(self) -> int:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.name.symlink_to(os.ttyname(self._slave))
        return self.master

    def unplug(self) -> None:
        if self.master < 0:
            return
        self.name.unlink()
        os.close(self.master)
        os.close(self._slave)
        self.master = self._slave = -1


class Rdm6300:
    """A reader with a card in its field: the card's frame every 50 ms, with line noise and
    frames of another card with a bad checksum in between (often enough that a parser that
    accepted them would confirm that card)."""

    def __init__(self, master: int, card: bytes) -> None:
        self.master = master
        self.frame = encode_rdm6300(card)
        self.frames = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.05):
                out = self.frame
                if self.frames % 4 == 1:
                    out = NOISE + BAD_FRAME + BAD_FRAME + out
                os.write(self.master, out)
                self.frames += 1
        except BaseException as exc:  # reported by remove()
            self.error = exc

    def remove(self) -> None:
        """The card leaves the field: frames stop."""
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


class Responder:
    """An XY-MD02 answering the bus from the master side of the pty, until it is unplugged."""

    def __init__(self, master: int, sim: XyMd02Sim) -> None:
        self.master = master
        self.sim = sim
        self.error: BaseException | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        try:
            while True:
                ready, _, _ = select.select([self.master, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                answer = self.sim.respond(os.read(self.master, 256))
                if answer:
                    os.write(self.master, answer)
        except BaseException as exc:  # reported by close()
            self.error = exc

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        os.close(self._stop_r)
        os.close(self._stop_w)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


class Run:
    """A ``FleetRunner`` on its own thread and event loop, stopped from the test's thread."""

    def __init__(self, runner: FleetRunner) -> None:
        self.runner = runner
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._started.wait(HANG_GUARD_S)

    def _main(self) -> None:
        async def go() -> RunResult:
            self._loop = asyncio.get_running_loop()
            self._started.set()
            return await self.runner.run()

        try:
            self.result = asyncio.run(go())
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._started.set()

    def alive(self) -> bool:
        if self.error is not None:
            raise self.error
        return True

    def stop(self) -> RunResult:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.runner.request_stop)
        self._thread.join(HANG_GUARD_S)
        assert not self._thread.is_alive(), "the runner did not stop"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def chain(data: Path, device: str) -> list[Reading]:
    """The device's signed readings, durable in its store, in sequence order."""
    path = DataDir(data).store_path(device)
    if not path.exists():
        return []
    view = read_view(path, device_ids(data)[device])
    return [plain(decode_reading(view.readings[seq]), ()) for seq in sorted(view.readings)]


def wait_for(
    run: Run, data: Path, device: str, found: Callable[[list[Reading]], bool], what: str
) -> list[Reading]:
    """Block until the device's durable readings satisfy ``found`` (the guard only stops a
    hang: a healthy run gets there in a second or two)."""
    done = threading.Event()
    waited = 0.0
    while run.alive():
        try:
            readings = chain(data, device)
        except Exception:  # the store is being created: not readable yet
            readings = []
        if found(readings):
            return readings
        assert waited < HANG_GUARD_S, f"{device}: no {what} after {HANG_GUARD_S} s"
        done.wait(0.05)
        waited += 0.05
    raise AssertionError("unreachable")


def count(
    readings: list[Reading], sensor: str, value: int | None = None, tag: str | None = None
) -> int:
    return sum(
        1
        for r in readings
        if r.sensor == sensor
        and (value is None or r.value == value)
        and (tag is None or r.tag == tag)
    )


def test_run_signs_live_serial_readings_and_survives_an_unplugged_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgefleet.serial")
    caplog.set_level(logging.INFO, logger="edgefleet.runner")
    rfid, modbus = Adapter(tmp_path / "ttyRFID"), Adapter(tmp_path / "ttyRS485")
    sim = XyMd02Sim(temp_mc=21_300, humidity_pm=455)
    devices = tmp_path / "devices.yaml"
    devices.write_text(FLEET.format(rfid=rfid.name, modbus=modbus.name))
    data = tmp_path / "data"
    runner = FleetRunner(
        load_fleet(devices), RunOptions(data=data, broker="memory", view=False, settle_s=5)
    )
    reader = Rdm6300(rfid.plug(), CARD)
    responder = Responder(modbus.plug(), sim)
    run = Run(runner)
    up = "serial.rdm6300.up"
    try:
        # The card is read (repeating frames make one arrival), then leaves.
        wait_for(run, data, "pi", lambda r: count(r, "rfid.in", 1, TAG) == 1, "tag read")
        reader.remove()
        wait_for(run, data, "pi", lambda r: count(r, "rfid.out", 0, TAG) == 1, "tag gone")
        # The probe's temperature follows the sensor's.
        wait_for(run, data, "pi", lambda r: count(r, "fridge.temp_mc", 21_300) > 0, "21.3 C")
        sim.temp_mc = -7_300
        wait_for(run, data, "pi", lambda r: count(r, "fridge.temp_mc", -7_300) > 0, "-7.3 C")

        # The RFID reader unplugged: the device keeps running and signs the outage.
        rfid.unplug()
        wait_for(run, data, "pi", lambda r: count(r, up, 0) == 1, "outage reading")
        assert run.runner._serial is not None
        assert [(o.device, o.port) for o in run.runner._serial.down()] == [("pi", str(rfid.name))]
        notes = run.runner._live_notes()  # what the live view shows under the table
        assert any(f"pi: serial rdm6300 on {rfid.name} down (port-io)" in n for n in notes)
        sim.temp_mc = 5_000  # the probe reads on meanwhile
        wait_for(run, data, "pi", lambda r: count(r, "fridge.temp_mc", 5_000) > 0, "5.0 C")
        # Plugged back under the same name: reopened, the recovery signed, reading again.
        reader = Rdm6300(rfid.plug(), CARD2)
        wait_for(run, data, "pi", lambda r: count(r, up, 1) == 2, "recovery reading")
        wait_for(run, data, "pi", lambda r: count(r, "rfid.in", 1, TAG2) == 1, "second tag")
        assert run.runner._serial.down() == []
        assert not any("down" in n for n in run.runner._live_notes())
        reader.remove()
        wait_for(run, data, "pi", lambda r: count(r, "rfid.out", 0, TAG2) == 1, "tag gone")
    finally:
        reader.remove()
        try:
            result = run.stop()
        finally:
            responder.close()
            rfid.unplug()
            modbus.unplug()

    assert result.samples > 0
    assert result.devices["pi"].stats.counters["time-refused"] == 0  # nothing came too late
    pi = chain(data, "pi")
    ups = [(r.value, r.text, r.time_ms) for r in pi if r.sensor == up]
    assert [(v, t) for v, t, _ in ups] == [(1, None), (0, "port-io"), (1, None)]
    assert ups == sorted(ups, key=lambda x: x[2])
    assert [(r.value, r.text) for r in pi if r.sensor == "serial.fridge.up"] == [(1, None)]
    assert not any(r.tag == BAD_TAG for r in pi)  # bad checksums never make a reading
    assert [r.tag for r in pi if r.sensor.startswith("rfid.")] == [TAG, TAG, TAG2, TAG2]
    # Every temperature of the probe is the real one: the simulated sensor is replaced.
    temps = {r.value for r in pi if r.sensor == "fridge.temp_mc"}
    assert temps == {21_300, -7_300, 5_000}
    assert {r.value for r in pi if r.sensor == "fridge.humidity_pm"} == {455}
    assert any(r.sensor == "freezer.temp_mc" for r in pi)  # still simulated
    assert not any(r.sensor.startswith("serial.") for r in chain(data, "other"))
    checked = verify(data)
    assert checked.ok, checked.failures()
    # One warning for the outage, naming the device and the port; the recovery is logged.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert getattr(warnings[0], "device", None) == "pi"
    assert str(rfid.name) in warnings[0].getMessage()
    assert any("is back" in r.getMessage() for r in caplog.records)
    forced = f"real time: serial sensors of pi (rdm6300 {rfid.name}), pi (xymd02 {modbus.name})"
    assert any(r.getMessage() == forced for r in caplog.records)


PROBE_ONLY = """\
fleet: probe
seed: 4
sites: [{{id: lab, kind: blood_station}}]
devices:
  - name: probe
    kind: medical_freezer
    site: lab
    sampling_period: 1s
    serial:
      driver: xymd02
      port: "{modbus}"
      options: {{prefix: cabinet{extra}}}
      sensors: [cabinet.temp_mc]
world: {{blood: {{enabled: false}}}}
"""


def test_a_port_missing_at_start_is_an_outage_not_an_error(tmp_path: Path) -> None:
    """The adapter is plugged in after the device started; a Modbus probe unplugged mid-poll
    (the write fails) is an outage too."""
    modbus = Adapter(tmp_path / "ttyRS485")
    devices = tmp_path / "devices.yaml"
    devices.write_text(PROBE_ONLY.format(modbus=modbus.name, extra=""))
    data = tmp_path / "data"
    up = "serial.cabinet.up"
    run = Run(FleetRunner(load_fleet(devices), RunOptions(data=data, broker="memory", view=False)))
    responder = None
    try:
        first = wait_for(run, data, "probe", lambda r: count(r, up) == 1, "outage reading")
        assert [(r.value, r.text) for r in first if r.sensor == up] == [(0, "port-not-found")]
        responder = Responder(modbus.plug(), XyMd02Sim(temp_mc=-30_500))
        wait_for(run, data, "probe", lambda r: count(r, "cabinet.temp_mc", -30_500) > 0, "temp")
        responder.close()
        responder = None
        modbus.unplug()
        wait_for(run, data, "probe", lambda r: count(r, up) == 3, "second outage")
    finally:
        if responder is not None:
            responder.close()
        run.stop()
        modbus.unplug()
    ups = [(r.value, r.text) for r in chain(data, "probe") if r.sensor == up]
    assert [v for v, _ in ups] == [0, 1, 0]
    assert ups[2][1] is not None and ups[2][1].startswith("port-")
    readings = chain(data, "probe")
    temps = {r.value for r in readings if r.sensor == "cabinet.temp_mc"}
    assert temps == {-30_500}  # the simulated cabinet temperature is replaced
    assert any(r.sensor == "compressor.on" for r in readings)  # the rest is still simulated


def test_options_the_driver_refuses_stop_run_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text(PROBE_ONLY.format(modbus=tmp_path / "nothing", extra=", address: 300"))
    data = tmp_path / "data"
    code = main(["run", "--devices", str(devices), "--data", str(data), "--no-view"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert str(devices) in err and "'probe'" in err and "1..247" in err
    assert [p.name for p in data.iterdir()] == ["fleet.log"]  # no key, no store, no fleet.json
