"""Budget status for gateways: `GET /v1/budgets?team=ml` (JSON) and genops.budget.v1.BudgetService.

A gateway asks before calling a model and refuses the call when a budget is `blocking`
(exceeded in enforced mode). The figures come from the same policy file and state store the
policy stage charges spans to, for the current calendar window of each budget.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from urllib.parse import parse_qs, urlsplit

import grpc
import structlog

from processor.config import BudgetApiConfig, PolicyConfig
from processor.core.attribution import DIMENSIONS
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.protos import budget_pb2
from processor.stages.policy.budget_state import BudgetStore
from processor.stages.policy.budget_store_guard import UNAVAILABLE, open_store
from processor.stages.policy.budgets import TAGS
from processor.stages.policy.policy_file import PolicySource, budget_attributes

log = structlog.get_logger(__name__)

BUDGETS_PATH = "/v1/budgets"
SERVICE = "genops.budget.v1.BudgetService"
# The HTTP header and the gRPC metadata key (gRPC keys are lower case) carrying `Bearer <token>`.
AUTHORIZATION = "authorization"
BEARER = "bearer"


@dataclass(frozen=True)
class BudgetAccess:
    """Who may read budgets: anyone (no token configured) or callers presenting the bearer token.

    Budgets show every team's spend, so a deployment reachable beyond the pod sets a token.
    """

    token: bytes | None = None

    @staticmethod
    def from_config(config: BudgetApiConfig, environ: Mapping[str, str] | None = None) -> BudgetAccess:
        # load_config has refused a blank or short token already.
        value = (os.environ if environ is None else environ).get(config.token_env, "").strip()
        return BudgetAccess(_bytes(value) if value else None)

    @property
    def open(self) -> bool:
        return self.token is None

    def allows(self, authorization: str) -> bool:
        """`authorization` is the header / metadata value as sent, `Bearer <token>`."""
        if self.token is None:
            return True
        scheme, _, credentials = authorization.strip().partition(" ")
        # Compared in constant time even for a wrong scheme, so timing tells nothing about the token.
        matches = hmac.compare_digest(_bytes(credentials.strip()), self.token)
        return matches and scheme.lower() == BEARER


def _bytes(text: str) -> bytes:
    # surrogatepass: a header with undecodable bytes still compares, and never equal to a valid token.
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class BudgetStatus:
    name: str
    dimension: str
    subject: str
    period: str
    window: str
    window_start: str
    window_end: str
    limit_usd: float
    consumed_usd: float
    remaining_usd: float
    utilization: float
    exceeded: bool
    mode: str
    warn_at: tuple[float, ...]
    blocking: bool


class BudgetStatusReader:
    """`outbound` redacts what an answer carries besides figures (see processor/core/outbound.py)."""

    def __init__(self, source: PolicySource, store: BudgetStore, outbound: OutboundRedaction = NO_REDACTION) -> None:
        self.source = source
        self.store = store
        self.outbound = outbound

    @staticmethod
    def from_config(config: PolicyConfig, outbound: OutboundRedaction = NO_REDACTION) -> BudgetStatusReader:
        """For a process without the stage (the supervisor of several workers serves HTTP)."""
        return BudgetStatusReader(
            PolicySource(config.policy_file, config.reload_interval_seconds),
            open_store(config.state_backend, config.state_path, config.redis_url),
            outbound,
        )

    def status(
        self, attribution: Mapping[str, str], budget_name: str = "", now: dt.datetime | None = None
    ) -> list[BudgetStatus]:
        """Current window of every budget that applies to a call with this attribution."""
        now = now or dt.datetime.now(dt.UTC)
        found = []
        for budget in self.source.current().budgets:
            if budget_name and budget.name != budget_name:
                continue
            if budget.per_value is None:
                subject = "*"
            else:
                subject = attribution.get(budget.per_value, "")
                if not subject or (budget.value is not None and subject != budget.value):
                    continue
                if budget.attribute is not None:
                    # Keyed as the stage keys it: redacted as the attribute is.
                    subject = self.outbound.label(budget.attribute, subject)
            label, start, end = budget.window(now)
            found.append((budget, subject, label, start, end, f"{budget.name}|{subject}|{label}"))
        consumed = self.store.read([item[-1] for item in found])
        out = []
        for budget, subject, label, start, end, key in found:
            spent = consumed.get(key, 0.0)
            exceeded = spent > budget.limit_usd
            out.append(
                BudgetStatus(
                    name=self.outbound.label(TAGS["name"], budget.name),
                    dimension=budget.per_value or "",
                    subject=subject
                    if budget.attribute is not None
                    else self.outbound.label(f"genops.{budget.dimension or 'budget'}", subject),
                    period=budget.period,
                    window=label,
                    window_start=start.isoformat(),
                    window_end=end.isoformat(),
                    limit_usd=budget.limit_usd,
                    consumed_usd=round(spent, 9),
                    remaining_usd=round(max(budget.limit_usd - spent, 0.0), 9),
                    utilization=round(spent / budget.limit_usd, 6),
                    exceeded=exceeded,
                    mode=budget.mode,
                    warn_at=budget.warn_at,
                    blocking=exceeded and budget.mode == "enforced",
                )
            )
        return out

    def keys(self) -> frozenset[str]:
        """What a status request may name: the dimensions and the current budgets' attributes."""
        return frozenset((*DIMENSIONS, *budget_attributes(self.source.current())))


def http_budget_status(reader: BudgetStatusReader, path: str) -> tuple[int, bytes, str]:
    """Answers `GET /v1/budgets?<dimension>=<value>&budget=<name>`: (status, body, content type)."""
    query = parse_qs(urlsplit(path).query)
    known = reader.keys()
    unknown = sorted(set(query) - {*known, "budget"})
    if unknown:
        return _json(400, {"error": f"unknown parameter {unknown[0]!r}; use {', '.join(sorted(known))} or budget"})
    attribution = {key: values[-1] for key, values in query.items() if key in known}
    try:
        budgets = reader.status(attribution, query.get("budget", [""])[-1])
    except Exception as exc:  # the store (Redis) may be down; the gateway decides what that means
        # Not the client's error text: it may name the store's address.
        log.warning("budget status read failed", error_type=type(exc).__name__)
        return _json(503, {"error": UNAVAILABLE})
    return _json(200, {"blocked": any(b.blocking for b in budgets), "budgets": [_plain(b) for b in budgets]})


def _plain(status: BudgetStatus) -> dict:
    out = asdict(status)
    out["warn_at"] = list(status.warn_at)
    return out


def _json(status: int, body: dict) -> tuple[int, bytes, str]:
    # JSON has no NaN or Infinity: a non-finite number (a sum past the largest float) is null.
    return status, (json.dumps(_finite(body), allow_nan=False) + "\n").encode(), "application/json"


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class BudgetService:
    """grpc.aio servicer; the store is read in a thread so the OTLP event loop never waits on it."""

    def __init__(self, reader: BudgetStatusReader, access: BudgetAccess) -> None:
        self.reader = reader
        self.access = access

    async def GetBudgetStatus(
        self, request: budget_pb2.GetBudgetStatusRequest, context: grpc.aio.ServicerContext
    ) -> budget_pb2.GetBudgetStatusResponse:
        metadata = context.invocation_metadata() or ()
        authorization = next((str(value) for key, value in metadata if key == AUTHORIZATION), "")
        if not self.access.allows(authorization):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "budget API: missing or wrong bearer token")
        unknown = sorted(set(request.attribution) - self.reader.keys())
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown dimension {unknown[0]!r}")
        try:
            budgets = await asyncio.to_thread(self.reader.status, dict(request.attribution), request.budget_name)
        except Exception as exc:
            # Not the exception's text: it may name the store's address.
            log.warning("budget status read failed", error_type=type(exc).__name__)
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)
        return budget_pb2.GetBudgetStatusResponse(
            budgets=[budget_pb2.BudgetStatus(**asdict(b)) for b in budgets],
            blocked=any(b.blocking for b in budgets),
        )


def add_budget_service(
    server: grpc.aio.Server, reader: BudgetStatusReader, access: BudgetAccess = BudgetAccess()
) -> None:
    """Registers genops.budget.v1.BudgetService on a grpc.aio server (before it starts); without
    `access` (no token) anyone reaching the port may read budgets."""
    service = BudgetService(reader, access)
    handler = grpc.unary_unary_rpc_method_handler(
        service.GetBudgetStatus,
        request_deserializer=budget_pb2.GetBudgetStatusRequest.FromString,
        response_serializer=budget_pb2.GetBudgetStatusResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"GetBudgetStatus": handler})])
