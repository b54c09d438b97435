"""Under CI a skipped test fails (tests/conftest.py), so a tool .ci/run stopped installing shows."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

SUITE = """
import pytest

def test_needs_a_tool():
    pytest.skip("frobnicator is not installed")

@pytest.mark.skipif(True, reason="no widget")
def test_marked():
    pass

@pytest.mark.xfail(strict=True, reason="a known gap")
def test_known_gap():
    assert False

def test_plain():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(SUITE)
    pytester.makepyfile(test_needs_a_module='import pytest\npytest.importorskip("no_such_module_here")\n')
    return pytester


@pytest.mark.parametrize("value", ["1", "true"])
def test_under_ci_a_skip_fails_with_its_reason(suite, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    # (A collection error stops a run by default, which fails it too; here the rest runs on to be counted.)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--continue-on-collection-errors")
    # A skip at setup (a skipif mark) shows as an error, one in the test body as a failure: both fail the run.
    # The module skipped at import counts as a collection error.
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped under CI*frobnicator is not installed*", "*skipped under CI*no widget*"])
    result.stdout.fnmatch_lines(["*skipped under CI*no_such_module_here*"])


@pytest.mark.parametrize("value", [None, "0", ""])
def test_outside_ci_a_missing_tool_skips(suite, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
