"""The layout keeps its shape: the shared core imports no service, and no two files import
each other in a circle (issue 12). Walks every import with ``ast`` — module level, inside
functions and under ``TYPE_CHECKING`` alike — so a new arrow running back up fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "chatscale",
    "guilds",
    "gateway",
    "workers",
    "presence",
    "storage",
    "loadtest",
    "ops",
    "lab",
    "dashboard",
    "voice",
)
# The core may import only itself and storage's interfaces; everything above it is a service.
ABOVE_CORE = (
    "gateway",
    "workers",
    "presence",
    "loadtest",
    "guilds",
    "ops",
    "lab",
    "dashboard",
    "voice",
)
CORE_WIRING = {"chatscale.cli", "chatscale.__main__"}  # the entry point wires commands together


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts ``a.b`` if a module)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for candidate in candidates:
                # the most specific project module the import names
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_core_imports_no_service() -> None:
    graph = _imports(_modules())
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.startswith("chatscale") and module not in CORE_WIRING
        for target in targets
        if target.split(".")[0] in ABOVE_CORE
    )
    assert not wrong, "the shared core must not import the services above it:\n" + "\n".join(wrong)


def test_no_import_cycle_between_files() -> None:
    cycles = _cycles(_imports(_modules()))
    assert not cycles, "files that import each other in a circle:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_the_walk_sees_a_cycle() -> None:
    """The checker itself: a made-up circle is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


#: The layers of the README's picture, top to bottom: a module imports only its own package and
#: packages of lower layers (the CLI entry point, which wires every command, excepted).
LAYERS = (
    ("dashboard",),
    ("lab",),
    ("loadtest",),
    ("ops",),
    ("gateway", "workers", "voice"),
    ("presence", "guilds"),
    ("storage",),
    ("chatscale",),
)


def test_packages_import_only_the_layers_below_them() -> None:
    rank = {package: i for i, layer in enumerate(LAYERS) for package in layer}
    assert set(rank) == set(PACKAGES), "every package has a layer"
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _imports(_modules()).items()
        if module not in CORE_WIRING
        for target in targets
        if (a := module.split(".")[0]) != (b := target.split(".")[0]) and rank[b] <= rank[a]
    )
    assert not upward, "an arrow runs up or sideways across layers:\n" + "\n".join(upward)
