"""Gossip wire format: the nine message types, their canonical encoding and their hard limits.

Every message body is one canonical MessagePack array (ledger.codec rules: arrays, uints, strings
and byte strings only; shortest forms; nothing trailing), the **envelope**
``[version=2, type, sender_device_id, ...payload fields]``; on the wire it carries one more field,
the authenticator (``agent.protocol.auth``), which is checked and removed before ``decode`` sees
the body. Type numbers are append-only:

=====  =========  ================================================================================
type   name       payload fields after the sender
=====  =========  ================================================================================
1      ANNOUNCE   ``[header_wire...]`` (1..16 signed headers, ascending height per device)
2      SUMMARY    ``reply (0|1), [[device_id, epoch, height, head_hash]...]`` (sorted, unique ids)
3      REQUEST    ``request_id, device_id, from_height, to_height, flags`` (bit 0 bodies,
                  bit 1 credentials; at most 256 heights)
4      RESPONSE   ``request_id, device_id, [cert], [rotation...], [revocation...], [header...],
                  [block...]``
5      EVIDENCE   ``evidence_wire`` (ledger.evidence fork evidence)
6      CERTS      ``[cert...], [rotation...], [revocation...]``
7      EPOCHS     ``[epoch_record...]`` (1..16 signed epoch records, ledger.epoch, any devices)
8      WITNESS    ``request_id, add_checkpoint`` (a C2SP tlog-witness add-checkpoint request body,
                  gossip/witness.py)
9      COSIGNED   ``request_id, status, body`` (the tlog-witness answer: HTTP status code, and the
                  cosignature line (200) or the witness's latest size in decimal (409))
=====  =========  ================================================================================

Signed structures travel as the exact bytes their signers produced (``bin``); this module checks
only their size, the node verifies them. Limits are chosen per type before decoding: the third
byte of a canonical envelope is the type (``9x 01 tt``), so the decoder picks the type's limits
first and never allocates more than they allow. docs/PROTOCOL.md (section 12) is the
byte-exact reference.

``decode`` raises ``ledger.errors.DecodeError`` and nothing else; ``encode`` raises
``ledger.errors.UsageError`` when asked to build a message a peer would reject (a local bug).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.protocol import auth, envelope
from ledger import codec
from ledger.block import MAX_BLOCK_BYTES
from ledger.errors import DecodeError, UsageError
from ledger.identity import is_device_id
from ledger.reading import MAX_EPOCH

VERSION: Final = envelope.VERSION

ANNOUNCE: Final = 1
SUMMARY: Final = 2
REQUEST: Final = 3
RESPONSE: Final = 4
EVIDENCE: Final = 5
CERTS: Final = 6
EPOCHS: Final = 7
WITNESS: Final = 8
COSIGNED: Final = 9

FLAG_BODIES: Final = 1
FLAG_CREDENTIALS: Final = 2
_KNOWN_FLAGS: Final = FLAG_BODIES | FLAG_CREDENTIALS

MAX_HEIGHT: Final = (1 << 63) - 1
MAX_REQUEST_ID: Final = (1 << 32) - 1
HASH_SIZE: Final = 32

# Sizes of the signed structures carried inside messages (envelope overhead included).
HEADER_WIRE_MAX: Final = 272  # header body <= 200 bytes + [bin, bin(64)] framing
CERT_WIRE_MAX: Final = 472  # certificate body <= 400 bytes + framing
ROTATION_WIRE_MAX: Final = 512
REVOCATION_WIRE_MAX: Final = 328  # revocation body <= 256 bytes + framing
EVIDENCE_WIRE_MAX: Final = 4096
EPOCH_WIRE_MAX: Final = 200  # epoch record body <= 128 bytes + framing (ledger.epoch.MAX_WIRE)
MAX_MESSAGE_BYTES: Final = 1 << 20  # 1 MiB: the transports' default payload limit
# A block body travels in a RESPONSE only if it fits one message: bodies of up to ~2,500
# one-reading-sized readings. Larger blocks (ledger allows up to MAX_BLOCK_BYTES) never do.
BLOCK_WIRE_MAX: Final = min(MAX_BLOCK_BYTES, MAX_MESSAGE_BYTES - 4096)

# Counts per message.
MAX_ANNOUNCE_HEADERS: Final = 16
MAX_SUMMARY_ENTRIES: Final = 1024
MAX_RANGE: Final = 256  # heights per REQUEST, headers per RESPONSE
MAX_RESPONSE_BLOCKS: Final = 16
MAX_RESPONSE_ROTATIONS: Final = 16
MAX_RESPONSE_REVOCATIONS: Final = 16
MAX_CERTS_ITEMS: Final = 32  # per list in a CERTS message
MAX_EPOCH_RECORDS: Final = 16  # per EPOCHS message

# Total message sizes.
ANNOUNCE_MAX_BYTES: Final = 8192
SUMMARY_MAX_BYTES: Final = 98_304
REQUEST_MAX_BYTES: Final = 128
# Room for the authenticator (agent.protocol.auth) a message carries on the wire.
RESPONSE_MAX_BYTES: Final = MAX_MESSAGE_BYTES - auth.TRAILER
EVIDENCE_MAX_BYTES: Final = EVIDENCE_WIRE_MAX + 64
CERTS_MAX_BYTES: Final = 65_536
EPOCHS_MAX_BYTES: Final = 4_096
WITNESS_REQUEST_MAX: Final = 4_096  # an add-checkpoint body: old size, proof, one signed note
COSIGNED_BODY_MAX: Final = 512  # a cosignature line, or a decimal size
WITNESS_MAX_BYTES: Final = WITNESS_REQUEST_MAX + 64
COSIGNED_MAX_BYTES: Final = COSIGNED_BODY_MAX + 64

# Per type: total bytes, longest array, string and byte string, and the array shape by depth
# (the envelope, then the lists inside it, then SUMMARY entries): nothing nests deeper.
_LIMITS: Final[dict[int, codec.Limits]] = {
    ANNOUNCE: codec.Limits(
        ANNOUNCE_MAX_BYTES,
        MAX_ANNOUNCE_HEADERS,
        26,
        HEADER_WIRE_MAX,
        shape=(4, MAX_ANNOUNCE_HEADERS),
    ),
    SUMMARY: codec.Limits(
        SUMMARY_MAX_BYTES, MAX_SUMMARY_ENTRIES, 26, HASH_SIZE, shape=(5, MAX_SUMMARY_ENTRIES, 4)
    ),
    REQUEST: codec.Limits(REQUEST_MAX_BYTES, 8, 26, 0, shape=(8,)),
    RESPONSE: codec.Limits(
        RESPONSE_MAX_BYTES, MAX_RANGE, 26, BLOCK_WIRE_MAX, shape=(10, MAX_RANGE)
    ),
    EVIDENCE: codec.Limits(EVIDENCE_MAX_BYTES, 4, 26, EVIDENCE_WIRE_MAX, shape=(4,)),
    CERTS: codec.Limits(
        CERTS_MAX_BYTES, MAX_CERTS_ITEMS, 26, ROTATION_WIRE_MAX, shape=(6, MAX_CERTS_ITEMS)
    ),
    EPOCHS: codec.Limits(
        EPOCHS_MAX_BYTES, MAX_EPOCH_RECORDS, 26, EPOCH_WIRE_MAX, shape=(4, MAX_EPOCH_RECORDS)
    ),
    WITNESS: codec.Limits(WITNESS_MAX_BYTES, 5, 26, WITNESS_REQUEST_MAX, shape=(5,)),
    COSIGNED: codec.Limits(COSIGNED_MAX_BYTES, 6, 26, COSIGNED_BODY_MAX, shape=(6,)),
}
_FIELDS: Final = {
    ANNOUNCE: 4,
    SUMMARY: 5,
    REQUEST: 8,
    RESPONSE: 10,
    EVIDENCE: 4,
    CERTS: 6,
    EPOCHS: 4,
    WITNESS: 5,
    COSIGNED: 6,
}
NAMES: Final = {
    ANNOUNCE: "ANNOUNCE",
    SUMMARY: "SUMMARY",
    REQUEST: "REQUEST",
    RESPONSE: "RESPONSE",
    EVIDENCE: "EVIDENCE",
    CERTS: "CERTS",
    EPOCHS: "EPOCHS",
    WITNESS: "WITNESS",
    COSIGNED: "COSIGNED",
}


@dataclass(frozen=True, slots=True)
class Announce:
    sender: str
    headers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SummaryEntry:
    """One device as the sender holds it. ``head_hash`` all zero: the sender holds fork evidence."""

    device_id: str
    epoch: int
    height: int
    head_hash: bytes


FORKED_MARK: Final = bytes(HASH_SIZE)


@dataclass(frozen=True, slots=True)
class Summary:
    sender: str
    reply: bool  # True: the receiver answers with its own summary (reply False)
    entries: tuple[SummaryEntry, ...]


@dataclass(frozen=True, slots=True)
class Request:
    sender: str
    request_id: int
    device_id: str
    from_height: int
    to_height: int
    flags: int

    @property
    def bodies(self) -> bool:
        return bool(self.flags & FLAG_BODIES)

    @property
    def credentials(self) -> bool:
        return bool(self.flags & FLAG_CREDENTIALS)


@dataclass(frozen=True, slots=True)
class Response:
    sender: str
    request_id: int
    device_id: str
    certificates: tuple[bytes, ...]
    rotations: tuple[bytes, ...]
    revocations: tuple[bytes, ...]
    headers: tuple[bytes, ...]
    blocks: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class EvidenceMessage:
    sender: str
    evidence: bytes


@dataclass(frozen=True, slots=True)
class Certs:
    sender: str
    certificates: tuple[bytes, ...]
    rotations: tuple[bytes, ...]
    revocations: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Epochs:
    """Signed epoch records (ledger.epoch) of any devices, verified by the receiver."""

    sender: str
    records: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class WitnessRequest:
    """Cosign my checkpoint: a C2SP tlog-witness add-checkpoint body (parsed by gossip/witness)."""

    sender: str
    request_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Cosigned:
    """The witness's answer to ``request_id``: a tlog-witness status and body."""

    sender: str
    request_id: int
    status: int
    body: bytes


Message = (
    Announce
    | Summary
    | Request
    | Response
    | EvidenceMessage
    | Certs
    | Epochs
    | WitnessRequest
    | Cosigned
)


# --- decoding ---------------------------------------------------------------------------------


def decode(payload: bytes) -> Message:
    """Decode one gossip message from untrusted bytes. Raises DecodeError only."""
    mtype = envelope.preamble(payload, "gossip message", (4, 10), _LIMITS)
    if mtype == ANNOUNCE:
        held = _ANNOUNCED.get(payload)
        if held is not None:
            return held
    what = NAMES[mtype]
    fields = codec.array(codec.decode(payload, _LIMITS[mtype], what), _FIELDS[mtype], what)
    msg = _parse(mtype, fields, what)
    if mtype == ANNOUNCE:
        _remember(payload, msg)
    return msg


# Announcements decoded in this process, by their bytes: one broadcast reaches every device of
# its domain that the process runs, and decoding is a pure function of the bytes (the messages
# are immutable). Bounded, oldest first; only announcements (small, and the ones shared).
_ANNOUNCED: dict[bytes, Message] = {}
_ANNOUNCED_MAX = 1_024


def _remember(payload: bytes, msg: Message) -> None:
    """Decoders may run on several threads (store workers) but the core takes no lock: each step
    here is one dict operation, atomic on its own, and a race between two of them costs at most
    an entry evicted early or one too many until the next insert (a cache, never the truth)."""
    _ANNOUNCED[payload] = msg
    while len(_ANNOUNCED) > _ANNOUNCED_MAX:
        try:
            _ANNOUNCED.pop(next(iter(_ANNOUNCED)), None)
        except (StopIteration, RuntimeError):  # emptied or changed by another thread meanwhile
            break


def _parse(mtype: int, f: list[Any], what: str) -> Message:
    sender = envelope.sender(f[2], what)
    if mtype == ANNOUNCE:
        headers = _bins(f[3], what, "headers", MAX_ANNOUNCE_HEADERS, HEADER_WIRE_MAX)
        if not headers:
            raise DecodeError(what, "field headers: expected 1..16 headers, found none")
        return Announce(sender, headers)
    if mtype == SUMMARY:
        reply = codec.uint(f[3], what, "reply", 1) == 1
        return Summary(sender, reply, _entries(f[4], what))
    if mtype == REQUEST:
        rid = codec.uint(f[3], what, "request_id", MAX_REQUEST_ID)
        device = _device(f[4], what, "device_id")
        lo = codec.uint(f[5], what, "from_height", MAX_HEIGHT)
        hi = codec.uint(f[6], what, "to_height", MAX_HEIGHT)
        if not lo <= hi < lo + MAX_RANGE:
            raise DecodeError(
                what,
                f"fields from_height..to_height: expected 1..{MAX_RANGE} heights, found {lo}..{hi}",
            )
        flags = codec.uint(f[7], what, "flags", _KNOWN_FLAGS)
        return Request(sender, rid, device, lo, hi, flags)
    if mtype == RESPONSE:
        return Response(
            sender,
            codec.uint(f[3], what, "request_id", MAX_REQUEST_ID),
            _device(f[4], what, "device_id"),
            _bins(f[5], what, "certificates", 1, CERT_WIRE_MAX),
            _bins(f[6], what, "rotations", MAX_RESPONSE_ROTATIONS, ROTATION_WIRE_MAX),
            _bins(f[7], what, "revocations", MAX_RESPONSE_REVOCATIONS, REVOCATION_WIRE_MAX),
            _bins(f[8], what, "headers", MAX_RANGE, HEADER_WIRE_MAX),
            _bins(f[9], what, "blocks", MAX_RESPONSE_BLOCKS, BLOCK_WIRE_MAX),
        )
    if mtype == EVIDENCE:
        return EvidenceMessage(
            sender, codec.bin_(f[3], what, "evidence", maximum=EVIDENCE_WIRE_MAX)
        )
    if mtype == WITNESS:
        rid = codec.uint(f[3], what, "request_id", MAX_REQUEST_ID)
        return WitnessRequest(
            sender, rid, codec.bin_(f[4], what, "body", maximum=WITNESS_REQUEST_MAX)
        )
    if mtype == COSIGNED:
        rid = codec.uint(f[3], what, "request_id", MAX_REQUEST_ID)
        status = codec.uint(f[4], what, "status", 599)
        if status < 100:
            raise DecodeError(
                what, f"field status: expected an HTTP status 100..599, found {status}"
            )
        return Cosigned(
            sender, rid, status, codec.bin_(f[5], what, "body", maximum=COSIGNED_BODY_MAX)
        )
    if mtype == EPOCHS:
        records = _bins(f[3], what, "records", MAX_EPOCH_RECORDS, EPOCH_WIRE_MAX)
        if not records:
            raise DecodeError(what, f"field records: expected 1..{MAX_EPOCH_RECORDS}, found none")
        return Epochs(sender, records)
    return Certs(
        sender,
        _bins(f[3], what, "certificates", MAX_CERTS_ITEMS, CERT_WIRE_MAX),
        _bins(f[4], what, "rotations", MAX_CERTS_ITEMS, ROTATION_WIRE_MAX),
        _bins(f[5], what, "revocations", MAX_CERTS_ITEMS, REVOCATION_WIRE_MAX),
    )


def _device(value: object, what: str, name: str) -> str:
    return codec.text(value, what, name, 26, is_device_id)


def _bins(value: object, what: str, name: str, count: int, size: int) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise DecodeError(what, f"field {name}: expected an array, found {type(value).__name__}")
    if len(value) > count:
        raise DecodeError(what, f"field {name}: at most {count} items, found {len(value)}")
    return tuple(codec.bin_(v, what, name, maximum=size) for v in value)


# Device ids already found valid in a summary entry (bounded): a device decodes a few SUMMARY
# messages a second, each of up to MAX_SUMMARY_ENTRIES entries naming the same few dozen ids.
_VALID_IDS: set[str] = set()
_VALID_IDS_MAX = 65_536


def _known_id(value: str) -> bool:
    if value in _VALID_IDS:
        return True
    if len(value) > 26 or not is_device_id(value):
        return False
    if len(_VALID_IDS) >= _VALID_IDS_MAX:
        _VALID_IDS.clear()
    _VALID_IDS.add(value)
    return True


def _entries(value: object, what: str) -> tuple[SummaryEntry, ...]:
    if not isinstance(value, list):
        raise DecodeError(what, f"field entries: expected an array, found {type(value).__name__}")
    entries: list[SummaryEntry] = []
    prev = ""
    for item in value:
        # The common case, checked inline: the same rules as the full checks below, which run
        # for anything else and raise the precise error.
        if type(item) is list and len(item) == 4:
            dev, epoch, height, head = item
            if (
                type(dev) is str
                and dev > prev
                and type(epoch) is int
                and 0 <= epoch <= MAX_EPOCH
                and type(height) is int
                and 0 <= height <= MAX_HEIGHT
                and type(head) is bytes
                and len(head) == HASH_SIZE
                and _known_id(dev)
            ):
                entries.append(SummaryEntry(dev, epoch, height, head))
                prev = dev
                continue
        e = codec.array(item, 4, f"{what} entry")
        entry = SummaryEntry(
            _device(e[0], what, "entry device_id"),
            codec.uint(e[1], what, "entry epoch", MAX_EPOCH),
            codec.uint(e[2], what, "entry height", MAX_HEIGHT),
            codec.bin_(e[3], what, "entry head_hash", size=HASH_SIZE),
        )
        if entries and entries[-1].device_id >= entry.device_id:
            raise DecodeError(
                what,
                "field entries: device ids must be strictly ascending, found "
                f"{entry.device_id} after {entries[-1].device_id}",
            )
        entries.append(entry)
        prev = entry.device_id
    return tuple(entries)


# --- encoding ---------------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Canonical bytes of ``msg``. Raises UsageError if a peer would refuse the result."""
    mtype, fields = _fields(msg)
    what = NAMES[mtype]
    try:
        _parse(mtype, fields, what)
    except DecodeError as exc:
        raise UsageError(f"refusing to encode an invalid {what}: {exc}") from None
    data = codec.encode_trusted(fields)  # _parse checked every field's type and bounds
    if len(data) > _LIMITS[mtype].max_bytes:
        raise UsageError(
            f"{what} of {len(data)} bytes exceeds the limit of {_LIMITS[mtype].max_bytes}"
        )
    return data


def _fields(msg: Message) -> tuple[int, list[codec.Value]]:
    head: list[codec.Value]
    if isinstance(msg, Announce):
        return ANNOUNCE, [VERSION, ANNOUNCE, msg.sender, list(msg.headers)]
    if isinstance(msg, Summary):
        entries: list[codec.Value] = [
            [e.device_id, e.epoch, e.height, e.head_hash] for e in msg.entries
        ]
        return SUMMARY, [VERSION, SUMMARY, msg.sender, int(msg.reply), entries]
    if isinstance(msg, Request):
        return REQUEST, [
            VERSION,
            REQUEST,
            msg.sender,
            msg.request_id,
            msg.device_id,
            msg.from_height,
            msg.to_height,
            msg.flags,
        ]
    if isinstance(msg, Response):
        head = [VERSION, RESPONSE, msg.sender, msg.request_id, msg.device_id]
        return RESPONSE, [
            *head,
            list(msg.certificates),
            list(msg.rotations),
            list(msg.revocations),
            list(msg.headers),
            list(msg.blocks),
        ]
    if isinstance(msg, EvidenceMessage):
        return EVIDENCE, [VERSION, EVIDENCE, msg.sender, msg.evidence]
    if isinstance(msg, Epochs):
        return EPOCHS, [VERSION, EPOCHS, msg.sender, list(msg.records)]
    if isinstance(msg, WitnessRequest):
        return WITNESS, [VERSION, WITNESS, msg.sender, msg.request_id, msg.body]
    if isinstance(msg, Cosigned):
        return COSIGNED, [VERSION, COSIGNED, msg.sender, msg.request_id, msg.status, msg.body]
    head = [VERSION, CERTS, msg.sender]
    return CERTS, [*head, list(msg.certificates), list(msg.rotations), list(msg.revocations)]


def fit_blocks(
    blocks: Sequence[bytes], budget: int, count: int = MAX_RESPONSE_BLOCKS
) -> tuple[bytes, ...]:
    """At most ``count`` of ``blocks``, in order, whose encoded sizes fit ``budget`` bytes; a
    block that does not fit is skipped (the receiver asks again for what it still misses)."""
    kept: list[bytes] = []
    used = 0
    for b in blocks:
        cost = len(b) + 5  # bin32 framing at most
        if used + cost > budget or len(b) > BLOCK_WIRE_MAX:
            continue
        kept.append(b)
        used += cost
        if len(kept) == count:
            break
    return tuple(kept)


def response_budget(
    headers: Sequence[bytes],
    certs: Sequence[bytes],
    rotations: Sequence[bytes],
    revocations: Sequence[bytes],
) -> int:
    """Bytes left for block wires in a RESPONSE that already carries the given items."""
    used = 128 + sum(len(x) + 5 for seq in (headers, certs, rotations, revocations) for x in seq)
    return max(0, RESPONSE_MAX_BYTES - used)
