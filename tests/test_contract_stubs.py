"""The stubs of buf.gen.yaml for other languages build and work (scripts/stubs.py,
`make stubs`; docs/contracts.md): Go (protoc-gen-go + protoc-gen-go-grpc, vetted, built and
run offline against Debian's Go packages) and TypeScript (protoc-gen-es, `tsc --strict`,
run under Node). Each program's encoding of the fixture messages must equal Helix's Python
encoding of the same messages.

The Go toolchain comes from Debian packages .ci/run installs: without them the Go test is
skipped locally with the reason, but fails in CI (CI=true)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harness import run_command

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "stubs.py"
# A cold `go vet` of gRPC and its dependencies takes ~25 s on a quiet 2-core machine.
BUILD_WITHIN = 600.0
EXIT_MISSING = 3


async def stubs(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_command([sys.executable, str(SCRIPT), *args], env, within=BUILD_WITHIN)


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.mark.slow
@pytest.mark.timeout(BUILD_WITHIN + 60)
async def test_go_stubs_build_and_encode_like_python() -> None:
    status, out, err = await stubs("--lang", "go")
    if status == EXIT_MISSING and not in_ci():
        pytest.skip(f"the Go toolchain is missing (CI installs it):\n{err}")
    assert status == 0, f"{out}\n{err}"
    assert "go: go vet: ok" in out
    assert "go: stubs built; fixtures equal Helix's Python encoding" in out


@pytest.mark.slow
@pytest.mark.timeout(BUILD_WITHIN + 60)
async def test_typescript_stubs_type_check_and_encode_like_python() -> None:
    status, out, err = await stubs("--lang", "ts")
    assert status == 0, f"{out}\n{err}"
    assert "ts: tsc --strict: ok" in out
    assert "ts: stubs built; fixtures equal Helix's Python encoding" in out


@pytest.mark.timeout(BUILD_WITHIN + 60)
async def test_a_stub_that_does_not_type_check_fails(tmp_path: Path) -> None:
    """The type check gates: stubs whose imports lack the ".js" extension that Node's ES
    module resolution needs are rejected by `tsc`, and the script says which step failed."""
    template = (ROOT / "buf.gen.yaml").read_text(encoding="utf-8")
    assert template.count("      - import_extension=js\n") == 1
    broken = tmp_path / "buf.gen.yaml"
    broken.write_text(template.replace("      - import_extension=js\n", ""), encoding="utf-8")
    status, out, err = await stubs("--lang", "ts", "--template", str(broken))
    assert status == 1, f"{out}\n{err}"
    assert "stubs: ts: tsc --strict failed" in err
    assert "TS2834" in err or "TS2835" in err, err  # relative import without an extension


async def test_an_unknown_language_is_refused() -> None:
    status, _, err = await stubs("--lang", "java")
    assert status == 2
    assert "argument --lang: invalid choice: 'java'" in err


async def test_keep_refuses_an_existing_directory(tmp_path: Path) -> None:
    status, _, err = await stubs("--lang", "ts", "--keep", str(tmp_path))
    assert status == 2
    assert f"--keep {tmp_path}: already exists; name a new directory" in err


async def test_missing_go_packages_are_named_with_how_to_install_them(tmp_path: Path) -> None:
    status, _, err = await stubs("--lang", "go", "--gocode", str(tmp_path / "gocode"))
    assert status == EXIT_MISSING
    assert f"stubs: go: Go package google.golang.org/grpc is not under {tmp_path}/gocode/src" in err
    assert "stubs: go: install the Go part with: apt-get install golang-go protoc-gen-go" in err


async def test_a_missing_node_is_named() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PATH"}
    env["PATH"] = "/nonexistent"
    status, _, err = await stubs("--lang", "ts", env=env)
    assert status == EXIT_MISSING
    assert "stubs: ts: `node` is not on PATH (Debian: nodejs)" in err


async def test_an_unreadable_template_is_reported(tmp_path: Path) -> None:
    status, _, err = await stubs("--lang", "ts", "--template", str(tmp_path / "nope.yaml"))
    assert status == 1
    assert f"stubs: cannot read {tmp_path}/nope.yaml" in err
