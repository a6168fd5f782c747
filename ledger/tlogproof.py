"""C2SP ``.tlog-proof`` files (c2sp.org/tlog-proof): one leaf's inclusion proof with its checkpoint.

This module owns the proof's text and its verification:

- ``c2sp.org/tlog-proof@v1\\n``, then optionally ``extra <base64>\\n``, then ``index <n>\\n``, then
  the RFC 9162 inclusion path, one base64 hash a line (leaf's sibling first), then an empty line
  and the signed checkpoint note verbatim. Parsing is strict and bounded (at most 63 hashes,
  ``MAX_EXTRA_BYTES`` of extra data, the note's own limits); failures are ``DecodeError``.
- ``verify_tlog_proof`` follows the spec's steps: the caller computes the leaf hash; the
  checkpoint must be signed by the log key and cosigned by a quorum of witnesses; the path must
  lead from the leaf at ``index`` to the checkpoint's root.

For edgefleet a leaf is a device header (its hash is the leaf hash, checkpoint.py), and the extra
data lets a verifier recompute the leaf hash from the file alone:

- a **header proof** carries the signed header's wire bytes (``export_header_proof``,
  ``verify_header_proof``);
- a **reading proof** carries ``[format=1, header wire, reading wire, index in the block, RFC 9162
  path of the reading's leaf hash to the header's merkle_root]`` in canonical MessagePack
  (``export_reading_proof``, ``verify_reading_proof``): one reading of an item, from its bytes to
  a checkpoint the log signed and witnesses cosigned.

Header and reading signatures are checked by the caller against the key in force at that height
(certs.DeviceKeys): the proof says the log committed to these bytes, not who may sign them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger import codec
from ledger.block import MAX_READING_WIRE, MAX_READINGS, SignedHeader, decode_header
from ledger.checkpoint import parse_checkpoint, parse_device_origin
from ledger.cosignature import CosignatureVerifier, CosignedCheckpoint, verify_cosigned
from ledger.errors import DecodeError, ProofError, UsageError
from ledger.merkle import HASH_SIZE, inclusion_proof, root_from_leaf_hashes, verify_inclusion
from ledger.note import MAX_NOTE_BYTES, Note, NoteVerifier, b64decode, b64encode, parse_note
from ledger.reading import SignedReading, decode_reading

if TYPE_CHECKING:
    from ledger.store import Store

__all__ = [
    "HEADER_LINE",
    "MAX_EXTRA_BYTES",
    "MAX_PROOF_HASHES",
    "TlogProof",
    "export_header_proof",
    "export_reading_proof",
    "parse_tlog_proof",
    "verify_header_proof",
    "verify_reading_proof",
    "verify_tlog_proof",
]

HEADER_LINE = "c2sp.org/tlog-proof@v1"
MAX_PROOF_HASHES = 63  # a tree of at most 2^63-1 leaves
MAX_EXTRA_BYTES = 4096
MAX_INDEX = (1 << 63) - 2
MAX_PROOF_BYTES = 256 + (MAX_EXTRA_BYTES * 4 // 3 + 8) + MAX_PROOF_HASHES * 45 + MAX_NOTE_BYTES


@dataclass(frozen=True, slots=True)
class TlogProof:
    index: int
    hashes: tuple[bytes, ...]
    note: Note
    extra: bytes = b""

    def __post_init__(self) -> None:
        if type(self.index) is not int or not 0 <= self.index <= MAX_INDEX:
            raise UsageError(f"tlog proof: index out of 0..2^63-2: {self.index!r}")
        if len(self.hashes) > MAX_PROOF_HASHES or any(len(h) != HASH_SIZE for h in self.hashes):
            raise UsageError(f"tlog proof: at most {MAX_PROOF_HASHES} hashes of {HASH_SIZE} bytes")
        if type(self.extra) is not bytes or len(self.extra) > MAX_EXTRA_BYTES:
            raise UsageError(f"tlog proof: extra data is at most {MAX_EXTRA_BYTES} bytes")

    def encode(self) -> bytes:
        lines = [HEADER_LINE]
        if self.extra:
            lines.append("extra " + b64encode(self.extra))
        lines.append(f"index {self.index}")
        lines.extend(b64encode(h) for h in self.hashes)
        head = "".join(line + "\n" for line in lines) + "\n"
        return head.encode("ascii") + self.note.encode()


def parse_tlog_proof(data: bytes) -> TlogProof:
    """Parse a ``.tlog-proof`` file from untrusted bytes (nothing verified). Raises DecodeError."""
    w = "tlog proof"
    if type(data) is not bytes:
        raise DecodeError(w, f"expected bytes, found {type(data).__name__}")
    if len(data) > MAX_PROOF_BYTES:
        raise DecodeError(w, f"expected at most {MAX_PROOF_BYTES} bytes, found {len(data)}")
    blank = data.find(b"\n\n")
    if blank < 0:
        raise DecodeError(w, "no empty line before the checkpoint")
    try:
        head = data[:blank].decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError(w, "the lines before the checkpoint are ASCII") from None
    lines = head.split("\n")
    if lines[0] != HEADER_LINE:
        raise DecodeError(w, f"first line: expected {HEADER_LINE!r}, found {lines[0][:40]!r}")
    pos = 1
    extra = b""
    if pos < len(lines) and lines[pos].startswith("extra "):
        extra = b64decode(lines[pos][len("extra ") :], w, "extra")
        if not extra or len(extra) > MAX_EXTRA_BYTES:
            raise DecodeError(w, f"extra: expected 1..{MAX_EXTRA_BYTES} bytes, found {len(extra)}")
        pos += 1
    if pos >= len(lines) or not lines[pos].startswith("index "):
        raise DecodeError(w, "expected an 'index N' line")
    index = _decimal(lines[pos][len("index ") :], w)
    hash_lines = lines[pos + 1 :]
    if len(hash_lines) > MAX_PROOF_HASHES:
        raise DecodeError(w, f"expected at most {MAX_PROOF_HASHES} hashes, found {len(hash_lines)}")
    hashes = []
    for i, line in enumerate(hash_lines):
        h = b64decode(line, w, f"hash {i}")
        if len(h) != HASH_SIZE:
            raise DecodeError(w, f"hash {i}: expected {HASH_SIZE} bytes, found {len(h)}")
        hashes.append(h)
    note = parse_note(data[blank + 2 :])
    return TlogProof(index, tuple(hashes), note, extra)


def _decimal(text: str, w: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise DecodeError(w, f"index: expected a decimal without leading zeroes, found {text!r}")
    if len(text) > 19 or int(text) > MAX_INDEX:
        raise DecodeError(w, f"index: expected at most 2^63-2, found {text[:24]}")
    return int(text)


def verify_tlog_proof(
    proof: TlogProof,
    leaf_hash: bytes,
    log: NoteVerifier,
    witnesses: Iterable[CosignatureVerifier] = (),
    quorum: int = 0,
    *,
    origin: str | None = None,
) -> CosignedCheckpoint:
    """Check the checkpoint's signatures (log key, ``quorum`` witnesses) and the inclusion of
    ``leaf_hash`` at ``proof.index``. Raises; returns the verified checkpoint."""
    cosigned = verify_cosigned(proof.note, log, witnesses, quorum, origin=origin)
    cp = cosigned.checkpoint
    if not proof.index < cp.size:
        raise ProofError(
            "tlog proof: index must be below the tree size", f"< {cp.size}", proof.index
        )
    verify_inclusion(leaf_hash, proof.index, cp.size, proof.hashes, cp.root_hash)
    return cosigned


# --- edgefleet: a device header as the leaf -----------------------------------------------------


def export_header_proof(store: Store, height: int, checkpoint: Note) -> bytes:
    """The ``.tlog-proof`` of the own header at ``height`` in ``checkpoint`` (made by
    checkpoint.checkpoint_for on the same store), with the header's wire bytes as extra data."""
    cp = parse_checkpoint(checkpoint.text)
    hashes = store.own_header_hashes()
    if cp.size > len(hashes) or not 0 <= height < cp.size:
        raise UsageError(f"tlog proof: height {height} not in a checkpoint of size {cp.size}")
    if root_from_leaf_hashes(hashes[: cp.size]) != cp.root_hash:
        # e.g. a checkpoint of an earlier epoch whose superseded heads this store no longer has
        raise UsageError("tlog proof: the checkpoint is not of this store's chain")
    header = store.header_at(height)
    if header is None or header.hash != hashes[height]:
        raise UsageError(f"tlog proof: no own header at height {height}")
    path = inclusion_proof(hashes[: cp.size], height)
    return TlogProof(height, tuple(path), checkpoint, header.wire).encode()


def verify_header_proof(
    data: bytes,
    log: NoteVerifier,
    witnesses: Iterable[CosignatureVerifier] = (),
    quorum: int = 0,
) -> tuple[SignedHeader, CosignedCheckpoint]:
    """Parse and verify an edgefleet header proof; return the header (signature not checked:
    see the module docstring) and the verified checkpoint."""
    proof = parse_tlog_proof(data)
    if not proof.extra:
        raise DecodeError("tlog proof", "extra: an edgefleet proof carries the header's bytes")
    header = decode_header(proof.extra)
    cosigned = verify_tlog_proof(proof, header.hash, log, witnesses, quorum)
    device = parse_device_origin(cosigned.checkpoint.origin)
    if header.header.device_id != device.device_id:
        raise ProofError("tlog proof: header device", device.device_id, header.header.device_id)
    if header.header.height != proof.index:
        raise ProofError(
            "tlog proof: index is the header's height", header.header.height, proof.index
        )
    if header.header.epoch > device.epoch:
        raise ProofError(
            "tlog proof: header epoch above the log's", f"<= {device.epoch}", header.header.epoch
        )
    return header, cosigned


READING_PROOF_FORMAT = 1
_MAX_READING_PATH = (MAX_READINGS - 1).bit_length()  # 12 hashes for 4096 readings
_READING_EXTRA_LIMITS = codec.Limits(
    max_bytes=MAX_EXTRA_BYTES,
    max_array=max(5, _MAX_READING_PATH),
    max_str=0,
    max_bin=MAX_READING_WIRE,
    shape=(5, _MAX_READING_PATH),
)


def export_reading_proof(store: Store, height: int, index: int, checkpoint: Note) -> bytes:
    """The ``.tlog-proof`` of reading ``index`` of the own block at ``height`` in ``checkpoint``."""
    header_file = parse_tlog_proof(export_header_proof(store, height, checkpoint))
    block = store.block(height)
    if block is None or not 0 <= index < len(block.readings):
        raise UsageError(f"tlog proof: no reading {index} in the block at height {height}")
    leaves = [r.leaf_hash for r in block.readings]
    extra = codec.encode(
        [
            READING_PROOF_FORMAT,
            header_file.extra,
            block.readings[index].wire,
            index,
            list(inclusion_proof(leaves, index)),
        ]
    )
    return TlogProof(height, header_file.hashes, checkpoint, extra).encode()


def verify_reading_proof(
    data: bytes,
    log: NoteVerifier,
    witnesses: Iterable[CosignatureVerifier] = (),
    quorum: int = 0,
) -> tuple[SignedReading, SignedHeader, CosignedCheckpoint]:
    """Parse and verify a reading proof; return the reading, its header and the checkpoint.
    Signatures of the reading and the header are the caller's to check (module docstring)."""
    w = "reading proof"
    proof = parse_tlog_proof(data)
    f = codec.array(codec.decode(proof.extra, _READING_EXTRA_LIMITS, w), 5, w)
    if type(f[0]) is not int or f[0] != READING_PROOF_FORMAT:
        raise DecodeError(w, f"field format: expected {READING_PROOF_FORMAT}, found {f[0]!r}")
    header_wire = codec.bin_(f[1], w, "header", maximum=MAX_READING_WIRE)
    reading = decode_reading(codec.bin_(f[2], w, "reading", maximum=MAX_READING_WIRE))
    index = codec.uint(f[3], w, "index", MAX_READINGS - 1)
    if not isinstance(f[4], list):
        raise DecodeError(w, "field path: expected an array of hashes")
    path = [codec.bin_(h, w, "path", HASH_SIZE) for h in f[4]]
    header_file = TlogProof(proof.index, proof.hashes, proof.note, header_wire).encode()
    header, cosigned = verify_header_proof(header_file, log, witnesses, quorum)
    h = header.header
    if reading.reading.device_id != h.device_id:
        raise ProofError("reading proof: reading device", h.device_id, reading.reading.device_id)
    if not index < h.count:
        raise ProofError("reading proof: index within the block", f"< {h.count}", index)
    verify_inclusion(reading.leaf_hash, index, h.count, path, h.merkle_root)
    return reading, header, cosigned
