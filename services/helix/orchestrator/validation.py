"""Request validation for OrchestratorService: one pure check per RPC.

An inline DNA gets the structural checks of `helix.genome.validation.check_dna`; the
full validation (strategy support, file rules) happens when the run is created.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
from helix.common import rules
from helix.common.errors import FieldViolation
from helix.common.pages import PageLimits
from helix.common.validation import (
    Violations,
    check_duration,
    check_enum,
    check_etag,
    check_finite,
    check_no_unknown_fields,
    check_page,
    check_range,
    check_request_id,
    check_resource_id,
    check_resource_name,
    check_string,
    duration_is_valid,
)
from helix.genome.validation import check_dna

MAX_DISPLAY_NAME_LEN = 256
_DAY = 86_400


@dataclass(frozen=True, slots=True)
class OrchestratorLimits(PageLimits):
    """Caps on OrchestratorService requests a deployment may lower (defaults: the proto's)."""

    max_evaluations: int = 10**12
    max_duration_seconds: float = 30 * _DAY
    max_generations: int = 10**6

    def __post_init__(self) -> None:
        PageLimits.__post_init__(self)  # (zero-argument super() fails in slots dataclasses)
        if self.max_evaluations < 1 or self.max_generations < 1:
            raise ValueError("max_evaluations and max_generations must be at least 1")
        if not self.max_duration_seconds > 0:
            raise ValueError("max_duration_seconds must be positive")


DEFAULT_LIMITS = OrchestratorLimits()


def _check_budget(
    budget: orchestrator_pb2.RunBudget, path: str, limits: OrchestratorLimits
) -> Violations:
    found = check_range(
        budget.max_evaluations, f"{path}.max_evaluations", 0, limits.max_evaluations
    )
    found += check_range(
        budget.max_generations, f"{path}.max_generations", 0, limits.max_generations
    )
    has_duration = budget.HasField("max_duration")
    if has_duration:
        found += check_duration(
            budget.max_duration, f"{path}.max_duration", 0, limits.max_duration_seconds
        )
    duration = budget.max_duration
    timed = (
        has_duration
        and duration_is_valid(duration)
        and (duration.seconds > 0 or duration.nanos > 0)
    )
    if not (budget.max_evaluations or budget.max_generations or timed):
        text = "must set at least one limit: max_evaluations, max_duration or max_generations"
        found.append(FieldViolation(path, text, rules.REQUIRED))
    return found


def _check_run(run: orchestrator_pb2.Run, limits: OrchestratorLimits) -> Violations:
    """The client-set fields of a Run to create; output-only fields are ignored."""
    found = check_string(
        run.display_name, "run.display_name", required=False, max_len=MAX_DISPLAY_NAME_LEN
    )
    source = run.WhichOneof("dna_source")
    if source is None:
        found.append(
            FieldViolation("run.dna_source", "must set one of dna_name, dna", rules.REQUIRED)
        )
    elif source == "dna_name":
        found += check_resource_name(run.dna_name, "dnas", "run.dna_name")
    else:
        found += check_dna(run.dna, "run.dna")
    found += check_resource_name(run.oracle, "oracles", "run.oracle")
    found += check_enum(
        run.objective, common_pb2.Objective.DESCRIPTOR, "run.objective", required=True
    )
    if run.HasField("budget"):
        found += _check_budget(run.budget, "run.budget", limits)
    else:
        found.append(FieldViolation("run.budget", "must be set", rules.REQUIRED))
    if run.HasField("target_score"):
        found += check_finite(run.target_score, "run.target_score")
    return found


def check_create_run_request(
    request: orchestrator_pb2.CreateRunRequest, limits: OrchestratorLimits = DEFAULT_LIMITS
) -> Violations:
    """run set with a DNA (name or structurally sound inline), oracle, objective, a budget
    with at least one limit within its cap, finite target_score; run_id optional id;
    request_id required."""
    found = check_no_unknown_fields(request)
    if request.HasField("run"):
        found += _check_run(request.run, limits)
    else:
        found.append(FieldViolation("run", "must be set", rules.REQUIRED))
    found += check_resource_id(request.run_id, "run_id", required=False)
    return found + check_request_id(request.request_id, "request_id")


def check_get_run_request(
    request: orchestrator_pb2.GetRunRequest, limits: OrchestratorLimits = DEFAULT_LIMITS
) -> Violations:
    """name: a required "runs/{run}"."""
    return check_no_unknown_fields(request) + check_resource_name(request.name, "runs", "name")


def check_list_runs_request(
    request: orchestrator_pb2.ListRunsRequest, limits: OrchestratorLimits = DEFAULT_LIMITS
) -> Violations:
    """page_size not negative; page_token <= 1024; state a known value (UNSPECIFIED: all)."""
    found = check_no_unknown_fields(request)
    found += check_page(request.page_size, request.page_token)
    return found + check_enum(request.state, orchestrator_pb2.RunState.DESCRIPTOR, "state")


def check_cancel_run_request(
    request: orchestrator_pb2.CancelRunRequest, limits: OrchestratorLimits = DEFAULT_LIMITS
) -> Violations:
    """name "runs/{run}"; etag at most 64 characters."""
    found = check_no_unknown_fields(request)
    found += check_resource_name(request.name, "runs", "name")
    return found + check_etag(request.etag, "etag")


def check_watch_run_request(
    request: orchestrator_pb2.WatchRunRequest, limits: OrchestratorLimits = DEFAULT_LIMITS
) -> Violations:
    """name "runs/{run}"; after_sequence not negative."""
    found = check_no_unknown_fields(request)
    found += check_resource_name(request.name, "runs", "name")
    return found + check_range(request.after_sequence, "after_sequence", 0)


def check_list_run_candidates_request(
    request: orchestrator_pb2.ListRunCandidatesRequest,
    limits: OrchestratorLimits = DEFAULT_LIMITS,
) -> Violations:
    """name "runs/{run}"; page_size not negative; page_token <= 1024; status a known value."""
    found = check_no_unknown_fields(request)
    found += check_resource_name(request.name, "runs", "name")
    found += check_page(request.page_size, request.page_token)
    status_type = candidate_pb2.VerdictStatus.DESCRIPTOR
    return found + check_enum(request.status, status_type, "status")


CHECKS: dict[str, Callable[[Any], list[FieldViolation]]] = {
    "CreateRun": check_create_run_request,
    "GetRun": check_get_run_request,
    "ListRuns": check_list_runs_request,
    "CancelRun": check_cancel_run_request,
    "WatchRun": check_watch_run_request,
    "ListRunCandidates": check_list_run_candidates_request,
}
