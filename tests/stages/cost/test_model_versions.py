"""Version-safe matching: a prefix entry prices its own name and that name's snapshots, never
another version of the model; a name only near a family is estimated (or unpriced), never priced,
on the native path and the polars path alike."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import ConfigError, CostConfig, load_config
from processor.stages.cost.model_versions import is_snapshot_of
from processor.stages.cost.native import native_cost_available
from processor.stages.cost.pricing_table import load_table
from processor.stages.cost.stage import CostStage
from tests.support.cost_helpers import process
from tests.support.native_switch import native

FAMILIES = """\
version: "versions-1"
models:
  - {provider: openai, model: gpt-5, match: prefix, input: 1.25, output: 10}
  - {provider: openai, model: gpt-4, match: prefix, input: 30, output: 60}
  - {provider: anthropic, model: claude-opus-4, match: prefix, input: 15, output: 75}
  - {provider: anthropic, model: claude-opus-4-1, match: prefix, input: 15, output: 75}
  - {provider: aws.bedrock, model: anthropic.claude-sonnet-4-5, match: prefix, input: 3, output: 15}
  - {provider: google, model: gemini-2.0-flash, match: prefix, input: 0.1, output: 0.4}
  - {provider: mistral, model: mistral-small, match: prefix, input: 0.1, output: 0.3}
  - {provider: acme, model: zeta, match: prefix, input: 1, output: 1}
"""

SNAPSHOTS = [
    ("gpt-5-2025-08-07", "gpt-5"),
    ("gpt-5-20250807", "gpt-5"),
    ("gpt-4-0613", "gpt-4"),
    ("claude-opus-4-20250514", "claude-opus-4"),
    ("claude-opus-4@20250514", "claude-opus-4"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-sonnet-4-5"),
    ("anthropic.claude-sonnet-4-5-v2:0", "anthropic.claude-sonnet-4-5"),
    ("anthropic.claude-sonnet-4-5:0", "anthropic.claude-sonnet-4-5"),
    ("gemini-2.0-flash-001", "gemini-2.0-flash"),
    ("gemini-2.0-flash@001", "gemini-2.0-flash"),
    ("gemini-2.0-flash@latest", "gemini-2.0-flash"),
    ("zeta-2031-12-31", "zeta"),
    ("zeta_20310101", "zeta"),
]
# An entry ending inside a snapshot suffix stands for the name before it.
FRAGMENT_SNAPSHOTS = [
    ("claude-sonnet-4-20250514", "claude-sonnet-4-2025"),
    ("claude-sonnet-4@20250514", "claude-sonnet-4@"),
    ("gpt-4-0613", "gpt-4-0"),
    ("zeta-20310101-v1:0", "zeta-2031"),
]
OTHER_MODELS = [
    ("gpt-5.2", "gpt-5"),
    ("gpt-5-mini", "gpt-5"),
    ("gpt-5.1-codex", "gpt-5"),
    ("gpt-5-2025-08-07-mini", "gpt-5"),
    ("claude-opus-4-6", "claude-opus-4"),
    ("claude-opus-4-1", "claude-opus-4"),
    ("gemini-2.0-flash-preview", "gemini-2.0-flash"),
    ("gemini-2.0-flash-exp", "gemini-2.0-flash"),
    ("mistral-small-latest", "mistral-small"),
    ("mistral-small-2506", "mistral-small"),  # Mistral's year-month versions are new models
    ("gpt-4-1399", "gpt-4"),  # no month 13: not a date
    ("zeta-pro", "zeta"),
    ("zeta2", "zeta"),
    ("zeta:free", "zeta"),
    ("zeta-v1-turbo", "zeta"),
]
FRAGMENT_OTHERS = [
    ("claude-sonnet-4-2025-turbo", "claude-sonnet-4-2025"),
    ("claude-sonnet-4-20259999", "claude-sonnet-4-2025"),
    ("gpt-4-0-mini", "gpt-4-0"),
]


@pytest.mark.parametrize(("name", "family"), SNAPSHOTS + FRAGMENT_SNAPSHOTS)
def test_snapshots_of_a_family_are_the_family(name, family):
    assert is_snapshot_of(name, family)


@pytest.mark.parametrize(("name", "family"), OTHER_MODELS + FRAGMENT_OTHERS)
def test_other_versions_are_not_the_family(name, family):
    assert not is_snapshot_of(name, family)


def test_a_bedrock_model_is_found_under_its_name_without_the_vendor(tmp_path):
    (tmp_path / "bedrock.yaml").write_text(
        "version: v1\nprovider: aws.bedrock\nmodels:\n"
        "  - {model: claude-3-haiku-20240307, match: prefix, input: 0.25, output: 1.25}\n"
        "  - {model: anthropic.claude-3-haiku-20240307, match: prefix, input: 9, output: 9}\n"
        "  - {model: nova-pro, match: prefix, input: 0.8, output: 3.2}\n"
    )
    table = load_table(tmp_path / "bedrock.yaml")
    models = {
        name: table.entry(table.resolve("aws.bedrock", name)).model  # type: ignore[arg-type]
        for name in ("amazon.nova-pro-v1:0", "us.amazon.nova-pro-v1:0", "anthropic.claude-3-haiku-20240307-v1:0")
    }
    # The vendor's own spelling first; without the vendor only when that has no entry.
    assert models == {
        "amazon.nova-pro-v1:0": "nova-pro",
        "us.amazon.nova-pro-v1:0": "nova-pro",
        "anthropic.claude-3-haiku-20240307-v1:0": "anthropic.claude-3-haiku-20240307",
    }
    assert table.resolve("openai", "amazon.nova-pro-v1:0") is None  # only Bedrock names carry a vendor


@pytest.fixture
def table(tmp_path):
    (tmp_path / "families.yaml").write_text(FAMILIES)
    return load_table(tmp_path / "families.yaml")


def provider_of(table, family: str) -> str:
    return next(e.provider for e in table.entries if e.model == family)


@pytest.mark.parametrize(("name", "family"), SNAPSHOTS)
def test_a_prefix_entry_prices_its_snapshots(table, name, family):
    provider = provider_of(table, family)
    found = table.match(provider, name)
    assert found is not None and not found.near
    assert table.entry(found.group).model == family


# claude-opus-4-1 is a family of its own in FAMILIES.
NEAR = [(name, family) for name, family in OTHER_MODELS if name != "claude-opus-4-1"]


@pytest.mark.parametrize(("name", "family"), NEAR)
def test_another_version_is_only_near_the_family(table, name, family):
    provider = provider_of(table, family)
    assert table.resolve(provider, name) is None
    found = table.match(provider, name)
    assert found is not None and found.near
    assert table.entry(found.group).model == family


def test_a_longer_family_wins_over_a_shorter_one(table):
    assert table.entry(table.resolve("anthropic", "claude-opus-4-1")).model == "claude-opus-4-1"
    assert table.entry(table.match("anthropic", "claude-opus-4-1-fast").group).model == "claude-opus-4-1"


def test_names_outside_every_family_are_unpriced(table):
    assert table.match("openai", "o3") is None
    assert table.match("acme", "gpt-5") is None  # another provider's family is not this provider's


def call(provider: str, model: str, **tokens: int) -> dict[str, object]:
    return {
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        **{f"gen_ai.usage.{kind}_tokens": n for kind, n in tokens.items()},
    }


NEAR_SPANS = [
    call("openai", "gpt-5.2", input=1_000_000),
    call("openai", "gpt-5-2025-08-07", input=1_000_000),
    call("anthropic", "claude-opus-4-6", output=1_000),
    call("openai", "o3", input=5),
]


def stage_for(tmp_path, near_matches: str = "estimate") -> tuple[CostStage, CollectorRegistry]:
    path = tmp_path / "families.yaml"
    path.write_text(FAMILIES)
    registry = CollectorRegistry()
    config = CostConfig(pricing_file=str(path), reload_interval_seconds=0, near_matches=near_matches)
    return CostStage(config, registry, watch=False), registry


PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(not native_cost_available(), reason="no native"))]


@pytest.mark.parametrize("native_path", PATHS)
def test_a_near_model_is_estimated_with_the_family_never_priced(tmp_path, native_path):
    stage, registry = stage_for(tmp_path)
    with native(native_path):
        _, written = process(stage, NEAR_SPANS)
    near, snapshot, opus, unknown = written
    assert near["genops.cost.status"] == "estimated"
    assert near["genops.cost.model"] == "gpt-5"
    assert near["genops.cost.total"] == pytest.approx(1.25)
    assert snapshot["genops.cost.status"] == "priced"
    assert snapshot["genops.cost.model"] == "gpt-5"
    assert opus["genops.cost.status"] == "estimated"
    assert opus["genops.cost.model"] == "claude-opus-4"
    assert unknown["genops.cost.status"] == "unpriced"
    estimated = "genops_cost_estimated_spans_total"
    assert registry.get_sample_value(estimated, {"provider": "openai", "model": "gpt-5.2"}) == 1
    assert registry.get_sample_value(estimated, {"provider": "anthropic", "model": "claude-opus-4-6"}) == 1
    # Only the snapshot counts as priced.
    assert registry.get_sample_value("genops_cost_priced_spans_total", {"provider": "openai"}) == 1
    assert registry.get_sample_value("genops_cost_priced_spans_total", {"provider": "anthropic"}) is None


@pytest.mark.parametrize("native_path", PATHS)
def test_near_matches_can_be_left_unpriced(tmp_path, native_path):
    stage, registry = stage_for(tmp_path, near_matches="unpriced")
    with native(native_path):
        _, written = process(stage, NEAR_SPANS)
    assert [w["genops.cost.status"] for w in written] == ["unpriced", "priced", "unpriced", "unpriced"]
    assert "genops.cost.total" not in written[0]
    unpriced = "genops_cost_unpriced_spans_total"
    assert registry.get_sample_value(unpriced, {"provider": "openai", "model": "gpt-5.2"}) == 1


def test_near_matches_setting_is_checked():
    with pytest.raises(ConfigError, match=r"cost\.near_matches.*estimate or unpriced"):
        load_config(None, environ={"GENOPS_COST_NEAR_MATCHES": "guess"})
