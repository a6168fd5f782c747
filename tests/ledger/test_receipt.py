"""Signed storage receipts: a known answer, round trips, every field rule, every bit flip."""

from __future__ import annotations

import pytest

from ledger import codec, domains
from ledger.errors import DecodeError, SignatureError, UsageError
from ledger.identity import SigningKey
from ledger.receipt import (
    MAX_RECEIPT_BODY,
    MAX_RECEIPT_WIRE,
    RECEIPT,
    Receipt,
    decode_receipt,
    sign_receipt,
    verify_receipt,
)

HOLDER = SigningKey(bytes(range(32)))
OWNER = SigningKey(bytes(range(1, 33)))
H = bytes(range(32))


def receipt(**changes: object) -> Receipt:
    fields: dict[str, object] = {
        "holder_id": HOLDER.public.device_id,
        "owner_id": OWNER.public.device_id,
        "epoch": 0,
        "height": 300,
        "block_hash": H,
        "size": 512,
        "time_ms": 1_767_225_600_000,
    }
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


def test_known_answer_body() -> None:
    r = receipt(holder_id="ef" + "a" * 24, owner_id="ef" + "b" * 24)
    expected = "".join(
        [
            "98",  # array of 8
            "01",  # format
            "ba6566" + "61" * 24,  # holder_id
            "ba6566" + "62" * 24,  # owner_id
            "00",  # epoch
            "cd012c",  # height 300
            "c420" + H.hex(),  # block_hash
            "cd0200",  # size 512
            "cf0000019b76daa800",  # time_ms 1767225600000
        ]
    )
    assert r.encode_body().hex() == expected


def test_domain_tag_is_registered_and_nul_terminated() -> None:
    assert RECEIPT == b"edgefleet/v1/storage-receipt\x00" == domains.STORAGE_RECEIPT
    assert RECEIPT in domains.ALL  # test_codec checks every tag is prefix-free


def test_sign_decode_verify_round_trip() -> None:
    signed = sign_receipt(receipt(), HOLDER)
    back = verify_receipt(signed.wire, HOLDER.public)
    assert back.receipt == receipt()
    assert back.wire == signed.wire
    assert len(signed.wire) <= MAX_RECEIPT_WIRE
    assert len(signed.body) <= MAX_RECEIPT_BODY


def test_largest_receipt_fits_the_limits() -> None:
    r = receipt(epoch=(1 << 32) - 1, height=(1 << 63) - 1, size=1 << 20, time_ms=(1 << 63) - 1)
    signed = sign_receipt(r, HOLDER)
    assert len(signed.body) <= MAX_RECEIPT_BODY
    assert decode_receipt(signed.wire).receipt == r


def test_wrong_key_is_refused() -> None:
    signed = sign_receipt(receipt(), HOLDER)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_receipt(signed.wire, OWNER.public)


def test_every_bit_flip_is_refused() -> None:
    wire = sign_receipt(receipt(), HOLDER).wire
    accepted = 0
    for bit in range(len(wire) * 8):
        mutated = bytearray(wire)
        mutated[bit // 8] ^= 1 << (bit % 8)
        try:
            verify_receipt(bytes(mutated), HOLDER.public)
        except (DecodeError, SignatureError):
            continue
        accepted += 1
    assert accepted == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"holder_id": "EF" + "a" * 24}, "holder_id"),
        ({"owner_id": "ef+"}, "owner_id"),
        ({"epoch": 1 << 32}, "epoch"),
        ({"height": -1}, "height"),
        ({"block_hash": b"\x00" * 31}, "block_hash"),
        ({"size": 0}, "size"),
        ({"size": 1 << 40}, "size"),
        ({"time_ms": True}, "time_ms"),
        ({"owner_id": HOLDER.public.device_id}, "same device"),
    ],
)
def test_field_rules(changes: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        receipt(**changes)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([2, "ef" + "a" * 24, "ef" + "b" * 24, 0, 1, H, 1, 1], "format"),
        ([1, "ef" + "a" * 24, "ef" + "b" * 24, 0, 1, H, 1], "array of 8"),
        ([1, "ef" + "a" * 24, "ef" + "b" * 24, 0, 1, H, 0, 1], "size"),
        ([1, "ef" + "a" * 24, "ef" + "b" * 24, 0, 1, H[:8], 1, 1], "block_hash"),
    ],
)
def test_decode_refuses_bad_bodies(fields: list[codec.Value], message: str) -> None:
    body = codec.encode(fields)
    wire = codec.encode([body, HOLDER.sign(RECEIPT, body)])
    with pytest.raises(DecodeError, match=message):
        decode_receipt(wire)


def test_decode_refuses_trailing_bytes_and_oversize() -> None:
    wire = sign_receipt(receipt(), HOLDER).wire
    with pytest.raises(DecodeError):
        decode_receipt(wire + b"\x00")
    big = codec.encode([bytes(MAX_RECEIPT_BODY + 1), bytes(64)])
    with pytest.raises(DecodeError):
        decode_receipt(big)
