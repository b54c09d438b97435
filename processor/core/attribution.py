"""Who a span's spend belongs to: team, project, customer, cost center, feature, environment.

Each dimension is read from `genops.<dimension>` on the span, then on its resource, then from the
configured fallback keys (e.g. project ← service.name), each again span first. Spans win over
resources so one shared gateway process can attribute calls to many teams.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from processor.core.decode import RESOURCE_PREFIX, WantedKeys

DIMENSIONS = ("team", "project", "customer_id", "cost_center", "feature", "environment")
# Column types remembered with their expressions; batches mostly repeat a few shapes.
_MAX_SCHEMAS = 64


def dimension_key(dimension: str) -> str:
    return f"genops.{dimension}"


@dataclass(frozen=True)
class Attribution:
    # dimension -> attribute keys tried in order, after genops.<dimension>.
    fallbacks: Mapping[str, tuple[str, ...]]
    # (types of the read columns) -> `columns`: building the expressions costs more than running
    # them on a batch, and the stages ask for them on every batch.
    _columns: dict[tuple, list[pl.Expr]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @staticmethod
    def from_config(fallbacks: Mapping[str, str]) -> Attribution:
        unknown = sorted(set(fallbacks) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"attribution fallback for unknown dimension {unknown[0]!r} (known: {DIMENSIONS})")
        return Attribution(
            {dim: tuple(k.strip() for k in keys.split("|") if k.strip()) for dim, keys in fallbacks.items()}
        )

    def sources(self, dimension: str) -> tuple[str, ...]:
        return (dimension_key(dimension), *self.fallbacks.get(dimension, ()))

    def wanted_keys(self) -> WantedKeys:
        keys = frozenset(key for dim in DIMENSIONS for key in self.sources(dim))
        return WantedKeys(item=keys, resource=keys)

    def columns(self, schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
        """One String column per dimension (null: unattributed), for a frame of this `schema`."""
        shape = tuple(schema.get(name) for name in self._read())
        found = self._columns.get(shape)
        if found is None:
            if len(self._columns) >= _MAX_SCHEMAS:
                self._columns.clear()
            found = self._columns[shape] = self._build_columns(schema)
        # A copy: callers may extend the list; the expressions themselves are immutable.
        return list(found)

    def _read(self) -> tuple[str, ...]:
        """The columns `columns` reads, whose types shape its expressions."""
        return tuple(name for dim in DIMENSIONS for key in self.sources(dim) for name in (key, RESOURCE_PREFIX + key))

    def _build_columns(self, schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
        return [
            pl.coalesce([text(schema, name) for key in self.sources(dim) for name in (key, RESOURCE_PREFIX + key)])
            .cast(pl.String)
            .alias(dim)
            for dim in DIMENSIONS
        ]


def text(schema: Mapping[str, pl.DataType], column: str) -> pl.Expr:
    """`column` as trimmed text, null when absent, blank or binary."""
    if schema.get(column, pl.Null) in (pl.Null, pl.Binary):
        return pl.lit(None, dtype=pl.String)
    # replace, not when/then: the trimmed value is computed once.
    return pl.col(column).cast(pl.String, strict=False).str.strip_chars().replace("", None)
