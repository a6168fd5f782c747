"""agent.gossip.peers: the muted peers are tracked apart, so the next mute expiry (asked after
every input the core handles) looks at them only, not at every member of a domain of 1,000."""

from __future__ import annotations

from agent.gossip.actions import PeerMuted, PeerUnmuted
from agent.gossip.peers import Peers
from agent.gossip.tuning import GossipConfig

CFG = GossipConfig()
MEMBERS = frozenset(f"ef{i:024d}" for i in range(1_000))
A, B = sorted(MEMBERS)[:2]


def _mute(peers: Peers, peer: str, now: int) -> PeerMuted:
    for _ in range(CFG.mute_threshold // CFG.penalty_invalid - 1):
        assert peers.penalize(peer, "invalid", now) is None
    muted = peers.penalize(peer, "invalid", now)
    assert muted is not None
    return muted


def test_the_next_expiry_follows_the_muted_peers_through_mutes_expiries_and_departures() -> None:
    peers = Peers(CFG)
    peers.set_members(MEMBERS)
    assert peers.next_expiry() is None
    _mute(peers, A, 1_000)
    _mute(peers, B, 2_000)
    assert peers.next_expiry() == 1_000 + CFG.mute_ms
    assert peers.expire(1_000 + CFG.mute_ms) == [PeerUnmuted(A)]
    assert not peers.muted(A) and peers.muted(B)
    assert peers.next_expiry() == 2_000 + CFG.mute_ms
    peers.set_members(MEMBERS - {B})  # a muted peer that leaves the domain is forgotten
    assert peers.next_expiry() is None and peers.expire(10**9) == []
    _mute(peers, A, 5_000)  # muted again after its mute expired
    assert peers.next_expiry() == 5_000 + CFG.mute_ms
