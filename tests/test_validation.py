"""Pure request validators: every rule reported with its field path, and no input raises."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.json_format import ParseDict
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.common import pages
from helix.common import validation as common
from helix.common.errors import FieldViolation
from helix.generator import validation as generator
from helix.generator.parent_records import ParentRecords
from helix.genome import validation as genome_validation
from helix.genome.codec import varint
from helix.oracle import validation as oracle
from helix.orchestrator import validation as orchestrator
from helix.registry import labels
from helix.registry import validation as registry

Check = Callable[[Any], list[FieldViolation]]

# The example of candidate.proto: a genome and its content-hash id.
GENOME = candidate_pb2.Genome(
    reals=[0.5, -1.0, 2.5],
    integers=[7],
    choices=[1],
    bits=b"\xfd\x01",
    permutations=[2, 0, 1],
    sequence_lengths=[7],
    sequences=bytes([2, 0, 3, 3, 0, 1, 0]),
)
CANDIDATE_ID = "00e8b319e29f65b5b4dd2afee149c8ac"
UNKNOWN_FIELD_111 = b"\xf8\x06\x01"  # field 111, varint 1: in no Helix message


def enum_number(value: int) -> Any:
    """An enum field's number, known to the schema or not, as the typed stubs let it pass."""
    return value


def make_dna(**overrides: Any) -> dna_pb2.Dna:
    document: dict[str, Any] = {
        "name": "dnas/rastrigin-10d",
        "genes": [
            {"name": "x", "real": {"low": -5.12, "high": 5.12, "size": 10}},
            {"name": "layers", "integer": {"low": 1, "high": 8}},
            {"name": "optimizer", "choice": {"options": ["adam", "sgd", "rmsprop"]}},
            {"name": "mask", "bits": {"size": 64}},
            {"name": "route", "permutation": {"size": 52}},
            {
                "name": "primer",
                "sequence": {"alphabet": "ACGT", "min_length": 18, "max_length": 24},
            },
        ],
        "strategy": {
            "alpha": {
                "population_size": 64,
                "elitism": 2,
                "tournament_size": 3,
                "crossover_rate": 0.9,
                "mutation_rate": 0.1,
                "real": {"crossover": "NUMERIC_CROSSOVER_BLEND", "blend_alpha": 0.5},
                "sequence": {"insertion_rate": 0.05},
            }
        },
    }
    document.update(overrides)
    return ParseDict(document, dna_pb2.Dna())


def candidate(**overrides: Any) -> candidate_pb2.Candidate:
    fields: dict[str, Any] = {"id": CANDIDATE_ID, "genome": GENOME}
    fields.update(overrides)
    return candidate_pb2.Candidate(**fields)


def assert_violations(found: Sequence[FieldViolation], expected: dict[str, Any]) -> None:
    """`found` names exactly the paths of `expected`; each path's descriptions hold its words."""
    assert all(isinstance(v, FieldViolation) for v in found)
    by_path: dict[str, list[str]] = defaultdict(list)
    for violation in found:
        by_path[violation.field].append(violation.description)
    assert set(by_path) == set(expected), found
    for path, words in expected.items():
        text = " | ".join(by_path[path])
        for word in (words,) if isinstance(words, str) else words:
            assert word in text, (path, text)


# --- valid requests -----------------------------------------------------------------------

AGENT = registry_pb2.Agent(
    kind=registry_pb2.AGENT_KIND_GENERATOR,
    endpoint="generator-0.helix.svc.cluster.local:50051",
    labels={"team": "search", "helix.dev/zone": "eu-west_1", "gpu": ""},
    health=registry_pb2.AGENT_HEALTH_SERVING,
    load=registry_pb2.AgentLoad(in_flight=3, queued=1, utilization=0.25),
    capacity=16,
    ttl=Duration(seconds=10),
    generator=registry_pb2.GeneratorDetails(
        strategies=["alpha", "random"], dnas=["dnas/rastrigin-10d"]
    ),
    # Output-only fields are ignored on register.
    name="whatever you like",
    epoch=-5,
    owner="someone",
)

VALID: dict[str, tuple[Check, Message]] = {
    "RegisterAgent": (
        registry.check_register_agent_request,
        registry_pb2.RegisterAgentRequest(agent_id="gen-1", agent=AGENT, request_id="req_1-A"),
    ),
    "Heartbeat": (
        registry.check_heartbeat_request,
        registry_pb2.HeartbeatRequest(
            name="agents/gen-1",
            epoch=3,
            health=registry_pb2.AGENT_HEALTH_DEGRADED,
            load=registry_pb2.AgentLoad(utilization=1.0),
        ),
    ),
    "UpdateAgent": (
        registry.check_update_agent_request,
        registry_pb2.UpdateAgentRequest(
            agent=registry_pb2.Agent(
                name="agents/gen-1",
                etag="e1",
                endpoint="10.0.0.7:50051",
                labels={"team": "b"},
                health=registry_pb2.AGENT_HEALTH_NOT_SERVING,
                capacity=100_000,
                kind=enum_number(99),  # not in the mask: not read
            ),
            update_mask=FieldMask(paths=["endpoint", "labels", "health", "capacity"]),
        ),
    ),
    "DeregisterAgent": (
        registry.check_deregister_agent_request,
        registry_pb2.DeregisterAgentRequest(name="agents/gen-1", etag="abc"),
    ),
    "GetAgent": (
        registry.check_get_agent_request,
        registry_pb2.GetAgentRequest(name="agents/o"),
    ),
    "ListAgents": (
        registry.check_list_agents_request,
        registry_pb2.ListAgentsRequest(
            page_size=5000,  # coerced to 1000, not rejected
            page_token="t" * 1024,
            kind=registry_pb2.AGENT_KIND_ORACLE,
            label_selector="team=search, tier!=dev,zone==eu,gpu,!legacy,helix.dev/x=y",
            health=registry_pb2.AGENT_HEALTH_SERVING,
        ),
    ),
    "WatchAgents": (
        registry.check_watch_agents_request,
        registry_pb2.WatchAgentsRequest(
            start_revision=42, label_selector="team", progress_notify=True
        ),
    ),
    "ListDnas": (generator.check_list_dnas_request, generator_pb2.ListDnasRequest(page_size=10)),
    "GetDna": (generator.check_get_dna_request, generator_pb2.GetDnaRequest(name="dnas/x-1")),
    "ValidateDna": (
        generator.check_validate_dna_request,
        generator_pb2.ValidateDnaRequest(text="name: dnas/x\ngenes: []\n", filename="x.yaml"),
    ),
    "Generate": (
        generator.check_generate_request,
        generator_pb2.GenerateRequest(
            dna_name="dnas/rastrigin-10d",
            parents=[
                candidate_pb2.ScoredCandidate(
                    candidate=candidate(generation=3, parent_ids=[CANDIDATE_ID]),
                    verdict=candidate_pb2.Verdict(
                        candidate_id=CANDIDATE_ID,
                        status=candidate_pb2.VERDICT_STATUS_PASSED,
                        score=1.5,
                    ),
                ),
                candidate_pb2.ScoredCandidate(candidate=candidate(id="")),
            ],
            objective=common_pb2.OBJECTIVE_MINIMIZE,
            count=1_000_000,
            seed=0,
            generation=4,
            batch_size=10_000,
        ),
    ),
    "ListOracles": (oracle.check_list_oracles_request, oracle_pb2.ListOraclesRequest()),
    "GetOracle": (
        oracle.check_get_oracle_request,
        oracle_pb2.GetOracleRequest(name="oracles/sphere"),
    ),
    "Verify": (
        oracle.check_verify_request,
        oracle_pb2.VerifyRequest(
            oracle="oracles/sphere",
            dna=make_dna(),
            candidates=[candidate(), candidate(id="")],
            timeout=Duration(nanos=1),
        ),
    ),
    "VerifyStream": (
        oracle.check_first_verify_stream_request,
        oracle_pb2.VerifyStreamRequest(
            open=oracle_pb2.VerifyStreamOpen(oracle="oracles/sphere", dna=make_dna(name=""))
        ),
    ),
    "CreateRun": (
        orchestrator.check_create_run_request,
        orchestrator_pb2.CreateRunRequest(
            run=orchestrator_pb2.Run(
                display_name="Rastrigin 10-D",
                dna=make_dna(),
                oracle="oracles/rastrigin",
                objective=common_pb2.OBJECTIVE_MINIMIZE,
                budget=orchestrator_pb2.RunBudget(max_duration=Duration(seconds=30 * 86_400)),
                target_score=0.0,
                seed=7,
                state=orchestrator_pb2.RUN_STATE_FAILED,  # output only: ignored
            ),
            run_id="run-1",
            request_id="5f0c1a0e-3b8e-4a5e-9d2c-1f2e3d4c5b6a",
        ),
    ),
    "GetRun": (orchestrator.check_get_run_request, orchestrator_pb2.GetRunRequest(name="runs/r")),
    "ListRuns": (
        orchestrator.check_list_runs_request,
        orchestrator_pb2.ListRunsRequest(page_size=0, state=orchestrator_pb2.RUN_STATE_RUNNING),
    ),
    "CancelRun": (
        orchestrator.check_cancel_run_request,
        orchestrator_pb2.CancelRunRequest(name="runs/r", etag="x" * 64),
    ),
    "WatchRun": (
        orchestrator.check_watch_run_request,
        orchestrator_pb2.WatchRunRequest(name="runs/r", after_sequence=0),
    ),
    "ListRunCandidates": (
        orchestrator.check_list_run_candidates_request,
        orchestrator_pb2.ListRunCandidatesRequest(
            name="runs/r", page_size=1, status=candidate_pb2.VERDICT_STATUS_FAILED
        ),
    ),
}


@pytest.mark.parametrize("rpc", sorted(VALID))
def test_a_valid_request_has_no_violations(rpc: str) -> None:
    check, request = VALID[rpc]
    assert check(request) == []


def test_the_valid_dna_example_of_dna_proto_passes() -> None:
    assert genome_validation.check_dna(make_dna(), "dna") == []
    assert genome_validation.check_dna(make_dna(name="", strategy={"random": {}}), "") == []


def test_a_later_verify_stream_batch_is_valid() -> None:
    message = oracle_pb2.VerifyStreamRequest(
        batch=oracle_pb2.VerifyBatch(batch_id=1, candidates=[candidate()])
    )
    assert oracle.check_verify_stream_request(message, first=False) == []


# --- every broken rule, with its path -----------------------------------------------------


def test_register_agent_reports_every_violation() -> None:
    request = registry_pb2.RegisterAgentRequest(
        agent_id="Gen_1",
        request_id="has space",
        agent=registry_pb2.Agent(
            kind=registry_pb2.AGENT_KIND_ORCHESTRATOR,
            endpoint="::1:50051",
            labels={"-team": "ok", "a/b/c": "", "ok": "not ok", "": ""},
            health=enum_number(9),
            load=registry_pb2.AgentLoad(utilization=math.nan),
            capacity=0,
            ttl=Duration(seconds=1, nanos=-1),
            oracle=registry_pb2.OracleDetails(oracles=["sphere"]),
        ),
    )
    assert_violations(
        registry.check_register_agent_request(request),
        {
            "agent_id": "must match [a-z][a-z0-9-]{0,62}",
            "request_id": "must match [A-Za-z0-9_-]+",
            "agent.endpoint": "bracket",
            'agent.labels["-team"]': "key name must match",
            'agent.labels["a/b/c"]': "key prefix",
            'agent.labels["ok"]': "value must be empty or match",
            'agent.labels[""]': "key name must not be empty",
            "agent.health": ("must be one of", "got 9"),
            "agent.load.utilization": "must be within 0..1",
            "agent.capacity": "must be within 1..100000",
            "agent.ttl": "must be a valid duration",
            "agent.oracle.oracles[0]": 'resource name "oracles/{id}"',
            "agent.oracle": "only be set when kind is AGENT_KIND_ORACLE",
        },
    )


def test_register_agent_requires_agent_kind_endpoint_capacity_and_request_id() -> None:
    assert_violations(
        registry.check_register_agent_request(registry_pb2.RegisterAgentRequest()),
        {"request_id": "must not be empty", "agent": "must be set"},
    )
    request = registry_pb2.RegisterAgentRequest(request_id="r", agent=registry_pb2.Agent())
    assert_violations(
        registry.check_register_agent_request(request),
        {
            "agent.kind": "must be set (not AGENT_KIND_UNSPECIFIED)",
            "agent.endpoint": "must not be empty",
            "agent.capacity": "must be within 1..100000",
        },
    )


def test_register_agent_clamps_rather_than_rejects_a_ttl() -> None:
    agent = registry_pb2.Agent()
    agent.CopyFrom(AGENT)
    for seconds in (-5, 0, 1, 10**6):
        agent.ttl.seconds = seconds
        request = registry_pb2.RegisterAgentRequest(agent=agent, request_id="r")
        assert registry.check_register_agent_request(request) == []
    assert registry.granted_ttl_seconds(None) == 10.0
    assert registry.granted_ttl_seconds(Duration(seconds=1)) == 2.0
    assert registry.granted_ttl_seconds(Duration(seconds=30, nanos=500_000_000)) == 30.5
    assert registry.granted_ttl_seconds(Duration(seconds=3600)) == 300.0
    limits = registry.RegistryLimits(min_ttl_seconds=5, max_ttl_seconds=3600)
    assert registry.granted_ttl_seconds(Duration(seconds=3600), limits) == 3600.0


def test_registry_details_caps() -> None:
    agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_GENERATOR,
        endpoint="[::1]:1",
        capacity=1,
        labels={f"k{i}": "v" for i in range(65)},
        generator=registry_pb2.GeneratorDetails(
            strategies=["alpha"] * 16 + ["Bad"], dnas=["dnas/a", "agents/a"]
        ),
    )
    request = registry_pb2.RegisterAgentRequest(agent=agent, request_id="r")
    assert_violations(
        registry.check_register_agent_request(request),
        {
            "agent.labels": "must have at most 64 entries",
            "agent.generator.strategies": "must have at most 16 entries",
            "agent.generator.dnas[1]": 'resource name "dnas/{id}"',
        },
    )


def test_heartbeat_reports_every_violation() -> None:
    request = registry_pb2.HeartbeatRequest(
        name="agent/x",
        epoch=0,
        health=enum_number(-1),
        load=registry_pb2.AgentLoad(utilization=1.5),
    )
    assert_violations(
        registry.check_heartbeat_request(request),
        {
            "name": 'resource name "agents/{id}"',
            "epoch": "must be at least 1",
            "health": "must be one of",
            "load.utilization": "must be within 0..1",
        },
    )
    assert_violations(
        registry.check_heartbeat_request(registry_pb2.HeartbeatRequest()),
        {"name": "must not be empty", "epoch": "at least 1"},
    )


def test_update_agent_reports_every_violation() -> None:
    request = registry_pb2.UpdateAgentRequest(
        agent=registry_pb2.Agent(
            name="",
            etag="e" * 65,
            endpoint="host:0",
            health=registry_pb2.AGENT_HEALTH_UNSPECIFIED,
            capacity=100_001,
            kind=enum_number(0),
        ),
        update_mask=FieldMask(paths=["endpoint", "kind", "health", "capacity", "owner"]),
    )
    assert_violations(
        registry.check_update_agent_request(request),
        {
            "update_mask.paths[1]": ('"kind" cannot be updated', "allowed:"),
            "update_mask.paths[4]": '"owner" cannot be updated',
            "agent.name": "must not be empty",
            "agent.etag": "must be at most 64 characters",
            "agent.endpoint": "port must be a number within 1..65535",
            "agent.health": "must be set (not AGENT_HEALTH_UNSPECIFIED)",
            "agent.capacity": "must be within 1..100000",
        },
    )


def test_update_agent_requires_a_mask_and_an_agent_and_expands_star() -> None:
    assert_violations(
        registry.check_update_agent_request(registry_pb2.UpdateAgentRequest()),
        {"update_mask.paths": "must not be empty", "agent": "must be set"},
    )
    request = registry_pb2.UpdateAgentRequest(
        agent=registry_pb2.Agent(name="agents/a"), update_mask=FieldMask(paths=["*"])
    )
    assert_violations(
        registry.check_update_agent_request(request),
        {
            "agent.endpoint": "must not be empty",
            "agent.health": "must be set",
            "agent.capacity": "must be within 1..100000",
        },
    )


def test_deregister_get_list_and_watch_agents_report_every_violation() -> None:
    assert_violations(
        registry.check_deregister_agent_request(
            registry_pb2.DeregisterAgentRequest(name="agents/-x", etag="e" * 100)
        ),
        {"name": "resource name", "etag": "at most 64 characters"},
    )
    assert_violations(
        registry.check_get_agent_request(registry_pb2.GetAgentRequest(name="agents/" + "a" * 64)),
        {"name": "resource name"},
    )
    assert_violations(
        registry.check_list_agents_request(
            registry_pb2.ListAgentsRequest(
                page_size=-1,
                page_token="t" * 1025,
                kind=enum_number(4),
                label_selector="team=,=x,,a b",
                health=enum_number(17),
            )
        ),
        {
            "page_size": "must not be negative",
            "page_token": "at most 1024 characters",
            "kind": "got 4",
            "label_selector": ("key name must not be empty", "empty requirement", '"a b"'),
            "health": "got 17",
        },
    )
    assert_violations(
        registry.check_watch_agents_request(
            registry_pb2.WatchAgentsRequest(
                start_revision=-1, kind=enum_number(-2), label_selector="x" * 1025
            )
        ),
        {
            "start_revision": "must not be negative",
            "kind": "got -2",
            "label_selector": "at most 1024 characters",
        },
    )


def test_generator_requests_report_every_violation() -> None:
    assert_violations(
        generator.check_list_dnas_request(
            generator_pb2.ListDnasRequest(page_size=-5, page_token="t" * 2000)
        ),
        {"page_size": "must not be negative", "page_token": "at most 1024"},
    )
    assert_violations(
        generator.check_get_dna_request(generator_pb2.GetDnaRequest(name="dna/x")),
        {"name": 'resource name "dnas/{id}"'},
    )
    assert_violations(
        generator.check_validate_dna_request(generator_pb2.ValidateDnaRequest(filename="f" * 1025)),
        {"source": "must set one of dna, text", "filename": "at most 1024 characters"},
    )
    assert_violations(
        generator.check_validate_dna_request(generator_pb2.ValidateDnaRequest(text="")),
        {"text": "must not be empty"},
    )
    too_big = "é" * (1 << 19) + "x"  # 1 MiB + 1 byte of UTF-8 in 2^19 + 1 characters
    assert_violations(
        generator.check_validate_dna_request(generator_pb2.ValidateDnaRequest(text=too_big)),
        {"text": "at most 1048576 bytes"},
    )
    assert (
        generator.check_validate_dna_request(generator_pb2.ValidateDnaRequest(text="é" * (1 << 19)))
        == []
    )


def test_validate_dna_leaves_the_dna_to_the_response() -> None:
    broken = dna_pb2.Dna.FromString(dna_pb2.Dna(name="BAD").SerializeToString() + UNKNOWN_FIELD_111)
    request = generator_pb2.ValidateDnaRequest(dna=broken)
    assert generator.check_validate_dna_request(request) == []
    with_unknown = generator_pb2.ValidateDnaRequest.FromString(
        request.SerializeToString() + UNKNOWN_FIELD_111
    )
    assert_violations(generator.check_validate_dna_request(with_unknown), {"111": "unknown field"})


def test_generate_reports_every_violation() -> None:
    request = generator_pb2.GenerateRequest(
        dna=make_dna(genes=[]),
        parents=[
            candidate_pb2.ScoredCandidate(
                candidate=candidate(id="ABC"),
                verdict=candidate_pb2.Verdict(
                    candidate_id="f" * 32, status=enum_number(7), score=math.inf
                ),
            ),
            candidate_pb2.ScoredCandidate(),
            candidate_pb2.ScoredCandidate(candidate=candidate_pb2.Candidate()),
        ],
        objective=common_pb2.OBJECTIVE_UNSPECIFIED,
        count=0,
        batch_size=10_001,
    )
    assert_violations(
        generator.check_generate_request(request),
        {
            "dna.genes": "must not be empty",
            "parents[0].candidate.id": "32 lowercase hex characters",
            "parents[0].verdict.candidate_id": "must equal candidate.id",
            "parents[0].verdict.status": "got 7",
            "parents[0].verdict.score": "must be finite",
            "parents[1].candidate": "must be set",
            "parents[2].candidate.genome": "must be set",
            "objective": "must be set (not OBJECTIVE_UNSPECIFIED)",
            "count": "must be within 1..1000000",
            "batch_size": "must be at most 10000",
        },
    )
    assert_violations(
        generator.check_generate_request(
            generator_pb2.GenerateRequest(count=1, objective=enum_number(9))
        ),
        {"dna_source": "must set one of dna_name, dna"},  # objective is ignored without parents
    )


def test_generate_honours_its_limits() -> None:
    limits = generator.GeneratorLimits(max_parents=1, max_count=10)
    parent = candidate_pb2.ScoredCandidate(candidate=candidate())
    request = generator_pb2.GenerateRequest(
        dna_name="dnas/x",
        parents=[parent, parent],
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        count=11,
    )
    assert_violations(
        generator.check_generate_request(request, limits),
        {"parents": "must have at most 1 entries", "count": "must be within 1..10"},
    )
    with pytest.raises(ValueError, match="max_count"):
        generator.GeneratorLimits(max_count=0)


def test_oracle_requests_report_every_violation() -> None:
    assert_violations(
        oracle.check_list_oracles_request(oracle_pb2.ListOraclesRequest(page_size=-1)),
        {"page_size": "must not be negative"},
    )
    assert_violations(
        oracle.check_get_oracle_request(oracle_pb2.GetOracleRequest()),
        {"name": "must not be empty"},
    )
    request = oracle_pb2.VerifyRequest(
        oracle="sphere",
        candidates=[
            candidate(),
            candidate(id="x" * 32, genome=candidate_pb2.Genome(reals=[math.nan])),
        ],
        timeout=Duration(seconds=0),
    )
    assert_violations(
        oracle.check_verify_request(request),
        {
            "oracle": 'resource name "oracles/{id}"',
            "dna": "must be set",
            "candidates[1].id": "32 lowercase hex",
            "candidates[1].genome.reals[0]": "must be finite",
            "timeout": "must be greater than 0s",
        },
    )
    assert_violations(
        oracle.check_verify_request(oracle_pb2.VerifyRequest(oracle="oracles/o", dna=make_dna())),
        {"candidates": "must not be empty"},
    )
    limits = oracle.OracleLimits(max_candidates=1)
    request = oracle_pb2.VerifyRequest(
        oracle="oracles/o", dna=make_dna(), candidates=[candidate(), candidate()]
    )
    assert_violations(
        oracle.check_verify_request(request, limits),
        {"candidates": "must have at most 1 entries (got 2)"},
    )


def test_verify_stream_opens_first_and_only_first() -> None:
    batch = oracle_pb2.VerifyStreamRequest(batch=oracle_pb2.VerifyBatch(batch_id=0))
    assert_violations(
        oracle.check_verify_stream_request(batch, first=True),
        {
            "open": "must be set in the first message",
            "batch.batch_id": "must be set (not 0)",
            "batch.candidates": "must not be empty",
        },
    )
    opening = oracle_pb2.VerifyStreamRequest(
        open=oracle_pb2.VerifyStreamOpen(oracle="oracles/o", timeout=Duration(seconds=-1))
    )
    assert_violations(
        oracle.check_verify_stream_request(opening, first=False),
        {
            "open": "must be sent only once",
            "open.dna": "must be set",
            "open.timeout": "greater than 0s",
        },
    )
    empty = oracle_pb2.VerifyStreamRequest()
    assert_violations(oracle.check_verify_stream_request(empty, True), {"open": "must be set"})
    assert_violations(oracle.check_verify_stream_request(empty, False), {"batch": "must be set"})
    assert oracle.CHECKS["VerifyStream"](batch) == oracle.check_verify_stream_request(batch, True)


def test_create_run_reports_every_violation() -> None:
    request = orchestrator_pb2.CreateRunRequest(
        run=orchestrator_pb2.Run(
            display_name="d" * 257,
            dna_name="rastrigin",
            oracle="",
            objective=enum_number(5),
            budget=orchestrator_pb2.RunBudget(
                max_evaluations=10**12 + 1,
                max_generations=10**6 + 1,
                max_duration=Duration(seconds=30 * 86_400 + 1),
            ),
            target_score=math.nan,
        ),
        run_id="Run 1",
        request_id="r" * 65,
    )
    assert_violations(
        orchestrator.check_create_run_request(request),
        {
            "run.display_name": "at most 256 characters",
            "run.dna_name": 'resource name "dnas/{id}"',
            "run.oracle": "must not be empty",
            "run.objective": "got 5",
            "run.budget.max_evaluations": "must be within 0..1000000000000",
            "run.budget.max_generations": "must be within 0..1000000",
            "run.budget.max_duration": "must be within 0s..30d",
            "run.target_score": "must be finite",
            "run_id": "must match",
            "request_id": "at most 64 characters",
        },
    )


def test_create_run_needs_a_run_with_a_dna_and_a_budget_limit() -> None:
    assert_violations(
        orchestrator.check_create_run_request(orchestrator_pb2.CreateRunRequest()),
        {"run": "must be set", "request_id": "must not be empty"},
    )
    request = orchestrator_pb2.CreateRunRequest(
        request_id="r",
        run=orchestrator_pb2.Run(
            oracle="oracles/o",
            objective=common_pb2.OBJECTIVE_MAXIMIZE,
            budget=orchestrator_pb2.RunBudget(max_duration=Duration()),
        ),
    )
    assert_violations(
        orchestrator.check_create_run_request(request),
        {"run.dna_source": "must set one of dna_name, dna", "run.budget": "at least one limit"},
    )
    request.run.ClearField("budget")
    request.run.dna.CopyFrom(make_dna(genes=[{"name": "x"}]))
    assert_violations(
        orchestrator.check_create_run_request(request),
        {"run.budget": "must be set", "run.dna.genes[0]": "must set a kind"},
    )


def test_other_orchestrator_requests_report_every_violation() -> None:
    assert_violations(
        orchestrator.check_get_run_request(orchestrator_pb2.GetRunRequest(name="runs/")),
        {"name": 'resource name "runs/{id}"'},
    )
    assert_violations(
        orchestrator.check_list_runs_request(
            orchestrator_pb2.ListRunsRequest(page_size=-2, state=enum_number(6))
        ),
        {"page_size": "must not be negative", "state": "got 6"},
    )
    assert_violations(
        orchestrator.check_cancel_run_request(
            orchestrator_pb2.CancelRunRequest(name="runs/R", etag="e" * 65)
        ),
        {"name": "resource name", "etag": "at most 64"},
    )
    assert_violations(
        orchestrator.check_watch_run_request(orchestrator_pb2.WatchRunRequest(after_sequence=-1)),
        {"name": "must not be empty", "after_sequence": "must not be negative"},
    )
    assert_violations(
        orchestrator.check_list_run_candidates_request(
            orchestrator_pb2.ListRunCandidatesRequest(
                name="runs/r", page_size=-1, page_token="p" * 1025, status=enum_number(5)
            )
        ),
        {"page_size": "negative", "page_token": "at most 1024", "status": "got 5"},
    )


# --- DNA, genome and candidate structure --------------------------------------------------


def test_check_dna_reports_every_structural_violation() -> None:
    dna = make_dna(
        name="dnas/Bad",
        description="d" * 4097,
        genes=[
            {"name": "x", "real": {"low": 5, "high": -1}},
            {"name": "x", "real": {"low": -1e308, "high": 1e308, "log_scale": True}},
            {"name": "Bad", "integer": {"low": str(2**53 + 1), "high": 0, "size": 100_001}},
            {"name": "c", "choice": {"options": ["a", "a", "", "o" * 129]}},
            {"name": "e", "choice": {}},
            {"name": "b", "bits": {"size": 0}},
            {"name": "p", "permutation": {"size": 1}},
            {"name": "s", "sequence": {"alphabet": "ACCA", "min_length": 5, "max_length": 4}},
            {"name": "t", "sequence": {"alphabet": "", "max_length": 0}},
            {"name": "k"},
        ],
        strategy={
            "alpha": {
                "population_size": 1,
                "elitism": 1,
                "tournament_size": 2,
                "mutation_rate": -0.1,
                "real": {"gaussian_sigma": 0, "sbx_eta": 1001, "bounds": 7},
                "integer": {"polynomial_eta": "NaN"},
                "choice": {"gene_mutation_rate": 2},
                "bits": {"flip_rate": "Infinity"},
                "permutation": {"mutation": 3},
                "sequence": {"deletion_rate": 1.01},
            }
        },
    )
    alpha = "dna.strategy.alpha"
    assert_violations(
        genome_validation.check_dna(dna, "dna"),
        {
            "dna.name": 'resource name "dnas/{id}"',
            "dna.description": "at most 4096 characters",
            "dna.genes[0].real.low": "must be <= high",
            "dna.genes[1].name": "must be unique within the DNA (same as genes[0].name)",
            "dna.genes[1].real.high": "high - low must be finite",
            "dna.genes[1].real.low": "must be > 0 when log_scale is set",
            "dna.genes[2].name": "must match [a-z_][a-z0-9_]{0,62}",
            "dna.genes[2].integer.low": ("must be within -9007199254740992..", "<= high"),
            "dna.genes[2].integer.size": "must be at most 100000",
            "dna.genes[3].choice.options[1]": "must be unique (same as options[0])",
            "dna.genes[3].choice.options[2]": "must not be empty",
            "dna.genes[3].choice.options[3]": "at most 128 characters",
            "dna.genes[4].choice.options": "must not be empty",
            "dna.genes[5].bits.size": "must be within 1..1000000",
            "dna.genes[6].permutation.size": "must be within 2..100000",
            "dna.genes[7].sequence.alphabet": 'must not repeat symbols ("A", "C")',
            "dna.genes[7].sequence.min_length": "must be <= max_length",
            "dna.genes[8].sequence.alphabet": "must not be empty",
            "dna.genes[8].sequence.max_length": "must be within 1..100000",
            "dna.genes[9]": "must set a kind",
            f"{alpha}.population_size": "must be 0 (meaning 64) or within 2..100000",
            f"{alpha}.elitism": "at most population_size - 1",
            f"{alpha}.tournament_size": "within 1..population_size",
            f"{alpha}.mutation_rate": "must be within 0..1",
            f"{alpha}.real.gaussian_sigma": "greater than 0 and at most 10",
            f"{alpha}.real.sbx_eta": "must be within 0..1000",
            f"{alpha}.real.bounds": "got 7",
            f"{alpha}.integer.polynomial_eta": "must be within 0..1000",
            f"{alpha}.choice.gene_mutation_rate": "must be within 0..1",
            f"{alpha}.bits.flip_rate": "must be within 0..1",
            f"{alpha}.permutation.mutation": "got 3",
            f"{alpha}.sequence.deletion_rate": "must be within 0..1",
        },
    )


def test_check_dna_caps_gene_count_and_genome_budget() -> None:
    genes = [{"name": f"g{i}", "real": {"low": 0, "high": 1, "size": 100_000}} for i in range(257)]
    assert_violations(
        genome_validation.check_dna(make_dna(genes=genes, strategy=None), ""),
        {"genes": ("must have at most 256 entries", "worst-case genome size")},
    )
    two = [{"name": f"g{i}", "real": {"low": 0, "high": 1, "size": 65_536}} for i in range(2)]
    dna = make_dna(genes=two)
    assert genome_validation.genome_budget(dna) == 8 * 2 * 65_536
    assert genome_validation.check_dna(dna, "") == []
    dna.genes.add(name="b", bits=dna_pb2.BitsGene(size=1))
    assert_violations(genome_validation.check_dna(dna, ""), {"genes": "at most 1048576 bytes"})


def test_check_genome_reports_structural_problems() -> None:
    genome = candidate_pb2.Genome(
        reals=[1.0, math.nan, 2.0, -math.inf],
        integers=[2**53, -(2**53) - 1],
        choices=[0, 1024],
        permutations=[100_000],
        sequence_lengths=[3, 100_001],
        sequences=b"\x00\x01",
    )
    assert_violations(
        genome_validation.check_genome(genome, "genome"),
        {
            "genome.reals[1]": ("must be finite", "2 values break this rule"),
            "genome.integers[1]": "must be within -9007199254740992..9007199254740992",
            "genome.choices[1]": "below 1024",
            "genome.permutations[0]": "below 100000",
            "genome.sequence_lengths[1]": "at most 100000",
            "genome.sequences": "sum(sequence_lengths) = 100004 bytes, got 2",
        },
    )
    huge = candidate_pb2.Genome(reals=[0.0] * (131_072 + 1))
    assert_violations(
        genome_validation.check_genome(huge, "g"), {"g": "at most 1048576 bytes (1 MiB)"}
    )
    assert genome_validation.check_genome(candidate_pb2.Genome(reals=[0.0] * 131_072), "g") == []
    assert genome_validation.check_candidate(candidate(), "c") == []


# --- primitives ---------------------------------------------------------------------------


def test_check_string_and_names() -> None:
    assert common.check_string("", "f", required=False, max_len=3) == []
    assert_violations(
        common.check_string("", "f", required=True, max_len=3), {"f": "must not be empty"}
    )
    assert_violations(
        common.check_string("abcd", "f", required=True, max_len=3),
        {"f": "must be at most 3 characters"},
    )
    # Lengths count code points, not bytes.
    assert common.check_string("ééé", "f", required=True, max_len=3) == []
    assert_violations(
        common.check_string("ab1", "f", required=True, max_len=9, pattern="[a-z]+"),
        {"f": "must match [a-z]+"},
    )
    assert common.check_resource_name("agents/a", "agents", "n") == []
    assert common.check_resource_name("agents/a-" + "b" * 61, "agents", "n") == []
    assert common.check_resource_name("", "agents", "n", required=False) == []
    for bad in ("agents/", "agents/A", "agents/1a", "agents/a/b", "runs/a", "agents/a\n", "a"):
        assert_violations(
            common.check_resource_name(bad, "agents", "n"), {"n": "must be a resource"}
        )
    assert_violations(common.check_resource_id("a" * 64, "id"), {"id": "at most 63 characters"})
    assert common.check_request_id("A-z_09", "r") == []
    assert_violations(common.check_request_id("a.b", "r"), {"r": "must match [A-Za-z0-9_-]+"})


def test_check_repeated_len_page_and_numbers() -> None:
    assert common.check_repeated_len([1, 2], "r", 2) == []
    assert_violations(common.check_repeated_len([], "r", 2, 1), {"r": "must not be empty"})
    assert_violations(common.check_repeated_len([1], "r", 2, 2), {"r": "at least 2 entries"})
    assert_violations(
        common.check_repeated_len([1, 2, 3], "r", 2), {"r": "at most 2 entries (got 3)"}
    )
    assert_violations(
        common.check_page(-1, "t" * 1025, "list."),
        {"list.page_size": "must not be negative", "list.page_token": "at most 1024"},
    )
    assert common.check_page(10**9, "") == []
    assert pages.page_size(0) == 100
    assert pages.page_size(7) == 7
    assert pages.page_size(5000) == 1000
    for value in (math.nan, math.inf, -math.inf):
        assert_violations(common.check_finite(value, "x"), {"x": "must be finite"})
    assert common.check_finite(-0.0, "x") == []
    assert_violations(common.check_range(math.nan, "x", 0, 1), {"x": "within 0..1"})
    assert_violations(common.check_range(0.5, "x", 1), {"x": "at least 1"})
    assert_violations(common.check_range(2.5, "x", high=2), {"x": "at most 2"})
    assert_violations(
        common.check_range(0, "x", 0, 0.5, low_exclusive=True), {"x": "greater than 0"}
    )


def test_check_duration() -> None:
    five_to_hour = (5, 3600)
    assert common.check_duration(Duration(seconds=5), "d", *five_to_hour) == []
    assert common.check_duration(Duration(seconds=3600), "d", *five_to_hour) == []
    for seconds, nanos in ((4, 999_999_999), (3600, 1), (-5, 0)):
        assert_violations(
            common.check_duration(Duration(seconds=seconds, nanos=nanos), "d", *five_to_hour),
            {"d": "must be within 5s..1h"},
        )
    for seconds, nanos in ((1, -1), (-1, 1), (0, 10**9), (315_576_000_001, 0)):
        assert_violations(
            common.check_duration(Duration(seconds=seconds, nanos=nanos), "d"),
            {"d": "must be a valid duration"},
        )
    assert_violations(
        common.check_duration(Duration(), "d", 0, min_exclusive=True), {"d": "greater than 0s"}
    )
    assert_violations(common.check_duration(Duration(seconds=-1), "d", 0), {"d": "not be negative"})
    assert_violations(
        common.check_duration(Duration(seconds=91), "d", max_s=90), {"d": "at most 90s"}
    )
    assert common.format_seconds(0.5) == "500ms"
    assert common.format_seconds(300) == "5m"
    assert common.format_seconds(30 * 86_400) == "30d"


def test_check_labels_follow_kubernetes_rules() -> None:
    good = {
        "a": "",
        "A.b-c_d": "v",
        "example.com/name": "x" * 63,
        "a" * 253 + "/" + "n" * 63: "0",
    }
    assert labels.check_labels(good, "labels") == []
    bad = {
        "/name": "",
        "Example.com/name": "",
        "-a": "",
        "a-": "",
        "n" * 64: "",
        "ok": "-v",
        "ok2": "v" * 64,
        "é": "",
    }
    found = labels.check_labels(bad, "agent.labels")
    assert {v.field for v in found} == {f"agent.labels[{common.show(k)}]" for k in bad}
    long_key = "k" * 500
    (violation,) = labels.check_labels({long_key: ""}, "labels")
    assert len(violation.field) < 100
    assert violation.field.endswith('…"]')


def test_label_selectors_parse_and_match() -> None:
    requirements, problems = labels.parse_label_selector(" team = search , tier!=dev,gpu, !old")
    assert problems == []
    assert requirements == [
        labels.LabelRequirement("team", "=", "search"),
        labels.LabelRequirement("tier", "!=", "dev"),
        labels.LabelRequirement("gpu", "exists"),
        labels.LabelRequirement("old", "!exists"),
    ]
    agent_labels = {"team": "search", "gpu": ""}
    assert all(r.matches(agent_labels) for r in requirements)
    assert not labels.LabelRequirement("tier", "!=", "dev").matches({"tier": "dev"})
    assert labels.parse_label_selector("") == ([], [])
    assert labels.check_label_selector("a==b", "s") == []
    assert_violations(labels.check_label_selector("a=b,", "s"), {"s": "empty requirement"})
    assert_violations(
        labels.check_label_selector("a=b=c", "s"), {"s": "value must be empty or match"}
    )


@pytest.mark.parametrize(
    "endpoint",
    ["localhost:50051", "10.0.0.1:80", "[::1]:443", "[2001:db8::1]:65535", "a.b-c.example:1"],
)
def test_check_endpoint_accepts(endpoint: str) -> None:
    assert common.check_endpoint(endpoint, "e") == []


@pytest.mark.parametrize(
    ("endpoint", "word"),
    [
        ("localhost", 'must be "host:port"'),
        (":80", 'must be "host:port"'),
        ("host:0", "port must be"),
        ("host:65536", "port must be"),
        ("host:\uff18\uff10", "port must be"),
        ("host:+80", "port must be"),
        ("::1:80", "bracket"),
        ("[zz]:80", "IPv6"),
        ("256.1.1.1:80", "IPv4"),
        ("-bad.example:80", "DNS name"),
        ("under_score:80", "DNS name"),
        ("a" * 258 + ":1", "at most 259 characters"),
    ],
)
def test_check_endpoint_rejects(endpoint: str, word: str) -> None:
    assert_violations(common.check_endpoint(endpoint, "e"), {"e": word})


def test_check_field_mask() -> None:
    allowed = {"a", "b"}
    assert common.check_field_mask(FieldMask(paths=["a"]), allowed, "m") == []
    assert common.check_field_mask(FieldMask(paths=["*"]), allowed, "m") == []
    assert common.check_field_mask(FieldMask(), allowed, "m", required=False) == []
    assert_violations(
        common.check_field_mask(FieldMask(), allowed, "m"), {"m.paths": "not be empty"}
    )
    assert_violations(
        common.check_field_mask(FieldMask(paths=["a", "c"]), allowed, "m"),
        {"m.paths[1]": '"c" cannot be updated; allowed: a, b, *'},
    )
    assert common.mask_paths(FieldMask(paths=["*"]), allowed) == allowed
    assert common.mask_paths(FieldMask(paths=["b", "c"]), allowed) == {"b"}


def test_check_no_unknown_fields_walks_nested_repeated_and_well_known_messages() -> None:
    genome = candidate_pb2.Genome.FromString(GENOME.SerializeToString() + UNKNOWN_FIELD_111)
    request = oracle_pb2.VerifyRequest(oracle="oracles/o", dna=make_dna())
    request.candidates.add().CopyFrom(candidate())
    request.candidates.add(genome=genome)
    request.timeout.CopyFrom(Duration.FromString(b"\x08\x01" + b"\x20\x07"))  # field 4 unknown
    parsed = oracle_pb2.VerifyRequest.FromString(request.SerializeToString() + b"\xa0\x06\x02")
    assert_violations(
        common.check_no_unknown_fields(parsed),
        {
            "100": ("unknown field (number 100)", "helix.v1.VerifyRequest"),
            "candidates[1].genome.111": "helix.v1.Genome",
            "timeout.4": "google.protobuf.Duration",
        },
    )
    assert_violations(
        oracle.check_verify_request(parsed),
        {"100": "unknown", "candidates[1].genome.111": "unknown", "timeout.4": "unknown"},
    )
    skipped = common.check_no_unknown_fields(parsed, "req", skip=("req.candidates",))
    assert [v.field for v in skipped] == ["req.100", "req.timeout.4"]
    assert common.check_no_unknown_fields(VALID["Verify"][1]) == []


# --- CHECKS cover each service's RPCs -----------------------------------------------------

SERVICES = [
    (registry.CHECKS, registry_pb2, "RegistryService"),
    (generator.CHECKS, generator_pb2, "GeneratorService"),
    (oracle.CHECKS, oracle_pb2, "OracleService"),
    (orchestrator.CHECKS, orchestrator_pb2, "OrchestratorService"),
]


@pytest.mark.parametrize(("checks", "module", "service"), SERVICES)
def test_checks_cover_exactly_the_rpcs_of_the_service(
    checks: dict[str, Check], module: Any, service: str
) -> None:
    methods = module.DESCRIPTOR.services_by_name[service].methods
    assert set(checks) == {m.name for m in methods}
    for method in methods:
        request = message_factory.GetMessageClass(method.input_type)()
        assert isinstance(checks[method.name](request), list)


def _rpcs() -> list[tuple[str, Check, descriptor.Descriptor]]:
    found = []
    for checks, module, service in SERVICES:
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            found.append((method.name, checks[method.name], method.input_type))
    return found


RPCS = _rpcs()
RPC_IDS = [name for name, _, _ in RPCS]


# --- property tests: no input raises ------------------------------------------------------

from proto_strategies import messages  # noqa: E402

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def _assert_checked(check: Check, request: Message) -> None:
    found = check(request)
    assert isinstance(found, list)
    assert all(isinstance(v, FieldViolation) for v in found)
    assert all(isinstance(v.field, str) and v.description for v in found)


@pytest.mark.parametrize(("rpc", "check", "desc"), RPCS, ids=RPC_IDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_random_requests_never_raise(
    rpc: str, check: Check, desc: descriptor.Descriptor, data: st.DataObject
) -> None:
    request = data.draw(messages(desc), label=rpc)
    _assert_checked(check, request)
    if rpc == "VerifyStream":
        _assert_checked(lambda m: oracle.check_verify_stream_request(m, first=False), request)


@pytest.mark.parametrize(("rpc", "check", "desc"), RPCS, ids=RPC_IDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_random_wire_bytes_never_raise(
    rpc: str, check: Check, desc: descriptor.Descriptor, data: st.DataObject
) -> None:
    cls = message_factory.GetMessageClass(desc)
    prefix = data.draw(st.sampled_from([b"", VALID[rpc][1].SerializeToString()]))
    try:
        request = cls.FromString(prefix + data.draw(st.binary(max_size=512), label="bytes"))
    except DecodeError:
        return
    _assert_checked(check, request)


_IDS = st.sampled_from(
    ["", "0" * 32, "0123456789abcdef" * 2, "A" * 32, "g" * 32, "0" * 31, "0" * 33, "é" * 32]
)


@st.composite
def _parents(draw: st.DrawFn) -> candidate_pb2.ScoredCandidate:
    parent = candidate_pb2.ScoredCandidate()
    if draw(st.booleans()):
        parent.candidate.id = draw(_IDS)
        parent.candidate.parent_ids.extend(draw(st.lists(_IDS, max_size=3)))
        if draw(st.booleans()):
            parent.candidate.genome.reals.append(draw(st.floats()))
    if draw(st.booleans()):
        parent.verdict.candidate_id = draw(_IDS)
        parent.verdict.status = enum_number(draw(st.integers(-1, 6)))
        parent.verdict.score = draw(st.floats())
    return parent


@settings(max_examples=500, deadline=None)
@given(parent=_parents())
def test_the_fast_parent_check_agrees_with_the_full_checks(parent) -> None:
    full = generator.parent_violations(parent, "parents[0]")
    assert generator.parent_is_clean(parent) == (full == []), full


# Wire bytes a parent's messages may end with: an unknown field (number 9), a third or
# an empty parent id, a Verdict's duration, metrics and cached.
_CANDIDATE_TAILS = st.sampled_from([b"", b"\x48\x01", b"\x22\x00", b"\x22\x20" + b"a" * 32])
_VERDICT_TAILS = st.sampled_from([b"", b"\x32\x03\x10\xe8\x07", b"\x48\x01", b"\x38\x01"])


_GOOD_IDS = st.sampled_from(["0" * 32, "0123456789abcdef" * 2])


@st.composite
def _likely_clean_parents(draw: st.DrawFn) -> candidate_pb2.ScoredCandidate:
    """A parent with a genome and well-formed ids, its verdict often right."""
    parent = candidate_pb2.ScoredCandidate()
    own = draw(st.sampled_from(["", "0" * 32, "0123456789abcdef" * 2]))
    parent.candidate.id = own
    parent.candidate.genome.reals.append(draw(st.floats()))
    parent.candidate.generation = draw(st.sampled_from([0, 1, 300]))
    parent.candidate.parent_ids.extend(draw(st.lists(_GOOD_IDS, max_size=2)))
    if draw(st.booleans()):
        parent.verdict.candidate_id = draw(st.sampled_from(["", own, "0" * 32, "A" * 32]))
        parent.verdict.status = enum_number(draw(st.integers(-1, 6)))
        parent.verdict.score = draw(st.floats())
    return parent


@st.composite
def _wire_parents(draw: st.DrawFn) -> candidate_pb2.ScoredCandidate:
    """A parent, its candidate and verdict possibly extended on the wire."""
    parent = draw(st.one_of(_parents(), _likely_clean_parents()))
    candidate = parent.candidate.SerializeToString() + draw(_CANDIDATE_TAILS)
    verdict = parent.verdict.SerializeToString() + draw(_VERDICT_TAILS)
    raw = b""
    if parent.HasField("candidate") or draw(st.booleans()):
        raw += b"\x0a" + varint(len(candidate)) + candidate
    if parent.HasField("verdict") or draw(st.booleans()):
        raw += b"\x12" + varint(len(verdict)) + verdict
    raw += draw(st.sampled_from([b"", b"\x48\x01"]))  # an unknown field of the parent
    return candidate_pb2.ScoredCandidate.FromString(raw)


@settings(max_examples=300, deadline=None)
@given(parents=st.lists(_wire_parents(), max_size=6), dna_name=st.booleans())
def test_the_parents_scan_accepts_only_what_the_full_checks_accept(parents, dna_name) -> None:
    request = generator_pb2.GenerateRequest(parents=parents, count=3)
    if dna_name:
        request.dna_name = "dnas/a"
    records = ParentRecords.of(request)
    assert len(records) == len(parents)
    for i, parent in enumerate(request.parents):
        full = generator.parent_violations(parent, f"parents[{i}]")
        if records.clean[i]:
            assert full == [], (i, parent)
            assert generator.parent_is_clean(parent)
        elif not common.has_unknown_fields(parent):  # (those are left to the messages)
            assert full != [], (i, parent)
    assert generator.check_generate_request(request, records=records) == (
        generator.check_generate_request(request)
    )


@st.composite
def _heartbeats(draw: st.DrawFn) -> registry_pb2.HeartbeatRequest:
    names = ["agents/a", "agents/gen-1", "agents/" + "a" * 63, "agents/" + "a" * 64]
    names += ["agents/", "agents/A", "agent/a", "", "agents/a\n", "agents/1a"]
    request = registry_pb2.HeartbeatRequest(
        name=draw(st.sampled_from(names)),
        epoch=draw(st.integers(-2, 3)),
        health=enum_number(draw(st.integers(-1, 5))),
    )
    if draw(st.booleans()):
        request.load.utilization = draw(st.floats())
    raw = request.SerializeToString()
    if draw(st.booleans()):
        raw += b"\xf8\x07\x01"  # field 127 (unknown), varint 1
    return registry_pb2.HeartbeatRequest.FromString(raw)


@settings(max_examples=500, deadline=None)
@given(request=_heartbeats())
def test_the_fast_heartbeat_accept_agrees_with_the_full_checks(request) -> None:
    assert registry.check_heartbeat_request(request) == registry.heartbeat_violations(request)
