"""The microcontroller bridge line: temperatures relayed by an Arduino-class board over USB serial.

One record per line, ASCII, NMEA-like (docs/SERIAL.md is the byte-exact reference)::

    $T,<sensor-id>,<milli-C>,<seq>*<CRC16-hex4>\\r\\n

- ``T``: record type (temperature); other letters are reserved and rejected today.
- ``sensor-id``: 1..16 characters ``[a-z0-9_-]``, first one a letter or digit.
- ``milli-C``: canonical decimal integer (no ``+``, no leading zeros, ``0`` not ``-0``),
  -273150..2000000.
- ``seq``: canonical decimal 0..65535, +1 per line per sensor, wrapping to 0 after 65535.
- ``CRC16-hex4``: four upper-case hex digits, the CRC-16/MODBUS (``modbus.crc16_modbus``:
  reflected polynomial 0xA001, initial 0xFFFF, no final XOR) of every byte strictly between
  ``$`` and ``*``, written as one 16-bit number, most significant digit first.
- The line ends with CR LF (``Serial.println``); a bare LF is accepted.

Buffer bound: a valid line is at most ``MAX_LINE`` = 40 bytes; a candidate still without LF after
40 bytes is malformed and the parser resynchronises on the next ``$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from firmware_sim.serial.modbus import crc16_modbus
from firmware_sim.serial.stats import FrameParser

MIN_MC = -273_150
MAX_MC = 2_000_000
MAX_SEQ = 0xFFFF
MAX_SENSOR_ID = 16
# "$T," id "," milli-C (at most 7 characters in range) "," seq (5) "*" CRC (4) CR LF
MAX_LINE = 3 + MAX_SENSOR_ID + 1 + 7 + 1 + 5 + 1 + 4 + 2
SENSOR_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,15}")
_LINE_RE = re.compile(
    rb"\$(T,([a-z0-9][a-z0-9_-]{0,15}),(0|-?[1-9][0-9]{0,6}),(0|[1-9][0-9]{0,4}))"
    rb"\*([0-9A-F]{4})\r?\n"
)


def line_crc(payload: bytes) -> str:
    """The 4 upper-case hex digits after ``*``; ``payload`` is what lies between ``$`` and ``*``."""
    return f"{crc16_modbus(payload):04X}"


@dataclass(frozen=True, slots=True)
class BridgeFrame:
    """One verified temperature record."""

    sensor_id: str
    temp_mc: int
    seq: int

    def __post_init__(self) -> None:
        if not SENSOR_ID_RE.fullmatch(self.sensor_id):
            raise ValueError(
                f"bridge sensor id must match {SENSOR_ID_RE.pattern}, found {self.sensor_id!r}"
            )
        if not MIN_MC <= self.temp_mc <= MAX_MC:
            raise ValueError(f"milli-C must be in {MIN_MC}..{MAX_MC}, found {self.temp_mc}")
        if not 0 <= self.seq <= MAX_SEQ:
            raise ValueError(f"seq must be 0..{MAX_SEQ}, found {self.seq}")

    def encode(self) -> bytes:
        """The exact bytes a bridge sketch prints for this record."""
        payload = f"T,{self.sensor_id},{self.temp_mc},{self.seq}".encode("ascii")
        return b"$" + payload + f"*{line_crc(payload)}\r\n".encode("ascii")


def encode_bridge_line(sensor_id: str, temp_mc: int, seq: int) -> bytes:
    return BridgeFrame(sensor_id, temp_mc, seq).encode()


class BridgeParser(FrameParser[BridgeFrame]):
    """Sans-I/O parser for bridge lines; resynchronises on the next ``$``."""

    max_frame = MAX_LINE

    def _drain(self) -> list[BridgeFrame]:
        out: list[BridgeFrame] = []
        buf = self._buf
        while buf:
            start = buf.find(b"$")
            if start < 0:
                self._discard(len(buf))
                break
            if start:
                self._discard(start)
            end = buf.find(b"\n", 0, MAX_LINE)
            restart = buf.find(b"$", 1, end if end >= 0 else MAX_LINE)
            if restart > 0:
                self.stats.malformed += 1  # a line cut short by the start of the next one
                del buf[:restart]
                continue
            if end < 0:
                if len(buf) < MAX_LINE:
                    break
                self.stats.malformed += 1
                del buf[:1]
                continue
            verdict = _judge(bytes(buf[: end + 1]))
            if isinstance(verdict, BridgeFrame):
                self._emit(end + 1)
                out.append(verdict)
                continue
            if verdict == "checksum":
                self.stats.bad_checksum += 1
            else:
                self.stats.malformed += 1
            del buf[:1]
        return out


def _judge(line: bytes) -> BridgeFrame | Literal["checksum", "malformed"]:
    m = _LINE_RE.fullmatch(line)
    if m is None:
        return "malformed"
    if line_crc(m.group(1)) != m.group(5).decode("ascii"):
        return "checksum"
    temp_mc, seq = int(m.group(3)), int(m.group(4))
    if not MIN_MC <= temp_mc <= MAX_MC or seq > MAX_SEQ:
        return "malformed"
    return BridgeFrame(m.group(2).decode("ascii"), temp_mc, seq)
