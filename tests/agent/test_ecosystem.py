"""One fleet with every window users have on it at once: `edgefleet run --broker MOSQUITTO
--homeassistant --metrics PORT --web PORT`, a real process on a real Mosquitto.

While it runs, /metrics is scraped and linted by promtool and the fleet page is loaded in headless
Chromium; after Ctrl-C, every retained Home Assistant config the run left on the broker passes the
discovery validator (tests/agent/ha_rules.py). Each window has its own thorough tests
(test_metrics.py, test_homeassistant.py, tests/agent/web/); this one shows they work together.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.transport.brokers import MosquittoBroker
from tests.agent.ha_rules import validate
from tests.agent.test_homeassistant import HA_FLEET, _collect
from tests.agent.test_metrics import by_device, require_promtool, samples
from tests.agent.web import browser
from tests.agent.web.tables import rows
from tests.agent.web.test_browser import ROOT, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.mosquitto, pytest.mark.browser]


def _get(url: str, proc: subprocess.Popen[bytes]) -> str:
    """The body at ``url`` once it answers 200 (refused while the process starts; 503 while the
    fleet is provisioned). A guard turns a hang into a failure; it is not a time budget."""
    guard = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return str(resp.read().decode())
        except (OSError, urllib.error.HTTPError):
            if proc.poll() is not None or time.monotonic() > guard:
                pytest.fail(f"{url} was not served (exit {proc.poll()})")
            time.sleep(0.2)


def test_home_assistant_metrics_and_web_pages_on_one_fleet_over_mosquitto(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    promtool = require_promtool()
    browser.chromium()
    (tmp_path / "devices.yaml").write_text(HA_FLEET)
    metrics_port, web_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "agent", "run", "--devices", str(tmp_path / "devices.yaml")]
    cmd += ["--data", str(tmp_path / "data"), "--broker", mosquitto.endpoint.url]
    cmd += ["--for", "24h", "--speed", "600", "--no-view", "--settle", "3"]
    cmd += ["--homeassistant", "--metrics", str(metrics_port), "--web", str(web_port)]
    proc = subprocess.Popen(
        cmd,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        page = f"http://127.0.0.1:{web_port}/"
        _get(page, proc)
        dom = browser.dump_dom(page, tmp_path / "profile")
        text = _get(f"http://127.0.0.1:{metrics_port}/metrics", proc)
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops the fleet, its web server and bridge
        out, _ = proc.communicate(timeout=120)
    log = out.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log, log

    devices = sorted(r[0].split()[0] for r in rows(dom, "fleet"))
    assert devices == ["freezer-station", "fridge-1", "washer-1"], dom[:2000]
    assert lint.returncode == 0 and lint.stdout == lint.stderr == "", lint.stdout + lint.stderr
    signed = by_device(samples(text), "edgefleet_readings_signed_total")
    assert set(signed) == set(devices), signed

    retained = asyncio.run(_collect(mosquitto.endpoint, ["homeassistant/#", "edgefleet/ha/#"]))
    report = validate(retained)
    assert report.ok(), "\n".join(report.problems)
    assert {d["name"] for d in report.devices.values()} == set(devices)
