"""`helix oracles list|get`, `helix oracle test`, and `helix oracle serve`.

`oracle test NAME --dna FILE` is the first tool an oracle author reaches for: it runs
candidates (`--samples N` random ones, or `--candidate JSON` in the named JSON form, as
often as wanted) through a named oracle and prints the verdicts. Without `--address` (or
HELIX_ADDRESS) it runs the oracle here, from `--config FILE` (default: the builtin
oracles) — worker processes and all — and stops it; with `--address` it calls Verify on
that server. Exit status: 0 every verdict PASSED or FAILED, 1 some ERROR or TIMEOUT (its
message holds the worker's stderr tail) or an error from the server, 2 a usage error, a
DNA that is not valid, or an invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import duration_pb2

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.dna_pb2 as dna_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
from helix.cli.client import add_client_arguments, describe_error, open_channel
from helix.cli.generate import local_dna
from helix.cli.output import message_json
from helix.common.config import ConfigError, parse_duration_setting
from helix.common.errors import HelixError, InvalidArgument
from helix.common.validation import check_resource_name
from helix.generator import strategies
from helix.genome import codec
from helix.genome.batches import CandidateRecords
from helix.genome.genome_checks import decode_genomes
from helix.genome.layout import Layout, Population, normalise
from helix.genome.named import from_named, to_named_rows
from helix.oracle.agent import add_oracle_serve_command
from helix.oracle.host import OracleHost, target_for
from helix.oracle.serving import ConfigSource, valid_config
from helix.security.scopes import ORACLES_READ, VERIFY

MAX_SAMPLES = 10_000
_STATUS = {
    candidate_pb2.VERDICT_STATUS_PASSED: "PASSED",
    candidate_pb2.VERDICT_STATUS_FAILED: "FAILED",
    candidate_pb2.VERDICT_STATUS_ERROR: "ERROR",
    candidate_pb2.VERDICT_STATUS_TIMEOUT: "TIMEOUT",
}
_KINDS = {1: "builtin", 2: "command", 3: "python", 4: "remote"}
_OBJECTIVES = {0: "-", 1: "minimize", 2: "maximize"}


def parse_oracle_name(text: str) -> str:
    """`oracles/{id}` or just `{id}`."""
    name = text if text.startswith("oracles/") else f"oracles/{text}"
    if check_resource_name(name, "oracles", "name"):
        raise argparse.ArgumentTypeError(
            f"bad oracle name {text!r}: expected oracles/ID or ID, ID matching "
            "[a-z][a-z0-9-]{0,62}"
        )
    return name


def _samples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--samples: {text!r} is not a number") from None
    if not 1 <= value <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"--samples: must be 1..{MAX_SAMPLES}")
    return value


def add_oracle_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `helix oracles list|get` and `helix oracle test|serve` to the command line."""
    oracles = subparsers.add_parser("oracles", help="list and show the oracles a server hosts")
    actions = oracles.add_subparsers(dest="oracles_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list the oracles of an oracle server")
    listing.add_argument("--json", action="store_true", help="one OracleInfo JSON per line")
    add_client_arguments(listing)
    listing.set_defaults(handler=lambda args: asyncio.run(list_oracles(args)))
    get = actions.add_parser("get", help="show one oracle of an oracle server")
    get.add_argument("name", type=parse_oracle_name, help="oracles/NAME or NAME")
    get.add_argument("--json", action="store_true", help="the OracleInfo as JSON")
    add_client_arguments(get)
    get.set_defaults(handler=lambda args: asyncio.run(get_oracle(args)))

    oracle = subparsers.add_parser("oracle", help="test an oracle; run an oracle agent")
    oracle_actions = oracle.add_subparsers(dest="oracle_command", metavar="ACTION", required=True)
    test = oracle_actions.add_parser(
        "test",
        help="run candidates through a named oracle and print the verdicts",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    test.add_argument("name", type=parse_oracle_name, help="oracles/NAME or NAME")
    test.add_argument("--dna", required=True, type=Path, help="a DNA file (YAML or JSON)")
    source = test.add_mutually_exclusive_group()
    source.add_argument(
        "--candidate",
        action="append",
        metavar="JSON",
        help="a candidate in named JSON form, e.g. '{\"x\": [0.5, 1.0]}' (repeatable)",
    )
    source.add_argument(
        "--samples", type=_samples, help=f"random candidates, 1..{MAX_SAMPLES} [default 5]"
    )
    test.add_argument("--seed", type=int, default=0, help="seed of --samples [default 0]")
    test.add_argument(
        "--config", type=Path, help="oracle configuration to run here (default: the builtins)"
    )
    test.add_argument("--candidate-timeout", help="per-candidate timeout, e.g. 5s")
    test.add_argument("--json", action="store_true", help="one verdict JSON object per line")
    add_client_arguments(test)
    test.set_defaults(address=os.environ.get("HELIX_ADDRESS"))
    test.set_defaults(handler=lambda args: asyncio.run(test_oracle(args)))
    hashing = oracle_actions.add_parser(
        "hash",
        help="print the config_hash an oracle agent computes for a configured oracle",
        description=(
            "Print the config_hash (OracleInfo.config_hash) that an oracle agent serving "
            "--config FILE reports for oracle NAME: the SHA-256 of its normalised settings "
            "and of the files it names. An agent written in another language that hosts an "
            "equivalent oracle states that equivalence by reporting this hash, so runs use "
            "it alongside the Python agents."
        ),
    )
    hashing.add_argument("name", type=parse_oracle_name, help="oracles/NAME or NAME")
    hashing.add_argument(
        "--config", required=True, type=Path, help="the oracle configuration file (YAML or JSON)"
    )
    hashing.set_defaults(handler=oracle_hash)
    add_oracle_serve_command(oracle_actions)


def oracle_hash(args: argparse.Namespace) -> int:
    """`helix oracle hash NAME --config FILE`: the oracle's config_hash, as agents compute it
    (helix.oracle.config), or a configuration error naming every problem (exit 2)."""
    path: Path = args.config
    check = valid_config(path, "--config")
    wanted = args.name.removeprefix("oracles/")
    spec = check.oracles.get(wanted)
    if spec is None:
        names = ", ".join(sorted(check.oracles)) or "none"
        raise ConfigError(f"no oracle {args.name} in {path} (it has: {names})")
    print(spec.config_hash)
    return 0


def format_oracles(oracles: Sequence[oracle_pb2.OracleInfo]) -> str:
    rows = [("NAME", "KIND", "CAPACITY", "OBJECTIVE", "CONFIG HASH", "DESCRIPTION")]
    rows += [
        (
            o.name,
            _KINDS.get(o.kind, str(o.kind)),
            str(o.capacity),
            _OBJECTIVES.get(o.objective, str(o.objective)),
            o.config_hash[:12],
            o.description.splitlines()[0][:60] if o.description else "",
        )
        for o in oracles
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


async def list_oracles(args: argparse.Namespace) -> int:
    request = oracle_pb2.ListOraclesRequest(page_size=1000)
    found: list[oracle_pb2.OracleInfo] = []
    async with open_channel(args, [ORACLES_READ]) as channel:
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        try:
            while True:
                page = await stub.ListOracles(request)
                found.extend(page.oracles)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    if args.json:
        for oracle in found:
            print(message_json(oracle))
    else:
        print(format_oracles(found) if found else "no oracles")
    return 0


async def get_oracle(args: argparse.Namespace) -> int:
    async with open_channel(args, [ORACLES_READ]) as channel:
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        try:
            response = await stub.GetOracle(oracle_pb2.GetOracleRequest(name=args.name))
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    oracle = response.oracle
    if args.json:
        print(message_json(oracle, indent=2))
    else:
        print(f"name:        {oracle.name}")
        print(f"kind:        {_KINDS.get(oracle.kind, oracle.kind)}")
        print(f"capacity:    {oracle.capacity}")
        print(f"objective:   {_OBJECTIVES.get(oracle.objective, oracle.objective)}")
        print(f"config hash: {oracle.config_hash}")
        print(f"description: {oracle.description}")
    return 0


def test_candidates(
    layout: Layout, texts: Sequence[str] | None, samples: int | None, seed: int
) -> list[candidate_pb2.Candidate]:
    """The candidates to test: each --candidate parsed against the DNA, or random ones."""
    if texts:
        genomes = []
        for i, text in enumerate(texts):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--candidate #{i + 1}: not JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"--candidate #{i + 1}: must be a JSON object of genes")
            try:
                genomes.append(from_named(layout, obj, f"candidate[{i}]"))
            except InvalidArgument as exc:
                shown = "\n  ".join(str(v) for v in exc.violations)
                raise ConfigError(
                    f"--candidate #{i + 1} does not fit the DNA:\n  {shown}"
                ) from None
        return [candidate_pb2.Candidate(id=codec.genome_id(g), genome=g) for g in genomes]
    count = samples or 5
    chunks = strategies.generate(layout, None, count, seed, 0)
    population = Population.concat([chunk.children for chunk in chunks])
    return codec.to_candidates(layout, population, generation=0, parent_ids=[()] * count)


def show_verdicts(
    layout: Layout,
    candidates: Sequence[candidate_pb2.Candidate],
    verdicts: Sequence[candidate_pb2.Verdict],
    as_json: bool,
) -> int:
    """Print the verdicts; 1 when any is ERROR or TIMEOUT."""
    population = decode_genomes(
        layout, [c.genome for c in candidates], lambda i: f"candidates[{i}].genome"
    )
    genes = to_named_rows(layout, population)
    failed = False
    rows = [("ID", "STATUS", "SCORE", "TIME", "GENES")]
    notes = []
    for candidate, verdict, named in zip(candidates, verdicts, genes, strict=True):
        status = _STATUS.get(verdict.status, str(verdict.status))
        failed |= verdict.status in (
            candidate_pb2.VERDICT_STATUS_ERROR,
            candidate_pb2.VERDICT_STATUS_TIMEOUT,
        )
        seconds = verdict.duration.ToNanoseconds() / 1e9
        if as_json:
            shown = json.loads(message_json(verdict))
            shown["genes"] = named
            print(json.dumps(shown))
            continue
        text = json.dumps(named)
        rows.append(
            (
                candidate.id[:12],
                status + (" (cached)" if verdict.cached else ""),
                f"{verdict.score:.6g}" if status in ("PASSED", "FAILED") else "-",
                f"{seconds * 1e3:.3g}ms" if seconds else "-",
                text if len(text) <= 60 else text[:57] + "...",
            )
        )
        if verdict.message:
            notes.append(f"{candidate.id[:12]} {status}: {verdict.message}")
        if verdict.metrics:
            shown_metrics = ", ".join(f"{k}={v:.6g}" for k, v in sorted(verdict.metrics.items()))
            notes.append(f"{candidate.id[:12]} metrics: {shown_metrics}")
    if not as_json:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if notes:
            print()
            print("\n".join(notes))
    return 1 if failed else 0


def _timeout(args: argparse.Namespace) -> float | None:
    if not args.candidate_timeout:
        return None
    seconds = parse_duration_setting("--candidate-timeout", args.candidate_timeout)
    if seconds <= 0:
        raise ConfigError("--candidate-timeout must be > 0")
    return seconds


async def _verify_here(
    args: argparse.Namespace, dna: dna_pb2.Dna, candidates: list[candidate_pb2.Candidate]
) -> list[candidate_pb2.Verdict]:
    """Run the oracle in this process from --config (default: the builtins)."""
    source = ConfigSource(args.config)
    check = await source.first()
    if not check.valid:
        shown = "\n  ".join(str(v) for v in check.violations)
        raise ConfigError(f"the oracle configuration is invalid:\n  {shown}")
    host = OracleHost()
    # Only the named oracle is started: the others may need programs not installed here.
    wanted = args.name.removeprefix("oracles/")
    if wanted not in check.oracles:
        names = ", ".join(sorted(check.oracles)) or "none"
        raise ConfigError(f"no oracle {args.name} in {check.filename} (it has: {names})")
    check.oracles = {wanted: check.oracles[wanted]}
    await host.apply(check)
    try:
        hosted = host.get(args.name)
        target = target_for(dna)
        hosted.check_dna(target, "dna")
        batch = oracle_pb2.VerifyBatch(candidates=candidates)
        records = CandidateRecords.find(batch.SerializeToString(), 2)
        outcome = await host.verify(
            hosted,
            target,
            records,
            host.timeout_for(hosted, _timeout(args)),
            b"\x0a",
            "candidates",
        )
        return list(oracle_pb2.VerifyResponse.FromString(outcome.body).verdicts)
    finally:
        await host.close()


async def _verify_remote(
    args: argparse.Namespace, dna: dna_pb2.Dna, candidates: list[candidate_pb2.Candidate]
) -> list[candidate_pb2.Verdict]:
    request = oracle_pb2.VerifyRequest(oracle=args.name, dna=dna, candidates=candidates)
    timeout = _timeout(args)
    if timeout is not None:
        request.timeout.CopyFrom(
            duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9))
        )
    verdicts: list[candidate_pb2.Verdict] = []
    async with open_channel(args, [VERIFY, ORACLES_READ]) as channel:
        stub = oracle_pb2_grpc.OracleServiceStub(channel)
        info = (await stub.GetOracle(oracle_pb2.GetOracleRequest(name=args.name))).oracle
        size = max(1, info.capacity)  # a batch over the oracle's capacity never fits
        for start in range(0, len(candidates), size):
            del request.candidates[:]
            request.candidates.extend(candidates[start : start + size])
            verdicts += (await stub.Verify(request)).verdicts
    return verdicts


async def test_oracle(args: argparse.Namespace) -> int:
    """`helix oracle test`."""
    dna = local_dna(str(args.dna))
    layout = Layout(normalise(dna))
    candidates = test_candidates(layout, args.candidate, args.samples, args.seed)
    try:
        if args.address:
            verdicts = await _verify_remote(args, dna, candidates)
        else:
            verdicts = await _verify_here(args, dna, candidates)
    except grpc.aio.AioRpcError as error:
        print(describe_error(error), file=sys.stderr)
        return 1
    except HelixError as error:
        lines = [f"error: {error.reason}: {error.message}"]
        lines += [f"  {v}" for v in getattr(error, "violations", ())]
        print("\n".join(lines), file=sys.stderr)
        return 1
    return show_verdicts(layout, candidates, verdicts, args.json)
