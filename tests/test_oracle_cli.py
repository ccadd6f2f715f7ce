"""`helix oracle test`, `helix oracles list|get` and `helix oracle serve` as a user runs
them: here, against `helix up`, and a standalone oracle agent in a registry."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc

from harness import HELIX, clean_env
from harness import run_helix as run
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
RASTRIGIN = str(ROOT / "examples" / "dna" / "rastrigin.yaml")
ROW = re.compile(r"^[0-9a-f]{12}  PASSED  [0-9.e+-]+ ", re.MULTILINE)


@pytest.fixture
async def suite(clusters):
    return await clusters("embedded", generators=1)


def flags(suite) -> list[str]:
    return ["--address", suite.address_of("oracle"), "--data-dir", str(suite.data_dir)]


async def test_oracle_test_runs_here_and_through_the_embedded_suite(suite, helix_env):
    code, here, err = await run("oracle", "test", "rastrigin", "--dna", RASTRIGIN, "--samples", "5")
    assert code == 0, err
    assert len(ROW.findall(here)) == 5, here
    code, there, err = await run(
        "oracle",
        "test",
        "rastrigin",
        "--dna",
        RASTRIGIN,
        "--samples",
        "5",
        *flags(suite),
        env=helix_env,
    )
    assert code == 0, err
    assert [line.split()[:3] for line in there.splitlines()] == [
        line.split()[:3] for line in here.splitlines()
    ]  # the same candidates and scores, wherever the oracle runs


async def test_oracle_test_prints_json_and_takes_named_candidates(helix_env):
    code, out, err = await run(
        "oracle", "test", "sphere", "--dna", str(ROOT / "examples" / "dna" / "sphere.yaml"),
        "--candidate", json.dumps({"x": [0.0] * 10}), "--candidate", json.dumps({"x": [1.0] * 10}),
        "--json",
    )  # fmt: skip
    assert code == 0, err
    verdicts = [json.loads(line) for line in out.splitlines()]
    assert [v["score"] for v in verdicts] == [0.0, 10.0]
    assert verdicts[1]["genes"] == {"x": [1.0] * 10}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--candidate", "{oops"], "--candidate #1: not JSON"),
        (["--candidate", '{"x": [9]}'], "--candidate #1 does not fit the DNA"),
        (["--samples", "0"], "--samples: must be 1..10000"),
    ],
)
async def test_oracle_test_bad_input_is_a_usage_error(args, message):
    code, _, err = await run("oracle", "test", "rastrigin", "--dna", RASTRIGIN, *args)
    assert code == 2
    assert message in err


async def test_oracle_test_shows_a_broken_workers_stderr(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import sys\n"
        "sys.stderr.write('cannot load the model: weights.bin missing\\n')\n"
        "sys.exit(4)\n"
    )
    config = tmp_path / "oracles.yaml"
    config.write_text(
        f'oracles:\n  broken:\n    kind: command\n    argv: ["{sys.executable}", worker.py]\n'
    )
    code, out, err = await run(
        "oracle", "test", "broken", "--dna", RASTRIGIN, "--samples", "2", "--config", str(config)
    )
    assert code == 1, err
    assert "ERROR" in out
    assert "weights.bin missing" in out


async def test_oracle_test_reports_an_invalid_configuration(tmp_path):
    config = tmp_path / "oracles.yaml"
    config.write_text("oracles:\n  x:\n    kind: builtin\n    function: cube\n")
    code, _, err = await run("oracle", "test", "x", "--dna", RASTRIGIN, "--config", str(config))
    assert code == 2
    assert "oracles.yaml:4: oracles.x.function" in err


async def test_oracles_list_and_get(suite, helix_env):
    code, out, err = await run("oracles", "list", *flags(suite), env=helix_env)
    assert code == 0, err
    assert re.search(r"^oracles/tsp +builtin +100000 +minimize", out, re.MULTILINE), out
    code, out, err = await run(
        "oracles", "get", "rastrigin", "--json", *flags(suite), env=helix_env
    )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["name"] == "oracles/rastrigin"
    assert len(shown["configHash"]) == 64
    code, _, err = await run("oracles", "get", "nope", *flags(suite), env=helix_env)
    assert code == 1
    assert "NOT_FOUND" in err


async def test_oracle_hash_is_the_hash_the_agent_reports(suite, helix_env, tmp_path):
    # The embedded suite serves the builtin oracles with their defaults, as builtins.yaml.
    code, out, err = await run(
        "oracles", "get", "rastrigin", "--json", *flags(suite), env=helix_env
    )
    assert code == 0, err
    reported = json.loads(out)["configHash"]
    builtins = ROOT / "examples" / "oracles" / "builtins.yaml"
    code, out, err = await run("oracle", "hash", "oracles/rastrigin", "--config", str(builtins))
    assert (code, out.strip()) == (0, reported), err
    invalid = tmp_path / "oracles.yaml"
    invalid.write_text("oracles:\n  x:\n    kind: builtin\n    function: cube\n")
    code, _, err = await run("oracle", "hash", "x", "--config", str(invalid))
    assert code == 2
    assert "oracles.yaml:4: oracles.x.function" in err


async def test_an_oracle_agent_registers_and_leaves(suite, processes, tmp_path, helix_env):
    folder = tmp_path / "oracles"
    shutil.copytree(ROOT / "examples" / "oracles", folder)
    config = folder / "mine.yaml"
    config.write_text("oracles:\n  sphere:\n    kind: builtin\n  onemax:\n    kind: builtin\n")
    env = clean_env({"auth_hs256_dir": suite.key_dir})
    agent = await processes.start(
        [HELIX, "oracle", "serve", "--port", "0", "--oracle-config", str(config),
         "--registry-address", suite.address_of("registry"), "--agent-id", "oracle-7"],
        env,
    )  # fmt: skip
    stub = registry_pb2_grpc.RegistryServiceStub(suite.channel("registry"))

    async def registered() -> registry_pb2.Agent | None:
        listed = await stub.ListAgents(registry_pb2.ListAgentsRequest())
        return next((a for a in listed.agents if a.name == "agents/oracle-7"), None)

    found = await eventually(registered)
    assert found.kind == registry_pb2.AGENT_KIND_ORACLE
    assert list(found.oracle.oracles) == ["oracles/onemax", "oracles/sphere"]
    assert found.endpoint == agent.address
    code, _, err = await run(
        "oracle", "test", "sphere", "--dna", str(ROOT / "examples" / "dna" / "sphere.yaml"),
        "--address", agent.address, "--data-dir", str(suite.data_dir), env=helix_env,
    )  # fmt: skip
    assert code == 0, err
    agent.send_signal(signal.SIGTERM)
    assert await agent.wait() == 0
    assert await registered() is None


EXAMPLE_PAIRS = [
    ("sphere", "sphere"),
    ("sphere", "sphere-random"),
    ("rastrigin", "rastrigin"),
    ("onemax", "onemax"),
    ("tsp", "tsp"),
    ("knapsack-python", "knapsack"),
    ("knapsack-node", "knapsack"),
    ("queueing", "queueing"),
    ("hyperparameters", "hyperparameters"),
    ("primer", "primer"),
]


@pytest.mark.parametrize(("oracle", "dna"), EXAMPLE_PAIRS)
async def test_every_example_oracle_scores_its_example_dna(oracle, dna):
    if oracle == "knapsack-node" and shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    code, out, err = await run(
        "oracle", "test", oracle, "--dna", str(ROOT / "examples" / "dna" / f"{dna}.yaml"),
        "--samples", "4", "--config", str(ROOT / "examples" / "oracles" / "oracles.yaml"),
    )  # fmt: skip
    assert code == 0, out + err
    rows = out.split("\n\n")[0].splitlines()[1:]
    assert len(rows) == 4
    assert all(row.split()[1] in ("PASSED", "FAILED") for row in rows), out


def test_every_example_dna_has_an_example_oracle():
    dnas = {p.stem for p in (ROOT / "examples" / "dna").glob("*.yaml")}
    covered = {dna for _, dna in EXAMPLE_PAIRS}
    assert dnas <= covered, dnas - covered


async def test_a_server_with_an_invalid_configuration_stops_naming_its_problems(tmp_path):
    config = tmp_path / "oracles.yaml"
    config.write_text("oracles:\n  x:\n    kind: command\n    argv: []\n")
    code, _, err = await run(
        "up", "--port", "0", "--data-dir", str(tmp_path / "data"), "--oracle-config", str(config)
    )
    assert code == 2
    assert "oracles.yaml:4: oracles.x.argv: must be a non-empty list" in err
