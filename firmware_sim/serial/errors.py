"""Errors of firmware_sim.serial, each with a stable ``code``.

``SensorConfigError`` means the caller misused the API (unknown driver, bad option). ``PortError``
and its subclasses mean the operating system refused or lost the device. Bytes from the sensor
never raise: parsers count bad frames in their stats and drop them.
"""

from __future__ import annotations


class SerialSensorError(Exception):
    """Base of every error raised by firmware_sim.serial."""

    code = "serial"


class SensorConfigError(SerialSensorError, ValueError):
    """The caller passed an unknown driver, profile or an option out of range."""

    code = "config"


class PortError(SerialSensorError, OSError):
    """The device could not be opened, read or written."""

    code = "port-io"

    def __init__(self, port: str, message: str) -> None:
        super().__init__(f"{port}: {message}")
        self.port = port


class PortNotFoundError(PortError):
    """The device path does not exist (unplugged adapter, wrong name)."""

    code = "port-not-found"


class PortPermissionError(PortError):
    """The device exists but this user may not open it (not in the dialout group)."""

    code = "port-permission"


class PortBusyError(PortError):
    """Another process holds the device."""

    code = "port-busy"
