"""The packages import downward only, and no module imports itself back through others.

Read from the code (every ``import``, at the top of a module or inside a function, since
a late import hides a dependency without removing it):

    stack/ (the `dip` command)      dip_client/ (HTTP only)
        │        │                       │
      api/     worker/    ── never each other ──
        │        │
        core/ (settings, job store, results layout, wire models, queue, processes)
        │
        dip_engine/ (plain PyTorch)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dip_engine", "core", "api", "worker", "stack", "dip_client")
ALLOWED: dict[str, set[str]] = {
    "dip_engine": set(),
    "core": {"dip_engine"},
    "api": {"core", "dip_engine"},
    "worker": {"core", "dip_engine"},
    "dip_client": {"core", "dip_engine"},
    "stack": {"core", "dip_engine", "api", "worker", "dip_client"},
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The first-party modules ``name`` imports (a package's ``__init__`` when a name is not a module)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names]
            targets = [t if t in known else module for t in targets]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: sorted(set(imports(name, path, modules()))) for name, path in modules().items()}


def test_the_graph_was_read() -> None:
    assert "core.store" in GRAPH["api.main"] and "core.queue" in GRAPH["worker.recovery"]
    assert len(GRAPH) > 60


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = [f"{name} imports {target}" for name, targets in GRAPH.items() if name.split(".")[0] == package
             for target in targets if target.split(".")[0] not in {package, *ALLOWED[package]}]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back() -> None:
    """No cycle between modules, whether a package's ``__init__`` re-exports them or not."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in GRAPH.get(name, []):
            if name.startswith(target + "."):  # a module importing its own package's __init__ siblings
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target] if target in path else [name, target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_redis_stays_inside_the_job_store() -> None:
    """Callers see ``StoreError`` / ``StoreUnavailable``; only ``core.store`` (and the server ``dip serve`` runs) talk Redis."""
    users = sorted(name for name, path in modules().items()
                   if any(isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                       (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0] == "redis"
                       for alias in node.names)
                          for node in ast.walk(ast.parse(path.read_text()))))
    outside = [name for name in users if not (name.startswith("core.store")
                                              or name in ("stack.redis_server", "stack.sentinel"))]
    assert not outside, outside
    assert "core.store.errors" in users
