"""The fleet's heads log (`edgefleet fleetlog`, ledger/headlog.py): the authority signs a C2SP
checkpoint of every device's verified head; a witness that knows nothing of edgefleet (here our
own C2SP witness core, configured with the log's vkey alone) cosigns it from an add-checkpoint
request, and again as the log grows; the web app serves the checkpoint at /log/checkpoint.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet import fleetlog, keystore
from agent.fleet.datadir import DataDir
from agent.web.app import running
from agent.web.data import FleetData
from ledger.block import decode_header
from ledger.checkpoint import fleet_label
from ledger.cosignature import Cosigner, verify_cosigned
from ledger.errors import ProofError
from ledger.headlog import add_checkpoint_request, heads_checkpoint, heads_verifier
from ledger.identity import SigningKey
from ledger.note import Ed25519Verifier
from ledger.store import Store
from ledger.witness import Witness, parse_add_checkpoint
from tests.agent.provenance.conftest import Run


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(list(args))
    return status, capsys.readouterr().out


def test_the_authority_logs_every_head_and_a_witness_cosigns_it(
    blood: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(blood.data, tmp_path / "data")
    dd = DataDir(tmp_path / "data")
    status, text = _cli(capsys, "fleetlog", "append", "--data", str(dd.root))
    names = dd.device_names()
    assert status == 0 and f"{len(names)} head(s) appended, {len(names)} entries" in text, text
    heads = {}
    for name in names:
        with Store(dd.store_path(name)) as s:
            head = s.head()
            assert head is not None
            heads[head.header.device_id] = head.wire
    entries = fleetlog.read_entries(dd)
    assert sorted(entries) == sorted(heads.values())
    # Nothing moved: nothing appended, the same tree.
    status, text = _cli(capsys, "fleetlog", "append", "--data", str(dd.root))
    assert "0 head(s) appended" in text and fleetlog.read_entries(dd) == entries

    # A witness configured with the log's vkey alone (as a public witness would be).
    status, shown = _cli(capsys, "fleetlog", "show", "--data", str(dd.root))
    vkey = shown.rsplit("verifier key: ", 1)[1].strip()
    log = Ed25519Verifier.from_vkey(vkey)
    cosigner = Cosigner("witness.example/w1", SigningKey(b"\x07" * 32))
    witness = Witness(cosigner, {log.name: log})
    body = tmp_path / "request"
    assert _cli(capsys, "fleetlog", "request", "--data", str(dd.root), "--out", str(body))[0] == 0
    line = witness.add_checkpoint(parse_add_checkpoint(body.read_bytes()), 1_700_000_000)
    answer = tmp_path / "answer"
    answer.write_text(line.line())
    status, text = _cli(capsys, "fleetlog", "add-cosignature", str(answer), "--data", str(dd.root))
    assert status == 0 and "1 cosignature(s)" in text
    raw = fleetlog.read_checkpoint(dd)
    assert raw is not None
    cosigned = verify_cosigned(raw, log, [cosigner.verifier], 1)
    assert cosigned.checkpoint.size == len(entries)

    # Served as it is stored.
    with (
        running(FleetData.open(dd.root)) as url,
        urllib.request.urlopen(url + "/log/checkpoint", timeout=30) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert resp.read() == raw

    # The log grows (heads of a longer chain appended, as a later append would): the witness
    # follows it by consistency, and refuses a log rewritten under it.
    pw = dd.fleet_passphrase()
    assert pw is not None
    authority = keystore.load_authority(dd.authority, pw)
    root = authority.public
    fleet = fleet_label(root)
    with Store(dd.store_path(names[0])) as s:
        more = s.own_header_wires()[:3]
    grown = entries + more
    note = heads_checkpoint(fleet, grown, authority)
    req = add_checkpoint_request(note, grown, len(entries))
    witness.add_checkpoint(parse_add_checkpoint(req), 1_700_000_100)
    rewritten = [*entries[:-1], more[0], *more[1:], more[0]]
    note = heads_checkpoint(fleet, rewritten, authority)
    req = add_checkpoint_request(note, rewritten, len(grown))
    with pytest.raises(ProofError):
        witness.add_checkpoint(parse_add_checkpoint(req), 1_700_000_200)
    assert heads_verifier(fleet, root).vkey() == vkey
    assert all(decode_header(e).header.device_id in heads for e in entries)


def test_a_data_dir_without_a_log_says_so_in_one_line(
    blood: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    for action in (["show"], ["request", "--old", "0"]):
        capsys.readouterr()
        status = main(["fleetlog", *action, "--data", str(blood.data)])
        err = capsys.readouterr().err
        assert status != 0 and "no checkpoint yet" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
