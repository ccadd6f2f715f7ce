"""Who is signed in to the dashboard, and the one-time login codes that sign them in.

A session is a random id in an HttpOnly, SameSite=Strict cookie; the server keeps, under
the id's SHA-256, the token it was opened with, and nothing lets it outlive that token or
grant more than its scopes: every page is made of gRPC calls carrying that token.

A login code (`helix dashboard open`, `helix run --dashboard`) is 32 random bytes in a
URL, worth one session, once, for a short time (60 s by default). The command that mints
the token leaves it in `DATA_DIR/dashboard/logins/<sha256 of the code>.json` (mode 0600,
in a 0700 folder): the code itself is never written down, the long-lived token never
appears in a URL, and redeeming renames the file away first, so two redemptions of one
code cannot both win. A process that serves the dashboard itself keeps its codes in
memory instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helix.security.principal import ADMIN_SCOPE

COOKIE = "helix_session"
CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32)
DEFAULT_CODE_TTL = 60.0
MAX_CODE_TTL = 600.0
DASHBOARD_DIR = "dashboard"
URL_FILE = "url"
LOGINS_DIR = "logins"
MAX_CODE_FILES = 1000  # files looked at per clean-up; more are left for the next one
MAX_MEMORY_CODES = 256


class LoginRefused(Exception):
    """A login that cannot be granted; the message says why, for the person."""


@dataclass
class Session:
    """One signed-in browser."""

    token: str
    subject: str
    scopes: frozenset[str]
    expires_at: float  # the token's exp (wall clock)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    streams: int = 0  # live event streams open now

    def can(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN_SCOPE in self.scopes


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class Sessions:
    """The open sessions, bounded in all and per subject (a subject's oldest session is
    closed to make room for its newest, so one person cannot push everyone else out)."""

    def __init__(
        self,
        max_sessions: int = 1024,
        max_per_subject: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self.max_sessions = max_sessions
        self.max_per_subject = max_per_subject
        self._clock = clock

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, session: Session) -> str:
        """Store `session`; the cookie value that names it."""
        self._expire()
        mine = [key for key, s in self._by_id.items() if s.subject == session.subject]
        for key in mine[: max(0, len(mine) - self.max_per_subject + 1)]:
            del self._by_id[key]
        while len(self._by_id) >= self.max_sessions:
            self._by_id.popitem(last=False)
        cookie = secrets.token_urlsafe(32)
        self._by_id[_digest(cookie)] = session
        return cookie

    def get(self, cookie: str | None) -> Session | None:
        """The live session the cookie names, or None."""
        if not cookie or len(cookie) > 128:
            return None
        key = _digest(cookie)
        session = self._by_id.get(key)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._by_id[key]
            return None
        return session

    def close(self, cookie: str | None) -> None:
        if cookie:
            self._by_id.pop(_digest(cookie), None)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._by_id.items() if s.expires_at <= now]:
            del self._by_id[key]


def logins_dir(data_dir: Path) -> Path:
    return data_dir / DASHBOARD_DIR / LOGINS_DIR


def url_file(data_dir: Path) -> Path:
    return data_dir / DASHBOARD_DIR / URL_FILE


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_url(data_dir: Path, url: str) -> None:
    """Say where this data dir's dashboard serves (for `helix dashboard open`). Blocking."""
    folder = data_dir / DASHBOARD_DIR
    _private_dir(folder)
    temporary = folder / f".{URL_FILE}.{secrets.token_hex(4)}"
    temporary.write_text(url + "\n")
    os.replace(temporary, folder / URL_FILE)


def remove_url(data_dir: Path, url: str) -> None:
    """Forget the URL if it is still this dashboard's. Blocking."""
    path = url_file(data_dir)
    with contextlib.suppress(OSError):
        if path.read_text().strip() == url:
            path.unlink()


def read_url(data_dir: Path) -> str | None:
    """The URL of the dashboard serving `data_dir`, or None. Blocking."""
    try:
        text = url_file(data_dir).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def drop_login_code(data_dir: Path, token: str, ttl: float = DEFAULT_CODE_TTL) -> str:
    """Leave `token` for the dashboard of `data_dir`, behind a fresh one-time code valid
    for `ttl` seconds; returns the code. Blocking file I/O."""
    folder = logins_dir(data_dir)
    _private_dir(folder)
    clean_code_files(folder)
    code = secrets.token_urlsafe(32)
    body = json.dumps({"token": token, "expires_at": time.time() + ttl})
    # Written aside, then renamed into place: a clean-up never sees it half-written.
    partial = folder / f".{secrets.token_hex(8)}.partial"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(body)
    os.replace(partial, folder / f"{_digest(code)}.json")
    return code


def clean_code_files(folder: Path, now: float | None = None) -> None:
    """Delete expired, unreadable and half-redeemed code files. Blocking."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))[:MAX_CODE_FILES]
    except FileNotFoundError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if path.suffix in (".taken", ".partial"):
                if entry.stat().st_mtime < now - MAX_CODE_TTL:
                    path.unlink()
                continue
            expires = float(json.loads(path.read_text())["expires_at"])
            if expires <= now:
                path.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()


class LoginCodes:
    """One-time codes: in memory (minted by this process; `redeem_memory`, on the event
    loop) and in the data dir's folder (left by `helix dashboard open`; `redeem_file`,
    blocking: run it in a thread)."""

    UNUSABLE = "this login code is unknown, used or expired: run `helix dashboard open` again"

    def __init__(self, folder: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self._memory: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._clock = clock

    def issue(self, token: str, ttl: float = DEFAULT_CODE_TTL) -> str:
        """A code for `token` kept in memory, valid `ttl` seconds."""
        now = self._clock()
        for key in [k for k, (_, until) in self._memory.items() if until <= now]:
            del self._memory[key]
        while len(self._memory) >= MAX_MEMORY_CODES:
            self._memory.popitem(last=False)
        code = secrets.token_urlsafe(32)
        self._memory[_digest(code)] = (token, now + ttl)
        return code

    def redeem(self, code: str) -> str:
        """The token behind `code`, which is used up; `LoginRefused` if there is none
        (memory first, then the folder: blocking when a folder is set)."""
        token = self.redeem_memory(code)
        return token if token is not None else self.redeem_file(code)

    def redeem_memory(self, code: str) -> str | None:
        """The token behind an in-memory `code` (used up), None if it is not one of
        those; `LoginRefused` if it was, but has expired, or is malformed."""
        if not CODE_PATTERN.fullmatch(code):
            raise LoginRefused(self.UNUSABLE)
        held = self._memory.pop(_digest(code), None)
        if held is None:
            return None
        token, until = held
        if until <= self._clock():
            raise LoginRefused(self.UNUSABLE)
        return token

    def redeem_file(self, code: str) -> str:
        """The token behind a folder `code` (used up); `LoginRefused` if there is none.
        Blocking file I/O."""
        if not CODE_PATTERN.fullmatch(code) or self.folder is None:
            raise LoginRefused(self.UNUSABLE)
        key = _digest(code)
        now = self._clock()
        path = self.folder / f"{key}.json"
        taken = self.folder / f"{key}.{secrets.token_hex(4)}.taken"
        try:
            os.rename(path, taken)  # atomic: only one redemption gets the file
        except FileNotFoundError:
            raise LoginRefused(self.UNUSABLE) from None
        try:
            found = json.loads(taken.read_text())
            token, until = str(found["token"]), float(found["expires_at"])
        except (OSError, ValueError, KeyError, TypeError):
            raise LoginRefused(self.UNUSABLE) from None
        finally:
            with contextlib.suppress(OSError):
                taken.unlink()
            clean_code_files(self.folder, now)
        if until <= now:
            raise LoginRefused(self.UNUSABLE)
        return token
