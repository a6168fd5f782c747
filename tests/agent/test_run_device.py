"""`edgefleet run --device NAME` on a data dir of pre-enrolled devices, through the CLI entry point.

The data dir is made the way docs/DEPLOY.md tells a real device to: an authority elsewhere
(`keys init-authority`), then `keys init-device`, `keys enroll --request` and `keys install-cert`;
it holds `authority/fleet-root.json` and one device's key and certificate, nothing else. Runs are
on simulated time (`--for 1h` at full speed, in-memory network).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.main import build_parser, main
from agent.config.devices import load_fleet
from agent.fleet.runner import FleetRunner, RunOptions
from agent.fleet.view import render
from ledger.store import Store
from tests.agent.runner_helpers import SMALL_FLEET, verify, write_fleet

PASSPHRASE = "device passphrase"
FRIDGE = ["--kind", "refrigerator", "--model", "FR-200", "--site", "home-1"]


@pytest.fixture(scope="module")
def enrolled_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An authority in ``auth/`` and a data dir ``pi/`` holding fridge-1, enrolled by request."""
    base = tmp_path_factory.mktemp("enrolled")
    write_fleet(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEFLEET_PASSPHRASE", PASSPHRASE)
        devdir = base / "pi" / "devices" / "fridge-1"
        assert main(["keys", "init-authority", "--dir", str(base / "auth")]) == 0
        assert main(["keys", "init-device", "--dir", str(devdir), *FRIDGE]) == 0
        request = ["--request", str(devdir / "enroll.req"), "--out", str(base / "f1.cert")]
        assert main(["keys", "enroll", "--authority", str(base / "auth"), *request, "--yes"]) == 0
        root = base / "auth" / "fleet-root.json"
        args = ["--dir", str(devdir), str(base / "f1.cert"), "--root", str(root)]
        assert main(["keys", "install-cert", *args]) == 0
    return base


@pytest.fixture
def site(enrolled_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the template (each test may change its data dir)."""
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", PASSPHRASE)
    shutil.copytree(enrolled_template, tmp_path / "site")
    return tmp_path / "site"


def _run(site: Path, *extra: str) -> int:
    args = ["run", "--devices", str(site / "fleet.yaml"), "--data", str(site / "pi")]
    return main([*args, "--for", "1h", "--no-view", "--broker", "memory", *extra])


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("edgefleet: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


ENROLLED = {
    "authority/fleet-root.json",
    "devices/fridge-1/device.cert",
    "devices/fridge-1/device.key",
    "devices/fridge-1/enroll.req",
    "devices/fridge-1/fleet-root.json",
}


def test_a_pre_enrolled_device_runs_alone_and_seals_blocks_that_verify(
    site: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root_before = (site / "pi" / "authority" / "fleet-root.json").read_bytes()
    assert _run(site, "--device", "fridge-1") == 0, capsys.readouterr().err
    assert "gossip converged" in capsys.readouterr().err
    # Its domain peers are enrolled elsewhere and the file gives no ids: it cannot hear them.
    assert (
        "freezer-station, freezer-hospital: not enrolled in "
        f"{site / 'pi'} and without an `id:` in {site / 'fleet.yaml'}: the devices run here do "
        "not hear them"
    ) in caplog.text

    # Nothing provisioned: no authority key, no passphrase file, no other device enrolled.
    created = _files(site / "pi") - ENROLLED
    assert created == {
        "devices/fridge-1/store.sqlite",
        "fleet.json",
        "fleet.log",
        ".lock",
        "run-status.json",
    }, created
    assert (site / "pi" / "authority" / "fleet-root.json").read_bytes() == root_before
    with Store(site / "pi" / "devices" / "fridge-1" / "store.sqlite") as store:
        assert store.block_count() >= 2
        head = store.head()
    assert head is not None
    checked = verify(site / "pi")
    assert checked.ok, checked.failures()
    assert [r["name"] for r in checked.doc["reports"]] == ["fridge-1"]

    # The next run continues the same chain (resumed where the first stopped).
    assert _run(site, "--device", "fridge-1") == 0, capsys.readouterr().err
    with Store(site / "pi" / "devices" / "fridge-1" / "store.sqlite") as store:
        later = store.head()
    assert later is not None and later.header.height > head.header.height
    again = verify(site / "pi")
    assert again.ok and again.readings > checked.readings, again.failures()


def test_two_devices_enrolled_on_one_machine_run_together_and_hold_each_others_chains(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = site / "pi" / "devices" / "freezer-station"
    kind = ["--kind", "medical_freezer", "--model", "M-1", "--site", "blood-station-north"]
    assert main(["keys", "init-device", "--dir", str(dev), *kind]) == 0
    request = ["--request", str(dev / "enroll.req"), "--out", str(site / "fs.cert")]
    assert main(["keys", "enroll", "--authority", str(site / "auth"), *request, "--yes"]) == 0
    root = site / "auth" / "fleet-root.json"
    assert (
        main(
            ["keys", "install-cert", "--dir", str(dev), str(site / "fs.cert"), "--root", str(root)]
        )
        == 0
    )
    capsys.readouterr()

    assert _run(site, "--device", "fridge-1", "--device", "freezer-station") == 0, (
        capsys.readouterr().err
    )
    assert "gossip converged" in capsys.readouterr().err
    checked = verify(site / "pi")
    assert checked.ok, checked.failures()
    for name in ("fridge-1", "freezer-station"):  # both in the blood-chain domain
        report = checked.report(name)
        assert report["peers"] == 1 and report["peer_headers"] > 0, report


def test_the_passphrase_comes_from_a_file(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE")
    secret = site / "secret"
    secret.write_text(PASSPHRASE + "\n")
    assert _run(site, "--device", "fridge-1", "--passphrase-file", str(secret)) == 0, (
        capsys.readouterr().err
    )
    assert not (site / "pi" / "passphrase").exists()


def test_a_selected_device_without_a_key_gets_the_commands_that_enroll_it(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No passphrase at hand: what is missing is said before any passphrase is asked for.
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE")
    before = _files(site / "pi")
    assert _run(site, "--device", "fridge-1", "--device", "freezer-station") == 2
    err = capsys.readouterr().err
    data = site / "pi"
    dev = data / "devices" / "freezer-station"
    assert err.startswith(f"edgefleet: error: {data}: holds no enrolled key for freezer-station")
    assert "Traceback" not in err
    assert (
        f"edgefleet keys init-device --dir {dev} --kind medical_freezer "
        "--model 'edgefleet sim plasma freezer' --site blood-station-north\n"
    ) in err
    assert (
        "edgefleet keys enroll --authority AUTHORITY_DIR "
        f"--request {dev / 'enroll.req'} --out freezer-station.cert\n"
    ) in err
    assert (
        f"edgefleet keys install-cert --dir {dev} freezer-station.cert --root fleet-root.json"
    ) in err
    assert "`--device fridge-1` runs only those" in err
    assert _files(data) - before <= {"fleet.log", ".lock"}, "a refused run provisioned something"

    # Without --device every device of the file is selected: the same, for the two missing.
    assert _run(site) == 2
    err = capsys.readouterr().err
    assert "holds no enrolled key for freezer-station, freezer-hospital" in err
    assert "--site city-hospital" in err


def test_a_device_with_its_key_but_no_certificate_is_told_the_remaining_steps(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = site / "pi" / "devices" / "freezer-station"
    kind = ["--kind", "medical_freezer", "--model", "M-1", "--site", "blood-station-north"]
    assert main(["keys", "init-device", "--dir", str(dev), *kind]) == 0
    capsys.readouterr()
    assert _run(site, "--device", "freezer-station") == 2
    err = capsys.readouterr().err
    assert f"{dev / 'device.key'} has no certificate yet; send {dev / 'enroll.req'}" in err
    assert "keys init-device" not in err  # the key exists: it is never made again
    assert f"--request {dev / 'enroll.req'}" in err and "keys install-cert" in err


def test_an_unknown_device_is_one_line_naming_the_file_and_close_names(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = site / "fleet.yaml"
    assert _run(site, "--device", "fridge-9") == 2
    err = _one_line(capsys)
    assert f"--device fridge-9: no device of that name in {fleet} (did you mean fridge-1?)" in err
    assert _run(site, "--device", "toaster") == 2
    assert f"in {fleet} (it has 3 devices)" in _one_line(capsys)


def test_device_and_shard_together_are_refused(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(site, "--device", "fridge-1", "--shard", "0/2") == 2
    assert "--device and --shard 0/2: give one of them" in _one_line(capsys)


@pytest.mark.parametrize(
    ("argv", "abbreviated"),
    [
        (["run", "--devices", "f.yaml", "--data", "d", "--devic", "fridge-1"], "--devic"),
        (["run", "--devices", "f.yaml", "--data", "d", "--no-vie"], "--no-vie"),
        (
            ["keys", "init-device", "--dir", "d", *FRIDGE, "--passphrase-fil", "x"],
            "--passphrase-fil",
        ),
    ],
)
def test_abbreviated_options_are_refused(
    argv: list[str],
    abbreviated: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {abbreviated}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_no_parser_of_the_cli_abbreviates() -> None:
    def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)

    parsers = list(walk(build_parser()))
    assert len(parsers) > 10
    assert [p.prog for p in parsers if p.allow_abbrev] == []


def test_no_passphrase_source_and_no_terminal_is_a_clear_error(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: nobody to ask
    assert _run(site, "--device", "fridge-1") == 2
    err = _one_line(capsys)
    key = site / "pi" / "devices" / "fridge-1" / "device.key"
    assert f"{key}: cannot unlock it: no passphrase: use --passphrase-file" in err
    assert not (site / "pi" / "passphrase").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_at_a_terminal_the_passphrase_is_asked_for_once(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE")
    monkeypatch.setattr(sys, "stdin", _Terminal())
    asked: list[str] = []

    def getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return PASSPHRASE

    monkeypatch.setattr("getpass.getpass", getpass)
    assert _run(site, "--device", "fridge-1") == 0, capsys.readouterr().err
    assert asked == ["passphrase: "]


def test_a_wrong_passphrase_is_one_line_naming_the_key_file(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "not the one")
    assert _run(site, "--device", "fridge-1") == 2
    err = _one_line(capsys)
    key = site / "pi" / "devices" / "fridge-1" / "device.key"
    assert f"{key}: wrong passphrase" in err
    assert not (key.parent / "store.sqlite").exists(), "a store was opened before the key"


def test_a_certificate_of_other_attributes_than_the_file_is_refused(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = SMALL_FLEET.replace(
        "site: home-1\n    domains: [home-1, blood-chain]",
        "site: city-hospital\n    domains: [blood-chain]",
    )
    assert moved != SMALL_FLEET
    write_fleet(site, moved)
    assert _run(site, "--device", "fridge-1") == 2
    err = _one_line(capsys)
    assert "device.cert: certifies a refrigerator at site home-1, but" in err
    assert "has fridge-1 as a refrigerator at site city-hospital" in err


def test_a_simulated_fleet_still_enrolls_itself_and_runs_only_the_named_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE", raising=False)
    write_fleet(tmp_path)
    data = tmp_path / "sim"
    args = ["run", "--devices", str(tmp_path / "fleet.yaml"), "--data", str(data)]
    common = ["--for", "1h", "--no-view", "--broker", "memory"]
    assert main([*args, *common, "--device", "freezer-station"]) == 0, capsys.readouterr().err
    assert stat.S_IMODE((data / "passphrase").stat().st_mode) == 0o600
    assert (data / "authority" / "authority.key").exists()
    enrolled = sorted(p.name for p in (data / "devices").iterdir())
    assert enrolled == ["freezer-hospital", "freezer-station", "fridge-1"]
    stores = sorted(p.parent.name for p in (data / "devices").glob("*/store.sqlite"))
    assert stores == ["freezer-station"]

    # Its keys are unlocked by its own passphrase file: a --passphrase-file is refused.
    capsys.readouterr()
    assert main([*args, *common, "--passphrase-file", str(tmp_path / "x")]) == 2
    assert "is a simulated fleet's data dir" in _one_line(capsys)


def test_restore_on_a_pre_enrolled_data_dir_without_a_passphrase_fails_in_one_line(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`restore` takes no passphrase option: a key it cannot unlock is one line naming the key
    file (the CLI's last line of defence for agent's typed errors), never a traceback."""
    monkeypatch.delenv("EDGEFLEET_PASSPHRASE")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    data = ["--devices", str(site / "fleet.yaml"), "--data", str(site / "pi")]
    argv = ["restore", "--device", "fridge-1", "--alone", *data, "--broker", "memory"]
    assert main(argv) == 2
    err = _one_line(capsys)
    assert "fridge-1" in err and "device.key" in err, err


def test_an_id_in_the_file_that_is_not_the_certificates_is_refused(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "ef" + "a" * 24
    write_fleet(
        site, SMALL_FLEET.replace("  - name: fridge-1\n", f"  - name: fridge-1\n    id: {other}\n")
    )
    assert _run(site, "--device", "fridge-1") == 2
    err = _one_line(capsys)
    assert "device.cert: certifies device ef" in err
    assert f"gives fridge-1 the id {other}: correct its `id:` in the file" in err


def test_the_peers_it_cannot_hear_are_a_note_under_the_live_view(site: Path) -> None:
    # fleet.log alone had the warning: a maker starting the Pi at a terminal saw every domain
    # "ok" and no word of the two freezers its fridge would never hear.
    runner = FleetRunner(
        load_fleet(site / "fleet.yaml"),
        RunOptions(
            data=site / "pi",
            for_ms=10 * 60_000,
            simulated_network=True,
            view=False,
            only=("fridge-1",),
            passphrase=PASSPHRASE.encode,
        ),
    )
    asyncio.run(runner.run())
    notes = runner.snapshot().notes
    want = "freezer-station, freezer-hospital: not enrolled in "
    assert [n for n in notes if n.startswith(want)], notes
    screen = "\n".join(render(runner.snapshot(), width=400, height=100))
    assert f"! {want}" in screen
