"""The steps every signed record shares: header, reading, storage receipt and epoch record.

Each record is a frozen dataclass with a canonical body (``encode_body``), signed with its own
domain tag and carried in the envelope ``[body, signature]`` (``ledger.envelope``). This module
owns what the four do alike:

- ``check_local``: a record built by our own code is checked with the decoder's rules, and a
  failure is our bug (``UsageError``), not the peer's;
- ``sign``: the body signed under the domain, wrapped in the envelope;
- ``open_wire`` and ``fields``: untrusted wire split and decoded under the record's limits, the
  arity and the format number checked;
- ``build``: the record constructed from decoded fields, a rule it breaks reported as the peer's
  fault (``DecodeError``) with the record's name once.

What differs stays with each record: its fields, limits, domain tag, checks and messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ledger import codec, envelope
from ledger.errors import DecodeError, UsageError
from ledger.identity import SigningKey

__all__ = ["build", "check_local", "fields", "open_wire", "sign"]

_R = TypeVar("_R")


class _Record(Protocol):
    def encode_body(self) -> bytes: ...


def check_local(check: Callable[[_R], None], record: _R) -> None:
    """Run the decoder's ``check`` on a record our code built: a failure is a ``UsageError``."""
    try:
        check(record)
    except DecodeError as exc:
        raise UsageError(str(exc)) from None


def sign(domain: bytes, record: _Record, key: SigningKey) -> tuple[bytes, bytes, bytes]:
    """``(wire, body, signature)`` of ``record`` signed by ``key`` under ``domain``: the order of
    the fields after the record in every ``Signed*`` dataclass."""
    body = record.encode_body()
    signature = key.sign(domain, body)
    return envelope.wrap(body, signature), body, signature


def open_wire(
    wire: bytes, what: str, max_body: int, limits: codec.Limits
) -> tuple[Any, bytes, bytes]:
    """Split untrusted envelope bytes and decode the body under ``limits``:
    ``(decoded body, body, signature)``. No signature check. Raises DecodeError only."""
    body, signature = envelope.unwrap(wire, what, max_body)
    return codec.decode(body, limits, what), body, signature


def fields(value: Any, arity: int, fmt: int, what: str) -> list[Any]:
    """The decoded body as an array of ``arity`` whose first field is the format ``fmt``."""
    f = codec.array(value, arity, what)
    if type(f[0]) is not int or f[0] != fmt:
        raise DecodeError(what, f"field format: expected {fmt}, found {f[0]!r}")
    return f


def build(what: str, factory: Callable[..., _R], *args: Any) -> _R:
    """``factory(*args)`` on decoded fields: the ``UsageError`` a record's own check raises
    becomes the peer's ``DecodeError``, without naming ``what`` twice."""
    try:
        return factory(*args)
    except UsageError as exc:
        raise DecodeError(what, str(exc).removeprefix(f"{what}: ")) from None
