"""DS18B20 through the kernel's ``w1_slave`` file: one conversion per ``read``.

The port is the ``w1_slave`` file or its device directory (``/sys/bus/w1/devices/28-...``).
Reading the file makes the kernel run a conversion (~750 ms at 12 bits), so ``read`` is bounded
by the kernel, not by ``timeout_s``. A reading failing any check of ``w1.W1Parser`` yields no
sample. +85 degC (the power-up register value) is emitted with ``text="suspect:power-on"`` when it
is the first reading since open, or follows a suspect one, or jumps there from more than 1 degC
away: a conversion that never ran, not a temperature.
"""

from __future__ import annotations

from pathlib import Path

from firmware_sim.samples import Sample
from firmware_sim.serial.driver import Clock, SerialSensor, timeout_ms
from firmware_sim.serial.errors import PortError, PortNotFoundError, PortPermissionError
from firmware_sim.serial.w1 import MAX_FILE, W1Parser, W1Reading

SUSPECT_POWER_ON = "suspect:power-on"
_NEAR_85_MC = 1000


class Ds18b20Sensor(SerialSensor):
    driver = "ds18b20"

    def __init__(self, path: str, *, clock: Clock | None = None, prefix: str = "") -> None:
        super().__init__(clock=clock, prefix=prefix)
        p = Path(path)
        self.path = p / "w1_slave" if p.is_dir() else p
        if not self.path.exists():
            raise PortNotFoundError(
                str(self.path),
                "no such w1_slave file (is dtoverlay=w1-gpio set and the sensor wired?)",
            )
        self._parser = W1Parser()
        self.stats.parser = self._parser.stats
        self._previous: tuple[int, bool] | None = None  # (milli-degC, was suspect)

    def read(self, timeout_s: float) -> list[Sample]:
        timeout_ms(timeout_s)  # validates; the kernel bounds the read itself
        text = self._read_text()
        now = self._clock()
        reading = self._parser.parse(text)
        if reading is None:
            self.stats.last_error = f"{self.path}: rejected w1_slave content {text[:60]!r}"
            return []
        suspect = self._is_suspect(reading)
        self._previous = (reading.temp_mc, suspect)
        if suspect:
            self.stats.suspect += 1
        return [
            Sample(
                now,
                self.sensor_name("temp_mc"),
                reading.temp_mc,
                text=SUSPECT_POWER_ON if suspect else None,
            )
        ]

    def _is_suspect(self, reading: W1Reading) -> bool:
        if not reading.is_power_on_value:
            return False
        if self._previous is None:
            return True
        previous_mc, previous_suspect = self._previous
        return previous_suspect or abs(previous_mc - reading.temp_mc) > _NEAR_85_MC

    def _read_text(self) -> str:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_FILE + 1)
        except FileNotFoundError as exc:
            raise PortNotFoundError(
                str(self.path), "w1_slave disappeared (sensor unplugged?)"
            ) from exc
        except PermissionError as exc:
            raise PortPermissionError(str(self.path), "permission denied reading w1_slave") from exc
        except OSError as exc:
            raise PortError(str(self.path), f"read failed: {exc}") from exc
        return data.decode("ascii", errors="replace")

    def close(self) -> None:
        """Nothing is held open between reads."""
