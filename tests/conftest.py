"""Suite-wide rules and fixtures. Under CI (CI set to 1/true, as .ci/run does) a skipped test fails instead: each
test that needs a tool (kustomize, promtool, redis-server, valgrind, the Collector, the native
extension) skips on a developer's machine without it, but CI installs all of them, so a skip there
means .ci/run lost an install step and the test silently stopped running."""

from __future__ import annotations

import os

import pytest

REQUIRE_TOOLS_ENV = "CI"


def tools_required() -> bool:
    return os.environ.get(REQUIRE_TOOLS_ENV, "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) is reported as skipped too: it is not a missing tool.
    if report.skipped and not hasattr(report, "wasxfail") and tools_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI ({REQUIRE_TOOLS_ENV} is set), .ci/run must provide it: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    # A whole module skipped at import (pytest.importorskip at the top of a test file).
    if report.skipped and tools_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI ({REQUIRE_TOOLS_ENV} is set), .ci/run must provide it: {reason}"


pytest_plugins = ["pytester"]


@pytest.fixture
def sink():
    """A real OTLP/gRPC receiver on 127.0.0.1 standing in for the Collector the sidecar forwards to."""
    # Imported here: tests/test_ci_skips.py runs this file alone, outside the tests package.
    from tests.support.otlp_sink import OtlpSink

    sink = OtlpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, one per test module."""
    from tests.support.collector_harness import free_port
    from tests.support.redis_server import start_redis

    port = free_port()
    process = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture(params=["1", "0"], ids=["native", "python"])
def engine(request, monkeypatch):
    """The test once with the native decoder and once with the pure-Python one (GENOPS_NATIVE_DECODE)."""
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", request.param)
    return request.param
