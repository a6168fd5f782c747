"""The web application (Starlette) and its server (uvicorn): the only module that imports them.

Routes (all GET, no state kept between requests; each reads the data dir afresh):

    /                        the fleet: devices by site, chain heights, peers, replicas, alarms
    /device/NAME             a device: its chain, temperatures plotted with alarm limits,
                             replicas and holders, alarms
    /device/NAME/temperatures.svg   the same plot alone
    /items                   the tagged items the data dir knows
    /item?epc=EPC            an item's verified trace: verdict, custody, excursions, timeline
    /item/trace.json?epc=    downloads: the trace as ``edgefleet trace --format json``,
    /item/epcis.json?epc=    its EPCIS 2.0 document,
    /item/bundle?epc=        and its offline proof bundle (``edgefleet verify-bundle``)
    /log/checkpoint          the fleet's heads log checkpoint (C2SP, ``edgefleet fleetlog``)

Next to a running fleet (``edgefleet run ... --web PORT``, ``LiveWeb``) two more: ``/events``
sends the runner's snapshot as a server-sent event (heights, pending readings, lag, alarms; the
browser asks again every second) and ``/live.js``, the one script of the project, updates the
fleet page's table from them; the policy then allows scripts and connections from this origin
only.

Handlers are plain functions: Starlette runs them in its thread pool, so the blocking SQLite
reads of ``data`` never stall the event loop. Responses forbid scripts and anything loaded from
elsewhere (Content-Security-Policy): the pages have none, and a name that slipped past escaping
could not run one either.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from agent.fleet import fleetlog
from agent.fleet.view import FleetSnapshot
from agent.provenance import epcis, render
from agent.provenance.bundles import write_bundle
from agent.provenance.gather import TraceError
from agent.web import pages, svg
from agent.web.data import FleetData, NotFound, NotReady, WebError
from ledger.errors import LedgerError, UsageError

_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'"
_HEADERS = {
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Live: live.js from this origin, and its EventSource to /events.
_LIVE_HEADERS = dict(_HEADERS)
_LIVE_HEADERS["Content-Security-Policy"] = _POLICY + "; script-src 'self'; connect-src 'self'"
EVENT_PERIOD_S = 1.0
_LIVE_JS = Path(__file__).with_name("live.js")
# The zero-install bundle verifier (docs/BUNDLE.md section 7): it carries its own, stricter
# Content-Security-Policy (inline script only, no fetch at all), which a header here would only
# intersect with, so it is served with the other headers alone.
_VERIFY_HTML = Path(__file__).with_name("verify.html")


def _html(text: str, status: int = 200, live: bool = False) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_LIVE_HEADERS if live else _HEADERS)


def _download(body: bytes, filename: str, media_type: str) -> Response:
    headers = dict(_HEADERS)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(body, media_type=media_type, headers=headers)


def _filename(epc: str, suffix: str) -> str:
    """A download's name from the EPC, reduced to characters safe in a header and a file name."""
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in epc)[:120]
    return f"{safe}{suffix}"


def _epc(request: Request) -> str:
    epc = request.query_params.get("epc", "").strip()
    if not epc:
        raise WebError("give the item's EPC: ?epc=urn:epc:id:...")
    return epc


def live_json(snap: FleetSnapshot) -> dict[str, Any]:
    """What ``/events`` sends of a snapshot. A private household's alarms and temperatures are
    its owner's: they are left out (None), as on the pages without ``--owner-key``."""
    return {
        "sim": pages.when(snap.sim_ms),
        "devices": [
            {
                "name": d.name,
                "height": d.height,
                "pending": d.pending,
                "lag": d.lag,
                "peers": f"{d.peers_online}/{d.peers_total}",
                "alarms": None if d.private else list(d.alarms),
            }
            for d in snap.devices
        ],
    }


class _Fleet:
    """The data dir, opened on first use: a live fleet provisions it after the server starts."""

    def __init__(self, fd: FleetData | Callable[[], FleetData]) -> None:
        self._fd = fd if isinstance(fd, FleetData) else None
        self._open = fd if not isinstance(fd, FleetData) else None
        self._lock = threading.Lock()

    def get(self) -> FleetData:
        with self._lock:
            if self._fd is None:
                assert self._open is not None
                self._fd = self._open()
            return self._fd


def create_app(
    source: FleetData | Callable[[], FleetData],
    snapshot: Callable[[], FleetSnapshot] | None = None,
) -> Starlette:
    """The application over a data dir (or a function opening it on first use); with
    ``snapshot`` (a running fleet's), the live routes too."""
    lazy = _Fleet(source)
    live = snapshot is not None

    def fleet(request: Request) -> Response:
        return _html(pages.fleet(lazy.get().fleet(), live=live), live=live)

    def device(request: Request) -> Response:
        return _html(pages.device(lazy.get().device(request.path_params["name"])))

    def device_svg(request: Request) -> Response:
        plot = pages.device_plot(lazy.get().device(request.path_params["name"]))
        if plot is None:
            raise NotFound("no temperature reading to plot")
        return Response(svg.render(plot), media_type="image/svg+xml", headers=_HEADERS)

    def items(request: Request) -> Response:
        rows, sealed = lazy.get().tags()
        return _html(pages.items(rows, sealed))

    def _trace_doc(request: Request) -> dict[str, Any]:
        with lazy.get().session() as session:
            return render.as_json(lazy.get().trace(session, _epc(request)))

    def item(request: Request) -> Response:
        return _html(pages.trace(_trace_doc(request)))

    def item_json(request: Request) -> Response:
        doc = _trace_doc(request)
        body = json.dumps(doc, indent=2).encode() + b"\n"
        return _download(body, _filename(doc["epc"], ".trace.json"), "application/json")

    def item_epcis(request: Request) -> Response:
        epc = _epc(request)
        with lazy.get().session() as session:
            trace = lazy.get().trace(session, epc)
        doc = epcis.document(trace, created_ms=int(time.time() * 1000))
        body = json.dumps(doc, indent=2).encode() + b"\n"
        return _download(body, _filename(epc, ".epcis.json"), "application/ld+json")

    def item_bundle(request: Request) -> Response:
        epc = _epc(request)
        with lazy.get().session() as session:
            trace = lazy.get().trace(session, epc)
            if not trace.evidence:
                raise NotFound(f"{epc}: no verified reading to put in a bundle")
            try:
                blob = write_bundle(session, trace, created_ms=int(time.time() * 1000))
            except (LedgerError, UsageError) as exc:
                raise WebError(f"bundle: {exc}") from None
        return _download(blob, _filename(epc, ".bundle"), "application/octet-stream")

    def events(request: Request) -> Response:
        # One event per connection: the browser's EventSource reconnects after ``retry`` ms.
        # No connection stays open, so a stopped run or a proxy never leaves a page hanging,
        # and a headless browser's virtual time (the browser tests) runs on between events.
        assert snapshot is not None
        retry_ms = int(EVENT_PERIOD_S * 1000)
        body = f"retry: {retry_ms}\ndata: {json.dumps(live_json(snapshot()))}\n\n"
        headers = dict(_LIVE_HEADERS)
        headers["Cache-Control"] = "no-store"
        return Response(body, media_type="text/event-stream", headers=headers)

    def log_checkpoint(request: Request) -> Response:
        raw = fleetlog.read_checkpoint(lazy.get().data)
        if raw is None:
            raise NotFound("no heads log checkpoint yet (edgefleet fleetlog append)")
        return Response(raw, media_type="text/plain; charset=utf-8", headers=_HEADERS)

    def verify_page(request: Request) -> Response:
        headers = {k: v for k, v in _HEADERS.items() if k != "Content-Security-Policy"}
        return HTMLResponse(_VERIFY_HTML.read_bytes(), headers=headers)

    def live_js(request: Request) -> Response:
        return Response(_LIVE_JS.read_bytes(), media_type="text/javascript", headers=_LIVE_HEADERS)

    async def not_ready(request: Request, exc: Exception) -> Response:
        return _html(pages.error(503, str(exc)), 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _html(pages.error(404, str(exc)), 404)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _html(pages.error(400, str(exc)), 400)

    async def http_error(request: Request, exc: Exception) -> Response:
        code = int(getattr(exc, "status_code", 500))
        return _html(pages.error(code, str(getattr(exc, "detail", exc))), code)

    routes = [
        Route("/", fleet),
        Route("/device/{name}", device),
        Route("/device/{name}/temperatures.svg", device_svg),
        Route("/items", items),
        Route("/item", item),
        Route("/item/trace.json", item_json),
        Route("/item/epcis.json", item_epcis),
        Route("/item/bundle", item_bundle),
        Route("/verify", verify_page),
        Route("/log/checkpoint", log_checkpoint),
    ]
    if live:
        routes += [Route("/events", events), Route("/live.js", live_js)]
    handlers: dict[Any, Any] = {
        NotFound: not_found,
        NotReady: not_ready,
        WebError: bad_request,
        TraceError: bad_request,
        404: http_error,
        405: http_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


class _Embedded(uvicorn.Server):
    """A server inside someone else's event loop: the fleet runner owns SIGINT and SIGTERM
    (uvicorn would take them over while it serves, and raise them again when it stops)."""

    def capture_signals(self) -> AbstractContextManager[None]:  # type: ignore[override]
        return nullcontext()


class LiveWeb:
    """The pages of a running fleet's data dir plus its live snapshot, served in the runner's
    event loop (``start``, then ``stop`` after the run)."""

    def __init__(
        self,
        data: Path,
        config: Path | None,
        snapshot: Callable[[], FleetSnapshot],
        host: str,
        port: int,
    ) -> None:
        app = create_app(lambda: FleetData.open_when_ready(data, config), snapshot)
        self._host, self._port = host, port
        self._server = _Embedded(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        """Raises OSError when the address cannot be listened on (a port in use, say)."""
        sock = listen(self._host, self._port)
        self._task = asyncio.create_task(self._server.serve([sock]), name="edgefleet-web")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # the error that stopped it (a port in use, say)
                raise WebError("the web server stopped before it started")
            await asyncio.sleep(0.01)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}/"

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: any free port) for the server to serve on.
    Bound here rather than by uvicorn, which answers an address it cannot bind with
    ``sys.exit`` inside the event loop: that took the whole process down with a traceback (a
    running fleet's, under ``run --web``). Raises OSError saying why (a port in use, a host
    that is not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def serve(fd: FleetData, sock: socket.socket) -> None:
    """Serve on ``sock`` (``listen``) until interrupted (Ctrl-C); uvicorn logs each request at
    info level."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(fd), host=host, port=port, log_level="info")
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def running(
    fd: FleetData,
    host: str = "127.0.0.1",
    port: int = 0,
    snapshot: Callable[[], FleetSnapshot] | None = None,
) -> Iterator[str]:
    """Serve in a thread for the duration of the block; yields the base URL (``port`` 0: any
    free port, the one bound is in the URL). For tests and for embedding next to other work."""
    app = create_app(fd, snapshot)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="edgefleet-web", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise WebError(f"the web server did not start on {host}:{port}")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
