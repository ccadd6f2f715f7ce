"""`helix agents list|get|watch` as a user runs them, against the registry of a cluster of
each shape: `helix up`, or `helix registry serve` on its own."""

from __future__ import annotations

import json
import signal
import uuid

import pytest

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.agents import AgentRegistration

from harness import HELIX, Cluster
from harness import run_helix as run
from waiting import eventually


@pytest.fixture
async def cluster(shape, clusters):
    """A cluster of each shape with no generator registered: only the test's agents."""
    return await clusters(shape, generators=0)


def cli_args(cluster: Cluster) -> list[str]:
    """The flags that point a client command at the cluster's registry (minting from its
    key)."""
    return ["--address", cluster.address_of("registry"), "--data-dir", str(cluster.data_dir)]


@pytest.fixture
def registry(cluster):
    """A channel to the registry for principal `tester`."""
    return cluster.channel("registry", "tester", ["agents.read", "agents.write"])


def agent(kind: registry_pb2.AgentKind.ValueType, port: int, **labels: str) -> registry_pb2.Agent:
    return registry_pb2.Agent(kind=kind, endpoint=f"127.0.0.1:{port}", capacity=8, labels=labels)


@pytest.fixture
async def two_agents(registry):
    """A generator (zone a, DEGRADED) and an oracle (zone b), heartbeating meanwhile."""
    generator = AgentRegistration(
        registry, agent(registry_pb2.AGENT_KIND_GENERATOR, 7001, zone="a"), agent_id="gen-1"
    )
    oracle = AgentRegistration(
        registry, agent(registry_pb2.AGENT_KIND_ORACLE, 7002, zone="b"), agent_id="oracle-1"
    )
    async with generator, oracle:
        generator.health = registry_pb2.AGENT_HEALTH_DEGRADED
        stub = registry_pb2_grpc.RegistryServiceStub(registry)

        async def degraded() -> bool:
            found = await stub.GetAgent(registry_pb2.GetAgentRequest(name="agents/gen-1"))
            return bool(found.agent.health == registry_pb2.AGENT_HEALTH_DEGRADED)

        await eventually(degraded, what="the health change to land (a beat or so)")
        yield generator, oracle


async def test_list_prints_a_table_and_json_lines(cluster, two_agents, helix_env):
    generator, oracle = two_agents
    code, out, err = await run("agents", "list", *cli_args(cluster), env=helix_env)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "KIND", "ENDPOINT", "HEALTH", "CAPACITY", "EPOCH", "OWNER"]
    assert [row.split() for row in rows] == [
        [
            "agents/gen-1",
            "generator",
            "127.0.0.1:7001",
            "degraded",
            "8",
            str(generator.epoch),
            "tester",
        ],
        [
            "agents/oracle-1",
            "oracle",
            "127.0.0.1:7002",
            "serving",
            "8",
            str(oracle.epoch),
            "tester",
        ],
    ]
    code, out, err = await run("agents", "list", "--json", *cli_args(cluster), env=helix_env)
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [a["name"] for a in listed] == ["agents/gen-1", "agents/oracle-1"]
    assert listed[1]["kind"] == "AGENT_KIND_ORACLE"
    assert listed[1]["labels"] == {"zone": "b"}


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        (["--kind", "oracle"], ["agents/oracle-1"]),
        (["--kind", "AGENT_KIND_GENERATOR"], ["agents/gen-1"]),
        (["--selector", "zone=a"], ["agents/gen-1"]),
        (["--selector", "zone!=a,zone"], ["agents/oracle-1"]),
        (["--health", "degraded"], ["agents/gen-1"]),
        (["--health", "not-serving"], []),
        (["--kind", "orchestrator", "--selector", "zone=a"], []),
    ],
)
async def test_list_filters(cluster, two_agents, helix_env, filters, names):
    code, out, err = await run(
        "agents", "list", "--json", *filters, *cli_args(cluster), env=helix_env
    )
    assert code == 0, err
    assert [json.loads(line)["name"] for line in out.splitlines()] == names


async def test_list_of_nothing_says_so(cluster, helix_env):
    code, out, err = await run("agents", "list", *cli_args(cluster), env=helix_env)
    assert (code, out) == (0, "")
    assert "no agents" in err


async def test_get_prints_the_agent_or_the_error(cluster, two_agents, helix_env):
    generator, _ = two_agents
    for name in ("gen-1", "agents/gen-1"):
        code, out, err = await run("agents", "get", name, *cli_args(cluster), env=helix_env)
        assert code == 0, err
        shown = json.loads(out)
        assert shown["name"] == "agents/gen-1"
        assert shown["epoch"] == str(generator.epoch)
        assert shown["health"] == "AGENT_HEALTH_DEGRADED"
    code, out, err = await run("agents", "get", "nope", *cli_args(cluster), env=helix_env)
    assert (code, out) == (1, "")
    assert "error: NOT_FOUND: agents/nope not found" in err
    assert "ErrorInfo" in err


async def test_watch_prints_changes_as_json_lines(cluster, registry, helix_env, processes):
    stub = registry_pb2_grpc.RegistryServiceStub(registry)
    first = await stub.RegisterAgent(
        registry_pb2.RegisterAgentRequest(
            agent_id="early",
            agent=agent(registry_pb2.AGENT_KIND_ORACLE, 7003),
            request_id=uuid.uuid4().hex,
        )
    )
    command = [HELIX, "agents", "watch", "--kind", "oracle", "--from", str(first.revision)]
    watch = await processes.start(
        [*command, *cli_args(cluster)],
        helix_env,
        ready=None,
    )

    async def next_event() -> dict[str, object]:
        event: dict[str, object] = json.loads(await watch.next_line(within=30))
        return event

    # History from --from, then live changes; other kinds are filtered out.
    event = await next_event()
    assert event["type"] == "AGENT_EVENT_TYPE_PUT"
    assert event["revision"] == str(first.revision)
    async with (
        AgentRegistration(
            registry, agent(registry_pb2.AGENT_KIND_GENERATOR, 7004), agent_id="gen-9"
        ),
        AgentRegistration(
            registry, agent(registry_pb2.AGENT_KIND_ORACLE, 7005), agent_id="late"
        ) as late,
    ):
        event = await next_event()
        assert event["type"] == "AGENT_EVENT_TYPE_PUT"
        assert event["agent"]["name"] == "agents/late"  # type: ignore[index]
        assert event["agent"]["epoch"] == str(late.epoch)  # type: ignore[index]
    event = await next_event()
    assert event["type"] == "AGENT_EVENT_TYPE_DELETE"
    assert event["reason"] == "AGENT_DELETE_REASON_DEREGISTERED"
    assert event["agent"]["name"] == "agents/late"  # type: ignore[index]
    watch.send_signal(signal.SIGINT)
    assert await watch.wait() == 130
    assert "Traceback" not in watch.stderr_text()


async def test_watch_reports_a_server_error(cluster, helix_env):
    code, token, _ = await run(
        "token",
        "mint",
        "--sub",
        "nobody",
        "--scope",
        "dna.read",
        "--data-dir",
        str(cluster.data_dir),
        env=helix_env,
    )
    assert code == 0
    env = dict(helix_env, HELIX_TOKEN=token.strip())
    for command in (["list"], ["get", "a1"], ["watch"]):
        code, out, err = await run(
            "agents", *command, "--address", cluster.address_of("registry"), env=env
        )
        assert (code, out) == (1, ""), command
        assert "error: PERMISSION_DENIED" in err
        assert "SCOPE_MISSING" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--kind", "wizard"], "argument --kind: unknown kind 'wizard' (one of: "),
        (["watch", "--kind", "unspecified"], "unknown kind 'unspecified'"),
        (["list", "--health", "sick"], "argument --health: unknown health 'sick'"),
        (["list", "--selector", "=x"], "argument --selector: bad label selector '=x'"),
        (["watch", "--selector", "a,,b"], "bad label selector 'a,,b'"),
        (["get", "Not A Name"], "argument name: bad agent name 'Not A Name'"),
        (["get", "dnas/x"], "bad agent name 'dnas/x'"),
        (["watch", "--from", "-5"], "argument --from: '-5': a revision is not negative"),
        (["watch", "--from", "soon"], "'soon' is not a revision"),
        (["list", "--timeout", "forever"], "--timeout: 'forever' is not a duration"),
        (["fly"], "argument ACTION: invalid choice: 'fly'"),
    ],
)
async def test_bad_input_exits_2_with_a_clear_message(helix_env, args, message):
    code, out, err = await run("agents", *args, "--token", "t", env=helix_env)
    assert (code, out) == (2, "")
    assert message in err
    assert "Traceback" not in err


async def test_agents_alone_shows_usage(helix_env):
    code, _, err = await run("agents", env=helix_env)
    assert code == 2
    assert "usage: helix agents" in err
    assert "the following arguments are required: ACTION" in err


async def test_no_credentials_exits_2(helix_env):
    env = {k: v for k, v in helix_env.items() if k != "HELIX_DATA_DIR"}
    code, _, err = await run("agents", "list", env=env)
    assert code == 2
    assert "no credentials: pass --token" in err


# --- issue 10 item 11: a damaged registry database stops the server with one clear line ---


@pytest.mark.parametrize("command", [["registry", "serve"], ["up"]])
async def test_a_damaged_database_stops_the_server_with_one_clear_line(
    helix_env, tmp_path, command
):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "registry.sqlite3").write_bytes(b"not a database" * 300)
    code, _, err = await run(*command, "--port", "0", "--data-dir", str(data), env=helix_env)
    assert code == 1
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert str(data / "registry.sqlite3") in line
    assert "not a usable registry database" in line
