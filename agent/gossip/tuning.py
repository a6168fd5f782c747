"""Tunables of the gossip core, with every bound the core keeps in memory.

All times are milliseconds; penalties are integer points. Defaults suit a domain of tens of
devices sealing a block every few seconds; docs/PROTOCOL.md (section 12) explains each one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from agent.gossip import wire
from ledger.errors import UsageError


def _never(device_id: str, height: int) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class GossipConfig:
    fanout: int = 3  # peers a header is pushed (or forwarded once) to, in "fanout" push
    # How an own new header is pushed. "broadcast": one ANNOUNCE on each domain topic that
    # reaches a sharing peer no other chosen domain reaches (every member gets exactly one copy;
    # headers that arrive by broadcast are never forwarded). "fanout": to `fanout` random peers,
    # each of which forwards it once (for transports without a domain broadcast).
    push: str = "broadcast"
    # The mesh (docs/PROTOCOL.md 12.10; agent/gossip/mesh.py). True: anti-entropy rounds, greetings
    # and hellos go to the node's mesh neighbours only (O(log n) per domain, which is also all the
    # presence a runtime needs to watch). push="tree" spreads headers down the origin's binomial
    # tree over the mesh (for transports without a domain broadcast).
    mesh: bool = True
    # With the mesh on, a domain of at most this many members is its own mesh (every member a
    # neighbour: watching 31 presences costs less than a hop); larger ones use the fingers.
    mesh_above: int = 32
    # Entries of an anti-entropy round's SUMMARY. A node holding more chains than this sends a
    # lazy round instead of the full exchange: a SUMMARY with reply = 0 of the heads that
    # changed lately and a rotating slice of the rest (docs/PROTOCOL.md 12.10), so a round's
    # bytes stay bounded whatever the domain's size. Greetings and restores stay full.
    round_entries: int = 128
    anti_entropy_ms: int = 5_000  # mean interval between summary exchanges
    # Rounds that find nothing double the interval, up to anti_entropy_ms x this (1: never);
    # anything found (a pull, evidence, an epoch record), a peer coming up or a restore brings
    # it back to anti_entropy_ms (Trickle, RFC 6206; docs/PROTOCOL.md 12.4).
    anti_entropy_backoff: int = 4
    jitter_ms: int = 1_000  # each interval is anti_entropy_ms +- a uniform jitter_ms
    # Devices that send a peer coming up a SUMMARY at once (the rest wait for their rounds).
    greeters: int = 3
    request_timeout_ms: int = 3_000  # a peer that has not answered by then broke a promise
    hedge_ms: int = 1_000  # after this, another peer may be asked for what a request awaits
    serve_timeout_ms: int = 10_000  # a ServePull the runtime has not answered is forgotten
    max_range: int = wire.MAX_RANGE  # headers asked for (and served) per request
    max_blocks: int = wire.MAX_RESPONSE_BLOCKS  # bodies served per response
    window: int = 256  # recent headers kept in memory per device (fork checks, fast serving)
    seen_headers: int = 4_096  # LRU of accepted header hashes (duplicate suppression)
    seen_other: int = 1_024  # LRU of evidence and credential hashes already processed
    max_inflight: int = 64  # outstanding requests, in all
    max_inflight_per_peer: int = 8
    max_serves: int = 64  # ServePull actions awaiting PullLoaded, in all
    max_serves_per_peer: int = 4
    max_missing_bodies: int = 1_024  # wanted bodies remembered per device
    max_devices: int = 4_096  # devices with credentials or chains in memory
    max_pending_rotations: int = 8  # per device, rotations waiting for an earlier one
    max_revocations: int = 16  # per device
    penalty_malformed: int = 10
    penalty_invalid: int = 10
    penalty_promise: int = 2  # a request not answered before its deadline
    mute_threshold: int = 50  # penalty points at which a peer is muted
    decay_per_s: int = 1  # penalty points forgiven per second
    mute_ms: int = 60_000
    # Restore of a wiped device (agent/gossip/restore.py): how long to wait for peers' summaries
    # before trusting the highest head they claim, how long without any progress before the
    # published head counts as out of reach (a new epoch), how far header fetching runs ahead of
    # the committed blocks, and how many body requests are open at once.
    restore_discovery_ms: int = 3_000
    restore_body_wait_ms: int = 30_000
    restore_ahead: int = 1_024
    restore_inflight: int = 4
    max_epoch_records: int = 16  # per device, newest kept
    # Answers (RESPONSEs, summary replies, and the EPOCHS/EVIDENCE a REQUEST draws) a proven
    # peer may draw: bytes per interval (agent.protocol.budget). A whole window of 256 headers
    # with 16 bodies is ~300 KB; a restore asks for a few of those a second.
    answer_budget_bytes: int = 8 << 20
    answer_interval_ms: int = 10_000
    charged_tags: int = 1_024  # LRU of messages that cost their sender (a replay costs nothing)
    want_bodies: Callable[[str, int], bool] = field(default=_never, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "push":
                if value not in ("broadcast", "fanout", "tree"):
                    raise UsageError(
                        "gossip config push: expected 'broadcast', 'fanout' or 'tree', "
                        f"found {value!r}"
                    )
                continue
            if f.name == "mesh":
                if type(value) is not bool:
                    raise UsageError(f"gossip config mesh: expected true or false, found {value!r}")
                continue
            if f.name == "want_bodies":
                if not callable(value):
                    raise UsageError(
                        "gossip config want_bodies: expected a predicate "
                        f"(device_id, height) -> bool, found {type(value).__name__}"
                    )
                continue
            low = 0 if f.name in ("fanout", "jitter_ms", "decay_per_s") else 1
            if type(value) is not int or value < low:
                raise UsageError(
                    f"gossip config {f.name}: expected an integer >= {low}, found {value!r}"
                )
        if self.max_range > wire.MAX_RANGE:
            raise UsageError(
                f"gossip config max_range: at most {wire.MAX_RANGE}, found {self.max_range}"
            )
        if self.max_blocks > wire.MAX_RESPONSE_BLOCKS:
            raise UsageError(
                f"gossip config max_blocks: at most {wire.MAX_RESPONSE_BLOCKS}, "
                f"found {self.max_blocks}"
            )
        if self.jitter_ms >= self.anti_entropy_ms:
            raise UsageError(
                f"gossip config jitter_ms: must be below anti_entropy_ms "
                f"({self.anti_entropy_ms}), found {self.jitter_ms}"
            )
