"""Client channels that behave well by default.

`create_channel(target)` gives a `grpc.aio.Channel` with:
- a deadline on every call that does not set one (long-lived streams excepted: watches and
  bidi streams live until cancelled, kept honest by keepalive);
- a retry service config for idempotent methods only, read from the contracts' own
  `idempotency_level` method options, with retry throttling;
- keepalive that the server's ping policy accepts, and explicit message-size limits.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2

from helix.common import tracing
from helix.common.config import ByteSize, ConfigError, Duration, setting

_IDEMPOTENT_LEVELS = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


@dataclasses.dataclass(frozen=True)
class ChannelConfig:
    """Client-side call policy. Keepalive must not be more eager than the server allows."""

    default_timeout: Duration = setting(Duration(10.0), "deadline for calls that set none")
    keepalive_time: Duration = setting(Duration(60.0), "ping an idle connection this often")
    keepalive_timeout: Duration = setting(Duration(20.0), "drop a connection after this silence")
    max_receive_message_bytes: ByteSize = setting(ByteSize(16 * 1024**2), "largest response")
    max_send_message_bytes: ByteSize = setting(ByteSize(16 * 1024**2), "largest request")
    retry_max_attempts: int = setting(4, "attempts per idempotent call, first one included")
    retry_initial_backoff: Duration = setting(Duration(0.1), "first retry delay (jittered)")
    retry_max_backoff: Duration = setting(Duration(2.0), "longest retry delay")

    def __post_init__(self) -> None:
        if not self.default_timeout > 0:
            raise ConfigError("default_timeout must be positive")
        if self.keepalive_time < 30:
            raise ConfigError("keepalive_time below 30s would be rejected by Helix servers")
        if not 1 <= self.retry_max_attempts <= 5:
            raise ConfigError("retry_max_attempts must be within 1..5 (gRPC caps it at 5)")
        if not 0.001 <= self.retry_initial_backoff <= self.retry_max_backoff:
            raise ConfigError("retry backoffs need 1ms <= initial <= max")


def idempotent_methods(
    services: Iterable[descriptor.ServiceDescriptor],
) -> list[tuple[str, str]]:
    """(service, method) pairs whose contract declares them idempotent or side-effect free."""
    found = []
    for service in services:
        for method in service.methods:
            if method.GetOptions().idempotency_level in _IDEMPOTENT_LEVELS:
                found.append((service.full_name, method.name))
    return found


def service_config(
    config: ChannelConfig, services: Iterable[descriptor.ServiceDescriptor]
) -> dict[str, Any]:
    """The gRPC service config: retry UNAVAILABLE on idempotent methods, with throttling."""
    names = [{"service": s, "method": m} for s, m in idempotent_methods(services)]
    method_config: list[dict[str, Any]] = []
    if names and config.retry_max_attempts > 1:
        method_config.append(
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": config.retry_max_attempts,
                    "initialBackoff": f"{config.retry_initial_backoff:.9f}s",
                    "maxBackoff": f"{config.retry_max_backoff:.9f}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return {
        "methodConfig": method_config,
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }


def is_long_lived(method: str | bytes) -> bool:
    """Watch streams and bidi streams have no default deadline; they last until cancelled."""
    name = method.decode() if isinstance(method, bytes) else method
    return name.rpartition("/")[2].startswith("Watch") or name.endswith("Stream")


DetailsTransform = Callable[[grpc.aio.ClientCallDetails], Awaitable[grpc.aio.ClientCallDetails]]


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, transform: DetailsTransform) -> None:
        self._transform = transform

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(await self._transform(client_call_details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, transform: DetailsTransform) -> None:
        self._transform = transform

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(await self._transform(client_call_details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, transform: DetailsTransform) -> None:
        self._transform = transform

    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(await self._transform(client_call_details), request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, transform: DetailsTransform) -> None:
        self._transform = transform

    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(await self._transform(client_call_details), request_iterator)


def details_interceptors(transform: DetailsTransform) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors for all four call types that rewrite each call's details.

    grpc.aio files an interceptor under the first call type it implements, so one object
    implementing all four would only ever see unary-unary calls: this returns four.
    """
    return [
        _UnaryUnary(transform),
        _UnaryStream(transform),
        _StreamUnary(transform),
        _StreamStream(transform),
    ]


def deadline_interceptors(timeout: float) -> list[grpc.aio.ClientInterceptor]:
    """Set `timeout` on every call that has none, except long-lived streams."""

    async def with_timeout(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None or is_long_lived(details.method):
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            timeout,
            details.metadata,
            details.credentials,
            details.wait_for_ready,
        )

    return details_interceptors(with_timeout)


def channel_options(
    config: ChannelConfig, services: Iterable[descriptor.ServiceDescriptor]
) -> list[tuple[str, Any]]:
    """Channel arguments: limits, keepalive, retries from the contracts."""
    return [
        ("grpc.max_receive_message_length", int(config.max_receive_message_bytes)),
        ("grpc.max_send_message_length", int(config.max_send_message_bytes)),
        ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(config, services))),
    ]


def helix_services() -> list[descriptor.ServiceDescriptor]:
    """The descriptors of every `helix.v1` service (imported lazily to keep startup light)."""
    from helix.common.services import SERVICE_DESCRIPTORS

    return list(SERVICE_DESCRIPTORS)


def tls_channel_credentials(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials trusting `ca_file` (system roots if None), with a client certificate
    for mutual TLS when `cert_file` and `key_file` are given. Reads the files (blocking)."""
    if (cert_file is None) != (key_file is None):
        raise ConfigError("a client certificate needs both its certificate and its key file")
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=ca_file.read_bytes() if ca_file else None,
            private_key=key_file.read_bytes() if key_file else None,
            certificate_chain=cert_file.read_bytes() if cert_file else None,
        )
    except OSError as exc:
        raise ConfigError(f"cannot read TLS files: {exc}") from None


def create_channel(
    target: str,
    config: ChannelConfig | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    services: Iterable[descriptor.ServiceDescriptor] | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `target` with Helix's deadline, retry and keepalive policy."""
    config = config or ChannelConfig()
    options = channel_options(config, helix_services() if services is None else services)
    chain: list[grpc.aio.ClientInterceptor] = [
        *deadline_interceptors(config.default_timeout),
        *tracing.client_interceptors(),  # none when tracing is off
        *interceptors,
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=chain)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=chain)
