"""Billing lines against ledger rows, per day, provider family and model.

Providers and models are named differently on each side: a FOCUS line says "Microsoft / Azure
OpenAI Service" and "gpt-4o-0806-Global-Input" where spans say "azure.openai" and "gpt-4o". Both
sides are reduced to a provider family (the first known family word either name contains) and a
billing line is given the longest ledger model of its family whose name, letters and digits only,
is contained in the line's SKU, description or line item ("gpt-4o-mini" wins over "gpt-4o").
A line no ledger model fits keeps the model it shows and stays unmatched: un-instrumented spend.

Only ledger rows of the families and days the billing files cover are compared: a day or provider
the files do not hold says nothing about what was billed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from processor.billing.sources import BillingLine
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.stages.policy.ledger import MODEL_KEY, PROVIDER_KEY, LedgerRow

# Family words, in the order they are looked for: a cloud before the model makers it resells.
FAMILIES = (
    ("bedrock", "aws.bedrock"),
    ("azure", "azure.openai"),
    ("microsoft", "azure.openai"),
    ("vertex", "gcp.vertex_ai"),
    ("anthropic", "anthropic"),
    ("openai", "openai"),
    ("gemini", "google"),
    ("google", "google"),
)
MATCHED = "matched"
BILLED_ONLY = "billed_not_seen"
SEEN_ONLY = "seen_not_billed"


def family(provider: str) -> str:
    lowered = provider.lower()
    return next((name for word, name in FAMILIES if word in lowered), lowered.strip() or "unknown")


def squashed(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass(frozen=True)
class ReconciledRow:
    day: str
    provider: str  # family
    model: str
    billed_usd: float
    ours_usd: float
    status: str  # MATCHED, BILLED_ONLY, SEEN_ONLY

    @property
    def difference_usd(self) -> float:
        """Billed minus attributed: positive when the bill holds spend the spans did not show."""
        return self.billed_usd - self.ours_usd

    @property
    def share(self) -> float | None:
        """The difference as a share of what was billed (None: nothing billed)."""
        return self.difference_usd / self.billed_usd if self.billed_usd else None


@dataclass(frozen=True)
class DayTotal:
    day: str
    billed_usd: float
    ours_usd: float

    @property
    def drift_ratio(self) -> float | None:
        return (self.billed_usd - self.ours_usd) / self.billed_usd if self.billed_usd else None


@dataclass(frozen=True)
class Reconciliation:
    rows: tuple[ReconciledRow, ...]
    days: tuple[DayTotal, ...]

    @property
    def billed_usd(self) -> float:
        return sum(d.billed_usd for d in self.days)

    @property
    def ours_usd(self) -> float:
        return sum(d.ours_usd for d in self.days)

    def unmatched(self, status: str) -> list[ReconciledRow]:
        return [r for r in self.rows if r.status == status]

    @property
    def last_day(self) -> DayTotal | None:
        return self.days[-1] if self.days else None


def reconcile(
    lines: Sequence[BillingLine], rows: Sequence[LedgerRow], outbound: OutboundRedaction = NO_REDACTION
) -> Reconciliation:
    covered_days = {line.day for line in lines}
    covered_families = {family(line.provider) for line in lines}
    ours: dict[tuple[str, str, str], float] = {}
    models: dict[str, set[str]] = {}
    for row in rows:
        fam = family(row.provider)
        if row.day in covered_days and fam in covered_families:
            key = (row.day, fam, row.model)
            ours[key] = ours.get(key, 0.0) + row.usd_total
            models.setdefault(fam, set()).add(row.model)
    # Longest first: the most specific name a line contains is its model.
    candidates = {
        fam: sorted(((squashed(m), m) for m in names if squashed(m)), key=lambda p: (-len(p[0]), p[1]))
        for fam, names in models.items()
    }
    billed: dict[tuple[str, str, str], float] = {}
    for line in lines:
        fam = family(line.provider)
        text = squashed(line.model_text)
        model = next((name for short, name in candidates.get(fam, ()) if short in text), None)
        key = (line.day, fam, model if model is not None else outbound.label(MODEL_KEY, line.shown_model))
        billed[key] = billed.get(key, 0.0) + line.usd
    out = []
    for key in sorted(set(ours) | set(billed)):
        day, fam, model = key
        b, o = billed.get(key, 0.0), ours.get(key, 0.0)
        status = MATCHED if key in billed and key in ours else BILLED_ONLY if key in billed else SEEN_ONLY
        out.append(ReconciledRow(day, outbound.label(PROVIDER_KEY, fam), model, b, o, status))
    days = []
    for day in sorted(covered_days):
        days.append(
            DayTotal(day, sum(r.billed_usd for r in out if r.day == day), sum(r.ours_usd for r in out if r.day == day))
        )
    return Reconciliation(tuple(out), tuple(days))
