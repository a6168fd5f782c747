"""agent.protocol.auth and budget on exact inputs: a sealed message authenticates under its
sender's key and nothing else does (every single-bit flip, every cut, trailing bytes, another
key, an unknown sender, a revoked key, version 1); an empty authenticator only for the types a
core names self-proving; the answer budget's window."""

from __future__ import annotations

import random

import pytest

from agent.gossip import wire
from agent.protocol import auth
from agent.protocol.budget import AnswerBudget
from agent.protocol.sim import START_MS, Authority, SimDevice
from agent.protocol.trust import TrustStore
from ledger import codec
from ledger.errors import UsageError


def _setup() -> tuple[Authority, SimDevice, SimDevice, TrustStore]:
    rng = random.Random(21)
    authority = Authority(rng)
    a, b = SimDevice(authority, rng), SimDevice(authority, rng)
    trust = TrustStore(authority.roots)
    trust.learn("certificate", a.certificate, START_MS)
    return authority, a, b, trust


def _request(sender: str, other: str) -> bytes:
    return wire.encode(wire.Request(sender, 7, other, 0, 9, 3))


def test_a_sealed_message_authenticates_and_gives_back_its_body() -> None:
    _, a, b, trust = _setup()
    body = _request(a.device_id, b.device_id)
    sealed = auth.seal(body, a)
    assert sealed[0] == body[0] + 1 and sealed[-auth.TRAILER : -auth.AUTH_SIZE] == b"\xc4\x48"
    assert sealed[-auth.AUTH_SIZE : -64] == a.key.key_id
    verdict = auth.authenticate(sealed, trust)
    assert (verdict.sender, verdict.body, verdict.refused, verdict.signed) == (
        a.device_id,
        body,
        "",
        True,
    )
    assert verdict.tag == sealed[-64:]
    assert auth.body_of(sealed) == body


def test_every_single_bit_flip_every_cut_and_trailing_bytes_are_refused() -> None:
    _, a, b, trust = _setup()
    sealed = auth.seal(_request(a.device_id, b.device_id), a)
    for bit in range(len(sealed) * 8):
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        verdict = auth.authenticate(bytes(flipped), trust)
        assert verdict.refused in (auth.UNATTRIBUTABLE, auth.OLD_VERSION), bit
        assert verdict.sender == "" and verdict.body == b""
    for cut in range(len(sealed)):
        assert auth.authenticate(sealed[:cut], trust).refused == auth.UNATTRIBUTABLE
    assert auth.authenticate(sealed + b"\x00", trust).refused == auth.UNATTRIBUTABLE


def test_another_key_an_unknown_sender_and_a_revoked_key_are_refused() -> None:
    authority, a, b, trust = _setup()
    body = _request(a.device_id, b.device_id)
    # Signed by b under a's name: a's key id is not b's.
    assert auth.authenticate(auth.seal(body, b), trust).reason == "unknown_key"
    # b is unknown to the store: its credentials are asked for, nobody is charged.
    verdict = auth.authenticate(auth.seal(_request(b.device_id, a.device_id), b), trust)
    assert (verdict.refused, verdict.reason, verdict.unknown) == (
        auth.UNATTRIBUTABLE,
        "unknown_sender",
        b.device_id,
    )
    trust.learn("revocation", authority.revoke(a.device_id, 0, a.key.key_id), START_MS)
    assert auth.authenticate(auth.seal(body, a), trust).reason == "revoked"


def test_version_1_is_refused_as_old_version_before_anything_else() -> None:
    _, a, b, trust = _setup()
    v1 = codec.encode([1, wire.REQUEST, a.device_id, 7, b.device_id, 0, 9, 3])
    assert auth.authenticate(v1, trust).refused == auth.OLD_VERSION
    assert auth.authenticate(auth.seal(v1, a), trust).refused == auth.OLD_VERSION


def test_an_empty_authenticator_passes_only_for_a_self_proving_type() -> None:
    _, a, b, trust = _setup()
    a.seal(START_MS)
    body = wire.encode(wire.Announce(a.device_id, (a.blocks[0].header.wire,)))
    unsigned = auth.seal_unsigned(body)
    assert unsigned == bytes([body[0] + 1]) + body[1:] + b"\xc4\x00"
    assert auth.authenticate(unsigned, trust).refused == auth.UNATTRIBUTABLE
    verdict = auth.authenticate(unsigned, trust, frozenset({wire.ANNOUNCE}))
    assert (verdict.sender, verdict.body, verdict.signed, verdict.tag) == (
        a.device_id,
        body,
        False,
        b"",
    )
    request = auth.seal_unsigned(_request(a.device_id, b.device_id))
    assert auth.authenticate(request, trust, frozenset({wire.ANNOUNCE})).refused


def test_the_answer_budget_is_per_peer_per_window() -> None:
    budget = AnswerBudget(1_000, 10_000, max_peers=2)
    assert budget.allow("p", 600, 0) and not budget.allow("p", 500, 1)
    assert budget.allow("q", 1_000, 1)  # another peer, another budget
    assert budget.used("p", 9_999) == 600 and budget.used("p", 10_000) == 0
    assert budget.allow("p", 1_000, 10_000)  # a new window
    assert not budget.allow("p", 1_001, 30_000)  # never more than the limit at once
    with pytest.raises(UsageError):
        AnswerBudget(0, 1)


def _announce(device: SimDevice) -> bytes:
    device.seal(START_MS + len(device.blocks))
    body = wire.encode(wire.Announce(device.device_id, (device.blocks[-1].header.wire,)))
    return auth.seal_unsigned(body)


def test_remembered_verdicts_are_those_the_bytes_alone_decide() -> None:
    """A domain broadcast reaches every device of a process: its verdict is remembered by its
    bytes, and a remembered verdict never differs from judging afresh, for the bytes themselves
    and every single-bit flip of them (each flip is other bytes: judged on its own)."""
    _, a, _, trust = _setup()
    proving = frozenset({wire.ANNOUNCE})
    unsigned = _announce(a)
    first = auth.authenticate(unsigned, trust, proving)
    assert not first.refused and not first.signed
    assert auth._PURE[unsigned] == (proving, first)
    assert auth.authenticate(unsigned, trust, proving) is first  # the second device: a lookup
    assert auth.authenticate(unsigned, trust).refused == auth.UNATTRIBUTABLE  # not self-proving
    for bit in range(len(unsigned) * 8):
        flipped = bytearray(unsigned)
        flipped[bit // 8] ^= 1 << (bit % 8)
        copy = bytes(flipped)
        remembered = auth.authenticate(copy, trust, proving)
        auth._PURE.pop(copy, None)
        assert auth.authenticate(copy, trust, proving) == remembered, bit
        assert auth.authenticate(copy, trust, proving) is not first


def test_a_verdict_that_looked_a_key_up_is_never_remembered() -> None:
    """Each device judges a signed message with its own trust store: a key revoked there is
    refused there, whatever another device (or this one, earlier) decided."""
    authority, a, b, trust = _setup()
    sealed = auth.seal(_request(a.device_id, b.device_id), a)
    assert not auth.authenticate(sealed, trust).refused
    assert sealed not in auth._PURE
    other = TrustStore(authority.roots)  # a device that does not know a
    assert auth.authenticate(sealed, other).reason == "unknown_sender"
    trust.learn("revocation", authority.revoke(a.device_id, 0, a.key.key_id), START_MS)
    assert auth.authenticate(sealed, trust).reason == "revoked"


def test_the_remembered_verdicts_are_bounded() -> None:
    _, a, _, trust = _setup()
    proving = frozenset({wire.ANNOUNCE})
    unsigned = _announce(a)
    for k in range(auth._PURE_MAX + 50):
        garbage = bytes([0x95, 2, wire.ANNOUNCE]) + k.to_bytes(4, "big") + unsigned[7:]
        assert auth.authenticate(garbage, trust, proving).refused
    assert len(auth._PURE) == auth._PURE_MAX
