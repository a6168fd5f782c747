"""Who sent a protocol message, proven: the authenticator of wire version 2 (docs/PROTOCOL.md
12.1.5), made and checked here for both cores.

A message on the wire is its **body** (the canonical envelope ``[2, type, sender, ...fields]``
its core's ``wire`` module encodes) with one more field appended, the **authenticator**
``bin(72) = key_id(8) || Ed25519 signature(64)`` over ``MESSAGE || body``, signed with the
sender's current device key. So the sealed message is the body with its fixarray count one
higher and ``c4 48 <key id> <signature>`` after it; the signed bytes are recovered from the
sealed ones without decoding anything (first byte minus one, the 74 trailing bytes cut).

``authenticate`` runs before any decoding: it reads the sender from its fixed offset (bytes
4..29, after ``9N 02 TT ba``), looks the key id up in the device's one ``TrustStore``, and
verifies. Only then is there a sender to charge: a message that fails here, for whatever reason
(bit errors, forgeries, a revoked key), charges nobody. Verdicts:

- ``OLD_VERSION``: a version-1 envelope (no authenticator): refused, never mixed in.
- ``UNATTRIBUTABLE``: anything else that is not proven (not an envelope, a bad signature, a
  revoked key, an unknown sender or key: ``unknown`` then names the device whose credentials
  to ask for).

One exception, chosen on measurements (bench/auth.py, docs/PROTOCOL.md 12.1.5): a type the core
names **self-proving** (gossip's ANNOUNCE of the sender's own headers) may carry an empty
authenticator (``c4 00``); it is passed on with ``signed=False``, and the core accepts it only
if its content proves the sender (each header signed by the sender's key) and never charges
anyone for it.

``open_envelope`` is the one door of both cores: authenticate, then decode, then name the peer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from agent.protocol import envelope
from agent.protocol.lru import Lru
from agent.protocol.trust import TrustStore
from ledger.errors import DecodeError, UsageError, VerificationError
from ledger.identity import KEY_ID_SIZE, SIGNATURE_SIZE, SigningKey, is_device_id

MESSAGE: Final = b"edgefleet/v2/message\x00"  # domain of the authenticator's signature
AUTH_SIZE: Final = KEY_ID_SIZE + SIGNATURE_SIZE
_FRAME: Final = bytes((0xC4, AUTH_SIZE))  # bin8 of 72 bytes
TRAILER: Final = len(_FRAME) + AUTH_SIZE  # bytes the authenticator adds after the body
EMPTY: Final = b"\xc4\x00"  # an empty authenticator: bin8 of 0 bytes
_SENDER: Final = slice(4, 30)  # 9N VV TT ba <26 bytes of device id>
_MIN_SEALED: Final = 30 + TRAILER

OLD_VERSION: Final = "old_version"
UNATTRIBUTABLE: Final = "unattributable"


class Signer(Protocol):
    """Whatever holds the device's current signing key (it changes when the device rotates)."""

    @property
    def key(self) -> SigningKey: ...


@dataclass(slots=True)
class KeySigner:
    """A ``Signer`` over one key; the runtime sets ``key`` when the device rotates."""

    key: SigningKey


@dataclass(frozen=True, slots=True)
class Verdict:
    """``sender``: the proven sender ('' when refused); ``body``: the signed envelope;
    ``tag``: the signature (names one signed message, for charge-once); ``refused``: '' or
    ``OLD_VERSION`` / ``UNATTRIBUTABLE``; ``reason``: why, for the counters; ``unknown``: a
    device whose credentials are missing (ask for them, charge nobody); ``signed``: False for
    a self-proving message with an empty authenticator (its sender is only what its content
    proves: the core checks it, and charges nobody for it)."""

    sender: str
    body: bytes
    tag: bytes
    refused: str = ""
    reason: str = ""
    unknown: str = ""
    signed: bool = True


def seal(body: bytes, signer: Signer) -> bytes:
    """The sealed message: ``body`` (a canonical version-2 envelope) with its authenticator."""
    key = signer.key
    signature = key.sign(MESSAGE, body)
    return bytes((body[0] + 1,)) + body[1:] + _FRAME + key.key_id + signature


def seal_unsigned(body: bytes) -> bytes:
    """``body`` with an empty authenticator: only for a type whose content proves its sender
    (an ANNOUNCE of the sender's own signed headers, 12.1.5)."""
    return bytes((body[0] + 1,)) + body[1:] + EMPTY


def body_of(sealed: bytes) -> bytes:
    """The signed body of a sealed message (no check: ``authenticate`` makes them)."""
    return bytes((sealed[0] - 1,)) + sealed[1:-TRAILER]


def _refuse(refused: str, reason: str, unknown: str = "") -> Verdict:
    return Verdict("", b"", b"", refused, reason, unknown)


def authenticate(
    payload: bytes, trust: TrustStore, self_proving: frozenset[int] = frozenset()
) -> Verdict:
    """Prove who sent ``payload``, from its bytes and the trust store alone. Never raises.
    ``self_proving``: the types that may come with an empty authenticator (their content
    proves it, and the core checks that: the verdict then says ``signed=False``).

    A verdict reached without the trust store (anything refused before a key is looked up, and
    a self-proving message with an empty authenticator) is a pure function of the bytes: it is
    remembered process-wide (``_PURE``), so the devices of one process that all receive one
    domain broadcast read its bytes once. A verdict that looked a key up is never remembered
    (each device judges with its own trust store)."""
    if type(payload) is bytes:
        held = _PURE.get(payload)
        if held is not None and held[0] == self_proving:
            return held[1]
    verdict, pure = _authenticate(payload, trust, self_proving)
    if pure and type(payload) is bytes:
        _PURE[payload] = (self_proving, verdict)
        while len(_PURE) > _PURE_MAX:
            try:
                _PURE.pop(next(iter(_PURE)), None)
            except (StopIteration, RuntimeError):  # emptied or changed by another thread
                break
    return verdict


# Verdicts that a message's bytes alone decide, by those bytes (with the self-proving types they
# were judged with): bounded, oldest first. A cache, never the truth: a miss judges again.
_PURE: dict[bytes, tuple[frozenset[int], Verdict]] = {}
_PURE_MAX = 1_024


def _authenticate(
    payload: bytes, trust: TrustStore, self_proving: frozenset[int]
) -> tuple[Verdict, bool]:
    """The verdict, and whether the trust store was left out of it (a pure one)."""
    if not isinstance(payload, bytes) or len(payload) < 3 or payload[0] & 0xF0 != 0x90:
        return _refuse(UNATTRIBUTABLE, "not_envelope"), True
    if payload[1] in envelope.OLD_VERSIONS:
        return _refuse(OLD_VERSION, OLD_VERSION), True
    if (
        payload[1] != envelope.VERSION
        or len(payload) < 30 + len(EMPTY)
        or payload[0] < 0x95  # the body has at least 4 fields
        or payload[3] != 0xBA
    ):
        return _refuse(UNATTRIBUTABLE, "not_envelope"), True
    try:
        sender = payload[_SENDER].decode("ascii")
    except UnicodeDecodeError:
        return _refuse(UNATTRIBUTABLE, "not_envelope"), True
    if not is_device_id(sender):
        return _refuse(UNATTRIBUTABLE, "not_envelope"), True
    framed = len(payload) >= _MIN_SEALED and payload[-TRAILER:-AUTH_SIZE] == _FRAME
    verdict = _verify(payload, sender, trust) if framed else _refuse(UNATTRIBUTABLE, "not_envelope")
    if verdict.refused and payload[2] in self_proving and payload[-len(EMPTY) :] == EMPTY:
        # An empty authenticator (a signed message's can never verify as one: its last field
        # is 72 bytes; an unsigned one whose last 74 bytes happen to look signed lands here).
        body = bytes((payload[0] - 1,)) + payload[1 : -len(EMPTY)]
        return Verdict(sender, body, b"", signed=False), not framed
    return verdict, not framed


def _verify(payload: bytes, sender: str, trust: TrustStore) -> Verdict:
    keys = trust.keys(sender)
    if keys is None:
        return _refuse(UNATTRIBUTABLE, "unknown_sender", sender)
    key_id = payload[-AUTH_SIZE:-SIGNATURE_SIZE]
    if None in keys.revoked_from or key_id in keys.revoked_from:
        return _refuse(UNATTRIBUTABLE, "revoked")
    key = next((s.key for s in keys.spans if s.key.key_id == key_id), None)
    if key is None:
        return _refuse(UNATTRIBUTABLE, "unknown_key", sender)
    body = body_of(payload)
    signature = payload[-SIGNATURE_SIZE:]
    try:
        key.verify(MESSAGE, body, signature, "message")
    except VerificationError:
        return _refuse(UNATTRIBUTABLE, "bad_signature")
    return Verdict(sender, body, signature)


class Message(Protocol):
    @property
    def sender(self) -> str: ...


M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Opened(Generic[M]):
    """A message whose sender is proven. ``tag``: its signature, naming this one signed
    message (a replayed copy has the same tag, so a core charges a message once). ``signed``
    False: a self-proving message (``Verdict.signed``): the core must check its content names
    ``peer`` and must charge nobody for it."""

    peer: str
    msg: M
    tag: bytes
    signed: bool = True


def open_envelope(
    claimed: str | None,
    payload: bytes,
    decode: Callable[[bytes], M],
    trust: TrustStore,
    counters: Counter[str],
    blame: Callable[[str, str], None],
    charged: Lru[bytes, bool],
    self_proving: frozenset[int] = frozenset(),
) -> tuple[Opened[M] | None, Verdict]:
    """Authenticate untrusted ``payload``, then decode it: the opened message, or None when it
    is dropped, with the authentication verdict (whose ``unknown`` names a device whose
    credentials the core may ask for). Nobody is charged for a message that is not proven:
    it is counted ``old_version`` (a version-1 envelope) or ``unattributable`` (with
    ``unattributable_<reason>``). ``claimed``: the sender as the transport knows it, a hint only
    (MQTT does not prove it): a proven message under another device's name is dropped as
    ``sender_mismatch``, charging nobody. ``blame(peer, "malformed")``: the proven sender sent
    bytes that do not decode; the core decides what it costs. ``charged``: the tags of messages
    that already cost their sender (the core adds those its content checks charge): a replayed
    copy of one is dropped as ``replayed_charged``, so one signed message is charged once.
    ``self_proving``: the types that may come unsigned (``Opened.signed`` False)."""
    verdict = authenticate(payload, trust, self_proving)
    if verdict.refused:
        counters[verdict.refused] += 1
        if verdict.refused == UNATTRIBUTABLE:
            counters[f"unattributable_{verdict.reason}"] += 1
        return None, verdict
    peer = verdict.sender
    if claimed is not None and claimed != peer:
        counters["sender_mismatch"] += 1
        return None, verdict
    if verdict.signed and verdict.tag in charged:
        counters["replayed_charged"] += 1
        return None, verdict
    try:
        msg = decode(verdict.body)
    except DecodeError:
        if not verdict.signed:  # nothing proves who sent garbage without a signature
            counters[UNATTRIBUTABLE] += 1
            counters["unattributable_malformed"] += 1
            return None, verdict
        charged.put(verdict.tag, True)
        blame(peer, "malformed")
        return None, verdict
    if msg.sender != peer:  # the decoder read the same bytes: a bug, never a peer's doing
        raise UsageError(f"decoded sender {msg.sender} is not the proven sender {peer}")
    return Opened(peer, msg, verdict.tag, verdict.signed), verdict


# How long a message from a tracked device waits for that device's credentials (network time),
# and how much is held: past these it is counted unattributable at once.
AWAIT_MS: Final = 60_000
AWAIT_PER_SENDER: Final = 8
AWAIT_BYTES: Final = 262_144


class Awaiting:
    """Messages refused only because their sender's certificate had not arrived yet (reason
    ``unknown_sender``), from a device the core tracks: held, not acted on, and judged once the
    credentials arrive (docs/PROTOCOL.md 12.1.5). A device that joins a fleet on another
    machine learns its peers' certificates from their CERTS, and their first broadcasts may
    come before them: that is not an attack, so it is not counted unattributable while it
    waits. When the trust store changes, each held message is authenticated again: proven, it
    is counted ``proven_late`` (and dropped all the same: its sender repeats what matters);
    refused now that its sender is known (a bad signature under the learned key, an unknown
    key id, a revoked key), it is counted ``unattributable`` with that reason. A message whose
    sender's credentials do not arrive within ``hold_ms`` is counted ``unattributable`` with
    its first reason. Anything else (an unknown key of a known sender, a bad signature, a
    non-member) is counted at once, and so is a message past the bounds: ``per_sender``
    messages of one sender, ``max_bytes`` in all. ``held_for_credentials`` counts the messages
    held."""

    def __init__(
        self,
        hold_ms: int = AWAIT_MS,
        per_sender: int = AWAIT_PER_SENDER,
        max_bytes: int = AWAIT_BYTES,
    ) -> None:
        self.hold_ms = hold_ms
        self.per_sender = per_sender
        self.max_bytes = max_bytes
        self._held: dict[str, list[tuple[int, bytes, str]]] = {}  # sender -> (until, bytes, why)
        self._bytes = 0
        self._version = -1  # the trust store's version the held messages were judged under

    def __len__(self) -> int:
        return sum(len(held) for held in self._held.values())

    def hold(self, verdict: Verdict, payload: bytes, now: int, counters: Counter[str]) -> bool:
        """Hold ``payload``, which ``open_envelope`` refused and counted for ``verdict.unknown``'s
        missing credentials: its count is taken back until it is judged. False: over the bounds
        (it stays counted unattributable)."""
        sender = verdict.unknown
        held = self._held.get(sender, [])
        if verdict.reason != "unknown_sender" or len(held) >= self.per_sender:
            return False
        if self._bytes + len(payload) > self.max_bytes:
            return False
        self._held[sender] = [*held, (now + self.hold_ms, payload, verdict.reason)]
        self._bytes += len(payload)
        counters[UNATTRIBUTABLE] -= 1
        counters[f"unattributable_{verdict.reason}"] -= 1
        counters["held_for_credentials"] += 1
        return True

    def deadline(self) -> int | None:
        """When the oldest held message runs out of time (None: nothing held)."""
        held = self._held
        if not held:  # the usual case: asked after every input
            return None
        return min(h[0][0] for h in held.values())

    def settle(self, trust: TrustStore, now: int, counters: Counter[str]) -> None:
        """Judge what the trust store can judge now, and count what ran out of time."""
        if not self._held:
            return
        changed = trust.version != self._version
        self._version = trust.version
        if not changed and now < (self.deadline() or now + 1):
            return
        for sender in list(self._held):
            keep = []
            for until, payload, reason in self._held[sender]:
                verdict = authenticate(payload, trust) if changed else None
                if verdict is not None and not verdict.refused:
                    counters["proven_late"] += 1
                elif verdict is not None and verdict.reason != "unknown_sender":
                    counters[verdict.refused] += 1  # its sender is known now: not by this key
                    counters[f"unattributable_{verdict.reason}"] += 1
                elif now >= until:
                    counters[UNATTRIBUTABLE] += 1
                    counters[f"unattributable_{reason}"] += 1
                else:
                    keep.append((until, payload, reason))
                    continue
                self._bytes -= len(payload)
            if keep:
                self._held[sender] = keep
            else:
                del self._held[sender]
