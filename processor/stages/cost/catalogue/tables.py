"""Catalogue entries ↔ our table documents (one per provider), and a PricingTable to match with."""

from __future__ import annotations

import datetime as dt
import math

import yaml

from processor.stages.cost.catalogue.entries import CatalogueEntry
from processor.stages.cost.catalogue.providers import PROVIDER_BILLING
from processor.stages.cost.pricing_table import (
    CACHE_WRITE_1H_FACTOR,
    MODALITY_KINDS,
    MODALITY_PRICES,
    PRICE_FIELDS,
    SERVICE_TIERS,
    PricingError,
    PricingTable,
    parse_document,
)


def provider_file(provider: str) -> str:
    """The file a provider's entries are written to: `aws.bedrock` → `aws-bedrock.yaml`."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in provider)
    return f"{safe}.yaml"


def entry_mapping(entry: CatalogueEntry, defaults: dict[str, object]) -> dict[str, object]:
    """The entry in our schema, leaving out what equals the file's defaults or the format's."""
    out: dict[str, object] = {"model": entry.model}
    if entry.match != "exact":
        out["match"] = entry.match
    if entry.aliases:
        out["aliases"] = list(entry.aliases)
    for name in PRICE_FIELDS:
        value = entry.prices.get(name)
        if value is not None or name == "input":
            out[name] = _number(value or 0.0)
    if entry.request:
        out["request"] = _number(entry.request)
    out.update(_billing(entry.billing, defaults))
    if entry.tiers:
        out["tiers"] = [{"above_input_tokens": t.above_input_tokens, **_given(t.prices)} for t in entry.tiers]
    if entry.effective_from:
        out["effective_from"] = entry.effective_from.isoformat()
    if entry.effective_to:
        out["effective_to"] = entry.effective_to.isoformat()
    if entry.source and entry.source != defaults.get("source"):
        out["source"] = entry.source
    if entry.as_of and entry.as_of.isoformat() != defaults.get("as_of"):
        out["as_of"] = entry.as_of.isoformat()
    if entry.note:
        out["note"] = entry.note
    return out


def _billing(billing: dict[str, object], defaults: dict[str, object]) -> dict[str, object]:
    """The entry's billing dimensions that differ from its file's provider rule. Service tier
    factors add to the rule's (a source listing only priority keeps the provider's batch factor)."""
    out: dict[str, object] = {}
    tiers = billing.get(SERVICE_TIERS)
    if isinstance(tiers, dict) and tiers:
        rule = defaults.get(SERVICE_TIERS)
        merged = {**(rule if isinstance(rule, dict) else {}), **tiers}
        if merged != rule:
            out[SERVICE_TIERS] = {name: _number(merged[name]) for name in sorted(merged)}
    factor = billing.get(CACHE_WRITE_1H_FACTOR)
    if isinstance(factor, float | int) and factor != defaults.get(CACHE_WRITE_1H_FACTOR):
        out[CACHE_WRITE_1H_FACTOR] = _number(float(factor))
    modality = billing.get(MODALITY_PRICES)
    if isinstance(modality, dict) and modality:
        out[MODALITY_PRICES] = {kind: _number(modality[kind]) for kind in MODALITY_KINDS if kind in modality}
    return out


def _given(prices: dict[str, float | None]) -> dict[str, float | int]:
    return {name: _number(value) for name, value in prices.items() if value is not None}


def _number(value: float) -> float | int:
    # 2.0 → 2: shorter files, same value.
    return int(value) if math.isfinite(value) and value == int(value) and abs(value) < 1e15 else value


def document_of(provider: str, entries: list[CatalogueEntry], version: str, source: str, as_of: dt.date) -> dict:
    defaults: dict[str, object] = {"source": source, "as_of": as_of.isoformat()}
    rule = PROVIDER_BILLING.get(provider, {})
    return {
        "version": version,
        "provider": provider,
        **defaults,
        **rule,
        "models": [entry_mapping(e, {**defaults, **rule}) for e in entries],
    }


def dump(document: dict, header: str) -> str:
    """YAML with one entry per line: compact (ConfigMaps have a size limit) and easy to diff."""
    head = {k: v for k, v in document.items() if k != "models"}
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines.append(yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=10_000).rstrip())
    lines.append("models:")
    for model in document["models"]:
        flow = yaml.safe_dump(model, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10_000)
        lines.append(f"  - {flow.strip()}")
    return "\n".join(lines) + "\n"


def table_of(entries: list[CatalogueEntry]) -> tuple[PricingTable, dict[int, CatalogueEntry]]:
    """A PricingTable of the entries (to run the real matcher), and per price group the entry in
    effect now (the one without an end date; else the latest)."""
    mappings = [{"provider": e.provider, **entry_mapping(e, {})} for e in entries]
    _, parsed, problems = parse_document({"version": "catalogue", "models": mappings}, "catalogue")
    if problems:
        raise PricingError(problems)
    table = PricingTable(version="catalogue", entries=tuple(parsed), fingerprint="catalogue")
    current: dict[int, CatalogueEntry] = {}
    for entry, group in zip(entries, table.group_of_entry, strict=True):
        held = current.get(group)
        if held is None or held.effective_to is not None:
            current[group] = entry
    return table, current
