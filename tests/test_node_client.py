"""The Node.js client (examples/node/client.js) against a live embedded suite: it lists
agents and DNAs, runs knapsack to the end with its progress, prints the best candidate as
`helix run` finds it for the same seed, and answers bad input with readable errors that
carry the decoded google.rpc.Status details — never a JavaScript stack trace."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.v1 import common_pb2

from harness import Cluster, run_command
from node_support import (
    CLIENT_SCOPES,
    NODE,
    NODE_DIR,
    helix_run_outcome,
    knapsack_suite,
    node_env,
    outcome_line,
    require_node_modules,
    requires_node,
    run_client,
    same_outcome,
    write_knapsack_config,
)

pytestmark = [requires_node, pytest.mark.timeout(300)]

# What a stack trace printed by Node looks like ("    at Foo (file.js:1:2)").
STACK_FRAME = re.compile(r"^\s+at .+:\d+:\d+\)?$", re.MULTILINE)


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with knapsack_suite(tmp_path) as (cluster, _processes, _config):
        yield cluster


def no_stack_trace(stderr: str) -> None:
    assert not STACK_FRAME.search(stderr), f"a stack trace was printed:\n{stderr}"
    assert "node:internal" not in stderr, stderr


async def test_client_lists_runs_to_the_end_and_prints_the_best_as_helix_run(
    suite: Cluster, tmp_path: Path
) -> None:
    code, out, err = await run_client(
        suite, "--dna", "knapsack", "--oracle", "knapsack-node", "--generations", "60",
        "--seed", "7", "--json",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    # The listings: the suite's agents (the oracle hosting knapsack-node among them) and DNAs.
    assert re.search(r"^agents \(\d+\):$", out, re.MULTILINE), out
    assert any(
        "agents/embedded-oracle" in line and "oracles/knapsack-node" in line for line in lines
    )
    assert re.search(r"^  dnas/knapsack  1 genes  knapsack\.yaml$", out, re.MULTILINE), out
    # The run, watched to the end with its progress.
    assert re.search(
        r"^created runs/\S+: dnas/knapsack on oracles/knapsack-node, maximize, seed 7$",
        out,
        re.MULTILINE,
    )
    assert "state RUNNING" in lines
    assert "state SUCCEEDED (MAX_GENERATIONS)" in lines
    generations = [line for line in lines if line.startswith("generation ")]
    assert generations[0].startswith("generation 0: evaluations ")
    assert generations[-1].startswith("generation 59: evaluations ")
    assert any(line.startswith("new best ") for line in lines)
    # The best candidate, as `helix run` (Python only, its own suite) finds it for this seed.
    outcome = outcome_line(out)
    expected = await helix_run_outcome(
        write_knapsack_config(tmp_path / "baseline"), tmp_path / "run", "--generations", "60",
        "--seed", "7",
    )  # fmt: skip
    assert same_outcome(outcome) == expected
    assert f"best candidate {expected['best_id']}" in lines
    score = expected["best_score"]
    assert isinstance(score, float)
    assert f"  score {score:g}" in lines
    assert f'  genes {{"take":[{",".join(map(str, expected["best_genes"]["take"]))}]}}' in lines  # type: ignore[index]
    no_stack_trace(err)


async def test_client_reaches_the_knapsack_optimum(suite: Cluster) -> None:
    code, out, err = await run_client(suite, "--generations", "150", "--seed", "3", "--json")
    assert code == 0, err
    outcome = outcome_line(out)
    assert outcome["state"] == "SUCCEEDED"
    assert outcome["best_score"] == 309  # items 0, 1, 2, 3 and 5 (node_worker.js)
    assert outcome["best_genes"] == {"take": [1, 1, 1, 1, 0, 1, 0, 0, 0, 0]}


async def test_client_list_only_creates_no_run(suite: Cluster) -> None:
    code, out, err = await run_client(suite, "--list-only")
    assert code == 0, err
    assert "dnas/knapsack" in out
    assert "created" not in out


async def test_missing_token_is_a_readable_unauthenticated_error(suite: Cluster) -> None:
    code, _out, err = await run_client(suite, token=None)
    assert code == 1
    assert "no HELIX_TOKEN set" in err
    assert "listing agents failed: UNAUTHENTICATED: " in err
    assert "  reason: TOKEN_MISSING (domain helix)" in err
    assert "hint: set HELIX_TOKEN" in err
    no_stack_trace(err)


async def test_token_without_a_scope_is_a_readable_permission_error(suite: Cluster) -> None:
    token = suite.token("node-client", ["agents.read"])
    code, _out, err = await run_client(suite, token=token)
    assert code == 1
    assert "listing DNAs failed: PERMISSION_DENIED: " in err, err
    assert "reason: SCOPE_MISSING (domain helix)" in err
    no_stack_trace(err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "abc"], '--budget: "abc" is not a non-negative whole number'),
        (["--budget", "-5"], '--budget: "-5" is not a non-negative whole number'),
        (["--budget", "1e3"], '--budget: "1e3" is not a non-negative whole number'),
        (["--generations", "1.5"], '--generations: "1.5" is not a non-negative whole number'),
        (["--seed", "18446744073709551616"], "--seed: 18446744073709551616 is out of range"),
        (["--target", "high"], '--target: "high" is not a finite number'),
        (["--objective", "best"], "--objective: must be auto, maximize or minimize"),
        (["--timeout", "0"], '--timeout: "0" is not a positive number of seconds'),
        (["--bogus"], "Unknown option '--bogus'"),
    ],
)
async def test_flags_of_the_wrong_type_are_usage_errors(args: list[str], message: str) -> None:
    # Refused before any call: no suite is needed (nothing answers at port 1).
    require_node_modules()
    assert NODE is not None
    argv = [NODE, str(NODE_DIR / "client.js"), "--address", "127.0.0.1:1", *args]
    code, out, err = await run_command(argv, node_env("x"), within=60)
    assert code == 2
    assert err.startswith(f"client.js: {message}"), err
    assert "created" not in out
    no_stack_trace(err)


@pytest.mark.parametrize(
    ("args", "lines"),
    [
        (
            ["--dna", "nope"],
            [
                "creating the run failed: INVALID_ARGUMENT: ",
                "  field run.dna_name: no live generator serves dnas/nope [unknown]",
            ],
        ),
        (
            ["--oracle", "nope"],
            [
                "creating the run failed: INVALID_ARGUMENT: ",
                "  field run.oracle: no live oracle agent hosts oracles/nope [unknown]",
            ],
        ),
        (
            ["--oracle", "Bad_Name"],
            [
                "creating the run failed: INVALID_ARGUMENT: ",
                "  field run.oracle: must be a resource",
            ],
        ),
        (
            ["--budget", "2000000000000"],
            [
                "creating the run failed: INVALID_ARGUMENT: ",
                "  field run.budget.max_evaluations: must be within 0..1000000000000 [range]",
            ],
        ),
        (
            ["--budget", "0"],
            ["  field run.budget: must set at least one limit"],
        ),
    ],
)
async def test_bad_values_get_the_servers_error_with_its_details(
    suite: Cluster, args: list[str], lines: list[str]
) -> None:
    code, _out, err = await run_client(suite, *args)
    assert code == 1
    assert "  reason: INVALID_ARGUMENT (domain helix)" in err, err
    for line in lines:
        assert line in err, err
    no_stack_trace(err)


async def test_no_server_is_a_readable_unavailable_error() -> None:
    require_node_modules()
    assert NODE is not None
    argv = [NODE, str(NODE_DIR / "client.js"), "--address", "127.0.0.1:1", "--timeout", "3"]
    code, _out, err = await run_command(argv, node_env("x"), within=60)
    assert code == 1
    assert "listing agents failed: UNAVAILABLE: " in err
    assert "hint: is a Helix suite serving at 127.0.0.1:1?" in err
    no_stack_trace(err)


class Recorder(grpc.GenericRpcHandler):
    """Any call to this server: its method and authorization header recorded, then answered
    UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        self.calls.append((handler_call_details.method, str(metadata.get("authorization", ""))))


async def test_the_users_token_goes_only_to_the_suite(suite: Cluster) -> None:
    # An agent registered in the registry, claiming the run's oracle, at an endpoint that
    # records what it is sent: the client must not send it the user's token.
    recorder = Recorder()
    decoy = grpc.aio.server()
    decoy.add_generic_rpc_handlers([recorder])
    port = decoy.add_insecure_port("127.0.0.1:0")
    await decoy.start()
    try:
        await suite.registry("decoy").RegisterAgent(
            registry_pb2.RegisterAgentRequest(
                agent_id="decoy",
                request_id="decoy-1",
                agent=registry_pb2.Agent(
                    kind=registry_pb2.AGENT_KIND_ORACLE,
                    endpoint=f"127.0.0.1:{port}",
                    health=registry_pb2.AGENT_HEALTH_NOT_SERVING,
                    capacity=1,
                    oracle=registry_pb2.OracleDetails(oracles=["oracles/knapsack-node"]),
                ),
            )
        )
        token = suite.token("node-client", CLIENT_SCOPES)
        code, out, err = await run_client(suite, "--generations", "2", "--seed", "1", token=token)
        assert code == 0, err
        assert "agents/decoy" in out
        # The objective came from the suite the user named (GetOracle there: maximize).
        assert re.search(r"^created runs/\S+: .*, maximize, seed 1$", out, re.MULTILINE), out
        assert not [call for call in recorder.calls if token in call[1]], recorder.calls
    finally:
        await decoy.stop(None)


class EndsAfterTheEnd(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """An orchestrator whose WatchRun breaks (UNAVAILABLE) right after the terminal event, and
    at once on every resumed watch; the run itself SUCCEEDED."""

    def __init__(self) -> None:
        self.watches = 0

    def run(self, state: orchestrator_pb2.RunState.ValueType) -> orchestrator_pb2.Run:
        return orchestrator_pb2.Run(
            name="runs/r1", dna_name="dnas/knapsack", oracle="oracles/knapsack-node",
            objective=common_pb2.OBJECTIVE_MAXIMIZE, seed=1, state=state,
            progress=orchestrator_pb2.RunProgress(),
        )  # fmt: skip

    async def CreateRun(self, request, context):
        return orchestrator_pb2.CreateRunResponse(run=self.run(orchestrator_pb2.RUN_STATE_PENDING))

    async def GetRun(self, request, context):
        return orchestrator_pb2.GetRunResponse(run=self.run(orchestrator_pb2.RUN_STATE_SUCCEEDED))

    async def WatchRun(self, request, context):
        self.watches += 1
        for sequence, state in (
            (1, orchestrator_pb2.RUN_STATE_RUNNING),
            (2, orchestrator_pb2.RUN_STATE_SUCCEEDED),
        ):
            if sequence > request.after_sequence:
                changed = orchestrator_pb2.RunStateChanged(state=state)
                event = orchestrator_pb2.RunEvent(sequence=sequence, state_changed=changed)
                yield orchestrator_pb2.WatchRunResponse(event=event)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the watch broke")


async def test_a_watch_breaking_after_the_terminal_event_is_not_a_failure() -> None:
    require_node_modules()
    assert NODE is not None
    from helix.v1 import generator_pb2, generator_pb2_grpc, registry_pb2_grpc

    class Registry(registry_pb2_grpc.RegistryServiceServicer):
        async def ListAgents(self, request, context):
            return registry_pb2.ListAgentsResponse()

    class Generator(generator_pb2_grpc.GeneratorServiceServicer):
        async def ListDnas(self, request, context):
            return generator_pb2.ListDnasResponse()

    orchestrator = EndsAfterTheEnd()  # type: ignore[abstract]  # only what the client calls
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(Registry(), server)  # type: ignore[abstract]
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(Generator(), server)  # type: ignore[abstract]
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(orchestrator, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        argv = [NODE, str(NODE_DIR / "client.js"), "--address", f"127.0.0.1:{port}"]
        argv += ["--objective", "maximize"]
        code, out, err = await run_command(argv, node_env("x"), within=120)
    finally:
        await server.stop(None)
    assert code == 0, err
    assert "state SUCCEEDED" in out.splitlines()
    assert "run runs/r1 SUCCEEDED" in out.splitlines()
    assert orchestrator.watches == 1, err
    no_stack_trace(err)
