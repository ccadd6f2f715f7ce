"""Request validation for GeneratorService: one pure check per RPC.

DNAs and candidates inside requests get the shared structural checks of
`helix.genome.validation`; whether a parent's genome fits its DNA is checked when
Generate decodes it. Every violation carries its rule code from `helix.common.rules`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.pages import PageLimits
from helix.common.validation import (
    Violations,
    check_enum,
    check_no_unknown_fields,
    check_page,
    check_range,
    check_repeated_len,
    check_resource_name,
    check_string,
    index,
    join,
)
from helix.generator.parent_records import ParentRecords, read_parents
from helix.genome.validation import (
    CANDIDATE_ID_PATTERN,
    VERDICT_STATUSES,
    check_candidate_id,
    check_dna,
    check_scored_candidate,
)

MAX_FILENAME_LEN = 1024


@dataclass(frozen=True, slots=True)
class GeneratorLimits(PageLimits):
    """Caps on GeneratorService requests that a deployment may lower (defaults: the proto's)."""

    max_parents: int = 100_000
    max_count: int = 1_000_000
    max_batch_size: int = 10_000
    max_text_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        PageLimits.__post_init__(self)  # (zero-argument super() fails in slots dataclasses)
        for name in ("max_parents", "max_count", "max_batch_size", "max_text_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


DEFAULT_LIMITS = GeneratorLimits()


# --- GeneratorService requests ------------------------------------------------------------


def check_list_dnas_request(
    request: generator_pb2.ListDnasRequest, limits: GeneratorLimits = DEFAULT_LIMITS
) -> Violations:
    """page_size not negative; page_token at most 1024 characters."""
    return check_no_unknown_fields(request) + check_page(request.page_size, request.page_token)


def check_get_dna_request(
    request: generator_pb2.GetDnaRequest, limits: GeneratorLimits = DEFAULT_LIMITS
) -> Violations:
    """name: a required "dnas/{dna}"."""
    return check_no_unknown_fields(request) + check_resource_name(request.name, "dnas", "name")


def _utf8_len_over(text: str, limit: int) -> bool:
    """Whether `text` takes more than `limit` bytes in UTF-8 (cheap for short texts)."""
    if len(text) * 4 <= limit:
        return False
    if len(text) > limit:
        return True
    return len(text.encode("utf-8", "surrogatepass")) > limit


def check_validate_dna_request(
    request: generator_pb2.ValidateDnaRequest, limits: GeneratorLimits = DEFAULT_LIMITS
) -> Violations:
    """source (dna or text) set; text 1 byte..1 MiB; filename at most 1024 characters.

    The DNA itself is not checked here (nor its unknown fields): a broken DNA is a
    successful ValidateDna call that reports it, not an INVALID_ARGUMENT.
    """
    found = check_no_unknown_fields(request, skip=("dna",))
    source = request.WhichOneof("source")
    if source is None:
        found.append(FieldViolation("source", "must set one of dna, text", rules.REQUIRED))
    elif source == "text":
        if not request.text:
            found.append(FieldViolation("text", "must not be empty", rules.REQUIRED))
        elif _utf8_len_over(request.text, limits.max_text_bytes):
            text = f"must be at most {limits.max_text_bytes} bytes of UTF-8"
            found.append(FieldViolation("text", text, rules.TOO_LONG))
    found += check_string(request.filename, "filename", required=False, max_len=MAX_FILENAME_LEN)
    return found


def _check_lineage(candidate: candidate_pb2.Candidate, path: str) -> Violations:
    """A parent's parent_ids, which Generate copies into the output when it is an elite:
    at most 2, each a well-formed candidate id."""
    ids_path = join(path, "candidate.parent_ids")
    found = check_repeated_len(candidate.parent_ids, ids_path, 2)
    for j, parent_id in enumerate(candidate.parent_ids[:2]):
        if not parent_id:
            found.append(FieldViolation(index(ids_path, j), "must not be empty", rules.REQUIRED))
        else:
            found += check_candidate_id(parent_id, index(ids_path, j))
    return found


_CANDIDATE_ID = re.compile(CANDIDATE_ID_PATTERN)


def _well_formed_id(value: str) -> bool:
    return len(value) == 32 and _CANDIDATE_ID.fullmatch(value) is not None


def parent_is_clean(parent: candidate_pb2.ScoredCandidate) -> bool:
    """A fast accept of a parent that passes every per-parent check of
    `check_generate_request` (without building field paths); any other parent gets the full
    checks, which name each problem. It must never accept what they would refuse
    (tests/test_validation.py checks that on random messages)."""
    if not parent.HasField("candidate"):
        return False
    candidate = parent.candidate
    own_id = candidate.id
    if (own_id and not _well_formed_id(own_id)) or not candidate.HasField("genome"):
        return False
    lineage = candidate.parent_ids
    if len(lineage) > 2 or not all(map(_well_formed_id, lineage)):
        return False
    if not parent.HasField("verdict"):
        return True
    verdict = parent.verdict
    verdict_id = verdict.candidate_id
    if verdict_id and (verdict_id != own_id if own_id else not _well_formed_id(verdict_id)):
        return False
    return verdict.status in VERDICT_STATUSES and math.isfinite(verdict.score)


def _unclean_parents(
    request: generator_pb2.GenerateRequest, max_parents: int, records: ParentRecords | None
) -> list[int]:
    """The indices of the first `max_parents` parents that the scan of the request's bytes
    does not accept (`ParentRecords.clean`: all of them at once, where a parent at a time
    costs microseconds); every parent should the bytes not read as expected."""
    count = min(len(request.parents), max_parents)
    if not count:
        return []
    if records is None:
        records = read_parents(request)
    if records is None:
        return list(range(count))
    return np.flatnonzero(~records.clean[:count]).tolist()


def parent_violations(parent: candidate_pb2.ScoredCandidate, path: str) -> Violations:
    """The full per-parent checks of `check_generate_request`, with field paths.

    Genomes are decoded against the DNA before any use, which checks every value
    (vectorised, and stricter than check_genome); checking them here too would double the
    per-parent cost of a Generate call.
    """
    return check_scored_candidate(parent, path, genome=False) + _check_lineage(
        parent.candidate, path
    )


def check_generate_request(
    request: generator_pb2.GenerateRequest,
    limits: GeneratorLimits = DEFAULT_LIMITS,
    *,
    records: ParentRecords | None = None,
) -> Violations:
    """DNA (by name or inline, structurally sound); parents capped and sane (their
    parent_ids included: elites are copied); objective required with parents; count
    1..1000000; batch_size at most 10000; the range [offset, offset + limit) within count.

    `records`: `read_parents(request)` when the caller has them (of this request,
    unchanged since: the servicer passes them on to `rank_parents`), else read here."""
    found = check_no_unknown_fields(request)
    source = request.WhichOneof("dna_source")
    if source is None:
        found.append(FieldViolation("dna_source", "must set one of dna_name, dna", rules.REQUIRED))
    elif source == "dna_name":
        found += check_resource_name(request.dna_name, "dnas", "dna_name")
    else:
        found += check_dna(request.dna, "dna")
    parents = request.parents
    found += check_repeated_len(parents, "parents", limits.max_parents)
    for i in _unclean_parents(request, limits.max_parents, records):
        parent = parents[i]
        if not parent_is_clean(parent):
            found += parent_violations(parent, index("parents", i))
    if request.parents:
        objective_type = common_pb2.Objective.DESCRIPTOR
        found += check_enum(request.objective, objective_type, "objective", required=True)
    found += check_range(request.count, "count", 1, limits.max_count)
    found += check_range(request.batch_size, "batch_size", high=limits.max_batch_size)
    if request.count and request.offset >= request.count:
        found.append(
            FieldViolation(
                "offset",
                f"must be below count ({request.count}), not {request.offset}",
                rules.RANGE,
            )
        )
    elif request.offset + request.limit > request.count:
        found.append(
            FieldViolation(
                "limit",
                f"offset + limit ({request.offset + request.limit}) must be at most count "
                f"({request.count})",
                rules.RANGE,
            )
        )
    return found


CHECKS: dict[str, Callable[[Any], list[FieldViolation]]] = {
    "ListDnas": check_list_dnas_request,
    "GetDna": check_get_dna_request,
    "ValidateDna": check_validate_dna_request,
    "Generate": check_generate_request,
}
