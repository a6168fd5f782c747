"""RDM6300 / ID-12LA frames and the tag presence tracker, against the reference known answers."""

from __future__ import annotations

import pytest

from firmware_sim.serial.rfid import (
    RfidFrame,
    RfidParser,
    em4100_checksum,
    encode_id12la,
    encode_rdm6300,
)
from firmware_sim.serial.tracker import TagArrived, TagLeft, TagPresenceTracker

# docs: /work/shared/reference/serial-sensors.md (RDM6300 and ID-12LA known answers)
RDM_WIRE = bytes.fromhex("02 36 32 45 33 30 38 36 43 45 44 30 38 03")
ID12_WIRE = bytes.fromhex("02 30 43 30 30 30 36 32 31 41 35 38 45 0D 0A 03")
VALID = [
    ("62E3086CED", "08", 0xE3086CED),
    ("67003B51C6", "CB", 3887558),
    ("67003BA86C", "98", 3909740),
    ("67003BA867", "93", 3909735),
]
BAD_CHECKSUM = b"\x02" + b"68003B51C6CB" + b"\x03"


def rdm(data_hex: str, sum_hex: str) -> bytes:
    return b"\x02" + (data_hex + sum_hex).encode() + b"\x03"


def test_reference_wire_bytes_decode_to_the_reference_card() -> None:
    [frame] = RfidParser().feed(RDM_WIRE)
    assert frame.data == bytes.fromhex("62E3086CED")
    assert frame.checksum == 0x08
    assert frame.card_number == 3808980205
    assert frame.version == 0x62
    assert frame.tag == "em4100:62E3086CED"
    assert frame.layout == "rdm6300"


@pytest.mark.parametrize(("data_hex", "sum_hex", "card"), VALID)
def test_known_valid_frames(data_hex: str, sum_hex: str, card: int) -> None:
    parser = RfidParser()
    [frame] = parser.feed(rdm(data_hex, sum_hex))
    assert frame.card_number == card
    assert em4100_checksum(frame.data) == int(sum_hex, 16)
    assert encode_rdm6300(bytes.fromhex(data_hex)) == rdm(data_hex, sum_hex)


def test_checksum_mismatch_is_counted_never_emitted() -> None:
    parser = RfidParser()
    assert parser.feed(BAD_CHECKSUM) == []
    assert parser.stats.bad_checksum == 1
    assert parser.stats.frames == 0


def test_lower_case_hex_is_accepted() -> None:
    [frame] = RfidParser().feed(rdm("62e3086ced", "08"))
    assert frame.tag == "em4100:62E3086CED"


def test_id12la_reference_frame_and_datasheet_erratum() -> None:
    parser = RfidParser()
    [frame] = parser.feed(ID12_WIRE)
    assert frame.data == bytes.fromhex("0C000621A5")
    assert frame.layout == "id12la"
    assert encode_id12la(frame.data) == ID12_WIRE
    # The datasheet prose says checksum "6E"; its own bit table (and XOR) gives 8E.
    erratum = ID12_WIRE.replace(b"8E", b"6E")
    assert parser.feed(erratum) == []
    assert parser.stats.bad_checksum == 1


@pytest.mark.parametrize("wire", [RDM_WIRE, ID12_WIRE], ids=["rdm6300", "id12la"])
def test_byte_at_a_time(wire: bytes) -> None:
    parser = RfidParser()
    out: list[RfidFrame] = []
    for i in range(len(wire)):
        got = parser.feed(wire[i : i + 1])
        assert got == [] or i == len(wire) - 1
        out += got
    assert len(out) == 1
    assert parser.buffered == 0


@pytest.mark.parametrize("wire", [RDM_WIRE, ID12_WIRE], ids=["rdm6300", "id12la"])
def test_every_split_point(wire: bytes) -> None:
    expected = RfidParser().feed(wire)
    for cut in range(len(wire) + 1):
        parser = RfidParser()
        assert parser.feed(wire[:cut]) + parser.feed(wire[cut:]) == expected, f"cut at {cut}"


def test_leading_and_trailing_garbage_resync() -> None:
    parser = RfidParser()
    garbage = b"\x02\x02\xff12\x03\x02ABC\r\n"
    frames = parser.feed(garbage + RDM_WIRE + b"\x00\x02junk" + ID12_WIRE + b"\x02" + b"9" * 5)
    assert [f.data.hex().upper() for f in frames] == ["62E3086CED", "0C000621A5"]
    assert parser.stats.malformed >= 3
    assert parser.stats.frames == 2
    assert parser.buffered == 6  # the trailing partial candidate, still undecided


def test_a_truncated_frame_does_not_hide_the_next_one() -> None:
    parser = RfidParser()
    frames = parser.feed(RDM_WIRE[:9] + RDM_WIRE + ID12_WIRE[:14] + RDM_WIRE)
    assert len(frames) == 2
    assert parser.stats.malformed == 2


def test_buffer_is_bounded_by_one_candidate() -> None:
    parser = RfidParser()
    parser.feed(b"\x02" + b"A" * 12 + b"\r")  # an ID-12LA candidate waiting for LF
    assert parser.buffered <= 15
    parser.feed(bytes(range(256)) * 50)
    assert parser.buffered <= 15


def test_encoders_reject_wrong_lengths() -> None:
    with pytest.raises(ValueError, match="5 bytes, found 4"):
        encode_rdm6300(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="5 bytes, found 6"):
        RfidFrame(b"123456")


# --- tracker ----------------------------------------------------------------------------------


def test_tracker_arrival_and_departure_with_timeout() -> None:
    t = TagPresenceTracker(timeout_ms=500)
    assert t.seen("a", 1000) == [TagArrived("a", 1000)]
    assert t.seen("a", 1100) == []
    assert t.tick(1599) == []
    assert t.next_deadline() == 1600
    assert t.tick(1600) == [TagLeft("a", 1600)]
    assert t.present() == frozenset()
    assert t.next_deadline() is None


def test_tracker_left_is_stamped_at_the_deadline_not_at_the_late_poll() -> None:
    t = TagPresenceTracker(timeout_ms=500)
    t.seen("a", 0)
    t.seen("b", 300)
    assert t.tick(10_000) == [TagLeft("a", 500), TagLeft("b", 800)]


def test_tracker_confirm_two_needs_two_frames_within_the_timeout() -> None:
    t = TagPresenceTracker(timeout_ms=500, confirm=2)
    assert t.seen("a", 0) == []
    assert t.present() == frozenset()
    assert t.seen("a", 400) == [TagArrived("a", 400)]
    assert t.seen("x", 500) == []  # one frame of another card (a corrupt read, say)
    assert t.tick(1000) == [TagLeft("a", 900)]  # x expires at 1000 without ever arriving
    assert t.stats.unconfirmed == 1
    assert t.seen("y", 2000) == []
    assert t.seen("y", 2501) == []  # the second frame came too late: still unconfirmed
    assert t.present() == frozenset()
    assert t.stats.unconfirmed == 2


def test_tracker_reports_left_then_arrived_in_time_order() -> None:
    t = TagPresenceTracker(timeout_ms=500)
    t.seen("a", 0)
    assert t.seen("b", 700) == [TagLeft("a", 500), TagArrived("b", 700)]


def test_tracker_rearrival_after_leaving() -> None:
    t = TagPresenceTracker(timeout_ms=500)
    t.seen("a", 0)
    assert t.seen("a", 501) == [TagLeft("a", 500), TagArrived("a", 501)]


def test_tracker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="timeout_ms must be > 0, found 0"):
        TagPresenceTracker(timeout_ms=0)
    with pytest.raises(ValueError, match="confirm must be >= 1, found 0"):
        TagPresenceTracker(confirm=0)
