"""What the catalogue holds between its steps: converted entries and the findings about them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from processor.stages.cost.pricing_table import PRICE_FIELDS, Tier

GENAI_PRICES = "genai-prices"
LITELLM = "litellm"
OVERRIDE = "override"


@dataclass(frozen=True)
class CatalogueEntry:
    """One price entry in our format, with where it came from (`origin`: GENAI_PRICES, LITELLM or
    OVERRIDE; `source`: the provenance written to the table: the source release's page, e.g.
    https://pypi.org/project/genai-prices/0.2.5/, or for an override the provider's pricing page)."""

    provider: str
    model: str
    match: str  # exact | prefix | regex
    aliases: tuple[str, ...]
    prices: dict[str, float | None]  # PRICE_FIELDS, USD per million tokens
    request: float | None = None
    tiers: tuple[Tier, ...] = ()
    effective_from: dt.date | None = None
    effective_to: dt.date | None = None
    origin: str = GENAI_PRICES
    source: str = ""
    as_of: dt.date | None = None
    note: str = ""
    # Billing dimensions in the table's schema (pricing_table.SERVICE_TIERS, CACHE_WRITE_1H_FACTOR,
    # MODALITY_PRICES): service tier factors, the 1-hour cache write factor, audio/image/video prices.
    billing: dict[str, object] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.model, *self.aliases)

    def price(self, name: str) -> float | None:
        """A price with the table's defaults (cache prices: input; reasoning: output)."""
        value = self.prices.get(name)
        if value is None and name in ("cache_read", "cache_write"):
            return self.prices.get("input")
        if value is None and name == "reasoning":
            return self.prices.get("output")
        return value


@dataclass(frozen=True)
class Unconvertible:
    """Something in a source that the catalogue could not carry, and why."""

    origin: str
    provider: str
    model: str
    reason: str


@dataclass(frozen=True)
class Disagreement:
    """A price both sources give for one model that differs by more than the tolerance."""

    provider: str
    model: str
    field: str
    genai_prices: float
    litellm: float
    resolution: str  # what the catalogue ships

    @property
    def relative(self) -> float:
        base = max(abs(self.genai_prices), abs(self.litellm))
        return abs(self.genai_prices - self.litellm) / base if base else 0.0


@dataclass(frozen=True)
class SourceData:
    """One source's converted entries and what it could not convert."""

    origin: str
    version: str  # what the report calls it: "genai-prices 0.2.5"
    entries: tuple[CatalogueEntry, ...]
    unconvertible: tuple[Unconvertible, ...] = ()
    # Price dimensions the source has and our format does not carry (audio, web searches...): count.
    dropped_fields: dict[str, int] = field(default_factory=dict)


def empty_prices() -> dict[str, float | None]:
    return dict.fromkeys(PRICE_FIELDS)
