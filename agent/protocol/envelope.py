"""The envelope every protocol message shares (docs/PROTOCOL.md 12.1.1), and the checks every
core makes before it believes one.

A message is one canonical MessagePack array ``[version=1, type, sender_device_id, ...payload]``.
Gossip owns the type numbers 1..31, replication 32..63 (append-only), so a runtime routes a
payload by its third byte. This module owns the preamble (the first three bytes, read before any
decoding so a decoder picks the type's limits first), the sender field, and the attribution of a
decoded message to a peer (``open_envelope``). Each core's ``wire`` module owns its types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final, Protocol, TypeVar

from ledger import codec
from ledger.errors import DecodeError
from ledger.identity import is_device_id

VERSION: Final = 1
_ARRAY: Final = 0x90  # a fixarray of n fields is the byte 0x90 + n


def preamble(
    payload: object, what: str, fields: tuple[int, int], types: Mapping[int, object]
) -> int:
    """The type of an envelope of ``fields`` (least, most) fields whose type is one of ``types``.
    Raises DecodeError (saying what was expected and what was found) and nothing else."""
    if not isinstance(payload, bytes):
        raise DecodeError(what, f"expected bytes, found {type(payload).__name__}")
    lo, hi = fields
    if len(payload) < 3 or not _ARRAY + lo <= payload[0] <= _ARRAY + hi:
        raise DecodeError(
            what,
            f"expected a canonical envelope array of {lo}..{hi} fields, found "
            f"{payload[:1].hex() or 'nothing'}",
        )
    if payload[1] != VERSION:
        raise DecodeError(what, f"field version: expected {VERSION}, found byte {payload[1]:#04x}")
    mtype = payload[2]
    if mtype not in types:
        raise DecodeError(
            what, f"field type: expected one of {min(types)}..{max(types)}, found byte {mtype:#04x}"
        )
    return mtype


def type_of(payload: bytes) -> int | None:
    """The type byte of what looks like an envelope (judged from its first three bytes only), or
    None: enough to route a payload to its core, which still decodes it strictly."""
    if len(payload) >= 3 and _ARRAY + 4 <= payload[0] <= _ARRAY + 15 and payload[1] == VERSION:
        return payload[2]
    return None


def sender(value: object, what: str) -> str:
    """The sender field: a device id."""
    return codec.text(value, what, "sender", 26, is_device_id)


class Message(Protocol):
    @property
    def sender(self) -> str: ...


M = TypeVar("M", bound=Message)


def open_envelope(
    claimed: str | None,
    payload: bytes,
    decode: Callable[[bytes], M],
    counters: Counter[str],
    blame: Callable[[str, str], None],
) -> tuple[str, M] | None:
    """Decode untrusted ``payload`` and name the peer who answers for it, or None when it is
    dropped. ``claimed``: the sender as the transport knows it (None: only the message's own
    sender field names it, and then a message that does not decode blames nobody: it is counted
    as ``malformed_unattributed``). ``blame(peer, offence)`` is called with ``"malformed"`` (the
    bytes do not decode) or ``"sender_mismatch"`` (the sender field is not the transport's
    sender); the core decides what each costs."""
    try:
        msg = decode(payload)
    except DecodeError:
        if claimed is None:
            counters["malformed_unattributed"] += 1
        else:
            blame(claimed, "malformed")
        return None
    peer = msg.sender if claimed is None else claimed
    if msg.sender != peer:
        blame(peer, "sender_mismatch")
        return None
    return peer, msg
