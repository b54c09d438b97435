"""Pricing, policy, redaction-rule and config files that cannot exhaust the process: aliases and
deep nesting refused, sizes capped before parsing, regexes on a linear-time engine, errors short."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from processor.config import ConfigError, CostConfig, load_config
from processor.files.file_limits import MAX_DIRECTORY_BYTES, MAX_FILE_BYTES
from processor.files.isolated_load import LoadFailed, LoadStopped, load_isolated
from processor.files.safe_yaml import MAX_DEPTH, YamlError, load_yaml
from processor.stages.cost.pricing_table import PricingError, load_table
from processor.stages.cost.stage import CostStage
from processor.stages.policy.policy_file import PolicyFileError, load_policy_file
from processor.stages.redaction.rules import load_rules
from tests.support.cost_helpers import valid_table
from tests.support.hostile_files import ALIAS_BOMB, sparse

LONG_ERROR = 2000


@pytest.mark.parametrize(
    "text",
    [ALIAS_BOMB, "a: &x 1\nb: *x\n", "base: &b {x: 1}\nother: {<<: *b}\n"],
    ids=["bomb", "alias", "merge-key"],
)
def test_yaml_aliases_are_refused_with_one_short_line(text):
    with pytest.raises(YamlError, match="aliases") as refused:
        load_yaml(text)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


def test_yaml_nesting_is_bounded_and_anchors_alone_are_harmless():
    assert load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(YamlError, match="nested deeper"):
        load_yaml("[" * 100_000 + "]" * 100_000)
    assert load_yaml("a: &x 1\nb: 2\n") == {"a": 1, "b": 2}


def test_odd_yaml_values_are_an_error_not_a_traceback():
    with pytest.raises(YamlError, match="digits"):
        load_yaml("x: 1" + "0" * 10_000)


def test_pricing_alias_bomb_is_refused_without_expanding_it(tmp_path):
    (tmp_path / "p.yaml").write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 1000
    with pytest.raises(PricingError, match="aliases") as refused:
        load_table(tmp_path / "p.yaml")
    assert len(str(refused.value)) < LONG_ERROR


def test_pricing_json_nested_beyond_the_stack_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "p.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(PricingError, match="not valid JSON"):
        load_table(tmp_path / "p.json")


def test_policy_redaction_and_config_files_refuse_aliases(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("budgets:\n  - &b {name: x, limit_usd: 1, period: daily}\n  - *b\n")
    with pytest.raises(PolicyFileError, match="aliases"):
        load_policy_file(policy)
    rules = tmp_path / "rules.yaml"
    rules.write_text("ignored_keys: &k [a]\nallowed_keys: *k\n")
    with pytest.raises(ValueError, match="aliases"):
        load_rules(str(rules))
    config = tmp_path / "config.yaml"
    config.write_text("server: &s {workers: 1}\nhttp: *s\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(config, environ={})


def test_an_oversized_pricing_file_is_refused_before_parsing(tmp_path):
    sparse(tmp_path / "huge.yaml", 100 * 1024 * 1024)
    with pytest.raises(PricingError, match=r"over the 8\.0 MiB limit"):
        load_table(tmp_path / "huge.yaml")
    just_over = sparse(tmp_path / "just-over.yaml", MAX_FILE_BYTES + 1)
    with pytest.raises(PricingError, match="limit of one file"):
        load_table(just_over)


def test_a_pricing_directory_is_capped_in_total(tmp_path):
    each = MAX_FILE_BYTES - 1
    for index in range(MAX_DIRECTORY_BYTES // each + 1):
        sparse(tmp_path / f"part{index}.yaml", each)
    with pytest.raises(PricingError, match="limit of a directory"):
        load_table(tmp_path)


def test_oversized_policy_rules_and_config_files_are_refused(tmp_path):
    big = sparse(tmp_path / "big.yaml", MAX_FILE_BYTES + 1)
    with pytest.raises(PolicyFileError, match="limit of one file"):
        load_policy_file(big)
    with pytest.raises(ValueError, match="limit of one file"):
        load_rules(str(big))
    with pytest.raises(ConfigError, match="limit of one file"):
        load_config(big, environ={})


def test_a_fifo_is_refused_instead_of_blocking_the_read(tmp_path):
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PricingError, match="not a regular file"):
        load_table(fifo)


def test_error_messages_never_echo_a_huge_value(tmp_path):
    (tmp_path / "p.yaml").write_text(
        f'version: "1"\nprovider: openai\nmodels: [{{model: "{"m" * 500_000}", input: "{"x" * 1_000_000}"}}]\n'
    )
    with pytest.raises(PricingError) as refused:
        load_table(tmp_path / "p.yaml")
    assert "must be a number" in str(refused.value)
    assert len(str(refused.value)) < LONG_ERROR
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"budgets: [{{name: x, limit_usd: '{'9' * 1_000_000}', period: daily}}]\n")
    with pytest.raises(PolicyFileError) as refused_policy:
        load_policy_file(policy)
    assert len(str(refused_policy.value)) < LONG_ERROR


def regex_table(tmp_path: Path, pattern: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        f'version: "1"\nprovider: openai\nmodels:\n  - {{model: {json.dumps(pattern)}, match: regex, input: 1}}\n'
        "  - {model: gpt-4o, input: 2.5}\n"
    )
    return path


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("gpt-(?!4).*", "look-around"),
        (r"(gpt)-\1", "backreferences"),
        ("(" * 5000 + "x" + ")" * 5000, "nested"),
        ("x{1000}{1000}", "size limit"),
    ],
    ids=["lookahead", "backreference", "5000-groups", "too-big"],
)
def test_regexes_the_linear_engine_refuses_are_load_errors(tmp_path, pattern, reason):
    with pytest.raises(PricingError, match=reason) as refused:
        load_table(regex_table(tmp_path, pattern))
    assert len(str(refused.value)) < LONG_ERROR


def test_a_catastrophic_regex_matches_in_linear_time(tmp_path):
    # On Python's backtracking `re`, 40 characters against (a+)+b take days, so the child would
    # run past its timeout; on a linear-time engine it is instant.
    path = regex_table(tmp_path, "(a+)+b")
    probe = (
        "from processor.stages.cost.pricing_table import load_table; import sys; t = load_table(sys.argv[1]);"
        "print(t.resolve('openai', 'a' * 40), t.resolve('openai', 'aaab') is not None, t.resolve('openai', 'gpt-4o'))"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "True", "1"]


def test_regex_entries_match_whole_names_case_insensitively_in_file_order(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        'version: "1"\nprovider: openai\nmodels:\n'
        "  - {model: 'ft:gpt-4o:.*', match: regex, input: 1}\n"
        "  - {model: 'ft:.*', match: regex, input: 2}\n"
    )
    table = load_table(path)
    assert table.entry(table.resolve("openai", "FT:GPT-4O:acme")).model == "ft:gpt-4o:.*"
    assert table.entry(table.resolve("openai", "ft:o1:acme")).model == "ft:.*"
    assert table.resolve("openai", "x-ft:o1") is None


def test_policy_model_globs_the_engine_cannot_compile_are_load_errors(tmp_path):
    policy = tmp_path / "policy.yaml"
    # Each glob is short; together they compile past the engine's size limit.
    globs = ", ".join(f"'*{i}*x{i}*'" for i in range(40_000))
    policy.write_text(f"policies: [{{name: models, type: model_access, allow: [{globs}]}}]\n")
    with pytest.raises(PolicyFileError, match="allow patterns cannot be used") as refused:
        load_policy_file(policy)
    assert len(str(refused.value)) < LONG_ERROR


def test_redaction_key_patterns_the_engine_refuses_are_load_errors(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: r, key_patterns: ['(?<=a)b'], action: drop}]\n")
    with pytest.raises(ValueError, match="look-around"):
        load_rules(str(rules))


def endless_load(path: Path) -> None:
    time.sleep(3600)


def failing_load(path: Path) -> None:
    raise ValueError("x" * 100_000)


def loader_children() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                parent = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
            if b"processor.files.isolated_load" in cmdline and int(parent) == os.getpid():
                found.append(int(entry))
    return found


def test_an_isolated_load_is_killed_when_the_caller_stops(tmp_path):
    stop = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            load_isolated(endless_load, tmp_path, timeout=3600, stop=stop)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not loader_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loader_children(), "the loader child never started"
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome[0], LoadStopped)
    assert loader_children() == []


def test_an_isolated_load_past_its_time_is_killed_and_reported(tmp_path):
    with pytest.raises(LoadFailed, match="took more than"):
        load_isolated(endless_load, tmp_path, timeout=0.5, stop=threading.Event())
    assert loader_children() == []


def test_an_isolated_load_returns_the_value_or_a_short_error(tmp_path):
    (tmp_path / "p.yaml").write_text(valid_table("v7"))
    table = load_isolated(load_table, tmp_path, timeout=60, stop=threading.Event())
    assert table.version == "v7" and table.resolve("openai", "gpt-4o") is not None
    with pytest.raises(LoadFailed) as failed:
        load_isolated(failing_load, tmp_path, timeout=60, stop=threading.Event())
    assert len(str(failed.value)) < LONG_ERROR


@pytest.mark.parametrize("bad", ["bomb", "oversized", "regex"])
def test_a_bad_reload_keeps_the_previous_table_and_counts_invalid(tmp_path, bad):
    path = tmp_path / "p.yaml"
    path.write_text(valid_table("v1"))
    registry = CollectorRegistry()
    stage = CostStage(CostConfig(pricing_file=str(path), reload_interval_seconds=0), registry)
    if bad == "bomb":
        path.write_text(ALIAS_BOMB)
    elif bad == "oversized":
        sparse(path, 100 * 1024 * 1024)
    else:
        regex_table(tmp_path, "(?=gpt)gpt.*")
    assert stage.watcher.check() is False
    assert stage.table.version == "v1"
    assert registry.get_sample_value("genops_pricing_reload_total", {"outcome": "invalid"}) == 1
    assert registry.get_sample_value("genops_pricing_reload_success") == 0
