"""The one pyserial adapter: opens a serial device and maps pyserial's errors to ours.

No other module imports ``serial``. ``SerialPort`` implements ``link.ByteLink``. Errors reach the
caller as ``PortNotFoundError``, ``PortPermissionError``, ``PortBusyError`` or ``PortError`` with
a one-line message a maker can act on; bad settings as ``SensorConfigError``.
"""

from __future__ import annotations

import errno

import serial

from firmware_sim.serial.errors import (
    PortBusyError,
    PortError,
    PortNotFoundError,
    PortPermissionError,
    SensorConfigError,
)

try:  # pyserial on POSIX lets termios.error (not an OSError) out of flushes of a lost device
    from termios import error as _TermiosError
except ImportError:  # Windows

    class _TermiosError(Exception):  # type: ignore[no-redef]
        pass


# What pyserial raises when the device fails under it (unplugged adapter, hung-up pty).
_IO_ERRORS = (serial.SerialException, OSError, _TermiosError)
_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


def _map_open_error(port: str, exc: serial.SerialException) -> PortError:
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return PortNotFoundError(
            port, "no such device (is the adapter plugged in and the path right?)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return PortPermissionError(
            port, "permission denied (add your user to the 'dialout' group, then log in again)"
        )
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return PortBusyError(port, "device is in use by another process")
    return PortError(port, f"could not open serial port: {exc}")


class SerialPort:
    """A serial device opened 8 data bits, 1 stop bit, the given baud rate and parity."""

    def __init__(self, port: str, *, baudrate: int = 9600, parity: str = "N") -> None:
        if parity not in _PARITIES:
            raise SensorConfigError(f"parity must be one of N, E, O, found {parity!r}")
        self.name = port
        try:
            self._ser = serial.Serial(
                port=port,
                baudrate=baudrate,
                bytesize=serial.EIGHTBITS,
                parity=_PARITIES[parity],
                stopbits=serial.STOPBITS_ONE,
                timeout=0,
                exclusive=True,
            )
        except ValueError as exc:
            raise SensorConfigError(f"{port}: unusable serial settings: {exc}") from exc
        except serial.SerialException as exc:
            raise _map_open_error(port, exc) from exc

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        try:
            timeout = max(0.0, timeout_s)
            if self._ser.timeout != timeout:
                self._ser.timeout = timeout  # pyserial re-applies the port settings on change
            first: bytes = self._ser.read(1)
            if not first:
                return b""
            more = min(self._ser.in_waiting, max_bytes - 1)
            rest: bytes = self._ser.read(more) if more > 0 else b""
            return first + rest
        except _IO_ERRORS as exc:
            raise PortError(self.name, f"read failed (device unplugged?): {exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
            self._ser.flush()
        except _IO_ERRORS as exc:
            raise PortError(self.name, f"write failed (device unplugged?): {exc}") from exc

    def discard_input(self) -> None:
        try:
            self._ser.reset_input_buffer()
        except _IO_ERRORS as exc:
            raise PortError(self.name, f"could not flush input: {exc}") from exc

    def close(self) -> None:
        try:
            self._ser.close()
        except _IO_ERRORS as exc:
            raise PortError(self.name, f"close failed: {exc}") from exc
