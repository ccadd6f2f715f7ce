"""Configuration: one frozen dataclass per service, filled from flags and `HELIX_*` variables.

Precedence is flag, then environment, then the field's default. Every field declares its
help text in `metadata`; the flag is `--field-name` and the variable `HELIX_FIELD_NAME`.
Values are parsed by the field's type (durations accept `500ms`, `10s`, `2m`, `1h`; sizes
accept `KiB`/`MiB`/`GiB` suffixes) and each class validates itself in `__post_init__`,
raising `ConfigError` that names the setting, its source and the rule broken.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import ipaddress
import os
import re
import shlex
import sys
import types
import typing
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

ENV_PREFIX = "HELIX_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


class Duration(float):
    """Seconds, written as a number or with a unit (`ms`, `s`, `m`, `h`)."""


class ByteSize(int):
    """Bytes, written as a number or with a unit (`KiB`, `MiB`, `GiB`)."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, None: 1}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_duration(text: str) -> float:
    """Parse `1.5`, `250ms`, `10s`, `2m` or `1h` into seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 250ms, 10s, 2m, 1h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_duration_setting(name: str, text: str) -> float:
    """Parse a duration given for setting `name`, raising `ConfigError` that names it."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def parse_size(text: str) -> int:
    """Parse `1048576`, `512KiB`, `4MiB` or `1GiB` into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size in bytes (examples: 65536, 512KiB, 4MiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """`seconds` as a flag would take it: the largest unit that holds it whole (`1h`,
    `2m`, `10s`, `250ms`), else seconds with a fraction (`1.5s`)."""
    for unit in ("h", "m", "s", "ms"):
        count = seconds / _DURATION_UNITS[unit]
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """`size` bytes as a flag would take it: `16MiB`, `512KiB`, else the plain number."""
    for unit in ("GiB", "MiB", "KiB"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def format_setting(value: Any) -> str:
    """A setting's value in the syntax its flag and variable take (for --help)."""
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, ByteSize):
        return format_size(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"  # 500, not 500.0
    return str(value) if value != "" else "''"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


_PARSERS: dict[Any, Callable[[str], Any]] = {
    str: str,
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
    Path: lambda text: Path(text).expanduser(),
    Duration: parse_duration,
    ByteSize: parse_size,
}


def _parser_for(annotation: Any) -> tuple[Callable[[str], Any], bool]:
    """The text parser for a field type and whether the field accepts `None`."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) != len(typing.get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"unsupported config field type {annotation!r}")
        annotation = args[0]
    try:
        return _PARSERS[annotation], optional
    except KeyError:
        raise TypeError(f"unsupported config field type {annotation!r}") from None


def setting(default: Any, help: str, *, flag: str | None = None) -> Any:
    """Declare a config field with its default and help text (and optionally its flag)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag})


def env_name(field_name: str) -> str:
    """The environment variable for a field: `HELIX_` + the name in upper case."""
    return ENV_PREFIX + field_name.upper()


def flag_name(field: dataclasses.Field[Any]) -> str:
    """The command-line flag for a field: `--field-name` unless declared otherwise."""
    declared = field.metadata.get("flag")
    return str(declared) if declared else "--" + field.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per field of config class `cls`; unset flags stay `None`."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        _, optional = _parser_for(hints[field.name])
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        shown = "unset" if default is None and optional else format_setting(default)
        parser.add_argument(
            flag_name(field),
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=f"{field.metadata.get('help', '')} [env {env_name(field.name)}; default {shown}]",
        )


def load(
    cls: type[T],
    flags: Mapping[str, Any] | argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build config `cls` from flags (strings or typed values), then `env`, then defaults.

    Raises `ConfigError` naming the flag or variable whose value could not be parsed, or
    the rule the assembled configuration breaks.
    """
    if isinstance(flags, argparse.Namespace):
        flags = vars(flags)
    flags = flags or {}
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw: Any = flags.get(field.name)
        source = flag_name(field)
        if raw is None and env_name(field.name) in env:
            raw, source = env[env_name(field.name)], env_name(field.name)
        if raw is not None:
            values[field.name] = _value(hints[field.name], raw, source)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _value(hint: Any, raw: Any, source: str) -> Any:
    """One setting's value from a flag or variable `source`: a string is parsed for the
    field's type hint (empty, "none" or "off" mean None where None is allowed); a typed
    value (from code) must already have the field's type."""
    parse, optional = _parser_for(hint)
    if isinstance(raw, str):
        if optional and raw.strip().lower() in ("", "none", "off"):
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    expected = typing.get_args(hint) or (hint,)
    accepted = tuple(t for t in expected if isinstance(t, type) and t is not type(None))
    if accepted and not isinstance(raw, accepted):
        raise ConfigError(f"{source}: {raw!r} is not a {accepted[0].__name__}")
    return raw


def require(condition: bool, name: str, rule: str) -> None:
    """Raise `ConfigError` for setting `name` (flag and variable) unless `condition` holds."""
    if not condition:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} / {env_name(name)}: {rule}")


def _valid_host(host: str) -> bool:
    if host in ("localhost", "[::]", "[::1]"):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host))
    return True


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What every Helix gRPC server needs: address, limits, keepalive, drain, metrics."""

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(50051, "gRPC port; 0 picks a free port")
    metrics_port: int | None = setting(None, "HTTP port for Prometheus /metrics; 0 picks one")
    metrics_host: str = setting("127.0.0.1", "address the /metrics endpoint listens on")
    grace_period: Duration = setting(Duration(10.0), "how long in-flight calls may finish")
    max_receive_message_bytes: ByteSize = setting(ByteSize(16 * 1024**2), "largest request")
    max_send_message_bytes: ByteSize = setting(ByteSize(16 * 1024**2), "largest response")
    max_concurrent_rpcs: int = setting(
        1024, "unary calls in flight at once; more get RESOURCE_EXHAUSTED"
    )
    max_concurrent_streams: int = setting(
        1024, "streaming calls (server, client, bidi) in flight at once, apart from unary calls"
    )
    concurrent_share_per_principal: float = setting(
        0.25, "fraction of each of those two limits one principal may hold (1: no share)"
    )
    stream_first_message_timeout: Duration = setting(
        Duration(10.0), "a client or bidi stream must send its first message within this"
    )
    stream_write_timeout: Duration = setting(
        Duration(30.0), "a stream whose client reads nothing for this long is cancelled"
    )
    keepalive_time: Duration = setting(Duration(60.0), "ping an idle connection this often")
    keepalive_timeout: Duration = setting(Duration(20.0), "drop a connection after this silence")
    keepalive_min_time: Duration = setting(
        Duration(30.0), "shortest client ping interval the server tolerates"
    )
    log_level: str = setting("INFO", "DEBUG (every call), INFO (failed calls), WARNING, ERROR")
    event_loop: str = setting("uvloop", "uvloop (faster, where installed) or asyncio")
    auth_issuer: str = setting("helix", "required `iss` of every token")
    auth_audience: str = setting("helix", "required `aud` of every token")
    auth_leeway: Duration = setting(Duration(10.0), "clock skew allowed on exp and nbf")
    auth_hs256_dir: Path | None = setting(None, "directory of <kid>.hs256 secrets")
    auth_public_keys: str = setting("", "EdDSA/RS256 PEM public keys: [kid=]file.pem,...")
    auth_jwks_file: Path | None = setting(None, "JWKS file of public keys, re-read on change")
    auth_reload_interval: Duration = setting(Duration(5.0), "how often key files are checked")
    auth_token_cache_size: int = setting(10_000, "verified tokens kept until they expire")
    rate_read: float = setting(500.0, "read calls per second per principal")
    rate_write: float = setting(100.0, "write calls per second per principal")
    rate_data: float = setting(200.0, "Generate/Verify calls per second per principal")
    rate_burst: Duration = setting(Duration(2.0), "a bucket holds this many seconds of calls")
    rate_limit_principals: int = setting(10_000, "principals whose buckets are remembered")
    tls_cert_file: Path | None = setting(None, "server certificate chain (PEM) to serve TLS")
    tls_key_file: Path | None = setting(None, "private key (PEM) of the server certificate")
    tls_client_ca_file: Path | None = setting(
        None, "CA bundle (PEM); when set, clients must present a certificate it signed"
    )

    def __post_init__(self) -> None:
        require(_valid_host(self.host), "host", f"{self.host!r} is not a host name or IP")
        require(0 <= self.port <= 65535, "port", f"{self.port} is not in 0..65535")
        require(
            self.metrics_port is None or 0 <= self.metrics_port <= 65535,
            "metrics_port",
            f"{self.metrics_port} is not in 0..65535",
        )
        require(_valid_host(self.metrics_host), "metrics_host", "not a host name or IP")
        require(0 <= self.grace_period <= 3600, "grace_period", "must be within 0s..1h")
        for name in ("max_receive_message_bytes", "max_send_message_bytes"):
            size = getattr(self, name)
            require(1024 <= size <= 1024**3, name, f"{size} is not within 1KiB..1GiB")
        require(
            1 <= self.max_concurrent_rpcs <= 1_000_000,
            "max_concurrent_rpcs",
            f"{self.max_concurrent_rpcs} is not in 1..1000000",
        )
        require(
            1 <= self.max_concurrent_streams <= 1_000_000,
            "max_concurrent_streams",
            f"{self.max_concurrent_streams} is not in 1..1000000",
        )
        share = self.concurrent_share_per_principal
        require(0 < share <= 1, "concurrent_share_per_principal", f"{share} is not within (0, 1]")
        for name in ("stream_first_message_timeout", "stream_write_timeout"):
            require(0.01 <= getattr(self, name) <= 3600, name, "must be within 10ms..1h")
        require(self.keepalive_time >= 1, "keepalive_time", "must be at least 1s")
        require(self.keepalive_timeout >= 1, "keepalive_timeout", "must be at least 1s")
        require(
            1 <= self.keepalive_min_time <= 60,
            "keepalive_min_time",
            "must be within 1s..60s (Helix clients ping idle connections every 60s)",
        )
        require(
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log_level",
            f"{self.log_level!r} is not DEBUG, INFO, WARNING or ERROR",
        )
        require(
            self.event_loop in ("uvloop", "asyncio"),
            "event_loop",
            f"{self.event_loop!r} is not uvloop or asyncio",
        )
        require(bool(self.auth_issuer.strip()), "auth_issuer", "must not be empty")
        require(bool(self.auth_audience.strip()), "auth_audience", "must not be empty")
        require(0 <= self.auth_leeway <= 300, "auth_leeway", "must be within 0s..5m")
        require(self.auth_reload_interval >= 0.1, "auth_reload_interval", "must be at least 100ms")
        require(
            1 <= self.auth_token_cache_size <= 10_000_000,
            "auth_token_cache_size",
            "must be within 1..10000000",
        )
        for name in ("rate_read", "rate_write", "rate_data"):
            value = getattr(self, name)
            require(0 < value <= 1e7 and value == value, name, f"{value} is not within (0, 1e7]")
        require(0.001 <= self.rate_burst <= 3600, "rate_burst", "must be within 1ms..1h")
        require(
            1 <= self.rate_limit_principals <= 10_000_000,
            "rate_limit_principals",
            "must be within 1..10000000",
        )
        require(
            (self.tls_cert_file is None) == (self.tls_key_file is None),
            "tls_key_file",
            "TLS needs both a certificate file and a key file",
        )
        require(
            self.tls_client_ca_file is None or self.tls_cert_file is not None,
            "tls_client_ca_file",
            "mutual TLS needs the server's own certificate and key too",
        )
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_jwks_file"):
            path = getattr(self, name)
            require(path is None or path.is_file(), name, f"{path} is not a readable file")

    @property
    def address(self) -> str:
        """The `host:port` to bind, with IPv6 hosts bracketed."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


def run_loop(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Run `main` on uvloop when asked for and installed, else on asyncio's own loop."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/helix`, else `~/.local/share/helix`, else `./helix-data` (no home)."""
    base = os.environ.get("XDG_DATA_HOME")
    if base:
        return Path(base) / "helix"
    try:
        return Path.home() / ".local" / "share" / "helix"
    except RuntimeError:
        return Path("helix-data")


KEYS_DIR = "keys"  # the HS256 signing secrets under a data dir
LOCK_FILE = "helix.lock"  # held by the one process that serves a data dir


@dataclasses.dataclass(frozen=True)
class DataDirConfig(ServerConfig):
    """A server that keeps its state under one data directory (`helix up`, `helix registry
    serve`): its SQLite files, and the HS256 secret it creates on first start in
    `DATA_DIR/keys` (unless --auth-hs256-dir names another place). Commands mint tokens for
    it from the same place (`key_dir_of`)."""

    data_dir: Path = dataclasses.field(
        default_factory=default_data_dir,
        metadata={"help": "where the server keeps its state and keys", "flag": None},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(str(self.data_dir) not in ("", "."), "data_dir", "must name a directory")
        require(
            not self.data_dir.exists() or self.data_dir.is_dir(),
            "data_dir",
            f"{self.data_dir} exists and is not a directory",
        )

    @property
    def key_dir(self) -> Path:
        """Where the HS256 signing secrets are: --auth-hs256-dir, else DATA_DIR/keys."""
        return self.auth_hs256_dir or self.data_dir / KEYS_DIR


@dataclasses.dataclass(frozen=True)
class DashboardConfig(ServerConfig):
    """A server that can also serve the web dashboard (helix.dashboard) over HTTP, from the
    same process and event loop, talking to the services through their gRPC API."""

    dashboard_port: int | None = setting(
        None, "HTTP port of the web dashboard (docs/dashboard.md); 0 picks one [default: off]"
    )
    dashboard_host: str = setting("127.0.0.1", "address the web dashboard listens on")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.dashboard_port is None or 0 <= self.dashboard_port <= 65535,
            "dashboard_port",
            f"{self.dashboard_port} is not in 0..65535",
        )
        require(_valid_host(self.dashboard_host), "dashboard_host", "not a host name or IP")


@dataclasses.dataclass(frozen=True)
class StoreConfig(ServerConfig):
    """Where a server keeps its shared state: the embedded SQLite files (the default), or an
    etcd cluster that several registry and orchestrator processes share."""

    store: str = setting(
        "sqlite",
        "sqlite (files under the data dir), or etcd://HOST:PORT[,HOST:PORT...] (an etcd "
        "cluster shared by every replica)",
    )
    etcd_prefix: str = setting("/helix", "key prefix of Helix's state in etcd")
    etcd_user: str | None = setting(None, "etcd user (with --etcd-password-file)")
    etcd_password_file: Path | None = setting(None, "file holding the etcd user's password")
    etcd_ca_file: Path | None = setting(None, "CA certificates (PEM) that verify etcd's TLS")
    etcd_cert_file: Path | None = setting(None, "client certificate (PEM) for etcd's TLS")
    etcd_key_file: Path | None = setting(None, "its private key (PEM)")
    etcd_server_name: str | None = setting(None, "name etcd's certificates must carry")
    etcd_timeout: Duration = setting(Duration(5.0), "deadline of each call to etcd")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.store == "sqlite" or self.store.startswith("etcd://"),
            "store",
            f"{self.store!r} is neither sqlite nor etcd://HOST:PORT[,HOST:PORT...]",
        )
        require(
            (self.etcd_user is None) == (self.etcd_password_file is None),
            "etcd_user",
            "--etcd-user and --etcd-password-file go together",
        )
        require(
            (self.etcd_cert_file is None) == (self.etcd_key_file is None),
            "etcd_cert_file",
            "--etcd-cert-file and --etcd-key-file go together",
        )
        require(self.etcd_prefix.startswith("/"), "etcd_prefix", "must start with /")
        require(self.etcd_timeout > 0, "etcd_timeout", "must be positive")

    @property
    def uses_etcd(self) -> bool:
        return self.store != "sqlite"


class DataDirBusy(OSError):
    """Another process serves this data dir (it holds DATA_DIR/helix.lock); the message
    names the data dir and that process."""


class DataDirLock:
    """An exclusive `flock` on DATA_DIR/helix.lock: one server process per data dir.

    Two servers on one data dir would each keep the registry's state in memory and
    overwrite each other's revisions in SQLite. The lock is taken before any state is
    opened (`take`, by `prepare_embedded` and `prepare_registry`) and handed to the server
    built on that data dir (`claim`, by `create_server`), which releases it when it stops.
    The kernel releases it when its process ends, however it ends (kill -9 included), so
    no stale lock outlives a crash; the file itself stays and names its last holder (pid
    and command line) for the message a second process gets. Its descriptor is not
    inherited by child processes.
    """

    # Taken by `take` and not yet claimed by a server, by resolved data dir.
    _unclaimed: ClassVar[dict[Path, DataDirLock]] = {}

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Lock `data_dir` (which must exist) now, or raise `DataDirBusy` at once."""
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(
                f"{data_dir} is in use by {_holder(path)}: one process per data dir "
                "(stop that process, or give this one another --data-dir)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({_command_line()})\n".encode())
        return cls(data_dir, fd)

    @classmethod
    def take(cls, data_dir: Path) -> DataDirLock:
        """Lock `data_dir` for the server this process is about to build on it; taking it
        again before a server claimed it returns the same lock."""
        key = data_dir.resolve()
        lock = cls._unclaimed.get(key)
        if lock is None or not lock.held:
            lock = cls._unclaimed[key] = cls.acquire(data_dir)
        return lock

    @classmethod
    def claim(cls, data_dir: Path) -> DataDirLock:
        """The lock `take` left for a server on `data_dir`, else a new one (`acquire`)."""
        lock = cls._unclaimed.pop(data_dir.resolve(), None)
        if lock is not None and lock.held:
            return lock
        return cls.acquire(data_dir)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Unlock (the file stays); safe to call twice."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _holder(path: Path) -> str:
    """Who holds the lock at `path`, as it wrote there (it may not have written yet)."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0][:300] if text else "another process"


def _command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else "?"


def key_dir_of(data_dir: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """The HS256 key dir of the local server whose data dir is `data_dir` (None: the
    HELIX_DATA_DIR variable, else the default), by the rule `DataDirConfig.key_dir`
    follows: HELIX_AUTH_HS256_DIR when set."""
    env = os.environ if env is None else env
    override = env.get(env_name("auth_hs256_dir"))
    if override:
        return Path(override).expanduser()
    base = data_dir or Path(env.get(env_name("data_dir")) or default_data_dir())
    return base.expanduser() / KEYS_DIR
