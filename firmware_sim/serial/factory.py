"""``open_sensor(driver, port, **options)``: the one way the agent and the CLI open a sensor.

Drivers and their options (anything else is a ``SensorConfigError``):

=========  ===========================================================  ============
driver     options                                                      default baud
=========  ===========================================================  ============
rdm6300    baud, tag_timeout_ms (500), confirm (2), clock, prefix       9600
id12la     baud, tag_timeout_ms (500), confirm (1), clock, prefix       9600
xymd02     baud, address (1), profile ("xymd02"), parity, clock, prefix  profile's
ds18b20    clock, prefix (``port`` is the w1_slave file or its folder)  -
bridge     baud, clock, prefix                                          115200
=========  ===========================================================  ============
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from firmware_sim.serial.bridge_driver import BridgeSensor
from firmware_sim.serial.driver import Clock, SerialSensor
from firmware_sim.serial.ds18b20_driver import Ds18b20Sensor
from firmware_sim.serial.errors import SensorConfigError
from firmware_sim.serial.link import ByteLink
from firmware_sim.serial.profiles import get_profile
from firmware_sim.serial.rfid_driver import RfidSensor
from firmware_sim.serial.tracker import DEFAULT_TIMEOUT_MS
from firmware_sim.serial.xymd02_driver import XyMd02Sensor

DRIVERS: tuple[str, ...] = ("rdm6300", "id12la", "xymd02", "ds18b20", "bridge")
BRIDGE_BAUD = 115_200
RFID_BAUD = 9600

_COMMON = frozenset({"clock", "prefix"})
_ALLOWED: Mapping[str, frozenset[str]] = {
    "rdm6300": _COMMON | {"baud", "tag_timeout_ms", "confirm"},
    "id12la": _COMMON | {"baud", "tag_timeout_ms", "confirm"},
    "xymd02": _COMMON | {"baud", "address", "profile", "parity"},
    "ds18b20": _COMMON,
    "bridge": _COMMON | {"baud"},
}
_RFID_CONFIRM = {"rdm6300": 2, "id12la": 1}
T = TypeVar("T")


def open_port(port: str, *, baudrate: int, parity: str = "N") -> ByteLink:
    """Open a real serial device (imports pyserial only when a serial driver is used)."""
    from firmware_sim.serial.port import SerialPort

    return SerialPort(port, baudrate=baudrate, parity=parity)


def open_sensor(driver: str, port: str, **options: object) -> SerialSensor:
    """Open ``port`` with ``driver``; see the module docstring for the options."""
    allowed = _ALLOWED.get(driver)
    if allowed is None:
        raise SensorConfigError(f"unknown driver {driver!r}; expected one of {', '.join(DRIVERS)}")
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SensorConfigError(
            f"driver {driver} does not take {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(allowed))}"
        )
    clock = _opt_clock(options)
    prefix = _opt(options, "prefix", str, "")
    if driver == "ds18b20":
        return Ds18b20Sensor(port, clock=clock, prefix=prefix)
    if driver == "bridge":
        link = open_port(port, baudrate=_opt(options, "baud", int, BRIDGE_BAUD))
        return _guard(link, lambda: BridgeSensor(link, clock=clock, prefix=prefix))
    if driver == "xymd02":
        profile = get_profile(_opt(options, "profile", str, "xymd02"))
        address = _opt(options, "address", int, profile.default_address)
        baud = _opt(options, "baud", int, profile.default_baud)
        parity = _opt(options, "parity", str, profile.parity)
        if not 1 <= address <= 247:
            raise SensorConfigError(f"Modbus address must be 1..247, found {address}")
        link = open_port(port, baudrate=baud, parity=parity)
        return _guard(
            link,
            lambda: XyMd02Sensor(
                link, profile=profile, address=address, clock=clock, prefix=prefix
            ),
        )
    timeout = _opt(options, "tag_timeout_ms", int, DEFAULT_TIMEOUT_MS)
    confirm = _opt(options, "confirm", int, _RFID_CONFIRM[driver])
    if timeout <= 0 or confirm < 1:
        raise SensorConfigError(
            f"tag_timeout_ms must be > 0 and confirm >= 1, found {timeout} and {confirm}"
        )
    link = open_port(port, baudrate=_opt(options, "baud", int, RFID_BAUD))
    return _guard(
        link,
        lambda: RfidSensor(
            link, driver=driver, clock=clock, prefix=prefix, tag_timeout_ms=timeout, confirm=confirm
        ),
    )


def _guard(link: ByteLink, make: Callable[[], SerialSensor]) -> SerialSensor:
    """Close the freshly opened link if the driver refuses its options."""
    try:
        return make()
    except BaseException:
        link.close()
        raise


def _opt(options: Mapping[str, object], name: str, kind: type[T], default: T) -> T:
    value = options.get(name, default)
    if type(value) is not kind:
        raise SensorConfigError(f"option {name} must be {kind.__name__}, found {value!r}")
    assert isinstance(value, kind)
    return value


def _opt_clock(options: Mapping[str, object]) -> Clock | None:
    clock = options.get("clock")
    if clock is not None and not callable(clock):
        raise SensorConfigError(f"option clock must be a callable returning ms, found {clock!r}")
    return clock
