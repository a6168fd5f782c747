"""One device agent with real sensors: its memory and CPU, so that it fits a Pi Zero 2 W.

``python -m bench.agent --json [--quick]`` starts a Mosquitto broker of its own
(``agent.transport.brokers.MosquittoBroker``, a free port), two sensors on real pseudo-terminals
and ``edgefleet run`` as a separate process (the agent, a real interpreter start with every
import) running one device ``pi`` whose sensors are all real (docs/DEVICES.md, ``serial:``):

- an RDM6300 RFID reader: a card enters the field every 10 s and stays 2 s, its frame repeated
  every 100 ms meanwhile (as the module does), with a corrupted frame now and then;
- an XY-MD02 Modbus probe (``firmware_sim.serial.sim.XyMd02Sim``) that the agent polls every
  2 s (``sampling_period``): temperature and humidity, so one reading per second on average,
  plus the tag arrivals and departures.

The agent signs, stores and seals as usual (blocks of 64 readings or 10 minutes) and publishes
on the broker. Once its first reading is durable and a warm-up (20 s; ``--quick`` 5 s) has
passed, the benchmark samples the agent's process once per second for the window (60 s;
``--quick`` 15 s): CPU time (utime + stime of ``/proc/PID/stat``, every thread) and RSS
(``VmRSS`` of ``/proc/PID/status``). It stops the agent with SIGINT (a clean stop) and prints:

- ``rss_mb_max`` / ``rss_mb_mean``: RSS over the window's samples; ``rss_mb_peak``: ``VmHWM``
  (the peak since the process started, start-up included);
- ``cpu_pct_mean``: CPU over the window per wall second, in percent of one core;
  ``cpu_pct_p95`` / ``cpu_pct_max``: of the per-second figures (the kernel counts CPU time in
  clock ticks, 1/100 s here: a per-second figure is a multiple of 1%, the mean is finer);
- ``readings_per_s``: readings made durable in the device's store during the window;
- ``window_s``, ``warmup_s``, ``exit_code`` (0: the clean stop worked), ``goals``
  (``rss_mb_max`` at most 60, ``cpu_pct_mean`` at most 2) and ``meets_goals``, ``meta``.

The device has no peers here: gossip traffic is its presence and its own announcements only.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Sequence
from pathlib import Path

from agent.fleet.datadir import DataDir
from agent.transport.brokers import MosquittoBroker
from bench.common import BenchArgs, emit, environment, parse_args
from firmware_sim.serial.rfid import encode_rdm6300
from firmware_sim.serial.sim import XyMd02Sim

_PROG = "python -m bench.agent"
GOALS = {"rss_mb_max": 60.0, "cpu_pct_mean": 2.0}
CARD = bytes.fromhex("62E3086CED")
BAD_FRAME = b"\x02" + b"68003B51C6CB" + b"\x03"
FIRST_READING_GUARD_S = 120.0  # interpreter start, keys and store on a loaded machine
STOP_GUARD_S = 60.0

FLEET = """\
fleet: bench-agent
seed: 1
sites: [{{id: home, kind: household}}]
devices:
  - name: pi
    kind: refrigerator
    site: home
    sampling_period: 2s
    serial:
      - {{driver: rdm6300, port: "{rfid}", sensors: [rfid.in, rfid.out]}}
      - {{driver: xymd02, port: "{modbus}", options: {{prefix: fridge}}}}
"""


class Pty:
    """A pseudo-terminal pair in raw mode: the bench plays the sensor on ``master``."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


class Sensors:
    """The two sensors' threads: an RFID reader with a card coming and going, a Modbus probe
    answering polls. ``close`` stops both."""

    def __init__(self, rfid: Pty, modbus: Pty) -> None:
        self.rfid, self.modbus = rfid, modbus
        self.sim = XyMd02Sim(temp_mc=4_300, humidity_pm=550)
        self.polls = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._stop_r, self._stop_w = os.pipe()
        self._threads = [
            threading.Thread(target=self._guard, args=(self._card,), daemon=True),
            threading.Thread(target=self._guard, args=(self._probe,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _guard(self, body: object) -> None:
        try:
            body()  # type: ignore[operator]
        except BaseException as exc:  # reported by close()
            self.errors.append(exc)

    def _card(self) -> None:
        frame = encode_rdm6300(CARD)
        tick = 0
        while not self._stop.wait(0.1):
            if tick % 100 < 20:  # in the field 2 s of every 10 s
                os.write(self.rfid.master, BAD_FRAME + frame if tick % 50 == 7 else frame)
            tick += 1

    def _probe(self) -> None:
        while True:
            ready, _, _ = select.select([self.modbus.master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            answer = self.sim.respond(os.read(self.modbus.master, 256))
            if answer:
                self.polls += 1
                self.sim.temp_mc = 4_000 + (self.polls * 100) % 1_000
                os.write(self.modbus.master, answer)

    def close(self) -> None:
        self._stop.set()
        os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join(10)
        os.close(self._stop_r)
        os.close(self._stop_w)
        if self.errors:
            raise self.errors[0]


def _agent_command(devices: Path, data: Path, url: str) -> list[str]:
    run = ["run", "--devices", str(devices), "--data", str(data), "--broker", url, "--no-view"]
    code = "import sys; from agent.cli.main import main; sys.exit(main())"
    return [sys.executable, "-c", code, *run]


def _readings(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0  # created, not yet initialised by the agent


def _cpu_s(pid: int) -> float:
    """utime + stime of the process, every thread, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


def _wait_first_reading(proc: subprocess.Popen[bytes], store: Path, log: Path) -> None:
    deadline = time.monotonic() + FIRST_READING_GUARD_S
    while _readings(store) == 0:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no reading after {FIRST_READING_GUARD_S} s: {log.read_text()}")
        time.sleep(0.2)


def _measure(pid: int, store: Path, window_s: int) -> dict[str, object]:
    """Sample the agent once per second over the window."""
    per_s: list[float] = []
    rss_kb: list[int] = []
    readings0, cpu0, wall0 = _readings(store), _cpu_s(pid), time.monotonic()
    cpu_prev, wall_prev = cpu0, wall0
    for k in range(1, window_s + 1):
        time.sleep(max(0.0, wall0 + k - time.monotonic()))
        cpu, wall = _cpu_s(pid), time.monotonic()
        per_s.append((cpu - cpu_prev) / (wall - wall_prev) * 100)
        rss_kb.append(_status_kb(pid, "VmRSS"))
        cpu_prev, wall_prev = cpu, wall
    wall = time.monotonic() - wall0
    ordered = sorted(per_s)
    return {
        "rss_mb_max": round(max(rss_kb) / 1024, 1),
        "rss_mb_mean": round(statistics.mean(rss_kb) / 1024, 1),
        "rss_mb_peak": round(_status_kb(pid, "VmHWM") / 1024, 1),
        "cpu_pct_mean": round((cpu_prev - cpu0) / wall * 100, 2),
        "cpu_pct_p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "cpu_pct_max": round(ordered[-1], 2),
        "readings_per_s": round((_readings(store) - readings0) / wall, 2),
    }


def run(args: BenchArgs) -> dict[str, object]:
    warmup_s, window_s = (5, 15) if args.quick else (20, 60)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(workdir=root / "mosquitto")
        broker.start_sync()
        rfid, modbus = Pty(), Pty()
        sensors = Sensors(rfid, modbus)
        devices = root / "devices.yaml"
        devices.write_text(FLEET.format(rfid=rfid.path, modbus=modbus.path))
        data = root / "data"
        log = root / "agent.log"
        store = DataDir(data).store_path("pi")
        proc = None
        try:
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    _agent_command(devices, data, broker.endpoint.url),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            _wait_first_reading(proc, store, log)
            time.sleep(warmup_s)
            figures = _measure(proc.pid, store, window_s)
            proc.send_signal(signal.SIGINT)
            exit_code = proc.wait(STOP_GUARD_S)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            sensors.close()
            rfid.close()
            modbus.close()
            broker.stop_sync()
    meets = (
        figures["rss_mb_max"] <= GOALS["rss_mb_max"]  # type: ignore[operator]
        and figures["cpu_pct_mean"] <= GOALS["cpu_pct_mean"]  # type: ignore[operator]
    )
    return {
        **figures,
        "window_s": window_s,
        "warmup_s": warmup_s,
        "exit_code": exit_code,
        "goals": GOALS,
        "meets_goals": bool(meets) and exit_code == 0,
        "meta": environment(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(_PROG, __doc__.split("\n")[0] if __doc__ else _PROG, argv)
    emit(run(args), args, "one device agent with real sensors (MB, % of a core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
