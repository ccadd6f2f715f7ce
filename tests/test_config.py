"""Configuration from flags, HELIX_* variables and defaults, and clear errors for bad values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from helix.common import config as cfg
from helix.common.config import ConfigError, ServerConfig, key_dir_of
from helix.registry.config import RegistryConfig
from helix.registry.serve import RegistryServerConfig
from helix.suite import EmbeddedConfig


def test_defaults_are_valid():
    config = cfg.load(ServerConfig, env={})
    assert config.port == 50051
    assert config.host == "127.0.0.1"
    assert config.metrics_port is None


def test_environment_fills_fields_with_units():
    env = {
        "HELIX_PORT": "0",
        "HELIX_GRACE_PERIOD": "1500ms",
        "HELIX_KEEPALIVE_TIME": "2m",
        "HELIX_MAX_RECEIVE_MESSAGE_BYTES": "4MiB",
        "HELIX_METRICS_PORT": "9464",
        "HELIX_LOG_LEVEL": "debug",
    }
    config = cfg.load(ServerConfig, env=env)
    assert config.port == 0
    assert config.grace_period == pytest.approx(1.5)
    assert float(config.keepalive_time) == 120
    assert config.max_receive_message_bytes == 4 * 1024 * 1024
    assert config.metrics_port == 9464


def test_flags_override_environment():
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, EmbeddedConfig)
    args = parser.parse_args(["--port", "7000", "--data-dir", "/tmp/helix-x"])
    config = cfg.load(EmbeddedConfig, args, env={"HELIX_PORT": "8000", "HELIX_HOST": "::1"})
    assert config.port == 7000
    assert config.host == "::1"
    assert config.address == "[::1]:7000"
    assert config.data_dir == Path("/tmp/helix-x")


def test_optional_setting_can_be_switched_off():
    assert cfg.load(ServerConfig, env={"HELIX_METRICS_PORT": "off"}).metrics_port is None


def test_config_is_frozen():
    config = cfg.load(ServerConfig, env={})
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HELIX_PORT": "abc"}, "HELIX_PORT: 'abc' is not an integer"),
        ({"HELIX_PORT": "70000"}, "--port / HELIX_PORT: 70000 is not in 0..65535"),
        ({"HELIX_GRACE_PERIOD": "soon"}, "HELIX_GRACE_PERIOD: 'soon' is not a duration"),
        ({"HELIX_GRACE_PERIOD": "2h"}, "--grace-period / HELIX_GRACE_PERIOD: must be within"),
        ({"HELIX_MAX_SEND_MESSAGE_BYTES": "12"}, "HELIX_MAX_SEND_MESSAGE_BYTES: 12 is not"),
        ({"HELIX_MAX_SEND_MESSAGE_BYTES": "4MB"}, "'4MB' is not a size in bytes"),
        ({"HELIX_LOG_LEVEL": "LOUD"}, "'LOUD' is not DEBUG, INFO, WARNING or ERROR"),
        ({"HELIX_HOST": "not a host!"}, "--host / HELIX_HOST: 'not a host!' is not a host"),
        ({"HELIX_MAX_CONCURRENT_RPCS": "0"}, "--max-concurrent-rpcs / HELIX_MAX_CONCURRENT_RPCS"),
        ({"HELIX_KEEPALIVE_TIME": "0s"}, "HELIX_KEEPALIVE_TIME: must be at least 1s"),
    ],
)
def test_bad_values_are_rejected_with_the_setting_named(env, expected):
    with pytest.raises(ConfigError) as caught:
        cfg.load(ServerConfig, env=env)
    assert expected in str(caught.value)


def test_bad_flag_names_the_flag():
    with pytest.raises(ConfigError, match="--port: 'x' is not an integer"):
        cfg.load(ServerConfig, {"port": "x"}, env={})


def test_data_dir_that_is_a_file_is_rejected(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        cfg.load(EmbeddedConfig, env={"HELIX_DATA_DIR": str(target)})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0)],
)
def test_parse_duration(text, seconds):
    assert cfg.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-1s", "1d", "s", "1 0s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="is not a duration"):
        cfg.parse_duration(text)


def test_typed_flag_values_are_type_checked():
    with pytest.raises(ConfigError, match=r"--port: 5\.5 is not a int"):
        cfg.load(ServerConfig, {"port": 5.5}, env={})


@pytest.mark.parametrize("value", ["", "."])
def test_empty_data_dir_is_refused(value):
    with pytest.raises(ConfigError, match="HELIX_DATA_DIR: must name a directory"):
        cfg.load(EmbeddedConfig, env={"HELIX_DATA_DIR": value})


def test_data_dir_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = cfg.load(EmbeddedConfig, env={"HELIX_DATA_DIR": "~/suite"})
    assert config.data_dir == tmp_path / "suite"


def test_a_watch_buffer_must_hold_a_whole_group_commit():
    with pytest.raises(ConfigError, match=r"registry-watch-buffer.*at least registry_max_batch"):
        cfg.load(RegistryConfig, env={"HELIX_REGISTRY_WATCH_BUFFER": "100"})
    config = cfg.load(
        RegistryConfig,
        env={"HELIX_REGISTRY_WATCH_BUFFER": "100", "HELIX_REGISTRY_MAX_BATCH": "100"},
    )
    assert config.registry_watch_buffer == config.registry_max_batch == 100


def test_helix_registry_serve_keeps_its_state_as_helix_up_does(tmp_path):
    served = cfg.load(RegistryServerConfig, env={"HELIX_DATA_DIR": str(tmp_path)})
    embedded = cfg.load(EmbeddedConfig, env={"HELIX_DATA_DIR": str(tmp_path)})
    assert served.registry_path == embedded.registry_path == tmp_path / "registry.sqlite3"
    assert served.key_dir == embedded.key_dir == key_dir_of(tmp_path, env={}) == tmp_path / "keys"
    elsewhere = cfg.load(
        RegistryServerConfig,
        env={"HELIX_DATA_DIR": str(tmp_path), "HELIX_AUTH_HS256_DIR": str(tmp_path / "k")},
    )
    assert elsewhere.key_dir == tmp_path / "k"
    assert key_dir_of(None, env={"HELIX_AUTH_HS256_DIR": str(tmp_path / "k")}) == tmp_path / "k"
