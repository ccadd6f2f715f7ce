"""Running a Markdown guide's shell sessions and checking what they print (docs/grpcurl.md).

A guide shows terminal sessions in ```console blocks:

    $ grpcurl -plaintext $HELIX_ADDRESS list        <- a command: the line after `$ `
    grpc.health.v1.Health                           <- what it prints (stdout and stderr)
    …                                               <- a line of only `…`: any lines, or none

A command goes on over the next lines while a line ends with a backslash, and through the
body of a heredoc (`<<'EOF'` ... `EOF`), as bash reads it. In an output line, `…` stands
for any text within that line (ids, times, durations). Every other character must match;
trailing spaces and trailing blank lines are ignored.

The server a guide talks to is the one `helix up` command of its ```sh blocks; a test
starts it itself, on a free port and a fresh data dir, and rewrites the guide's
canonical address and data dir (`CANONICAL_*`) in every command and expected output.

`parse_guide` reads a guide into its server command and its steps; `output_matches` checks
one output; `Shell` runs the steps in order in one bash process, so what a command
exports (`export TOKEN=...`) and its exit status (`$?`) carry over to the next, as in a
terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ELLIPSIS = "…"
# The guide's placeholders for what a test replaces with the live suite's.
CANONICAL_ADDRESS = "127.0.0.1:50051"
CANONICAL_DATA_DIR = "/tmp/helix-guide"
CANONICAL_BIN = "$PWD/.venv/bin"

# `<<EOF`, `<<'EOF'`, `<<"EOF"`, `<<-EOF` (not a `<<<` here-string).
_HEREDOC = re.compile(r"(?<!<)<<(?!<)(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FENCE = "```"


class GuideError(ValueError):
    """The guide breaks the format this module reads; the message names the line."""


@dataclass(frozen=True)
class Step:
    """One `$` command of a console block and the output the guide shows for it."""

    command: str  # as bash reads it: continuation lines and heredoc bodies included
    expected: tuple[str, ...]
    line: int  # 1-based line of its `$` in the guide
    section: str  # the `#` heading it is under

    def where(self) -> str:
        return f"line {self.line} ({self.section})"


@dataclass(frozen=True)
class Guide:
    server: tuple[str, ...]  # argv of the guide's one `helix up` command
    steps: tuple[Step, ...]


@dataclass
class _Block:
    language: str
    start: int  # 1-based line of its opening fence
    section: str
    lines: list[tuple[int, str]] = field(default_factory=list)


def parse_guide(text: str) -> Guide:
    """The server command and the steps of a guide; GuideError names what is wrong."""
    blocks = _blocks(text)
    steps = [step for b in blocks if b.language == "console" for step in _steps(b)]
    servers = [
        (line, argv)
        for block in blocks
        if block.language == "sh"
        for line, argv in _commands(block)
        if len(argv) >= 2 and Path(argv[0]).name == "helix" and argv[1] == "up"
    ]
    if len(servers) != 1:
        found = ", ".join(f"line {line}" for line, _ in servers) or "none"
        raise GuideError(f"expected one `helix up` command in a ```sh block, found {found}")
    if not steps:
        raise GuideError("no `$ command` in any ```console block")
    return Guide(server=tuple(servers[0][1]), steps=tuple(steps))


def _blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    current: _Block | None = None
    section = "(before any heading)"
    for number, line in enumerate(text.splitlines(), start=1):
        if current is None:
            if line.startswith(_FENCE):
                current = _Block(line[len(_FENCE) :].strip(), number, section)
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.startswith(_FENCE):
            blocks.append(current)
            current = None
        else:
            current.lines.append((number, line))
    if current is not None:
        raise GuideError(f"the code block opened on line {current.start} is never closed")
    return blocks


def _take_command(lines: list[tuple[int, str]], at: int, first: str) -> tuple[str, int]:
    """The command starting with `first` (the text of line `at`): with its backslash
    continuations and heredoc bodies; returns it and the index of the line after it."""
    taken = [first]
    index = at + 1
    while taken[-1].endswith("\\"):
        if index >= len(lines):
            raise GuideError(f"the command on line {lines[at][0]} ends with a backslash")
        taken.append(lines[index][1])
        index += 1
    for strip_tabs, _, word in _HEREDOC.findall("\n".join(taken)):
        while True:
            if index >= len(lines):
                raise GuideError(
                    f"the heredoc of the command on line {lines[at][0]} never ends with {word}"
                )
            body = lines[index][1]
            taken.append(body)
            index += 1
            if (body.lstrip("\t") if strip_tabs else body) == word:
                break
    return "\n".join(taken), index


def _steps(block: _Block) -> list[Step]:
    steps: list[Step] = []
    lines = block.lines
    index = 0
    while index < len(lines):
        number, line = lines[index]
        if not line.startswith("$ "):
            if not steps:
                raise GuideError(f"line {number}: output before any `$ command` in its block")
            last = steps[-1]
            steps[-1] = Step(last.command, (*last.expected, line), last.line, last.section)
            index += 1
            continue
        command, index = _take_command(lines, index, line[2:])
        steps.append(Step(command, (), number, block.section))
    return [Step(s.command, _trim(s.expected), s.line, s.section) for s in steps]


def _commands(block: _Block) -> list[tuple[int, list[str]]]:
    """The commands of a ```sh block as argv lists, comments dropped."""
    found: list[tuple[int, list[str]]] = []
    index = 0
    while index < len(block.lines):
        number, line = block.lines[index]
        command, index = _take_command(block.lines, index, line)
        argv = shlex.split(command.replace("\\\n", " "), comments=True)
        if argv:
            found.append((number, argv))
    return found


def _trim(lines: Sequence[str]) -> tuple[str, ...]:
    kept = [line.rstrip() for line in lines]
    while kept and not kept[-1]:
        kept.pop()
    return tuple(kept)


# --- checking an output ----------------------------------------------------------------------


_ANY_LINES = None  # a `…` line: any number of lines


def _line_pattern(line: str) -> re.Pattern[str] | None:
    if line.strip() == ELLIPSIS:
        return _ANY_LINES
    return re.compile(".*?".join(re.escape(part) for part in line.split(ELLIPSIS)))


def output_matches(expected: Sequence[str], actual: str) -> bool:
    """Whether `actual` is what `expected` shows, `…` standing for any text within a line
    and a `…` line for any lines (trailing spaces and blank lines ignored)."""
    patterns = [_line_pattern(line) for line in _trim(expected)]
    lines = _trim(actual.splitlines())
    # fits[j]: expected[i:] matches lines[j:], computed from the last expected line back.
    fits = [j == len(lines) for j in range(len(lines) + 1)]
    for pattern in reversed(patterns):
        row = [False] * (len(lines) + 1)
        for j in range(len(lines), -1, -1):
            if pattern is _ANY_LINES:
                row[j] = fits[j] or (j < len(lines) and row[j + 1])
            else:
                row[j] = j < len(lines) and bool(pattern.fullmatch(lines[j])) and fits[j + 1]
        fits = row
    return fits[0]


def looks_like_error(expected: Sequence[str]) -> bool:
    """Whether an expected output shows a failed call, so a non-zero exit status is what
    the guide promises: grpcurl's `ERROR:` block, or a JSON status with a `"code"`
    (`grpcurl -format-error`, buf curl)."""
    return any(
        line.startswith("ERROR:") or line.lstrip().startswith('"code": ') for line in expected
    )


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    for canonical, live in replacements.items():
        text = text.replace(canonical, live)
    return text


# --- running the steps -----------------------------------------------------------------------


class ShellError(RuntimeError):
    """The shell running the guide's commands ended, or a command did not end in time."""


class Shell:
    """One bash process that runs commands in order, each like a line typed into a
    terminal: variables, the working directory and `$?` carry over. Each command's stdout
    and stderr go together to a file (in the order written), its stdin is empty."""

    _MARK = "__helix_guide_step_done__"

    def __init__(self, workdir: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.cwd = cwd
        self._process: asyncio.subprocess.Process | None = None
        self._count = 0

    async def __aenter__(self) -> Shell:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            "bash",
            "--noprofile",
            "--norc",
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own group: a stuck command goes with it
        )
        await self._send("__helix_guide_status=0\n")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run(self, command: str, within: float) -> tuple[int, str]:
        """Run one command; its exit status and what it printed. ShellError (the shell
        killed) when it has not ended within `within` seconds."""
        self._count += 1
        script = self.workdir / f"step-{self._count}.sh"
        output = self.workdir / f"step-{self._count}.out"
        script.write_text(command + "\n")
        # `(exit N)` first gives the command the previous one's status as `$?`.
        await self._send(
            f"{{ (exit $__helix_guide_status); source {shlex.quote(str(script))}; }}"
            f" > {shlex.quote(str(output))} 2>&1 < /dev/null\n"
            f'__helix_guide_status=$?; echo "{self._MARK} $__helix_guide_status"\n'
        )
        try:
            async with asyncio.timeout(within):
                status = await self._wait_mark()
        except TimeoutError:
            await self.close()
            raise ShellError(
                f"did not end within {within} s (a stream needs a bound: grpcurl -max-time, "
                f"buf --timeout); printed so far:\n{_read(output)}"
            ) from None
        return status, _read(output)

    async def _send(self, text: str) -> None:
        process = self._started()
        assert process.stdin is not None
        try:
            process.stdin.write(text.encode())
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ShellError(f"the shell has ended (status {process.returncode})") from exc

    async def _wait_mark(self) -> int:
        process = self._started()
        assert process.stdout is not None
        while line := await process.stdout.readline():
            text = line.decode(errors="replace").strip()
            if text.startswith(self._MARK):
                return int(text.split()[-1])
        await process.wait()
        raise ShellError(f"the shell ended (status {process.returncode}) during the command")

    def _started(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise ShellError("the shell was never started")
        return self._process

    async def close(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
