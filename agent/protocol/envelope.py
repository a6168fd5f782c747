"""The envelope every protocol message shares (docs/PROTOCOL.md 12.1.1), and the checks every
core makes before it believes one.

A message body is one canonical MessagePack array ``[version=2, type, sender_device_id,
...payload]``; on the wire it carries one more field, the authenticator (``auth``, 12.1.5).
Gossip owns the type numbers 1..31, replication 32..63 (append-only), so a runtime routes a
payload by its third byte. This module owns the preamble (the first three bytes, read before any
decoding so a decoder picks the type's limits first), and the sender field; ``auth`` owns the
authenticator and the one way a core turns network bytes into a message with a proven sender
(``auth.open_envelope``). Each core's ``wire`` module owns its types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ledger import codec
from ledger.errors import DecodeError
from ledger.identity import is_device_id

VERSION: Final = 2
OLD_VERSIONS: Final = frozenset({1})  # refused with the counted reason ``old_version``
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
    None: enough to route a payload to its core, which still authenticates and decodes it
    strictly. Old versions route too, so the core that owns the type counts them refused."""
    if (
        len(payload) >= 3
        and _ARRAY + 4 <= payload[0] <= _ARRAY + 15
        and (payload[1] == VERSION or payload[1] in OLD_VERSIONS)
    ):
        return payload[2]
    return None


def sender(value: object, what: str) -> str:
    """The sender field: a device id."""
    return codec.text(value, what, "sender", 26, is_device_id)
