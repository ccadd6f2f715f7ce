"""The Node.js examples (examples/node/) under test: where they are, how to start them, and
a live embedded suite whose Python oracle agent hosts `knapsack-node` and is SERVING.

The suite's oracle configuration is `knapsack-node` copied out of
examples/oracles/oracles.yaml, next to a copy of node_worker.js: the same settings and the
same worker file give the same config_hash (the hash covers settings and file contents,
not the folder), which a test checks. The examples' whole file is not used because its
`sphere-far` remote oracle is unreachable in tests and makes the embedded agent DEGRADED,
and the orchestrator prefers SERVING agents: a SERVING Node agent would then do all the
work, and the point of these tests is that both do some.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from harness import HELIX, Cluster, Processes, RunningProcess, clean_env, run_command, run_helix

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node"
ORACLES_DIR = ROOT / "examples" / "oracles"
EXAMPLE_CONFIG = ORACLES_DIR / "oracles.yaml"
DNA_DIR = ROOT / "examples" / "dna"
NODE = shutil.which("node")
ORACLE = "oracles/knapsack-node"
# Every scope the Node client needs; the Node agent's own registry calls.
CLIENT_SCOPES = ("agents.read", "dna.read", "oracles.read", "runs.read", "runs.write")
AGENT_SCOPES = ("agents.write", "agents.read")
# The ready line of the Node agent (the harness's LISTENING pattern matches it too).
AGENT_READY = r"^helix node oracle listening on (?P<address>\S+:\d+)$"
# The agents of these tests drain within AGENT_GRACE seconds (--grace), then deregister
# (one call, at most 10 s): STOP_WITHIN leaves room for both on a slow machine.
AGENT_GRACE = "5"
STOP_WITHIN = 60.0

requires_node = pytest.mark.skipif(NODE is None, reason="node (Node.js >= 20) is not installed")


def require_node_modules() -> None:
    """Fail, saying what to run, when `npm ci` was not run in examples/node."""
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_DIR}/node_modules is missing: run `npm ci` there (make does it)")


def write_knapsack_config(directory: Path) -> Path:
    """`knapsack-node` of the examples' configuration, alone, with its worker, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    shutil.copy(ORACLES_DIR / "node_worker.js", directory / "node_worker.js")
    config = directory / "oracles.yaml"
    config.write_text(
        yaml.safe_dump({"oracles": {"knapsack-node": example["oracles"]["knapsack-node"]}})
    )
    return config


async def config_hash(config: Path, name: str = "knapsack-node") -> str:
    code, out, err = await run_helix("oracle", "hash", name, "--config", str(config))
    assert code == 0, err
    return out.strip()


@asynccontextmanager
async def knapsack_suite(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Processes, Path]]:
    """`helix up` hosting only knapsack-node (a copy of the example's entry and worker under
    `tmp_path/oracles`, data in `tmp_path/data`): the suite, its processes and the config."""
    require_node_modules()
    config = write_knapsack_config(tmp_path / "oracles")
    async with Processes() as processes:
        cluster = await start_suite(tmp_path / "data", config, processes)
        try:
            yield cluster, processes, config
        finally:
            await cluster.close()


async def start_suite(data_dir: Path, config: Path, processes: Processes) -> Cluster:
    """`helix up` on a loopback port with `config` and the examples' DNAs."""
    cluster = Cluster(
        "embedded",
        data_dir,
        dna_dir=DNA_DIR,
        settings={"oracle_config": config},
        processes=processes,
    )
    return await cluster.start()


def node_env(token: str | None, **extra: str) -> dict[str, str]:
    env = clean_env()
    if token is not None:
        env["HELIX_TOKEN"] = token
    env.update(extra)
    return env


async def start_agent(  # noqa: PLR0913 - keyword-only options, each with its default
    cluster: Cluster,
    processes: Processes,
    config_hash_: str,
    *,
    agent_id: str = "node-oracle-1",
    extra: Sequence[str] = (),
    keys: bool = True,
    env: Mapping[str, str] | None = None,
) -> RunningProcess:
    """The Node oracle agent, registered with the cluster's registry; waits for its
    registration line. With `keys` it checks callers' tokens with the cluster's keys and
    mints its own registry tokens with them; else `env` gives it a token (HELIX_TOKEN or
    HELIX_TOKEN_FILE)."""
    assert NODE is not None
    argv = [NODE, str(NODE_DIR / "oracle_agent.js"), "--config-hash", config_hash_]
    argv += ["--registry-address", cluster.address_of("registry"), "--agent-id", agent_id]
    argv += ["--grace", AGENT_GRACE]
    if keys:
        argv += ["--auth-hs256-dir", str(cluster.key_dir)]
    argv += extra
    agent = await processes.start(
        argv, node_env(None, **(env or {})), ready=AGENT_READY, name="node-oracle"
    )
    await agent.wait_for_line(rf"^registered as agents/{agent_id}$", within=30)
    return agent


async def run_client(
    cluster: Cluster, *args: str, token: str | None = "", within: float = 120.0
) -> tuple[int, str, str]:
    """The Node client to its end: (exit status, stdout, stderr). `token` "" means one with
    every scope it needs; None means none at all."""
    assert NODE is not None
    if token == "":
        token = cluster.token("node-client", CLIENT_SCOPES)
    argv = [NODE, str(NODE_DIR / "client.js"), "--address", cluster.address_of("orchestrator")]
    return await run_command([*argv, *args], node_env(token), within=within)


def outcome_line(stdout: str) -> dict[str, object]:
    """The JSON outcome the client prints last with --json."""
    return json.loads(stdout.strip().splitlines()[-1])


async def helix_run_outcome(config: Path, out: Path, *args: str) -> dict[str, object]:
    """`helix run` of knapsack on its own fresh embedded suite (Python oracles only), as the
    client's outcome fields."""
    argv = [HELIX, "run", str(DNA_DIR / "knapsack.yaml"), "--oracle", "knapsack-node"]
    argv += ["--oracle-config", str(config), "--json", "--out", str(out), *args]
    code, stdout, stderr = await run_command(argv, clean_env(), within=180)
    assert code == 0, stderr
    summary = json.loads(stdout)
    return {
        "state": summary["state"],
        "stop_reason": summary["stop_reason"],
        "generation": summary["generations"] - 1,  # a count, generation 0 included
        "evaluations": summary["evaluations"],
        "duplicates": summary["duplicates"],
        "failed": summary["failed"],
        "errors": summary["errors"],
        "oracle_config_hash": summary["oracle_config_hash"],
        "best_id": summary["best_candidate_id"],
        "best_score": summary["best_score"],
        "best_genes": summary["best_candidate"],
    }


# What identifies a run's result. cache_hits is left out: which agent's verdict cache a
# duplicate meets depends on which agent got its batch, not on the seed.
OUTCOME_KEYS = (
    "state",
    "stop_reason",
    "generation",
    "evaluations",
    "duplicates",
    "failed",
    "errors",
    "oracle_config_hash",
    "best_id",
    "best_score",
    "best_genes",
)


def same_outcome(outcome: dict[str, object]) -> dict[str, object]:
    return {key: outcome[key] for key in OUTCOME_KEYS}


def python_verdicts_for(data_dir: Path, run: str) -> int:
    """Verdicts the suite's Python oracle agent reported for `run` (its JSON Lines reports)."""
    count = 0
    for path in (data_dir / "reports").glob("*.jsonl*"):
        for line in path.read_text().splitlines():
            if line and json.loads(line).get("run") == run:
                count += 1
    return count
