"""The policy file: budgets and policy rules, parsed from YAML into frozen dataclasses.

A file that does not parse or validate raises PolicyFileError with the offending entry named, so
a hot reload can keep the last good file and `validate-config` can say what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from prometheus_client import CollectorRegistry

from processor.core.attribution import DIMENSIONS
from processor.files.error_text import clip, shown
from processor.files.file_limits import read_text_limited
from processor.files.linear_regex import glob_regex, regex_problem
from processor.files.reload import ReloadMetrics, Watcher
from processor.files.safe_yaml import YamlError, load_yaml

log = structlog.get_logger(__name__)

PERIODS = ("daily", "weekly", "monthly")
MODES = ("enforced", "advisory", "audit_only")
RULE_TYPES = (
    "max_cost_per_operation",
    "model_access",
    "required_attribution",
    "pii_detected",
    "max_tokens_per_request",
)
# strftime of a period's local start: also how spans are bucketed (polars uses the same codes).
PERIOD_LABEL = {"daily": "%Y-%m-%d", "weekly": "%G-W%V", "monthly": "%Y-%m"}


class PolicyFileError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(clip(message))


@dataclass(frozen=True)
class Budget:
    name: str
    limit_usd: float
    period: str
    timezone: str
    warn_at: tuple[float, ...]
    mode: str
    # None: one budget over all spend. With a dimension and no value: one budget per value seen.
    dimension: str | None = None
    value: str | None = None
    # Instead of a dimension: any span attribute (span first, then resource), e.g.
    # gen_ai.conversation.id. Its distinct values per window are capped at max_subjects (counted
    # in the state store); spend of values past the cap is charged to the OVERFLOW subject.
    attribute: str | None = None
    max_subjects: int = 10_000

    @property
    def per_value(self) -> str | None:
        """The key the budget's subjects come from: a dimension or an attribute (None: one budget)."""
        return self.dimension or self.attribute

    def thresholds(self) -> tuple[float, ...]:
        """Utilisation levels that get a span event when crossed; 1.0 is "exceeded"."""
        return (*self.warn_at, 1.0)

    def window(self, at: dt.datetime) -> tuple[str, dt.datetime, dt.datetime]:
        """(label, start, end) of the calendar window holding `at`, in the budget's timezone."""
        local = at.astimezone(ZoneInfo(self.timezone))
        if self.period == "daily":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            end = start.date() + dt.timedelta(days=1)
        elif self.period == "weekly":
            start = (local - dt.timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
            end = start.date() + dt.timedelta(days=7)
        else:
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            end = (start.date() + dt.timedelta(days=32)).replace(day=1)
        # Rebuilt from the date so a DST change inside the window gives the right local midnight.
        start = dt.datetime.combine(start.date(), dt.time(), tzinfo=start.tzinfo)
        end_at = dt.datetime.combine(end, dt.time(), tzinfo=start.tzinfo)
        return start.strftime(PERIOD_LABEL[self.period]), start, end_at


@dataclass(frozen=True)
class PolicyRule:
    name: str
    type: str
    mode: str
    # dimension -> values: the rule applies only to spans attributed to one of them.
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_usd: float | None = None
    max_tokens: int | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyFile:
    budgets: tuple[Budget, ...] = ()
    rules: tuple[PolicyRule, ...] = ()


EMPTY = PolicyFile()


def load_policy_file(path: str | Path) -> PolicyFile:
    try:
        text = read_text_limited(Path(path))
    except ValueError as exc:
        raise PolicyFileError(f"policy file {exc}") from None
    except OSError as exc:
        raise PolicyFileError(f"cannot read policy file {path}: {exc.strerror}") from exc
    return parse_policy_file(text, str(path))


def parse_policy_file(text: str, where: str = "policy file") -> PolicyFile:
    try:
        raw = load_yaml(text)
    except YamlError as exc:
        raise PolicyFileError(f"{where} is not valid YAML: {exc}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise PolicyFileError(f"{where} must hold a mapping")
    _known(raw, {"timezone", "budgets", "policies"}, where)
    default_tz = _timezone(raw.get("timezone", "UTC"), f"{where}: timezone")
    budgets = tuple(_budget(item, default_tz, f"{where}: budgets[{i}]") for i, item in enumerate(_list(raw, "budgets")))
    rules = tuple(_rule(item, f"{where}: policies[{i}]") for i, item in enumerate(_list(raw, "policies")))
    for kind, names in (("budget", [b.name for b in budgets]), ("policy", [r.name for r in rules])):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PolicyFileError(f"{where}: {kind} name {shown(duplicates[0])} is used twice")
    return PolicyFile(budgets, rules)


def _list(raw: dict, key: str) -> list:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise PolicyFileError(f"{key} must be a list")
    return value


def _known(raw: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        raise PolicyFileError(f"{where}: unknown field {shown(unknown[0])} (known: {', '.join(sorted(known))})")


def _timezone(name: object, where: str) -> str:
    try:
        ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PolicyFileError(f"{where}: unknown timezone {shown(name)}") from exc
    return str(name)


def _name(raw: dict, where: str) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyFileError(f"{where}: name is required")
    return name.strip()


def _choice(raw: dict, key: str, choices: tuple[str, ...], default: str | None, where: str) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise PolicyFileError(f"{where}: {key} must be one of {', '.join(choices)}, not {shown(value)}")
    return value


def _number(raw: dict, key: str, where: str, *, integer: bool = False) -> float | int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PolicyFileError(f"{where}: {key} must be a non-negative number, not {shown(value)}")
    if integer and value != int(value):
        raise PolicyFileError(f"{where}: {key} must be a whole number, not {shown(value)}")
    return int(value) if integer else float(value)


def _dimension(value: object, where: str) -> str:
    if value not in DIMENSIONS:
        raise PolicyFileError(f"{where}: unknown dimension {shown(value)} (known: {', '.join(DIMENSIONS)})")
    return str(value)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | int | float):
        return (str(value),)
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise PolicyFileError(f"{where} must be a string or a list of strings")
    return tuple(str(v) for v in value)


def _budget(raw: object, default_tz: str, where: str) -> Budget:
    if not isinstance(raw, dict):
        raise PolicyFileError(f"{where} must be a mapping")
    _known(raw, set(_BUDGET_FIELDS), where)
    name = _name(raw, where)
    where = f"{where} ({name})"
    warn_at = tuple(sorted(float(t) for t in _strings(raw.get("warn_at", [0.8, 0.95]), f"{where}: warn_at")))
    if any(not 0 < t < 1 for t in warn_at):
        raise PolicyFileError(f"{where}: warn_at thresholds must be between 0 and 1 (1.0 is 'exceeded')")
    dimension = raw.get("dimension")
    attribute = raw.get("attribute")
    value = raw.get("value")
    if dimension is not None and attribute is not None:
        raise PolicyFileError(f"{where}: give a dimension or an attribute, not both")
    if attribute is not None and (not isinstance(attribute, str) or not attribute.strip()):
        raise PolicyFileError(f"{where}: attribute must be an attribute key, not {shown(attribute)}")
    if dimension is None and attribute is None and value is not None:
        raise PolicyFileError(f"{where}: value needs a dimension or an attribute")
    max_subjects = _number(raw, "max_subjects", where, integer=True) if "max_subjects" in raw else 10_000
    if max_subjects < 1:
        raise PolicyFileError(f"{where}: max_subjects must be at least 1")
    limit = _number(raw, "limit_usd", where)
    if limit <= 0:
        raise PolicyFileError(f"{where}: limit_usd must be positive (deny a team its models with model_access)")
    return Budget(
        name=name,
        limit_usd=limit,
        period=_choice(raw, "period", PERIODS, None, where),
        timezone=_timezone(raw.get("timezone", default_tz), f"{where}: timezone"),
        warn_at=warn_at,
        mode=_choice(raw, "mode", MODES, "advisory", where),
        dimension=None if dimension is None else _dimension(dimension, f"{where}: dimension"),
        value=None if value in (None, "*") else str(value),
        attribute=None if attribute is None else attribute.strip(),
        max_subjects=int(max_subjects),
    )


_BUDGET_FIELDS = (
    *("name", "limit_usd", "period", "timezone", "warn_at", "mode"),
    *("dimension", "value", "attribute", "max_subjects"),
)


def budget_attributes(policy: PolicyFile) -> frozenset[str]:
    """The span attributes the file's budgets key on (the decoder must read them)."""
    return frozenset(b.attribute for b in policy.budgets if b.attribute is not None)


def checked_attributes(policy: PolicyFile, readable: frozenset[str], where: str) -> PolicyFile:
    """`policy`, or PolicyFileError when a budget keys on an attribute the running decoder does
    not read (it reads those of policy.budget_attributes and of the file at start-up)."""
    missing = sorted(budget_attributes(policy) - readable)
    if missing:
        raise PolicyFileError(
            f"{where}: budget attribute {shown(missing[0])} is not read by this sidecar:"
            " list it in policy.budget_attributes, or restart it with this file"
        )
    return policy


_RULE_FIELDS = {
    "max_cost_per_operation": {"max_usd"},
    "model_access": {"allow", "deny"},
    "required_attribution": {"dimensions"},
    "pii_detected": set(),
    "max_tokens_per_request": {"max_tokens"},
}


def _rule(raw: object, where: str) -> PolicyRule:
    if not isinstance(raw, dict):
        raise PolicyFileError(f"{where} must be a mapping")
    name = _name(raw, where)
    where = f"{where} ({name})"
    kind = _choice(raw, "type", RULE_TYPES, None, where)
    _known(raw, {"name", "type", "mode", "match", *_RULE_FIELDS[kind]}, where)
    match = raw.get("match") or {}
    if not isinstance(match, dict):
        raise PolicyFileError(f"{where}: match must map dimensions to values")
    rule = PolicyRule(
        name=name,
        type=kind,
        mode=_choice(raw, "mode", MODES, "advisory", where),
        match={_dimension(d, f"{where}: match"): _strings(v, f"{where}: match.{d}") for d, v in match.items()},
    )
    if kind == "max_cost_per_operation":
        return _replace(rule, max_usd=_number(raw, "max_usd", where))
    if kind == "max_tokens_per_request":
        return _replace(rule, max_tokens=_number(raw, "max_tokens", where, integer=True))
    if kind == "model_access":
        allow, deny = _strings(raw.get("allow"), f"{where}: allow"), _strings(raw.get("deny"), f"{where}: deny")
        if not allow and not deny:
            raise PolicyFileError(f"{where}: model_access needs allow or deny")

        for key, patterns in (("allow", allow), ("deny", deny)):
            # Checked here, or a list the regex engine cannot compile fails every batch at run time.
            reason = regex_problem(glob_regex(patterns)) if patterns else None
            if reason is not None:
                raise PolicyFileError(f"{where}: {key} patterns cannot be used: {reason}")
        return _replace(rule, allow=allow, deny=deny)
    if kind == "required_attribution":
        dims = _strings(raw.get("dimensions", ["team"]), f"{where}: dimensions")
        if not dims:
            raise PolicyFileError(f"{where}: required_attribution needs at least one dimension")
        return _replace(rule, dimensions=tuple(_dimension(d, f"{where}: dimensions") for d in dims))
    return rule


def _replace(rule: PolicyRule, **changes: Any) -> PolicyRule:
    return dataclasses.replace(rule, **changes)


class PolicySource:
    """The current policy file, hot reloaded by processor.files.reload.Watcher (a broken edit keeps the
    last good file; `genops_policy_reload_success` drops to 0). No path: no budgets, no rules."""

    def __init__(
        self,
        path: str,
        interval: float = 5.0,
        registry: CollectorRegistry | None = None,
        attributes: frozenset[str] | None = None,
    ) -> None:
        self._current = EMPTY
        self.watcher: Watcher[PolicyFile] | None = None
        # The budget attributes read (None: any, the file at start-up decides; see `readable`).
        self.attributes = attributes
        if path:
            metrics = ReloadMetrics("genops_policy", "policy file", registry) if registry is not None else None
            self.watcher = Watcher(path, load_policy_file, self._use, interval, metrics, name="policy").start()

    def _use(self, policy: PolicyFile) -> None:
        if self.attributes is not None:
            # (Checked here, not in the loader: reloads are parsed in a child process.)
            try:
                checked_attributes(policy, self.attributes, "policy file")
            except PolicyFileError as exc:
                log.error("policy file not used; keeping the previous one", reason=str(exc))
                return
        self._current = policy

    def readable(self, configured: frozenset[str]) -> frozenset[str]:
        """The attributes to decode: `configured` plus those of the file in use, fixed from now on."""
        if self.attributes is None:
            self.attributes = configured | budget_attributes(self._current)
        return self.attributes

    def current(self) -> PolicyFile:
        return self._current

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
