"""``edgefleet web``: a small web application over a fleet data dir (pages, server-side SVG plots).

``data`` reads the data dir through the stores' public APIs and ``agent.provenance`` (no
signature check on the fleet page, as ``edgefleet status``; items are verified as ``edgefleet
trace`` verifies them), ``svg`` draws plots, ``pages`` writes HTML, and ``app`` is the only
module that imports the web framework (Starlette) and the server (uvicorn).
"""
