"""Forged page tokens: every List method served answers INVALID_ARGUMENT with reason
INVALID_PAGE_TOKEN (never INTERNAL, never a page), and the codec accepts only the tokens
it issues."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
import helix.v1.registry_pb2 as registry_pb2
from helix.common import errors, pages, reasons, rules
from helix.security.client import StaticTokenSource, bearer_interceptors
from helix.security.tokens import mint

from registry_support import Suite, bad_request, error_info, register_request, start_suite

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dna"
INT64_MAX = 2**63 - 1


def encoded(raw: str | bytes) -> str:
    """`raw` (JSON text, or any bytes) as a token is spelled: unpadded base64url."""
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def token_of(base: dict[str, Any] | None = None, **changes: Any) -> str:
    """The canonical JSON of `base` (default: a codec token) with `changes`, encoded."""
    fields = {**(base or CODEC_BASE), **changes}
    return encoded(json.dumps(fields, separators=(",", ":"), ensure_ascii=False))


CODEC_BASE: dict[str, Any] = {"v": 1, "a": "agents/a", "s": 1, "f": ""}


def forged(base: dict[str, Any]) -> dict[str, str]:
    """Tokens no server issued, each `base` (a token the listing accepts) with one defect.
    Every listing must refuse every one the same way."""
    text = json.dumps(base, separators=(",", ":"))
    snapshot = f'"s":{base["s"]}'
    return {
        "snapshot 1e400 (infinity)": encoded(text.replace(snapshot, '"s":1e400')),
        "snapshot true": token_of(base, s=True),
        "snapshot '3'": token_of(base, s="3"),
        "snapshot 3.0": token_of(base, s=3.0),
        "snapshot negative": token_of(base, s=-1),
        "snapshot past int64": token_of(base, s=INT64_MAX + 1),
        "snapshot 10**30": token_of(base, s=10**30),
        "snapshot of 600 digits": encoded(text.replace(snapshot, '"s":' + "9" * 600)),
        "snapshot null": token_of(base, s=None),
        "version 2": token_of(base, v=2),
        "version true": token_of(base, v=True),
        "version 1.0": token_of(base, v=1.0),
        "version '1'": token_of(base, v="1"),
        "after empty": token_of(base, a=""),
        "after a number": token_of(base, a=7),
        "after non-ASCII": token_of(base, a="agents/é"),
        "after a lone surrogate": encoded(text.replace(base["a"], "agents/\\ud800")),
        "after a control character": token_of(base, a="agents/\n"),
        "filters a number": token_of(base, f=0),
        "a key missing": token_of({k: v for k, v in base.items() if k != "s"}),
        "an extra key": token_of(base, x=1),
        "a key twice": encoded(text.replace(snapshot, f"{snapshot},{snapshot}")),
        "spaces in the JSON": encoded(text.replace(",", ", ")),
        "keys in another order": token_of(dict(reversed(base.items()))),
        "a JSON list": encoded("[1,2,3]"),
        "a JSON string": encoded('"agents/a"'),
        "JSON null": encoded("null"),
        "deeply nested JSON": encoded("[" * 380 + "]" * 380),
        "not JSON": encoded(b"\x00\xff\xfe garbage"),
        "invalid UTF-8": encoded(
            text.replace(base["a"], "\udcff").encode("utf-8", "surrogateescape")
        ),
        "base64 garbage": "!!!!not*base64!!!!",
        "base64 with padding": token_of(base) + "=" * (-len(token_of(base)) % 4 or 4),
        "standard base64 alphabet": standard_alphabet(base),
        "base64 of impossible length": token_of(base) + "A" * ((1 - len(token_of(base))) % 4 or 4),
        "whitespace": "   ",
        "non-ASCII characters": "tökén",
    }


def standard_alphabet(base: dict[str, Any]) -> str:
    """A token of `base` (its name padded with ~) in the standard base64 alphabet, which
    differs from base64url: it holds a + or a /."""
    for length in range(1, 16):
        fields = {**base, "a": base["a"] + "~" * length}
        spelled = base64.b64encode(json.dumps(fields, separators=(",", ":")).encode())
        text = spelled.decode().rstrip("=")
        if "+" in text or "/" in text:
            return text
    raise AssertionError("unreachable: ~~~ is fn5+ in base64")


FORGED = forged(CODEC_BASE)


# --- the codec ---------------------------------------------------------------------------------


def test_every_forged_token_fits_a_page_token():
    assert all(0 < len(token) <= 1024 for token in FORGED.values())


@pytest.mark.parametrize("token", FORGED.values(), ids=FORGED.keys())
def test_the_codec_refuses_every_forged_token(token):
    pages.decode_page_token(token_of(CODEC_BASE))  # what they are forged from is a token
    with pytest.raises(errors.InvalidArgument) as refused:
        pages.decode_page_token(token)
    assert refused.value.reason == reasons.INVALID_PAGE_TOKEN
    assert [(v.field, v.reason) for v in refused.value.violations] == [
        ("page_token", rules.INVALID_PAGE_TOKEN)
    ]


@given(
    after=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    snapshot=st.integers(min_value=0, max_value=INT64_MAX),
    filters=st.text(alphabet="0123456789abcdef", max_size=16),
)
def test_the_codec_accepts_what_it_issues(after, snapshot, filters):
    token = pages.encode_page_token(pages.PagePosition(after, snapshot), filters)
    assert pages.decode_page_token(token, filters) == pages.PagePosition(after, snapshot)


@given(token=st.text(max_size=300))
def test_the_codec_refuses_anything_else_cleanly(token):
    refused = None
    try:
        position = pages.decode_page_token(token)
    except errors.InvalidArgument as error:
        refused = error
    if refused is None:  # only a token it would have issued itself
        assert pages.encode_page_token(position) == token
    else:
        assert refused.reason == reasons.INVALID_PAGE_TOKEN


# --- every List method served -------------------------------------------------------------------


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    library = tmp_path / "dnas"
    shutil.copytree(EXAMPLES, library)
    started = await start_suite(tmp_path / "data", generator_dna_dir=library)
    registry = started.stub()
    for name in ("a1", "a2", "a3"):
        await registry.RegisterAgent(register_request(name), timeout=5)
    yield started
    await started.close()


def dnas_stub(suite: Suite) -> Any:
    token = mint(suite.server.security.signer, "carol", ["dna.read"], 600)
    channel = grpc.aio.insecure_channel(
        suite.server.address, interceptors=bearer_interceptors(StaticTokenSource(token))
    )
    suite.channels.append(channel)
    return generator_pb2_grpc.GeneratorServiceStub(channel)


async def list_agents(suite: Suite, token: str, **filters: Any) -> Any:
    request = registry_pb2.ListAgentsRequest(page_size=1, page_token=token, **filters)
    return await suite.stub().ListAgents(request, timeout=5)


async def list_dnas(suite: Suite, token: str) -> Any:
    request = generator_pb2.ListDnasRequest(page_size=1, page_token=token)
    return await dnas_stub(suite).ListDnas(request, timeout=5)


LISTINGS = {"ListAgents": list_agents, "ListDnas": list_dnas}


async def assert_refused(listing: Any, suite: Suite, token: str, **filters: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await listing(suite, token, **filters)
    error = refused.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error_info(error).reason == reasons.INVALID_PAGE_TOKEN
    assert [field for field, _ in bad_request(error)] == ["page_token"]


def fields_of(token: str) -> dict[str, Any]:
    """The JSON fields of a token a server issued."""
    fields: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return fields


@pytest.mark.parametrize("method", LISTINGS)
async def test_every_listing_refuses_every_forged_token(suite, method):
    listing = LISTINGS[method]
    issued = (await listing(suite, "")).next_page_token
    base = fields_of(issued)
    assert token_of(base) == issued  # the forgeries differ from a real token in one thing
    for name, token in forged(base).items():
        try:
            await assert_refused(listing, suite, token)
        except AssertionError as failed:
            raise AssertionError(f"{method}, token {name}: {failed}") from None


async def test_a_token_is_refused_by_another_listing(suite):
    agents_token = (await list_agents(suite, "")).next_page_token
    dnas_token = (await list_dnas(suite, "")).next_page_token
    assert agents_token
    assert dnas_token
    await assert_refused(list_dnas, suite, agents_token)
    await assert_refused(list_agents, suite, dnas_token)


async def test_a_token_is_refused_with_other_filters(suite):
    token = (await list_agents(suite, "", label_selector="")).next_page_token
    await assert_refused(list_agents, suite, token, label_selector="zone=a")
    await assert_refused(list_agents, suite, token, kind=registry_pb2.AGENT_KIND_ORACLE)


async def test_a_forged_snapshot_outside_the_history_is_refused(suite):
    base = fields_of((await list_agents(suite, "")).next_page_token)
    for snapshot in (0, 10**6, INT64_MAX):  # none is a revision this registry has reached
        await assert_refused(list_agents, suite, token_of(base, s=snapshot))


async def test_a_dna_listing_refuses_a_token_naming_a_snapshot(suite):
    base = fields_of((await list_dnas(suite, "")).next_page_token)
    assert base["s"] == 0  # the library is read live: its tokens name no snapshot
    for snapshot in (1, 7, INT64_MAX):
        await assert_refused(list_dnas, suite, token_of(base, s=snapshot))


async def test_the_tokens_the_server_issues_still_page_through(suite):
    names, token = [], ""
    while True:
        page = await list_agents(suite, token)
        names += [a.name for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert names == ["agents/a1", "agents/a2", "agents/a3"]
