"""The `helix` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from helix.cli.agents import add_agents_commands
from helix.cli.client import add_call_command, local_signer
from helix.cli.cluster import add_cluster_commands
from helix.cli.dashboard import add_dashboard_commands, check_dashboard_config, dashboard_for
from helix.cli.dna import add_dna_commands
from helix.cli.generate import add_generate_command
from helix.cli.loadtest import add_loadtest_command
from helix.cli.oracles import add_oracle_commands
from helix.cli.probe import add_probe_command
from helix.cli.runs import add_run_commands
from helix.common import config as cfg
from helix.common import logs
from helix.common.server import HelixServer, run_server_process
from helix.common.version import version
from helix.generator.agent import add_generator_commands
from helix.oracle.serving import require_valid_config
from helix.orchestrator.serve import add_orchestrator_commands
from helix.registry.serve import add_registry_commands
from helix.security import scopes
from helix.security.tokens import TokenPolicy, inspect_token, mint
from helix.suite import EmbeddedConfig


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helix",
        description="Helix: distributed generate-and-verify search over gRPC.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up",
        help="serve all four services in one process (the embedded default)",
        description="Serve the registry, generator, oracle and orchestrator on one port. "
        "Prints 'helix listening on HOST:PORT' once ready; SIGTERM or Ctrl-C drains and stops.",
    )
    cfg.add_arguments(up, EmbeddedConfig)
    up.set_defaults(handler=_up)

    token = commands.add_parser("token", help="mint or inspect bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    mint_parser = token_commands.add_parser(
        "mint",
        help="print a token signed with a local suite's key",
        description="Print a token signed with the embedded HS256 key of the suite whose data "
        "dir is given, for grpcurl, buf curl and other clients: "
        "-H 'authorization: Bearer TOKEN'.",
    )
    mint_parser.add_argument("--sub", required=True, help="the principal (subject) to name")
    mint_parser.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=scopes.ALL_SCOPES,
        help="a scope to grant; repeat for several",
    )
    mint_parser.add_argument("--ttl", default="1h", help="lifetime, e.g. 15m, 1h [default 1h]")
    mint_parser.add_argument(
        "--data-dir", type=Path, help="the suite's data dir [env HELIX_DATA_DIR]"
    )
    mint_parser.add_argument("--issuer", default="helix", help="iss claim [default helix]")
    mint_parser.add_argument("--audience", default="helix", help="aud claim [default helix]")
    mint_parser.set_defaults(handler=_token_mint)
    inspect_parser = token_commands.add_parser(
        "inspect", help="print a token's header and claims (not verified)"
    )
    inspect_parser.add_argument(
        "token", help="the token, or - to read it from standard input (keeps it out of ps)"
    )
    inspect_parser.set_defaults(handler=_token_inspect)

    add_call_command(commands)
    add_agents_commands(commands)
    add_registry_commands(commands)
    add_dna_commands(commands)
    add_generate_command(commands)
    add_generator_commands(commands)
    add_oracle_commands(commands)
    add_probe_command(commands)
    add_orchestrator_commands(commands)
    add_run_commands(commands)
    add_cluster_commands(commands)
    add_dashboard_commands(commands)
    add_loadtest_command(commands)

    show_version = commands.add_parser("version", help="print the Helix version")
    show_version.set_defaults(handler=_version)
    return parser


MAX_TOKEN_TTL = 30 * 24 * 3600.0


def _token_mint(args: argparse.Namespace) -> int:
    ttl = cfg.parse_duration_setting("--ttl", args.ttl)
    if not 1 <= ttl <= MAX_TOKEN_TTL:
        raise cfg.ConfigError(f"--ttl: {args.ttl!r} is not within 1s..30 days")
    signer = local_signer(args.data_dir)
    policy = TokenPolicy(args.issuer, args.audience)
    print(mint(signer, args.sub, args.scope, ttl, policy))
    return 0


def _token_inspect(args: argparse.Namespace) -> int:
    token = sys.stdin.read().strip() if args.token == "-" else args.token
    try:
        found = inspect_token(token)
    except ValueError as exc:
        raise cfg.ConfigError(str(exc)) from None
    found["verified"] = False
    print(json.dumps(found, indent=2, sort_keys=True))
    return 0


def _up(args: argparse.Namespace) -> int:
    from helix.suite import create_embedded, prepare_embedded

    config = cfg.load(EmbeddedConfig, args)
    logs.configure(config.log_level)
    security = prepare_embedded(config)  # key files: before the event loop runs
    require_valid_config(config.oracle_config)
    dashboard = check_dashboard_config(config)

    def build() -> HelixServer:
        server = create_embedded(config, security)[0]
        if dashboard:
            server.attachments.append(dashboard_for(server, config, config.data_dir))
        return server

    def ready(server: HelixServer) -> None:
        print(f"helix listening on {server.address}", flush=True)
        if server.metrics_port is not None:
            metrics_url = f"http://{config.metrics_host}:{server.metrics_port}/metrics"
            print(f"helix metrics on {metrics_url}", flush=True)

    return run_server_process(config, build, ready)


def _version(args: argparse.Namespace) -> int:
    print(f"helix {version()}")
    return 0


def _reader_went_away() -> int:
    """stdout's reader has gone (`helix ... | head`): end quietly and successfully, as
    Unix tools do. stdout is pointed at /dev/null so the interpreter's own flush at exit
    does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `helix` command; returns the process exit status."""
    args = _build_parser().parse_args(argv)  # argparse itself ignores a closed stdout
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        return _reader_went_away()
    except cfg.ConfigError as exc:
        print(f"helix {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"helix {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
