"""Deployment files run as processes here (tests/test_deploy_compose.py,
tests/test_deploy_kubernetes.py): one process per replica, and what both check once the
topology runs — agents registered where they advertise, a search run through the
orchestrator, the metrics the dashboard and the autoscaler read, the drain."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc

from deploy_support import DEPLOY, ROOT, promql_metric_names, yaml_documents
from harness import RunningProcess, clean_env, run_helix
from waiting import eventually

KIND = {"generator": "AGENT_KIND_GENERATOR", "oracle": "AGENT_KIND_ORACLE"}


@dataclass
class Instance:
    """One replica (a compose service's, a pod of a workload) as a process here."""

    service: str
    index: int
    port: int  # the free port standing in for its --port
    metrics_port: int  # and for its --metrics-port
    volumes: dict[str, Path]  # container path -> local directory or file
    process: RunningProcess | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"


def scrape(url: str) -> set[str]:
    """The metric family and sample names of one /metrics (blocking: use a thread)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


async def check_agents(instances: dict[str, list[Instance]], token: str) -> None:
    """Every generator and oracle replica registered, SERVING, at the address it
    advertises (which the orchestrator dials)."""
    expected = {
        (KIND[service], f"127.0.0.1:{instance.port}")
        for service in KIND
        for instance in instances[service]
    }
    registry = f"127.0.0.1:{instances['registry'][0].port}"
    async with grpc.aio.insecure_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)

        async def registered() -> bool:
            listed = await stub.ListAgents(
                registry_pb2.ListAgentsRequest(page_size=100),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=5,
            )
            seen = {
                (registry_pb2.AgentKind.Name(a.kind), a.endpoint)
                for a in listed.agents
                if a.health == registry_pb2.AGENT_HEALTH_SERVING
            }
            return expected <= seen

        await eventually(registered, 30, what="every agent replica registered")


def check_metrics(exported: set[str]) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "helix-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in promql_metric_names(target["expr"])
    }
    adapter = yaml_documents(DEPLOY / "monitoring" / "prometheus-adapter-values.yaml")[0]
    for rule in adapter["rules"]["external"]:
        queried |= promql_metric_names(rule["metricsQuery"])
    missing = queried - exported
    assert not missing, f"queried but exported by no process of the topology: {sorted(missing)}"


async def run_search(orchestrator: Instance, token: str, out: Path) -> dict[str, object]:
    """`helix run` of rastrigin (1000 evaluations) through `orchestrator`: its summary."""
    status, printed, err = await run_helix(
        "run",
        str(ROOT / "examples" / "dna" / "rastrigin.yaml"),
        "--oracle=rastrigin",
        "--budget=1000",
        "--seed=7",
        f"--address=127.0.0.1:{orchestrator.port}",
        f"--token={token}",
        "--json",
        f"--out={out}",
        env=clean_env(),
        within=120,
    )
    assert status == 0, err
    summary: dict[str, object] = json.loads(printed)
    assert summary["state"] == "SUCCEEDED", summary
    assert int(str(summary["evaluations"])) >= 1000
    return summary
