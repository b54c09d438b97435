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
processor/native/src/redact.rs), which returns only the changed values and the per-item summary.
In a pipeline the decoder's scan hands every value straight to the redactor's own thread, which
runs the rules with the GIL released while the stages before this one (cost) run; the stage takes
the result at its turn (`values_consumer`, `finish`). Called on its own, `process` hands the
values over as Arrow buffers instead. The polars path below stays the fallback and the reference
the native one is tested against (tests/test_redaction_native.py).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter

from processor import policies
from processor.config import RedactionConfig
from processor.decode import (
    KEYLESS_SCOPES,
    LOGS,
    RESOURCE_INDEX,
    SCOPE_EVENT,
    SCOPE_ITEM,
    SCOPE_LINK,
    SCOPE_RESOURCE,
    TRACES,
    TelemetryBatch,
    WantedKeys,
    native_available,
    native_module,
)
from processor.detectors import (
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
from processor.outbound import NO_REDACTION, OutboundRedaction
from processor.pipeline import ENGINE_NATIVE, ENGINE_POLARS, BatchChanges
from processor.redaction_rules import (
    RESERVED_RULE_NAME,
    Action,
    KeyRule,
    RedactionRules,
    RuleConditions,
    ValueRule,
    load_rules,
)

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


@dataclass(frozen=True)
class ScanResult:
    """Values a scan changed: `index` into the scanned series, the new value (null: drop), and the
    names of the rules that changed it."""

    index: pl.Series
    new_value: pl.Series
    rules: pl.Series  # list[str]


class ValueRedactor:
    """Runs the value rules over a Series of strings; usable on its own (tests, CLI)."""

    def __init__(
        self, rules: tuple[ValueRule, ...], hash_key: bytes | None, hash_prefix: str, digest: str = "sha256"
    ) -> None:
        self.rules = rules
        self.hash_key = hash_key
        self.hash_prefix = hash_prefix
        self.digest = digest
        self._prefilter = "|".join(f"(?:{rule.pattern})" for rule in rules) if rules else None

    def hash(self, value: str) -> str:
        if self.hash_key is None:
            raise RuntimeError("a hash rule needs a hash key")
        return self.hash_prefix + hmac.new(self.hash_key, value.encode(), self.digest).hexdigest()

    def scan(self, values: pl.Series, excluded: dict[int, pl.Series] | None = None) -> ScanResult:
        """`excluded`: per value rule (by index), the values its conditions keep it off."""
        empty = ScanResult(
            pl.Series("index", [], dtype=pl.UInt32),
            pl.Series("new_value", [], dtype=pl.String),
            pl.Series("rules", [], dtype=pl.List(pl.String)),
        )
        if self._prefilter is None or values.len() == 0:
            return empty
        values = values.cast(pl.String)
        hit = values.str.contains(self._prefilter).fill_null(False)
        if not hit.any():
            return empty
        index = hit.arg_true()
        current = values.filter(hit)
        off = {i: mask.filter(hit) for i, mask in (excluded or {}).items()}
        # Which rules match any value as received, in one pass: most rules match nothing in a batch,
        # and each polars call has a fixed cost. (What an earlier rule wrote, a mask or a hash, is
        # not something a later rule should redact again.)
        possible = (
            current.to_frame("v")
            .select(
                (
                    pl.col("v").str.contains(rule.pattern) & ~pl.lit(off[i])
                    if i in off
                    else pl.col("v").str.contains(rule.pattern)
                )
                .any()
                .alias(str(i))
                for i, rule in enumerate(self.rules)
            )
            .row(0)
        )
        dropped = _falses(current.len())
        fired: list[pl.Series] = []
        for i, (rule, may_match) in enumerate(zip(self.rules, possible, strict=True)):
            if not may_match:
                continue
            matched = current.str.contains(rule.pattern).fill_null(False) & ~dropped
            if i in off:
                matched = matched & ~off[i]
            if not matched.any():
                continue
            changed, current, now_dropped = self._apply(rule, current, matched)
            dropped = dropped | now_dropped
            fired.append(_names_where(changed, rule.name))
        if not fired:
            return empty
        names = pl.DataFrame({f"r{i}": column for i, column in enumerate(fired)}).select(
            pl.concat_list(pl.all()).list.drop_nulls().alias("rules")
        )["rules"]
        any_change = names.list.len() > 0
        new_value = pl.select(pl.when(pl.lit(dropped)).then(None).otherwise(pl.lit(current)))[:, 0]
        return ScanResult(index.filter(any_change), new_value.filter(any_change), names.filter(any_change))

    def _apply(self, rule: ValueRule, current: pl.Series, matched: pl.Series) -> tuple[pl.Series, pl.Series, pl.Series]:
        """Returns (changed, new values, dropped) for one rule over the prefiltered values."""
        no_drop = _falses(current.len())
        action = rule.action
        if rule.check is None and action.kind == "mask":
            replaced = current.str.replace_all(rule.pattern, action.mask.replace("$", "$$"))
            new = pl.select(pl.when(pl.lit(matched)).then(pl.lit(replaced)).otherwise(pl.lit(current)))[:, 0]
            return matched & (new != current), new, no_drop
        candidates = current.filter(matched).str.extract_all(rule.pattern).explode().drop_nulls().unique().to_list()
        accepted: dict[str, str] = {}
        for candidate in candidates:
            part = rule.check(candidate) if rule.check is not None else candidate
            if part:
                accepted[part] = self.hash(part) if action.kind == "hash" else action.mask
        if not accepted:
            return no_drop, current, no_drop
        patterns = sorted(accepted, key=len, reverse=True)
        contains = matched & current.str.contains_any(patterns).fill_null(False)
        if action.kind == "drop":
            return contains, current, contains
        # Longest first with leftmost matching, so a candidate is never cut by a shorter one.
        replaced = current.str.replace_many(patterns, [accepted[p] for p in patterns], leftmost=True)
        new = pl.select(pl.when(pl.lit(contains)).then(pl.lit(replaced)).otherwise(pl.lit(current)))[:, 0]
        return contains & (new != current), new, no_drop


def _falses(length: int) -> pl.Series:
    return pl.repeat(False, length, eager=True, dtype=pl.Boolean)


def _names_where(changed: pl.Series, name: str) -> pl.Series:
    return pl.select(pl.when(pl.lit(changed)).then(pl.lit(name)).otherwise(None))[:, 0]


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
        self._actions = {rule.name: rule.action for rule in every_rule}
        self._actions[NOT_ALLOWED] = Action("drop")
        self._value_rule_names = [rule.name for rule in rules.value_rules]
        self._native = _native_redactor(rules, self.values)
        # The native redactor counts rewrites per rule slot: key rules, value rules, allow-list drop.
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
        the result at this stage's turn. None without the native redactor (`process` runs)."""
        return self._native if self._native is not None and native_available() else None

    def finish(self, batch: TelemetryBatch, job) -> BatchChanges:
        status, found = job.finish(_SUMMARY_LEVELS[self.rules.summary])
        if status == "python":
            # Values only the Python renderer reads (malformed nesting): the whole stage as usual.
            return self.process(batch)
        return self._native_changes(found, batch.signal)

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        native = self._native is not None and native_available()
        # The scan's own arrays when it has them: no frame of every value built only to be handed over.
        arrays = batch.string_value_arrays() if native else None
        if arrays is None:
            values = batch.string_values()
            if values.height == 0:
                return BatchChanges()
            if native:
                return self._process_native(batch, _value_arrays(values))
        elif len(arrays["value"]) == 0:
            return BatchChanges()
        else:
            return self._process_native(batch, arrays)
        rewrites = self._python_rewrites(values, batch.frame.get_column(RESOURCE_INDEX).cast(pl.Int64))
        if rewrites is None:
            return BatchChanges(engine=ENGINE_POLARS)
        self._count(rewrites, batch.signal)
        return BatchChanges(
            engine=ENGINE_POLARS,
            set_attributes=self._summary(batch, rewrites),
            # Several value rules may have changed one value: each is counted, it is written once.
            rewrites=rewrites.unique(["scope", "owner", "position"]).select("scope", "owner", "position", "new_value"),
        )

    def redact_values(self, values: pl.DataFrame, signal: str) -> pl.DataFrame:
        """The rewrites (scope, owner, position, new_value; null: drop) of a frame shaped like
        `TelemetryBatch.string_values()` that belongs to no span or record (metric data points):
        counted in genops_redaction_total under `signal`, no per-item summary. `row` is the
        ordinal of the value's resource (or -1), which is what resource conditions read."""
        if values.height == 0:
            return pl.DataFrame(schema={name: _REWRITE_SCHEMA[name] for name in _WRITTEN})
        # Each "item" is a resource: item i lies under resource i.
        last = values.get_column("row").cast(pl.Int64).max()
        resources = pl.Series("resource", range(int(last) + 1 if isinstance(last, int) else 0), dtype=pl.Int64)
        if self._native is not None and native_available():
            found = self._native.redact(
                *(_arrow(values, name, _TEXT) for name in ("scope", "key", "value", "kind")),
                *(_arrow(values, name, _INDEX) for name in ("owner", "position", "row")),
                resources.to_arrow(),
                _SUMMARY_LEVELS["silent"],
            )
            changes = self._native_changes(found, signal)
            if changes.rewrites is None:
                return pl.DataFrame(schema={name: _REWRITE_SCHEMA[name] for name in _WRITTEN})
            return changes.rewrites
        rewrites = self._python_rewrites(values, resources)
        if rewrites is None:
            return pl.DataFrame(schema={name: _REWRITE_SCHEMA[name] for name in _WRITTEN})
        self._count(rewrites, signal)
        return rewrites.unique(["scope", "owner", "position"]).select(*_WRITTEN)

    def _python_rewrites(self, values: pl.DataFrame, item_resource: pl.Series | None = None) -> pl.DataFrame | None:
        """Every (value, rule) that changes a value of a `string_values()` frame, by the polars path.
        `item_resource`: each item's resource (what rule conditions on resources read)."""
        if "is_string" not in values.columns:
            values = values.with_columns(is_string=pl.lit(True), kind=pl.lit("string_value"))
        values = values.join(self._classify(values["key"]), on="key", how="left", maintain_order="left")
        skipped = self._resource_skips(values, item_resource)
        key_slots = len(self.rules.key_rules)
        if any(slot < key_slots for slot in skipped):
            # A key rule a resource skips leaves the value to the next key rule that matches.
            values = values.with_columns(
                key_rule=pl.when(pl.col("key_rule").is_null()).then(None).otherwise(self._key_rule_expr(skipped))
            )
        # The allow-list is for attributes of one span or record; resource and scope attributes
        # are shared by many, and text places have no key.
        attribute_scope = pl.col("scope").is_in([SCOPE_ITEM, SCOPE_EVENT, SCOPE_LINK])
        keyless = pl.col("scope").is_in(KEYLESS_SCOPES)
        not_allowed = ~pl.col("protected") & attribute_scope & ~pl.col("allowed")
        by_key = ~pl.col("protected") & ~not_allowed & pl.col("key_rule").is_not_null() & ~keyless
        scan_kinds = (
            pl.lit(True)
            if self.rules.redact_all_types
            else pl.col("kind").is_in(["string_value", "array_value", "kvlist_value"])
        )
        by_value = ~pl.col("protected") & ~not_allowed & ~by_key & scan_kinds
        values = values.with_columns(
            label=pl.when(pl.col("scope") == SCOPE_ITEM)
            .then(pl.col("key"))
            .when(keyless)
            .then(pl.col("scope"))
            .otherwise(pl.col("scope") + pl.lit(":") + pl.col("key")),
        )
        # Per value rule, the values its conditions keep it off (by key, by resource).
        excluded = {
            i: pl.col(f"_vskip{i}").fill_null(False) if f"_vskip{i}" in values.columns else pl.lit(False)
            for i in range(len(self.rules.value_rules))
            if f"_vskip{i}" in values.columns or key_slots + i in skipped
        }
        for i in excluded:
            if key_slots + i in skipped:
                excluded[i] = excluded[i] | pl.lit(skipped[key_slots + i])
        values = values.with_columns(**{f"_excluded{i}": expr for i, expr in excluded.items()})
        value_rows, sanitized = self._sanitize(values.filter(by_value))
        value_part = self._value_rewrites(value_rows, {i: value_rows[f"_excluded{i}"] for i in excluded})
        parts = [
            values.filter(not_allowed).select(
                *_ADDRESS, rule=pl.lit(NOT_ALLOWED), action=pl.lit("drop"), new_value=pl.lit(None, pl.String)
            ),
            *self._key_rewrites(values.filter(by_key)),
            value_part,
            *self._sanitized_rewrites(sanitized, value_part),
        ]
        parts = [part.cast(_REWRITE_SCHEMA) for part in parts if part.height]  # type: ignore[arg-type]
        if not parts:
            return None
        return pl.concat(parts, how="vertical")

    def redact_one(self, key: str, value: str) -> str | None:
        """`value` as these rules leave a span attribute `key` (None: dropped). Not counted in
        `genops_redaction_total`: used for what the sidecar makes from values, not for telemetry."""
        if self._native is not None and native_available():
            strings = [pa.array([text], pa.large_string()) for text in (SCOPE_ITEM, key, value)]
            # Row -1: the value belongs to no resource, so no resource condition keeps a rule off it.
            ints = [pa.array([n], pa.int64()) for n in (0, 0, -1)]
            found = self._native.redact(*strings, None, *ints, pa.array([], pa.int64()), 0)
            if found is None:
                return value
            (_, _, _, new_values), _, _ = found
            return _strings(new_values)[0].as_py()
        values = pl.DataFrame({"key": [key], "value": [value]})
        classes = self._classify(values["key"]).row(0, named=True)
        if classes["protected"]:
            return value
        if not classes["allowed"]:
            return None
        rule = next((r for r in self.rules.key_rules if r.name == classes["key_rule"]), None)
        if rule is not None:
            rows = values.with_columns(
                scope=pl.lit(SCOPE_ITEM),
                owner=0,
                position=0,
                row=0,
                label=pl.lit(key),
                is_string=True,
                key_rule=pl.lit(rule.name),
            )
            rewrites = self._key_rewrites(rows)
            return rewrites[0]["new_value"][0] if rewrites else value
        excluded = {
            i: pl.Series([bool(classes[f"_vskip{i}"])])
            for i in range(len(self.rules.value_rules))
            if f"_vskip{i}" in classes
        }
        found = self.values.scan(values["value"], excluded)
        return found.new_value[0] if found.index.len() else value

    def _process_native(self, batch: TelemetryBatch, values: dict[str, pa.Array]) -> BatchChanges:
        found = self._native.redact(
            *(values[name] for name in ("scope", "key", "value")),
            values.get("kind"),
            *(values[name] for name in ("owner", "position", "row")),
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

    def _classify(self, keys: pl.Series) -> pl.DataFrame:
        """One row per distinct key: protected, allowed, and the first key rule that matches."""
        distinct = keys.unique()
        key = pl.col("key")
        rule_index = self._key_rule_expr({})
        extra: dict[str, pl.Expr] = {}
        for i, rule in enumerate(self.rules.value_rules):
            if rule.conditions is not None and (rule.conditions.when_keys or rule.conditions.skip_keys):
                extra[f"_vskip{i}"] = ~_allows_key(rule.conditions)
        sanitizer = pl.lit(None, pl.Int64)
        for at in reversed(range(len(self.rules.sanitizers))):
            sanitizer = (
                pl.when(key.str.contains(self.rules.sanitizers[at].key_regex)).then(pl.lit(at)).otherwise(sanitizer)
            )
        extra["_sanitizer"] = sanitizer
        allowed = (
            pl.lit(True)
            if self.rules.allow_all_keys
            else key.str.contains(self.rules.allowed_key_regex)
            if self.rules.allowed_key_regex
            else pl.lit(False)
        )
        protected = key.str.contains(self.rules.protected_key_regex)
        # See VALUES_ONLY_KEYS: allowed, no key rule, the value rules still run.
        values_only = ~protected & key.str.contains(self.rules.values_only_key_regex)
        return pl.DataFrame({"key": distinct}).with_columns(
            protected=protected,
            allowed=allowed | values_only,
            key_rule=pl.when(values_only).then(pl.lit(None, pl.String)).otherwise(rule_index),
            **extra,
        )

    def _key_rewrites(self, rows: pl.DataFrame) -> list[pl.DataFrame]:
        out = []
        for rule in self.rules.key_rules:
            matched = rows.filter(pl.col("key_rule") == rule.name)
            if matched.height == 0:
                continue
            action = rule.action
            if action.kind == "mask":
                new_value = pl.lit(action.mask)
                matched = matched.filter((pl.col("value") != action.mask) | ~pl.col("is_string"))
            elif action.kind == "drop":
                new_value = pl.lit(None, pl.String)
            elif action.kind == "truncate":
                matched = matched.filter(pl.col("value").str.len_chars() > action.length)
                new_value = pl.col("value").str.slice(0, action.length)
            else:
                distinct = matched["value"].unique().to_list()
                hashes = {value: self.values.hash(value) for value in distinct}
                new_value = pl.col("value").replace_strict(hashes, return_dtype=pl.String)
            out.append(
                matched.select(*_ADDRESS, rule=pl.lit(rule.name), action=pl.lit(action.kind), new_value=new_value)
            )
        return out

    def _resource_skips(self, values: pl.DataFrame, item_resource: pl.Series | None) -> dict[int, pl.Series]:
        """Per rule slot (key rules, then value rules) with resource conditions: which values of
        `values` (in order) the conditions of their resource skip. A value whose resource is not
        known (instrumentation scope attributes) is skipped by none."""
        keys = self.rules.condition_keys
        if not keys:
            return {}
        row = pl.col("row")
        items = pl.Series("_item_resource", [] if item_resource is None else item_resource, dtype=pl.Int64)
        lookup = pl.DataFrame({"row": pl.int_range(items.len(), eager=True, dtype=pl.Int64), "_item_resource": items})
        resource = (
            values.select(pl.col("row").cast(pl.Int64), "scope", pl.col("owner").cast(pl.Int64))
            .join(lookup, on="row", how="left", maintain_order="left")
            .select(
                pl.when(row >= 0)
                .then(pl.col("_item_resource"))
                .when(pl.col("scope") == SCOPE_RESOURCE)
                .then(pl.col("owner"))
            )
            .to_series()
        )
        found: dict[int, dict[str, set[str]]] = {}
        condition_rows = values.with_columns(_resource=resource).filter(
            (pl.col("scope") == SCOPE_RESOURCE) & pl.col("key").is_in(list(keys))
        )
        for owner, key, value in condition_rows.select("_resource", "key", "value").iter_rows():
            found.setdefault(owner, {}).setdefault(key, set()).add(value)
        distinct = resource.drop_nulls().unique().to_list()
        out: dict[int, pl.Series] = {}
        every: tuple[KeyRule | ValueRule, ...] = (*self.rules.key_rules, *self.rules.value_rules)
        for slot, rule in enumerate(every):
            conditions = rule.conditions
            if conditions is None or not conditions.resource_keys:
                continue
            skipping = [r for r in distinct if _skips_resource(conditions, found.get(r, {}))]
            out[slot] = resource.is_in(skipping).fill_null(False)
        return out

    def _key_rule_expr(self, skipped: dict[int, pl.Series]) -> pl.Expr:
        """The first key rule that matches `key` and its conditions let act (`skipped`: per slot,
        the values a resource keeps it off)."""
        key = pl.col("key")
        rule_name = pl.lit(None, pl.String)
        for slot in reversed(range(len(self.rules.key_rules))):
            rule = self.rules.key_rules[slot]
            applies = key.str.contains(rule.key_regex)
            if rule.conditions is not None:
                applies = applies & _allows_key(rule.conditions)
            if slot in skipped:
                applies = applies & ~pl.lit(skipped[slot])
            rule_name = pl.when(applies).then(pl.lit(rule.name)).otherwise(rule_name)
        return rule_name

    def _sanitize(self, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """`rows` with each sanitiser's string values as it leaves them (once per distinct value),
        and the rows it changed (with `_sanitizer`, its index)."""
        if not self.rules.sanitizers or rows.height == 0:
            return rows, rows.clear()
        targets = (
            pl.col("_sanitizer").is_not_null()
            & (pl.col("kind") == "string_value")
            & ~pl.col("scope").is_in(KEYLESS_SCOPES)
        )
        pairs = rows.filter(targets).select("_sanitizer", "value").unique()
        if pairs.height == 0:
            return rows, rows.clear()
        mapping = pairs.with_columns(
            _sanitized=pl.Series(
                [self.rules.sanitizers[at].apply(value) for at, value in pairs.iter_rows()], dtype=pl.String
            )
        )
        rows = rows.join(mapping, on=["_sanitizer", "value"], how="left", maintain_order="left").with_columns(
            _changed=targets & pl.col("_sanitized").is_not_null() & (pl.col("_sanitized") != pl.col("value"))
        )
        rows = rows.with_columns(
            value=pl.when(pl.col("_changed")).then(pl.col("_sanitized")).otherwise(pl.col("value"))
        )
        return rows.drop("_sanitized"), rows.filter(pl.col("_changed")).drop("_sanitized")

    def _sanitized_rewrites(self, sanitized: pl.DataFrame, value_part: pl.DataFrame) -> list[pl.DataFrame]:
        """One rewrite per value a sanitiser changed, counted under the sanitiser: the value rules'
        result when they changed it too, else what the sanitiser left."""
        if sanitized.height == 0:
            return []
        address = ["scope", "owner", "position"]
        after = value_part.select(*address, _after=pl.col("new_value"), _hit=pl.lit(True)).unique(address)
        names = {i: s.name for i, s in enumerate(self.rules.sanitizers)}
        joined = sanitized.join(after, on=address, how="left", maintain_order="left")
        return [
            joined.select(
                *_ADDRESS,
                rule=pl.col("_sanitizer").replace_strict(names, return_dtype=pl.String),
                action=pl.lit("mask"),
                new_value=pl.when(pl.col("_hit").fill_null(False)).then(pl.col("_after")).otherwise(pl.col("value")),
            )
        ]

    def _value_rewrites(self, rows: pl.DataFrame, excluded: dict[int, pl.Series] | None = None) -> pl.DataFrame:
        if rows.height == 0:
            return pl.DataFrame(schema=_REWRITE_SCHEMA)
        found = self.values.scan(rows["value"], excluded)
        if found.index.len() == 0:
            return pl.DataFrame(schema=_REWRITE_SCHEMA)
        changed = rows[found.index].with_columns(new_value=found.new_value, rules=found.rules)
        # One row per (value, rule) so every rule that fired is counted; the rewrite is the same.
        return changed.explode("rules").select(
            *_ADDRESS,
            rule=pl.col("rules"),
            action=pl.col("rules").replace_strict(
                {name: action.kind for name, action in self._actions.items()}, return_dtype=pl.String
            ),
            new_value=pl.col("new_value"),
        )

    def _count(self, rewrites: pl.DataFrame, signal: str) -> None:
        counts = rewrites.group_by("rule", "action").len()
        for rule, action, count in counts.iter_rows():
            self.redactions.labels(detector=rule, action=action, signal=signal).inc(count)

    def _summary(self, batch: TelemetryBatch, rewrites: pl.DataFrame) -> dict[str, pl.Series]:
        if self.rules.summary == "silent":
            return {}
        # A value a value rule changed is a finding (`genops.redaction.detected`, what the
        # pii_detected policy reads); a key rule masking a prompt by its key finds nothing.
        values = rewrites.group_by(["scope", "owner", "position"], maintain_order=True).agg(
            pl.col("row").first(),
            pl.col("label").first(),
            pl.col("rule").is_in(self._value_rule_names).any().alias("detected"),
        )
        # A resource attribute is shared by every item under that resource: count it on each.
        item_resource = pl.DataFrame(
            {
                "owner": batch.frame.get_column(RESOURCE_INDEX).cast(pl.Int64),
                "item": pl.int_range(len(batch), eager=True),
            }
        )
        shared = values.filter(pl.col("scope") == SCOPE_RESOURCE).join(item_resource, on="owner")
        per_item = pl.concat(
            [
                values.filter(pl.col("scope") != SCOPE_RESOURCE).select(
                    item=pl.col("row"), label="label", detected="detected"
                ),
                shared.select(item=pl.col("item").cast(pl.Int64), label="label", detected="detected"),
            ]
        )
        found = pl.col("detected").sum().cast(pl.Int64)
        summary = per_item.group_by("item").agg(
            count=pl.len().cast(pl.Int64),
            keys=pl.col("label").unique().sort(),
            detected=pl.when(found > 0).then(found),
        )
        full = pl.DataFrame({"item": pl.int_range(len(batch), eager=True).cast(pl.Int64)}).join(
            summary, on="item", how="left", maintain_order="left"
        )
        out = {COUNT_KEY: full["count"].alias(COUNT_KEY)}
        if self.rules.summary == "debug":
            out[KEYS_KEY] = full["keys"].alias(KEYS_KEY)
        out[DETECTED_KEY] = full["detected"].alias(DETECTED_KEY)
        return out


def _allows_key(conditions: RuleConditions) -> pl.Expr:
    key = pl.col("key")
    allows = key.str.contains(conditions.when_keys) if conditions.when_keys else pl.lit(True)
    if conditions.skip_keys:
        allows = allows & ~key.str.contains(conditions.skip_keys)
    return allows


def _skips_resource(conditions: RuleConditions, found: dict[str, set[str]]) -> bool:
    def holds(condition: tuple[str, tuple[str, ...]]) -> bool:
        key, accepted = condition
        return any(value in accepted for value in found.get(key, ()))

    return not all(holds(c) for c in conditions.when_resource) or any(holds(c) for c in conditions.skip_resource)


_ADDRESS = ("scope", "owner", "position", "row", "label")
_WRITTEN = ("scope", "owner", "position", "new_value")
_SUMMARY_LEVELS = {"silent": 0, "info": 1, "debug": 2}
_ARROW_IN_PLACE = pl.CompatLevel.newest()


# Checks the native redactor has a Rust version of (processor/native/src/detect.rs).
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


def _native_redactor(rules: RedactionRules, values: ValueRedactor):
    """The Rust redactor for these rules; None without the extension, or for rules it does not take
    (a pattern its regex build rejects, more than 64 value rules): the polars path then runs them."""
    factory = getattr(native_module(), "Redactor", None)
    if factory is None:
        return None
    every_rule: tuple[KeyRule | ValueRule, ...] = (*rules.key_rules, *rules.value_rules)
    try:
        return factory(
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
            [(sanitizer.kind, sanitizer.key_regex, sanitizer.mask) for sanitizer in rules.sanitizers],
        )
    except ValueError:
        return None


def _native_conditions(conditions: RuleConditions | None) -> tuple | None:
    if conditions is None:
        return None
    return (
        conditions.when_keys,
        conditions.skip_keys,
        [(key, list(values)) for key, values in conditions.when_resource],
        [(key, list(values)) for key, values in conditions.skip_resource],
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
