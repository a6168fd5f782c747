"""DS18B20 read through the Linux 1-Wire ``w1_slave`` file (``dtoverlay=w1-gpio`` on a Pi).

The kernel's file has two lines::

    73 01 4b 46 7f ff 0d 10 41 : crc=41 YES
    73 01 4b 46 7f ff 0d 10 41 t=23187

Line 1: the 9 scratchpad bytes, the CRC byte and the kernel's CRC verdict. Line 2: the same bytes
and ``t=`` in milli-degrees C. ``W1Parser.parse`` returns a reading only if every check passes:
the layout, both lines carry the same bytes, the kernel said ``YES``, our own Dallas/Maxim CRC-8
over bytes 0..7 equals byte 8, the configuration byte has its fixed bits (an all-zero scratchpad
from a disconnected sensor passes the CRC but not this), ``t=`` is what the bytes say, and the
value lies in -55..+125 degC. Rejections are counted in ``stats``: a ``NO`` or a CRC mismatch as
``bad_checksum``, anything else as ``malformed``.

Power-up: the scratchpad holds 0x0550 (+85 degC) until the first conversion. ``POWER_ON_RAW``
lets the driver flag such a value as suspect. Buffer bound: one file of at most ``MAX_FILE``
bytes is read; a longer file is malformed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from firmware_sim.serial.stats import ParserStats

MAX_FILE = 256
POWER_ON_RAW = 0x0550
MIN_MC = -55_000
MAX_MC = 125_000
_BYTES = r"((?:[0-9a-fA-F]{2} ){9})"
_LINE1 = re.compile(_BYTES + r": crc=([0-9a-fA-F]{2}) (YES|NO)")
_LINE2 = re.compile(_BYTES + r"t=(-?[0-9]{1,7})")


def dallas_crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (polynomial 0x31 reflected as 0x8C, initial 0)."""
    crc = 0
    for byte in data:
        b = byte
        for _ in range(8):
            mix = (crc ^ b) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            b >>= 1
    return crc


def raw_to_mc(raw: int) -> int:
    """Signed 1/16 degC counts to milli-degC, truncated toward zero as the kernel does."""
    signed = raw - 0x10000 if raw & 0x8000 else raw
    mc = abs(signed) * 1000 // 16
    return mc if signed >= 0 else -mc


def mc_to_raw(temp_mc: int) -> int:
    """Nearest 1/16 degC count for ``temp_mc`` as the unsigned 16-bit register value."""
    counts = (abs(temp_mc) * 16 + 500) // 1000
    return (counts if temp_mc >= 0 else -counts) & 0xFFFF


@dataclass(frozen=True, slots=True)
class W1Reading:
    """One verified DS18B20 reading."""

    scratchpad: bytes  # the 9 bytes, CRC last
    temp_mc: int

    @property
    def raw(self) -> int:
        return int.from_bytes(self.scratchpad[:2], "little")

    @property
    def is_power_on_value(self) -> bool:
        """The register still holds its power-up value (+85 degC), perhaps never converted."""
        return self.raw == POWER_ON_RAW


def render_w1_slave(
    raw: int, *, kernel_crc_ok: bool = True, count_remain: int | None = None
) -> str:
    """The text the kernel shows for a DS18B20 whose temperature register is ``raw``."""
    remain = 16 - (raw & 0xF) if count_remain is None else count_remain
    body = raw.to_bytes(2, "little") + bytes([0x4B, 0x46, 0x7F, 0xFF, remain, 0x10])
    pad = body + bytes([dallas_crc8(body)])
    hexes = "".join(f"{b:02x} " for b in pad)
    verdict = "YES" if kernel_crc_ok else "NO"
    return f"{hexes}: crc={pad[8]:02x} {verdict}\n{hexes}t={raw_to_mc(raw)}\n"


class W1Parser:
    """Validates whole ``w1_slave`` texts; counts rejections in ``stats``."""

    def __init__(self) -> None:
        self.stats = ParserStats()

    def parse(self, text: str) -> W1Reading | None:
        reading, verdict = _judge(text)
        if reading is not None:
            self.stats.frames += 1
        elif verdict == "checksum":
            self.stats.bad_checksum += 1
        else:
            self.stats.malformed += 1
        return reading


def _judge(text: str) -> tuple[W1Reading | None, str]:
    if len(text) > MAX_FILE:
        return None, "malformed"
    lines = text.splitlines()
    if len(lines) != 2:
        return None, "malformed"
    m1 = _LINE1.fullmatch(lines[0])
    m2 = _LINE2.fullmatch(lines[1])
    if m1 is None or m2 is None or m1.group(1).lower() != m2.group(1).lower():
        return None, "malformed"
    pad = bytes.fromhex(m1.group(1))
    if int(m1.group(2), 16) != pad[8]:
        return None, "malformed"
    if m1.group(3) != "YES" or dallas_crc8(pad[:8]) != pad[8]:
        return None, "checksum"
    if pad[4] & 0x9F != 0x1F:
        return None, "malformed"  # configuration byte: bits 0..4 are 1, bit 7 is 0
    temp_mc = int(m2.group(2))
    raw = int.from_bytes(pad[:2], "little")
    if temp_mc not in _kernel_values(raw, pad[4]) or not MIN_MC <= temp_mc <= MAX_MC:
        return None, "malformed"
    return W1Reading(pad, temp_mc), "ok"


def _kernel_values(raw: int, config: int) -> tuple[int, int]:
    """``t=`` as kernels print it: from the raw register, or with undefined low bits cleared."""
    resolution = 9 + ((config >> 5) & 0x3)
    masked = raw & ~((1 << (12 - resolution)) - 1) & 0xFFFF
    return raw_to_mc(raw), raw_to_mc(masked)
