"""`helix dashboard open`: a one-time login link to the dashboard of a suite on this
machine (docs/dashboard.md).

It mints a token with the suite's key (as `helix token mint` does), leaves it in the
suite's data dir behind a fresh random code, and prints the dashboard's URL with that
code: the link signs in one browser, once, within `--code-ttl` (60 s by default); the
token itself never appears in a URL, a shell history or a browser history.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from helix.cli.client import local_signer
from helix.common import config as cfg
from helix.common.config import DashboardConfig
from helix.common.server import Attachment, HelixServer
from helix.dashboard.sessions import DEFAULT_CODE_TTL, MAX_CODE_TTL, drop_login_code, read_url
from helix.security import scopes
from helix.security.tokens import mint

DEFAULT_SCOPES = (
    scopes.RUNS_READ,
    scopes.RUNS_WRITE,
    scopes.AGENTS_READ,
    scopes.DNA_READ,
    scopes.ORACLES_READ,
)
DEFAULT_SESSION_TTL = "8h"
MAX_SESSION_TTL = 7 * 24 * 3600.0


def add_dashboard_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `helix dashboard open` to the `helix` command line."""
    dashboard = subparsers.add_parser("dashboard", help="the web dashboard of a local suite")
    actions = dashboard.add_subparsers(dest="dashboard_command", metavar="ACTION", required=True)
    opener = actions.add_parser(
        "open",
        help="print a one-time login link to the dashboard of a suite on this machine",
        description="Print the URL of the dashboard serving --data-dir (started with "
        "`helix up --dashboard-port N` or `helix cluster up --dashboard-port N`) with a "
        "one-time login code: it signs in one browser, once, within --code-ttl. The session "
        "holds a token minted with the suite's key for --sub and --scope, valid --ttl.",
    )
    opener.add_argument(
        "--data-dir", type=Path, help="the suite's data dir [env HELIX_DATA_DIR, else default]"
    )
    opener.add_argument(
        "--sub", help="the principal to sign in as [default cli:USER, as helix run uses]"
    )
    opener.add_argument(
        "--scope",
        action="append",
        choices=scopes.ALL_SCOPES,
        help="a scope to grant; repeat for several [default: " + " ".join(DEFAULT_SCOPES) + "]",
    )
    opener.add_argument(
        "--ttl", default=DEFAULT_SESSION_TTL, help="how long the session lasts [default 8h]"
    )
    opener.add_argument(
        "--code-ttl",
        default=f"{int(DEFAULT_CODE_TTL)}s",
        help="how long the link can be used [default 60s; at most 10m]",
    )
    opener.set_defaults(handler=_open)


def dashboard_for(server: HelixServer, config: DashboardConfig, data_dir: Path) -> Attachment:
    """The dashboard of the suite `server` serves (it calls the server's own address over
    loopback), as `config` asks; it prints `helix dashboard on URL` once it serves."""
    from helix.dashboard.server import Dashboard, loopback  # aiohttp: only when asked for

    assert config.dashboard_port is not None
    return Dashboard(
        loopback(server.address),
        host=config.dashboard_host,
        port=config.dashboard_port,
        data_dir=data_dir,
        announce=lambda url: print(f"helix dashboard on {url}", flush=True),
    )


def check_dashboard_config(config: DashboardConfig) -> bool:
    """Whether a dashboard was asked for; ConfigError if it cannot be served."""
    if config.dashboard_port is None:
        return False
    if config.tls_cert_file is not None:
        raise cfg.ConfigError(
            "--dashboard-port: the dashboard calls the suite over plaintext loopback, which a "
            "suite serving TLS does not offer; serve it without TLS behind a TLS proxy"
        )
    return True


def _data_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    from_env = os.environ.get(cfg.env_name("data_dir"))
    return Path(from_env) if from_env else cfg.default_data_dir()


def _open(args: argparse.Namespace) -> int:
    ttl = cfg.parse_duration_setting("--ttl", args.ttl)
    if not 60 <= ttl <= MAX_SESSION_TTL:
        raise cfg.ConfigError(f"--ttl: {args.ttl!r} is not within 1m..7 days")
    code_ttl = cfg.parse_duration_setting("--code-ttl", args.code_ttl)
    if not 1 <= code_ttl <= MAX_CODE_TTL:
        raise cfg.ConfigError(f"--code-ttl: {args.code_ttl!r} is not within 1s..10m")
    data_dir = _data_dir(args.data_dir)
    url = read_url(data_dir)
    if url is None:
        raise cfg.ConfigError(
            f"no dashboard serves {data_dir}: start the suite with a dashboard, e.g. "
            f"`helix up --data-dir {data_dir} --dashboard-port 8080`"
        )
    signer = local_signer(data_dir)
    subject = args.sub or f"cli:{getpass.getuser()}"
    token = mint(signer, subject, args.scope or DEFAULT_SCOPES, ttl)
    code = drop_login_code(data_dir, token, code_ttl)
    print(f"{url}login?code={code}")
    print(
        f"helix dashboard: the link signs in one browser as {subject}, once, within {code_ttl:g}s",
        file=sys.stderr,
    )
    return 0
