"""What every `helix` command that calls a server shares: address, credentials, `helix call`.

Credentials, first found wins: `--token` / `HELIX_TOKEN`; `--token-file` /
`HELIX_TOKEN_FILE` (re-read when it changes); else, for a suite on this machine whose
`--data-dir` / `HELIX_DATA_DIR` is named, a short-lived token minted from its signing key
with just the scope the call needs.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, json_format, message_factory
from google.rpc import error_details_pb2

from helix.agents.support import status_details
from helix.cli.methods import all_methods, describe, method_path, resolve_method
from helix.cli.output import message_json
from helix.common.channel import ChannelConfig, create_channel, tls_channel_credentials
from helix.common.config import ConfigError, key_dir_of, parse_duration_setting
from helix.security.client import (
    FileTokenSource,
    MintingTokenSource,
    StaticTokenSource,
    TokenSource,
    bearer_interceptors,
)
from helix.security.keys import KeyMaterialError, SigningKey, load_hs256_dir
from helix.security.scopes import METHOD_SCOPES, is_open

CLI_TOKEN_TTL = 300.0


DEFAULT_TIMEOUT = "10s"


def add_client_arguments(parser: argparse.ArgumentParser, timeout_help: str | None = None) -> None:
    """The flags of a command that calls a Helix server. `timeout_help` gives `--timeout`
    another meaning, with no default (a watch: how long to watch)."""
    parser.add_argument(
        "--address",
        default=os.environ.get("HELIX_ADDRESS", "127.0.0.1:50051"),
        help="server HOST:PORT [env HELIX_ADDRESS; default 127.0.0.1:50051]",
    )
    parser.add_argument("--token", help="bearer token [env HELIX_TOKEN]")
    parser.add_argument(
        "--token-file", type=Path, help="file holding the token [env HELIX_TOKEN_FILE]"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="data dir of a local embedded suite: mint a short-lived token from its key "
        "[env HELIX_DATA_DIR]",
    )
    if timeout_help is None:
        parser.add_argument(
            "--timeout",
            default=DEFAULT_TIMEOUT,
            help=f"deadline per call [default {DEFAULT_TIMEOUT}]",
        )
    else:
        parser.add_argument("--timeout", metavar="DURATION", help=timeout_help)
    parser.add_argument("--tls-ca", type=Path, help="CA bundle to verify the server (enables TLS)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client key for mutual TLS")


def suite_key_dir(data_dir: Path | None) -> Path:
    """Where a local suite keeps its HS256 keys (`helix.common.config.key_dir_of`)."""
    return key_dir_of(data_dir)


def local_signer(data_dir: Path | None) -> SigningKey:
    """The signing key of the local suite under `data_dir`; ConfigError if there is none."""
    key_dir = suite_key_dir(data_dir)
    try:
        _, signer = load_hs256_dir(key_dir) if key_dir.is_dir() else (None, None)
    except (OSError, KeyMaterialError) as exc:
        raise ConfigError(f"cannot use the signing key in {key_dir}: {exc}") from None
    if signer is None:
        raise ConfigError(
            f"no signing key in {key_dir}: start `helix up` with that data dir once to create it"
        )
    return signer


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") or address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def given_token_source(args: argparse.Namespace) -> TokenSource | None:
    """The token the caller gave (`--token`, `--token-file` or their variables), if any."""
    token = args.token or os.environ.get("HELIX_TOKEN")
    if token:
        return StaticTokenSource(token)
    token_file = args.token_file or os.environ.get("HELIX_TOKEN_FILE")
    if token_file:
        return FileTokenSource(Path(token_file))
    return None


def token_source(args: argparse.Namespace, scopes: Sequence[str]) -> TokenSource:
    """Resolve the caller's credentials (see module doc); raises ConfigError if none.

    A token is minted from a local suite's key only when its data dir is named (flag or
    `HELIX_DATA_DIR`) and the server is on this machine, and only with `scopes`: a minted
    token never travels to another host.
    """
    given = given_token_source(args)
    if given is not None:
        return given
    data_dir = args.data_dir or (
        Path(os.environ["HELIX_DATA_DIR"]) if os.environ.get("HELIX_DATA_DIR") else None
    )
    if data_dir is None or not _is_loopback(args.address):
        raise ConfigError(
            "no credentials: pass --token (or HELIX_TOKEN) or --token-file; or, for a suite on "
            "this machine, its --data-dir (or HELIX_DATA_DIR) to mint a short-lived token"
        )
    signer = local_signer(data_dir)
    return MintingTokenSource(signer, f"cli:{getpass.getuser()}", scopes, ttl=CLI_TOKEN_TTL)


def open_channel(
    args: argparse.Namespace, scopes: Sequence[str], *, needs_token: bool = True
) -> grpc.aio.Channel:
    """A channel to `--address` with the caller's credentials (for `scopes`) and TLS.
    Without `needs_token` (health, reflection) a token is sent only if one was given."""
    timeout = parse_duration_setting("--timeout", args.timeout or DEFAULT_TIMEOUT)
    credentials = None
    if args.tls_key and not args.tls_cert:
        raise ConfigError("--tls-key needs --tls-cert (a client certificate and its key)")
    if args.tls_ca or args.tls_cert:
        credentials = tls_channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    tokens = token_source(args, scopes) if needs_token else given_token_source(args)
    return create_channel(
        args.address,
        ChannelConfig(default_timeout=timeout),  # type: ignore[arg-type]
        credentials=credentials,
        interceptors=bearer_interceptors(tokens) if tokens is not None else (),
    )


def describe_error(error: grpc.aio.AioRpcError) -> str:
    """A failed call for a person: its code and message, then each detail (ErrorInfo,
    BadRequest, RetryInfo, QuotaFailure) as one JSON line."""
    lines = [f"error: {error.code().name}: {error.details()}"]
    for detail in status_details(error):
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                lines.append(f"  {kind.DESCRIPTOR.name}: {message_json(message)}")
    return "\n".join(lines)


def add_call_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `helix call` to the `helix` command line."""
    call = subparsers.add_parser(
        "call",
        help="call any Helix RPC with a JSON request",
        description="Call METHOD with the JSON request -d and print each response as a JSON "
        "line (proto3 JSON: lowerCamelCase names, every field shown; -d takes either "
        "spelling). METHOD is Service/Method (e.g. helix.v1.RegistryService/ListAgents, or "
        "RegistryService/ListAgents) or a method name alone when one service has it. "
        "Client-streaming methods take a JSON array of requests. Health and reflection need "
        "no credentials.",
    )
    call.add_argument("method", nargs="?", help="Service/Method or a method name")
    call.add_argument("-d", "--data", default="{}", help="the request as JSON [default {}]")
    call.add_argument("--list", action="store_true", help="list every Service/Method and exit")
    call.add_argument(
        "--describe",
        action="store_true",
        help="print METHOD's kind, scope, request and response with their documentation",
    )
    add_client_arguments(call)
    call.set_defaults(handler=run_call)


def _requests(method: descriptor.MethodDescriptor, data: str) -> list[Any]:
    request_class = message_factory.GetMessageClass(method.input_type)
    try:
        parsed = json.loads(data)
        items = parsed if method.client_streaming and isinstance(parsed, list) else [parsed]
        return [json_format.ParseDict(item, request_class()) for item in items]
    except (ValueError, json_format.ParseError) as exc:
        raise ConfigError(f"-d is not a valid {method.input_type.full_name}: {exc}") from None


async def call(args: argparse.Namespace, method: descriptor.MethodDescriptor) -> int:
    """`helix call METHOD -d JSON`: one call, responses printed as JSON lines."""
    requests = _requests(method, args.data)
    path = f"/{method_path(method)}"
    serialize = message_factory.GetMessageClass(method.input_type).SerializeToString
    deserialize = message_factory.GetMessageClass(method.output_type).FromString

    def show(response: Any) -> None:
        print(message_json(response), flush=method.server_streaming)

    scope = METHOD_SCOPES.get(path)
    needs_token = not is_open(path)
    async with open_channel(args, [scope] if scope else [], needs_token=needs_token) as channel:
        try:
            kind = (method.client_streaming, method.server_streaming)
            if kind == (False, False):
                show(await channel.unary_unary(path, serialize, deserialize)(requests[0]))
            elif kind == (False, True):
                async for response in channel.unary_stream(path, serialize, deserialize)(
                    requests[0]
                ):
                    show(response)
            elif kind == (True, False):
                show(await channel.stream_unary(path, serialize, deserialize)(iter(requests)))
            else:
                stream = channel.stream_stream(path, serialize, deserialize)(iter(requests))
                async for response in stream:
                    show(response)
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    return 0


def run_call(args: argparse.Namespace) -> int:
    """`helix call`: --list, --describe METHOD, or call METHOD."""
    if args.list:
        for method in all_methods():
            print(method_path(method))
        return 0
    if not args.method:
        raise ConfigError("give a method (Service/Method or a method name), --list or --describe")
    method = resolve_method(args.method)
    if args.describe:
        print(describe(method))
        return 0
    return asyncio.run(call(args, method))
