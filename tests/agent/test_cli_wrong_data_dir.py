"""A wrong `--data` (a typo, a directory that is not a fleet's) is the same one line for every
command that reads a data dir, as `status` and `verify` already said it: before, `trace`,
`tags` and `verify-proof` complained about `authority/fleet-root.json` with Python's errno text
twice over, and `show` said the dir had "no device 'fridge-1' (devices: none)"."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main

EPC = "urn:epc:id:giai:9501101.125000001"


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["verify"],
        ["tags"],
        ["trace", EPC],
        ["show", "--device", "fridge-1"],
        ["verify-proof", "x.tlog-proof"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("exists", [False, True], ids=["missing", "not-a-fleet"])
def test_a_data_dir_that_is_not_a_fleets_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], exists: bool
) -> None:
    data = tmp_path / "fleet"
    if exists:
        data.mkdir()
        (data / "notes.txt").write_text("not a fleet\n")
    status = main([command[0], *command[1:], "--data", str(data)])
    out, err = capsys.readouterr()
    assert status == 2, err
    assert (out, err) == (
        "",
        f"edgefleet: error: {data}: not a fleet data dir (no devices/ directory)\n",
    )


def test_a_missing_fleet_root_file_says_it_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "correct horse")
    auth, dev = tmp_path / "auth", tmp_path / "fridge-1"
    assert main(["keys", "init-authority", "--dir", str(auth)]) == 0
    enroll = ["keys", "enroll", "--authority", str(auth), "--out", str(dev)]
    assert main([*enroll, "--kind", "refrigerator", "--model", "M", "--site", "home-1"]) == 0
    capsys.readouterr()
    root = tmp_path / "nope.json"
    status = main(["keys", "show", str(dev / "device.cert"), "--root", str(root)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.endswith(f"{root}: cannot read the fleet root (No such file or directory)\n"), err
    assert "Errno" not in err
