"""Headless Chromium driven over the DevTools protocol on a pipe: no port, no extra package.

``Chromium.start`` runs the browser with ``--remote-debugging-pipe``: it reads NUL-terminated JSON
commands on its fd 3 and writes replies and events on its fd 4. ``Page`` is one tab attached in
flat mode (its commands carry a ``sessionId``). Only what the page tests need: open a URL,
evaluate JavaScript (awaiting promises, values returned as JSON), put files into an
``<input type=file>`` or drop them on the page, wait for a condition, and take a full-page
screenshot.

``find_chromium`` returns the executable or None; ``require_chromium`` skips the test without it,
except under ``CI`` (set), where a missing browser fails the test: CI must run the browser tests.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests may run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--window-size=1200,900",
)
TIMEOUT_S = 30.0


class ChromiumError(Exception):
    """The browser did not answer, answered with an error, or the page threw."""


def find_chromium() -> str | None:
    names = [os.environ.get("EDGEFLEET_CHROMIUM", ""), "chromium", "chromium-browser"]
    return next((p for p in map(shutil.which, filter(None, names)) if p), None)


def require_chromium() -> str:
    exe = find_chromium()
    if exe is None:
        msg = "Chromium is not installed (Debian: apt-get install --no-install-recommends chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must run the browser tests")
        pytest.skip(msg)
    return exe


def _high(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or above (so fds 3 and 4 of the child cannot collide)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int) -> None:
        self._proc = proc
        self._out = to_browser
        self._in = from_browser
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    @classmethod
    def start(cls, exe: str, profile: Path) -> Chromium:
        cmd_r, cmd_w = (_high(fd) for fd in os.pipe())
        out_r, out_w = (_high(fd) for fd in os.pipe())
        # The browser reads commands on fd 3 and writes on fd 4: bash puts the pipe ends there.
        redirect = f'exec 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-; exec "$@"'
        argv = [*FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        proc = subprocess.Popen(
            ["bash", "-c", redirect, "chromium", exe, *argv],
            pass_fds=(cmd_r, out_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(out_w)
        return cls(proc, cmd_w, out_r)

    def close(self) -> None:
        with contextlib.suppress(ChromiumError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._out)
        os.close(self._in)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = TIMEOUT_S,
    ) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == msg["id"]:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """The next event ``method`` of ``session`` (events that came with replies first)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    del self.events[: i + 1]
                    params: dict[str, Any] = event.get("params", {})
                    return params
            self.events.clear()
            self.events.append(self._receive(deadline, method))

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise ChromiumError(f"{waiting_for}: no answer from Chromium")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise ChromiumError(f"{waiting_for}: Chromium exited ({self._proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, session["sessionId"], target)
        page.goto(url)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str, target: str) -> None:
        self._browser = browser
        self._session = session
        self._target = target

    def close(self) -> None:
        self._browser.send("Target.closeTarget", {"targetId": self._target})

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._browser.send(method, params, self._session)

    def goto(self, url: str) -> None:
        self.send("Page.enable")
        self._browser.events.clear()
        self.send("Page.navigate", {"url": url})
        self._browser.wait_event("Page.loadEventFired", self._session)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (a promise is awaited); a page exception raises."""
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ChromiumError(f"page exception: {text}")
        return res["result"].get("value")

    def call(self, function: str, *args: Any) -> Any:
        """``function(...args)`` in the page, the arguments passed as JSON."""
        return self.evaluate(f"({function})(...{json.dumps(list(args))})")

    def wait_for(self, condition: str, timeout: float = TIMEOUT_S) -> None:
        """Until ``condition`` holds in the page: checked there on each animation frame (or
        timer), so nothing here sleeps."""
        self.evaluate(
            f"""new Promise((resolve, reject) => {{
              const start = performance.now();
              const check = () => {{
                if ({condition}) resolve(true);
                else if (performance.now() - start > {timeout * 1000}) {{
                  reject(new Error("timed out waiting for " + {json.dumps(condition)}));
                }} else setTimeout(check, 10);
              }};
              check();
            }})"""
        )

    def set_files(self, selector: str, *paths: Path) -> None:
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]})

    def drop(self, *paths: Path, x: int = 300, y: int = 130) -> None:
        """Drag ``paths`` from the desktop and drop them at (x, y), as a user would."""
        data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            self.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})

    def screenshot(self, path: Path) -> None:
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
        )
        path.write_bytes(base64.b64decode(shot["data"]))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
