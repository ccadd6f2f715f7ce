"""`helix generate`: try a DNA by hand — sample candidates from a generator and show them.

The DNA is a document of the generator's library (`--dna NAME`, fetched with GetDna) or a
local file (`--dna FILE`, checked here first); either way it is sent inline with
Generate, so the candidates are decoded with exactly the DNA that produced them. Each
candidate is shown in its named JSON form (`{"x": [...], "layers": 3}`, see
candidate.proto): `ID  NAMED` per line, or with `--json` one object per line,
`{"id": ..., "generation": ..., "genes": NAMED}`.

Exit status: 0 candidates shown, 1 an error from the server or an invalid library
document, 2 a usage error, an unreadable file or an invalid DNA file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
from helix.cli.client import add_client_arguments, describe_error, open_channel
from helix.cli.dna import check_file, describe, parse_dna_name
from helix.common.config import ConfigError
from helix.genome.documents import DNA_EXTENSIONS
from helix.genome.genome_checks import decode_genomes
from helix.genome.layout import Layout, normalise
from helix.genome.named import to_named_rows
from helix.security.scopes import DNA_READ, GENERATE

MAX_COUNT = 1_000_000  # GenerateRequest.count
MAX_SEED = 2**64 - 1  # GenerateRequest.seed is a uint64


def _bounded_int(what: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be within {low}..{high}, not {value}")
        return value

    return parse


def add_generate_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `helix generate` to the `helix` command line."""
    generate = subparsers.add_parser(
        "generate",
        help="sample candidates of a DNA from a generator, in their named JSON form",
        description="Ask a generator for COUNT generation-0 candidates of a DNA and print "
        "each in its named JSON form: 'ID  {\"gene\": value, ...}' per line, or with --json "
        "one object per line. The same DNA, count and seed always give the same candidates.",
        epilog="Exit status: 0 candidates shown, 1 an error from the server or an invalid "
        "library document, 2 a usage error or a DNA file that cannot be read or is invalid.",
    )
    generate.add_argument(
        "--dna",
        required=True,
        metavar="NAME|FILE",
        help="a DNA of the generator's library (dnas/NAME or NAME) or a local DNA file "
        "(*.yaml, *.yml, *.json)",
    )
    generate.add_argument(
        "--count",
        type=_bounded_int("--count", 1, MAX_COUNT),
        default=10,
        help=f"how many candidates, 1..{MAX_COUNT} [default 10]",
    )
    generate.add_argument(
        "--seed", type=_bounded_int("--seed", 0, MAX_SEED), default=0, help="[default 0]"
    )
    generate.add_argument(
        "--json", action="store_true", help='one {"id", "generation", "genes"} object per line'
    )
    add_client_arguments(generate)
    generate.set_defaults(handler=lambda args: asyncio.run(generate_candidates(args)))


def _is_file(text: str) -> bool:
    return (
        text.endswith(DNA_EXTENSIONS) or "/" in text.removeprefix("dnas/") or Path(text).is_file()
    )


def local_dna(text: str) -> dna_pb2.Dna:
    """The DNA of a local file, checked; ConfigError naming every broken rule."""
    try:
        check = check_file(Path(text))
    except OSError as exc:
        raise ConfigError(f"--dna {text}: cannot read: {exc.strerror or exc}") from None
    if not check.valid:
        raise ConfigError(f"--dna {text} is not a valid DNA:\n" + "\n".join(describe(check)))
    return check.dna


async def _library_dna(
    stub: generator_pb2_grpc.GeneratorServiceAsyncStub, name: str
) -> dna_pb2.Dna | None:
    """The library document `name`; None (after saying why) when it is not valid."""
    document = (await stub.GetDna(generator_pb2.GetDnaRequest(name=name))).dna
    if not document.valid:
        print(
            f"helix generate: {name} is not a valid DNA (see `helix dna get {name}`)",
            file=sys.stderr,
        )
        return None
    return document.dna


def _show(layout: Layout, response: generator_pb2.GenerateResponse, as_json: bool) -> None:
    candidates = response.candidates
    population = decode_genomes(
        layout, [c.genome for c in candidates], lambda i: f"candidates[{i}].genome"
    )
    for candidate, genes in zip(candidates, to_named_rows(layout, population), strict=True):
        if as_json:
            shown = {"id": candidate.id, "generation": candidate.generation, "genes": genes}
            print(json.dumps(shown))
        else:
            print(f"{candidate.id}  {json.dumps(genes)}")
    sys.stdout.flush()


async def generate_candidates(args: argparse.Namespace) -> int:
    """`helix generate`: one Generate stream, its candidates decoded and printed."""
    from_file = _is_file(args.dna)
    dna = local_dna(args.dna) if from_file else None
    name = "" if from_file else parse_dna_name_or_fail(args.dna)
    scopes = [GENERATE] if from_file else [DNA_READ, GENERATE]
    async with open_channel(args, scopes) as channel:
        stub: generator_pb2_grpc.GeneratorServiceAsyncStub = (
            generator_pb2_grpc.GeneratorServiceStub(channel)
        )
        try:
            if dna is None:
                dna = await _library_dna(stub, name)
                if dna is None:
                    return 1
            layout = Layout(normalise(dna))
            request = generator_pb2.GenerateRequest(dna=dna, count=args.count, seed=args.seed)
            async for response in stub.Generate(request):
                _show(layout, response, args.json)
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    return 0


def parse_dna_name_or_fail(text: str) -> str:
    try:
        return parse_dna_name(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--dna: {exc} (or give a DNA file)") from None
