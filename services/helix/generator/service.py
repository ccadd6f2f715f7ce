"""GeneratorService: validate, call the core, reply. Thin by design.

The cores: library.py serves the DNA documents of a directory, dnas.py answers about
them, breeding.py ranks parents and breeds (pure and synchronous; parent_records.py reads
a request's parents from its bytes, for the checks and the ranking), streaming.py runs the
breeding one chunk ahead in the service's threads and caps concurrent streams; metrics.py
exports the counters. Blocking work never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from grpc.aio import ServicerContext

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
from helix.agents.presence import AgentPresence
from helix.common.aio import cancel_and_wait
from helix.common.interceptors import add_encoding_servicer
from helix.common.server import ServiceBinding
from helix.common.services import validate
from helix.generator import breeding, dnas
from helix.generator import validation as checks
from helix.generator.breeding import MAX_RESPONSE_BYTES, STRATEGIES
from helix.generator.library import DnaLibrary
from helix.generator.metrics import register_metrics
from helix.generator.parent_records import ParentRecords, read_parents
from helix.generator.stats import GeneratorStats
from helix.generator.streaming import StreamSlots, bred_ahead

log = logging.getLogger("helix.generator")


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """GeneratorService over a DNA library, breeding in `executor`, serving at most
    `max_streams` Generate streams at once."""

    def __init__(
        self,
        library: DnaLibrary,
        executor: concurrent.futures.Executor,
        *,
        limits: checks.GeneratorLimits = checks.DEFAULT_LIMITS,
        max_message_bytes: int = MAX_RESPONSE_BYTES,
        max_streams: int = 8,
    ) -> None:
        self.library = library
        self._executor = executor
        self._inline = dnas.InlineDnas()
        self._limits = limits
        # generator.proto promises responses under 4 MiB, the default limit of every
        # gRPC client, whatever this server may send.
        self._max_bytes = min(max_message_bytes, MAX_RESPONSE_BYTES)
        self._slots = StreamSlots(max_streams)
        self.stats = GeneratorStats()

    async def ListDnas(
        self,
        request: generator_pb2.ListDnasRequest,
        context: ServicerContext[generator_pb2.ListDnasRequest, generator_pb2.ListDnasResponse],
    ) -> generator_pb2.ListDnasResponse:
        validate(lambda r: checks.check_list_dnas_request(r, self._limits), request)
        after, size = dnas.page_position(request, self._limits)
        page = await self.library.page(after, size)
        return dnas.list_page(request, page, max_bytes=self._max_bytes)

    async def GetDna(
        self,
        request: generator_pb2.GetDnaRequest,
        context: ServicerContext[generator_pb2.GetDnaRequest, generator_pb2.GetDnaResponse],
    ) -> generator_pb2.GetDnaResponse:
        validate(lambda r: checks.check_get_dna_request(r, self._limits), request)
        return generator_pb2.GetDnaResponse(dna=await self.library.get(request.name))

    async def ValidateDna(
        self,
        request: generator_pb2.ValidateDnaRequest,
        context: ServicerContext[
            generator_pb2.ValidateDnaRequest, generator_pb2.ValidateDnaResponse
        ],
    ) -> generator_pb2.ValidateDnaResponse:
        validate(lambda r: checks.check_validate_dna_request(r, self._limits), request)
        return await asyncio.to_thread(dnas.validate_dna, request)

    async def Generate(
        self,
        request: generator_pb2.GenerateRequest,
        context: ServicerContext[generator_pb2.GenerateRequest, generator_pb2.GenerateResponse],
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:  # (as Encoded bytes: add_encoding_servicer)
        # Thousands of parents take milliseconds to check: not on the event loop, and not in
        # the breeding threads either, where it would queue behind long chunks.
        records = await asyncio.to_thread(self._check_generate, request)
        with self._slots.hold():
            layout = breeding.layout_for(await self._dna(request))
            loop = asyncio.get_running_loop()
            parents = await loop.run_in_executor(
                self._executor, breeding.rank_parents, layout, request, records
            )
            del records  # (a copy of the request's bytes: not kept for the whole stream)
            self.stats.streams += 1
            chunks = breeding.breed(
                layout,
                request,
                parents,
                max_bytes=self._max_bytes,
                stats=self.stats,
                encoded=True,  # sent as bred: not parsed into messages to serialise again
            )
            async with aclosing(bred_ahead(self._executor, chunks, self.stats)) as ahead:
                async for responses in ahead:
                    for response in responses:
                        yield response  # type: ignore[misc]  # Encoded bytes

    def _check_generate(self, request: generator_pb2.GenerateRequest) -> ParentRecords | None:
        """Validate a Generate request (INVALID_ARGUMENT); its parents as read from its
        bytes for the check, which ranking reads again (the request is not changed)."""
        records = read_parents(request)
        validate(lambda r: checks.check_generate_request(r, self._limits, records=records), request)
        return records

    async def _dna(self, request: generator_pb2.GenerateRequest) -> dna_pb2.Dna:
        if request.WhichOneof("dna_source") == "dna_name":
            return (await self.library.valid(request.dna_name)).dna
        key, known = self._inline.cached(request.dna)
        if known is not None:
            return known
        return await asyncio.to_thread(self._inline.check, key, request.dna)


TRUNCATED_LABEL = "helix.dev/dnas-truncated"
DEFAULT_ADVERTISE_BYTES = 48 << 10


async def register_library(
    library: DnaLibrary, presence: AgentPresence, stats: GeneratorStats, max_bytes: int
) -> None:
    """Read the whole library (in the background: it may take a while), put the names of
    its valid DNAs that fit in `max_bytes` in the agent's details, then start registering."""
    advertisement = dnas.Advertisement(max_bytes)
    try:
        async for name in library.valid_names():
            advertisement.offer(name)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("reading the DNA library failed: this agent registers without DNAs")
    agent = presence.agent
    agent.generator.dnas[:] = advertisement.names
    stats.advertised, stats.left_out = len(advertisement.names), advertisement.left_out
    if advertisement.left_out:
        agent.labels[TRUNCATED_LABEL] = "true"
        log.warning(
            "the registry is told %d of the %d valid DNAs of the library (an agent "
            "advertises at most %d bytes of DNA names and %d names): %d left out, still "
            "served; label %s=true",
            len(advertisement.names),
            len(advertisement.names) + advertisement.left_out,
            max_bytes,
            advertisement.max_names,
            advertisement.left_out,
            TRUNCATED_LABEL,
        )
    else:
        agent.labels.pop(TRUNCATED_LABEL, None)
    await presence.start()


def generator_binding(
    library: DnaLibrary,
    *,
    workers: int = 2,
    max_message_bytes: int = MAX_RESPONSE_BYTES,
    capacity: int = 8,
    presence: AgentPresence | None = None,
    advertise_bytes: int = DEFAULT_ADVERTISE_BYTES,
) -> ServiceBinding:
    """GeneratorService on a server, with its breeding threads started and stopped alongside.

    `capacity` Generate streams are served at once (more get RESOURCE_EXHAUSTED with
    RetryInfo); it is what the agent advertises. With `presence`, the generator registers
    itself (kind generator, its strategies and the valid DNAs of its library) and
    deregisters when the drain begins. The library is read for that in the background, so
    the server listens at once however large or slow the library is; the agent registers
    once it has been read. It advertises the first valid DNAs in name order that fit in
    `advertise_bytes` (and the registry's 10000): when some do not, the agent carries the
    label `helix.dev/dnas-truncated: "true"` and a warning says how many were left out.
    Every DNA is served either way.
    """
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="helix-breed")
    servicer = GeneratorServicer(
        library, executor, max_message_bytes=max_message_bytes, max_streams=capacity
    )
    background: list[asyncio.Task[None]] = []

    def add(server: grpc.aio.Server) -> None:
        # Generate yields its responses' bytes (Encoded), sent as they are.
        add_encoding_servicer(
            generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"], servicer, server
        )

    async def announce() -> None:
        if presence is not None and not background:
            presence.agent.generator.strategies[:] = STRATEGIES
            registering = register_library(library, presence, servicer.stats, advertise_bytes)
            task = asyncio.create_task(registering, name="read the DNA library")
            background.append(task)

    async def leave() -> None:
        await cancel_and_wait(background)
        if presence is not None:
            await presence.stop()

    async def stopped() -> None:
        await library.aclose()
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    return ServiceBinding(
        generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name,
        add,
        on_start=(announce,),
        on_shutdown=(leave,),
        on_stopped=(leave, stopped),  # leave again: a start that failed skips the drain
        add_metrics=lambda metrics: register_metrics(servicer.stats, library.stats, metrics),
    )
