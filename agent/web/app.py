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

Handlers are plain functions: Starlette runs them in its thread pool, so the blocking SQLite
reads of ``data`` never stall the event loop. Responses forbid scripts and anything loaded from
elsewhere (Content-Security-Policy): the pages have none, and a name that slipped past escaping
could not run one either.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from agent.provenance import epcis, render
from agent.provenance.bundles import write_bundle
from agent.provenance.gather import TraceError
from agent.web import pages, svg
from agent.web.data import FleetData, NotFound, WebError
from ledger.errors import LedgerError, UsageError

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


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


def create_app(fd: FleetData) -> Starlette:
    def fleet(request: Request) -> Response:
        return _html(pages.fleet(fd.fleet()))

    def device(request: Request) -> Response:
        return _html(pages.device(fd.device(request.path_params["name"])))

    def device_svg(request: Request) -> Response:
        plot = pages.device_plot(fd.device(request.path_params["name"]))
        if plot is None:
            raise NotFound("no temperature reading to plot")
        return Response(svg.render(plot), media_type="image/svg+xml", headers=_HEADERS)

    def items(request: Request) -> Response:
        rows, sealed = fd.tags()
        return _html(pages.items(rows, sealed))

    def _trace_doc(request: Request) -> dict[str, Any]:
        with fd.session() as session:
            return render.as_json(fd.trace(session, _epc(request)))

    def item(request: Request) -> Response:
        return _html(pages.trace(_trace_doc(request)))

    def item_json(request: Request) -> Response:
        doc = _trace_doc(request)
        body = json.dumps(doc, indent=2).encode() + b"\n"
        return _download(body, _filename(doc["epc"], ".trace.json"), "application/json")

    def item_epcis(request: Request) -> Response:
        epc = _epc(request)
        with fd.session() as session:
            trace = fd.trace(session, epc)
        doc = epcis.document(trace, created_ms=int(time.time() * 1000))
        body = json.dumps(doc, indent=2).encode() + b"\n"
        return _download(body, _filename(epc, ".epcis.json"), "application/ld+json")

    def item_bundle(request: Request) -> Response:
        epc = _epc(request)
        with fd.session() as session:
            trace = fd.trace(session, epc)
            if not trace.evidence:
                raise NotFound(f"{epc}: no verified reading to put in a bundle")
            try:
                blob = write_bundle(session, trace, created_ms=int(time.time() * 1000))
            except (LedgerError, UsageError) as exc:
                raise WebError(f"bundle: {exc}") from None
        return _download(blob, _filename(epc, ".bundle"), "application/octet-stream")

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
    ]
    handlers: dict[Any, Any] = {
        NotFound: not_found,
        WebError: bad_request,
        TraceError: bad_request,
        404: http_error,
        405: http_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


def serve(fd: FleetData, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C); uvicorn logs each request at info level."""
    config = uvicorn.Config(create_app(fd), host=host, port=port, log_level="info")
    uvicorn.Server(config).run()


@contextmanager
def running(fd: FleetData, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve in a thread for the duration of the block; yields the base URL (``port`` 0: any
    free port, the one bound is in the URL). For tests and for embedding next to other work."""
    config = uvicorn.Config(create_app(fd), host=host, port=port, log_level="warning")
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
