"""Sidecar configuration: a YAML file, then `GENOPS_<SECTION>_<KEY>` environment overrides.

Every setting has a default so the sidecar runs with no file at all. Unknown keys are errors:
a typo in a ConfigMap should fail `validate-config`, not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from processor.file_limits import read_text_limited
from processor.safe_yaml import YamlError, load_yaml

ENV_PREFIX = "GENOPS_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:4417"
    max_recv_message_size_mib: int = 64
    # Requests beyond this many in flight per worker get UNAVAILABLE, which the Collector's
    # exporter retries from its queue: backpressure instead of unbounded memory.
    max_inflight_requests: int = 32
    workers: int = 1
    shutdown_grace_seconds: float = 20.0


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name_override: str = ""


@dataclass(frozen=True)
class DownstreamConfig:
    endpoint: str = "127.0.0.1:4418"
    compression: str = "none"
    timeout_seconds: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    tls: TlsConfig = field(default_factory=TlsConfig)
    max_send_message_size_mib: int = 64


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "127.0.0.1:9477"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "json"


@dataclass(frozen=True)
class CostConfig:
    enabled: bool = True
    # Empty means the pricing table shipped inside the package.
    pricing_file: str = ""
    override_sdk_costs: bool = False
    reload_interval_seconds: float = 5.0


@dataclass(frozen=True)
class RedactionConfig:
    enabled: bool = True
    # Empty means the embedded default rules.
    rules_file: str = ""
    hash_key_env: str = "GENOPS_REDACTION_HASH_KEY"


@dataclass(frozen=True)
class PolicyConfig:
    # On by default: with no policy file it attributes spend and feeds the genops_* metrics.
    enabled: bool = True
    # Budgets and policies (YAML, hot reloaded); empty means no budgets and no policies.
    policy_file: str = ""
    reload_interval_seconds: float = 5.0
    state_backend: str = "sqlite"
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
    metrics_max_label_values: int = 200


@dataclass(frozen=True)
class SidecarConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def validate(self) -> None:
        for name, address in (("server.listen", self.server.listen), ("http.listen", self.http.listen)):
            _check_host_port(name, address)
        _check_host_port("downstream.endpoint", _strip_scheme(self.downstream.endpoint))
        if self.downstream.compression not in ("none", "gzip"):
            raise ConfigError(f"downstream.compression must be 'none' or 'gzip', not {self.downstream.compression!r}")
        if self.server.workers < 1:
            raise ConfigError("server.workers must be at least 1")
        if self.server.max_inflight_requests < 1:
            raise ConfigError("server.max_inflight_requests must be at least 1")
        if self.downstream.timeout_seconds <= 0:
            raise ConfigError("downstream.timeout_seconds must be positive")
        if self.logging.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"logging.level must be debug, info, warning or error, not {self.logging.level!r}")
        if self.logging.format not in ("json", "console"):
            raise ConfigError(f"logging.format must be json or console, not {self.logging.format!r}")
        tls = self.downstream.tls
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ConfigError("downstream.tls.cert_file and key_file must be set together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if tls.enabled and path and not Path(path).is_file():
                raise ConfigError(f"downstream.tls.{name}: no such file {path}")
        if self.policy.state_backend not in ("sqlite", "redis", "memory"):
            raise ConfigError("policy.state_backend must be sqlite, redis or memory")
        if self.policy.enabled and self.policy.state_backend == "redis" and not self.policy.redis_url:
            raise ConfigError("policy.redis_url is required when policy.state_backend is redis")
        if self.policy.metrics_max_label_values < 1:
            raise ConfigError("policy.metrics_max_label_values must be at least 1")


def _strip_scheme(endpoint: str) -> str:
    for scheme in ("http://", "https://", "dns:///"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint


def _check_host_port(name: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be host:port, not {address!r}")


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> SidecarConfig:
    """Reads the file (if any), applies `GENOPS_*` overrides, validates, and returns the config."""
    raw: dict = {}
    if path:
        try:
            text = read_text_limited(Path(path))
        except ValueError as exc:
            raise ConfigError(f"config file {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            loaded = load_yaml(text)
        except YamlError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        raw = loaded
    config = _build(SidecarConfig, raw, "")
    config = _apply_env(config, os.environ if environ is None else environ)
    config.validate()
    return config


def _build(cls: type, raw: object, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(known))})"
        )
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{where + '.' if where else ''}{name}")
    return cls(**values)


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, where)
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping")
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, not {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, not {value!r}") from None
    if hint is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where} must be a string")
        return "" if value is None else str(value)
    return value


def _apply_env(config: SidecarConfig, environ: Mapping[str, str]) -> SidecarConfig:
    """`GENOPS_DOWNSTREAM_ENDPOINT=...` overrides downstream.endpoint, and so on.

    Nested sections use further underscores (`GENOPS_DOWNSTREAM_TLS_ENABLED`); headers are given as
    `GENOPS_DOWNSTREAM_HEADERS="k1=v1,k2=v2"`, the form the Collector's own env docs use.
    """
    return _override(config, environ, ENV_PREFIX)


def _override(obj, environ: Mapping[str, str], prefix: str):
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for f in dataclasses.fields(obj):
        env_name = f"{prefix}{f.name.upper()}"
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            updated = _override(current, environ, env_name + "_")
            if updated is not current:
                changes[f.name] = updated
        elif env_name in environ:
            value: object = environ[env_name]
            if typing.get_origin(hints[f.name]) is dict:
                value = _parse_pairs(env_name, str(value))
            changes[f.name] = _coerce(hints[f.name], value, env_name)
    return dataclasses.replace(obj, **changes) if changes else obj


def _parse_pairs(name: str, text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{name} must be a comma-separated list of key=value, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs
