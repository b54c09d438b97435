"""processor/_otlp_native.pyi describes the extension as built: every function, class and method the
stub names exists, with the same parameter names, and every public name the module exports is in
the stub (mypy checks the Python callers against it)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

native = pytest.importorskip("processor._otlp_native")

STUB = ast.parse((Path(__file__).resolve().parents[2] / "processor" / "_otlp_native.pyi").read_text())


def stub_parameters(function: ast.FunctionDef) -> list[str]:
    names = [a.arg for a in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs)]
    return [name for name in names if name != "self"]


def runtime_parameters(obj: object) -> list[str]:
    signature = getattr(obj, "__text_signature__", None)
    assert signature, f"{obj!r} has no signature"
    text = signature.replace("$self", "self").replace("$type", "cls")
    names = [p for p in inspect.signature(_parsed(text)).parameters]
    return [name for name in names if name not in ("self", "cls", "args", "kwargs")]


def _parsed(text: str):
    namespace: dict[str, object] = {}
    exec(f"def f{text.replace('=...', '=None')}: pass", namespace)  # a signature string, from the extension
    return namespace["f"]


def _runtime_class(name: str) -> object:
    """A stubbed class; an underscored one is not exported and is reached through what returns it."""
    if name == "_TotalValue":
        totals = native.OperationTotals(1)
        return type(totals.value(totals.new_series(), 0))
    return getattr(native, name)


def stub_entries():
    for node in STUB.body:
        if isinstance(node, ast.FunctionDef):
            yield node.name, None, node
        elif isinstance(node, ast.ClassDef):
            yield node.name, None, None
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield node.name, item.name, item


# _OperationGroups is made only by PolicyPlan.run on a real batch (tests/stages/policy/test_policy_native.py uses it).
CHECKED = [entry for entry in stub_entries() if entry[0] != "_OperationGroups"]


@pytest.mark.parametrize(("owner", "method", "node"), CHECKED, ids=lambda v: getattr(v, "name", v))
def test_each_stubbed_name_exists_with_its_parameters(owner, method, node):
    obj = _runtime_class(owner)
    if method is None and node is None:
        assert isinstance(obj, type)
        return
    if method is not None:
        if method == "__init__":
            # pyo3 puts a class's constructor signature on the class.
            assert stub_parameters(node) == runtime_parameters(obj)
            return
        obj = getattr(obj, method)
    if method == "__len__":
        return
    assert stub_parameters(node) == runtime_parameters(obj)


def test_every_exported_name_is_in_the_stub():
    stubbed = {name for name, _, _ in stub_entries()}
    exported = {name for name in dir(native) if not name.startswith("_")}
    assert exported <= stubbed, exported - stubbed
