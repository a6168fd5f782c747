"""Simulated serial sensors that produce the same bytes as the real ones.

``XyMd02Sim`` answers Modbus RTU requests the way an XY-MD02 (or a profile variant) does:
function 0x04 for the measurement registers, 0x03 for the settings, 0x06 to change them, and
exception 0x02 (illegal data address) for any register outside its map. It is pure: bytes in,
bytes out. RFID cards and bridge lines need no state: use ``rfid.encode_rdm6300`` /
``rfid.encode_id12la`` and ``bridge.encode_bridge_line``; DS18B20 files: ``w1.render_w1_slave``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_sim.serial.modbus import (
    READ_HOLDING,
    ExceptionResponse,
    ModbusRequestParser,
    ReadRequest,
    RegistersResponse,
    Request,
    WriteRequest,
    WriteResponse,
)
from firmware_sim.serial.profiles import XYMD02, THProfile

ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03


@dataclass
class XyMd02Sim:
    """A temperature/humidity sensor on an RS-485 bus."""

    profile: THProfile = XYMD02
    address: int = 1
    temp_mc: int = 30_500
    humidity_pm: int | None = 546
    baud_code: int = 0
    requests: int = 0  # requests addressed to this device
    _parser: ModbusRequestParser = field(default_factory=ModbusRequestParser)

    def respond(self, data: bytes) -> bytes:
        """Feed bytes from the bus; return the bytes this device puts back on it."""
        return b"".join(self.handle(req) for req in self._parser.feed(data))

    def handle(self, request: Request) -> bytes:
        if request.address != self.address:
            return b""  # another device on the bus
        self.requests += 1
        if isinstance(request, WriteRequest):
            return self._write(request)
        registers = self._registers(request.function)
        values = [registers.get(r) for r in range(request.start, request.start + request.count)]
        present = [v for v in values if v is not None]
        if len(present) != len(values):
            return ExceptionResponse(self.address, request.function, ILLEGAL_DATA_ADDRESS).encode()
        return RegistersResponse(self.address, request.function, tuple(present)).encode()

    def _registers(self, function: int) -> dict[int, int]:
        p = self.profile
        if function == READ_HOLDING:
            return {p.address_register: self.address, p.baud_register: self.baud_code}
        values = p.encode(self.temp_mc, self.humidity_pm)
        return {p.temperature_register + i: v for i, v in enumerate(values)}

    def _write(self, req: WriteRequest) -> bytes:
        p = self.profile
        if req.register == p.address_register:
            if not 1 <= req.value <= 247:
                return ExceptionResponse(self.address, req.function, ILLEGAL_DATA_VALUE).encode()
            echo = WriteResponse(self.address, req.register, req.value).encode()
            self.address = req.value  # the echo still comes from the old address
            return echo
        if req.register == p.baud_register:
            if p.baud_for_code(req.value) is None:
                return ExceptionResponse(self.address, req.function, ILLEGAL_DATA_VALUE).encode()
            self.baud_code = req.value
            return WriteResponse(self.address, req.register, req.value).encode()
        return ExceptionResponse(self.address, req.function, ILLEGAL_DATA_ADDRESS).encode()

    def measurement_request(self) -> ReadRequest:
        return self.profile.measurement_request(self.address)
