"""A port already in use: `edgefleet web --port` and `edgefleet run --web` say so in one line
(exit 2), as `run --metrics` does. uvicorn, left to bind the port itself, answered with
``sys.exit`` inside the event loop: `web` printed uvicorn's log and exited 3, and `run --web`
died with a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.web.app import listen
from tests.agent.runner_helpers import write_fleet


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_listen_raises_for_a_port_in_use_and_binds_a_free_one(busy_port: int) -> None:
    with pytest.raises(OSError, match="in use"):
        listen("127.0.0.1", busy_port)
    with listen("127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] != 0


def test_run_web_on_a_port_in_use_is_one_line_and_runs_nothing(
    tmp_path: Path, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    args = ["run", "--devices", str(fleet), "--data", str(data), "--broker", "memory"]
    status = main([*args, "--for", "10m", "--no-view", "--web", f"127.0.0.1:{busy_port}"])
    err = capsys.readouterr().err
    assert status == 2, err
    want = f"--web 127.0.0.1:{busy_port}: cannot listen (Address already in use)"
    assert err == f"edgefleet: error: {want}\n"


def test_web_on_a_port_in_use_is_one_line(
    tmp_path: Path, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path)
    data = tmp_path / "data"
    args = ["run", "--devices", str(fleet), "--data", str(data), "--broker", "memory"]
    assert main([*args, "--for", "10m", "--no-view"]) == 0
    capsys.readouterr()
    status = main(["web", "--data", str(data), "--port", str(busy_port)])
    out, err = capsys.readouterr()
    assert status == 2, err
    assert (out, err) == (
        "",
        f"edgefleet: error: --host 127.0.0.1 --port {busy_port}: cannot listen "
        "(Address already in use)\n",
    )
