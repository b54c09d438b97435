"""Operator mistakes, through the real `genops-sidecar` command: one clear line, no traceback.

Each wrong value is tried at `validate-config` and at `serve` (which must refuse to start);
the message names the setting, so the operator knows what to fix.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from processor.config import SidecarConfig, load_config, setting_env_names, unknown_environment
from tests.support.cli import assert_one_clear_line, base_env, run_cli
from tests.support.serve import terminate, wait_ready

REPO = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdef0123456789abcdef"


def nested_groups(depth: int) -> str:
    return "(" * depth + "a" + ")" * depth


# (case id, config file text, extra environment, setting the message must name)
CASES = [
    ("recv-size-overflows-grpc", "server: {max_recv_message_size_mib: 100000}\n", {}, "max_recv_message_size_mib"),
    ("recv-size-zero", "server: {max_recv_message_size_mib: 0}\n", {}, "max_recv_message_size_mib"),
    ("recv-size-negative", "server: {max_recv_message_size_mib: -1}\n", {}, "max_recv_message_size_mib"),
    ("recv-size-fraction", "server: {max_recv_message_size_mib: 1.9}\n", {}, "max_recv_message_size_mib"),
    ("recv-size-bool", "server: {max_recv_message_size_mib: true}\n", {}, "max_recv_message_size_mib"),
    ("send-size-overflows-grpc", "downstream: {max_send_message_size_mib: 4096}\n", {}, "max_send_message_size_mib"),
    ("negative-grace", "server: {shutdown_grace_seconds: -5}\n", {}, "shutdown_grace_seconds"),
    ("nan-timeout", "downstream: {timeout_seconds: .nan}\n", {}, "downstream.timeout_seconds"),
    ("workers-string", "server: {workers: '2'}\n", {}, "server.workers"),
    ("bool-as-string", "cost: {enabled: 'yes'}\n", {}, "cost.enabled"),
    ("int-as-bool", "redaction: {enabled: 0}\n", {}, "redaction.enabled"),
    ("list-as-header-value", "downstream: {headers: {x-tenant: [a, b]}}\n", {}, "downstream.headers.x-tenant"),
    ("number-as-string", "downstream: {endpoint: 4317}\n", {}, "downstream.endpoint"),
    ("section-false", "redaction: false\n", {}, "redaction"),
    ("section-list", "policy: []\n", {}, "policy"),
    ("section-zero", "cost: 0\n", {}, "cost"),
    ("nested-section-scalar", "downstream: {tls: true}\n", {}, "downstream.tls"),
    ("unknown-choice", "logging: {format: xml}\n", {}, "logging.format"),
    ("mistyped-env", "", {"GENOPS_SERVER_WORKRES": "2"}, "GENOPS_SERVER_WORKRES"),
    ("section-env", "", {"GENOPS_REDACTION": "false"}, "GENOPS_REDACTION"),
    ("env-out-of-range", "", {"GENOPS_SERVER_MAX_RECV_MESSAGE_SIZE_MIB": "100000"}, "max_recv_message_size_mib"),
    ("env-not-a-number", "", {"GENOPS_SERVER_SHUTDOWN_GRACE_SECONDS": "soon"}, "shutdown_grace_seconds"),
    ("blank-hash-key", "", {"GENOPS_REDACTION_HASH_KEY": " "}, "GENOPS_REDACTION_HASH_KEY"),
    (
        "blank-hash-key-renamed",
        "redaction: {hash_key_env: MY_HASH_KEY}\n",
        {"MY_HASH_KEY": "\t \n"},
        "MY_HASH_KEY",
    ),
    ("blank-budget-token", "", {"GENOPS_BUDGET_API_TOKEN": "  "}, "GENOPS_BUDGET_API_TOKEN"),
    ("short-budget-token", "", {"GENOPS_BUDGET_API_TOKEN": "secret"}, "GENOPS_BUDGET_API_TOKEN"),
    ("state-path-directory", "policy: {state_path: STATE_DIR}\n", {}, "policy.state_path"),
    ("state-path-corrupt", "policy: {state_path: CORRUPT_FILE}\n", {}, "policy.state_path"),
    ("regex-5000-nested-groups", "redaction: {rules_file: DEEP_RULES}\n", {}, "rule 'deep'"),
]


def write_case(tmp_path: Path, text: str) -> Path:
    state_dir = tmp_path / "state-dir"
    state_dir.mkdir(exist_ok=True)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a SQLite database\n" * 100)
    rules = tmp_path / "deep-rules.yaml"
    rules.write_text(f"rules:\n  - name: deep\n    pattern: '{nested_groups(5000)}'\n    action: mask\n")
    text = text.replace("STATE_DIR", str(state_dir)).replace("CORRUPT_FILE", str(corrupt))
    text = text.replace("DEEP_RULES", str(rules))
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "environ", "setting"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_a_wrong_setting_is_one_clear_line_at_validate_config(tmp_path, text, environ, setting):
    path = write_case(tmp_path, text)
    result = run_cli({**base_env(tmp_path), **environ}, "validate-config", str(path))
    assert_one_clear_line(result, setting)


@pytest.mark.parametrize(("text", "environ", "setting"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_a_wrong_setting_is_one_clear_line_at_serve(tmp_path, text, environ, setting):
    path = write_case(tmp_path, text)
    result = run_cli({**base_env(tmp_path), **environ}, "serve", "--config", str(path))
    assert_one_clear_line(result, setting)


@pytest.mark.parametrize("which", ["GENOPS_SERVER_LISTEN", "GENOPS_HTTP_LISTEN"])
def test_a_port_in_use_is_one_clear_line_at_serve(tmp_path, which):
    env = base_env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env[which] = f"127.0.0.1:{taken.getsockname()[1]}"
        env["GENOPS_POLICY_STATE_BACKEND"] = "memory"
        result = run_cli(env, "serve")
    setting = "server.listen" if which == "GENOPS_SERVER_LISTEN" else "http.listen"
    assert_one_clear_line(result, setting)
    assert "in use" in result.stderr


@pytest.mark.parametrize("order", ["after", "before"])
def test_config_is_accepted_before_and_after_the_command(tmp_path, order):
    env = base_env(tmp_path)
    http = env.pop("GENOPS_HTTP_LISTEN")
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"http: {{listen: '{http}'}}\npolicy: {{state_backend: memory}}\n")
    args = ["serve", "--config", str(path)] if order == "after" else ["--config", str(path), "serve"]
    process = subprocess.Popen(
        [sys.executable, "-m", "processor", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(process, http)  # the HTTP port comes from the file: the file was read
    finally:
        terminate(process)
    validated = run_cli(env, "validate-config", "--config", str(path))
    assert validated.returncode == 0, validated.stderr
    assert str(path) in validated.stdout


_ENV_NAME = r"\bGENOPS_[A-Z0-9_]*[A-Z0-9]\b"
_QUOTED_ENV_NAME = r"(?<=[\"'])GENOPS_[A-Z0-9_]*[A-Z0-9]\b"


def test_every_genops_variable_named_in_the_repository_is_known(tmp_path):
    """The k8s manifests, the Collector config, docs and tests use GENOPS_* names: each must be a
    setting or a known non-setting variable, or a pod started with them would refuse to start."""
    names: set[str] = set()
    for folder in ("k8s", "collector-config", "processor", "tests", "benchmarks"):
        for file in (REPO / folder).rglob("*"):
            if file.is_file() and file.suffix in (".py", ".yaml", ".yml", ".md", ".sh", ""):
                # In Python, the names in string literals (not constants such as GENOPS_MODEL).
                pattern = _QUOTED_ENV_NAME if file.suffix == ".py" else _ENV_NAME
                names |= set(re.findall(pattern, file.read_text(errors="replace")))
    names |= set(re.findall(r"\bGENOPS_[A-Z0-9_]*[A-Z0-9]\b", (REPO / "README.md").read_text()))
    mistakes = {"GENOPS_SERVER_WORKRES", "GENOPS_REDACTION"}  # the deliberate typos above
    assert unknown_environment(SidecarConfig(), names - mistakes) == []
    assert "GENOPS_SERVER_WORKERS" in setting_env_names()


def test_settings_from_the_environment_are_parsed_and_range_checked():
    config = load_config(
        None,
        environ={
            "GENOPS_SERVER_MAX_RECV_MESSAGE_SIZE_MIB": "2047",
            "GENOPS_SERVER_SHUTDOWN_GRACE_SECONDS": "0",
            "GENOPS_LOGGING_LEVEL": "DEBUG",
            "GENOPS_BUDGET_API_TOKEN": TOKEN,
            "GENOPS_NATIVE_DECODE": "0",
        },
    )
    assert config.server.max_recv_message_size_mib == 2047
    assert config.server.shutdown_grace_seconds == 0.0
    assert config.logging.level == "debug"


def test_an_empty_section_keeps_its_defaults(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("redaction:\npolicy: {}\n")
    config = load_config(path, environ={})
    assert config.redaction == SidecarConfig().redaction
    assert config.policy == SidecarConfig().policy
