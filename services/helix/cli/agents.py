"""`helix agents list|get|watch`: read the registry from the command line.

Bad input (an unknown kind or health, a malformed selector or name, a negative revision)
is refused before any call, with exit status 2; errors from the server are printed as
`helix call` prints them, with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

import grpc
from google.protobuf.descriptor import EnumDescriptor

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.cli.client import add_client_arguments, describe_error, open_channel
from helix.cli.output import message_json
from helix.common.config import parse_duration_setting
from helix.common.validation import check_resource_name
from helix.registry.labels import MAX_LABEL_SELECTOR_LEN, parse_label_selector
from helix.security.scopes import AGENTS_READ

PAGE_SIZE = 500
TABLE_COLUMNS = ("NAME", "KIND", "ENDPOINT", "HEALTH", "CAPACITY", "EPOCH", "OWNER")


def _enum_argument(descriptor: EnumDescriptor, prefix: str, what: str) -> Callable[[str], int]:
    """An argparse type taking an enum value by its short name, any case (`not-serving`,
    `NOT_SERVING` and `AGENT_HEALTH_NOT_SERVING` alike); UNSPECIFIED is not offered."""
    values = {
        value.name.removeprefix(prefix).lower(): value.number
        for value in descriptor.values
        if value.number != 0
    }

    def parse(text: str) -> int:
        key = text.strip().lower().replace("-", "_").removeprefix(prefix.lower())
        if key not in values:
            known = ", ".join(values)
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r} (one of: {known})")
        return values[key]

    return parse


def _short_name(descriptor: EnumDescriptor, prefix: str, number: int) -> str:
    value = descriptor.values_by_number.get(number)
    return value.name.removeprefix(prefix).lower() if value is not None else str(number)


parse_kind = _enum_argument(registry_pb2.AgentKind.DESCRIPTOR, "AGENT_KIND_", "kind")
parse_health = _enum_argument(registry_pb2.AgentHealth.DESCRIPTOR, "AGENT_HEALTH_", "health")


def parse_selector(text: str) -> str:
    if len(text) > MAX_LABEL_SELECTOR_LEN:
        raise argparse.ArgumentTypeError(
            f"a label selector has at most {MAX_LABEL_SELECTOR_LEN} characters"
        )
    _, problems = parse_label_selector(text)
    if problems:
        raise argparse.ArgumentTypeError(f"bad label selector {text!r}: {problems[0]}")
    return text


def parse_agent_name(text: str) -> str:
    """`agents/{id}` or just `{id}`."""
    name = text if text.startswith("agents/") else f"agents/{text}"
    if check_resource_name(name, "agents", "name"):
        raise argparse.ArgumentTypeError(
            f"bad agent name {text!r}: expected agents/ID or ID, ID matching [a-z][a-z0-9-]{{0,62}}"
        )
    return name


def parse_revision(text: str) -> int:
    try:
        revision = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision (an integer)") from None
    if revision < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a revision is not negative")
    return revision


def add_agents_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `helix agents list|get|watch` to the `helix` command line."""
    agents = subparsers.add_parser("agents", help="list, get and watch registered agents")
    actions = agents.add_subparsers(dest="agents_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="list agents as a table (or JSON lines)",
        description="List the registered agents, in name order, as a table or JSON lines.",
    )
    _add_filters(listing)
    listing.add_argument(
        "--health",
        type=parse_health,
        default=0,
        help="only this health: serving, degraded or not-serving",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per agent")
    add_client_arguments(listing)
    listing.set_defaults(handler=lambda args: asyncio.run(list_agents(args)))

    get = actions.add_parser("get", help="print one agent as JSON")
    get.add_argument("name", type=parse_agent_name, help="agents/ID or ID")
    add_client_arguments(get)
    get.set_defaults(handler=lambda args: asyncio.run(get_agent(args)))

    watch = actions.add_parser(
        "watch",
        help="print agent changes as JSON lines until interrupted",
        description="Print each change (PUT or DELETE, with its revision and, for deletes, "
        "the reason) as a JSON line, until Ctrl-C or --timeout. Pair with `list`: watch "
        "--from (its revision + 1) continues a listing with no gap.",
    )
    _add_filters(watch)
    watch.add_argument(
        "--from",
        dest="start_revision",
        type=parse_revision,
        default=0,
        metavar="REV",
        help="first revision to show (history permitting) [default: changes from now on]",
    )
    add_client_arguments(
        watch,
        timeout_help="stop watching after this long (e.g. 30s, 5m), exit status 0 "
        "[default: until Ctrl-C]",
    )
    watch.set_defaults(handler=lambda args: asyncio.run(watch_agents(args)))


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        type=parse_kind,
        default=0,
        help="only this kind: generator, oracle or orchestrator",
    )
    parser.add_argument(
        "--selector",
        type=parse_selector,
        default="",
        metavar="S",
        help="label selector, e.g. 'zone=a,tier!=batch,gpu'",
    )


def _stub(channel: grpc.aio.Channel) -> registry_pb2_grpc.RegistryServiceAsyncStub:
    stub: registry_pb2_grpc.RegistryServiceAsyncStub = registry_pb2_grpc.RegistryServiceStub(
        channel
    )
    return stub


def format_table(agents: Sequence[registry_pb2.Agent]) -> str:
    """The agents as an aligned text table with a header row."""
    rows = [TABLE_COLUMNS] + [
        (
            agent.name,
            _short_name(registry_pb2.AgentKind.DESCRIPTOR, "AGENT_KIND_", agent.kind),
            agent.endpoint,
            _short_name(registry_pb2.AgentHealth.DESCRIPTOR, "AGENT_HEALTH_", agent.health),
            str(agent.capacity),
            str(agent.epoch),
            agent.owner,
        )
        for agent in agents
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def list_agents(args: argparse.Namespace) -> int:
    request = registry_pb2.ListAgentsRequest(
        page_size=PAGE_SIZE, kind=args.kind, label_selector=args.selector, health=args.health
    )
    agents: list[registry_pb2.Agent] = []
    async with open_channel(args, [AGENTS_READ]) as channel:
        stub = _stub(channel)
        try:
            while True:
                page = await stub.ListAgents(request)
                agents.extend(page.agents)
                if args.json:
                    for agent in page.agents:
                        print(message_json(agent))
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    if not args.json:
        if agents:
            print(format_table(agents))
        else:
            print("no agents", file=sys.stderr)
    return 0


async def get_agent(args: argparse.Namespace) -> int:
    async with open_channel(args, [AGENTS_READ]) as channel:
        try:
            response = await _stub(channel).GetAgent(registry_pb2.GetAgentRequest(name=args.name))
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    print(message_json(response.agent, indent=2))
    return 0


async def watch_agents(args: argparse.Namespace) -> int:
    """`helix agents watch`: every change as a JSON line, until Ctrl-C or `--timeout`."""
    request = registry_pb2.WatchAgentsRequest(
        start_revision=args.start_revision, kind=args.kind, label_selector=args.selector
    )
    limit = parse_duration_setting("--timeout", args.timeout) if args.timeout else None
    async with open_channel(args, [AGENTS_READ]) as channel:
        try:
            async for response in _stub(channel).WatchAgents(request, timeout=limit):
                for event in response.events:
                    print(message_json(event), flush=True)
        except grpc.aio.AioRpcError as error:
            if limit is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                print(
                    f"helix agents watch: stopped after --timeout {args.timeout}", file=sys.stderr
                )
                return 0
            print(describe_error(error), file=sys.stderr)
            return 1
    return 0
