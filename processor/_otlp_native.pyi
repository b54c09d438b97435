# Type stub of the native extension (processor/native, built as processor._otlp_native).
# Written by hand from the #[pyfunction]/#[pymethods] signatures in processor/native/src/*.rs;
# `Any` marks Arrow C-data capsules and per-batch structures whose shape the Python adapters own.
from collections.abc import Sequence
from typing import Any, Literal

# scan.rs: walks an export request once; returns the asked-for keys' columns as Arrow buffers.
def scan(
    raw: bytes,
    item_keys: Sequence[str],
    resource_keys: Sequence[str],
    want_strings: bool,
    logs: bool = False,
    values_to: Redactor | None = None,
) -> dict[str, Any]: ...

# rewrite.rs: splices the stages' changed columns into the request bytes.
def rewrite(
    raw: bytes,
    columns: Sequence[tuple[str, Any]],
    rewrites: Sequence[Any],
    event_rows: Sequence[int],
    # (row, serialised Span.Event) or (name, rows, times, [(key, values)]): events as columns.
    events: Sequence[tuple[Any, ...]] = ...,
    logs: bool = False,
) -> bytes: ...

# cost.rs: prices one batch against the table's rows.
def cost_batch(
    texts: list[Any],
    counts: list[Any],
    verbatim: bool,
    start: Any,
    start_unsigned: bool,
    sdk_priced: Any | None,
    pairs: PairGroups,
    prices: PriceRows,
    version: str,
    threaded: bool,
) -> Any: ...

class PairGroups:
    def __init__(self, aliases: Sequence[tuple[str, str]]) -> None: ...
    def add(self, pairs: Sequence[tuple[str | None, str | None, int | None, bool]]) -> None: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...

class PriceRows:
    def __init__(
        self,
        threshold: Sequence[int],
        lo: Sequence[int],
        hi: Sequence[int],
        prices: Sequence[Sequence[float]],
        entry_provider: Sequence[str],
        entry_model: Sequence[str],
        members: Sequence[Sequence[int]],
        dated: bool,
    ) -> None: ...

# redact.rs: (index of the first value pattern at fault, why) when the redactor cannot run them.
def value_patterns_problem(patterns: Sequence[str]) -> tuple[int, str] | None: ...

# sanitize.rs: processor/stages/redaction/sanitizers.py's sanitisers in Rust (kind "url_query" | "sql";
# mask for URLs; double_quoted: "..." is a SQL string (MySQL); span_name: a span name's URLs).
def sanitize(kind: str, text: str, mask: str, double_quoted: bool = False, span_name: bool = False) -> str: ...

# redact.rs: the redaction stage's rules over a batch in one call.

class Redactor:
    def __init__(
        self,
        protected: str,
        values_only: str,
        allowed: str | None,
        allow_all: bool,
        key_rules: Sequence[tuple[str, str, str, int]],
        value_rules: Sequence[tuple[str, Any | None, str | None, str, str]],
        redact_all_types: bool,
        hasher: Any,
        # Per rule (key rules, then value rules): None or (when keys, skip keys, when resource,
        # skip resource, when attributes, skip attributes), as processor/stages/redaction/rules.py
        # RuleConditions.
        conditions: Sequence[
            tuple[
                str | None,
                str | None,
                Sequence[tuple[str, Sequence[str]]],
                Sequence[tuple[str, Sequence[str]]],
                Sequence[tuple[str, Sequence[str]]],
                Sequence[tuple[str, Sequence[str]]],
            ]
            | None
        ]
        | None = None,
        # (kind "url_query" | "sql", anchored key regex, mask, sanitise span names), in order.
        sanitizers: Sequence[tuple[str, str, str, bool]] | None = None,
    ) -> None: ...
    def redact(
        self,
        scope: Any,
        key: Any,
        value: Any,
        kind: Any | None,
        owner: Any,
        position: Any,
        row: Any,
        item_resource: Any,
        summary: int,
    ) -> Any | None: ...

class RedactionJob:
    # ("done", what Redactor.redact returns), or ("python", None): the request holds values only
    # the Python path renders.
    def finish(self, summary: int) -> tuple[Literal["done", "python"], Any | None]: ...
    def abandon(self) -> None: ...

# policy.rs: the policy stage's per-batch checks and budget windows.
class PolicyPlan:
    def __init__(
        self,
        dimensions: Sequence[Sequence[int]],
        cost_texts: tuple[int, int, int, int],
        rules: Sequence[
            tuple[str, Sequence[tuple[int, Sequence[str]]], float, int, str | None, str | None, Sequence[int]]
        ],
        budgets: Sequence[tuple[str, str, int | None, str | None, int, float, float, Sequence[float], bool]],
        zones: int,
        labels: Sequence[int],
        checks: Sequence[tuple[str, int, str]],
        order: Sequence[int],
        words: tuple[str, str, str, str],
        awu: tuple[Sequence[int], Sequence[int], Sequence[tuple[str, str]], str, str],
    ) -> None: ...
    def run(
        self,
        rows: int,
        texts: Sequence[Any | None],
        numbers: Sequence[Any | None],
        now_ns: int,
        now_s: int,
        apply: Any,
        window_of: Any,
        relabel: Any,
        subjects: Sequence[Any] = ...,
        in_span: Any | None = None,
        forecast: tuple[int, Sequence[tuple[float, float] | None]] | None = None,
    ) -> Any | None: ...

# Not exported by the module (no constructor): the type of what PolicyPlan.run hands back.
class _OperationGroups:
    def __len__(self) -> int: ...
    def costs(self) -> tuple[Any, ...] | None: ...
    def set_cost(self, group: int, cost: float) -> None: ...
    def add_to(self, totals: OperationTotals | None = None) -> list[Any]: ...

# operation_totals.rs: the operation metrics' running sums, one row per label combination.
class OperationTotals:
    def __init__(self, width: int) -> None: ...
    def __len__(self) -> int: ...
    def new_series(self) -> int: ...
    def changes(self) -> list[tuple[int, int, float]]: ...
    def alias(self, labels: Sequence[str], series: int) -> None: ...
    def add(
        self,
        series: int,
        cost: float,
        tokens_input: float,
        tokens_output: float,
        tokens: float,
        operations: float,
        errors: float,
        buckets: Sequence[tuple[int, float]] | None,
        latency_sum: float,
    ) -> None: ...
    def value(self, series: int, slot: int) -> _TotalValue: ...

# A prometheus_client value slot backed by one OperationTotals cell; not exported by the module,
# the type of what OperationTotals.value returns.
class _TotalValue:
    def get(self) -> float: ...
    def inc(self, amount: float) -> None: ...
    def set(self, value: float, timestamp: Any | None = None) -> None: ...
    def set_exemplar(self, exemplar: Any) -> None: ...
    def get_exemplar(self) -> Any | None: ...
