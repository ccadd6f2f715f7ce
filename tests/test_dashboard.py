"""The web dashboard over HTTP (helix.dashboard.server), in-process: the embedded suite and a
`Dashboard` on it in the test's own event loop, with limits small enough to reach, driven
with aiohttp's client against 127.0.0.1 (sessions, CSRF, security headers, escaping,
refusals, cancelling, the event streams and their limits).

The browser's view of the same pages is tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import grpc
import pytest

import helix.v1.common_pb2 as common_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.dashboard.server import Dashboard, DashboardLimits
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.keys import SigningKey
from helix.security.tokens import mint

from orchestrator_support import start_run_suite
from registry_support import Suite, agent_spec
from waiting import eventually

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
COOKIE = "helix_session"
EVERYTHING = ("runs.read", "runs.write", "agents.read", "dna.read", "oracles.read")
READ_ONLY = ("runs.read", "agents.read", "dna.read", "oracles.read")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
SMALL_BUDGET = 600
XSS = "<script>alert(1)</script>"
# server.py stores the session as request["session"], which aiohttp 3.14 warns about
# (NotAppKeyWarning; web.RequestKey is what it asks for), and warnings are errors here.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


# ---- reading pages ---------------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    parent: Element | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()


class Page(HTMLParser):
    """A page's elements, each with its attributes and all the text inside it."""

    VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        parent = self._open[-1] if self._open else None
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=parent)
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def find_all(
        self, tag: str | None = None, class_: str | None = None, **attrs: str
    ) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and (class_ is None or class_ in e.classes)
            and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str | None = None, class_: str | None = None, **attrs: str) -> Element:
        found = self.find_all(tag, class_, **attrs)
        assert len(found) == 1, f"{len(found)} elements <{tag} class={class_} {attrs}>"
        return found[0]


@dataclass
class Event:
    """One server-sent event."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def read_event(content: aiohttp.StreamReader) -> Event | None:
    """The next event of a text/event-stream (comments and `retry:` skipped); None at EOF."""
    fields: dict[str, str] = {}
    while True:
        raw = await content.readline()
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        if not line:
            if "event" in fields or "data" in fields:
                return Event(
                    fields.get("event", "message"), fields.get("data", ""), fields.get("id")
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


# ---- the suite and its dashboard -------------------------------------------------------


@dataclass
class Board:
    """The embedded suite, a dashboard on it, and an HTTP client (no cookie jar: each call
    names its session cookie, so a test holds several sessions side by side)."""

    suite: Suite
    dashboard: Dashboard
    http: aiohttp.ClientSession
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def signer(self) -> SigningKey:
        signer: SigningKey = self.suite.server.security.signer
        return signer

    def at(self, path: str) -> str:
        return self.dashboard.url.rstrip("/") + path

    def token(
        self, subject: str = "alice", scopes: Iterable[str] = EVERYTHING, ttl: float = 3600
    ) -> str:
        return mint(self.signer, subject, scopes, ttl)

    async def get(
        self, path: str, cookie: str | None = None, **headers: str
    ) -> tuple[aiohttp.ClientResponse, str]:
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        async with self.http.get(self.at(path), headers=headers, allow_redirects=False) as response:
            return response, await response.text()

    async def post(
        self, path: str, form: dict[str, str], cookie: str | None = None, **headers: str
    ) -> tuple[aiohttp.ClientResponse, str]:
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        async with self.http.post(
            self.at(path), data=form, headers=headers, allow_redirects=False
        ) as response:
            return response, await response.text()

    async def sign_in(
        self, subject: str = "alice", scopes: Iterable[str] = EVERYTHING, ttl: float = 3600
    ) -> str:
        """A session cookie for a fresh token of `subject` with `scopes`."""
        response, text = await self.post("/login", {"token": self.token(subject, scopes, ttl)})
        assert response.status == 303, text
        return response.cookies[COOKIE].value

    async def page(self, path: str, cookie: str, status: int = 200) -> Page:
        response, text = await self.get(path, cookie)
        assert response.status == status, f"GET {path}: {response.status} {text[:500]}"
        assert response.content_type == "text/html"
        return Page(text)

    def _channel(self, subject: str, scopes: Iterable[str]) -> grpc.aio.Channel:
        source = StaticTokenSource(self.token(subject, scopes))
        channel = grpc.aio.insecure_channel(
            self.suite.server.address, interceptors=bearer_interceptors(source)
        )
        self.channels.append(channel)
        return channel

    def runs(self, subject: str = "alice") -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
        stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub = (
            orchestrator_pb2_grpc.OrchestratorServiceStub(
                self._channel(subject, ("runs.read", "runs.write"))
            )
        )
        return stub

    def registry(self, subject: str = "agent-owner") -> registry_pb2_grpc.RegistryServiceAsyncStub:
        stub: registry_pb2_grpc.RegistryServiceAsyncStub = registry_pb2_grpc.RegistryServiceStub(
            self._channel(subject, ("agents.read", "agents.write"))
        )
        return stub

    async def create_run(
        self, evaluations: int = SMALL_BUDGET, display_name: str = "", subject: str = "alice"
    ) -> str:
        run = orchestrator_pb2.Run(
            display_name=display_name,
            dna_name="dnas/rastrigin",
            oracle="oracles/rastrigin",
            objective=common_pb2.OBJECTIVE_MINIMIZE,
            budget=orchestrator_pb2.RunBudget(max_evaluations=evaluations),
            seed=7,
        )
        request = orchestrator_pb2.CreateRunRequest(run=run, request_id=uuid.uuid4().hex)
        response = await self.runs(subject).CreateRun(request, timeout=10)
        return response.run.name

    async def state(self, name: str, subject: str = "alice") -> str:
        response = await self.runs(subject).GetRun(
            orchestrator_pb2.GetRunRequest(name=name), timeout=10
        )
        return orchestrator_pb2.RunState.Name(response.run.state).removeprefix("RUN_STATE_")

    async def finished_run(self, evaluations: int = SMALL_BUDGET, display_name: str = "") -> str:
        name = await self.create_run(evaluations, display_name)

        async def finished() -> str | None:
            state = await self.state(name)
            return state if state in TERMINAL else None

        assert await eventually(finished, 60, what=f"{name} to finish") == "SUCCEEDED"
        return name

    async def embedded_agents(self) -> None:
        """Wait for the suite's own generator and oracle agents to be registered."""
        registry = self.registry()

        async def registered() -> bool:
            found = await registry.ListAgents(registry_pb2.ListAgentsRequest(), timeout=10)
            kinds = {a.kind for a in found.agents}
            return {registry_pb2.AGENT_KIND_GENERATOR, registry_pb2.AGENT_KIND_ORACLE} <= kinds

        await eventually(registered, 30, what="the embedded agents to register")

    async def close(self) -> None:
        await self.http.close()
        await self.dashboard.stop()
        for channel in self.channels:
            await channel.close()
        await self.suite.close()


StartBoard = Callable[..., Awaitable[Board]]


@pytest.fixture
async def start_board(tmp_path: Path) -> AsyncIterator[StartBoard]:
    """`await start_board(**limits)`: the suite and a dashboard with those DashboardLimits."""
    boards: list[Board] = []

    async def start(**limits: Any) -> Board:
        data_dir = tmp_path / f"data-{len(boards)}"
        suite = await start_run_suite(data_dir)
        dashboard = Dashboard(
            suite.server.address, port=0, data_dir=data_dir, limits=DashboardLimits(**limits)
        )
        await dashboard.start()
        board = Board(suite, dashboard, aiohttp.ClientSession())
        boards.append(board)
        await board.embedded_agents()
        return board

    yield start
    for board in boards:
        await board.close()


@pytest.fixture
async def board(start_board: StartBoard) -> Board:
    return await start_board()


def run_id(name: str) -> str:
    return name.removeprefix("runs/")


def csrf_of(page: Page) -> str:
    """The session's CSRF token (every form of a page carries the same one)."""
    values = {e.attrs["value"] for e in page.find_all("input", name="csrf")}
    assert len(values) == 1, values
    return values.pop()


def assert_security_headers(response: aiohttp.ClientResponse, cache: str = "no-store") -> None:
    headers = response.headers
    what = f"{response.method} {response.url.path} ({response.status})"
    assert headers.get("Content-Security-Policy") == CSP, what
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert headers.get("Referrer-Policy") == "no-referrer", what
    assert headers.get("Cache-Control") == cache, what


# ---- signing in and out ----------------------------------------------------------------


async def test_a_good_token_signs_in_with_a_strict_http_only_cookie(board: Board) -> None:
    response, _ = await board.post("/login", {"token": board.token(), "next": "/agents"})
    assert response.status == 303
    assert response.headers["Location"] == "/agents"
    set_cookie = response.headers.getall("Set-Cookie")
    assert len(set_cookie) == 1
    parts = [p.strip() for p in set_cookie[0].split(";")]
    assert parts[0].startswith(f"{COOKIE}=")
    attributes = {p.split("=")[0].lower(): p.partition("=")[2] for p in parts[1:]}
    assert "httponly" in attributes
    assert attributes["samesite"] == "Strict"
    assert attributes["path"] == "/"
    assert 3500 <= int(attributes["max-age"]) <= 3600  # expires with the token
    cookie = response.cookies[COOKIE].value
    page = await board.page("/runs", cookie)
    assert page.one(id="who").text == "alice"
    nav = {a.attrs["href"] for a in page.find_all("a")} & {"/runs", "/agents", "/dnas", "/oracles"}
    assert nav == {"/runs", "/agents", "/dnas", "/oracles"}


def wrong_key_token(board: Board) -> str:
    other = SigningKey(board.signer.kid, board.signer.algorithm, b"not the suite's secret" * 2)
    return mint(other, "mallory", EVERYTHING, 3600)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda board: "", "paste a token first"),
        (lambda board: "not.a-jwt", "not a well-formed JWT"),
        (
            lambda board: mint(board.signer, "alice", EVERYTHING, 60, now=time.time() - 3600),
            "expired",
        ),
        (wrong_key_token, "signature does not verify"),
        (lambda board: "x" * 9000, "longer than 8192 characters"),
    ],
    ids=["empty", "malformed", "expired", "wrong-key", "9000-characters"],
)
async def test_a_bad_token_is_refused_saying_why(
    board: Board, token: Callable[[Board], str], why: str
) -> None:
    response, text = await board.post("/login", {"token": token(board), "next": "/runs"})
    assert response.status == 401
    assert COOKIE not in response.cookies
    assert_security_headers(response)
    page = Page(text)
    error = page.one("p", class_="error")
    assert error.attrs["role"] == "alert"
    assert why in error.text
    page.one("form", id="login-form")
    page.one("textarea", id="token")


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "https://evil.example",
        "/\\evil",
        "/\t/evil.example/x",
        "/\n/evil.example",
        "http:/evil",
        "evil",
    ],
)
async def test_next_never_leaves_the_site(board: Board, target: str) -> None:
    response, _ = await board.post("/login", {"token": board.token(), "next": target})
    assert response.status == 303
    assert response.headers["Location"] == "/runs"
    # The login page does not carry it into its form either.
    response, text = await board.get(f"/login?next={target}")
    assert response.status == 200
    assert Page(text).one("input", name="next").attrs["value"] == "/runs"


async def test_next_returns_to_a_page_on_the_site(board: Board) -> None:
    response, text = await board.get("/login?next=/dnas")
    assert Page(text).one("input", name="next").attrs["value"] == "/dnas"
    response, _ = await board.post("/login", {"token": board.token(), "next": "/dnas"})
    assert response.headers["Location"] == "/dnas"


@pytest.mark.parametrize(
    "path", ["/", "/runs", "/runs/some-run", "/agents", "/dnas", "/oracles", "/runs?page=abc"]
)
async def test_every_page_sends_to_the_login_without_a_session(board: Board, path: str) -> None:
    for cookie in (None, "made-up", "x" * 200):
        response, _ = await board.get(path, cookie)
        assert response.status == 303, path
        location = response.headers["Location"]
        if path == "/":  # the home redirects to /runs, which asks for a session
            assert location in ("/runs", "/login?next=/")
            continue
        parts = urlsplit(location)
        assert parts.path == "/login"
        assert parse_qs(parts.query) == {"next": [path]}
        assert_security_headers(response)


async def test_the_login_redirect_keeps_the_whole_query(board: Board) -> None:
    response, _ = await board.get("/runs?page=a&b=c%26d")
    assert response.status == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": ["/runs?page=a&b=c%26d"]}


async def test_a_request_body_is_bounded(start_board: StartBoard) -> None:
    board = await start_board(max_body_bytes=16 * 1024)
    response, _ = await board.post("/login", {"token": "x" * 20_000})
    assert response.status == 413
    assert_security_headers(response)
    cookie = await board.sign_in()
    response, _ = await board.post("/logout", {"csrf": "x" * 20_000}, cookie)
    assert response.status == 413


async def test_streams_and_json_without_a_session_are_401(board: Board) -> None:
    for path in ("/runs/x/events", "/agents/events", "/runs/x/candidates.json"):
        response, _ = await board.get(path, "made-up")
        assert response.status == 401, path
    response, _ = await board.post("/logout", {"csrf": "x"})
    assert response.status == 401


async def test_logging_out_ends_the_session(board: Board) -> None:
    cookie = await board.sign_in()
    other = await board.sign_in()  # another browser of the same person stays signed in
    page = await board.page("/runs", cookie)
    form = page.one("form", id="logout")
    assert form.attrs["action"] == "/logout"
    response, _ = await board.post("/logout", {"csrf": csrf_of(page)}, cookie)
    assert response.status == 303
    assert response.headers["Location"] == "/login"
    assert response.cookies[COOKIE].value == ""
    response, _ = await board.get("/runs", cookie)
    assert response.status == 303
    assert response.headers["Location"] == "/login?next=/runs"
    await board.page("/runs", other)


async def test_a_session_ends_when_its_token_expires(board: Board) -> None:
    cookie = await board.sign_in(ttl=3)
    await board.page("/runs", cookie)

    async def sent_to_login() -> str | None:
        response, _ = await board.get("/runs", cookie)
        return response.headers.get("Location") if response.status == 303 else None

    assert await eventually(sent_to_login, 8, what="the session to expire") == "/login?next=/runs"


# ---- headers ---------------------------------------------------------------------------


async def test_security_headers_are_on_every_response(board: Board) -> None:
    cookie = await board.sign_in()
    name = await board.finished_run()
    for path in ("/login", "/runs", f"/runs/{run_id(name)}", "/agents", "/dnas", "/oracles"):
        response, _ = await board.get(path, cookie)
        assert response.status == 200, path
        assert_security_headers(response)
    for path, status in (
        ("/", 303),
        ("/nothing-here", 404),
        ("/static/nothing.js", 404),
    ):
        response, _ = await board.get(path, cookie)
        assert response.status == status, path
        assert_security_headers(response)
    response, _ = await board.get("/runs")  # the redirect to the login page
    assert response.status == 303
    assert_security_headers(response)
    for path, kind in (("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")):
        response, text = await board.get(path)
        assert response.status == 200
        assert response.content_type == kind
        assert text
        # No third-party URL (the SVG namespace is a name, never fetched).
        assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text), path
        assert_security_headers(response, cache=response.headers.get("Cache-Control", ""))
        assert response.headers["Cache-Control"] in ("no-store", "no-cache")
    for path in (f"/runs/{run_id(name)}/events", "/agents/events"):
        async with board.http.get(
            board.at(path), headers={"Cookie": f"{COOKIE}={cookie}"}
        ) as response:
            assert response.status == 200, path
            assert response.content_type == "text/event-stream"
            assert_security_headers(response)


# ---- pages -----------------------------------------------------------------------------


async def test_markup_in_a_run_name_is_shown_as_text(board: Board) -> None:
    cookie = await board.sign_in()
    name = await board.create_run(display_name=XSS)
    for path in ("/runs", f"/runs/{run_id(name)}"):
        response, text = await board.get(path, cookie)
        assert response.status == 200
        assert "<script>alert(1)" not in text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
        page = Page(text)
        assert not [s for s in page.find_all("script") if "src" not in s.attrs], path
        assert any(XSS in e.text for e in page.find_all("a") + page.find_all("h1")), path
    row = Page((await board.get("/runs", cookie))[1]).one("tr", data_run=name)
    assert XSS in row.text


async def test_the_runs_page_lists_runs_newest_first(board: Board) -> None:
    cookie = await board.sign_in()
    page = await board.page("/runs", cookie)
    page.one("p", class_="empty")
    first = await board.finished_run()
    second = await board.create_run()
    page = await board.page("/runs", cookie)
    rows = page.one("table", id="runs")
    assert rows
    names = [r.attrs["data-run"] for r in page.find_all("tr") if "data-run" in r.attrs]
    assert names == [second, first]
    state = page.find_all("td", class_="state")
    assert state[1].text == "SUCCEEDED"


@pytest.mark.parametrize("scopes", [EVERYTHING, ("admin",)], ids=["owner", "admin"])
async def test_an_unknown_run_is_404(board: Board, scopes: tuple[str, ...]) -> None:
    cookie = await board.sign_in("alice", scopes)
    page = await board.page("/runs/no-such-run", cookie, status=404)
    assert "no-such-run" in page.one("p", class_="error").text
    assert not page.find_all(id="run-state")


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/runs", "runs.read"),
        ("/runs/some-run", "runs.read"),
        ("/agents", "agents.read"),
        ("/dnas", "dna.read"),
        ("/oracles", "oracles.read"),
    ],
)
async def test_a_token_without_a_pages_scope_sees_a_refusal_naming_it(
    board: Board, path: str, scope: str
) -> None:
    others = [
        s for s in EVERYTHING if s != scope and not (scope == "runs.read" and s == "runs.write")
    ]
    cookie = await board.sign_in("bob", others)
    page = await board.page(path, cookie)
    refusal = page.one("p", class_="refusal")
    assert refusal.attrs["role"] == "alert"
    assert f"does not grant {scope}" in refusal.text
    assert page.one(id="who").text == "bob"
    # ... and with the scope, the page itself.
    cookie = await board.sign_in("bob", [scope])
    response, text = await board.get(path, cookie)
    assert response.status in ((200, 404) if path == "/runs/some-run" else (200,))
    assert not Page(text).find_all("p", class_="refusal")


async def test_the_agents_dnas_and_oracles_pages_list_what_the_suite_serves(board: Board) -> None:
    cookie = await board.sign_in()
    agents = await board.page("/agents", cookie)
    kinds = sorted(e.text for e in agents.find_all("td", class_="kind"))
    assert "GENERATOR" in kinds
    assert "ORACLE" in kinds
    # Every row has a cell under each heading.
    table = agents.one("table", id="agents")
    headings = [
        e.text
        for e in agents.find_all("th")
        if e.parent and e.parent.parent and e.parent.parent.parent is table
    ]
    assert "Lease" in headings
    for row in agents.find_all("tr"):
        if "data-agent" in row.attrs:
            cells = [e for e in agents.find_all("td") if e.parent is row]
            assert len(cells) == len(headings), f"{row.attrs['data-agent']}: {len(cells)} cells"
    dnas = await board.page("/dnas", cookie)
    row = dnas.one("tr", data_dna="dnas/rastrigin")
    assert "valid" in row.text
    oracles = await board.page("/oracles", cookie)
    oracles.one("tr", data_oracle="oracles/rastrigin")


async def test_candidates_json_has_genes_in_named_form(board: Board) -> None:
    cookie = await board.sign_in()
    name = await board.finished_run()
    response, text = await board.get(f"/runs/{run_id(name)}/candidates.json", cookie)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = json.loads(text)
    candidates = body["candidates"]
    assert candidates
    assert [c["rank"] for c in candidates] == list(range(1, len(candidates) + 1))
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores)  # minimised: the best first
    for candidate in candidates:
        genes = json.loads(candidate["genes"])
        assert list(genes) == ["x"]
        assert len(genes["x"]) == 10
        assert all(-5.12 <= x <= 5.12 for x in genes["x"])
    # The run page's table shows the same genes.
    page = await board.page(f"/runs/{run_id(name)}", cookie)
    shown = [json.loads(td.text) for td in page.find_all("td", class_="genes")]
    assert shown == [json.loads(c["genes"]) for c in candidates]


# ---- cancelling ------------------------------------------------------------------------


async def test_cancelling_needs_the_forms_csrf_and_the_same_origin(board: Board) -> None:
    name = await board.create_run(evaluations=10_000_000)
    path = f"/runs/{run_id(name)}"
    cookie = await board.sign_in()
    page = await board.page(path, cookie)
    form = page.one("form", id="cancel-form")
    assert form.attrs["action"] == f"{path}/cancel"
    page.one("button", id="cancel")
    csrf = csrf_of(page)

    response, _ = await board.post(f"{path}/cancel", {}, cookie)
    assert response.status == 403
    response, _ = await board.post(f"{path}/cancel", {"csrf": "wrong"}, cookie)
    assert response.status == 403
    other = await board.sign_in()  # another session's csrf is not this one's
    other_csrf = csrf_of(await board.page(path, other))
    assert other_csrf != csrf
    response, _ = await board.post(f"{path}/cancel", {"csrf": other_csrf}, cookie)
    assert response.status == 403
    response, _ = await board.post(
        f"{path}/cancel", {"csrf": csrf}, cookie, Origin="http://evil.example"
    )
    assert response.status == 403
    assert_security_headers(response)
    assert await board.state(name) not in TERMINAL

    response, _ = await board.post(f"{path}/cancel", {"csrf": csrf}, cookie, Origin=board.at(""))
    assert response.status == 303
    assert response.headers["Location"] == path

    async def cancelled() -> str | None:
        state = await board.state(name)
        return state if state in TERMINAL else None

    assert await eventually(cancelled, 20, what=f"{name} to end") == "CANCELLED"
    page = await board.page(path, cookie)
    assert page.one(id="run-state").text == "CANCELLED"
    assert not page.find_all("form", id="cancel-form")


async def test_a_read_only_session_cannot_cancel(board: Board) -> None:
    name = await board.create_run(evaluations=10_000_000)
    path = f"/runs/{run_id(name)}"
    cookie = await board.sign_in("alice", READ_ONLY)
    page = await board.page(path, cookie)
    assert not page.find_all("form", id="cancel-form")
    assert not page.find_all("button", id="cancel")
    response, text = await board.post(f"{path}/cancel", {"csrf": csrf_of(page)}, cookie)
    assert response.status == 200
    refusal = Page(text).one("p", class_="refusal")
    assert "does not grant runs.write" in refusal.text
    assert await board.state(name) not in TERMINAL
    # Cancelled by its owner through gRPC, so that it does not run on.
    await board.runs().CancelRun(orchestrator_pb2.CancelRunRequest(name=name), timeout=10)


# ---- event streams ---------------------------------------------------------------------


async def read_stream(
    board: Board, path: str, cookie: str, last_event_id: str | None = None, within: float = 30
) -> list[Event]:
    """Every event of a stream that ends by itself."""
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[Event] = []
    async with asyncio.timeout(within):
        async with board.http.get(board.at(path), headers=headers) as response:
            assert response.status == 200, await response.text()
            while (event := await read_event(response.content)) is not None:
                events.append(event)
    return events


async def grpc_events(board: Board, name: str) -> list[orchestrator_pb2.RunEvent]:
    stub = board.runs()
    request = orchestrator_pb2.WatchRunRequest(name=name, after_sequence=0)
    return [r.event async for r in stub.WatchRun(request, timeout=30)]


async def test_the_event_stream_of_a_finished_run_replays_it_and_ends(board: Board) -> None:
    cookie = await board.sign_in()
    name = await board.finished_run()
    events = await read_stream(board, f"/runs/{run_id(name)}/events", cookie)
    assert events[-1].event == "end"
    run_events = events[:-1]
    assert {e.event for e in run_events} == {"run"}
    expected = await grpc_events(board, name)
    assert len(run_events) == len(expected) > 5
    for event, original in zip(run_events, expected, strict=True):
        assert event.id == str(original.sequence)
        assert event.json()["sequence"] == original.sequence
    kinds = [e.json()["kind"] for e in run_events]
    assert "generation" in kinds
    assert "best" in kinds
    last_state = [e.json() for e in run_events if e.json()["kind"] == "state"][-1]
    assert last_state["state"] == "SUCCEEDED"

    resumed = await read_stream(board, f"/runs/{run_id(name)}/events", cookie, "5")
    assert [e.id for e in resumed[:-1]] == [e.id for e in run_events if int(e.id or 0) > 5]
    assert resumed[0].id == "6"
    assert resumed[-1].event == "end"


@pytest.mark.parametrize("last", ["x", "-1", "1.5", str(2**62)])
async def test_a_bad_last_event_id_is_400(board: Board, last: str) -> None:
    cookie = await board.sign_in()
    name = await board.create_run()
    response, _ = await board.get(f"/runs/{run_id(name)}/events", cookie, **{"Last-Event-ID": last})
    assert response.status == 400


async def test_the_event_stream_of_an_unknown_run_says_it_is_fatal(board: Board) -> None:
    cookie = await board.sign_in()
    events = await read_stream(board, "/runs/no-such-run/events", cookie)
    assert events[-1].event == "fatal"
    # The suite does not tell a stranger whether the run exists.
    assert events[-1].json()["code"] in ("NOT_FOUND", "PERMISSION_DENIED")


async def test_a_stream_needs_its_scope(board: Board) -> None:
    cookie = await board.sign_in("bob", ("dna.read",))
    name = await board.create_run()
    for path in (f"/runs/{run_id(name)}/events", "/agents/events"):
        response, text = await board.get(path, cookie)
        assert response.status == 403, path
        assert "does not grant" in text


async def open_stream(board: Board, path: str, cookie: str) -> aiohttp.ClientResponse:
    response = await board.http.get(board.at(path), headers={"Cookie": f"{COOKIE}={cookie}"})
    return response


async def test_the_agents_stream_sends_a_snapshot_then_changes(board: Board) -> None:
    cookie = await board.sign_in()
    registry = board.registry()
    response = await open_stream(board, "/agents/events", cookie)
    try:
        assert response.status == 200
        snapshot = await read_event(response.content)
        assert snapshot is not None
        assert snapshot.event == "snapshot"
        names = {a["name"] for a in snapshot.json()["agents"]}
        assert len(names) >= 2  # the embedded generator and oracle agents

        registered = await registry.RegisterAgent(
            registry_pb2.RegisterAgentRequest(
                agent_id="watched",
                agent=agent_spec(endpoint="127.0.0.1:7001", ttl=60, zone="eu-west.1"),
                request_id=uuid.uuid4().hex,
            ),
            timeout=10,
        )
        assert registered.agent.name == "agents/watched"

        async def change(kind: str) -> dict[str, Any]:
            while True:
                event = await read_event(response.content)
                assert event is not None, "the stream ended"
                if event.event != "agents":
                    continue
                for item in event.json()["changes"]:
                    if item["name"] == "agents/watched" and item["type"] == kind:
                        return dict(item)

        put = await asyncio.wait_for(change("put"), 10)
        assert put["agent"]["labels"] == {"zone": "eu-west.1"}
        assert put["agent"]["endpoint"] == "127.0.0.1:7001"
        await registry.DeregisterAgent(
            registry_pb2.DeregisterAgentRequest(name="agents/watched"), timeout=10
        )
        deleted = await asyncio.wait_for(change("delete"), 10)
        assert deleted["reason"] == "deregistered"
    finally:
        response.close()


async def test_streams_per_session_are_limited(start_board: StartBoard) -> None:
    board = await start_board(max_streams_per_session=2, heartbeat=0.2)
    cookie = await board.sign_in()
    first = await open_stream(board, "/agents/events", cookie)
    second = await open_stream(board, "/agents/events", cookie)
    try:
        assert (first.status, second.status) == (200, 200)
        response, text = await board.get("/agents/events", cookie)
        assert response.status == 429
        assert "close some tabs" in text
        assert response.headers["Retry-After"]
        # Another browser of the same person has slots of its own.
        other = await board.sign_in()
        third = await open_stream(board, "/agents/events", other)
        assert third.status == 200
        third.close()
        first.close()

        async def accepted() -> bool:
            response = await open_stream(board, "/agents/events", cookie)
            if response.status == 200:
                response.close()
                return True
            response.release()
            return False

        await eventually(accepted, 10, what="the closed stream's slot to be given back")
    finally:
        first.close()
        second.close()


async def test_a_closed_stream_gives_its_slot_back_before_the_heartbeat(
    start_board: StartBoard,
) -> None:
    """A browser that reloads a live page closes its stream and opens another: the closed
    one must not hold a slot until the next heartbeat finds it gone."""
    board = await start_board(max_streams_per_session=1)  # the default 15 s heartbeat
    cookie = await board.sign_in()

    async def accepted() -> aiohttp.ClientResponse | None:
        response = await open_stream(board, "/agents/events", cookie)
        if response.status == 200:
            return response
        response.release()
        return None

    for _ in range(3):
        response = await eventually(accepted, 5, what="the closed stream's slot to be given back")
        assert (await read_event(response.content)) is not None
        response.close()


async def test_a_reader_that_stops_reading_loses_its_slot(start_board: StartBoard) -> None:
    board = await start_board(max_streams_per_session=1, write_timeout=0.5, heartbeat=0.2)
    # Agents with long labels: a snapshot of 6 MB, more than loopback's socket buffers hold
    # (a write waits, and so times out, only once they are full).
    registry = board.registry()
    labels = {f"k{i:062d}": f"v{i:062d}" for i in range(64)}

    async def register(index: int) -> None:
        agent = agent_spec(endpoint=f"127.0.0.1:{7000 + index}", ttl=120)
        agent.labels.update(labels)
        await registry.RegisterAgent(
            registry_pb2.RegisterAgentRequest(
                agent_id=f"big-{index}",
                agent=agent,
                request_id=uuid.uuid4().hex,
            ),
            timeout=30,
        )

    for first in range(0, 700, 50):
        await asyncio.gather(*(register(i) for i in range(first, first + 50)))
    cookie = await board.sign_in()
    host, port = urlsplit(board.dashboard.url).hostname, urlsplit(board.dashboard.url).port
    assert host is not None
    assert port is not None
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stuck, (host, port))
        request = (
            f"GET /agents/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Cookie: {COOKIE}={cookie}\r\nAccept: text/event-stream\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(stuck, request.encode())
        # It was given the stream (and with it the session's one slot), then reads no more.
        status = await asyncio.wait_for(loop.sock_recv(stuck, 12), 10)
        assert status == b"HTTP/1.1 200"

        async def accepted() -> bool:
            response = await open_stream(board, "/agents/events", cookie)
            if response.status == 200:
                response.close()
                return True
            assert response.status == 429
            response.release()
            return False

        await eventually(accepted, 20, interval=0.2, what="the stuck reader's slot to be freed")
    finally:
        stuck.close()
