"""Tracing speed: how long following one item takes, and what its offline bundle costs.

``python -m bench.trace --json [--quick]`` runs the sample fleet (``devices.yaml``) for a
simulated month (``--quick``: three days) with the real fleet runner in simulated time (one-hour
simulation steps: every device's samples are the same whatever the step, docs/TRACES.md), then
traces every item its tag indexes list and prints one JSON object with:

- ``items``: items traced; ``readings``: readings verified per trace (median);
- ``trace_ms_p50`` / ``trace_ms_p99``: one ``edgefleet trace`` without the interpreter start:
  open the data dir's stores, verify the chains the item's readings are in, gather, verify and
  judge (a fresh ``TraceSession`` per item);
- ``warm_trace_ms_p50``: the same in a session that has already verified the chains;
- ``lookup_ms_p50``: the baseline, measured in the same rounds: the raw SQL tag lookup of the
  item in every store (``Store.tag_hits``), no decoding or verification; ``trace_lookup_ratio``
  is ``trace_ms_p50`` over it;
- ``bundle_bytes``: the bundle of a typical blood bag (the median-sized evidence among bags that
  finished the station -> van -> hospital route), ``bundle_readings`` its readings;
- ``verify_bundle_ms``: ``ledger.bundle.verify_bundle`` of that bundle (median of rounds), and
  ``raw_verify_ms``: PyNaCl verification of as many reading signatures (the floor a verifier
  cannot go below), with ``verify_bundle_ratio``;
- ``fleet_run_s``: wall time of the simulated run that built the data dir, and ``meta``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import nacl.signing

from agent.config.devices import load_fleet
from agent.fleet import keystore
from agent.fleet.datadir import DataDir
from agent.fleet.runner import FleetRunner, RunOptions
from agent.fleet.sources import simulation
from agent.provenance.audit import default_root
from agent.provenance.bundles import write_bundle
from agent.provenance.gather import TraceSession
from bench.common import BenchArgs, emit, environment, interleave, parse_args, time_call
from ledger import domains
from ledger.bundle import verify_bundle

DAY_MS = 86_400_000
STEP_MS = 60 * 60_000
SAMPLE_FLEET = Path(__file__).resolve().parents[1] / "devices.yaml"
_PROG = "python -m bench.trace"


def build(data: Path, days: int) -> float:
    cfg = load_fleet(SAMPLE_FLEET)
    opts = RunOptions(
        data=data,
        for_ms=days * DAY_MS,
        simulated_network=True,
        view=False,
        source=lambda c, _step: simulation(c, STEP_MS),
    )
    start = time.perf_counter()
    asyncio.run(FleetRunner(cfg, opts).run())
    return time.perf_counter() - start


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: BenchArgs) -> dict[str, object]:
    days = 3 if args.quick else 30
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        data = DataDir(Path(tmp) / "data")
        fleet_s = build(data.root, days)
        roots = keystore.load_roots(default_root(data))
        with TraceSession(data, roots) as listing:
            items = [row.tag for row in listing.tags()]
        if args.quick:
            items = items[:: max(1, len(items) // 40)]
        cold: list[float] = []
        lookup: list[float] = []
        sizes: list[int] = []
        for epc in items:

            def trace_cold(epc: str = epc) -> float:
                def work() -> None:
                    with TraceSession(data, roots) as s:
                        sizes.append(len(s.trace(epc).evidence))

                return time_call(work)

            def raw_lookup(epc: str = epc) -> float:
                with TraceSession(data, roots) as s:
                    return time_call(lambda: [st.tag_hits(epc) for st in s.stores.values()])

            t = interleave({"trace": trace_cold, "lookup": raw_lookup}, rounds=1)
            cold.append(t["trace"].median)
            lookup.append(t["lookup"].median)
        with TraceSession(data, roots) as warm_session:
            for epc in items:
                warm_session.trace(epc)  # verify every chain once
            warm = [time_call(partial(warm_session.trace, epc)) for epc in items]
            bags = []
            for epc in items:
                tr = warm_session.trace(epc)
                names = [tr.device_name(s.stay.device_id) for s in tr.stays]
                if tr.product.name == "plasma" and len(names) == 3 and tr.stays[-1].stay.left:
                    bags.append((len(tr.evidence), epc, tr))
            bags.sort(key=lambda b: (b[0], b[1]))
            _, bag_epc, bag = bags[len(bags) // 2]
            blob = write_bundle(warm_session, bag, created_ms=0)
        verified = verify_bundle(blob, roots=roots)
        wires = [br.reading for br in verified.readings]
        keys = {
            d: nacl.signing.VerifyKey(v.certificate.device_key.raw)
            for d, v in verified.devices.items()
        }

        def verify_round() -> float:
            return time_call(lambda: verify_bundle(blob, roots=roots))

        def raw_round() -> float:
            def work() -> None:
                for sr in wires:
                    keys[sr.reading.device_id].verify(domains.READING + sr.body, sr.signature)

            return time_call(work)

        timing = interleave(
            {"bundle": verify_round, "raw": raw_round}, rounds=3 if args.quick else 7
        )
    p50 = statistics.median(cold) * 1000
    lookup_p50 = statistics.median(lookup) * 1000
    return {
        "days": days,
        "items": len(items),
        "readings": int(statistics.median(sizes)) if sizes else 0,
        "trace_ms_p50": round(p50, 3),
        "trace_ms_p99": round(_pct(cold, 0.99) * 1000, 3),
        "warm_trace_ms_p50": round(statistics.median(warm) * 1000, 3),
        "lookup_ms_p50": round(lookup_p50, 3),
        "trace_lookup_ratio": round(p50 / lookup_p50, 1) if lookup_p50 else None,
        "bundle_epc": bag_epc,
        "bundle_bytes": len(blob),
        "bundle_readings": len(wires),
        "verify_bundle_ms": round(timing["bundle"].median * 1000, 3),
        "raw_verify_ms": round(timing["raw"].median * 1000, 3),
        "verify_bundle_ratio": round(timing["bundle"].median / timing["raw"].median, 2),
        "fleet_run_s": round(fleet_s, 2),
        "meta": environment(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(_PROG, __doc__.split("\n")[0] if __doc__ else _PROG, argv)
    emit(run(args), args, "tracing (milliseconds, bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
