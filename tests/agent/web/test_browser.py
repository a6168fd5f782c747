"""Each page of `edgefleet web` in a real headless Chromium, the server started as a user starts
it (``python -m agent web --data DIR --port N``) over a data dir from a simulated run.

The assertions are on the DOM after load: what a person would see. Screenshots are kept under the
test's tmp dir (pytest keeps the last three runs' dirs) as artefacts to look at.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.agent.web import browser
from tests.agent.web.conftest import HOUSEHOLD, PLASMA, WebFleet
from tests.agent.web.tables import rows

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(web_fleet: WebFleet) -> Iterator[str]:
    browser.chromium()  # skip (or fail under CI) before starting anything
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "web", "--data", str(web_fleet.data), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"edgefleet web did not start: {out}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _load(url: str, tmp_path: Path, name: str) -> str:
    """The DOM after load, and a screenshot kept as ``tmp_path/NAME.png``."""
    browser.screenshot(url, tmp_path / f"{name}.png", tmp_path / "profile-shot")
    return browser.dump_dom(url, tmp_path / "profile-dom")


def test_fleet_page(served: str, tmp_path: Path) -> None:
    dom = _load(served + "/", tmp_path, "fleet")
    devices = [r[0].split()[0] for r in rows(dom, "fleet")]
    assert sorted(devices) == ["freezer-hospital", "freezer-station", "freezer-van", "fridge-1"]
    assert "4 device(s) at 4 site(s)" in dom and "converged" in dom
    assert (tmp_path / "fleet.png").stat().st_size > 10_000


def test_device_page_plots_temperatures_with_the_alarm_limit(served: str, tmp_path: Path) -> None:
    dom = _load(served + "/device/freezer-van", tmp_path, "device")
    assert '<span id="device-name">freezer-van</span>' in dom
    assert 'class="series"' in dom and 'data-name="cabinet.temp"' in dom
    assert "cabinet alarm: above -25 °C" in dom
    chain = rows(dom, "chain")
    assert chain and all(r[2].endswith("…") for r in chain)


def test_private_household_is_withheld(served: str, tmp_path: Path) -> None:
    dom = _load(served + "/device/fridge-1", tmp_path, "private")
    assert "private reading(s) withheld" in dom and "--owner-key" in dom
    assert 'class="series"' not in dom


def test_items_and_the_trace_page(served: str, tmp_path: Path) -> None:
    dom = _load(served + "/items", tmp_path, "items")
    assert PLASMA in [r[0] for r in rows(dom, "items")]
    dom = _load(served + "/item?epc=" + quote(PLASMA, safe=""), tmp_path, "trace")
    assert f'<span id="epc">{PLASMA}</span>' in dom
    assert "Verdict: <strong>NOT OK</strong>" in dom
    assert [r[0] for r in rows(dom, "stays")] == [
        "freezer-station",
        "freezer-van",
        "freezer-hospital",
    ]
    excursions = rows(dom, "excursions")
    assert excursions and excursions[0][0] == "freezer-van"
    assert 'class="span"' in dom and "proof bundle" in dom


@pytest.mark.subprocess
def test_a_running_fleet_updates_the_fleet_page_live(tmp_path: Path) -> None:
    """``run ... --web PORT``: the page is served while the fleet runs, and live.js fills it
    from /events (the browser's virtual time runs on between the one-event connections)."""
    browser.chromium()
    (tmp_path / "devices.yaml").write_text(HOUSEHOLD)
    port = _free_port()
    cmd = [sys.executable, "-m", "agent", "run", "--devices", str(tmp_path / "devices.yaml")]
    cmd += ["--data", str(tmp_path / "data"), "--for", "2h", "--speed", "200", "--no-view"]
    cmd += ["--web", str(port)]
    proc = subprocess.Popen(
        cmd,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, proc)  # 503 while the fleet is provisioned, then the page
        browser.screenshot(url, tmp_path / "live.png", tmp_path / "profile-shot")
        dom = browser.dump_dom(url, tmp_path / "profile-dom", virtual_time_ms=2500)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the run stops, and the web server with it
        out, _ = proc.communicate(timeout=60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert f"web pages at http://127.0.0.1:{port}/" in text and "stopped at simulated" in text
    live = dom.split('<p id="live"', 1)[1].split("</p>", 1)[0]
    assert "4 running device(s) updated" in live, live
    assert "simulated time 2025-01-06" in live
    devices = [r[0].split()[0] for r in rows(dom, "fleet")]
    assert sorted(devices) == ["freezer-hospital", "freezer-station", "freezer-van", "fridge-1"]


def _wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:  # refused while starting; HTTPError 503 while provisioning
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"run --web did not serve {url} (exit {proc.poll()})")
            time.sleep(0.1)
