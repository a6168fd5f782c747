"""Crash test: SIGKILL a real chain-writer process at random points, reopen, and audit the store.

The child (``tests/ledger/crash_writer.py``) prints a ``durable-*`` line only after the store call
it reports has returned. The parent kills it at a seeded random point (before the interpreter
starts, while it opens the store, right as it starts a seal, or after a random number of reported
lines with a little jitter), reads every complete line the child got out before dying, then opens
the store itself and checks:

- ``verify_chain`` over ``store.blocks()`` passes, and heights run 0..head with no gap;
- sequence numbers over sealed and pending readings run 0..last with no gap and no duplicate;
  pending readings verify under the device key; every reading holds what the child wrote at its
  sequence number;
- every block reported durable is present with the hash reported, and every block the parent has
  ever seen keeps its hash (no self-fork: a height never gets a second, different block);
- every sequence number reported durable is present (sealed or pending);
- the restarted child resumes at the stored head and sequence high-water mark.

It runs twice: with the store's own ``synchronous=FULL`` commits, and with a ``GroupSync`` store
(commits at ``synchronous=NORMAL``, acknowledged after ``group.sync()``, as a fleet runner's).

Figures: "lost acknowledged = 0, integrity failures = 0, self-forks = 0 over K kills".
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from ledger.errors import LedgerError
from ledger.identity import PublicKey, SigningKey
from ledger.store import Store
from ledger.verify import verify_chain
from tests.conftest import FigureRecorder
from tests.ledger.crash_writer import expected_fields

ROOT = Path(__file__).resolve().parents[2]
PLAN_SEED = 20_251_125
KILLS = 200
DEVICE_SEED = hashlib.sha256(b"edgefleet crash-test device").digest()
CHILD_TIMEOUT_S = 20.0  # watchdog only: a healthy child is killed long before this


@dataclass(frozen=True)
class KillPoint:
    """Where to kill: ``spawn`` (at once), on the ``opening`` line, on the ``after``-th
    ``sealing`` line, or after the ``after``-th line following ``ready`` plus ``jitter_s``."""

    mode: str
    after: int = 0
    jitter_s: float = 0.0


def plan(rng: random.Random) -> KillPoint:
    roll = rng.random()
    if roll < 0.08:
        return KillPoint("spawn")
    if roll < 0.22:
        return KillPoint("opening")
    if roll < 0.50:
        return KillPoint("sealing", after=rng.randint(1, 3))
    jitter = rng.uniform(0.0, 0.002) if rng.random() < 0.5 else 0.0
    return KillPoint("line", after=rng.randint(1, 10), jitter_s=jitter)


@dataclass(frozen=True)
class ChildRun:
    lines: list[str]
    returncode: int
    stderr: str


def run_and_kill(db: Path, point: KillPoint, err_path: Path, mode: tuple[str, ...]) -> ChildRun:
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ledger.crash_writer", str(db), DEVICE_SEED.hex(), *mode],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    watchdog = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        if point.mode != "spawn":
            _read_until_trigger(proc.stdout, point, lines)
        if point.jitter_s:
            time.sleep(point.jitter_s)  # the fault's position, not a wait for anything
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read().decode()
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    # Lines written before the kill count too; a torn last line (no newline) claims nothing.
    lines.extend(rest.split("\n")[:-1])
    return ChildRun(lines, proc.returncode, err_path.read_text())


def _read_until_trigger(stdout: IO[bytes], point: KillPoint, lines: list[str]) -> None:
    seals = counted = 0
    started = False
    for raw in stdout:
        line = raw.decode()
        if not line.endswith("\n"):  # EOF inside a line: the child died on its own
            return
        line = line[:-1]
        lines.append(line)
        if point.mode == "opening" and line == "opening":
            return
        if point.mode == "sealing" and line.startswith("sealing "):
            seals += 1
            if seals == point.after:
                return
        if point.mode == "line":
            if started:
                counted += 1
                if counted == point.after:
                    return
            started = started or line.startswith("ready ")


class RememberingKey(PublicKey):
    """A public key that remembers the exact (domain, message, signature) bytes it has verified.

    Ed25519 verification is a pure function of those bytes, so a repeat is answered from memory;
    any changed byte is a new entry and is verified for real. Everything else ``verify_chain``
    checks (links, history roots, Merkle roots, sequence) still runs in full on every audit.
    """

    verified: set[tuple[bytes, bytes, bytes]]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "verified", set())

    def verify(self, domain: bytes, message: bytes, signature: bytes, what: str) -> None:
        entry = (domain, message, signature)
        if entry not in self.verified:
            super().verify(domain, message, signature, what)
            self.verified.add(entry)


@dataclass
class Ledgerbook:
    """What the parent knows across kills: acknowledgements, and every block it has seen."""

    pub: PublicKey
    remembering: RememberingKey
    acked_seq: int = -1
    acked_blocks: dict[int, bytes] = field(default_factory=dict)
    seen_blocks: dict[int, bytes] = field(default_factory=dict)
    head: int = -1
    last_seq: int = -1
    lost: dict[str, str] = field(default_factory=dict)  # "seq 17" / "block 3" -> first report
    integrity: list[str] = field(default_factory=list)  # one entry per failed check
    forks: dict[int, str] = field(default_factory=dict)  # height -> first report
    seal_kills: Counter[str] = field(default_factory=Counter)
    sealing_height: int = -1  # the seal the last child was inside when killed, if any

    def take_acks(self, kill: int, run: ChildRun) -> None:
        sealing: int | None = None
        for line in run.lines:
            word, _, rest = line.partition(" ")
            if word == "ready":
                head, next_seq = (int(x) for x in rest.split())
                if (head, next_seq) != (self.head, self.last_seq + 1):
                    self.integrity.append(
                        f"kill {kill}: resumed at head {head} next seq "
                        f"{next_seq}, store had {self.head} / {self.last_seq}"
                    )
            elif word == "durable-seq":
                self.acked_seq = max(self.acked_seq, int(rest))
            elif word == "sealing":
                sealing = int(rest)
            elif word == "durable-block":
                height_s, hash_hex = rest.split()
                height, digest = int(height_s), bytes.fromhex(hash_hex)
                held = self.acked_blocks.setdefault(height, digest)
                if held != digest:
                    self.forks.setdefault(
                        height,
                        f"kill {kill}: height {height} acknowledged "
                        f"as {held.hex()[:16]} then as {hash_hex[:16]}",
                    )
                sealing = None
        # Killed between "sealing" and its acknowledgement: the commit may or may not be in.
        self.sealing_height = -1 if sealing is None else sealing

    def audit(self, kill: int, db: Path, *, fresh: bool) -> None:
        """Audit the store; ``fresh`` checks every signature again from scratch."""
        with Store(db) as store:
            try:
                self._audit_store(kill, store, self.pub if fresh else self.remembering)
            except LedgerError as exc:
                self.integrity.append(f"kill {kill}: {type(exc).__name__}: {exc}")
        if self.sealing_height >= 0:
            committed = self.sealing_height <= self.head
            self.seal_kills["committed" if committed else "not committed"] += 1

    def _audit_store(self, kill: int, store: Store, key: PublicKey) -> None:
        blocks = list(store.blocks())
        head, _count = verify_chain(blocks, lambda _key_id, _height: key)
        head_height = -1 if head is None else head.header.height
        if store.block_count() != len(blocks) or head_height != len(blocks) - 1:
            self.integrity.append(
                f"kill {kill}: heights 0..{head_height} but "
                f"{store.block_count()} blocks stored (gap)"
            )
        pending = store.pending()
        for sr in pending:
            sr.verify(key)
        stored = [sr for b in blocks for sr in b.readings] + pending
        seqs = [sr.reading.seq for sr in stored]
        if seqs != list(range(len(seqs))):
            dupes = sorted(s for s, n in Counter(seqs).items() if n > 1)
            self.integrity.append(
                f"kill {kill}: sequence numbers are not 0..{len(seqs) - 1} "
                f"in order (duplicates {dupes[:5]})"
            )
        for sr in stored:
            r = sr.reading
            if (r.time_ms, r.sensor, r.value, r.tag) != expected_fields(r.seq):
                self.integrity.append(f"kill {kill}: reading seq {r.seq} holds other contents")
        present = set(seqs)
        for seq in range(self.acked_seq + 1):
            if seq not in present:
                self.lost.setdefault(f"seq {seq}", f"kill {kill}: acknowledged seq {seq} missing")
        for b in blocks:
            height, digest = b.header.header.height, b.header.hash
            held = self.seen_blocks.setdefault(height, digest)
            if held != digest:
                self.forks.setdefault(
                    height,
                    f"kill {kill}: height {height} held {held.hex()[:16]}, now {digest.hex()[:16]}",
                )
        for height, digest in self.acked_blocks.items():
            if height > head_height:
                self.lost.setdefault(
                    f"block {height}", f"kill {kill}: acknowledged block {height} missing"
                )
            elif blocks[height].header.hash != digest:
                now = blocks[height].header.hash.hex()[:16]
                self.forks.setdefault(
                    height, f"kill {kill}: acknowledged block {height} replaced by {now}"
                )
        self.head = head_height
        self.last_seq = max(seqs, default=-1)

    def figure(self, kills: int) -> str:
        acked = self.acked_seq + 1 + len(self.acked_blocks)
        return (
            f"lost acknowledged = {len(self.lost)}, integrity failures = "
            f"{len(self.integrity)}, self-forks = {len(self.forks)} over {kills} kills "
            f"({acked} acknowledged: seqs 0..{self.acked_seq} and {len(self.acked_blocks)} "
            f"blocks; plan seed {PLAN_SEED})"
        )


@pytest.mark.subprocess
@pytest.mark.parametrize("mode", [(), ("group",)], ids=["synchronous-full", "group-sync"])
def test_sigkill_at_random_points_loses_nothing_acknowledged(
    mode: tuple[str, ...],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    record_testsuite_property: Callable[[str, object], None],
    figure: FigureRecorder,
) -> None:
    rng = random.Random(PLAN_SEED)
    db = tmp_path / "device.sqlite"
    pub = SigningKey(DEVICE_SEED).public
    book = Ledgerbook(pub, RememberingKey(pub.raw))
    modes: Counter[str] = Counter()
    started = time.perf_counter()
    for kill in range(1, KILLS + 1):
        point = plan(rng)
        run = run_and_kill(db, point, tmp_path / "child.err", mode)
        assert run.returncode == -signal.SIGKILL, (
            f"kill {kill} ({point}): child ended with {run.returncode}, not by SIGKILL; "
            f"stderr:\n{run.stderr}"
        )
        modes[point.mode] += 1
        book.take_acks(kill, run)
        book.audit(kill, db, fresh=kill % 25 == 0 or kill == KILLS)
        if book.integrity:  # a broken store makes every later audit noise
            break
    elapsed = time.perf_counter() - started
    text = book.figure(sum(modes.values())) + (" (group sync)" if mode else "")
    detail = (
        f"{text}; kills by point {dict(sorted(modes.items()))}; kills inside a seal "
        f"{dict(sorted(book.seal_kills.items()))}; head height {book.head}; "
        f"{elapsed:.1f} s"
    )
    figure("store SIGKILL at random points (power-loss model)", detail, seed=PLAN_SEED)
    # What record_property does, minus its warning under junit_family=xunit2 (warnings are
    # errors here); the suite property is what xunit2's --junitxml writes out.
    request.node.user_properties.append(("crash_figure", text))
    request.node.user_properties.append(("crash_detail", detail))
    record_testsuite_property("crash_figure", text)
    problems = [*book.lost.values(), *book.integrity, *book.forks.values()]
    assert not problems, f"{text}\n" + "\n".join(problems[:20])
    assert sum(modes.values()) >= 200
    # The kill points must really have been exercised, or the figure proves little.
    assert min(modes[m] for m in ("spawn", "opening", "sealing", "line")) > 0, modes
    assert book.seal_kills["not committed"] > 0, f"no kill landed inside a seal: {detail}"
    assert book.acked_seq > 0 and len(book.acked_blocks) > KILLS // 4, detail
