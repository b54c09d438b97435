"""Reservation before execution (GenOps spec §3): `Reserve`/`Release` for gateways, and the
reconciliation the policy stage does when the reserved span arrives.

A gateway reserves the estimated cost of a model call under the AI Workload Unit identity it will
put on the call's span: (trace id, span id). The decision (ALLOWED, or BLOCKED with
BUDGET_EXCEEDED / BUDGET_RESERVATION_FAILED) and the hold it places are one atomic step in the
budget store: one SQLite transaction, one Redis Lua script. A hold counts against every budget the
attribution falls under, in the current window, until:
- its span reaches the policy stage: the span's actual cost is charged by the stage's own
  retry-safe charge first, then the hold is released and the reservation marked reconciled (in
  that order, so for a moment both count: never less than the truth, so never an over-commit).
  The span gets genops.accounting.reserved/.actual/.reconciliation_delta and the
  genops.budget.reservation and genops.budget.reconciliation events. A reconciled reservation is
  remembered for a day, so a retried batch gets the same attributes and changes nothing;
- its time to live passes: released by the API process's sweeper (every second) or its next
  Reserve/Release, and counted in genops_budget_reservations_expired_total there (only there:
  a pod's /metrics adds its worker processes' metrics, and one name from two places would be a
  duplicate family). A span that comes after the release is charged as any span is and its
  reconciliation flagged incomplete (§3.5: the record is kept, not discarded); one that comes
  before it, a little past the time to live, still finds its hold and reconciles it;
- the gateway calls Release (it did not make the call).

Answers are deterministic for a given store state (§3.5); a Reserve repeated with the same ids
returns the first answer and holds nothing twice (a gateway may retry a lost answer). A blocked
reservation holds nothing and is not recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import math
import re
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import polars as pl
import structlog
from prometheus_client import CollectorRegistry, Counter

from processor.core import genops_semconv as gs
from processor.core.attribution import DIMENSIONS
from processor.core.contract import BatchChanges, SpanEventToAdd
from processor.core.decode import END_TIME, TelemetryBatch
from processor.protos import budget_pb2
from processor.stages.policy.budget_state import (
    BudgetStore,
)
from processor.stages.policy.budget_store_guard import UNAVAILABLE
from processor.stages.policy.reservation_store import (
    INCOMPLETE_NO_ACTUAL,
    Decision,
    Hold,
    Reconciled,
    ReservationStore,
    StoreSettings,
    open_reservations,
)

if TYPE_CHECKING:
    from processor.config import SidecarConfig
    from processor.stages.cost.pricing_table import PricingTable
    from processor.stages.policy.budget_api import BudgetAccess, BudgetStatusReader

log = structlog.get_logger(__name__)

RESERVATIONS_PATH = "/v1/reservations"
RELEASE_PATH = "/v1/reservations/release"
SERVICE = "genops.budget.v1.BudgetService"
DEFAULT_TTL_SECONDS = 300.0
MAX_TTL_SECONDS = 86_400.0
SWEEP_SECONDS = 1.0
# After a failed store call the policy stage leaves reservations alone this long.
RETRY_SECONDS = 5.0

_HEX = {"trace_id": re.compile(r"[0-9a-f]{32}"), "span_id": re.compile(r"[0-9a-f]{16}")}
_ZERO = {"trace_id": "0" * 32, "span_id": "0" * 16}


class ReservationError(ValueError):
    """A request the caller must fix (INVALID_ARGUMENT / HTTP 400)."""


@dataclass(frozen=True)
class ReservationRequest:
    trace_id: str
    span_id: str
    attribution: dict[str, str] = field(default_factory=dict)
    model: str = ""
    provider: str = ""
    estimated_usd: float = 0.0
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    ttl_seconds: float = 0.0

    @property
    def awu(self) -> str:
        return awu_id(self.trace_id, self.span_id)

    def checked(self) -> ReservationRequest:
        for name in ("trace_id", "span_id"):
            value = getattr(self, name)
            if not _HEX[name].fullmatch(value) or value == _ZERO[name]:
                raise ReservationError(f"{name} must be {len(_ZERO[name])} lowercase hex digits, not all zero")
        unknown = sorted(set(self.attribution) - set(DIMENSIONS))
        if unknown:
            raise ReservationError(f"unknown dimension {unknown[0]!r}")
        if not math.isfinite(self.estimated_usd) or self.estimated_usd < 0:
            raise ReservationError("estimated_usd must be a finite amount >= 0")
        if self.estimated_input_tokens < 0 or self.estimated_output_tokens < 0:
            raise ReservationError("estimated tokens must be >= 0")
        if not math.isfinite(self.ttl_seconds) or not 0 <= self.ttl_seconds <= MAX_TTL_SECONDS:
            raise ReservationError(f"ttl_seconds must be between 0 (the default) and {MAX_TTL_SECONDS:g}")
        return self


def awu_id(trace_id: str, span_id: str) -> str:
    return f"{trace_id}:{span_id}"


@dataclass
class ReservationMetrics:
    """The API process's: Reserve answers and expired holds."""

    reservations: Counter
    expired: Counter

    @staticmethod
    def of(registry: CollectorRegistry) -> ReservationMetrics:
        found = _METRICS.get(registry)
        if found is None:
            found = _METRICS[registry] = ReservationMetrics(
                Counter(
                    "genops_budget_reservations",
                    "Reserve answers (GenOps §3), by result and reason code.",
                    ["result", "reason_code"],
                    registry=registry,
                ),
                Counter(
                    "genops_budget_reservations_expired",
                    "Holds released because their span did not come within their time to live.",
                    registry=registry,
                ),
            )
        return found


def reconciliation_counter(registry: CollectorRegistry) -> Counter:
    """The policy stage's (worker processes'): reserved spans reconciled."""
    found = _RECONCILIATIONS.get(registry)
    if found is None:
        found = _RECONCILIATIONS[registry] = Counter(
            "genops_budget_reconciliations",
            "Reserved spans reconciled (the first time only), by whether the record is complete.",
            ["status"],
            registry=registry,
        )
    return found


# One set per registry: the stage and the API of one process may share a registry.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ReservationMetrics] = weakref.WeakKeyDictionary()
_RECONCILIATIONS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


# The store settings of a policy stage's budget status reader (see Reconciliation.pair): the
# stage may have been built with other settings than the process's configuration (tests).
_SETTINGS: weakref.WeakKeyDictionary[BudgetStatusReader, StoreSettings] = weakref.WeakKeyDictionary()


class ReservationBook:
    """The API side: requests to budget windows and USD, the store call, the metrics."""

    def __init__(
        self,
        reader: BudgetStatusReader,
        store: ReservationStore,
        metrics: ReservationMetrics,
        pricing_file: str = "",
        sweep_seconds: float | None = SWEEP_SECONDS,
    ) -> None:
        self.reader = reader
        self.store = store
        self.metrics = metrics
        self._pricing_file = pricing_file
        self._pricing: PricingTable | None = None
        self._stop = threading.Event()
        self._sweeper = None
        if sweep_seconds is not None:
            self._sweeper = threading.Thread(target=self._sweep_every, args=(sweep_seconds,), daemon=True)
            self._sweeper.start()

    @staticmethod
    def from_config(config: SidecarConfig, reader: BudgetStatusReader, registry: CollectorRegistry) -> ReservationBook:
        policy = config.policy
        settings = _SETTINGS.get(reader) or StoreSettings(policy.state_backend, policy.state_path, policy.redis_url)
        store = open_reservations(settings.backend, settings.state_path, settings.redis_url, reader.store)
        return ReservationBook(reader, store, ReservationMetrics.of(registry), config.cost.pricing_file)

    def holds(self, attribution: Mapping[str, str], now: float) -> list[Hold]:
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        out = []
        for budget in self.reader.source.current().budgets:
            if budget.dimension is None:
                subject = "*"
            else:
                subject = attribution.get(budget.dimension, "")
                if not subject or (budget.value is not None and subject != budget.value):
                    continue
            label, _, _ = budget.window(at)
            key = f"{budget.name}|{subject}|{label}"  # the policy stage's consumed key
            out.append(Hold(key, budget.name, budget.limit_usd, budget.mode == "enforced"))
        return out

    def estimate(self, request: ReservationRequest) -> float:
        if request.estimated_usd > 0 or not (request.estimated_input_tokens or request.estimated_output_tokens):
            return request.estimated_usd
        if self._pricing is None:
            from processor.stages.cost.pricing_table import default_table_path, load_table

            self._pricing = load_table(self._pricing_file or default_table_path())
        group = self._pricing.resolve(request.provider or None, request.model or None)
        if group is None:
            raise ReservationError(f"no price for model {request.model!r}; send estimated_usd instead")
        prices = self._pricing.entry(group).prices
        per_million = request.estimated_input_tokens * (
            prices.get("input") or 0.0
        ) + request.estimated_output_tokens * (prices.get("output") or 0.0)
        return per_million / 1_000_000 + self._pricing.entry(group).request

    def reserve(self, request: ReservationRequest, now: float | None = None) -> Decision:
        request = request.checked()
        now = time.time() if now is None else now
        amount = self.estimate(request)
        ttl = request.ttl_seconds or DEFAULT_TTL_SECONDS
        holds = self.holds(request.attribution, now)
        decision, expired = self.store.reserve(request.awu, amount, holds, now, now + ttl)
        self._count_expired(expired)
        if not decision.repeated:
            self.metrics.reservations.labels(decision.result, decision.reason_code or "none").inc()
        return decision

    def release(self, trace_id: str, span_id: str, now: float | None = None) -> bool:
        ReservationRequest(trace_id, span_id).checked()
        released, expired = self.store.release(awu_id(trace_id, span_id), time.time() if now is None else now)
        self._count_expired(expired)
        return released

    def sweep(self, now: float | None = None) -> int:
        """Releases the expired holds now (the sweeper thread does every second); returns how many."""
        count = self.store.sweep(time.time() if now is None else now)
        self._count_expired(count)
        return count

    def _count_expired(self, count: int) -> None:
        if count:
            self.metrics.expired.inc(count)
            log.info("budget reservations expired without their span", count=count)

    def _sweep_every(self, seconds: float) -> None:
        failing = False
        while not self._stop.wait(seconds):
            try:
                self.sweep()
                failing = False
            except Exception as exc:  # the store may be down; the next sweep tries again
                if not failing:  # once per outage, not every second of it
                    log.warning("budget reservation sweep failed; retried every second", error_type=type(exc).__name__)
                failing = True

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join()
        self.store.close()


# The books of this process, one per budget status reader: the gRPC and HTTP APIs share one.
_BOOKS: weakref.WeakKeyDictionary[BudgetStatusReader, ReservationBook] = weakref.WeakKeyDictionary()
_BOOKS_LOCK = threading.Lock()


def book_for(config: SidecarConfig, reader: BudgetStatusReader, registry: CollectorRegistry) -> ReservationBook:
    with _BOOKS_LOCK:
        book = _BOOKS.get(reader)
        if book is None:
            book = _BOOKS[reader] = ReservationBook.from_config(config, reader, registry)
        return book


def forget_book(book: ReservationBook) -> None:
    """Closes a book of `book_for` (its server stopped)."""
    with _BOOKS_LOCK:
        for key in [key for key, found in _BOOKS.items() if found is book]:
            del _BOOKS[key]
    book.close()


# --- the APIs -------------------------------------------------------------------------------


def _request_from_json(body: bytes) -> ReservationRequest:
    try:
        found = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ReservationError("the body is not JSON") from None
    if not isinstance(found, dict):
        raise ReservationError("the body is a JSON object")
    names = {f for f in ReservationRequest.__dataclass_fields__}
    unknown = sorted(set(found) - names)
    if unknown:
        raise ReservationError(f"unknown field {unknown[0]!r}")
    types: dict[str, type | tuple[type, ...]] = {"attribution": dict, "estimated_usd": (int, float)}
    types |= {"ttl_seconds": (int, float), "estimated_input_tokens": int, "estimated_output_tokens": int}
    for name, value in found.items():
        wanted = types.get(name, str)
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise ReservationError(f"{name} has the wrong type")
    attribution = found.get("attribution", {})
    if not all(isinstance(value, str) for value in attribution.values()):
        raise ReservationError("attribution values are strings")
    missing = [name for name in ("trace_id", "span_id") if name not in found]
    if missing:
        raise ReservationError(f"{missing[0]} is required")
    numbers = {name: float(found[name]) for name in ("estimated_usd", "ttl_seconds") if name in found}
    return ReservationRequest(**{**found, **numbers})


def http_reserve(book: ReservationBook, body: bytes) -> tuple[int, bytes, str]:
    """`POST /v1/reservations` with a JSON ReserveRequest; answers a JSON ReserveResponse."""
    try:
        decision = book.reserve(_request_from_json(body))
    except ReservationError as exc:
        return _json(400, {"error": str(exc)})
    except Exception as exc:
        log.warning("budget reservation failed", error_type=type(exc).__name__)
        return _json(503, {"error": UNAVAILABLE})
    return _json(200, decision.to_json())


def http_release(book: ReservationBook, body: bytes) -> tuple[int, bytes, str]:
    """`POST /v1/reservations/release` with {"trace_id", "span_id"}."""
    try:
        request = _request_from_json(body)
        released = book.release(request.trace_id, request.span_id)
    except ReservationError as exc:
        return _json(400, {"error": str(exc)})
    except Exception as exc:
        log.warning("budget reservation release failed", error_type=type(exc).__name__)
        return _json(503, {"error": UNAVAILABLE})
    return _json(200, {"released": released})


def _json(status: int, body: dict) -> tuple[int, bytes, str]:
    from processor.stages.policy.budget_api import _json as as_json

    return as_json(status, body)


class ReservationService:
    """Reserve and Release of genops.budget.v1.BudgetService; the store call runs in a thread."""

    def __init__(self, book: ReservationBook, access: BudgetAccess) -> None:
        self.book = book
        self.access = access

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        from processor.stages.policy.budget_api import AUTHORIZATION

        metadata = context.invocation_metadata() or ()
        authorization = next((str(value) for key, value in metadata if key == AUTHORIZATION), "")
        if not self.access.allows(authorization):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "budget API: missing or wrong bearer token")

    async def Reserve(
        self, request: budget_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.ReserveResponse:
        await self._check(context)
        asked = ReservationRequest(
            request.trace_id,
            request.span_id,
            dict(request.attribution),
            request.model,
            request.provider,
            request.estimated_usd,
            request.estimated_input_tokens,
            request.estimated_output_tokens,
            request.ttl_seconds,
        )
        try:
            decision = await asyncio.to_thread(self.book.reserve, asked)
        except ReservationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.warning("budget reservation failed", error_type=type(exc).__name__)
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)
        answer = decision.to_json()
        return budget_pb2.ReserveResponse(**answer)  # type: ignore[arg-type]

    async def Release(
        self, request: budget_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.ReleaseResponse:
        await self._check(context)
        try:
            released = await asyncio.to_thread(self.book.release, request.trace_id, request.span_id)
        except ReservationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.warning("budget reservation release failed", error_type=type(exc).__name__)
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)
        return budget_pb2.ReleaseResponse(released=released)


def add_reservation_service(server: grpc.aio.Server, book: ReservationBook, access: BudgetAccess) -> None:
    """Reserve and Release next to GetBudgetStatus (the server tries each handler of the service)."""
    service = ReservationService(book, access)
    handlers = {
        "Reserve": grpc.unary_unary_rpc_method_handler(
            service.Reserve,
            request_deserializer=budget_pb2.ReserveRequest.FromString,
            response_serializer=budget_pb2.ReserveResponse.SerializeToString,
        ),
        "Release": grpc.unary_unary_rpc_method_handler(
            service.Release,
            request_deserializer=budget_pb2.ReleaseRequest.FromString,
            response_serializer=budget_pb2.ReleaseResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])


# --- reconciliation in the policy stage ---------------------------------------------------------


class Reconciliation:
    """The policy stage's side: a batch's reserved spans get their accounting attributes and
    events, and their holds are released."""

    def __init__(
        self,
        store: ReservationStore,
        reconciled: Counter,
        settings: StoreSettings | None = None,
        budget_store: BudgetStore | None = None,
    ) -> None:
        self.store = store
        self.reconciled = reconciled
        # Where a reserved span without an actual cost is charged its reservation instead.
        self.budget_store = budget_store
        self._failing_until: float | None = None
        self.settings = settings

    def _store_up(self) -> bool:
        """While the store is down (the guarded budget store says so, or a call here failed in
        the last few seconds) batches skip reservations, so a hung Redis costs no batch a wait:
        the charge is kept by the guarded store, and the holds of spans that pass meanwhile stay
        until their time to live (counting against the budget: no over-commit)."""
        if not getattr(self.budget_store, "up", True):
            return False
        return self._failing_until is None or time.monotonic() >= self._failing_until

    def _failed(self, exc: Exception) -> None:
        if self._failing_until is None:  # once per outage
            log.warning("budget reservations unavailable; spans pass unreconciled", error_type=type(exc).__name__)
        self._failing_until = time.monotonic() + RETRY_SECONDS

    def _charge_unpriced(self, found: dict[str, Reconciled]) -> None:
        """The best available figure (§3.5) for a span the pricing table cannot price: its
        reservation, charged under a fingerprint of its own, so once however often it comes."""
        if self.budget_store is None:
            return
        for awu, increments in _unpriced_charge(found).items():
            self.budget_store.apply(f"reservation:{awu}", increments, {})

    def pair(self, reader: BudgetStatusReader) -> None:
        """The API answering from `reader` (the stage's) reserves in this stage's store."""
        if self.settings is not None:
            _SETTINGS[reader] = self.settings

    def add_changes(self, batch: TelemetryBatch, changes: BatchChanges, now: float | None = None) -> BatchChanges:
        """Called after the stage's charge (so the actual cost is in before the hold goes)."""
        result = changes.set_attributes.get(gs.POLICY_RESULT)
        if result is None or result.null_count() == len(result) or not self._store_up():
            return changes
        try:
            recent = self.store.any_recent()
        except Exception as exc:
            self._failed(exc)
            return changes
        self._failing_until = None
        if not recent:
            return changes
        ids = span_ids(batch)
        if len(ids) != len(result):
            return changes
        actual = changes.set_attributes.get(gs.ACCOUNTING_ACTUAL)
        actuals = actual.to_list() if actual is not None else [None] * len(result)
        rows = {awu_id(*ids[row]): row for row, decided in enumerate(result.to_list()) if decided is not None}
        now = time.time() if now is None else now
        try:
            found = self.store.reconcile({awu: actuals[row] for awu, row in rows.items()}, now)
        except Exception as exc:
            self._failed(exc)
            return changes
        if not found:
            return changes
        self._charge_unpriced(found)
        for done in found.values():
            if done.first:
                self.reconciled.labels("incomplete" if done.incomplete else "complete").inc()
        return _with_accounting(batch, changes, {rows[awu]: done for awu, done in found.items()})


def _unpriced_charge(found: dict[str, Reconciled]) -> dict[str, dict[str, float]]:
    """AWU -> budget window -> USD: the reservation, for spans whose actual cost is unknown."""
    return {
        awu: {key: done.reserved for key in done.keys}
        for awu, done in found.items()
        if done.incomplete == INCOMPLETE_NO_ACTUAL and done.reserved > 0 and done.keys
    }


def span_ids(batch: TelemetryBatch) -> list[tuple[str, str]]:
    """(trace id, span id) in hex per batch row (rows are the request's spans in order)."""
    request = _ids_message().FromString(batch.raw or batch.request.SerializeToString())
    return [
        (span.trace_id.hex(), span.span_id.hex())
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


@functools.cache
def _ids_message() -> Any:
    """A view of ExportTraceServiceRequest declaring only the path to the span ids (the same field
    numbers as opentelemetry-proto): protobuf keeps the rest as unknown bytes without parsing it,
    several times cheaper than the whole message on a batch of a thousand spans."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="genops_span_ids.proto", package="genops.ids.v1", syntax="proto3")
    path = (
        ("Request", "resource_spans", 1, "ResourceSpans"),
        ("ResourceSpans", "scope_spans", 2, "ScopeSpans"),
        ("ScopeSpans", "spans", 2, "Span"),
    )
    for message, name, number, element in path:
        declared = file.message_type.add(name=message)
        declared.field.add(
            name=name,
            number=number,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
            type_name=f".genops.ids.v1.{element}",
        )
    span = file.message_type.add(name="Span")
    for name, number in (("trace_id", 1), ("span_id", 2)):
        span.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("genops.ids.v1.Request"))


def _with_accounting(batch: TelemetryBatch, changes: BatchChanges, found: dict[int, Reconciled]) -> BatchChanges:
    rows = len(batch)
    reserved: list[float | None] = [None] * rows
    actual: list[float | None] = [None] * rows
    delta: list[float | None] = [None] * rows
    unit: list[str | None] = [None] * rows
    incomplete: list[bool | None] = [None] * rows
    ends = _times(batch, END_TIME, rows)
    for row, done in found.items():
        reserved[row], actual[row], delta[row] = done.reserved, done.actual, done.delta
        unit[row] = gs.ACCOUNTING_UNIT_USD
        if done.incomplete:
            incomplete[row] = True
        # When the gateway reserved: before execution (§3.3 condition 1).
        booked: dict[str, object] = {gs.ACCOUNTING_RESERVED: done.reserved, gs.ACCOUNTING_UNIT: gs.ACCOUNTING_UNIT_USD}
        if done.budget_name:
            booked[gs.BUDGET_NAME] = done.budget_name
        if done.remaining is not None:
            booked[gs.BUDGET_REMAINING] = done.remaining
        changes.events.append(SpanEventToAdd(row, gs.EVENT_BUDGET_RESERVATION, int(done.reserved_at * 1e9), booked))
        settled: dict[str, object] = {gs.ACCOUNTING_RESERVED: done.reserved, gs.ACCOUNTING_UNIT: gs.ACCOUNTING_UNIT_USD}
        if done.actual is not None:
            settled[gs.ACCOUNTING_ACTUAL] = done.actual
            settled[gs.ACCOUNTING_RECONCILIATION_DELTA] = done.delta
        if done.budget_name:
            settled[gs.BUDGET_NAME] = done.budget_name
        if done.incomplete:
            settled[gs.ACCOUNTING_INCOMPLETE] = True
            settled[gs.ACCOUNTING_INCOMPLETE_REASON] = done.incomplete
        changes.events.append(SpanEventToAdd(row, gs.EVENT_BUDGET_RECONCILIATION, ends[row], settled))
    written = changes.set_attributes
    written[gs.ACCOUNTING_RESERVED] = pl.Series(gs.ACCOUNTING_RESERVED, reserved, dtype=pl.Float64)
    if any(value is not None for value in actual):
        # The stage's own actual stays where this one has none (a span that was not reserved).
        own = written.get(gs.ACCOUNTING_ACTUAL)
        merged = pl.Series(gs.ACCOUNTING_ACTUAL, actual, dtype=pl.Float64)
        written[gs.ACCOUNTING_ACTUAL] = merged if own is None else merged.fill_null(own.cast(pl.Float64))
        written[gs.ACCOUNTING_RECONCILIATION_DELTA] = pl.Series(
            gs.ACCOUNTING_RECONCILIATION_DELTA, delta, dtype=pl.Float64
        )
    own_unit = written.get(gs.ACCOUNTING_UNIT)
    units = pl.Series(gs.ACCOUNTING_UNIT, unit, dtype=pl.String)
    written[gs.ACCOUNTING_UNIT] = units if own_unit is None else units.fill_null(own_unit.cast(pl.String))
    if any(incomplete):
        written[gs.ACCOUNTING_INCOMPLETE] = pl.Series(gs.ACCOUNTING_INCOMPLETE, incomplete, dtype=pl.Boolean)
    return changes


def _times(batch: TelemetryBatch, name: str, rows: int) -> list[int]:
    column = batch.column_series(name)
    if column is None:
        return [0] * rows
    return [int(value or 0) for value in column.to_list()]
