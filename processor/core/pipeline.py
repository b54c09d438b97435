"""The pipeline that runs stages over a decoded batch (the stage contract is in `contract`).

Stages return `BatchChanges` instead of mutating protobuf messages. That is what lets a failing
stage be isolated: its changes are simply not applied, the batch still goes out (tagged
`genops.processing.error`), and the stages after it still run, so a pricing bug never turns off
redaction.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import polars as pl
import structlog

from processor.core import encode, metrics_redaction
from processor.core.contract import (
    ENGINE_NONE,
    PROCESSING_ERROR_KEY,
    BatchChanges,
    Stage,
    ValuesStage,
)
from processor.core.decode import (
    LOGS,
    METRICS,
    TRACES,
    MalformedRequest,
    TelemetryBatch,
    WantedKeys,
    decode_logs,
    decode_traces,
)
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.observability import PipelineMetrics

if TYPE_CHECKING:
    from processor._otlp_native import RedactionJob, Redactor

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ProcessedRequest:
    payload: bytes
    items: int
    failed_stages: tuple[str, ...]


class Pipeline:
    def __init__(self, stages: Sequence[Stage], metrics: PipelineMetrics) -> None:
        self.stages = list(stages)
        self.metrics = metrics
        # The redaction stage's rules for what the stages write (see processor/core/outbound.py).
        self.outbound: OutboundRedaction = next(
            (found for s in self.stages if isinstance(found := getattr(s, "outbound", None), OutboundRedaction)),
            NO_REDACTION,
        )
        self._timers: dict[tuple[str, str], object] = {}
        # (stage, signal) -> the engine it ran on last: a change (or the first batch) is logged.
        self._engines: dict[tuple[str, str], str] = {}
        self._metrics_redaction = next((s for s in self.stages if callable(getattr(s, "redact_values", None))), None)
        self._stages = {signal: [s for s in self.stages if signal in s.signals] for signal in (TRACES, LOGS)}
        # One stage per signal at most gets the values from the scan (the first that takes them).
        self._consumers = {
            signal: next(((s, c) for s in stages if (c := _values_consumer(s)) is not None), None)
            for signal, stages in self._stages.items()
        }
        # Values handed to a consumer are not also listed for Python.
        self._wanted = {
            signal: WantedKeys.union(
                dataclasses.replace(s.wanted_keys(), values=False)
                if (consumer := self._consumers[signal]) is not None and s is consumer[0]
                else s.wanted_keys()
                for s in stages
            )
            for signal, stages in self._stages.items()
        }

    def _timer(self, stage: str, signal: str):
        # labels() takes a lock and builds a key: once per (stage, signal), not per batch.
        timer = self._timers.get((stage, signal))
        if timer is None:
            timer = self._timers[(stage, signal)] = self.metrics.stage_seconds.labels(stage=stage, signal=signal)
        return timer

    def _count_engine(self, stage: str, signal: str, engine: str) -> None:
        # Which engine ran is never silent: the native and polars paths differ ~30x in cost.
        self.metrics.stage_engine.labels(stage=stage, signal=signal, engine=engine).inc()
        if engine != ENGINE_NONE and self._engines.get((stage, signal)) != engine:
            self._engines[(stage, signal)] = engine
            log.info("stage engine", stage=stage, signal=signal, engine=engine)

    def process(self, signal: str, raw: bytes) -> ProcessedRequest:
        if signal == TRACES:
            return self.process_traces(raw)
        if signal == LOGS:
            return self.process_logs(raw)
        return self.process_metrics(raw)

    def process_metrics(self, raw: bytes) -> ProcessedRequest:
        """Only redaction reads metrics (processor/core/metrics_redaction.py); without it they pass."""
        stage = self._metrics_redaction
        if stage is None:
            return ProcessedRequest(raw, 1, ())
        started = time.perf_counter()
        try:
            redacted = metrics_redaction.redact_metrics(raw, stage)
        except MalformedRequest:
            raise
        except Exception:
            # As for a failed stage on spans: the request still goes out, the failure is counted.
            self.metrics.stage_errors.labels(stage=stage.name, signal=METRICS).inc()
            log.exception("stage failed; its changes are discarded", stage=stage.name, signal=METRICS)
            return ProcessedRequest(raw, 1, (stage.name,))
        finally:
            self._timer(stage.name, METRICS).observe(time.perf_counter() - started)
        return ProcessedRequest(redacted.payload, redacted.data_points, ())

    def process_traces(self, raw: bytes) -> ProcessedRequest:
        return self._run(TRACES, raw)

    def process_logs(self, raw: bytes) -> ProcessedRequest:
        return self._run(LOGS, raw)

    def _run(self, signal: str, raw: bytes) -> ProcessedRequest:
        consumer = self._consumers[signal]
        decode = decode_traces if signal == TRACES else decode_logs
        batch = decode(raw, self._wanted[signal], values_to=consumer[1] if consumer else None)
        jobs = {consumer[0].name: batch.values_job} if consumer and batch.values_job is not None else {}
        try:
            return self._process(signal, batch, raw, jobs)
        finally:
            # A job whose stage was never reached (a request refused by an earlier stage).
            for job in jobs.values():
                job.abandon()

    def _process(
        self, signal: str, batch: TelemetryBatch, raw: bytes, jobs: dict[str, RedactionJob]
    ) -> ProcessedRequest:
        applied: list[BatchChanges] = []
        failed: list[str] = []
        # Every stage runs on a request without items too: its resources still carry values.
        stages = self._stages[signal]
        for position, stage in enumerate(stages, 1):
            job = jobs.pop(stage.name, None)
            if job is not None:
                # The main thread would otherwise only wait for the job's thread.
                _prepare(stages[position:], batch)
            # For a stage with a job: the time the batch waited for it, not the time it ran.
            started = time.perf_counter()
            try:
                changes = stage.process(batch) if job is None else cast(ValuesStage, stage).finish(batch, job)
                _check_shape(changes, len(batch))
            except MalformedRequest:
                # Found by a stage that reads deeper than the decoder did (a corrupt nested value):
                # the request's fault, refused as a whole as the decoder refuses it.
                raise
            except Exception as exc:
                failed.append(f"{stage.name}: {type(exc).__name__}: {exc}")
                self.metrics.stage_errors.labels(stage=stage.name, signal=signal).inc()
                log.exception(
                    "stage failed; its changes are discarded", stage=stage.name, signal=signal, items=len(batch)
                )
                continue
            finally:
                self._timer(stage.name, signal).observe(time.perf_counter() - started)
            self._count_engine(stage.name, signal, changes.engine or ENGINE_NONE)
            if not changes.is_empty():
                applied.append(changes)
                if position < len(stages):  # the last stage's changes are only written back
                    _expose_to_later_stages(batch, changes)
        if failed:
            applied.append(_error_tags(len(batch), self.outbound.message("; ".join(failed))))
        if not applied and not batch.drops_bytes:
            return ProcessedRequest(raw, len(batch), tuple(failed))
        if self.outbound.enabled:
            for changes in applied:
                _redact_written(changes, self.outbound)
        try:
            payload = encode.apply_and_serialize(batch, applied)
        except Exception:
            # Writing back failed half-way: the message may be partly edited, so the original
            # bytes are the only safe thing to forward.
            self.metrics.stage_errors.labels(stage="encode", signal=signal).inc()
            log.exception("encoding changes failed; forwarding the batch unmodified", signal=signal)
            return ProcessedRequest(raw, len(batch), (*failed, "encode"))
        return ProcessedRequest(payload, len(batch), tuple(failed))


def _prepare(stages: Sequence[Stage], batch: TelemetryBatch) -> None:
    for stage in stages:
        prepare = getattr(stage, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare(batch)
        except Exception:
            # Not a failure of the batch: the stage's own turn redoes the work and reports it.
            log.debug("a stage could not prepare; it works at its turn", stage=stage.name, exc_info=True)


def _values_consumer(stage: Stage) -> Redactor | None:
    consumer = getattr(stage, "values_consumer", None)
    return None if consumer is None else consumer()


def _check_shape(changes: BatchChanges, rows: int) -> None:
    for key, column in changes.set_attributes.items():
        if len(column) != rows:
            raise ValueError(f"stage set {key!r} for {len(column)} items, batch has {rows}")


def _expose_to_later_stages(batch: TelemetryBatch, changes: BatchChanges) -> None:
    """Later stages read what earlier ones wrote (policy reads genops.cost.total) as batch columns."""
    if not changes.set_attributes:
        return
    arrived_with = {key for key in changes.set_attributes if batch.has_values(key)}
    merged = []
    for key, column in changes.set_attributes.items():
        if key in arrived_with:
            # Where the stage left an item alone, the item keeps the value it arrived with (cast
            # to the stage's type: an SDK may send a cost as a string).
            arrived = _arrived_as(batch.frame.get_column(key), column.dtype)
            merged.append(pl.coalesce(pl.lit(column.alias(key)), arrived).alias(key))
    if merged:
        replaced = [pl.lit(c.alias(k)).alias(k) for k, c in changes.set_attributes.items() if k not in arrived_with]
        batch.frame = batch.frame.with_columns([*merged, *replaced])
        return
    # No item arrived with any of the keys: the stage's columns as they are.
    for key, column in changes.set_attributes.items():
        batch.set_column(key, column, changes.arrow.get(key))


def _arrived_as(arrived: pl.Series, dtype: pl.DataType) -> pl.Expr:
    """The values an attribute arrived with, read as the type a stage writes it in."""
    if dtype == pl.Null:
        return pl.lit(arrived)
    try:
        return pl.lit(arrived.cast(dtype, strict=False))
    except pl.exceptions.PolarsError:
        # No cast at all between the two (bytes where the stage writes a number): nothing readable,
        # as an unparseable string would be. Raising here would lose every stage's changes.
        return pl.lit(None, dtype=dtype)


def _redact_written(changes: BatchChanges, outbound: OutboundRedaction) -> None:
    """What a stage wrote from span values as they arrived (the model a span named, a budget
    subject) leaves the sidecar as the redaction rules leave an attribute of that key."""
    for key, column in changes.set_attributes.items():
        redacted = outbound.strings(key, column, changes.arrow.get(key))
        if redacted is not None:
            changes.set_attributes[key] = redacted
            # The encoder reads the Arrow array where there is one: it held the values before.
            changes.arrow.pop(key, None)
    for event in changes.events:
        for key, value in event.attributes.items():
            if isinstance(value, str):
                event.attributes[key] = outbound.value(key, value)
    # Per distinct value of each text column (the written values repeat across spans).
    for at, group in enumerate(changes.event_columns):
        for key, column in group.attributes.items():
            redacted = outbound.strings(key, column)
            if redacted is not None:
                group = group.with_attribute(key, redacted)
        changes.event_columns[at] = group


def _error_tags(rows: int, message: str) -> BatchChanges:
    return BatchChanges(set_attributes={PROCESSING_ERROR_KEY: pl.Series(PROCESSING_ERROR_KEY, [message] * rows)})
