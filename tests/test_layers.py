"""Imports flow one way, and no module knows about gRPC below the API layer.

The layers, top to bottom (a package may import its own modules and those of any lower
layer, never one of its own layer or above):

    cli                                 the ``pdp`` command
    admin_cli                           its policy-admin subcommands
    server, authoring                   the gRPC server; the offline tools
    logging                             log set-up (both of the above use it)
    api, client                         protobuf <-> engine values; the Python client
    engine                              the decision path
    policy                              policies, rules, stores
    cel, counters, audit, notify        the leaves the policy layer builds on
    telemetry                           spans and metrics
    settings, reasons, backoff, turns,  shared plain values and helpers
    zones

Only the top four layers may import ``grpc`` or the generated ``pdp.v1``. Also: no import
cycle between modules, anywhere (lazy imports inside functions count).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pdp"

LAYERS: list[set[str]] = [
    {"cli"},
    {"admin_cli"},
    {"server", "authoring"},
    {"logging"},
    {"api", "client"},
    {"engine"},
    {"policy"},
    {"cel", "counters", "audit", "notify"},
    {"telemetry"},
    {"settings", "reasons", "backoff", "turns", "zones"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
GRPC_ALLOWED = {"cli", "admin_cli", "server", "authoring", "logging", "api", "client"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        if rel.parts[1] == "v1":
            continue
        parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports (absolute, resolved), at any depth of its code."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graph() -> dict[str, set[str]]:
    """Module -> modules it imports. A module's own parent packages are left out: Python
    initialises them before the module anyway (``from . import ast`` is not a cycle)."""
    modules = _modules()
    return {m: {i for i in _imports(m, p) if i in modules and i != m
                and not m.startswith(i + ".")}
            for m, p in modules.items()}


def test_every_package_has_a_layer() -> None:
    assert {_package(m) for m in _modules()} - {"pdp"} <= set(LAYER)


def test_imports_only_go_down() -> None:
    wrong = []
    for module, targets in _graph().items():
        src = _package(module)
        if src == "pdp":
            continue
        for t in targets:
            dst = _package(t)
            if dst in (src, "pdp"):
                continue
            if LAYER[dst] <= LAYER[src]:
                wrong.append(f"{module} -> {t}")
    assert not wrong, "imports that go sideways or up:\n" + "\n".join(sorted(wrong))


def test_nothing_below_the_api_knows_grpc_or_protobuf_messages() -> None:
    wrong = []
    for module, path in _modules().items():
        if _package(module) in GRPC_ALLOWED or _package(module) == "pdp":
            continue
        for i in _imports(module, path):
            if i == "grpc" or i.startswith(("grpc.", "grpc_", "pdp.v1")):
                wrong.append(f"{module} -> {i}")
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles
