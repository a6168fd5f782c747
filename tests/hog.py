"""Run a command with a CPU hog beside it: one spinning process per core, for as long as it runs.

``python -m tests.hog [--procs N] -- COMMAND...`` (``make test-loaded`` runs the whole suite so):
the suite must pass on a loaded machine, since tests inject time and wait on conditions, never on
the wall clock. The spinners run at the command's own priority, are stopped when it ends
(or on Ctrl-C), and the command's exit status is returned.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time


def _spin() -> None:  # pragma: no cover - runs in the hog processes
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.hog", description=__doc__)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="spinners (one per core)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command given (python -m tests.hog -- COMMAND...)")
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.procs)]
    for h in hogs:
        h.start()
    print(f"hog: {args.procs} spinning process(es) beside: {' '.join(command)}", file=sys.stderr)
    start = time.monotonic()
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    finally:
        for h in hogs:
            h.terminate()
        for h in hogs:
            h.join()
        took = time.monotonic() - start
        print(f"hog: stopped after {took:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
