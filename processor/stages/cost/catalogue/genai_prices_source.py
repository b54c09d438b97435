"""Reads genai-prices' price data into catalogue entries.

The data ships inside the `genai-prices` package (genai_prices.data.providers, Python objects);
a YAML/JSON file in the project's provider schema (a provider with `id` and `models`, or a list of
them) is read as well. Both are first made plain mappings, then converted by one path:

- match clauses: `equals` → exact names (the model id first when it is one), `starts_with` and
  `contains` → prefix entries (matched version-safely, processor/stages/cost/model_versions.py), `regex` →
  regex entries; `ends_with` and `and` clauses cannot be expressed and are reported;
- prices: a list of conditional prices with start dates → a price history; time-of-day prices are
  reported and the unconstrained price kept; tiered prices → tiers; `requests_kcount` → per-request
  fee; dimensions our format does not carry (audio, images, web searches, 1h cache writes, service
  tier variants) are counted in the report.
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
from processor.stages.cost.catalogue.providers import genai_prices_provider
from processor.stages.cost.pricing_table import Tier, without_region

INSTALLED = "installed"
_TOKEN_FIELDS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "output_reasoning_mtok": "reasoning",
}


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
            found, problems = _model_entries(model, provider, source, as_of, dropped)
            entries.extend(found)
            unconvertible.extend(Unconvertible(GENAI_PRICES, provider, str(model["id"]), p) for p in problems)
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
        prices, request, tiers = converted
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
) -> tuple[dict[str, float | None], float | None, tuple[Tier, ...]] | None:
    prices = empty_prices()
    tiers: dict[int, dict[str, float | None]] = {}
    for theirs, value in price.items():
        ours = _TOKEN_FIELDS.get(theirs)
        if ours is None:
            if theirs != "requests_kcount":
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
    return prices, request, tier_list
