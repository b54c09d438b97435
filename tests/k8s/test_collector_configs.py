"""The Collector configs we ship are accepted by the Collector we build, and wire the sidecar loop."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.support.collector_harness import (
    BUILD_SCRIPT,
    BUILDER_MANIFEST,
    COLLECTOR_CONFIG_DIR,
    SHIPPED_COLLECTOR_CONFIG,
    CollectorPorts,
    loop_collector_env,
    otelcol_binary,
)

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def _load(path: Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle) or {}


def collector_configs() -> list[Path]:
    """Every YAML file under collector-config/ that is a Collector config (it has a service section)."""
    paths = sorted([*COLLECTOR_CONFIG_DIR.rglob("*.yaml"), *COLLECTOR_CONFIG_DIR.rglob("*.yml")])
    return [path for path in paths if path != BUILDER_MANIFEST and "service" in _load(path)]


def test_the_shipped_sidecar_config_is_among_the_validated_configs():
    assert SHIPPED_COLLECTOR_CONFIG in collector_configs()
    assert BUILDER_MANIFEST not in collector_configs()


def validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`otelcol validate` of one config file under the given environment."""
    return subprocess.run(
        [str(otelcol_binary()), "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.e2e
@pytest.mark.parametrize("config", collector_configs(), ids=lambda p: str(p.relative_to(COLLECTOR_CONFIG_DIR)))
def test_collector_accepts_config_with_its_defaults(config: Path):
    # Validation with a bare environment proves every ${env:...} reference has a usable default.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENOPS_")}
    result = validate(config, env)
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_collector_accepts_the_env_overrides_the_tests_use():
    env = {
        **os.environ,
        **loop_collector_env(CollectorPorts(), "127.0.0.1:1", "127.0.0.1:2"),
        "GENOPS_OTELCOL_RETRY_INITIAL_INTERVAL": "100ms",
    }
    result = validate(SHIPPED_COLLECTOR_CONFIG, env)
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_collector_rejects_a_non_boolean_backend_insecure_flag():
    # Guards against the flag silently turning into a string that the Collector ignores.
    env = {**os.environ, "GENOPS_BACKEND_INSECURE": "sometimes"}
    result = validate(SHIPPED_COLLECTOR_CONFIG, env)
    assert result.returncode != 0
    assert "insecure" in result.stderr


@pytest.mark.e2e
def test_build_script_returns_the_cached_binary_at_once_when_the_manifest_is_unchanged():
    first = otelcol_binary()
    if os.environ.get("GENOPS_OTELCOL_BIN"):
        pytest.skip("GENOPS_OTELCOL_BIN bypasses the build script")
    started = time.monotonic()
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=120, check=True)
    assert time.monotonic() - started < 30
    assert result.stdout == f"{first}\n"


def test_every_env_reference_in_the_shipped_config_has_a_default_and_is_documented():
    lines = SHIPPED_COLLECTOR_CONFIG.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    readme = (COLLECTOR_CONFIG_DIR / "README.md").read_text()
    refs = ENV_REF.findall(text)
    assert refs
    assert [name for name, default in refs if not default] == []
    assert sorted({name for name, _ in refs if name not in readme}) == []
    # A reference with a typo in its syntax would not match ENV_REF and be passed through literally.
    assert text.count("${") == len(refs)


def test_every_signal_loops_from_apps_through_the_sidecar_and_back_to_the_backend():
    service = _load(SHIPPED_COLLECTOR_CONFIG)["service"]
    pipelines = service["pipelines"]
    for signal in ("traces", "logs", "metrics"):
        apps = pipelines[f"{signal}/apps"]
        backend = pipelines[f"{signal}/backend"]
        assert apps["receivers"] == ["otlp"]
        assert apps["exporters"] == ["otlp_grpc/genops_sidecar"]
        assert apps["processors"][0] == "memory_limiter"
        assert backend["receivers"] == ["otlp/from_sidecar"]
        assert backend["exporters"] == ["otlp_grpc/backend"]
    assert "health_check" in service["extensions"]


def test_both_exporters_queue_and_retry_so_an_outage_on_either_leg_loses_nothing():
    exporters = _load(SHIPPED_COLLECTOR_CONFIG)["exporters"]
    for name in ("otlp_grpc/genops_sidecar", "otlp_grpc/backend"):
        assert exporters[name]["sending_queue"]["enabled"] is True
        assert exporters[name]["retry_on_failure"]["enabled"] is True
    sidecar = exporters["otlp_grpc/genops_sidecar"]
    assert sidecar["tls"]["insecure"] is True
    assert sidecar["compression"] == "none"


def test_the_return_receiver_listens_on_loopback_by_default():
    receivers = _load(SHIPPED_COLLECTOR_CONFIG)["receivers"]
    endpoint = receivers["otlp/from_sidecar"]["protocols"]["grpc"]["endpoint"]
    assert endpoint.endswith(":-127.0.0.1:4418}")
