"""The edgefleet pytest plugin: replay a trace (or simulate) into a real fleet, then query it.

Registered through the ``pytest11`` entry point ``edgefleet``, so installing edgefleet makes the
``edgefleet_replay`` fixture available to every test (``-p no:edgefleet`` turns it off).
docs/TESTING.md is the user's guide.

The fleet is the real one: ``FleetRunner`` with every device agent signing, sealing, storing and
gossiping, over the in-memory network with everything on simulated time (no broker, no wall
clock, one seed gives one run). The result object is thin: every query reads the SQLite stores
the agents left in the data dir.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from agent.device.sealing import SealPolicy
    from agent.gossip.tuning import GossipConfig
    from agent.provenance.audit import DeviceReport
    from ledger.block import SignedHeader
    from ledger.private import OwnerOpener
    from ledger.reading import Reading
    from ledger.store import Store

StrPath = str | os.PathLike[str]
DEFAULT_SETTLE_S = 60.0  # simulated seconds the fleet may take to converge after the last sample


class Alarm(NamedTuple):
    """One ``alarm.*`` reading: raised (value 1) or cleared (value 0)."""

    device: str
    time_ms: int
    sensor: str
    raised: bool
    text: str | None


class TagEvent(NamedTuple):
    """One reading about a tagged item, at the device whose chain holds it."""

    device: str
    time_ms: int
    sensor: str
    value: int
    text: str | None


class FleetVerificationError(AssertionError):
    """A chain, pending reading, peer header or replica in the data dir failed to verify."""


class FleetReplay:
    """The data dir of a finished fleet run, and queries over its device stores.

    ``converged`` says whether every device held every peer's head at the end; ``samples`` is how
    many samples the devices received; ``sim_start_ms`` / ``sim_end_ms`` bound the run. Device
    arguments are names from the devices file. Close it (or let the fixture do it) to release the
    stores.
    """

    def __init__(
        self,
        data: Path,
        device_ids: dict[str, str],
        *,
        converged: bool,
        samples: int,
        sim_start_ms: int,
        sim_end_ms: int,
    ) -> None:
        self.data = data
        self.device_ids = dict(device_ids)
        self.converged = converged
        self.samples = samples
        self.sim_start_ms = sim_start_ms
        self.sim_end_ms = sim_end_ms
        self._names = {dev_id: name for name, dev_id in device_ids.items()}
        self._order = {name: i for i, name in enumerate(device_ids)}
        self._stores: dict[str, Store] = {}
        self._openers: dict[str, OwnerOpener | None] = {}

    @property
    def devices(self) -> list[str]:
        """Device names, in devices-file order."""
        return list(self.device_ids)

    def store(self, device: str) -> Store:
        """The device's own store (opened on first use, closed by ``close``)."""
        from agent.fleet.datadir import DataDir
        from ledger.store import Store

        if device not in self.device_ids:
            raise KeyError(f"no device {device!r} in this fleet (devices: {self.devices})")
        if device not in self._stores:
            self._stores[device] = Store(DataDir(self.data).store_path(device))
        return self._stores[device]

    def chain(self, device: str) -> list[Reading]:
        """Every reading sealed in the device's own chain, in chain (sequence) order. Readings
        of private sites are opened with their owner's key from the data dir (DIR/owners): the
        harness looks at the fleet as its owners do."""
        from ledger.private import open_reading

        opener = self._openers.get(device)
        if device not in self._openers:
            opener = self._openers[device] = self._owner_opener(device)
        return [open_reading(sr, opener) for b in self.store(device).blocks() for sr in b.readings]

    def _owner_opener(self, device: str) -> OwnerOpener | None:
        from agent.fleet.keystore import owner_secret_for
        from ledger.certs import decode_certificate
        from ledger.private import OwnerOpener

        wire = self.store(device).certificate(self.device_ids[device])
        owner = None if wire is None else decode_certificate(wire).owner_x25519
        if owner is None:
            return None
        secret = owner_secret_for(self.data / "owners", owner)
        return None if secret is None else OwnerOpener(secret)

    def heads(self) -> dict[str, SignedHeader | None]:
        """Each device's own chain head (None: nothing sealed), by device name."""
        return {name: self.store(name).head() for name in self.device_ids}

    def alarms(self, device: str | None = None) -> list[Alarm]:
        """``alarm.*`` readings of one device or of all, by time (devices-file order on ties)."""
        names = self.devices if device is None else [device]
        found = [
            (
                r.time_ms,
                self._order[name],
                r.seq,
                Alarm(name, r.time_ms, r.sensor, r.value != 0, r.text),
            )
            for name in names
            for r in self.chain(name)
            if r.sensor.startswith("alarm.")
        ]
        return [a for *_, a in sorted(found)]

    def tag_history(self, epc: str) -> list[TagEvent]:
        """Every reading about ``epc`` across the fleet, from the stores' tag index, by time.

        A reading held by several stores (its device's own chain, peers' replicas) counts once.
        Ties in time keep each device's own order and devices-file order between devices.
        """
        from ledger.reading import decode_reading

        seen: dict[tuple[str, int, int], TagEvent] = {}
        keys: list[tuple[int, int, int, tuple[str, int, int]]] = []
        for name in self.device_ids:
            store = self.store(name)
            for hit in store.tag_hits(epc):
                key = (hit.device_id, hit.height, hit.idx)
                if key in seen:
                    continue
                if hit.own:
                    wire = store.reading_wires(hit.height)[hit.idx]
                    r = decode_reading(wire).reading
                else:
                    block = store.replica(hit.device_id, hit.height)
                    if block is None:
                        continue
                    r = block.readings[hit.idx].reading
                owner = self._names.get(hit.device_id, hit.device_id)
                seen[key] = TagEvent(owner, r.time_ms, r.sensor, r.value, r.text)
                keys.append((r.time_ms, self._order.get(owner, len(self._order)), r.seq, key))
        return [seen[k] for *_, k in sorted(keys)]

    def verify(self) -> list[DeviceReport]:
        """Verify every device's data with agent.provenance.audit (signatures, chain links, peer
        headers, replicas) against the data dir's fleet root; raise FleetVerificationError naming
        each failure. Returns the per-device reports."""
        from agent.fleet import keystore
        from agent.fleet.datadir import DataDir
        from agent.provenance.audit import audit, default_root

        data = DataDir(self.data)
        reports = list(audit(data, keystore.load_roots(default_root(data)), deep=True))
        errors = [f"{r.name}: {e}" for r in reports for e in r.errors]
        missing = sorted(set(self.device_ids) - {r.name for r in reports})
        errors += [f"{name}: no device directory in {self.data}" for name in missing]
        if errors:
            raise FleetVerificationError(
                f"{len(errors)} verification failure(s) in {self.data}:\n  " + "\n  ".join(errors)
            )
        return reports

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()

    def __enter__(self) -> FleetReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_fleet(
    data: StrPath,
    devices: StrPath,
    trace: StrPath | None = None,
    *,
    duration: str | int | None = None,
    seed: int | None = None,
    seal: SealPolicy | None = None,
    gossip: GossipConfig | None = None,
    settle_s: float = DEFAULT_SETTLE_S,
) -> FleetReplay:
    """Run the fleet of ``devices`` into the fresh data dir ``data`` and return its FleetReplay.

    With ``trace``: replay it, from its first sample through its last (or for ``duration``).
    Without: simulate the devices file for ``duration`` (``"90s"``, ``"1d"``, or milliseconds).
    Everything runs on simulated time over the in-memory network. ``settle_s`` is how long, in
    simulated seconds, the fleet may gossip after the last sample before ``converged`` is decided.
    """
    from agent.config.devices import FleetConfig, load_fleet, parse_duration_ms
    from agent.fleet.runner import FleetRunner, RunOptions
    from agent.fleet.sources import SampleSource, TraceSource
    from firmware_sim.trace import TraceReader

    cfg = load_fleet(Path(devices))
    for_ms = parse_duration_ms(duration) if isinstance(duration, str) else duration
    source: Callable[[FleetConfig, int], SampleSource] | None = None
    if trace is not None:
        path = str(trace)
        reader = TraceReader(path)  # read whole first: a bad line fails here, naming the line
        last = max((s.time_ms for _, s in reader), default=reader.header.start_ms)
        if for_ms is None:
            for_ms = max(0, last - reader.header.start_ms)
        source = lambda c, step: TraceSource(path, c, step)  # noqa: E731
    elif for_ms is None:
        raise ValueError("run_fleet: give a trace to replay or a duration to simulate")
    root = Path(data)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"run_fleet: data dir {root} is not empty (every run needs a fresh one)")
    opts = RunOptions(
        data=root,
        broker="memory",
        for_ms=for_ms,
        seed=seed,
        settle_s=settle_s,
        view=False,
        source=source,
        simulated_network=True,
        resume=False,
    )
    if seal is not None:
        opts.seal = seal
    if gossip is not None:
        opts.gossip = gossip
    result = asyncio.run(FleetRunner(cfg, opts).run())
    ids = {name: result.devices[name].device_id for name in (d.name for d in cfg.devices)}
    return FleetReplay(
        root,
        ids,
        converged=result.converged,
        samples=result.samples,
        sim_start_ms=result.sim_start_ms,
        sim_end_ms=result.sim_end_ms,
    )


class Replayer:
    """What the ``edgefleet_replay`` fixture returns: call it to run a fleet.

    ``edgefleet_replay(trace=None, *, devices=None, duration=None, seed=None, seal=None,
    gossip=None, settle_s=60.0) -> FleetReplay``. ``devices`` defaults to ``devices.yaml`` in
    pytest's rootdir; relative paths are taken from the rootdir too. Each call gets its own data
    dir under the test's ``tmp_path``.
    """

    def __init__(self, base: Path, rootdir: Path) -> None:
        self.base = base
        self.rootdir = rootdir
        self.results: list[FleetReplay] = []

    def __call__(
        self,
        trace: StrPath | None = None,
        *,
        devices: StrPath | None = None,
        duration: str | int | None = None,
        seed: int | None = None,
        seal: SealPolicy | None = None,
        gossip: GossipConfig | None = None,
        settle_s: float = DEFAULT_SETTLE_S,
    ) -> FleetReplay:
        spec = self.rootdir / (devices if devices is not None else "devices.yaml")
        data = self.base / f"fleet-{len(self.results) + 1}"
        result = run_fleet(
            data,
            spec,
            None if trace is None else self.rootdir / trace,
            duration=duration,
            seed=seed,
            seal=seal,
            gossip=gossip,
            settle_s=settle_s,
        )
        self.results.append(result)
        return result

    def close(self) -> None:
        for r in self.results:
            r.close()


@pytest.fixture
def edgefleet_replay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replayer]:
    """Run a real edgefleet fleet on simulated time and query its stores.

    Call it with a trace to replay (``edgefleet_replay("day.jsonl", devices="devices.yaml")``)
    or a duration to simulate (``edgefleet_replay(duration="6h")``); it returns a FleetReplay:
    ``chain(device)``, ``heads()``, ``alarms(device=None)``, ``tag_history(epc)``, ``verify()``,
    ``converged``. See docs/TESTING.md.
    """
    replayer = Replayer(tmp_path / "edgefleet", request.config.rootpath)
    try:
        yield replayer
    finally:
        replayer.close()
