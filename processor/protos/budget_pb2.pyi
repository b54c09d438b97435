from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetBudgetStatusRequest(_message.Message):
    __slots__ = ("attribution", "budget_name")
    class AttributionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_NAME_FIELD_NUMBER: _ClassVar[int]
    attribution: _containers.ScalarMap[str, str]
    budget_name: str
    def __init__(self, attribution: _Optional[_Mapping[str, str]] = ..., budget_name: _Optional[str] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("name", "dimension", "subject", "period", "window", "window_start", "window_end", "limit_usd", "consumed_usd", "remaining_usd", "utilization", "exceeded", "mode", "warn_at", "blocking")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_USD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_USD_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WARN_AT_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_FIELD_NUMBER: _ClassVar[int]
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
    warn_at: _containers.RepeatedScalarFieldContainer[float]
    blocking: bool
    def __init__(self, name: _Optional[str] = ..., dimension: _Optional[str] = ..., subject: _Optional[str] = ..., period: _Optional[str] = ..., window: _Optional[str] = ..., window_start: _Optional[str] = ..., window_end: _Optional[str] = ..., limit_usd: _Optional[float] = ..., consumed_usd: _Optional[float] = ..., remaining_usd: _Optional[float] = ..., utilization: _Optional[float] = ..., exceeded: _Optional[bool] = ..., mode: _Optional[str] = ..., warn_at: _Optional[_Iterable[float]] = ..., blocking: _Optional[bool] = ...) -> None: ...

class GetBudgetStatusResponse(_message.Message):
    __slots__ = ("budgets", "blocked")
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    blocked: bool
    def __init__(self, budgets: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ..., blocked: _Optional[bool] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("trace_id", "span_id", "attribution", "model", "provider", "estimated_usd", "estimated_input_tokens", "estimated_output_tokens", "ttl_seconds")
    class AttributionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_USD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    attribution: _containers.ScalarMap[str, str]
    model: str
    provider: str
    estimated_usd: float
    estimated_input_tokens: int
    estimated_output_tokens: int
    ttl_seconds: float
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., attribution: _Optional[_Mapping[str, str]] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., estimated_usd: _Optional[float] = ..., estimated_input_tokens: _Optional[int] = ..., estimated_output_tokens: _Optional[int] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("result", "reason_code", "reserved", "unit", "budget_name", "remaining", "expires_at", "repeated")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_NAME_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REPEATED_FIELD_NUMBER: _ClassVar[int]
    result: str
    reason_code: str
    reserved: float
    unit: str
    budget_name: str
    remaining: float
    expires_at: str
    repeated: bool
    def __init__(self, result: _Optional[str] = ..., reason_code: _Optional[str] = ..., reserved: _Optional[float] = ..., unit: _Optional[str] = ..., budget_name: _Optional[str] = ..., remaining: _Optional[float] = ..., expires_at: _Optional[str] = ..., repeated: _Optional[bool] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("trace_id", "span_id")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...
