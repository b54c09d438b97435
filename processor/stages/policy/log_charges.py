"""Which GenAI calls reported as log records the budgets charge, so that each call is charged once.

A GenAI call may be reported as a span, as a log record (a `gen_ai.client.inference.operation.details`
event, or any record with token counts), or as both. The rule:

- a span is charged (as always);
- a log record is charged only when it names no span: its `span_id` is empty or all zero bytes.
  A record that names a span was emitted in that span's context, so it describes the span's call
  (the GenAI conventions emit the event inside the operation's span), and the span is charged.

The rule needs no memory across requests: a span and its event may arrive in any order, in separate
requests, at separate sidecars, and still cost once. A retried log request is recognised like a
retried span request (by the request's fingerprint, processor/stages/policy/stage.py), so a log-only call
is charged once too. The budget keys are the same as a span's: the record's own attributes, then its
resource's (the attribution fallbacks). The price is the one the cost stage wrote, at the record's
time (its observed time when it has none).

What it costs: a record naming a span whose span never arrives (sampled out, dropped) is not
charged; sample GenAI spans whole, or emit the events without a span context. Log records get the
budget and policy attributes, not the budget alert span event (a log record has no events), and the
spend ledger counts spans only.
"""

from __future__ import annotations

import polars as pl
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from processor.core import genai_attributes as ga
from processor.core.decode import LOGS, START_TIME, TelemetryBatch

# Batch column: the record names a span (its call is charged by the span, not here).
IN_SPAN = "_log_names_span"
# An SDK or cost-stage cost without token counts still makes a record a GenAI call.
COST_TOTAL = "genops.cost.total"


def reports_usage(batch: TelemetryBatch) -> bool:
    """Whether some record of the log batch has token counts or a cost: else nothing to charge."""
    keys = (*(key for keys in ga.TOKEN_SOURCES.values() for key in keys), COST_TOTAL)
    return any(batch.column_type(key) is not None for key in keys)


def mark_records(batch: TelemetryBatch) -> None:
    """Adds IN_SPAN and (when the cost stage did not) the record times as START_TIME to a log batch.

    The lean view the decoder keeps leaves span ids as unknown bytes, so the request is read once
    more with the full OTLP schema: only for a batch that reports usage, which is rare among logs.
    """
    if batch.signal != LOGS or batch.column_array(IN_SPAN) is not None:
        return
    request = ExportLogsServiceRequest.FromString(batch.raw or batch.request.SerializeToString())
    records = [record for group in request.resource_logs for scope in group.scope_logs for record in scope.log_records]
    batch.set_column(IN_SPAN, pl.Series(IN_SPAN, [any(r.span_id) for r in records], dtype=pl.Boolean))
    if batch.column_array(START_TIME) is None:
        times = [r.time_unix_nano or r.observed_time_unix_nano for r in records]
        batch.set_column(START_TIME, pl.Series(START_TIME, times, dtype=pl.UInt64))
