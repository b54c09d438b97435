"""The redaction stage: mask, hash, drop or truncate values before telemetry leaves the node.

Works on the long frame of every value in the batch (`TelemetryBatch.string_values()`):

1. keys are classified once per distinct key (protected, allowed, first matching key rule);
2. attributes whose key is not allowed are dropped; key rules act on whole values;
3. the remaining values get one prefilter pass with all value patterns combined, and only the
   values it hits go through the rules one by one. Candidate checks (Luhn, mod-97) and HMACs run
   on the distinct matched substrings, which `str.replace_many` then writes back.

Non-string values (arrays, maps, numbers) come with a textual rendering; when a rule changes one,
the whole value is replaced by the redacted rendering as a string.

With the native extension built, the same steps run in Rust (`Redactor` in
processor/native/src/stages/redact.rs), which returns only the changed values and the per-item summary.
In a pipeline the decoder's scan hands every value straight to the redactor's own thread, which
runs the rules with the GIL released while the stages before this one (cost) run; the stage takes
the result at its turn (`values_consumer`, `finish`). Called on its own, `process` hands the
values over as Arrow buffers instead. The native redactor is the stage's one engine; the polars
implementation it was written against is the differential oracle in tests/oracle/redaction.py
(tests/stages/redaction/test_redaction_native.py).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter

from processor.config import RedactionConfig
from processor.core.contract import ENGINE_NATIVE, BatchChanges
from processor.core.decode import (
    LOGS,
    RESOURCE_INDEX,
    SCOPE_ITEM,
    TRACES,
    TelemetryBatch,
    WantedKeys,
    native_available,
    native_module,
)
from processor.core.outbound import NO_REDACTION, OutboundRedaction
from processor.stages.policy import rules as policies
from processor.stages.redaction.detectors import (
    check_bearer,
    check_card,
    check_google_key,
    check_iban,
    check_ipv4,
    check_ipv6,
    check_phone,
    check_ssn,
    check_url_userinfo,
)
from processor.stages.redaction.rules import (
    RESERVED_RULE_NAME,
    KeyRule,
    RedactionRules,
    RuleConditions,
    ValueRule,
    load_rules,
)

if TYPE_CHECKING:
    from processor._otlp_native import Redactor

COUNT_KEY = "genops.redaction.count"
KEYS_KEY = "genops.redaction.keys"
DETECTED_KEY = policies.PII_COUNT
NOT_ALLOWED = RESERVED_RULE_NAME

_REWRITE_SCHEMA = {
    "scope": pl.String,
    "owner": pl.Int64,
    "position": pl.Int64,
    "row": pl.Int64,
    "label": pl.String,
    "rule": pl.String,
    "action": pl.String,
    "new_value": pl.String,
}


class ValueRedactor:
    """The value rules' hash (the native redactor calls it for hash rules); tests/oracle/redaction.py
    adds the polars scan of a Series of strings."""

    def __init__(
        self, rules: tuple[ValueRule, ...], hash_key: bytes | None, hash_prefix: str, digest: str = "sha256"
    ) -> None:
        self.rules = rules
        self.hash_key = hash_key
        self.hash_prefix = hash_prefix
        self.digest = digest

    def hash(self, value: str) -> str:
        if self.hash_key is None:
            raise RuntimeError("a hash rule needs a hash key")
        return self.hash_prefix + hmac.new(self.hash_key, value.encode(), self.digest).hexdigest()


class RedactionStage:
    name = "redaction"
    signals = frozenset({TRACES, LOGS})

    def __init__(self, rules: RedactionRules, hash_key: bytes | None, registry: CollectorRegistry) -> None:
        self.rules = rules
        self.values = ValueRedactor(rules.value_rules, hash_key, rules.hash_prefix, rules.hash_digest)
        self.redactions = Counter(
            "genops_redaction",
            "Values redacted, by rule (detector), action and signal.",
            ["detector", "action", "signal"],
            registry=registry,
        )
        every_rule: tuple[KeyRule | ValueRule, ...] = (*rules.key_rules, *rules.value_rules)
        self._native = _native_redactor(rules, self.values)
        # The native redactor counts rewrites per rule slot: key rules, value rules, allow-list drop,
        # then the sanitisers.
        self._slots = [(rule.name, rule.action.kind) for rule in every_rule] + [(NOT_ALLOWED, "drop")]
        self._slots += [(sanitizer.name, "mask") for sanitizer in rules.sanitizers]
        self._slot_counters: dict[tuple[int, str], Counter] = {}
        # These rules for what the sidecar sends out besides the request's own values.
        self.outbound = OutboundRedaction(self.redact_one)

    def wanted_keys(self) -> WantedKeys:
        # No columns, but every value: the decoder then builds string_values() in its own pass
        # (unless the stage is started: it then scans the request itself, see `start`).
        return WantedKeys(values=True)

    def values_consumer(self) -> object | None:
        """The native redactor, which the decoder's scan hands every value to: the rules then run
        on its own thread, the GIL released, while the stages before this one run; `finish` takes
        the result at this stage's turn. None with the pure-Python decoder (GENOPS_NATIVE_DECODE=0),
        which hands no values over (`process` runs)."""
        return self._native if native_available() else None

    def finish(self, batch: TelemetryBatch, job) -> BatchChanges:
        status, found = job.finish(_SUMMARY_LEVELS[self.rules.summary])
        if status == "python":
            # Values only the Python renderer reads (malformed nesting): the whole stage as usual.
            return self.process(batch)
        return self._native_changes(found, batch.signal)

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        # The scan's own arrays when it has them: no frame of every value built only to be handed over.
        arrays = batch.string_value_arrays()
        if arrays is None:
            values = batch.string_values()
            if values.height == 0:
                return BatchChanges()
            arrays = _value_arrays(values)
        elif len(arrays["value"]) == 0:
            return BatchChanges()
        return self._process_native(batch, arrays)

    def redact_values(self, values: pl.DataFrame, signal: str) -> pl.DataFrame:
        """The rewrites (scope, owner, position, new_value; null: drop) of a frame shaped like
        `TelemetryBatch.string_values()` that belongs to no span or record (metric data points):
        counted in genops_redaction_total under `signal`, no per-item summary. `row` is the
        ordinal of the value's resource (or -1), which is what resource conditions read."""
        if values.height == 0:
            return pl.DataFrame(schema={name: _REWRITE_SCHEMA[name] for name in _WRITTEN})
        # Each "item" is a resource: item i lies under resource i.
        resources = _resources_of(values)
        text, index = _TEXT, _INDEX
        found = self._native.redact(
            _arrow(values, "scope", text),
            _arrow(values, "key", text),
            _arrow(values, "value", text),
            _arrow(values, "kind", text),
            _arrow(values, "owner", index),
            _arrow(values, "position", index),
            _arrow(values, "row", index),
            resources.to_arrow(),
            _SUMMARY_LEVELS["silent"],
        )
        changes = self._native_changes(found, signal)
        if changes.rewrites is None:
            return pl.DataFrame(schema={name: _REWRITE_SCHEMA[name] for name in _WRITTEN})
        return changes.rewrites

    def redact_one(self, key: str, value: str) -> str | None:
        """`value` as these rules leave a span attribute `key` (None: dropped). Not counted in
        `genops_redaction_total`: used for what the sidecar makes from values, not for telemetry."""
        scope, key_array, value_array = (pa.array([text], pa.large_string()) for text in (SCOPE_ITEM, key, value))
        # Row -1: the value belongs to no resource, so no resource condition keeps a rule off it.
        owner, position, row = (pa.array([n], pa.int64()) for n in (0, 0, -1))
        found = self._native.redact(
            scope, key_array, value_array, None, owner, position, row, pa.array([], pa.int64()), 0
        )
        if found is None:
            return value
        (_, _, _, new_values), _, _ = found
        return _strings(new_values)[0].as_py()

    def _process_native(self, batch: TelemetryBatch, values: dict[str, pa.Array]) -> BatchChanges:
        found = self._native.redact(
            values["scope"],
            values["key"],
            values["value"],
            values.get("kind"),
            values["owner"],
            values["position"],
            values["row"],
            _resource_index(batch),
            _SUMMARY_LEVELS[self.rules.summary],
        )
        return self._native_changes(found, batch.signal)

    def _native_changes(self, found: tuple | None, signal: str) -> BatchChanges:
        """What the native redactor returned (see `Redactor.redact`), as the stage's changes."""
        if found is None:
            return BatchChanges(engine=ENGINE_NATIVE)
        (scopes, owners, positions, new_values), counts, summary = found
        for slot, count in counts:
            self._slot_counter(slot, signal).inc(count)
        rewrites = pl.DataFrame(
            [
                pl.Series("scope", _strings(scopes)),
                pl.Series("owner", _int64s(owners)),
                pl.Series("position", _int64s(positions)),
                pl.Series("new_value", _strings(new_values)),
            ]
        )
        set_attributes = {}
        if summary is not None:
            (items, valid, data), keys, detected = summary
            set_attributes[COUNT_KEY] = pl.Series(COUNT_KEY, _int64s(data, valid))
            if keys is not None:
                items, valid, offsets, labels = keys
                lists = pa.Array.from_buffers(
                    pa.large_list(pa.large_string()),
                    items,
                    [_buffer(valid), pa.py_buffer(offsets)],
                    children=[_strings(labels)],
                )
                set_attributes[KEYS_KEY] = pl.Series(KEYS_KEY, lists)
            valid, data = detected
            set_attributes[DETECTED_KEY] = pl.Series(DETECTED_KEY, _int64s(data, valid))
        return BatchChanges(set_attributes=set_attributes, rewrites=rewrites, engine=ENGINE_NATIVE)

    def _slot_counter(self, slot: int, signal: str) -> Counter:
        counter = self._slot_counters.get((slot, signal))
        if counter is None:
            rule, action = self._slots[slot]
            counter = self._slot_counters[(slot, signal)] = self.redactions.labels(
                detector=rule, action=action, signal=signal
            )
        return counter


_WRITTEN = ("scope", "owner", "position", "new_value")
_SUMMARY_LEVELS = {"silent": 0, "info": 1, "debug": 2}
_ARROW_IN_PLACE = pl.CompatLevel.newest()


# Checks the native redactor has a Rust version of (processor/native/src/stages/detect.rs).
def _native_check(check: Callable[[str], str | None] | None) -> str | None:
    return None if check is None else _NATIVE_CHECKS.get(check)


_NATIVE_CHECKS: dict[Callable[[str], str | None], str] = {
    check_card: "card",
    check_ssn: "ssn",
    check_phone: "phone",
    check_ipv4: "ipv4",
    check_iban: "iban",
    check_bearer: "bearer",
    check_ipv6: "ipv6",
    check_google_key: "google_key",
    check_url_userinfo: "url_userinfo",
}
# Column types the native redactor reads in place.
_TEXT = (pl.String(),)
_INDEX = (pl.Int64(), pl.UInt32(), pl.Int32())
_INDEX_ARROW = (pa.int64(), pa.uint32(), pa.int32())


def _resources_of(values: pl.DataFrame) -> pl.Series:
    """For a frame of values that belong to no item (`redact_values`): one "item" per resource,
    item i under resource i, as many as the largest `row` asks for."""
    last = values.get_column("row").cast(pl.Int64).max()
    return pl.Series("resource", range(int(last) + 1 if isinstance(last, int) else 0), dtype=pl.Int64)


def _native_redactor(rules: RedactionRules, values: ValueRedactor) -> Redactor:
    """The Rust redactor for these rules, the stage's one engine (rules.py has already
    refused, naming the rule, any pattern it cannot run)."""
    every_rule: tuple[KeyRule | ValueRule, ...] = (*rules.key_rules, *rules.value_rules)
    try:
        return native_module().Redactor(
            rules.protected_key_regex,
            rules.values_only_key_regex,
            rules.allowed_key_regex,
            rules.allow_all_keys,
            [(rule.key_regex, rule.action.kind, rule.action.mask, rule.action.length) for rule in rules.key_rules],
            [
                (rule.pattern, rule.check, _native_check(rule.check), rule.action.kind, rule.action.mask)
                for rule in rules.value_rules
            ],
            rules.redact_all_types,
            values.hash,
            [_native_conditions(rule.conditions) for rule in every_rule],
            [(s.kind, s.key_regex, s.mask, s.span_names) for s in rules.sanitizers],
        )
    except ValueError as e:
        raise ValueError(f"redaction rules the redaction engine cannot run: {str(e).splitlines()[0]}") from None


def _native_conditions(conditions: RuleConditions | None) -> tuple | None:
    """A rule's `when`/`skip` as the native redactor takes them."""
    if conditions is None:
        return None
    return (
        conditions.when_keys,
        conditions.skip_keys,
        [(key, list(values)) for key, values in conditions.when_resource],
        [(key, list(values)) for key, values in conditions.skip_resource],
        [(key, list(values)) for key, values in conditions.when_attributes],
        [(key, list(values)) for key, values in conditions.skip_attributes],
    )


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def _strings(parts: tuple[int, bytes | None, bytes, bytes]) -> pa.Array:
    length, valid, offsets, data = parts
    return pa.Array.from_buffers(pa.large_string(), length, [_buffer(valid), pa.py_buffer(offsets), pa.py_buffer(data)])


def _int64s(data: bytes, valid: bytes | None = None) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(data) // 8, [_buffer(valid), pa.py_buffer(data)])


def hash_key_from_env(env_name: str, environ: dict[str, str] | None = None) -> bytes | None:
    value = (os.environ if environ is None else environ).get(env_name, "")
    return value.encode() if value else None


def build_redaction_stage(config: RedactionConfig, registry: CollectorRegistry) -> RedactionStage:
    """The stage for `config`; raises ValueError for invalid rules or a hash rule without a key."""
    rules = load_rules(config.rules_file)
    hash_key = hash_key_from_env(config.hash_key_env)
    if rules.uses_hash and hash_key is None:
        raise ValueError(
            f"a redaction rule uses action hash but ${config.hash_key_env} is empty: "
            "without a secret key the hashes of short values (emails, phone numbers) can be reversed"
        )
    return RedactionStage(rules, hash_key, registry)


def _arrow(frame: pl.DataFrame, name: str, dtypes: tuple[pl.DataType, ...]) -> pa.Array:
    column = frame.get_column(name)
    if column.dtype not in dtypes:  # the decoder's types are the first; anything else is cast
        column = column.cast(dtypes[0])
    # The newest Arrow layout is polars' own (string views): handed over without a copy.
    return column.to_arrow(compat_level=_ARROW_IN_PLACE)


def _resource_index(batch: TelemetryBatch) -> pa.Array:
    """Each item's resource, as the native redactor reads it."""
    array = batch.column_array(RESOURCE_INDEX)
    if array is not None and array.type in _INDEX_ARROW:
        return array
    return _arrow(batch.frame, RESOURCE_INDEX, _INDEX)


def _value_arrays(values: pl.DataFrame) -> dict[str, pa.Array]:
    """A `string_values()` frame's columns as the native redactor reads them."""
    arrays = {name: _arrow(values, name, _TEXT) for name in ("scope", "key", "value")}
    if "kind" in values.columns:
        arrays["kind"] = _arrow(values, "kind", _TEXT)
    arrays.update((name, _arrow(values, name, _INDEX)) for name in ("owner", "position", "row"))
    return arrays


def build_outbound(config: RedactionConfig) -> OutboundRedaction:
    """The redaction of what a process without the stage sends out (the front process of several
    workers answers the budget API): the stage's rules, or length caps only when redaction is off."""
    return build_redaction_stage(config, CollectorRegistry()).outbound if config.enabled else NO_REDACTION
