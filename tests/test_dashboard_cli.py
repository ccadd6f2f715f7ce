"""The dashboard from the command line, as a person uses it: `helix up --dashboard-port`,
`helix dashboard open` and `helix run --dashboard`, real subprocesses on 127.0.0.1, the
links they print followed with aiohttp's client."""

from __future__ import annotations

import getpass
import json
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from test_dashboard import COOKIE, Page

from harness import HELIX, LISTENING, Processes, RunningProcess, clean_env
from harness import run_helix as run
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DNAS = ROOT / "examples" / "dna"
DASHBOARD_LINE = re.compile(r"^helix dashboard on (http://\S+)$")
LOGIN_LINK = re.compile(r"^(http://127\.0\.0\.1:\d+/)login\?code=[A-Za-z0-9_-]{43}$")


async def start_suite(processes: Processes, data_dir: Path) -> tuple[RunningProcess, str]:
    """`helix up` with a dashboard; the process and the dashboard's URL."""
    suite = await processes.start(
        [
            HELIX,
            "up",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--dashboard-port",
            "0",
            "--generator-dna-dir",
            str(EXAMPLE_DNAS),
        ],
        clean_env(),
    )
    # The dashboard's line comes first, then the ready line.
    assert LISTENING.match(suite.lines[-1])
    found = [m for m in map(DASHBOARD_LINE.match, suite.lines) if m]
    assert len(found) == 1, suite.lines
    assert suite.lines.index(found[0].string) < len(suite.lines) - 1
    return suite, found[0][1]


async def follow(link: str) -> tuple[int, str, str | None, str]:
    """GET `link` without following redirects: status, Location, session cookie, body."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(link, allow_redirects=False) as response,
    ):
        cookie = response.cookies.get(COOKIE)
        return (
            response.status,
            response.headers.get("Location", ""),
            cookie.value if cookie is not None else None,
            await response.text(),
        )


async def page(url: str, cookie: str) -> tuple[int, Page]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Cookie": f"{COOKIE}={cookie}"}, allow_redirects=False) as response,
    ):
        return response.status, Page(await response.text())


async def test_dashboard_open_prints_a_link_that_signs_in_once(
    processes: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "suite"
    suite, url = await start_suite(processes, data_dir)
    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/")

    code, out, err = await run("dashboard", "open", "--data-dir", str(data_dir), env=clean_env())
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    link = LOGIN_LINK.match(lines[0])
    assert link is not None, lines[0]
    assert link[1] == url
    assert "once" in err

    status, location, cookie, _ = await follow(lines[0])
    assert (status, location) == (303, "/runs")
    assert cookie
    status, runs = await page(url + "runs", cookie)
    assert status == 200
    assert runs.one(id="who").text == f"cli:{getpass.getuser()}"
    assert not runs.find_all("p", class_="refusal")

    # Used once: the second time it is refused, and no file is left behind.
    status, _, again, text = await follow(lines[0])
    assert status == 401
    assert again is None
    assert "unknown, used or expired" in Page(text).one("p", class_="error").text
    assert list((data_dir / "dashboard" / "logins").glob("*.json")) == []

    # --sub and --scope choose who signs in with what.
    code, out, err = await run(
        "dashboard", "open", "--data-dir", str(data_dir), "--sub", "bob", "--scope", "dna.read",
        env=clean_env(),
    )  # fmt: skip
    assert code == 0, err
    status, _, cookie, _ = await follow(out.strip())
    assert status == 303
    assert cookie
    status, runs = await page(url + "runs", cookie)
    assert runs.one(id="who").text == "bob"
    assert "does not grant runs.read" in runs.one("p", class_="refusal").text

    # Once the suite stops, no dashboard serves the data dir.
    assert await suite.stop() == 0
    code, out, err = await run("dashboard", "open", "--data-dir", str(data_dir), env=clean_env())
    assert (code, out) == (2, "")
    assert f"no dashboard serves {data_dir}" in err


async def test_an_expired_link_is_refused(processes: Processes, tmp_path: Path) -> None:
    data_dir = tmp_path / "suite"
    await start_suite(processes, data_dir)
    code, out, err = await run(
        "dashboard", "open", "--data-dir", str(data_dir), "--code-ttl", "1s", env=clean_env()
    )
    assert code == 0, err
    assert "within 1s" in err
    (left,) = (data_dir / "dashboard" / "logins").glob("*.json")
    expires = float(json.loads(left.read_text())["expires_at"])
    assert expires <= time.time() + 1
    await eventually(lambda: time.time() > expires + 0.1, 5, what="the code to expire")
    status, _, cookie, text = await follow(out.strip())
    assert (status, cookie) == (401, None)
    assert "unknown, used or expired" in Page(text).one("p", class_="error").text


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--ttl", "10s"),
        ("--ttl", "8 days"),
        ("--ttl", "soon"),
        ("--code-ttl", "0s"),
        ("--code-ttl", "11m"),
        ("--code-ttl", "-5s"),
    ],
)
async def test_dashboard_open_refuses_bad_durations(
    processes: Processes, tmp_path: Path, flag: str, value: str
) -> None:
    data_dir = tmp_path / "suite"
    await start_suite(processes, data_dir)
    code, out, err = await run(
        "dashboard", "open", "--data-dir", str(data_dir), flag, f"{value}", env=clean_env()
    )
    assert (code, out) == (2, ""), err
    assert flag in err
    assert list((data_dir / "dashboard").glob("logins/*")) == []


async def test_dashboard_open_without_a_dashboard_says_which_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nothing-here"
    code, out, err = await run("dashboard", "open", "--data-dir", str(data_dir), env=clean_env())
    assert (code, out) == (2, "")
    assert str(data_dir) in err
    assert "--dashboard-port" in err
    # The data dir from the environment, too.
    env = clean_env({"data_dir": data_dir})
    code, out, err = await run("dashboard", "open", env=env)
    assert (code, out) == (2, "")
    assert str(data_dir) in err


async def test_up_refuses_a_dashboard_port_out_of_range(tmp_path: Path) -> None:
    code, out, err = await run(
        "up", "--port", "0", "--data-dir", str(tmp_path / "d"), "--dashboard-port", "70000",
        env=clean_env(),
    )  # fmt: skip
    assert code == 2
    assert "--dashboard-port / HELIX_DASHBOARD_PORT: 70000 is not in 0..65535" in err
    assert "helix listening" not in out


async def test_run_with_a_dashboard_serves_it_until_interrupted(
    processes: Processes, tmp_path: Path
) -> None:
    ready = re.compile(r"^helix dashboard on (?P<link>http://\S+/login\?code=\S+)$")
    helix_run = await processes.start(
        [
            HELIX,
            "run",
            str(EXAMPLE_DNAS / "rastrigin.yaml"),
            "--oracle",
            "rastrigin",
            "--budget",
            "1500",
            "--out",
            str(tmp_path / "out"),
            "--dashboard",
        ],
        clean_env({"data_dir": tmp_path / "data"}),
        ready=ready,
        within=60,
    )
    assert helix_run.match is not None
    link = helix_run.match["link"]
    base = LOGIN_LINK.match(link)
    assert base is not None, link
    status, location, cookie, _ = await follow(link)
    assert (status, location) == (303, "/runs")
    assert cookie

    async def finished() -> str | None:
        status, runs = await page(base[1] + "runs", cookie)
        assert status == 200
        rows = [r for r in runs.find_all("tr") if "data-run" in r.attrs]
        if not rows:
            return None
        states = [e.text for e in runs.find_all("td", class_="state")]
        return states[0] if states[0] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    assert await eventually(finished, 90, interval=0.5, what="the run to finish") == "SUCCEEDED"
    # The link was worth one session only.
    status, _, again, _ = await follow(link)
    assert (status, again) == (401, None)
    # It keeps serving after the run, until Ctrl-C.
    await eventually(
        lambda: "the dashboard keeps serving" in helix_run.stderr_text(),
        30,
        what="helix run to say the dashboard keeps serving",
    )
    status, _ = await page(base[1] + "runs", cookie)
    assert status == 200
    assert helix_run.running
    helix_run.send_signal(signal.SIGINT)
    assert await helix_run.wait(30) == 0


async def test_run_with_a_dashboard_and_an_address_is_refused(tmp_path: Path) -> None:
    code, out, err = await run(
        "run", str(EXAMPLE_DNAS / "rastrigin.yaml"), "--oracle", "rastrigin", "--dashboard",
        "--address", "127.0.0.1:1", "--out", str(tmp_path / "out"),
        env=clean_env(),
    )  # fmt: skip
    assert (code, out) == (2, ""), err
    assert "--dashboard" in err
    assert "helix dashboard open" in err


async def test_run_with_a_dashboard_and_json_keeps_stdout_one_json_object(
    processes: Processes, tmp_path: Path
) -> None:
    """With --json, stdout holds the run's one JSON object only: the link goes to stderr."""
    helix_run = await processes.start(
        [
            HELIX, "run", str(EXAMPLE_DNAS / "rastrigin.yaml"), "--oracle", "rastrigin",
            "--budget", "500", "--out", str(tmp_path / "out"), "--dashboard-port", "0", "--json",
        ],
        clean_env({"data_dir": tmp_path / "data"}),
        ready=None,
    )  # fmt: skip
    await eventually(
        lambda: "the dashboard keeps serving" in helix_run.stderr_text(),
        90,
        what="the run to end and the dashboard to keep serving",
    )
    assert re.search(r"^helix dashboard on http://\S+/login\?code=", helix_run.stderr_text(), re.M)
    helix_run.send_signal(signal.SIGINT)
    assert await helix_run.wait(30) == 0
    summary = json.loads("\n".join(helix_run.lines))
    assert summary["state"] == "SUCCEEDED"
