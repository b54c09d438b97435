"""Redaction of OTLP metrics export requests: the attributes of every data point.

Metrics carry no spend, so no other stage reads them; their attributes still leave the node as
labels (an email in a `user` attribute becomes a time series). Every data point's attributes
(gauge, sum, histogram, exponential histogram, summary), exemplar filtered attributes, metric
metadata, and resource and scope attributes meet the redaction rules as span attributes do
(resource and scope attributes as shared ones: the allow-list does not drop them). Metric volume
is low next to spans, so this works on the protobuf message (opentelemetry-proto) rather than on
the native scanner; a request nothing changes goes out as the bytes it came as.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from processor.core import nested_values
from processor.core.decode import METRICS, SCOPE_ITEM, SCOPE_RESOURCE, SCOPE_SCOPE, MalformedRequest
from processor.core.nested_values import NestedValueError

# Data point fields of each metric type that hold data points: (metric field, points field).
_POINT_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


@dataclass(frozen=True)
class RedactedMetrics:
    payload: bytes
    data_points: int


def redact_metrics(raw: bytes, stage) -> RedactedMetrics:
    """`raw` with the redaction stage's rewrites applied to every attribute list it holds.

    `stage`: a processor.stages.redaction.stage.RedactionStage (its `redact_values`)."""
    try:
        request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(raw)
    except DecodeError as exc:
        raise MalformedRequest(f"cannot parse the metrics export request: {exc}") from exc
    # (scope, attribute list, the ordinal of its resource: what rule conditions on resources read)
    lists: list[tuple[str, Any, int]] = []
    points = 0
    for resource, resource_metrics in enumerate(request.resource_metrics):
        lists.append((SCOPE_RESOURCE, resource_metrics.resource.attributes, resource))
        for scope_metrics in resource_metrics.scope_metrics:
            lists.append((SCOPE_SCOPE, scope_metrics.scope.attributes, resource))
            for metric in scope_metrics.metrics:
                lists.append((SCOPE_ITEM, metric.metadata, resource))
                for point_lists in _data_point_attributes(metric):
                    points += 1
                    lists.extend((SCOPE_ITEM, attributes, resource) for attributes in point_lists)
    values = _values(lists)
    if values.height == 0:
        return RedactedMetrics(raw, points)
    rewrites = stage.redact_values(values, METRICS)
    if rewrites.height == 0:
        return RedactedMetrics(raw, points)
    drops: dict[int, list[int]] = {}
    for owner, position, new_value in rewrites.select("owner", "position", "new_value").iter_rows():
        attributes = lists[owner][1]
        if new_value is None:
            drops.setdefault(owner, []).append(position)
        else:
            attributes[position].value.string_value = new_value
    # Positions are as received: drop from the end backwards.
    for owner, positions in drops.items():
        attributes = lists[owner][1]
        for position in sorted(set(positions), reverse=True):
            del attributes[position]
    return RedactedMetrics(request.SerializeToString(), points)


def _data_point_attributes(metric) -> Iterator[list]:
    """Per data point: its attributes and each of its exemplars' filtered attributes."""
    kind = metric.WhichOneof("data")
    if kind not in _POINT_KINDS:
        return
    for point in getattr(metric, kind).data_points:
        exemplars = getattr(point, "exemplars", ())
        yield [point.attributes, *(exemplar.filtered_attributes for exemplar in exemplars)]


def _values(lists: list[tuple[str, Any, int]]) -> pl.DataFrame:
    """The attributes as `TelemetryBatch.string_values()` rows: owner indexes `lists`, row is the
    resource's ordinal (see `RedactionStage.redact_values`)."""
    scopes: list[str] = []
    owners: list[int] = []
    positions: list[int] = []
    rows: list[int] = []
    keys: list[str] = []
    texts: list[str] = []
    kinds: list[str] = []
    for owner, (scope, attributes, resource) in enumerate(lists):
        for position, kv in enumerate(attributes):
            kind = kv.value.WhichOneof("value")
            if kind is None:
                continue
            scopes.append(scope)
            owners.append(owner)
            positions.append(position)
            rows.append(resource)
            keys.append(kv.key)
            kinds.append(kind)
            texts.append(_render(kv.value, kind))
    kind_column = pl.Series(kinds, dtype=pl.String)
    return pl.DataFrame(
        {
            "scope": pl.Series(scopes, dtype=pl.String),
            "owner": pl.Series(owners, dtype=pl.Int64),
            "position": pl.Series(positions, dtype=pl.Int64),
            "row": pl.Series(rows, dtype=pl.Int64),
            "key": pl.Series(keys, dtype=pl.String),
            "value": pl.Series(texts, dtype=pl.String),
            "is_string": kind_column == "string_value",
            "kind": kind_column,
        }
    )


def _render(value: common_pb2.AnyValue, kind: str) -> str:
    # As processor/core/decode.py renders span attribute values, so the same rules see the same text.
    if kind in ("array_value", "kvlist_value"):
        try:
            return nested_values.render(kind, getattr(value, kind).SerializeToString())
        except NestedValueError as exc:
            raise MalformedRequest(f"cannot read a nested metric attribute value: {exc}") from exc
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return str(getattr(value, kind))
