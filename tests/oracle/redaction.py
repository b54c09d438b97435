"""The redaction stage's polars implementation: the differential oracle of the native redactor
(processor/stages/redaction/stage.py's `Redactor`, processor/native/src/stages/redact.rs), moved here from
processor/stages/redaction/stage.py when the native redactor became the stage's one engine (issue 19).

`OracleRedactionStage` is a RedactionStage whose batches go through the polars path instead (the
same rules, hash key and counters); `OracleValueRedactor` scans a Series of strings with the value
rules alone (the corpus tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from prometheus_client import CollectorRegistry

from processor.core.contract import ENGINE_POLARS, BatchChanges
from processor.core.decode import (
    KEYLESS_SCOPES,
    RESOURCE_INDEX,
    SCOPE_EVENT,
    SCOPE_ITEM,
    SCOPE_LINK,
    SCOPE_RESOURCE,
    SCOPE_SCOPE,
    SCOPE_SPAN_NAME,
    TelemetryBatch,
)
from processor.stages.redaction.rules import (
    Action,
    AttributeCondition,
    KeyRule,
    RedactionRules,
    RuleConditions,
    ValueRule,
)
from processor.stages.redaction.sanitizers import DB_QUERY_KEYS, DB_SYSTEM_KEYS, SQL, reads_double_quoted_strings
from processor.stages.redaction.stage import (
    _REWRITE_SCHEMA,
    _WRITTEN,
    COUNT_KEY,
    DETECTED_KEY,
    KEYS_KEY,
    NOT_ALLOWED,
    RedactionStage,
    ValueRedactor,
    _resources_of,
)

_ADDRESS = ("scope", "owner", "position", "row", "label")


@dataclass(frozen=True)
class ScanResult:
    """Values a scan changed: `index` into the scanned series, the new value (null: drop), and the
    names of the rules that changed it."""

    index: pl.Series
    new_value: pl.Series
    rules: pl.Series  # list[str]


class OracleValueRedactor(ValueRedactor):
    """Runs the value rules over a Series of strings with polars."""

    def __init__(
        self, rules: tuple[ValueRule, ...], hash_key: bytes | None, hash_prefix: str, digest: str = "sha256"
    ) -> None:
        super().__init__(rules, hash_key, hash_prefix, digest)
        self._prefilter = "|".join(f"(?:{rule.pattern})" for rule in rules) if rules else None

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


class OracleRedactionStage(RedactionStage):
    """The redaction stage with its batches, metric values and single values run by polars."""

    def __init__(self, rules: RedactionRules, hash_key: bytes | None, registry: CollectorRegistry) -> None:
        super().__init__(rules, hash_key, registry)
        self.values = OracleValueRedactor(rules.value_rules, hash_key, rules.hash_prefix, rules.hash_digest)
        every_rule: tuple[KeyRule | ValueRule, ...] = (*rules.key_rules, *rules.value_rules)
        self._actions = {rule.name: rule.action for rule in every_rule}
        self._actions[NOT_ALLOWED] = Action("drop")
        self._value_rule_names = [rule.name for rule in rules.value_rules]

    def values_consumer(self) -> None:
        return None

    def process(self, batch: TelemetryBatch) -> BatchChanges:
        values = batch.string_values()
        if values.height == 0:
            return BatchChanges()
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
        if values.height == 0:
            return pl.DataFrame(schema={name: _REWRITE_SCHEMA[name] for name in _WRITTEN})
        # Each "item" is a resource: item i lies under resource i.
        rewrites = self._python_rewrites(values, _resources_of(values))
        if rewrites is None:
            return pl.DataFrame(schema={name: _REWRITE_SCHEMA[name] for name in _WRITTEN})
        self._count(rewrites, signal)
        return rewrites.unique(["scope", "owner", "position"]).select(*_WRITTEN)

    def redact_one(self, key: str, value: str) -> str | None:
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
        assert isinstance(self.values, OracleValueRedactor)
        excluded = {
            i: pl.Series([bool(classes[f"_vskip{i}"])])
            for i in range(len(self.rules.value_rules))
            if f"_vskip{i}" in classes
        }
        found = self.values.scan(values["value"], excluded)
        return found.new_value[0] if found.index.len() else value

    def _python_rewrites(self, values: pl.DataFrame, item_resource: pl.Series | None = None) -> pl.DataFrame | None:
        """Every (value, rule) that changes a value of a `string_values()` frame.
        `item_resource`: each item's resource (what rule conditions on resources read)."""
        if "is_string" not in values.columns:
            values = values.with_columns(is_string=pl.lit(True), kind=pl.lit("string_value"))
        values = values.join(self._classify(values["key"]), on="key", how="left", maintain_order="left")
        values = values.with_columns(_item=_value_item())
        items = self._item_values(values)
        skipped = self._resource_skips(values, item_resource)
        for slot, mask in self._item_skips(values, items).items():
            skipped[slot] = skipped[slot] | mask if slot in skipped else mask
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
        value_rows, sanitized = self._sanitize(values.filter(by_value), items)
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

    def _item_keys(self) -> tuple[str, ...]:
        """The item attributes read besides the values redacted: item conditions', then, with a
        sanitiser, the database ones (span names, dialect)."""
        keys = self.rules.attribute_condition_keys
        if self.rules.sanitizers:
            keys = (*keys, *DB_SYSTEM_KEYS, *DB_QUERY_KEYS)
        return tuple(dict.fromkeys(keys))

    def _item_values(self, values: pl.DataFrame) -> dict[int, dict[str, list[str]]]:
        """Per item, the string values of the item keys, by key (in the order met)."""
        keys = self._item_keys()
        found: dict[int, dict[str, list[str]]] = {}
        if not keys:
            return found
        rows = values.filter(
            (pl.col("scope") == SCOPE_ITEM) & (pl.col("kind") == "string_value") & pl.col("key").is_in(list(keys))
        )
        for owner, key, value in rows.select(pl.col("owner").cast(pl.Int64), "key", "value").iter_rows():
            found.setdefault(owner, {}).setdefault(key, []).append(value)
        return found

    def _item_skips(self, values: pl.DataFrame, items: dict[int, dict[str, list[str]]]) -> dict[int, pl.Series]:
        """Per rule slot with item conditions: which values their item's attributes skip (a value
        of no item, a resource or scope attribute, is skipped by none)."""
        out: dict[int, pl.Series] = {}
        every: tuple[KeyRule | ValueRule, ...] = (*self.rules.key_rules, *self.rules.value_rules)
        item = values.get_column("_item")
        for slot, rule in enumerate(every):
            conditions = rule.conditions
            if conditions is None or not conditions.attribute_keys:
                continue
            skipping = [
                i
                for i in item.drop_nulls().unique().to_list()
                if _skips_found(conditions.when_attributes, conditions.skip_attributes, items.get(i, {}))
            ]
            out[slot] = item.is_in(skipping).fill_null(False)
        return out

    def _sanitize(
        self, rows: pl.DataFrame, items: dict[int, dict[str, list[str]]]
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """`rows` with each sanitiser's string values as it leaves them, and the rows it changed
        (with `_sanitizer`, its index): an attribute's by its key, a span name by its span (SQL for a
        database span's, else URLs); SQL in the dialect of the item's database system."""
        if not self.rules.sanitizers or rows.height == 0:
            return rows, rows.clear()
        chosen: list[int | None] = []
        sanitized: list[str | None] = []
        for scope, kind, at, item, value in rows.select("scope", "kind", "_sanitizer", "_item", "value").iter_rows():
            facts = items.get(item, {}) if item is not None else {}
            system = next((facts[k][0] for k in DB_SYSTEM_KEYS if facts.get(k)), None)
            double_quoted = reads_double_quoted_strings(system)
            if kind != "string_value" or value is None:
                at = None
            elif scope == SCOPE_SPAN_NAME:
                database = any(facts.get(k) for k in (*DB_SYSTEM_KEYS, *DB_QUERY_KEYS))
                at = next(
                    (i for i, s in enumerate(self.rules.sanitizers) if s.span_names and (s.kind == SQL) == database),
                    None,
                )
                if at is not None:
                    out = self.rules.sanitizers[at].apply_to_span_name(value, double_quoted)
                    at, value = (at, out) if out != value else (None, value)
            elif at is not None and scope not in KEYLESS_SCOPES:
                out = self.rules.sanitizers[at].apply(value, double_quoted)
                at, value = (at, out) if out != value else (None, value)
            else:
                at = None
            chosen.append(at)
            sanitized.append(value)
        rows = rows.with_columns(
            _changed=pl.Series(chosen, dtype=pl.Int64).is_not_null(),
            _sanitized=pl.Series(sanitized, dtype=pl.String),
            _sanitizer=pl.Series(chosen, dtype=pl.Int64),
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
        assert isinstance(self.values, OracleValueRedactor)
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
    return _skips_found(conditions.when_resource, conditions.skip_resource, found)


def _skips_found(when: AttributeCondition, skip: AttributeCondition, found) -> bool:
    def holds(condition: tuple[str, tuple[str, ...]]) -> bool:
        key, accepted = condition
        return any(value in accepted for value in found.get(key, ()))

    return not all(holds(c) for c in when) or any(holds(c) for c in skip)


def _value_item() -> pl.Expr:
    """The item a value belongs to (redact.rs `value_item`): an attribute's owner, the row of a
    span's name, status, events and links or a record's body, none for resource and scope
    attributes and for a value of no item (row -1)."""
    row = pl.col("row").cast(pl.Int64)
    return (
        pl.when((row < 0) | pl.col("scope").is_in([SCOPE_RESOURCE, SCOPE_SCOPE]))
        .then(None)
        .when(pl.col("scope") == SCOPE_ITEM)
        .then(pl.col("owner").cast(pl.Int64))
        .otherwise(row)
    )


def oracle_of(stage: RedactionStage) -> OracleRedactionStage:
    """An oracle stage with `stage`'s rules and hash key (its own counters)."""
    return OracleRedactionStage(stage.rules, stage.values.hash_key, CollectorRegistry())
