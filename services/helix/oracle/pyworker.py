"""The `python` oracle kind: a JSON Lines worker that calls a `module:function` entry point.

    python -I -m helix.oracle.pyworker MODULE:FUNCTION [--batch] [--max-batch N] [--path DIR]

The command pool runs this program like any command worker (`command.python_spec`), so a
Python oracle gets the same sandbox, per-candidate timeout, replacement and no-zombie
guarantees, and a CPU-bound or GIL-holding function runs in its own process, never on the
event loop. The entry point is imported once, at start; if that fails the worker writes one
line to stderr and exits with code 2 (the pool quotes it in its ERROR verdicts).

Scalar mode calls `f(genome)` once per request line and answers at once. Batch mode
(`--batch`) takes every request line already waiting on stdin (at most `--max-batch`, never
waiting for more once one is there) and calls `f(genomes)` once with their list.
`genome` is the candidate's named JSON form. A result is either a number (PASSED with that
score) or a verdict dict (`status`, `score`, `metrics`, `message`: checked by the pool like
any verdict line); an exception is an ERROR verdict with its type and message, and the
worker carries on. docs/oracle-protocol.md has the whole contract.

This module runs in the worker process: it imports nothing from Helix (no protobuf, no
grpc), so a worker starts in the time the interpreter and the entry point take.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import numbers
import os
import select
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

MAX_MESSAGE_CHARS = 1000
LOAD_FAILED = 2
_READ = 1 << 16


def load(entry_point: str) -> Callable[..., Any]:
    """The callable named by "package.module:attribute[.attribute...]"."""
    module_name, sep, qualname = entry_point.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"entry point {entry_point!r} is not MODULE:FUNCTION")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{entry_point} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_MESSAGE_CHARS]


def _error(message: str) -> dict[str, object]:
    return {"status": "error", "message": message[:MAX_MESSAGE_CHARS]}


def to_verdict(result: object) -> dict[str, object]:
    """The verdict (without id) of one result of the entry point."""
    if isinstance(result, numbers.Real) and not isinstance(result, bool):
        score = float(result)
        if not math.isfinite(score):
            return _error(f"the entry point returned a non-finite score ({score!r})")
        return {"status": "passed", "score": score}
    if isinstance(result, Mapping):
        if "id" in result:
            return _error("a verdict dict must not carry an id (the worker adds it)")
        verdict = dict(result)  # the pool checks it as it checks any verdict line
        message = verdict.get("message")
        if isinstance(message, str) and len(message) > MAX_MESSAGE_CHARS:
            verdict["message"] = message[:MAX_MESSAGE_CHARS]  # keep the line short
        return verdict
    return _error(
        f"the entry point returned {type(result).__name__}, not a number or a verdict dict"
    )


def _plain(value: object) -> object:
    """`json.dumps` default: numbers of other types (NumPy's) as int or float."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def verdict_line(candidate_id: object, verdict: Mapping[str, object]) -> bytes:
    try:
        text = json.dumps({"id": candidate_id, **verdict}, default=_plain)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"id": candidate_id, **_error(f"verdict not JSON: {_describe(exc)}")})
    return text.encode() + b"\n"


def _call_scalar(function: Callable[..., Any], genome: object) -> dict[str, object]:
    try:
        return to_verdict(function(genome))
    except Exception as exc:  # one candidate's failure is its own ERROR verdict
        return _error(_describe(exc))


def _call_batch(function: Callable[..., Any], genomes: list[object]) -> list[dict[str, object]]:
    try:
        results = function(genomes)
        if hasattr(results, "tolist"):  # a NumPy array
            results = results.tolist()
        if not isinstance(results, list | tuple):
            message = f"the batch entry point returned {type(results).__name__}, not a list"
        elif len(results) != len(genomes):
            message = (
                f"the batch entry point returned {len(results)} results for {len(genomes)} genomes"
            )
        else:
            return [to_verdict(result) for result in results]
    except Exception as exc:  # the batch's failure is an ERROR verdict for each
        message = _describe(exc)
    return [_error(message)] * len(genomes)


def request_batches(fd: int, max_batch: int) -> Iterator[list[bytes]]:
    """Lists of request lines: every complete line already readable (at most `max_batch`),
    blocking only while none is there; ends at EOF."""
    lines: list[bytes] = []
    rest = b""
    eof = False
    while True:
        while not eof and (not lines or (len(lines) < max_batch and _readable(fd))):
            chunk = os.read(fd, _READ)
            if not chunk:
                eof = True
                break
            *complete, rest = (rest + chunk).split(b"\n")
            lines += complete
        if not lines:
            return
        yield lines[:max_batch]
        del lines[:max_batch]


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def serve(
    function: Callable[..., Any], *, batch: bool, max_batch: int, requests: int, out: IO[bytes]
) -> None:
    """Answer every request line read from fd `requests` on `out`, in order."""
    for lines in request_batches(requests, max_batch if batch else 1):
        parsed = [json.loads(line) for line in lines]
        if batch:
            verdicts = _call_batch(function, [request["genome"] for request in parsed])
        else:
            verdicts = [_call_scalar(function, request["genome"]) for request in parsed]
        out.write(b"".join(verdict_line(r["id"], v) for r, v in zip(parsed, verdicts, strict=True)))
        out.flush()


def _private_stdio() -> tuple[int, IO[bytes]]:
    """Keep the protocol's pipes for the worker alone: the entry point's stdin reads
    /dev/null and whatever it prints (print(), C libraries) goes to stderr."""
    requests = os.dup(0)
    verdicts = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return requests, verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix.oracle.pyworker", description=__doc__)
    parser.add_argument("entry_point", help="MODULE:FUNCTION")
    parser.add_argument("--batch", action="store_true", help="call FUNCTION with lists")
    parser.add_argument("--max-batch", type=int, default=1000)
    parser.add_argument("--path", action="append", default=[], help="prepended to sys.path")
    args = parser.parse_args(argv)
    if args.max_batch < 1:
        parser.error("--max-batch must be at least 1")
    requests, out = _private_stdio()
    sys.path[:0] = args.path
    try:
        function = load(args.entry_point)
    except (Exception, SystemExit) as exc:  # any failure to load is reported
        sys.stderr.write(f"helix pyworker: cannot load {args.entry_point}: {_describe(exc)}\n")
        sys.stderr.flush()
        return LOAD_FAILED
    serve(function, batch=args.batch, max_batch=args.max_batch, requests=requests, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
