"""Request validation for OracleService: one pure check per RPC, and one per stream message.

DNAs and candidates get the structural checks of `helix.genome.validation`; whether a
genome fits its DNA and whether a candidate id is the hash of its genome are checked when
the genomes are decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.oracle_pb2 as oracle_pb2
from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.pages import PageLimits
from helix.common.validation import (
    Violations,
    check_duration,
    check_no_unknown_fields,
    check_page,
    check_repeated_len,
    check_resource_name,
    check_string,
    index,
    join,
)
from helix.genome.validation import check_candidate, check_dna


@dataclass(frozen=True, slots=True)
class OracleLimits(PageLimits):
    """Caps on OracleService requests a deployment may lower (defaults: oracle.proto's)."""

    max_candidates: int = 10_000

    def __post_init__(self) -> None:
        PageLimits.__post_init__(self)  # (zero-argument super() fails in slots dataclasses)
        if self.max_candidates < 1:
            raise ValueError("max_candidates must be at least 1")


DEFAULT_LIMITS = OracleLimits()


def _check_candidates(
    candidates: Sequence[candidate_pb2.Candidate], path: str, limits: OracleLimits
) -> Violations:
    found = check_repeated_len(candidates, path, limits.max_candidates, 1)
    for i, candidate in enumerate(candidates[: limits.max_candidates]):
        found += check_candidate(candidate, index(path, i))
    return found


def check_target(
    message: oracle_pb2.VerifyRequest | oracle_pb2.VerifyStreamOpen, path: str
) -> Violations:
    """oracle, dna and timeout: shared by Verify and VerifyStream's `open`."""
    found = check_resource_name(message.oracle, "oracles", join(path, "oracle"))
    if message.HasField("dna"):
        found += check_dna(message.dna, join(path, "dna"))
    else:
        found.append(FieldViolation(join(path, "dna"), "must be set", rules.REQUIRED))
    if message.HasField("timeout"):
        found += check_duration(message.timeout, join(path, "timeout"), 0, min_exclusive=True)
    return found


def check_list_oracles_request(
    request: oracle_pb2.ListOraclesRequest, limits: OracleLimits = DEFAULT_LIMITS
) -> Violations:
    """page_size not negative; page_token at most 1024 characters."""
    return check_no_unknown_fields(request) + check_page(request.page_size, request.page_token)


def check_get_oracle_request(
    request: oracle_pb2.GetOracleRequest, limits: OracleLimits = DEFAULT_LIMITS
) -> Violations:
    """name: a required "oracles/{oracle}"."""
    found = check_no_unknown_fields(request)
    return found + check_resource_name(request.name, "oracles", "name")


def check_verify_request(
    request: oracle_pb2.VerifyRequest, limits: OracleLimits = DEFAULT_LIMITS
) -> Violations:
    """oracle "oracles/{oracle}"; dna set and structurally sound; 1 to 10000 sane
    candidates; timeout > 0 when set."""
    found = check_no_unknown_fields(request) + check_target(request, "")
    return found + _check_candidates(request.candidates, "candidates", limits)


def check_verify_stream_request(
    message: oracle_pb2.VerifyStreamRequest,
    first: bool,
    limits: OracleLimits = DEFAULT_LIMITS,
) -> Violations:
    """One client message of VerifyStream: the first is `open` (oracle, dna, timeout as in
    Verify), every later one a `batch` (batch_id >= 1, 1 to 10000 sane candidates)."""
    found = check_no_unknown_fields(message)
    kind = message.WhichOneof("kind")
    if kind is None:
        expected = "open" if first else "batch"
        return [*found, FieldViolation(expected, "must be set", rules.REQUIRED)]
    if first and kind != "open":
        found.append(
            FieldViolation("open", "must be set in the first message of the stream", rules.ONEOF)
        )
    if not first and kind == "open":
        found.append(
            FieldViolation("open", "must be sent only once, in the first message", rules.ONEOF)
        )
    if kind == "open":
        found += check_string(
            message.open.config_hash,
            "open.config_hash",
            required=False,
            max_len=64,
            pattern="[0-9a-f]{64}",
        )
        return found + check_target(message.open, "open")
    batch = message.batch
    if batch.batch_id == 0:
        found.append(FieldViolation("batch.batch_id", "must be set (not 0)", rules.REQUIRED))
    return found + _check_candidates(batch.candidates, "batch.candidates", limits)


def check_first_verify_stream_request(
    message: oracle_pb2.VerifyStreamRequest, limits: OracleLimits = DEFAULT_LIMITS
) -> Violations:
    """The first message of a VerifyStream, which must be `open`."""
    return check_verify_stream_request(message, True, limits)


CHECKS: dict[str, Callable[[Any], list[FieldViolation]]] = {
    "ListOracles": check_list_oracles_request,
    "GetOracle": check_get_oracle_request,
    "Verify": check_verify_request,
    "VerifyStream": check_first_verify_stream_request,
}
