#!/usr/bin/env python3
"""Generate the helix.v1 stubs of buf.gen.yaml for other languages and prove they work.

    .venv/bin/python scripts/stubs.py [--lang go] [--lang ts] [--keep DIR] [--template FILE]

(`make stubs` runs it for every language.) For each language, into a temporary directory:

  go  buf generate with protoc-gen-go and protoc-gen-go-grpc, then `go vet` and `go build`
      of the stubs and of scripts/stubs/main.go, offline, in GOPATH mode against the Go
      packages Debian ships under /usr/share/gocode; the program then runs;
  ts  buf generate with protoc-gen-es, then `tsc --strict` over the stubs and
      scripts/stubs/main.ts, whose output then runs under Node (scripts/stubs/run.mjs).

Each program writes the wire encoding of two fixture messages (a CreateRunRequest and an
UpdateAgentRequest); this script decodes them with Helix's own Python modules and compares
them with the same messages built here (expected_messages), so a stub that compiles but
encodes differently fails too. The Go program also serves and calls OracleService over
loopback.

Exit status: 0 all good; 1 a step failed (its output is printed); 2 bad usage;
3 a toolchain is missing (the message says which and how to install it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import message as pb_message
from google.protobuf import text_format

from helix.v1 import common_pb2, orchestrator_pb2, registry_pb2

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "buf.gen.yaml"
SOURCES = ROOT / "scripts" / "stubs"
NODE_BIN = ROOT / "node_modules" / ".bin"
BUF = NODE_BIN / "buf"
TSC = NODE_BIN / "tsc"
PROTOC_GEN_ES = NODE_BIN / "protoc-gen-es"
# Where Debian's golang-*-dev packages put their Go sources (a GOPATH root).
DEFAULT_GOCODE = Path("/usr/share/gocode")
# What .ci/run installs for the Go part (docs/contracts.md).
GO_APT = (
    "golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev "
    "golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev"
)
# The plugins of buf.gen.yaml that each language needs, by executable name.
LANG_PLUGINS = {"go": ("protoc-gen-go", "protoc-gen-go-grpc"), "ts": ("protoc-gen-es",)}
# One step (a generation, a compilation, a run) may take this long: a cold `go vet` of
# gRPC and its dependencies takes ~20 s on a quiet 2-core machine.
STEP_TIMEOUT = 600.0
FIXTURES = ("create_run.binpb", "update_agent.binpb")

EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 1, 2, 3


class StepFailed(Exception):
    """A generation, compilation, run or comparison failed; the message says which."""


class ToolchainMissing(Exception):
    """A tool a language needs is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Work:
    """The temporary directory of one invocation and the settings read from the template."""

    root: Path
    template: dict[str, Any]
    gocode: Path
    verbose: bool

    @property
    def gen(self) -> Path:
        """Where `buf generate` writes (its -o): the plugins' `out` are relative to it."""
        return self.root / "gen"


def expected_messages() -> dict[str, pb_message.Message]:
    """The fixtures, built with Helix's Python modules; main.go and main.ts build the same."""
    run = orchestrator_pb2.Run(
        display_name="rastrigin via stubs",
        dna_name="dnas/rastrigin",
        oracle="oracles/rastrigin",
        objective=common_pb2.OBJECTIVE_MINIMIZE,
        budget=orchestrator_pb2.RunBudget(max_evaluations=20000, max_generations=50),
        target_score=0.25,
        seed=7,
    )
    run.budget.max_duration.FromMilliseconds(90_500)
    create = orchestrator_pb2.CreateRunRequest(
        run=run, run_id="stubs-run", request_id="0f6c2d3e-stubs"
    )
    update = registry_pb2.UpdateAgentRequest(
        agent=registry_pb2.Agent(name="agents/oracle-7", labels={"zone": "eu-1", "tier": "gold"})
    )
    update.agent.ttl.FromSeconds(30)
    update.update_mask.paths.extend(["labels", "ttl"])
    return {"create_run.binpb": create, "update_agent.binpb": update}


def run_step(
    what: str, argv: Sequence[str], *, cwd: Path, work: Work, env: Mapping[str, str] | None = None
) -> str:
    """Run one command; raise StepFailed with its output when it fails or hangs."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"{what}: no result after {STEP_TIMEOUT:.0f} s: {' '.join(argv)}") from exc
    except OSError as exc:
        raise StepFailed(f"{what}: cannot run {argv[0]}: {exc}") from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise StepFailed(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{output or '(no output)'}"
        )
    if work.verbose:
        print(f"  {what}: ok in {time.monotonic() - started:.1f} s", flush=True)
    return output


def load_template(path: Path) -> dict[str, Any]:
    """The buf.gen.yaml at `path`, checked to have what this script relies on."""
    try:
        template = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StepFailed(f"cannot read {path}: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("plugins"), list):
        raise StepFailed(f"{path} has no `plugins` list")
    for names in LANG_PLUGINS.values():
        for name in names:
            plugin_of(template, name)
    return template


def plugin_of(template: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The plugin entry of buf.gen.yaml whose `local` executable is called `name`."""
    for plugin in template["plugins"]:
        if isinstance(plugin, dict) and Path(str(plugin.get("local", ""))).name == name:
            return plugin
    raise StepFailed(f"the template has no plugin `local: {name}`")


def go_package_prefix(template: Mapping[str, Any]) -> str:
    """The managed-mode go_package_prefix: the import path the Go stubs are built under."""
    for override in (template.get("managed") or {}).get("override") or []:
        if isinstance(override, dict) and override.get("file_option") == "go_package_prefix":
            return str(override["value"])
    raise StepFailed("the template sets no managed go_package_prefix")


NPM_HINT = "run `npm ci` (package.json pins it)"


def missing_tools(lang: str, gocode: Path) -> list[str]:
    """What `lang` needs and is not installed, each with how to install it."""
    problems = [] if BUF.exists() else [f"{BUF.relative_to(ROOT)} is missing: {NPM_HINT}"]
    return problems + (missing_ts_tools() if lang == "ts" else missing_go_tools(gocode))


def missing_ts_tools() -> list[str]:
    problems = [
        f"{tool.relative_to(ROOT)} is missing: {NPM_HINT}"
        for tool in (TSC, PROTOC_GEN_ES)
        if not tool.exists()
    ]
    if shutil.which("node") is None:
        problems.append("`node` is not on PATH (Debian: nodejs)")
    return problems


def missing_go_tools(gocode: Path) -> list[str]:
    problems = [
        f"`{tool}` is not on PATH" for tool in ("go", *LANG_PLUGINS["go"]) if not shutil.which(tool)
    ]
    for package in ("google.golang.org/grpc", "google.golang.org/protobuf/proto"):
        if not (gocode / "src" / package).is_dir():
            problems.append(f"Go package {package} is not under {gocode}/src")
    # Debian's gRPC accepts either major line of github.com/golang/protobuf, but only the
    # 1.4+ line (1-5-dev) works with protoc-gen-go's APIv2 messages: 1.3 panics at the
    # first call ("protobuf tag not enough fields").
    if (gocode / "src/github.com/golang/protobuf/proto/table_unmarshal.go").exists():
        problems.append(f"github.com/golang/protobuf under {gocode} is 1.3; gRPC needs 1.4+")
    if problems:
        problems.append(f"install the Go part with: apt-get install {GO_APT}")
    return problems


def generate(work: Work, lang: str) -> Path:
    """Run buf generate with buf.gen.yaml's plugins of `lang` only; return the output root."""
    names = LANG_PLUGINS[lang]
    template = dict(work.template)
    template["plugins"] = [plugin_of(work.template, name) for name in names]
    path = work.root / f"buf.gen.{lang}.yaml"
    path.write_text(yaml.safe_dump(template, sort_keys=False), encoding="utf-8")
    # From the repository root: the template's input (protos) and local plugin paths are
    # relative to it, as when a developer runs `buf generate` there.
    run_step(
        f"{lang}: buf generate",
        [str(BUF), "generate", "--template", str(path), "-o", str(work.gen)],
        cwd=ROOT,
        work=work,
    )
    out = work.gen / str(template["plugins"][0]["out"])
    if not any(out.rglob("*")):
        raise StepFailed(f"{lang}: buf generate wrote nothing under {out}")
    return out


def go_env(work: Work, gopath: Path) -> dict[str, str]:
    """An offline GOPATH-mode environment over Debian's Go sources."""
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{gopath}{os.pathsep}{work.gocode}",
        GOFLAGS="",
        GOPROXY="off",
        GOTOOLCHAIN="local",
        # No C compiler needed (net and os/user in pure Go).
        CGO_ENABLED="0",
    )
    if "GOCACHE" not in env and "HOME" not in env and "XDG_CACHE_HOME" not in env:
        env["GOCACHE"] = str(work.root / "gocache")
    return env


def build_go(work: Work) -> Path:
    """Generate, vet and build the Go stubs and main.go; run it; return its fixture dir."""
    out = generate(work, "go")
    prefix = go_package_prefix(work.template)
    gopath = work.root / "gopath"
    # paths=source_relative: the plugin's out directory is the package prefix's directory.
    shutil.copytree(out, gopath / "src" / prefix)
    example = gopath / "src" / Path(prefix).parent / "stubs-example"
    example.mkdir(parents=True)
    shutil.copy2(SOURCES / "main.go", example / "main.go")
    env = go_env(work, gopath)
    packages = [f"{prefix}/...", f"{Path(prefix).parent}/stubs-example"]
    run_step("go: go vet", ["go", "vet", *packages], cwd=gopath, work=work, env=env)
    binary = work.root / "bin" / "helix-go-stubs"
    build = ["go", "build", "-o", str(binary), packages[1]]
    run_step("go: go build", build, cwd=gopath, work=work, env=env)
    fixtures = work.root / "fixtures" / "go"
    fixtures.mkdir(parents=True)
    run_step("go: run the program", [str(binary), str(fixtures)], cwd=work.root, work=work)
    return fixtures


TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "target": "es2022",
        "module": "nodenext",
        "moduleResolution": "nodenext",
        # No DOM and no Node typings: the stubs must type-check on the ECMAScript library.
        "lib": ["es2022"],
        "types": [],
        "rootDir": ".",
        "outDir": "out",
        "noUnusedLocals": True,
        "noUnusedParameters": True,
        "noImplicitReturns": True,
        "noFallthroughCasesInSwitch": True,
        "forceConsistentCasingInFileNames": True,
    },
    "include": ["ts/**/*.ts", "example/*.ts"],
}


def build_ts(work: Work) -> Path:
    """Generate and type-check the TypeScript stubs and main.ts; run it; return fixtures."""
    out = generate(work, "ts")
    project = work.root / "tsproject"
    shutil.copytree(out, project / "ts")
    (project / "example").mkdir()
    shutil.copy2(SOURCES / "main.ts", project / "example" / "main.ts")
    shutil.copy2(SOURCES / "run.mjs", project / "run.mjs")
    # ES modules, resolving @bufbuild/protobuf from the repository's node_modules.
    (project / "package.json").write_text('{"private": true, "type": "module"}\n')
    (project / "tsconfig.json").write_text(json.dumps(TSCONFIG, indent=2) + "\n")
    (project / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    run_step("ts: tsc --strict", [str(TSC), "-p", "tsconfig.json"], cwd=project, work=work)
    fixtures = work.root / "fixtures" / "ts"
    fixtures.mkdir(parents=True)
    run_step("ts: run under node", ["node", "run.mjs", str(fixtures)], cwd=project, work=work)
    return fixtures


def compare_fixtures(lang: str, fixtures: Path) -> None:
    """Decode what `lang` wrote with the Python modules; it must equal expected_messages."""
    for name, expected in expected_messages().items():
        path = fixtures / name
        if not path.is_file():
            raise StepFailed(f"{lang}: the program wrote no {path}")
        decoded = type(expected)()
        try:
            decoded.ParseFromString(path.read_bytes())
        except pb_message.DecodeError as exc:
            raise StepFailed(f"{lang}: {name} is not a {expected.DESCRIPTOR.full_name}") from exc
        # Re-encoding also catches fields Python does not know (kept as unknown fields).
        canonical = decoded.SerializeToString(deterministic=True)
        if decoded != expected or canonical != expected.SerializeToString(deterministic=True):
            raise StepFailed(
                f"{lang}: {name} differs from the Python encoding of the same message\n"
                f"--- {lang} wrote:\n{text_format.MessageToString(decoded)}"
                f"--- expected:\n{text_format.MessageToString(expected)}"
            )
    print(f"{lang}: stubs built; fixtures equal Helix's Python encoding", flush=True)


BUILDERS: dict[str, Callable[[Work], Path]] = {"go": build_go, "ts": build_ts}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/stubs.py",
        description="Generate buf.gen.yaml's Go and TypeScript stubs into a temporary "
        "directory, compile them and check a program using them.",
    )
    parser.add_argument(
        "--lang",
        action="append",
        choices=sorted(BUILDERS),
        help="a language to build (repeatable; default: all)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR (must not exist) and keep it, instead of a temporary directory",
    )
    parser.add_argument(
        "--template",
        type=Path,
        default=TEMPLATE,
        help="the buf generation template (default: buf.gen.yaml); its input and local "
        "plugin paths are relative to the repository root",
    )
    parser.add_argument(
        "--gocode",
        type=Path,
        default=DEFAULT_GOCODE,
        help=f"GOPATH root of the Go dependencies (default: {DEFAULT_GOCODE})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the results")
    args = parser.parse_args(argv)
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep}: already exists; name a new directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    langs: list[str] = sorted(set(args.lang or BUILDERS))
    missing = {lang: missing_tools(lang, args.gocode) for lang in langs}
    if any(missing.values()):
        for lang, problems in missing.items():
            for problem in problems:
                print(f"stubs: {lang}: {problem}", file=sys.stderr)
        return EXIT_MISSING
    try:
        template = load_template(args.template)
        with tempfile.TemporaryDirectory(prefix="helix-stubs-") as tmp:
            root = args.keep.resolve() if args.keep is not None else Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            work = Work(root, template, args.gocode, verbose=not args.quiet)
            for lang in langs:
                compare_fixtures(lang, BUILDERS[lang](work))
    except StepFailed as exc:
        print(f"stubs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
