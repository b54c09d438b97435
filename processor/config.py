"""Sidecar configuration: a YAML file, then `GENOPS_<SECTION>_<KEY>` environment overrides.

Every setting has a default so the sidecar runs with no file at all. Unknown keys are errors:
a typo in a ConfigMap should fail `validate-config`, not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from processor.files.file_limits import read_text_limited
from processor.files.safe_yaml import YamlError, load_yaml

ENV_PREFIX = "GENOPS_"
CONFIG_ENV = "GENOPS_CONFIG"
# gRPC keeps message sizes in a signed 32-bit int: 2047 MiB is the largest that fits.
MAX_MESSAGE_SIZE_MIB = 2047

# GENOPS_* variables that are not settings: read by the sidecar outside this module, or meant for
# the Collector in the same pod (its config reads GENOPS_OTELCOL_* and these), so a shared env or
# ConfigMap does not trip the unknown-variable check. The key and token variables named by
# redaction.hash_key_env and budget_api.token_env are allowed as well.
NON_SETTING_ENV = frozenset(
    {
        CONFIG_ENV,
        "GENOPS_NATIVE_DECODE",  # processor/core/decode.py: 0 decodes and encodes in pure Python (stages stay native)
        "GENOPS_MALLOC_SETTINGS",  # processor/transport/allocator.py: marks our own GLIBC_TUNABLES
        "GENOPS_SIDECAR_ENDPOINT",
        "GENOPS_BACKEND_ENDPOINT",
        "GENOPS_BACKEND_INSECURE",
        # tests/e2e/test_fuzz_otlp.py: the fuzz run's seed and length (a CI job's environment).
        "GENOPS_FUZZ_SEED",
        "GENOPS_FUZZ_SECONDS",
        # k8s/image/make-bases.sh and build.sh: the local Debian bases and the image tag (a CI job's environment).
        "GENOPS_BASE_SUITE",
        "GENOPS_DEBIAN_MIRROR",
        "GENOPS_SIDECAR_IMAGE",
        # The README gateway example (a client of the budget API, not a sidecar setting).
        "GENOPS_BUDGET_URL",
    }
)
NON_SETTING_ENV_PREFIXES = ("GENOPS_OTELCOL_",)
# A bearer token shorter than this is guessable; `openssl rand -hex 32` gives 64 characters.
MIN_TOKEN_LENGTH = 16


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class Limits:
    """What a setting accepts beyond its type; checked in one place (`_check_limits`)."""

    min: float | None = None
    max: float | None = None
    # Exclusive lower bound: durations that must be positive.
    above: float | None = None
    choices: tuple[str, ...] = ()
    # host:port; "endpoint" also accepts a scheme in front (http://, https://, dns:///).
    address: str = ""


def setting(default: object, **limits: typing.Any):
    """A field with a default and its Limits: the table of accepted values is the dataclasses."""
    return field(default=default, metadata={"limits": Limits(**limits)})


@dataclass(frozen=True)
class ServerConfig:
    listen: str = setting("127.0.0.1:4417", address="listen")
    max_recv_message_size_mib: int = setting(64, min=1, max=MAX_MESSAGE_SIZE_MIB)
    # Requests beyond this many in flight per worker get UNAVAILABLE, which the Collector's
    # exporter retries from its queue: backpressure instead of unbounded memory.
    max_inflight_requests: int = setting(32, min=1, max=100_000)
    workers: int = setting(1, min=1, max=256)
    shutdown_grace_seconds: float = setting(20.0, min=0, max=3600)


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name_override: str = ""


@dataclass(frozen=True)
class DownstreamConfig:
    endpoint: str = setting("127.0.0.1:4418", address="endpoint")
    compression: str = setting("none", choices=("none", "gzip"))
    timeout_seconds: float = setting(10.0, above=0, max=3600)
    headers: dict[str, str] = field(default_factory=dict)
    tls: TlsConfig = field(default_factory=TlsConfig)
    max_send_message_size_mib: int = setting(64, min=1, max=MAX_MESSAGE_SIZE_MIB)


@dataclass(frozen=True)
class HttpConfig:
    listen: str = setting("127.0.0.1:9477", address="listen")
    # The probe/metrics/budget HTTP server: requests are handled by this many threads, and a
    # connection that sends nothing for idle_timeout_seconds is closed, so idle or slow clients
    # cannot pile up threads.
    threads: int = setting(4, min=1, max=64)
    max_connections: int = setting(100, min=1, max=10_000)
    idle_timeout_seconds: int = setting(30, min=1, max=3600)


@dataclass(frozen=True)
class BudgetApiConfig:
    # The environment variable holding the bearer token of GET /v1/budgets and
    # genops.budget.v1.BudgetService; when it is unset or empty the budget API is open.
    token_env: str = "GENOPS_BUDGET_API_TOKEN"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("info", choices=("debug", "info", "warning", "error"))
    format: str = setting("json", choices=("json", "console"))


NEAR_MATCHES = ("estimate", "unpriced")


@dataclass(frozen=True)
class CostConfig:
    enabled: bool = True
    # Empty means the pricing table shipped inside the package.
    pricing_file: str = ""
    override_sdk_costs: bool = False
    reload_interval_seconds: float = setting(5.0, above=0, max=86_400)
    # A model only near a known family (see processor/stages/cost/model_versions.py): "estimate" prices it with
    # the family's prices as genops.cost.status "estimated"; "unpriced" leaves it unpriced.
    near_matches: str = setting("estimate", choices=NEAR_MATCHES)


@dataclass(frozen=True)
class RedactionConfig:
    enabled: bool = True
    # Empty means the embedded default rules.
    rules_file: str = ""
    hash_key_env: str = "GENOPS_REDACTION_HASH_KEY"


@dataclass(frozen=True)
class LedgerConfig:
    # The spend ledger (processor/stages/policy/ledger.py): what was charged per UTC day, provider, model and
    # these attribution dimensions (comma-separated), kept in the budget state store.
    enabled: bool = False
    keys: str = "team,project"
    retention_days: int = setting(400, min=1, max=3660)
    # Distinct (provider, model, keys) rows per day and process; spans beyond go to an overflow row.
    max_rows_per_day: int = setting(5000, min=1, max=1_000_000)


@dataclass(frozen=True)
class PolicyConfig:
    # On by default: with no policy file it attributes spend and feeds the genops_* metrics.
    enabled: bool = True
    # Budgets and policies (YAML, hot reloaded); empty means no budgets and no policies.
    policy_file: str = ""
    reload_interval_seconds: float = setting(5.0, above=0, max=86_400)
    state_backend: str = setting("sqlite", choices=("sqlite", "redis", "memory"))
    # Empty: $XDG_STATE_HOME/genops-sidecar/budget-state.sqlite (~/.local/state/...).
    state_path: str = ""
    redis_url: str = ""
    # Where a dimension comes from when the span and resource lack `genops.<dimension>`:
    # dimension -> attribute keys tried in order (span first, then resource), separated by "|".
    attribution_fallbacks: dict[str, str] = field(
        default_factory=lambda: {
            "team": "k8s.namespace.name",
            "project": "service.name",
            "environment": "deployment.environment.name|deployment.environment",
        }
    )
    # Labels of the genops_* metrics: comma-separated, from the attribution dimensions plus model,
    # provider. Every label keeps at most metrics_max_label_values distinct values; more become "other".
    metrics_labels: str = "team,project,cost_center,feature,environment,model,provider"
    metrics_label_deny: str = "customer_id"
    metrics_max_label_values: int = setting(200, min=1, max=100_000)
    # The built-in check `genops-spec-attribution` (WARNING, x_attribution_missing, on a GenAI span
    # missing team, project or environment). Off: such spans stay ALLOWED, and fail §9.1.1 instead.
    spec_attribution_check: bool = True
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    # Span attributes budgets may key on besides those the policy file names at start-up
    # (comma-separated): the decoder reads only the keys it was given when the sidecar started.
    budget_attributes: str = ""


@dataclass(frozen=True)
class SidecarConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    budget_api: BudgetApiConfig = field(default_factory=BudgetApiConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def validate(self) -> None:
        """Checks that span several settings; each setting's own type and range is checked on load."""
        tls = self.downstream.tls
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ConfigError("downstream.tls.cert_file and key_file must be set together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if tls.enabled and path and not Path(path).is_file():
                raise ConfigError(f"downstream.tls.{name}: no such file {path}")
        if self.policy.enabled and self.policy.state_backend == "redis" and not self.policy.redis_url:
            raise ConfigError("policy.redis_url is required when policy.state_backend is redis")


def config_path(args: object) -> str | None:
    """The config file a command was given: its `--config`, else $GENOPS_CONFIG, else None (defaults)."""
    return getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> SidecarConfig:
    """Reads the file (if any), applies `GENOPS_*` overrides, validates, and returns the config."""
    environ = os.environ if environ is None else environ
    raw: object = {}
    if path:
        try:
            text = read_text_limited(Path(path))
        except ValueError as exc:
            raise ConfigError(f"config file {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        try:
            raw = load_yaml(text)
        except YamlError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    assert isinstance(raw, dict)  # checked above when read from a file
    config = _build(SidecarConfig, raw, "")
    config = _override(config, environ, ENV_PREFIX)
    _check_unknown_env(config, environ)
    _check_secret(environ, config.redaction.hash_key_env, "redaction.hash_key_env", min_length=1)
    _check_secret(environ, config.budget_api.token_env, "budget_api.token_env", min_length=MIN_TOKEN_LENGTH)
    config.validate()
    return config


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _build(cls: type, raw: dict, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting {_join(where, unknown[0])} (known: {', '.join(sorted(fields))})")
    values = {}
    for name, value in raw.items():
        f = fields[name]
        setting_name = _join(where, name)
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            # `redaction:` with nothing under it keeps the defaults; `redaction: false` is a mistake
            # (it would read as "off" but switch nothing off), as are `[]` and `0`.
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{setting_name} must be a mapping of settings, not {_show(value)}"
                    + (f" (to switch it off: {setting_name}: {{enabled: false}})" if "enabled" in _names(hint) else "")
                )
            values[name] = _build(hint, value, setting_name)
        else:
            values[name] = _setting(f, hint, value, setting_name, env="")
    return cls(**values)


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _setting(f: dataclasses.Field, hint, value: object, where: str, env: str):
    coerced = _coerce(hint, value, where, env)
    return _check_limits(f.metadata.get("limits", Limits()), coerced, where, env)


def _fail(where: str, requirement: str, value: object, env: str) -> typing.NoReturn:
    source = f" (from ${env})" if env else ""
    raise ConfigError(f"{where} must be {requirement}, not {_show(value)}{source}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _coerce(hint, value: object, where: str, env: str):
    """Strict: YAML values must already have the setting's type (bool is not an int, 1.9 is not
    an integer, a list is not a string); environment values are text and are parsed."""
    from_env = bool(env)
    if typing.get_origin(hint) is dict:
        if from_env:
            value = _parse_pairs(env, str(value))
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(where, "a mapping of names to strings", value, env)
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str):
                _fail(f"{where}.{key}", "a string (quote numbers and booleans)", item, env)
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and str(value).lower() in ("true", "false", "1", "0", "yes", "no"):
            return str(value).lower() in ("true", "1", "yes")
        _fail(where, "true or false", value, env)
    if hint is int:
        if from_env:
            try:
                return int(str(value).strip())
            except ValueError:
                _fail(where, "an integer", value, env)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, "an integer", value, env)
        return value
    if hint is float:
        if from_env:
            try:
                value = float(str(value).strip())
            except ValueError:
                _fail(where, "a number", value, env)
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(where, "a number", value, env)
        if not math.isfinite(value):
            _fail(where, "a finite number", value, env)
        return float(value)
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            _fail(where, "a string (quote numbers and booleans)", value, env)
        return value
    raise TypeError(f"no coercion for {hint!r} ({where})")


def _check_limits(limits: Limits, value, where: str, env: str):
    low, high, above = limits.min, limits.max, limits.above
    if isinstance(value, int | float) and not isinstance(value, bool):
        kind = "an integer" if isinstance(value, int) else "a number"
        if above is not None and high is not None and not above < value <= high:
            _fail(where, f"{kind} above {above:g} and at most {high:g}", value, env)
        if above is not None and not above < value:
            _fail(where, "positive" if above == 0 else f"{kind} above {above:g}", value, env)
        if low is not None and high is not None and not low <= value <= high:
            _fail(where, f"{kind} from {low:g} to {high:g}", value, env)
        if low is not None and value < low:
            _fail(where, f"at least {low:g}", value, env)
        if high is not None and value > high:
            _fail(where, f"at most {high:g}", value, env)
    if limits.choices:
        folded = value.lower()
        if folded not in limits.choices:
            _fail(where, " or ".join(limits.choices), value, env)
        value = folded
    if limits.address:
        _check_host_port(where, value, env, scheme=limits.address == "endpoint")
    return value


def _check_host_port(where: str, address: str, env: str, *, scheme: bool) -> None:
    text = address
    if scheme:
        for prefix in ("http://", "https://", "dns:///"):
            text = text.removeprefix(prefix)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        _fail(where, "host:port", address, env)


def _override(obj, environ: Mapping[str, str], prefix: str, where: str = ""):
    """`GENOPS_DOWNSTREAM_ENDPOINT=...` overrides downstream.endpoint, and so on.

    Nested sections use further underscores (`GENOPS_DOWNSTREAM_TLS_ENABLED`); headers are given as
    `GENOPS_DOWNSTREAM_HEADERS="k1=v1,k2=v2"`, the form the Collector's own env docs use.
    """
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for f, env_name, name in _fields_with_env(type(obj), prefix, where):
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            updated = _override(current, environ, env_name + "_", name)
            if updated is not current:
                changes[f.name] = updated
        elif env_name in environ:
            changes[f.name] = _setting(f, hints[f.name], environ[env_name], name, env_name)
    return dataclasses.replace(obj, **changes) if changes else obj


def _fields_with_env(cls: type, prefix: str, where: str):
    for f in dataclasses.fields(cls):
        yield f, f"{prefix}{f.name.upper()}", _join(where, f.name)


def setting_env_names(cls: type = SidecarConfig, prefix: str = ENV_PREFIX, where: str = "") -> dict[str, str]:
    """Every settings variable: `GENOPS_SERVER_WORKERS` -> `server.workers`."""
    hints = typing.get_type_hints(cls)
    names = {}
    for f, env_name, name in _fields_with_env(cls, prefix, where):
        if dataclasses.is_dataclass(hints[f.name]):
            names.update(setting_env_names(hints[f.name], env_name + "_", name))
        else:
            names[env_name] = name
    return names


def unknown_environment(config: SidecarConfig, names: Iterable[str]) -> list[str]:
    """The `GENOPS_*` names among `names` that are neither settings nor known non-setting variables."""
    known = set(setting_env_names())
    allowed = NON_SETTING_ENV | {config.redaction.hash_key_env, config.budget_api.token_env}
    return sorted(
        name
        for name in names
        if name.startswith(ENV_PREFIX)
        and name not in known
        and name not in allowed
        and not name.startswith(NON_SETTING_ENV_PREFIXES)
    )


def _check_unknown_env(config: SidecarConfig, environ: Mapping[str, str]) -> None:
    """A mistyped variable would otherwise be ignored and its setting silently keep the default."""
    unknown = unknown_environment(config, environ)
    if unknown:
        candidates = sorted(set(setting_env_names()) | NON_SETTING_ENV)
        close = difflib.get_close_matches(unknown[0], candidates, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown environment variable {unknown[0]}: no such setting{hint}")


def _check_secret(environ: Mapping[str, str], env_name: str, setting_name: str, *, min_length: int) -> None:
    """A key or token that is set must be usable: whitespace only (a Secret filled by mistake with
    a blank) would key every hash or guard the budget API with a value anyone can guess."""
    value = environ.get(env_name, "")
    if not value:
        return
    if not value.strip():
        raise ConfigError(f"${env_name} (named by {setting_name}) is only whitespace; set a real secret or unset it")
    if len(value.strip()) < min_length:
        raise ConfigError(
            f"${env_name} (named by {setting_name}) must be at least {min_length} characters "
            "(e.g. openssl rand -hex 32)"
        )


def _parse_pairs(name: str, text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{name} must be a comma-separated list of key=value, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs
