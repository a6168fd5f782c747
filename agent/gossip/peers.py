"""Peer bookkeeping: presence, per-peer counters, and the score that mutes misbehaving peers.

A peer accumulates penalty points for malformed messages, invalid content and promises not
kept (requests unanswered by their deadline); points decay linearly with time. At
``mute_threshold`` points the peer is muted for ``mute_ms``: its messages are dropped and
counted, it is not chosen for pushes or anti-entropy, and its outstanding requests are
cancelled. When the mute expires its penalty starts again from zero. Points are kept in
milli-points so decay stays an integer computation. One record per domain member, no more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.gossip.actions import PeerMuted, PeerUnmuted
from agent.gossip.tuning import GossipConfig

Offence = Literal["malformed", "invalid", "promise"]


@dataclass(slots=True)
class PeerRecord:
    up: bool = False
    penalty_milli: int = 0
    updated_ms: int = 0
    muted_until: int | None = None
    messages: int = 0
    malformed: int = 0
    invalid: int = 0
    promises_broken: int = 0
    dropped_muted: int = 0
    mutes: int = 0


@dataclass(frozen=True, slots=True)
class PeerStats:
    """A snapshot of one peer's record (penalty in whole points, rounded down)."""

    up: bool
    penalty: int
    muted_until: int | None
    messages: int
    malformed: int
    invalid: int
    promises_broken: int
    dropped_muted: int
    mutes: int


class Peers:
    def __init__(self, config: GossipConfig) -> None:
        self._cfg = config
        self._records: dict[str, PeerRecord] = {}
        # The muted peers: the next expiry is asked after every input, so it must not cost a
        # look at every member (1,000 in a large domain).
        self._muted: set[str] = set()

    def set_members(self, members: frozenset[str]) -> None:
        for gone in self._records.keys() - members:
            del self._records[gone]
            self._muted.discard(gone)
        for new in members - self._records.keys():
            self._records[new] = PeerRecord()

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._records.get(peer_id)

    def stats(self, peer_id: str, now_ms: int) -> PeerStats | None:
        r = self._records.get(peer_id)
        if r is None:
            return None
        self._decay(r, now_ms)
        return PeerStats(
            r.up,
            r.penalty_milli // 1000,
            r.muted_until,
            r.messages,
            r.malformed,
            r.invalid,
            r.promises_broken,
            r.dropped_muted,
            r.mutes,
        )

    def muted(self, peer_id: str) -> bool:
        r = self._records.get(peer_id)
        return r is not None and r.muted_until is not None

    def available(self) -> list[str]:
        """Peers that are up and not muted, sorted (so a seeded choice is reproducible)."""
        return sorted(p for p, r in self._records.items() if r.up and r.muted_until is None)

    def _decay(self, r: PeerRecord, now_ms: int) -> None:
        if now_ms > r.updated_ms:
            r.penalty_milli = max(
                0, r.penalty_milli - (now_ms - r.updated_ms) * self._cfg.decay_per_s
            )
            r.updated_ms = now_ms

    def penalize(self, peer_id: str, offence: Offence, now_ms: int) -> PeerMuted | None:
        """Count the offence; return a notification when it mutes the peer."""
        r = self._records.get(peer_id)
        if r is None:
            return None
        cfg = self._cfg
        if offence == "malformed":
            r.malformed += 1
            points = cfg.penalty_malformed
        elif offence == "invalid":
            r.invalid += 1
            points = cfg.penalty_invalid
        else:
            r.promises_broken += 1
            points = cfg.penalty_promise
        if r.muted_until is not None:
            return None
        self._decay(r, now_ms)
        r.penalty_milli += points * 1000
        if r.penalty_milli < cfg.mute_threshold * 1000:
            return None
        r.muted_until = now_ms + cfg.mute_ms
        r.mutes += 1
        self._muted.add(peer_id)
        return PeerMuted(peer_id, r.muted_until, offence)

    def expire(self, now_ms: int) -> list[PeerUnmuted]:
        out: list[PeerUnmuted] = []
        for peer_id in sorted(self._muted):
            r = self._records[peer_id]
            if r.muted_until is not None and r.muted_until <= now_ms:
                r.muted_until = None
                r.penalty_milli = 0
                r.updated_ms = now_ms
                self._muted.discard(peer_id)
                out.append(PeerUnmuted(peer_id))
        return out

    def next_expiry(self) -> int | None:
        if not self._muted:  # the usual case: asked after every input
            return None
        records = self._records
        times = [t for p in self._muted if (t := records[p].muted_until) is not None]
        return min(times) if times else None
