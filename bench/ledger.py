"""Ledger throughput against plain PyNaCl: what our signing and verification paths cost.

``python -m bench.ledger --json [--quick]`` prints one JSON object with:

- ``raw_sign_per_s`` / ``raw_verify_per_s``: PyNaCl ``SigningKey.sign`` / ``VerifyKey.verify``
  over the very bytes our readings sign (domain tag and body), on this machine in this run;
- ``sign_seal_store_per_s``: readings signed with ``ChainWriter.record``, sealed into blocks of
  64 and committed to a real SQLite file (WAL, synchronous=FULL) in a temp dir, on one core: one
  durable transaction per block holds the readings and the header (``seal`` stores the readings,
  reads them back as stored, checks them, signs the header, commits), which is the agent's path
  when a batch of samples fills a block;
- ``sign_flush_seal_store_per_s``: the same with the readings made durable first (``flush``) and
  the block sealed in a second transaction, the path of readings that wait for sealing by age;
  ``sign_flush_ratio`` is its ratio to raw signing;
- ``verify_readings_per_s``: stored blocks read back (``Store.block``: the stored bytes decoded)
  and checked with ``verify_block`` (header and reading signatures, fields, order, Merkle root),
  per reading; ``verify_block_only_per_s`` is the same without the read and decode;
- ``sign_ratio`` and ``verify_ratio``: the measured paths over their raw baselines, with
  ``targets`` and ``meets_targets``;
- to tell CPU from disk: ``sign_seal_store_cpu_per_s`` and ``raw_sign_cpu_per_s`` (process CPU
  time, so waits for fsync are left out) and their ``sign_cpu_ratio``, and ``commit_ms``, the
  latency of one durable single-reading commit on this disk during the run;
- ``spread`` (slowest over fastest round, minus one) per case, and ``meta``.

Baselines and measured paths run in alternating rounds; rates are at the median round.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nacl.signing

from bench.common import (
    BenchArgs,
    Timing,
    emit,
    environment,
    interleave,
    parse_args,
    time_call,
    time_call_cpu,
)
from ledger import domains
from ledger.block import Block
from ledger.chain import ChainWriter
from ledger.identity import SigningKey
from ledger.reading import Reading, sign_reading
from ledger.store import Store
from ledger.verify import verify_block

BLOCK_READINGS = 64
COMMITS = 16  # single-reading commits timed per round to gauge the disk's fsync latency
TARGETS = {"sign_ratio": 0.5, "verify_ratio": 0.8}
SEED = bytes(range(32))
_PROG = "python -m bench.ledger"

Fields = tuple[int, str, int, str | None]


def reading_fields(seq: int) -> Fields:
    """A fridge's mix: temperatures, door and power, one reading in four about a tagged item."""
    sensor = ("cabinet_temp_mc", "door", "power_w", "cabinet_temp_mc")[seq % 4]
    tag = f"urn:epc:id:sgtin:0614141.107346.{1000 + seq}" if seq % 4 == 3 else None
    return 1_700_000_000_000 + seq * 1_000, sensor, 4_000 + seq % 700, tag


class LedgerBench:
    """Inputs built once; each ``*_round`` method times one round and returns its seconds."""

    def __init__(self, blocks: int, workdir: Path) -> None:
        self.blocks = blocks
        self.n = blocks * BLOCK_READINGS
        self.workdir = workdir
        self.key = SigningKey(SEED)
        self.device_id = self.key.public.device_id
        self.fields = [reading_fields(seq) for seq in range(self.n)]
        # The baselines sign and verify exactly what ChainWriter.record signs.
        signed = [
            sign_reading(Reading(self.device_id, 0, seq, *f), self.key)
            for seq, f in enumerate(self.fields)
        ]
        self.messages = [domains.READING + sr.body for sr in signed]
        self.signatures = [sr.signature for sr in signed]
        self.raw_sk = nacl.signing.SigningKey(SEED)
        self.raw_vk = self.raw_sk.verify_key
        self.commit_readings = signed[:COMMITS]
        # Process CPU seconds of each round, for the ratio with fsync waits left out.
        self.raw_sign_cpu: list[float] = []
        self.sign_cpu: list[float] = []
        # The verify rounds read a store written by the measured path itself.
        self.verify_db = workdir / "verify.sqlite"
        self._write_chain(self.verify_db, flush_first=False)
        with Store(self.verify_db) as store:
            self.decoded: list[Block] = list(store.blocks())
        if len(self.decoded) != blocks:
            raise RuntimeError(f"expected {blocks} stored blocks, found {len(self.decoded)}")

    @property
    def message_bytes(self) -> float:
        return sum(map(len, self.messages)) / self.n

    def raw_sign_round(self) -> float:
        sign = self.raw_sk.sign
        messages = self.messages
        wall, cpu = time_call_cpu(lambda: [sign(m) for m in messages])
        self.raw_sign_cpu.append(cpu)
        return wall

    def raw_verify_round(self) -> float:
        verify = self.raw_vk.verify
        pairs = list(zip(self.messages, self.signatures, strict=True))
        return time_call(lambda: [verify(m, s) for m, s in pairs])

    def sign_round(self) -> float:
        path = self.workdir / "sign.sqlite"
        try:
            wall, cpu = self._write_chain(path, flush_first=False)
        finally:
            _remove_db(path)
        self.sign_cpu.append(cpu)
        return wall

    def sign_flush_round(self) -> float:
        path = self.workdir / "sign-flush.sqlite"
        try:
            wall, _ = self._write_chain(path, flush_first=True)
        finally:
            _remove_db(path)
        return wall

    def commit_round(self) -> float:
        """Seconds per durable single-reading commit: this disk's fsync latency, right now."""
        path = self.workdir / "commit.sqlite"
        try:
            with Store(path) as store:
                append = store.append_pending
                readings = self.commit_readings
                seconds = time_call(lambda: [append([sr]) for sr in readings])
        finally:
            _remove_db(path)
        return seconds / len(self.commit_readings)

    def _write_chain(self, path: Path, *, flush_first: bool) -> tuple[float, float]:
        with Store(path) as store:
            writer = ChainWriter(store, self.key, self.device_id)
            fields = self.fields

            def work() -> None:
                for start in range(0, self.n, BLOCK_READINGS):
                    for f in fields[start : start + BLOCK_READINGS]:
                        writer.record(*f)
                    if flush_first:
                        writer.flush()
                    writer.seal(max_readings=BLOCK_READINGS)

            seconds = time_call_cpu(work)
            if store.block_count() != self.blocks or store.pending_count():
                raise RuntimeError("sign round did not seal every reading into its own block")
        return seconds

    def verify_round(self) -> float:
        pub = self.key.public
        with Store(self.verify_db) as store:

            def work() -> None:
                after: int | None = None
                for height in range(self.blocks):
                    block = store.block(height)
                    if block is None:
                        raise RuntimeError(f"stored block {height} vanished")
                    verify_block(block, pub, after_seq=after)
                    after = block.readings[-1].reading.seq

            return time_call(work)

    def verify_only_round(self) -> float:
        pub = self.key.public
        blocks = self.decoded

        def work() -> None:
            after: int | None = None
            for block in blocks:
                verify_block(block, pub, after_seq=after)
                after = block.readings[-1].reading.seq

        return time_call(work)


def _remove_db(path: Path) -> None:
    for leftover in path.parent.glob(path.name + "*"):  # the file, its -wal and -shm
        leftover.unlink()


def run(args: BenchArgs) -> dict[str, object]:
    blocks, rounds = (8, 3) if args.quick else (64, 7)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        bench = LedgerBench(blocks, Path(tmp))
        timings = interleave(
            {
                "raw_sign": bench.raw_sign_round,
                "sign_seal_store": bench.sign_round,
                "sign_flush_seal_store": bench.sign_flush_round,
                "raw_verify": bench.raw_verify_round,
                "verify_readings": bench.verify_round,
                "verify_block_only": bench.verify_only_round,
                "commit": bench.commit_round,
            },
            rounds,
        )
        return summarize(timings, bench, rounds, args)


def summarize(
    timings: dict[str, Timing], bench: LedgerBench, rounds: int, args: BenchArgs
) -> dict[str, object]:
    rate = {name: t.per_second(bench.n) for name, t in timings.items() if name != "commit"}
    sign_cpu = Timing(tuple(bench.sign_cpu[-rounds:])).per_second(bench.n)
    raw_sign_cpu = Timing(tuple(bench.raw_sign_cpu)).per_second(bench.n)
    ratios = {
        "sign_ratio": rate["sign_seal_store"] / rate["raw_sign"],
        "verify_ratio": rate["verify_readings"] / rate["raw_verify"],
    }
    return {
        "raw_sign_per_s": round(rate["raw_sign"]),
        "raw_verify_per_s": round(rate["raw_verify"]),
        "sign_seal_store_per_s": round(rate["sign_seal_store"]),
        "sign_flush_seal_store_per_s": round(rate["sign_flush_seal_store"]),
        "sign_flush_ratio": round(rate["sign_flush_seal_store"] / rate["raw_sign"], 3),
        "verify_readings_per_s": round(rate["verify_readings"]),
        "verify_block_only_per_s": round(rate["verify_block_only"]),
        # CPU time only (fsync waits left out), to tell the code's cost from the disk's.
        "sign_seal_store_cpu_per_s": round(sign_cpu),
        "raw_sign_cpu_per_s": round(raw_sign_cpu),
        "sign_cpu_ratio": round(sign_cpu / raw_sign_cpu, 3),
        "commit_ms": round(timings["commit"].median * 1e3, 3),
        **{name: round(value, 3) for name, value in ratios.items()},
        "targets": TARGETS,
        "meets_targets": {name: ratios[name] >= TARGETS[name] for name in TARGETS},
        # How noisy the machine was for each case: slowest round / fastest round - 1.
        "spread": {name: round(max(t.samples) / t.best - 1, 3) for name, t in timings.items()},
        "meta": {
            **environment(),
            "n": bench.n,
            "quick": args.quick,
            "rounds": rounds,
            "block_readings": BLOCK_READINGS,
            "message_bytes": round(bench.message_bytes, 1),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(_PROG, __doc__.split("\n")[0] if __doc__ else _PROG, argv)
    emit(run(args), args, "ledger throughput (per second, median of interleaved rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
