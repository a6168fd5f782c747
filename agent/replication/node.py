"""The replication core: a synchronous, I/O-free state machine for one device (like gossip).

``ReplicationNode.handle(input, now_ms)`` and ``handle_timer(now_ms)`` return the actions the
runtime must perform; ``next_deadline()`` says when to call ``handle_timer`` next. Randomness
(nonces, audit picks, timer offsets) comes from ``config.rng`` only and every choice is made over
a sorted list, so a seed reproduces a run. Nothing here touches sockets, files, clocks or the
global random.

Each node is both an **owner** (``owner.OwnerSide``: its own blocks on R holders, receipts,
audits, repair, holder scores) and a **holder** (``holder.HolderSide``: verify, store within the
quota, receipts, audit answers, SPACE adverts). This module owns what they share: membership,
presence, credentials, and the decoding of every message. Remote bytes never raise out of
``handle``: malformed messages (``DecodeError``) and invalid content (``VerificationError``) are
counted and cost the sender ``penalty_invalid`` points. Every message enters through
``agent.protocol.auth.open_envelope``: a message whose sender is not proven (wire version 2,
docs/PROTOCOL.md 12.1.5) is counted (``unattributable``, ``old_version``) and dropped, and
nobody's score, exclusion or answer ever follows from it. docs/REPLICATION.md is the reference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from agent.protocol import auth
from agent.protocol.inputs import check_domain
from agent.protocol.lru import Lru
from agent.protocol.trust import TrustStore
from agent.replication import wire
from agent.replication.actions import Action
from agent.replication.context import Context
from agent.replication.holder import HolderSide
from agent.replication.inputs import (
    CredentialKnown,
    DomainChanged,
    HeadersKnown,
    Input,
    MessageReceived,
    OwnBlockLoaded,
    OwnBlockSealed,
    OwnChainLoaded,
    PeerDown,
    PeerUp,
    ReceiptKnown,
    ReplicaLoaded,
    ReplicasLoaded,
    ReplicaStored,
)
from agent.replication.owner import OwnerSide
from agent.replication.tuning import ReplicationConfig
from ledger.certs import FleetRoots
from ledger.errors import DecodeError, UsageError, VerificationError
from ledger.identity import SigningKey, is_device_id

_MAX_DEVICES = 4_096  # devices with credentials (as gossip)
_CHARGED_TAGS = 1_024  # as gossip's charged_tags


class ReplicationNode:
    """Replication of one device. Not thread-safe; drive it from one task."""

    def __init__(
        self,
        device_id: str,
        key: SigningKey,
        domains: Mapping[str, Iterable[str]],
        roots: FleetRoots,
        *,
        config: ReplicationConfig | None = None,
        now_ms: int = 0,
        trust: TrustStore | None = None,
        signer: auth.Signer | None = None,
    ) -> None:
        """``trust``: the device's one trust store, shared with its gossip core (a credential is
        then verified once per device); None: a store of this node's own over ``roots``.
        ``signer``: holds the device's current key, which authenticates every message sent
        (shared with the gossip core; None: ``key``)."""
        if not is_device_id(device_id):
            raise UsageError(f"replication node: expected a device id, found {device_id!r}")
        cfg = config if config is not None else ReplicationConfig()
        creds = trust if trust is not None else TrustStore(roots, max_devices=_MAX_DEVICES)
        self._trust_version = creds.version  # what the owner side was last kicked for
        signer = signer if signer is not None else auth.KeySigner(key)
        self._ctx = ctx = Context(device_id, key, cfg, creds, signer, now_ms)
        self.device_id = device_id
        self.config = cfg
        self._charged: Lru[bytes, bool] = Lru(_CHARGED_TAGS)  # messages that cost their sender
        # When each member last sent a proven message (the runtime's liveness reads it:
        # presence is only a hint, docs/PROTOCOL.md 13.3). Bounded by the members.
        self._heard: dict[str, int] = {}
        self._awaiting = auth.Awaiting()  # messages waiting for their sender's credentials
        self._two_clocks = False  # a data time was ever given (handle/handle_timer data_ms)
        self.owner = OwnerSide(ctx)
        self.holder = HolderSide(ctx)
        for name, members in domains.items():
            self._set_domain(name, frozenset(members))
        self._members_changed()

    @property
    def counters(self) -> Counter[str]:
        return self._ctx.counters

    # --- public API ---------------------------------------------------------------------------

    def handle(self, event: Input, now_ms: int, data_ms: int | None = None) -> list[Action]:
        """Feed one input; return what to do. Remote bytes never make this raise.

        ``now_ms`` is the network clock (request timeouts, retries, scores), ``data_ms`` the data
        clock (audit rounds, repair delay: docs/REPLICATION.md 15.6); None: one clock for both."""
        self._clocks(now_ms, data_ms)
        if isinstance(event, MessageReceived):
            self._on_message(event)
        elif isinstance(event, PeerUp):
            self._on_peer_up(event.peer_id)
        elif isinstance(event, PeerDown):
            self._ctx.up.discard(event.peer_id)
            self.owner.on_peer_down(event.peer_id)
        elif isinstance(event, DomainChanged):
            self._on_domain_changed(event)
        elif isinstance(event, CredentialKnown):
            self._on_credential(event)
        elif isinstance(event, HeadersKnown):
            self._trusted("headers_known", self.holder.on_headers, event.device_id, event.headers)
        elif isinstance(event, OwnBlockSealed):
            self.owner.on_sealed(event.block, event.prev_header)
        elif isinstance(event, OwnChainLoaded):
            self.owner.on_chain_loaded(event.blocks)
        elif isinstance(event, ReceiptKnown):
            self._trusted("receipt_known", self.owner.on_receipt_known, event.wire)
        elif isinstance(event, OwnBlockLoaded):
            self.owner.on_own_loaded(event)
        elif isinstance(event, ReplicasLoaded):
            self.holder.on_loaded(event.replicas)
        elif isinstance(event, ReplicaStored):
            self.holder.on_stored(event)
        elif isinstance(event, ReplicaLoaded):
            self.holder.on_replica_loaded(event)
        else:
            raise UsageError(f"replication node: unknown input {type(event).__name__}")
        self._awaiting.settle(self._ctx.creds, self._ctx.now, self._ctx.counters)
        return self._take()

    def handle_timer(self, now_ms: int, data_ms: int | None = None) -> list[Action]:
        """Run whatever is due: deadlines, retries and adverts at ``now_ms`` (network clock),
        audit rounds and repair at ``data_ms`` (data clock; None: ``now_ms``)."""
        self._clocks(now_ms, data_ms)
        self.owner.on_timer()
        self.holder.on_timer()
        self._awaiting.settle(self._ctx.creds, self._ctx.now, self._ctx.counters)
        return self._take()

    def next_deadline(self) -> int:
        """When ``handle_timer`` is next due on the network clock. Driven with one clock (no
        ``data_ms`` given), this includes the data clock's deadline too."""
        net = min(self.owner.next_deadline(), self.holder.next_deadline())
        held = self._awaiting.deadline()
        net = net if held is None else min(net, held)
        return net if self._two_clocks else min(net, self.owner.next_data_deadline())

    def next_data_deadline(self) -> int:
        """When ``handle_timer`` is next due on the data clock (audit round, repair delay)."""
        return self.owner.next_data_deadline()

    def _clocks(self, now_ms: int, data_ms: int | None) -> None:
        ctx = self._ctx
        ctx.now = now_ms
        if data_ms is None:
            ctx.data_now = now_ms
            return
        if not self._two_clocks:
            # The first data time: what was scheduled on the data clock before (from the network
            # time the node was built at) moves with it, so the first round keeps its offset.
            self._two_clocks = True
            self.owner.rebase_data(data_ms - ctx.data_now)
        ctx.data_now = data_ms

    def _trusted(self, what: str, fn: Callable[..., None], *args: object) -> None:
        """Inputs from the runtime's store: a record that does not decode is counted, not fatal
        (the store is checked on its own; one bad row must not stop replication)."""
        try:
            fn(*args)
        except DecodeError:
            self._ctx.counters[f"{what}_malformed"] += 1

    # --- queries (tests, live view) -----------------------------------------------------------

    def holders(self, height: int) -> dict[str, bytes]:
        """Holder -> receipt wire of an own block (healthy or not)."""
        rec = self.owner.blocks.get(height)
        return {} if rec is None else dict(rec.holders)

    def healthy_holders(self, height: int) -> list[str]:
        return self.owner.healthy(height)

    def own_heights(self) -> list[int]:
        return list(self.owner.blocks)

    def last_heard(self, peer_id: str) -> int | None:
        """When ``peer_id`` last sent a proven message; None: never."""
        return self._heard.get(peer_id)

    def network_heard(self, at_ms: int) -> None:
        """The device received a message (any core's) at network time ``at_ms``: its link
        works. Timeouts of requests sent before the last such moment are judged; those with
        nothing received since they left are not charged to anyone (REPLICATION.md 15.7)."""
        ctx = self._ctx
        if ctx.heard_ms is None or at_ms > ctx.heard_ms:
            ctx.heard_ms = at_ms

    def holder_ids(self) -> list[str]:
        """Peers holding a receipted replica of an own block: whose presence the runtime must
        follow besides the gossip mesh (docs/PROTOCOL.md 12.10)."""
        return sorted(h for h, v in self.owner.views.items() if v.blocks)

    def members(self) -> frozenset[str]:
        """Every replication domain peer (self excluded): the holders there can ever be."""
        return self._ctx.members

    def score(self, holder_id: str) -> int | None:
        view = self.owner.views.get(holder_id)
        return None if view is None else view.score

    def audit_timeout_of(self, holder_id: str) -> int:
        """How long a challenge to ``holder_id`` may stay unanswered now (adaptive, 15.5)."""
        view = self.owner.views.get(holder_id)
        return self.config.audit_timeout_ms if view is None else self.owner.audit_timeout(view)

    def excluded(self, holder_id: str) -> bool:
        view = self.owner.views.get(holder_id)
        return view is not None and view.excluded

    def used_bytes(self) -> int:
        return self.holder.used

    def free_bytes(self) -> int:
        return self.holder.free()

    def replicas(self) -> dict[tuple[str, int], bytes]:
        """(owner, height) -> block hash of every replica held (not counting pending writes)."""
        return {k: r.block_hash for k, r in self.holder.replicas.items()}

    # --- membership ---------------------------------------------------------------------------

    def _set_domain(self, name: str, members: frozenset[str]) -> None:
        check_domain("replication", name, members, self.device_id)
        self._ctx.domains[name] = members

    def _members_changed(self) -> None:
        ctx = self._ctx
        members: set[str] = set()
        for m in ctx.domains.values():
            members |= m
        members.discard(self.device_id)
        ctx.members = frozenset(members)
        ctx.up &= ctx.members
        for gone in [p for p in self._heard if p not in ctx.members]:
            del self._heard[gone]
        self.owner.set_members(ctx.members)

    def _on_domain_changed(self, ev: DomainChanged) -> None:
        if self.device_id in ev.members:
            self._set_domain(ev.domain, frozenset(ev.members))
        else:
            self._ctx.domains.pop(ev.domain, None)
        self._members_changed()

    def _on_peer_up(self, peer: str) -> None:
        ctx = self._ctx
        if peer not in ctx.members:
            ctx.counters["peer_up_foreign"] += 1
            return
        if peer in ctx.up:
            return
        ctx.up.add(peer)
        self.owner.on_peer_up(peer)
        self.holder.on_peer_up(peer)

    def _on_credential(self, ev: CredentialKnown) -> None:
        creds = self._ctx.creds
        try:
            result = creds.learn(ev.kind, ev.wire, self._ctx.now)
        except DecodeError:
            self._ctx.counters["credential_malformed"] += 1
            return
        self._ctx.counters[f"credential_{result.outcome.value}"] += 1
        if creds.version != self._trust_version:
            # Some credential is new to the device (learned here, or by the gossip core that
            # shares the store): a holder's site and key may be known now.
            self._trust_version = creds.version
            self.owner.kick()

    # --- messages -----------------------------------------------------------------------------

    def _on_message(self, ev: MessageReceived) -> None:
        ctx = self._ctx
        claimed = ev.peer_id
        if claimed is not None and claimed not in ctx.members:
            ctx.counters["dropped_foreign"] += 1
            return
        opened, verdict = auth.open_envelope(
            claimed, ev.payload, wire.decode, ctx.creds, ctx.counters, self._offence, self._charged
        )
        if opened is None:
            if verdict.unknown in ctx.members:
                # a member whose credentials have not arrived yet: judged when they do
                self._awaiting.hold(verdict, ev.payload, ctx.now, ctx.counters)
            return
        peer, msg = opened.peer, opened.msg
        if peer not in ctx.members:
            ctx.counters["dropped_own" if peer == self.device_id else "dropped_foreign"] += 1
            return
        self._heard[peer] = ctx.now
        ctx.heard_ms = ctx.now
        ctx.counters[f"received_{type(msg).__name__.lower()}"] += 1
        try:
            self._dispatch(peer, msg)
        except DecodeError:
            self._charged.put(opened.tag, True)
            self._offence(peer, "malformed")
        except VerificationError:
            self._charged.put(opened.tag, True)
            self._offence(peer, "invalid")

    def _offence(self, peer: str, what: str) -> None:
        self._ctx.counters[what] += 1
        self.owner.penalize_invalid(peer)

    def _dispatch(self, peer: str, msg: wire.Message) -> None:
        if isinstance(msg, wire.Store):
            try:
                self.holder.on_store(peer, msg)
            except (DecodeError, VerificationError):
                refuse = wire.Refuse(
                    self.device_id, msg.request_id, wire.INVALID, self.holder.free()
                )
                self._ctx.answer(peer, refuse)
                raise
        elif isinstance(msg, wire.Challenge):
            self.holder.on_challenge(peer, msg)
        elif isinstance(msg, wire.Release):
            self.holder.on_release(peer, msg)
        elif isinstance(msg, wire.ReceiptMsg):
            self.owner.on_receipt(peer, msg)
        elif isinstance(msg, wire.Refuse):
            self.owner.on_refuse(peer, msg)
        elif isinstance(msg, wire.Proof):
            self.owner.on_proof(peer, msg)
        elif isinstance(msg, wire.Busy):
            self.owner.on_busy(peer, msg)
        else:
            self.owner.on_space(peer, msg)

    def _take(self) -> list[Action]:
        self.owner.work()
        out = self._ctx.out
        self._ctx.out = []
        return out
