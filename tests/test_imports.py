"""The house's floors, read from the source: `models/` (pure torch) under `worker/` under
`service/`, `training/` and `bench/` beside them; no module imports upward, and no two modules
import each other, even inside a function or under TYPE_CHECKING (both still tie the two together
for a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("models", "worker", "service", "training", "bench")
# What each package may import from the others.
ALLOWED = {"models": set(), "worker": {"models"}, "service": {"models", "worker"},
           "training": {"models", "service"}, "bench": {"models", "worker", "service", "training"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The project modules `path` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from . import repaint` names a module too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in files and m != name} for name, path in files.items()}


def test_no_package_imports_a_floor_above_it():
    upward = sorted((name, m) for name, deps in graph().items() for m in deps
                    if m.split(".")[0] != name.split(".")[0] and m.split(".")[0] not in ALLOWED[name.split(".")[0]])
    assert upward == []


def test_no_import_circles():
    edges = graph()
    # A package's __init__ importing its own submodules (re-exports, lazily) is not a circle a
    # reader follows: leave those edges out.
    edges = {name: {m for m in deps if not (name + "." == m[: len(name) + 1] and
                                             (ROOT / name.replace(".", "/") / "__init__.py").exists())}
             for name, deps in edges.items()}
    circles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert circles == []
