"""Fuzzing every decoder of untrusted bytes: only ``DecodeError`` may escape, and crafted
MessagePack bombs are refused without allocating what they declare.

Three sources of input: Hypothesis (random bytes, mutated valid structures, arbitrary MessagePack
values), a seeded loop of ~20k mutated valid inputs (bit flips, truncations, insertions, splices
between structures, type-marker overwrites) whose figure is reported as "crashes = 0 of N", and
hand-made bombs measured with ``tracemalloc`` (peak traced memory during the decode must stay
under 10x the input size + 64 KiB).
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import codec, envelope
from ledger.block import decode_block, decode_header
from ledger.certs import (
    Certificate,
    countersign_rotation,
    decode_certificate,
    decode_revocation,
    decode_rotation,
    sign_revocation,
    sign_rotation,
)
from ledger.errors import DecodeError
from ledger.evidence import decode_evidence, make_evidence
from ledger.identity import SigningKey
from ledger.reading import decode_reading
from tests.conftest import FigureRecorder

from .conftest import NOW_MS, sample_readings, seal_chain_impl

CODEC_LIMITS = codec.Limits(max_bytes=1 << 20, max_array=4096, max_str=4096, max_bin=4096)

DECODERS: dict[str, Callable[[bytes], object]] = {
    "reading": decode_reading,
    "header": decode_header,
    "block": decode_block,
    "certificate": decode_certificate,
    "rotation": decode_rotation,
    "revocation": decode_revocation,
    "evidence": decode_evidence,
    "envelope": lambda b: envelope.unwrap(b, "envelope", 512),
    "codec": lambda b: codec.decode(b, CODEC_LIMITS, "codec"),
}
NAMES = sorted(DECODERS)
SEED = 20_240_611
N_LOOP = 20_000


@pytest.fixture(scope="module")
def corpus(
    authority: SigningKey, device_key: SigningKey, next_device_key: SigningKey, cert: Certificate
) -> dict[str, bytes]:
    """One valid input per decoder (the codec and envelope get a block and a reading)."""
    device_id = device_key.public.device_id
    blocks = seal_chain_impl(device_key, sample_readings(device_id, (3, 4)))
    fork = seal_chain_impl(device_key, sample_readings(device_id, (2,)))[0].header
    rotation = countersign_rotation(
        sign_rotation(device_id, device_key, next_device_key.public, 5, NOW_MS, authority.key_id),
        authority,
    )
    valid = {
        "reading": blocks[1].readings[0].wire,
        "header": blocks[1].header.wire,
        "block": blocks[1].encode(),
        "certificate": cert.wire,
        "rotation": rotation,
        "revocation": sign_revocation(authority, device_id, device_key.key_id, 7, "lost", NOW_MS),
        "evidence": make_evidence(cert.wire, (rotation,), blocks[0].header, fork).encode(),
        "envelope": blocks[0].readings[1].wire,
        "codec": blocks[0].readings[0].body,  # flat: no assumption on the nesting allowed
    }
    for name, data in valid.items():
        DECODERS[name](data)  # each seed is accepted as is
    return valid


def _only_decode_error(name: str, data: bytes) -> bool:
    """True if the decoder accepted; False if it raised DecodeError; anything else propagates."""
    try:
        DECODERS[name](data)
    except DecodeError:
        return False
    return True


# --- Hypothesis ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=700))
def test_random_bytes_raise_only_decode_error(name: str, data: bytes) -> None:
    _only_decode_error(name, data)


_MARKERS = [
    0xC0,
    0xC2,
    0xC3,
    0xC4,
    0xC5,
    0xC6,
    0xCA,
    0xCB,
    0xCC,
    0xCD,
    0xCE,
    0xCF,
    0xD0,
    0xD3,
    0xD4,
    0xD9,
    0xDA,
    0xDB,
    0xDC,
    0xDD,
    0xDE,
    0xDF,
    0x80,
    0x90,
    0x9F,
    0xA0,
    0xBF,
    0xC1,
]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "marker", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "marker" and data:
            data[pos] = draw(st.sampled_from(_MARKERS))
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
    return bytes(data)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_valid_bytes_raise_only_decode_error(
    corpus: dict[str, bytes], name: str, data: st.DataObject
) -> None:
    _only_decode_error(name, data.draw(mutated(corpus[name])))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=30,
)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(value=msgpack_values, wrap=st.booleans())
def test_arbitrary_msgpack_values_raise_only_decode_error(
    name: str, value: Any, wrap: bool
) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    if wrap:  # the same value as the body of an envelope, past the first layer
        data = msgpack.packb([data, bytes(64)], use_bin_type=True)
    _only_decode_error(name, data)


# --- the seeded loop ----------------------------------------------------------------------


def _mutate(rnd: random.Random, data: bytes, corpus: dict[str, bytes]) -> bytes:
    out = bytearray(data)
    op = rnd.randrange(6)
    if op == 0:  # bit flips
        for _ in range(rnd.randint(1, 4)):
            bit = rnd.randrange(len(out) * 8)
            out[bit // 8] ^= 1 << (bit % 8)
    elif op == 1:  # truncation
        del out[rnd.randrange(len(out)) :]
    elif op == 2:  # insertion
        pos = rnd.randrange(len(out) + 1)
        out[pos:pos] = rnd.randbytes(rnd.randint(1, 16))
    elif op == 3:  # splice with another structure
        other = corpus[rnd.choice(NAMES)]
        out = out[: rnd.randrange(len(out) + 1)] + other[rnd.randrange(len(other) + 1) :]
    elif op == 4:  # a type marker or length byte overwritten
        out[rnd.randrange(len(out))] = rnd.choice([*_MARKERS, 0x00, 0x1F, 0x20, 0x40, 0xFF])
    else:  # a chunk duplicated or removed
        i = rnd.randrange(len(out))
        j = min(len(out), i + rnd.randint(1, 64))
        if rnd.random() < 0.5:
            out[i:i] = out[i:j]
        else:
            del out[i:j]
    return bytes(out)


def test_seeded_mutation_loop(corpus: dict[str, bytes], figure: FigureRecorder) -> None:
    rnd = random.Random(SEED)
    crashes: list[str] = []
    accepted = 0
    for _ in range(N_LOOP):
        name = rnd.choice(NAMES)
        data = _mutate(rnd, corpus[name], corpus)
        try:
            accepted += _only_decode_error(name, data)
        except Exception as exc:  # counting what escapes is the point
            crashes.append(f"{name}: {type(exc).__name__}: {exc} on {data[:40].hex()}")
    assert not crashes, f"crashes = {len(crashes)} of {N_LOOP} (seed {SEED}); first: {crashes[:3]}"
    # Sanity: mutations of signature bytes still decode (decoders check structure, not
    # signatures), so some inputs are accepted; most are rejected.
    assert 0 < accepted < N_LOOP // 2, f"accepted {accepted} of {N_LOOP}"
    figure(
        "malformed or hostile MessagePack",
        f"crashes = 0 of {N_LOOP} mutated inputs ({accepted} well-formed enough to decode)",
        seed=SEED,
    )


# --- bombs ----------------------------------------------------------------------------------

BOMBS: dict[str, bytes] = {
    "array32-4G": b"\xdd\xff\xff\xff\xff",
    "map32-4G": b"\xdf\xff\xff\xff\xff",
    "bin32-4GiB": b"\xc6\xff\xff\xff\xff",
    "str32-4GiB": b"\xdb\xff\xff\xff\xff",
    "ext32-4GiB": b"\xc9\xff\xff\xff\xff\x01",
    "array16-64k-of-nil": b"\xdc\xff\xff" + b"\xc0" * 100,
    "fixarray1-nested-100k": b"\x91" * 100_000 + b"\xc0",
    "array32-nested-1k": b"\xdd\x00\x00\x10\x00" * 1_000,
    "array16-4096-nested-1k": b"\xdc\x10\x00" * 1_000,
    "array16-4096-in-array-2": b"\x92" + b"\xdc\x10\x00" * 1_000,
    "array16-of-4096-empty-arrays": b"\xdc\x10\x00" + b"\x90" * 4096,
    "envelope-of-array32-4G": msgpack.packb([b"\xdd\xff\xff\xff\xff", bytes(64)]),
    "envelope-of-nested-array16": msgpack.packb([b"\xdc\x10\x00" * 100, bytes(64)]),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_bombs_are_rejected_without_large_allocation(name: str, bomb: str) -> None:
    data = BOMBS[bomb]
    # Warm-up (caches, interned strings). An envelope around a bomb is itself well formed for
    # the envelope and codec decoders, so those may accept it: only memory is measured then.
    accepted = _only_decode_error(name, data)
    assert not accepted or (bomb.startswith("envelope-of-") and name in ("envelope", "codec"))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        _only_decode_error(name, data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    bound = 10 * len(data) + 64 * 1024
    assert peak <= bound, (
        f"{name} on {bomb}: peak {peak} bytes for {len(data)} input bytes (bound {bound})"
    )
