"""The per-parent work of a Generate call: this code against a baseline commit's, in one run.

What the generator does with a GenerateRequest's 1,000 parents before it breeds, for
benchmarks/dna/sphere-10d.yaml (the end-to-end benchmark's problem, population 1,000):

- **check**: `check_generate_request` (validation.py), which the servicer runs first;
- **rank**: `rank_parents` (breeding.py): ids, verdicts and genomes read and checked,
  parents ranked and deduplicated;
- **call**: a whole Generate call minus the network, as the servicer runs it: the check
  (through `validate`), `layout_for`, `rank_parents`, then `breed` to the last response.

The request is what an orchestrator sends for generation 2: the 1,000 candidates a real
Generate bred for generation 1 (elites, children with two parent ids, a few duplicates),
each with a PASSED verdict (its id, the sphere score, a duration), ranked best first.

The baseline's validation.py and breeding.py are read from git (`git show`) and loaded
beside the current ones (the rest of the package is shared), by default from the commit
before the one that added parent_records.py. Both are first checked to agree: the same
Parents for the request, the same violations for a copy with broken parents. Rounds
alternate baseline and current; each figure is the median over the rounds of the process
CPU time per call (the machine may be shared), and current/baseline is their ratio.

    python benchmarks/bench_generate_parents.py [--rounds 15] [--repeat 20] [--baseline REV]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from google.protobuf import duration_pb2

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common.errors import InvalidArgument
from helix.common.services import validate
from helix.generator import breeding
from helix.generator import validation as checks
from helix.generator.parent_records import read_parents
from helix.genome.documents import parse_dna_text
from helix.genome.layout import Layout

ROOT = Path(__file__).resolve().parent.parent
DNA = ROOT / "benchmarks" / "dna" / "sphere-10d.yaml"
PARENTS = 1000
Side = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]
Task = Callable[[Callable[..., Any], Callable[..., Any], Callable[..., Any]], Callable[[], Any]]


def load_layout() -> Layout:
    check = parse_dna_text(DNA.read_text(), DNA.name)
    if check.normalised is None:
        raise ValueError(f"{DNA.name} is not a valid DNA: {check.violations}")
    return breeding.layout_for(check.normalised)


def bred(layout: Layout, request: generator_pb2.GenerateRequest) -> list[candidate_pb2.Candidate]:
    """The candidates a Generate call answers `request` with."""
    parents = breeding.rank_parents(layout, request)
    out: list[candidate_pb2.Candidate] = []
    for responses in breeding.breed(layout, request, parents):
        for response in responses:
            out += response.candidates
    return out


def scored(candidates: list[candidate_pb2.Candidate]) -> list[candidate_pb2.ScoredCandidate]:
    """Each candidate with a PASSED verdict (sphere score, a duration), best first."""
    out = []
    for i, candidate in enumerate(candidates):
        verdict = candidate_pb2.Verdict(
            candidate_id=candidate.id,
            status=candidate_pb2.VERDICT_STATUS_PASSED,
            score=float(np.sum(np.square(candidate.genome.reals))),
            duration=duration_pb2.Duration(nanos=900_000 + 7919 * i),
        )
        out.append(candidate_pb2.ScoredCandidate(candidate=candidate, verdict=verdict))
    return sorted(out, key=lambda p: p.verdict.score)


def generation_request(layout: Layout) -> generator_pb2.GenerateRequest:
    """The request for generation 2, its parents bred by two real Generate calls."""
    request = generator_pb2.GenerateRequest(
        dna_name="dnas/sphere-10d", count=PARENTS, seed=7, generation=0
    )
    for generation in (1, 2):
        parents = scored(bred(layout, request))
        request = generator_pb2.GenerateRequest(
            dna_name="dnas/sphere-10d",
            parents=parents,
            objective=common_pb2.OBJECTIVE_MINIMIZE,
            count=PARENTS,
            seed=7,
            generation=generation,
        )
    return request


def broken(request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateRequest:
    """A copy with a few parents that the checks refuse, for the agreement check."""
    copy = generator_pb2.GenerateRequest()
    copy.CopyFrom(request)
    copy.parents[3].candidate.id = "A" * 32
    copy.parents[10].verdict.candidate_id = "0" * 32
    copy.parents[11].candidate.parent_ids.append("")
    copy.parents[12].verdict.score = float("nan")
    copy.parents[13].verdict.status = 9  # type: ignore[assignment]
    copy.parents[14].ClearField("candidate")
    copy.parents[15].candidate.ClearField("genome")
    return copy


# --- the baseline ---------------------------------------------------------------------------


def default_baseline() -> str:
    """The commit before the one that added parent_records.py (HEAD if none did)."""
    added = subprocess.run(
        [
            "git",
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "services/helix/generator/parent_records.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def load_baseline(revision: str) -> tuple[ModuleType, ModuleType]:
    """The baseline's validation and breeding modules (the rest of helix shared)."""
    loaded = []
    for name in ("validation", "breeding"):
        path = f"services/helix/generator/{name}.py"
        source = subprocess.run(
            ["git", "show", f"{revision}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        module_name = f"helix.generator._baseline_{name}"
        spec = importlib.util.spec_from_loader(module_name, loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # (dataclasses look their module up)
        exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
        loaded.append(module)
    return loaded[0], loaded[1]


# --- agreement and timing ---------------------------------------------------------------------


def parents_summary(parents: Any) -> tuple[Any, ...]:
    return (
        parents.ids,
        [s.SerializeToString(deterministic=True) for s in parents.sources],
        parents.scored,
        parents.copies.tolist(),
        parents.population.reals.tobytes(),
    )


def violations(check: Callable[[Any], list[Any]], request: generator_pb2.GenerateRequest) -> Any:
    return [(v.field, v.description, v.reason) for v in check(request)]


def baseline_prepare(module: ModuleType, ranking: ModuleType, layout: Layout, request: Any) -> Any:
    """The baseline servicer's steps before breeding: validate, then rank."""
    validate(module.check_generate_request, request)
    return ranking.rank_parents(breeding.layout_for(layout.dna), request)


def current_prepare(layout: Layout, request: generator_pb2.GenerateRequest) -> Any:
    """The servicer's steps before breeding (service.py): the parents read from the
    request's bytes once, for the check and for ranking."""
    records = read_parents(request)
    validate(lambda r: checks.check_generate_request(r, records=records), request)
    return breeding.rank_parents(breeding.layout_for(layout.dna), request, records)


def generate_call(prepare: Callable[[Layout, Any], Any], layout: Layout, request: Any) -> int:
    """A Generate call as the servicer runs it, minus the network and threads."""
    parents = prepare(layout, request)
    count = 0
    for responses in breeding.breed(layout, request, parents):
        count += sum(len(r.candidates) for r in responses)
    return count


def cpu_ms(call: Callable[[], object], repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        call()
    return (time.process_time() - start) * 1e3 / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--baseline", default=None, help="git revision (default: see above)")
    args = parser.parse_args()

    layout = load_layout()
    request = generation_request(layout)
    bad = broken(request)
    revision = args.baseline or default_baseline()
    old_checks, old_breeding = load_baseline(revision)
    sides: dict[str, Side] = {
        "baseline": (
            old_checks.check_generate_request,
            old_breeding.rank_parents,
            functools.partial(baseline_prepare, old_checks, old_breeding),
        ),
        "current": (checks.check_generate_request, breeding.rank_parents, current_prepare),
    }

    # The two must agree before they are compared.
    results = {}
    for side, (check, rank, prepare) in sides.items():
        try:
            validate(check, request)
        except InvalidArgument as error:
            raise SystemExit(f"{side}: the request is refused: {error}") from error
        results[side] = (
            parents_summary(rank(layout, request)),
            parents_summary(prepare(layout, request)),
            violations(check, bad),
            generate_call(prepare, layout, request),
        )
    if results["baseline"] != results["current"]:
        raise SystemExit("baseline and current disagree on the request")
    print(
        f"sphere-10d: {len(request.parents)} parents ({len(results['current'][0][0])} distinct "
        f"ids), {request.ByteSize()} bytes; {len(results['current'][2])} violations in the "
        f"broken copy; baseline {revision}"
    )

    tasks: dict[str, Task] = {
        "check": lambda check, rank, prepare: lambda: check(request),
        "rank": lambda check, rank, prepare: lambda: rank(layout, request),
        "check + rank (servicer)": lambda check, rank, prepare: lambda: prepare(layout, request),
        "Generate call": lambda check, rank, prepare: (
            lambda: generate_call(prepare, layout, request)
        ),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for task, make in tasks.items():
            for side, functions in sides.items():
                repeat = max(1, args.repeat // 4) if task == "Generate call" else args.repeat
                times.setdefault((task, side), []).append(cpu_ms(make(*functions), repeat))
    print(f"{'ms CPU per call (median)':<28}{'baseline':>10}{'current':>10}{'ratio':>8}")
    for task in tasks:
        old = statistics.median(times[(task, "baseline")])
        new = statistics.median(times[(task, "current")])
        print(f"{task:<28}{old:>10.3f}{new:>10.3f}{new / old:>8.2f}")


if __name__ == "__main__":
    main()
