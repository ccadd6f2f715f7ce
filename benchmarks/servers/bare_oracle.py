"""The minimal oracle for benchmarks: VerifyStream of sphere on plain grpc.aio, nothing else.

A generic bidi handler for /helix.v1.OracleService/VerifyStream, as a hand-written oracle
in Python would be: no auth, no validation, no ids checked, no cache, no reports. It grants
`--credit` candidates when the stream opens; then for each batch it reads the genomes from
the parsed messages (`list(c.genome.reals)` per candidate), scores them all at once with
NumPy (Σ x², as Helix's builtin sphere), builds the VerdictBatch one Verdict message at a
time, sends it and grants the batch's candidates again as credit.

Runs on uvloop by default, as `helix oracle serve` does (`--loop asyncio` for asyncio's own
loop). Prints `bare oracle listening on HOST:PORT`, then `event loop uvloop|asyncio`; runs
until terminated.

    python benchmarks/servers/bare_oracle.py [--credit 8000] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.oracle_pb2 as oracle_pb2
from helix.common.config import run_loop

METHOD = "VerifyStream"
SERVICE = "helix.v1.OracleService"
PASSED = candidate_pb2.VERDICT_STATUS_PASSED


def verdicts(batch: oracle_pb2.VerifyBatch) -> oracle_pb2.VerifyStreamResponse:
    """The batch's sphere verdicts, message by message."""
    candidates = batch.candidates
    x = np.array([list(c.genome.reals) for c in candidates], dtype=np.float64)
    scores = np.einsum("ij,ij->i", x, x).tolist()
    answer = oracle_pb2.VerdictBatch(batch_id=batch.batch_id)
    add = answer.verdicts.append
    for candidate, score in zip(candidates, scores, strict=True):
        add(candidate_pb2.Verdict(candidate_id=candidate.id, status=PASSED, score=score))
    return oracle_pb2.VerifyStreamResponse(verdicts=answer)


def handler(credit: int) -> grpc.RpcMethodHandler:
    async def verify_stream(
        requests: AsyncIterator[oracle_pb2.VerifyStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[oracle_pb2.VerifyStreamResponse]:
        opened = False
        async for request in requests:
            if not opened:
                opened = True
                yield oracle_pb2.VerifyStreamResponse(
                    credit=oracle_pb2.VerifyCredit(candidates=credit)
                )
                continue
            batch = request.batch
            yield verdicts(batch)
            yield oracle_pb2.VerifyStreamResponse(
                credit=oracle_pb2.VerifyCredit(candidates=len(batch.candidates))
            )

    return grpc.stream_stream_rpc_method_handler(
        verify_stream,
        request_deserializer=oracle_pb2.VerifyStreamRequest.FromString,
        response_serializer=oracle_pb2.VerifyStreamResponse.SerializeToString,
    )


async def main(credit: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ]
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler(credit)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    print(f"bare oracle listening on 127.0.0.1:{port}", flush=True)
    print(f"event loop {name}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--credit", type=int, default=8000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    run_loop(main(args.credit), args.loop)
