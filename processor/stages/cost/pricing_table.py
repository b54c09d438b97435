"""Pricing tables: the file format, loading and validation, and model-name matching.

A table is one file (YAML, JSON or CSV) or a directory of them (one per provider, say). Prices
are USD per million tokens. Schema (see pricing_tables/README.md for the full text):

    version: "2026-11-22"          # required in every file; a directory's version is the greatest
    provider: openai               # default provider of the entries ("*" = any provider)
    source: https://...            # default source URL of the entries
    as_of: 2026-11-22              # default date the prices were checked
    models:
      - model: gpt-4o              # canonical name, written to genops.cost.model
        match: exact               # exact (default) | prefix | regex
        aliases: [gpt-4o-2024-08-06]   # more exact names
        input: 2.5                 # uncached input
        output: 10
        cache_read: 1.25           # default: input price
        cache_write: null          # default: input price
        reasoning: null            # default: output price
        request: 0                 # USD per request
        tiers:                     # prices once the prompt (all input tokens) exceeds the size;
          - above_input_tokens: 200000     # they apply to every token of the request
            input: 2.5
            output: 15
        effective_from: 2025-06-10 # inclusive, UTC; spans are priced by their start time
        effective_to: null         # exclusive
        service_tiers: {batch: 0.5, flex: 0.5}   # token prices x factor, by the tier the span names
        cache_write_1h_factor: 1.6 # 1-hour cache writes cost the cache write price x this
        search_context_fees: {low: 0.005, high: 0.012}   # USD per request, by search context size
        modality_prices: {audio_input: 40, audio_output: 80}   # per million audio/image/video tokens

service_tiers and cache_write_1h_factor may be given per file too (the provider's rule); an entry's
own value wins. How the cost stage applies them: processor/stages/cost/billing_dimensions.py.

Matching a span's (provider, model): names are compared lowercased; provider-specific entries beat
provider-agnostic ("*") ones; within them exact beats prefix beats regex, the longest prefix wins,
and regexes are tried in file order. Without a provider on the span, every provider's entries are
candidates and first-party vendors win ties (FIRST_PARTY order).

A prefix entry matches its own name and that name's snapshots only (the rule is
processor/stages/cost/model_versions.py's: a date, a Bedrock or Vertex version may follow, nothing else).
A name that matches nothing but starts with a prefix entry's text is *near* that family: `match`
returns the family with `near` set, for the cost stage to write as estimated (or unpriced).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from processor.core.genai_attributes import normalize_provider
from processor.files.error_text import clip, shown
from processor.files.file_limits import MAX_DIRECTORY_BYTES, FileTooLarge, check_directory_total, read_limited
from processor.files.linear_regex import first_fullmatch, fullmatch_pattern, refused, regex_problem
from processor.files.safe_yaml import load_yaml
from processor.stages.cost.model_versions import is_snapshot_of

ANY_PROVIDER = "*"
MATCH_KINDS = ("exact", "prefix", "regex")
TABLE_SUFFIXES = (".yaml", ".yml", ".json", ".csv")
PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning")
# Billing dimensions beyond token prices (processor/stages/cost/billing_dimensions.py applies them); the first
# two may be file defaults, as a provider's rule for all its models.
SERVICE_TIERS = "service_tiers"
CACHE_WRITE_1H_FACTOR = "cache_write_1h_factor"
SEARCH_CONTEXT_FEES = "search_context_fees"
MODALITY_PRICES = "modality_prices"
# The per-modality token prices an entry may give (USD per million tokens), in place of the text
# input and output prices for those tokens.
MODALITY_KINDS = ("audio_input", "audio_output", "image_input", "video_input")
PROVIDER_BILLING_FIELDS = (SERVICE_TIERS, CACHE_WRITE_1H_FACTOR)
BILLING_FIELDS = (*PROVIDER_BILLING_FIELDS, SEARCH_CONTEXT_FEES, MODALITY_PRICES)
ENTRY_FIELDS = frozenset(
    {
        "model",
        "provider",
        "match",
        "aliases",
        *PRICE_FIELDS,
        "request",
        "tiers",
        "effective_from",
        "effective_to",
        "source",
        "as_of",
        "note",
        *BILLING_FIELDS,
    }
)
FILE_FIELDS = frozenset(
    {"version", "provider", "source", "as_of", "currency", "models", "description", *PROVIDER_BILLING_FIELDS}
)
TIER_FIELDS = frozenset({"above_input_tokens", *PRICE_FIELDS})
CSV_FIELDS = (
    "version",
    "provider",
    "model",
    "match",
    "aliases",
    *PRICE_FIELDS,
    "request",
    "tier_above_input_tokens",
    *(f"tier_{name}" for name in PRICE_FIELDS),
    "effective_from",
    "effective_to",
    "source",
    "as_of",
    "note",
)
# When a span names no provider: the model's own vendor wins over resellers of the same name.
FIRST_PARTY = ("openai", "anthropic", "google", "mistral", "cohere", "deepseek", "xai", "meta")
# Bedrock cross-region inference profiles prefix the model id with a geography.
_BEDROCK_REGION = re.compile(r"^(?:us|eu|apac|au|ca|jp|us-gov|global)\.(?=[a-z0-9-]+\.)")
_BEDROCK_VENDOR = re.compile(r"^[a-z][a-z0-9]*\.(?=[a-z])")
NS_PER_DAY = 86_400 * 1_000_000_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class PricingError(ValueError):
    """The pricing table cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [clip(problem, 600) for problem in problems]
        listed = "; ".join(self.problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"invalid pricing table: {listed}")


@dataclass(frozen=True)
class Tier:
    above_input_tokens: int
    prices: dict[str, float | None]


@dataclass(frozen=True)
class PriceEntry:
    provider: str
    model: str
    match: str
    aliases: tuple[str, ...]
    prices: dict[str, float | None]
    request: float
    tiers: tuple[Tier, ...]
    effective_from: dt.date | None
    effective_to: dt.date | None
    source: str
    as_of: dt.date | None
    origin: str
    # Token price factor by service tier name (lowercase): batch, flex, priority...
    service_tiers: dict[str, float] = field(default_factory=dict)
    cache_write_1h_factor: float | None = None
    # USD per request by search context size (lowercase); `request` is the assumed size's fee.
    search_context_fees: dict[str, float] = field(default_factory=dict)
    # USD per million tokens by MODALITY_KINDS (audio_input...); absent: the text price.
    modality_prices: dict[str, float] = field(default_factory=dict)

    @property
    def assumed_search_context(self) -> str | None:
        """The size a span that does not say its search context size is billed at."""
        return next((size for size, fee in self.search_context_fees.items() if fee == self.request), None)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.provider, self.match, self.model.lower())


@dataclass(frozen=True)
class ModelMatch:
    """The price history a span's model resolves to. `near`: the model is not the entry's (nor
    one of its snapshots), it only starts with a prefix entry's text; its price is an estimate."""

    group: int
    near: bool = False


@dataclass
class PricingTable:
    version: str
    entries: tuple[PriceEntry, ...]
    fingerprint: str
    # Resolution of (provider, model) → price history, cached for the life of this table only:
    # a reloaded table is a new object, so a stale match can never outlive the prices it came from.
    _cache: dict[tuple[str | None, str], ModelMatch | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        groups: dict[tuple[str, str, str], int] = {}
        self.group_of_entry: list[int] = []
        self.group_entry: list[PriceEntry] = []
        for entry in self.entries:
            group = groups.get(entry.key)
            if group is None:
                group = groups[entry.key] = len(groups)
                self.group_entry.append(entry)
            self.group_of_entry.append(group)
        aliases: list[list[tuple[str, ...]]] = [[] for _ in self.group_entry]
        for entry, group in zip(self.entries, self.group_of_entry, strict=True):
            aliases[group].append(entry.aliases)
        self._index: dict[str, _ProviderIndex] = {}
        for group, entry in enumerate(self.group_entry):
            index = self._index.setdefault(entry.provider, _ProviderIndex())
            index.add(group, entry, aliases[group])
        for index in self._index.values():
            index.finish()
        self.price_rows = _price_rows(self)
        self._day_slots: dict[int, PriceSlots] = {}

    @property
    def model_count(self) -> int:
        return len(self.group_entry)

    @property
    def providers(self) -> list[str]:
        return sorted(self._index)

    @cached_property
    def checked_on(self) -> dt.date | None:
        """The newest `as_of` of the entries: when the table's prices were last checked."""
        return max((e.as_of for e in self.entries if e.as_of is not None), default=None)

    def resolve(self, provider: str | None, model: str | None) -> int | None:
        """The price-history group of a span's provider and model: its own entry (exact, a prefix
        entry's snapshot, a regex); None when unpriced or only near a family (see match)."""
        found = self.match(provider, model)
        return None if found is None or found.near else found.group

    def match(self, provider: str | None, model: str | None) -> ModelMatch | None:
        """The model's own entry, else the family it is near (`near` set), else None."""
        if not model:
            return None
        cache_key = (provider, model)
        if cache_key in self._cache:
            return self._cache[cache_key]
        normalized = normalize_provider(provider)
        scopes = self._scopes(normalized)
        names = lookup_names(normalized, model)
        group = self._resolve(scopes, names)
        if group is not None:
            found: ModelMatch | None = ModelMatch(group)
        else:
            near = self._near(scopes, names)
            found = None if near is None else ModelMatch(near, near=True)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[cache_key] = found
        return found

    def _scopes(self, provider: str | None) -> list[list[str]]:
        if provider:
            scopes = [[provider], [ANY_PROVIDER]]
        else:
            ranked = sorted(
                (p for p in self._index if p != ANY_PROVIDER),
                key=lambda p: (FIRST_PARTY.index(p) if p in FIRST_PARTY else len(FIRST_PARTY), p),
            )
            scopes = [ranked, [ANY_PROVIDER]]
        return scopes

    def _resolve(self, scopes: list[list[str]], names: list[str]) -> int | None:
        for scope in scopes:
            indexes = [self._index[p] for p in scope if p in self._index]
            for name in names:
                for kind in MATCH_KINDS:
                    best: tuple[int, int] | None = None  # (prefix length, group)
                    for index in indexes:
                        hit = index.find(kind, name)
                        if hit is not None and (best is None or hit[0] > best[0]):
                            best = hit
                    if best is not None:
                        return best[1]
        return None

    def _near(self, scopes: list[list[str]], names: list[str]) -> int | None:
        """The family (longest prefix entry whose text the name starts with), scopes in order."""
        for scope in scopes:
            indexes = [self._index[p] for p in scope if p in self._index]
            for name in names:
                best: tuple[int, int] | None = None
                for index in indexes:
                    hit = index.near(name)
                    if hit is not None and (best is None or hit[0] > best[0]):
                        best = hit
                if best is not None:
                    return best[1]
        return None

    def entry(self, group: int) -> PriceEntry:
        return self.group_entry[group]

    @cached_property
    def histories(self) -> tuple[tuple[PriceEntry, ...], ...]:
        """Per price group, its entries (the model's price history)."""
        found: list[list[PriceEntry]] = [[] for _ in self.group_entry]
        for entry, group in zip(self.entries, self.group_of_entry, strict=True):
            found[group].append(entry)
        return tuple(map(tuple, found))

    @cached_property
    def search_fee_models(self) -> list[str]:
        """The canonical names of entries whose request fee depends on the search context size."""
        return sorted({e.model for e in self.entries if e.search_context_fees})

    @cached_property
    def search_fee_providers(self) -> frozenset[str]:
        return frozenset(e.provider for e in self.entries if e.search_context_fees)

    @cached_property
    def slots(self) -> PriceSlots:
        """The price rows laid out for a join-free lookup (built on first use, once per table)."""
        return PriceSlots.build(self.price_rows, self.model_count)

    def slots_for(self, first_ns: int | None, last_ns: int | None) -> PriceSlots:
        """Slots for spans that all start within [first_ns, last_ns]. Prices change at day
        boundaries, so when the span starts share a UTC day (a batch nearly always does), the rows
        in effect that day are all there is to pick from and no start needs comparing."""
        if first_ns is None or last_ns is None or first_ns < 0 or last_ns > INT64_MAX:
            return self.slots
        day = first_ns // NS_PER_DAY
        if last_ns // NS_PER_DAY != day:
            return self.slots
        found = self._day_slots.get(day)
        if found is None:
            if len(self._day_slots) >= 64:
                self._day_slots.clear()
            found = self._day_slots[day] = self.slots.within(day * NS_PER_DAY, (day + 1) * NS_PER_DAY - 1)
        return found


@dataclass(frozen=True)
class PriceSlots:
    """Picks a span's price row by gathers instead of a join, which costs more per batch than the
    whole lookup: `rows` are the price rows ordered by (group, threshold), and slot k holds, per
    group, the index in `rows` of its k-th row (null past the group's last). Groups have a few rows
    (price history x tiers), so a handful of slots cover every group.

    Dates are compared as start >= lo and start <= hi, lo = from_ns or Int64 min, hi = to_ns - 1 or
    Int64 max: with the span start null read as min for lo and max for hi, only open bounds admit
    it, as in the join's `from_ns is null or start >= from_ns` form, with fewer expressions.
    `dated` False: every row in the slots applies at any start the spans can have (see within).
    """

    rows: pl.DataFrame
    members: tuple[tuple[int, ...], ...]  # per group, its rows (indexes in `rows`)
    slots: tuple[pl.Series, ...]
    dated: bool

    @classmethod
    def build(cls, price_rows: pl.DataFrame, groups: int) -> PriceSlots:
        rows = (
            price_rows.with_row_index("_order")
            .sort("group", "threshold", "_order")
            .drop("_order")
            .with_columns(
                pl.col("from_ns").fill_null(INT64_MIN).alias("lo"),
                (pl.col("to_ns") - 1).fill_null(INT64_MAX).alias("hi"),
            )
        )
        per_group: list[list[int]] = [[] for _ in range(groups)]
        for index, group in enumerate(rows["group"].to_list()):
            per_group[group].append(index)
        return cls._of(rows, tuple(tuple(m) for m in per_group), dated=True)

    @classmethod
    def _of(cls, rows: pl.DataFrame, members: tuple[tuple[int, ...], ...], dated: bool) -> PriceSlots:
        depth = max((len(m) for m in members), default=0)
        slots = tuple(
            pl.Series(f"slot{k}", [m[k] if k < len(m) else None for m in members], dtype=pl.UInt32)
            for k in range(depth)
        )
        return cls(rows, members, slots, dated)

    def within(self, first_ns: int, last_ns: int) -> PriceSlots:
        """The slots for starts within [first_ns, last_ns]: rows in effect over all of it, and no
        date checks; these slots themselves when some row's dates begin or end inside it."""
        lo, hi = self.rows["lo"].to_list(), self.rows["hi"].to_list()
        kept: list[tuple[int, ...]] = []
        for members in self.members:
            keep = []
            for row in members:
                if lo[row] <= first_ns and hi[row] >= last_ns:
                    keep.append(row)
                elif hi[row] >= first_ns and lo[row] <= last_ns:
                    return self
            kept.append(tuple(keep))
        return PriceSlots._of(self.rows, tuple(kept), dated=False)

    def row_steps(self, group: str, start_lo: str, start_hi: str, prompt: str, out: str) -> list[list[pl.Expr]]:
        """Expressions, to evaluate one list after the other (polars' cost grows with an expression's
        depth faster than with its size), that leave in `out` the index in `rows` of the price that
        applies (null: none) as cost_frame's join picks it: the group's row in effect at the span
        start (start_lo / start_hi: the start, null filled as above) with the greatest threshold
        below the prompt size (`prompt`, never null)."""
        if not self.slots:
            return [[pl.lit(None, dtype=pl.UInt32).alias(out)]]
        # Starts as the module (pl.when), then a Then whose .when chains: no one type covers both.
        chosen: Any = pl
        if not self.dated:
            # Small enough to be one expression: each step of its own costs more than the repeats.
            for slot in reversed(self.slots):  # thresholds ascend within a group: the last that applies wins
                row = pl.lit(slot).gather(pl.col(group))
                chosen = chosen.when(pl.col(prompt) > self.column("threshold", row)).then(row)
            return [[chosen.otherwise(None).alias(out)]]
        candidates = [pl.lit(slot).gather(pl.col(group)).alias(f"{out}_{k}") for k, slot in enumerate(self.slots)]
        applies = []
        for k in range(len(self.slots)):
            row = pl.col(f"{out}_{k}")
            test = (
                (pl.col(start_lo) >= self.column("lo", row))
                & (pl.col(start_hi) <= self.column("hi", row))
                & (pl.col(prompt) > self.column("threshold", row))
            )
            applies.append(test.alias(f"{out}_applies_{k}"))
        for k in reversed(range(len(self.slots))):
            chosen = chosen.when(pl.col(f"{out}_applies_{k}")).then(pl.col(f"{out}_{k}"))
        return [candidates, applies, [chosen.otherwise(None).alias(out)]]

    def column(self, name: str, row: pl.Expr) -> pl.Expr:
        return pl.lit(self.rows[name]).gather(row)

    @cached_property
    def prices(self) -> pl.Series:
        """The prices and entry names of every row as one struct column: one gather fetches them all."""
        names = [*(f"p_{p}" for p in PRICE_FIELDS), "p_request", "entry_provider", "entry_model"]
        return self.rows.select(pl.struct(names).alias("prices")).to_series()


class _ProviderIndex:
    def __init__(self) -> None:
        self.exact: dict[str, int] = {}
        self.prefixes: list[tuple[str, int]] = []
        # Run by the linear-time engine (processor/files/linear_regex.py), never by Python's `re`.
        self.regexes: list[str] = []
        self.regex_groups: list[int] = []

    def add(self, group: int, entry: PriceEntry, alias_lists: list[tuple[str, ...]]) -> None:
        name = entry.model.lower()
        if entry.match == "exact":
            self.exact.setdefault(name, group)
        elif entry.match == "prefix":
            self.prefixes.append((name, group))
        else:
            self.regexes.append(fullmatch_pattern(entry.model))
            self.regex_groups.append(group)
        for aliases in alias_lists:
            for alias in aliases:
                self.exact.setdefault(alias.lower(), group)

    def finish(self) -> None:
        self.prefixes.sort(key=lambda item: -len(item[0]))

    def find(self, kind: str, name: str) -> tuple[int, int] | None:
        if kind == "exact":
            group = self.exact.get(name)
            return None if group is None else (len(name), group)
        if kind == "prefix":
            for prefix, group in self.prefixes:
                if is_snapshot_of(name, prefix):
                    return (len(prefix), group)
            return None
        hit = first_fullmatch(self.regexes, name)
        return None if hit is None else (0, self.regex_groups[hit])

    def near(self, name: str) -> tuple[int, int] | None:
        """The longest prefix entry `name` starts with, snapshot or not."""
        for prefix, group in self.prefixes:
            if name.startswith(prefix):
                return (len(prefix), group)
        return None


def priced_match(
    table: PricingTable, provider: str | None, model: str | None, *, estimate_near: bool
) -> ModelMatch | None:
    """The table's match for a pair as the stage prices it: a near match only when estimating."""
    found = table.match(provider, model)
    if found is None or (found.near and not estimate_near):
        return None
    return found


def without_region(name: str) -> str:
    """A Bedrock model id without its cross-region inference profile (`us.`, `global.`, ...)."""
    return _BEDROCK_REGION.sub("", name)


def lookup_names(provider: str | None, model: str) -> list[str]:
    """Names to try for a span's model, most specific first."""
    name = model.strip().lower()
    if name.startswith("arn:aws:bedrock:"):
        name = name.rsplit("/", 1)[-1]
    name = name.removeprefix("models/")
    names = [name]
    if provider in (None, "aws.bedrock"):
        # A cross-region profile is priced by its own entry when the table has one (`global.` and
        # geographic profiles are priced apart), else by the model's.
        regionless = without_region(name)
        if regionless != name:
            names.append(regionless)
        # `anthropic.claude-3-haiku-…`: tables also name Bedrock models without their vendor.
        vendorless = _BEDROCK_VENDOR.sub("", regionless)
        if vendorless != regionless:
            names.append(vendorless)
    if "/" in name:
        # "openai/gpt-4o" (routers), "accounts/fireworks/models/x": the last part is the model.
        names.append(name.rsplit("/", 1)[-1])
    return names


def _price_rows(table: PricingTable) -> pl.DataFrame:
    """One row per (entry, tier): what the cost stage joins spans against.

    threshold is the prompt size a row applies above (-1 for base prices); the row with the greatest
    threshold below the span's input wins. from_ns/to_ns bound the span start time (null = open).
    """
    rows: dict[str, list] = {
        name: []
        for name in (
            "group",
            "threshold",
            "from_ns",
            "to_ns",
            *(f"p_{p}" for p in PRICE_FIELDS),
            "p_request",
            "entry_provider",
            "entry_model",
        )
    }
    for entry, group in zip(table.entries, table.group_of_entry, strict=True):
        base = _filled(entry.prices, entry.prices)
        levels = [(-1, base)] + [(t.above_input_tokens, _filled(t.prices, entry.prices)) for t in entry.tiers]
        for threshold, prices in levels:
            rows["group"].append(group)
            rows["threshold"].append(threshold)
            rows["from_ns"].append(_date_ns(entry.effective_from))
            rows["to_ns"].append(_date_ns(entry.effective_to))
            for name in PRICE_FIELDS:
                rows[f"p_{name}"].append(prices[name])
            rows["p_request"].append(entry.request)
            rows["entry_provider"].append(entry.provider)
            rows["entry_model"].append(entry.model)
    return pl.DataFrame(
        rows,
        schema={
            "group": pl.UInt32,
            "threshold": pl.Int64,
            "from_ns": pl.Int64,
            "to_ns": pl.Int64,
            **{f"p_{p}": pl.Float64 for p in PRICE_FIELDS},
            "p_request": pl.Float64,
            "entry_provider": pl.String,
            "entry_model": pl.String,
        },
    )


def _filled(prices: dict[str, float | None], base: dict[str, float | None]) -> dict[str, float]:
    """Missing prices: a tier falls back to base; cache prices to input; reasoning to output."""
    out = {name: prices.get(name) if prices.get(name) is not None else base.get(name) for name in PRICE_FIELDS}
    out["input"] = out["input"] or 0.0
    out["output"] = out["output"] or 0.0
    for name in ("cache_read", "cache_write"):
        if out[name] is None:
            out[name] = out["input"]
    if out["reasoning"] is None:
        out["reasoning"] = out["output"]
    return out  # type: ignore[return-value]


def _date_ns(day: dt.date | None) -> int | None:
    return None if day is None else (day - dt.date(1970, 1, 1)).days * NS_PER_DAY


# --- loading ---------------------------------------------------------------------------------


def table_files(path: Path) -> list[Path]:
    """The files a table path stands for; hidden names (ConfigMap `..data`, `..2026_…`) are skipped."""
    if path.is_dir():
        visible = (p for p in path.iterdir() if not p.name.startswith("."))
        return sorted(p for p in visible if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())
    return [path]


def load_table(path: str | Path) -> PricingTable:
    """Reads and validates a table file or directory; raises PricingError listing every problem."""
    path = Path(path)
    if not path.exists():
        raise PricingError([f"{path}: no such file or directory"])
    files = table_files(path)
    if not files:
        raise PricingError([f"{path}: no pricing files (*.yaml, *.yml, *.json, *.csv)"])
    if path.is_dir():
        try:
            check_directory_total(path, files, MAX_DIRECTORY_BYTES)
        except FileTooLarge as exc:
            raise PricingError([str(exc)]) from None
    problems: list[str] = []
    entries: list[PriceEntry] = []
    versions: list[str] = []
    digest = hashlib.sha256()
    for file in files:
        try:
            raw = read_limited(file)
        except FileTooLarge as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(f"{file}: cannot read: {exc.strerror}")
            continue
        digest.update(file.name.encode() + b"\0" + raw + b"\0")
        version, file_entries, file_problems = _parse_file(file, raw)
        problems.extend(file_problems)
        entries.extend(file_entries)
        if version:
            versions.append(version)
    problems.extend(_check_histories(entries))
    if not entries and not problems:
        problems.append(f"{path}: the table has no models")
    if problems:
        raise PricingError(problems)
    return PricingTable(version=max(versions), entries=tuple(entries), fingerprint=digest.hexdigest()[:16])


def _parse_file(file: Path, raw: bytes) -> tuple[str | None, list[PriceEntry], list[str]]:
    suffix = file.suffix.lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, [], [f"{file}: not UTF-8 text"]
    if suffix == ".csv":
        try:
            return _parse_csv(file, text)
        except csv.Error as exc:
            return None, [], [f"{file}: not valid CSV: {clip(str(exc), 200)}"]
    try:
        document = json.loads(text) if suffix == ".json" else load_yaml(text)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError, YamlError, an integer too long to convert, nesting beyond the stack.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else clip(str(exc), 300)
        return None, [], [f"{file}: not valid {suffix[1:].upper()}: {reason}"]
    return parse_document(document, str(file))


def parse_document(document: object, where: str) -> tuple[str | None, list[PriceEntry], list[str]]:
    """Validates one YAML/JSON document of our schema (also used by the importers' self-check)."""
    if not isinstance(document, dict):
        return None, [], [f"{where}: must hold a mapping with version and models"]
    problems = [f"{where}: unknown field {k!r}" for k in sorted(set(document) - FILE_FIELDS, key=str)]
    version = document.get("version")
    if version is None or str(version).strip() == "":
        problems.append(f"{where}: version is required")
        version = None
    else:
        version = str(version)
    currency = str(document.get("currency", "USD"))
    if currency.upper() != "USD":
        problems.append(f"{where}: currency must be USD, not {shown(currency)}")
    models = document.get("models")
    if not isinstance(models, list):
        problems.append(f"{where}: models must be a list")
        return version, [], problems
    defaults = {k: document.get(k) for k in ("provider", "source", "as_of", *PROVIDER_BILLING_FIELDS)}
    entries: list[PriceEntry] = []
    for index, item in enumerate(models):
        entry, entry_problems = _entry(item, defaults, f"{where}: models[{index}]")
        problems.extend(entry_problems)
        if entry is not None:
            entries.append(entry)
    return version, entries, problems


def _parse_csv(file: Path, text: str) -> tuple[str | None, list[PriceEntry], list[str]]:
    reader = csv.DictReader(text.splitlines())
    unknown = sorted(set(reader.fieldnames or ()) - set(CSV_FIELDS))
    problems = [f"{file}: unknown column {name!r}" for name in unknown]
    versions: set[str] = set()
    entries: list[PriceEntry] = []
    for line, row in enumerate(reader, start=2):
        row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
        if row.get("version"):
            versions.add(row["version"])
        item: dict[str, object] = {
            k: v for k, v in row.items() if v not in (None, "") and not k.startswith("tier_") and k != "version"
        }
        if "aliases" in item:
            item["aliases"] = [a.strip() for a in str(item["aliases"]).split(";") if a.strip()]
        if row.get("tier_above_input_tokens"):
            item["tiers"] = [
                {
                    "above_input_tokens": row["tier_above_input_tokens"],
                    **{p: row[f"tier_{p}"] for p in PRICE_FIELDS if row.get(f"tier_{p}")},
                }
            ]
        entry, entry_problems = _entry(item, {}, f"{file}: line {line}")
        problems.extend(entry_problems)
        if entry is not None:
            entries.append(entry)
    if len(versions) != 1:
        problems.append(f"{file}: the version column must hold one value on every row, found {sorted(versions)}")
    return (max(versions) if versions else None), entries, problems


def _entry(item: object, defaults: dict[str, object], where: str) -> tuple[PriceEntry | None, list[str]]:
    if not isinstance(item, dict):
        return None, [f"{where}: must be a mapping"]
    problems = [f"{where}: unknown field {k!r}" for k in sorted(set(item) - ENTRY_FIELDS, key=str)]
    model = item.get("model")
    if not isinstance(model, str) or not model.strip():
        return None, [*problems, f"{where}: model is required"]
    where = f"{where} ({clip(model, 60)})"
    provider_raw = item.get("provider", defaults.get("provider"))
    if not provider_raw:
        problems.append(f"{where}: provider is required (on the entry or the file)")
        provider = ANY_PROVIDER
    else:
        provider = ANY_PROVIDER if str(provider_raw) == ANY_PROVIDER else normalize_provider(str(provider_raw)) or ""
    match = str(item.get("match", "exact"))
    if match not in MATCH_KINDS:
        problems.append(f"{where}: match must be exact, prefix or regex, not {shown(match)}")
    elif match == "regex":
        reason = regex_problem(fullmatch_pattern(model.strip()))
        if reason is not None:
            problems.append(f"{where}: {refused(model.strip(), reason)}")
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        problems.append(f"{where}: aliases must be a list of names")
        aliases = []
    prices = {name: _price(item.get(name), f"{where}: {name}", problems) for name in PRICE_FIELDS}
    if item.get("input") is None:
        problems.append(f"{where}: input price is required")
    request = _price(item.get("request"), f"{where}: request", problems) or 0.0
    tiers = _tiers(item.get("tiers"), where, problems)
    start = _date(item.get("effective_from"), f"{where}: effective_from", problems)
    end = _date(item.get("effective_to"), f"{where}: effective_to", problems)
    if start and end and end <= start:
        problems.append(f"{where}: effective_to must be after effective_from")
    as_of = _date(item.get("as_of", defaults.get("as_of")), f"{where}: as_of", problems)
    source = item.get("source", defaults.get("source")) or ""
    tiers_by_name = _factors(
        item.get(SERVICE_TIERS, defaults.get(SERVICE_TIERS)), f"{where}: {SERVICE_TIERS}", problems
    )
    factor_1h = _price(
        item.get(CACHE_WRITE_1H_FACTOR, defaults.get(CACHE_WRITE_1H_FACTOR)),
        f"{where}: {CACHE_WRITE_1H_FACTOR}",
        problems,
    )
    fees = _factors(item.get(SEARCH_CONTEXT_FEES), f"{where}: {SEARCH_CONTEXT_FEES}", problems)
    modality = _factors(item.get(MODALITY_PRICES), f"{where}: {MODALITY_PRICES}", problems)
    problems.extend(
        f"{where}: {MODALITY_PRICES}: unknown kind {shown(kind)} (one of {', '.join(MODALITY_KINDS)})"
        for kind in modality
        if kind not in MODALITY_KINDS
    )
    if fees and request not in fees.values():
        problems.append(
            f"{where}: request ({request}) must be the fee of one of the search_context_fees sizes: the one a span "
            "that does not say its size is billed at"
        )
    if problems:
        return None, problems
    entry = PriceEntry(
        provider=provider,
        model=model.strip(),
        match=match,
        aliases=tuple(aliases),
        prices=prices,
        request=request,
        tiers=tiers,
        effective_from=start,
        effective_to=end,
        source=str(source),
        as_of=as_of,
        origin=where,
        service_tiers=tiers_by_name,
        cache_write_1h_factor=factor_1h,
        search_context_fees=fees,
        modality_prices=modality,
    )
    return entry, []


def _factors(value: object, where: str, problems: list[str]) -> dict[str, float]:
    """A mapping of names (lowercased) to non-negative numbers."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where} must be a mapping of names to numbers")
        return {}
    out: dict[str, float] = {}
    for name, raw in value.items():
        number = _price(raw, f"{where}: {clip(str(name), 40)}", problems)
        if number is not None:
            out[str(name).strip().lower()] = number
    return out


def _price(value: object, where: str, problems: list[str]) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        problems.append(f"{where} must be a number, not {shown(value)}")
        return None
    if isinstance(value, bool) or math.isnan(number) or math.isinf(number) or number < 0:
        problems.append(f"{where} must be a non-negative number, not {shown(value)}")
        return None
    return number


def _date(value: object, where: str, problems: list[str]) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        problems.append(f"{where} must be a date (YYYY-MM-DD), not {shown(value)}")
        return None


def _tiers(value: object, where: str, problems: list[str]) -> tuple[Tier, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: tiers must be a list")
        return ()
    tiers: list[Tier] = []
    for index, raw in enumerate(value):
        here = f"{where}: tiers[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{here} must be a mapping")
            continue
        problems.extend(f"{here}: unknown field {k!r}" for k in sorted(set(raw) - TIER_FIELDS, key=str))
        try:
            above = int(raw.get("above_input_tokens"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            problems.append(f"{here}: above_input_tokens must be a whole number of tokens")
            continue
        if above <= 0:
            problems.append(f"{here}: above_input_tokens must be positive")
            continue
        tiers.append(Tier(above, {name: _price(raw.get(name), f"{here}: {name}", problems) for name in PRICE_FIELDS}))
    thresholds = [t.above_input_tokens for t in tiers]
    if len(set(thresholds)) != len(thresholds):
        problems.append(f"{where}: two tiers start at the same size")
    return tuple(sorted(tiers, key=lambda t: t.above_input_tokens))


def _check_histories(entries: Iterable[PriceEntry]) -> Iterator[str]:
    """Entries for one (provider, match, model) are a price history: their date ranges may not overlap."""
    by_key: dict[tuple[str, str, str], list[PriceEntry]] = {}
    for entry in entries:
        by_key.setdefault(entry.key, []).append(entry)
    low, high = dt.date.min, dt.date.max
    for history in by_key.values():
        ordered = sorted(history, key=lambda e: e.effective_from or low)
        for before, after in itertools.pairwise(ordered):
            if (before.effective_to or high) > (after.effective_from or low):
                yield (
                    f"{after.origin}: overlaps {before.origin} ({before.effective_from or 'open'} to "
                    f"{before.effective_to or 'open'}); give each price of one model distinct effective dates"
                )


# An installed wheel carries the repository's pricing_tables/ inside the package (setup.py maps it
# there); a source checkout or an editable install has only the top-level folder.
_PACKAGE = Path(__file__).resolve().parents[2]  # processor/
_PACKAGED_TABLES = _PACKAGE / "pricing_tables"
_REPOSITORY_TABLES = _PACKAGE.parent / "pricing_tables"


def default_table_path() -> Path:
    """The default pricing tables: the ones packaged in the wheel, else the repository's."""
    return _PACKAGED_TABLES if _PACKAGED_TABLES.is_dir() else _REPOSITORY_TABLES
