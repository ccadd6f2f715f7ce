"""docker-compose.yml's topology, run as the processes it describes, without Docker.

Each compose service's own command line, environment and volumes are taken from the
file and translated only where a container differs from a process on this machine: a
service name or `$HOSTNAME` becomes 127.0.0.1 with a free port (after checking the file's
port is the one that service listens on), etcd://etcd:2379 a real etcd on loopback, a
named volume a directory shared by every service that mounts it (so the registry's key
reaches the agents as the `helix-keys` volume carries it), a bind mount the repository
path, HELIX_HOST loopback. Services start in depends_on order, replicas as many as
`deploy.replicas` says. Then: every compose healthcheck passes, every agent is
registered at the address it advertises, `helix run` against the orchestrator succeeds,
every metric the dashboard and the autoscaler read is exported by the processes of the
roles, and each process drains to exit status 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_processes import Instance, check_agents, check_metrics, run_search, scrape

from helix.security.keys import load_hs256_dir
from helix.security.tokens import mint

from deploy_support import (
    COMPOSE,
    ROOT,
    compose_command,
    dockerfile_exec_form,
    dockerfile_instructions,
    final_stage,
    healthcheck_command,
    helix_argv,
    yaml_documents,
)
from etcd_support import EtcdCluster, free_ports
from harness import HELIX, Processes, clean_env, run_helix

pytestmark = pytest.mark.timeout(300)
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass
class Topology:
    document: dict[str, Any]
    root: Path
    etcd_endpoint: str
    instances: dict[str, list[Instance]] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, Any]:
        return self.document["services"]

    def listen_port(self, service: str) -> int:
        """The --port the compose file gives `service`."""
        argv = helix_argv(compose_command(self.services[service]["command"]), service) or []
        ports = [w.split("=", 1)[1] for w in argv if w.startswith("--port=")]
        assert len(ports) == 1, f"compose {service}: one --port=N, please"
        return int(ports[0])

    def volumes_of(self, service: str, index: int) -> dict[str, Path]:
        """Container path -> local path for one replica: named volumes shared by name,
        bind mounts from the repository, tmpfs and the image's VOLUME its own."""
        own = self.root / "replicas" / f"{service}-{index}"
        volumes: dict[str, Path] = {}
        for spec in self.services[service].get("volumes", []):
            source, target = spec.split(":")[:2]
            named = self.root / "volumes" / source
            volumes[target] = ROOT / source if source.startswith(".") else named
        for target in self.services[service].get("tmpfs", []):
            volumes[target] = own / target.strip("/")
        for keyword, rest in final_stage(dockerfile_instructions()):
            if keyword == "VOLUME":  # anonymous unless a named volume is mounted there
                for target in dockerfile_exec_form(rest):
                    volumes.setdefault(target, own / target.strip("/"))
        for local in volumes.values():
            if not local.exists():  # a bind-mounted file or directory is there already
                local.mkdir(parents=True)
        nest_volumes(volumes)
        return volumes

    def translate(self, value: str, instance: Instance) -> str:
        """A flag's or variable's value as this machine needs it (module docstring)."""
        if value.startswith("etcd://"):
            for endpoint in value.removeprefix("etcd://").split(","):
                host, port = endpoint.rsplit(":", 1)
                assert host in self.services, f"{instance.service}: no compose service {host}"
                assert port == "2379", f"{instance.service}: etcd serves 2379, not {port}"
            return f"etcd://{self.etcd_endpoint}"
        address = re.fullmatch(r"(\$HOSTNAME|[A-Za-z0-9.-]+):(\d+)", value)
        if address:
            host, port = address.groups()
            own = host == "$HOSTNAME" or host in LOOPBACK
            target = instance.service if own else host
            assert target in self.services, f"{instance.service}: {value}: no service {host}"
            assert int(port) == self.listen_port(target), f"{instance.service}: {value}"
            real = instance.port if own else self.instances[target][0].port
            return f"127.0.0.1:{real}"
        if value.startswith("/"):
            return str(self.local_path(value, instance))
        return value

    def local_path(self, path: str, instance: Instance) -> Path:
        mounts = [m for m in instance.volumes if path == m or path.startswith(m + "/")]
        assert mounts, f"compose {instance.service}: {path} is on no volume (read_only root)"
        mount = max(mounts, key=len)
        return instance.volumes[mount] / path[len(mount) :].lstrip("/")

    def argv(self, command: list[str], instance: Instance) -> list[str]:
        argv = helix_argv(command, instance.service)
        assert argv is not None, f"compose {instance.service}: not a helix command"
        translated = [HELIX]
        for word in argv:
            flag, equals, value = word.partition("=")
            if flag == "--port" and equals:
                translated.append(f"--port={instance.port}")
            elif flag == "--metrics-port" and equals:
                translated.append(f"--metrics-port={instance.metrics_port}")
            elif equals and flag.startswith("--"):
                translated.append(f"{flag}={self.translate(value, instance)}")
            else:
                translated.append(self.translate(word, instance))
        return translated

    def env(self, instance: Instance) -> dict[str, str]:
        settings: dict[str, str] = {}
        for keyword, rest in final_stage(dockerfile_instructions()):
            if keyword == "ENV":
                settings.update(re.findall(r"(HELIX_\w+)=(\S+)", rest))
        service = self.services[instance.service]
        settings.update({k: str(v) for k, v in service.get("environment", {}).items()})
        for name, value in settings.items():
            settings[name] = self.translate(value, instance)
        # Listen on loopback only: the container's 0.0.0.0 is its own network namespace.
        settings.update({"HELIX_HOST": "127.0.0.1", "HELIX_METRICS_HOST": "127.0.0.1"})
        env = clean_env()
        env.update(settings)
        return env

    def start_order(self) -> list[str]:
        """The helix services in an order depends_on allows (etcd is started apart)."""
        order: list[str] = []
        pending = [s for s in self.services if s != "etcd"]
        while pending:
            ready = [
                s
                for s in pending
                if all(d == "etcd" or d in order for d in self.services[s].get("depends_on", {}))
            ]
            assert ready, f"compose: depends_on has a cycle among {pending}"
            order += ready
            pending = [s for s in pending if s not in ready]
        return order


def nest_volumes(volumes: dict[str, Path]) -> None:
    """A volume mounted inside another (the registry's keys inside its data dir) appears
    there: a link in the outer volume's directory."""
    for target, local in volumes.items():
        for outer, outer_local in volumes.items():
            if target != outer and target.startswith(outer.rstrip("/") + "/"):
                link = outer_local / target[len(outer) :].lstrip("/")
                if not link.exists():
                    link.symlink_to(local)


async def start_topology(topology: Topology, processes: Processes) -> None:
    for service in topology.start_order():
        replicas = topology.services[service].get("deploy", {}).get("replicas", 1)
        ports = free_ports(2 * replicas)
        group = [
            Instance(service, i, ports[2 * i], ports[2 * i + 1], topology.volumes_of(service, i))
            for i in range(replicas)
        ]
        topology.instances[service] = group

        async def start(instance: Instance) -> None:
            command = compose_command(topology.services[instance.service]["command"])
            argv = topology.argv(command, instance)
            instance.process = await processes.start(
                argv, topology.env(instance), name=instance.name
            )

        await asyncio.gather(*(start(instance) for instance in group))


async def test_the_compose_topology_runs_a_search(tmp_path: Path, etcd: EtcdCluster):
    topology = Topology(yaml_documents(COMPOSE)[0], tmp_path, etcd.endpoint)
    async with Processes(tmp_path / "logs") as processes:
        await start_topology(topology, processes)
        instances = [i for group in topology.instances.values() for i in group]
        assert {i.service for i in instances} == {"registry", "generator", "oracle", "orchestrator"}

        for instance in instances:  # what `docker compose ps` shows as healthy
            check = healthcheck_command(topology.services[instance.service]["healthcheck"]["test"])
            argv = topology.argv(check, instance)
            status, out, err = await run_helix(*argv[1:], env=clean_env(), within=30)
            assert status == 0, f"{instance.name} healthcheck: {out}{err}"

        keys = topology.root / "volumes" / "helix-keys"
        _, signer = load_hs256_dir(keys)
        assert signer is not None, "the registry created no key in the helix-keys volume"
        token = mint(signer, "tester", ["agents.read", "runs.read", "runs.write"], 600)
        await check_agents(topology.instances, token)
        await run_search(topology.instances["orchestrator"][0], token, tmp_path / "run")

        exported: set[str] = set()
        for instance in instances:
            exported |= await asyncio.to_thread(scrape, instance.metrics_url)
        check_metrics(exported)

        for service in reversed(topology.start_order()):  # SIGTERM: drain, deregister
            for instance in topology.instances[service]:
                assert instance.process is not None
                assert await instance.process.stop(grace=30) == 0, instance.name
