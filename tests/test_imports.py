"""The floor plan holds: imports go one way (dashboard and CLI, then reconcile, then counting, then
the models, then data, store and evaluation), with no circle, and product code never imports tests."""
from __future__ import annotations

import ast
from pathlib import Path

from core.config import PROJECT_ROOT

PRODUCT = ("core", "dashboard", "bench", "train.py")
# Top to bottom; a package may import its own rank and those below it, never one above.
RANKS = [
    ("dashboard", "bench", "train"),
    ("core.reconcile",),
    ("core.counting",),
    ("core.training",),
    ("core.cnn", "core.classical"),
    ("core.runs",),
    ("core.data",),
    ("core.store",),
    ("core.evaluation",),
    ("core.config", "core"),
]
RANK = {package: len(RANKS) - i for i, packages in enumerate(RANKS) for package in packages}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    files = [PROJECT_ROOT / "train.py"] + [f for top in PRODUCT[:-1] for f in (PROJECT_ROOT / top).rglob("*.py")]
    return {module_name(f): f for f in files}


def imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """What `path` imports, anywhere in it (deferred imports in functions count), as module names;
    `from package import module` names the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names)
    return found


def package_of(module: str) -> str:
    """The ranked package a module belongs to: its longest prefix in RANK."""
    parts = module.split(".")
    return next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in RANK)


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {name: {m for m in imported(path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, as the nodes along it, or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := walk(nxt)):
                return circle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (circle := walk(node)):
            return circle
    return None


def test_every_product_module_has_a_rank():
    assert all(package_of(m) for m in product_modules())
    assert {package_of(m) for m in product_modules() if m.startswith("core.")} >= {
        "core.reconcile", "core.counting", "core.training", "core.cnn", "core.classical", "core.runs", "core.data",
        "core.store", "core.evaluation"}


def test_no_import_goes_back_up():
    upward = sorted(f"{a} imports {b} ({package_of(a)} is below {package_of(b)})"
                    for a, targets in import_graph().items() for b in targets
                    if RANK[package_of(b)] > RANK[package_of(a)])
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules_or_packages():
    graph = import_graph()
    assert find_circle(graph) is None, " -> ".join(find_circle(graph) or [])
    packages: dict[str, set[str]] = {}
    for a, targets in graph.items():
        packages.setdefault(package_of(a), set()).update(
            package_of(b) for b in targets if package_of(b) != package_of(a))
    assert find_circle(packages) is None, " -> ".join(find_circle(packages) or [])


def test_product_code_never_imports_tests():
    modules = product_modules()
    offending = sorted(name for name, path in modules.items()
                       if any(m == "tests" or m.startswith("tests.") for m in imported(path, modules)))
    assert not offending, offending


def test_the_checks_see_a_circle_and_an_upward_import():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert RANK[package_of("core.data.dataset")] < RANK[package_of("core.reconcile.recount_labels")]
