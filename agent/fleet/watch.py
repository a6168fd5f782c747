"""The runner's watch over its devices: gossip convergence per domain while the fleet runs, the
run-status file at every view tick and at the stop, and which domains an unconverged run left
behind.

``FleetWatch.observe`` takes the live view's snapshot, adds each domain's health
(``agent.fleet.health.Convergence``) and writes ``DATA/run-status.json`` (atomically);
``FleetWatch.stopped`` writes the last one, with every device STOPPED or FAILED and the final
verdict. ``domain_gaps`` names, per domain, the heads a local member still lacks at the end.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.device.runtime import DeviceAgent
from agent.fleet.health import (
    STATUS_FORMAT,
    TROUBLE,
    Convergence,
    DomainHealth,
    status_path,
    write_status,
)
from agent.fleet.view import DeviceRow, FleetSnapshot

log = logging.getLogger("edgefleet.runner")

# The run-status file is rewritten at most this often while running (and always at the stop):
# a 2,000-device fleet's file is about a megabyte.
WRITE_PERIOD_S = 1.0
# Up to this many devices the file is indented for people; beyond, compact.
INDENT_UP_TO = 50


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


class FleetWatch:
    def __init__(
        self,
        root: Path,
        shard: tuple[int, int],
        stall_ms: int,
        domains: Mapping[str, Sequence[str]],
    ) -> None:
        """``domains``: every device of the fleet's file -> its gossip domains."""
        self.path = status_path(root, shard)
        self.shard = shard
        self.domains = domains
        self.convergence = Convergence(stall_ms)
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self._write_failed = False
        self.health: tuple[DomainHealth, ...] = ()  # the domains at the last tick
        self._written = -1e9  # monotonic time of the last write

    # --- while running -------------------------------------------------------------------------
    def observe(
        self, snap: FleetSnapshot, agents: Mapping[str, DeviceAgent], now_ms: int
    ) -> FleetSnapshot:
        """``snap`` with each local domain's health; the run-status file rewritten."""
        running = {n: a for n, a in agents.items() if a.failure is None}
        troubles = {d.name: d.trouble for d in snap.devices}
        members: dict[str, list[str]] = defaultdict(list)
        for name in running:
            for dom in self.domains.get(name, ()):
                members[dom].append(name)
        health = self.convergence.update(now_ms, _chains(running), members, troubles)
        self.health = health
        snap = replace(snap, domains=health)
        now = time.monotonic()
        if now - self._written >= WRITE_PERIOD_S:
            self._written = now
            self.write(snap)
        return snap

    # --- at the stop ---------------------------------------------------------------------------
    def stopped(
        self,
        snap: FleetSnapshot,
        agents: Mapping[str, DeviceAgent],
        *,
        converged: bool,
        gaps: Mapping[str, list[str]],
        interrupted: bool,
    ) -> None:
        """The last status: every device STOPPED (or FAILED), each domain's final verdict. A run
        stopped by Ctrl-C or SIGTERM did not wait for its last heads to spread: its domains are
        as the last tick saw them, and nothing is called not converged."""
        if interrupted:
            snap = replace(snap, domains=self.health)
            self.write(snap, stopped=True, converged=converged, interrupted=True)
            return
        final = []
        local: dict[str, int] = defaultdict(int)
        for name, a in agents.items():
            if a.failure is None:
                for dom in self.domains.get(name, ()):
                    local[dom] += 1
        for dom in sorted(local):
            missing = gaps.get(dom, [])
            # behind: the chains some member lacks the head of ("X lacks Y's head": Y's)
            chains = len({m.partition(" lacks ")[2] for m in missing})
            final.append(
                DomainHealth(dom, local[dom], chains, not missing, 0, "; ".join(missing[:3]))
            )
        snap = replace(snap, domains=tuple(final))
        self.write(snap, stopped=True, converged=converged, interrupted=interrupted)

    def write(
        self,
        snap: FleetSnapshot,
        *,
        stopped: bool = False,
        converged: bool | None = None,
        interrupted: bool = False,
    ) -> None:
        try:
            indent = 2 if len(snap.devices) <= INDENT_UP_TO else None
            doc = self.document(snap, stopped, converged, interrupted)
            write_status(self.path, doc, indent=indent)
        except OSError as exc:  # a full disk: said once, the fleet runs on
            if not self._write_failed:
                self._write_failed = True
                log.warning("%s: cannot write the run status: %s", self.path, exc.strerror or exc)

    def document(
        self, snap: FleetSnapshot, stopped: bool, converged: bool | None, interrupted: bool
    ) -> dict[str, Any]:
        totals = dict.fromkeys(TROUBLE, 0)
        for d in snap.devices:
            for k, n in d.trouble.items():
                totals[k] += n
        stalled = [d.domain for d in snap.domains if not d.converging]
        return {
            "format": STATUS_FORMAT,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "shard": list(self.shard),
            "started": self.started,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "sim_ms": snap.sim_ms,
            "sim_time": _iso(snap.sim_ms),
            "wall_s": round(snap.wall_s, 1),
            "stopped": stopped,
            "interrupted": interrupted,
            # The end of a run's verdict (None while it runs: see each domain)
            "converged": converged,
            "not_converging": stalled if not stopped else [],
            "not_converged": (
                [d.domain for d in snap.domains if d.behind] if stopped and not interrupted else []
            ),
            "trouble": totals,
            "domains": [d.as_json() for d in snap.domains],
            "devices": [_device(d, stopped) for d in snap.devices],
        }


def _device(d: DeviceRow, stopped: bool) -> dict[str, Any]:
    state = "FAILED" if d.failure else "STOPPED" if stopped else "RUNNING"
    return {
        "name": d.name,
        "kind": d.kind,
        "site": d.site,
        "state": state,
        "error": d.failure,
        "height": d.height,
        "pending": d.pending,
        "lag": d.lag,
        "peers_online": d.peers_online,
        "peers_total": d.peers_total,
        "trouble": d.trouble,
        "muted": [{"peer": p, "reason": why} for p, why in d.muted],
        "excluded": [{"peer": p, "reason": why} for p, why in d.excluded],
        "damaged": list(d.damaged),
    }


def _chains(agents: Mapping[str, DeviceAgent]) -> dict[str, tuple[int | None, dict[str, int]]]:
    """Each running device's own height, and the height of its chain each local tracker holds
    (-1: nothing)."""
    trackers: dict[str, list[tuple[str, DeviceAgent]]] = defaultdict(list)
    for name, a in agents.items():
        for peer in a.peer_ids:
            trackers[peer].append((name, a))
    out = {}
    for name, a in agents.items():
        head = a.writer.store.head()
        dev = a.device_id
        held = {}
        for tname, t in trackers[dev]:
            h = t.node.head(dev)
            held[tname] = -1 if h is None else h.header.height
        out[name] = (None if head is None else head.header.height, held)
    return out


def domain_gaps(
    agents: Mapping[str, DeviceAgent],
    domains: Mapping[str, Sequence[str]],
    names: Mapping[str, str],
    remote: Mapping[str, bytes] | None = None,
) -> dict[str, list[str]]:
    """Per domain, the heads a running local member lacks of another member whose head is
    known here (local devices, and ``remote`` heads of other shards' devices): ``fridge-2 lacks
    freezer-1's head``. Empty: every domain converged."""
    running = {n: a for n, a in agents.items() if a.failure is None}
    heads = {a.device_id: h.hash for a in running.values() if (h := a.writer.store.head())}
    heads.update(remote or {})
    out: dict[str, list[str]] = defaultdict(list)
    for name, a in running.items():
        mine = domains.get(name, ())
        for peer in a.peer_ids:
            want = heads.get(peer)
            if want is None:
                continue
            held = a.node.head(peer)
            if held is not None and held.hash == want:
                continue
            pname = names.get(peer, peer)
            shared = [d for d in mine if d in domains.get(pname, mine)]
            for dom in shared:
                out[dom].append(f"{name} lacks {pname}'s head")
    return dict(out)


def unconverged_line(gaps: Mapping[str, list[str]], settle_s: float) -> str:
    """One line for the end of an unconverged run."""
    if not gaps:
        return (
            f"gossip did not converge within --settle {settle_s:g} s (a peer online "
            "elsewhere sent nothing of its chain)"
        )
    parts = [
        f"{dom} ({len(m)} head(s) missing: {', '.join(m[:2])}{', ...' if len(m) > 2 else ''})"
        for dom, m in sorted(gaps.items())
    ]
    return f"gossip did not converge within --settle {settle_s:g} s: " + "; ".join(parts)
