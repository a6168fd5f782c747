"""C2SP signed notes (c2sp.org/signed-note): text signed by one or more keys.

This module owns the note's bytes and its trust rules; checkpoint.py, cosignature.py and
tlogproof.py build on it.

- A note is a text ending in ``\\n``, a blank line, then one or more signature lines
  ``"— " name " " base64(key_id[4] || signature) "\\n"``. The text is everything up to and
  including the newline before the *last* blank line.
- A **key name** is non-empty, at most 255 bytes of UTF-8, without Unicode spaces or ``+``.
- A **key ID** is ``SHA-256(name || 0x0A || type || public key)[:4]`` read big-endian; type 0x01
  is an Ed25519 signature over the note text (this module), 0x04 a timestamped cosignature
  (cosignature.py).
- A **vkey** is ``name+hex(key ID)+base64(type || public key)``; parsing recomputes the key ID.

Parsing is strict and bounded (``MAX_NOTE_BYTES``, ``MAX_SIGNATURES``): valid UTF-8, no control
character but ``\\n`` (so CR, CRLF and NUL are refused), canonical padded base64, no line
repeated, nothing after the last signature line. Every parse failure is a ``DecodeError``.

``open_note`` applies the spec's trust rules: a signature line whose (name, key ID) matches no
configured verifier is kept aside, unverified; one that matches must verify, or the whole note is
refused with ``SignatureError``; a note with no verified signature is refused with
``VerificationError``. Verification raises and never returns False.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from ledger.errors import DecodeError, SignatureError, UsageError, VerificationError
from ledger.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PublicKey, SigningKey

__all__ = [
    "ED25519",
    "MAX_KEY_NAME_BYTES",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Ed25519Signer",
    "Ed25519Verifier",
    "Note",
    "NoteVerifier",
    "OpenedNote",
    "Signature",
    "VKey",
    "b64decode",
    "b64encode",
    "check_key_name",
    "key_id",
    "open_note",
    "parse_note",
    "parse_vkey",
    "sign_note",
]

ED25519 = 0x01  # signature type of plain Ed25519 note signatures
MAX_NOTE_BYTES = 65_536  # room for 16 ML-DSA-44 cosignatures (about 3.3 kB each in base64)
MAX_SIGNATURES = 32  # the spec asks verifiers to accept at least 16
MAX_KEY_NAME_BYTES = 255  # what transparency-dev/formats accepts
KEY_ID_SIZE = 4
_SIG_PREFIX = "\u2014 "  # em dash, space
_MIN_SIG_BYTES = KEY_ID_SIZE + 1  # a key ID and at least one byte, as golang.org/x/mod accepts


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str, field: str) -> bytes:
    """Standard padded base64 (RFC 4648 section 4), canonical only: re-encoding gives ``text``."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise DecodeError(
            what, f"field {field}: expected standard base64, found {text!r}"
        ) from None
    if b64encode(raw) != text:
        raise DecodeError(what, f"field {field}: base64 is not canonical: {text!r}")
    return raw


_ASCII_NOT_IN_NAME = re.compile(r"[\x00-\x20+]")  # controls, the ASCII spaces, plus
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # every control character but newline


def _is_space(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) in ("Zs", "Zl", "Zp")


def check_key_name(name: str, what: str = "key name") -> str:
    """Raise DecodeError unless ``name`` is a valid key name (also used for checkpoint origins)."""
    if not isinstance(name, str) or not name:
        raise DecodeError(what, "expected a non-empty key name")
    if len(name.encode("utf-8")) > MAX_KEY_NAME_BYTES:
        raise DecodeError(what, f"expected at most {MAX_KEY_NAME_BYTES} bytes, found a longer name")
    if name.isascii() and _ASCII_NOT_IN_NAME.search(name) is None:
        return name  # the common case, decided at C speed: the loop below finds nothing in it
    for c in name:
        if c == "+" or _is_space(c) or ord(c) < 0x20:
            raise DecodeError(what, f"a key name holds no space, plus or control: found {c!r}")
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian integer."""
    data = name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key
    return int.from_bytes(hashlib.sha256(data).digest()[:KEY_ID_SIZE], "big")


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line: the key name, the 32-bit key ID and the signature bytes after it."""

    name: str
    key_id: int
    data: bytes

    def __post_init__(self) -> None:
        try:
            check_key_name(self.name)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None
        if not 0 <= self.key_id < 1 << 32 or not self.data:
            raise UsageError("a signature has a 32-bit key ID and at least one byte")

    def line(self) -> str:
        raw = self.key_id.to_bytes(KEY_ID_SIZE, "big") + self.data
        return f"{_SIG_PREFIX}{self.name} {b64encode(raw)}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A note text and its signature lines, in order."""

    text: str
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        _check_text(self.text, UsageError)
        if not self.signatures:
            raise UsageError("a signed note carries at least one signature")
        if len(self.signatures) > MAX_SIGNATURES:
            raise UsageError(f"a note carries at most {MAX_SIGNATURES} signatures")

    def encode(self) -> bytes:
        out = self.text + "\n" + "".join(s.line() for s in self.signatures)
        data = out.encode("utf-8")
        if len(data) > MAX_NOTE_BYTES:
            raise UsageError(f"a note is at most {MAX_NOTE_BYTES} bytes, found {len(data)}")
        if len(set(s.line() for s in self.signatures)) != len(self.signatures):
            raise UsageError("a note carries no signature line twice")
        return data

    def with_signature(self, signature: Signature) -> Note:
        """This note with ``signature`` appended, replacing any from the same (name, key ID)."""
        kept = tuple(
            s for s in self.signatures if (s.name, s.key_id) != (signature.name, signature.key_id)
        )
        return Note(self.text, (*kept, signature))


def _check_text(text: str, error: type[Exception]) -> None:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise error("note text: must end in a newline")
    found = _CONTROL.search(text)
    if found is not None:
        raise error(f"note text: no control character but newline, found {found.group()!r}")


def parse_note(data: bytes) -> Note:
    """Parse a signed note from untrusted bytes (no signature is checked). Raises DecodeError."""
    w = "signed note"
    if type(data) is not bytes:
        raise DecodeError(w, f"expected bytes, found {type(data).__name__}")
    if len(data) > MAX_NOTE_BYTES:
        raise DecodeError(w, f"expected at most {MAX_NOTE_BYTES} bytes, found {len(data)}")
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(w, f"invalid UTF-8 at byte {exc.start}") from None
    bad = _CONTROL.search(whole)
    if bad is not None:
        c = bad.group()
        raise DecodeError(w, f"control character {c!r} at character {bad.start()} (only newline)")
    split = whole.rfind("\n\n")
    if split < 0:
        raise DecodeError(w, "no blank line between the text and the signatures")
    text, sigs = whole[: split + 1], whole[split + 2 :]
    if not sigs:
        raise DecodeError(w, "expected at least one signature line after the blank line")
    if not sigs.endswith("\n"):
        raise DecodeError(w, "the last signature line must end in a newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise DecodeError(w, f"expected at most {MAX_SIGNATURES} signatures, found {len(lines)}")
    if len(set(lines)) != len(lines):
        raise DecodeError(w, "a signature line is repeated")
    return Note(text, tuple(_parse_signature_line(line, i) for i, line in enumerate(lines)))


def _parse_signature_line(line: str, index: int) -> Signature:
    w = f"signed note: signature line {index}"
    if not line.startswith(_SIG_PREFIX):
        raise DecodeError(w, f"expected an em dash and a space, found {line[:16]!r}")
    name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not space:
        raise DecodeError(w, "expected a key name, a space and a signature")
    check_key_name(name, w)
    raw = b64decode(b64, w, "signature")
    if len(raw) < _MIN_SIG_BYTES:
        raise DecodeError(w, f"expected a 4-byte key ID and a signature, found {len(raw)} bytes")
    return Signature(name, int.from_bytes(raw[:KEY_ID_SIZE], "big"), raw[KEY_ID_SIZE:])


# --- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VKey:
    """A parsed verifier key ``name+hex(key ID)+base64(type || key)``, its key ID checked."""

    name: str
    key_id: int
    sig_type: int
    key: bytes

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{b64encode(bytes([self.sig_type]) + self.key)}"


def parse_vkey(text: str) -> VKey:
    """Parse a vkey string. Raises DecodeError, also when the key ID does not match the key."""
    w = "vkey"
    if not isinstance(text, str) or len(text) > MAX_KEY_NAME_BYTES + 16 + 4096:
        raise DecodeError(w, "expected a vkey string of bounded length")
    # The name holds no plus and the key ID is hex, so the first two pluses split; base64 may hold
    # more.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise DecodeError(w, f"expected name+keyid+key (3 parts), found {len(parts)} parts")
    name, hex_id, b64 = parts
    check_key_name(name, w)
    if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
        raise DecodeError(w, f"field key ID: expected 8 lower-case hex digits, found {hex_id!r}")
    raw = b64decode(b64, w, "key")
    if len(raw) < 2:
        raise DecodeError(w, "field key: expected a type byte and key material")
    vk = VKey(name, int(hex_id, 16), raw[0], raw[1:])
    computed = key_id(name, vk.sig_type, vk.key)
    if computed != vk.key_id:
        raise DecodeError(w, f"key ID: expected {computed:08x} for this key, found {hex_id}")
    return vk


class NoteVerifier(ABC):
    """A configured key: its name and key ID select signature lines, ``verify`` checks one."""

    name: str
    key_id: int
    sig_type: int
    public: PublicKey

    @abstractmethod
    def verify(self, text: bytes, data: bytes) -> None:
        """Raise SignatureError unless ``data`` (the bytes after the key ID) signs ``text``."""

    def vkey(self) -> str:
        return str(VKey(self.name, self.key_id, self.sig_type, self.public.raw))

    def _bind(self, name: str, public: PublicKey, sig_type: int) -> None:
        try:
            check_key_name(name)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None
        self.name, self.public, self.sig_type = name, public, sig_type
        self.key_id = key_id(name, sig_type, public.raw)


class Ed25519Verifier(NoteVerifier):
    """Signature type 0x01: Ed25519 (RFC 8032) over the note text."""

    def __init__(self, name: str, public: PublicKey) -> None:
        self._bind(name, public, ED25519)

    @classmethod
    def from_vkey(cls, text: str) -> Ed25519Verifier:
        vk = parse_vkey(text)
        if vk.sig_type != ED25519 or len(vk.key) != PUBLIC_KEY_SIZE:
            raise DecodeError("vkey", f"expected an Ed25519 key (type 0x01), found {vk.sig_type}")
        return cls(vk.name, PublicKey(vk.key))

    def verify(self, text: bytes, data: bytes) -> None:
        self.public.verify(b"", text, data, f"note signature of {self.name}+{self.key_id:08x}")


class Ed25519Signer:
    """Signs note texts with an Ed25519 key under a key name (signature type 0x01)."""

    def __init__(self, name: str, key: SigningKey) -> None:
        self.verifier = Ed25519Verifier(name, key.public)
        self._key = key

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    def sign(self, text: str) -> Signature:
        _check_text(text, UsageError)
        sig = self._key.sign(b"", text.encode("utf-8"))
        assert len(sig) == SIGNATURE_SIZE
        return Signature(self.name, self.key_id, sig)


def sign_note(text: str, signer: Ed25519Signer) -> Note:
    """A note of ``text`` signed by ``signer`` (more signatures: ``Note.with_signature``)."""
    return Note(text, (signer.sign(text),))


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A note that verified: its text, the signatures that verified and those left unchecked."""

    note: Note
    verified: tuple[Signature, ...]
    unverified: tuple[Signature, ...]

    @property
    def text(self) -> str:
        return self.note.text


def open_note(data: bytes | Note, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Parse ``data`` and check it under the trust rules of the spec (see the module docstring).

    Raises DecodeError (malformed), SignatureError (a known key's signature fails, or a known key
    signed twice) or VerificationError (no known key signed). ``verifiers`` must not hold two
    keys with the same name and key ID (UsageError)."""
    note = data if isinstance(data, Note) else parse_note(data)
    known: dict[tuple[str, int], NoteVerifier] = {}
    for given in verifiers:
        if (given.name, given.key_id) in known:
            raise UsageError(f"two verifiers for key {given.name}+{given.key_id:08x}")
        known[(given.name, given.key_id)] = given
    text = note.text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    for sig in note.signatures:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            unverified.append(sig)
            continue
        if any((s.name, s.key_id) == (sig.name, sig.key_id) for s in verified):
            raise SignatureError(f"note: key {sig.name}+{sig.key_id:08x} signed twice")
        v.verify(text, sig.data)
        verified.append(sig)
    if not verified:
        names = sorted(f"{n}+{i:08x}" for n, i in known)
        raise VerificationError(
            "note: no signature from a known key",
            expected=" or ".join(names) or "(none)",
            found=", ".join(f"{s.name}+{s.key_id:08x}" for s in note.signatures),
        )
    return OpenedNote(note, tuple(verified), tuple(unverified))
