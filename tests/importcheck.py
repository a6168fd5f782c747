"""Import rules of the house (run by `make check` and by tests/test_import_direction.py).

Walks every module's AST, imports inside functions included, and holds four kinds of rule:

1. **Direction between packages**: agent -> ledger, agent -> firmware_sim; ledger and
   firmware_sim import nothing of ours; no package imports tests or bench.
2. **Direction inside agent**: the protocol cores (``agent.protocol``, ``agent.gossip``,
   ``agent.replication``) import no other room of agent (``agent.errors`` is every room's);
   ``agent.protocol`` imports neither core;
   transports know nothing of devices or fleets; a device knows nothing of the fleet around it;
   only the CLI imports the CLI.
3. **No I/O in the cores**: the cores import no asyncio, time, threading, sockets or other I/O
   (time is an argument, randomness an injected ``random.Random``).
4. **One adapter per foreign library**: aiomqtt and paho only in ``agent/transport/mqtt.py``,
   amqtt only in ``agent/transport/brokers.py``, sqlite3 only in ``ledger/store.py`` (or a
   ``ledger/store/`` package), pyserial only in ``firmware_sim/serial/port.py``,
   prometheus_client only in ``agent/fleet/metrics.py``, starlette and uvicorn only in
   ``agent/web/app.py``, cryptography (X.509) only in ``agent/fleet/brokertls.py``.

And no import cycle between agent's modules, static or through ``importlib``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"agent", "ledger", "firmware_sim", "tests", "bench"}
ALLOWED = {
    "ledger": {"ledger"},
    "firmware_sim": {"firmware_sim"},
    "agent": {"agent", "ledger", "firmware_sim"},
}
CORES = ("agent.protocol", "agent.gossip", "agent.replication")
# room -> rooms of agent it must not import
FORBIDDEN_ROOMS = {
    "agent.protocol": ("agent.",),  # only itself (checked below as an exception)
    "agent.gossip": (
        "agent.replication",
        "agent.device",
        "agent.fleet",
        "agent.transport",
        "agent.config",
        "agent.provenance",
        "agent.cli",
        "agent.web",
    ),
    "agent.replication": (
        "agent.gossip",
        "agent.device",
        "agent.fleet",
        "agent.transport",
        "agent.config",
        "agent.provenance",
        "agent.cli",
        "agent.web",
    ),
    "agent.transport": (
        "agent.device",
        "agent.fleet",
        "agent.cli",
        "agent.provenance",
        "agent.web",
    ),
    "agent.device": ("agent.fleet", "agent.cli", "agent.provenance", "agent.web"),
    "agent.config": ("agent.device", "agent.fleet", "agent.cli", "agent.transport", "agent.web"),
    "agent.provenance": ("agent.cli", "agent.device", "agent.transport", "agent.web"),
    "agent.fleet": ("agent.cli", "agent.web"),
    "agent.web": ("agent.cli", "agent.device", "agent.transport"),
}
IO_MODULES = {
    "asyncio",
    "time",
    "threading",
    "socket",
    "selectors",
    "sqlite3",
    "subprocess",
    "multiprocessing",
    "concurrent",
    "aiomqtt",
    "paho",
    "amqtt",
    "serial",
}
ADAPTERS = {
    "aiomqtt": ("agent/transport/mqtt.py",),
    "paho": ("agent/transport/mqtt.py",),
    "amqtt": ("agent/transport/brokers.py",),
    "sqlite3": ("ledger/store.py", "ledger/store/"),
    "serial": ("firmware_sim/serial/port.py",),
    "prometheus_client": ("agent/fleet/metrics.py",),
    "starlette": ("agent/web/app.py",),
    "uvicorn": ("agent/web/app.py",),
    "cryptography": ("agent/fleet/brokertls.py",),
}


def _module_name(root: Path, path: Path) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(tree: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) for every absolute import in the tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, []


def _in(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def _room_rules(module: str, name: str) -> str | None:
    if name == "agent.errors":  # every room may raise agent's errors; it imports nothing of ours
        return None
    for room, banned in FORBIDDEN_ROOMS.items():
        if not _in(module, room) or not name.startswith("agent"):
            continue
        if room == "agent.protocol":
            if not _in(name, "agent.protocol"):
                return f"{room} must not import {name} (it is shared by every core)"
            continue
        for other in banned:
            if _in(name, other):
                return f"{room} must not import {name}"
    return None


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            module = _module_name(root, path)
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, name, _ in _imports(tree):
                top = name.split(".")[0]
                if top in OURS and top not in allowed:
                    found.append(f"{rel}:{line}: {package} must not import {name}")
                    continue
                if package == "agent":
                    why = _room_rules(module, name)
                    if why:
                        found.append(f"{rel}:{line}: {why}")
                if top in IO_MODULES and any(_in(module, core) for core in CORES):
                    found.append(f"{rel}:{line}: the core {module} must not import {name} (I/O)")
                homes = ADAPTERS.get(top)
                if homes and not any(
                    str(rel).startswith(h) if h.endswith("/") else str(rel) == h for h in homes
                ):
                    found.append(f"{rel}:{line}: only {', '.join(homes)} may import {top}")
            if package == "agent":
                found += [f"{rel}:{line}: {why}" for line, why in _dynamic_imports(tree)]
    return found + cycles(root)


def _dynamic_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """``importlib.import_module(x)`` with ``x`` not a literal hides an edge of the import graph
    (the CLI once loaded its commands that way, hiding a cycle through cli/main.py)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and not (node.args and isinstance(node.args[0], ast.Constant))
        ):
            yield node.lineno, "import_module with a computed name hides an import; import it"


def cycles(root: Path = ROOT) -> list[str]:
    """Every import cycle between agent's modules (strongly connected components of the import
    graph, imports inside functions and ``importlib.import_module("...")`` included)."""
    paths = {_module_name(root, p): p for p in (root / "agent").rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in paths}
    for module, path in paths.items():
        for _, name, names in _imports(ast.parse(path.read_text())):
            targets = [f"{name}.{n}" for n in names] or [name]
            for target in targets:
                dep = resolve(target)
                if dep and dep != module:
                    graph[module].add(dep)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return [f"import cycle: {' <-> '.join(c)}" for c in sorted(components)]


def main() -> int:
    bad = violations()
    for line in bad:
        print(line)
    if bad:
        print(f"import rules: {len(bad)} violation(s)")
        return 1
    print("import rules: ok (direction, rooms, I/O-free cores, one adapter per library, no cycle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
