"""HTML of the pages: the fleet, a device, the items, an item's trace. Pure functions from the
values of ``data`` (and a trace's JSON, ``provenance.render.as_json``) to text.

Everything that comes from the data dir (device, site and item names, tags, alarm texts) is
escaped with ``html.escape``; links put it in a query string with ``urllib.parse.quote``. The
pages hold no script and load nothing from elsewhere: one inline style sheet, inline SVG plots.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from agent.web import svg
from agent.web.data import DevicePage, FleetPage

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header a{color:#cfe3ff;text-decoration:none}header strong{font-size:18px}
main{padding:16px 24px;max-width:1200px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:22px 0 6px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:4px 0 8px}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.hash{font-family:ui-monospace,monospace;font-size:12px}
.ok{color:#16794a;font-weight:600}.bad{color:#b3261e;font-weight:600}
.muted{color:#667}.alarm{background:#fde7e6;color:#8c1d18;padding:1px 6px;border-radius:3px}
.verdict{font-size:20px;padding:8px 14px;border-radius:6px;display:inline-block;margin:6px 0}
.verdict.ok{background:#e3f4ea}.verdict.bad{background:#fde7e6}
.plot{background:#fff;border:1px solid #dde1e6;margin:6px 0;max-width:100%;height:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:14px}
dt{color:#556}dd{margin:0}
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · edgefleet</title><style>{_STYLE}</style></head><body>"
        '<header><strong>edgefleet</strong><a href="/">fleet</a><a href="/items">items</a>'
        f"</header><main>{body}</main></body></html>\n"
    )


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _c(mc: int | None) -> str:
    return "-" if mc is None else f"{mc / 1000:.1f} °C"


def _device_link(name: str) -> str:
    return f'<a href="/device/{quote(name, safe="")}">{escape(name)}</a>'


def _item_link(epc: str, label: str | None = None) -> str:
    return f'<a href="/item?epc={quote(epc, safe="")}">{escape(label or epc)}</a>'


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """``rows`` are HTML already (each cell escaped by its maker)."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(rows_cell for rows_cell in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _td(text: object, num: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("num" if num else "", cls) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(str(text))}</td>"


def fleet(page: FleetPage, live: bool = False) -> str:
    """``live``: the page of a running fleet; live.js updates it from /events."""
    reps = [r.report for r in page.rows]
    failed = sum(not r.ok for r in reps)
    conv = (
        '<span class="ok">converged</span>: every device\'s peers hold its whole chain'
        if page.converged
        else '<span class="bad">not converged</span>: some peers lag behind, or a device failed'
    )
    body = [
        f"<h1>Fleet {escape(page.name)}</h1>",
        f'<p id="summary">{len(reps)} device(s) at {len(page.sites)} site(s); '
        f"{sum(r.readings for r in reps)} sealed readings, {sum(r.pending for r in reps)} "
        f"pending; {failed} failed. {conv}.</p>",
    ]
    if live:
        body.append(
            '<p id="live" class="muted">live: waiting for the running fleet\'s first update '
            "(the table below is the data dir as the page loaded)</p>"
        )
    if not page.config_found:
        body.append(
            '<p class="muted">devices.yaml (named in fleet.json) not found: gossip domains and '
            "alarm limits are not shown.</p>"
        )
    head = ["device", "kind", "domains", "height", "readings", "pending", "peers", "lag"]
    head += ["replicas held", "min copies", "alarms", "state"]
    for site, rows in sorted(page.sites.items()):
        body.append(f'<h2>Site <span class="site">{escape(site)}</span></h2>')
        table = []
        for row in rows:
            r = row.report
            if row.alarms:
                alarms = " ".join(f'<span class="alarm">{escape(a)}</span>' for a in row.alarms)
            elif row.withheld:
                alarms = f'<span class="muted">{row.withheld} private reading(s) withheld</span>'
            else:
                alarms = '<span class="muted">none</span>'
            state = '<span class="ok">ok</span>' if r.ok else '<span class="bad">FAILED</span>'
            if r.forked:
                state += ' <span class="bad">FORKED</span>'
            table.append(
                [
                    f'<td class="device" data-device="{escape(r.name)}">{_device_link(r.name)}'
                    + (' <span class="muted">private</span>' if row.private else "")
                    + "</td>",
                    _td(r.kind),
                    _td(", ".join(row.domains) or "-"),
                    _td("-" if r.height is None else r.height, num=True, cls="height"),
                    _td(r.readings, num=True),
                    _td(r.pending, num=True, cls="pending"),
                    _td(r.peers, num=True),
                    _td(r.lag, num=True, cls="lag"),
                    _td(r.replicas, num=True),
                    _td("-" if r.min_copies is None else r.min_copies, num=True),
                    f'<td class="alarms">{alarms}</td>',
                    f"<td>{state}</td>",
                ]
            )
        body.append(_table(head, table, "fleet"))
    errors = [f"<li>{escape(r.name)}: {escape(e)}</li>" for r in reps for e in r.errors]
    if errors:
        body.append("<h2>Errors</h2><ul>" + "".join(errors) + "</ul>")
    if live:
        body.append('<script src="/live.js"></script>')
    return _page(f"Fleet {page.name}", "".join(body))


def device_plot(page: DevicePage) -> svg.Plot | None:
    if not page.temps:
        return None
    series = [
        svg.Series(sensor.removesuffix("_mc"), [(t, v / 1000) for t, v in pts])
        for sensor, pts in sorted(page.temps.items())
    ]
    bands = [
        svg.Band(
            lim.sensor.removesuffix(".temp_mc") + " alarm",
            None if lim.low_mc is None else lim.low_mc / 1000,
            None if lim.high_mc is None else lim.high_mc / 1000,
        )
        for lim in page.limits
        if lim.sensor in page.temps
    ]
    return svg.Plot(f"{page.name}: temperatures", "°C", series, bands)


def device(page: DevicePage) -> str:
    cert, r = page.certificate, page.report
    private = cert.owner_x25519 is not None
    body = [
        f'<h1>Device <span id="device-name">{escape(page.name)}</span></h1>',
        "<dl>",
        f"<dt>id</dt><dd><code>{escape(cert.device_id)}</code></dd>",
        f"<dt>kind</dt><dd>{escape(cert.kind)} ({escape(cert.model)})</dd>",
        f"<dt>site</dt><dd>{escape(cert.site)}"
        + (" (private household)" if private else "")
        + "</dd>",
        f"<dt>gossip domains</dt><dd>{escape(', '.join(page.domains) or '-')}</dd>",
        f"<dt>chain</dt><dd>height {'-' if r.height is None else r.height}, {r.blocks} "
        f"block(s), {r.readings} sealed reading(s), {r.pending} pending</dd>",
        f"<dt>peers</dt><dd>{r.peers} (headers of {r.peer_headers} blocks)</dd>",
        f"<dt>copies</dt><dd>{r.receipts} storage receipt(s); fewest copies of a block: "
        f"{'-' if r.min_copies is None else r.min_copies}</dd>",
        "</dl>",
    ]
    n_withheld = sum(page.withheld.values())
    if n_withheld:
        why = "; ".join(f"{n}: {reason}" for reason, n in page.withheld.most_common())
        body.append(
            f'<p class="withheld"><strong>{n_withheld} private reading(s) withheld</strong> '
            f"({escape(why)}): they are sealed to the household's owner; start "
            "<code>edgefleet web</code> with <code>--owner-key FILE</code> (or a "
            "<code>--grant</code>) to show them.</p>"
        )
    body.append(f"<h2>Readings over time</h2><p>{page.shown} reading(s) shown.")
    plot = device_plot(page)
    if plot is not None:
        limits = ", ".join(
            f"{escape(lim.sensor)} {_c(lim.low_mc)} .. {_c(lim.high_mc)}" for lim in page.limits
        )
        body.append(f" Alarm limits ({escape(page.limits_from)}): {limits or 'none'}.</p>")
        body.append(svg.render(plot))
    else:
        body.append(" No temperature reading to plot.</p>")
    body.append(f"<h2>Chain</h2><p>The newest {len(page.blocks)} of {r.blocks} block(s).</p>")
    rows = [
        [
            _td(b.height, num=True),
            _td(b.epoch, num=True),
            f'<td class="hash" title="{b.hash_hex}">{b.hash_hex[:16]}…</td>',
            _td(b.readings, num=True),
            _td(when(b.first_ms)),
            _td(when(b.last_ms)),
            _td(", ".join(b.holders) or "-"),
        ]
        for b in page.blocks
    ]
    head = ["height", "epoch", "hash", "readings", "first (UTC)", "last (UTC)", "held by"]
    body.append(_table(head, rows, "chain"))
    body.append("<h2>Replicas held here</h2>")
    if page.replicas_held:
        rows = [
            [f"<td>{_device_link(owner)}</td>", _td(len(hs), num=True), _td(_ranges(hs))]
            for owner, hs in sorted(page.replicas_held.items())
        ]
        body.append(_table(["owner", "blocks", "heights"], rows, "replicas"))
    else:
        body.append("<p>None.</p>")
    body.append("<h2>Alarms</h2>")
    if page.events:
        rows = [
            [
                _td(when(t)),
                _td(sensor),
                "<td>" + ('<span class="alarm">raised</span>' if v else "cleared") + "</td>",
                _td(text or ""),
            ]
            for t, sensor, v, text in page.events
        ]
        body.append(_table(["time (UTC)", "alarm", "state", "text"], rows, "alarms"))
    else:
        body.append("<p>No alarm reading shown.</p>")
    return _page(page.name, "".join(body))


def _ranges(heights: list[int]) -> str:
    """``0-36, 40`` for heights 0..36 and 40."""
    runs: list[list[int]] = []
    for h in sorted(heights):
        if runs and h == runs[-1][1] + 1:
            runs[-1][1] = h
        else:
            runs.append([h, h])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def items(rows: list[dict[str, Any]], sealed: list[str]) -> str:
    body = ["<h1>Items</h1>"]
    if sealed:
        body.append(
            f'<p class="withheld">{len(sealed)} private device(s) ({escape(", ".join(sealed))}) '
            "seal their readings, tags included: their items are not listed without "
            "<code>--owner-key</code>.</p>"
        )
    if not rows:
        body.append("<p>No tagged reading in the data dir.</p>")
        return _page("Items", "".join(body))
    table = [
        [
            f'<td class="tag">{_item_link(r["tag"])}</td>',
            _td(r["name"] or "-"),
            _td(r["kind"] or "-"),
            _td(r["readings"], num=True),
            "<td>" + ", ".join(_device_link(d) for d in r["devices"]) + "</td>",
            _td(when(r["last_ms"])),
            _td(f"{r['last_event'] or '?'} {r['last_device']}"),
        ]
        for r in rows
    ]
    head = ["tag", "name", "kind", "readings", "devices", "last seen (UTC)", "last event"]
    body.append(_table(head, table, "items"))
    return _page("Items", "".join(body))


def trace_plot(doc: dict[str, Any]) -> svg.Plot | None:
    series = [
        svg.Series(s["device"], [(t, v / 1000) for t, v in s["temps"]])
        for s in doc["stays"]
        if s["temps"]
    ]
    if not series:
        return None
    prod = doc["product"]
    bands = []
    if prod["cold_chain"] and (prod["low_mc"] is not None or prod["high_mc"] is not None):
        bands.append(
            svg.Band(
                f"{prod['name']} limit",
                None if prod["low_mc"] is None else prod["low_mc"] / 1000,
                None if prod["high_mc"] is None else prod["high_mc"] / 1000,
            )
        )
    spans = [
        svg.Span(
            f"{x['device']}: {x['direction']} {_c(x['limit_mc'])}, peak {_c(x['peak_mc'])}",
            x["start_ms"],
            x["end_ms"],
        )
        for x in doc["excursions"]
    ]
    title = "temperatures around the item during its stays (°C)"
    return svg.Plot(title, "°C", series, bands, spans)


def trace(doc: dict[str, Any]) -> str:
    """The page of one item, from ``render.as_json(trace)``."""
    v = doc["verdict"]
    epc = doc["epc"]
    cls = "ok" if v["ok"] else "bad"
    title = epc + (f" ({doc['name']})" if doc["name"] else "")
    q = quote(epc, safe="")
    body = [
        f'<h1>Item <span id="epc">{escape(epc)}</span></h1>',
        f"<p>{escape(doc['name'] or 'unnamed item')}; judged as {escape(doc['product']['name'])}"
        f"; {doc['evidence']} verified reading(s).</p>",
        f'<div class="verdict {cls}" id="verdict">Verdict: <strong>{escape(v["word"])}'
        f"</strong></div>",
        f"<p>custody: <strong>{escape(v['custody'])}</strong>; {escape(v['final'])}",
    ]
    if doc["product"]["cold_chain"]:
        body.append(f"; out of cold storage between devices: {v['out_of_cold_ms'] // 60000} min")
    body.append("</p>")
    items = [f"<li class='problem'>{escape(p)}</li>" for p in v["problems"]]
    items += [f"<li class='note muted'>{escape(n)}</li>" for n in v["notes"]]
    if items:
        body.append("<ul>" + "".join(items) + "</ul>")
    body.append(
        '<p class="downloads">Download: '
        f'<a href="/item/trace.json?epc={q}" download>trace (JSON)</a> · '
        f'<a href="/item/epcis.json?epc={q}" download>EPCIS 2.0 document</a> · '
        f'<a href="/item/bundle?epc={q}" download>proof bundle</a> '
        '<span class="muted">(check it offline with <code>edgefleet verify-bundle</code>)'
        "</span></p>"
    )
    plot = trace_plot(doc)
    if plot is not None:
        body.append("<h2>Temperatures</h2>" + svg.render(plot))
    body.append("<h2>Custody</h2>")
    rows = [
        [
            f"<td>{_device_link(s['device'])}</td>",
            _td(when(s["arrived_ms"])),
            _td(when(s["left_ms"]) if s["left_ms"] is not None else "still there"),
            _td(f"{_c(s['temp_min_mc'])} .. {_c(s['temp_max_mc'])}"),
            _td(s["readings"], num=True),
        ]
        for s in doc["stays"]
    ]
    body.append(
        _table(["device", "arrived (UTC)", "left (UTC)", "temperature", "readings"], rows, "stays")
    )
    if doc["gaps"]:
        rows = [
            [
                _td(f"{g['from']} → {g['to']}"),
                _td(when(g["left_ms"])),
                _td(f"{g['duration_ms'] // 60000} min"),
                "<td>"
                + ('<span class="bad">over limit</span>' if g["over_limit"] else "ok")
                + "</td>",
            ]
            for g in doc["gaps"]
        ]
        body.append("<h2>Transport (out of any device)</h2>")
        body.append(_table(["between", "left (UTC)", "duration", ""], rows, "gaps"))
    if doc["excursions"]:
        rows = [
            [
                _td(x["device"]),
                _td(f"{x['direction']} {_c(x['limit_mc'])}"),
                _td(when(x["start_ms"])),
                _td(f"{x['duration_ms'] // 60000} min"),
                _td(_c(x["peak_mc"])),
                _td(x["basis"]),
            ]
            for x in doc["excursions"]
        ]
        body.append("<h2>Excursions</h2>")
        body.append(
            _table(["device", "beyond", "from (UTC)", "for", "peak", "basis"], rows, "excursions")
        )
    if doc["withheld"]:
        rows = [
            [_td(w["device"]), _td(w["count"], num=True), _td(w["reason"])] for w in doc["withheld"]
        ]
        body.append("<h2>Withheld (private readings not opened)</h2>")
        body.append(_table(["device", "readings", "why"], rows, "withheld"))
    body.append("<h2>Timeline</h2>")
    rows = [
        [
            _td(when(ev["time_ms"])),
            f"<td>{_device_link(ev['device'])}</td>",
            _td(ev["event"] if ev["about_item"] else "alarm (device)"),
            _td(f"{ev['sensor']} = {ev['value']}" + (f" ({ev['text']})" if ev["text"] else "")),
            f'<td class="hash">{escape(str(ev["reading"]["height"]))}:'
            f"{escape(str(ev['reading']['index']))} {escape(ev['reading']['proof'])}</td>",
        ]
        for ev in doc["timeline"]
    ]
    body.append(
        _table(["time (UTC)", "device", "event", "reading", "block:index proof"], rows, "timeline")
    )
    return _page(title, "".join(body))


def error(status: int, message: str) -> str:
    return _page(f"{status}", f"<h1>{status}</h1><p class='error'>{escape(message)}</p>")
