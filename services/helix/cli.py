"""The `helix` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from helix.common import config as cfg
from helix.common import logs
from helix.common.version import version


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
    cfg.add_arguments(up, cfg.EmbeddedConfig)
    up.set_defaults(handler=_up)

    show_version = commands.add_parser("version", help="print the Helix version")
    show_version.set_defaults(handler=_version)
    return parser


def _up(args: argparse.Namespace) -> int:
    from helix.suite import create_embedded

    config = cfg.load(cfg.EmbeddedConfig, args)
    logs.configure(config.log_level)

    async def serve() -> None:
        server, _ = create_embedded(config)

        def ready(started: object) -> None:
            print(f"helix listening on {server.address}", flush=True)
            if server.metrics_port is not None:
                print(
                    f"helix metrics on http://{config.metrics_host}:{server.metrics_port}/metrics"
                )

        await server.serve(on_ready=ready)

    try:
        asyncio.run(serve())
    finally:
        logs.shutdown()
    return 0


def _version(args: argparse.Namespace) -> int:
    print(f"helix {version()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `helix` command; returns the process exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
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
