"""EM4100 125 kHz RFID reader frames: RDM6300/RDM630 and ID-12LA/ID-20LA (ASCII mode).

RDM6300, 14 bytes: ``STX | 10 hex data | 2 hex checksum | ETX``.
ID-12LA, 16 bytes: the same with ``CR LF`` before ``ETX``.
The checksum is the XOR of the 5 data bytes; upper- and lower-case hex are accepted. Data byte 0
is the version/customer id, bytes 1..4 the 32-bit card number. One parser accepts both layouts.

Buffer bound: after every ``feed`` the parser holds at most 15 bytes (one undecided candidate
starting at an STX); see ``FrameParser`` for the transient bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from firmware_sim.serial.stats import FrameParser

STX = 0x02
ETX = 0x03
CR = 0x0D
LF = 0x0A
RDM6300_LEN = 14
ID12LA_LEN = 16
_HEX = frozenset(b"0123456789ABCDEFabcdef")

Layout = Literal["rdm6300", "id12la"]


def em4100_checksum(data: bytes) -> int:
    """XOR of the data bytes."""
    x = 0
    for b in data:
        x ^= b
    return x


@dataclass(frozen=True, slots=True)
class RfidFrame:
    """One verified EM4100 frame."""

    data: bytes  # 5 bytes: version, then the 32-bit card number big-endian
    layout: Layout = "rdm6300"

    def __post_init__(self) -> None:
        if len(self.data) != 5:
            raise ValueError(f"EM4100 data must be 5 bytes, found {len(self.data)}")

    @property
    def checksum(self) -> int:
        return em4100_checksum(self.data)

    @property
    def version(self) -> int:
        return self.data[0]

    @property
    def card_number(self) -> int:
        return int.from_bytes(self.data[1:], "big")

    @property
    def tag(self) -> str:
        """The card as a string: ``em4100:`` and the 10 upper-case hex digits."""
        return "em4100:" + self.data.hex().upper()


def encode_rdm6300(data: bytes) -> bytes:
    """The 14 bytes an RDM6300 sends for the 5 data bytes ``data``."""
    if len(data) != 5:
        raise ValueError(f"EM4100 data must be 5 bytes, found {len(data)}")
    body = (data.hex() + f"{em4100_checksum(data):02x}").upper().encode("ascii")
    return bytes([STX]) + body + bytes([ETX])


def encode_id12la(data: bytes) -> bytes:
    """The 16 bytes an ID-12LA sends in ASCII mode for ``data``."""
    frame = encode_rdm6300(data)
    return frame[:-1] + bytes([CR, LF, ETX])


class RfidParser(FrameParser[RfidFrame]):
    """Sans-I/O parser for RDM6300 and ID-12LA frames; resynchronises on the next STX."""

    max_frame = ID12LA_LEN

    def _drain(self) -> list[RfidFrame]:
        out: list[RfidFrame] = []
        buf = self._buf
        while buf:
            start = buf.find(STX)
            if start < 0:
                self._discard(len(buf))
                break
            if start:
                self._discard(start)
            verdict = self._judge()
            if verdict is None:
                break  # undecided: wait for more bytes
            if isinstance(verdict, RfidFrame):
                self._emit(RDM6300_LEN if verdict.layout == "rdm6300" else ID12LA_LEN)
                out.append(verdict)
            else:
                # Drop only the STX: a real frame may start inside the rejected candidate.
                if verdict == "checksum":
                    self.stats.bad_checksum += 1
                else:
                    self.stats.malformed += 1
                del buf[:1]
        return out

    def _judge(self) -> RfidFrame | Literal["checksum", "malformed"] | None:
        """Decide the candidate at ``buf[0] == STX``: a frame, a rejection, or None (need more)."""
        buf = self._buf
        for b in buf[1 : min(len(buf), 13)]:
            if b not in _HEX:
                return "malformed"
        if len(buf) < RDM6300_LEN:
            return None
        layout: Layout
        if buf[13] == ETX:
            layout = "rdm6300"
        elif buf[13] == CR:
            if len(buf) > 14 and buf[14] != LF:
                return "malformed"
            if len(buf) > 15 and buf[15] != ETX:
                return "malformed"
            if len(buf) < ID12LA_LEN:
                return None
            layout = "id12la"
        else:
            return "malformed"
        raw = bytes.fromhex(buf[1:13].decode("ascii"))
        if em4100_checksum(raw[:5]) != raw[5]:
            return "checksum"
        return RfidFrame(raw[:5], layout)
