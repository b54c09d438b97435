"""The cost stage agrees with the billing rules computed span by span in plain Python, whatever the
table (price histories, tiers, provider-agnostic and prefix entries) and the spans (start days on
either side of a price change, several days in one batch, missing names, exclusive cache counts,
SDK-set costs), batch after batch on one stage (so pairs it has already seen are reused)."""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.core.decode import decode_traces
from processor.core.genai_attributes import normalize_provider, normalized
from processor.stages.cost.pricing_table import PricingTable, _filled
from processor.stages.cost.stage import COST_PARTS, MAX_KNOWN_PAIRS, CostStage
from tests.oracle.cost import pair_key, pair_of
from tests.support.cost_helpers import process
from tests.support.otlp_builders import span, trace_request

DAYS = [dt.date(2025, 3, 1) + dt.timedelta(days=n) for n in range(6)]
NS_PER_DAY = 86_400 * 10**9
PROVIDERS = [None, "openai", " OpenAI", "anthropic", "Vertex_AI", "mystery", ""]
# gpt-x-mini is a prefix entry: a dated snapshot of it is its own, other names only near it (estimated).
MODELS = [
    None,
    "gpt-x",
    "GPT-X ",
    "gpt-x-mini-2025",
    "gpt-x-mini-20250301",
    "gpt-x-mini.2",
    "claude-y",
    "llama-3",
    "unknown",
    "  ",
    "openai/gpt-x",
]

price = st.sampled_from([0, 0.1, 0.5, 1.25, 2.5, 3, 10, 15])
maybe_price = st.one_of(st.none(), price)


@st.composite
def entry(draw, provider: str, model: str, match: str = "exact") -> dict:
    item = {"provider": provider, "model": model, "match": match, "input": draw(price), "output": draw(price)}
    for name in ("cache_read", "cache_write", "reasoning", "request"):
        value = draw(maybe_price)
        if value is not None:
            item[name] = value
    tiers = draw(st.lists(st.sampled_from([1_000, 50_000, 200_000]), max_size=2, unique=True))
    if tiers:
        item["tiers"] = [{"above_input_tokens": t, "input": draw(price), "output": draw(maybe_price)} for t in tiers]
    return item


@st.composite
def history(draw, provider: str, model: str, match: str = "exact") -> list[dict]:
    """One model's prices over time: consecutive date ranges, the first and last open."""
    changes = sorted(draw(st.lists(st.sampled_from(DAYS[1:]), max_size=2, unique=True)))
    bounds = [None, *changes, None]
    items = []
    for start, end in itertools.pairwise(bounds):
        item = draw(entry(provider, model, match))
        if start:
            item["effective_from"] = start.isoformat()
        if end:
            item["effective_to"] = end.isoformat()
        items.append(item)
    return items


@st.composite
def tables(draw) -> list[dict]:
    models = [
        *draw(history("openai", "gpt-x")),
        *draw(history("openai", "gpt-x-mini", "prefix")),
        *draw(history("anthropic", "claude-y")),
        *draw(history("*", "llama-3")),
    ]
    if draw(st.booleans()):
        models.append(draw(entry("google", "gpt-x")))
    return models


# Tier sizes and their neighbours come up often: a tier applies above its size, not at it.
count = st.one_of(st.none(), st.sampled_from([0, 1_000, 1_001, 50_000, 200_000, 200_001]), st.integers(0, 300_000))


@st.composite
def spans(draw) -> tuple[dict, int]:
    attributes: dict[str, object] = {}
    provider, model = draw(st.sampled_from(PROVIDERS)), draw(st.sampled_from(MODELS))
    if provider is not None:
        attributes["gen_ai.provider.name"] = provider
    if model is not None:
        attributes["gen_ai.request.model"] = model
    for key in (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.reasoning.output_tokens",
    ):
        value = draw(count)
        if value is not None:
            attributes[key] = value
    if draw(st.integers(0, 9)) == 0:
        attributes["genops.cost.total"] = 0.5  # the SDK priced it: kept, ours written beside it
    start = (draw(st.sampled_from(DAYS)) - dt.date(1970, 1, 1)).days * NS_PER_DAY + draw(
        st.sampled_from([0, 1, NS_PER_DAY - 1])
    )
    return attributes, start


def expected(table: PricingTable, attributes: dict, start: int) -> dict[str, object]:
    """What the stage writes on one span, by the rules in processor/stages/cost/stage.py's docstring."""
    if "genops.cost.total" in attributes:
        # The SDK's cost stands; ours and the difference are written beside it when we price it.
        ours = expected(table, {k: v for k, v in attributes.items() if k != "genops.cost.total"}, start)
        if "genops.cost.total" not in ours:
            return {}
        total = ours["genops.cost.total"].expected
        return {
            "genops.cost.computed_total": pytest.approx(total, rel=1e-12),
            "genops.cost.sdk_difference": pytest.approx(attributes["genops.cost.total"] - total, rel=1e-9, abs=1e-15),
        }
    tokens = [attributes.get(f"gen_ai.usage.{k}") for k in ("input_tokens", "output_tokens")]
    cache_read = attributes.get("gen_ai.usage.cache_read.input_tokens")
    cache_write = attributes.get("gen_ai.usage.cache_creation.input_tokens")
    reasoning = attributes.get("gen_ai.usage.reasoning.output_tokens")
    if all(v is None for v in (*tokens, cache_read, cache_write, reasoning)):
        return {}
    inp, out = tokens
    cached = (cache_read or 0) + (cache_write or 0)
    if inp is not None and inp < cached:
        inp += cached
    if out is not None and out < (reasoning or 0):
        out += reasoning or 0
    provider = normalize_provider(attributes.get("gen_ai.provider.name"))
    model = (attributes.get("gen_ai.request.model") or "").strip() or None
    found = table.match(provider, model)
    group = None if found is None else found.group
    history = [e for e in table.entries if group is not None and e.key == table.entry(group).key]
    day = dt.date(1970, 1, 1) + dt.timedelta(days=start // NS_PER_DAY)
    current = [e for e in history if (e.effective_from or dt.date.min) <= day < (e.effective_to or dt.date.max)]
    if not current:
        return {"genops.cost.status": "unpriced"}
    (chosen,) = current
    prices = _filled(chosen.prices, chosen.prices)
    for tier in chosen.tiers:
        if (inp or 0) > tier.above_input_tokens:
            prices = _filled(tier.prices, chosen.prices)
    cache_read, cache_write, reasoning = cache_read or 0, cache_write or 0, reasoning or 0
    output = out if out is not None else reasoning
    parts = {
        "input": max((inp or 0) - cache_read - cache_write, 0) * prices["input"] / 1e6,
        "cache_read": cache_read * prices["cache_read"] / 1e6,
        "cache_write": cache_write * prices["cache_write"] / 1e6,
        "reasoning": reasoning * prices["reasoning"] / 1e6,
        "output": max(output - reasoning, 0) * prices["output"] / 1e6,
    }
    # Cached input's saving against the uncached input price (processor/stages/cost/cache_savings.py).
    savings = (
        {
            "genops.cost.cache_savings": pytest.approx(
                cache_read * (prices["input"] - prices["cache_read"]) / 1e6, rel=1e-9, abs=1e-15
            )
        }
        if cache_read
        else {}
    )
    return {
        **savings,
        "genops.cost.status": "estimated" if found.near else "priced",
        "genops.cost.total": pytest.approx(sum(parts[p] for p in COST_PARTS) + chosen.request, rel=1e-12),
        **{f"genops.cost.{p}": pytest.approx(v, rel=1e-12) for p, v in parts.items()},
        "genops.cost.currency": "USD",
        "genops.cost.provider": (provider or "*") if chosen.provider == "*" else chosen.provider,
        "genops.cost.model": chosen.model,
        "genops.cost.pricing_version": "t1",
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    models=tables(),
    batches=st.lists(st.lists(spans(), min_size=1, max_size=12), min_size=1, max_size=3),
    normalized_first=st.booleans(),
)
def test_stage_follows_the_billing_rules(models, batches, normalized_first):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "prices.yaml"
        path.write_text(yaml.safe_dump({"version": "t1", "models": models}))
        registry = CollectorRegistry()
        stage = CostStage(CostConfig(pricing_file=str(path), reload_interval_seconds=0), registry, watch=False)
    priced: dict[str, int] = {}
    estimated: dict[tuple[str, str], int] = {}
    for batch in batches:
        request = trace_request([span(attributes=a, start_time_unix_nano=s) for a, s in batch])
        decoded = decode_traces(request.SerializeToString(), stage.wanted_keys())
        if normalized_first:  # another stage normalized the batch already
            normalized(decoded)
        changes = stage.process(decoded)
        for i, (attributes, start) in enumerate(batch):
            written = {k: c[i] for k, c in changes.set_attributes.items() if c[i] is not None}
            want = expected(stage.table, attributes, start)
            assert written == want, (attributes, start)
            if want.get("genops.cost.status") == "priced":
                provider = str(want["genops.cost.provider"])
                priced[provider] = priced.get(provider, 0) + 1
            if want.get("genops.cost.status") == "estimated":
                labels = (provider_label(attributes), written_model(attributes))
                estimated[labels] = estimated.get(labels, 0) + 1
    for provider, spans_priced in priced.items():
        assert registry.get_sample_value("genops_cost_priced_spans_total", {"provider": provider}) == spans_priced
    for (provider, model), spans_estimated in estimated.items():
        labels = {"provider": provider, "model": model}
        assert registry.get_sample_value("genops_cost_estimated_spans_total", labels) == spans_estimated


def provider_label(attributes: dict) -> str:
    return normalize_provider(attributes.get("gen_ai.provider.name")) or "unknown"


def written_model(attributes: dict) -> str:
    """The span's model as the stage's metric labels carry it (normalised: trimmed)."""
    return str(attributes.get("gen_ai.request.model")).strip()


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text())), max_size=20))
def test_pair_keys_tell_every_provider_and_model_apart(pairs):
    frame = pl.DataFrame(
        {"provider": [p for p, _ in pairs], "model": [m for _, m in pairs]},
        schema={"provider": pl.String, "model": pl.String},
    )
    keys = frame.select(pair_key(pl.col("provider"), pl.col("model"))).to_series().to_list()
    assert [pair_of(k) for k in keys] == pairs


def test_many_distinct_models_are_still_priced_batch_after_batch():
    # More (provider, model) pairs than the stage keeps resolved: it starts over, prices stay right.
    registry = CollectorRegistry()
    stage = CostStage(CostConfig(reload_interval_seconds=0), registry, watch=False)
    known = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000}
    for batch in range(3):
        attribute_sets = [known] + [
            {"gen_ai.request.model": f"made-up-{batch}-{n}", "gen_ai.usage.input_tokens": 5}
            for n in range(MAX_KNOWN_PAIRS // 2 + 1)
        ]
        _, written = process(stage, attribute_sets)
        assert written[0]["genops.cost.input"] == pytest.approx(2.5)
        assert {w["genops.cost.status"] for w in written[1:]} == {"unpriced"}
    assert registry.get_sample_value("genops_cost_priced_spans_total", {"provider": "openai"}) == 3
