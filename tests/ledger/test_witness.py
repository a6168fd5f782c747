"""The tlog-witness core: the spec's add-checkpoint body, and a witness that never cosigns two
inconsistent checkpoints of one log (statuses 400/403/404/409/422 as the spec assigns them)."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ledger.chain import ChainWriter
from ledger.checkpoint import (
    Checkpoint,
    checkpoint_for,
    checkpoint_of_hashes,
    device_origin,
    device_signer,
    device_verifier,
    fleet_label,
)
from ledger.cosignature import Cosigner, verify_cosigned
from ledger.errors import DecodeError, LedgerError, SignatureError, UsageError
from ledger.identity import SigningKey
from ledger.merkle import consistency_proof
from ledger.note import Note, sign_note
from ledger.store import Store
from ledger.witness import (
    AddCheckpoint,
    Witness,
    WitnessConflictError,
    http_status,
    parse_add_checkpoint,
)

# c2sp.org/tlog-witness, "add-checkpoint": the example request body.
SPEC_BODY = (
    "old 20852014\n"
    "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
    "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
    "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
    "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
    "\n"
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv"
    "2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6"
    "267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n"
).encode()


def test_spec_request_parses_and_re_encodes() -> None:
    req = parse_add_checkpoint(SPEC_BODY)
    assert req.old_size == 20852014 and len(req.proof) == 4
    assert req.note.text.startswith("example.com/behind-the-sofa\n20852163\n")
    assert len(req.note.signatures) == 2
    assert req.encode() == SPEC_BODY


BODY_MUTATIONS = [
    ("no-old-line", SPEC_BODY.replace(b"old 20852014\n", b"")),
    ("old-leading-zero", SPEC_BODY.replace(b"old 20852014", b"old 020852014")),
    ("old-negative", SPEC_BODY.replace(b"old 20852014", b"old -1")),
    ("old-without-space", SPEC_BODY.replace(b"old 20852014", b"old20852014")),
    ("proof-line-not-base64", SPEC_BODY.replace(b"PlRNCrwHpqhG", b"PlRNCrwHpq!G")),
    (
        "proof-line-short",
        SPEC_BODY.replace(b"PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=", b"AAAA"),
    ),
    (
        "64-proof-lines",
        b"old 1\n"
        + b"PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n" * 64
        + SPEC_BODY[SPEC_BODY.index(b"\n\n") + 1 :],
    ),
    ("crlf", SPEC_BODY.replace(b"\n", b"\r\n")),
    ("no-empty-line", SPEC_BODY.replace(b"\n\nexample", b"\nexample")),
]


@pytest.mark.parametrize("body", [m[1] for m in BODY_MUTATIONS], ids=[m[0] for m in BODY_MUTATIONS])
def test_request_mutation_is_refused(body: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_add_checkpoint(body)


FLEET = fleet_label(SigningKey(hashlib.sha256(b"witness-fleet").digest()).public)
DEVICE = SigningKey(hashlib.sha256(b"witness-device").digest())
ORIGIN = device_origin(FLEET, DEVICE.public.device_id, 0)
LEAVES = [hashlib.sha256(bytes([i])).digest() for i in range(9)]
COSIGNER = Cosigner("peer.edgefleet.invalid/w", SigningKey(hashlib.sha256(b"witness-w").digest()))


def _note(size: int, origin: str = ORIGIN, leaves: list[bytes] = LEAVES) -> Note:
    cp = checkpoint_of_hashes(origin, leaves[:size])
    return sign_note(cp.text(), device_signer(origin, DEVICE))


def _request(old: int, size: int, leaves: list[bytes] = LEAVES) -> AddCheckpoint:
    proof = consistency_proof(leaves[:size], old, size) if 0 < old < size else []
    return AddCheckpoint(old, tuple(proof), _note(size, leaves=leaves))


def _witness() -> Witness:
    return Witness(COSIGNER, {ORIGIN: device_verifier(ORIGIN, DEVICE.public)})


def test_witness_follows_a_growing_log_and_its_cosignatures_verify() -> None:
    w = _witness()
    for old, size in ((0, 3), (3, 3), (3, 7), (7, 9)):
        req = parse_add_checkpoint(_request(old, size).encode())
        sig = w.add_checkpoint(req, now=1_700_000_000 + size)
        cosigned = verify_cosigned(
            req.note.with_signature(sig),
            device_verifier(ORIGIN, DEVICE.public),
            [COSIGNER.verifier],
            1,
        )
        assert cosigned.checkpoint.size == size == w.state()[ORIGIN].size


def _status(w: Witness, req: AddCheckpoint) -> int:
    with pytest.raises(LedgerError) as info:
        w.add_checkpoint(req, now=1)
    return http_status(info.value)


def test_refusals_and_their_statuses() -> None:
    w = _witness()
    w.add_checkpoint(_request(0, 4), now=1)
    forked = [*LEAVES[:3], hashlib.sha256(b"fork").digest(), *LEAVES[4:]]
    # 409: the log must start from what the witness last cosigned, and learns that size.
    with pytest.raises(WitnessConflictError) as info:
        w.add_checkpoint(_request(3, 5), now=1)
    assert info.value.latest_size == 4 and http_status(info.value) == 409
    assert _status(w, _request(0, 5)) == 409
    # 422: a fork at the same size, or an extension of a fork, has no consistency proof.
    assert _status(w, _request(4, 4, forked)) == 422
    assert _status(w, _request(4, 6, forked)) == 422
    assert _status(w, AddCheckpoint(4, (LEAVES[0],), _note(6))) == 422
    # 400: old above the new size.
    assert _status(w, AddCheckpoint(5, (), _note(4))) == 400
    # 404: not a configured origin (another epoch is another log).
    other = device_origin(FLEET, DEVICE.public.device_id, 1)
    assert _status(w, AddCheckpoint(0, (), _note(2, origin=other))) == 404
    # 403: not signed by the log's key.
    stranger = SigningKey(bytes(32))
    cp = checkpoint_of_hashes(ORIGIN, LEAVES[:5])
    assert (
        _status(w, AddCheckpoint(4, (), sign_note(cp.text(), device_signer(ORIGIN, stranger))))
        == 403
    )
    bad = _note(5)
    sig = bad.signatures[0]
    flipped = Note(bad.text, (type(sig)(sig.name, sig.key_id, bytes(64)),))
    with pytest.raises(SignatureError):
        w.add_checkpoint(
            AddCheckpoint(4, tuple(consistency_proof(LEAVES[:5], 4, 5)), flipped), now=1
        )
    # None of the refusals moved the witness.
    assert w.state()[ORIGIN].size == 4


def test_state_survives_a_restart_and_from_zero_needs_no_proof() -> None:
    w = _witness()
    w.add_checkpoint(_request(0, 4), now=1)
    again = Witness(COSIGNER, {ORIGIN: device_verifier(ORIGIN, DEVICE.public)}, w.state())
    assert _status(again, _request(0, 6)) == 409
    again.add_checkpoint(_request(4, 6), now=2)
    fresh = _witness()
    assert _status(fresh, AddCheckpoint(0, (LEAVES[0],), _note(3))) == 422
    assert fresh.add_checkpoint(AddCheckpoint(0, (), _note(0)), now=3)
    assert fresh.state()[ORIGIN] == Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest())


def test_a_log_key_cannot_witness_itself() -> None:
    with pytest.raises(UsageError):
        Witness(Cosigner("x", DEVICE), {ORIGIN: device_verifier(ORIGIN, DEVICE.public)})


def test_a_new_epoch_is_a_new_log_for_a_witness(
    chain_store: Store, authority: SigningKey, device_key: SigningKey
) -> None:
    fleet = fleet_label(authority.public)
    device = device_key.public.device_id
    origins = [device_origin(fleet, device, e) for e in (0, 1)]
    w = Witness(COSIGNER, {o: device_verifier(o, device_key.public) for o in origins})
    first = checkpoint_for(chain_store, fleet, device_key)
    assert first.text.startswith(origins[0] + "\n3\n")
    w.add_checkpoint(AddCheckpoint(0, (), first), now=1)
    writer = ChainWriter(chain_store, device_key, device, epoch=1)  # as after a restore
    writer.record(2_000_000_000_000, "temp_mc", 1, None)
    writer.seal()
    second = checkpoint_for(chain_store, fleet, device_key)
    assert second.text.startswith(origins[1] + "\n4\n")
    # The epoch-1 log starts from 0 at the witness, whatever it cosigned in epoch 0.
    w.add_checkpoint(AddCheckpoint(0, (), second), now=2)
    assert {o: cp.size for o, cp in w.state().items()} == {origins[0]: 3, origins[1]: 4}


class WitnessMachine(RuleBasedStateMachine):
    """A log that grows and sometimes forks, a witness fed honest, stale and forked requests:
    whatever it cosigns, in order, is one append-only history (each cosigned tree is a prefix of
    the next), which is all a witness promises."""

    def __init__(self) -> None:
        super().__init__()
        self.witness = _witness()
        self.leaves: list[bytes] = []
        self.counter = 0
        self.cosigned: list[tuple[int, bytes, list[bytes]]] = []  # size, root, the leaves behind

    def _fresh(self, n: int) -> list[bytes]:
        out = [
            hashlib.sha256(b"m" + (self.counter + i).to_bytes(4, "big")).digest() for i in range(n)
        ]
        self.counter += n
        return out

    def _submit(self, leaves: list[bytes], old: int, size: int) -> None:
        proof = consistency_proof(leaves[:size], old, size) if 0 < old < size <= len(leaves) else []
        req = AddCheckpoint(old, tuple(proof), _note(size, leaves=leaves))
        status = 200
        try:
            self.witness.add_checkpoint(req, now=1)
        except LedgerError as exc:
            status = http_status(exc)
        assert status in (200, 400, 409, 422)  # never 403/404: signed by the log, known origin
        if status != 200:
            return
        cp = checkpoint_of_hashes(ORIGIN, leaves[:size])
        self.cosigned.append((cp.size, cp.root_hash, leaves[:size]))

    @rule(n=st.integers(1, 5))
    def append(self, n: int) -> None:
        self.leaves += self._fresh(n)

    @rule(data=st.data())
    def submit_honest(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(0, len(self.leaves)))
        latest = self.witness.state().get(ORIGIN)
        old = data.draw(st.sampled_from([0 if latest is None else latest.size, 0, size]))
        self._submit(self.leaves, min(old, size) if data.draw(st.booleans()) else old, size)

    @rule(data=st.data())
    def submit_fork(self, data: st.DataObject) -> None:
        keep = data.draw(st.integers(0, len(self.leaves)))
        forked = self.leaves[:keep] + self._fresh(data.draw(st.integers(1, 4)))
        latest = self.witness.state().get(ORIGIN)
        old = 0 if latest is None else latest.size
        self._submit(forked, old, data.draw(st.integers(0, len(forked))))

    @invariant()
    def one_append_only_history(self) -> None:
        for (size_a, root_a, _), (size_b, _, leaves_b) in itertools.pairwise(self.cosigned):
            assert size_a <= size_b
            assert checkpoint_of_hashes(ORIGIN, leaves_b[:size_a]).root_hash == root_a


TestWitnessMachine = WitnessMachine.TestCase
TestWitnessMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
