"""C2SP checkpoints (c2sp.org/tlog-checkpoint) of a device's history tree, one log per epoch.

This module owns the checkpoint text and which tree it describes:

- The text is ``origin\\n size\\n base64(root)\\n`` then optional non-empty extension lines (the
  spec discourages them; we emit none). The size is decimal without leading zeroes, the root 32
  bytes of standard base64. Parsing is strict and bounded; failures are ``DecodeError``.
- A device's log is the RFC 9162 tree whose leaf hashes are its header hashes, heights ``0..n-1``
  (ledger/history.py): the root a checkpoint of size ``n`` carries is the ``history_root`` that the
  header at height ``n`` signs. Leaves are the header hashes themselves
  (``SHA-256(HEADER_HASH || body)``), not ``SHA-256(0x00 || ...)``: the domain tag already keeps
  a leaf from passing for an interior node.
- The **origin** names the fleet, the device and the epoch:
  ``<fleet>/<device id>/epoch/<epoch>``, where ``<fleet>`` is ``edgefleet/<fleet root key id in
  hex>`` (``fleet_label``). A restore that opens a new epoch starts a new log: its checkpoints are
  never compared with those of the old epoch, whose superseded heads they need not extend.
- The device signs with its Ed25519 key in force at the head, under the key name equal to the
  origin (``device_signer``), so its key ID also changes with the epoch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger.errors import DecodeError, ProofError, UsageError, VerificationError
from ledger.identity import PublicKey, SigningKey, is_device_id
from ledger.merkle import EMPTY_ROOT, HASH_SIZE, root_from_leaf_hashes, verify_consistency
from ledger.note import (
    MAX_KEY_NAME_BYTES,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteVerifier,
    b64decode,
    b64encode,
    check_key_name,
    open_note,
    sign_note,
)
from ledger.reading import MAX_EPOCH

if TYPE_CHECKING:  # the store is only read through its public methods; no sqlite3 import here
    from ledger.store import Store

__all__ = [
    "MAX_EXTENSION_LINES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "DeviceLog",
    "checkpoint_for",
    "checkpoint_of_hashes",
    "device_origin",
    "device_signer",
    "device_verifier",
    "fleet_label",
    "open_checkpoint",
    "parse_checkpoint",
    "parse_device_origin",
    "verify_checkpoint_consistency",
]

MAX_TREE_SIZE = (1 << 63) - 1  # what every implementation can hold in a signed 64-bit integer
MAX_EXTENSION_LINES = 16
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_FLEET_RE = re.compile(r"edgefleet/[0-9a-f]{16}")
_ORIGIN_RE = re.compile(r"(?P<fleet>.+)/(?P<device>ef[a-z2-7]{24})/epoch/(?P<epoch>0|[1-9][0-9]*)")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: the log's origin, its size and root hash, and any extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            _check(self)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None

    def text(self) -> str:
        lines = (self.origin, str(self.size), b64encode(self.root_hash), *self.extensions)
        return "".join(line + "\n" for line in lines)


_CONTROL = re.compile(r"[\x00-\x1f]")  # a character below U+0020


def _check(c: Checkpoint) -> None:
    w = "checkpoint"
    if not isinstance(c.origin, str) or not c.origin:
        raise DecodeError(w, "origin: expected a non-empty line")
    if len(c.origin.encode("utf-8")) > MAX_KEY_NAME_BYTES:
        raise DecodeError(w, f"origin: expected at most {MAX_KEY_NAME_BYTES} bytes")
    if _CONTROL.search(c.origin):
        raise DecodeError(w, "origin: control character")
    if type(c.size) is not int or not 0 <= c.size <= MAX_TREE_SIZE:
        raise DecodeError(w, f"size: expected an integer in 0..2^63-1, found {c.size!r}")
    if type(c.root_hash) is not bytes or len(c.root_hash) != HASH_SIZE:
        raise DecodeError(w, f"root hash: expected {HASH_SIZE} bytes")
    if c.size == 0 and c.root_hash != EMPTY_ROOT:
        raise DecodeError(w, "root hash: the empty tree's root is SHA-256 of the empty string")
    if len(c.extensions) > MAX_EXTENSION_LINES:
        raise DecodeError(w, f"expected at most {MAX_EXTENSION_LINES} extension lines")
    for i, ext in enumerate(c.extensions):
        if not isinstance(ext, str) or not ext or "\n" in ext:
            raise DecodeError(w, f"extension line {i}: expected a non-empty line")
        if _CONTROL.search(ext):
            raise DecodeError(w, f"extension line {i}: control character")


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (the part before the blank line). Raises DecodeError."""
    w = "checkpoint"
    if not isinstance(text, str) or not text.endswith("\n"):
        raise DecodeError(w, "expected lines ending in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise DecodeError(w, f"expected origin, size and root hash lines, found {len(lines)} lines")
    origin, size, root = lines[0], lines[1], lines[2]
    if not _SIZE_RE.fullmatch(size):
        raise DecodeError(w, f"size: expected a decimal without leading zeroes, found {size!r}")
    if int(size) > MAX_TREE_SIZE:
        raise DecodeError(w, f"size: expected at most 2^63-1, found {size}")
    raw = b64decode(root, w, "root hash")
    if len(raw) != HASH_SIZE:
        raise DecodeError(w, f"root hash: expected {HASH_SIZE} bytes, found {len(raw)}")
    return _checked(origin, int(size), raw, tuple(lines[3:]))


def _checked(origin: str, size: int, root: bytes, ext: tuple[str, ...]) -> Checkpoint:
    try:
        return Checkpoint(origin, size, root, ext)
    except UsageError as exc:
        raise DecodeError("checkpoint", str(exc).removeprefix("checkpoint: ")) from None


# --- edgefleet's logs ---------------------------------------------------------------------------


def fleet_label(root: PublicKey) -> str:
    """``edgefleet/<fleet root key id in hex>``: the fleet part of every origin."""
    return "edgefleet/" + root.key_id.hex()


def device_origin(fleet: str, device_id: str, epoch: int) -> str:
    """``<fleet>/<device id>/epoch/<epoch>``: the origin of one device's log in one epoch."""
    if not _FLEET_RE.fullmatch(fleet):
        raise UsageError(f"fleet label: expected edgefleet/<16 hex digits>, found {fleet!r}")
    if not is_device_id(device_id):
        raise UsageError(f"not a device id: {device_id!r}")
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise UsageError(f"epoch: expected 0..{MAX_EPOCH}, found {epoch!r}")
    origin = f"{fleet}/{device_id}/epoch/{epoch}"
    check_key_name(origin, "origin")
    return origin


@dataclass(frozen=True, slots=True)
class DeviceLog:
    """What an origin of ours names."""

    fleet: str
    device_id: str
    epoch: int


def parse_device_origin(origin: str) -> DeviceLog:
    """Split an origin made by ``device_origin``. Raises DecodeError for any other origin."""
    m = _ORIGIN_RE.fullmatch(origin)
    if m is None or not _FLEET_RE.fullmatch(m["fleet"]) or int(m["epoch"]) > MAX_EPOCH:
        raise DecodeError("origin", f"expected edgefleet/<fleet>/<device>/epoch/<n>: {origin!r}")
    return DeviceLog(m["fleet"], m["device"], int(m["epoch"]))


def device_signer(origin: str, key: SigningKey) -> Ed25519Signer:
    """The device's note signer for one log: key name = origin (tlog-checkpoint's advice)."""
    return Ed25519Signer(origin, key)


def device_verifier(origin: str, public: PublicKey) -> Ed25519Verifier:
    """The verifier of a device's checkpoints for one log (from its public key in force)."""
    return Ed25519Verifier(origin, public)


def checkpoint_for(store: Store, fleet: str, key: SigningKey) -> Note:
    """The signed checkpoint of the device's own chain at its head, in the head's epoch.

    Reads only the store's public API (head, history). ``key`` must be the key that signed the
    head (the key in force). Raises UsageError for an empty chain or the wrong key."""
    head = store.head()
    if head is None:
        raise UsageError("checkpoint: the chain is empty (no head to commit to)")
    if head.header.key_id != key.key_id:
        raise UsageError("checkpoint: sign with the key in force at the head")
    history = store.history()
    if history.size != head.header.height + 1:
        raise UsageError(
            f"checkpoint: history holds {history.size} headers, head at height {head.header.height}"
        )
    origin = device_origin(fleet, head.header.device_id, head.header.epoch)
    cp = Checkpoint(origin, history.size, history.root())
    return sign_note(cp.text(), device_signer(origin, key))


def checkpoint_of_hashes(origin: str, header_hashes: Iterable[bytes]) -> Checkpoint:
    """The checkpoint of a tree over ``header_hashes`` (a reference path, used by tests)."""
    hashes = list(header_hashes)
    return Checkpoint(origin, len(hashes), root_from_leaf_hashes(hashes))


def open_checkpoint(
    data: bytes | Note,
    log: NoteVerifier,
    witnesses: Iterable[NoteVerifier] = (),
    *,
    origin: str | None = None,
) -> tuple[Checkpoint, Note]:
    """Verify the log's signature and parse the checkpoint text; its origin must be ``origin``
    (by default the log key's name, as for every log of ours).

    Raises DecodeError, SignatureError (a known key's line fails), or VerificationError (the log
    did not sign, or another origin). Quorums of cosignatures: cosignature.verify_cosigned."""
    opened = open_note(data, [log, *witnesses])
    if not any((s.name, s.key_id) == (log.name, log.key_id) for s in opened.verified):
        raise VerificationError("checkpoint: not signed by the log key", log.vkey(), "no signature")
    cp = parse_checkpoint(opened.text)
    want = log.name if origin is None else origin
    if cp.origin != want:
        raise VerificationError("checkpoint: origin", want, cp.origin)
    return cp, opened.note


def verify_checkpoint_consistency(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Raise ProofError unless ``new`` extends ``old`` (same origin; RFC 9162 consistency)."""
    if old.origin != new.origin:
        raise ProofError("checkpoint consistency: origin", old.origin, new.origin)
    if old.size > new.size:
        raise ProofError("checkpoint consistency: old size above new size", new.size, old.size)
    if old.size == 0:
        if proof:
            raise ProofError(
                "checkpoint consistency: from size 0 the proof is empty", 0, len(proof)
            )
        return
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
