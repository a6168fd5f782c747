"""Opening private readings: by their owner, or by a grantee the owner chose.

A private reading (format 2, ``ledger.reading.SealedReading``) seals its content to the owner's
X25519 key with a per-reading key ``k`` (``ledger.sealbox``). Whoever holds ``k`` and the owner's
public key reads that one reading; nobody else can, and everyone can still verify its signature.

- ``OwnerOpener(secret)``: the owner recomputes ``k`` from the reading's ``epk``.
- ``make_grant``: the owner picks one device and a time range, recomputes ``k`` for each private
  reading in it, and seals the list to the grantee's X25519 key (a grant file). The owner's secret
  never leaves the owner; a grant opens exactly the readings it lists.
- ``open_grant`` + ``GrantOpener``: the grantee's side.
- ``open_reading(sr, opener)``: plain readings as they are, private ones through the opener.

Grant file (canonical MessagePack, docs/PRIVATE.md): ``["edgefleet-grant/1", grantee_x25519,
epk, ct]`` where ``epk || ct`` seals (sealbox) the canonical ``[1, owner_x25519, device_id,
from_ms, to_ms, [[epoch, seq, k]...]]`` with entries in strictly increasing (epoch, seq) order.

Every failure to open is an ``OpenError`` that says what did not match and what was found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from ledger import codec, sealbox
from ledger.errors import DecodeError, UsageError, VerificationError
from ledger.identity import is_device_id
from ledger.reading import MAX_EPOCH, Reading, SealedReading, SignedReading, decode_content

GRANT_MAGIC = "edgefleet-grant/1"
GRANT_FORMAT = 1
MAX_GRANT_READINGS = 1 << 18
_ENTRY_MAX = 1 + 5 + 9 + 2 + sealbox.KEY_SIZE  # [epoch, seq, k] at its largest
MAX_GRANT_CONTENT = 128 + MAX_GRANT_READINGS * _ENTRY_MAX
MAX_GRANT_FILE = 128 + MAX_GRANT_CONTENT + sealbox.MAC_SIZE
_CONTENT_LIMITS = codec.Limits(
    max_bytes=MAX_GRANT_CONTENT,
    max_array=MAX_GRANT_READINGS,
    max_str=26,
    max_bin=sealbox.KEY_SIZE,
    shape=(6, MAX_GRANT_READINGS, 3),
)
_FILE_LIMITS = codec.Limits(
    max_bytes=MAX_GRANT_FILE,
    max_array=4,
    max_str=len(GRANT_MAGIC),
    max_bin=MAX_GRANT_CONTENT + sealbox.MAC_SIZE,
    shape=(4,),
)
_GRANT = "grant"


class OpenError(VerificationError):
    """A private reading or a grant does not open with the key given (names what did not match).

    ``reason`` is a short stable phrase for counting (e.g. "outside the grant's time range")."""

    code = "cannot-open"

    def __init__(
        self, what: str, expected: object = None, found: object = None, *, reason: str
    ) -> None:
        super().__init__(what, expected, found)
        self.reason = reason


class Opener(Protocol):
    """Something that can read private readings: ``open`` returns the plain reading or raises
    ``OpenError`` saying why it cannot (wrong key, wrong device, outside a grant)."""

    def open(self, sr: SignedReading) -> Reading: ...


def open_reading(sr: SignedReading, opener: Opener | None) -> Reading:
    """The plain reading of ``sr``: as it is when not private, else opened by ``opener``."""
    r = sr.reading
    if isinstance(r, Reading):
        return r
    if opener is None:
        raise OpenError(
            f"{_name(r)} is private", "an owner key or a grant", "no key", reason="no key given"
        )
    return opener.open(sr)


def _name(r: SealedReading) -> str:
    return f"reading {r.device_id} epoch {r.epoch} seq {r.seq}"


def _open_with(r: SealedReading, owner_pk: bytes, k: bytes, who: str) -> Reading:
    plain = sealbox.open_with_key(r.ciphertext, r.epk, owner_pk, k)
    if plain is None:
        raise OpenError(
            f"{_name(r)} does not open with {who}: it is sealed to another key, or altered",
            reason="sealed to another key, or altered",
        )
    try:
        return decode_content(plain, r)
    except DecodeError as exc:
        # The device that signed it sealed garbage: the owner learns exactly that.
        raise OpenError(
            f"{_name(r)} opens but its content is not valid ({exc})", reason="content not valid"
        ) from None


class OwnerOpener:
    """Opens every private reading sealed to this owner key pair."""

    def __init__(self, secret: bytes) -> None:
        self.public = sealbox.public_key_of(secret)
        self._secret = secret

    def reading_key(self, r: SealedReading) -> bytes:
        """The per-reading key ``k`` (what a grant hands over for this one reading)."""
        k = sealbox.message_key(r.epk, self._secret)
        if k is None:
            raise OpenError(
                f"{_name(r)}: epk",
                "a usable X25519 public key",
                "a low-order point",
                reason="unusable epk",
            )
        return k

    def open(self, sr: SignedReading) -> Reading:
        r = sr.reading
        if isinstance(r, Reading):
            return r
        return _open_with(
            r, self.public, self.reading_key(r), f"owner key {self.public.hex()[:16]}…"
        )


# --- grants ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """Read access to chosen private readings of one device within [from_ms, to_ms]."""

    owner_x25519: bytes
    device_id: str
    from_ms: int
    to_ms: int
    keys: Mapping[tuple[int, int], bytes]  # (epoch, seq) -> per-reading key k

    def __post_init__(self) -> None:
        try:
            _check_grant(self)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None

    def covers(self, device_id: str, time_ms: int) -> bool:
        return device_id == self.device_id and self.from_ms <= time_ms <= self.to_ms

    def content(self) -> bytes:
        entries = [[e, s, self.keys[(e, s)]] for e, s in sorted(self.keys)]
        return codec.encode(
            [GRANT_FORMAT, self.owner_x25519, self.device_id, self.from_ms, self.to_ms, entries]
        )


def _check_grant(g: Grant) -> None:
    codec.bin_(g.owner_x25519, _GRANT, "owner_x25519", sealbox.X25519_SIZE)
    codec.text(g.device_id, _GRANT, "device_id", 26, is_device_id)
    codec.uint(g.from_ms, _GRANT, "from_ms")
    codec.uint(g.to_ms, _GRANT, "to_ms")
    if g.to_ms < g.from_ms:
        raise DecodeError(_GRANT, f"field to_ms: {g.to_ms} is before from_ms {g.from_ms}")
    if not 0 < len(g.keys) <= MAX_GRANT_READINGS:
        raise DecodeError(
            _GRANT, f"field readings: expected 1..{MAX_GRANT_READINGS}, found {len(g.keys)}"
        )


def make_grant(
    owner_secret: bytes,
    readings: Iterable[SignedReading],
    grantee_pk: bytes,
    device_id: str,
    from_ms: int,
    to_ms: int,
) -> bytes:
    """A grant file for the private readings of ``device_id`` with from_ms <= time_ms <= to_ms.

    Other devices' readings and plain readings in ``readings`` are passed by. Each chosen reading
    is opened once, so a grant never lists a key that does not open its reading: a reading sealed
    to another owner raises ``OpenError``. No reading in range raises ``UsageError``.
    """
    owner = OwnerOpener(owner_secret)
    keys: dict[tuple[int, int], bytes] = {}
    for sr in readings:
        r = sr.reading
        if not isinstance(r, SealedReading) or r.device_id != device_id:
            continue
        if from_ms <= r.time_ms <= to_ms:
            k = owner.reading_key(r)
            _open_with(r, owner.public, k, f"owner key {owner.public.hex()[:16]}…")
            keys[(r.epoch, r.seq)] = k
    if not keys:
        raise UsageError(
            f"grant: no private reading of {device_id} between {from_ms} and {to_ms} ms"
        )
    grant = Grant(owner.public, device_id, from_ms, to_ms, MappingProxyType(keys))
    epk, ct = sealbox.seal(grant.content(), grantee_pk)
    return codec.encode([GRANT_MAGIC, grantee_pk, epk, ct])


def open_grant(grantee_secret: bytes, data: bytes) -> Grant:
    """Decode a grant file and open it with the grantee's X25519 secret key."""
    f = codec.array(codec.decode(data, _FILE_LIMITS, _GRANT), 4, _GRANT)
    if f[0] != GRANT_MAGIC:
        raise DecodeError(_GRANT, f"field magic: expected {GRANT_MAGIC!r}, found {f[0]!r}")
    grantee = codec.bin_(f[1], _GRANT, "grantee_x25519", sealbox.X25519_SIZE)
    epk = codec.bin_(f[2], _GRANT, "epk", sealbox.X25519_SIZE)
    ct = codec.bin_(f[3], _GRANT, "ct", maximum=MAX_GRANT_CONTENT + sealbox.MAC_SIZE)
    mine = sealbox.public_key_of(grantee_secret)
    if grantee != mine:
        raise OpenError(
            "grant is sealed to another grantee key",
            grantee.hex(),
            mine.hex(),
            reason="grant for another grantee",
        )
    k = sealbox.message_key(epk, grantee_secret)
    plain = None if k is None else sealbox.open_with_key(ct, epk, grantee, k)
    if plain is None:
        raise OpenError(
            "grant does not open with the grantee key",
            f"a grant sealed to {grantee.hex()}",
            "an altered grant",
            reason="grant altered",
        )
    return _decode_grant_content(plain)


def _decode_grant_content(plain: bytes) -> Grant:
    f = codec.array(codec.decode(plain, _CONTENT_LIMITS, _GRANT), 6, _GRANT)
    if type(f[0]) is not int or f[0] != GRANT_FORMAT:
        raise DecodeError(_GRANT, f"field format: expected {GRANT_FORMAT}, found {f[0]!r}")
    if not isinstance(f[5], list):
        raise DecodeError(_GRANT, f"field readings: expected an array, found {type(f[5]).__name__}")
    keys: dict[tuple[int, int], bytes] = {}
    last: tuple[int, int] | None = None
    for i, entry in enumerate(f[5]):
        w = f"{_GRANT} entry {i}"
        e = codec.array(entry, 3, w)
        at = (codec.uint(e[0], w, "epoch", MAX_EPOCH), codec.uint(e[1], w, "seq"))
        if last is not None and at <= last:
            raise DecodeError(w, f"entries must strictly increase: {at} after {last}")
        keys[at] = codec.bin_(e[2], w, "k", sealbox.KEY_SIZE)
        last = at
    try:
        return Grant(f[1], f[2], f[3], f[4], MappingProxyType(keys))
    except UsageError as exc:
        raise DecodeError(_GRANT, str(exc).removeprefix(f"{_GRANT}: ")) from None


class GrantOpener:
    """Opens exactly the readings a grant lists, and says which rule a reading breaks."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant

    def open(self, sr: SignedReading) -> Reading:
        r = sr.reading
        if isinstance(r, Reading):
            return r
        g = self.grant
        if r.device_id != g.device_id:
            raise OpenError(
                f"{_name(r)}: the grant is for another device",
                g.device_id,
                r.device_id,
                reason="grant for another device",
            )
        if not g.from_ms <= r.time_ms <= g.to_ms:
            raise OpenError(
                f"{_name(r)}: time outside the grant",
                f"{g.from_ms}..{g.to_ms} ms",
                r.time_ms,
                reason="outside the grant's time range",
            )
        k = g.keys.get((r.epoch, r.seq))
        if k is None:
            raise OpenError(
                f"{_name(r)}: not among the grant's {len(g.keys)} readings",
                "a granted (epoch, seq)",
                (r.epoch, r.seq),
                reason="not in the grant",
            )
        return _open_with(r, g.owner_x25519, k, "the grant's key for it")
