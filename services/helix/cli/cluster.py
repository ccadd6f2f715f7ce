"""`helix cluster up`: the services in processes of their own on one machine, supervised,
behind one address (helix.cluster)."""

from __future__ import annotations

import argparse
import dataclasses
import shutil

from helix.cli.dashboard import check_dashboard_config, dashboard_for
from helix.cluster.config import ClusterConfig
from helix.cluster.supervisor import Supervisor
from helix.common import config as cfg
from helix.common import logs
from helix.common.config import DataDirLock, run_loop
from helix.oracle.config import builtin_config
from helix.oracle.serving import builtin_data_dir, require_valid_config
from helix.security import keys


def add_cluster_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `helix cluster up` to the `helix` command line."""
    cluster = subparsers.add_parser(
        "cluster", help="run every service in processes of its own on this machine"
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="start the registry, orchestrator, generator and oracle processes, supervised",
        description="Start one process per service plus --generators generator and "
        "--oracles oracle agent processes (autoscaled from the orchestrator's backlog "
        "unless a number is given), restart any that crashes, and serve them all on one "
        "address: prints where each process listens, then 'helix listening on HOST:PORT'. "
        "SIGTERM or Ctrl-C stops them in order (a second one kills them). "
        "`helix run --address HOST:PORT --data-dir DATA_DIR` runs a search on it.",
    )
    cfg.add_arguments(up, ClusterConfig)
    up.set_defaults(handler=_up)


def prepare_cluster(config: ClusterConfig) -> ClusterConfig:
    """The cluster's data dir, locked for this process (`DataDirBusy` when another serves
    it; the gateway claims the lock), the HS256 key every process shares (unless
    --auth-hs256-dir names one), and, without --oracle-config, the builtin oracles' config
    with their instance files. Returns the config to run. Blocking file I/O: before the
    event loop runs."""
    require_valid_config(config.oracle_config)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    DataDirLock.take(config.data_dir)
    if config.auth_hs256_dir is None:
        try:
            keys.ensure_hs256_secret(config.key_dir)
        except (OSError, keys.KeyMaterialError) as exc:
            raise cfg.ConfigError(f"signing key in {config.key_dir}: {exc}") from None
    if config.oracle_config is None:  # the builtin oracles, as `helix up` serves them
        folder = config.data_dir / "builtin-oracles"
        shutil.copytree(builtin_data_dir(), folder, dirs_exist_ok=True)
        builtins = folder / "oracles.yaml"
        builtins.write_text(builtin_config(folder))
        config = dataclasses.replace(config, oracle_config=builtins)
    return config


def _up(args: argparse.Namespace) -> int:
    config = cfg.load(ClusterConfig, args)
    logs.configure(config.log_level)
    dashboard = check_dashboard_config(config)
    config = prepare_cluster(config)
    attach = []
    if dashboard:
        attach.append(lambda gateway: dashboard_for(gateway, config, config.data_dir))
    try:
        return run_loop(Supervisor(config, attach=attach).run(), config.event_loop)
    finally:
        logs.shutdown()
