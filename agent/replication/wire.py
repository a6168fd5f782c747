"""Replication wire format: the eight message types, canonical encoding and hard limits.

Same envelope as gossip (docs/PROTOCOL.md 12.1.1): the body is one canonical MessagePack array
``[version=2, type, sender_device_id, ...payload fields]``, sealed on the wire with the
authenticator of ``agent.protocol.auth`` (12.1.5). Replication owns the type numbers
32..63 (append-only), so a runtime routes a payload by its third byte (``is_replication_message``)
and the gossip decoder never sees these:

=====  =========  ================================================================================
type   name       payload fields after the sender
=====  =========  ================================================================================
32     STORE      ``request_id, block_wire, prev_header_wire | nil`` (owner -> holder)
33     RECEIPT    ``request_id, receipt_wire`` (holder -> owner; ledger.receipt)
34     REFUSE     ``request_id, reason, free_bytes`` (holder -> owner)
35     CHALLENGE  ``challenge_id, height, block_hash(32), nonce(16)`` (owner -> holder)
36     PROOF      ``challenge_id, answer`` (32 bytes, or empty: "I do not hold it")
37     RELEASE    ``height, block_hash(32)`` (owner -> holder: your copy is surplus)
38     SPACE      ``quota_bytes, free_bytes`` (holder -> its domains)
39     BUSY       ``challenge_id, retry_ms`` (holder -> owner: cannot answer that CHALLENGE now)
=====  =========  ================================================================================

Limits are chosen from the type byte before anything is decoded. ``decode`` raises
``ledger.errors.DecodeError`` only; ``encode`` raises ``UsageError`` for a message a peer would
refuse (a local bug).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from agent.protocol import auth, envelope
from ledger import codec, domains
from ledger.block import HASH_SIZE, MAX_BLOCK_BYTES
from ledger.errors import DecodeError, UsageError
from ledger.receipt import MAX_RECEIPT_WIRE

VERSION: Final = envelope.VERSION

STORE: Final = 32
RECEIPT: Final = 33
REFUSE: Final = 34
CHALLENGE: Final = 35
PROOF: Final = 36
RELEASE: Final = 37
SPACE: Final = 38
BUSY_MSG: Final = 39  # "BUSY" is the REFUSE reason 5; this is the message answering a CHALLENGE
FIRST_TYPE: Final = 32  # 32..63 belong to replication
LAST_TYPE: Final = 63

# REFUSE reasons (append-only).
FULL: Final = 1  # no room within the quota
INVALID: Final = 2  # the block or its link does not verify
CONFLICT: Final = 3  # another block is known at that height (a fork, or a bad owner)
UNKNOWN: Final = 4  # the owner's credentials are not known yet: cannot verify
BUSY: Final = 5  # too many writes pending; ask again later
REASONS: Final = {
    FULL: "full",
    INVALID: "invalid",
    CONFLICT: "conflict",
    UNKNOWN: "unknown",
    BUSY: "busy",
}

AUDIT: Final = domains.AUDIT  # domain of the audit answer hash

MAX_ID: Final = (1 << 32) - 1
MAX_RETRY_MS: Final = (1 << 32) - 1
MAX_HEIGHT: Final = (1 << 63) - 1
MAX_BYTES_FIELD: Final = (1 << 63) - 1
NONCE_SIZE: Final = 16
ANSWER_SIZE: Final = 32
HEADER_WIRE_MAX: Final = 272  # as gossip: header body <= 200 bytes + envelope framing
MAX_MESSAGE_BYTES: Final = 1 << 20  # the transports' payload limit
BLOCK_WIRE_MAX: Final = min(MAX_BLOCK_BYTES, MAX_MESSAGE_BYTES - 4096)

STORE_MAX_BYTES: Final = MAX_MESSAGE_BYTES - auth.TRAILER  # room for the authenticator
RECEIPT_MAX_BYTES: Final = 256
SMALL_MAX_BYTES: Final = 128  # REFUSE, CHALLENGE, PROOF, RELEASE, SPACE, BUSY

_LIMITS: Final[dict[int, codec.Limits]] = {
    STORE: codec.Limits(STORE_MAX_BYTES, 6, 26, BLOCK_WIRE_MAX, shape=(6,)),
    RECEIPT: codec.Limits(RECEIPT_MAX_BYTES, 5, 26, MAX_RECEIPT_WIRE, shape=(5,)),
    REFUSE: codec.Limits(SMALL_MAX_BYTES, 6, 26, 0, shape=(6,)),
    CHALLENGE: codec.Limits(SMALL_MAX_BYTES, 7, 26, HASH_SIZE, shape=(7,)),
    PROOF: codec.Limits(SMALL_MAX_BYTES, 5, 26, ANSWER_SIZE, shape=(5,)),
    RELEASE: codec.Limits(SMALL_MAX_BYTES, 5, 26, HASH_SIZE, shape=(5,)),
    SPACE: codec.Limits(SMALL_MAX_BYTES, 5, 26, 0, shape=(5,)),
    BUSY_MSG: codec.Limits(SMALL_MAX_BYTES, 5, 26, 0, shape=(5,)),
}
_FIELDS: Final = {
    STORE: 6,
    RECEIPT: 5,
    REFUSE: 6,
    CHALLENGE: 7,
    PROOF: 5,
    RELEASE: 5,
    SPACE: 5,
    BUSY_MSG: 5,
}
NAMES: Final = {
    STORE: "STORE",
    RECEIPT: "RECEIPT",
    REFUSE: "REFUSE",
    CHALLENGE: "CHALLENGE",
    PROOF: "PROOF",
    RELEASE: "RELEASE",
    SPACE: "SPACE",
    BUSY_MSG: "BUSY",
}


@dataclass(frozen=True, slots=True)
class Store:
    """Keep this block of mine. ``prev_header``: my header at height-1 (None at height 0), so
    the holder checks the chain link without any other state."""

    sender: str
    request_id: int
    block: bytes
    prev_header: bytes | None


@dataclass(frozen=True, slots=True)
class ReceiptMsg:
    sender: str
    request_id: int
    receipt: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    sender: str
    request_id: int
    reason: int
    free: int  # the holder's free bytes now (so the owner corrects what it believed)


@dataclass(frozen=True, slots=True)
class Challenge:
    sender: str
    challenge_id: int
    height: int
    block_hash: bytes
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    sender: str
    challenge_id: int
    answer: bytes  # 32 bytes, or empty: the holder does not hold the block


@dataclass(frozen=True, slots=True)
class Release:
    sender: str
    height: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class Space:
    sender: str
    quota: int
    free: int


@dataclass(frozen=True, slots=True)
class Busy:
    """I hold what CHALLENGE ``challenge_id`` asks about but cannot answer it in time (my loads
    or writes are queued up): ask again in about ``retry_ms``. Not a failure: an honest holder
    on a saturated machine says so instead of going silent."""

    sender: str
    challenge_id: int
    retry_ms: int


Message = Store | ReceiptMsg | Refuse | Challenge | Proof | Release | Space | Busy


def audit_answer(nonce: bytes, block_wire: bytes) -> bytes:
    """The only right PROOF for a CHALLENGE: ``SHA-256(AUDIT || nonce || block_wire)``."""
    return hashlib.sha256(AUDIT + nonce + block_wire).digest()


def is_replication_message(payload: bytes) -> bool:
    """True when ``payload`` looks like a replication envelope (types 32..63), judged from its
    first three bytes only: route it to the replication core (which still decodes it strictly)."""
    mtype = envelope.type_of(payload)
    return mtype is not None and FIRST_TYPE <= mtype <= LAST_TYPE


# --- decoding ---------------------------------------------------------------------------------


def decode(payload: bytes) -> Message:
    """Decode one replication message from untrusted bytes. Raises DecodeError only."""
    mtype = envelope.preamble(payload, "replication message", (5, 7), _LIMITS)
    what = NAMES[mtype]
    fields = codec.array(codec.decode(payload, _LIMITS[mtype], what), _FIELDS[mtype], what)
    return _parse(mtype, fields, what)


def _parse(mtype: int, f: list[Any], what: str) -> Message:
    sender = envelope.sender(f[2], what)
    if mtype == STORE:
        block = codec.bin_(f[4], what, "block", maximum=BLOCK_WIRE_MAX)
        if not block:
            raise DecodeError(what, "field block: expected a block wire, found 0 bytes")
        prev = (
            None if f[5] is None else codec.bin_(f[5], what, "prev_header", maximum=HEADER_WIRE_MAX)
        )
        return Store(sender, _id(f[3], what, "request_id"), block, prev)
    if mtype == RECEIPT:
        receipt = codec.bin_(f[4], what, "receipt", maximum=MAX_RECEIPT_WIRE)
        return ReceiptMsg(sender, _id(f[3], what, "request_id"), receipt)
    if mtype == REFUSE:
        reason = codec.uint(f[4], what, "reason", max(REASONS))
        if reason not in REASONS:
            raise DecodeError(what, f"field reason: expected one of {sorted(REASONS)}, found 0")
        free = codec.uint(f[5], what, "free", MAX_BYTES_FIELD)
        return Refuse(sender, _id(f[3], what, "request_id"), reason, free)
    if mtype == CHALLENGE:
        return Challenge(
            sender,
            _id(f[3], what, "challenge_id"),
            codec.uint(f[4], what, "height", MAX_HEIGHT),
            codec.bin_(f[5], what, "block_hash", size=HASH_SIZE),
            codec.bin_(f[6], what, "nonce", size=NONCE_SIZE),
        )
    if mtype == PROOF:
        answer = codec.bin_(f[4], what, "answer", maximum=ANSWER_SIZE)
        if len(answer) not in (0, ANSWER_SIZE):
            raise DecodeError(
                what, f"field answer: expected 0 or {ANSWER_SIZE} bytes, found {len(answer)}"
            )
        return Proof(sender, _id(f[3], what, "challenge_id"), answer)
    if mtype == BUSY_MSG:
        return Busy(
            sender,
            _id(f[3], what, "challenge_id"),
            codec.uint(f[4], what, "retry_ms", MAX_RETRY_MS),
        )
    if mtype == RELEASE:
        return Release(
            sender,
            codec.uint(f[3], what, "height", MAX_HEIGHT),
            codec.bin_(f[4], what, "block_hash", size=HASH_SIZE),
        )
    quota = codec.uint(f[3], what, "quota", MAX_BYTES_FIELD)
    free = codec.uint(f[4], what, "free", MAX_BYTES_FIELD)
    if free > quota:
        raise DecodeError(what, f"field free: at most the quota ({quota}), found {free}")
    return Space(sender, quota, free)


def _id(value: object, what: str, name: str) -> int:
    return codec.uint(value, what, name, MAX_ID)


# --- encoding ---------------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Canonical bytes of ``msg``. Raises UsageError if a peer would refuse the result."""
    mtype, fields = _fields(msg)
    what = NAMES[mtype]
    try:
        _parse(mtype, fields, what)
        data = codec.encode(fields)
    except (DecodeError, TypeError) as exc:
        raise UsageError(f"refusing to encode an invalid {what}: {exc}") from None
    if len(data) > _LIMITS[mtype].max_bytes:
        raise UsageError(
            f"{what} of {len(data)} bytes exceeds the limit of {_LIMITS[mtype].max_bytes}"
        )
    return data


def _fields(msg: Message) -> tuple[int, list[codec.Value]]:
    if isinstance(msg, Store):
        return STORE, [VERSION, STORE, msg.sender, msg.request_id, msg.block, msg.prev_header]
    if isinstance(msg, ReceiptMsg):
        return RECEIPT, [VERSION, RECEIPT, msg.sender, msg.request_id, msg.receipt]
    if isinstance(msg, Refuse):
        return REFUSE, [VERSION, REFUSE, msg.sender, msg.request_id, msg.reason, msg.free]
    if isinstance(msg, Challenge):
        return CHALLENGE, [
            VERSION,
            CHALLENGE,
            msg.sender,
            msg.challenge_id,
            msg.height,
            msg.block_hash,
            msg.nonce,
        ]
    if isinstance(msg, Proof):
        return PROOF, [VERSION, PROOF, msg.sender, msg.challenge_id, msg.answer]
    if isinstance(msg, Busy):
        return BUSY_MSG, [VERSION, BUSY_MSG, msg.sender, msg.challenge_id, msg.retry_ms]
    if isinstance(msg, Release):
        return RELEASE, [VERSION, RELEASE, msg.sender, msg.height, msg.block_hash]
    return SPACE, [VERSION, SPACE, msg.sender, msg.quota, msg.free]
