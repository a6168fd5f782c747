"""Register maps of Modbus RTU temperature/humidity sensors, as named profiles.

The XY-MD02 ("SHT20 RS485") keeps temperature (signed, 0.1 degC) and humidity (0.1 %RH) in input
registers 0x0001/0x0002 (read with function 0x04) and its settings in holding registers: address
at 0x0101 (257), baud code at 0x0102 (258). Look-alike boards move the settings to 0x0100/0x0101
(256/257) or default to even parity; each is a profile, so a new board is a new entry here, not a
new driver. Units on the way out: milli-degrees C and per-mille relative humidity (integers).
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_sim.serial.errors import SensorConfigError
from firmware_sim.serial.modbus import READ_HOLDING, READ_INPUT, ReadRequest

XYMD02_BAUD_CODES: tuple[tuple[int, int], ...] = ((0, 9600), (1, 14400), (2, 19200))


@dataclass(frozen=True, slots=True)
class THProfile:
    """Where a temperature/humidity sensor keeps its values and settings."""

    name: str
    description: str
    input_function: int = READ_INPUT
    temperature_register: int = 0x0001
    humidity_register: int | None = 0x0002  # must follow temperature_register, or None
    mc_per_count: int = 100  # 0.1 degC per count -> 100 milli-degrees C
    pm_per_count: int = 1  # 0.1 %RH per count -> 1 per-mille
    address_register: int = 0x0101  # holding; the baud code register follows it
    baud_register: int = 0x0102
    baud_codes: tuple[tuple[int, int], ...] = XYMD02_BAUD_CODES
    default_address: int = 1
    default_baud: int = 9600
    parity: str = "N"  # "N", "E" or "O"; 8 data bits, 1 stop bit

    def __post_init__(self) -> None:
        if self.humidity_register not in (None, self.temperature_register + 1):
            raise ValueError(
                f"profile {self.name}: humidity register must follow temperature register "
                f"{self.temperature_register:#06x}, found {self.humidity_register:#06x}"
            )
        if self.baud_register != self.address_register + 1:
            raise ValueError(f"profile {self.name}: baud register must follow address register")
        if self.parity not in ("N", "E", "O"):
            raise ValueError(f"profile {self.name}: parity must be N, E or O, found {self.parity}")

    def measurement_request(self, address: int) -> ReadRequest:
        """One request reading temperature (and humidity, when the profile has it)."""
        count = 1 if self.humidity_register is None else 2
        return ReadRequest(address, self.input_function, self.temperature_register, count)

    def settings_request(self, address: int) -> ReadRequest:
        """Read the address and baud-code holding registers."""
        return ReadRequest(address, READ_HOLDING, self.address_register, 2)

    def decode(self, registers: tuple[int, ...]) -> tuple[int, int | None]:
        """(temperature milli-degC, humidity per-mille or None) from the raw registers."""
        raw_t = registers[0] - 0x10000 if registers[0] & 0x8000 else registers[0]
        humidity = registers[1] * self.pm_per_count if len(registers) > 1 else None
        return raw_t * self.mc_per_count, humidity

    def encode(self, temp_mc: int, humidity_pm: int | None) -> tuple[int, ...]:
        """Raw registers a device shows for these values (the simulator's side)."""
        raw_t = _round_div(temp_mc, self.mc_per_count) & 0xFFFF
        if self.humidity_register is None or humidity_pm is None:
            return (raw_t,)
        return raw_t, _round_div(humidity_pm, self.pm_per_count)

    def baud_for_code(self, code: int) -> int | None:
        return dict(self.baud_codes).get(code)


def _round_div(value: int, unit: int) -> int:
    """``value / unit`` rounded half away from zero, in integers."""
    q, r = divmod(abs(value), unit)
    q += 2 * r >= unit
    return q if value >= 0 else -q


XYMD02 = THProfile("xymd02", "XY-MD02 / SHT20 RS485: settings at 0x0101 (257) and 0x0102 (258)")
XYMD02_256 = THProfile(
    "xymd02-256",
    "XY-MD02 look-alike with settings at 0x0100 (256) and 0x0101 (257)",
    address_register=0x0100,
    baud_register=0x0101,
)
XYMD02_EVEN = THProfile("xymd02-even", "XY-MD02 register map, 9600 8E1 by default", parity="E")

PROFILES: dict[str, THProfile] = {p.name: p for p in (XYMD02, XYMD02_256, XYMD02_EVEN)}


def get_profile(name: str) -> THProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise SensorConfigError(
            f"unknown Modbus profile {name!r}; expected one of {known}"
        ) from None
