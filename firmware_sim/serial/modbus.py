"""Modbus RTU, the subset a temperature/humidity sensor needs: CRC, requests, responses.

Frame: address (1) | function (1) | data | CRC-16/MODBUS, low byte first. Reflected polynomial
0xA001, initial 0xFFFF, no final XOR (check: ``01 03 00 00 00 0A`` -> ``C5 CD``).

RTU separates frames by 3.5 character times of silence, which a userspace reader cannot see
reliably. The master knows what it asked for, so ``ModbusResponseParser`` delimits a response by
its expected length instead: after ``expect(request)`` it hunts for ``address, function`` (or
``address, function | 0x80`` for an exception), waits for exactly the expected number of bytes,
checks the CRC and drops one byte to resynchronise on any mismatch. Bytes that arrive while no
request is pending are garbage (a late answer to a request that already timed out).
``ModbusRequestParser`` is the slave side, used by the simulated sensor.

Buffer bound: 256 bytes (the largest RTU frame) retained between feeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_sim.serial.stats import FrameParser

READ_HOLDING = 0x03
READ_INPUT = 0x04
WRITE_SINGLE = 0x06
MAX_ADU = 256
MAX_READ_COUNT = 125

EXCEPTION_NAMES: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` as an integer (send it low byte first)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC, low byte first."""
    return body + crc16_modbus(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """True if the last two bytes of ``frame`` are the CRC of the rest."""
    return len(frame) >= 4 and crc16_modbus(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def _check_address(address: int) -> None:
    if not 1 <= address <= 247:
        raise ValueError(f"Modbus address must be 1..247, found {address}")


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be 0..65535, found {value}")


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read ``count`` holding (0x03) or input (0x04) registers from ``start``."""

    address: int
    function: int
    start: int
    count: int

    def __post_init__(self) -> None:
        _check_address(self.address)
        if self.function not in (READ_HOLDING, READ_INPUT):
            raise ValueError(f"read function must be 0x03 or 0x04, found {self.function:#04x}")
        _check_u16("start register", self.start)
        if not 1 <= self.count <= MAX_READ_COUNT:
            raise ValueError(f"register count must be 1..{MAX_READ_COUNT}, found {self.count}")

    def encode(self) -> bytes:
        body = bytes([self.address, self.function])
        body += self.start.to_bytes(2, "big") + self.count.to_bytes(2, "big")
        return with_crc(body)

    @property
    def response_len(self) -> int:
        return 5 + 2 * self.count


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Write one holding register (function 0x06); the device echoes the request."""

    address: int
    register: int
    value: int
    function: int = WRITE_SINGLE

    def __post_init__(self) -> None:
        _check_address(self.address)
        _check_u16("register", self.register)
        _check_u16("value", self.value)
        if self.function != WRITE_SINGLE:
            raise ValueError(f"write function must be 0x06, found {self.function:#04x}")

    def encode(self) -> bytes:
        body = bytes([self.address, WRITE_SINGLE])
        body += self.register.to_bytes(2, "big") + self.value.to_bytes(2, "big")
        return with_crc(body)

    @property
    def response_len(self) -> int:
        return 8


Request = ReadRequest | WriteRequest


@dataclass(frozen=True, slots=True)
class RegistersResponse:
    address: int
    function: int
    registers: tuple[int, ...]  # unsigned 16-bit values, in register order

    def encode(self) -> bytes:
        data = b"".join(r.to_bytes(2, "big") for r in self.registers)
        return with_crc(bytes([self.address, self.function, len(data)]) + data)


@dataclass(frozen=True, slots=True)
class WriteResponse:
    address: int
    register: int
    value: int

    def encode(self) -> bytes:
        return WriteRequest(self.address, self.register, self.value).encode()


@dataclass(frozen=True, slots=True)
class ExceptionResponse:
    address: int
    function: int  # the function that failed, without the 0x80 bit
    code: int

    @property
    def name(self) -> str:
        return EXCEPTION_NAMES.get(self.code, "unknown exception")

    def encode(self) -> bytes:
        return with_crc(bytes([self.address, self.function | 0x80, self.code]))

    def describe(self) -> str:
        return f"device {self.address} answered exception {self.code} ({self.name})"


Response = RegistersResponse | WriteResponse | ExceptionResponse


class ModbusResponseParser(FrameParser[Response]):
    """Master side: delimits the one response to the pending request by its expected length."""

    max_frame = MAX_ADU

    def __init__(self) -> None:
        super().__init__()
        self._pending: Request | None = None

    @property
    def pending(self) -> Request | None:
        return self._pending

    def expect(self, request: Request) -> None:
        """A request was (about to be) sent: discard leftovers and wait for its response."""
        self.reset()
        self._pending = request

    def _drain(self) -> list[Response]:
        buf = self._buf
        while buf:
            req = self._pending
            if req is None:
                self._discard(len(buf))
                break
            at = buf.find(req.address)
            if at < 0:
                self._discard(len(buf))
                break
            if at:
                self._discard(at)
            if len(buf) < 3:
                break
            verdict = self._judge(req)
            if verdict is None:
                break
            if isinstance(verdict, str):
                if verdict == "checksum":
                    self.stats.bad_checksum += 1
                else:
                    self.stats.malformed += 1
                del buf[:1]
                continue
            response, size = verdict
            self._emit(size)
            self._pending = None
            return [response]
        return []

    def _judge(self, req: Request) -> tuple[Response, int] | str | None:
        buf = self._buf
        function = buf[1]
        if function == req.function | 0x80:
            if buf[2] not in EXCEPTION_NAMES:
                return "malformed"
            size = 5
        elif function != req.function:
            return "malformed"
        elif isinstance(req, ReadRequest):
            if buf[2] != 2 * req.count:
                return "malformed"
            size = req.response_len
        else:
            size = 8
        if len(buf) < size:
            return None
        frame = bytes(buf[:size])
        if not crc_ok(frame):
            return "checksum"
        response = _decode_response(req, frame)
        if isinstance(response, WriteResponse) and frame != req.encode():
            return "malformed"  # a write is answered by its echo; anything else is not ours
        return response, size


def _decode_response(req: Request, frame: bytes) -> Response:
    if frame[1] & 0x80:
        return ExceptionResponse(frame[0], frame[1] & 0x7F, frame[2])
    if isinstance(req, ReadRequest):
        data = frame[3:-2]
        regs = tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
        return RegistersResponse(frame[0], frame[1], regs)
    return WriteResponse(
        frame[0], int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
    )


class ModbusRequestParser(FrameParser[Request]):
    """Slave side: 8-byte read (0x03/0x04) and write-single (0x06) requests, any address."""

    max_frame = 8

    def _drain(self) -> list[Request]:
        out: list[Request] = []
        buf = self._buf
        while buf:
            if not 1 <= buf[0] <= 247 or (len(buf) > 1 and buf[1] not in _REQUEST_FUNCTIONS):
                self._discard(1)
                continue
            if len(buf) < 8:
                break
            frame = bytes(buf[:8])
            if not crc_ok(frame):
                self.stats.bad_checksum += 1
                del buf[:1]
                continue
            first = int.from_bytes(frame[2:4], "big")
            second = int.from_bytes(frame[4:6], "big")
            request: Request
            if frame[1] == WRITE_SINGLE:
                request = WriteRequest(frame[0], first, second)
            elif 1 <= second <= MAX_READ_COUNT:
                request = ReadRequest(frame[0], frame[1], first, second)
            else:
                self.stats.malformed += 1
                del buf[:1]
                continue
            self._emit(8)
            out.append(request)
        return out


_REQUEST_FUNCTIONS = frozenset((READ_HOLDING, READ_INPUT, WRITE_SINGLE))
