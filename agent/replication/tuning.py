"""Tunables of the replication core, with every bound it keeps in memory.

Times are milliseconds, sizes bytes, scores integer points. ``rng`` draws audit nonces, audit
picks and timer offsets: pass a seeded ``random.Random`` for reproducible runs; the default is
the operating system's generator, so a holder cannot predict a nonce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

from ledger.errors import UsageError


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    replicas: int = 3  # R: holders per block body (besides the owner itself)
    quota_bytes: int = 64 << 20  # what this device lends (devices.yaml spare_storage_mb)
    audit_interval_ms: int = 600_000  # each holder is audited once per interval
    audit_timeout_ms: int = 10_000  # least time a challenge may stay unanswered
    # ... or this many times the holder's smoothed round-trip time, when that is longer: a
    # saturated machine answers late, and late is not lost (REPLICATION.md 15.5).
    audit_rtt_factor: int = 4
    audit_timeout_max_ms: int = 300_000  # the adaptive timeout never exceeds this
    # Unanswered challenges closer together than this are one burst and count once: silence is
    # judged over time, not by how many challenges one stall swallowed.
    silence_spacing_ms: int = 60_000
    silent_failures: int = 3  # counted silences in a row that void the receipt (re-place)
    # Network time between two round challenges to one holder, at least (or its audit timeout
    # when longer): audit rounds are due on the data clock, which a simulated run races.
    audit_min_gap_ms: int = 10_000
    busy_backoff_max_ms: int = 300_000  # longest wait before re-asking a holder that said BUSY
    store_timeout_ms: int = 10_000  # a STORE not answered by then is placed elsewhere
    repair_delay_ms: int = 600_000  # a holder down this long no longer counts: re-place
    retry_ms: int = 5_000  # blocks short of R copies are retried at this pace
    advert_interval_ms: int = 300_000  # SPACE is re-broadcast at least this often
    serve_timeout_ms: int = 10_000  # a LoadReplica not answered by then is forgotten
    max_inflight_stores: int = 16  # STOREs awaiting an answer, in all
    max_inflight_per_holder: int = 4
    max_audits: int = 16  # challenges awaiting a proof (and loads for them)
    max_loads: int = 32  # LoadOwnBlock awaiting OwnBlockLoaded
    max_serves: int = 16  # LoadReplica awaiting ReplicaLoaded, in all
    max_serves_per_peer: int = 4
    max_pending_writes: int = 16  # StoreReplica awaiting ReplicaStored
    max_own_blocks: int = 16_384  # own blocks tracked (the latest; older ones keep receipts)
    max_replicas: int = 65_536  # replicas held as a holder
    max_known_headers: int = 8_192  # peer header hashes remembered (chain-link checks)
    score_initial: int = 100  # a holder's score when first seen (and the ceiling)
    score_min: int = 50  # below this a holder is excluded
    reward_audit: int = 1  # a passed audit
    penalty_wrong: int = 50  # an audit answered with a wrong proof
    penalty_missing: int = 25  # an audit answered "I do not hold it"
    penalty_timeout: int = 10  # an audit or a STORE not answered in time
    penalty_refused: int = 5  # REFUSE full after advertising room for the block
    penalty_invalid: int = 20  # a malformed message or a bad receipt
    recover_ms: int = 60_000  # one point given back per interval, up to score_initial
    # Answers (RECEIPT, REFUSE, PROOF) a proven peer may draw: bytes per interval
    # (agent.protocol.budget); each answer is smaller than what asked for it.
    answer_budget_bytes: int = 1 << 20
    answer_interval_ms: int = 10_000
    rng: random.Random = field(default_factory=random.SystemRandom, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "rng":
                if not isinstance(value, random.Random):
                    raise UsageError(
                        f"replication config rng: expected a random.Random, found {value!r}"
                    )
                continue
            low = 0 if f.name in ("quota_bytes", "reward_audit", "repair_delay_ms") else 1
            if type(value) is not int or value < low:
                raise UsageError(
                    f"replication config {f.name}: expected an integer >= {low}, found {value!r}"
                )
        if self.score_min > self.score_initial:
            raise UsageError(
                f"replication config score_min: at most score_initial ({self.score_initial}), "
                f"found {self.score_min}"
            )
