"""Line noise: bit errors at rates 1e-3 and 1e-2 over many frames; corrupt frames never accepted.

Each bit of the byte stream flips independently with the given probability (seeded, so a seed
reproduces a run). "Corrupt accepted" counts what reached the caller but differs from what was
sent. CRC-16/MODBUS (Modbus RTU, the bridge line) is enough on its own. The XOR-8 checksum of the
EM4100 readers cannot see two flips in the same bit of two characters, so the raw parser figure is
reported and bounded, and for the continuous RDM6300 the 2-out-of-2 confirmation of the tracker
closes the gap.
"""

from __future__ import annotations

import math
import random

import pytest

from firmware_sim.serial.bridge import BridgeFrame, BridgeParser
from firmware_sim.serial.modbus import ModbusResponseParser, RegistersResponse
from firmware_sim.serial.profiles import XYMD02
from firmware_sim.serial.rfid import RfidParser, encode_id12la, encode_rdm6300
from firmware_sim.serial.sim import XyMd02Sim
from firmware_sim.serial.tracker import TagArrived, TagPresenceTracker
from tests.conftest import FigureRecorder

SEED = 20240611
BERS = [1e-3, 1e-2]


def flip_bits(data: bytes, ber: float, rng: random.Random) -> bytes:
    """Flip each bit with probability ``ber`` (geometric gaps between errors)."""
    out = bytearray(data)
    nbits = len(out) * 8
    log_keep = math.log1p(-ber)
    pos = -1
    while True:
        pos += 1 + int(math.log(1.0 - rng.random()) / log_keep)
        if pos >= nbits:
            return bytes(out)
        out[pos // 8] ^= 1 << (pos % 8)


@pytest.mark.parametrize("ber", BERS)
def test_modbus_corrupt_accepted_is_zero(ber: float, figure: FigureRecorder) -> None:
    rng = random.Random(SEED)
    sim = XyMd02Sim()
    parser = ModbusResponseParser()
    request = XYMD02.measurement_request(1)
    polls, accepted, corrupt = 6000, 0, 0
    for _ in range(polls):
        sim.temp_mc = rng.randrange(-40_000, 80_001, 100)
        sim.humidity_pm = rng.randrange(0, 1001)
        truth = RegistersResponse(1, 4, XYMD02.encode(sim.temp_mc, sim.humidity_pm))
        parser.expect(request)
        wire = bytes(rng.randrange(256) for _ in range(rng.randrange(3)))  # bus chatter
        got = parser.feed(flip_bits(wire + sim.respond(request.encode()), ber, rng))
        accepted += len(got)
        corrupt += sum(1 for r in got if r != truth)
    message = f"Modbus: corrupt accepted = {corrupt} of {accepted} (seed {SEED}, BER {ber})"
    figure("serial line noise (Modbus RTU)", message)
    assert corrupt == 0, message
    intact = (1 - ber) ** (len(sim.respond(request.encode())) * 8)
    assert accepted >= 0.9 * intact * polls, f"only {accepted} of {polls} answers survived"


def _rfid_stream(rng: random.Random, cards: int) -> tuple[list[bytes], list[bytes]]:
    sent = [bytes(rng.randrange(256) for _ in range(5)) for _ in range(cards)]
    wires = [encode_rdm6300(d) if i % 2 else encode_id12la(d) for i, d in enumerate(sent)]
    return sent, wires


@pytest.mark.parametrize(("ber", "bound"), [(1e-3, 0.0002), (1e-2, 0.004)])
def test_rfid_parser_alone_xor8_figure(ber: float, bound: float) -> None:
    """The raw parser: every structural and checksum check, no confirmation (ID-12LA case)."""
    rng = random.Random(SEED)
    sent, wires = _rfid_stream(rng, 20_000)
    parser = RfidParser()
    frames = parser.feed(flip_bits(b"".join(wires), ber, rng))
    known = set(sent)
    corrupt = sum(1 for f in frames if f.data not in known)
    message = (
        f"raw XOR-8 parser: corrupt accepted = {corrupt} of {len(frames)} accepted, "
        f"{len(sent)} sent (seed {SEED}, BER {ber}); rejected {parser.stats.rejected}"
    )
    print(message)
    assert corrupt <= bound * len(sent), message
    assert parser.stats.rejected > 0, message


@pytest.mark.parametrize("ber", BERS)
def test_rdm6300_with_two_of_two_confirmation_corrupt_accepted_is_zero(
    ber: float, figure: FigureRecorder
) -> None:
    """A continuous reader repeats each card ~every 100 ms while it is held (here 6 frames)."""
    rng = random.Random(SEED)
    parser = RfidParser()
    tracker = TagPresenceTracker(timeout_ms=500, confirm=2)
    cards, repeats, frame_ms = 4000, 6, 100
    arrived: list[TagArrived] = []
    presented: set[str] = set()
    raw_corrupt, now = 0, 0
    for _ in range(cards):
        data = bytes(rng.randrange(256) for _ in range(5))
        tag = "em4100:" + data.hex().upper()
        presented.add(tag)
        for _ in range(repeats):
            now += frame_ms
            for frame in parser.feed(flip_bits(encode_rdm6300(data), ber, rng)):
                raw_corrupt += frame.tag != tag
                arrived += [e for e in tracker.seen(frame.tag, now) if isinstance(e, TagArrived)]
        now += 1000  # card taken away
        arrived += [e for e in tracker.tick(now) if isinstance(e, TagArrived)]
    corrupt = sum(1 for e in arrived if e.tag not in presented)
    message = (
        f"RDM6300 2-of-2: corrupt accepted = {corrupt} of {len(arrived)} arrivals "
        f"({cards} cards x {repeats} frames, seed {SEED}, BER {ber}; "
        f"the parser alone let {raw_corrupt} corrupt frames through)"
    )
    figure("serial line noise (RDM6300 RFID)", message)
    assert corrupt == 0, message
    assert len(arrived) >= (0.95 if ber < 5e-3 else 0.5) * cards, f"{len(arrived)} of {cards}"


@pytest.mark.parametrize("ber", BERS)
def test_bridge_corrupt_accepted_is_zero(ber: float, figure: FigureRecorder) -> None:
    """CRC-16/MODBUS over each line: no corrupt record reaches the caller, even on a noisy wire."""
    rng = random.Random(SEED)
    parser = BridgeParser()
    sent = [
        BridgeFrame(rng.choice(["t1", "probe-2", "freezer"]), rng.randrange(-30_000, 40_000), i)
        for i in range(20_000)
    ]
    wires = [f.encode() for f in sent]
    frames = parser.feed(flip_bits(b"".join(wires), ber, rng))
    known = set(sent)
    corrupt = sum(1 for f in frames if f not in known)
    message = (
        f"bridge CRC-16: corrupt accepted = {corrupt} of {len(frames)} accepted, "
        f"{len(sent)} sent (seed {SEED}, BER {ber}); rejected {parser.stats.rejected}"
    )
    figure("serial line noise (sensor bridge lines)", message)
    assert corrupt == 0, message
    intact = sum((1 - ber) ** (len(w) * 8) for w in wires)
    assert len(frames) >= 0.9 * intact, f"only {len(frames)} of {len(sent)} lines survived"
