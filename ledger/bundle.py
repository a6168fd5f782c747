"""Offline proof bundles: one file that proves readings to anyone holding only this package.

A bundle carries, for each device it speaks about, the device's certificate, the rotations and
revocations that bear on the bundled heights, the newest header it vouches for (the **head**), and
for every block holding a proved reading: the block's signed header with an RFC 9162 inclusion
proof of its hash in the head's ``history_root`` (none for the head's own block), and each proved
reading's wire with an RFC 9162 inclusion proof against the header's ``merkle_root``. The fleet
root's public key travels with it, so ``verify_bundle`` needs no store, no fleet and no network.

Layout (canonical MessagePack, docs/BUNDLE.md is the byte-exact reference)::

    bundle = [magic "edgefleet-bundle", format 1 | 2, subject: str, created_ms: uint,
              root_public: bin(32), devices: [bin...], digest: bin(32)]
    device = [certificate: bin, rotations: [bin...], revocations: [bin...], head: bin,
              blocks: [bin...]                     # encoded, then carried as bin
              (format 2 only:) , forks: [bin...]]  # fork evidence wires, sorted
    block  = [header: bin | nil, history_proof: [bin(32)...],
              readings: [[index: uint, wire: bin, proof: [bin(32)...]]...]]  # carried as bin

Devices are carried as byte strings holding their own canonical encoding, and blocks likewise
inside a device, so each level is decoded on its own under limits sized to it: memory stays
proportional to the input whatever an attacker declares.

Strictness: every level is canonical (re-encoding gives the input bytes; no trailing bytes);
devices in strictly increasing device id, blocks in strictly increasing height, readings in
strictly increasing index, revocations in strictly increasing byte order, so one content has one
encoding and nothing can appear twice. Nothing is unused: every device has a block, every block a
reading, every rotation takes effect at or below the head, every revocation names the device, one
of its keys (or none) and a height at or below the head. ``subject`` and ``created_ms`` are labels
chosen by whoever built the bundle and signed by nobody: the trailing ``digest``
(``SHA-256(BUNDLE_DIGEST || every byte before it)``) makes any change to them, as to any other byte,
fail verification, but it authenticates nothing; the signatures rooted at the fleet root do.

Certificate validity windows are not applied (as in gossip and fork evidence: a bundle is
evidence about the past); revocations are honoured.

**Format 2** (docs/BUNDLE.md section 6) appends one field to each device entry: the fork
evidence (``ledger.evidence``) against the device. In format 2 a header signed by a forked key,
by a revoked key at or above its revocation height, or by a key the device rotated away from at
or above the rotation's height still verifies (its signature is checked under the key it names)
but is **flagged**: ``VerifiedBundle.flags`` names each ``KeyFlag`` that covers a bundled reading,
with the evidence that proves it. Format 1 refuses such headers, as before. The builder writes
format 1 whenever nothing is flagged, so every bundle a format-1 verifier can read stays format 1.
A verifier knows only the evidence a bundle carries: a fork or revocation left out (or stripped)
cannot be seen offline, so an unflagged bundle says "nothing flagged in this bundle", never
"this key was never forked or revoked".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType, TracebackType
from typing import Any

from ledger import codec, domains
from ledger.block import (
    MAX_READING_WIRE,
    MAX_READINGS,
    Block,
    SignedHeader,
    decode_header,
)
from ledger.certs import (
    Certificate,
    DeviceKeys,
    FleetRoots,
    Revocation,
    Rotation,
    decode_certificate,
    decode_revocation,
    decode_rotation,
)
from ledger.errors import (
    ChainError,
    DecodeError,
    LedgerError,
    ProofError,
    SequenceError,
    UsageError,
    VerificationError,
)
from ledger.evidence import ForkEvidence, decode_evidence, verify_evidence
from ledger.history import CompactRange
from ledger.identity import PUBLIC_KEY_SIZE, PublicKey
from ledger.merkle import HASH_SIZE, node_hash, verify_inclusion
from ledger.reading import SignedReading, decode_reading
from ledger.verify import verify_link

MAGIC = "edgefleet-bundle"
FORMAT = 1  # docs/BUNDLE.md sections 1-4
FORMAT_FLAGS = 2  # section 6: fork evidence, flagged headers verify and are reported
FORMATS = (FORMAT, FORMAT_FLAGS)
# Domain tag of the trailing digest (docs/PROTOCOL.md section 2 style: ASCII + NUL). Not a
# signature domain; kept here until ledger/domains.py takes it.
BUNDLE_DIGEST = domains.BUNDLE_DIGEST

# --- limits (checked before anything is allocated; see docs/BUNDLE.md) -------------------------
MAX_BUNDLE_BYTES = 32 * 1024 * 1024  # whole file
MAX_DEVICES = 1024  # devices per bundle
MAX_BLOCKS = 65_536  # block entries per device
MAX_TOTAL_READINGS = 65_536  # proved readings per bundle (~4 s of signature checks)
MAX_ROTATIONS = 64  # per device
MAX_REVOCATIONS = 64  # per device
MAX_FORKS = 8  # fork evidence per device (format 2)
MAX_FORK_EVIDENCE = 4096  # bytes of one fork evidence wire (ledger.evidence's own limit)
MAX_SUBJECT = 256  # UTF-8 bytes
MAX_CREDENTIAL = 512  # certificate, rotation, revocation or header wire
MAX_HISTORY_PROOF = 64  # heights are below 2^63, so at most 63 hashes
MAX_READING_PROOF = (MAX_READINGS - 1).bit_length()  # 12 for blocks of up to 4096 readings

_HASH_ITEM = 2 + HASH_SIZE  # bin8 header + 32 bytes
_DIGEST_TAIL = _HASH_ITEM  # the digest is the last value: c4 20 + 32 bytes
_MAX_READING_ENTRY = 1 + 3 + (3 + MAX_READING_WIRE) + (1 + MAX_READING_PROOF * _HASH_ITEM)
MAX_BLOCK_ENTRY = (
    1 + (3 + MAX_CREDENTIAL) + (3 + MAX_HISTORY_PROOF * _HASH_ITEM) + 3
) + MAX_READINGS * _MAX_READING_ENTRY

_MAGIC_BYTES = codec.encode(MAGIC)
_TOP_LIMITS = codec.Limits(
    max_bytes=MAX_BUNDLE_BYTES,
    max_array=MAX_DEVICES,
    max_str=MAX_SUBJECT,
    max_bin=MAX_BUNDLE_BYTES,
    shape=(7, MAX_DEVICES),
)
_DEVICE_LIMITS = codec.Limits(
    max_bytes=MAX_BUNDLE_BYTES,
    max_array=MAX_BLOCKS,
    max_str=0,
    max_bin=MAX_BLOCK_ENTRY,
    shape=(6, MAX_BLOCKS),
)
_BLOCK_LIMITS = codec.Limits(
    max_bytes=MAX_BLOCK_ENTRY,
    max_array=MAX_READINGS,
    max_str=0,
    max_bin=max(MAX_CREDENTIAL, MAX_READING_WIRE),
    shape=(3, MAX_READINGS, 3, MAX_READING_PROOF),
)


class BundleError(VerificationError):
    """A bundle does not verify. The message says where and what did not match; ``cause`` is
    the stable code of the underlying failure (``decode``, ``bad-signature``, ``bad-proof``,
    ``revoked``, ``bad-bundle``...). The only exception ``verify_bundle`` raises."""

    code = "bad-bundle"

    def __init__(self, message: str, cause: str = "bad-bundle") -> None:
        super().__init__(message)
        self.cause = cause


# --- key flags (format 2) -------------------------------------------------------------------

FORKED = "forked"
REVOKED = "revoked"
ROTATED_AWAY = "rotated-away"
_FLAG_ORDER = {FORKED: 0, REVOKED: 1, ROTATED_AWAY: 2}


@dataclass(frozen=True, slots=True)
class KeyFlag:
    """A key of a device whose signatures prove less than they seem, and the signed evidence.

    - ``forked``: the key signed two headers at one (epoch, height): ``height`` and ``hashes``
      (the two header hashes, smaller first). Every header the key signed is covered, at any
      height: a key that signed two histories may have signed either, before the fork as after.
    - ``revoked``: the fleet authority revoked ``key_id`` (None: every key of the device) from
      ``height`` for ``reason``; headers at that height and above signed by it are covered.
    - ``rotated-away``: the device rotated away from ``key_id`` at ``height`` (the rotation's
      effective height); headers at that height and above still signed by it are covered.

    ``wire`` is what proves it: the fork evidence, the revocation or the rotation.
    """

    kind: str
    device_id: str
    key_id: bytes | None
    height: int
    hashes: tuple[bytes, ...]
    reason: str
    wire: bytes

    def covers(self, device_id: str, key_id: bytes, height: int) -> bool:
        """A header of ``device_id`` at ``height`` signed by ``key_id`` is flagged by this."""
        if device_id != self.device_id or (self.key_id is not None and key_id != self.key_id):
            return False
        return self.kind == FORKED or height >= self.height

    def covers_header(self, sh: SignedHeader) -> bool:
        h = sh.header
        return self.covers(h.device_id, h.key_id, h.height)

    def describe(self) -> str:
        """One line naming the evidence (device, height, hashes; reason)."""
        key = "every key" if self.key_id is None else f"key {self.key_id.hex()}"
        if self.kind == FORKED:
            a, b = (x.hex() for x in self.hashes)
            return (
                f"device {self.device_id} forked: {key} signed two headers at height "
                f"{self.height} ({a} and {b})"
            )
        if self.kind == REVOKED:
            return (
                f"device {self.device_id}: {key} revoked from height {self.height} "
                f"(reason: {self.reason})"
            )
        return f"device {self.device_id}: {key} rotated away at height {self.height}"


def device_flags(
    keys: DeviceKeys,
    rotations: Sequence[Rotation] = (),
    revocations: Sequence[Revocation] = (),
    forks: Sequence[ForkEvidence] = (),
) -> tuple[KeyFlag, ...]:
    """Every flag the given (verified) credentials and fork evidence raise against a device."""
    dev = keys.device_id
    flags = [
        KeyFlag(
            FORKED,
            dev,
            ev.a.header.key_id,
            ev.a.header.height,
            (ev.a.hash, ev.b.hash),
            "",
            ev.encode(),
        )
        for ev in forks
        if ev.device_id == dev
    ]
    flags += [
        KeyFlag(REVOKED, dev, r.key_id, r.from_height, (), r.reason, r.wire)
        for r in revocations
        if r.device_id == dev
    ]
    flags += [
        KeyFlag(ROTATED_AWAY, dev, r.old_key_id, r.effective_height, (), "", r.wire)
        for r in rotations
        if r.device_id == dev
    ]
    return tuple(sorted(flags, key=lambda f: (_FLAG_ORDER[f.kind], f.height, f.wire)))


def signing_key(keys: DeviceKeys, key_id: bytes, height: int) -> PublicKey:
    """The key a header at ``height`` naming ``key_id`` is checked with when flagged headers are
    accepted (format 2, and traces): the key in force there by rotations, revocations ignored;
    or a key of the device rotated away at or below ``height`` (a flag covers that header).
    Raises ``VerificationError`` for any other key, including one not yet in force."""
    try:
        return keys.key_for(key_id, height, honour_revocations=False)
    except VerificationError:
        for span in keys.spans:
            if span.key.key_id == key_id and span.until_height <= height:
                return span.key
        raise


@dataclass(frozen=True, slots=True)
class VerifiedDevice:
    certificate: Certificate
    head: SignedHeader
    flags: tuple[KeyFlag, ...] = ()  # every flag its credentials and fork evidence raise


@dataclass(frozen=True, slots=True)
class BundledReading:
    """One proved reading: leaf ``index`` of the block at ``height`` whose header is ``header``."""

    device_id: str
    height: int
    index: int
    reading: SignedReading
    header: SignedHeader


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    subject: str  # the builder's label: covered by the digest, signed by nobody
    created_ms: int  # likewise
    root_key_id: bytes
    root_public: bytes
    devices: Mapping[str, VerifiedDevice]
    readings: tuple[BundledReading, ...]  # in bundle order: device id, height, index
    format: int = FORMAT
    flags: tuple[KeyFlag, ...] = ()  # the flags that cover at least one bundled reading

    def flags_of(self, r: BundledReading) -> tuple[KeyFlag, ...]:
        """The flags covering one bundled reading (through the header that signed it)."""
        return tuple(f for f in self.flags if f.covers_header(r.header))


# --- building -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DeviceInput:
    certificate: Certificate
    rotations: tuple[Rotation, ...]
    revocations: tuple[Revocation, ...]
    head: SignedHeader
    header_hashes: tuple[bytes, ...]
    forks: tuple[ForkEvidence, ...]


class BundleBuilder:
    """Collects devices and readings from verified local data and writes a bundle.

    Rotations above the head and revocations that bear on no bundled height (another device,
    an unknown key, a height above the head) are left out; devices without readings are left
    out, and so is fork evidence against a key that signed no bundled header. ``build`` writes
    format 2 when a bundled header is flagged (forked, revoked or rotated-away key) and format 1
    otherwise, then verifies what it wrote with ``verify_bundle`` and raises its ``BundleError``
    rather than hand out a bundle a verifier would refuse (a broken proof...).
    Misuse (a reading of an unknown device, a block above the head, a header that is not the one
    ``header_hashes`` names) raises ``UsageError``.
    """

    def __init__(self, roots: FleetRoots, *, subject: str, created_ms: int) -> None:
        try:
            _check_subject(subject)
            codec.uint(created_ms, "bundle", "created_ms")
        except DecodeError as exc:
            raise UsageError(str(exc)) from None
        self._roots = roots
        self._subject = subject
        self._created_ms = created_ms
        self._devices: dict[str, _DeviceInput] = {}
        self._blocks: dict[str, dict[int, Block]] = {}
        self._picked: dict[str, dict[int, set[int]]] = {}

    def add_device(
        self,
        device_id: str,
        credentials: Sequence[bytes],
        head: SignedHeader,
        header_hashes: Sequence[bytes],
        forks: Sequence[bytes] = (),
    ) -> None:
        """``credentials``: the certificate wire, then any rotation and revocation wires.
        ``header_hashes[i]``: hash of the device's header at height i, for every i < head height.
        ``forks``: fork evidence wires (``ledger.evidence``); those about other devices are left
        out.
        """
        if not credentials:
            raise UsageError(f"device {device_id}: credentials must start with the certificate")
        cert = decode_certificate(credentials[0])
        if cert.device_id != device_id or head.header.device_id != device_id:
            raise UsageError(
                f"device {device_id}: certificate names {cert.device_id}, "
                f"head names {head.header.device_id}"
            )
        known = self._devices.get(device_id)
        if known is not None and known.head.hash != head.hash:
            raise UsageError(
                f"device {device_id}: already added with its head at height "
                f"{known.head.header.height}; a bundle vouches for one head per device"
            )
        height = head.header.height
        hashes = tuple(header_hashes)
        if len(hashes) != height:
            raise UsageError(
                f"device {device_id}: need {height} header hashes below the head, got {len(hashes)}"
            )
        history = CompactRange()
        for h in hashes:
            history.append(h)
        if history.root() != head.header.history_root:
            raise UsageError(
                f"device {device_id}: header hashes do not give the head's history_root"
            )
        rotations: dict[bytes, Rotation] = {}
        revocations: dict[bytes, Revocation] = {}
        for wire in credentials[1:]:
            try:
                rot = decode_rotation(wire)
            except DecodeError:
                rev = decode_revocation(wire)  # neither: the DecodeError says what it is not
                revocations[wire] = rev
            else:
                if rot.device_id == device_id and rot.effective_height <= height:
                    rotations[wire] = rot
        rots = tuple(sorted(rotations.values(), key=lambda r: r.effective_height))
        key_ids = {cert.device_key.key_id, *(r.new_key.key_id for r in rots)}
        revs = tuple(
            revocations[w]
            for w in sorted(revocations)
            if _revocation_used(revocations[w], device_id, key_ids, height)
        )
        evidence = {w: decode_evidence(w) for w in forks}
        kept = tuple(evidence[w] for w in sorted(evidence) if evidence[w].device_id == device_id)
        self._devices[device_id] = _DeviceInput(cert, rots, revs, head, hashes, kept)
        self._blocks.setdefault(device_id, {})
        self._picked.setdefault(device_id, {})

    def add_reading(self, device_id: str, block: Block, index: int) -> None:
        """Prove reading ``index`` of ``block`` (a verified block of that device at or below its
        head). Adding the same reading twice is harmless."""
        dev = self._devices.get(device_id)
        if dev is None:
            raise UsageError(f"device {device_id}: add_device first")
        sh = block.header
        h = sh.header.height
        head_height = dev.head.header.height
        if sh.header.device_id != device_id:
            raise UsageError(f"block of {sh.header.device_id} given for device {device_id}")
        if h > head_height:
            raise UsageError(
                f"device {device_id}: block at height {h} is above the head (height {head_height})"
            )
        expected = dev.head.hash if h == head_height else dev.header_hashes[h]
        if sh.hash != expected:
            raise UsageError(
                f"device {device_id}: block at height {h} is not the one the head's history names"
            )
        if not 0 <= index < len(block.readings):
            raise UsageError(
                f"device {device_id}, height {h}: reading index {index} outside "
                f"0..{len(block.readings) - 1}"
            )
        self._blocks[device_id][h] = block
        self._picked[device_id].setdefault(h, set()).add(index)

    def build(self) -> bytes:
        devices = [d for d in sorted(self._devices) if self._picked[d]]
        if not devices:
            raise UsageError("a bundle needs at least one reading")
        root = self._root(devices)
        total = sum(len(ix) for d in devices for ix in self._picked[d].values())
        if len(devices) > MAX_DEVICES or total > MAX_TOTAL_READINGS:
            raise UsageError(
                f"bundle too large: {len(devices)} devices (max {MAX_DEVICES}), "
                f"{total} readings (max {MAX_TOTAL_READINGS})"
            )
        flagged = {d: self._flagged(d) for d in devices}
        fmt = FORMAT_FLAGS if any(f for f, _ in flagged.values()) else FORMAT
        entries = [self._device_entry(d, fmt, flagged[d][1]) for d in devices]
        data = _seal([MAGIC, fmt, self._subject, self._created_ms, root.raw, entries])
        if len(data) > MAX_BUNDLE_BYTES:
            raise UsageError(f"bundle of {len(data)} bytes exceeds {MAX_BUNDLE_BYTES}")
        verify_bundle(data, roots=FleetRoots.of(root))
        return data

    def _root(self, devices: list[str]) -> PublicKey:
        kids = {self._devices[d].certificate.authority_key_id for d in devices}
        if len(kids) != 1:
            raise UsageError(
                "a bundle carries one fleet root; certificates name "
                + ", ".join(sorted(k.hex() for k in kids))
            )
        return self._roots.get(kids.pop(), "bundle")

    def _bundled_headers(self, device_id: str) -> list[SignedHeader]:
        dev = self._devices[device_id]
        return [dev.head] + [self._blocks[device_id][h].header for h in self._picked[device_id]]

    def _flagged(self, device_id: str) -> tuple[bool, tuple[ForkEvidence, ...]]:
        """(whether a bundled header is flagged, the fork evidence that flags one)."""
        dev = self._devices[device_id]
        headers = self._bundled_headers(device_id)
        forks = tuple(
            ev for ev in dev.forks if any(sh.header.key_id == ev.a.header.key_id for sh in headers)
        )
        try:
            keys = DeviceKeys.build(
                dev.certificate.wire,
                self._roots,
                now_ms=None,
                rotations=[r.wire for r in dev.rotations],
                revocations=[r.wire for r in dev.revocations],
            )
        except LedgerError:
            return False, forks  # build's own verification says why
        flags = device_flags(keys, dev.rotations, dev.revocations, forks)
        return any(f.covers_header(sh) for f in flags for sh in headers), forks

    def _device_entry(self, device_id: str, fmt: int, forks: tuple[ForkEvidence, ...]) -> bytes:
        dev = self._devices[device_id]
        head_height = dev.head.header.height
        levels = _Levels(dev.header_hashes) if dev.header_hashes else None
        blocks: list[bytes] = []
        for h in sorted(self._picked[device_id]):
            block = self._blocks[device_id][h]
            leaves = _Levels([r.leaf_hash for r in block.readings])
            readings: list[codec.Value] = [
                [i, block.readings[i].wire, list(leaves.path(i))]
                for i in sorted(self._picked[device_id][h])
            ]
            if h == head_height:
                header: bytes | None = None
                hproof: list[codec.Value] = []
            else:
                assert levels is not None  # h < head_height, so there are header hashes
                header = block.header.wire
                hproof = list(levels.path(h))
            blocks.append(codec.encode([header, hproof, readings]))
        fields: list[codec.Value] = [
            dev.certificate.wire,
            [r.wire for r in dev.rotations],
            [r.wire for r in dev.revocations],
            dev.head.wire,
            list(blocks),
        ]
        if fmt == FORMAT_FLAGS:
            fields.append(sorted(ev.encode() for ev in forks))
        return codec.encode(fields)


def _seal(fields: list[Any]) -> bytes:
    """Encode the top-level array and append its digest as the last element."""
    fields = [*fields, bytes(HASH_SIZE)]
    data = codec.encode(fields)
    prefix = data[:-_DIGEST_TAIL]
    return prefix + codec.encode(_digest(prefix))


def _digest(prefix: bytes) -> bytes:
    return hashlib.sha256(BUNDLE_DIGEST + prefix).digest()


class _Levels:
    """Every level of an RFC 9162 tree, built once, so each inclusion path costs O(log n).

    Pairing neighbours level by level and carrying an odd last node up unchanged gives the same
    tree as RFC 9162's split at the largest power of two (see ledger/merkle.py); the path is the
    sibling at each level where there is one.
    """

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        levels = [list(leaf_hashes)]
        while len(levels[-1]) > 1:
            cur = levels[-1]
            nxt = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
            if len(cur) & 1:
                nxt.append(cur[-1])
            levels.append(nxt)
        self._levels = levels

    def path(self, index: int) -> list[bytes]:
        out = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            index >>= 1
        return out


def _revocation_used(rev: Revocation, device_id: str, key_ids: set[bytes], height: int) -> bool:
    return (
        rev.device_id == device_id
        and (rev.key_id is None or rev.key_id in key_ids)
        and rev.from_height <= height
    )


def _check_subject(subject: object) -> str:
    s = codec.text(subject, "bundle", "subject", MAX_SUBJECT)
    if not s or not s.isprintable():
        raise DecodeError(
            "bundle", "field subject: expected 1 or more printable characters (no controls)"
        )
    return s


# --- verifying ------------------------------------------------------------------------------


class _Where:
    """Re-raise any ledger error inside as a BundleError whose message starts with ``where``.

    A class rather than a generator-based context manager: it wraps every reading, and this is
    several times cheaper.
    """

    __slots__ = ("where",)

    def __init__(self, where: str | Callable[[], str]) -> None:
        self.where = where  # a callable is only called when something fails

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, LedgerError) and not isinstance(exc, BundleError):
            where = self.where if isinstance(self.where, str) else self.where()
            raise BundleError(f"{where}: {exc}", exc.code) from exc


def verify_bundle(data: bytes, *, roots: FleetRoots | None = None) -> VerifiedBundle:
    """Verify a bundle offline. Raises ``BundleError`` (and nothing else) unless it holds.

    With ``roots`` the bundle's fleet root must be one of them; without, the bundle's own root is
    used and reported (``root_key_id``), and the caller must compare it with the root it trusts.
    """
    fmt, subject, created_ms, root_raw, device_raws, digest = _decode_top(data)
    with _Where("bundle fleet root"):
        root = PublicKey(root_raw)
    if roots is not None:
        trusted = roots.keys.get(root.key_id)
        if trusted is None or trusted.raw != root.raw:
            known = ", ".join(k.hex() for k in roots.keys) or "none"
            raise BundleError(
                f"bundle fleet root {root.key_id.hex()} is not a trusted root (trusted: {known})",
                "bad-certificate",
            )
    own = FleetRoots.of(root)
    devices: dict[str, VerifiedDevice] = {}
    readings: list[BundledReading] = []
    flags: list[KeyFlag] = []
    previous: str | None = None
    for pos, raw in enumerate(device_raws):
        dev, proved = _verify_device(
            pos, raw, own, previous, MAX_TOTAL_READINGS - len(readings), fmt
        )
        devices[dev.certificate.device_id] = dev
        readings.extend(proved)
        flags += [f for f in dev.flags if any(f.covers_header(r.header) for r in proved)]
        previous = dev.certificate.device_id
    expected = _digest(data[:-_DIGEST_TAIL])
    if digest != expected:
        raise BundleError(
            "bundle digest does not match its bytes (changed after it was built; the subject and "
            "creation time are covered only by this digest): "
            f"expected {expected.hex()}, found {digest.hex()}"
        )
    return VerifiedBundle(
        subject,
        created_ms,
        root.key_id,
        root.raw,
        MappingProxyType(devices),
        tuple(readings),
        fmt,
        tuple(flags),
    )


def _decode_top(data: bytes) -> tuple[int, str, int, bytes, list[bytes], bytes]:
    if not isinstance(data, bytes):
        raise BundleError(f"bundle: expected bytes, found {type(data).__name__}", "decode")
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"bundle: {len(data)} bytes exceeds the limit of {MAX_BUNDLE_BYTES}", "decode"
        )
    magic_end = 1 + len(_MAGIC_BYTES)
    if data[1:magic_end] != _MAGIC_BYTES:
        raise BundleError(
            f"not an edgefleet bundle: expected {_MAGIC_BYTES.hex()} ({MAGIC!r}) at byte 1, "
            f"found {data[1:magic_end].hex() or '(nothing)'}",
            "decode",
        )
    fmt_byte = data[magic_end : magic_end + 1]
    if fmt_byte not in (bytes([f]) for f in FORMATS):
        raise BundleError(
            f"bundle format: this verifier reads formats {' and '.join(map(str, FORMATS))}, "
            "found byte "
            f"{data[magic_end : magic_end + 1].hex() or '(nothing)'} at {magic_end}",
            "decode",
        )
    w = "bundle"
    with _Where(w):
        f = codec.array(codec.decode(data, _TOP_LIMITS, w), 7, w)
        subject = _check_subject(f[2])
        created_ms = codec.uint(f[3], w, "created_ms")
        root_raw = codec.bin_(f[4], w, "root_public", PUBLIC_KEY_SIZE)
        device_raws = _bins(f[5], w, "devices", MAX_DEVICES, MAX_BUNDLE_BYTES)
        digest = codec.bin_(f[6], w, "digest", HASH_SIZE)
        if not device_raws:
            raise DecodeError(w, "field devices: a bundle proves at least one reading, found none")
    return fmt_byte[0], subject, created_ms, root_raw, device_raws, digest


def _bins(obj: Any, what: str, field: str, most: int, size: int) -> list[bytes]:
    if not isinstance(obj, list):
        raise DecodeError(what, f"field {field}: expected an array, found {type(obj).__name__}")
    if len(obj) > most:
        raise DecodeError(what, f"field {field}: {len(obj)} entries exceeds {most}")
    return [codec.bin_(x, what, f"{field}[{i}]", maximum=size) for i, x in enumerate(obj)]


def _hashes(obj: Any, what: str, field: str, most: int) -> list[bytes]:
    if not isinstance(obj, list):
        raise DecodeError(what, f"field {field}: expected an array, found {type(obj).__name__}")
    if len(obj) > most:
        raise DecodeError(what, f"field {field}: {len(obj)} hashes exceeds {most}")
    return [codec.bin_(x, what, f"{field}[{i}]", HASH_SIZE) for i, x in enumerate(obj)]


_Resolve = Callable[[bytes, int], PublicKey]  # (key id, height) -> the key to check with


@dataclass(frozen=True, slots=True)
class _Device:
    certificate_wire: bytes
    certificate: Certificate
    rotation_wires: list[bytes]
    revocation_wires: list[bytes]
    head: SignedHeader
    block_raws: list[bytes]
    fork_wires: list[bytes]


def _decode_device(pos: int, raw: bytes, fmt: int) -> _Device:
    w = "device entry"
    with _Where(f"device {pos} of the bundle"):
        f = codec.array(codec.decode(raw, _DEVICE_LIMITS, w), 5 if fmt == FORMAT else 6, w)
        cert_wire = codec.bin_(f[0], w, "certificate", maximum=MAX_CREDENTIAL)
        rotations = _bins(f[1], w, "rotations", MAX_ROTATIONS, MAX_CREDENTIAL)
        revocations = _bins(f[2], w, "revocations", MAX_REVOCATIONS, MAX_CREDENTIAL)
        head = codec.bin_(f[3], w, "head", maximum=MAX_CREDENTIAL)
        blocks = _bins(f[4], w, "blocks", MAX_BLOCKS, MAX_BLOCK_ENTRY)
        forks = [] if fmt == FORMAT else _bins(f[5], w, "forks", MAX_FORKS, MAX_FORK_EVIDENCE)
        cert = decode_certificate(cert_wire)
    with _Where(f"device {cert.device_id}: head"):
        sh = decode_header(head)
    return _Device(cert_wire, cert, rotations, revocations, sh, blocks, forks)


def _verify_device(
    pos: int, raw: bytes, roots: FleetRoots, previous: str | None, budget: int, fmt: int
) -> tuple[VerifiedDevice, list[BundledReading]]:
    d = _decode_device(pos, raw, fmt)
    dev = d.certificate.device_id
    if previous is not None and dev <= previous:
        raise BundleError(
            f"device {dev}: devices must be in strictly increasing order of device id, "
            f"found it after {previous}"
        )
    head = d.head
    height = head.header.height
    if head.header.device_id != dev:
        raise BundleError(
            f"device {dev}: head belongs to device {head.header.device_id}", ChainError.code
        )
    keys = _device_keys(d, roots, height)
    # Format 1 refuses flagged headers; format 2 checks each under the key it names and flags it.
    resolve = keys.key_for if fmt == FORMAT else partial(signing_key, keys)
    forks = _forks(d, roots, keys)
    with _Where(f"device {dev}: head at height {height}"):
        head.verify(resolve(head.header.key_id, height))
    if not d.block_raws:
        raise BundleError(f"device {dev}: no block entries (a device entry must prove a reading)")
    readings: list[BundledReading] = []
    prev: SignedHeader | None = None
    last_seq: int | None = None
    headers = [head]
    for j, braw in enumerate(d.block_raws):
        sh, block_readings = _verify_block(dev, j, braw, resolve, head, prev, last_seq)
        headers.append(sh)
        if len(readings) + len(block_readings) > budget:
            raise BundleError(f"bundle: more than {MAX_TOTAL_READINGS} readings")
        readings.extend(block_readings)
        last_seq = block_readings[-1].reading.reading.seq
        prev = sh
    return VerifiedDevice(d.certificate, head, _flags(d, keys, forks, headers)), readings


def _flags(
    d: _Device, keys: DeviceKeys, forks: list[ForkEvidence], headers: list[SignedHeader]
) -> tuple[KeyFlag, ...]:
    """The device's flags, once every fork evidence is known to be used by a bundled header."""
    for ev in forks:
        if not any(sh.header.key_id == ev.a.header.key_id for sh in headers):
            raise BundleError(
                f"device {d.certificate.device_id}: fork evidence at height "
                f"{ev.a.header.height} is unused (its key {ev.a.header.key_id.hex()} signed no "
                "bundled header)"
            )
    rotations = [decode_rotation(w) for w in d.rotation_wires]  # decoded once already
    revocations = [decode_revocation(w) for w in d.revocation_wires]
    return device_flags(keys, rotations, revocations, forks)


def _forks(d: _Device, roots: FleetRoots, keys: DeviceKeys) -> list[ForkEvidence]:
    dev = d.certificate.device_id
    key_ids = {s.key.key_id for s in keys.spans}
    out = []
    for i, wire in enumerate(d.fork_wires):
        if i and wire <= d.fork_wires[i - 1]:
            raise BundleError(
                f"device {dev}: fork evidence {i} is out of order or repeated "
                "(fork evidence is sorted by its bytes, each once)"
            )
        with _Where(f"device {dev}: fork evidence {i}"):
            ev = verify_evidence(wire, roots)
        if ev.device_id != dev or ev.a.header.key_id not in key_ids:
            raise BundleError(
                f"device {dev}: fork evidence {i} is against device {ev.device_id}, key "
                f"{ev.a.header.key_id.hex()}: not one of this device's keys",
                ChainError.code,
            )
        out.append(ev)
    return out


def _device_keys(d: _Device, roots: FleetRoots, height: int) -> DeviceKeys:
    dev = d.certificate.device_id
    with _Where(f"device {dev}: credentials"):
        rotations = [decode_rotation(w) for w in d.rotation_wires]
        revocations = [decode_revocation(w) for w in d.revocation_wires]
        keys = DeviceKeys.build(
            d.certificate_wire,
            roots,
            now_ms=None,
            rotations=d.rotation_wires,
            revocations=d.revocation_wires,
        )
    for rot in rotations:
        if rot.effective_height > height:
            raise BundleError(
                f"device {dev}: rotation at height {rot.effective_height} is unused "
                f"(above the head at height {height})"
            )
    key_ids = {s.key.key_id for s in keys.spans}
    for i, (wire, rev) in enumerate(zip(d.revocation_wires, revocations, strict=True)):
        if i and wire <= d.revocation_wires[i - 1]:
            raise BundleError(
                f"device {dev}: revocation {i} is out of order or repeated "
                "(revocations are sorted by their bytes, each once)"
            )
        if not _revocation_used(rev, dev, key_ids, height):
            raise BundleError(
                f"device {dev}: revocation {i} is unused (it names device {rev.device_id}, key "
                f"{rev.key_id.hex() if rev.key_id else 'none'}, from height {rev.from_height}; "
                f"the head is at height {height})"
            )
    return keys


def _verify_block(
    dev: str,
    j: int,
    raw: bytes,
    resolve: _Resolve,
    head: SignedHeader,
    prev: SignedHeader | None,
    last_seq: int | None,
) -> tuple[SignedHeader, list[BundledReading]]:
    w = "block entry"
    with _Where(f"device {dev}: block entry {j}"):
        f = codec.array(codec.decode(raw, _BLOCK_LIMITS, w), 3, w)
        header_wire = None if f[0] is None else codec.bin_(f[0], w, "header", None, MAX_CREDENTIAL)
        hproof = _hashes(f[1], w, "history_proof", MAX_HISTORY_PROOF)
        entries = f[2]
        if not isinstance(entries, list) or not entries:
            raise DecodeError(w, "field readings: expected an array of at least one reading")
        sh = head if header_wire is None else decode_header(header_wire)
    h = sh.header.height
    where = f"device {dev}, block at height {h}"
    if prev is not None and h <= prev.header.height:
        raise BundleError(
            f"{where}: blocks must be in strictly increasing height order, "
            f"found it after height {prev.header.height}"
        )
    if header_wire is None:
        if hproof:
            raise BundleError(f"{where}: the head's own block carries no history proof")
    else:
        _check_header(where, sh, resolve, head, hproof)
    if prev is not None and prev.header.height + 1 == h:
        with _Where(where):
            verify_link(prev, sh)
    with _Where(where):
        key = resolve(sh.header.key_id, h)  # already checked with the header's signature
    out: list[BundledReading] = []
    prev_index = -1
    for k, entry in enumerate(entries):
        br = _verify_reading(dev, sh, key, k, entry, prev_index, last_seq)
        out.append(br)
        prev_index = br.index
        last_seq = br.reading.reading.seq
    return sh, out


def _check_header(
    where: str, sh: SignedHeader, resolve: _Resolve, head: SignedHeader, proof: list[bytes]
) -> None:
    hd, top = sh.header, head.header
    if hd.height >= top.height:
        raise BundleError(
            f"{where}: not below the head (height {top.height}); a block above the head is not "
            "covered by it, and the head's own block carries no header",
            ChainError.code,
        )
    if hd.device_id != top.device_id:
        raise BundleError(f"{where}: header belongs to device {hd.device_id}", ChainError.code)
    if hd.epoch != top.epoch:
        raise BundleError(
            f"{where}: header epoch: expected {top.epoch} (the head's), found {hd.epoch}",
            ChainError.code,
        )
    with _Where(where):
        sh.verify(resolve(hd.key_id, hd.height))
        if hd.height + 1 == top.height:
            verify_link(sh, head)
    try:
        verify_inclusion(sh.hash, hd.height, top.height, proof, top.history_root)
    except ProofError as exc:
        raise BundleError(
            f"{where}: inclusion proof does not lead to the head's history_root "
            f"(tree of {top.height} header hashes): {exc}",
            exc.code,
        ) from exc


def _verify_reading(
    dev: str,
    sh: SignedHeader,
    key: PublicKey,
    k: int,
    entry: Any,
    prev_index: int,
    last_seq: int | None,
) -> BundledReading:
    hd = sh.header
    w = "reading entry"
    with _Where(lambda: f"device {dev}, block at height {hd.height}: reading entry {k}"):
        f = codec.array(entry, 3, w)
        index = codec.uint(f[0], w, "index", MAX_READINGS - 1)
        wire = codec.bin_(f[1], w, "wire", maximum=MAX_READING_WIRE)
        proof = _hashes(f[2], w, "proof", MAX_READING_PROOF)

    def where() -> str:  # formatted only when something fails: this runs for every reading
        return f"reading {index} of device {dev} at height {hd.height}"

    if index <= prev_index:
        raise BundleError(
            f"{where()}: readings must be in strictly increasing index order, "
            f"found it after index {prev_index}"
        )
    if index >= hd.count:
        raise BundleError(f"{where()}: index outside the block's {hd.count} readings")
    with _Where(where):
        sr = decode_reading(wire)
    r = sr.reading
    if r.device_id != hd.device_id or r.epoch != hd.epoch:
        raise BundleError(
            f"{where()}: belongs to {r.device_id} epoch {r.epoch}, "
            f"the block to {hd.device_id} epoch {hd.epoch}",
            ChainError.code,
        )
    if last_seq is not None and r.seq <= last_seq:
        raise BundleError(
            f"{where()}: sequence must increase along the chain: expected > {last_seq}, "
            f"found {r.seq}",
            SequenceError.code,
        )
    try:
        verify_inclusion(sr.leaf_hash, index, hd.count, proof, hd.merkle_root)
    except ProofError as exc:
        raise BundleError(
            f"{where()}: inclusion proof does not lead to the header's merkle_root: {exc}",
            exc.code,
        ) from exc
    with _Where(where):
        sr.verify(key)
    return BundledReading(dev, hd.height, index, sr, sh)
