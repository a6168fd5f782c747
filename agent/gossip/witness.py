"""Witnessing: domain peers cosign each other's checkpoints (C2SP tlog-witness over gossip).

Every device is a **log** (its own chain's history tree, one C2SP checkpoint per epoch,
ledger/checkpoint.py) and a **witness** of the logs of the peers it shares a domain with. Two
message types carry the C2SP exchange, authenticated like every other gossip message
(``agent.protocol.auth``): WITNESS (a tlog-witness add-checkpoint request body, byte for byte)
and COSIGNED (the answer: the HTTP status the spec gives, and its body: the cosignature line on
200, the witness's latest size in decimal on 409). docs/PROTOCOL.md section 12.10 is the
reference.

Log side (when the node is given a ``WitnessConfig``). Every ``interval_ms`` of the network
clock, when the own head has moved since the last round, the part picks its witnesses: up to
``count`` available peers that share a domain, in a fixed order of its own
(``SHA-256(device || peer)``), so each device keeps the same witnesses and their state chains
along. It asks the runtime to sign the checkpoint at the head and to make a consistency proof
from the size each witness last cosigned (``PrepareCheckpoint``), then sends each its request.
A verified cosignature is added to the note, which is kept durable (``StoreCheckpoint``); a 409
teaches the witness's size for the next round.

Witness side. A request is answered only for the sender's own log (origin
``<fleet>/<sender>/epoch/<n>`` of one of our fleet roots) and checked by ``ledger.witness.Witness``
against the sender's key in force at the checkpoint's last height, from the state this device
last cosigned for that origin. The new state is handed to the runtime to make durable *before*
the cosignature is sent (``StoreWitnessState``), so no restart can make this device cosign two
inconsistent checkpoints of one log. Answers draw on the asker's answer budget
(``agent.protocol.budget``); a refused signature or consistency proof (403, 422) charges the
asker ``invalid``; an unknown origin (404) or a stale old size (409) charges nothing.

No I/O, no clock, no randomness: the time comes with each call (cosignature timestamps are its
seconds).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agent.gossip import wire
from agent.gossip.actions import (
    CheckpointCosigned,
    PrepareCheckpoint,
    StoreCheckpoint,
    StoreWitnessState,
)
from agent.gossip.context import Context
from agent.gossip.inputs import CheckpointPrepared, WitnessStateKnown
from ledger.checkpoint import (
    Checkpoint,
    device_verifier,
    fleet_label,
    parse_checkpoint,
    parse_device_origin,
)
from ledger.cosignature import CosignatureVerifier, Cosigner, witness_name
from ledger.errors import DecodeError, LedgerError, UsageError, VerificationError
from ledger.note import Note, parse_note
from ledger.witness import AddCheckpoint, Witness, WitnessConflictError, http_status
from ledger.witness import parse_add_checkpoint as parse_request

__all__ = ["WitnessConfig", "Witnessing"]

OK = 200
CONFLICT = 409
UNKNOWN_LOG = 404
FULL = 503


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    interval_ms: int = 30_000  # how often the own checkpoint is offered to witnesses (if moved)
    count: int = 3  # witnesses asked per round
    timeout_ms: int = 10_000  # an unanswered request is forgotten (the next round asks again)
    max_logs: int = 8_192  # origins this device keeps witness state for

    def __post_init__(self) -> None:
        for name in ("interval_ms", "count", "timeout_ms", "max_logs"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UsageError(
                    f"witness config {name}: expected a positive integer, found {value!r}"
                )


@dataclass(slots=True)
class _Asked:
    peer: str
    size: int
    deadline: int


class Witnessing:
    def __init__(self, ctx: Context, config: WitnessConfig | None = None) -> None:
        """``config`` None: this device answers as a witness but offers its own checkpoints
        to nobody (the runtime passes a config; simulations choose)."""
        self._ctx = ctx
        self.offering = config is not None
        self.config = config if config is not None else WitnessConfig()
        self._latest: dict[str, Checkpoint] = {}  # witness state, origin -> last cosigned
        # The first round falls at a point of the interval of this device's own (no randomness
        # drawn): devices started together do not all offer their checkpoints at once.
        spread = int.from_bytes(hashlib.sha256(ctx.device_id.encode()).digest()[:4], "big")
        self.next_round = ctx.now + self.config.interval_ms + spread % self.config.interval_ms
        self._note: Note | None = None  # the own checkpoint being cosigned, with its lines
        self._checkpoint: Checkpoint | None = None
        self._retry = False  # a witness answered 409: offer again even if the head did not move
        self._round: tuple[str, ...] = ()  # witnesses picked for the checkpoint being prepared
        self._peer_size: dict[str, tuple[int, int]] = {}  # witness -> (epoch, size it cosigned)
        self._asked: dict[int, _Asked] = {}
        self._next_id = 1

    # --- queries ------------------------------------------------------------------------------

    def deadline(self) -> int | None:
        # Called after every input (the node's next_deadline): the usual case is answered first.
        if not self._asked:
            return self.next_round if self.offering else None
        first = min(a.deadline for a in self._asked.values())
        return min(first, self.next_round) if self.offering else first

    def own_note(self) -> Note | None:
        """The own checkpoint note being cosigned, with the cosignatures verified so far."""
        return self._note

    def state(self) -> dict[str, Checkpoint]:
        return dict(self._latest)

    # --- log side -----------------------------------------------------------------------------

    def on_timer(self, restoring: bool) -> None:
        ctx = self._ctx
        for rid in [r for r, a in self._asked.items() if a.deadline <= ctx.now]:
            del self._asked[rid]
            ctx.counters["witness_unanswered"] += 1
        if not self.offering or ctx.now < self.next_round:
            return
        self.next_round = ctx.now + self.config.interval_ms
        chain = ctx.chains.get(ctx.device_id)
        head = None if chain is None else chain.head
        if head is None or restoring:
            return
        size = head.header.height + 1
        if self._checkpoint is not None and self._checkpoint.size >= size and not self._retry:
            return
        self._retry = False
        epoch = head.header.epoch
        sharing = ctx.sharing(ctx.device_id)
        candidates = [p for p in ctx.peers.available() if p in sharing]
        if not candidates:
            return
        me = ctx.device_id.encode()
        candidates.sort(key=lambda p: hashlib.sha256(me + p.encode()).digest())
        self._round = tuple(candidates[: self.config.count])
        fleet = self._fleet_of(ctx.device_id)
        if fleet is None:
            return
        olds = sorted({self._old_size(p, epoch) for p in self._round})
        ctx.out.append(PrepareCheckpoint(fleet, tuple(s for s in olds if 0 < s < size)))

    def _old_size(self, peer: str, epoch: int) -> int:
        known = self._peer_size.get(peer)
        return known[1] if known is not None and known[0] == epoch else 0

    def on_prepared(self, event: CheckpointPrepared) -> None:
        """The runtime signed the own checkpoint: send it to this round's witnesses."""
        ctx = self._ctx
        note = parse_note(event.note)  # our own runtime's bytes: a failure is a local bug
        cp = parse_checkpoint(note.text)
        epoch = parse_device_origin(cp.origin).epoch
        self._note, self._checkpoint = note, cp
        ctx.out.append(StoreCheckpoint(cp.origin, cp.size, event.note))
        proofs = dict(event.proofs)
        available = set(ctx.peers.available())
        for peer in self._round:
            old = self._old_size(peer, epoch)
            proof = () if old == 0 else proofs.get(old)
            if proof is None or old >= cp.size or peer not in available:
                continue
            rid = self._next_id
            self._next_id = rid % wire.MAX_REQUEST_ID + 1
            body = AddCheckpoint(old, proof, note).encode()
            if len(body) > wire.WITNESS_REQUEST_MAX:
                ctx.counters["witness_request_too_large"] += 1
                return
            self._asked[rid] = _Asked(peer, cp.size, ctx.now + self.config.timeout_ms)
            ctx.send(peer, wire.WitnessRequest(ctx.device_id, rid, body))
            ctx.counters["witness_requests_sent"] += 1

    def on_cosigned(self, peer: str, msg: wire.Cosigned) -> None:
        """A witness answered. Raises VerificationError (the caller charges ``invalid``) for a
        cosignature that does not verify, DecodeError for a body that does not parse."""
        ctx = self._ctx
        asked = self._asked.get(msg.request_id)
        if asked is None or asked.peer != peer:
            ctx.counters["witness_answers_unexpected"] += 1
            return
        del self._asked[msg.request_id]
        note, cp = self._note, self._checkpoint
        if note is None or cp is None or cp.size != asked.size:
            ctx.counters["witness_answers_stale"] += 1
            return
        epoch = parse_device_origin(cp.origin).epoch
        if msg.status == CONFLICT:
            size = _decimal(msg.body)
            self._peer_size[peer] = (epoch, size)
            ctx.counters["witness_conflicts"] += 1
            self._retry = True  # the next round asks it from that size, moved head or not
            return
        if msg.status != OK:
            ctx.counters[f"witness_refused_{msg.status}"] += 1
            return
        line = parse_note(note.text.encode() + b"\n" + msg.body).signatures
        if len(line) != 1:
            raise DecodeError("COSIGNED", "body: expected one cosignature line")
        sig = line[0]
        verifier = self._witness_verifier(peer)
        if verifier is None or (sig.name, sig.key_id) != (verifier.name, verifier.key_id):
            raise VerificationError(
                "COSIGNED: cosignature key",
                "" if verifier is None else f"{verifier.name}+{verifier.key_id:08x}",
                f"{sig.name}+{sig.key_id:08x}",
            )
        verifier.verify(note.text.encode(), sig.data)
        self._note = note = note.with_signature(sig)
        self._peer_size[peer] = (epoch, cp.size)
        cosigners = len(note.signatures) - 1
        ctx.counters["witness_cosignatures"] += 1
        ctx.out.append(StoreCheckpoint(cp.origin, cp.size, note.encode()))
        ctx.out.append(CheckpointCosigned(cp.origin, cp.size, peer, cosigners))

    def _witness_verifier(self, peer: str) -> CosignatureVerifier | None:
        keys = self._ctx.trust.keys(peer)
        if keys is None:
            return None
        fleet = self._fleet_of(peer)
        return (
            None
            if fleet is None
            else CosignatureVerifier(witness_name(fleet, peer), keys.spans[-1].key)
        )

    def _fleet_of(self, device: str) -> str | None:
        keys = self._ctx.trust.keys(device)
        if keys is None:
            return None
        root = self._ctx.roots.keys.get(keys.certificate.authority_key_id)
        return None if root is None else fleet_label(root)

    # --- witness side -------------------------------------------------------------------------

    def on_known(self, event: WitnessStateKnown) -> None:
        for origin, size, root in event.states:
            try:
                self._latest[origin] = Checkpoint(origin, size, root)
            except UsageError:
                self._ctx.counters["witness_state_unreadable"] += 1

    def on_request(self, peer: str, msg: wire.WitnessRequest) -> None:
        """Answer a peer's add-checkpoint request. Raises DecodeError for a malformed request
        (the caller charges ``malformed``) and VerificationError when the asker sent a bad
        signature or proof of its own log (after answering 403/422; the caller charges it)."""
        ctx = self._ctx
        request = parse_request(msg.body)
        cp = parse_checkpoint(request.note.text)
        try:
            log = parse_device_origin(cp.origin)
        except DecodeError:
            log = None
        keys = ctx.trust.keys(peer)
        fleet = self._fleet_of(peer)
        if log is None or log.device_id != peer or keys is None or log.fleet != fleet:
            self._answer(peer, msg.request_id, UNKNOWN_LOG, b"")
            ctx.counters["witness_unknown_log"] += 1
            return
        if cp.origin not in self._latest and len(self._latest) >= self.config.max_logs:
            self._answer(peer, msg.request_id, FULL, b"")
            ctx.counters["witness_full"] += 1
            return
        last = max(cp.size - 1, 0)
        try:
            key = keys.key_for(keys.key_at(last).key_id, last)  # revocations honoured
        except VerificationError as exc:
            self._answer(peer, msg.request_id, 403, b"")
            raise VerificationError(f"WITNESS: {exc}") from None
        latest = self._latest.get(cp.origin)
        own = ctx.trust.keys(ctx.device_id)
        my_fleet = self._fleet_of(ctx.device_id)
        if own is None or my_fleet is None:
            ctx.counters["witness_no_own_credentials"] += 1
            return
        cosigner = Cosigner(witness_name(my_fleet, ctx.device_id), ctx.signer.key)
        witness = Witness(
            cosigner,
            {cp.origin: device_verifier(cp.origin, key)},
            None if latest is None else {cp.origin: latest},
        )
        try:
            line = witness.add_checkpoint(request, ctx.now // 1000)
        except WitnessConflictError as exc:
            self._answer(peer, msg.request_id, CONFLICT, str(exc.latest_size).encode())
            ctx.counters["witness_conflicts_answered"] += 1
            return
        except LedgerError as exc:
            status = http_status(exc)
            self._answer(peer, msg.request_id, status, b"")
            ctx.counters[f"witness_refused_{status}_answered"] += 1
            if status in (403, 422):
                raise VerificationError(f"WITNESS: {exc}") from None
            raise DecodeError("WITNESS", str(exc)) from None
        payload = ctx.seal(wire.Cosigned(ctx.device_id, msg.request_id, OK, line.line().encode()))
        if not ctx.budget.allow(peer, len(payload), ctx.now):
            ctx.counters["answers_over_budget"] += 1
            return
        new = witness.state()[cp.origin]
        self._latest[cp.origin] = new
        ctx.counters["witness_cosigned"] += 1
        ctx.out.append(StoreWitnessState(cp.origin, new.size, new.root_hash, peer, payload))

    def _answer(self, peer: str, rid: int, status: int, body: bytes) -> None:
        self._ctx.answer(peer, wire.Cosigned(self._ctx.device_id, rid, status, body))


def _decimal(body: bytes) -> int:
    text = body.decode("ascii", "replace")
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or len(text) > 19:
        raise DecodeError("COSIGNED", f"body: expected a decimal size, found {text[:24]!r}")
    return int(text)
