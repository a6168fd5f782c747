"""The passphrase prompt at a real terminal: Ctrl-D (end of input) at `passphrase:` is one line
naming what is missing and how to give it (exit 2), not getpass's EOFError traceback. The
README tour's `edgefleet keys init-owner --out vet.key` prompts exactly there."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _read_until(fd: int, want: bytes, deadline: float) -> bytes:
    got = b""
    while want not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} from the command; it printed {got!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.pty
@pytest.mark.subprocess
def test_end_of_input_at_the_passphrase_prompt_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_PASSPHRASE"}
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "agent.cli.main", "keys", "init-owner", "--out"]
    argv.append(str(tmp_path / "vet.key"))
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as at a shell
        os.chdir(ROOT)
        os.execve(sys.executable, argv, env)
    try:
        deadline = time.monotonic() + 60  # a loaded machine starts Python slowly
        _read_until(fd, b"passphrase: ", deadline)
        os.write(fd, b"\x04")  # Ctrl-D
        rest = _read_until(fd, b"\n", deadline)
        rest += _read_until(fd, b"<closed>", deadline)  # everything until the child exits
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = rest.decode(errors="replace").replace("\r\n", "\n").strip()
    assert "Traceback" not in text, text
    assert text == (
        "edgefleet: error: no passphrase: the prompt was closed (end of input); type it, or use "
        "--passphrase-file FILE or set EDGEFLEET_PASSPHRASE"
    ), text
    assert os.waitstatus_to_exitcode(status) == 2
    assert not (tmp_path / "vet.key").exists()
