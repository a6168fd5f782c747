"""What the parts of one gossip node share: identity, config, the injected randomness and trust
store, the clock value of the input being handled, membership and peers, the chains held, the
devices excluded for forking, requests in flight both ways, the bounded "seen" sets, the epoch
records, the counters and the action list.

One ``Context`` per ``GossipNode``; the node sets ``now`` before it calls any part and collects
``out`` after (``take``). The parts (headers, summaries, pulls, epochs, evidence, credentials,
restore) keep their own state and reach each other's only through here.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from agent.gossip import mesh, wire
from agent.gossip.actions import Action, HeadersAccepted, Send, StoreHeaders
from agent.gossip.chains import ChainState
from agent.gossip.peers import Offence, Peers
from agent.gossip.requests import Pending, Serve, Table
from agent.gossip.tuning import GossipConfig
from agent.protocol import auth
from agent.protocol.budget import AnswerBudget
from agent.protocol.inputs import check_domain
from agent.protocol.lru import Lru
from agent.protocol.trust import TrustStore
from ledger.block import SignedHeader, decode_header
from ledger.certs import FleetRoots
from ledger.epoch import SignedEpoch
from ledger.errors import UsageError


class Context:
    def __init__(
        self,
        device_id: str,
        domains: Mapping[str, frozenset[str]],
        roots: FleetRoots,
        rng: random.Random,
        config: GossipConfig,
        trust: TrustStore,
        signer: auth.Signer,
        now_ms: int,
    ) -> None:
        self.device_id = device_id
        self.signer = signer
        self.config = config
        self.rng = rng
        self.roots = roots
        self.trust = trust
        self.now = now_ms
        self.counters: Counter[str] = Counter()
        self.out: list[Action] = []
        self.peers = Peers(config)
        self.domains: dict[str, frozenset[str]] = {}
        for name, members in domains.items():
            self.set_domain(name, members)
        self.tracked: frozenset[str] = frozenset()
        self._cover: tuple[str, ...] | None = None
        self.rings: dict[str, mesh.Ring] = {}
        self.neighbours: frozenset[str] = frozenset()
        self.members_changed()
        self.chains: dict[str, ChainState] = {}
        self.forked: dict[str, bytes] = {}  # device -> evidence wire
        self.need_creds: set[str] = set()  # devices whose key for some height is unknown
        self.seen_headers: Lru[bytes, bool] = Lru(config.seen_headers)
        self.seen_other: Lru[bytes, bool] = Lru(config.seen_other)  # evidence, creds, epochs
        self.pending: Table[Pending] = Table(config.max_inflight, config.max_inflight_per_peer)
        self.serves: Table[Serve] = Table(config.max_serves, config.max_serves_per_peer)
        self.epochs: dict[str, dict[int, SignedEpoch]] = {}  # device -> new_epoch -> record
        self.batch: dict[str, tuple[str, list[SignedHeader]]] = {}  # accepted, not yet stored
        self.budget = AnswerBudget(
            config.answer_budget_bytes, config.answer_interval_ms, config.max_devices
        )
        self.charged: Lru[bytes, bool] = Lru(config.charged_tags)  # tags of charged messages

    # --- membership ---------------------------------------------------------------------------

    def set_domain(self, name: str, members: frozenset[str]) -> None:
        check_domain("gossip", name, members, self.device_id)
        self.domains[name] = members

    def members_changed(self) -> None:
        tracked: set[str] = {self.device_id}
        for members in self.domains.values():
            tracked |= members
        self.tracked = frozenset(tracked)
        self._cover = None
        self.peers.set_members(self.tracked - {self.device_id})
        self.rings = {name: mesh.ring(name, m) for name, m in sorted(self.domains.items())}
        near: set[str] = set()
        for r in self.rings.values():
            near |= self.mesh_of(r, self.device_id)
        self.neighbours = frozenset(near)

    def mesh_of(self, ring: mesh.Ring, member: str) -> frozenset[str]:
        """``member``'s neighbours in ``ring``'s domain: its fingers both ways, or every other
        member in a domain of at most ``mesh_above`` members."""
        if len(ring) <= self.config.mesh_above:
            return frozenset(ring.order) - {member}
        return ring.neighbours(member)

    def mesh_peer(self, peer: str) -> bool:
        """Whether ``peer`` is one this node talks to unasked: any peer, or with
        ``config.mesh`` only its mesh neighbours (docs/PROTOCOL.md 12.10)."""
        return not self.config.mesh or peer in self.neighbours

    def tree_targets(self, dev: str, sender: str | None) -> list[str]:
        """Whom this node passes a header of ``dev`` to down ``dev``'s trees: in every domain
        holding both where ``sender`` is an ancestor of this node (None: this node is the
        origin, in its covering domains), its children there; a child known down is replaced by
        its own children (one level of adoption)."""
        me = self.device_id
        if sender is None:
            domains = list(self.cover_domains())
        else:
            domains = [
                d
                for d, r in self.rings.items()
                if dev in r.pos and sender in r.pos and r.is_ancestor(dev, sender, me)
            ]
        out: list[str] = []
        for d in domains:
            r = self.rings[d]
            for child in r.children(dev, me):
                rec = self.peers.get(child)
                if rec is not None and not rec.up:
                    self.counters["tree_adoptions"] += 1
                    targets: tuple[str, ...] = r.grandchildren(dev, child)
                else:
                    targets = (child,)
                for t in targets:
                    if t not in out and t != sender and t != me:
                        out.append(t)
        return out

    def sharing(self, device_id: str) -> set[str]:
        """Peers that share a domain with ``device_id`` (and with us)."""
        out: set[str] = set()
        for members in self.domains.values():
            if device_id in members:
                out |= members
        out.discard(self.device_id)
        return out

    def domains_of(self, device_id: str) -> list[str]:
        return sorted(d for d, m in self.domains.items() if device_id in m)

    def cover_domains(self) -> tuple[str, ...]:
        """The fewest domains that reach every sharing peer (largest first: a household inside
        its street needs no message of its own)."""
        if self._cover is None:
            covered: set[str] = {self.device_id}
            chosen: list[str] = []
            for name, members in sorted(self.domains.items(), key=lambda d: (-len(d[1]), d[0])):
                if not members <= covered:
                    chosen.append(name)
                    covered |= members
            self._cover = tuple(sorted(chosen))
        return self._cover

    def fanout(self, dev: str, exclude: set[str]) -> list[str]:
        """``fanout`` random available peers that share a domain with ``dev``."""
        sharing = self.sharing(dev)
        candidates = [p for p in self.peers.available() if p in sharing and p not in exclude]
        return self.rng.sample(candidates, min(self.config.fanout, len(candidates)))

    # --- chains and epochs --------------------------------------------------------------------

    def chain(self, dev: str) -> ChainState:
        chain = self.chains.get(dev)
        if chain is None:
            chain = self.chains[dev] = ChainState(
                self.config.window, self.config.max_missing_bodies
            )
        return chain

    def superseded(self, dev: str, epoch: int, height: int) -> bool:
        """A header (epoch, height) lies above the last header of an epoch a record closed."""
        records = self.epochs.get(dev)
        if not records:
            return False
        return any(
            se.record.prev_epoch == epoch and height > se.record.last_height
            for se in records.values()
        )

    def epoch_wires(self, dev: str) -> tuple[bytes, ...]:
        """Verified epoch records of ``dev``, by epoch."""
        recs = self.epochs.get(dev, {})
        return tuple(recs[e].wire for e in sorted(recs))

    # --- output -------------------------------------------------------------------------------

    def seal(self, msg: wire.Message) -> bytes:
        """The bytes of ``msg`` as they leave this device: encoded and authenticated."""
        return auth.seal(wire.encode(msg), self.signer)

    def seal_own_announce(self, msg: wire.Announce) -> bytes:
        """An ANNOUNCE of this device's own headers leaves with an empty authenticator: the
        headers' signatures prove who sent it (docs/PROTOCOL.md 12.1.5)."""
        if any(decode_header(w).header.device_id != self.device_id for w in msg.headers):
            raise UsageError("only an ANNOUNCE of the device's own headers goes unsigned")
        return auth.seal_unsigned(wire.encode(msg))

    def send(self, peer: str, msg: wire.Message) -> None:
        self.out.append(Send(peer, self.seal(msg)))

    def answer(self, peer: str, msg: wire.Message) -> bool:
        """Send an answer that ``peer`` (proven: it asked) drew, within its budget; False (and
        counted) when it does not fit: nothing is sent, the asker times out and asks again."""
        payload = self.seal(msg)
        if not self.budget.allow(peer, len(payload), self.now):
            self.counters["answers_over_budget"] += 1
            return False
        self.out.append(Send(peer, payload))
        return True

    def penalize(self, peer: str, offence: Offence) -> None:
        self.counters[f"penalty_{offence}"] += 1
        muted = self.peers.penalize(peer, offence, self.now)
        if muted is not None:
            self.counters["peers_muted"] += 1
            self.out.append(muted)
            self.pending.drop(peer_id=peer)

    def flush(self) -> None:
        """Headers accepted since the last flush: one ``StoreHeaders`` per device."""
        for dev, (peer, shs) in self.batch.items():
            self.out.append(StoreHeaders(dev, tuple(sh.wire for sh in shs)))
            self.out.append(
                HeadersAccepted(
                    dev, shs[0].header.height, shs[-1].header.height, shs[-1].hash, peer
                )
            )
        self.batch.clear()

    def take(self) -> list[Action]:
        self.flush()
        out, self.out = self.out, []
        return out
