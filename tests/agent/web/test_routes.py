"""Each route of the web app over HTTP (the real server on 127.0.0.1, stdlib's client) against a
data dir made by a simulated run, with what each page shows checked against the stores, the
audit (``edgefleet status``) and the tracer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from urllib.parse import quote

import pytest

from agent.cli.main import main
from agent.fleet import keystore
from agent.fleet.view import DeviceRow, FleetSnapshot
from agent.provenance import render
from agent.provenance.opening import Opening
from agent.web import pages
from agent.web.app import running
from agent.web.data import BLOCKS_SHOWN, FleetData
from ledger.bundle import verify_bundle
from ledger.private import open_grant
from ledger.store import Store
from tests.agent.web.conftest import PLASMA, WebFleet
from tests.agent.web.tables import rows


def _get(url: str) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _page(url: str, live: bool = False) -> str:
    status, headers, body = _get(url)
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("text/html")
    # default-src 'none' holds; only the live pages may run their own live.js
    assert ("script-src 'self'" in headers["Content-Security-Policy"]) == live
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    return body.decode()


def _svg(html: str) -> ET.Element:
    start, end = html.index("<svg"), html.index("</svg>") + len("</svg>")
    return ET.fromstring(html[start:end])


NS = {"s": "http://www.w3.org/2000/svg"}


@pytest.fixture(scope="module")
def owner_url(web_fleet: WebFleet) -> Iterator[str]:
    secret = keystore.read_owner_secret(web_fleet.owner_key)
    with running(FleetData.open(web_fleet.data, Opening.owner(secret))) as url:
        yield url


def test_fleet_page_lists_every_device_by_site_with_the_audit_figures(
    base_url: str, web_fleet: WebFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    html = _page(base_url + "/")
    assert main(["status", "--data", str(web_fleet.data), "--json"]) == 0
    status = {d["name"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
    table = {r[0].split()[0]: r for r in rows(html, "fleet")}
    assert sorted(table) == sorted(status)
    for name, d in status.items():
        row = table[name]
        assert row[1] == d["kind"]
        assert (row[3], row[4], row[6]) == (str(d["height"]), str(d["readings"]), str(d["peers"]))
        assert row[-1] == "ok"
    for site in ("blood-station-north", "blood-van-1", "city-hospital", "home-1"):
        assert f'<span class="site">{site}</span>' in html
    assert table["freezer-van"][2] == "blood-chain"  # domains from the devices.yaml it ran
    assert "private" in table["fridge-1"][0] and "withheld" in table["fridge-1"][10]
    assert "converged" in html


def test_device_page_shows_its_chain_holders_plot_and_limits(
    base_url: str, web_fleet: WebFleet, fleet_data: FleetData
) -> None:
    html = _page(base_url + "/device/freezer-van")
    chain = rows(html, "chain")
    with Store(web_fleet.data / "devices" / "freezer-van" / "store.sqlite") as store:
        head = store.head()
        assert head is not None
        top = head.header.height
        assert len(chain) == min(BLOCKS_SHOWN, top + 1)
        assert chain[0][0] == str(top)
        sh = store.header_at(top)
        assert sh is not None
        assert chain[0][3] == str(sh.header.count)
        assert sh.hash.hex().startswith(chain[0][2].rstrip("…"))
        holders = {fleet_data.names[h] for _, h, _ in store.receipts(top)}
    assert set(chain[0][6].split(", ")) == holders and holders
    root = _svg(html)
    (band,) = root.iterfind(".//s:g[@class='band']", NS)
    assert (band.attrib["data-low"], band.attrib["data-high"]) == ("-80", "-25")
    (line,) = root.iterfind(".//s:polyline", NS)
    assert line.attrib["data-name"] == "cabinet.temp"
    assert int(line.attrib["data-points"]) > 1000
    # the van's power cut (15:50..17:50 of the first day) raised alarms, then cleared them
    alarms = rows(html, "alarms")
    assert {"alarm.power", "alarm.temp_high"} <= {r[1] for r in alarms}
    assert "replicas" in html and rows(html, "replicas")


def test_a_private_household_is_withheld_without_the_owner_key(
    base_url: str, owner_url: str
) -> None:
    html = _page(base_url + "/device/fridge-1")
    assert "private reading(s) withheld" in html
    assert "<polyline" not in html
    opened = _page(owner_url + "/device/fridge-1")
    assert "withheld" not in opened
    root = _svg(opened)
    names = {p.attrib["data-name"] for p in root.iterfind(".//s:polyline", NS)}
    assert names == {"fridge.temp", "freezer.temp"}
    highs = {
        b.attrib["data-label"]: b.attrib["data-high"]
        for b in root.iterfind(".//s:g", NS)
        if b.attrib.get("class") == "band"
    }
    assert highs == {"fridge alarm": "8", "freezer alarm": "-12"}


def test_device_svg_route_serves_the_plot_alone(base_url: str) -> None:
    status, headers, body = _get(base_url + "/device/freezer-station/temperatures.svg")
    assert status == 200 and headers["Content-Type"].startswith("image/svg+xml")
    assert ET.fromstring(body).find(".//s:polyline", NS) is not None


def test_items_page_lists_the_tags_and_names_the_sealed_devices(
    base_url: str, owner_url: str
) -> None:
    html = _page(base_url + "/items")
    tags = [r[0] for r in rows(html, "items")]
    assert PLASMA in tags
    assert f'href="/item?epc={quote(PLASMA, safe="")}"' in html
    assert "fridge-1" in html and "--owner-key" in html
    assert "fridge-1" not in _page(owner_url + "/items").split("<table")[0]


def test_item_page_shows_verdict_custody_and_the_excursion_shaded(
    base_url: str, fleet_data: FleetData
) -> None:
    html = _page(base_url + "/item?epc=" + quote(PLASMA))
    with fleet_data.session() as session:
        doc = render.as_json(session.trace(PLASMA))
    assert doc["verdict"]["word"] == "NOT OK" and doc["excursions"]
    assert 'id="verdict"' in html and "NOT OK" in html
    stays = rows(html, "stays")
    assert [r[0] for r in stays] == [s["device"] for s in doc["stays"]]
    root = _svg(html)
    spans = [g for g in root.iterfind(".//s:g", NS) if g.attrib.get("class") == "span"]
    assert [int(g.attrib["data-start"]) for g in spans] == [
        x["start_ms"] for x in doc["excursions"]
    ]
    (band,) = [g for g in root.iterfind(".//s:g", NS) if g.attrib.get("class") == "band"]
    assert band.attrib["data-high"] == "-25"
    assert len(rows(html, "timeline")) == len(doc["timeline"])
    for path in ("/item/trace.json", "/item/epcis.json", "/item/bundle"):
        assert f'href="{path}?epc={quote(PLASMA, safe="")}"' in html


def test_downloads_are_the_trace_the_epcis_document_and_a_bundle_that_verifies(
    base_url: str, fleet_data: FleetData
) -> None:
    q = "?epc=" + quote(PLASMA)
    status, headers, body = _get(base_url + "/item/trace.json" + q)
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    doc = json.loads(body)
    with fleet_data.session() as session:
        assert doc == render.as_json(session.trace(PLASMA))
    status, headers, body = _get(base_url + "/item/epcis.json" + q)
    epcis = json.loads(body)
    assert status == 200 and epcis["type"] == "EPCISDocument"
    assert any(PLASMA in e.get("epcList", []) for e in epcis["epcisBody"]["eventList"])
    status, headers, body = _get(base_url + "/item/bundle" + q)
    assert status == 200 and headers["Content-Disposition"].endswith('.bundle"')
    verified = verify_bundle(body, roots=fleet_data.roots)
    assert verified.subject == PLASMA and len(verified.readings) == doc["evidence"]


def test_unknown_pages_say_so(base_url: str) -> None:
    for path, code in (
        ("/device/no-such", 404),
        ("/item?epc=urn:epc:id:giai:1.2", 404),
        ("/item", 400),
        ("/item/bundle?epc=urn:epc:id:giai:1.2", 404),
        ("/nowhere", 404),
    ):
        status, headers, body = _get(base_url + path)
        assert status == code, path
        assert headers["Content-Type"].startswith("text/html")
        assert b"<h1>" in body


def test_user_data_is_escaped_on_every_page(fleet_data: FleetData) -> None:
    evil = '<script>alert(1)</script>"&'
    with fleet_data.session() as session:
        doc = render.as_json(session.trace(PLASMA))
    doc["epc"], doc["name"] = evil, evil
    for ev in doc["timeline"]:
        ev["device"], ev["text"] = evil, evil
    for s in doc["stays"]:
        s["device"] = evil
    html = pages.trace(doc)
    assert "<script" not in html
    assert html.count("&lt;script&gt;") >= len(doc["timeline"])
    page = fleet_data.fleet()
    assert "<script" not in pages.items(
        [
            {
                "tag": evil,
                "name": evil,
                "kind": None,
                "readings": 1,
                "devices": [evil],
                "last_ms": 0,
                "last_event": evil,
                "last_device": evil,
            }
        ],
        [evil],
    )
    assert "<script" not in pages.fleet(page)


def test_cli_refuses_a_bad_port_and_a_missing_data_dir(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["web", "--data", "/nonexistent", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["web", "--data", "/nonexistent", "--port", "0"]) == 2
    assert "not a fleet data dir" in capsys.readouterr().err


def _snapshot() -> FleetSnapshot:
    row = DeviceRow(
        name="freezer-van",
        kind="medical_freezer",
        site="blood-van-1",
        height=7,
        pending=3,
        readings=100,
        temps_mc=(("cabinet.temp_mc", -24_000),),
        alarms=("alarm.power",),
        peers_online=2,
        peers_total=2,
        lag=1,
    )
    home = DeviceRow(
        name="fridge-1",
        kind="refrigerator",
        site="home-1",
        height=2,
        pending=1,
        readings=10,
        temps_mc=(("fridge.temp_mc", 9_000),),
        alarms=("alarm.fridge_warm",),
        peers_online=0,
        peers_total=0,
        lag=0,
        private=True,
    )
    return FleetSnapshot(sim_ms=1_736_150_400_000, wall_s=1.0, speed=60.0, devices=(row, home))


def test_live_routes_send_the_snapshot_and_the_script(fleet_data: FleetData) -> None:
    with running(fleet_data, snapshot=_snapshot) as url:
        html = _page(url + "/", live=True)
        status, headers, body = _get(url + "/events")
        _, js_headers, js = _get(url + "/live.js")
    assert '<script src="/live.js"></script>' in html and 'id="live"' in html
    assert 'data-device="freezer-van"' in html
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    text = body.decode()
    assert text.startswith("retry: 1000\ndata: ") and text.endswith("\n\n")
    event = json.loads(text.split("data: ", 1)[1])
    assert event["sim"] == "2025-01-06 08:00:00"
    van, home = event["devices"]
    assert (van["name"], van["height"], van["pending"], van["lag"]) == ("freezer-van", 7, 3, 1)
    assert van["alarms"] == ["alarm.power"]
    assert home["alarms"] is None  # a private household's alarms are its owner's
    assert "temps" not in van and "fridge" not in text.replace('"fridge-1"', "")
    assert js_headers["Content-Type"].startswith("text/javascript") and b"EventSource" in js


def test_the_offline_app_has_no_live_routes(base_url: str) -> None:
    assert _get(base_url + "/events")[0] == 404
    assert _get(base_url + "/live.js")[0] == 404
    assert "<script" not in _page(base_url + "/")


def test_fleet_alarms_agree_with_a_full_read_of_each_chain(web_fleet: WebFleet) -> None:
    """The fleet page keeps what it read of sealed blocks; read again, and read afresh, it
    agrees with the last value of each alarm sensor over every reading of the store."""
    secret = keystore.read_owner_secret(web_fleet.owner_key)
    fd = FleetData.open(web_fleet.data, Opening.owner(secret))
    first, again = fd.fleet(), fd.fleet()
    for page in (first, again):
        for row in page.rows:
            last: dict[str, int] = {}
            path = web_fleet.data / "devices" / row.report.name / "store.sqlite"
            with Store(path) as store:
                readings = [sr for b in store.blocks() for sr in b.readings]
                readings += store.pending()
            for sr in readings:
                r = fd.opening.open(sr).reading
                assert r is not None
                if r.sensor.startswith("alarm."):
                    last[r.sensor] = r.value
            assert row.alarms == tuple(sorted(s for s, v in last.items() if v)), row.report.name
            assert row.withheld == 0


def test_a_grant_opens_its_device_and_time_range_only(
    web_fleet: WebFleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGEFLEET_PASSPHRASE", "grantee passphrase")
    vet = tmp_path / "vet.key"
    assert main(["keys", "init-owner", "--out", str(vet)]) == 0
    data = str(web_fleet.data)
    grant = tmp_path / "vet.grant"
    args = ["grant", "--data", data, "--device", "fridge-1", "--owner-key"]
    args += [str(web_fleet.owner_key), "--to-key", f"{vet}.pub", "--out", str(grant)]
    assert main([*args, "--from", "2025-01-06T00:00Z", "--until", "2025-01-06T12:00Z"]) == 0
    capsys.readouterr()
    opening = Opening.granted(open_grant(keystore.read_owner_secret(vet), grant.read_bytes()))
    page = FleetData.open(web_fleet.data, opening).device("fridge-1")
    times = [t for pts in page.temps.values() for t, _ in pts]
    assert times and max(times) <= 1_736_164_800_000  # 2025-01-06T12:00Z
    assert page.withheld == {"outside the grant's time range": sum(page.withheld.values())}
    assert main(["web", "--data", data, "--grant", str(grant)]) == 2
    assert "--grant and --grantee-key go together" in capsys.readouterr().err
