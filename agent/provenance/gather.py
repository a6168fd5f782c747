"""Gathering and verifying everything a data dir holds about one tag.

``TraceSession`` opens every device store of a data dir (``DIR/devices/NAME/store.sqlite``: own
chains, peer headers, replicas) and trusts nothing in them but what verifies to the fleet root:

1. Plain readings about the tag are found through each store's tag index (own blocks and
   replicas), deduplicated by (device, height, index); each is verified with its signature and an
   inclusion proof against its block's header, which must be in the device's verified chain
   (``chains``).
2. Private readings have no clear tag. With an opener (the owner's X25519 key, or a grant), the
   private devices it can open are scanned once per session: every block is checked and every
   reading opened; those naming the tag join the events.
3. From the events, the stays (``analysis.custody``) say which readings of which device describe
   the item's surroundings: the blocks from the arrival's height to the departure's (or the
   head) are checked and their readings added as context.
4. Private readings that could not be opened are reported as withheld: inside a stay, as a hole
   in custody; elsewhere, as private devices whose sealed tags may or may not mention the item.
5. Every chain carries the key flags against its device (``ledger.bundle.KeyFlag``): the fork
   evidence any store holds against it (each verified to the fleet root), its revocations and
   its rotations. Readings under a flagged key are kept and the flags travel with them to the
   verdict (``analysis``) and to the bundle (``bundles``).

Peers of a running fleet are not asked over the network: the session reads the data dir only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from agent.errors import AgentError
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.provenance import analysis
from agent.provenance.evidence import DeviceInfo, Evidence, Unverified, Withheld
from agent.provenance.opening import Opening, OpenResult
from agent.provenance.verified_chains import BlockRejected, Chain, ChainUnavailable
from ledger.block import Block, SignedHeader
from ledger.bundle import KeyFlag, device_flags
from ledger.certs import (
    Certificate,
    DeviceKeys,
    FleetRoots,
    decode_certificate,
    decode_revocation,
    decode_rotation,
)
from ledger.errors import LedgerError
from ledger.evidence import ForkEvidence, is_fork, make_evidence, verify_evidence
from ledger.reading import Reading, SignedReading
from ledger.store import Store, TagHit


class TraceError(AgentError, code="provenance"):
    """The data dir cannot be traced at all (not a data dir, no fleet root)."""


@dataclass
class _PrivateScan:
    """One private device's chain, opened once: readings by position, and what failed."""

    opened: dict[tuple[int, int], Evidence] = field(default_factory=dict)
    failed: dict[tuple[int, int], tuple[int, str]] = field(default_factory=dict)  # -> (time, why)


@dataclass(frozen=True, slots=True)
class _Credentials:
    """A device's certificate, rotations (by height) and revocations, and the keys they give."""

    certificate: bytes
    rotations: tuple[bytes, ...]
    revocations: tuple[bytes, ...]
    keys: DeviceKeys

    @property
    def wires(self) -> tuple[bytes, ...]:
        """Certificate, rotations, revocations: what a ``Chain`` and a bundle carry."""
        return (self.certificate, *self.rotations, *self.revocations)


@dataclass(frozen=True, slots=True)
class Gathered:
    """What a session verified about one tag: the input of ``analysis.analyse``."""

    epc: str
    devices: dict[str, DeviceInfo]
    readings: tuple[Evidence, ...]
    withheld: tuple[Withheld, ...]
    unverified: tuple[Unverified, ...]
    flags: tuple[KeyFlag, ...] = ()  # against the devices of the readings (analysis picks)


@dataclass(frozen=True, slots=True)
class TagSummary:
    """One tag in the listing (``edgefleet tags``): not verified, read from the tag indexes."""

    tag: str
    readings: int
    devices: tuple[str, ...]  # device ids, in order of first appearance (ties: device name)
    first_ms: int
    last_ms: int
    last_sensor: str | None
    last_device: str
    name: str | None
    kind: str | None = None  # ``item_kind``: the device kind the item belongs to


class TraceSession:
    """A data dir opened for tracing; ``trace(epc)`` as often as needed, then ``close()``."""

    def __init__(self, data: DataDir, roots: FleetRoots, opening: Opening | None = None) -> None:
        if not data.devices.is_dir():
            raise TraceError(f"{data.root}: not a fleet data dir (no devices/ directory)")
        self.data = data
        self.roots = roots
        self.opening = opening or Opening(None)
        self._exit = ExitStack()
        self.stores: dict[str, Store] = {}  # device name -> its store
        self.devices: dict[str, DeviceInfo] = {}
        self._own: dict[str, Store] = {}  # device id -> its own store
        self._certs: dict[str, Certificate] = {}
        self.unreadable: list[str] = []  # stores that would not open (file: reason), left out
        for name in data.device_names():
            try:
                cert = decode_certificate((data.device(name) / keystore.DEVICE_CERT).read_bytes())
            except (OSError, LedgerError):
                continue  # a broken device dir: audit reports it; tracing passes it by
            path = data.store_path(name)
            if not path.exists():
                continue
            try:
                store = self._exit.enter_context(Store(path))
            except LedgerError as exc:  # a damaged store: left out, and said so
                self.unreadable.append(str(exc))
                continue
            self.stores[name] = store
            self._own[cert.device_id] = store
            self._certs[cert.device_id] = cert
            self.devices[cert.device_id] = _info(cert, name)
        self._chains: dict[str, Chain | ChainUnavailable] = {}
        self._blocks: dict[tuple[str, int], Block | BlockRejected] = {}
        self._private: dict[str, _PrivateScan] = {}

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> TraceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- chains and blocks ------------------------------------------------------------------

    def chain(self, device_id: str) -> Chain:
        """The device's verified chain (cached); raises ChainUnavailable saying why not."""
        got = self._chains.get(device_id)
        if got is None:
            try:
                got = self._build_chain(device_id)
            except ChainUnavailable as exc:
                got = exc
            self._chains[device_id] = got
        if isinstance(got, ChainUnavailable):
            raise got
        return got

    def keys(self, device_id: str) -> DeviceKeys:
        """The device's verified keys (certificate, rotations, revocations of the data dir);
        raises ChainUnavailable saying why not."""
        return self._credentials(device_id).keys

    def own_store(self, device_id: str) -> Store | None:
        """The device's own store, if the data dir holds it."""
        return self._own.get(device_id)

    def _credentials(self, device_id: str) -> _Credentials:
        cert = self._certs.get(device_id)
        wire = cert.wire if cert is not None else None
        rotations: list[bytes] = []
        revocations: list[bytes] = []
        for store in self.stores.values():
            if wire is None:
                wire = store.certificate(device_id)
            rotations += [w for d, w in store.credentials("rotation") if d == device_id]
            revocations += [w for d, w in store.credentials("revocation") if d == device_id]
        if wire is None:
            raise ChainUnavailable(f"{device_id}: no certificate in the data dir")
        rotations = sorted(set(rotations))
        revocations = sorted(set(revocations))
        try:
            keys = DeviceKeys.build(
                wire,
                self.roots,
                now_ms=None,
                rotations=_by_height(rotations),
                revocations=revocations,
            )
        except LedgerError as exc:
            raise ChainUnavailable(f"{device_id}: credentials: {exc}") from None
        if device_id not in self.devices:
            self.devices[device_id] = _info(keys.certificate, device_id)
        return _Credentials(wire, tuple(_by_height(rotations)), tuple(revocations), keys)

    def _build_chain(self, device_id: str) -> Chain:
        got = self._credentials(device_id)
        keys, creds = got.keys, got.wires
        own = self._own.get(device_id)
        if own is not None and own.head() is not None:
            head = own.head()
            assert head is not None
            hashes = own.own_header_hashes()[: head.header.height]
            chain = Chain.verify(device_id, keys, head, hashes, creds, "its own store")
        else:
            best: tuple[int, str, Store] | None = None
            for name, store in self.stores.items():
                held = store.peer_header_hashes(device_id)
                contiguous = bool(held) and [h for h, _ in held] == list(range(len(held)))
                if contiguous and (best is None or len(held) - 1 > best[0]):
                    best = (len(held) - 1, name, store)
            if best is None:
                raise ChainUnavailable(f"{device_id}: no store holds its headers from height 0")
            height, name, store = best
            head = store.peer_headers(device_id, height, height)[0]
            hashes = [h for _, h in store.peer_header_hashes(device_id)][:height]
            chain = Chain.verify(device_id, keys, head, hashes, creds, f"{name}'s peer headers")
        forks = self._forks(chain, got)
        chain.forks = tuple(sorted(forks))
        chain.flags = device_flags(
            keys,
            [decode_rotation(w) for w in got.rotations],
            [decode_revocation(w) for w in got.revocations],
            [forks[w] for w in chain.forks],
        )
        return chain

    def _forks(self, chain: Chain, creds: _Credentials) -> dict[bytes, ForkEvidence]:
        """Fork evidence against the device, verified to this session's roots: what any store
        keeps (gossip keeps what it verified), and what the stores show without saying so: a
        peer header of the device's epoch at a height of the chain with another hash. One per
        forked key (a flag covers the whole key); evidence naming a key the device's known
        credentials do not give it is passed by."""
        device_id = chain.device_id
        key_ids = {s.key.key_id for s in creds.keys.spans}
        wires = [w for store in self.stores.values() for w in store.evidence(device_id)]
        wires += self._unreported_forks(chain, creds)
        by_key: dict[bytes, tuple[bytes, ForkEvidence]] = {}
        for wire in sorted(set(wires)):
            try:
                ev = verify_evidence(wire, self.roots)
            except LedgerError:
                continue
            key_id = ev.a.header.key_id
            if ev.device_id == device_id and key_id in key_ids and key_id not in by_key:
                by_key[key_id] = (wire, ev)
        return dict(by_key.values())

    def _unreported_forks(self, chain: Chain, creds: _Credentials) -> list[bytes]:
        out = []
        for store in self.stores.values():
            for height, digest in store.peer_header_hashes(chain.device_id):
                expected = chain.hash_at(height)
                if expected is None or digest == expected:
                    continue
                try:
                    ours = self._header(chain, height)
                    (theirs,) = store.peer_headers(chain.device_id, height, height)
                except LedgerError:  # a damaged row: `edgefleet verify` reports it
                    continue
                if ours is not None and is_fork(ours, theirs):
                    evidence = make_evidence(creds.certificate, creds.rotations, ours, theirs)
                    out.append(evidence.encode())
        return out

    def _header(self, chain: Chain, height: int) -> SignedHeader | None:
        """The chain's own header at ``height`` (its hash is the one the head commits to)."""
        if height == chain.height:
            return chain.head
        own = self._own.get(chain.device_id)
        sh = None if own is None else own.header_at(height)
        if sh is not None and sh.hash == chain.hash_at(height):
            return sh
        for store in self.stores.values():
            for sh in store.peer_headers(chain.device_id, height, height):
                if sh.hash == chain.hash_at(height):
                    return sh
        return None

    def block(self, device_id: str, height: int) -> Block:
        """The device's block at ``height``, checked against its chain (cached)."""
        key = (device_id, height)
        got = self._blocks.get(key)
        if got is None:
            got = self._load_block(device_id, height)
            self._blocks[key] = got
        if isinstance(got, BlockRejected):
            raise got
        return got

    def _load_block(self, device_id: str, height: int) -> Block | BlockRejected:
        try:
            chain = self.chain(device_id)
        except ChainUnavailable as exc:
            return BlockRejected(str(exc))
        last = BlockRejected(f"no store holds block {height} of {device_id}")
        for b in self._copies(device_id, height):
            if isinstance(b, BlockRejected):
                last = b
                continue
            try:
                chain.check_block(b)
                return b
            except BlockRejected as exc:
                last = exc
        return last

    def _copies(self, device_id: str, height: int) -> Iterator[Block | BlockRejected]:
        """The device's own copy of a block, then replicas, read only as far as needed."""
        own = self._own.get(device_id)
        stores = [] if own is None else [own]
        stores += [s for s in self.stores.values() if s is not own]
        for store in stores:
            try:
                b = store.block(height) if store is own else store.replica(device_id, height)
            except LedgerError as exc:  # stored bytes no longer decode: try the next copy
                yield BlockRejected(f"block {height} in {store.path}: {exc}")
                continue
            if b is not None:
                yield b

    # --- one tag ------------------------------------------------------------------------------

    def gather(self, epc: str) -> Gathered:
        unverified: list[Unverified] = []
        events: dict[tuple[str, int, int], Evidence] = {}
        for hit in self._hits(epc):
            at = (hit.device_id, hit.height, hit.idx)
            if at in events:
                continue
            try:
                block = self.block(hit.device_id, hit.height)
                if not 0 <= hit.idx < len(block.readings):
                    raise BlockRejected(f"index {hit.idx} outside the block")
                sr = self.chain(hit.device_id).check_reading(block, hit.idx)
                if sr.private or sr.reading.tag != epc:
                    raise BlockRejected("the tag index points at a reading of another tag")
            except (BlockRejected, ChainUnavailable) as exc:
                unverified.append(Unverified(hit.device_id, hit.height, hit.idx, str(exc)))
                continue
            assert isinstance(sr.reading, Reading)
            events[at] = _evidence(sr, sr.reading, block, hit.idx, False, "inclusion")
        for device_id in self._openable():
            scan = self._scan(device_id)
            for pos, ev in scan.opened.items():
                if ev.tag == epc:
                    events[(device_id, *pos)] = ev
        stays, _ = analysis.custody(events.values(), self.devices)
        context: dict[tuple[str, int, int], Evidence] = {}
        withheld: list[Withheld] = []
        for stay in stays:
            held = self._stay_context(stay, context, unverified)
            if held is not None:
                withheld.append(held)
        withheld += self._withheld_elsewhere()
        readings = tuple(events.values()) + tuple(context.values())
        flags: list[KeyFlag] = []
        for device_id in sorted({e.device_id for e in readings}):
            flags += self.chain(device_id).flags  # verified: its readings were checked on it
        return Gathered(
            epc,
            dict(self.devices),
            readings,
            tuple(withheld),
            tuple(unverified),
            tuple(flags),
        )

    def trace(self, epc: str, product: str | None = None) -> analysis.Trace:
        g = self.gather(epc)
        return analysis.analyse(
            epc, g.devices, g.readings, g.withheld, g.unverified, product=product, flags=g.flags
        )

    def _hits(self, epc: str) -> Iterator[TagHit]:
        seen: set[tuple[str, int, int]] = set()
        hits = [h for store in self.stores.values() for h in store.tag_hits(epc)]
        for h in sorted(hits, key=lambda h: (not h.own, h.time_ms)):  # own chains first
            at = (h.device_id, h.height, h.idx)
            if at not in seen:
                seen.add(at)
                yield h

    def _stay_context(
        self,
        stay: analysis.Stay,
        out: dict[tuple[str, int, int], Evidence],
        unverified: list[Unverified],
    ) -> Withheld | None:
        """Add the readings of the stay's device during the stay; return what was withheld."""
        if stay.arrived is None:
            return None
        dev = stay.device_id
        try:
            top = self.chain(dev).height
        except ChainUnavailable as exc:
            unverified.append(Unverified(dev, stay.arrived.height, stay.arrived.index, str(exc)))
            return None
        last = top if stay.left is None else stay.left.height
        scan = self._private.get(dev)
        count, first, latest = 0, None, None
        reasons: set[str] = set()
        for height in range(stay.arrived.height, last + 1):
            try:
                block = self.block(dev, height)
            except BlockRejected as exc:
                unverified.append(Unverified(dev, height, 0, str(exc)))
                continue
            for idx, sr in enumerate(block.readings):
                probe = _placeholder(dev, height, idx, sr)
                if not stay.holds(probe):
                    continue
                if not sr.private:
                    assert isinstance(sr.reading, Reading)
                    out[(dev, height, idx)] = _evidence(sr, sr.reading, block, idx, False, "block")
                    continue
                opened = None if scan is None else scan.opened.get((height, idx))
                if opened is None:
                    result = self.opening.open(sr)
                    if result.reading is not None:
                        opened = _evidence(sr, result.reading, block, idx, True, "block")
                    else:
                        count += 1
                        t = sr.reading.time_ms
                        first = t if first is None else min(first, t)
                        latest = t if latest is None else max(latest, t)
                        reasons.add(result.reason)
                        continue
                out[(dev, height, idx)] = opened
        if not count:
            return None
        return Withheld(dev, count, first, latest, True, "; ".join(sorted(reasons)))

    # --- private devices ------------------------------------------------------------------

    def _openable(self) -> list[str]:
        return [
            d
            for d, info in sorted(self.devices.items())
            if info.private and d in self._own and self.opening.may_open(d, self._certs[d])
        ]

    def _scan(self, device_id: str) -> _PrivateScan:
        """Open every private reading of a device once (the owner's or a grant's view)."""
        scan = self._private.get(device_id)
        if scan is not None:
            return scan
        scan = _PrivateScan()
        self._private[device_id] = scan
        try:
            top = self.chain(device_id).height
        except ChainUnavailable:
            return scan
        for height in range(top + 1):
            try:
                block = self.block(device_id, height)
            except BlockRejected:
                continue
            h = block.header.header
            if not self.opening.covers(device_id, h.first_time_ms, h.last_time_ms):
                continue
            for idx, sr in enumerate(block.readings):
                if not sr.private:
                    continue
                result = self.opening.open(sr)
                if result.reading is not None:
                    scan.opened[(height, idx)] = _evidence(
                        sr, result.reading, block, idx, True, "block"
                    )
                else:
                    scan.failed[(height, idx)] = (sr.reading.time_ms, result.reason)
        return scan

    def _withheld_elsewhere(self) -> list[Withheld]:
        out = []
        for device_id, info in sorted(self.devices.items(), key=lambda d: (d[1].name, d[0])):
            store = self._own.get(device_id)
            if not info.private or store is None or store.head() is None:
                continue
            total = store.sealed_reading_count()
            scan = self._private.get(device_id)
            opened = 0 if scan is None else len(scan.opened)
            missing = total - opened
            if missing <= 0:
                continue
            first = store.header_at(0)
            head = store.head()
            assert head is not None and first is not None
            reason = self.opening.why_not(device_id, self._certs[device_id])
            out.append(
                Withheld(
                    device_id,
                    missing,
                    first.header.first_time_ms,
                    head.header.last_time_ms,
                    False,
                    reason,
                )
            )
        return out

    # --- listing ----------------------------------------------------------------------------

    def tags(self) -> list[TagSummary]:
        """Every tag the stores index (plain readings), plus those of opened private devices."""
        rows: dict[str, dict[tuple[str, int, int], TagHit]] = {}
        for store in self.stores.values():
            for hit in store.all_tag_hits():
                rows.setdefault(hit.tag, {}).setdefault((hit.device_id, hit.height, hit.idx), hit)
        private: dict[str, list[Evidence]] = {}
        for device_id in self._openable():
            for ev in self._scan(device_id).opened.values():
                if ev.tag is not None:
                    private.setdefault(ev.tag, []).append(ev)
        out = []
        for tag in sorted(set(rows) | set(private)):
            points = [(h.time_ms, h.device_id, h.height, h.idx) for h in rows.get(tag, {}).values()]
            points += [(e.time_ms, e.device_id, e.height, e.index) for e in private.get(tag, [])]
            points.sort(key=lambda p: (p[0], self._name(p[1]), p[1], p[2], p[3]))
            first_seen: dict[str, int] = {}
            for p in points:
                first_seen.setdefault(p[1], p[0])
            last = points[-1]
            last_sensor, name = self._peek(tag, last, private.get(tag, []), points)
            out.append(
                TagSummary(
                    tag,
                    len(points),
                    tuple(first_seen),
                    points[0][0],
                    last[0],
                    last_sensor,
                    last[1],
                    name,
                    item_kind(first_seen, self.devices),
                )
            )
        return out

    def _name(self, device_id: str) -> str:
        info = self.devices.get(device_id)
        return device_id if info is None else info.name

    def _peek(
        self,
        tag: str,
        last: tuple[int, str, int, int],
        private: Sequence[Evidence],
        points: Sequence[tuple[int, str, int, int]],
    ) -> tuple[str | None, str | None]:
        """The sensor of the last reading and the item's name (from its first RFID read)."""
        by_pos = {(e.device_id, e.height, e.index): e for e in private}

        def content(p: tuple[int, str, int, int]) -> tuple[str, str | None] | None:
            ev = by_pos.get((p[1], p[2], p[3]))
            if ev is not None:
                return ev.sensor, ev.text
            try:
                r = self.block(p[1], p[2]).readings[p[3]].reading
            except (BlockRejected, IndexError):
                return None
            return (r.sensor, r.text) if isinstance(r, Reading) else None

        tail = content(last)
        head = content(points[0])
        name = head[1] if head is not None and head[0].startswith("rfid.") else None
        return (None if tail is None else tail[0]), name


def item_kind(first_seen: Mapping[str, int], devices: Mapping[str, DeviceInfo]) -> str | None:
    """The device kind an item belongs to (``tags --kind``): the kind of the most devices that
    saw it; on a tie, the kind of the device that saw it first, then of the first by name.
    ``first_seen``: device id -> the time it first saw the item. Devices whose certificate the
    data dir lacks have no kind and do not count; None when no device has one."""
    by_kind: dict[str, list[tuple[int, str]]] = {}
    for device_id, time_ms in first_seen.items():
        info = devices.get(device_id)
        if info is not None:
            by_kind.setdefault(info.kind, []).append((time_ms, info.name))
    if not by_kind:
        return None
    return min(by_kind, key=lambda k: (-len(by_kind[k]), min(by_kind[k]), k))


def _by_height(rotations: list[bytes]) -> list[bytes]:
    from ledger.certs import decode_rotation

    return sorted(rotations, key=lambda w: decode_rotation(w).effective_height)


def _info(cert: Certificate, name: str) -> DeviceInfo:
    return DeviceInfo(
        cert.device_id, name, cert.kind, cert.site, cert.model, cert.owner_x25519 is not None
    )


def _evidence(
    sr: SignedReading, r: Reading, block: Block, idx: int, private: bool, proof: str
) -> Evidence:
    h = block.header.header
    return Evidence(
        r.device_id,
        h.height,
        idx,
        r.epoch,
        r.seq,
        r.time_ms,
        r.sensor,
        r.value,
        r.tag,
        r.text,
        private,
        sr.leaf_hash,
        proof,
        h.key_id,
    )


def _placeholder(device_id: str, height: int, idx: int, sr: SignedReading) -> Evidence:
    """Position and time of any reading, private or not (for ``Stay.holds``)."""
    r = sr.reading
    return Evidence(
        device_id,
        height,
        idx,
        r.epoch,
        r.seq,
        r.time_ms,
        "",
        0,
        None,
        None,
        sr.private,
        sr.leaf_hash,
        "",
    )


__all__ = ["Gathered", "OpenResult", "TagSummary", "TraceError", "TraceSession"]
