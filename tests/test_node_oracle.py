"""The Node.js oracle agent (examples/node/oracle_agent.js) in a live embedded suite whose
Python oracle agent hosts the same `knapsack-node` (tests/node_support.py):

- a run that uses both ends identical to the same seed on Python oracles only, and each
  agent did part of its work;
- SIGTERM to the Node agent mid-run loses nothing: it answers what it holds, deregisters
  and exits 0, and the run still ends identical;
- its verdicts equal the Python command oracle's for every genome, field by field;
- Verify and VerifyStream refuse bad input with INVALID_ARGUMENT naming the field (and the
  other codes of oracle.proto: NOT_FOUND, CONFIG_HASH_MISMATCH, CREDIT_EXCEEDED, ...);
- candidate ids are computed as candidate.proto says (its worked example);
- at SIGTERM a stream's held batch is answered, no credit follows, the stream ends
  UNAVAILABLE (ORACLE_DRAINING) and new streams are refused; a cancelled stream's batch stops
  being judged;
- the agent's registry tokens stay valid (minted and renewed, or re-read from a file), an
  expired one is fatal; it registers again after losing its registration, and heartbeats
  carry its load;
- malformed and expired tokens of callers are refused as a Helix server refuses them.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.genome.codec import genome_id
from helix.security.tokens import mint

from harness import Cluster, Processes, RunningProcess, run_command, run_helix
from node_support import (
    AGENT_SCOPES,
    CLIENT_SCOPES,
    EXAMPLE_CONFIG,
    NODE,
    NODE_DIR,
    ORACLE,
    ORACLES_DIR,
    STOP_WITHIN,
    config_hash,
    helix_run_outcome,
    knapsack_suite,
    node_env,
    outcome_line,
    python_verdicts_for,
    require_node_modules,
    requires_node,
    run_client,
    same_outcome,
    start_agent,
    write_knapsack_config,
)
from waiting import eventually

pytestmark = [requires_node, pytest.mark.timeout(300)]

SUMMARY = re.compile(
    r"^verified (\d+) candidates \((\d+) judged, (\d+) from cache\) in (\d+) batches$"
)
KNAPSACK = dna_pb2.Dna(
    name="dnas/knapsack", genes=[dna_pb2.Gene(name="take", bits=dna_pb2.BitsGene(size=10))]
)


@dataclass
class Setup:
    cluster: Cluster
    processes: Processes
    config: Path
    config_hash: str
    data_dir: Path
    tmp: Path


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with knapsack_suite(tmp_path) as (cluster, processes, config):
        yield Setup(
            cluster, processes, config, await config_hash(config), tmp_path / "data", tmp_path
        )


def oracle_stub(
    setup: Setup, address: str, scopes: Sequence[str] = ("verify", "oracles.read")
) -> oracle_pb2_grpc.OracleServiceAsyncStub:
    channel = setup.cluster.channel("oracle", "tester", scopes, address=address)
    return oracle_pb2_grpc.OracleServiceStub(channel)


def candidate(flags: int, candidate_id: str | None = None) -> candidate_pb2.Candidate:
    """The candidate taking the items whose bits are set in `flags` (0..1023)."""
    genome = candidate_pb2.Genome(bits=bytes([flags & 0xFF, flags >> 8]))
    return candidate_pb2.Candidate(
        id=genome_id(genome) if candidate_id is None else candidate_id, genome=genome
    )


def details(error: grpc.aio.AioRpcError) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    """(ErrorInfo reason, BadRequest (field, rule) pairs, ErrorInfo metadata) of an error."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no status details: {error}"
    reason, fields, metadata = "", [], {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "helix"
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [(v.field, v.reason) for v in bad.field_violations]
    return reason, fields, metadata


async def stop_agent(agent: RunningProcess) -> tuple[int, int, int]:
    """SIGTERM the agent; (exit status, verified, judged) from its last line."""
    code = await agent.stop(STOP_WITHIN)
    found = SUMMARY.match(agent.lines[-1]) if agent.lines else None
    assert found, agent.describe("printed no summary line")
    return code, int(found[1]), int(found[2])


async def registered_agents(cluster: Cluster) -> list[str]:
    response = await cluster.registry().ListAgents(registry_pb2.ListAgentsRequest())
    return [agent.name for agent in response.agents]


# --- candidate ids and the config hash -----------------------------------------------------


async def test_genome_id_is_candidate_protos_worked_example() -> None:
    require_node_modules()
    assert NODE is not None
    script = (
        "const h = require('./lib/helix');"
        "console.log(h.genomeId({reals: [0.5, -1.0, 2.5], integers: ['7'], choices: [1],"
        " bits: Buffer.from([0xfd, 0x01]), permutations: [2, 0, 1], sequence_lengths: [7],"
        " sequences: Buffer.from([2, 0, 3, 3, 0, 1, 0])}));"
        "console.log(h.genomeId({reals: [-0.0], bits: Buffer.alloc(0)}));"
    )
    code, out, err = await run_command([NODE, "-e", script], node_env(None), cwd=NODE_DIR)
    assert code == 0, err
    example, negative_zero = out.split()
    assert example == "00e8b319e29f65b5b4dd2afee149c8ac"  # candidate.proto
    assert negative_zero == genome_id(candidate_pb2.Genome(reals=[0.0]))


async def test_oracle_hash_prints_what_agents_report(tmp_path: Path) -> None:
    copy = write_knapsack_config(tmp_path / "copy")
    assert await config_hash(copy) == await config_hash(EXAMPLE_CONFIG)
    assert re.fullmatch(r"[0-9a-f]{64}", await config_hash(copy))
    code, _out, err = await run_helix("oracle", "hash", "nope", "--config", str(copy))
    assert code == 2
    assert "no oracle oracles/nope in" in err
    assert "knapsack-node" in err
    code, _out, err = await run_helix("oracle", "hash", "x", "--config", str(tmp_path / "none"))
    assert code == 2
    assert "cannot read" in err


# --- a run on both agents ------------------------------------------------------------------


async def test_a_run_on_node_and_python_agents_equals_python_only(setup: Setup) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    assert "agents/node-oracle-1" in await registered_agents(setup.cluster)
    args = ["--generations", "80", "--seed", "11"]
    code, out, err = await _client(setup, *args)
    assert code == 0, err
    outcome = outcome_line(out)
    assert outcome["oracle_config_hash"] == setup.config_hash
    expected = await helix_run_outcome(setup.config, setup.tmp / "run", *args)
    assert same_outcome(outcome) == expected
    # Both did part of the work: the Node agent says how much, the Python agent reported it.
    code, verified, judged = await stop_agent(agent)
    assert code == 0
    assert 0 < judged <= verified < int(outcome["evaluations"])  # type: ignore[call-overload]
    assert python_verdicts_for(setup.data_dir, str(outcome["run"])) > 0
    assert "agents/node-oracle-1" not in await registered_agents(setup.cluster)


async def test_sigterm_mid_run_loses_nothing(setup: Setup) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    args = ["--generations", "400", "--seed", "5", "--json"]
    assert NODE is not None
    argv = [NODE, str(NODE_DIR / "client.js"), "--address", setup.cluster.address_of("suite")]
    token = setup.cluster.token("node-client", CLIENT_SCOPES)
    client = await setup.processes.start([*argv, *args], node_env(token), ready=None, name="client")
    await client.wait_for_line(r"^generation 20: ", within=60)
    code, verified, _judged = await stop_agent(agent)
    assert code == 0
    assert verified > 0, "the Node agent had verified nothing before SIGTERM"
    assert "agents/node-oracle-1" not in await registered_agents(setup.cluster)
    assert await client.wait(within=120) == 0, client.describe("failed")
    generations = [line for line in client.lines if line.startswith("generation ")]
    assert len(generations) > 21
    outcome = outcome_line("\n".join(client.lines))
    expected = await helix_run_outcome(setup.config, setup.tmp / "run", *args[:-1])
    assert same_outcome(outcome) == expected


async def _client(setup: Setup, *args: str) -> tuple[int, str, str]:
    return await run_client(setup.cluster, *args, "--json")


# --- verdicts ------------------------------------------------------------------------------


async def test_verdicts_equal_the_python_command_oracles(setup: Setup) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    python = oracle_stub(setup, setup.cluster.address_of("oracle"))
    node = oracle_stub(setup, agent.address)
    info = (await node.GetOracle(oracle_pb2.GetOracleRequest(name=ORACLE))).oracle
    reference = (await python.GetOracle(oracle_pb2.GetOracleRequest(name=ORACLE))).oracle
    assert (info.name, info.config_hash, info.objective) == (
        reference.name,
        reference.config_hash,
        reference.objective,
    )
    assert [o.name for o in (await node.ListOracles(oracle_pb2.ListOraclesRequest())).oracles] == [
        ORACLE
    ]
    every = [candidate(flags) for flags in range(1024)]  # every genome of the DNA
    size = 64  # within both agents' capacity
    statuses = set()
    for start in range(0, len(every), size):
        request = oracle_pb2.VerifyRequest(
            oracle=ORACLE, dna=KNAPSACK, candidates=every[start : start + size]
        )
        ours, theirs = await asyncio.gather(node.Verify(request), python.Verify(request))
        assert len(ours.verdicts) == len(theirs.verdicts) == len(request.candidates)
        for mine, reference_verdict, sent in zip(
            ours.verdicts, theirs.verdicts, request.candidates, strict=True
        ):
            assert mine.candidate_id == reference_verdict.candidate_id == sent.id
            assert mine.status == reference_verdict.status
            assert mine.score == reference_verdict.score
            assert dict(mine.metrics) == dict(reference_verdict.metrics)
            assert mine.message == reference_verdict.message
            statuses.add(mine.status)
    assert statuses == {candidate_pb2.VERDICT_STATUS_PASSED, candidate_pb2.VERDICT_STATUS_FAILED}
    # Asked again: from the cache, marked so, the same verdicts.
    again = await node.Verify(
        oracle_pb2.VerifyRequest(oracle=ORACLE, dna=KNAPSACK, candidates=every[:3])
    )
    assert all(v.cached for v in again.verdicts)
    assert [v.score for v in again.verdicts] == [0.0, 92.0, 57.0]


# --- bad input -----------------------------------------------------------------------------


def _dna(*genes: dna_pb2.Gene) -> dna_pb2.Dna:
    return dna_pb2.Dna(name="dnas/other", genes=list(genes))


BITS = dna_pb2.BitsGene
BAD_VERIFY = [
    (
        "wrong bits size",
        {"dna": _dna(dna_pb2.Gene(name="take", bits=BITS(size=12)))},
        "DNA_SHAPE",
        [("dna.genes[0].bits.size", "dna_shape")],
    ),
    (
        "wrong gene name",
        {"dna": _dna(dna_pb2.Gene(name="pick", bits=BITS(size=10)))},
        "DNA_SHAPE",
        [("dna.genes[0].name", "dna_shape")],
    ),
    (
        "not bits",
        {"dna": _dna(dna_pb2.Gene(name="take", real=dna_pb2.RealGene(low=0, high=1)))},
        "DNA_SHAPE",
        [("dna.genes[0]", "dna_shape")],
    ),
    (
        "two genes",
        {
            "dna": _dna(
                dna_pb2.Gene(name="take", bits=BITS(size=10)),
                dna_pb2.Gene(name="more", bits=BITS(size=1)),
            )
        },
        "DNA_SHAPE",
        [("dna.genes", "dna_shape")],
    ),
    (
        "wrong id",
        {"candidates": [candidate(1), candidate(2, "0" * 32)]},
        "WRONG_ID",
        [("candidates[1].id", "wrong_id")],
    ),
    (
        "short genome",
        {"candidates": [candidate_pb2.Candidate(genome=candidate_pb2.Genome(bits=b"\x01"))]},
        "INVALID_ARGUMENT",
        [("candidates[0].genome.bits", "genome_shape")],
    ),
    (
        "padding",
        {"candidates": [candidate_pb2.Candidate(genome=candidate_pb2.Genome(bits=b"\x01\x04"))]},
        "INVALID_ARGUMENT",
        [("candidates[0].genome.bits", "padding")],
    ),
    (
        "other genes",
        {
            "candidates": [
                candidate_pb2.Candidate(genome=candidate_pb2.Genome(bits=b"\x01\x00", reals=[1.0]))
            ]
        },
        "INVALID_ARGUMENT",
        [("candidates[0].genome.reals", "genome_shape")],
    ),
    (
        "no genome",
        {"candidates": [candidate_pb2.Candidate(id="")]},
        "INVALID_ARGUMENT",
        [("candidates[0].genome", "required")],
    ),
    ("no candidates", {"candidates": []}, "INVALID_ARGUMENT", [("candidates", "too_few")]),
    ("bad oracle name", {"oracle": "Knapsack"}, "INVALID_ARGUMENT", [("oracle", "pattern")]),
]


@pytest.mark.parametrize(
    ("changes", "reason", "fields"),
    [case[1:] for case in BAD_VERIFY],
    ids=[case[0] for case in BAD_VERIFY],
)
async def test_verify_refuses_bad_input_naming_the_field(
    setup: Setup, changes: dict[str, object], reason: str, fields: list[tuple[str, str]]
) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    node = oracle_stub(setup, agent.address)
    request = oracle_pb2.VerifyRequest(oracle=ORACLE, dna=KNAPSACK, candidates=[candidate(5)])
    for name, value in changes.items():
        if name == "candidates":
            del request.candidates[:]
            request.candidates.extend(value)  # type: ignore[arg-type]
        elif name == "dna":
            request.dna.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.Verify(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert details(caught.value)[:2] == (reason, fields)
    assert fields[0][0] in (caught.value.details() or "") or reason == "WRONG_ID"


async def test_calls_need_a_token_and_a_scope_and_name_a_hosted_oracle(setup: Setup) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    request = oracle_pb2.VerifyRequest(oracle=ORACLE, dna=KNAPSACK, candidates=[candidate(5)])
    plain = grpc.aio.insecure_channel(agent.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await oracle_pb2_grpc.OracleServiceStub(plain).Verify(request)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details(caught.value)[0] == "TOKEN_MISSING"
        # Health is open, and SERVING.
        health = health_pb2_grpc.HealthStub(plain)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="helix.v1.OracleService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await plain.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await oracle_stub(setup, agent.address, ["oracles.read"]).Verify(request)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(caught.value)[0] == "SCOPE_MISSING"
    node = oracle_stub(setup, agent.address)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.Verify(
            oracle_pb2.VerifyRequest(
                oracle="oracles/sphere", dna=KNAPSACK, candidates=[candidate(5)]
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.Verify(
            oracle_pb2.VerifyRequest(
                oracle=ORACLE, dna=KNAPSACK, candidates=[candidate(i) for i in range(65)]
            )
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught.value)[0] == "BATCH_OVER_CAPACITY"


# --- the VerifyStream protocol -------------------------------------------------------------


async def _read(call: object) -> oracle_pb2.VerifyStreamResponse:
    """The next response of a VerifyStream call (it must not have ended)."""
    message = await call.read()  # type: ignore[attr-defined]
    assert isinstance(message, oracle_pb2.VerifyStreamResponse), message
    return message


def _open(config_hash: str = "", dna: dna_pb2.Dna = KNAPSACK) -> oracle_pb2.VerifyStreamRequest:
    return oracle_pb2.VerifyStreamRequest(
        open=oracle_pb2.VerifyStreamOpen(oracle=ORACLE, dna=dna, config_hash=config_hash)
    )


def _batch(batch_id: int, *flags: int) -> oracle_pb2.VerifyStreamRequest:
    return oracle_pb2.VerifyStreamRequest(
        batch=oracle_pb2.VerifyBatch(batch_id=batch_id, candidates=[candidate(f) for f in flags])
    )


async def test_verify_stream_grants_credit_answers_batches_and_ends_ok(setup: Setup) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    node = oracle_stub(setup, agent.address)
    call = node.VerifyStream()
    await call.write(_open(setup.config_hash))
    first = await _read(call)
    assert first.credit.candidates == 32  # half the capacity of 64
    await call.write(_batch(7, *range(20)))
    await call.write(_batch(3, *range(20, 32)))
    answered: dict[int, list[str]] = {}
    granted = 0
    while len(answered) < 2 or granted < 32:
        message = await _read(call)
        if message.HasField("verdicts"):
            answered[message.verdicts.batch_id] = [
                v.candidate_id for v in message.verdicts.verdicts
            ]
        else:
            granted += message.credit.candidates
    assert answered == {
        7: [candidate(f).id for f in range(20)],
        3: [candidate(f).id for f in range(20, 32)],
    }
    await call.write(_batch(8, 1, 2))
    await call.done_writing()
    rest = [message async for message in call]
    assert [m.verdicts.batch_id for m in rest if m.HasField("verdicts")] == [8]
    assert await call.code() == grpc.StatusCode.OK


def _wrong_id_batch() -> oracle_pb2.VerifyStreamRequest:
    wrong = candidate(3, "f" * 32)
    return oracle_pb2.VerifyStreamRequest(
        batch=oracle_pb2.VerifyBatch(batch_id=2, candidates=[wrong])
    )


@pytest.mark.parametrize(
    ("messages", "code", "reason", "fields"),
    [
        (
            [],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [("open", "required")],
        ),
        (
            [_batch(1, 1)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [("open", "required")],
        ),
        (
            [_open("f" * 64)],
            grpc.StatusCode.FAILED_PRECONDITION,
            "CONFIG_HASH_MISMATCH",
            [],
        ),
        (
            [_open(dna=_dna(dna_pb2.Gene(name="take", bits=BITS(size=9))))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "DNA_SHAPE",
            [("open.dna.genes[0].bits.size", "dna_shape")],
        ),
        (
            [_open(), _batch(1, *range(33))],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CREDIT_EXCEEDED",
            [],
        ),
        (
            [_open(), _open()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [("open", "oneof")],
        ),
        (
            [_open(), _batch(1, 1), _batch(1, 2)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [("batch.batch_id", "reused")],
        ),
        (
            [_open(), _batch(0, 1)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            [("batch.batch_id", "required")],
        ),
        (
            [_open(), _wrong_id_batch()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "WRONG_ID",
            [("batch.candidates[0].id", "wrong_id")],
        ),
    ],
    ids=[
        "empty",
        "batch-first",
        "config-hash",
        "dna-shape",
        "credit",
        "second-open",
        "reused-id",
        "zero-id",
        "wrong-id",
    ],
)
async def test_verify_stream_refuses_protocol_errors(
    setup: Setup,
    messages: list[oracle_pb2.VerifyStreamRequest],
    code: grpc.StatusCode,
    reason: str,
    fields: list[tuple[str, str]],
) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    call = oracle_stub(setup, agent.address).VerifyStream()
    for message in messages:
        await call.write(message)
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == code, caught.value
    found_reason, found_fields, metadata = details(caught.value)
    assert (found_reason, found_fields) == (reason, fields)
    if reason == "CONFIG_HASH_MISMATCH":
        assert metadata == {"config_hash": setup.config_hash}
    # The stream gave its window back: two new ones each get full credit, half the capacity
    # of 64 (had the window leaked, the second would be refused ORACLE_BUSY).
    node = oracle_stub(setup, agent.address)
    streams = [node.VerifyStream(), node.VerifyStream()]
    for stream in streams:
        await stream.write(_open())
        assert (await _read(stream)).credit.candidates == 32
    for stream in streams:
        stream.cancel()


# What a stack trace printed by Node looks like ("    at Foo (file.js:1:2)").
STACK_FRAME = re.compile(r"^\s+at .+:\d+:\d+\)?$", re.MULTILINE)


async def test_agent_refuses_bad_flags(tmp_path: Path) -> None:
    require_node_modules()
    assert NODE is not None
    agent = str(NODE_DIR / "oracle_agent.js")
    hash_ = ["--config-hash", "a" * 64]
    registry = ["--registry-address", "127.0.0.1:1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing"
    for args, env, message in [
        ([], {}, "--config-hash is required"),
        (["--config-hash", "abc"], {}, "--config-hash must be 64 lowercase hex characters"),
        ([*hash_, "--capacity", "0"], {}, "--capacity: 0 is out of range"),
        ([*hash_, "--port", "x"], {}, '--port: "x" is not a non-negative whole number'),
        # No token checks on a host others can reach, unless said so plainly.
        (
            [*hash_, "--host", "0.0.0.0"],
            {},
            "--host 0.0.0.0 is not loopback: give --auth-hs256-dir",
        ),
        # A wildcard is no endpoint to register.
        (
            [*hash_, "--host", "0.0.0.0", "--insecure-no-auth", *registry],
            {},
            "--host 0.0.0.0 listens on every interface, which is no address to register: "
            "give --advertise-address",
        ),
        # Bad key directories and workers are named, with no stack trace.
        (
            [*hash_, "--auth-hs256-dir", str(missing)],
            {},
            f"--auth-hs256-dir {missing}: cannot read it (ENOENT)",
        ),
        (
            [*hash_, "--auth-hs256-dir", str(empty)],
            {},
            f"--auth-hs256-dir {empty}: no .hs256 key of at least 32 bytes there",
        ),
        (
            hash_,
            {"HELIX_NODE_WORKER": str(missing / "worker.js")},
            f"the worker {missing / 'worker.js'} (HELIX_NODE_WORKER) cannot be loaded: "
            "no such module",
        ),
        (
            hash_,
            {"HELIX_NODE_WORKER": str(NODE_DIR / "lib" / "auth.js")},
            f"the worker {NODE_DIR / 'lib' / 'auth.js'} (HELIX_NODE_WORKER) exports no judge",
        ),
        # Registering needs a token.
        ([*hash_, *registry], {}, "no token for the registry (scopes agents.write, agents.read)"),
        (
            [*hash_, *registry],
            {"HELIX_TOKEN_FILE": str(missing)},
            f"HELIX_TOKEN_FILE {missing}: cannot read it (ENOENT)",
        ),
    ]:
        code, _out, err = await run_command([NODE, agent, *args], node_env(None, **env))
        assert code == 2, err
        assert err.startswith(f"oracle_agent.js: {message}"), err
        assert not STACK_FRAME.search(err), err


# --- callers' tokens -----------------------------------------------------------------------


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


# Tokens whose header is base64url JSON but not an object: each must be refused as malformed
# (UNAUTHENTICATED, TOKEN_MALFORMED), never answered INTERNAL or UNKNOWN.
MALFORMED_HEADERS = {"null": "bnVsbA", "array": "W10", "number": "NQ", "string": "InMi"}


async def test_malformed_and_expired_tokens_are_refused_as_helix_refuses_them(
    setup: Setup,
) -> None:
    agent = await start_agent(setup.cluster, setup.processes, setup.config_hash)
    request = oracle_pb2.VerifyRequest(oracle=ORACLE, dna=KNAPSACK, candidates=[candidate(5)])
    channel = grpc.aio.insecure_channel(agent.address)
    stub = oracle_pb2_grpc.OracleServiceStub(channel)
    try:
        for kind, header in MALFORMED_HEADERS.items():
            token = f"{header}.e30.c2ln"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Verify(request, metadata=_bearer(token))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, (kind, caught.value)
            assert details(caught.value)[0] == "TOKEN_MALFORMED", kind
            call = stub.VerifyStream(metadata=_bearer(token))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, (kind, caught.value)
            assert details(caught.value)[0] == "TOKEN_MALFORMED", kind
        # Expired 24 s ago: past the leeway of 10 s that Helix servers give (tokens.py).
        signer = setup.cluster.signer
        stale = mint(signer, "tester", ["verify"], 1, now=time.time() - 25)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Verify(request, metadata=_bearer(stale))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details(caught.value)[0] == "TOKEN_EXPIRED"
        # Expired 5 s ago: within the leeway.
        recent = mint(signer, "tester", ["verify"], 1, now=time.time() - 6)
        answer = await stub.Verify(request, metadata=_bearer(recent))
        assert len(answer.verdicts) == 1
    finally:
        await channel.close()
    # Refusals are not failures: nothing was logged as unexpected, no stack trace.
    code, _verified, _judged = await stop_agent(agent)
    assert code == 0
    log = agent.stderr_text()
    assert "failed unexpectedly" not in log, log
    assert not STACK_FRAME.search(log), log


# --- the agent's own registry tokens -------------------------------------------------------


async def _agent_record(setup: Setup, name: str) -> registry_pb2.Agent:
    response = await setup.cluster.registry().GetAgent(registry_pb2.GetAgentRequest(name=name))
    return response.agent


async def test_registry_tokens_are_renewed_or_reread_and_an_expired_one_is_fatal(
    setup: Setup,
) -> None:
    cluster = setup.cluster
    lease = ["--ttl", "3"]  # a heartbeat every second: a refused token shows at once
    started = time.monotonic()
    # Minted with the keys, lasting 2 s: renewed all along.
    minting = await start_agent(
        cluster, setup.processes, setup.config_hash, agent_id="node-mint",
        extra=[*lease, "--token-ttl", "2"],
    )  # fmt: skip
    # From a file holding a token about to expire, replaced by a fresh one once registered.
    token_file = setup.tmp / "token"
    token_file.write_text(cluster.token("node-file", AGENT_SCOPES, ttl=1) + "\n")
    from_file = await start_agent(
        cluster, setup.processes, setup.config_hash, agent_id="node-file", extra=lease,
        keys=False, env={"HELIX_TOKEN_FILE": str(token_file)},
    )  # fmt: skip
    token_file.write_text(cluster.token("node-file", AGENT_SCOPES, ttl=3600) + "\n")
    # A fixed HELIX_TOKEN about to expire: once the registry refuses it, the agent says so and
    # exits 1 instead of serving unregistered.
    fixed = await start_agent(
        cluster, setup.processes, setup.config_hash, agent_id="node-fixed", extra=lease,
        keys=False, env={"HELIX_TOKEN": cluster.token("node-fixed", AGENT_SCOPES, ttl=1)},
    )  # fmt: skip
    epochs = {
        name: (await _agent_record(setup, f"agents/{name}")).epoch
        for name in ("node-mint", "node-file")
    }
    assert await fixed.wait(within=60) == 1, fixed.describe("did not exit 1")
    assert "the registry refused the agent's token: UNAUTHENTICATED" in fixed.stderr_text()
    # Both tokens the others started with are past their life plus the registry's leeway of
    # 10 s: had they not been renewed or re-read, the heartbeats would have been refused.
    await asyncio.sleep(max(0.0, started + 16 - time.monotonic()))
    for process, name in ((minting, "node-mint"), (from_file, "node-file")):
        assert process.running, process.describe("ended")
        record = await _agent_record(setup, f"agents/{name}")
        assert record.epoch == epochs[name], f"{name} lost its registration"
        assert "heartbeat failed" not in process.stderr_text(), process.stderr_text()
        assert "refused" not in process.stderr_text(), process.stderr_text()


async def test_registers_again_after_losing_its_registration(setup: Setup) -> None:
    agent = await start_agent(
        setup.cluster, setup.processes, setup.config_hash, extra=["--ttl", "3"]
    )
    name = "agents/node-oracle-1"
    first = await _agent_record(setup, name)
    # The registry drops it (as when its lease lapsed): its next heartbeat gets NOT_FOUND. Only
    # its owner may remove it: the subject of the agent's minted tokens, its agent id.
    await setup.cluster.registry("node-oracle-1").DeregisterAgent(
        registry_pb2.DeregisterAgentRequest(name=name, etag=first.etag)
    )

    async def registered_again() -> registry_pb2.Agent | None:
        record = await _agent_record(setup, name)
        return record if record.epoch != first.epoch else None

    again = await eventually(
        registered_again, within=30, what=f"{name} registered again",
        ignore=(grpc.aio.AioRpcError,),
    )  # fmt: skip
    assert again.epoch > first.epoch
    assert again.endpoint == agent.address
    assert f"{name} lost its registration, registering again" in agent.stderr_text()
    code, _verified, _judged = await stop_agent(agent)
    assert code == 0
    assert name not in await registered_agents(setup.cluster)


# --- drain and cancellation, at the stream level -------------------------------------------


def holding_worker(directory: Path, hold: Path) -> Path:
    """node_worker.js, slowed to 20 ms a candidate while the file `hold` exists: a batch stays
    held as long as a test needs, then finishes at full speed once `hold` is removed."""
    worker = directory / "holding_worker.js"
    worker.write_text(
        '"use strict";\n'
        'const fs = require("node:fs");\n'
        f"const real = require({str(ORACLES_DIR / 'node_worker.js')!r});\n"
        "const cell = new Int32Array(new SharedArrayBuffer(4));\n"
        "function judge(request) {\n"
        f"  if (fs.existsSync({str(hold)!r})) Atomics.wait(cell, 0, 0, 20);\n"
        "  return real.judge(request);\n"
        "}\n"
        "module.exports = { ...real, judge };\n"
    )
    return worker


HELD = ["--capacity", "2048", "--stream-share", "1", "--cache-entries", "0"]


async def test_sigterm_answers_the_held_batch_grants_nothing_and_ends_the_stream(
    setup: Setup,
) -> None:
    hold = setup.tmp / "hold"
    hold.touch()
    worker = holding_worker(setup.tmp, hold)
    agent = await start_agent(
        setup.cluster, setup.processes, setup.config_hash,
        extra=[*HELD, "--ttl", "3", "--grace", "60"], env={"HELIX_NODE_WORKER": str(worker)},
    )  # fmt: skip
    node = oracle_stub(setup, agent.address)
    call = node.VerifyStream()
    await call.write(_open())
    assert (await _read(call)).credit.candidates == 2048
    await call.write(_batch(1, *range(1024)))  # 20 s while held
    await call.write(_batch(2, *range(10)))
    # The small batch is answered and its credit given back while the big one is held.
    assert (await _read(call)).verdicts.batch_id == 2
    assert (await _read(call)).credit.candidates == 10

    # The heartbeats carry the load: the stream holds the whole capacity.
    async def loaded() -> registry_pb2.Agent | None:
        record = await _agent_record(setup, "agents/node-oracle-1")
        return record if record.load.in_flight > 0 else None

    record = await eventually(loaded, within=30, what="a heartbeat with the agent's load")
    assert (record.load.in_flight, record.load.utilization) == (2048, 1.0)
    agent.send_signal(signal.SIGTERM)
    await eventually(
        lambda: "draining:" in agent.stderr_text(), within=30, what="the agent draining"
    )
    # Draining: NOT_SERVING, new streams refused, while batch 1 is still held.
    plain = grpc.aio.insecure_channel(agent.address)
    try:
        health = health_pb2_grpc.HealthStub(plain)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="helix.v1.OracleService"))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await plain.close()
    late = node.VerifyStream()
    await late.write(_open())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await late.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(caught.value)[0] == "ORACLE_DRAINING"
    assert agent.running
    hold.unlink()  # batch 1 finishes now
    # Its verdicts arrive, then no credit: the stream ends UNAVAILABLE, ORACLE_DRAINING.
    message = await _read(call)
    assert message.verdicts.batch_id == 1
    assert [v.candidate_id for v in message.verdicts.verdicts] == [
        candidate(f).id for f in range(1024)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # not a message: no credit
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    assert details(caught.value)[0] == "ORACLE_DRAINING"
    assert await agent.wait(within=STOP_WITHIN) == 0
    found = SUMMARY.match(agent.lines[-1])
    assert found, agent.describe("printed no summary")
    assert int(found[1]) == 1034
    assert "agents/node-oracle-1" not in await registered_agents(setup.cluster)


async def test_a_cancelled_streams_batch_stops_being_judged(setup: Setup) -> None:
    hold = setup.tmp / "hold"
    hold.touch()
    worker = holding_worker(setup.tmp, hold)
    agent = await start_agent(
        setup.cluster, setup.processes, setup.config_hash, extra=HELD,
        env={"HELIX_NODE_WORKER": str(worker)},
    )  # fmt: skip
    call = oracle_stub(setup, agent.address).VerifyStream()
    await call.write(_open())
    assert (await _read(call)).credit.candidates == 2048
    await call.write(_batch(1, *range(1024)))  # 20 s while held
    call.cancel()
    await eventually(
        lambda: "batch 1 stopped being judged" in agent.stderr_text(),
        within=30,
        what="the cancelled batch stopping",
    )
    hold.unlink()
    # Its window is back: a new stream gets the whole capacity.
    again = oracle_stub(setup, agent.address).VerifyStream()
    await again.write(_open())
    assert (await _read(again)).credit.candidates == 2048
    again.cancel()
    code, verified, judged = await stop_agent(agent)
    assert code == 0
    assert verified == 0
    assert judged < 1024, f"{judged} of the cancelled batch's 1024 candidates were judged"
