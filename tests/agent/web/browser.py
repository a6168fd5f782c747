"""A small harness for real-browser tests: Debian's headless Chromium loads a URL and gives back
the DOM after load (``--dump-dom``) or a screenshot.

Each call starts a fresh browser with its own profile directory, no network of its own beyond
the page (no background updates, sync or QUIC), so a page that loaded anything from elsewhere
would show it missing. Without Chromium the test is skipped on a developer's machine and fails
under CI (``CI`` set), so CI never passes by not running the browser.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_S = 90


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        msg = "headless Chromium not found (apt-get install -y --no-install-recommends chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must run the browser tests")
        pytest.skip(msg)
    return path


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )


def dump_dom(url: str, profile: Path, virtual_time_ms: int | None = None) -> str:
    """The page's DOM, serialised after the load event; with ``virtual_time_ms``, after that
    much of the page's (virtual, fast-forwarded) time has run its scripts and timers too."""
    budget = [] if virtual_time_ms is None else [f"--virtual-time-budget={virtual_time_ms}"]
    return _run([*budget, "--dump-dom", url], profile).stdout


def screenshot(url: str, path: Path, profile: Path, size: tuple[int, int] = (1280, 900)) -> Path:
    """A PNG of the page's first screen at ``size``; checked to be one."""
    _run([f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", url], profile)
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    assert struct.unpack(">II", head[16:24]) == size, f"{path}: not {size[0]}x{size[1]}"
    return path
