"""Merges the two sources: genai-prices first (it has price histories), LiteLLM for the models it
lacks, and every price both give for one model compared.

A LiteLLM model is "had" by genai-prices when the version-safe matcher prices its name with a
genai-prices entry of the same provider (its own name, an alias, or a snapshot of a prefix entry);
then the current prices are compared field by field and every difference above the tolerance is a
Disagreement. Otherwise the LiteLLM entry joins the catalogue as the model's own entry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from processor.stages.cost.catalogue.entries import CatalogueEntry, Disagreement, SourceData, Unconvertible
from processor.stages.cost.catalogue.tables import table_of
from processor.stages.cost.model_versions import is_snapshot_of

COMPARED = ("input", "output", "cache_read", "cache_write")
TOLERANCE = 0.01


@dataclass(frozen=True)
class Merged:
    entries: tuple[CatalogueEntry, ...]
    disagreements: tuple[Disagreement, ...]
    duplicates: tuple[Unconvertible, ...]
    compared: int  # models both sources price


def merge(primary: SourceData, secondary: SourceData, tolerance: float = TOLERANCE) -> Merged:
    kept, duplicates = deduplicate(primary.entries)
    table, by_group = table_of(kept)
    entries = list(kept)
    disagreements: list[Disagreement] = []
    billing: dict[int, dict[str, object]] = {}  # by id() of the current genai-prices entry
    compared = 0
    for entry in secondary.entries:
        found = table.match(entry.provider, entry.model)
        if found is None or found.near or table.entry(found.group).provider != entry.provider:
            entries.append(entry)
            continue
        current = by_group[found.group]
        if entry.billing and entry.model.lower() in {n.lower() for n in current.names}:
            # genai-prices has no service tiers and fewer modality prices: LiteLLM's, for the same
            # model name, complete the current entry (genai-prices' own values win).
            billing[id(current)] = _completed(current.billing, entry.billing)
        compared += 1
        for name in COMPARED:
            # Given prices only: a default (cache = input) is no claim of the source's.
            theirs, ours = current.prices.get(name), entry.prices.get(name)
            if theirs is None or ours is None:
                continue
            disagreement = Disagreement(entry.provider, entry.model, name, theirs, ours, f"{current.origin} kept")
            if disagreement.relative > tolerance:
                disagreements.append(disagreement)
    entries = [replace(e, billing=billing[id(e)]) if id(e) in billing else e for e in entries]
    return Merged(tuple(entries), tuple(disagreements), tuple(duplicates), compared)


def _completed(ours: dict[str, object], theirs: dict[str, object]) -> dict[str, object]:
    out = dict(ours)
    for name, value in theirs.items():
        held = out.get(name)
        if isinstance(held, dict) and isinstance(value, dict):
            out[name] = {**value, **held}
        elif held is None:
            out[name] = value
    return out


def deduplicate(entries: tuple[CatalogueEntry, ...]) -> tuple[list[CatalogueEntry], list[Unconvertible]]:
    """First one wins: one entry per (provider, match, model, start), one owner per exact name.

    A dropped duplicate's aliases that are snapshots of the winner's name (a dated name, by the
    matcher's rule in model_versions.py) become the winner's aliases when no entry owns them: two
    source providers mapped onto one (genai-prices' `zai` and `zhipuai`) may name one model's
    snapshots on one side only, and the catalogue lint wants every source name priced."""
    seen: dict[tuple, int] = {}
    owners: dict[tuple[str, str], str] = {}
    kept: list[CatalogueEntry] = []
    dropped: list[Unconvertible] = []
    for entry in entries:
        key = (entry.provider, entry.match, entry.model.lower(), entry.effective_from)
        if key in seen:
            dropped.append(Unconvertible(entry.origin, entry.provider, entry.model, "priced by an earlier model"))
            if entry.match == "exact":
                kept[seen[key]] = _with_snapshot_aliases(kept[seen[key]], entry, owners)
            continue
        if entry.match == "exact":
            owner = owners.get((entry.provider, entry.model.lower()))
            if owner is not None and owner != entry.model.lower():
                dropped.append(Unconvertible(entry.origin, entry.provider, entry.model, f"an alias of {owner}"))
                continue
            aliases = []
            for alias in entry.aliases:
                alias_owner = owners.setdefault((entry.provider, alias.lower()), entry.model.lower())
                if alias_owner == entry.model.lower():
                    aliases.append(alias)
                else:
                    reason = f"already priced by {alias_owner}"
                    dropped.append(Unconvertible(entry.origin, entry.provider, alias, reason))
            owners.setdefault((entry.provider, entry.model.lower()), entry.model.lower())
            if len(aliases) != len(entry.aliases):
                entry = replace(entry, aliases=tuple(aliases))
        seen[key] = len(kept)
        kept.append(entry)
    return kept, dropped


def _with_snapshot_aliases(
    winner: CatalogueEntry, duplicate: CatalogueEntry, owners: dict[tuple[str, str], str]
) -> CatalogueEntry:
    """`winner` with the duplicate's unowned aliases that are snapshots of its name."""
    name = winner.model.lower()
    added: list[str] = []
    for alias in duplicate.aliases:
        lowered = alias.lower()
        if lowered == name or not is_snapshot_of(lowered, name):
            continue
        if owners.setdefault((winner.provider, lowered), name) == name and lowered not in {
            a.lower() for a in (*winner.aliases, *added)
        }:
            added.append(alias)
    return replace(winner, aliases=(*winner.aliases, *added)) if added else winner
