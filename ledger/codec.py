"""Canonical MessagePack: the only way ledger structures become bytes and bytes become values.

Canonical form (docs/PROTOCOL.md, "Encoding"): arrays only (no maps, floats or extension types);
integers, strings, byte strings and arrays in their shortest MessagePack form; nil and booleans as
usual. Encoding with ``msgpack.packb(obj, use_bin_type=True)`` yields exactly that form, so a
decoded value is canonical iff re-encoding it gives back the input bytes.

Untrusted bytes are decoded with explicit limits (``Limits``) sized to the schema: the total size,
and the longest array, string and byte string. The C decoder refuses a declared length above the
limit before allocating, so a crafted "bomb" costs at most the limits, never the declared size.
Nesting is bounded by the decoder's fixed stack and then by the schema checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from ledger.errors import DecodeError

Value = int | bytes | str | None | bool | list[Any]


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds for decoding one structure. Every field is a hard limit."""

    max_bytes: int
    max_array: int
    max_str: int
    max_bin: int
    # Per-depth bound on array lengths (outermost first); deeper nesting is refused. Inputs over
    # 512 bytes that nest must declare it; None means one level of at most ``max_array``.
    shape: tuple[int, ...] | None = None


def _no_ext(code: int, data: bytes) -> NoReturn:
    raise DecodeError("msgpack", f"extension type {code} is not allowed")


_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes msgpack's ExtraData, FormatError, StackError, UnicodeDecodeError
    TypeError,
    OverflowError,
    msgpack.UnpackException,
)


def encode(obj: Value) -> bytes:
    """Encode a value in canonical form. Floats and maps are refused (a local bug if they occur)."""
    _check_encodable(obj)
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def encode_trusted(obj: Value) -> bytes:
    """Encode fields already validated by a constructor (the hot path skips the type walk)."""
    return _packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


_packb = msgpack.packb


def _check_encodable(obj: object) -> None:
    if isinstance(obj, list):
        for item in obj:
            _check_encodable(item)
    elif not (obj is None or isinstance(obj, int | bytes | str)):
        raise TypeError(f"canonical encoding has no form for {type(obj).__name__}")


def decode(data: bytes, limits: Limits, what: str) -> Any:
    """Decode untrusted ``data`` under ``limits``; raise DecodeError for anything but canonical."""
    if not isinstance(data, bytes):
        raise DecodeError(what, f"expected bytes, found {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise DecodeError(what, f"{len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if len(data) > _SHAPE_WALK_MIN:
        _check_shape(data, limits.shape or (limits.max_array,), what)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bin,
            max_array_len=limits.max_array,
            max_map_len=0,
            max_ext_len=0,
            ext_hook=_no_ext,
            timestamp=0,
        )
    except DecodeError:
        raise
    except _DECODE_ERRORS as exc:
        raise DecodeError(what, f"not valid MessagePack within limits ({exc})") from None
    try:
        again = msgpack.packb(obj, use_bin_type=True, buf_size=len(data) + 16)
    except (TypeError, ValueError, OverflowError) as exc:  # floats, etc. fail the schema below
        raise DecodeError(what, f"value not encodable canonically ({exc})") from None
    if again != data:
        raise DecodeError(what, "non-canonical encoding (" + _diff(data, again))
    try:
        _check_encodable(obj)  # floats and empty maps re-encode identically: refuse them here
    except TypeError as exc:
        raise DecodeError(what, str(exc)) from None
    return obj


# Inputs up to this size decode without the header walk: msgpack's own limits then bound the
# worst case (nested arrays) to well under 64 KiB, and the hot paths (readings, headers,
# certificates) stay fast. Larger inputs are walked first, without building any value, so a
# declared length can never exceed the bytes that follow nor the schema's shape.
_SHAPE_WALK_MIN = 512

_FIXED = {
    0xC0: 0,
    0xC2: 0,
    0xC3: 0,
    0xCA: 4,
    0xCB: 8,
    0xCC: 1,
    0xCD: 2,
    0xCE: 4,
    0xCF: 8,
    0xD0: 1,
    0xD1: 2,
    0xD2: 4,
    0xD3: 8,
    0xD4: 2,
    0xD5: 3,
    0xD6: 5,
    0xD7: 9,
    0xD8: 17,
}
_SIZED = {
    0xC4: (1, 0),
    0xC5: (2, 0),
    0xC6: (4, 0),
    0xD9: (1, 0),
    0xDA: (2, 0),
    0xDB: (4, 0),
    0xC7: (1, 1),
    0xC8: (2, 1),
    0xC9: (4, 1),
}


def _check_shape(data: bytes, shape: tuple[int, ...], what: str) -> None:
    n = len(data)
    pos = 0
    stack: list[int] = []
    expected = 1
    while expected:
        if pos >= n:
            return
        depth = len(stack)
        b = data[pos]
        pos += 1
        expected -= 1
        if stack:
            stack[-1] -= 1
        count = -1
        if b <= 0x7F or b >= 0xE0:
            pass
        elif b <= 0x8F:
            count = 2 * (b & 0x0F)
        elif b <= 0x9F:
            count = b & 0x0F
        elif b <= 0xBF:
            pos += b & 0x1F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            k, extra = _SIZED[b]
            pos += k + extra + int.from_bytes(data[pos : pos + k], "big")
        elif b in (0xDC, 0xDD, 0xDE, 0xDF):
            k = 2 if b in (0xDC, 0xDE) else 4
            count = int.from_bytes(data[pos : pos + k], "big") * (2 if b >= 0xDE else 1)
            pos += k
        else:
            return
        if count >= 0:
            if depth >= len(shape):
                raise DecodeError(what, f"nesting deeper than {len(shape)}")
            if count > shape[depth]:
                raise DecodeError(
                    what, f"array of {count} at depth {depth + 1} exceeds {shape[depth]}"
                )
            expected += count
            if expected > n - pos:
                raise DecodeError(
                    what, f"{expected} values declared, {max(n - pos, 0)} bytes follow"
                )
            stack.append(count)
        while stack and stack[-1] == 0:
            stack.pop()


def first_bin(data: bytes, what: str) -> bytes:
    """The byte string that opens the array ``data``, read from the MessagePack headers alone:
    the elements after it are neither decoded nor checked. For bytes this process stored (the
    header of a stored block wire ``[header, [reading...]]``); decode what it returns as usual.
    Raises DecodeError when ``data`` does not open with an array whose first element is bytes."""
    n = len(data)
    b = data[0] if n else -1
    if 0x91 <= b <= 0x9F:
        pos = 1
    elif b in (0xDC, 0xDD) and int.from_bytes(data[1 : 3 if b == 0xDC else 5], "big") > 0:
        pos = 3 if b == 0xDC else 5
    else:
        raise DecodeError(what, "expected a non-empty array")
    b = data[pos] if pos < n else -1
    k = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(b)
    if k is None:
        raise DecodeError(what, "expected a byte string first")
    start = pos + 1 + k
    end = start + int.from_bytes(data[pos + 1 : start], "big")
    if start > n or end > n:
        raise DecodeError(what, f"byte string ends at byte {end}, found {n} bytes")
    return data[start:end]


def _diff(data: bytes, again: bytes) -> str:
    n = next((i for i, (a, b) in enumerate(zip(data, again, strict=False)) if a != b), None)
    if n is None:
        n = min(len(data), len(again))
    return f"first difference at byte {n}; {len(data)} bytes given, {len(again)} canonical)"


# --- schema helpers: each raises DecodeError naming the structure and the field -------------


def array(obj: Any, n: int, what: str) -> list[Any]:
    if not isinstance(obj, list):
        raise DecodeError(what, f"expected an array of {n}, found {type(obj).__name__}")
    if len(obj) != n:
        raise DecodeError(what, f"expected an array of {n} fields, found {len(obj)}")
    return obj


def uint(obj: Any, what: str, field: str, maximum: int = (1 << 63) - 1) -> int:
    if type(obj) is not int or not 0 <= obj <= maximum:
        raise DecodeError(
            what, f"field {field}: expected an integer in 0..{maximum}, found {_brief(obj)}"
        )
    return obj


def sint(obj: Any, what: str, field: str) -> int:
    if type(obj) is not int or not -(1 << 63) <= obj < (1 << 63):
        raise DecodeError(
            what, f"field {field}: expected a signed 64-bit integer, found {_brief(obj)}"
        )
    return obj


def bin_(obj: Any, what: str, field: str, size: int | None = None, maximum: int = 1 << 20) -> bytes:
    if type(obj) is not bytes:
        raise DecodeError(what, f"field {field}: expected bytes, found {_brief(obj)}")
    if size is not None and len(obj) != size:
        raise DecodeError(what, f"field {field}: expected {size} bytes, found {len(obj)}")
    if len(obj) > maximum:
        raise DecodeError(what, f"field {field}: {len(obj)} bytes exceeds {maximum}")
    return obj


def text(
    obj: Any, what: str, field: str, maximum: int, check: Callable[[str], bool] | None = None
) -> str:
    if type(obj) is not str:
        raise DecodeError(what, f"field {field}: expected a string, found {_brief(obj)}")
    if len(obj) > maximum or (not obj.isascii() and _utf8_len(obj) > maximum):
        raise DecodeError(what, f"field {field}: {_utf8_len(obj)} UTF-8 bytes exceeds {maximum}")
    if check is not None and not check(obj):
        raise DecodeError(what, f"field {field}: {obj[:40]!r} is not allowed here")
    return obj


def opt_text(obj: Any, what: str, field: str, maximum: int) -> str | None:
    if obj is None:
        return None
    value = text(obj, what, field, maximum)
    if not value:
        raise DecodeError(what, f"field {field}: empty string (absent values are nil)")
    return value


def _utf8_len(s: str) -> int:
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError:
        return 1 << 30  # lone surrogates: no UTF-8 form, so never within a limit


def _brief(obj: object) -> str:
    if type(obj) is int:
        return str(obj)
    return type(obj).__name__
