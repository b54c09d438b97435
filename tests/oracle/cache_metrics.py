"""The cache-savings metric's polars query (processor/stages/cost/cache_metrics.py ran it on every
batch's frame until `savings_by_team_and_model` replaced it): the differential oracle of that function."""

from __future__ import annotations

import polars as pl

from processor.core.attribution import DIMENSIONS, Attribution, text
from processor.stages.cost.cache_metrics import COST_MODEL, _amount
from processor.stages.cost.cache_savings import CACHE_SAVINGS


def savings_sums(frame: pl.DataFrame, attribution: Attribution) -> dict[tuple[str | None, str | None], float]:
    schema = dict(frame.schema)
    team = attribution.columns(schema)[DIMENSIONS.index("team")]
    sums = (
        frame.lazy()
        .select(
            team.alias("team"),
            text(schema, COST_MODEL).alias("model"),
            _amount(schema, CACHE_SAVINGS).alias("usd"),
        )
        .filter(pl.col("usd") > 0)
        .group_by("team", "model", maintain_order=True)
        .agg(pl.col("usd").sum())
        .collect()
    )
    return {(team, model): usd for team, model, usd in sums.iter_rows()}
