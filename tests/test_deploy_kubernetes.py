"""deploy/base's workloads run as the processes their pods would be, without a cluster.

The rendered kustomization is read as kubelet would: each Deployment's replicas (the
oracle's from its HorizontalPodAutoscaler's minReplicas) become pods; each pod's volumes
directories (emptyDirs its own, ConfigMaps written out, the `helix-auth` Secret made as
the docs say, mode 0440 as `defaultMode` asks); its init container's command runs for
real (the key copied to the emptyDir, 0600); `$(VAR)` in args is expanded from the
container's env, POD_IP being 127.0.0.1. Container ports become free loopback ports, a
Service name the first pod it selects, etcd's members a real etcd. Then: every readiness
probe's gRPC health check answers SERVING, every agent is registered where it
advertises, `helix run` through one orchestrator replica succeeds, the other replica
knows the run (shared state on etcd), the metrics the dashboard and the autoscaler read
are exported, and each pod drains to exit status 0.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from deploy_processes import Instance, check_agents, check_metrics, run_search, scrape

from helix.security.keys import load_hs256_dir
from helix.security.tokens import mint

from deploy_support import DEPLOY, pod_spec, render_kustomization, selects
from etcd_support import EtcdCluster, free_ports
from harness import HELIX, Processes, clean_env, run_command, run_helix

pytestmark = pytest.mark.timeout(300)
Obj = dict[str, Any]
ORDER = ("registry", "generator", "oracle", "orchestrator")  # as pods become ready
POD_IP = "127.0.0.1"


class Cluster:
    """The rendered objects, the pods started from them and the Secret they mount."""

    def __init__(self, objects: list[Obj], root: Path, etcd_endpoint: str) -> None:
        self.objects = objects
        self.root = root
        self.etcd_endpoint = etcd_endpoint
        self.pods: dict[str, list[Instance]] = {}
        self.container_ports: dict[str, dict[int, int]] = {}  # pod name -> declared -> real
        self.secret = {"hs-1.hs256": base64.b64encode(secrets.token_bytes(48)).decode()}

    def workload(self, component: str) -> Obj:
        (found,) = [
            o
            for o in self.objects
            if o["kind"] == "Deployment"
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        return found

    def replicas(self, workload: Obj) -> int:
        if "replicas" in workload["spec"]:
            return int(workload["spec"]["replicas"])
        (hpa,) = [
            o
            for o in self.objects
            if o["kind"] == "HorizontalPodAutoscaler"
            and o["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
        ]
        return int(hpa["spec"]["minReplicas"])

    def volumes(self, pod: str, spec: Obj) -> dict[str, Path]:
        """Volume name -> local directory, filled as kubelet fills it."""
        config_maps = {o["metadata"]["name"]: o for o in self.objects if o["kind"] == "ConfigMap"}
        local: dict[str, Path] = {}
        for volume in spec.get("volumes", []):
            directory = self.root / "pods" / pod / volume["name"]
            directory.mkdir(parents=True)
            if "configMap" in volume:
                for name, text in config_maps[volume["configMap"]["name"]]["data"].items():
                    (directory / name).write_text(text)
            elif "secret" in volume:
                assert volume["secret"]["secretName"] == "helix-auth"
                for name, text in self.secret.items():
                    (directory / name).write_text(text)
                    os.chmod(directory / name, volume["secret"]["defaultMode"])
            else:
                assert "emptyDir" in volume, volume
            local[volume["name"]] = directory
        return local

    def service_address(self, host: str, port: str) -> str:
        """A Service's `name:port` as the address of the first pod it selects."""
        (service,) = [
            o for o in self.objects if o["kind"] == "Service" and o["metadata"]["name"] == host
        ]
        (entry,) = [p for p in service["spec"]["ports"] if str(p["port"]) == port]
        for component, pods in self.pods.items():
            workload = self.workload(component)
            labels = workload["spec"]["template"]["metadata"]["labels"]
            if selects(service["spec"]["selector"], labels):
                container = pod_spec(workload)["containers"][0]
                named = {p["name"]: p["containerPort"] for p in container["ports"]}
                declared = named.get(entry["targetPort"], entry["targetPort"])
                return f"127.0.0.1:{self.container_ports[pods[0].name][declared]}"
        raise AssertionError(f"Service {host} selects no pod started before it")

    def translate(self, value: str, pod: Instance, mounts: dict[str, Path]) -> str:
        if value.startswith("etcd://"):
            for endpoint in value.removeprefix("etcd://").split(","):
                host, port = endpoint.rsplit(":", 1)
                assert re.fullmatch(r"etcd-\d\.etcd", host), endpoint  # the StatefulSet's pods
                assert port == "2379", endpoint
            return f"etcd://{self.etcd_endpoint}"
        address = re.fullmatch(r"([A-Za-z0-9.-]+):(\d+)", value)
        if address:
            host, port = address.groups()
            if host == POD_IP:
                return f"127.0.0.1:{self.container_ports[pod.name][int(port)]}"
            return self.service_address(host, port)
        if value.startswith("/"):
            mount = max((m for m in mounts if value == m or value.startswith(m + "/")), key=len)
            return str(mounts[mount] / value[len(mount) :].lstrip("/"))
        return value


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def container_env(container: Obj) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP":
            env[item["name"]] = POD_IP
        else:
            env[item["name"]] = "helix-pod"
    return env


def mounts_of(container: Obj, volumes: dict[str, Path]) -> dict[str, Path]:
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


async def run_init_containers(spec: Obj, volumes: dict[str, Path]) -> None:
    """Each init container's shell command, its mount paths made local ones."""
    for init in spec.get("initContainers", []):
        command = list(init["command"])
        assert command[:2] == ["sh", "-c"], init
        script = command[2]
        for path, local in sorted(mounts_of(init, volumes).items(), key=lambda m: -len(m[0])):
            script = script.replace(path, str(local))
        status, out, err = await run_command(["sh", "-c", script], clean_env(), within=30)
        assert status == 0, f"init container {init['name']}: {out}{err}"


async def start_pods(cluster: Cluster, processes: Processes, component: str) -> None:
    workload = cluster.workload(component)
    spec = pod_spec(workload)
    (container,) = spec["containers"]
    count = cluster.replicas(workload)
    pods = []
    for index in range(count):
        name = f"{component}-{index}"
        declared = [p["containerPort"] for p in container["ports"]]
        real = free_ports(len(declared))
        cluster.container_ports[name] = dict(zip(declared, real, strict=True))
        grpc_port, metrics_port = (cluster.container_ports[name][p] for p in (50051, 9464))
        volumes = cluster.volumes(name, spec)
        await run_init_containers(spec, volumes)
        pods.append(Instance(component, index, grpc_port, metrics_port, volumes))
    cluster.pods[component] = pods

    async def start(pod: Instance) -> None:
        env = container_env(container)
        mounts = mounts_of(container, pod.volumes)
        argv = [expand(word, env) for word in [*container.get("command", []), *container["args"]]]
        assert argv[0] == "helix", argv
        translated = [HELIX]
        for word in argv[1:]:
            flag, equals, value = word.partition("=")
            if flag in ("--port", "--metrics-port") and equals:
                translated.append(f"{flag}={cluster.container_ports[pod.name][int(value)]}")
            elif equals:
                translated.append(f"{flag}={cluster.translate(value, pod, mounts)}")
            else:
                translated.append(word)
        settings = clean_env()
        for name, value in env.items():
            settings[name] = cluster.translate(value, pod, mounts)
        settings.update({"HELIX_HOST": "127.0.0.1", "HELIX_METRICS_HOST": "127.0.0.1"})
        pod.process = await processes.start(translated, settings, name=pod.name)

    await asyncio.gather(*(start(pod) for pod in pods))


async def probe_readiness(cluster: Cluster) -> None:
    """Each pod's readiness probe, as kubelet's gRPC probe asks it."""
    for component, pods in cluster.pods.items():
        (container,) = pod_spec(cluster.workload(component))["containers"]
        probe = container["readinessProbe"]["grpc"]
        for pod in pods:
            port = cluster.container_ports[pod.name][probe["port"]]
            service = probe.get("service", "")
            args = ["probe", f"--address=127.0.0.1:{port}", f"--service={service}"]
            status, out, err = await run_helix(*args, env=clean_env(), within=30)
            assert status == 0, f"{pod.name} readiness: {out}{err}"


async def test_the_kubernetes_workloads_run_a_search(tmp_path: Path, etcd: EtcdCluster):
    cluster = Cluster(render_kustomization(DEPLOY / "base"), tmp_path, etcd.endpoint)
    async with Processes(tmp_path / "logs") as processes:
        for component in ORDER:
            assert all(m.running for m in etcd.members), "etcd has ended"
            await start_pods(cluster, processes, component)
        await probe_readiness(cluster)

        keys = cluster.pods["orchestrator"][0].volumes["keys"]
        assert [(p.name, p.stat().st_mode & 0o777) for p in keys.iterdir()] == [
            ("hs-1.hs256", 0o600)
        ]
        _, signer = load_hs256_dir(keys)
        assert signer is not None
        token = mint(signer, "tester", ["agents.read", "runs.read", "runs.write"], 600)
        await check_agents(cluster.pods, token)
        summary = await run_search(cluster.pods["orchestrator"][0], token, tmp_path / "run")

        other = cluster.pods["orchestrator"][1]  # the replica that did not take the run
        status, out, err = await run_helix(
            "runs",
            "get",
            str(summary["run"]),
            f"--address=127.0.0.1:{other.port}",
            f"--token={token}",
            env=clean_env(),
        )
        assert status == 0, err
        assert "SUCCEEDED" in out

        exported: set[str] = set()
        for pods in cluster.pods.values():
            for pod in pods:
                exported |= await asyncio.to_thread(scrape, pod.metrics_url)
        check_metrics(exported)

        for component in reversed(ORDER):
            for pod in cluster.pods[component]:
                assert pod.process is not None
                assert await pod.process.stop(grace=30) == 0, pod.name
