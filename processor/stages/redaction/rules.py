"""Redaction rules: the YAML format, its validation, and the compiled form the stage runs.

Every regex is compiled at load time, by polars (Rust `regex`) and by the redaction engine itself
(all value patterns as its one set too), so a pattern the stage could not run fails here, with
the rule's name, instead of failing each batch at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from processor import _otlp_native
from processor.files.error_text import clip, shown
from processor.files.file_limits import read_text_limited
from processor.files.linear_regex import regex_problem, regex_reason
from processor.files.safe_yaml import YamlError, load_yaml
from processor.stages.redaction.detectors import BUILTIN_DETECTORS, Check
from processor.stages.redaction.sanitizers import SQL, SQL_SANITIZER_NAME, URL_QUERY, URL_SANITIZER_NAME, Sanitizer

ACTIONS = ("mask", "hash", "drop", "truncate")
# The HMACs a hash action can use (the Collector redaction processor's names).
HASH_FUNCTIONS = {"hmac-sha256": "sha256", "hmac-sha512": "sha512"}
SUMMARY_LEVELS = ("debug", "info", "silent")
# The detector label of attributes dropped because their key is not in allowed_keys.
RESERVED_RULE_NAME = "allowed_keys"

# Never redacted, whatever the rules say: token counts are what cost attribution and budgets need
# downstream, and a count carries no user content.
PROTECTED_KEYS = ("gen_ai.usage.*", "llm.token_count.*", "llm.usage.*", "genops.tokens.*")
# Only the value rules act on these: the allow list never drops them and no key rule masks them
# whole (cost attribution reads them downstream), but an SDK may put anything into `genops.team`
# or `genops.project`, so a detector still finds an email or a card number there.
VALUES_ONLY_KEYS = ("genops.*",)

_RULE_FIELDS = {"name", "keys", "key_patterns", "detector", "pattern", "action", "mask", "length", "when", "skip"}
_CONDITION_FIELDS = {"keys", "resource", "attributes"}
# Names of rewrites that are not rules': counted in genops_redaction_total like rules.
_RESERVED_NAMES = (RESERVED_RULE_NAME, URL_SANITIZER_NAME, SQL_SANITIZER_NAME)
# The sanitisers' defaults when enabled without `attributes` (the Collector's option names; the
# OpenTelemetry semantic conventions' keys, current and deprecated).
URL_ATTRIBUTES = ("url.full", "url.query", "http.url")
SQL_ATTRIBUTES = ("db.query.text", "db.statement")
# What a query parameter's value becomes: the semantic conventions' text for a redacted value,
# which keeps the URL a valid one.
URL_MASK = "REDACTED"
_URL_FIELDS = {"enabled", "attributes", "mask", "sanitize_span_name"}
_SQL_FIELDS = {"enabled", "attributes"}
# The Collector's place for it: the database sanitisers' section, not one dialect's.
_DB_FIELDS = {"sql", "sanitize_span_name"}
_TOP_FIELDS = {
    "allow_all_keys",
    "allowed_keys",
    "ignored_keys",
    "ignored_key_patterns",
    "structure_keys",
    "allowed_values",
    "default_mask",
    "hash_function",
    "summary",
    "redact_all_types",
    "hash_prefix",
    "url_sanitizer",
    "db_sanitizer",
    "when",
    "skip",
    "rules",
}


AttributeCondition = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class RuleConditions:
    """Where a rule acts (`when`) and where it does not (`skip`): attribute keys (anchored regexes,
    None: no condition), resource attributes and item attributes (key, accepted values). A rule
    acts on a value when its key matches `when_keys`, every `when_resource` attribute of the value's
    resource and every `when_attributes` attribute of its item (the span, log record or data point
    it belongs to) has one of its values, the key does not match `skip_keys` and no `skip_resource`
    or `skip_attributes` attribute has one of its values. A value whose resource is not known
    (instrumentation scope attributes) meets the rule whatever the resource conditions say, and one
    that belongs to no item (resource and scope attributes) whatever the item conditions say: a
    condition never lets a value out unredacted by doubt."""

    when_keys: str | None = None
    skip_keys: str | None = None
    when_resource: AttributeCondition = ()
    skip_resource: AttributeCondition = ()
    when_attributes: AttributeCondition = ()
    skip_attributes: AttributeCondition = ()

    @property
    def resource_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in (*self.when_resource, *self.skip_resource))

    @property
    def attribute_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in (*self.when_attributes, *self.skip_attributes))


@dataclass(frozen=True)
class Action:
    kind: str  # mask | hash | drop | truncate
    mask: str = ""
    length: int = 0


@dataclass(frozen=True)
class KeyRule:
    """Acts on the whole value of every attribute whose key matches `key_regex` (anchored)."""

    name: str
    key_regex: str
    action: Action
    conditions: RuleConditions | None = None


@dataclass(frozen=True)
class ValueRule:
    """Acts on the substrings of values that `pattern` matches and `check` (if any) accepts."""

    name: str
    pattern: str
    check: Check | None
    action: Action
    conditions: RuleConditions | None = None


@dataclass(frozen=True)
class AllowedValues:
    """A value rule's check that keeps a match `allowed` (an anchored regex) matches whole: the
    Collector's `allowed_values`, which win over what a rule would redact."""

    check: Check | None
    allowed: str

    def __call__(self, candidate: str) -> str | None:
        part = self.check(candidate) if self.check is not None else candidate
        if part and pl.select(pl.lit(part).str.contains(self.allowed)).item():
            return None
        return part


@dataclass(frozen=True)
class RedactionRules:
    allow_all_keys: bool
    # Anchored regexes; None matches nothing.
    allowed_key_regex: str | None
    protected_key_regex: str
    values_only_key_regex: str
    key_rules: tuple[KeyRule, ...]
    value_rules: tuple[ValueRule, ...]
    summary: str
    redact_all_types: bool
    hash_prefix: str
    hash_digest: str = "sha256"  # hashlib name of the HMAC's digest
    # URL query and SQL literal sanitisers, in this order (a key read by both gets the URL one).
    sanitizers: tuple[Sanitizer, ...] = ()

    @property
    def condition_keys(self) -> tuple[str, ...]:
        """The resource attributes some rule's conditions read."""
        rules: tuple[KeyRule | ValueRule, ...] = (*self.key_rules, *self.value_rules)
        keys = (key for rule in rules if rule.conditions is not None for key in rule.conditions.resource_keys)
        return tuple(dict.fromkeys(keys))

    @property
    def attribute_condition_keys(self) -> tuple[str, ...]:
        """The item attributes some rule's conditions read."""
        rules: tuple[KeyRule | ValueRule, ...] = (*self.key_rules, *self.value_rules)
        keys = (key for rule in rules if rule.conditions is not None for key in rule.conditions.attribute_keys)
        return tuple(dict.fromkeys(keys))

    @property
    def uses_hash(self) -> bool:
        rules: tuple[KeyRule | ValueRule, ...] = (*self.key_rules, *self.value_rules)
        return any(r.action.kind == "hash" for r in rules)


def default_rules_text() -> str:
    return resources.files("processor.stages.redaction").joinpath("defaults.yaml").read_text()


def load_rules(rules_file: str = "") -> RedactionRules:
    """Reads `rules_file`, or the embedded defaults when it is empty; raises ValueError if invalid."""
    if rules_file:
        try:
            text = read_text_limited(Path(rules_file))
        except ValueError as exc:
            raise ValueError(f"redaction rules file {exc}") from None
        except OSError as exc:
            raise ValueError(f"cannot read redaction rules file {rules_file}: {exc.strerror}") from exc
        source = rules_file
    else:
        text, source = default_rules_text(), "embedded default redaction rules"
    try:
        raw = load_yaml(text)
    except YamlError as exc:
        raise ValueError(f"{source} is not valid YAML: {exc}") from None
    try:
        return parse_rules(raw or {})
    except ValueError as exc:
        raise ValueError(clip(f"{source}: {exc}")) from None


def parse_rules(raw: object) -> RedactionRules:
    if not isinstance(raw, dict):
        raise ValueError("redaction rules must be a mapping")
    unknown = sorted(set(raw) - _TOP_FIELDS, key=str)
    if unknown:
        raise ValueError(f"unknown redaction setting {shown(unknown[0])} (known: {', '.join(sorted(_TOP_FIELDS))})")
    summary = str(raw.get("summary", "debug"))
    if summary not in SUMMARY_LEVELS:
        raise ValueError(f"summary must be one of {', '.join(SUMMARY_LEVELS)}, not {shown(summary)}")
    allowed = _string_list(raw.get("allowed_keys", []), "allowed_keys")
    ignored = _string_list(raw.get("ignored_keys", []), "ignored_keys")
    # A message's role or finish reason is structure: key rules on the message mask its content.
    structure = _string_list(raw.get("structure_keys", []), "structure_keys")
    ignored_patterns = _string_list(raw.get("ignored_key_patterns", []), "ignored_key_patterns")
    for pattern in ignored_patterns:
        check_regex(pattern, "ignored_key_patterns")
    allowed_values = _string_list(raw.get("allowed_values", []), "allowed_values")
    for pattern in allowed_values:
        check_regex(pattern, "allowed_values")
    allowed_regex = r"\A(?:" + "|".join(f"(?:{p})" for p in allowed_values) + r")\z" if allowed_values else None
    default_mask = raw.get("default_mask")
    if default_mask is not None and not isinstance(default_mask, str):
        raise ValueError("default_mask must be a string")
    hash_function = str(raw.get("hash_function", "hmac-sha256"))
    if hash_function not in HASH_FUNCTIONS:
        raise ValueError(f"hash_function must be one of {', '.join(HASH_FUNCTIONS)}, not {shown(hash_function)}")
    # `when` / `skip` of the whole rule set: each rule's own keys or resource condition wins.
    set_conditions = _parse_conditions(raw, "rule set")
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ValueError("rules must be a list")
    key_rules: list[KeyRule] = []
    value_rules: list[ValueRule] = []
    seen: set[str] = set()
    for index, rule_raw in enumerate(rules_raw):
        rule = _parse_rule(rule_raw, index, default_mask, allowed_regex, set_conditions)
        if rule.name in _RESERVED_NAMES:
            raise ValueError(f"rule {shown(rule.name)}: the name is reserved (allow-list drops and sanitisers)")
        if rule.name in seen:
            raise ValueError(f"rule {shown(rule.name)}: the name is used twice")
        seen.add(rule.name)
        if isinstance(rule, KeyRule):
            key_rules.append(rule)
        else:
            value_rules.append(rule)
    _check_native_patterns(value_rules)
    return RedactionRules(
        allow_all_keys=bool(raw.get("allow_all_keys", True)),
        allowed_key_regex=_keys_regex(allowed, []) if allowed else None,
        protected_key_regex=_keys_regex([*PROTECTED_KEYS, *ignored], ignored_patterns),
        values_only_key_regex=_keys_regex([*VALUES_ONLY_KEYS, *structure], []),
        key_rules=tuple(key_rules),
        value_rules=tuple(value_rules),
        summary=summary,
        redact_all_types=bool(raw.get("redact_all_types", False)),
        hash_prefix=str(raw.get("hash_prefix", f"{hash_function}:")),
        hash_digest=HASH_FUNCTIONS[hash_function],
        sanitizers=_parse_sanitizers(raw),
    )


def _parse_sanitizers(raw: dict) -> tuple[Sanitizer, ...]:
    out: list[Sanitizer] = []
    url = _section(raw.get("url_sanitizer"), "url_sanitizer", _URL_FIELDS)
    url_span_names = _flag(url, "sanitize_span_name", "url_sanitizer")
    if url.get("enabled", False) is True:
        attributes = _string_list(url.get("attributes", list(URL_ATTRIBUTES)), "url_sanitizer: attributes")
        mask = url.get("mask", URL_MASK)
        if not isinstance(mask, str):
            raise ValueError("url_sanitizer: mask must be a string")
        if attributes or url_span_names:
            out.append(Sanitizer(URL_QUERY, _keys_regex(attributes, []), mask, url_span_names))
    db = _section(raw.get("db_sanitizer"), "db_sanitizer", _DB_FIELDS)
    sql = _section(db.get("sql"), "db_sanitizer: sql", _SQL_FIELDS)
    sql_span_names = _flag(db, "sanitize_span_name", "db_sanitizer")
    if sql.get("enabled", False) is True:
        attributes = _string_list(sql.get("attributes", list(SQL_ATTRIBUTES)), "db_sanitizer: sql: attributes")
        if attributes or sql_span_names:
            out.append(Sanitizer(SQL, _keys_regex(attributes, []), span_names=sql_span_names))
    return tuple(out)


def _flag(section: dict, name: str, where: str) -> bool:
    # On unless turned off: a span named by its statement or URL leaks what the attribute would.
    value = section.get(name, True)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {name} must be true or false")
    return value


def _section(value: object, where: str, fields: set[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping")
    unknown = sorted(set(value) - fields, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown field {shown(unknown[0])} (known: {', '.join(sorted(fields))})")
    enabled = value.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ValueError(f"{where}: enabled must be true or false")
    return value


def _parse_conditions(raw: dict, where: str) -> RuleConditions | None:
    if "when" not in raw and "skip" not in raw:
        return None
    parts: dict[str, tuple[str | None, AttributeCondition, AttributeCondition]] = {}
    for field in ("when", "skip"):
        section = raw.get(field)
        if section is None:
            parts[field] = (None, (), ())
            continue
        if not isinstance(section, dict) or not section:
            raise ValueError(f"{where}: {field} must be a mapping with keys, resource and/or attributes")
        unknown = sorted(set(section) - _CONDITION_FIELDS, key=str)
        if unknown:
            raise ValueError(
                f"{where}: {field}: unknown field {shown(unknown[0])} (known: {', '.join(sorted(_CONDITION_FIELDS))})"
            )
        keys = _string_list(section.get("keys"), f"{where}: {field}: keys")
        parts[field] = (
            _keys_regex(keys, []) if keys else None,
            _attribute_condition(section.get("resource"), where, field, "resource"),
            _attribute_condition(section.get("attributes"), where, field, "attributes"),
        )
    return RuleConditions(
        when_keys=parts["when"][0],
        skip_keys=parts["skip"][0],
        when_resource=parts["when"][1],
        skip_resource=parts["skip"][1],
        when_attributes=parts["when"][2],
        skip_attributes=parts["skip"][2],
    )


def _inherit(own: RuleConditions | None, inherited: RuleConditions | None, raw: dict) -> RuleConditions | None:
    """A rule's conditions, each part it does not give taken from the rule set's."""
    if inherited is None:
        return own
    given = {(field, part) for field in ("when", "skip") if isinstance(raw.get(field), dict) for part in raw[field]}
    mine = own or RuleConditions()

    def pick(field: str, part: str, ours: object, theirs: object):
        return ours if (field, part) in given else theirs

    return RuleConditions(
        when_keys=pick("when", "keys", mine.when_keys, inherited.when_keys),
        skip_keys=pick("skip", "keys", mine.skip_keys, inherited.skip_keys),
        when_resource=pick("when", "resource", mine.when_resource, inherited.when_resource),
        skip_resource=pick("skip", "resource", mine.skip_resource, inherited.skip_resource),
        when_attributes=pick("when", "attributes", mine.when_attributes, inherited.when_attributes),
        skip_attributes=pick("skip", "attributes", mine.skip_attributes, inherited.skip_attributes),
    )


def _attribute_condition(value: object, where: str, field: str, part: str) -> AttributeCondition:
    """`resource` or `attributes` of a `when`/`skip`: attribute keys mapped to one value or a list
    (exact string values; a key holds when its value is one of them)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where}: {field}: {part} must map attribute keys to values")
    out = []
    for key, accepted in value.items():
        if isinstance(accepted, str):
            accepted = [accepted]
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: {field}: {part} keys must be strings")
        values = _string_list(accepted, f"{where}: {field}: {part}: {key}")
        if not values:
            raise ValueError(f"{where}: {field}: {part}: {key} needs at least one value")
        out.append((key, tuple(values)))
    return tuple(out)


def _parse_rule(
    raw: object, index: int, default_mask: str | None, allowed: str | None, inherited: RuleConditions | None = None
) -> KeyRule | ValueRule:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ValueError(f"rule #{index + 1} must be a mapping with a name")
    name = str(raw["name"])
    where = f"rule {shown(name)}"
    unknown = sorted(set(raw) - _RULE_FIELDS, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown field {shown(unknown[0])} (known: {', '.join(sorted(_RULE_FIELDS))})")
    keys = _string_list(raw.get("keys", []), f"{where}: keys")
    key_patterns = _string_list(raw.get("key_patterns", []), f"{where}: key_patterns")
    detector, pattern = raw.get("detector"), raw.get("pattern")
    kinds = sum(1 for present in (keys or key_patterns, detector, pattern) if present)
    if kinds != 1:
        raise ValueError(f"{where}: give exactly one of keys/key_patterns, detector or pattern")
    action = _parse_action(raw, name, where, default_mask)
    conditions = _inherit(_parse_conditions(raw, where), inherited, raw)
    if keys or key_patterns:
        for key_pattern in key_patterns:
            check_regex(key_pattern, where)
        return KeyRule(name, _keys_regex(keys, key_patterns), action, conditions)
    if action.kind == "truncate":
        raise ValueError(f"{where}: truncate applies to key rules only (a match inside a value is masked or hashed)")
    if detector is not None:
        found = BUILTIN_DETECTORS.get(str(detector))
        if found is None:
            raise ValueError(f"{where}: unknown detector {shown(detector)} (known: {', '.join(BUILTIN_DETECTORS)})")
        return ValueRule(name, found.pattern, _allowing(found.check, allowed), action, conditions)
    check_regex(str(pattern), where)
    if pl.Series([""], dtype=pl.String).str.contains(str(pattern))[0]:
        # It would insert the mask between every pair of characters.
        raise ValueError(f"{where}: pattern {shown(pattern)} matches the empty string")
    return ValueRule(name, str(pattern), _allowing(None, allowed), action, conditions)


def _allowing(check: Check | None, allowed: str | None) -> Check | None:
    return check if allowed is None else AllowedValues(check, allowed)


def _parse_action(raw: dict, name: str, where: str, default_mask: str | None) -> Action:
    kind = str(raw.get("action", "mask"))
    if kind not in ACTIONS:
        raise ValueError(f"{where}: unknown action {shown(kind)} (known: {', '.join(ACTIONS)})")
    if kind == "truncate":
        length = raw.get("length")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"{where}: truncate needs a non-negative integer length")
        return Action(kind, length=length)
    if "length" in raw:
        raise ValueError(f"{where}: length only applies to truncate")
    mask = raw.get("mask", f"[REDACTED:{name}]" if default_mask is None else default_mask)
    if not isinstance(mask, str):
        raise ValueError(f"{where}: mask must be a string")
    return Action(kind, mask=mask)


def _check_native_patterns(rules: list[ValueRule]) -> None:
    """The redaction engine (processor/native/src/stages/redact.rs) must run every value pattern, alone
    and in the one set it scans values with: a pattern it cannot run is an error of its rule here,
    at load (serve, reload and validate-config), not something another engine takes over."""
    problem = _otlp_native.value_patterns_problem([rule.pattern for rule in rules])
    if problem is not None:
        index, reason = problem
        rule = rules[index]
        raise ValueError(
            f"rule {shown(rule.name)}: pattern {shown(rule.pattern)} cannot be run by the redaction engine: "
            f"{regex_reason(reason)}"
            + (" (with the value patterns of the rules before it)" if "size limit" in reason else "")
        )


def check_regex(pattern: str, where: str) -> None:
    reason = regex_problem(pattern)
    if reason is not None:
        raise ValueError(f"{where}: invalid regex {shown(pattern)}: {reason}")


def glob_to_regex(glob: str) -> str:
    """`gen_ai.prompt.*` → any key starting with `gen_ai.prompt.`; `*` is the only wildcard."""
    return ".*".join(re.escape(part) for part in glob.split("*"))


def _keys_regex(globs: list[str], patterns: list[str]) -> str:
    parts = [glob_to_regex(g) for g in globs] + [f"(?:{p})" for p in patterns]
    # No globs: a class that holds no character, so not even the empty key (a span name's) matches.
    return "^(?:" + "|".join(parts) + ")$" if parts else r"^[^\s\S]$"


def _string_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings")
    return list(value)
