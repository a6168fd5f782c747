"""What witnessing (agent/gossip/witness.py) adds to gossip: traffic and CPU, against the same run
without it.

``python -m bench.witness --json [--quick]`` runs the fleet benchmark's gossip shape on
``agent.gossip.sim`` twice, interleaved: one domain of ``domain_size`` devices, a block every
``seal_every_s`` per device, anti-entropy every 5 s, for ``simulated_s`` simulated seconds;
once with every device offering its checkpoints to 3 witnesses every 30 s (the runtime's
default, ``WitnessConfig()``) and once without. It prints one JSON object:

- ``witness``: WITNESS and COSIGNED messages sent per device-second and their mean sizes; the
  checkpoints cosigned (with how many cosignatures each device's latest has);
- ``bytes_per_device_s``: all gossip bytes sent per device-second, with and without, and the
  ratio;
- ``cpu_per_device_s_us``: process CPU per simulated device-second (the whole simulation: every
  node, signatures and verifications included), with and without, and the ratio (median of the
  rounds).

The simulated link loses nothing here (latency 2..40 ms), so the figures are the protocol's own.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from agent.gossip import wire
from agent.gossip.sim import SimNet
from agent.gossip.witness import WitnessConfig
from bench.common import emit, environment, interleave, make_parser
from ledger.checkpoint import parse_checkpoint
from ledger.note import parse_note


class _CountingNet(SimNet):
    """The sim's link, counting the bytes and messages sent by type."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.count: Counter[int] = Counter()
        self.bytes: Counter[int] = Counter()

    def _transmit(self, src: str, dst: str, payload: bytes, *, broadcast: bool = False) -> None:
        self.count[payload[2]] += 1
        self.bytes[payload[2]] += len(payload)
        super()._transmit(src, dst, payload, broadcast=broadcast)


def _run(
    domain_size: int, simulated_s: int, seal_every_s: int, witness: bool
) -> tuple[float, _CountingNet]:
    net = _CountingNet(11)
    offer = WitnessConfig() if witness else None
    ids = [net.add_device(witness=offer).device_id for _ in range(domain_size)]
    net.start(preload_certificates=True)
    step_ms = seal_every_s * 1000 // domain_size
    cpu = time.process_time()
    for _ in range(simulated_s // seal_every_s):
        for dev in ids:
            net.seal(dev)
            net.run_for(step_ms)
    return time.process_time() - cpu, net


def measure(
    domain_size: int, simulated_s: int, seal_every_s: int, rounds: int
) -> dict[str, object]:
    nets: dict[str, _CountingNet] = {}

    def case(witness: bool) -> float:
        cpu, net = _run(domain_size, simulated_s, seal_every_s, witness)
        nets["with" if witness else "without"] = net
        return cpu

    timings = interleave({"with": lambda: case(True), "without": lambda: case(False)}, rounds)
    device_s = domain_size * simulated_s
    with_net, without = nets["with"], nets["without"]
    total_with = sum(with_net.bytes.values())
    total_without = sum(without.bytes.values())
    cosigners = []
    for peer in with_net.peers.values():
        if peer.store.checkpoints:
            _, note = max(peer.store.checkpoints.items(), key=lambda kv: kv[0][1])
            parsed = parse_note(note)
            parse_checkpoint(parsed.text)
            cosigners.append(len(parsed.signatures) - 1)
    cpu_with = timings["with"].median / device_s * 1e6
    cpu_without = timings["without"].median / device_s * 1e6
    return {
        "workload": {
            "domain_size": domain_size,
            "simulated_s": simulated_s,
            "seal_every_s": seal_every_s,
            "rounds": rounds,
            "witness_interval_s": WitnessConfig().interval_ms // 1000,
            "witnesses_asked": WitnessConfig().count,
        },
        "witness": {
            "witness_per_device_s": round(with_net.count[wire.WITNESS] / device_s, 4),
            "witness_mean_bytes": round(
                with_net.bytes[wire.WITNESS] / max(1, with_net.count[wire.WITNESS])
            ),
            "cosigned_per_device_s": round(with_net.count[wire.COSIGNED] / device_s, 4),
            "cosigned_mean_bytes": round(
                with_net.bytes[wire.COSIGNED] / max(1, with_net.count[wire.COSIGNED])
            ),
            "devices_with_a_checkpoint": len(cosigners),
            "min_cosignatures_on_latest": min(cosigners, default=0),
        },
        "bytes_per_device_s": {
            "with": round(total_with / device_s),
            "without": round(total_without / device_s),
            "ratio": round(total_with / total_without, 3),
        },
        "cpu_per_device_s_us": {
            "with": round(cpu_with, 1),
            "without": round(cpu_without, 1),
            "ratio": round(cpu_with / cpu_without, 3),
        },
        "environment": environment(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m bench.witness", (__doc__ or "").split("\n")[0])
    args = parser.parse_args(argv)
    if args.quick:
        result = measure(domain_size=8, simulated_s=120, seal_every_s=10, rounds=3)
    else:
        result = measure(domain_size=32, simulated_s=300, seal_every_s=10, rounds=3)
    emit(result, args, "witnessing over gossip")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
