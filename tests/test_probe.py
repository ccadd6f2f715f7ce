"""`helix probe`, the container health check: exit 0 only when a real server's health
service answers SERVING for the service asked about."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helix.cli.main import main
from helix.common.health import NOT_SERVING

from echo_service import EchoServicer, binding
from harness import clean_env, run_helix

ECHO = "helix.test.EchoService"


async def probe(*args: str) -> tuple[int, str, str]:
    """`helix probe ARGS` in-process, off the event loop the server runs on."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["probe", *args])

    status = await asyncio.to_thread(run)
    return status, out.getvalue(), err.getvalue()


async def test_serving_server_and_service_exit_0(start_server):
    server = await start_server([binding(EchoServicer())])
    status, out, _ = await probe("--address", server.address)
    assert (status, out.strip()) == (0, f"{server.address} the server: SERVING")
    status, out, _ = await probe("--address", server.address, "--service", ECHO)
    assert (status, out.strip()) == (0, f"{server.address} {ECHO}: SERVING")


async def test_not_serving_unknown_service_and_no_server_exit_1(start_server):
    server = await start_server([binding(EchoServicer())])
    status, out, _ = await probe("--address", server.address, "--service", "helix.v1.Nope")
    assert status == 1
    assert "NOT_FOUND" in out
    await server.health.set(ECHO, NOT_SERVING)
    status, out, _ = await probe("--address", server.address, "--service", ECHO)
    assert (status, out.strip()) == (1, f"{server.address} {ECHO}: NOT_SERVING")
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    status, out, _ = await probe("--address", address, "--timeout", "1s")
    assert status == 1
    assert "UNAVAILABLE" in out


async def test_bad_flags_exit_2_naming_the_flag():
    status, _, err = await probe("--address", "no-port")
    assert status == 2
    assert "--address" in err
    status, _, err = await probe("--timeout", "forever")
    assert status == 2
    assert "--timeout" in err
    status, _, err = await probe("--timeout", "2m")
    assert status == 2
    assert "within" in err


async def test_the_console_script_as_a_healthcheck_runs_it(start_server):
    server = await start_server([binding(EchoServicer())])
    status, out, err = await run_helix("probe", "--address", server.address, env=clean_env())
    assert status == 0, err
    assert out.strip().endswith("SERVING")
    await server.shutdown(0)
    status, _, _ = await run_helix("probe", "--address", server.address, env=clean_env())
    assert status == 1


def _pki_for_a_name(directory: Path, host: str) -> dict[str, Path]:
    """A CA, a server certificate naming only `host` (no IP address) and a client
    certificate: the server's as a real deployment names it, not by the address dialled."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("probe test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        certificate("probe test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write(directory / "ca", ca_key, ca)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        certificate(host, server_key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write(directory / "server", server_key, server)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        certificate("probe", client_key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write(directory / "client", client_key, client)
    return {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }


async def test_mutual_tls_with_a_certificate_for_another_name(start_server, tmp_path):
    files = _pki_for_a_name(tmp_path, "oracle.helix.internal")
    server = await start_server(
        [binding(EchoServicer())],
        tls_cert_file=files["server_cert"],
        tls_key_file=files["server_key"],
        tls_client_ca_file=files["ca"],
    )
    tls = ["--address", server.address, "--timeout", "2s", "--tls-ca", str(files["ca"])]
    client = ["--tls-cert", str(files["client_cert"]), "--tls-key", str(files["client_key"])]
    named = ["--tls-server-name", "oracle.helix.internal"]
    # The certificate does not name 127.0.0.1: refused without the name to check.
    status, out, _ = await probe(*tls, *client)
    assert status == 1, out
    assert "UNAVAILABLE" in out
    # The server requires a client certificate: refused without one.
    status, out, _ = await probe(*tls, *named)
    assert status == 1, out
    status, out, err = await probe(*tls, *client, *named)
    assert (status, out.strip()) == (0, f"{server.address} the server: SERVING"), err
    status, out, err = await probe(*tls, *client, *named, "--service", ECHO)
    assert (status, out.strip()) == (0, f"{server.address} {ECHO}: SERVING"), err
    # Another name than the certificate's is refused.
    status, out, _ = await probe(*tls, *client, "--tls-server-name", "registry.helix.internal")
    assert status == 1, out


async def test_bad_tls_flags_exit_2_naming_the_flag(tmp_path):
    files = _pki_for_a_name(tmp_path, "oracle.helix.internal")
    ca, cert, key = (str(files[k]) for k in ("ca", "client_cert", "client_key"))
    missing = str(tmp_path / "missing.pem")
    cases = [
        (["--tls-ca", ca, "--tls-cert", cert], "--tls-cert needs --tls-key"),
        (["--tls-ca", ca, "--tls-key", key], "--tls-key needs --tls-cert"),
        (["--tls-cert", cert, "--tls-key", key], "--tls-cert needs --tls-ca"),
        (["--tls-server-name", "oracle.helix.internal"], "--tls-server-name needs --tls-ca"),
        (["--tls-ca", missing], "--tls-ca"),
        (["--tls-ca", ca, "--tls-cert", missing, "--tls-key", key], "--tls-cert"),
        (["--tls-ca", ca, "--tls-cert", cert, "--tls-key", str(tmp_path)], "--tls-key"),
        (["--tls-ca", ca, "--tls-server-name", "no such host"], "--tls-server-name"),
    ]
    for flags, named in cases:
        status, out, err = await probe("--address", "127.0.0.1:1", *flags)
        assert status == 2, (flags, out, err)
        assert named in err, (flags, err)
