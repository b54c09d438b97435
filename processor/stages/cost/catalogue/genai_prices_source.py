"""Reads genai-prices' price data into catalogue entries.

The data ships inside the `genai-prices` package (genai_prices.data.providers, Python objects);
a YAML/JSON file in the project's provider schema (a provider with `id` and `models`, or a list of
them) is read as well. Both are first made plain mappings, then converted by one path:

- match clauses: `equals` → exact names (the model id first when it is one), `starts_with` and
  `contains` → prefix entries (matched version-safely, processor/stages/cost/model_versions.py), `regex` →
  regex entries; `ends_with` a whole model name → that exact name (longer names ending with it are
  it behind a route, which the lookup strips); other `ends_with` and `and` clauses cannot be
  expressed and are reported;
- prices: a list of conditional prices with start dates → a price history; time-of-day prices are
  reported and the unconstrained price kept; tiered prices → tiers; `requests_kcount` → per-request
  fee; audio/image/video token prices → modality prices; 1-hour cache writes → a factor of the
  cache write price; dimensions our format does not carry (audio hours, web searches, image
  output...) are counted in the report.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import json
import re
from dataclasses import is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from processor.stages.cost.catalogue.entries import (
    GENAI_PRICES,
    CatalogueEntry,
    SourceData,
    Unconvertible,
    empty_prices,
)
from processor.stages.cost.catalogue.providers import genai_prices_model_provider, genai_prices_provider
from processor.stages.cost.pricing_table import (
    CACHE_WRITE_1H_FACTOR,
    MODALITY_KINDS,
    MODALITY_PRICES,
    Tier,
    without_region,
)

INSTALLED = "installed"
# An `ends_with` text that is a model name of its own (not a suffix such as `-turbo`).
_MODEL_NAME = re.compile(r"^[a-z][a-z0-9.]*-[a-z0-9.-]*[a-z0-9]$", re.IGNORECASE)
_TOKEN_FIELDS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "output_reasoning_mtok": "reasoning",
}

# Per-modality token prices (USD per million tokens) → MODALITY_KINDS; the 1-hour cache write
# price → a factor of the (5-minute) cache write price.
_MODALITY_FIELDS = {
    "input_audio_mtok": "audio_input",
    "output_audio_mtok": "audio_output",
    "input_image_mtok": "image_input",
    "input_video_mtok": "video_input",
}
_CACHE_WRITE_1H = "cache_write_1h_mtok"


class SourceError(ValueError):
    """A source file or package that cannot be read as what it claims to be."""


def read_genai_prices(where: str, as_of: dt.date) -> SourceData:
    """`where`: "installed" (the genai-prices package on this machine) or a data file."""
    if where == INSTALLED:
        try:
            module = importlib.import_module("genai_prices.data")
            version = importlib.metadata.version("genai-prices")
        except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
            raise SourceError(f"the genai-prices package is not installed ({exc})") from exc
        providers = [plain(p) for p in module.providers]
        label, url = f"genai-prices {version}", f"https://pypi.org/project/genai-prices/{version}/"
    else:
        path = Path(where)
        try:
            text = path.read_text(encoding="utf-8")
            document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
        providers = document if isinstance(document, list) else [document]
        label = url = f"genai-prices data file {path.name}"
    if not all(isinstance(p, dict) and "id" in p and isinstance(p.get("models"), list) for p in providers):
        raise SourceError(f"{where}: expected a genai-prices provider (id, models) or a list of them")
    return _convert(providers, label, url, as_of)


def plain(value: Any) -> Any:
    """genai-prices' objects as the plain mappings of its YAML files (`or_` → `or`, Decimal → float)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (dt.date, dt.time, str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if is_dataclass(value) or hasattr(value, "__dict__"):
        return {k.rstrip("_"): plain(v) for k, v in vars(value).items() if v is not None and not k.startswith("_")}
    return value


def _convert(providers: list[dict], label: str, source: str, as_of: dt.date) -> SourceData:
    entries: list[CatalogueEntry] = []
    unconvertible: list[Unconvertible] = []
    dropped: dict[str, int] = {}
    for provider_doc in providers:
        provider = genai_prices_provider(str(provider_doc["id"]))
        for model in provider_doc["models"]:
            if not isinstance(model, dict) or "id" not in model:
                continue
            owner = genai_prices_model_provider(provider, str(model["id"]))
            found, problems = _model_entries(model, owner, source, as_of, dropped)
            entries.extend(found)
            unconvertible.extend(Unconvertible(GENAI_PRICES, owner, str(model["id"]), p) for p in problems)
    return SourceData(GENAI_PRICES, label, tuple(entries), tuple(unconvertible), dropped)


def _model_entries(
    model: dict, provider: str, source: str, as_of: dt.date, dropped: dict[str, int]
) -> tuple[list[CatalogueEntry], list[str]]:
    problems: list[str] = []
    clauses = _clauses(model.get("match") or {}, problems)
    if provider == "aws.bedrock":
        clauses = _without_profile_copies(clauses)
    model_id = str(model["id"])
    exact = [name for kind, name in clauses if kind == "exact"]
    if model_id in exact:
        exact.remove(model_id)
        exact.insert(0, model_id)
    matches = ([("exact", exact[0], tuple(exact[1:]))] if exact else []) + [
        (kind, name, ()) for kind, name in clauses if kind != "exact"
    ]
    if not matches:
        return [], [*problems, "no match clause our format can express"]
    periods, period_problems = _periods(model.get("prices"))
    problems.extend(period_problems)
    entries = []
    for start, end, price in periods:
        converted = _prices(price, dropped)
        if converted is None:
            problems.append("no per-token or per-request price")
            return [], problems
        prices, request, tiers, billing = converted
        for kind, name, aliases in matches:
            entries.append(
                CatalogueEntry(
                    provider=provider,
                    model=name,
                    match=kind,
                    aliases=aliases,
                    prices=prices,
                    request=request,
                    tiers=tiers,
                    effective_from=start,
                    effective_to=end,
                    origin=GENAI_PRICES,
                    source=source,
                    as_of=as_of,
                    billing=billing,
                )
            )
    return entries, problems


def _without_profile_copies(clauses: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drops `us.x`-style names of a model that also has the name `x`: the matcher tries a profile
    name and then the name without it, so the copy adds nothing but a price to keep in step."""
    names = {name for _, name in clauses}
    return [(kind, name) for kind, name in clauses if without_region(name) == name or without_region(name) not in names]


def _clauses(clause: dict, problems: list[str]) -> list[tuple[str, str]]:
    if "or" in clause:
        return [found for sub in clause["or"] for found in _clauses(sub, problems)]
    if "equals" in clause:
        return [("exact", str(clause["equals"]))]
    if "ends_with" in clause and _MODEL_NAME.match(str(clause["ends_with"])):
        # A whole model name: the names ending with it are that name behind a route or path
        # (`google/gemini-2.0-flash`, `models/...`), which the lookup strips; so it is that name.
        return [("exact", str(clause["ends_with"]))]
    if "starts_with" in clause:
        return [("prefix", str(clause["starts_with"]))]
    if "contains" in clause:
        # Sources use `contains` for a full model id inside a longer name (ARNs, profiles), which
        # our lookup strips; a prefix entry keeps the id's siblings out.
        return [("prefix", str(clause["contains"]))]
    if "regex" in clause:
        pattern = str(clause["regex"]).removeprefix("^").removesuffix("$")  # ours are full matches
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"bad regex {clause['regex']!r}: {exc}")
            return []
        return [("regex", pattern)]
    problems.append(f"match clause {sorted(clause)} not expressible as exact/prefix/regex")
    return []


def _periods(prices: Any) -> tuple[list[tuple[dt.date | None, dt.date | None, dict]], list[str]]:
    """(effective_from, effective_to, prices) per period, in date order."""
    if isinstance(prices, dict):
        return [(None, None, prices)], []
    problems: list[str] = []
    dated: list[tuple[dt.date | None, dict]] = []
    for conditional in prices or []:
        constraint = conditional.get("constraint") or {}
        if "start_time" in constraint:
            problems.append("time-of-day price not modelled: the unconstrained price is kept")
            continue
        start = constraint.get("start_date")
        if isinstance(start, str):
            start = dt.date.fromisoformat(start)
        dated.append((start, conditional.get("prices") or {}))
    dated.sort(key=lambda item: item[0] or dt.date.min)
    out = []
    for index, (start, price) in enumerate(dated):
        end = dated[index + 1][0] if index + 1 < len(dated) else None
        out.append((start, end, price))
    return out, problems


def _prices(
    price: dict, dropped: dict[str, int]
) -> tuple[dict[str, float | None], float | None, tuple[Tier, ...], dict[str, object]] | None:
    prices = empty_prices()
    tiers: dict[int, dict[str, float | None]] = {}
    modality: dict[str, float] = {}
    for theirs, value in price.items():
        ours = _TOKEN_FIELDS.get(theirs)
        kind = _MODALITY_FIELDS.get(theirs)
        if kind is not None and value is not None:
            modality[kind] = float(value["base"] if isinstance(value, dict) else value)
            continue
        if ours is None:
            if theirs not in ("requests_kcount", _CACHE_WRITE_1H):
                dropped[theirs] = dropped.get(theirs, 0) + 1
            continue
        if isinstance(value, dict):
            prices[ours] = float(value["base"])
            for tier in value.get("tiers", []):
                tiers.setdefault(int(tier["start"]), {})[ours] = float(tier["price"])
        elif value is not None:
            prices[ours] = float(value)
    request = price.get("requests_kcount")
    request = None if request is None else float(request) / 1000
    carried = any(v is not None for v in prices.values()) or request is not None
    if not carried and price:
        return None  # only dimensions we do not carry (audio hours, pages...)
    if prices["input"] is None:
        prices["input"] = 0.0  # an empty price list is a free model (`:free` routes)
    tier_list = tuple(Tier(size, {**empty_prices(), **values}) for size, values in sorted(tiers.items()))
    billing: dict[str, object] = {}
    write_1h, write = price.get(_CACHE_WRITE_1H), prices["cache_write"]
    if write_1h is not None and write:
        hour = float(write_1h["base"] if isinstance(write_1h, dict) else write_1h)
        billing[CACHE_WRITE_1H_FACTOR] = round(hour / write, 6)
    elif write_1h is not None:
        dropped[_CACHE_WRITE_1H] = dropped.get(_CACHE_WRITE_1H, 0) + 1
    text = {"audio_output": prices["output"]}
    # A modality price equal to the text price bills the same: not written.
    modality = {k: v for k, v in modality.items() if v != text.get(k, prices["input"])}
    if modality:
        billing[MODALITY_PRICES] = {kind: modality[kind] for kind in MODALITY_KINDS if kind in modality}
    return prices, request, tier_list, billing
