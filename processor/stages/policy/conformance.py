"""`genops-sidecar conformance FILE`: which AI Workload Units of some OTLP trace output break the
GenOps Governance Specification v0.1, and how (§9.1 full compliance, §9.2 partial).

An AWU is a span with a GenAI attribute (`gen_ai.*`, `llm.*`) or a GenOps one (`genops.*`): what the
sidecar's cost stage recognises, and what a runtime emitting GenOps telemetry marks. Checked per
AWU, as the telemetry shows it (§9.4):
- §9.1.1 the §7.1 attributes, with the conditional exceptions (accounting.* may be absent on a
  BLOCKED or RATE_LIMITED unit; accounting.reserved, and the unit with it, only at full level:
  a partial runtime reserves nothing);
- §9.1.3 (full only) the §7.2 events: genops.policy.evaluated, genops.budget.reservation and,
  unless the unit was stopped before execution, genops.budget.reconciliation;
- §9.1.4 the decision state, §9.1.5 the reason code (and none on ALLOWED, §5.3);
- §9.1.6 (trace_id, span_id) unique across the file; §9.1.7 a unit seen more than once keeps its
  attribution;
- §9.1.8 no empty or placeholder values in the required attributes.
§9.1.2 (reservation before execution) is a runtime's behaviour; its trace is the reservation
event, which the full level checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from processor.core import genops_semconv as gs
from processor.core.attribution import dimension_key
from processor.files.error_text import clip, shown

FULL = "full"
PARTIAL = "partial"
# Per AWU: full where its runtime reserved before execution (a genops.budget.reservation event or
# genops.accounting.reserved on it), partial otherwise: the level a gateway-fronted deployment of
# the sidecar claims (README, "GenOps specification").
AUTO = "auto"
LEVELS = (FULL, PARTIAL, AUTO)

ATTRIBUTION = tuple(dimension_key(dim) for dim in gs.REQUIRED_DIMENSIONS)
_REQUIRED_ALWAYS = (
    gs.SPEC_VERSION,
    *ATTRIBUTION,
    gs.OPERATION_NAME,
    gs.OPERATION_TYPE,
    gs.POLICY_RESULT,
)
ACCOUNTING_RESERVED = "genops.accounting.reserved"
_NOT_EXECUTED = (gs.BLOCKED, gs.RATE_LIMITED)
_EXTENSION_CODE = re.compile(r"x_[a-z0-9_]+")
_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
# Values that stand for "no value" (§9.1.8), compared lowercased and trimmed.
PLACEHOLDERS = frozenset(
    {"", "unknown", "none", "null", "nil", "n/a", "na", "-", "tbd", "todo", "placeholder", "default"}
)
_AWU_PREFIXES = ("gen_ai.", "llm.", "genops.")


@dataclass(frozen=True)
class Violation:
    trace_id: str
    span_id: str
    span_name: str
    requirement: str  # the spec section it breaks, e.g. "9.1.1"
    problem: str

    def line(self) -> str:
        return f"{self.trace_id}/{self.span_id} ({shown(self.span_name)}): §{self.requirement}: {self.problem}"


@dataclass(frozen=True)
class Report:
    level: str
    units: int
    violations: tuple[Violation, ...]
    # Units checked at the full level (all of them at FULL, none at PARTIAL, the reserved ones at AUTO).
    full_units: int = 0

    @property
    def compliant(self) -> bool:
        return self.units > 0 and not self.violations


@dataclass(frozen=True)
class _Unit:
    trace_id: str
    span_id: str
    name: str
    attributes: dict[str, object]
    events: dict[str, list[dict[str, object]]]


def read_requests(path: Path) -> list[trace_pb.ExportTraceServiceRequest]:
    """OTLP trace requests from a file: JSON, one request per line (the Collector's file exporter),
    or one binary protobuf request. Raises ValueError naming what is wrong."""
    data = path.read_bytes()
    if data.lstrip()[:1] == b"{":
        requests = []
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                requests.append(json_format.Parse(line, trace_pb.ExportTraceServiceRequest()))
            except json_format.ParseError as exc:
                raise ValueError(f"{path}: line {number} is not an OTLP/JSON trace request: {clip(str(exc))}") from None
        return requests
    try:
        return [trace_pb.ExportTraceServiceRequest.FromString(data)]
    except DecodeError as exc:
        raise ValueError(f"{path}: not an OTLP trace request (JSON lines or protobuf): {clip(str(exc))}") from None


def check(requests: Iterable[trace_pb.ExportTraceServiceRequest], level: str = PARTIAL) -> Report:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    violations: list[Violation] = []
    seen: dict[tuple[str, str], dict[str, object]] = {}
    units = full_units = 0
    for unit in _units(requests):
        units += 1
        unit_level = level if level != AUTO else FULL if _reserved(unit) else PARTIAL
        full_units += unit_level == FULL
        found = list(_unit_problems(unit, unit_level))
        identity = (unit.trace_id, unit.span_id)
        earlier = seen.get(identity)
        if earlier is not None:
            found.append(("9.1.6", "AWU identifier (trace_id, span_id) used by more than one span"))
            changed = [key for key in ATTRIBUTION if earlier.get(key) != unit.attributes.get(key)]
            if changed:
                found.append(("9.1.7", f"attribution differs from the earlier span of this id: {', '.join(changed)}"))
        else:
            seen[identity] = unit.attributes
        violations += [Violation(unit.trace_id, unit.span_id, unit.name, req, problem) for req, problem in found]
    return Report(level, units, tuple(violations), full_units)


def _reserved(unit: _Unit) -> bool:
    return ACCOUNTING_RESERVED in unit.attributes or gs.EVENT_BUDGET_RESERVATION in unit.events


def _units(requests: Iterable[trace_pb.ExportTraceServiceRequest]) -> Iterator[_Unit]:
    for request in requests:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {kv.key: _value(kv.value) for kv in span.attributes}
                    if not any(key.startswith(_AWU_PREFIXES) for key in attributes):
                        continue
                    events: dict[str, list[dict[str, object]]] = {}
                    for event in span.events:
                        events.setdefault(event.name, []).append({kv.key: _value(kv.value) for kv in event.attributes})
                    yield _Unit(span.trace_id.hex(), span.span_id.hex(), span.name, attributes, events)


def _value(value) -> object:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _unit_problems(unit: _Unit, level: str) -> Iterator[tuple[str, str]]:
    attributes = unit.attributes
    result = attributes.get(gs.POLICY_RESULT)
    for key in _REQUIRED_ALWAYS:
        yield from _required(attributes, key)
    executed = result not in _NOT_EXECUTED
    if executed:
        yield from _required(attributes, gs.ACCOUNTING_ACTUAL, number=True)
    if executed or ACCOUNTING_RESERVED in attributes or gs.ACCOUNTING_ACTUAL in attributes:
        yield from _required(attributes, gs.ACCOUNTING_UNIT)
    if level == FULL and executed:
        yield from _required(attributes, ACCOUNTING_RESERVED, number=True)
    version = attributes.get(gs.SPEC_VERSION)
    if isinstance(version, str) and not _placeholder(version) and not _SEMVER.fullmatch(version):
        yield "11.3", f"{gs.SPEC_VERSION} {shown(version)} is not MAJOR.MINOR.PATCH"
    yield from _decision(attributes, "9.1.4", "9.1.5", "")
    if level == FULL:
        yield from _events(unit, executed)


def _required(attributes: dict[str, object], key: str, number: bool = False) -> Iterator[tuple[str, str]]:
    value = attributes.get(key)
    if key not in attributes:
        yield "9.1.1", f"required attribute {key} missing"
    elif number and (isinstance(value, bool) or not isinstance(value, int | float)):
        yield "9.1.1", f"{key} is not a number"
    elif not number and (not isinstance(value, str) or _placeholder(value)):
        yield "9.1.8", f"{key} has an empty or placeholder value {shown(value)}"


def _placeholder(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDERS


def _decision(attributes: dict[str, object], state: str, reason: str, where: str) -> Iterator[tuple[str, str]]:
    result = attributes.get(gs.POLICY_RESULT)
    code = attributes.get(gs.POLICY_REASON_CODE)
    if result is not None and result not in gs.DECISION_STATES:
        yield state, f"{where}{gs.POLICY_RESULT} {shown(result)} is not one of {', '.join(gs.DECISION_STATES)}"
    if result == gs.ALLOWED and code is not None:
        yield reason, f"{where}{gs.POLICY_REASON_CODE} set on an ALLOWED decision"
    elif result is not None and result != gs.ALLOWED and code is None:
        yield reason, f"{where}{gs.POLICY_REASON_CODE} missing on a {result} decision"
    if code is not None and code not in gs.SPEC_REASON_CODES and not _EXTENSION_CODE.fullmatch(str(code)):
        yield reason, f"{where}{gs.POLICY_REASON_CODE} {shown(code)} is neither a §5.2 code nor an x_ extension"


def _events(unit: _Unit, executed: bool) -> Iterator[tuple[str, str]]:
    evaluated = unit.events.get(gs.EVENT_POLICY_EVALUATED, [])
    if not evaluated:
        yield "9.1.3", f"required event {gs.EVENT_POLICY_EVALUATED} missing"
    for event in evaluated:
        if gs.POLICY_RESULT not in event:
            yield "9.1.3", f"{gs.EVENT_POLICY_EVALUATED} without {gs.POLICY_RESULT}"
        yield from _decision(event, "9.1.4", "9.1.5", f"{gs.EVENT_POLICY_EVALUATED}: ")
    reserved = unit.events.get(gs.EVENT_BUDGET_RESERVATION, [])
    reconciled = unit.events.get(gs.EVENT_BUDGET_RECONCILIATION, [])
    if executed and not reserved:
        yield "9.1.3", f"required event {gs.EVENT_BUDGET_RESERVATION} missing"
    if executed and not reconciled:
        yield "9.1.3", f"required event {gs.EVENT_BUDGET_RECONCILIATION} missing"
    if not executed and reconciled:
        yield "9.1.3", f"{gs.EVENT_BUDGET_RECONCILIATION} on a unit that did not execute"
    for event in reserved:
        yield from _event_keys(event, gs.EVENT_BUDGET_RESERVATION, (ACCOUNTING_RESERVED, gs.ACCOUNTING_UNIT))
    for event in reconciled:
        keys = (gs.ACCOUNTING_ACTUAL, ACCOUNTING_RESERVED, gs.ACCOUNTING_UNIT)
        yield from _event_keys(event, gs.EVENT_BUDGET_RECONCILIATION, keys)


def _event_keys(event: dict[str, object], name: str, keys: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for key in keys:
        if key not in event:
            yield "9.1.3", f"{name} without {key}"


def render(report: Report) -> list[str]:
    """The report as lines: one per violation, then a summary."""
    lines = [violation.line() for violation in report.violations]
    failing = len({(v.trace_id, v.span_id) for v in report.violations})
    if report.units == 0:
        lines.append("no AI Workload Units found (spans with gen_ai.*, llm.* or genops.* attributes)")
    verdict = "conformant" if report.compliant else "NOT conformant"
    level = report.level
    if level == AUTO:
        level = f"full for {report.full_units} AWUs, partial for {report.units - report.full_units}"
    lines.append(
        f"GenOps v0.1 — {level}: {verdict}: {report.units} AWUs, {failing} with violations, "
        f"{len(report.violations)} violations"
    )
    return lines
