"""`--store etcd://host:port[,host:port...]`: parsing it, and the gRPC target it becomes.

Pure (no I/O, no grpc). Several endpoints must be IP literals of one family: they become one
`ipv4:`/`ipv6:` target that grpc balances over itself; a single endpoint may be a host name,
whose DNS answer may itself hold several addresses (a Kubernetes headless service).
"""

from __future__ import annotations

import ipaddress
import re

SCHEME = "etcd://"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def parse_store_url(url: str) -> list[str]:
    """The endpoints (`host:port`, IPv6 as `[addr]:port`) of an `etcd://` store URL.

    ValueError naming what is wrong: another scheme, credentials, a path or query (TLS and
    credentials are options of their own, never part of a URL that ends up in logs), an empty
    or duplicate endpoint, a missing or bad port, a bad host.
    """
    if not url.startswith(SCHEME):
        raise ValueError(f"store URL {url!r} must start with {SCHEME} (etcd://host:port[,...])")
    rest = url[len(SCHEME) :]
    for char, what in (
        ("@", "credentials"),
        ("/", "a path"),
        ("?", "a query"),
        ("#", "a fragment"),
    ):
        if char in rest:
            raise ValueError(
                f"store URL {url!r} has {what}: give only etcd://host:port[,host:port...] "
                "(user, password and TLS are separate options)"
            )
    if not rest:
        raise ValueError(f"store URL {url!r} names no endpoint (etcd://host:port[,...])")
    endpoints = [check_endpoint(part) for part in rest.split(",")]
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint in seen:
            raise ValueError(f"store URL {url!r} names endpoint {endpoint} twice")
        seen.add(endpoint)
    return endpoints


def check_endpoint(endpoint: str) -> str:
    """`endpoint` (`host:port`, `[v6]:port`) normalised, or ValueError saying what is wrong."""
    if not endpoint:
        raise ValueError("empty etcd endpoint (a stray comma?): expected host:port")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        raise ValueError(f"etcd endpoint {endpoint!r} has no port: expected host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"etcd endpoint {endpoint!r}: port {port!r} is not within 1..65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"etcd endpoint {endpoint!r}: unclosed [ around an IPv6 address")
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"etcd endpoint {endpoint!r}: {host} is not an IPv6 address") from None
        return f"[{address.compressed}]:{int(port)}"
    if ":" in host:
        raise ValueError(
            f"etcd endpoint {endpoint!r}: write an IPv6 address in brackets, [addr]:port"
        )
    if not _HOSTNAME.match(host):
        raise ValueError(
            f"etcd endpoint {endpoint!r}: {host!r} is not a valid host name or address"
        )
    return f"{host}:{int(port)}"


def _address(endpoint: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def grpc_target(endpoints: list[str]) -> str:
    """One grpc target over every endpoint: `ipv4:a:p,b:p` / `ipv6:[a]:p,[b]:p` for IP
    literals, `dns:///host:port` for one host name."""
    checked = [check_endpoint(e) for e in endpoints]
    if not checked:
        raise ValueError("no etcd endpoint given")
    addresses = [_address(e) for e in checked]
    if len(checked) == 1 and addresses[0] is None:
        return f"dns:///{checked[0]}"
    if any(a is None for a in addresses):
        raise ValueError(
            f"etcd endpoints {checked}: several endpoints must be IP addresses (a host name "
            "must be the only endpoint; its DNS may give several addresses)"
        )
    versions = {a.version for a in addresses if a is not None}
    if len(versions) > 1:
        raise ValueError(f"etcd endpoints {checked} mix IPv4 and IPv6 addresses: use one family")
    return f"ipv{versions.pop()}:" + ",".join(checked)
