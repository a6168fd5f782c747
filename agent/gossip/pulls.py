"""Pulls, both ways: REQUESTs this node sends (to repair what anti-entropy or an announcement
showed missing) and the RESPONSEs it gets back, and the REQUESTs peers send it, answered from
memory or from the store (``ServePull`` -> ``PullLoaded``).

A request asks for at most ``max_range`` heights starting at the held head (so a fork below it
shows up at once), with bodies where ``want_bodies`` says so and credentials when a key is
unknown. Requests have ids and deadlines (``requests.Table``); at most one per device is open to
a peer, and another peer is asked only once the open one is older than ``hedge_ms``.
"""

from __future__ import annotations

from agent.gossip import wire
from agent.gossip.actions import ServePull
from agent.gossip.chains import ChainState
from agent.gossip.context import Context
from agent.gossip.credentials import CredentialExchange
from agent.gossip.evidence import Evidence
from agent.gossip.inputs import PullLoaded
from agent.gossip.requests import Pending, Serve
from ledger.block import SignedHeader, decode_header
from ledger.errors import VerificationError

CredentialLists = tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]


class Pulls:
    def __init__(self, ctx: Context, creds: CredentialExchange, evidence: Evidence) -> None:
        self.ctx = ctx
        self.creds = creds
        self.evidence = evidence
        self._next_rid = ctx.rng.getrandbits(32)

    # --- asking -------------------------------------------------------------------------------

    def pull(self, peer: str, dev: str, their_height: int) -> None:
        """Ask ``peer`` for ``dev``'s headers from our head (or ``their_height`` if lower)."""
        ctx = self.ctx
        if dev in ctx.forked or dev not in ctx.tracked:
            return
        if not self.can_request(peer, dev):
            return
        chain = ctx.chains.get(dev)
        head = None if chain is None else chain.head
        lo = 0 if head is None else min(head.header.height, their_height)
        hi = min(their_height, lo + ctx.config.max_range - 1)
        if dev == ctx.device_id:
            hi = lo  # only ever a probe of our own chain
        flags = 0
        if ctx.trust.keys(dev) is None or dev in ctx.need_creds:
            flags |= wire.FLAG_CREDENTIALS
        if dev != ctx.device_id and self._wants_body(chain, dev, lo, hi):
            flags |= wire.FLAG_BODIES
        self.request(peer, dev, lo, hi, flags, their_height)

    def pull_bodies(self, peer: str, dev: str, their_height: int) -> None:
        ctx = self.ctx
        chain = ctx.chains.get(dev)
        head = None if chain is None else chain.head
        if chain is None or head is None or dev in ctx.forked:
            return
        run = chain.missing_run(min(their_height, head.header.height), ctx.config.max_blocks)
        if run is None or not self.can_request(peer, dev):
            return
        self.request(peer, dev, run[0], run[1], wire.FLAG_BODIES, their_height)

    def _wants_body(self, chain: ChainState | None, dev: str, lo: int, hi: int) -> bool:
        if chain is not None and any(lo <= h <= hi for h in chain.missing):
            return True
        start = lo if chain is None or chain.head is None else chain.head.header.height + 1
        return any(self.ctx.config.want_bodies(dev, h) for h in range(start, hi + 1))

    def can_request(self, peer: str, dev: str) -> bool:
        ctx = self.ctx
        if ctx.peers.muted(peer):
            return False
        cfg = ctx.config
        recent = ctx.now - cfg.hedge_ms + cfg.request_timeout_ms
        if ctx.pending.busy(dev, peer, recent):
            ctx.counters["pull_skipped_inflight"] += 1
            return False
        if not ctx.pending.room_for(peer):
            ctx.counters["pull_skipped_full"] += 1
            return False
        return True

    def request(self, peer: str, dev: str, lo: int, hi: int, flags: int, their_height: int) -> int:
        ctx = self.ctx
        rid = self._next_rid
        self._next_rid = (rid + 1) & wire.MAX_REQUEST_ID
        ctx.pending.add(
            Pending(
                peer,
                rid,
                dev,
                lo,
                hi,
                flags,
                ctx.now + ctx.config.request_timeout_ms,
                their_height,
            )
        )
        ctx.counters["requests_sent"] += 1
        ctx.send(peer, wire.Request(ctx.device_id, rid, dev, lo, hi, flags))
        return rid

    def answered(self, peer: str, msg: wire.Response) -> tuple[Pending, list[SignedHeader]] | None:
        """A RESPONSE to one of our requests, checked against it: the request and the headers
        (not yet verified), or None when it answers nothing open or its credentials are bad.
        Raises DecodeError / VerificationError (the caller blames the peer)."""
        ctx = self.ctx
        req = ctx.pending.pop(peer, msg.request_id)
        if req is None:
            ctx.counters["response_unsolicited"] += 1
            return None
        dev = req.device_id
        if msg.device_id != dev:
            raise VerificationError("response device", dev, msg.device_id)
        if not self.creds.learn_all(peer, msg.certificates, msg.rotations, msg.revocations):
            return None
        headers = [decode_header(w) for w in msg.headers]
        if len(headers) > req.to_height - req.from_height + 1:
            raise VerificationError(
                "response header count", f"<= {req.to_height - req.from_height + 1}", len(headers)
            )
        for i, sh in enumerate(headers):
            h = sh.header
            if h.device_id != dev or h.height != req.from_height + i:
                raise VerificationError(
                    "response header", f"{dev}@{req.from_height + i}", f"{h.device_id}@{h.height}"
                )
        return req, headers

    # --- serving ------------------------------------------------------------------------------

    def on_request(self, peer: str, msg: wire.Request) -> None:
        ctx = self.ctx
        dev = msg.device_id
        if dev in ctx.forked:
            self.evidence.send(peer, dev)
        if ctx.serves.get(peer, msg.request_id) is not None:
            ctx.counters["request_duplicate"] += 1  # being loaded already
            return
        certs, rots, revs = self._credentials_for(dev, msg.flags)
        recs = ctx.epochs.get(dev)
        if recs and msg.to_height > min(se.record.last_height for se in recs.values()):
            records = ctx.epoch_wires(dev)[-wire.MAX_EPOCH_RECORDS :]
            ctx.answer(peer, wire.Epochs(ctx.device_id, records))
        chain = ctx.chains.get(dev)
        head = None if chain is None else chain.head
        if chain is None or head is None or msg.from_height > head.header.height:
            self._respond(peer, msg.request_id, dev, (certs, rots, revs), (), ())
            return
        hi = min(msg.to_height, head.header.height)
        if not msg.bodies and msg.from_height >= chain.base:
            headers = tuple(sh.wire for sh in chain.between(msg.from_height, hi))
            ctx.counters["served_from_memory"] += 1
            self._respond(peer, msg.request_id, dev, (certs, rots, revs), headers, ())
            return
        if not ctx.serves.room_for(peer):
            ctx.counters["serve_refused"] += 1
            return
        ctx.serves.add(
            Serve(
                peer,
                msg.request_id,
                dev,
                msg.from_height,
                hi,
                msg.flags,
                ctx.now + ctx.config.serve_timeout_ms,
            )
        )
        budget = wire.response_budget(
            [bytes(wire.HEADER_WIRE_MAX)] * (hi - msg.from_height + 1), certs, rots, revs
        )
        ctx.out.append(
            ServePull(
                peer,
                msg.request_id,
                dev,
                msg.from_height,
                hi,
                msg.bodies,
                ctx.config.max_blocks if msg.bodies else 0,
                budget if msg.bodies else 0,
            )
        )

    def on_pull_loaded(self, ev: PullLoaded) -> None:
        ctx = self.ctx
        serve = ctx.serves.pop(ev.peer_id, ev.request_id)
        if serve is None:
            ctx.counters["pull_loaded_unknown"] += 1
            return
        creds = self._credentials_for(serve.device_id, serve.flags)
        headers = ev.headers[: serve.to_height - serve.from_height + 1]
        blocks: tuple[bytes, ...] = ()
        if serve.flags & wire.FLAG_BODIES:
            blocks = wire.fit_blocks(
                ev.blocks, wire.response_budget(headers, *creds), ctx.config.max_blocks
            )
        self._respond(serve.peer_id, serve.request_id, serve.device_id, creds, headers, blocks)

    def _credentials_for(self, dev: str, flags: int) -> CredentialLists:
        """What a RESPONSE about ``dev`` carries: revocations always (so they spread with every
        pull of a revoked device), the certificate and rotations when asked for."""
        certs, rots, revs = self.ctx.trust.bundle(dev)
        if flags & wire.FLAG_CREDENTIALS:
            return certs, rots, revs
        return (), (), revs

    def _respond(
        self,
        peer: str,
        rid: int,
        dev: str,
        creds: CredentialLists,
        headers: tuple[bytes, ...],
        blocks: tuple[bytes, ...],
    ) -> None:
        certs, rots, revs = creds
        self.ctx.answer(
            peer,
            wire.Response(
                self.ctx.device_id,
                rid,
                dev,
                certs[:1],
                rots[-wire.MAX_RESPONSE_ROTATIONS :],
                revs[: wire.MAX_RESPONSE_REVOCATIONS],
                headers,
                blocks,
            ),
        )
