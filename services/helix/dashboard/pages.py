"""The dashboard's pages as HTML, from the services' messages (no I/O here).

Everything shown is passed through `markup.tag`, which escapes it; numbers are formatted
for people; times are written in UTC inside `<time datetime=…>`, which the page's script
rewrites in the viewer's own time zone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

import helix.v1.candidate_pb2 as candidate_pb2
import helix.v1.common_pb2 as common_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.registry_pb2 as registry_pb2
from helix.dashboard.markup import Html, join, tag
from helix.dashboard.sessions import Session

TERMINAL = frozenset(
    {
        orchestrator_pb2.RUN_STATE_SUCCEEDED,
        orchestrator_pb2.RUN_STATE_FAILED,
        orchestrator_pb2.RUN_STATE_CANCELLED,
    }
)
NAV = (
    ("runs", "/runs", "Runs"),
    ("agents", "/agents", "Agents"),
    ("dnas", "/dnas", "DNAs"),
    ("oracles", "/oracles", "Oracles"),
)


def enum_name(enum: object, value: int, prefix: str) -> str:
    """`RUN_STATE_RUNNING` → `RUNNING` (the number itself for a value this build lacks)."""
    try:
        name: str = enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def state_name(state: int) -> str:
    return enum_name(orchestrator_pb2.RunState, state, "RUN_STATE_")


def number(value: float | int | None) -> str:
    """12,345 for counts; 6 significant digits for scores; an em dash for none."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.6g}"


def when(stamp: timestamp_pb2.Timestamp | None) -> Html:
    """A `<time>` in UTC (the script shows it in the viewer's zone); — when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return join("—")
    instant = stamp.ToDatetime()
    iso = instant.strftime("%Y-%m-%dT%H:%M:%SZ")
    return tag("time", instant.strftime("%Y-%m-%d %H:%M:%S UTC"), datetime=iso)


def seconds_of(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def evaluation_rate(run: orchestrator_pb2.Run, now: float | None = None) -> float | None:
    """Evaluations per second since the run started (to its end, if it ended)."""
    if not run.HasField("start_time") or run.start_time.seconds == 0:
        return None
    end = seconds_of(run.end_time) if run.HasField("end_time") and run.end_time.seconds else None
    elapsed = (end if end is not None else (now or time.time())) - seconds_of(run.start_time)
    if elapsed <= 0:
        return None
    return run.progress.evaluations / elapsed


def best_score(run: orchestrator_pb2.Run) -> float | None:
    if run.progress.HasField("best"):
        return run.progress.best.verdict.score
    return None


def budget_text(budget: orchestrator_pb2.RunBudget) -> str:
    parts = []
    if budget.max_evaluations:
        parts.append(f"{budget.max_evaluations:,} evaluations")
    if budget.max_generations:
        parts.append(f"{budget.max_generations:,} generations")
    if budget.HasField("max_duration"):
        parts.append(f"{budget.max_duration.ToTimedelta()}")
    return ", ".join(parts) or "—"


# ---- the frame ---------------------------------------------------------------------------


def document(
    title: str,
    main: Html,
    *,
    session: Session | None,
    active: str = "",
    data: Mapping[str, object] | None = None,
) -> Html:
    """A whole page: head (the bundled stylesheet and script only), header, main."""
    header = None
    if session is not None:
        links = [
            tag("a", label, href=href, aria_current="page" if key == active else None)
            for key, href, label in NAV
        ]
        header = tag(
            "header",
            tag("a", "Helix", href="/runs", class_="brand"),
            tag("nav", links, aria_label="Sections"),
            tag(
                "div",
                tag("span", session.subject, id="who", title="signed in as"),
                tag(
                    "form",
                    csrf_field(session),
                    tag("button", "Sign out", type="submit"),
                    id="logout",
                    method="post",
                    action="/logout",
                ),
                class_="who",
            ),
        )
    body_attrs = {f"data_{k}": v for k, v in (data or {}).items()}
    return Html(
        "<!doctype html>\n"
        + tag(
            "html",
            tag(
                "head",
                tag("meta", charset="utf-8"),
                tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
                tag("title", f"{title} · Helix"),
                tag("link", rel="stylesheet", href="/static/app.css"),
                tag("script", src="/static/app.js", defer=True),
            ),
            tag("body", header, tag("main", main), data_page=active, **body_attrs),
            lang="en",
        )
    )


def csrf_field(session: Session) -> Html:
    return tag("input", type="hidden", name="csrf", value=session.csrf)


def refusal(scope: str, what: str) -> Html:
    return tag(
        "p",
        f"This token does not grant {scope}, which is needed {what}. "
        "Sign in with a token that has it (helix dashboard open, or helix token mint "
        f"--scope {scope}).",
        class_="refusal",
        role="alert",
    )


def error(text: str) -> Html:
    return tag("p", text, class_="error", role="alert")


def login_page(message: str | None, next_path: str) -> Html:
    form = tag(
        "form",
        tag("label", "Bearer token", for_="token"),
        tag(
            "textarea",
            id="token",
            name="token",
            rows="5",
            required=True,
            autocomplete="off",
            spellcheck="false",
            placeholder="eyJ…",
        ),
        tag("input", type="hidden", name="next", value=next_path),
        tag("button", "Sign in", type="submit", id="login-submit"),
        id="login-form",
        method="post",
        action="/login",
    )
    hint = tag(
        "p",
        "Paste a token from ",
        tag("code", "helix token mint --scope runs.read …"),
        ", or open the one-time link that ",
        tag("code", "helix dashboard open"),
        " prints for a suite on this machine.",
        class_="hint",
    )
    main = join(tag("h1", "Sign in to Helix"), error(message) if message else None, form, hint)
    return document("Sign in", main, session=None, active="login")


# ---- runs --------------------------------------------------------------------------------


def run_id(name: str) -> str:
    return name.removeprefix("runs/")


def runs_page(
    session: Session, runs: Sequence[orchestrator_pb2.Run], next_token: str, now: float
) -> Html:
    if not runs:
        body: Html = tag("p", "No runs yet. Start one with helix run.", class_="empty")
    else:
        rows = [_run_row(run, now) for run in runs]
        head = tag(
            "tr",
            [
                tag("th", h, scope="col")
                for h in (
                    "Run",
                    "State",
                    "DNA · oracle",
                    "Progress",
                    "Generation",
                    "Best",
                    "Evals/s",
                    "Created",
                )
            ],
        )
        body = tag(
            "div",
            tag("table", tag("thead", head), tag("tbody", rows), id="runs"),
            class_="scroll",
        )
    more = None
    if next_token:
        more = tag("a", "Older runs →", href=f"/runs?page={next_token}", class_="more")
    return document("Runs", join(tag("h1", "Runs"), body, more), session=session, active="runs")


def _progress(run: orchestrator_pb2.Run) -> Html:
    done = run.progress.evaluations
    budget = run.budget.max_evaluations
    text = f"{done:,} / {budget:,}" if budget else f"{done:,}"
    bar = None
    if budget:
        bar = tag("progress", value=str(min(done, budget)), max=str(budget))
    return join(bar, " ", tag("span", text))


def _run_row(run: orchestrator_pb2.Run, now: float) -> Html:
    state = state_name(run.state)
    label = run.display_name or run_id(run.name)
    source = run.dna_name or (f"inline {run.dna.name}" if run.HasField("dna") else "—")
    return tag(
        "tr",
        tag("td", tag("a", label, href=f"/runs/{run_id(run.name)}")),
        tag("td", state, class_=f"state state-{state.lower()}"),
        tag("td", source, " · ", run.oracle),
        tag("td", _progress(run), class_="num"),
        tag("td", number(run.progress.generation), class_="num"),
        tag("td", number(best_score(run)), class_="num"),
        tag("td", number(_rounded(evaluation_rate(run, now))), class_="num"),
        tag("td", when(run.create_time)),
        data_run=run.name,
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run_page(
    session: Session,
    run: orchestrator_pb2.Run,
    candidates: Html,
    now: float,
) -> Html:
    state = state_name(run.state)
    objective = enum_name(common_pb2.Objective, run.objective, "OBJECTIVE_").lower()
    facts = [
        ("State", tag("span", state, id="run-state", class_=f"state state-{state.lower()}")),
        ("Stop reason", tag("span", _stop_reason(run), id="stop-reason")),
        ("Evaluations", tag("span", number(run.progress.evaluations), id="evaluations")),
        ("Budget", budget_text(run.budget)),
        ("Generation", tag("span", number(run.progress.generation), id="generation")),
        ("Best score", tag("span", number(best_score(run)), id="best-score")),
        ("Evals/s", tag("span", number(_rounded(evaluation_rate(run, now))), id="rate")),
        ("Objective", objective),
        ("DNA", run.dna_name or (f"inline: {run.dna.name}" if run.HasField("dna") else "—")),
        ("Oracle", run.oracle),
        ("Owner", run.owner),
        ("Seed", str(run.seed) if run.HasField("seed") else "—"),
        ("Created", when(run.create_time)),
        ("Started", when(run.start_time if run.HasField("start_time") else None)),
        ("Ended", when(run.end_time if run.HasField("end_time") else None)),
    ]
    counts = run.progress
    facts.append(
        (
            "Duplicates · failed · errors",
            f"{counts.duplicates:,} · {counts.failed:,} · {counts.errors:,}",
        )
    )
    summary = tag("dl", [join(tag("dt", k), tag("dd", v)) for k, v in facts], class_="facts")
    message = run.error or run.state_message
    cancel = None
    if session.can("runs.write") and run.state not in TERMINAL:
        cancel = tag(
            "form",
            csrf_field(session),
            tag("button", "Cancel run", type="submit", id="cancel", class_="danger"),
            id="cancel-form",
            method="post",
            action=f"/runs/{run_id(run.name)}/cancel",
        )
    chart = tag(
        "figure",
        tag(
            "svg",
            tag("title", "Best and mean score against evaluations"),
            id="chart",
            viewBox="0 0 960 320",
            role="img",
            aria_label="Convergence: best and mean score per generation against evaluations",
            data_points="0",
        ),
        tag(
            "figcaption",
            tag("span", "best", class_="key best"),
            tag("span", "mean", class_="key mean"),
            " score against evaluations, per generation (",
            objective,
            ")",
        ),
        class_="chart",
    )
    main = join(
        tag(
            "div",
            tag("h1", run.display_name or run_id(run.name)),
            tag("span", "connecting", id="live", class_="live"),
            class_="title",
        ),
        tag("p", run.name, class_="subtitle"),
        error(message) if message else None,
        tag("section", summary, cancel, class_="summary"),
        chart,
        tag("h2", "Best candidates"),
        candidates,
        tag("h2", "Events"),
        tag("ol", id="events", reversed=True),
        tag("noscript", tag("p", "Live events and the chart need JavaScript.")),
    )
    data = {"run": run.name, "objective": objective, "terminal": str(run.state in TERMINAL)}
    return document(run_id(run.name), main, session=session, active="runs", data=data)


def _stop_reason(run: orchestrator_pb2.Run) -> str:
    if not run.stop_reason:
        return "—"
    return enum_name(orchestrator_pb2.RunStopReason, run.stop_reason, "RUN_STOP_REASON_")


def candidate_rows(
    candidates: Sequence[candidate_pb2.ScoredCandidate],
    named: Sequence[Mapping[str, object] | None],
) -> list[dict[str, object]]:
    """The candidates as plain data (for the table here, and the page's script)."""
    rows: list[dict[str, object]] = []
    for rank, (scored, genes) in enumerate(zip(candidates, named, strict=True), start=1):
        verdict = scored.verdict
        rows.append(
            {
                "rank": rank,
                "id": scored.candidate.id,
                "generation": scored.candidate.generation,
                "status": enum_name(candidate_pb2.VerdictStatus, verdict.status, "VERDICT_STATUS_"),
                "score": verdict.score,
                "metrics": dict(sorted(verdict.metrics.items())),
                "message": verdict.message,
                "genes": json.dumps(genes, separators=(",", ":")) if genes is not None else "",
            }
        )
    return rows


def candidates_table(rows: Sequence[Mapping[str, object]], note: str | None) -> Html:
    head = tag(
        "tr",
        [
            tag("th", h, scope="col")
            for h in ("#", "Candidate", "Gen.", "Status", "Score", "Metrics", "Genes")
        ],
    )
    body = []
    for row in rows:
        metrics = row["metrics"]
        assert isinstance(metrics, dict)
        body.append(
            tag(
                "tr",
                tag("td", row["rank"], class_="num"),
                tag("td", tag("code", str(row["id"])[:12]), title=row["id"], class_="id"),
                tag("td", number(int(row["generation"])), class_="num"),  # type: ignore[call-overload]
                tag("td", row["status"], title=row["message"] or None, class_="status"),
                tag("td", number(float(row["score"])), class_="num"),  # type: ignore[arg-type]
                tag("td", ", ".join(f"{k}={number(v)}" for k, v in metrics.items())),
                tag("td", tag("code", row["genes"]), class_="genes"),
            )
        )
    table = tag(
        "div",
        tag("table", tag("thead", head), tag("tbody", body), id="candidates"),
        class_="scroll",
    )
    return join(tag("p", note, class_="hint") if note else None, table)


# ---- agents ------------------------------------------------------------------------------


def agent_data(agent: registry_pb2.Agent, max_served: int = 20) -> dict[str, object]:
    """An agent as plain data for the page and its script (served names cut to a few)."""
    served: Sequence[str] = ()
    if agent.HasField("generator"):
        served = agent.generator.dnas
    elif agent.HasField("oracle"):
        served = agent.oracle.oracles
    return {
        "name": agent.name,
        "kind": enum_name(registry_pb2.AgentKind, agent.kind, "AGENT_KIND_"),
        "endpoint": agent.endpoint,
        "health": enum_name(registry_pb2.AgentHealth, agent.health, "AGENT_HEALTH_"),
        "in_flight": agent.load.in_flight,
        "queued": agent.load.queued,
        "utilization": agent.load.utilization,
        "capacity": agent.capacity,
        "labels": dict(sorted(agent.labels.items())),
        "ttl": agent.ttl.seconds + agent.ttl.nanos / 1e9,
        "owner": agent.owner,
        "created": _iso(agent.create_time),
        "updated": _iso(agent.update_time),
        "serves": list(served[:max_served]),
        "serves_total": len(served),
    }


def _iso(stamp: timestamp_pb2.Timestamp) -> str:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return ""
    return stamp.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_time(iso: str) -> Html:
    if not iso:
        return join("—")
    return tag("time", iso.replace("T", " ").replace("Z", " UTC"), datetime=iso)


AGENT_COLUMNS = (
    "Agent",
    "Kind",
    "Endpoint",
    "Health",
    "Load",
    "Labels",
    "Lease",
    "Registered",
    "Serves",
)


def duration(seconds: float) -> str:
    """3 s, 4 min 5 s, 2 h 3 min, 1 d 2 h."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def lease_text(data: Mapping[str, object], now: float) -> str:
    """`ttl 10 s · age 3 min 2 s`: the lease TTL granted and how long ago it began."""
    created = str(data["created"])
    age = ""
    if created:
        started = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        age = f" · age {duration(now - started.timestamp())}"
    return f"ttl {duration(float(data['ttl']))}{age}"  # type: ignore[arg-type]


def agent_row(data: Mapping[str, object], now: float) -> Html:
    labels = data["labels"]
    serves = data["serves"]
    assert isinstance(labels, dict)
    assert isinstance(serves, list)
    health = str(data["health"])
    total = int(data["serves_total"])  # type: ignore[call-overload]
    served = ", ".join(str(s) for s in serves) + (
        f" … ({total:,} in all)" if total > len(serves) else ""
    )
    return tag(
        "tr",
        tag("td", str(data["name"]).removeprefix("agents/")),
        tag("td", data["kind"], class_="kind"),
        tag("td", tag("code", data["endpoint"]), class_="endpoint"),
        tag("td", health, class_=f"health health-{health.lower()}"),
        tag(
            "td",
            f"{data['in_flight']:,} / {data['capacity']:,}",
            f" (+{data['queued']:,} queued)" if data["queued"] else None,
            class_="load num",
        ),
        tag(
            "td",
            [tag("span", f"{k}={v}", class_="label") for k, v in labels.items()],
            class_="labels",
        ),
        tag("td", lease_text(data, now), class_="lease", data_ttl=data["ttl"]),
        tag(
            "td", _iso_time(str(data["created"])), class_="registered", data_created=data["created"]
        ),
        tag("td", served, class_="serves"),
        data_agent=data["name"],
    )


def agents_page(
    session: Session, agents: Iterable[Mapping[str, object]], note: str | None, now: float
) -> Html:
    head = tag("tr", [tag("th", h, scope="col") for h in AGENT_COLUMNS])
    rows = [agent_row(a, now) for a in agents]
    main = join(
        tag(
            "div",
            tag("h1", "Agents"),
            tag("span", "connecting", id="live", class_="live"),
            class_="title",
        ),
        tag("p", note, class_="hint") if note else None,
        tag(
            "div",
            tag("table", tag("thead", head), tag("tbody", rows), id="agents"),
            class_="scroll",
        ),
        tag("p", "No agents are registered.", class_="empty", id="no-agents", hidden=bool(rows)),
        tag("h2", "Recently left"),
        tag("ul", id="departed"),
    )
    return document("Agents", main, session=session, active="agents")


# ---- DNAs and oracles --------------------------------------------------------------------


def dnas_page(
    session: Session,
    dnas: Sequence[generator_pb2.DnaDocument],
    skipped: Sequence[generator_pb2.SkippedDnaFile],
    total_skipped: int,
    note: str | None,
) -> Html:
    head = tag(
        "tr",
        [
            tag("th", h, scope="col")
            for h in ("DNA", "Valid", "Genes", "Description", "Source", "Updated")
        ],
    )
    rows = []
    for doc in dnas:
        violations = None
        if doc.violations:
            violations = tag(
                "ul",
                [
                    tag("li", tag("code", v.field_path or v.file), " ", v.rule, ": ", v.description)
                    for v in doc.violations
                ],
                class_="violations",
            )
        rows.append(
            tag(
                "tr",
                tag("td", doc.name.removeprefix("dnas/")),
                tag(
                    "td",
                    "valid" if doc.valid else "invalid",
                    class_=f"valid valid-{str(doc.valid).lower()}",
                ),
                tag("td", number(len(doc.dna.genes)), class_="num"),
                tag("td", doc.dna.description, violations),
                tag("td", tag("code", doc.source)),
                tag("td", when(doc.update_time if doc.HasField("update_time") else None)),
                data_dna=doc.name,
            )
        )
    table = (
        tag("div", tag("table", tag("thead", head), tag("tbody", rows), id="dnas"), class_="scroll")
        if rows
        else tag("p", "The library holds no DNA.", class_="empty")
    )
    skipped_part = None
    if skipped:
        skipped_head = tag("tr", [tag("th", h, scope="col") for h in ("File", "Rule", "Why")])
        skipped_rows = [
            tag("tr", tag("td", tag("code", s.file)), tag("td", s.rule), tag("td", s.description))
            for s in skipped
        ]
        more = total_skipped - len(skipped)
        skipped_part = join(
            tag("h2", "Files that are not valid DNAs"),
            tag(
                "div",
                tag("table", tag("thead", skipped_head), tag("tbody", skipped_rows), id="skipped"),
                class_="scroll",
            ),
            tag("p", f"… and {more:,} more", class_="hint") if more > 0 else None,
        )
    main = join(
        tag("h1", "DNAs"), tag("p", note, class_="hint") if note else None, table, skipped_part
    )
    return document("DNAs", main, session=session, active="dnas")


def oracles_page(
    session: Session, oracles: Sequence[oracle_pb2.OracleInfo], note: str | None
) -> Html:
    head = tag(
        "tr",
        [
            tag("th", h, scope="col")
            for h in ("Oracle", "Kind", "Objective", "Capacity", "Config hash", "Description")
        ],
    )
    rows = [
        tag(
            "tr",
            tag("td", o.name.removeprefix("oracles/")),
            tag(
                "td",
                enum_name(oracle_pb2.OracleKind, o.kind, "ORACLE_KIND_").lower(),
                class_="kind",
            ),
            tag("td", enum_name(common_pb2.Objective, o.objective, "OBJECTIVE_").lower()),
            tag("td", number(o.capacity), class_="num"),
            tag("td", tag("code", o.config_hash[:16]), title=o.config_hash, class_="hash"),
            tag("td", o.description),
            data_oracle=o.name,
        )
        for o in oracles
    ]
    table = (
        tag(
            "div",
            tag("table", tag("thead", head), tag("tbody", rows), id="oracles"),
            class_="scroll",
        )
        if rows
        else tag("p", "No oracle is hosted here.", class_="empty")
    )
    main = join(tag("h1", "Oracles"), tag("p", note, class_="hint") if note else None, table)
    return document("Oracles", main, session=session, active="oracles")


def message_page(session: Session | None, title: str, text: str, active: str = "") -> Html:
    return document(title, join(tag("h1", title), error(text)), session=session, active=active)


def refusal_page(session: Session, title: str, scope: str, what: str, active: str) -> Html:
    return document(
        title, join(tag("h1", title), refusal(scope, what)), session=session, active=active
    )
