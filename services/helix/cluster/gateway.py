"""The cluster's front door: one address for all four `helix.v1` services.

`helix cluster up` runs each service in processes of its own, on loopback ports that
change as processes restart; clients (the CLI, stubs in any language, grpcurl) use one
address, as with `helix up`. The gateway forwards each call, as bytes, to a process that
serves its service: the registry and the orchestrator to their process, the generator and
oracle services round-robin over the live agent processes. It decodes nothing: metadata
(the bearer token, trace context) goes through unchanged, and every process checks the
token, scopes and rate limits itself, so the gateway needs no key. Deadlines, cancellation,
flow control (a stream is read from upstream only as fast as the client takes it) and the
status with its details (`grpc-status-details-bin`) are carried both ways.

Health and reflection are the gateway's own: reflection lists the four services; health
reports each service NOT_SERVING while it has no live process (say, being restarted).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from helix.common.interceptors import Encoded
from helix.common.server import ServiceBinding
from helix.common.services import SERVICE_DESCRIPTORS

log = logging.getLogger("helix.cluster.gateway")

Metadata = tuple[tuple[str, str | bytes], ...]
# Not forwarded: HTTP/2 pseudo-headers and what gRPC itself sets per hop.
_CLOSE_GRACE = 30.0  # seconds a retired process's channel keeps its calls
_LAST_GRACE = 5.0  # what is left of it when the gateway closes
_HOP_BY_HOP = ("grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "user-agent", "te")


def _forwarded(metadata: Any) -> Metadata:
    if not metadata:
        return ()
    return tuple(
        (key, value)
        for key, value in metadata
        if not key.startswith(":") and key not in _HOP_BY_HOP and key != "content-type"
    )


@dataclass(frozen=True)
class _Method:
    service: str
    path: str
    request_streaming: bool
    response_streaming: bool


class Routes:
    """Where each service is served now: addresses the supervisor sets as processes
    start, stop and restart, with one channel per address (closed when it goes)."""

    def __init__(self, channel_options: Sequence[tuple[str, Any]] = ()) -> None:
        self._options = list(channel_options)
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._turns: dict[str, itertools.count[int]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.on_change: Callable[[str, bool], None] | None = None

    def set(self, service: str, addresses: Sequence[str]) -> None:
        """Route `service` (full name) to `addresses` from now on (none: UNAVAILABLE)."""
        before = bool(self._addresses.get(service))
        self._addresses[service] = tuple(addresses)
        self._turns.setdefault(service, itertools.count())
        in_use = {a for found in self._addresses.values() for a in found}
        for address in [a for a in self._channels if a not in in_use]:
            # Calls still on it (a process draining) get the grace to finish.
            task = asyncio.ensure_future(self._channels.pop(address).close(grace=_CLOSE_GRACE))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self.on_change is not None and before != bool(addresses):
            self.on_change(service, bool(addresses))

    def addresses(self, service: str) -> tuple[str, ...]:
        return self._addresses.get(service, ())

    def channel(self, service: str) -> grpc.aio.Channel | None:
        """The channel of the next process serving `service` (round-robin), or None."""
        addresses = self._addresses.get(service)
        if not addresses:
            return None
        address = addresses[next(self._turns[service]) % len(addresses)]
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        """Close every channel (the processes are gone or going: calls on retired
        channels get a few seconds more to end with them)."""
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            await channel.close(grace=None)
        if self._closing:
            _, late = await asyncio.wait(list(self._closing), timeout=_LAST_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def _methods() -> dict[str, _Method]:
    found = {}
    for service in SERVICE_DESCRIPTORS:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            found[path] = _Method(
                service.full_name, path, method.client_streaming, method.server_streaming
            )
    return found


def _encoded_bytes(response: Encoded) -> bytes:
    return response.data


async def _relay_failure(context: grpc.aio.ServicerContext[Any, Any], error: Any) -> NoReturn:
    """End the client's call with the upstream call's status, details and trailers."""
    trailing = _forwarded(error.trailing_metadata())
    if trailing:
        context.set_trailing_metadata(trailing)
    await context.abort(error.code(), error.details() or "", trailing)


class Proxy(grpc.GenericRpcHandler):
    """The generic handler that forwards every `helix.v1` method by its path."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self._methods = _methods()

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = self._methods.get(handler_call_details.method)
        if method is None:
            return None
        # Requests stay bytes (no deserializer); responses go out as `Encoded` bytes. The
        # upstream multicallable is of the same kind; a request is bytes or their stream.
        kind = ("stream" if method.request_streaming else "unary") + (
            "_stream" if method.response_streaming else "_unary"
        )
        forward = self._streamed(method, kind) if method.response_streaming else None
        make: Any = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(  # type: ignore[no-any-return]
            forward or self._single(method, kind), response_serializer=_encoded_bytes
        )

    async def _call(
        self, method: _Method, kind: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """The upstream call of the same kind, with the caller's metadata and deadline
        (UNAVAILABLE when no process serves the service)."""
        channel = self.routes.channel(method.service)
        if channel is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"no process serves {method.service} right now (restarting?)",
            )
        multi: Any = getattr(channel, kind)(method.path)
        call = multi(
            request,
            metadata=_forwarded(context.invocation_metadata()),
            timeout=context.time_remaining(),
        )
        return call

    async def _start(self, call: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        initial = _forwarded(await call.initial_metadata())
        if initial:
            await context.send_initial_metadata(initial)

    async def _finish(self, call: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        trailing = _forwarded(await call.trailing_metadata())
        if trailing:
            context.set_trailing_metadata(trailing)

    def _single(self, method: _Method, kind: str) -> Callable[..., Any]:
        """unary_unary and stream_unary: one response."""

        async def forward(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Encoded:
            call = await self._call(method, kind, request, context)
            try:
                await self._start(call, context)
                response: bytes = await call
            except grpc.aio.AioRpcError as error:
                await _relay_failure(context, error)
            finally:
                call.cancel()  # a no-op once done; ends it upstream when the client went
            await self._finish(call, context)
            return Encoded(response)

        return forward

    def _streamed(self, method: _Method, kind: str) -> Callable[..., Any]:
        """unary_stream and stream_stream: a stream of responses."""

        async def forward(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Encoded]:
            call = await self._call(method, kind, request, context)
            try:
                await self._start(call, context)
                async for response in call:
                    yield Encoded(response)  # waits for the client to take it: flow control
            except grpc.aio.AioRpcError as error:
                await _relay_failure(context, error)
            finally:
                call.cancel()
            await self._finish(call, context)

        return forward


def gateway_bindings(routes: Routes) -> list[ServiceBinding]:
    """One binding per `helix.v1` service (so health and reflection list each), the proxy
    added once; each service's health follows whether a process serves it."""
    proxy = Proxy(routes)
    reporters: dict[str, Callable[[bool], None]] = {}

    def report(service: str, serving: bool) -> None:
        if service in reporters:
            reporters[service](serving)

    routes.on_change = report

    def health_source(service: str) -> Callable[[Callable[[bool], None]], None]:
        def attach(reporter: Callable[[bool], None]) -> None:
            reporters[service] = reporter
            reporter(bool(routes.addresses(service)))

        return attach

    bindings = []
    for index, descriptor in enumerate(SERVICE_DESCRIPTORS):

        def add(server: grpc.aio.Server, first: bool = index == 0) -> None:
            if first:
                server.add_generic_rpc_handlers([proxy])

        bindings.append(
            ServiceBinding(
                descriptor.full_name,
                add,
                health_source=health_source(descriptor.full_name),
            )
        )
    return bindings
