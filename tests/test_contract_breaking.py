"""`buf breaking` against the committed baseline image of the released helix.v1 contract
(protos/baseline/helix-v1.binpb, refreshed deliberately with `make baseline` at a release;
docs/contracts.md): the current protos pass, a breaking change to a copy of them fails
naming what broke, and a compatible change passes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from harness import run_command

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "protos" / "baseline" / "helix-v1.binpb"
CONTRACT = ROOT / "protos" / "helix" / "v1"


@pytest.fixture(autouse=True)
def _buf_installed() -> None:
    assert BUF.exists(), f"{BUF} is missing: `make test` installs it with npm ci"


async def buf_breaking(workspace: Path) -> tuple[int, list[dict[str, object]], str]:
    """`buf breaking` of the module in `workspace` against the baseline: (exit status,
    the reported violations, stderr)."""
    argv = [str(BUF), "breaking", "--against", str(BASELINE), "--error-format", "json"]
    status, out, err = await run_command(argv, cwd=workspace, within=120.0)
    violations = [json.loads(line) for line in out.splitlines() if line.strip()]
    return status, violations, err


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of buf.yaml and protos/, to change without touching the repository."""
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def edit(workspace: Path, file: str, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in protos/helix/v1/`file` by `new`. Fails if the
    text is not there exactly once, so that a change to the protos cannot silently turn a
    case of this file into a no-op."""
    path = workspace / "protos" / "helix" / "v1" / file
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{file}: expected exactly one {old!r}; update this test"
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_baseline_is_an_image_of_the_whole_helix_v1_contract() -> None:
    """Not an empty or partial image (against which everything would pass): it holds every
    current helix/v1 file, with the four services and their RPCs, and none of the vendored
    third-party protos (buf.yaml excludes them from the module)."""
    # A buf image is wire-compatible with a FileDescriptorSet (buf's own fields are unknown).
    image = descriptor_pb2.FileDescriptorSet.FromString(BASELINE.read_bytes())
    names = {file.name for file in image.file}
    helix = {name for name in names if name.startswith("helix/")}
    assert helix == {f"helix/v1/{path.name}" for path in CONTRACT.glob("*.proto")}
    assert names - helix <= {
        f"google/protobuf/{n}.proto" for n in ("duration", "timestamp", "field_mask")
    }
    services = {
        f"{file.package}.{service.name}": len(service.method)
        for file in image.file
        for service in file.service
    }
    assert set(services) == {
        "helix.v1.RegistryService",
        "helix.v1.GeneratorService",
        "helix.v1.OracleService",
        "helix.v1.OrchestratorService",
    }
    assert all(count > 0 for count in services.values()), services


async def test_the_current_protos_are_compatible_with_the_baseline() -> None:
    status, violations, err = await buf_breaking(ROOT)
    assert (status, violations) == (0, []), err


@pytest.mark.parametrize(
    ("file", "old", "new", "rule", "named"),
    [
        pytest.param(
            "orchestrator.proto",
            "  string run_id = 2;\n",
            "",
            "FIELD_NO_DELETE",
            '"2" with name "run_id" on message "CreateRunRequest" was deleted',
            id="delete-a-field",
        ),
        pytest.param(
            "orchestrator.proto",
            "  rpc CreateRun(CreateRunRequest)",
            "  rpc StartRun(CreateRunRequest)",
            "RPC_NO_DELETE",
            'RPC "CreateRun" on service "OrchestratorService" was deleted',
            id="rename-an-rpc",
        ),
        pytest.param(
            "orchestrator.proto",
            "  uint64 max_evaluations = 1;\n",
            "  int64 max_evaluations = 1;\n",
            "FIELD_SAME_TYPE",
            'Field "1" with name "max_evaluations" on message "RunBudget" changed type '
            'from "uint64" to "int64"',
            id="change-a-field-type",
        ),
        pytest.param(
            "orchestrator.proto",
            "  string request_id = 3;\n}\n\n// Response of OrchestratorService.CreateRun.",
            "  string request_id = 4;\n}\n\n// Response of OrchestratorService.CreateRun.",
            "FIELD_NO_DELETE",
            '"3" with name "request_id" on message "CreateRunRequest" was deleted',
            id="renumber-a-field",
        ),
        pytest.param(
            "orchestrator.proto",
            "  string display_name = 2;\n",
            "  string title = 2;\n",
            # Wire-compatible, but not for generated code or JSON: the FILE category catches it.
            "FIELD_SAME_NAME",
            'Field "2" on message "Run" changed name from "display_name" to "title"',
            id="rename-a-field",
        ),
        pytest.param(
            "common.proto",
            "  // Higher scores are better.\n  OBJECTIVE_MAXIMIZE = 2;\n",
            "",
            "ENUM_VALUE_NO_DELETE",
            'enum value "2" on enum "Objective" was deleted',
            id="delete-an-enum-value",
        ),
    ],
)
async def test_a_breaking_change_fails_naming_what_broke(
    workspace: Path, file: str, old: str, new: str, rule: str, named: str
) -> None:
    edit(workspace, file, old, new)
    status, violations, _ = await buf_breaking(workspace)
    assert status != 0, "buf breaking accepted a breaking change"
    assert rule in {v.get("type") for v in violations}, violations
    messages = [str(v.get("message")) for v in violations if v.get("type") == rule]
    assert any(named in message for message in messages), messages
    assert all(v.get("path") == f"protos/helix/v1/{file}" for v in violations), violations


async def test_a_compatible_change_passes(workspace: Path) -> None:
    """A new field, a new enum value, a new message and a new RPC are not breaking."""
    edit(
        workspace,
        "orchestrator.proto",
        "  string state_message = 21;\n",
        "  string state_message = 21;\n  // Optional. A note for humans.\n  string note = 22;\n",
    )
    edit(
        workspace,
        "common.proto",
        "  OBJECTIVE_MAXIMIZE = 2;\n",
        "  OBJECTIVE_MAXIMIZE = 2;\n  // Closer to a target is better.\n  OBJECTIVE_TARGET = 3;\n",
    )
    edit(
        workspace,
        "orchestrator.proto",
        "  rpc CreateRun(CreateRunRequest) returns (CreateRunResponse) {",
        "  rpc PauseRun(PauseRunRequest) returns (PauseRunResponse);\n"
        "  rpc CreateRun(CreateRunRequest) returns (CreateRunResponse) {",
    )
    with (workspace / "protos" / "helix" / "v1" / "orchestrator.proto").open("a") as proto:
        proto.write("\nmessage PauseRunRequest {\n  string name = 1;\n}\n")
        proto.write("\nmessage PauseRunResponse {}\n")
    status, violations, err = await buf_breaking(workspace)
    assert (status, violations) == (0, []), err
