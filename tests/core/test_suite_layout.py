"""The test suite's own layout: what test modules share lives in tests/support/ (or a conftest.py),
never in another test module. Importing a test module pulls its fixtures and module-level set-up
into the importer, and ties two files that look independent: moving or deleting one breaks the other."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _test_module(dotted: str) -> str | None:
    """The test module a dotted import name is in or is (`tests.a.test_b.name` -> `tests.a.test_b`)."""
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        if part.startswith("test_"):
            return ".".join(parts[: index + 1])
    return None


def imported_test_modules(source: str) -> set[str]:
    """Test modules `source` imports: at the top, lazily inside a function, or in a script it hands
    to a subprocess as a string."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or module.split(".")[0] == "tests":
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            with contextlib.suppress(SyntaxError):  # prose, not a script
                found |= imported_test_modules(node.value)
        found |= {module for name in names if (module := _test_module(name))}
    return found


def test_no_test_module_is_imported_by_another_file_of_the_suite() -> None:
    offenders = sorted(
        f"{path.relative_to(TESTS.parent)} imports {name}"
        for path in TESTS.rglob("*.py")
        # This file's examples below are such imports, in a string.
        if path != Path(__file__).resolve()
        for name in sorted(imported_test_modules(path.read_text()))
    )
    assert offenders == []


def test_the_check_sees_every_way_of_importing_a_test_module() -> None:
    source = '''
from tests.stages.policy.test_budgets_policies import llm_span
import tests.core.test_pipeline
from tests.transport import test_http_port
from .test_ledger import priced
from tests.support.otlp_builders import span

def lazy():
    from tests.billing.test_ledger import NOON_NS

SCRIPT = """
from tests.stages.policy.test_operation_totals import build
"""
DOC = "run `python -m tests.stages.redaction.test_redaction_corpus` for the table"
'''
    assert imported_test_modules(source) == {
        "tests.stages.policy.test_budgets_policies",
        "tests.core.test_pipeline",
        "tests.transport.test_http_port",
        ".test_ledger",
        "tests.billing.test_ledger",
        "tests.stages.policy.test_operation_totals",
    }
