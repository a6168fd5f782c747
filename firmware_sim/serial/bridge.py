"""The microcontroller bridge line: temperatures relayed by an Arduino-class board over USB serial.

One record per line, ASCII, NMEA-like (docs/SERIAL.md is the byte-exact reference)::

    $T,<sensor-id>,<milli-C>,<seq>*<XX>\\r\\n

- ``T``: record type (temperature); other letters are reserved and rejected today.
- ``sensor-id``: 1..16 characters ``[a-z0-9_-]``, first one a letter or digit.
- ``milli-C``: canonical decimal integer (no ``+``, no leading zeros, ``0`` not ``-0``),
  -273150..2000000.
- ``seq``: canonical decimal 0..65535, +1 per line per sensor, wrapping to 0 after 65535.
- ``XX``: two upper-case hex digits, the XOR of every byte strictly between ``$`` and ``*``.
- The line ends with CR LF (``Serial.println``); a bare LF is accepted.

Buffer bound: a valid line is at most 39 bytes; a candidate still without LF after ``MAX_LINE``
bytes is malformed and the parser resynchronises on the next ``$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from firmware_sim.serial.stats import FrameParser

MAX_LINE = 40
MIN_MC = -273_150
MAX_MC = 2_000_000
MAX_SEQ = 0xFFFF
SENSOR_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,15}")
_LINE_RE = re.compile(
    rb"\$(T,([a-z0-9][a-z0-9_-]{0,15}),(0|-?[1-9][0-9]{0,6}),(0|[1-9][0-9]{0,4}))"
    rb"\*([0-9A-F]{2})\r?\n"
)


def xor_checksum(data: bytes) -> int:
    x = 0
    for b in data:
        x ^= b
    return x


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
        return b"$" + payload + f"*{xor_checksum(payload):02X}\r\n".encode("ascii")


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
    if xor_checksum(m.group(1)) != int(m.group(5), 16):
        return "checksum"
    temp_mc, seq = int(m.group(3)), int(m.group(4))
    if not MIN_MC <= temp_mc <= MAX_MC or seq > MAX_SEQ:
        return "malformed"
    return BridgeFrame(m.group(2).decode("ascii"), temp_mc, seq)
