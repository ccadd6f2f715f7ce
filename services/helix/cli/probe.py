"""`helix probe`: ask a server's standard health service whether it serves.

What a container's HEALTHCHECK (docker, compose) runs: exit status 0 when the server at
--address answers SERVING for --service ("" = the server as a whole, or a service name
such as helix.v1.RegistryService), 1 otherwise (NOT_SERVING, an unknown service, no
answer within --timeout), 2 for bad flags. One line on stdout says what was seen. Health
is exempt from authentication, so the probe needs no token. With --tls-ca it speaks TLS:
--tls-cert/--tls-key present a client certificate (a server that requires mutual TLS),
and --tls-server-name is the name to check the server's certificate against when it does
not name the address dialled (a certificate for oracle.internal probed at 127.0.0.1).
(Kubernetes probes the same service natively: `grpc:` liveness and readiness probes.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helix.common.channel import tls_channel_credentials
from helix.common.config import ConfigError, parse_duration_setting
from helix.common.validation import check_endpoint

SERVING = health_pb2.HealthCheckResponse.SERVING
MAX_TIMEOUT = 60.0


def probe(
    address: str,
    service: str,
    timeout: float,
    credentials: grpc.ChannelCredentials | None,
    server_name: str | None = None,
) -> tuple[bool, str]:
    """Check `service` at `address` once; (serving, what was seen). `server_name`: the
    name the server's certificate must carry, when not the address's host."""
    options = [] if server_name is None else [("grpc.ssl_target_name_override", server_name)]
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            name = code.name if code is not None else "UNKNOWN"
            return False, f"{name}: {exc.details() if isinstance(exc, grpc.Call) else exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == SERVING, status


def _probe(args: argparse.Namespace) -> int:
    problems = check_endpoint(args.address, "--address")
    if problems:
        raise ConfigError(f"--address: {args.address!r}: {problems[0].description}")
    timeout = parse_duration_setting("--timeout", args.timeout)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"--timeout: {args.timeout!r} is not within (0, 60s]")
    credentials = _credentials(args)
    serving, seen = probe(args.address, args.service, timeout, credentials, args.tls_server_name)
    target = args.service or "the server"
    print(f"{args.address} {target}: {seen}", flush=True)
    return 0 if serving else 1


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from the --tls-* flags, or None (plaintext) without --tls-ca."""
    if args.tls_cert is not None and args.tls_key is None:
        raise ConfigError("--tls-cert needs --tls-key as well (the client certificate's key)")
    if args.tls_key is not None and args.tls_cert is None:
        raise ConfigError("--tls-key needs --tls-cert as well (the client certificate)")
    tls_only = [
        flag
        for flag, value in (
            ("--tls-cert", args.tls_cert),
            ("--tls-server-name", args.tls_server_name),
        )
        if value is not None
    ]
    if args.tls_ca is None:
        if tls_only:
            raise ConfigError(f"{tls_only[0]} needs --tls-ca (it applies to TLS only)")
        return None
    name = args.tls_server_name
    if name is not None and (problems := check_endpoint(f"{name}:1", "--tls-server-name")):
        raise ConfigError(f"--tls-server-name: {name!r}: {problems[0].description}")
    for flag, path in (
        ("--tls-ca", args.tls_ca),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
    ):
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ConfigError(f"{flag}: {str(path)!r} is not a readable file")
    return tls_channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)


def add_probe_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `helix probe` to the `helix` command line."""
    parser = subparsers.add_parser(
        "probe",
        help="exit 0 if a server's health service answers SERVING (container health checks)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--address", default="127.0.0.1:50051", help="server HOST:PORT [default 127.0.0.1:50051]"
    )
    parser.add_argument(
        "--service",
        default="",
        help="the service to ask about, e.g. helix.v1.OracleService [default '': the server]",
    )
    parser.add_argument("--timeout", default="3s", help="deadline of the check [default 3s]")
    parser.add_argument(
        "--tls-ca", type=Path, default=None, help="CA bundle to verify the server (enables TLS)"
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="client certificate chain (PEM) for a server that requires mutual TLS; with --tls-key",
    )
    parser.add_argument(
        "--tls-key", type=Path, default=None, help="private key (PEM) of --tls-cert"
    )
    parser.add_argument(
        "--tls-server-name",
        default=None,
        help="name to verify the server's certificate against, when it does not name the "
        "--address host (e.g. oracle.internal probed at 127.0.0.1)",
    )
    parser.set_defaults(handler=_probe)
