"""The command lines `helix cluster up` gives its processes: every flag is one the
process's own command takes (the real parser reads them), and the settings a user gives
the cluster reach the processes that use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from helix.cli.main import _build_parser
from helix.cluster.config import ClusterConfig
from helix.cluster.supervisor import Supervisor
from helix.common import config as cfg

ROOT = Path(__file__).resolve().parent.parent


def _parsed(args: list[str]) -> dict[str, object]:
    return vars(_build_parser().parse_args([*args, "--port", "0"]))


async def test_each_process_gets_flags_its_command_takes(tmp_path: Path) -> None:
    settings = {
        "data_dir": str(tmp_path / "d"),
        "port": "0",
        "oracle_config": str(ROOT / "examples" / "oracles" / "builtins.yaml"),
        "generator_dna_dir": str(ROOT / "examples" / "dna"),
        "store": "etcd://127.0.0.1:2379",
        "etcd_prefix": "/c1",
        "rate_read": "50",
        "rate_write": "7",
        "keepalive_time": "30s",
        "max_concurrent_streams": "64",
        "grace_period": "4s",
        "log_level": "WARNING",
        "event_loop": "asyncio",
    }
    supervisor = Supervisor(cfg.load(ClusterConfig, settings, env={}))
    registry = supervisor._child("registry", "registry", supervisor._registry_args())
    registry.port = 40001
    commands = {
        "registry": supervisor._registry_args(),
        "orchestrator": supervisor._orchestrator_args(),
        "generator": supervisor._generator_args("generator-1"),
        "oracle": supervisor._oracle_args("oracle-1"),
    }
    for role, args in commands.items():
        parsed = _parsed(args)  # an unknown flag would exit here
        assert parsed["rate_write"] == "7", role
        assert parsed["keepalive_time"] == "30", role
        assert parsed["max_concurrent_streams"] == "64", role
        assert parsed["grace_period"] == "4", role
        assert parsed["log_level"] == "WARNING", role
        assert parsed["event_loop"] == "asyncio", role
        assert parsed["host"] == "127.0.0.1", role
        if role != "registry":
            assert parsed["registry_address"] == "127.0.0.1:40001", role
        if role in ("registry", "orchestrator"):
            assert parsed["store"] == "etcd://127.0.0.1:2379", role
            assert parsed["etcd_prefix"] == "/c1", role


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        ({"oracles": "auto", "oracles_min": "3", "oracles_max": "2"}, "--oracles-max"),
        ({"restart_backoff": "2s", "restart_backoff_max": "1s"}, "--restart-backoff-max"),
        ({"scale_interval": "10ms"}, "--scale-interval"),
        ({"generators": "300"}, "--generators"),
    ],
)
def test_rules_between_settings_name_the_setting(
    tmp_path: Path, settings: dict[str, str], flag: str
) -> None:
    with pytest.raises(cfg.ConfigError, match=flag):
        cfg.load(ClusterConfig, {"data_dir": str(tmp_path / "d"), **settings}, env={})


def test_sizes_follow_the_machine(tmp_path: Path) -> None:
    config = cfg.load(ClusterConfig, {"data_dir": str(tmp_path / "d")}, env={})
    low, high = config.oracle_bounds
    assert low == 1
    assert high >= 1
    assert config.generator_count >= 1
    fixed = cfg.load(ClusterConfig, {"data_dir": str(tmp_path), "oracles": "3"}, env={})
    assert fixed.oracle_bounds == (3, 3)
