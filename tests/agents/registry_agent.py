"""An agent process for fault tests: an `AgentRegistration` against `HELIX_ADDRESS`, with
the bearer token in `HELIX_TOKEN`, held until SIGTERM or SIGINT.

Prints one line per event, flushed at once: `registered NAME epoch N` on every
(re-)registration, `lost NAME epoch N` when its lease was found lost, `superseded NAME
epoch N`, and `stopped` after deregistering.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable

import helix.v1.registry_pb2 as registry_pb2
from helix.agents import AgentRegistration
from helix.common.channel import create_channel
from helix.security.client import StaticTokenSource, bearer_interceptors


def report(what: str) -> Callable[[AgentRegistration], None]:
    def callback(registration: AgentRegistration) -> None:
        print(f"{what} {registration.name} epoch {registration.epoch}", flush=True)

    return callback


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_ORACLE, endpoint=args.endpoint, capacity=1
    )
    token = StaticTokenSource(os.environ["HELIX_TOKEN"])
    channel = create_channel(os.environ["HELIX_ADDRESS"], interceptors=bearer_interceptors(token))
    async with (
        channel,
        AgentRegistration(
            channel,
            agent,
            agent_id=args.agent_id,
            ttl=args.ttl,
            on_registered=report("registered"),
            on_lost=report("lost"),
            on_superseded=report("superseded"),
        ),
    ):
        await stop.wait()
    print("stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--ttl", type=float, default=None, help="lease TTL in seconds")
    parser.add_argument("--endpoint", default="127.0.0.1:7100")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
