"""The child program of the crash test: a chain writer that reports what it made durable.

Run as ``python -m tests.ledger.crash_writer DB SEED_HEX [group]`` from the project root. It
opens the store, resumes the device's chain with a ``ChainWriter`` and loops until it is killed:
record ``PER_FLUSH`` readings, flush, report ``durable-seq N``; every ``FLUSHES_PER_BLOCK``
flushes, report ``sealing H``, seal, report ``durable-block H HASH``. A line is printed (and
flushed) only after the call it reports has returned, so every ``durable-*`` line is an
acknowledgement the parent may hold the store to. ``opening`` and ``sealing`` are markers, not
claims: they tell the parent where the child is, so it can kill during start-up or during a seal.

With ``group`` the store is opened with a ``GroupSync`` (commits at synchronous=NORMAL, as a
fleet runner's stores) and each durable call is followed by ``group.sync()`` before its line,
which is how ``agent.device.storework.StoreThreads`` acknowledges such a commit.

Reading contents are a pure function of the sequence number (``expected_fields``), so the parent
can check every stored reading, and a writer resumed after a kill writes exactly what a writer
that never crashed would have written at the same sequence numbers.
"""

from __future__ import annotations

import os
import sys

from ledger.chain import ChainWriter
from ledger.groupsync import GroupSync
from ledger.identity import SigningKey
from ledger.store import Store

PER_FLUSH = 2
FLUSHES_PER_BLOCK = 2
MAX_BLOCKS_PER_RUN = 10_000  # a bound in case the parent never kills us


def expected_fields(seq: int) -> tuple[int, str, int, str | None]:
    """(time_ms, sensor, value, tag) of the reading with sequence number ``seq``."""
    sensor = ("cabinet_temp_mc", "door", "power_w")[seq % 3]
    value = (seq * 7919) % 10_000 - 5_000
    tag = f"urn:epc:id:sgtin:0614141.107346.{seq}" if seq % 4 == 0 else None
    return 1_700_000_000_000 + seq * 1_000, sensor, value, tag


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(db: str, seed: bytes, group: GroupSync | None = None) -> int:
    parent = os.getppid()
    key = SigningKey(seed)
    _say("opening")
    store = Store(db, group=group)
    sync = group.sync if group is not None else (lambda: None)
    writer = ChainWriter(store, key, key.public.device_id)
    head = store.head()
    _say(f"ready {-1 if head is None else head.header.height} {writer.next_seq}")
    for _ in range(MAX_BLOCKS_PER_RUN):
        if os.getppid() != parent:  # orphaned: the test died; do not write forever
            return 1
        for _ in range(FLUSHES_PER_BLOCK):
            for _ in range(PER_FLUSH):
                writer.record(*expected_fields(writer.next_seq))
            writer.flush()
            sync()
            _say(f"durable-seq {writer.next_seq - 1}")
        head = store.head()
        _say(f"sealing {0 if head is None else head.header.height + 1}")
        block = writer.seal()
        if block is None:
            raise AssertionError("seal returned None with readings pending")
        sync()
        _say(f"durable-block {block.header.header.height} {block.header.hash.hex()}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["group"]):
        sys.stderr.write("usage: python -m tests.ledger.crash_writer DB SEED_HEX [group]\n")
        return 2
    return run(argv[0], bytes.fromhex(argv[1]), GroupSync() if argv[2:] else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
