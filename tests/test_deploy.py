"""The deployment files (Dockerfile, docker-compose.yml, deploy/) against the code.

There is no Docker engine or kubectl here, so the files are read as data: every YAML
document parses; the kustomizations are rendered (tests/deploy_support.py) and each object
is checked structurally (selectors, probes, ports, resources, security contexts); and the
drift checks: every `helix` command line in them is parsed by helix's own argument parser
with its exact flags, every HELIX_* variable given to it is a setting of that command,
every port they name is one the command listens on, every path it is told to read or
write is mounted (writable where it writes), and every metric the dashboard, the HPA and
the prometheus-adapter rule read is exported by a real server scraped over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import re
import shlex
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.agents.membership import RegistryMembership
from helix.cli.main import _build_parser, main
from helix.common import config as cfg
from helix.generator.agent import GeneratorAgentConfig
from helix.oracle.agent import OracleAgentConfig
from helix.oracle.serving import require_valid_config
from helix.orchestrator.serve import OrchestratorServerConfig
from helix.registry.serve import RegistryServerConfig
from helix.security.client import SERVICE_TOKEN_ENV, SERVICE_TOKEN_FILE_ENV
from helix.suite import EmbeddedConfig

from deploy_support import (
    COMPOSE,
    DEPLOY,
    ROOT,
    WORKLOADS,
    HelixCommand,
    Obj,
    compose_command,
    dockerfile_exec_form,
    dockerfile_instructions,
    final_stage,
    healthcheck_command,
    helix_argv,
    pod_spec,
    promql_metric_names,
    render_kustomization,
    selects,
    workloads_selected,
    yaml_documents,
)
from harness import HELIX, Processes, clean_env

KUSTOMIZATIONS = [DEPLOY / "base", DEPLOY / "overlays" / "dev"]
DASHBOARD = DEPLOY / "grafana" / "helix-dashboard.json"
ADAPTER = DEPLOY / "monitoring" / "prometheus-adapter-values.yaml"
SCHEMAS = Path(__file__).resolve().parent / "deploy_schemas.mjs"
PARSER = _build_parser()

# The server commands, the settings class each loads, and the services each serves.
CONFIGS: dict[tuple[str, ...], type[Any]] = {
    ("up",): EmbeddedConfig,
    ("registry", "serve"): RegistryServerConfig,
    ("generator", "serve"): GeneratorAgentConfig,
    ("oracle", "serve"): OracleAgentConfig,
    ("orchestrator", "serve"): OrchestratorServerConfig,
}
_SERVICES = {
    "registry": registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    "generator": generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name,
    "oracle": oracle_pb2.DESCRIPTOR.services_by_name["OracleService"].full_name,
    "orchestrator": orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
}
SERVED: dict[tuple[str, ...], set[str]] = {("up",): {"", *_SERVICES.values()}} | {
    (role, "serve"): {"", service} for role, service in _SERVICES.items()
}
# Settings a server command writes to (its mount must be writable).
WRITES = ("data_dir", "oracle_reports_dir")
KINDS = {
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}


# --- where the helix command lines are ----------------------------------------------------


@dataclasses.dataclass
class Mount:
    """A directory a command's container sees: where its files come from (None: an empty
    volume), and whether the command may write there."""

    source: Path | dict[str, str] | None
    writable: bool


@dataclasses.dataclass
class Found:
    """A helix command line with the container it runs in and what that container mounts."""

    command: HelixCommand
    mounts: dict[str, Mount]
    container: str = ""


def image_env() -> dict[str, str]:
    """The HELIX_* (and other) variables the image sets for every command it runs."""
    env: dict[str, str] = {}
    for keyword, rest in final_stage(dockerfile_instructions()):
        if keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value
    return env


def image_mounts() -> dict[str, Mount]:
    """What the image itself provides: its COPY destinations (read-only at run time) and
    its VOLUME (writable)."""
    mounts: dict[str, Mount] = {}
    for keyword, rest in final_stage(dockerfile_instructions()):
        if keyword == "COPY" and not rest.startswith("--from"):
            source, destination = rest.split()
            mounts[destination.rstrip("/") or "/"] = Mount(ROOT / source, False)
        if keyword == "VOLUME":
            for path in dockerfile_exec_form(rest):
                mounts[path] = Mount(None, True)
    return mounts


def dockerfile_commands() -> list[Found]:
    exposed: set[int] = set()
    found = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "EXPOSE":
            exposed |= {int(p) for p in rest.split()}
        if keyword in ("CMD", "HEALTHCHECK"):
            text = rest.split("CMD", 1)[1].strip() if keyword == "HEALTHCHECK" else rest
            argv = helix_argv(dockerfile_exec_form(text), f"Dockerfile {keyword}")
            assert argv is not None, f"Dockerfile {keyword} does not run helix: {rest}"
            command = HelixCommand(f"Dockerfile {keyword}", argv, image_env())
            found.append(Found(command, {}, "Dockerfile"))
    for item in found:
        item.mounts = image_mounts()
        if item.command.argv[0] != "probe":
            item.command.ports = exposed
    return found


def compose() -> Obj:
    return yaml_documents(COMPOSE)[0]


def compose_commands() -> list[Found]:
    found = []
    for name, service in compose()["services"].items():
        env = {**image_env(), **{k: str(v) for k, v in service.get("environment", {}).items()}}
        mounts = image_mounts()
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            local = (ROOT / source) if source.startswith(".") else None
            mounts[target] = Mount(local, "ro" not in mode)
        for tmpfs in service.get("tmpfs", []):
            mounts[tmpfs] = Mount(None, True)
        ports = {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
        argv = helix_argv(compose_command(service.get("command", [])), f"compose {name}")
        if argv is not None:
            command = HelixCommand(f"compose {name}", argv, env, ports)
            found.append(Found(command, mounts, f"compose {name}"))
        if "healthcheck" in service:
            check = healthcheck_command(service["healthcheck"]["test"])
            argv = helix_argv(check, f"compose {name} healthcheck")
            if argv is not None:
                where = f"compose {name} healthcheck"
                found.append(Found(HelixCommand(where, argv, env), mounts, f"compose {name}"))
    return found


def kubernetes_commands(objects: list[Obj]) -> list[Found]:
    config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    found = []
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            where = f"{obj['kind']} {obj['metadata']['name']} container {container['name']}"
            argv = helix_argv([*container.get("command", []), *container.get("args", [])], where)
            if argv is None:
                continue
            given = {e["name"]: e.get("value", "<from>") for e in container.get("env", [])}
            env = {**image_env(), **given}
            mounts = {}
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                source = config_maps[volume["configMap"]["name"]] if "configMap" in volume else None
                mounts[mount["mountPath"]] = Mount(source, not mount.get("readOnly", False))
            ports = {p["containerPort"] for p in container.get("ports", [])}
            found.append(Found(HelixCommand(where, argv, env, ports), mounts, where))
    return found


def all_commands() -> list[Found]:
    found = dockerfile_commands() + compose_commands()
    for directory in KUSTOMIZATIONS:
        found += kubernetes_commands(render_kustomization(directory))
    return found


COMMANDS = all_commands()


def command_ids() -> list[str]:
    return [f"{f.command.where}: helix {' '.join(f.command.argv[:2])}" for f in COMMANDS]


# --- the real parser ----------------------------------------------------------------------


def subcommand(argv: list[str]) -> tuple[tuple[str, ...], argparse.ArgumentParser]:
    """The command path (`registry serve`) and its own parser, found as argparse does."""
    parser, path = PARSER, []
    for word in argv:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
        path.append(word)
    return tuple(path), parser


def parse(found: Found) -> tuple[tuple[str, ...], argparse.Namespace]:
    """Parse a command line as `helix` would, with every flag spelled exactly (argparse
    would take an abbreviation, so a renamed flag could still pass)."""
    command = found.command
    path, parser = subcommand(command.argv)
    assert path, f"{command.where}: `helix {command.argv[0]}` is not a helix command"
    for word in command.argv[len(path) :]:
        flag = word.split("=", 1)[0]
        if flag.startswith("--"):
            assert flag in parser._option_string_actions, (
                f"{command.where}: `helix {' '.join(path)}` has no flag {flag}"
            )
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace = PARSER.parse_args(command.argv)
    except SystemExit:
        pytest.fail(f"{command.where}: helix rejects {command.argv}: {errors.getvalue()}")
    return path, namespace


def localised(found: Found, namespace: argparse.Namespace, tmp_path: Path) -> argparse.Namespace:
    """The flags with each path inside a mount made a local one: the mounted files where
    the mount has them (a ConfigMap's data written out), else an empty directory."""
    values = vars(namespace).copy()
    for key, value in vars(namespace).items():
        if isinstance(value, str) and value.startswith("/"):
            mount_path, mount = mount_of(found, value)
            local = tmp_path / key
            if isinstance(mount.source, Path):
                local = mount.source
            elif isinstance(mount.source, dict):
                local.mkdir(parents=True)
                for name, text in mount.source.items():
                    (local / name).write_text(text)
            relative = value[len(mount_path) :].lstrip("/")
            values[key] = str(local / relative) if relative else str(local)
    return argparse.Namespace(**values)


def mount_of(found: Found, path: str) -> tuple[str, Mount]:
    """The mount a container path lies in (the deepest), or a failure naming the path."""
    candidates = [m for m in found.mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    assert candidates, (
        f"{found.command.where}: {path} is on no volume or image path (the root filesystem "
        f"is read-only): mounts {sorted(found.mounts)}"
    )
    deepest = max(candidates, key=len)
    return deepest, found.mounts[deepest]


def server_settings(found: Found, tmp_path: Path) -> tuple[tuple[str, ...], Any]:
    """The settings a server command starts with: its flags, then its environment, then
    the defaults, loaded (and validated) by helix.common.config as the command does."""
    path, namespace = parse(found)
    config_class = CONFIGS[path]
    env = {k: v for k, v in found.command.env.items() if k.startswith(cfg.ENV_PREFIX)}
    env = {k: localised_value(found, v, tmp_path / k) for k, v in env.items()}
    return path, cfg.load(config_class, localised(found, namespace, tmp_path), env)


def localised_value(found: Found, value: str, local: Path) -> str:
    if not value.startswith("/"):
        return value
    mount_path, mount = mount_of(found, value)
    return (
        str(mount.source / value[len(mount_path) :].lstrip("/"))
        if isinstance(mount.source, Path)
        else str(local)
    )


def setting_names(config_class: type[Any]) -> set[str]:
    return {cfg.env_name(f.name) for f in dataclasses.fields(config_class)}


# --- every file parses --------------------------------------------------------------------


def test_every_yaml_file_parses_and_the_dashboard_is_json():
    files = [*sorted(DEPLOY.rglob("*.yaml")), COMPOSE]
    assert len(files) >= 10
    for path in files:
        assert yaml_documents(path), f"{path} has no document"
    assert json.loads(DASHBOARD.read_text())["panels"]


def test_every_server_command_is_found():
    """The drift checks below see every role in every deployment file."""
    seen = {(f.command.where.split()[0], tuple(f.command.argv[:2])) for f in COMMANDS}
    for role in ("registry", "generator", "oracle", "orchestrator"):
        assert ("compose", (role, "serve")) in seen
        assert ("Deployment", (role, "serve")) in seen
    assert ("Dockerfile", ("up", "--port")) in seen
    assert ("Dockerfile", ("probe", "--address")) in seen


# --- drift: flags, settings, ports, paths -------------------------------------------------


@pytest.mark.parametrize("found", COMMANDS, ids=command_ids())
def test_command_line_is_accepted_by_helix(found: Found, tmp_path: Path):
    path, _ = parse(found)
    if path not in CONFIGS:
        assert path == ("probe",), f"{found.command.where}: unexpected command {path}"
        return
    config_class = CONFIGS[path]
    _, parser = subcommand(found.command.argv)
    for field in dataclasses.fields(config_class):  # the class is the one the command loads
        assert cfg.flag_name(field) in parser._option_string_actions
    allowed = setting_names(config_class)
    if issubclass(config_class, RegistryMembership):  # agents' and orchestrator's calls
        allowed |= {SERVICE_TOKEN_ENV, SERVICE_TOKEN_FILE_ENV}
    for name in found.command.env:
        if name.startswith(cfg.ENV_PREFIX):
            assert name in allowed, (
                f"{found.command.where}: {name} is not a setting of helix {' '.join(path)}"
            )
    server_settings(found, tmp_path)  # raises ConfigError naming a bad value


@pytest.mark.parametrize("found", COMMANDS, ids=command_ids())
def test_ports_and_paths_are_the_ones_the_command_uses(found: Found, tmp_path: Path):
    path, namespace = parse(found)
    if path not in CONFIGS:
        return
    _, settings = server_settings(found, tmp_path)
    grpc_port: int = settings.port
    listens = {grpc_port, settings.metrics_port} - {None}
    assert found.command.ports <= listens, (
        f"{found.command.where}: ports {sorted(found.command.ports - listens)} are not ones "
        f"helix {' '.join(path)} listens on ({sorted(listens)})"
    )
    assert settings.metrics_port is not None, f"{found.command.where}: no --metrics-port"
    assert settings.host == "0.0.0.0", f"{found.command.where}: gRPC only on loopback"
    assert settings.metrics_host == "0.0.0.0", f"{found.command.where}: metrics on loopback"
    if isinstance(settings, RegistryMembership) and settings.registry_address:
        # Listening on 0.0.0.0, an agent would advertise 127.0.0.1 to the registry.
        advertised: str = settings.advertise_address
        assert advertised, f"{found.command.where}: registers with no --advertise-address"
        assert advertised.rsplit(":", 1)[1] == str(grpc_port), found.command.where
    for name in vars(namespace):
        value = getattr(namespace, name)
        if isinstance(value, str) and value.startswith("/"):
            _, mount = mount_of(found, value)
            if name in WRITES:
                assert mount.writable, f"{found.command.where}: {value} ({name}) is read-only"
    for name, value in found.command.env.items():
        if name == "HELIX_AUTH_HS256_DIR":
            mount_of(found, value)


@pytest.mark.parametrize("found", COMMANDS, ids=command_ids())
def test_health_probes_ask_a_served_service_on_the_served_port(found: Found, tmp_path: Path):
    """Every `helix probe` (Dockerfile, compose) asks a service its container's command
    serves, on the port that command listens on."""
    path, namespace = parse(found)
    if path != ("probe",):
        return
    host, port = namespace.address.rsplit(":", 1)
    assert host == "127.0.0.1", found.command.where
    servers = [c for c in COMMANDS if c.container == found.container and c is not found]
    assert len(servers) == 1, f"{found.command.where}: which command does it probe?"
    served_path, settings = server_settings(servers[0], tmp_path)
    assert namespace.service in SERVED[served_path], found.command.where
    assert int(port) == settings.port, f"{found.command.where}: not the port it listens on"


def docs_commands() -> list[list[str]]:
    """The `helix ...` commands of docs/deploy.md's ```sh blocks (continuations joined;
    also after `docker compose exec SERVICE` and inside `$(...)`)."""
    commands, in_block, joined = [], False, ""
    for line in (ROOT / "docs" / "deploy.md").read_text().splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```sh"
            continue
        if not in_block:
            continue
        joined += line.rstrip().removesuffix("\\")
        if line.rstrip().endswith("\\"):
            continue
        words = shlex.split(joined.split("#")[0].replace("$(", " ").replace(")", " "))
        joined = ""
        for i, word in enumerate(words):  # helix as the command, not a namespace's name
            if word == "helix" and (i == 0 or words[i - 2 : i - 1] == ["exec"]):
                commands.append(words[i + 1 :])
    return commands


def test_docs_helix_commands_use_real_flags():
    commands = docs_commands()
    assert len(commands) >= 3
    published = {  # host port -> the compose service behind it
        int(str(port).split(":")[-2]): name
        for name, service in compose()["services"].items()
        for port in service.get("ports", [])
    }
    wanted = {"agents": "registry", "run": "orchestrator", "runs": "orchestrator"}
    for argv in commands:
        _, namespace = parse(Found(HelixCommand("docs/deploy.md", argv), {}))
        address = getattr(namespace, "address", None)
        if address and argv[0] in wanted:
            port = int(address.rsplit(":", 1)[1])
            assert published.get(port) == wanted[argv[0]], f"docs/deploy.md: {address}"


# --- Kubernetes ---------------------------------------------------------------------------


@pytest.fixture(params=KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(DEPLOY)))
def rendered(request: pytest.FixtureRequest) -> list[Obj]:
    return render_kustomization(request.param)


def test_objects_are_known_named_and_namespaced(rendered: list[Obj]):
    names = set()
    for obj in rendered:
        assert (obj["apiVersion"], obj["kind"]) in KINDS, (
            f"unknown {obj['apiVersion']} {obj['kind']}"
        )
        assert obj["metadata"]["name"], obj
        assert obj["metadata"]["namespace"].startswith("helix")
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "helix"
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in names, f"{key} twice"
        names.add(key)


def test_workloads_are_hardened_probed_and_bounded(rendered: list[Obj]):
    workloads = [o for o in rendered if o["kind"] in WORKLOADS]
    assert len(workloads) == 5
    for obj in workloads:
        name = obj["metadata"]["name"]
        template = obj["spec"]["template"]
        assert selects(obj["spec"]["selector"], template["metadata"]["labels"]), name
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
        volumes = {v["name"] for v in spec.get("volumes", [])} | {
            t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])
        }
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: no volume {mount['name']}"
        for container in spec["containers"]:
            check_probes(name, container)


def test_every_helix_container_runs_the_overlays_image():
    """The base's `helix` image, renamed by the dev overlay, in every container that runs
    helix (and the init containers that copy its key)."""
    for directory, expected in zip(KUSTOMIZATIONS, ("helix", "helix:dev"), strict=True):
        rendered = render_kustomization(directory)
        images = {
            container["image"]
            for obj in rendered
            if obj["kind"] in WORKLOADS and obj["metadata"]["name"].startswith("helix-")
            for container in [
                *pod_spec(obj).get("initContainers", []),
                *pod_spec(obj)["containers"],
            ]
        }
        assert images == {expected}, directory


def check_probes(name: str, container: Obj) -> None:
    ports = {p["containerPort"] for p in container["ports"]}
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container[kind]
        handler = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
        assert handler, f"{name}: {kind} has no handler"
        port = named.get(handler["port"], handler["port"])
        assert port in ports, f"{name}: {kind} port {handler['port']} is not a container port"
        if container["image"].split(":")[0].endswith("helix"):
            assert "grpc" in probe, f"{name}: {kind} is not a gRPC health probe"


def test_kubernetes_helix_containers_probe_their_grpc_port_and_services(
    rendered: list[Obj], tmp_path: Path
):
    for index, found in enumerate(kubernetes_commands(rendered)):
        path, settings = server_settings(found, tmp_path / str(index))
        obj_name = found.command.where.split()[1]
        obj = next(
            o for o in rendered if o["metadata"]["name"] == obj_name and o["kind"] in WORKLOADS
        )
        container = next(
            c for c in pod_spec(obj)["containers"] if c["name"] == found.command.where.split()[-1]
        )
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[kind]["grpc"]
            assert probe["port"] == settings.port, f"{obj_name}: {kind} is not on --port"
            assert probe.get("service", "") in SERVED[path], f"{obj_name}: {kind} service"
        readiness = container["readinessProbe"]["grpc"]
        assert readiness.get("service"), f"{obj_name}: readiness asks the service itself"
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == settings.metrics_port, obj_name


def pods_ports(workloads: list[Obj]) -> tuple[set[int], set[str]]:
    numbers, names = set(), set()
    for obj in workloads:
        for container in pod_spec(obj)["containers"]:
            for port in container.get("ports", []):
                numbers.add(port["containerPort"])
                names.add(port.get("name", ""))
    return numbers, names


def test_services_select_workloads_and_target_their_ports(rendered: list[Obj]):
    for service in (o for o in rendered if o["kind"] == "Service"):
        workloads = workloads_selected(rendered, service["spec"]["selector"])
        assert workloads, f"Service {service['metadata']['name']} selects no workload"
        numbers, names = pods_ports(workloads)
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in numbers | names, f"{service['metadata']['name']}: {target}"


def test_addresses_in_commands_name_services_that_reach_the_server(rendered: list[Obj]):
    """--registry-address and --store=etcd:// name a Service (or a StatefulSet pod behind
    its headless Service) whose port reaches the right server."""
    services = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "Service"}
    for found in kubernetes_commands(rendered):
        _, namespace = parse(found)
        addresses: list[tuple[str, tuple[str, ...] | None]] = []
        if getattr(namespace, "registry_address", None):
            addresses.append((namespace.registry_address, ("registry", "serve")))
        if getattr(namespace, "store", None):
            for endpoint in namespace.store.removeprefix("etcd://").split(","):
                addresses.append((endpoint, None))
        for address, role in addresses:
            host, port = address.rsplit(":", 1)
            service = services[host.split(".")[-1]]
            assert int(port) in {p["port"] for p in service["spec"]["ports"]}, address
            for workload in workloads_selected(rendered, service["spec"]["selector"]):
                if role is not None:
                    commands = kubernetes_commands([workload])
                    assert [tuple(c.command.argv[:2]) for c in commands] == [role], address


def test_disruption_budgets_autoscaler_and_policies_select_workloads(rendered: list[Obj]):
    kinds = {o["kind"] for o in rendered}
    assert {"PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    budgets = set()
    for obj in rendered:
        if obj["kind"] == "PodDisruptionBudget":
            selected = workloads_selected(rendered, obj["spec"]["selector"])
            assert len(selected) == 1, obj["metadata"]["name"]
            budgets.add(selected[0]["metadata"]["name"])
        if obj["kind"] == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            assert any(
                o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
                for o in rendered
            ), target
            assert target["name"] == "helix-oracle"
        if obj["kind"] == "NetworkPolicy":
            check_network_policy(rendered, obj)
    assert {"helix-oracle", "helix-generator", "helix-orchestrator"} <= budgets


def check_network_policy(rendered: list[Obj], policy: Obj) -> None:
    name = policy["metadata"]["name"]
    selected = workloads_selected(rendered, policy["spec"]["podSelector"])
    assert selected, f"NetworkPolicy {name} selects no workload"
    own_ports, _ = pods_ports(selected)
    for rule in policy["spec"].get("ingress", []):
        for port in rule.get("ports", []):
            assert port["port"] in own_ports, f"{name}: ingress port {port['port']}"
        for peer in rule.get("from", []):
            if "podSelector" in peer and "helix.dev/client" not in str(peer):
                assert workloads_selected(rendered, peer["podSelector"]), f"{name}: from {peer}"
    for rule in policy["spec"].get("egress", []):
        for peer in rule.get("to", []):
            targets = workloads_selected(rendered, peer["podSelector"])
            assert targets, f"{name}: egress to {peer} selects nothing"
            ports, _ = pods_ports(targets)
            for port in rule.get("ports", []):
                assert port["port"] in ports, f"{name}: egress port {port['port']}"


def test_mounted_config_maps_are_the_examples_and_valid(tmp_path: Path):
    rendered = render_kustomization(DEPLOY / "base")
    maps = {o["metadata"]["name"]: o["data"] for o in rendered if o["kind"] == "ConfigMap"}
    oracles = tmp_path / "oracles.yaml"
    oracles.write_text(maps["helix-oracles"]["oracles.yaml"])
    require_valid_config(oracles)
    assert oracles.read_text() == (ROOT / "examples/oracles/builtins.yaml").read_text()
    for name, text in maps["helix-dna"].items():
        assert text == (ROOT / "examples" / "dna" / name).read_text(), f"{name} differs"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["dna", "validate", str(ROOT / "examples" / "dna" / name)]) == 0


def test_manifests_and_compose_match_their_published_schemas(tmp_path: Path):
    """The Kubernetes API's schemas (kubernetes-models, and the Prometheus Operator's for
    the PodMonitor) and the compose-spec schema, by tests/deploy_schemas.mjs under node."""
    models = ROOT / "node_modules" / "kubernetes-models"
    assert models.is_dir(), f"{models} is missing: `make test` installs it with npm ci"
    objects = [render_kustomization(directory) for directory in KUSTOMIZATIONS]
    others = [yaml_documents(path) for path in sorted((DEPLOY / "monitoring").glob("*.yaml"))]
    manifests = [o for group in objects + others for o in group if "apiVersion" in o]
    (tmp_path / "objects.json").write_text(json.dumps(manifests))
    (tmp_path / "compose.json").write_text(json.dumps(compose()))
    argv = ["node", str(SCHEMAS), str(tmp_path / "objects.json"), str(tmp_path / "compose.json")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(manifests)} Kubernetes objects and the compose file are valid" in result.stdout


# --- compose and Dockerfile ---------------------------------------------------------------


def test_compose_services_are_complete_healthchecked_and_hardened():
    document = compose()
    services = document["services"]
    assert {"etcd", "registry", "generator", "oracle", "orchestrator"} <= set(services)
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    declared = set(document.get("volumes", {}))
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert "healthcheck" in service, f"compose {name}: no healthcheck"
        for other, condition in service.get("depends_on", {}).items():
            assert other in services, f"compose {name} depends on unknown {other}"
            assert condition["condition"] == "service_healthy", name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"compose {name}: {source} does not exist"
            else:
                assert source in declared, f"compose {name}: volume {source} not declared"
        if name != "etcd":
            assert service["read_only"] is True, name
            assert service["user"] == "10001:10001", name
            assert service["cap_drop"] == ["ALL"], name
    for role in ("generator", "oracle"):
        assert services[role]["deploy"]["replicas"] >= 2


def test_compose_addresses_name_services_listening_there():
    services = compose()["services"]
    for found in compose_commands():
        _, namespace = parse(found)
        store = getattr(namespace, "store", None) or ""
        for address in (getattr(namespace, "registry_address", ""), store[len("etcd://") :]):
            if address:
                host, port = address.rsplit(":", 1)
                assert host in services, f"{found.command.where}: no service {host}"
                if host != "etcd":
                    target = next(
                        c for c in compose_commands() if c.command.where == f"compose {host}"
                    )
                    assert f"--port={port}" in target.command.argv, address


def test_dockerfile_is_slim_non_root_and_multi_stage():
    instructions = dockerfile_instructions()
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(r for k, r in instructions if k == "ARG")))
    froms = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) for base in froms]
    assert len(bases) == 2, "a build stage and a runtime stage"
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", base) for base in bases), bases
    users = [rest for keyword, rest in final_stage(instructions) if keyword == "USER"]
    assert users, "the image runs as root"
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1])
    assert user == "10001:10001"
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line]
    kept = [line[1:] for line in ignored if line.startswith("!")]
    assert next(line for line in ignored if not line.startswith("#")) == "*", "an allow-list"
    assert not any(k.startswith((".git", ".venv", "tests", "node_modules")) for k in kept)


def test_image_build_has_every_file_the_package_build_reads():
    """What pyproject.toml's build reads (readme, packages, force-included files) passes
    .dockerignore's allow-list and is copied into the build stage."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = [project["project"]["readme"], "pyproject.toml", "requirements.lock"]
    needed += [*wheel["packages"], *wheel.get("force-include", {})]
    ignore_lines = (ROOT / ".dockerignore").read_text().splitlines()
    kept = [line[1:].rstrip("/") for line in ignore_lines if line.startswith("!")]
    instructions = dockerfile_instructions()
    build_stage = instructions[: len(instructions) - len(final_stage(instructions))]
    copied = [
        source.rstrip("/")
        for keyword, rest in build_stage
        if keyword == "COPY"
        for source in rest.split()[:-1]
    ]
    for path in needed:
        assert (ROOT / path).exists(), path
        inside = [k for k in kept if path == k or path.startswith(k + "/")]
        assert inside, f".dockerignore leaves {path} out of the build context"
        assert any(path == c or path.startswith(c + "/") for c in copied), f"{path} not copied"


# --- drift: metric names ------------------------------------------------------------------


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def dashboard_expressions() -> Iterator[str]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]


def adapter_rules() -> list[Obj]:
    return yaml_documents(ADAPTER)[0]["rules"]["external"]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every metric family and sample name a real `helix up` (all four services in one
    process, with the registrations, the oracles and the caches of a deployment) serves
    on its /metrics, as Prometheus reads it."""

    async def scrape() -> str:
        async with Processes() as processes:
            data = Path(processes.log_dir) / "data"
            argv = [HELIX, "up", "--port", "0", "--metrics-port", "0", "--data-dir", str(data)]
            process = await processes.start(argv, clean_env(), name="suite")
            line = await process.wait_for_line(re.compile(r"metrics on (?P<url>\S+)"))
            url = line.group("url")

            def get() -> str:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return str(response.read().decode())

            return await asyncio.to_thread(get)

    text = asyncio.run(scrape())
    names = set()
    for family in text_string_to_metric_families(text):
        # A family with no sample yet (no refusal so far) still names its series.
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_queries_only_exported_metrics(exported: set[str]):
    used = set()
    for expression in dashboard_expressions():
        for name in promql_metric_names(expression):
            assert name in exported, f"the dashboard queries {name}, which no server exports"
            used.add(name)
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket"} <= used
    for prefix in ("helix_registry_", "helix_oracle_", "helix_generator_", "helix_orchestrator_"):
        assert any(n.startswith(prefix) for n in used), f"no {prefix}* panel"
        assert any(n.startswith(prefix) for n in exported), f"{prefix}* exported by no server"


def test_autoscaler_metric_is_served_by_the_adapter_from_exported_metrics(exported: set[str]):
    rendered = render_kustomization(DEPLOY / "base")
    (hpa,) = [o for o in rendered if o["kind"] == "HorizontalPodAutoscaler"]
    rules = {rule["name"]["as"]: rule for rule in adapter_rules()}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "External"
        name = metric["external"]["metric"]["name"]
        assert name in rules, f"the HPA follows {name}, which no adapter rule serves"
        rule = rules[name]
        queried = promql_metric_names(rule["seriesQuery"]) | promql_metric_names(
            rule["metricsQuery"]
        )
        series_names = promql_metric_names(rule["seriesQuery"])
        assert any(re.search(rule["name"]["matches"], n) for n in series_names), rule
        for series in queried:
            assert series in exported, f"the adapter rule reads {series}, which is not exported"
        assert "helix_orchestrator_backlog" in queried


def test_metric_name_extraction_sees_through_promql():
    expression = (
        "histogram_quantile(0.99, sum by (le, grpc_method) "
        '(rate(grpc_server_handling_seconds_bucket{job=~"$job", grpc_code!="OK"}[5m]))) '
        "/ clamp_min(max by (<<.GroupBy>>) "
        "(helix_orchestrator_oracle_capacity{<<.LabelMatchers>>}), 1)"
    )
    assert promql_metric_names(expression) == {
        "grpc_server_handling_seconds_bucket",
        "helix_orchestrator_oracle_capacity",
    }
