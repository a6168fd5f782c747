"""What the gossip core remembers while it restores its own wiped chain from peers.

The node (``node.GossipNode``) drives the protocol; this module holds the state and the pure
decisions, so both are small enough to read at once:

1. **Discover**: every peer's SUMMARY says what it holds of this device (an entry, or none). The
   *published head* is the highest (epoch, height) any reachable peer claims. Discovery ends when
   every peer that is up has answered (at least one), or at ``restore_discovery_ms`` with at least
   one answer. Nobody holding anything means nothing was published: the device starts fresh.
2. **Fetch**: headers from height 0 in ranges of up to ``max_range``, from a peer that claims
   them, each verified as it extends the verified tip (signature under the device's own
   certificate, link or epoch record, history root); bodies in runs of up to ``max_blocks``,
   each checked against its verified header's hash and ``verify_block``, hedged across peers (a
   peer that answered without a body is not asked for it again for ``anti_entropy_ms``). Whole
   blocks contiguous from the committed head are committed in batches (``CommitRestored``).
3. **Finish**: the committed head is the published head: ``RestoreFinished`` in the same epoch.
   No progress for ``restore_body_wait_ms`` before that: the published head is out of reach, and
   the device opens a new epoch after its last whole block (``SignEpoch``). Nothing whole at all
   (not even block 0): ``RestoreFailed``, and it keeps trying.

Bounds: verified headers kept ahead of the committed head at most ``restore_ahead``; bodies at
most ``restore_inflight`` runs of ``max_blocks`` in flight; one claim per domain member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ledger.block import SignedHeader
from ledger.history import CompactRange


class Phase(Enum):
    DISCOVER = "discover"
    FETCH = "fetch"
    SIGNING = "signing"  # waiting for the runtime to sign and store the epoch record
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Claim:
    """What one peer says it holds of this device's chain."""

    epoch: int
    height: int
    head_hash: bytes


@dataclass
class Restore:
    started_ms: int
    discover_until: int
    phase: Phase = Phase.DISCOVER
    claims: dict[str, Claim | None] = field(default_factory=dict)
    target: Claim | None = None
    tip: SignedHeader | None = None  # newest verified header
    history: CompactRange = field(default_factory=CompactRange)  # over verified headers
    headers: dict[int, SignedHeader] = field(default_factory=dict)  # verified, not committed
    bodies: dict[int, bytes] = field(default_factory=dict)  # verified block wires
    committed: SignedHeader | None = None
    tried: dict[int, dict[str, int]] = field(default_factory=dict)  # height -> peer -> ms
    inflight: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # bodies
    header_req: tuple[str, int] | None = None  # (peer, request id) of the open header request
    header_asked: dict[str, int] = field(default_factory=dict)  # peer -> when last asked
    last_progress_ms: int = 0
    failed_reported: bool = False

    @property
    def committed_height(self) -> int:
        return -1 if self.committed is None else self.committed.header.height

    @property
    def tip_height(self) -> int:
        return -1 if self.tip is None else self.tip.header.height

    @property
    def target_height(self) -> int:
        return -1 if self.target is None else self.target.height

    def claim(self, peer: str, claim: Claim | None) -> None:
        self.claims[peer] = claim
        if claim is not None and (
            self.target is None
            or (claim.epoch, claim.height) > (self.target.epoch, self.target.height)
        ):
            self.target = claim

    def discovered(self, now_ms: int, available: list[str]) -> bool:
        """Enough peers have answered to trust the highest claim as the published head."""
        if not self.claims:
            return False
        return now_ms >= self.discover_until or all(p in self.claims for p in available)

    def claimants(self, height: int, available: list[str]) -> list[str]:
        """Available peers that claim to hold ``height``, highest claim first."""
        rows = [
            (c.height, p)
            for p in available
            if (c := self.claims.get(p)) is not None and c.height >= height
        ]
        return [p for _, p in sorted(rows, key=lambda r: (-r[0], r[1]))]

    def missing_runs(self, limit: int) -> list[tuple[int, int]]:
        """Runs (lo, hi) of at most ``limit`` heights whose body is neither held nor asked for,
        among verified headers above the committed head, lowest first."""
        busy: set[int] = set()
        for lo, hi in self.inflight.values():
            busy.update(range(lo, hi + 1))
        runs: list[tuple[int, int]] = []
        lo = hi = -1
        for h in range(self.committed_height + 1, self.tip_height + 1):
            if h in self.bodies or h in busy:
                if lo >= 0:
                    runs.append((lo, hi))
                lo = -1
                continue
            if lo < 0:
                lo = hi = h
            elif h == hi + 1 and h - lo < limit:
                hi = h
            else:
                runs.append((lo, hi))
                lo = hi = h
        if lo >= 0:
            runs.append((lo, hi))
        return runs

    def may_ask(self, peer: str, height: int, now_ms: int, retry_ms: int) -> bool:
        asked = self.tried.get(height, {}).get(peer)
        return asked is None or now_ms - asked >= retry_ms

    def mark_tried(self, peer: str, lo: int, hi: int, now_ms: int) -> None:
        for h in range(lo, hi + 1):
            if h not in self.bodies:
                self.tried.setdefault(h, {})[peer] = now_ms

    def take_committable(self) -> list[tuple[SignedHeader, bytes]]:
        """Whole blocks (header and body) contiguous from the committed head, in order."""
        out = []
        h = self.committed_height + 1
        while h in self.headers and h in self.bodies:
            out.append((self.headers.pop(h), self.bodies.pop(h)))
            self.tried.pop(h, None)
            h += 1
        if out:
            self.committed = out[-1][0]
        return out

    def reached(self) -> bool:
        """The committed head is the published head (same height and hash)."""
        t, c = self.target, self.committed
        if t is None:
            return True
        return c is not None and c.header.height == t.height and c.hash == t.head_hash
