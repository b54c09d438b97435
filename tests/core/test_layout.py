"""The package's layout: no import cycles between modules, and imports that point down the layers
ARCHITECTURE.md draws (a stage never imports transport; core never imports a stage)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "processor"

# Lower layers first; a module may import its own layer and the ones below it.
LAYERS = ["files", "core", "stages", "billing", "transport", "cli"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for p in PACKAGE.rglob("*.py")
        if "protos" not in p.parts and "native" not in p.relative_to(PACKAGE).parts[:1]
    }


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every processor module `path` imports, lazily or not (a lazy import still ties the two)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # A package's __init__ is not a dependency of what imports a module inside it.
    return {
        name: _imports(path, known) - {name} - {m for m in known if name.startswith(m + ".")}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert _cycle(_graph()) is None


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_imports_point_down_the_layers(layer: str) -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if _layer(module) == LAYERS.index(layer)
        for target in targets
        if (target_layer := _layer(target)) is not None and target_layer > LAYERS.index(layer)
    )
    assert upward == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
