"""`edgefleet keys rotate` and `edgefleet keys revoke` on real data dirs: the rotated device runs on
with its new key and verifies; a revocation recorded in a data dir is held at the next start; one
published to a live fleet over a real Mosquitto is refused by every peer (the figure is printed);
every user error is one line."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.devices import FleetConfig, load_fleet
from agent.fleet import keystore, lifecycle
from agent.fleet.datadir import DataDir
from agent.fleet.runner import FleetRunner, RunOptions
from agent.fleet.view import render
from agent.gossip.tuning import GossipConfig
from agent.transport.brokers import MosquittoBroker
from ledger import keyfile
from ledger.block import decode_header
from ledger.certs import decode_certificate, decode_revocation, decode_rotation
from ledger.store import Store
from tests.agent.runner_helpers import (
    FAST_GOSSIP,
    HOUR_MS,
    SMALL_FLEET,
    device_ids,
    run_fleet,
    verify,
    write_fleet,
)
from tests.agent.test_reliability import until

FRIDGE = "fridge-1"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[FleetConfig, Path]:
    """The small fleet (3 devices, one domain) after 2 simulated hours in memory."""
    base = tmp_path_factory.mktemp("lifecycle")
    cfg = load_fleet(write_fleet(base, SMALL_FLEET))
    run_fleet(cfg, data=base / "data", for_ms=2 * HOUR_MS, broker="memory", view=False)
    return cfg, base / "data"


@pytest.fixture
def fleet(ran: tuple[FleetConfig, Path], tmp_path: Path) -> tuple[FleetConfig, DataDir]:
    cfg, data = ran
    shutil.copytree(data, tmp_path / "data")
    return cfg, DataDir(tmp_path / "data")


def _run_on(cfg: FleetConfig, dd: DataDir, ms: int = HOUR_MS) -> None:
    result = run_fleet(cfg, data=dd.root, for_ms=ms, broker="memory", view=False)
    assert not result.failed, result.failed


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    status, _, err = _cli(capsys, *args)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgefleet: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _height_of(wire: bytes) -> int:
    return decode_header(wire).header.height


# --------------------------------------------------------------------------- rotate


def test_a_rotated_device_runs_on_with_its_new_key_and_its_peers_follow(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, dd = fleet
    ddir = dd.device(FRIDGE)
    pw = dd.fleet_passphrase()
    assert pw is not None
    cert = decode_certificate((ddir / "device.cert").read_bytes())
    old_public = keyfile.public_of(ddir / "device.key")
    old_cost = json.loads((ddir / "device.key").read_text())["opslimit"]
    with Store(dd.store_path(FRIDGE)) as store:
        head = store.head()
    assert head is not None

    status, out, _ = _cli(capsys, "keys", "rotate", "--dir", str(ddir))
    assert status == 0, out
    rotation = decode_rotation((ddir / "rotations" / "0001.rot").read_bytes())
    assert rotation.effective_height == head.header.height + 1
    assert rotation.old_key_id == cert.device_key.key_id
    assert f"effective at height {rotation.effective_height}" in out
    # The new key is encrypted like the old one (same passphrase, same cost), 0600; the old gone.
    new = keystore.load_device(ddir, pw)
    assert new.key.public == rotation.new_key != cert.device_key
    assert keyfile.public_of(ddir / "device.key") != old_public
    assert json.loads((ddir / "device.key").read_text())["opslimit"] == old_cost
    assert (ddir / "device.key").stat().st_mode & 0o777 == 0o600
    assert not (ddir / lifecycle.NEXT_KEY).exists()

    _run_on(cfg, dd)
    eff = rotation.effective_height
    with Store(dd.store_path(FRIDGE)) as store:
        after = store.head()
        signed_by = {decode_header(w).header.key_id for w in store.own_header_wires(eff)}
    assert after is not None and after.header.height > eff
    assert signed_by == {rotation.new_key.key_id}, "blocks after the hand-over: the new key"
    for peer in ("freezer-station", "freezer-hospital"):
        with Store(dd.store_path(peer)) as store:
            held = store.peer_header_wires(cert.device_id)
            rotations = [w for d, w in store.credentials("rotation") if d == cert.device_id]
        assert held and _height_of(held[-1]) > eff, f"{peer} follows the new key"
        assert rotations == [rotation.wire], f"{peer} learned the rotation from the greeting"
    assert verify(dd.root).ok, verify(dd.root).failures()

    status, out, _ = _cli(capsys, "keys", "rotate", "--dir", str(ddir))  # and again
    assert status == 0 and (ddir / "rotations" / "0002.rot").exists(), out
    _run_on(cfg, dd)
    assert verify(dd.root).ok, verify(dd.root).failures()


def test_a_rotation_in_three_steps_never_moves_the_authority_key(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """As on separate machines: the device requests, the authority countersigns the request
    file, the device installs the rotation file; a stale request is refused."""
    cfg, dd = fleet
    ddir = dd.device(FRIDGE)
    pwfile = tmp_path / "pw"
    pwfile.write_bytes((dd.fleet_passphrase() or b"") + b"\n")
    status, out, _ = _cli(capsys, "keys", "rotate", "--dir", str(ddir), "--request")
    assert status == 0 and "keep the device stopped" in out, out
    request = ddir / lifecycle.ROTATE_REQUEST
    assert request.exists() and (ddir / lifecycle.NEXT_KEY).exists()
    assert not (ddir / "rotations").exists(), "nothing applies before the install"

    rotation = tmp_path / "fridge.rot"
    args = ["keys", "countersign", "--authority", str(dd.authority), "--request", str(request)]
    args += ["--out", str(rotation), "--yes", "--passphrase-file", str(pwfile)]
    status, out, _ = _cli(capsys, *args)
    assert status == 0 and "effective height" in out, out
    assert "already exists" in _one_line_error(capsys, *args)
    shown = {}
    for path in (request, rotation):
        status, out, _ = _cli(capsys, "keys", "show", str(path), "--json")
        assert status == 0, out
        shown[path.name] = json.loads(out)
    assert shown["rotate.req"]["file"] == "rotation request"
    assert shown["fridge.rot"]["file"] == "key rotation"
    for field in ("device_id", "old_key_id", "new_key_id", "effective_height"):
        assert shown["rotate.req"][field] == shown["fridge.rot"][field], field

    status, out, _ = _cli(capsys, "keys", "rotate", "--dir", str(ddir), "--install", str(rotation))
    assert status == 0, out
    assert (ddir / "rotations" / "0001.rot").read_bytes() == rotation.read_bytes()
    assert not request.exists() and not (ddir / lifecycle.NEXT_KEY).exists()
    _run_on(cfg, dd)
    assert verify(dd.root).ok, verify(dd.root).failures()

    # A request the device outran: it sealed blocks since, so the rotation no longer fits.
    assert _cli(capsys, "keys", "rotate", "--dir", str(ddir), "--request")[0] == 0
    stale = tmp_path / "stale.rot"
    args[args.index(str(rotation))] = str(stale)
    assert _cli(capsys, *args)[0] == 0
    _run_on(cfg, dd)
    line = _one_line_error(capsys, "keys", "rotate", "--dir", str(ddir), "--install", str(stale))
    assert "(it ran since the request): request it again" in line
    line = _one_line_error(
        capsys, "keys", "rotate", "--dir", str(ddir), "--install", str(rotation)
    )  # the first one, again
    assert "does not verify" in line


def test_a_rotated_device_whose_store_was_wiped_is_restored_from_its_peers(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str]
) -> None:
    """Its rotation lives in DEVDIR/rotations as well as in the store: the wiped device knows the
    key its later blocks are signed with, and verifies the chain its peers give back."""
    cfg, dd = fleet
    assert _cli(capsys, "keys", "rotate", "--dir", str(dd.device(FRIDGE)))[0] == 0
    _run_on(cfg, dd)
    with Store(dd.store_path(FRIDGE)) as store:
        head = store.head()
    assert head is not None
    for path in dd.device(FRIDGE).glob("store.sqlite*"):
        path.unlink()
    args = ["restore", "--device", FRIDGE, "--data", str(dd.root), "--devices", cfg.source]
    status, out, err = _cli(capsys, *args, "--broker", "memory")
    assert status == 0, out + err
    assert f"heights 0..{head.header.height}" in out
    assert verify(dd.root).ok, verify(dd.root).failures()


def test_pending_readings_are_sealed_under_the_old_key_before_the_hand_over(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str]
) -> None:
    _, dd = fleet
    pw = dd.fleet_passphrase()
    assert pw is not None
    enrolled = keystore.load_device(dd.device(FRIDGE), pw)
    from ledger.chain import ChainWriter

    with Store(dd.store_path(FRIDGE)) as store:
        writer = ChainWriter(store, enrolled.key, enrolled.certificate.device_id)
        last = store.last_reading_time() or 0
        writer.record(last + 60_000, "fridge.temp_mc", 4_100)
        writer.flush()
        assert store.pending_count() == 1
        height = store.head().header.height  # type: ignore[union-attr]
    status, out, _ = _cli(capsys, "keys", "rotate", "--dir", str(dd.device(FRIDGE)))
    assert status == 0 and "sealed     1 block(s)" in out, out
    with Store(dd.store_path(FRIDGE)) as store:
        head = store.head()
        assert store.pending_count() == 0
    assert head is not None and head.header.height == height + 1
    assert head.header.key_id == enrolled.key.key_id
    rot = decode_rotation((dd.device(FRIDGE) / "rotations" / "0001.rot").read_bytes())
    assert rot.effective_height == height + 2


def test_rotate_refuses_a_device_whose_store_is_open(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str]
) -> None:
    _, dd = fleet
    key_before = (dd.device(FRIDGE) / "device.key").read_bytes()
    with Store(dd.store_path(FRIDGE)):  # the running device holds it open
        line = _one_line_error(capsys, "keys", "rotate", "--dir", str(dd.device(FRIDGE)))
    assert "open in another process (is the device running?)" in line
    assert (dd.device(FRIDGE) / "device.key").read_bytes() == key_before
    assert not (dd.device(FRIDGE) / "rotations").exists()


def test_an_interrupted_rotation_is_finished_by_running_it_again(
    fleet: tuple[FleetConfig, DataDir],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg, dd = fleet
    ddir = dd.device(FRIDGE)
    pw = dd.fleet_passphrase()
    assert pw is not None
    # Power lost after the rotation was written, before the key swap.
    with monkeypatch.context() as m:
        m.setattr(lifecycle, "_finish", lambda *a: None)
        assert _cli(capsys, "keys", "rotate", "--dir", str(ddir))[0] == 0
    assert (ddir / lifecycle.NEXT_KEY).exists()
    with pytest.raises(keystore.KeystoreError, match="interrupted `edgefleet keys rotate`"):
        keystore.load_device(ddir, pw)
    status, out, _ = _cli(capsys, "keys", "rotate", "--dir", str(ddir))
    assert status == 0 and "finished the interrupted rotation" in out, out
    assert not (ddir / "rotations" / "0002.rot").exists()
    assert (
        keystore.load_device(ddir, pw).key.public
        == decode_rotation((ddir / "rotations" / "0001.rot").read_bytes()).new_key
    )
    _run_on(cfg, dd)
    assert verify(dd.root).ok


def test_rotate_errors_are_one_line(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, dd = fleet
    ddir = dd.device(FRIDGE)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    line = _one_line_error(
        capsys, "keys", "rotate", "--dir", str(ddir), "--passphrase-file", str(wrong)
    )
    assert "wrong passphrase" in line
    other = tmp_path / "other-authority"
    pwfile = tmp_path / "pw"
    pwfile.write_bytes((dd.fleet_passphrase() or b"") + b"\n")
    assert (
        main(["keys", "init-authority", "--dir", str(other), "--passphrase-file", str(pwfile)]) == 0
    )
    capsys.readouterr()
    line = _one_line_error(capsys, "keys", "rotate", "--dir", str(ddir), "--authority", str(other))
    assert "is not this fleet's root" in line
    outside = tmp_path / "dev"
    shutil.copytree(ddir, outside)
    line = _one_line_error(capsys, "keys", "rotate", "--dir", str(outside))
    assert "give --authority DIR" in line
    assert not (ddir / "rotations").exists()

    fresh = tmp_path / "fresh"
    attrs = ["--kind", "refrigerator", "--model", "M-1", "--site", "home-1"]
    auth = ["--authority", str(dd.authority), "--passphrase-file", str(pwfile)]
    assert main(["keys", "enroll", *auth, "--out", str(fresh), *attrs]) == 0
    capsys.readouterr()
    line = _one_line_error(capsys, "keys", "rotate", "--dir", str(fresh), *auth)
    assert "has signed no block yet: nothing to hand over" in line
    assert sorted(p.name for p in fresh.iterdir()) == ["device.cert", "device.key"]


# --------------------------------------------------------------------------- revoke


def test_a_revocation_recorded_in_the_data_dir_is_held_at_the_next_start(
    fleet: tuple[FleetConfig, DataDir],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg, dd = fleet
    fridge = device_ids(dd.root)[FRIDGE]
    heads = {}
    for name in ("freezer-station", "freezer-hospital"):
        with Store(dd.store_path(name)) as store:
            heads[name] = _height_of(store.peer_header_wires(fridge)[-1])
    with Store(dd.store_path(FRIDGE)) as store:
        own = store.head()
    assert own is not None
    status, out, _ = _cli(
        capsys,
        "keys",
        "revoke",
        "--authority",
        str(dd.authority),
        "--device",
        FRIDGE,
        "--reason",
        "stolen from the shop floor",
        "--data",
        str(dd.root),
    )
    assert status == 0, out
    cut = own.header.height + 1  # the default: above the highest header the data dir holds
    assert f"revoked {fridge} from height {cut} (stolen from the shop floor)" in out
    assert "recorded by 3 device(s)" in out
    rev = decode_revocation(lifecycle.revocation_path(dd.authority, fridge).read_bytes())
    assert (rev.device_id, rev.key_id, rev.from_height) == (fridge, None, cut)

    runner = FleetRunner(cfg, RunOptions(data=dd.root, for_ms=HOUR_MS, broker="memory", view=False))
    with caplog.at_level(logging.WARNING, logger="edgefleet"):
        result = asyncio.run(runner.run())
    assert not result.failed
    assert result.converged, "a revoked device's refused headers are not waited for"
    learned = [r for r in caplog.records if "revocation learned" in r.getMessage()]
    assert f"device {fridge} from height {cut}" in learned[0].getMessage()
    assert {getattr(r, "device", None) for r in learned} == set(device_ids(dd.root))
    with Store(dd.store_path(FRIDGE)) as store:
        grown = store.head()
    assert grown is not None and grown.header.height > cut, "the revoked device signed on"
    for name in ("freezer-station", "freezer-hospital"):
        with Store(dd.store_path(name)) as store:
            top = _height_of(store.peer_header_wires(fridge)[-1])
        assert top < cut, f"{name} accepted a revoked header ({top} >= {cut})"
        assert result.devices[name].node.key_status(fridge) == (0, cut)
    snap = runner.snapshot()
    row = next(d for d in snap.devices if d.name == FRIDGE)
    assert row.revoked_from == cut
    line = next(x for x in render(snap, width=160) if x.startswith(FRIDGE))
    assert f"REVOKED@{cut}" in line


def _revoke(*extra: str) -> list[str]:
    return ["keys", "revoke", "--reason", "key-compromise", *extra]


def test_revoke_errors_are_one_line(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, dd = fleet
    auth, data = str(dd.authority), str(dd.root)
    base = ["--authority", auth, "--data", data]
    assert "unknown device" in _one_line_error(capsys, *_revoke(*base, "--device", "fridge-9"))
    stranger = "ef" + "a" * 24
    line = _one_line_error(capsys, *_revoke(*base, "--device", stranger))
    assert "unknown device" in line and stranger in line
    line = _one_line_error(
        capsys, *_revoke("--authority", data, "--data", data, "--device", FRIDGE)
    )
    assert "not an authority directory" in line
    line = _one_line_error(capsys, *_revoke("--authority", auth, "--device", FRIDGE))
    assert "give --broker URL" in line
    fridge = device_ids(dd.root)[FRIDGE]
    line = _one_line_error(
        capsys, *_revoke("--authority", auth, "--broker", "mqtt://x:1", "--device", fridge)
    )
    assert "--from-height: required" in line

    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    line = _one_line_error(
        capsys, *_revoke(*base, "--device", FRIDGE, "--passphrase-file", str(wrong))
    )
    assert "wrong passphrase" in line
    assert not lifecycle.revocation_path(dd.authority, fridge).exists()

    pwfile = tmp_path / "pw"
    pwfile.write_bytes((dd.fleet_passphrase() or b"") + b"\n")
    other = tmp_path / "other-authority"
    assert (
        main(["keys", "init-authority", "--dir", str(other), "--passphrase-file", str(pwfile)]) == 0
    )
    capsys.readouterr()
    line = _one_line_error(
        capsys,
        *_revoke("--authority", str(other), "--data", data, "--device", FRIDGE),
        "--passphrase-file",
        str(pwfile),
    )
    assert "is not this fleet's root" in line

    ok = [*_revoke(*base, "--device", FRIDGE), "--passphrase-file", str(pwfile)]
    assert _cli(capsys, *ok)[0] == 0
    rev = str(lifecycle.revocation_path(dd.authority, fridge))
    status, out, _ = _cli(capsys, "keys", "show", rev, "--root", auth, "--json")
    doc = json.loads(out)
    assert status == 0 and doc["status"] == "signature verifies against the fleet root"
    assert (doc["device_id"], doc["key_id"], doc["reason"]) == (
        fridge,
        "all (the device)",
        "key-compromise",
    )
    line = _one_line_error(capsys, "keys", "show", rev, "--root", str(other))
    assert "not a fleet root" in line or "does not verify" in line, line
    line = _one_line_error(capsys, *ok)
    assert "already revoked from height" in line and "--resend" in line
    line = _one_line_error(capsys, *_revoke(*base, "--device", FRIDGE, "--reason", "x" * 65))
    assert "already revoked" in line  # checked before anything is signed


def test_a_reason_longer_than_the_format_allows_is_refused(
    fleet: tuple[FleetConfig, DataDir], capsys: pytest.CaptureFixture[str]
) -> None:
    _, dd = fleet
    line = _one_line_error(
        capsys,
        "keys",
        "revoke",
        "--authority",
        str(dd.authority),
        "--data",
        str(dd.root),
        "--device",
        FRIDGE,
        "--reason",
        "é" * 33,  # 66 bytes of UTF-8
    )
    assert "--reason: 1 to 64 bytes of UTF-8, found 66" in line


# --------------------------------------------------------------------------- a live fleet

SPEED = 600.0  # simulated seconds per wall second: a block every few wall seconds
STATIONS = 8
LIVE_FLEET = SMALL_FLEET + "".join(
    f"""  - name: freezer-{i}
    kind: medical_freezer
    site: blood-station-north
    domains: [blood-chain]
    sampling_period: 30s
"""
    for i in range(1, STATIONS + 1)
)


@pytest.mark.mosquitto
def test_a_revocation_published_to_a_live_fleet_is_refused_by_every_peer_at_once(
    mosquitto: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_fleet(write_fleet(tmp_path, LIVE_FLEET))
    data = tmp_path / "data"
    runner = FleetRunner(
        cfg,
        RunOptions(
            data=data,
            broker=mosquitto.endpoint.url,
            for_ms=6 * HOUR_MS,
            speed=SPEED,
            view=False,
            gossip=FAST_GOSSIP,
            settle_s=30.0,
        ),
    )
    out = asyncio.run(_revoke_live(runner, mosquitto.endpoint.url, data))
    capsys.readouterr()
    print(out)


async def _revoke_live(runner: FleetRunner, url: str, data: Path) -> str:
    task = asyncio.create_task(runner.run())
    agents = runner.agents
    bad_name = "freezer-station"

    def head(name: str) -> int:
        h = agents[name].store.head()
        return -1 if h is None else h.header.height

    n = len(runner.cfg.devices)
    await until(lambda: len(agents) == n and head(bad_name) >= 3, "3 blocks", task, runner)
    bad = agents[bad_name].device_id
    peers = [n for n in agents if n != bad_name]
    args = ["keys", "revoke", "--authority", str(data / "authority"), "--device", bad_name]
    args += ["--reason", "key-compromise", "--broker", url, "--data", str(data)]
    cli_start = time.monotonic()
    status = await asyncio.to_thread(main, args)
    published = time.monotonic()
    assert status == 0
    cut = decode_revocation(
        lifecycle.revocation_path(data / "authority", bad).read_bytes()
    ).from_height

    def holds(name: str) -> bool:
        return agents[name].node.key_status(bad)[1] == cut

    held_at: dict[str, float] = {}

    def everyone() -> bool:
        for n in peers:
            if n not in held_at and holds(n):
                held_at[n] = time.monotonic()
        return len(held_at) == len(peers)

    await until(everyone, "every peer to hold the revocation", task, runner, step_ms=10)
    took_ms = (max(held_at.values()) - cli_start) * 1000
    rounds = took_ms / FAST_GOSSIP.anti_entropy_ms
    default_rounds = took_ms / GossipConfig().anti_entropy_ms

    def peer_top(name: str) -> int:
        h = agents[name].node.head(bad)
        return -1 if h is None else h.header.height

    tops = {n: peer_top(n) for n in peers}
    window = {n: max(0, t - cut + 1) for n, t in tops.items()}  # accepted before it arrived
    target = head(bad_name) + 3
    await until(
        lambda: head(bad_name) >= target, "3 more blocks of the revoked device", task, runner
    )
    await until(lambda: runner.snapshot().devices != (), "a snapshot", task, runner)
    row = next(d for d in runner.snapshot().devices if d.name == bad_name)
    runner.request_stop()
    await task
    later = {n: peer_top(n) for n in peers}
    refused = {n: max(t, cut - 1) for n, t in tops.items()}
    assert {n: max(t, cut - 1) for n, t in later.items()} == refused, (
        f"headers at or above {cut} accepted after every peer held it: {tops} -> {later}"
    )
    assert row.revoked_from == cut, "the view marks the revoked device"
    # The bound is the default anti-entropy round (what a deployed fleet runs with); the fast
    # round of this run is reported beside it.
    assert took_ms <= GossipConfig().anti_entropy_ms, f"{took_ms:.0f} ms"
    cli_ms = (published - cli_start) * 1000
    default_ms = GossipConfig().anti_entropy_ms
    return (
        f"live fleet over Mosquitto: `keys revoke --broker` took {cli_ms:.0f} ms (sign, "
        f"connect, publish retained, acknowledged); every one of {len(peers)} peers held the "
        f"revocation {took_ms:.0f} ms after the command started ({rounds:.2f} rounds of this "
        f"run's {FAST_GOSSIP.anti_entropy_ms} ms anti-entropy, {default_rounds:.3f} of the "
        f"default {default_ms} ms); headers at or above {cut} accepted in that window: "
        f"{sum(window.values())}; the revoked device then sealed up to height {head(bad_name)} "
        f"and no peer accepted any of it"
    )
