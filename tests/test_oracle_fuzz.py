"""Hypothesis against the embedded suite's oracles: near-valid Verify requests and random
VerifyStream conversations (valid DNAs, genomes with values missing, extra, out of
bounds, non-finite or repeated; ids right, wrong or malformed; batches over the credit,
duplicate ids, second opens) never produce INTERNAL, and a request that is valid gets one
verdict per candidate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import SERVER_FAULTS, Suite

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.oracle_pb2 as oracle_pb2
from helix.common.config import Duration
from helix.genome import codec
from helix.genome.documents import parse_dna_text
from helix.genome.layout import Layout, normalise
from helix.security.tokens import mint
from helix.suite import EmbeddedConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
PAIRS = [("sphere", "sphere"), ("onemax", "onemax"), ("tsp", "tsp"), ("sphere", "onemax")]
DNAS = {
    name: parse_dna_text((EXAMPLES / f"{name}.yaml").read_text()).dna
    for name in ("sphere", "onemax", "tsp")
}
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
VERIFY = "/helix.v1.OracleService/Verify"
STREAM = "/helix.v1.OracleService/VerifyStream"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: Any) -> Iterator[tuple[grpc.Channel, tuple[tuple[str, str], ...]]]:
    config = EmbeddedConfig(
        port=0,
        data_dir=tmp_path_factory.mktemp("oracle-fuzz"),
        grace_period=Duration(1),
        rate_read=1e6,
        rate_write=1e6,
        rate_data=1e6,
        generator_self_register=False,
        oracle_stream_idle_timeout=Duration(2),
    )
    running = Suite(config)
    token = mint(running.server.security.signer, "fuzzer", ["verify"], 3600)
    with grpc.insecure_channel(running.server.address) as channel:
        yield channel, (("authorization", f"Bearer {token}"),)
    running.stop()


@st.composite
def genomes(draw: st.DrawFn, dna_name: str) -> candidate_pb2.Candidate:
    """A valid candidate of the DNA, then perhaps broken in one of many ways."""
    layout = Layout(normalise(DNAS[dna_name]))
    pop = layout.empty(1)
    rng_seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(rng_seed)
    if layout.n_reals:
        pop.reals[:] = rng.uniform(layout.real_low, layout.real_high)
    if layout.n_bits:
        pop.bits[:] = rng.random(layout.n_bits) < 0.5
    for block in pop.permutations:
        block[0] = rng.permutation(block.shape[1])
    candidate = codec.to_candidates(layout, pop, generation=0, parent_ids=[()])[0]
    breakage = draw(
        st.sampled_from(["none", "id", "bad_id", "reals", "extra", "missing", "perm", "bits"])
    )
    _break(draw, candidate, breakage)
    return candidate


def _break(draw: st.DrawFn, candidate: candidate_pb2.Candidate, breakage: str) -> None:
    genome = candidate.genome
    if breakage == "id":
        candidate.id = draw(st.text("0123456789abcdef", min_size=32, max_size=32))
    elif breakage == "bad_id":
        candidate.id = draw(st.text(max_size=40))
    elif breakage == "reals" and genome.reals:
        genome.reals[draw(st.integers(0, len(genome.reals) - 1))] = draw(
            st.sampled_from([float("nan"), float("inf"), -1e308, 1e6, -0.0])
        )
    elif breakage == "extra":
        genome.reals.append(draw(st.floats(allow_nan=True)))
        genome.permutations.append(draw(st.integers(0, 2**32 - 1)))
    elif breakage == "missing":
        genome.Clear()
    elif breakage == "perm" and genome.permutations:
        genome.permutations[0] = genome.permutations[-1]
    elif breakage == "bits" and genome.bits:
        genome.bits = draw(st.binary(max_size=len(genome.bits) + 2))


@st.composite
def verify_requests(draw: st.DrawFn) -> oracle_pb2.VerifyRequest:
    oracle, dna_name = draw(st.sampled_from(PAIRS))
    batch = draw(st.lists(genomes(dna_name), min_size=0, max_size=20))
    request = oracle_pb2.VerifyRequest(
        oracle=f"oracles/{oracle}", dna=DNAS[dna_name], candidates=batch
    )
    if draw(st.booleans()):
        request.timeout.seconds = draw(st.integers(-5, 10**6))
    return request


def check(call: Any) -> grpc.StatusCode:
    """Run `call`; its status code, which must not be a server fault."""
    code, details = grpc.StatusCode.OK, None
    try:
        call()
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
    assert code not in SERVER_FAULTS, (code, details)
    return code


@FUZZ
@given(request=verify_requests())
def test_verify_never_faults(suite: Any, request: oracle_pb2.VerifyRequest) -> None:
    channel, metadata = suite
    verify = channel.unary_unary(
        VERIFY,
        request_serializer=oracle_pb2.VerifyRequest.SerializeToString,
        response_deserializer=oracle_pb2.VerifyResponse.FromString,
    )
    answers: list[oracle_pb2.VerifyResponse] = []
    code = check(lambda: answers.append(verify(request, metadata=metadata, timeout=10)))
    if code == grpc.StatusCode.OK:
        assert len(answers[0].verdicts) == len(request.candidates)


@st.composite
def conversations(draw: st.DrawFn) -> list[oracle_pb2.VerifyStreamRequest]:
    oracle, dna_name = draw(st.sampled_from(PAIRS))
    opening = oracle_pb2.VerifyStreamRequest(
        open=oracle_pb2.VerifyStreamOpen(oracle=f"oracles/{oracle}", dna=DNAS[dna_name])
    )
    messages = [] if draw(st.booleans()) and draw(st.booleans()) else [opening]
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["batch", "batch", "batch", "open", "empty"]))
        if kind == "open":
            messages.append(opening)
        elif kind == "empty":
            messages.append(oracle_pb2.VerifyStreamRequest())
        else:
            batch = draw(st.lists(genomes(dna_name), min_size=0, max_size=8))
            batch_id = draw(st.integers(0, 5))
            messages.append(
                oracle_pb2.VerifyStreamRequest(
                    batch=oracle_pb2.VerifyBatch(batch_id=batch_id, candidates=batch)
                )
            )
    return messages


@FUZZ
@given(messages=conversations())
def test_verify_stream_never_faults(
    suite: Any, messages: list[oracle_pb2.VerifyStreamRequest]
) -> None:
    channel, metadata = suite
    stream = channel.stream_stream(
        STREAM,
        request_serializer=oracle_pb2.VerifyStreamRequest.SerializeToString,
        response_deserializer=oracle_pb2.VerifyStreamResponse.FromString,
    )
    check(lambda: list(stream(iter(messages), metadata=metadata, timeout=10)))
