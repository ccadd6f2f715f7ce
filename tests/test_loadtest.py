"""`helix loadtest` against a real `helix up` (a subprocess on a free port, the example DNA
library, the builtin oracles): the figures it reports, the agents it leaves behind (none),
the runs it drives, how it stops (count, duration, Ctrl-C) and how it refuses bad input.
Plus the bounded latency histogram the figures come from."""

from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import socket
import time
from pathlib import Path

import grpc
import pytest

import helix.v1.registry_pb2 as registry_pb2
from helix.cli.loadstats import LatencyHistogram, LoadStats, some_names
from helix.cli.loadwork import LABEL, LoadSettings, Session, SimulatedAgent
from helix.cli.main import main
from helix.suite import EMBEDDED_ORACLE_ID

from cluster_support import RunCluster
from harness import HELIX, Cluster, clean_env, run_helix
from waiting import eventually

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
REGISTER = "RegistryService/RegisterAgent"
HEARTBEAT = "RegistryService/Heartbeat"
DEREGISTER = "RegistryService/DeregisterAgent"


@pytest.fixture
async def suite(clusters) -> Cluster:
    """`helix up` serving examples/dna, its generator, oracle and orchestrator registered."""
    started: Cluster = await clusters("embedded", dna_dir=EXAMPLES)
    registry = started.registry()

    async def oracle_registered() -> bool:
        found = await registry.GetAgent(
            registry_pb2.GetAgentRequest(name=f"agents/{EMBEDDED_ORACLE_ID}")
        )
        return found.agent.health == registry_pb2.AGENT_HEALTH_SERVING

    await eventually(oracle_registered, 30, what="the embedded oracle agent", ignore=(Exception,))
    return started


def _client_flags(suite: Cluster) -> list[str]:
    return ["--address", suite.address_of("orchestrator"), "--data-dir", str(suite.data_dir)]


async def _loadtest(suite: Cluster, *flags: str, within: float = 90) -> tuple[int, str, str]:
    return await run_helix(
        "loadtest", *flags, *_client_flags(suite), env=clean_env(), within=within
    )


async def _simulated_agents(suite: Cluster) -> list[str]:
    """Names of the agents a load test registered (any session) still in the registry."""
    response = await suite.registry().ListAgents(
        registry_pb2.ListAgentsRequest(page_size=1000, label_selector=LABEL)
    )
    return [agent.name for agent in response.agents]


def _check_latencies(method: dict) -> None:
    latency = method["latency_ms"]
    assert method["ok"] > 0
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert latency["mean"] <= latency["max"]


async def test_count_of_runs_with_agents_reports_every_rpc_and_cleans_up(suite):
    code, out, err = await _loadtest(
        suite, "--json", "--agents", "5", "--runs", "2", "--count", "4", "--budget", "300"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["stopped_by"] == "count"
    assert report["settings"]["agents"] == 5
    assert report["settings"]["count"] == 4
    methods = report["methods"]
    assert methods[REGISTER]["calls"] == 5
    assert methods[DEREGISTER]["calls"] == 5
    for name in (REGISTER, DEREGISTER, "OrchestratorService/CreateRun"):
        _check_latencies(methods[name])
    assert methods["OrchestratorService/CreateRun"]["calls"] == 4
    assert methods["OrchestratorService/GetRun"]["calls"] == 4
    watch = methods["OrchestratorService/WatchRun"]
    assert watch["calls"] == 4
    assert watch["messages"] >= 4 * 3  # at least RUNNING, a generation and SUCCEEDED each
    for name, method in methods.items():
        assert method["errors"] == {}, (name, method["errors"])
        assert method["calls"] == method["ok"]
        assert method["calls_per_second"] > 0
    totals = report["totals"]
    assert totals["errors"] == 0
    assert totals["calls"] == sum(m["calls"] for m in methods.values())
    # Rates over the load alone; the checks before it and the drain after it timed apart.
    assert totals["calls_per_second"] == pytest.approx(
        totals["calls"] / report["load_seconds"], rel=0.01
    )
    assert report["checks_seconds"] > 0
    assert report["drain_seconds"] >= 0
    assert report["elapsed_seconds"] == pytest.approx(
        report["checks_seconds"] + report["load_seconds"] + report["drain_seconds"], abs=1e-5
    )
    runs = report["runs"]
    assert (runs["started"], runs["succeeded"], runs["failed"], runs["cancelled"]) == (4, 4, 0, 0)
    assert runs["timed_out"] == 0
    assert runs["evaluations"] >= 4 * 300
    assert runs["evaluations_per_second"] > 0
    assert 0 < runs["seconds"]["p50"] <= runs["seconds"]["p99"] <= report["elapsed_seconds"]
    agents = report["agents"]
    assert (agents["simulated"], agents["registered"], agents["deregistered"]) == (5, 5, 5)
    assert agents["left_registered"] == []
    # Gone from the registry; the runs (seen by their owner) all succeeded, scored in full:
    # none of their work went to a simulated agent (it advertises an endpoint nobody serves).
    assert await _simulated_agents(suite) == []
    code, out, err = await run_helix(
        "runs", "list", "--json", *_client_flags(suite), env=clean_env()
    )
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert len(listed) == 4
    for run in listed:
        assert run["state"] == "RUN_STATE_SUCCEEDED"
        assert run["displayName"] == "helix loadtest"
        assert run["dnaName"] == "dnas/rastrigin"
        assert run["oracle"] == "oracles/rastrigin"
        assert run["progress"]["errors"] == "0"  # no ERROR or TIMEOUT verdict


async def test_agents_only_for_a_duration_heartbeat_and_render_a_table(suite):
    started = time.monotonic()
    code, out, err = await _loadtest(
        suite, "--agents", "3", "--runs", "0", "--duration", "3s", "--agent-ttl", "2s"
    )
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert elapsed < 20
    for text in ("helix loadtest", "stopped by duration", "RPCs", "P50 MS", "P99 MS"):
        assert text in out, out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if "Service/" in line}
    assert set(rows) == {"RegistryService/ListAgents", REGISTER, HEARTBEAT, DEREGISTER}
    assert rows[REGISTER][1] == "3"
    assert rows[DEREGISTER][1] == "3"
    # 3 s at a third of the 2 s TTL, the first within one interval: 4 each, 2 even if
    # registering and each heartbeat took a loaded machine half a second.
    assert int(rows[HEARTBEAT][1].replace(",", "")) >= 6
    assert all(row[-1] == "-" for row in rows.values()), out  # no errors
    assert "Traceback" not in err
    assert await _simulated_agents(suite) == []


async def test_duration_cancels_the_runs_still_going(suite):
    code, out, err = await _loadtest(
        suite,
        "--json",
        "--agents",
        "0",
        "--runs",
        "1",
        "--duration",
        "2s",
        "--budget",
        "1000000000",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["stopped_by"] == "duration"
    assert 2 <= report["elapsed_seconds"] < 15
    runs = report["runs"]
    assert (runs["started"], runs["cancelled"]) == (1, 1)
    assert runs["evaluations"] > 0  # what the cancelled run did counts
    assert report["methods"]["OrchestratorService/CancelRun"]["ok"] == 1
    assert "RegistryService/RegisterAgent" not in report["methods"]


async def test_refused_calls_are_counted_by_code_and_said_once(suite):
    # A token without runs.write: every CreateRun is PERMISSION_DENIED.
    token = suite.token("lt-reader", ["agents.read", "agents.write", "runs.read"])
    code, out, err = await run_helix(
        "loadtest",
        "--json",
        "--agents",
        "2",
        "--runs",
        "2",
        "--count",
        "3",
        "--objective",
        "minimize",
        "--address",
        suite.address_of("orchestrator"),
        "--token",
        token,
        env=clean_env(),
        within=60,
    )
    assert code == 0, err  # calls succeeded (the agents'); the refusals are in the report
    report = json.loads(out)
    create = report["methods"]["OrchestratorService/CreateRun"]
    assert (create["calls"], create["ok"], create["errors"]) == (3, 0, {"PERMISSION_DENIED": 3})
    assert create["latency_ms"]["p50"] is None  # no successful call to time
    assert report["runs"]["create_failed"] == 3
    assert report["totals"]["errors"] == 3
    assert err.count("PERMISSION_DENIED") == 1, err
    assert "OrchestratorService/CreateRun" in err
    assert report["agents"]["deregistered"] == 2


async def test_nothing_of_the_load_succeeding_is_exit_status_1(suite):
    # Runs only, every CreateRun refused: the checks (ListAgents, ListRuns) succeeded, but
    # they are not the load.
    token = suite.token("lt-reader", ["agents.read", "runs.read", "oracles.read"])
    code, out, err = await run_helix(
        "loadtest",
        "--json",
        *("--agents", "0", "--runs", "2", "--count", "5"),
        *("--address", suite.address_of("orchestrator"), "--token", token),
        env=clean_env(),
        within=60,
    )
    assert code == 1, err
    report = json.loads(out)  # reported all the same
    create = report["methods"]["OrchestratorService/CreateRun"]
    assert (create["calls"], create["errors"]) == (5, {"PERMISSION_DENIED": 5})
    assert report["methods"]["OrchestratorService/ListRuns"]["ok"] == 1  # the check
    assert "no call of the load succeeded" in err
    assert "Traceback" not in err


async def _register(suite: Cluster, agent_id: str, agent: registry_pb2.Agent) -> None:
    agent.endpoint = "127.0.0.1:9"  # never dialled: it takes no work
    agent.capacity = 1
    agent.health = registry_pb2.AGENT_HEALTH_NOT_SERVING
    agent.ttl.FromSeconds(120)
    await suite.registry().RegisterAgent(
        registry_pb2.RegisterAgentRequest(agent_id=agent_id, agent=agent, request_id=agent_id)
    )


async def test_a_run_that_never_starts_is_cancelled_at_its_run_timeout(suite):
    # A generator advertising dnas/ghost, NOT_SERVING: the check sees the DNA advertised,
    # the orchestrator takes the run and leaves it PENDING (no generator takes work).
    ghost = registry_pb2.Agent(kind=registry_pb2.AGENT_KIND_GENERATOR)
    ghost.generator.dnas.append("dnas/ghost")
    await _register(suite, "ghost-generator", ghost)
    started = time.monotonic()
    code, out, err = await _loadtest(
        suite,
        "--json",
        *("--agents", "0", "--runs", "1", "--count", "1", "--dna", "ghost"),
        *("--run-timeout", "2s"),
        within=60,
    )
    assert time.monotonic() - started < 30
    assert code == 1, err  # its calls do not count: nothing of the load succeeded
    report = json.loads(out)
    runs = report["runs"]
    assert (runs["started"], runs["timed_out"]) == (1, 1), runs
    assert (runs["succeeded"], runs["cancelled"], runs["not_followed"]) == (0, 0, 0)
    assert report["settings"]["run_timeout_seconds"] == 2.0
    assert report["methods"]["OrchestratorService/CancelRun"]["ok"] == 1
    assert 2 <= report["load_seconds"] < 20
    assert "did not end within --run-timeout 2s: cancelled" in err
    assert "Traceback" not in err
    # The run was cancelled, not left waiting.
    code, listed, err = await run_helix(
        "runs", "list", "--json", *_client_flags(suite), env=clean_env()
    )
    assert code == 0, err
    assert [json.loads(line)["state"] for line in listed.splitlines()] == ["RUN_STATE_CANCELLED"]
    # The table says it too.
    code, out, err = await _loadtest(
        suite,
        *("--agents", "0", "--runs", "1", "--count", "1", "--dna", "ghost"),
        *("--run-timeout", "1s"),
        within=60,
    )
    assert code == 1, err
    assert "1 timed out (cancelled after --run-timeout)" in out, out


async def test_an_oracle_hosted_only_by_agents_not_serving_is_a_clear_error(suite):
    idle = registry_pb2.Agent(kind=registry_pb2.AGENT_KIND_ORACLE)
    idle.oracle.oracles.append("oracles/ghost")
    await _register(suite, "ghost-oracle", idle)
    code, out, err = await _loadtest(
        suite, "--agents", "0", "--runs", "1", "--count", "1", "--oracle", "ghost", within=30
    )
    assert code == 1
    assert "no oracle agent in the registry" in err, err
    assert "that takes work hosts --oracle oracles/ghost" in err, err
    assert "agents/ghost-oracle: not SERVING or DEGRADED" in err, err
    assert out == ""


async def test_agents_refused_by_the_rate_limit_are_still_all_deregistered(clusters):
    # 5 writes/s for the load test's principal (a bucket of 10): 20 agents register in
    # turns, and their deregistrations at the end are refused and retried too.
    limited = await clusters("embedded", generators=0, settings={"rate_write": 5})
    code, out, err = await _loadtest(
        limited, "--json", "--agents", "20", "--runs", "0", "--duration", "1s"
    )
    assert code == 0, err
    report = json.loads(out)
    agents = report["agents"]
    assert agents["registered"] >= 10
    assert agents["deregistered"] == agents["registered"]
    assert agents["left_registered"] == []
    refused = {
        name: method["errors"].get("RESOURCE_EXHAUSTED", 0)
        for name, method in report["methods"].items()
    }
    assert refused[REGISTER] > 0, refused
    assert refused[DEREGISTER] > 0, refused
    assert await _simulated_agents(limited) == []


async def test_a_registration_whose_answer_was_lost_is_deregistered_when_stopping(suite):
    # The real registry; between it and the agent, RegisterAgent's answer is lost (the
    # client's deadline passed) and the test stops meanwhile. The agent is registered all
    # the same: it must be deregistered (by name) and counted, not left to its TTL.
    channel = suite.channel("registry", scopes=["agents.read", "agents.write"])
    settings = LoadSettings(
        address="-",
        registry_address=suite.address_of("registry"),
        agents=2,
        runs=0,
        oracle="oracles/rastrigin",
        dna="dnas/rastrigin",
        budget=1,
        duration_seconds=None,
        count=None,
        agent_ttl_seconds=60,
        heartbeat_interval_seconds=None,
        timeout_seconds=5,
        run_timeout_seconds=60,
        objective="minimize",
    )
    registry = Session(settings, channel, channel).registry

    class AnswerLost:
        """The registry's stub, but RegisterAgent ends DEADLINE_EXCEEDED (registered
        first when `reaches`) and stops the load test."""

        def __init__(self, session: Session, reaches: bool) -> None:
            self.session = session
            self.reaches = reaches

        def __getattr__(self, name: str) -> object:
            return getattr(registry, name)

        async def RegisterAgent(self, request: registry_pb2.RegisterAgentRequest) -> None:
            if self.reaches:
                await registry.RegisterAgent(request)
            self.session.end("interrupt")
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "Deadline Exceeded",
            )

    for reaches in (True, False):
        session = Session(settings, channel, channel)
        session.loading = True
        session.registry = AnswerLost(session, reaches)  # type: ignore[assignment]
        await SimulatedAgent(session, 0).live()
        agents = session.stats.agents
        assert session.stats.methods[REGISTER].codes == {"DEADLINE_EXCEEDED": 1}
        assert agents.registrations_failed == 0  # the stop interrupted it: not a failure
        assert agents.left_registered == []
        if reaches:  # registered unseen: deregistered by name, and counted
            assert (agents.registered, agents.deregistered) == (1, 1)
            assert session.stats.methods[DEREGISTER].codes == {"OK": 1}
        else:  # never registered: NOT_FOUND, counted as nothing
            assert (agents.registered, agents.deregistered) == (0, 0)
            assert session.stats.methods[DEREGISTER].codes == {"NOT_FOUND": 1}
        assert await _simulated_agents(suite) == []


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_ctrl_c_or_sigterm_stops_cleanly_deregisters_and_reports(suite, signum, status):
    process = await asyncio.create_subprocess_exec(
        HELIX,
        "loadtest",
        "--json",
        "--agents",
        "5",
        "--runs",
        "2",
        "--duration",
        "5m",
        "--budget",
        "1000000000",
        *_client_flags(suite),
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(
            lambda: _five(suite), 30, what="the 5 simulated agents", ignore=(Exception,)
        )
        process.send_signal(signum)
        async with asyncio.timeout(30):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == status, err.decode()
    report = json.loads(out)
    assert report["stopped_by"] == "interrupt"
    assert report["agents"]["deregistered"] == 5
    assert report["runs"]["cancelled"] >= 2  # the two going when it was interrupted
    assert await _simulated_agents(suite) == []


async def _five(suite: Cluster) -> bool:
    return len(await _simulated_agents(suite)) == 5


async def test_separate_processes_runs_at_the_orchestrator_agents_at_the_registry(tmp_path):
    async with RunCluster(tmp_path / "cluster") as cluster:
        await asyncio.gather(cluster.add_oracle("o1"), cluster.add_orchestrator())
        await cluster.warm_oracle("o1")
        code, out, err = await run_helix(
            "loadtest",
            "--json",
            "--agents",
            "3",
            "--runs",
            "2",
            "--count",
            "2",
            "--budget",
            "200",
            "--objective",
            "minimize",  # the orchestrator's address serves no OracleService to ask
            "--address",
            cluster.address_of("orchestrator"),
            "--registry-address",
            cluster.address_of("registry"),
            "--data-dir",
            str(cluster.data_dir),  # the registry's: every process shares its key
            env=clean_env(),
            within=120,
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["totals"]["errors"] == 0, report["methods"]
        assert "OracleService/GetOracle" not in report["methods"]
        assert report["methods"]["OrchestratorService/ListRuns"]["ok"] == 1  # the check
        assert report["methods"][REGISTER]["ok"] == 3
        assert (report["runs"]["started"], report["runs"]["succeeded"]) == (2, 2)
        assert report["agents"]["deregistered"] == 3
        assert await _simulated_agents(cluster) == []


async def test_an_unreachable_address_is_a_quick_clear_error():
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    code, out, err = await run_helix(
        "loadtest",
        "--count",
        "1",
        "--address",
        f"127.0.0.1:{port}",
        "--token",
        "not-needed-to-fail",
        env=clean_env(),
        within=30,
    )
    assert code == 1
    assert time.monotonic() - started < 20
    assert f"cannot reach the registry at 127.0.0.1:{port}" in err
    assert "UNAVAILABLE" in err
    assert "Traceback" not in err
    assert out == ""


async def test_an_unreachable_orchestrator_is_a_clear_error_too(suite):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = await run_helix(
        "loadtest",
        "--count",
        "1",
        "--address",
        f"127.0.0.1:{port}",
        "--registry-address",
        suite.address_of("registry"),
        "--data-dir",
        str(suite.data_dir),
        env=clean_env(),
        within=30,
    )
    assert code == 1
    assert f"cannot reach the orchestrator at 127.0.0.1:{port}" in err
    assert "Traceback" not in err
    assert out == ""
    assert await _simulated_agents(suite) == []  # it stopped before registering any


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--agents", "-1"], "--agents"),
        (["--runs", "100000"], "--runs"),
        (["--duration", "banana"], "--duration"),
        (["--duration", "5s", "--count", "3"], "--duration and --count"),
        (["--count", "0"], "--count"),
        (["--runs", "0", "--count", "2"], "--count"),
        (["--agents", "0", "--runs", "0"], "--agents and --runs"),
        (["--budget", "0"], "--budget"),
        (["--agent-ttl", "0s"], "--agent-ttl"),
        (["--heartbeat-interval", "soon"], "--heartbeat-interval"),
        (["--dna", "Not A Name"], "--dna"),
        (["--timeout", "0s"], "--timeout"),
        (["--run-timeout", "0s"], "--run-timeout"),
        (["--run-timeout", "later"], "--run-timeout"),
    ],
)
def test_bad_flags_are_configuration_errors_naming_the_flag(flags, named, capsys):
    # Checked before any credentials or call: the address is never dialled.
    assert main(["loadtest", *flags, "--address", "127.0.0.1:1", "--token", "t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("helix loadtest: configuration error: ")
    assert named in err


def test_bad_oracle_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["loadtest", "--oracle", "Bad Name", "--token", "t"])
    assert exited.value.code == 2
    assert "--oracle" in capsys.readouterr().err


# --- the figures: a bounded histogram ------------------------------------------------------


def test_histogram_quantiles_are_within_their_bucket_of_the_true_ones():
    rng = random.Random(7)
    samples = [rng.lognormvariate(math.log(0.005), 1.0) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in samples:
        histogram.record(value)
    ordered = sorted(samples)
    for q in (0.5, 0.95, 0.99):
        true = ordered[math.ceil(q * len(ordered)) - 1]
        found = histogram.quantile(q)
        assert found is not None
        assert found == pytest.approx(true, rel=0.045), q  # one bucket: 2**(1/16) - 1
    assert histogram.quantile(1.0) == histogram.max == max(samples)
    assert histogram.quantile(0.0) == histogram.min == min(samples)
    assert histogram.mean() == pytest.approx(sum(samples) / len(samples))


def test_histogram_memory_is_fixed_and_extremes_are_clamped():
    histogram = LatencyHistogram()
    size = len(histogram._counts)
    for value in (0.0, 1e-9, 3.0, 1e9):  # zero, below the first bucket, beyond the last
        histogram.record(value)
    assert len(histogram._counts) == size
    assert histogram.count == 4
    assert histogram.quantile(0.0) == 0.0
    assert (histogram.quantile(0.5) or math.inf) <= 1.1e-6  # the first bucket's: ~1 µs
    assert histogram.quantile(0.75) == pytest.approx(3.0, rel=0.045)
    assert histogram.quantile(1.0) == 1e9  # the last is the largest seen, exactly
    assert LatencyHistogram().quantile(0.5) is None
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and not negative"):
            histogram.record(bad)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        histogram.quantile(1.5)


def test_report_counts_errors_by_code_and_latency_only_of_successes():
    stats = LoadStats()
    stats.record("S/A", 0.010)
    stats.record("S/A", 0.020)
    stats.record("S/A", 5.0, "UNAVAILABLE")
    stats.record("S/B", 0.5, "RESOURCE_EXHAUSTED")
    stats.received("S/A", 3)
    stats.runs.timed_out = 1
    report = stats.report(
        {"address": "x"}, "count", checks_seconds=0.5, load_seconds=2.0, drain_seconds=7.5
    )
    assert (report["elapsed_seconds"], report["load_seconds"]) == (10.0, 2.0)
    assert (report["checks_seconds"], report["drain_seconds"]) == (0.5, 7.5)
    assert report["runs"]["timed_out"] == 1
    a, b = report["methods"]["S/A"], report["methods"]["S/B"]
    assert (a["calls"], a["ok"], a["errors"], a["messages"]) == (3, 2, {"UNAVAILABLE": 1}, 3)
    assert a["calls_per_second"] == 1.5
    assert a["latency_ms"]["max"] == 20.0  # the failed call's 5 s is not a latency
    assert b["latency_ms"]["p50"] is None
    assert report["totals"] == {"calls": 4, "ok": 2, "errors": 2, "calls_per_second": 2.0}
    assert stats.succeeded() == 2
    assert some_names(["a", "b"]) == "a, b"
    assert some_names([f"n{i}" for i in range(8)], 3) == "n0, n1, n2 and 5 more"
    json.dumps(report)  # JSON as it is
