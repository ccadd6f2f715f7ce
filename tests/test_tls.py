"""TLS and mutual TLS by configuration, with the client factory's credentials."""

from __future__ import annotations

import grpc
import pytest

from helix.common.channel import create_channel, tls_channel_credentials
from helix.common.config import ConfigError

from echo_service import EchoServicer, String, binding, stubs
from tls_support import make_pki


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


async def echo_over(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    async with create_channel(address, credentials=credentials, services=[]) as channel:
        return (await stubs(channel)["Echo"](String(value="secret"), timeout=5)).value


async def test_tls_serves_clients_that_trust_its_ca(start_server, pki):
    server = await start_server(
        [binding(EchoServicer())], tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    assert await echo_over(server.address, tls_channel_credentials(pki.ca)) == "secret"


async def test_tls_refuses_plaintext_clients(start_server, pki):
    server = await start_server(
        [binding(EchoServicer())], tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo_over(server.address, None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(start_server, pki):
    server = await start_server(
        [binding(EchoServicer())],
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo_over(server.address, tls_channel_credentials(pki.ca))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    credentials = tls_channel_credentials(pki.ca, pki.client_cert, pki.client_key)
    assert await echo_over(server.address, credentials) == "secret"


def test_client_certificate_needs_its_key(pki):
    with pytest.raises(ConfigError, match="needs both"):
        tls_channel_credentials(pki.ca, pki.client_cert, None)


def test_unreadable_ca_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read TLS files"):
        tls_channel_credentials(tmp_path / "missing.pem")
