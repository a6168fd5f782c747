"""Epoch records (ledger/epoch.py): a device that lost the end of its chain closes its epoch at
its last whole block and signs on in a new one.

Records travel in EPOCHS messages (on PeerUp for the own device's, before a RESPONSE whose
range crosses one, to a peer whose summary or header shows it holds a superseded head). A
verified record is stored and forwarded once to ``fanout`` peers (not when it came on a domain
topic: every member received that copy), and where this node holds the device's superseded
headers, the runtime rewinds its stored chain to the record's last header (``RewindChain`` ->
``ChainRewound``); headers of the new epoch then link through the record.
"""

from __future__ import annotations

import hashlib

from agent.gossip import wire
from agent.gossip.actions import EpochAccepted, RewindChain, Send, StoreEpoch
from agent.gossip.chains import build_chain
from agent.gossip.context import Context
from agent.gossip.inputs import ChainRewound
from agent.gossip.pulls import Pulls
from agent.protocol.lru import Lru
from ledger.epoch import SignedEpoch, decode_epoch
from ledger.errors import DecodeError, RevokedError, UsageError, VerificationError


class Epochs:
    def __init__(self, ctx: Context, pulls: Pulls) -> None:
        self.ctx = ctx
        self.pulls = pulls
        self.rewinding: dict[str, tuple[str | None, SignedEpoch]] = {}  # device -> (peer, rec)
        self._sent: Lru[tuple[str, str], int] = Lru(ctx.config.seen_other)  # (peer, dev) -> ms

    def learn(self, record: bytes, source: str | None, *, broadcast: bool = False) -> bool:
        """Verify and remember one epoch record. False: invalid (the source is penalized).
        ``source`` None: from the store or signed here; ``broadcast``: it came on a domain
        topic (every member has it: not forwarded)."""
        ctx = self.ctx
        digest = hashlib.sha256(b"epoch" + record).digest()
        if digest in ctx.seen_other:
            return True
        try:
            se = decode_epoch(record)
        except DecodeError as exc:
            if source is None:
                raise UsageError(f"known epoch record does not decode: {exc}") from None
            raise
        r = se.record
        dev = r.device_id
        keys = ctx.trust.keys(dev)
        if dev not in ctx.tracked or keys is None:
            ctx.counters["epoch_unknown_device"] += 1
            return True  # cannot check it yet; it comes again with the chain
        try:
            key = keys.key_at(r.first_height)
            keys.key_for(key.key_id, r.first_height)
            se.verify(key)
        except RevokedError:
            ctx.counters["epoch_revoked"] += 1
            return True
        except VerificationError:
            ctx.counters["epoch_invalid"] += 1
            if source is not None:
                ctx.penalize(source, "invalid")
            return source is None
        held = ctx.epochs.setdefault(dev, {})
        other = held.get(r.new_epoch)
        if other is not None and other.wire != se.wire:
            ctx.counters["epoch_conflict"] += 1  # the device signed two records for one epoch
            return True
        ctx.seen_other.put(digest, True)
        if other is not None:
            return True
        held[r.new_epoch] = se
        while len(held) > ctx.config.max_epoch_records:
            del held[min(held)]
        ctx.counters["epoch_accepted"] += 1
        if source is not None:
            ctx.out.append(StoreEpoch(dev, record))
            if not broadcast:
                payload = ctx.seal(wire.Epochs(ctx.device_id, (record,)))
                for p in ctx.fanout(dev, {source, dev}):
                    ctx.out.append(Send(p, payload))
        ctx.out.append(EpochAccepted(dev, r.new_epoch, r.prev_epoch, r.last_height, source))
        self.apply(dev, se, source)
        return True

    def send(self, peer: str, dev: str) -> None:
        """Send ``peer`` the records of ``dev`` (it holds a superseded head), at most once per
        ``anti_entropy_ms``."""
        ctx = self.ctx
        last = self._sent.get((peer, dev))
        if last is not None and ctx.now - last < ctx.config.anti_entropy_ms:
            return
        self._sent.put((peer, dev), ctx.now)
        ctx.counters["epochs_sent"] += 1
        records = ctx.epoch_wires(dev)[-wire.MAX_EPOCH_RECORDS :]
        ctx.send(peer, wire.Epochs(ctx.device_id, records))

    def apply(self, dev: str, se: SignedEpoch, peer: str | None) -> None:
        """Rewind a peer's chain held above the last header of the epoch ``se`` closed."""
        ctx = self.ctx
        r = se.record
        chain = ctx.chains.get(dev)
        head = None if chain is None else chain.head
        if dev == ctx.device_id or chain is None or head is None or dev in self.rewinding:
            return
        if head.header.height <= r.last_height or head.header.epoch >= r.new_epoch:
            return
        held = chain.at(r.last_height)
        if held is not None and held.hash != r.last_hash:
            ctx.counters["epoch_unrelated"] += 1  # names a header this node does not hold
            return
        self.rewinding[dev] = (peer, se)
        ctx.pending.drop(device_id=dev)
        ctx.counters["rewinds"] += 1
        ctx.out.append(RewindChain(dev, r.last_height, r.new_epoch))

    def on_rewound(self, ev: ChainRewound) -> None:
        ctx = self.ctx
        dev = ev.device_id
        pending = self.rewinding.pop(dev, None)
        if pending is None:
            ctx.counters["rewound_unexpected"] += 1
            return
        peer, se = pending
        old = ctx.chains.get(dev)
        wanted = () if old is None else tuple(old.missing)
        cfg = ctx.config
        chain = build_chain(
            dev, ev.headers, wanted, ctx.epochs.get(dev, {}), cfg.window, cfg.max_missing_bodies
        )
        head = chain.head
        if head is None or head.hash != se.record.last_hash:
            ctx.counters["rewound_short"] += 1  # the store lacked the record's last header
        ctx.chains[dev] = chain
        if peer is not None:
            self.pulls.pull(peer, dev, se.record.last_height + cfg.max_range)
