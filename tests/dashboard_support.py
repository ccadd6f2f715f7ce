"""Dashboard browser-test support: `helix up` with its dashboard, tokens and gRPC stubs
for it, and browser contexts that record what a page did that it should not have
(requests leaving loopback, console errors, CSP violations, uncaught errors, dialogs).

Chromium is Debian's (/usr/bin/chromium), driven by Playwright; no browser is ever
downloaded, and no page may reach anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration as PbDuration
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Error,
    Page,
    Route,
    ViewportSize,
)

import helix.v1.common_pb2 as common_pb2
import helix.v1.orchestrator_pb2 as orchestrator_pb2
import helix.v1.orchestrator_pb2_grpc as orchestrator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
import helix.v1.registry_pb2_grpc as registry_pb2_grpc
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.keys import SigningKey, load_hs256_dir
from helix.security.tokens import mint

from harness import HELIX, Processes, RunningProcess, clean_env
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DNAS = ROOT / "examples" / "dna"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1200, "height": 900}
NARROW: ViewportSize = {"width": 420, "height": 900}
DASHBOARD_LINE = re.compile(r"^helix dashboard on (http://\S+)$")
# What a page's markup must never become: the payload of the XSS tests.
XSS = "<img src=x onerror=alert(1)>"
# Every scope a page of the dashboard needs.
ALL_READ = ("runs.read", "agents.read", "dna.read", "oracles.read")
EVERYTHING = ("runs.read", "runs.write", "agents.read", "dna.read", "oracles.read")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
# Runs the page tests share: finished, small.
SMALL_BUDGET = orchestrator_pb2.RunBudget(max_evaluations=600)
# Catches the CSP violations a console message might not report (Playwright injects init
# scripts past the page's CSP).
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""


def require_chromium() -> None:
    """Skip (fail on CI, where it must be installed) when Debian's chromium is missing."""
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def artifacts_dir() -> Path:
    """Where screenshots go: $HELIX_TEST_ARTIFACTS/dashboard, else test-artifacts/dashboard
    under the repository root (created)."""
    base = os.environ.get("HELIX_TEST_ARTIFACTS")
    directory = (Path(base) if base else ROOT / "test-artifacts") / "dashboard"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of `page` in the artifacts directory; returns its path."""
    path = artifacts_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0, f"empty screenshot {path}"
    return path


def library_with_payload(directory: Path) -> Path:
    """A DNA library: the examples, a file named after the XSS payload (a legal Linux file
    name, so the library skips it and the dashboard lists it as text), a DNA described by
    the payload and one whose gene name (invalid) is the payload."""
    directory.mkdir(parents=True, exist_ok=True)
    for example in EXAMPLE_DNAS.glob("*.yaml"):
        shutil.copy(example, directory / example.name)
    (directory / f"{XSS}.yaml").write_text("name: dnas/xss\n")
    genes = "genes:\n  - name: x\n    real: {low: 0, high: 1, size: 1}\n"
    (directory / "described.yaml").write_text(
        f"name: dnas/described\ndescription: {json.dumps(XSS)}\n{genes}"
    )
    # A gene name no DNA may have: its violation text quotes it.
    (directory / "violating.yaml").write_text(
        f"name: dnas/violating\ngenes:\n  - name: {json.dumps(XSS)}\n"
        "    real: {low: 0, high: 1}\n"
    )
    return directory


@dataclass
class Dashboard:
    """A running `helix up` with its dashboard, and gRPC stubs to it per principal."""

    process: RunningProcess
    url: str
    data_dir: Path
    dna_dir: Path
    signer: SigningKey
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    finished: str | None = None

    def at(self, path: str) -> str:
        """The absolute URL of `path` ("/runs")."""
        return self.url.rstrip("/") + path

    def token(self, subject: str, scopes: Iterable[str], ttl: float = 3600) -> str:
        return mint(self.signer, subject, scopes, ttl)

    def _channel(self, subject: str, scopes: Iterable[str]) -> grpc.aio.Channel:
        source = StaticTokenSource(self.token(subject, scopes))
        channel = grpc.aio.insecure_channel(
            self.process.address, interceptors=bearer_interceptors(source)
        )
        self.channels.append(channel)
        return channel

    def runs(
        self, subject: str, scopes: Iterable[str] = ("runs.read", "runs.write")
    ) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
        stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub = (
            orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel(subject, scopes))
        )
        return stub

    def registry(
        self, subject: str = "agent-owner", scopes: Iterable[str] = ("agents.write",)
    ) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        stub: registry_pb2_grpc.RegistryServiceAsyncStub = registry_pb2_grpc.RegistryServiceStub(
            self._channel(subject, scopes)
        )
        return stub

    async def create_run(
        self,
        subject: str,
        budget: orchestrator_pb2.RunBudget,
        *,
        display_name: str = "",
        seed: int = 7,
    ) -> str:
        """Create a rastrigin run owned by `subject`; returns its name ("runs/ID")."""
        run = orchestrator_pb2.Run(
            display_name=display_name,
            dna_name="dnas/rastrigin",
            oracle="oracles/rastrigin",
            objective=common_pb2.OBJECTIVE_MINIMIZE,
            budget=budget,
            seed=seed,
        )
        request = orchestrator_pb2.CreateRunRequest(run=run, request_id=uuid.uuid4().hex)
        response = await self.runs(subject).CreateRun(request, timeout=10)
        return response.run.name

    async def run_state(self, subject: str, name: str) -> str:
        response = await self.runs(subject, ("runs.read",)).GetRun(
            orchestrator_pb2.GetRunRequest(name=name), timeout=10
        )
        return orchestrator_pb2.RunState.Name(response.run.state).removeprefix("RUN_STATE_")

    async def wait_until_finished(self, subject: str, name: str, within: float = 30) -> str:
        async def finished() -> str | None:
            state = await self.run_state(subject, name)
            return state if state in TERMINAL_STATES else None

        return await eventually(finished, within, what=f"{name} to finish")

    async def finished_run(self) -> str:
        """A small SUCCEEDED run of alice's, the same one for every test of the module."""
        if self.finished is None:
            name = await self.create_run("alice", SMALL_BUDGET)
            state = await self.wait_until_finished("alice", name)
            assert state == "SUCCEEDED", f"{name} ended {state}"
            self.finished = name
        return self.finished

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def start_dashboard(processes: Processes, base: Path) -> Dashboard:
    """`helix up --dashboard-port 0` on a fresh data dir with the payload library."""
    data_dir = base / "data"
    dna_dir = library_with_payload(base / "dnas")
    argv = [HELIX, "up", "--port", "0", "--data-dir", str(data_dir), "--dashboard-port", "0"]
    argv += ["--generator-dna-dir", str(dna_dir)]
    env = clean_env({"registry_sweep_interval": "0.1s"})
    process = await processes.start(argv, env, name="helix-up")
    urls = [m[1] for line in process.lines if (m := DASHBOARD_LINE.match(line))]
    assert urls, process.describe("printed no `helix dashboard on URL` line")
    _, signer = load_hs256_dir(data_dir / "keys")
    assert signer is not None, f"no HS256 key in {data_dir / 'keys'}"
    return Dashboard(process, urls[0], data_dir, dna_dir, signer)


@dataclass
class Watch:
    """What the pages of one browser context did that no page should."""

    outside: list[str] = field(default_factory=list)  # requests to hosts but 127.0.0.1
    console_errors: list[str] = field(default_factory=list)  # CSP violations included
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt raised

    def problems(self) -> list[str]:
        return [
            *(f"request left loopback: {url}" for url in self.outside),
            *(f"console error: {text}" for text in self.console_errors),
            *(f"uncaught error: {text}" for text in self.page_errors),
            *(f"dialog raised: {text}" for text in self.dialogs),
        ]


class Session:
    """A browser context (its own cookies) whose requests outside 127.0.0.1 are aborted and
    recorded, and whose pages report console errors, uncaught errors and dialogs."""

    def __init__(self, context: BrowserContext, watch: Watch) -> None:
        self.context = context
        self.watch = watch

    @classmethod
    async def open(cls, browser: Browser, viewport: ViewportSize = VIEWPORT) -> Session:
        context = await browser.new_context(viewport=viewport)
        context.set_default_timeout(15_000)
        watch = Watch()

        async def guard(route: Route) -> None:
            url = route.request.url
            if urlsplit(url).hostname == "127.0.0.1":
                await route.continue_()
            else:
                watch.outside.append(url)
                await route.abort()

        await context.route("**/*", guard)
        await context.add_init_script(CSP_LISTENER)
        return cls(context, watch)

    async def page(self) -> Page:
        page = await self.context.new_page()
        watch = self.watch

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watch.console_errors.append(f"{page.url}: {message.text}")

        def on_page_error(error: Error) -> None:
            watch.page_errors.append(f"{page.url}: {error}")

        async def on_dialog(dialog: Dialog) -> None:
            watch.dialogs.append(f"{page.url}: {dialog.type} {dialog.message!r}")
            await dialog.dismiss()

        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        page.on("dialog", on_dialog)
        return page

    async def close(self) -> None:
        await self.context.close()


async def log_in(page: Page, dashboard: Dashboard, token: str) -> None:
    """Sign in through the login form; waits for the landing page, /runs."""
    await page.goto(dashboard.at("/login"))
    await page.fill("textarea#token", token)
    await page.click("#login-submit")
    await page.wait_for_url(re.compile(r"/runs$"))


async def register_agent(
    dashboard: Dashboard, agent_id: str, ttl: float, **labels: str
) -> registry_pb2.Agent:
    """Register an ORACLE agent at 127.0.0.1:1 that never heartbeats."""
    agent = registry_pb2.Agent(
        kind=registry_pb2.AGENT_KIND_ORACLE,
        endpoint="127.0.0.1:1",
        capacity=4,
        labels=labels,
        ttl=PbDuration(seconds=int(ttl), nanos=int(ttl % 1 * 1e9)),
    )
    request = registry_pb2.RegisterAgentRequest(
        agent_id=agent_id, agent=agent, request_id=uuid.uuid4().hex
    )
    response = await dashboard.registry().RegisterAgent(request, timeout=10)
    return response.agent


def seconds_since(start: float) -> float:
    return time.monotonic() - start
