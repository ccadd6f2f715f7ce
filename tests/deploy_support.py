"""What tests/test_deploy.py reads the deployment files with: YAML documents, a small
kustomize renderer, and the helix command lines found in the Dockerfile, the compose file
and the Kubernetes manifests.

The renderer does what `kubectl kustomize` does for the fields deploy/ uses (resources
as files or directories, namespace, labels with includeTemplates/includeSelectors,
commonLabels, images, replicas, configMapGenerator with disableNameSuffixHash) and
refuses any other field by name, so a kustomization that grows a feature it does not
know fails the test instead of being rendered wrongly.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

Obj = dict[str, Any]

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "labels",
    "commonLabels",
    "images",
    "replicas",
    "configMapGenerator",
    "generatorOptions",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


def yaml_documents(path: Path) -> list[Obj]:
    """Every non-empty document of a YAML file (safe_load_all), each a mapping."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ValueError(f"{path}: document {index} is a {type(document).__name__}")
    return documents


# --- kustomize ----------------------------------------------------------------------------


def render_kustomization(directory: Path) -> list[Obj]:
    """The objects `kubectl kustomize directory` prints, for the fields deploy/ uses."""
    kustomization = yaml_documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise ValueError(
            f"{directory}/kustomization.yaml: fields this renderer does not know: "
            f"{sorted(unknown)} (teach tests/deploy_support.py, or do without them)"
        )
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += render_kustomization(path)
        else:
            objects += [copy.deepcopy(d) for d in yaml_documents(path)]
    objects += _generated_config_maps(directory, kustomization)
    _transform(objects, kustomization)
    return objects


def _transform(objects: list[Obj], kustomization: Obj) -> None:
    """Apply a kustomization's transformers to the objects of its resources, in place."""
    for entry in kustomization.get("labels", []):
        templates = entry.get("includeTemplates", False)
        _add_labels(objects, entry["pairs"], templates, entry.get("includeSelectors", False))
    if kustomization.get("commonLabels"):
        _add_labels(objects, kustomization["commonLabels"], True, True)
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    for replicas in kustomization.get("replicas", []):
        _set_replicas(objects, replicas["name"], replicas["count"])
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]


def _generated_config_maps(directory: Path, kustomization: Obj) -> list[Obj]:
    generators = kustomization.get("configMapGenerator", [])
    if generators and not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise ValueError("configMapGenerator with name suffix hashes is not rendered here")
    maps = []
    for generator in generators:
        unknown = set(generator) - {"name", "files"}
        if unknown:
            raise ValueError(f"configMapGenerator {generator['name']}: unknown {unknown}")
        data = {}
        for spec in generator["files"]:
            key, _, path = spec.rpartition("=")
            source = directory / path
            data[key or source.name] = source.read_text()
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return maps


def _add_labels(
    objects: list[Obj], pairs: dict[str, str], templates: bool, selectors: bool
) -> None:
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        spec = obj.get("spec", {})
        if templates and obj["kind"] in WORKLOADS:
            spec["template"]["metadata"].setdefault("labels", {}).update(pairs)
        if selectors and obj["kind"] in WORKLOADS:
            spec["selector"].setdefault("matchLabels", {}).update(pairs)
        if selectors and obj["kind"] == "Service":
            spec.setdefault("selector", {}).update(pairs)


def _set_image(objects: list[Obj], image: Obj) -> None:
    """kustomize's images transformer. An entry that matches no container is an error here
    (kustomize ignores it): an overlay naming an image its base already renamed does
    nothing, silently."""
    matched = 0
    for container in all_containers(objects):
        name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
        if name == image["name"]:
            new = image.get("newName", name)
            container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
            matched += 1
    if not matched:
        raise ValueError(f"images: no container has the image {image['name']!r}")


def _set_replicas(objects: list[Obj], name: str, count: int) -> None:
    targets = [o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == name]
    if not targets:
        raise ValueError(f"replicas: no workload named {name}")
    for target in targets:
        target["spec"]["replicas"] = count


# --- objects ------------------------------------------------------------------------------


def pod_spec(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def all_containers(objects: list[Obj]) -> Iterator[Obj]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            spec = pod_spec(obj)
            yield from spec.get("initContainers", [])
            yield from spec["containers"]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions, or a Service's plain
    map) selects `labels`; an empty selector selects everything."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        match_labels, expressions = selector, []
    else:
        match_labels, expressions = (
            selector.get("matchLabels", {}),
            selector.get("matchExpressions", []),
        )
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expression in expressions:
        value, operator = labels.get(expression["key"]), expression["operator"]
        ok = {
            "In": value in expression.get("values", []),
            "NotIn": value not in expression.get("values", []),
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[operator]
        if not ok:
            return False
    return True


def workloads_selected(objects: list[Obj], selector: Obj) -> list[Obj]:
    return [
        o
        for o in objects
        if o["kind"] in WORKLOADS
        and selects(selector, o["spec"]["template"]["metadata"].get("labels", {}))
    ]


# --- helix command lines ------------------------------------------------------------------


@dataclass
class HelixCommand:
    """One `helix ...` command line found in a deployment file, with what it is given."""

    where: str  # for messages: file and place
    argv: list[str]  # after `helix`
    env: dict[str, str] = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)  # container/exposed ports it must serve


SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}


def helix_argv(command: list[str], where: str) -> list[str] | None:
    """The arguments after `helix` of a command line (or of `sh -c "[exec] helix ..."`),
    None when it does not run helix."""
    if not command:
        return None
    if Path(command[0]).name == "helix":
        return list(command[1:])
    if command[0] in SHELLS and len(command) >= 3 and command[1] == "-c":
        words = shlex.split(command[2])
        if words and words[0] == "exec":
            words = words[1:]
        if not words or Path(words[0]).name != "helix":
            return None
        if any(w in ("&&", "||", ";", "|") for w in words):
            raise ValueError(f"{where}: one helix command per shell line, please: {command[2]!r}")
        return words[1:]
    return None


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of each Dockerfile instruction, continuation lines joined and
    comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions of the image's last stage (what runs), from its FROM on."""
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1] :] if starts else instructions


def dockerfile_exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"Dockerfile: not an exec-form JSON array: {rest}")
    return value


def compose_command(value: Any) -> list[str]:
    """A compose `command` (a list, or a string compose splits like a shell would)."""
    words = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    return [w.replace("$$", "$") for w in words]


def healthcheck_command(test: Any) -> list[str]:
    """A compose healthcheck `test` as the command it runs."""
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "CMD":
        return [str(r) for r in rest]
    if kind == "CMD-SHELL":
        return ["sh", "-c", " ".join(rest)]
    raise ValueError(f"healthcheck test {test!r} is neither CMD nor CMD-SHELL")


def promql_metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label
    matchers, grouping clauses, ranges, Grafana and adapter template variables, numbers,
    functions and keywords are taken out."""
    text = re.sub(r"<<[^>]*>>", "", expression)  # prometheus-adapter templates
    text = re.sub(r'"[^"]*"', "", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return names - PROMQL_WORDS


PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "stddev", "topk", "bottomk", "quantile",
    "rate", "irate", "increase", "delta", "histogram_quantile", "clamp_min", "clamp_max",
    "abs", "ceil", "floor", "round", "label_values", "vector", "scalar", "time",
    "and", "or", "unless", "bool", "offset", "avg_over_time", "max_over_time",
    "min_over_time", "sum_over_time", "absent", "e", "inf", "nan",
}  # fmt: skip
