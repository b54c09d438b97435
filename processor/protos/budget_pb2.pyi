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
