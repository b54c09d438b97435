"""Configuration: file, environment overrides, and clear errors for wrong settings."""

from __future__ import annotations

import pytest

from processor.config import ConfigError, SidecarConfig, load_config


def write(tmp_path, text: str):
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


def test_no_file_gives_the_embedded_defaults():
    config = load_config(None, environ={})
    assert config == SidecarConfig()
    assert config.server.listen == "127.0.0.1:4417"
    assert config.downstream.endpoint == "127.0.0.1:4418"


def test_file_settings_are_read(tmp_path):
    path = write(
        tmp_path,
        """
server: {listen: "0.0.0.0:5000", workers: 2}
downstream:
  endpoint: backend:4317
  compression: gzip
  headers: {x-tenant: acme}
  tls: {enabled: false}
""",
    )
    config = load_config(path, environ={})
    assert config.server.listen == "0.0.0.0:5000"
    assert config.server.workers == 2
    assert config.downstream.compression == "gzip"
    assert config.downstream.headers == {"x-tenant": "acme"}


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, "downstream: {endpoint: 'a:1', timeout_seconds: 3}\n")
    config = load_config(
        path,
        environ={
            "GENOPS_DOWNSTREAM_ENDPOINT": "b:2",
            "GENOPS_SERVER_WORKERS": "4",
            "GENOPS_DOWNSTREAM_TLS_ENABLED": "false",
            "GENOPS_DOWNSTREAM_HEADERS": "authorization=Bearer x, x-team=ml",
        },
    )
    assert config.downstream.endpoint == "b:2"
    assert config.downstream.timeout_seconds == 3
    assert config.server.workers == 4
    assert config.downstream.headers == {"authorization": "Bearer x", "x-team": "ml"}


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("server: {listn: 'x:1'}\n", {}, "unknown setting server.listn"),
        ("server: {listen: 'nohost'}\n", {}, "server.listen must be host:port"),
        ("downstream: {compression: zstd}\n", {}, "downstream.compression"),
        ("server: {workers: many}\n", {}, "server.workers must be an integer"),
        ("[1, 2]\n", {}, "mapping at the top level"),
        ("server: {listen: [\n", {}, "not valid YAML"),
        (
            "",
            {"GENOPS_SERVER_WORKERS": "0"},
            r"server.workers must be an integer from 1 to 256, not 0 \(from \$GENOPS_SERVER_WORKERS\)",
        ),
        (
            "",
            {"GENOPS_DOWNSTREAM_TLS_ENABLED": "perhaps"},
            "downstream.tls.enabled must be true or false.*_TLS_ENABLED",
        ),
    ],
)
def test_wrong_settings_are_rejected_with_a_message_naming_them(tmp_path, text, environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ=environ)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", environ={})
