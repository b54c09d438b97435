"""Reads LiteLLM's price map (model_prices_and_context_window.json, shipped in the litellm wheel
as model_prices_and_context_window_backup.json) into catalogue entries.

Keys are model names, some with a route (`mistral/mistral-small-latest`, `gemini/...`), which is
dropped when it names the entry's provider. Costs are USD per token; ours are per million.
Keys with a region or deployment path (`bedrock/us-east-1/...`, `azure/eu/...`), entries without a
per-token input cost (images, audio seconds...) and unknown providers are reported, not converted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from processor.stages.cost.catalogue.entries import LITELLM, CatalogueEntry, SourceData, Unconvertible, empty_prices
from processor.stages.cost.catalogue.genai_prices_source import SourceError
from processor.stages.cost.catalogue.providers import LITELLM_PROVIDERS, litellm_provider
from processor.stages.cost.pricing_table import Tier

_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
}
# input_cost_per_token_above_200k_tokens, cache_read_input_token_cost_above_200k_tokens, ...
_TIER = re.compile(
    r"^(input|output|cache_read_input|cache_creation_input)_(?:cost_per_token|token_cost)_above_(\d+)k_tokens$"
)
_TIER_FIELD = {
    "input": "input",
    "output": "output",
    "cache_read_input": "cache_read",
    "cache_creation_input": "cache_write",
}
# Cost fields that are billing dimensions our format does not carry (reported as counts).
_COST_FIELD = re.compile(r"cost")


def read_litellm(path: str, version: str, as_of: dt.date) -> SourceData:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise SourceError(f"{path}: expected a JSON object keyed by model name")
    source = f"https://pypi.org/project/litellm/{version}/"
    entries: list[CatalogueEntry] = []
    unconvertible: list[Unconvertible] = []
    dropped: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for key, spec in document.items():
        if key == "sample_spec" or not isinstance(spec, dict):
            continue
        route = str(spec.get("litellm_provider") or "")
        provider = litellm_provider(route)
        if not provider:
            unconvertible.append(Unconvertible(LITELLM, "?", key, "no litellm_provider"))
            continue
        model = _model_name(key, route)
        if model is None:
            unconvertible.append(Unconvertible(LITELLM, provider, key, "region or deployment path in the name"))
            continue
        if spec.get("input_cost_per_token") is None:
            unconvertible.append(Unconvertible(LITELLM, provider, key, "no per-token input price"))
            continue
        if (provider, model.lower()) in seen:
            continue
        seen.add((provider, model.lower()))
        entries.append(_entry(provider, model, spec, source, as_of, dropped))
    return SourceData(LITELLM, f"litellm {version}", tuple(entries), tuple(unconvertible), dropped)


def _model_name(key: str, route: str) -> str | None:
    head, sep, rest = key.partition("/")
    if not sep:
        return key
    if head == route or head in LITELLM_PROVIDERS or litellm_provider(head) == litellm_provider(route):
        # One more path part is a region or a deployment, not a model (except routers' vendor/model).
        if "/" in rest and litellm_provider(route) not in ("openrouter", "together", "fireworks", "groq"):
            return None
        return rest
    return key


def _entry(
    provider: str, model: str, spec: dict, source: str, as_of: dt.date, dropped: dict[str, int]
) -> CatalogueEntry:
    prices = empty_prices()
    for theirs, ours in _FIELDS.items():
        prices[ours] = _per_million(spec.get(theirs))
    if prices["output"] is None:
        prices["output"] = 0.0
    tiers: dict[int, dict[str, float | None]] = {}
    for name, value in spec.items():
        found = _TIER.match(name)
        if found and value is not None:
            tiers.setdefault(int(found.group(2)) * 1000, {})[_TIER_FIELD[found.group(1)]] = _per_million(value)
        elif _COST_FIELD.search(name) and name not in _FIELDS and value is not None:
            dropped[name] = dropped.get(name, 0) + 1
    request = spec.get("input_cost_per_request")
    return CatalogueEntry(
        provider=provider,
        model=model,
        match="exact",
        aliases=(),
        prices=prices,
        request=None if request is None else float(request),
        tiers=tuple(Tier(size, {**empty_prices(), **values}) for size, values in sorted(tiers.items())),
        origin=LITELLM,
        source=source,
        as_of=as_of,
    )


def _per_million(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return round(float(value) * 1_000_000, 9)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
