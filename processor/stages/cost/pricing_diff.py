"""`genops-sidecar pricing diff OLD NEW`: the price changes between two tables, for reviewing a
pricing ConfigMap change. Entries are compared by (provider, match kind, model, effective_from):
one price of one model's history. Prints added (+), removed (-) and changed (~) entries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from processor.stages.cost.pricing_table import BILLING_FIELDS, PRICE_FIELDS, PriceEntry, PricingTable

EntryKey = tuple[str, str, str, dt.date | None]


@dataclass(frozen=True)
class TableDiff:
    added: tuple[PriceEntry, ...]
    removed: tuple[PriceEntry, ...]
    changed: tuple[tuple[PriceEntry, PriceEntry, tuple[str, ...]], ...]  # (old, new, what changed)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_tables(old: PricingTable, new: PricingTable) -> TableDiff:
    before, after = _by_key(old), _by_key(new)
    changed = []
    for key in sorted(before.keys() & after.keys(), key=_order):
        what = _changes(before[key], after[key])
        if what:
            changed.append((before[key], after[key], what))
    return TableDiff(
        added=tuple(after[k] for k in sorted(after.keys() - before.keys(), key=_order)),
        removed=tuple(before[k] for k in sorted(before.keys() - after.keys(), key=_order)),
        changed=tuple(changed),
    )


def render(diff: TableDiff) -> list[str]:
    lines = [f"+ {_name(e)}: {_prices(e)}" for e in diff.added]
    lines += [f"- {_name(e)}: {_prices(e)}" for e in diff.removed]
    lines += [f"~ {_name(new)}: {'; '.join(what)}" for _, new, what in diff.changed]
    return lines


def _by_key(table: PricingTable) -> dict[EntryKey, PriceEntry]:
    return {(e.provider, e.match, e.model.lower(), e.effective_from): e for e in table.entries}


def _order(key: EntryKey) -> tuple:
    provider, match, model, start = key
    return (provider, model, match, start or dt.date.min)


def _name(entry: PriceEntry) -> str:
    kind = "" if entry.match == "exact" else f" ({entry.match})"
    since = f" from {entry.effective_from}" if entry.effective_from else ""
    return f"{entry.provider} {entry.model}{kind}{since}"


def _prices(entry: PriceEntry) -> str:
    given = [f"{name} {entry.prices[name]:g}" for name in PRICE_FIELDS if entry.prices.get(name) is not None]
    if entry.request:
        given.append(f"request {entry.request:g}")
    if entry.tiers:
        given.append(f"{len(entry.tiers)} tier(s)")
    given += [f"{name} {_shown(getattr(entry, name))}" for name in BILLING_FIELDS if getattr(entry, name)]
    return ", ".join(given)


def _changes(old: PriceEntry, new: PriceEntry) -> tuple[str, ...]:
    out = []
    for name in PRICE_FIELDS:
        if old.prices.get(name) != new.prices.get(name):
            out.append(f"{name} {_value(old.prices.get(name))} -> {_value(new.prices.get(name))}")
    if old.request != new.request:
        out.append(f"request {old.request:g} -> {new.request:g}")
    if old.tiers != new.tiers:
        out.append("tiers changed")
    if old.effective_to != new.effective_to:
        out.append(f"effective_to {old.effective_to or 'open'} -> {new.effective_to or 'open'}")
    for name in BILLING_FIELDS:  # service tiers, 1-hour cache writes, search fees, modality prices
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append(f"{name} {_shown(before)} -> {_shown(after)}")
    if set(old.aliases) != set(new.aliases):
        out.append(f"aliases {sorted(old.aliases)} -> {sorted(new.aliases)}")
    return tuple(out)


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(value.items())) + "}" if value else "none"
    return "none" if value is None else f"{value:g}"


def _value(price: float | None) -> str:
    return "default" if price is None else f"{price:g}"
