"""Reads LiteLLM's price map (model_prices_and_context_window.json, shipped in the litellm wheel
as model_prices_and_context_window_backup.json) into catalogue entries.

Keys are model names, some with a route (`mistral/mistral-small-latest`, `gemini/...`), which is
dropped when it names the entry's provider. Costs are USD per token; ours are per million.
Keys with a region or deployment path (`bedrock/us-east-1/...`, `azure/eu/...`), entries without a
per-token input cost (images, audio seconds...) and unknown providers are reported, not converted.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from pathlib import Path

from processor.stages.cost.catalogue.entries import LITELLM, CatalogueEntry, SourceData, Unconvertible, empty_prices
from processor.stages.cost.catalogue.genai_prices_source import SourceError
from processor.stages.cost.catalogue.providers import LITELLM_PROVIDERS, VERTEX_AI, litellm_provider
from processor.stages.cost.pricing_table import CACHE_WRITE_1H_FACTOR, MODALITY_PRICES, SERVICE_TIERS, Tier

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
# Service tiers: LiteLLM gives each tier's prices (`input_cost_per_token_priority`); ours is one
# factor of the standard prices per tier, taken when input and output agree on it.
_SERVICE_TIERS = {"batches": "batch", "priority": "priority", "flex": "flex"}
_TIER_PRICED = ("input_cost_per_token", "output_cost_per_token")
_CACHE_WRITE_1H = "cache_creation_input_token_cost_above_1hr"
# Per-modality token prices (USD per token) → MODALITY_KINDS.
_MODALITY = {
    "input_cost_per_audio_token": "audio_input",
    "output_cost_per_audio_token": "audio_output",
    "input_cost_per_image_token": "image_input",
    "input_cost_per_video_token": "video_input",
}
# Cost fields that are billing dimensions our format does not carry (reported as counts).
_COST_FIELD = re.compile(r"cost")


def read_litellm(path: str, version: str, as_of: dt.date) -> SourceData:
    try:
        raw = Path(path).read_bytes()
        # The copy the repository keeps of the file it was built from is gzipped (pricing_tables/sources/).
        document = json.loads(gzip.decompress(raw) if path.endswith(".gz") else raw)
    except (OSError, UnicodeDecodeError, ValueError, EOFError) as exc:
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
        problems: list[str] = []
        entries.append(_entry(provider, model, spec, source, as_of, dropped, problems))
        unconvertible.extend(Unconvertible(LITELLM, provider, key, problem) for problem in problems)
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
    provider: str, model: str, spec: dict, source: str, as_of: dt.date, dropped: dict[str, int], problems: list[str]
) -> CatalogueEntry:
    prices = empty_prices()
    for theirs, ours in _FIELDS.items():
        prices[ours] = _per_million(spec.get(theirs))
    if prices["output"] is None:
        prices["output"] = 0.0
    tiers: dict[int, dict[str, float | None]] = {}
    billing, carried = _billing(spec, problems)
    for name, value in spec.items():
        found = _TIER.match(name)
        if found and value is not None:
            tiers.setdefault(int(found.group(2)) * 1000, {})[_TIER_FIELD[found.group(1)]] = _per_million(value)
        elif _COST_FIELD.search(name) and name not in _FIELDS and name not in carried and value is not None:
            dropped[name] = dropped.get(name, 0) + 1
    request = spec.get("input_cost_per_request")
    return CatalogueEntry(
        provider=provider,
        model=model,
        # Vertex AI serves a model under its stable versions (`gemini-2.0-flash-001`, `@001`),
        # which LiteLLM lists by the model's name only: the name and its snapshots.
        match="prefix" if provider == VERTEX_AI else "exact",
        aliases=(),
        prices=prices,
        request=None if request is None else float(request),
        tiers=tuple(Tier(size, {**empty_prices(), **values}) for size, values in sorted(tiers.items())),
        origin=LITELLM,
        source=source,
        as_of=as_of,
        billing=billing,
    )


def _billing(spec: dict, problems: list[str]) -> tuple[dict[str, object], set[str]]:
    """The entry's service tier factors, 1-hour cache write factor and modality prices, and the
    LiteLLM fields they carry (the others are counted as dropped)."""
    billing: dict[str, object] = {}
    carried: set[str] = set()
    factors: dict[str, float] = {}
    for suffix, tier in _SERVICE_TIERS.items():
        given = {
            name: _ratio(spec.get(f"{name}_{suffix}"), spec.get(name))
            for name in _TIER_PRICED
            if spec.get(f"{name}_{suffix}") is not None
        }
        if not given:
            continue
        found = {round(f, 6) for f in given.values() if f is not None}
        if len(found) == 1:
            factors[tier] = found.pop()
            # The tier's cache read price follows from the factor (the format scales every part).
            carried.update(f"{name}_{suffix}" for name in (*given, "cache_read_input_token_cost"))
        else:
            problems.append(f"{tier} prices are not one factor of the standard prices: standard prices kept")
    if factors:
        billing[SERVICE_TIERS] = factors
    factor = _ratio(spec.get(_CACHE_WRITE_1H), spec.get("cache_creation_input_token_cost"))
    if factor is not None:
        billing[CACHE_WRITE_1H_FACTOR] = round(factor, 6)
        carried.add(_CACHE_WRITE_1H)
    text = {"audio_input": "input", "image_input": "input", "video_input": "input", "audio_output": "output"}
    modality: dict[str, float] = {}
    for name, kind in _MODALITY.items():
        price = _per_million(spec.get(name))
        if price is None:
            continue
        carried.add(name)
        # A price equal to the text price bills the same: not written.
        if price != _per_million(spec.get(f"{text[kind]}_cost_per_token")):
            modality[kind] = price
    if modality:
        billing[MODALITY_PRICES] = modality
    return billing, carried


def _ratio(price: object, base: object) -> float | None:
    tier, standard = _per_million(price), _per_million(base)
    if tier is None or not standard:
        return None
    return tier / standard


def _per_million(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return round(float(value) * 1_000_000, 9)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
