"""The dashboard in a real browser (Debian's chromium, driven by Playwright): signing in,
live run and agent pages, scopes, one-time login codes, the cancel button, escaping of
every text a user controls, and no request leaving loopback.

One `helix up --dashboard-port 0` serves the whole module; each test has browser contexts
of its own (its own cookies). Screenshots go to $HELIX_TEST_ARTIFACTS/dashboard (default
test-artifacts/dashboard).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from dashboard_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EVERYTHING,
    NARROW,
    VIEWPORT,
    XSS,
    Dashboard,
    Session,
    log_in,
    register_agent,
    require_chromium,
    screenshot,
    start_dashboard,
)
from google.protobuf.duration_pb2 import Duration as PbDuration
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

import helix.v1.orchestrator_pb2 as orchestrator_pb2

from harness import Processes, clean_env, run_helix
from waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODULE = pytest_asyncio.fixture(scope="module", loop_scope="module")
PAGES = ("/runs", "/agents", "/dnas", "/oracles")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
UNUSABLE_CODE = "unknown, used or expired"


@MODULE
async def dashboard(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    base = tmp_path_factory.mktemp("dashboard")
    async with Processes(base / "logs") as processes:
        started = await start_dashboard(processes, base)
        try:
            yield started
        finally:
            await started.close()


@MODULE
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def sessions(browser: Browser) -> AsyncIterator[list[Session]]:
    """Open browser contexts with `Session.open(browser)` and append them; all are closed
    after the test."""
    opened: list[Session] = []
    yield opened
    for session in opened:
        await session.close()


async def session(
    sessions: list[Session], browser: Browser, viewport: ViewportSize = VIEWPORT
) -> Session:
    opened = await Session.open(browser, viewport)
    sessions.append(opened)
    return opened


def main_frame_navigations(page: Page) -> list[str]:
    """The URLs the page's main frame navigates to from now on (a reload counts)."""
    seen: list[str] = []
    page.on(
        "framenavigated", lambda frame: seen.append(frame.url) if frame is page.main_frame else None
    )
    return seen


# --- signing in ------------------------------------------------------------------------------


async def test_signing_in_with_a_token_sets_a_strict_http_only_session_cookie(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    user = await session(sessions, browser)
    page = await user.page()
    response = await page.goto(dashboard.at("/runs"))
    assert response is not None
    assert re.search(r"/login\?next=(/|%2F)runs$", page.url), page.url
    await screenshot(page, "login")

    issued = time.time()
    await log_in(page, dashboard, dashboard.token("alice", EVERYTHING, ttl=3600))

    assert page.url == dashboard.at("/runs")
    await expect(page.locator("#who")).to_contain_text("alice")
    cookies = {c.get("name"): c for c in await user.context.cookies()}
    assert "helix_session" in cookies, cookies
    cookie = cookies["helix_session"]
    assert cookie.get("httpOnly") is True, cookie
    assert cookie.get("sameSite") == "Strict", cookie
    assert cookie.get("path") == "/", cookie
    expires = cookie.get("expires", -1)
    assert abs(expires - (issued + 3600)) < 120, f"cookie expires {expires}, token {issued + 3600}"
    assert "helix_session" not in await page.evaluate("document.cookie")
    assert not user.watch.problems(), user.watch.problems()


async def test_a_bad_token_is_refused_on_the_login_page(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    user = await session(sessions, browser)
    page = await user.page()
    await page.goto(dashboard.at("/login"))
    await page.fill("textarea#token", "not-a-token")
    await page.click("#login-submit")
    await expect(page.locator("p.error[role=alert]")).to_be_visible()
    await expect(page.locator("textarea#token")).to_be_visible()
    assert not [c for c in await user.context.cookies() if c.get("name") == "helix_session"]


async def test_signing_out_ends_the_session(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    user = await session(sessions, browser)
    page = await user.page()
    await log_in(page, dashboard, dashboard.token("alice", EVERYTHING))
    assert await page.locator("form#logout input[name=csrf]").count() == 1
    await page.locator("form#logout button").click()
    await expect(page).to_have_url(re.compile(r"/login(\?.*)?$"))
    await expect(page.locator("textarea#token")).to_be_visible()
    await page.goto(dashboard.at("/agents"))
    assert re.search(r"/login\?next=(/|%2F)agents$", page.url), page.url


# --- the run page, live -----------------------------------------------------------------------


async def test_the_run_page_follows_a_run_live_to_its_end(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    user = await session(sessions, browser)
    page = await user.page()
    await log_in(page, dashboard, dashboard.token("alice", EVERYTHING))
    # A time budget: a run of a few seconds however fast the machine is.
    budget = orchestrator_pb2.RunBudget(max_duration=PbDuration(seconds=5), max_generations=2000)
    name = await dashboard.create_run("alice", budget, seed=3)

    response = await page.goto(dashboard.at(f"/{name}"))
    assert response is not None
    assert response.status == 200
    navigations = main_frame_navigations(page)
    chart = page.locator("svg#chart")
    points: list[int] = []
    states: list[str] = []

    async def ended() -> str | None:
        value = await chart.get_attribute("data-points")
        if value is not None and (not points or int(value) != points[-1]):
            points.append(int(value))
            if len(points) == 2:
                await screenshot(page, "run-live")
        state = (await page.inner_text("#run-state")).strip()
        if not states or states[-1] != state:
            states.append(state)
        return state if state in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    final = await eventually(ended, 40, what=f"{name}'s page to show its end", interval=0.05)

    assert final == "SUCCEEDED", f"states seen: {states}"
    assert navigations == [], f"the page reloaded or navigated: {navigations}"
    assert points == sorted(set(points)), f"data-points went back: {points}"
    assert len([p for p in points if p > 0]) >= 2, f"data-points seen: {points}"
    await expect(page.locator("#live")).to_have_text("ended")
    # The last generations may arrive with the end, after the last look above.
    last = int(await chart.get_attribute("data-points") or 0)
    assert last >= points[-1], f"data-points went back to {last} after {points}"
    assert await page.locator("table#candidates tbody tr").count() > 0
    assert await page.locator("ol#events li").count() > 0
    await screenshot(page, "run-ended")
    assert not user.watch.problems(), user.watch.problems()


# --- agents, live ------------------------------------------------------------------------------


async def test_the_agents_page_shows_an_agent_arrive_and_expire_without_reloading(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    user = await session(sessions, browser)
    page = await user.page()
    await log_in(page, dashboard, dashboard.token("alice", EVERYTHING))
    await page.goto(dashboard.at("/agents"))
    await expect(page.locator("#live")).to_have_text("live")
    navigations = main_frame_navigations(page)

    agent = await register_agent(dashboard, "ephemeral", ttl=2, team="x")
    row = page.locator(f'table#agents tr[data-agent="{agent.name}"]')
    await expect(row).to_have_count(1)
    await expect(row.locator("td.kind")).to_contain_text(re.compile("oracle", re.IGNORECASE))
    await expect(row.locator("td.endpoint")).to_contain_text("127.0.0.1:1")
    await expect(row.locator("td.labels")).to_contain_text("team=x")
    await screenshot(page, "agents-arrived")

    # Never heartbeats: gone after its 2 s lease.
    await expect(row).to_have_count(0, timeout=15_000)
    departed = page.locator(f'ul#departed li[data-agent="{agent.name}"]')
    await expect(departed).to_contain_text("expired")
    assert navigations == [], f"the page reloaded or navigated: {navigations}"
    assert not user.watch.problems(), user.watch.problems()


# --- scopes ------------------------------------------------------------------------------------


async def test_a_token_without_runs_read_sees_a_refusal_naming_the_scope(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    user = await session(sessions, browser)
    page = await user.page()
    await log_in(page, dashboard, dashboard.token("bob", ["agents.read"]))
    response = await page.goto(dashboard.at("/runs"))
    assert response is not None
    assert response.status == 200
    refusal = page.locator("p.refusal[role=alert]")
    await expect(refusal).to_contain_text("runs.read")
    assert await page.locator("table#runs").count() == 0
    # What the token does grant still shows.
    await page.goto(dashboard.at("/agents"))
    await expect(page.locator("table#agents")).to_be_visible()
    assert await page.locator("p.refusal").count() == 0


async def test_the_cancel_button_is_there_only_with_runs_write_and_cancels(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    budget = orchestrator_pb2.RunBudget(max_duration=PbDuration(seconds=60))
    name = await dashboard.create_run("carol", budget, seed=5)
    try:
        reader = await session(sessions, browser)
        page = await reader.page()
        await log_in(page, dashboard, dashboard.token("carol", ["runs.read"]))
        await page.goto(dashboard.at(f"/{name}"))
        await expect(page.locator("#run-state")).to_have_text(re.compile("PENDING|RUNNING"))
        await expect(page.locator("#live")).to_have_text("live")
        assert await page.locator("#cancel").count() == 0
        assert await page.locator("form#cancel-form").count() == 0

        writer = await session(sessions, browser)
        page = await writer.page()
        await log_in(page, dashboard, dashboard.token("carol", ["runs.read", "runs.write"]))
        await page.goto(dashboard.at(f"/{name}"))
        await expect(page.locator("#run-state")).to_have_text(re.compile("PENDING|RUNNING"))
        cancel = page.locator("form#cancel-form button#cancel")
        await expect(cancel).to_be_visible()
        assert await page.locator("form#cancel-form input[name=csrf]").count() == 1
        await cancel.click()
        await expect(page.locator("#run-state")).to_have_text("CANCELLED", timeout=20_000)
        await expect(page.locator("#cancel")).to_have_count(0)
        assert await dashboard.run_state("carol", name) == "CANCELLED"
        assert not reader.watch.problems()
        assert not writer.watch.problems()
    finally:
        if await dashboard.run_state("carol", name) in ("PENDING", "RUNNING"):
            await dashboard.runs("carol").CancelRun(
                orchestrator_pb2.CancelRunRequest(name=name), timeout=10
            )


# --- escaping ----------------------------------------------------------------------------------


async def test_markup_in_a_file_name_and_a_run_name_shows_as_text(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    named = await dashboard.create_run(
        "alice", orchestrator_pb2.RunBudget(max_evaluations=300), display_name=XSS
    )
    user = await session(sessions, browser)
    page = await user.page()
    await log_in(page, dashboard, dashboard.token("alice", EVERYTHING))

    await page.goto(dashboard.at("/dnas"))
    skipped = page.locator("table#skipped")
    await expect(skipped).to_contain_text(f"{XSS}.yaml")
    await expect(page.locator('table#dnas tr[data-dna="dnas/described"]')).to_contain_text(XSS)
    await expect(page.get_by_text(XSS).first).to_be_visible()
    await _assert_no_injected_image(page)

    # The run's display name: wherever the run list or page shows it, as text.
    shown = []
    for path in ("/runs", f"/{named}"):
        await page.goto(dashboard.at(path))
        await expect(page.locator("#who")).to_be_visible()
        shown.append(XSS in await page.locator("body").inner_text())
        await _assert_no_injected_image(page)
    assert any(shown), "the run's display name shows neither in /runs nor on its page"
    await screenshot(page, "run-xss")
    assert user.watch.dialogs == [], user.watch.dialogs
    assert not user.watch.problems(), user.watch.problems()


async def _assert_no_injected_image(page: Page) -> None:
    assert await page.locator("img[src=x]").count() == 0, f"{page.url} holds the payload's <img>"
    assert await page.locator("img[onerror]").count() == 0


# --- one-time login codes ----------------------------------------------------------------------


async def _login_code(dashboard: Dashboard, *options: str) -> str:
    status, out, err = await run_helix(
        "dashboard", "open", "--data-dir", str(dashboard.data_dir), *options, env=clean_env()
    )
    assert status == 0, f"helix dashboard open: exit {status}\n{err}"
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert re.fullmatch(re.escape(dashboard.at("/login?code=")) + r"\S+", lines[0]), lines[0]
    return lines[0]


async def test_a_login_code_signs_in_once(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    url = await _login_code(dashboard)
    first = await session(sessions, browser)
    page = await first.page()
    await page.goto(url)
    assert page.url == dashboard.at("/runs")
    await expect(page.locator("#who")).to_contain_text("cli:")
    assert [c for c in await first.context.cookies() if c.get("name") == "helix_session"]

    again = await session(sessions, browser)
    page = await again.page()
    response = await page.goto(url)
    assert response is not None
    assert response.status == 401
    await expect(page.locator("p.error")).to_contain_text(UNUSABLE_CODE)
    assert not [c for c in await again.context.cookies() if c.get("name") == "helix_session"]


async def test_an_expired_login_code_is_refused(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    url = await _login_code(dashboard, "--code-ttl", "1s")
    made = time.monotonic()
    # Not synchronisation: the code's 1 s lifetime has to pass.
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - made)))
    user = await session(sessions, browser)
    page = await user.page()
    response = await page.goto(url)
    assert response is not None
    assert response.status == 401
    await expect(page.locator("p.error")).to_contain_text(UNUSABLE_CODE)
    assert not [c for c in await user.context.cookies() if c.get("name") == "helix_session"]


# --- every page: loopback only, no errors, screenshots ------------------------------------------


async def test_every_page_stays_on_loopback_without_errors(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    run = await dashboard.finished_run()
    user = await session(sessions, browser)
    page = await user.page()
    response = await page.goto(dashboard.at("/login"))
    assert response is not None
    _assert_secure_headers("/login", await response.all_headers())
    await log_in(page, dashboard, dashboard.token("alice", EVERYTHING))
    for path in (*PAGES, f"/{run}"):
        response = await page.goto(dashboard.at(path))
        assert response is not None, path
        assert response.status == 200, (path, response.status)
        _assert_secure_headers(path, await response.all_headers())
        await expect(page.locator("#who")).to_contain_text("alice")
        if path in ("/agents", f"/{run}"):  # scripts running: their stream is open or done
            await expect(page.locator("#live")).to_have_text(re.compile("live|ended"))
    await expect(page.locator("#run-state")).to_have_text("SUCCEEDED")
    await expect(page.locator("#live")).to_have_text("ended")
    assert user.watch.outside == [], user.watch.outside
    assert user.watch.console_errors == [], user.watch.console_errors
    assert user.watch.page_errors == [], user.watch.page_errors


def _assert_secure_headers(path: str, headers: dict[str, str]) -> None:
    policy = headers.get("content-security-policy", "")
    assert policy == CSP, (path, policy)
    assert headers.get("x-content-type-options") == "nosniff", (path, headers)
    assert headers.get("referrer-policy") == "no-referrer", (path, headers)
    assert "no-store" in headers.get("cache-control", ""), (path, headers)


async def test_screenshots_of_every_page(
    dashboard: Dashboard, browser: Browser, sessions: list[Session]
) -> None:
    run = await dashboard.finished_run()
    user = await session(sessions, browser)
    page = await user.page()
    await page.goto(dashboard.at("/login"))
    shots = [await screenshot(page, "page-login")]
    await log_in(page, dashboard, dashboard.token("alice", EVERYTHING))
    for path, label in [*((p, p.strip("/")) for p in PAGES), (f"/{run}", "run")]:
        await page.goto(dashboard.at(path))
        await expect(page.locator("#who")).to_be_visible()
        shots.append(await screenshot(page, f"page-{label}"))
    await expect(page.locator("svg#chart")).to_be_visible()

    narrow = await session(sessions, browser, viewport=NARROW)
    small = await narrow.page()
    await log_in(small, dashboard, dashboard.token("alice", EVERYTHING))
    await small.goto(dashboard.at(f"/{run}"))
    await expect(small.locator("#run-state")).to_have_text("SUCCEEDED")
    shots.append(await screenshot(small, "page-run-narrow"))

    assert all(p.read_bytes().startswith(b"\x89PNG") for p in shots), shots
    assert not user.watch.problems()
    assert not narrow.watch.problems()
