"""A span whose response model the table does not know is priced, as an estimate, by the entry of
the model it asked for (processor/stages/cost/request_fallback.py); its own entry, when it has one,
always wins, and the fallback is never `priced`. Figures are hand-computed from the tables."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.stage import CostStage
from tests.support.cost_differential import assert_same_bits, run_both, stage_pair
from tests.support.cost_helpers import process, start_ns

TABLE = """\
version: "fallback-1"
models:
  - {provider: openai, model: gpt-5, match: prefix, input: 1.25, output: 10}
  - {provider: openai, model: gpt-5.2, input: 1.75, output: 14}
  - {provider: openai, model: gpt-4o, input: 2.5, output: 10}
  - {provider: mistral, model: old-alias, input: 1, output: 1, effective_to: 2025-01-01}
"""
ESTIMATED = "genops_cost_estimated_spans_total"
UNPRICED = "genops_cost_unpriced_spans_total"
PRICED = "genops_cost_priced_spans_total"


def stage(tmp_path=None, near_matches: str = "estimate") -> tuple[CostStage, CollectorRegistry]:
    registry = CollectorRegistry()
    pricing_file = None
    if tmp_path is not None:
        pricing_file = tmp_path / "table.yaml"
        pricing_file.write_text(TABLE)
    config = CostConfig(
        pricing_file=None if pricing_file is None else str(pricing_file),
        reload_interval_seconds=0,
        near_matches=near_matches,
    )
    return CostStage(config, registry, watch=False), registry


def call(provider: str, request: str, response: str | None, **extra: object) -> dict[str, object]:
    span: dict[str, object] = {
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request,
        "gen_ai.usage.input_tokens": 1_000_000,
        "gen_ai.usage.output_tokens": 1_000_000,
        **extra,
    }
    if response is not None:
        span["gen_ai.response.model"] = response
    return span


def summary(written: dict) -> tuple[object, object, object]:
    return written.get("genops.cost.status"), written.get("genops.cost.model"), written.get("genops.cost.total")


# The benchmark workload's Mistral aliases: neither source (genai-prices 0.2.5, LiteLLM 1.110.2)
# prices the dated names Mistral answers with, so they fall back to the alias's entry.
@pytest.mark.parametrize(
    ("day", "small_total"),
    [
        ("2025-10-09", 0.1 + 0.3),  # mistral-small-latest was Small 3.2 (2506): $0.10/$0.30
        ("2026-06-01", 0.15 + 0.6),  # since 2026-03-16 Small 4 (2603): $0.15/$0.60
    ],
)
def test_the_workloads_dated_mistral_answers_are_estimated_at_their_aliases_price(day, small_total):
    cost, registry = stage()
    _, written = process(
        cost,
        [
            call("mistral_ai", "mistral-small-latest", "mistral-small-2409"),
            call("mistral_ai", "open-mistral-nemo", "open-mistral-nemo-2407"),
        ],
        day=day,
    )
    small, nemo = map(summary, written)
    assert small[:2] == ("estimated", "mistral-small-latest")
    assert small[2] == pytest.approx(small_total)
    # open-mistral-nemo is an alias of the mistral-nemo entry: $0.15/$0.15.
    assert nemo == ("estimated", "mistral-nemo", pytest.approx(0.3))
    for model in ("mistral-small-2409", "open-mistral-nemo-2407"):
        assert registry.get_sample_value(ESTIMATED, {"provider": "mistral", "model": model}) == 1
        assert registry.get_sample_value(UNPRICED, {"provider": "mistral", "model": model}) is None
    assert registry.get_sample_value(PRICED, {"provider": "mistral"}) is None


def test_a_response_model_with_an_entry_of_its_own_is_priced_by_it(tmp_path):
    cost, registry = stage(tmp_path)
    _, written = process(
        cost,
        [
            call("openai", "gpt-4o", "gpt-5-2025-08-07"),  # a snapshot of the gpt-5 family: that family
            call("openai", "gpt-5.2", "gpt-4o"),  # answered by another known model: that model
        ],
    )
    assert [summary(w) for w in written] == [
        ("priced", "gpt-5", pytest.approx(1.25 + 10)),
        ("priced", "gpt-4o", pytest.approx(2.5 + 10)),
    ]
    assert registry.get_sample_value(PRICED, {"provider": "openai"}) == 2


def test_the_request_models_entry_beats_a_family_the_answer_is_only_near(tmp_path):
    cost, registry = stage(tmp_path)
    _, written = process(
        cost,
        [
            # gpt-5.2-2099-13-01 is no snapshot (no month 13) and only near gpt-5: gpt-5.2 asked for.
            call("openai", "gpt-5.2", "gpt-5.2-2099-13-01"),
            # Nothing for the request either: the family the answer is near ($1.25/$10).
            call("openai", "gpt-5.9", "gpt-5.9-preview"),
            call("openai", "unknown-model", "unknown-model-2025"),
        ],
    )
    assert [summary(w) for w in written] == [
        ("estimated", "gpt-5.2", pytest.approx(1.75 + 14)),
        ("estimated", "gpt-5", pytest.approx(1.25 + 10)),
        ("unpriced", None, None),
    ]
    assert registry.get_sample_value(ESTIMATED, {"provider": "openai", "model": "gpt-5.2-2099-13-01"}) == 1
    assert registry.get_sample_value(UNPRICED, {"provider": "openai", "model": "unknown-model-2025"}) == 1
    assert registry.get_sample_value(PRICED, {"provider": "openai"}) is None


def test_a_request_model_without_a_price_that_day_leaves_the_span_unpriced(tmp_path):
    cost, registry = stage(tmp_path)
    _, written = process(cost, [call("mistral", "old-alias", "old-alias-2409")], day="2025-10-09")
    assert summary(written[0]) == ("unpriced", None, None)
    assert registry.get_sample_value(UNPRICED, {"provider": "mistral", "model": "old-alias-2409"}) == 1
    assert registry.get_sample_value(ESTIMATED, {"provider": "mistral", "model": "old-alias-2409"}) is None


def test_openinference_response_names_fall_back_too(tmp_path):
    cost, _ = stage(tmp_path)
    span = call("openai", "gpt-4o", None, **{"llm.response.model_name": "gpt-4o-custom"})
    _, written = process(cost, [span])
    assert summary(written[0]) == ("estimated", "gpt-4o", pytest.approx(12.5))


def test_no_estimates_means_no_fallback(tmp_path):
    cost, registry = stage(tmp_path, near_matches="unpriced")
    _, written = process(cost, [call("openai", "gpt-4o", "gpt-4o-custom")])
    assert summary(written[0]) == ("unpriced", None, None)
    assert registry.get_sample_value(UNPRICED, {"provider": "openai", "model": "gpt-4o-custom"}) == 1


def test_an_sdk_cost_stands_and_priced_spans_beside_a_fallback_are_untouched(tmp_path):
    cost, registry = stage(tmp_path)
    _, written = process(
        cost,
        [
            call("openai", "gpt-4o", "gpt-4o-custom", **{"gen_ai.usage.cost": 0.5}),
            call("openai", "gpt-4o", "gpt-4o-custom"),
            call("openai", "gpt-4o", None),
            {"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-custom"},  # no tokens
        ],
    )
    sdk, fallback, own, no_tokens = written
    assert sdk["genops.cost.total"] == 0.5
    assert "genops.cost.status" not in sdk
    assert summary(fallback) == ("estimated", "gpt-4o", pytest.approx(12.5))
    assert summary(own) == ("priced", "gpt-4o", pytest.approx(12.5))
    assert no_tokens == {}
    assert registry.get_sample_value(ESTIMATED, {"provider": "openai", "model": "gpt-4o-custom"}) == 1
    assert registry.get_sample_value(PRICED, {"provider": "openai"}) == 1


# The native engine against the polars oracle (tests/oracle/cost.py) on batches with fallback spans:
# bit for bit, metrics included (the hypothesis test in test_cost_native.py draws such spans too).
FALLBACK_BATCHES = [
    [call("openai", "gpt-4o", "gpt-4o-custom")],  # one span: the second pass prices one row
    [
        call("openai", "gpt-4o", "gpt-4o-custom", **{"gen_ai.usage.cache_read.input_tokens": 1234}),
        call("openai", "gpt-5.2", "gpt-5.2-2099-13-01"),
        call("openai", "gpt-4o", None),
        call("openai", "unknown", "unknown-2"),
        call("mistral", "old-alias", "old-alias-2409"),
        call("openai", "gpt-4o", "gpt-4o-custom", **{"gen_ai.usage.cost": 0.25}),
        {"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-custom"},
        call("", "gpt-4o", "gpt-4o-custom"),
    ],
]


@pytest.mark.parametrize("override", [False, True])
@pytest.mark.parametrize("attributes", FALLBACK_BATCHES)
def test_the_native_fallback_matches_the_polars_oracle(tmp_path, attributes, override):
    path = tmp_path / "table.yaml"
    path.write_text(TABLE)
    drawn = [(a, start_ns("2025-10-09")) for a in attributes]
    (native, _, native_metrics), (oracle, _, oracle_metrics) = run_both(
        stage_pair(str(path), override), drawn, shared_genai=False
    )
    assert list(native.set_attributes) == list(oracle.set_attributes)
    for name, column in oracle.set_attributes.items():
        assert_same_bits(native.set_attributes[name], column)
    assert native_metrics == oracle_metrics
    assert "estimated" in oracle.set_attributes["genops.cost.status"].to_list()


def test_a_fallback_span_in_the_batch_leaves_the_other_spans_cache_savings_standing(tmp_path):
    # gpt-4o: $2.50 input, cache reads at half the input price by the table's default (none given).
    cost, _ = stage(tmp_path)
    cached = call("openai", "gpt-4o", "gpt-4o", **{"gen_ai.usage.cache_read.input_tokens": 400_000})
    _, alone = process(cost, [cached])
    _, beside = process(cost, [cached, call("openai", "gpt-4o", "gpt-4o-mystery-2099")])
    assert alone[0].get("genops.cost.cache_savings") is not None
    assert beside[0].get("genops.cost.cache_savings") == alone[0].get("genops.cost.cache_savings")
    assert beside[1].get("genops.cost.status") == "estimated"
