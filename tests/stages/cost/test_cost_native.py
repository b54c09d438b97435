"""The cost stage's native path and its polars path write the same columns to the last bit, share
the same normalised GenAI columns with the policy stage, and count the same metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from prometheus_client import CollectorRegistry

from processor.core.decode import decode_traces
from processor.stages.cost.native import native_cost_available
from processor.stages.cost.stage import MAX_UNPRICED_LABELS, CostStage
from tests.support.cost_differential import assert_same_bits, metric_samples, run_both, stage_pair
from tests.support.cost_helpers import start_ns
from tests.support.native_switch import native
from tests.support.otlp_builders import span, trace_request

pytestmark = pytest.mark.skipif(not native_cost_available(), reason="native cost path not built")

# Histories, tiers, every price kind, a fee, prefix/regex/any-provider entries, an alias, free
# cache reads, a service tier (a dimension that rescales the cache read cost after the kernel).
TABLE = """\
version: "native-test-2026"
provider: openai
service_tiers: {batch: 0.5}
models:
  - {model: gpt-4o-mini, input: 0.15, output: 0.6, cache_read: 0}
  - {model: gpt-4o, input: 2.5, output: 10, cache_read: 1.25, aliases: [gpt-4o-2024-08-06], effective_from: 2024-08-06}
  - {model: gpt-4o, input: 5, output: 15, effective_to: 2024-08-06}
  - {model: o1, input: 15, output: 60, reasoning: 70.3, request: 0.0123}
  - {model: gpt-4.1, match: prefix, input: 2, output: 8, cache_write: 2.7}
  - {model: "ft:.*", match: regex, input: 3.3, output: 12.1}
  - provider: google
    model: gemini-1.5-pro
    input: 1.25
    output: 5
    effective_from: 2024-10-01
    tiers: [{above_input_tokens: 128000, input: 2.5, output: 10}, {above_input_tokens: 1000000, input: 7.1}]
  - provider: google
    model: gemini-1.5-pro
    input: 3.5
    output: 10.5
    effective_to: 2024-10-01
    tiers: [{above_input_tokens: 128000, input: 7, output: 21}]
  - {provider: "*", model: llama-3-70b, input: 0.59, output: 0.79}
  - provider: anthropic
    model: claude-3-5-sonnet
    input: 3
    output: 15
    cache_read: 0.3
    cache_write: 3.75
    tiers: [{above_input_tokens: 200000, input: 6, output: 22.5, cache_read: 0.6}]
"""

MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider")
TOKEN_KEYS = (
    "gen_ai.usage.input_tokens",
    "llm.token_count.prompt",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "genops.tokens.cache_read",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
    "llm.token_count.completion_details.reasoning",
)
MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    " GPT-4o ",
    "gpt-4o-2024-08-06",
    "o1",
    "gpt-4.1-mini",  # near the gpt-4.1 family: estimated
    "gpt-4.1-2025-04-14",  # a snapshot of it: priced
    "ft:gpt-x:acme",
    "gemini-1.5-pro",
    "models/gemini-1.5-pro",
    "llama-3-70b",
    "openai/gpt-4o",
    "claude-3-5-sonnet",
    "unknown-model",
    "",
    "  ",
    "\u00a0o1\u2003",
]
PROVIDERS = ["openai", " OpenAI ", "gemini", "Vertex_AI", "anthropic", "aws", "meta", "", " ", "ΑΣ", "İx", "acme"]
COUNTS = [0, 1, 5, 999, 128_000, 128_001, 200_001, 1_000_001, -1, -300, 2**62, 2**63 - 1, -(2**63)]
COUNT_TEXTS = ["1200", " 1200.0 ", "1e3", "-5", "12.9", "abc", "", "inf", "nan", "+7", ".5", "1e30", "9e18"]
MAX_SPANS = 25
DAYS = ["2024-08-05", "2024-08-06", "2024-09-30", "2024-10-01", "2025-10-09"]

# Mostly names the table knows, so that most batches price something.
names = st.one_of(*[st.sampled_from(MODELS)] * 6, st.text(max_size=12), st.integers(-5, 5))
providers = st.one_of(*[st.sampled_from(PROVIDERS)] * 6, st.text(max_size=8), st.integers(0, 3))
counts = st.one_of(
    *[st.integers(0, 300_000)] * 4,
    st.sampled_from(COUNTS),
    st.integers(-10, 3_000_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10, 3e6).map(lambda f: round(f, 1)),
    st.sampled_from(COUNT_TEXTS),
    st.integers(0, 300_000).map(lambda n: f" {n} "),
    st.booleans(),
)


@st.composite
def spans(draw) -> tuple[dict[str, object], int]:
    attributes: dict[str, object] = {}
    for key in draw(st.lists(st.sampled_from(MODEL_KEYS), max_size=2, unique=True)):
        attributes[key] = draw(names)
    for key in draw(st.lists(st.sampled_from(PROVIDER_KEYS), max_size=1, unique=True)):
        attributes[key] = draw(providers)
    for key in draw(st.lists(st.sampled_from(TOKEN_KEYS), max_size=5, unique=True)):
        attributes[key] = draw(counts)
    if draw(st.integers(0, 4)) == 0:
        attributes["genops.service_tier"] = draw(st.sampled_from(["batch", "flex", " Batch "]))
    if draw(st.integers(0, 5)) == 0:
        attributes["genops.cost.total"] = draw(st.one_of(st.floats(0, 1), st.just("0.5")))
    start = draw(
        st.one_of(
            st.sampled_from(DAYS).map(start_ns),
            st.integers(0, 2**64 - 2**40),
            st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 2**40]),
        )
    )
    return attributes, start


@st.composite
def batches(draw) -> list[tuple[dict[str, object], int]]:
    drawn = draw(st.lists(spans(), min_size=1, max_size=MAX_SPANS))
    if draw(st.booleans()):  # one start day for every span: the date-free price slots
        day = start_ns(draw(st.sampled_from(DAYS)))
        drawn = [(attributes, day + i) for i, (attributes, _) in enumerate(drawn)]
    return drawn


@pytest.fixture(scope="module")
def table_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pricing") / "table.yaml"
    path.write_text(TABLE)
    return path


class NativeOutcomes:
    """Records whether the native path took each batch (None: it left it to the polars path), so a
    comparison cannot pass by running the polars path twice."""

    def __init__(self, stage: CostStage) -> None:
        assert stage._native is not None
        self.run, self.taken = stage._native.run, []
        stage._native.run = self  # type: ignore[method-assign]

    def __call__(self, *args, **kwargs):
        found = self.run(*args, **kwargs)
        self.taken.append(found is not None)
        return found


class StagePairs:
    """(native stage, registry), (polars stage, registry) per (table, override setting). A pair is
    replaced before a batch could take it past the unpriced-label cap: past it, which pairs keep a
    label of their own depends on the order they are counted in, which neither path defines."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths
        self.pairs: dict[tuple[str, bool], tuple] = {}

    def get(self, table: str, override: bool) -> tuple:
        pair = self.pairs.get((table, override))
        if pair is None or unpriced_labels(pair[0][1]) > MAX_UNPRICED_LABELS - MAX_SPANS:
            pair = self.pairs[(table, override)] = stage_pair(self.paths[table], override)
            NativeOutcomes(pair[0][0])
        return pair


def unpriced_labels(registry: CollectorRegistry) -> int:
    # Unpriced and estimated spans share the label cap.
    labelled = ("genops_cost_unpriced_spans_total", "genops_cost_estimated_spans_total")
    return sum(1 for (name, _) in metric_samples(registry) if name in labelled)


@pytest.fixture(scope="module")
def stages(table_path) -> StagePairs:
    return StagePairs({"test": str(table_path), "shipped": ""})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    drawn=batches(),
    table=st.sampled_from(["test", "shipped"]),
    override=st.booleans(),
    shared_genai=st.integers(0, 4).map(lambda n: n == 0),
    split=st.integers(0, 30),
)
def test_native_and_polars_paths_agree(stages, drawn, table, override, shared_genai, split):
    pair = stages.get(table, override)
    (native_changes, native_genai, native_metrics), (polars_changes, polars_genai, polars_metrics) = run_both(
        pair, drawn, shared_genai, split if 0 < split < len(drawn) else 0
    )
    assert_frame_equal(native_genai, polars_genai, check_exact=True)
    assert list(native_changes.set_attributes) == list(polars_changes.set_attributes)
    for name, column in polars_changes.set_attributes.items():
        assert_same_bits(native_changes.set_attributes[name], column)
    assert native_changes.rewrites is None or native_changes.rewrites.height == 0
    assert native_metrics == polars_metrics
    assert pair[0][0]._native.run.taken[-1], "the native path left the batch to polars"
    statuses = polars_changes.set_attributes.get("genops.cost.status")
    for status in ("priced", "unpriced", "estimated"):
        event(f"some {status}: {statuses is not None and status in statuses.to_list()}")


def test_same_results_with_the_python_decoder(table_path):
    """GENOPS_NATIVE_DECODE=0 switches the decoder only: the native cost path prices either way."""
    (stage, _), _ = stage_pair(str(table_path), override=False)
    attributes = {
        "gen_ai.provider.name": "OpenAI",
        "gen_ai.response.model": "o1",
        "gen_ai.usage.input_tokens": "1000",
        "gen_ai.usage.output_tokens": 500,
        "gen_ai.usage.reasoning.output_tokens": 200,
    }
    request = trace_request([span(attributes=attributes, start_time_unix_nano=start_ns("2025-10-09"))])
    totals = []
    for enabled in (True, False):
        with native(enabled):
            batch = decode_traces(request.SerializeToString(), stage.wanted_keys())
            changes = stage.process(batch)
            assert changes.engine == "native"
            totals.append(changes.set_attributes["genops.cost.total"].to_list())
    # 1000 in x $15/M + 300 out x $60/M + 200 reasoning x $70.3/M + $0.0123 per request
    assert totals[0] == totals[1] == [pytest.approx(0.015 + 0.018 + 0.01406 + 0.0123)]
