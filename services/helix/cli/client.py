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
from google.protobuf import descriptor, descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2

from helix.agents.support import status_details
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
from helix.security.scopes import METHOD_SCOPES

CLI_TOKEN_TTL = 300.0


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that calls a Helix server."""
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
    parser.add_argument("--timeout", default="10s", help="deadline per call [default 10s]")
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


def token_source(args: argparse.Namespace, scopes: Sequence[str]) -> TokenSource:
    """Resolve the caller's credentials (see module doc); raises ConfigError if none.

    A token is minted from a local suite's key only when its data dir is named (flag or
    `HELIX_DATA_DIR`) and the server is on this machine, and only with `scopes`: a minted
    token never travels to another host.
    """
    token = args.token or os.environ.get("HELIX_TOKEN")
    if token:
        return StaticTokenSource(token)
    token_file = args.token_file or os.environ.get("HELIX_TOKEN_FILE")
    if token_file:
        return FileTokenSource(Path(token_file))
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


def open_channel(args: argparse.Namespace, scopes: Sequence[str]) -> grpc.aio.Channel:
    """A channel to `--address` with the caller's credentials (for `scopes`) and TLS."""
    timeout = parse_duration_setting("--timeout", args.timeout)
    credentials = None
    if args.tls_key and not args.tls_cert:
        raise ConfigError("--tls-key needs --tls-cert (a client certificate and its key)")
    if args.tls_ca or args.tls_cert:
        credentials = tls_channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return create_channel(
        args.address,
        ChannelConfig(default_timeout=timeout),  # type: ignore[arg-type]
        credentials=credentials,
        interceptors=bearer_interceptors(token_source(args, scopes)),
    )


def find_method(name: str) -> descriptor.MethodDescriptor:
    """The method `package.Service/Method` (a leading `/` is fine) of a helix.v1 service."""
    import helix.common.services  # noqa: F401  (registers every helix.v1 file in the pool)

    service_name, _, method_name = name.strip("/").rpartition("/")
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        raise ConfigError(
            f"unknown service {service_name!r} (e.g. helix.v1.RegistryService)"
        ) from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(m.name for m in service.methods)
        raise ConfigError(f"{service_name} has no method {method_name!r} (it has {known})")
    return method


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
                text = json_format.MessageToJson(message, indent=None)
                lines.append(f"  {kind.DESCRIPTOR.name}: {text}")
    return "\n".join(lines)


async def call(args: argparse.Namespace) -> int:
    """`helix call METHOD -d JSON`: one call, responses printed as JSON lines."""
    method = find_method(args.method)
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    try:
        data = json.loads(args.data)
        items = data if method.client_streaming and isinstance(data, list) else [data]
        requests = [json_format.ParseDict(item, request_class()) for item in items]
    except (ValueError, json_format.ParseError) as exc:
        raise ConfigError(
            f"-d is not a valid {request_class.DESCRIPTOR.full_name}: {exc}"
        ) from None
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = request_class.SerializeToString
    deserialize = response_class.FromString

    def show(response: Any) -> None:
        text = json_format.MessageToJson(
            response,
            indent=None,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        print(text)

    scope = METHOD_SCOPES.get(path)
    async with open_channel(args, [scope] if scope else []) as channel:
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
    return asyncio.run(call(args))
