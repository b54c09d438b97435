"""The reviewed overrides: corrections of known source errors, in our own table format.

The file is a pricing table itself (version, models), shipped next to the generated files, so the
table the sidecar loads is exactly the catalogue with the overrides in. Each entry needs a `note`
(what was wrong) and a `source` that is the provider's pricing page (http/https URL). An override
replaces every catalogue entry of its provider that has one of its names (model or aliases, any
match kind), and those names are dropped from other entries' aliases.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from processor.stages.cost.catalogue.entries import OVERRIDE, CatalogueEntry
from processor.stages.cost.pricing_table import PriceEntry, PricingError, parse_document


@dataclass(frozen=True)
class Overrides:
    version: str
    entries: tuple[PriceEntry, ...]

    @property
    def names(self) -> set[tuple[str, str]]:
        return {(e.provider, name.lower()) for e in self.entries for name in (e.model, *e.aliases)}


def read_overrides(path: Path) -> Overrides:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PricingError([f"{path}: cannot read: {exc}"]) from exc
    version, entries, problems = parse_document(document, str(path))
    for entry in entries:
        raw = next(m for m in document["models"] if str(m.get("model", "")).strip() == entry.model)
        if not str(raw.get("note") or "").strip():
            problems.append(f"{entry.origin}: an override needs a note saying what it corrects")
        if not entry.source.startswith(("https://", "http://")):
            problems.append(f"{entry.origin}: an override's source must be the provider's pricing page URL")
    if problems or version is None:
        raise PricingError(problems or [f"{path}: version is required"])
    return Overrides(version, tuple(entries))


def apply_overrides(
    entries: tuple[CatalogueEntry, ...], overrides: Overrides
) -> tuple[tuple[CatalogueEntry, ...], tuple[CatalogueEntry, ...]]:
    """(the catalogue without what the overrides replace, the replaced entries)."""
    names = overrides.names
    kept: list[CatalogueEntry] = []
    replaced: list[CatalogueEntry] = []
    for entry in entries:
        left = [n for n in entry.names if (entry.provider, n.lower()) not in names]
        if len(left) == len(entry.names):
            kept.append(entry)
            continue
        replaced.append(entry)
        if left:  # the names the override does not take keep the source's price
            kept.append(replace(entry, model=left[0], aliases=tuple(left[1:])))
    return tuple(kept), tuple(replaced)


def override_entries(overrides: Overrides) -> tuple[CatalogueEntry, ...]:
    return tuple(
        CatalogueEntry(
            provider=e.provider,
            model=e.model,
            match=e.match,
            aliases=e.aliases,
            prices=dict(e.prices),
            request=e.request or None,
            tiers=e.tiers,
            effective_from=e.effective_from,
            effective_to=e.effective_to,
            origin=OVERRIDE,
            source=e.source,
            as_of=e.as_of,
        )
        for e in overrides.entries
    )
