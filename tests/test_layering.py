"""The package layering of services/helix, read from the source (DESIGN.md §2, §10).

Each package may import only the packages below it, so that the oracle and orchestrator
never depend on the generator agent, agents never see a server's internals, and the
domain cores stay free of grpc (they are tested without a network).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parent.parent / "services"
HELIX = SERVICES / "helix"

_BASE = {"common", "security", "genome", "agents", "etcd"}
_SERVICES = {"registry", "generator", "oracle", "orchestrator"}
# package -> the helix packages it may import (besides itself and the generated helix.v1)
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "security": {"common"},
    "genome": {"common"},
    "agents": {"common", "security"},
    "etcd": {"common", "etcdpb"},  # the etcd client; etcdpb: etcd's API, generated
    "registry": {"common", "security", "etcd"},
    "generator": {"common", "security", "genome", "agents"},
    "oracle": {"common", "security", "genome", "agents"},
    "orchestrator": {"common", "security", "genome", "agents", "etcd"},
    "suite": _BASE | _SERVICES,  # the embedded default: every service in one process
    # helix cluster up: the services as processes (it runs `helix … serve`, imports none)
    "cluster": {"common"},
    # the web dashboard: a gRPC client of the services (helix.v1 stubs), never their
    # internals; genome for candidates in named form; agents for error details
    "dashboard": {"common", "security", "genome", "agents"},
    "cli": _BASE | _SERVICES | {"suite", "cluster", "dashboard"},
}
# The pure domain cores: synchronous, no grpc (DESIGN.md §10: "a pure, synchronous domain
# core that never imports grpc").
PURE = [
    "common/errors.py",
    "common/reasons.py",
    "common/rules.py",
    "common/pages.py",
    "common/validation.py",
    "genome",
    "registry/core.py",
    "registry/state.py",
    "registry/leases.py",
    "registry/labels.py",
    "registry/validation.py",
    "registry/store.py",
    "registry/records.py",
    "registry/stats.py",
    "registry/watch.py",
    "registry/engine.py",
    "generator/operators.py",
    "generator/strategies.py",
    "generator/breeding.py",
    "generator/dnas.py",
    "generator/stats.py",
    "generator/validation.py",
    "oracle/validation.py",
    "oracle/cache.py",
    "oracle/builtins.py",
    "oracle/instances.py",
    "oracle/pyworker.py",
    "oracle/config.py",
    "oracle/yaml_tree.py",
    "oracle/verdicts.py",
    "oracle/command.py",
    "orchestrator/validation.py",
]


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of the nodes under `if TYPE_CHECKING:` (imports for annotations only)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skip.update(id(child) for child in ast.walk(node))
    return skip


def helix_imports(path: Path) -> set[str]:
    """The helix modules `path` imports at run time (module level and inside functions;
    imports only for type annotations, under `if TYPE_CHECKING:`, do not count)."""
    tree = ast.parse(path.read_text(), str(path))
    annotations_only = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("helix.")}


def files_of(package: str) -> list[Path]:
    """The source files of a package (`helix/NAME/`) or top-level module (`helix/NAME.py`)."""
    module = HELIX / f"{package}.py"
    return [module] if module.exists() else sorted((HELIX / package).rglob("*.py"))


def test_every_package_has_its_place_in_the_layering() -> None:
    found = {p.stem for p in HELIX.glob("*.py")} | {p.name for p in HELIX.iterdir() if p.is_dir()}
    assert found - {"__pycache__"} <= set(ALLOWED), "add the new package to ALLOWED"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    allowed = ALLOWED[package] | {package, "v1"}
    bad = []
    for path in files_of(package):
        for name in sorted(helix_imports(path)):
            imported = name.split(".")[1]
            if imported not in allowed:
                bad.append(f"{path.relative_to(SERVICES)} imports {name}")
    assert not bad, "\n".join(bad)


def test_neither_oracle_nor_orchestrator_imports_the_generator() -> None:
    for package in ("oracle", "orchestrator"):
        for path in (HELIX / package).rglob("*.py"):
            assert not any(n.startswith("helix.generator") for n in helix_imports(path)), path


@pytest.mark.parametrize("core", PURE)
def test_domain_cores_do_not_import_grpc(core: str) -> None:
    target = HELIX / core
    paths = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert paths, f"{core} does not exist: update PURE"
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in ("grpc", "grpc_status", "aiofiles"), (
                    f"{path.relative_to(SERVICES)} imports {name}: keep I/O and grpc in the "
                    "service shell"
                )
