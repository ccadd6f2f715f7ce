"""The dashboard's HTTP server (aiohttp), on the event loop of the process that hosts it.

Every page and live stream is made of public gRPC calls to the suite (`target`), each
carrying the signed-in person's own bearer token: the dashboard holds no key, mints
nothing for itself and sees only what that token's scopes allow. Live pages use
server-sent events fed by WatchRun and WatchAgents streams; no page polls.

Bounded by bytes and time: request bodies (64 KiB, and 10 s to arrive), sessions (in all
and per subject), event streams (in all, per session and per subject; each lives at most
10 minutes, after which the browser resumes it from the last event it received; a reader
that stops reading is dropped once what it left unread fills the socket's buffers and a
write then waits 10 s, and at the latest when the stream's lifetime ends), listings
(pages of the services' own maximum sizes, a few pages).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import grpc
from aiohttp import web

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.oracle_pb2 as oracle_pb2
import helix.v1.oracle_pb2_grpc as oracle_pb2_grpc
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.agents.support import error_info
from helix.common.aio import cancel_and_wait
from helix.common.channel import create_channel
from helix.common.errors import InvalidArgument
from helix.dashboard import pages
from helix.dashboard.markup import Html
from helix.dashboard.sessions import (
    COOKIE,
    DEFAULT_CODE_TTL,
    LoginCodes,
    LoginRefused,
    Session,
    Sessions,
    logins_dir,
    remove_url,
    write_url,
)
from helix.genome.named import named_genomes
from helix.security.scopes import AGENTS_READ, DNA_READ, ORACLES_READ, RUNS_READ, RUNS_WRITE
from helix.security.tokens import inspect_token

log = logging.getLogger("helix.dashboard")

T = TypeVar("T")
P = TypeVar("P")  # a List response
M = TypeVar("M")  # an item of one

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
PUBLIC = ("/login", "/static/", "/favicon.ico")
MAX_TOKEN_CHARS = 8192
RUN_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"


_HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
FATAL = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclass(frozen=True)
class DashboardLimits:
    """What one browser, one person and everyone together may hold."""

    max_body_bytes: int = 64 * 1024
    max_streams: int = 64
    max_streams_per_session: int = 6
    max_streams_per_subject: int = 16
    stream_lifetime: float = 600.0  # then the browser reconnects, resuming
    write_timeout: float = 10.0  # a reader that stops reading for this long is dropped
    heartbeat: float = 15.0
    call_timeout: float = 10.0
    queue_events: int = 64  # events read ahead of a slow reader, per stream
    runs_per_page: int = 50
    candidates_shown: int = 20
    max_agents: int = 5000  # agents listed in a snapshot (5 pages of 1000)
    max_dnas: int = 2000
    max_oracles: int = 1000
    login_probes: int = 8  # logins checked with the suite at once
    max_sessions: int = 1024
    max_sessions_per_subject: int = 16


class _StreamSlots:
    """Counts of open event streams, in all and per subject."""

    def __init__(self, limits: DashboardLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_subject: dict[str, int] = {}

    def take(self, session: Session) -> str | None:
        """None when a slot was taken, else why not."""
        limits = self.limits
        if self.total >= limits.max_streams:
            return "the dashboard has its maximum of live streams open"
        if session.streams >= limits.max_streams_per_session:
            return "this browser has its maximum of live streams open: close some tabs"
        if self.by_subject.get(session.subject, 0) >= limits.max_streams_per_subject:
            return "this principal has its maximum of live streams open"
        self.total += 1
        session.streams += 1
        self.by_subject[session.subject] = self.by_subject.get(session.subject, 0) + 1
        return None

    def give_back(self, session: Session) -> None:
        self.total -= 1
        session.streams -= 1
        left = self.by_subject[session.subject] - 1
        if left:
            self.by_subject[session.subject] = left
        else:
            del self.by_subject[session.subject]


def _static_files() -> dict[str, bytes]:
    folder = resources.files("helix.dashboard") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


def _local_path(text: str | None) -> str:
    """`text` if it is a path on this site (no scheme, no host, no control characters,
    spaces or backslashes, which browsers strip or turn into slashes), else /runs."""
    if (
        not text
        or len(text) > 2048
        or not text.startswith("/")
        or any(ch <= " " or ch in "\\\x7f" for ch in text)
    ):
        return "/runs"
    parts = urlsplit(text)
    if (
        parts.scheme
        or parts.netloc
        or not parts.path.startswith("/")
        or parts.path.startswith("//")
    ):
        return "/runs"
    return text


def _same_origin(request: web.Request) -> bool:
    """Whether a POST comes from this site's own pages: no Origin (not a browser form),
    `null` (what browsers send under Referrer-Policy: no-referrer), or this host (any
    scheme: behind a TLS proxy the browser says https while this server sees http)."""
    origin = request.headers.get("Origin")
    if origin in (None, "null"):
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
    return urlsplit(origin).netloc == request.host


def _finite(value: object) -> object:
    """JSON without NaN or infinities (the browser's JSON.parse rejects them): as strings."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _sse(event: str, data: object, event_id: int | None = None) -> bytes:
    data = _finite(data)
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return ("\n".join(lines) + "\n\n").encode()


class Dashboard:
    """The web dashboard of the suite at `target` (host:port), served on `host:port`.

    `data_dir`, when given, is the suite's data dir: the dashboard writes its URL there and
    redeems the login codes `helix dashboard open` leaves there.
    """

    def __init__(
        self,
        target: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
        limits: DashboardLimits | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self._announce = announce
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.limits = limits or DashboardLimits()
        self.sessions = Sessions(self.limits.max_sessions, self.limits.max_sessions_per_subject)
        self.codes = LoginCodes(logins_dir(data_dir) if data_dir is not None else None)
        self.url = ""
        self._slots = _StreamSlots(self.limits)
        self._probes = asyncio.Semaphore(self.limits.login_probes)
        self._channel: grpc.aio.Channel | None = None
        self._runner: web.AppRunner | None = None
        self._static: dict[str, bytes] = {}
        self._streams: set[asyncio.Task[Any]] = set()

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> str:
        """Serve; returns the dashboard's URL (`http://host:port/`)."""
        self._static = await asyncio.to_thread(_static_files)
        self._channel = create_channel(self.target)
        self._orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel)
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._generator = generator_pb2_grpc.GeneratorServiceStub(self._channel)
        self._oracle = oracle_pb2_grpc.OracleServiceStub(self._channel)
        app = web.Application(
            client_max_size=self.limits.max_body_bytes,
            middlewares=[self._headers, self._authenticate],
        )
        app.add_routes(
            [
                web.get("/", self._home),
                web.get("/login", self._login_page),
                web.post("/login", self._login),
                web.post("/logout", self._logout),
                web.get("/static/{name}", self._static_file),
                web.get("/runs", self._runs),
                web.get(f"/runs/{{run:{RUN_ID}}}", self._run),
                web.get(f"/runs/{{run:{RUN_ID}}}/events", self._run_events, allow_head=False),
                web.get(f"/runs/{{run:{RUN_ID}}}/candidates.json", self._candidates_json),
                web.post(f"/runs/{{run:{RUN_ID}}}/cancel", self._cancel),
                web.get("/agents", self._agents),
                web.get("/agents/events", self._agent_events, allow_head=False),
                web.get("/dnas", self._dnas),
                web.get("/oracles", self._oracles),
                web.get("/favicon.ico", self._no_icon),
            ]
        )
        # handler_cancellation: a browser that leaves ends its handler (and the gRPC stream
        # behind it) at once, not at the next write.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.25,
            handler_cancellation=True,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            channel, self._channel = self._channel, None
            await channel.close()
            raise OSError(
                exc.errno, f"cannot serve the dashboard on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
        self.url = f"http://{host}:{port}/"
        if self.data_dir is not None:
            await asyncio.to_thread(write_url, self.data_dir, self.url)
        log.info("dashboard serving", extra={"url": self.url})
        if self._announce is not None:
            self._announce(self.url)
        return self.url

    async def stop(self) -> None:
        """End the live streams, stop serving and close the channel."""
        try:
            streams = list(self._streams)
            for task in streams:
                task.cancel()
            if streams:
                await asyncio.wait(streams, timeout=0.5)
            if self.data_dir is not None and self.url:
                await asyncio.to_thread(remove_url, self.data_dir, self.url)
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()
        finally:
            channel, self._channel = self._channel, None
            if channel is not None:
                await channel.close()

    def login_url(self, token: str, ttl: float = DEFAULT_CODE_TTL) -> str:
        """A one-time login link for `token` (kept in memory), valid `ttl` seconds."""
        return f"{self.url}login?code={self.codes.issue(token, ttl)}"

    # ---- middleware -----------------------------------------------------------------------

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = web.Response(status=exc.status, text=exc.text or exc.reason)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("dashboard page %s failed", request.path)
            response = web.Response(status=500, text="the dashboard failed: see the server log")
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and not _same_origin(request):
            return web.Response(status=403, text="cross-site request refused")
        if path.startswith(PUBLIC):
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "GET" and not path.endswith(("/events", ".json")):
                target = quote(request.path_qs, safe="/")
                return _redirect(f"/login?next={target}")
            return web.Response(status=401, text="sign in first")
        if request.method == "POST":
            form = await self._form(request)
            if form is None:
                return web.Response(status=408, text="the form took too long to arrive")
            if form.get("csrf") != session.csrf:
                return web.Response(status=403, text="the form is stale: reload the page")
        _current_session.set(session)  # the handler runs in this task, in this context
        return await handler(request)

    async def _form(self, request: web.Request) -> Any:
        """The posted form, or None when its body does not arrive within the call timeout
        (its size is bounded by client_max_size)."""
        try:
            return await asyncio.wait_for(request.post(), timeout=self.limits.call_timeout)
        except TimeoutError:
            return None

    # ---- sign in and out ----------------------------------------------------------------

    async def _home(self, request: web.Request) -> web.StreamResponse:
        return _redirect("/runs")

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        code = request.query.get("code")
        next_path = _local_path(request.query.get("next"))
        if code is None:
            return _html(pages.login_page(None, next_path))
        try:
            token = self.codes.redeem_memory(code)
            if token is None:
                token = await asyncio.to_thread(self.codes.redeem_file, code)
            return await self._open_session(token, "/runs", request.secure)
        except LoginRefused as exc:
            return _html(pages.login_page(str(exc), "/runs"), status=401)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        if form is None:
            return web.Response(status=408, text="the form took too long to arrive")
        token = str(form.get("token", "")).strip()
        next_path = _local_path(str(form.get("next", "")))
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        try:
            if not token:
                raise LoginRefused("paste a token first")
            if len(token) > MAX_TOKEN_CHARS:
                raise LoginRefused(f"the token is longer than {MAX_TOKEN_CHARS} characters")
            return await self._open_session(token, next_path, request.secure)
        except LoginRefused as exc:
            return _html(pages.login_page(str(exc), next_path), status=401)

    async def _open_session(
        self, token: str, next_path: str, request_secure: bool = False
    ) -> web.StreamResponse:
        """Ask the suite whether it accepts `token` (any answer but UNAUTHENTICATED means
        it verified the signature), then open a session with its claims."""
        try:
            await asyncio.wait_for(self._probes.acquire(), timeout=self.limits.call_timeout)
        except TimeoutError:
            raise LoginRefused("too many sign-ins at once: try again in a moment") from None
        try:
            await self._orchestrator.ListRuns(
                orchestrator_pb2.ListRunsRequest(page_size=1),
                metadata=_auth(token),
                timeout=self.limits.call_timeout,
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise LoginRefused(f"the suite refused the token: {error.details()}") from None
            # PERMISSION_DENIED comes after the signature, issuer, audience and lifetime
            # were checked; any other failure (a full pool, an unreachable suite) says
            # nothing about the token.
            if code != grpc.StatusCode.PERMISSION_DENIED:
                raise LoginRefused(
                    f"the suite at {self.target} could not check the token now "
                    f"({code.name}: {error.details()}): try again"
                ) from None
        finally:
            self._probes.release()
        try:
            claims = inspect_token(token)["claims"]
            subject = str(claims["sub"])
            expires = float(claims["exp"])
            scopes = frozenset(str(claims.get("scope", "")).split())
        except (ValueError, KeyError, TypeError):
            raise LoginRefused("the token's claims cannot be read") from None
        remaining = expires - time.time()
        if remaining <= 1:
            raise LoginRefused("the token has expired")
        cookie = self.sessions.open(Session(token, subject, scopes, expires))
        response = _redirect(next_path)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(remaining),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request_secure,
        )
        log.info("dashboard sign-in", extra={"subject": subject})
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.close(request.cookies.get(COOKIE))
        response = _redirect("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    async def _no_icon(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            return web.Response(status=404, text="not found")
        return web.Response(
            body=self._static[name],
            content_type=STATIC[name],
            headers={"Cache-Control": "no-cache"},
        )

    # ---- calls --------------------------------------------------------------------------

    async def _call(
        self, session: Session, method: Callable[..., Awaitable[T]], request: object
    ) -> T:
        return await method(
            request, metadata=_auth(session.token), timeout=self.limits.call_timeout
        )

    def _failure(
        self, request: web.Request, error: grpc.aio.AioRpcError, title: str, active: str
    ) -> web.StreamResponse:
        """The page for a call the suite refused or could not answer."""
        session = _session()
        code = error.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self.sessions.close(request.cookies.get(COOKIE))
            return _html(
                pages.login_page(
                    f"sign in again: {error.details()}",
                    _local_path(request.path if request.method == "GET" else "/runs"),
                ),
                status=401,
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            text = f"The suite refused: {error.details()}"
            return _html(pages.message_page(session, title, text, active), status=200)
        status = _HTTP_STATUS.get(code, 502)
        text = f"{error.details() or code.name} ({code.name})"
        return _html(pages.message_page(session, title, text, active), status=status)

    # ---- runs ---------------------------------------------------------------------------

    async def _runs(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        if not session.can(RUNS_READ):
            return _html(pages.refusal_page(session, "Runs", RUNS_READ, "to list runs", "runs"))
        try:
            found = await self._call(
                session,
                self._orchestrator.ListRuns,
                orchestrator_pb2.ListRunsRequest(
                    page_size=self.limits.runs_per_page, page_token=request.query.get("page", "")
                ),
            )
        except grpc.aio.AioRpcError as error:
            return self._failure(request, error, "Runs", "runs")
        return _html(pages.runs_page(session, found.runs, found.next_page_token, time.time()))

    async def _run(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        if not session.can(RUNS_READ):
            return _html(pages.refusal_page(session, "Run", RUNS_READ, "to see runs", "runs"))
        name = f"runs/{request.match_info['run']}"
        try:
            run = (
                await self._call(
                    session, self._orchestrator.GetRun, orchestrator_pb2.GetRunRequest(name=name)
                )
            ).run
            rows, note = await self._candidate_rows(session, run)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                # The suite does not say whether another principal's run exists.
                text = f"{name} was not found, or is not yours: {error.details()}"
                return _html(pages.message_page(session, "Run", text, "runs"), status=404)
            return self._failure(request, error, "Run", "runs")
        table = pages.candidates_table(rows, note)
        return _html(pages.run_page(session, run, table, time.time()))

    async def _candidate_rows(
        self, session: Session, run: orchestrator_pb2.Run
    ) -> tuple[list[dict[str, object]], str | None]:
        found = await self._call(
            session,
            self._orchestrator.ListRunCandidates,
            orchestrator_pb2.ListRunCandidatesRequest(
                name=run.name, page_size=self.limits.candidates_shown
            ),
        )
        candidates = list(found.candidates)
        note = None
        dna = run.dna if run.HasField("dna") else None
        if dna is None and run.dna_name:
            if session.can(DNA_READ):
                try:
                    dna = (
                        await self._call(
                            session,
                            self._generator.GetDna,
                            generator_pb2.GetDnaRequest(name=run.dna_name),
                        )
                    ).dna.dna
                except grpc.aio.AioRpcError as error:
                    note = f"genes are not shown by name: {run.dna_name}: {error.details()}"
            else:
                note = f"genes are shown by name with {DNA_READ} only"
        named: list[dict[str, object] | None] = [None] * len(candidates)
        if dna is not None and candidates:
            try:
                named = list(named_genomes(dna, [c.candidate.genome for c in candidates]))
            except InvalidArgument as exc:
                note = f"genes are not shown by name: {exc}"
        return pages.candidate_rows(candidates, named), note

    async def _candidates_json(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        name = f"runs/{request.match_info['run']}"
        try:
            run = (
                await self._call(
                    session, self._orchestrator.GetRun, orchestrator_pb2.GetRunRequest(name=name)
                )
            ).run
            rows, note = await self._candidate_rows(session, run)
        except grpc.aio.AioRpcError as error:
            return web.json_response(
                {"error": error.details(), "code": error.code().name},
                status=_HTTP_STATUS.get(error.code(), 502),
            )
        return web.json_response(_finite({"candidates": rows, "note": note}))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        run = request.match_info["run"]
        if not session.can(RUNS_WRITE):
            return _html(pages.refusal_page(session, "Run", RUNS_WRITE, "to cancel runs", "runs"))
        try:
            await self._call(
                session,
                self._orchestrator.CancelRun,
                orchestrator_pb2.CancelRunRequest(name=f"runs/{run}"),
            )
        except grpc.aio.AioRpcError as error:
            return self._failure(request, error, "Run", "runs")
        return _redirect(f"/runs/{run}")

    async def _run_events(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        if not session.can(RUNS_READ):
            return web.Response(status=403, text=f"this token does not grant {RUNS_READ}")
        name = f"runs/{request.match_info['run']}"
        after_text = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
        try:
            after = int(after_text)
            if not 0 <= after < 2**62:
                raise ValueError
        except ValueError:
            return web.Response(status=400, text="Last-Event-ID: not a sequence number")

        async def events() -> AsyncGenerator[bytes, None]:
            start = after
            for attempt in range(2):
                call = self._orchestrator.WatchRun(
                    orchestrator_pb2.WatchRunRequest(name=name, after_sequence=start),
                    metadata=_auth(session.token),
                )
                try:
                    async for response in call:
                        event = response.event
                        yield _sse("run", _run_event(event), event.sequence)
                    yield _sse("end", {})
                    return
                except grpc.aio.AioRpcError as error:
                    # Events before the oldest retained one are gone (a long run): go on
                    # from the oldest, once, saying so.
                    first = _first_sequence(error)
                    if error.code() != grpc.StatusCode.OUT_OF_RANGE or first is None or attempt:
                        raise
                    start = first - 1
                    yield _sse("gap", {"first_sequence": first})
                finally:
                    call.cancel()

        return await self._stream(request, session, events())

    # ---- agents -------------------------------------------------------------------------

    async def _list_agents(self, session: Session) -> tuple[list[dict[str, object]], int, bool]:
        """Every agent (up to the limit), the listing's revision, whether it was cut."""
        found, first, cut = await self._listing(
            session,
            self._registry.ListAgents,
            lambda token: registry_pb2.ListAgentsRequest(page_size=1000, page_token=token),
            lambda page: page.agents,
            self.limits.max_agents,
        )
        return [pages.agent_data(a) for a in found], first.revision, cut

    async def _listing(
        self,
        session: Session,
        method: Callable[..., Awaitable[P]],
        request_for: Callable[[str], object],
        items_of: Callable[[P], Sequence[M]],
        limit: int,
    ) -> tuple[list[M], P, bool]:
        """The items of a paged List call, page after page, at most `limit` of them; the
        first page (a listing's revision, DNA files skipped) and whether it was cut."""
        items: list[M] = []
        token = ""
        first: P | None = None
        while True:
            page = await self._call(session, method, request_for(token))
            first = first if first is not None else page
            items.extend(items_of(page))
            token = page.next_page_token  # type: ignore[attr-defined]
            if not token:
                return items, first, False
            if len(items) >= limit:
                return items[:limit], first, True

    async def _agents(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        if not session.can(AGENTS_READ):
            return _html(
                pages.refusal_page(session, "Agents", AGENTS_READ, "to list agents", "agents")
            )
        try:
            agents, _, cut = await self._list_agents(session)
        except grpc.aio.AioRpcError as error:
            return self._failure(request, error, "Agents", "agents")
        note = f"the first {len(agents):,} agents are shown" if cut else None
        return _html(pages.agents_page(session, agents, note, time.time()))

    async def _agent_events(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        if not session.can(AGENTS_READ):
            return web.Response(status=403, text=f"this token does not grant {AGENTS_READ}")

        async def events() -> AsyncGenerator[bytes, None]:
            agents, revision, cut = await self._list_agents(session)
            yield _sse("snapshot", {"agents": agents, "cut": cut, "revision": revision})
            call = self._registry.WatchAgents(
                registry_pb2.WatchAgentsRequest(start_revision=revision + 1),
                metadata=_auth(session.token),
            )
            try:
                async for response in call:
                    changes = [
                        {
                            "type": "put"
                            if e.type == registry_pb2.AGENT_EVENT_TYPE_PUT
                            else "delete",
                            "name": e.agent.name,
                            "agent": pages.agent_data(e.agent),
                            "reason": pages.enum_name(
                                registry_pb2.AgentDeleteReason, e.reason, "AGENT_DELETE_REASON_"
                            ).lower(),
                        }
                        for e in response.events
                    ]
                    if changes:
                        yield _sse("agents", {"changes": changes, "revision": response.revision})
            finally:
                call.cancel()

        # A compacted history or a slow watch: a reconnection takes a fresh snapshot.
        return await self._stream(
            request, session, events(), FATAL - {grpc.StatusCode.OUT_OF_RANGE}
        )

    # ---- DNAs and oracles ---------------------------------------------------------------

    async def _dnas(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        if not session.can(DNA_READ):
            return _html(pages.refusal_page(session, "DNAs", DNA_READ, "to list DNAs", "dnas"))
        try:
            dnas, first, cut = await self._listing(
                session,
                self._generator.ListDnas,
                lambda token: generator_pb2.ListDnasRequest(page_size=500, page_token=token),
                lambda page: page.dnas,
                self.limits.max_dnas,
            )
        except grpc.aio.AioRpcError as error:
            return self._failure(request, error, "DNAs", "dnas")
        # The files skipped come with the first page.
        skipped, total_skipped = list(first.skipped), first.total_skipped
        note = f"the first {len(dnas):,} DNAs are shown" if cut else None
        return _html(
            pages.dnas_page(session, dnas, skipped, max(total_skipped, len(skipped)), note)
        )

    async def _oracles(self, request: web.Request) -> web.StreamResponse:
        session = _session()
        if not session.can(ORACLES_READ):
            return _html(
                pages.refusal_page(session, "Oracles", ORACLES_READ, "to list oracles", "oracles")
            )
        try:
            oracles, _, cut = await self._listing(
                session,
                self._oracle.ListOracles,
                lambda token: oracle_pb2.ListOraclesRequest(page_size=100, page_token=token),
                lambda page: page.oracles,
                self.limits.max_oracles,
            )
        except grpc.aio.AioRpcError as error:
            return self._failure(request, error, "Oracles", "oracles")
        note = f"the first {len(oracles):,} oracles are shown" if cut else None
        return _html(pages.oracles_page(session, oracles, note))

    # ---- event streams ------------------------------------------------------------------

    async def _stream(
        self,
        request: web.Request,
        session: Session,
        events: AsyncGenerator[bytes, None],
        fatal: frozenset[grpc.StatusCode] = FATAL,
    ) -> web.StreamResponse:
        """Serve `events` as server-sent events, within the stream limits: a reader that
        stops reading for `write_timeout` is dropped, every stream ends after
        `stream_lifetime` (the browser resumes it) or when the session expires, and the
        gRPC stream behind it is cancelled whenever it ends."""
        refused = self._slots.take(session)
        if refused is not None:
            await events.aclose()
            return web.Response(status=429, text=refused, headers={"Retry-After": "5"})
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(self.limits.queue_events)

        async def pump() -> None:
            try:
                async for item in events:
                    await queue.put(item)
                await queue.put(None)
            except grpc.aio.AioRpcError as error:
                await queue.put(error)
            except Exception as error:  # reported to the reader, then the stream ends
                log.exception("a dashboard event stream failed")
                await queue.put(error)

        producer = asyncio.create_task(pump())
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                **SECURITY_HEADERS,
            }
        )
        loop = asyncio.get_running_loop()
        ends = loop.time() + min(
            self.limits.stream_lifetime, max(0.0, session.expires_at - time.time())
        )
        try:
            await response.prepare(request)
            await self._relay(response, queue, ends, fatal)
        except (ConnectionError, TimeoutError):
            # The reader went away, or stopped reading: drop the connection (a graceful
            # end would wait for it to read), and free its slot below.
            if request.transport is not None:
                request.transport.abort()
        finally:
            try:
                await cancel_and_wait([producer])
                await events.aclose()  # its gRPC call is cancelled now, not by the GC
            finally:
                self._slots.give_back(session)
                self._streams.discard(task)
        return response

    async def _relay(
        self,
        response: web.StreamResponse,
        queue: asyncio.Queue[bytes | BaseException | None],
        ends: float,
        fatal: frozenset[grpc.StatusCode],
    ) -> None:
        """Write what the queue holds until it ends, fails or `ends` (loop time) comes;
        a comment line every `heartbeat` seconds keeps proxies and the browser patient."""
        loop = asyncio.get_running_loop()
        await self._write(response, b"retry: 2000\n\n")
        while (left := ends - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(left, self.limits.heartbeat)):
                    item = await queue.get()
            except TimeoutError:
                await self._write(response, b": keep-alive\n\n")
                continue
            # What else is ready goes out in the same write (a replay, a burst).
            chunk: list[bytes] = []
            while isinstance(item, bytes):
                chunk.append(item)
                if queue.empty() or len(chunk) >= self.limits.queue_events:
                    item = b""
                    break
                item = queue.get_nowait()
            if chunk:
                await self._write(response, b"".join(chunk))
            if item is None:
                return
            if isinstance(item, grpc.aio.AioRpcError):
                await self._write(response, _failure_event(item, fatal))
                return
            if isinstance(item, BaseException):
                await self._write(response, _sse("failure", {"message": str(item)}))
                return

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(self.limits.write_timeout):
            await response.write(data)


def _first_sequence(error: grpc.aio.AioRpcError) -> int | None:
    """WatchRun's OUT_OF_RANGE: the oldest sequence still retained (ErrorInfo metadata)."""
    info = error_info(error)
    try:
        return int(info.metadata["first_sequence"]) if info is not None else None
    except (KeyError, ValueError):
        return None


def _failure_event(error: grpc.aio.AioRpcError, fatal: frozenset[grpc.StatusCode]) -> bytes:
    """A broken gRPC stream, told to the page: `fatal` (do not retry) or `failure` (the
    browser reconnects and resumes from the last event it received)."""
    code = error.code()
    kind = "fatal" if code in fatal else "failure"
    return _sse(kind, {"code": code.name, "message": error.details() or code.name})


def _run_event(event: orchestrator_pb2.RunEvent) -> dict[str, object]:
    """A RunEvent as the page's script reads it."""
    data: dict[str, object] = {
        "sequence": event.sequence,
        "time": event.time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if event.HasField("time")
        else "",
    }
    kind = event.WhichOneof("kind")
    if kind == "state_changed":
        changed = event.state_changed
        data.update(
            kind="state",
            state=pages.state_name(changed.state),
            stop_reason=pages.enum_name(
                orchestrator_pb2.RunStopReason, changed.stop_reason, "RUN_STOP_REASON_"
            )
            if changed.stop_reason
            else "",
            error=changed.error,
            message=changed.message,
        )
    elif kind == "generation_completed":
        done = event.generation_completed
        data.update(
            kind="generation",
            generation=done.generation,
            evaluations=done.evaluations,
            generation_best=done.generation_best_score
            if done.HasField("generation_best_score")
            else None,
            mean=done.mean_score if done.HasField("mean_score") else None,
            best=done.best_score if done.HasField("best_score") else None,
            scored=done.scored,
            failed=done.failed,
            errors=done.errors,
            cache_hits=done.cache_hits,
            duplicates=done.duplicates,
        )
    elif kind == "new_best":
        best = event.new_best.best
        data.update(
            kind="best",
            candidate=best.candidate.id,
            generation=best.candidate.generation,
            score=best.verdict.score,
        )
    else:
        data.update(kind="unknown")
    return data


def loopback(address: str) -> str:
    """A server's listening address as a client on this machine dials it."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


_current_session: contextvars.ContextVar[Session] = contextvars.ContextVar("dashboard_session")


def _session() -> Session:
    """The session of the request being handled (set by the authenticating middleware)."""
    return _current_session.get()


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _html(page: Html, status: int = 200) -> web.Response:
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})
