"""A running fleet's health, for the operator: trouble counts, gossip convergence per domain, and
the run-status file that `edgefleet status` reads while the fleet runs.

A fleet must never look healthy when it is not. Three things are kept here:

- ``trouble``: each device's counters (``DeviceRow.counters``) folded into the few figures an
  operator reads: messages nobody could be proven to have sent (``unproven``), invalid or
  malformed ones held against a proven sender (``invalid``), records refused (``rejected``),
  peers muted and holders excluded, messages the transport (or the in-memory broker) dropped,
  sends that failed and requests that timed out. An honest fleet shows zero in every one.
- ``Convergence``: per gossip domain, whether every local member holds every other local
  member's head, within a grace period of network time (``stall_ms``): a chain whose head has
  not reached every tracker of it within that time makes its domains *not converging*. It is
  said once per episode in ``fleet.log`` (a warning with the reason: the send failures,
  timeouts, drops, refusals or mutes of its members since it last converged, or that the
  counters show none), and once more when it recovers.
- The run-status file (``DATA/run-status.json``, one per shard: ``run-status.shard-I-of-N.json``)
  written atomically (a temporary file renamed over it) at most once a second while the fleet
  runs (agent/fleet/watch.py) and at the stop:
  pid, times, each device's state (RUNNING, FAILED with its line, STOPPED), its trouble and the
  peers it mutes or excludes now, and each domain's convergence. ``read_run_status`` tells a
  live run (its pid is alive) from a stale file (the process is gone without a clean stop).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edgefleet.health")

STATUS_FILE = "run-status.json"
STATUS_FORMAT = "edgefleet-run-status/1"

# The trouble figures, in the order the view and the JSON show them, with the counters
# (DeviceRow.counters keys) that make each. An honest fleet keeps every one at zero.
TROUBLE: dict[str, tuple[str, ...]] = {
    # dropped, charged to nobody: no proof of the sender (forged, bit-flipped, unknown key,
    # an older wire version); a member's message that came before its credentials is held and
    # counted only if they do not prove it (auth.Awaiting, docs/PROTOCOL.md 12.1.5)
    "unproven": (
        "gossip.unattributable",
        "gossip.old_version",
        "replication.unattributable",
        "replication.old_version",
    ),
    # from a proven sender, and wrong: held against it (gossip penalties, replication offences)
    "invalid": (
        "gossip.penalty_invalid",
        "gossip.penalty_malformed",
        "replication.invalid",
        "replication.malformed",
    ),
    # records refused on their merits, or messages refused for who sent them
    "rejected": (
        "gossip.header_invalid",
        "gossip.header_revoked",
        "gossip.header_forked",
        "gossip.header_own",
        "gossip.block_invalid",
        "gossip.block_revoked",
        "gossip.epoch_invalid",
        "gossip.epoch_revoked",
        "gossip.dropped_foreign",
        "gossip.dropped_muted",
        "replication.dropped_foreign",
        "replication.receipt_unverifiable",
    ),
    "muted": ("gossip.peers_muted",),
    "excluded": ("replication.holders_excluded",),
    # received messages the transport dropped (too big, queue full, not decodable), and copies
    # the in-memory broker dropped for a full queue
    "dropped": (
        "transport.dropped_oversize",
        "transport.dropped_overflow",
        "transport.dropped_malformed",
        "network.dropped_queue_full",
    ),
    "send_failures": ("transport.send_failures",),
    "timeouts": ("gossip.promises_broken",),  # requests a peer did not answer in time
}
TROUBLE_SHORT = {
    "unproven": "u",
    "invalid": "i",
    "rejected": "r",
    "muted": "m",
    "excluded": "x",
    "dropped": "d",
    "send_failures": "s",
    "timeouts": "t",
}
# What a stalled domain's warning blames, most telling first.
CAUSES = ("send_failures", "dropped", "timeouts", "muted", "excluded", "rejected", "invalid")
CAUSE_WORDS = {
    "send_failures": "send failures",
    "dropped": "messages dropped",
    "timeouts": "requests timed out",
    "muted": "peers muted",
    "excluded": "holders excluded",
    "rejected": "messages rejected",
    "invalid": "invalid messages",
}


def trouble(counters: Mapping[str, int]) -> dict[str, int]:
    """The trouble figures of one device's counters (every key of ``TROUBLE``, zeros too)."""
    return {name: sum(counters.get(k, 0) for k in keys) for name, keys in TROUBLE.items()}


def trouble_cell(counts: Mapping[str, int]) -> str:
    """A compact cell: ``s52 t3`` (send failures 52, timeouts 3); ``-`` when all are zero."""
    parts = [f"{TROUBLE_SHORT[k]}{n}" for k, n in counts.items() if n]
    return " ".join(parts) or "-"


@dataclass(frozen=True, slots=True)
class DomainHealth:
    """One gossip domain as the local devices see it."""

    domain: str
    members: int  # local members
    behind: int  # local members whose chain has not reached every local member of the domain
    converging: bool  # False: a chain has been behind for longer than the grace period
    behind_ms: int = 0  # how long the oldest shortfall has lasted (network time)
    reason: str = ""  # what the counters blame (not converging only)

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "members": self.members,
            "behind": self.behind,
            "converged": self.converging and self.behind == 0,
            "converging": self.converging,
            "behind_s": round(self.behind_ms / 1000, 1),
            "reason": self.reason,
        }


@dataclass(slots=True)
class _Target:
    height: int  # the chain's height when this target was set
    since_ms: int  # network time it was set
    missed: int = 0  # consecutive updates that found a tracker short of it


class Convergence:
    """Tracks, per device of the fleet, whether its chain keeps reaching every local tracker of
    it, and says per domain when it does not (``update``), once per episode in the log.

    Per chain, a *target*: its height at some moment. Once every local tracker holds that
    height, the target moves to the chain's height now. A target older than ``stall_ms`` that is
    still not reached makes the chain stalled, and the domains it shares with the trackers
    behind not converging. A chain that keeps growing while its headers spread keeps meeting its
    targets: a busy fleet is not flagged for being busy."""

    def __init__(self, stall_ms: int) -> None:
        self.stall_ms = stall_ms
        self._targets: dict[str, _Target] = {}
        self._stalled: dict[str, str] = {}  # domain -> reason, while not converging
        # domain -> its members' trouble when it was last seen converging: a stall's reason is
        # what grew since, not what happened hours before it
        self._base: dict[str, dict[str, int]] = {}

    def update(
        self,
        now_ms: int,
        chains: Mapping[str, tuple[int | None, Mapping[str, int]]],
        domains: Mapping[str, Iterable[str]],
        troubles: Mapping[str, Mapping[str, int]],
    ) -> tuple[DomainHealth, ...]:
        """``chains``: device -> (own height or None, tracker device -> height it holds of this
        chain, -1 for nothing); ``domains``: domain -> its local member devices; ``troubles``:
        device -> its trouble figures (for the reason). Returns every domain's health."""
        late: dict[str, tuple[int, set[str]]] = {}  # device -> (ms behind, trackers behind)
        short: dict[str, set[str]] = {}  # device -> trackers without its head now
        for dev, (height, held) in chains.items():
            if height is None:
                continue
            target = self._targets.get(dev)
            if target is None:
                target = self._targets[dev] = _Target(height, now_ms)
            elif all(h >= target.height for h in held.values()):
                target.height, target.since_ms, target.missed = height, now_ms, 0
            lacking = {t for t, h in held.items() if h < height}
            if lacking:
                short[dev] = lacking
            missed = {t for t, h in held.items() if h < target.height}
            if missed:
                target.missed += 1
                # Late once the grace period has passed and two looks found it short: a
                # simulated run looks once per step (a minute of network time).
                age = now_ms - target.since_ms if target.missed >= 2 else 0
                late[dev] = (age, missed)
        out = []
        for domain in sorted(domains):
            members = set(domains[domain])
            # Only shortfalls between members of this domain count against it.
            ages = [late[d][0] for d in members if d in late and late[d][1] & members]
            stalled = [ms for ms in ages if ms > self.stall_ms]
            reason = ""
            if stalled:
                reason = self._stall(domain, members, troubles, max(stalled), len(stalled))
            else:
                if max(ages, default=0) == 0:  # no head overdue: a stall's reason counts from here
                    self._base[domain] = _sum(troubles, members)
                if domain in self._stalled:
                    del self._stalled[domain]
                    log.warning("gossip in domain %s converges again", domain)
            out.append(
                DomainHealth(
                    domain,
                    len(members),
                    sum(1 for d in members if short.get(d, set()) & members),
                    not stalled,
                    max(ages, default=0),
                    reason,
                )
            )
        return tuple(out)

    def _stall(
        self,
        domain: str,
        members: set[str],
        troubles: Mapping[str, Mapping[str, int]],
        late_ms: int,
        chains: int,
    ) -> str:
        """The reason a domain does not converge; logged when the episode begins, only then."""
        if domain in self._stalled:
            return self._stalled[domain]
        now = _sum(troubles, members)
        base = self._base.get(domain, {})
        reason = _reason({k: n - base.get(k, 0) for k, n in now.items()})
        self._stalled[domain] = reason
        log.warning(
            "gossip in domain %s is not converging: %d chain(s) have not reached every member "
            "for %.0f s (%s)",
            domain,
            chains,
            late_ms / 1000,
            reason,
        )
        return reason

    def stalled(self) -> dict[str, str]:
        """The domains not converging now: domain -> reason."""
        return dict(self._stalled)


def _sum(troubles: Mapping[str, Mapping[str, int]], devices: Iterable[str]) -> dict[str, int]:
    total = dict.fromkeys(TROUBLE, 0)
    for d in devices:
        for k, n in troubles.get(d, {}).items():
            total[k] = total.get(k, 0) + n
    return total


def _reason(counts: Mapping[str, int]) -> str:
    parts = [f"{CAUSE_WORDS[k]} {counts[k]}" for k in CAUSES if counts.get(k)]
    return ", ".join(parts) if parts else "no send failure, drop or timeout counted"


def stall_ms(
    anti_entropy_ms: int, jitter_ms: int, request_timeout_ms: int, backoff: int = 1
) -> int:
    """The grace period before a chain that has not spread counts as not converging: three
    anti-entropy rounds and a request's timeout, and never under 15 s. Rounds that found nothing
    back off to ``backoff`` times ``anti_entropy_ms`` (docs/PROTOCOL.md 12.4): the first round
    after a lost header may come that much later, and then they run at the base interval (21 s
    by default, 36 s with the default back-off)."""
    waited = anti_entropy_ms * (backoff - 1)
    return max(15_000, waited + 3 * (anti_entropy_ms + jitter_ms) + request_timeout_ms)


# --- the run-status file ---------------------------------------------------------------------


def status_path(root: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    index, count = shard
    if count == 1:
        return root / STATUS_FILE
    return root / f"run-status.shard-{index}-of-{count}.json"


def write_status(path: Path, doc: Mapping[str, Any], *, indent: int | None = 2) -> None:
    """Write ``doc`` to ``path`` atomically: a reader sees the old file or the new one whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=indent, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (signal 0 delivers nothing; EPERM: it exists too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class RunStatus:
    """One run-status file as ``edgefleet status`` reads it."""

    path: Path
    doc: dict[str, Any]
    state: str  # "running" (its pid is alive), "stopped" (a clean stop wrote it), "stale"

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.doc.get("devices", [])}


def read_run_status(root: Path) -> list[RunStatus]:
    """Every run-status file of the data dir ``root`` (one per shard), with its state. A file
    that does not parse is skipped with a warning on the log (it is the runner's, rewritten at
    the next tick)."""
    out = []
    for path in sorted(root.glob("run-status*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot read the run status: %s", path, exc)
            continue
        if not isinstance(doc, dict) or doc.get("format") != STATUS_FORMAT:
            continue
        if doc.get("stopped"):
            state = "stopped"
        elif pid_alive(int(doc.get("pid", 0))):
            state = "running"
        else:
            state = "stale"
        out.append(RunStatus(path, doc, state))
    return out


def now_wall() -> float:
    return time.time()
