"""The dashboard's pure parts: markup that escapes, sessions and their bounds, one-time
login codes (in memory and in the data dir), on a fake clock where time matters."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from helix.dashboard import pages
from helix.dashboard.markup import Html, escape, join, tag
from helix.dashboard.sessions import (
    MAX_CODE_TTL,
    MAX_MEMORY_CODES,
    LoginCodes,
    LoginRefused,
    Session,
    Sessions,
    clean_code_files,
    drop_login_code,
    logins_dir,
    read_url,
    remove_url,
    write_url,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- markup ----------------------------------------------------------------------------


def test_text_is_escaped() -> None:
    assert escape("<a href='x'>&\"") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;"
    assert isinstance(escape("x"), Html)
    assert tag("p", "<script>alert(1)</script>") == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert tag("td", 3, " ", 2.5) == "<td>3 2.5</td>"


def test_attribute_values_cannot_break_out() -> None:
    html = tag("a", "x", href='" onmouseover="alert(1)', title="it's <b>&")
    assert html == (
        '<a href="&quot; onmouseover=&quot;alert(1)" title="it&#x27;s &lt;b&gt;&amp;">x</a>'
    )
    assert tag("input", value="'><script>") == '<input value="&#x27;&gt;&lt;script&gt;">'


def test_attribute_names_none_false_and_true() -> None:
    html = tag("td", class_="num", data_run="runs/a", hidden=True, title=None, open=False)
    assert html == '<td class="num" data-run="runs/a" hidden></td>'
    assert tag("br") == "<br>"
    assert tag("meta", charset="utf-8") == '<meta charset="utf-8">'


def test_nested_children_are_escaped_at_every_depth_and_html_passes_through() -> None:
    inner = tag("b", "<i>")
    html = tag(
        "ul", [tag("li", name) for name in ("<x>", "&")], ["<y>", [None, False, "<z>"]], inner
    )
    assert html == "<ul><li>&lt;x&gt;</li><li>&amp;</li>&lt;y&gt;&lt;z&gt;<b>&lt;i&gt;</b></ul>"
    # Html is never escaped twice; a plain str (even one made from Html) always is.
    assert tag("p", inner) == "<p><b>&lt;i&gt;</b></p>"
    assert tag("p", inner + "<s>") == "<p>&lt;b&gt;&amp;lt;i&amp;gt;&lt;/b&gt;&lt;s&gt;</p>"
    assert join("<", tag("br"), (c for c in ["&"])) == "&lt;<br>&amp;"
    assert escape(Html("<ok>")) == "<ok>"


def test_pages_escape_what_the_services_send() -> None:
    session = Session("t", '<img src=x onerror="alert(1)">', frozenset(), time.time() + 60)
    page = pages.message_page(session, "<title>", "</p><script>x</script>")
    assert "<script>x" not in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    login = pages.login_page("<b>no</b>", '/runs"><script>')
    assert "<b>no</b>" not in login
    assert 'value="/runs&quot;&gt;&lt;script&gt;"' in login


def test_numbers_are_formatted_for_people() -> None:
    assert pages.number(None) == "—"
    assert pages.number(1234567) == "1,234,567"
    assert pages.number(2.0) == "2"
    assert pages.number(0.000123456789) == "0.000123457"
    assert pages.number(float("nan")) == "NaN"
    assert pages.number(float("-inf")) == "-∞"
    assert pages.duration(3) == "3 s"
    assert pages.duration(245) == "4 min 5 s"
    assert pages.duration(7380) == "2 h 3 min"
    assert pages.duration(93600) == "1 d 2 h"


# ---- sessions --------------------------------------------------------------------------


def session(subject: str = "alice", expires_at: float = 2_000_000.0) -> Session:
    return Session("token", subject, frozenset({"runs.read"}), expires_at)


def test_a_session_is_found_by_its_cookie_only() -> None:
    sessions = Sessions(clock=Clock())
    opened = session()
    cookie = sessions.open(opened)
    assert len(cookie) >= 43
    assert sessions.get(cookie) is opened
    for wrong in (None, "", cookie[:-1], cookie + "x", "x" * 129):
        assert sessions.get(wrong) is None
    sessions.close(cookie)
    assert sessions.get(cookie) is None
    sessions.close(cookie)  # twice is fine
    sessions.close(None)


def test_sessions_are_bounded_in_all_closing_the_oldest() -> None:
    sessions = Sessions(max_sessions=3, max_per_subject=3, clock=Clock())
    cookies = [sessions.open(session(f"user-{i}")) for i in range(5)]
    assert len(sessions) == 3
    assert [sessions.get(c) is not None for c in cookies] == [False, False, True, True, True]


def test_one_subject_cannot_push_others_out() -> None:
    sessions = Sessions(max_sessions=10, max_per_subject=2, clock=Clock())
    bob = sessions.open(session("bob"))
    alice = [sessions.open(session("alice")) for _ in range(6)]
    assert len(sessions) == 3
    assert sessions.get(bob) is not None
    # Alice's newest two are open, her older ones were closed for them.
    assert [sessions.get(c) is not None for c in alice] == [False] * 4 + [True] * 2


def test_a_session_ends_with_its_token() -> None:
    clock = Clock(1000.0)
    sessions = Sessions(clock=clock)
    short = sessions.open(session("alice", expires_at=1010.0))
    long = sessions.open(session("bob", expires_at=2000.0))
    clock.now = 1009.9
    assert sessions.get(short) is not None
    clock.now = 1010.0
    assert sessions.get(short) is None
    assert sessions.get(long) is not None
    clock.now = 2000.0
    sessions.open(session("carol", expires_at=3000.0))  # opening sweeps the expired ones
    assert len(sessions) == 1


def test_a_session_grants_its_scopes_and_admin_everything() -> None:
    reader = Session("t", "a", frozenset({"runs.read"}), 0)
    assert reader.can("runs.read")
    assert not reader.can("runs.write")
    assert Session("t", "a", frozenset({"admin"}), 0).can("runs.write")
    assert reader.csrf != Session("t", "a", frozenset(), 0).csrf


# ---- login codes in memory -------------------------------------------------------------


def test_a_code_in_memory_is_worth_one_redemption() -> None:
    codes = LoginCodes(None, clock=Clock())
    code = codes.issue("the-token")
    assert len(code) == 43
    assert "the-token" not in code
    assert codes.redeem(code) == "the-token"
    with pytest.raises(LoginRefused, match="unknown, used or expired"):
        codes.redeem(code)


def test_a_code_in_memory_expires() -> None:
    clock = Clock()
    codes = LoginCodes(None, clock=clock)
    code = codes.issue("the-token", ttl=5)
    clock.now += 5
    with pytest.raises(LoginRefused, match="unknown, used or expired"):
        codes.redeem(code)
    fresh = codes.issue("other", ttl=5)
    clock.now += 4.9
    assert codes.redeem(fresh) == "other"


def test_codes_in_memory_are_bounded() -> None:
    codes = LoginCodes(None, clock=Clock())
    issued = [codes.issue(f"token-{i}") for i in range(MAX_MEMORY_CODES + 1)]
    with pytest.raises(LoginRefused):
        codes.redeem(issued[0])
    assert codes.redeem(issued[1]) == "token-1"
    assert codes.redeem(issued[-1]) == f"token-{MAX_MEMORY_CODES}"


# ---- login codes in the data dir -------------------------------------------------------


def test_a_dropped_code_is_a_private_file_named_by_its_digest(tmp_path: Path) -> None:
    code = drop_login_code(tmp_path, "the-token", ttl=30)
    folder = logins_dir(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert [f.name for f in files] == [f"{hashlib.sha256(code.encode()).hexdigest()}.json"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    body = files[0].read_text()
    assert code not in body
    stored = json.loads(body)
    assert stored["token"] == "the-token"
    assert time.time() + 25 < stored["expires_at"] <= time.time() + 30


def test_a_dropped_code_is_redeemed_once_and_its_file_removed(tmp_path: Path) -> None:
    code = drop_login_code(tmp_path, "the-token")
    codes = LoginCodes(logins_dir(tmp_path))
    assert codes.redeem(code) == "the-token"
    assert list(logins_dir(tmp_path).iterdir()) == []
    with pytest.raises(LoginRefused, match="unknown, used or expired"):
        codes.redeem(code)


def test_a_dropped_code_expires(tmp_path: Path) -> None:
    code = drop_login_code(tmp_path, "the-token", ttl=5)
    codes = LoginCodes(logins_dir(tmp_path), clock=lambda: time.time() + 6)
    with pytest.raises(LoginRefused, match="unknown, used or expired"):
        codes.redeem(code)
    assert list(logins_dir(tmp_path).iterdir()) == []  # and it is gone


@pytest.mark.parametrize(
    "code",
    [
        "../../etc/passwd",
        "../" * 14 + "x",
        "",
        "a" * 42,
        "a" * 44,
        "a" * 42 + "/",
        "a" * 42 + ".",
        "a" * 42 + "\x00",
        "a" * 42 + "é",
    ],
)
def test_a_malformed_code_is_refused_without_touching_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    kept = drop_login_code(tmp_path, "the-token")
    folder = logins_dir(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    touched: list[str] = []

    def refuse(name: str) -> object:
        def record(*args: object, **kwargs: object) -> None:
            touched.append(f"{name}{args}")
            raise AssertionError(f"{name} called for a malformed code")

        return record

    for name in ("rename", "unlink", "open", "scandir", "replace", "stat"):
        monkeypatch.setattr(os, name, refuse(name))
    codes = LoginCodes(folder)
    with pytest.raises(LoginRefused, match="unknown, used or expired"):
        codes.redeem(code)
    monkeypatch.undo()
    assert touched == []
    assert sorted(p.name for p in folder.iterdir()) == before
    assert codes.redeem(kept) == "the-token"


def test_a_file_with_a_broken_body_is_refused_and_removed(tmp_path: Path) -> None:
    code = drop_login_code(tmp_path, "the-token")
    folder = logins_dir(tmp_path)
    path = folder / f"{hashlib.sha256(code.encode()).hexdigest()}.json"
    path.write_text('{"token": "the-token"}')  # no expires_at
    with pytest.raises(LoginRefused):
        LoginCodes(folder).redeem(code)
    assert list(folder.iterdir()) == []


def race(codes: LoginCodes, code: str) -> tuple[list[str], list[LoginRefused]]:
    """Redeem `code` from two threads released at once: what each won or was refused."""
    start = threading.Barrier(2)
    won: list[str] = []
    refused: list[LoginRefused] = []

    def redeem() -> None:
        start.wait()
        try:
            won.append(codes.redeem(code))
        except LoginRefused as exc:
            refused.append(exc)

    threads = [threading.Thread(target=redeem) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return won, refused


@pytest.mark.parametrize("where", ["memory", "file"])
def test_a_code_redeemed_from_two_threads_at_once_wins_once(tmp_path: Path, where: str) -> None:
    for attempt in range(30):
        if where == "memory":
            codes = LoginCodes(None)
            code = codes.issue(f"token-{attempt}")
        else:
            codes = LoginCodes(logins_dir(tmp_path))
            code = drop_login_code(tmp_path, f"token-{attempt}")
        won, refused = race(codes, code)
        assert won == [f"token-{attempt}"], (attempt, won, refused)
        assert len(refused) == 1
    if where == "file":
        assert list(logins_dir(tmp_path).iterdir()) == []


def test_cleaning_removes_expired_broken_and_stale_files_only(tmp_path: Path) -> None:
    folder = logins_dir(tmp_path)
    live = drop_login_code(tmp_path, "live", ttl=60)
    drop_login_code(tmp_path, "dead", ttl=1)
    (folder / "broken.json").write_text("{")
    stale = folder / "abc.1234.taken"
    stale.write_text("{}")
    old = time.time() - MAX_CODE_TTL - 10
    os.utime(stale, (old, old))
    recent = folder / "def.5678.taken"
    recent.write_text("{}")
    clean_code_files(folder, now=time.time() + 30)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"{hashlib.sha256(live.encode()).hexdigest()}.json", recent.name])
    clean_code_files(tmp_path / "nowhere")  # a missing folder is nothing to clean


# ---- the URL file ----------------------------------------------------------------------


def test_the_url_file_names_the_dashboard_serving_a_data_dir(tmp_path: Path) -> None:
    assert read_url(tmp_path) is None
    write_url(tmp_path, "http://127.0.0.1:1234/")
    assert read_url(tmp_path) == "http://127.0.0.1:1234/"
    assert stat.S_IMODE((tmp_path / "dashboard").stat().st_mode) == 0o700
    # A dashboard that stops forgets only its own URL (a newer one may have replaced it).
    write_url(tmp_path, "http://127.0.0.1:5678/")
    remove_url(tmp_path, "http://127.0.0.1:1234/")
    assert read_url(tmp_path) == "http://127.0.0.1:5678/"
    remove_url(tmp_path, "http://127.0.0.1:5678/")
    assert read_url(tmp_path) is None
    remove_url(tmp_path, "http://127.0.0.1:5678/")  # twice is fine
