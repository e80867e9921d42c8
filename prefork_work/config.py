"""Configuration: one table of settings drives loading, validation and the sample file.

Each setting is declared once (TOML path, type, default, doc, check). Unknown sections or
keys, wrong types and bad values raise ConfigError naming the file and the key; the CLI
prints that one line and exits 78 (EX_CONFIG). A test checks that ``conf/work.toml``
mentions every setting with its real default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefork_work.errors import ConfigError
from prefork_work.keys import has_hash_tag
from prefork_work.redis_url import (
    redact_url,
    url_database,
    url_has_password,
    url_options,
    url_problem,
    verification_off,
)


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    kind: type
    default: Any
    doc: str
    check: Callable[[Any], str | None] = lambda value: None
    # how a bad value is quoted in the error (redis.url: without its password)
    show: Callable[[Any], str] = repr

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


# supervisor/scoreboard.py MAX_SLOTS is 256 (config may not import supervisor; a test keeps the
# two in step): a reload runs the old and the new generation side by side, so each gets half.
MAX_CONCURRENCY = 128


def _concurrency(value: int) -> str | None:
    if value < 0:
        return "must be 0 or more"
    if value > MAX_CONCURRENCY:
        return (f"must be at most {MAX_CONCURRENCY} (the scoreboard holds {2 * MAX_CONCURRENCY} "
                "children: the old and the new generation during a reload)")
    return None


# supervisor/scoreboard.py MAX_SUB_SLOTS: one scoreboard sub-slot per job a child runs at once
MAX_JOBS_PER_CHILD = 1000


def _jobs_per_child(value: int) -> str | None:
    if not 1 <= value <= MAX_JOBS_PER_CHILD:
        return f"must be from 1 to {MAX_JOBS_PER_CHILD}"
    return None


def _app_spec(value: str) -> str | None:
    pattern = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"
    return None if re.fullmatch(pattern, value) else 'must look like "package.module:attribute"'


def _show_url(value: Any) -> str:
    return repr(redact_url(value)) if isinstance(value, str) else "a " + type(value).__name__


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(repr(c) for c in choices)

    return check


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('must be "HOST:PORT", e.g. "127.0.0.1:5040"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError('needs a host: "127.0.0.1:5040" (":5040" would listen everywhere)')
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def web_access_problem(listen: str, token: str, read_only: bool) -> str | None:
    """Why the web app must not start on ``listen``, or None. Off loopback, anyone who can
    reach the port could change jobs: changes need a token, or must be switched off."""
    host, _ = parse_listen(listen)
    if is_loopback(host) or token or read_only:
        return None
    return (f"web.listen: {listen!r} is not a loopback address and changes would be open to "
            "anyone who can reach it: set [web] token (or PREFORK_WORK_WEB_TOKEN), or "
            "[web] read_only = true")


def _listen(value: str) -> str | None:
    if value == "":
        return None
    try:
        parse_listen(value)
    except ValueError as err:
        return str(err)
    return None


def _namespace(value: str) -> str | None:
    return "must not contain spaces" if " " in value else None


SETTINGS: tuple[Setting, ...] = (
    Setting("redis", "url", str, "", "Redis URL (redis://, rediss://, unix://); percent-encode / ? # @ in a user name or password (%2F %3F %23 %40); empty: start an embedded redis-server under server.state_dir", url_problem, _show_url),
    Setting("redis", "cluster", bool, False, "true: url names a node of a Redis Cluster (the namespace then needs a {hash tag})"),
    Setting("redis", "socket_timeout", float, 10.0, "seconds any Redis command may take before it counts as a failure", _positive),
    Setting("redis", "password_file", str, "", "file holding the Redis password (one line), instead of one in url; relative: to $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when set, else to this file"),
    Setting("redis", "tls_ca_file", str, "", "rediss://: PEM file of the CA(s) that sign the server's certificate; empty: the system's CAs (relative paths as for password_file)"),
    Setting("redis", "tls_cert_file", str, "", "rediss://: PEM client certificate, for servers that ask for one (tls-auth-clients)"),
    Setting("redis", "tls_key_file", str, "", "rediss://: PEM private key of tls_cert_file (empty: the key is in tls_cert_file)"),
    Setting("server", "namespace", str, "work", "key prefix shared with gocraft/work services; use {braces} for Redis Cluster", _namespace),
    Setting("server", "app", str, "prefork_work.examples.hello:app", "the job module's App, as module:attribute", _app_spec),
    Setting("server", "python_path", list, [], "directories put in front of sys.path before importing the app (relative to this file)"),
    Setting("server", "concurrency", int, 0, f"number of child processes, at most {MAX_CONCURRENCY}; 0 means one per CPU (up to {MAX_CONCURRENCY})", _concurrency),
    Setting("server", "shutdown_timeout", float, 30.0, "seconds a graceful stop (SIGTERM) waits for running jobs before killing and requeuing them", _positive),
    Setting("server", "hard_timeout_grace", float, 5.0, "seconds between the catchable signal and SIGKILL for a job past its hard timeout", _positive),
    Setting("server", "max_crashes", int, 3, "deaths of a job's process before the job goes to the dead set", _positive),
    Setting("server", "max_jobs_per_child", int, 0, "recycle a child after this many jobs (with 10% jitter); 0 = never", _non_negative),
    Setting("server", "max_memory_per_child", int, 0, "recycle a child whose RSS exceeds this many MiB; 0 = never", _non_negative),
    Setting("server", "jobs_per_child", int, 1, f"jobs each child runs at once (1 to {MAX_JOBS_PER_CHILD}): async def jobs on an event loop, sync jobs in a thread pool of this size; 1 = one job at a time", _jobs_per_child),
    Setting("server", "max_payload_bytes", int, 16 * 1024 * 1024, "a job payload larger than this many bytes is never run: it goes to the dead set with an error; 0 = no limit", _non_negative),
    Setting("server", "status_ttl", int, 86400, "seconds a finished job's status record is kept (job types registered with status=True)", _positive),
    Setting("server", "metrics", bool, True, "count job outcomes and durations in Redis for /metrics (false saves their small cost)"),
    Setting("server", "state_dir", str, "", "directory for the embedded Redis's data; empty: $STATE_DIRECTORY (systemd) or ./var next to this file"),
    Setting("web", "listen", str, "", 'HOST:PORT of the dashboard, JSON API and /metrics, run by the master as one more supervised process; empty: off ("prefork-work -c FILE web" runs it alone)', _listen),
    Setting("web", "token", str, "", "bearer token every POST/DELETE must send (Authorization: Bearer ...); $PREFORK_WORK_WEB_TOKEN overrides it; required off loopback unless read_only"),
    Setting("web", "read_only", bool, False, "true: the web app changes nothing (every POST/DELETE is refused)"),
    Setting("log", "format", str, "auto", '"json" (one object per line), "console" (readable), or "auto" (console on a terminal)', _one_of("json", "console", "auto")),
    Setting("log", "level", str, "info", "debug, info, warning or error", _one_of("debug", "info", "warning", "error")),
)


@dataclass(frozen=True)
class RedisConfig:
    url: str
    socket_timeout: float
    cluster: bool = False
    # read from redis.password_file at load; kept out of repr so no log or traceback shows it
    password: str | None = field(default=None, repr=False)
    password_file: str = ""  # resolved paths, "" when not set
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass(frozen=True)
class ServerConfig:
    namespace: str
    app: str
    python_path: tuple[str, ...]
    concurrency: int
    shutdown_timeout: float
    hard_timeout_grace: float
    max_crashes: int
    max_jobs_per_child: int
    max_memory_per_child: int
    state_dir: str
    max_payload_bytes: int = 16 * 1024 * 1024
    jobs_per_child: int = 1
    status_ttl: int = 86400
    metrics: bool = True


@dataclass(frozen=True)
class LogConfig:
    format: str
    level: str


@dataclass(frozen=True)
class WebConfig:
    listen: str = ""
    token: str = ""  # $PREFORK_WORK_WEB_TOKEN when set, else [web] token
    read_only: bool = False


@dataclass(frozen=True)
class Config:
    redis: RedisConfig
    server: ServerConfig
    log: LogConfig
    path: Path | None = None
    web: WebConfig = WebConfig()


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", list: "a list of strings", bool: "true or false"}[kind]


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    kind = setting.kind
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is list and ok and not all(isinstance(v, str) for v in value):
        ok = False
    if not ok:
        raise ConfigError(f"{where}: {setting.path}: expected {_type_name(kind)}, got {setting.show(value)}")
    problem = setting.check(value)
    if problem:
        raise ConfigError(f"{where}: {setting.path}: {problem}, got {setting.show(value)}")
    return value


def build_config(data: dict[str, Any], where: str = "config", base: Path | None = None) -> Config:
    """Validate parsed TOML into a Config; errors name ``where`` and the key."""
    known = {s.section for s in SETTINGS}
    for section, table in data.items():
        if section not in known:
            raise ConfigError(f"{where}: unknown section [{section}] (known: {', '.join(sorted(known))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        keys = {s.key for s in SETTINGS if s.section == section}
        for key in table:
            if key not in keys:
                raise ConfigError(f"{where}: unknown key {section}.{key} (known: {', '.join(sorted(keys))})")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        table = data.get(setting.section, {})
        raw = table[setting.key] if setting.key in table else setting.default
        values[setting.path] = _coerce(setting, raw, where)
    if values["redis.cluster"]:
        if not values["redis.url"].startswith(("redis://", "rediss://")):
            raise ConfigError(
                f"{where}: redis.cluster: needs a redis:// or rediss:// url naming a cluster node"
            )
        if url_database(values["redis.url"]) != 0:
            raise ConfigError(f"{where}: redis.url: a Redis Cluster has database 0 only, "
                              f"got {_show_url(values['redis.url'])}")
        if not has_hash_tag(values["server.namespace"]):
            raise ConfigError(
                f"{where}: server.namespace: with redis.cluster every key must be in one slot; "
                f"use a hash tag, e.g. \"{{{values['server.namespace']}}}\""
            )
    web = WebConfig(values["web.listen"],
                    os.environ.get("PREFORK_WORK_WEB_TOKEN") or values["web.token"],
                    values["web.read_only"])
    if web.listen:
        problem = web_access_problem(web.listen, web.token, web.read_only)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    base = base or Path.cwd()
    redis_files = _redis_files(values, where, base)
    state_dir = values["server.state_dir"] or os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "var"
    return Config(
        redis=RedisConfig(values["redis.url"], values["redis.socket_timeout"], values["redis.cluster"],
                          **redis_files),
        server=ServerConfig(
            namespace=values["server.namespace"],
            app=values["server.app"],
            python_path=tuple(str((base / p).resolve()) for p in values["server.python_path"]),
            concurrency=values["server.concurrency"] or min(os.cpu_count() or 1, MAX_CONCURRENCY),
            shutdown_timeout=values["server.shutdown_timeout"],
            hard_timeout_grace=values["server.hard_timeout_grace"],
            max_crashes=values["server.max_crashes"],
            max_jobs_per_child=values["server.max_jobs_per_child"],
            max_memory_per_child=values["server.max_memory_per_child"],
            state_dir=str((base / state_dir).resolve()),
            max_payload_bytes=values["server.max_payload_bytes"],
            jobs_per_child=values["server.jobs_per_child"],
            status_ttl=values["server.status_ttl"],
            metrics=values["server.metrics"],
        ),
        log=LogConfig(values["log.format"], values["log.level"]),
        web=web,
    )


# A password is a line of text; anything this large is the wrong file.
PASSWORD_FILE_MAX = 64 * 1024
_URL_TLS_OPTION = {"tls_ca_file": "ssl_ca_certs", "tls_cert_file": "ssl_certfile",
                   "tls_key_file": "ssl_keyfile"}


def _secret_path(value: str, base: Path) -> Path:
    """Where a relative password/TLS file is: systemd's LoadCredential= puts credentials in
    $CREDENTIALS_DIRECTORY (the service's, 0400); outside systemd (an admin's CLI) the same
    name is looked up next to the config file."""
    path = Path(value)
    if path.is_absolute():
        return path
    credentials = os.environ.get("CREDENTIALS_DIRECTORY", "")
    return ((Path(credentials) if credentials else base) / path).resolve()


def _read_secret_file(path: Path, where: str, key: str, limit: int = PASSWORD_FILE_MAX) -> bytes:
    """Up to ``limit`` bytes of the file; ConfigError naming ``key`` if it cannot be read or
    holds more (a TLS file is only probed: limit 0 reads one byte, any size is fine)."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as err:
        raise ConfigError(f"{where}: {key}: cannot read {path}: {err.strerror or err}") from None
    if limit and len(data) > limit:
        raise ConfigError(f"{where}: {key}: {path} is larger than {limit // 1024} KiB; "
                          "it should hold the password alone")
    return data


def _redis_files(values: dict[str, Any], where: str, base: Path) -> dict[str, Any]:
    """redis.password_file and redis.tls_*: checked against the url, resolved and read now,
    so that --check catches a missing or unreadable file and a running server never
    re-reads a secret (systemd may have removed $CREDENTIALS_DIRECTORY's copy)."""
    url = values["redis.url"]
    found: dict[str, Any] = {}
    if values["redis.password_file"]:
        key = "redis.password_file"
        if not url:
            raise ConfigError(f"{where}: {key}: needs a redis.url (the embedded Redis has no password)")
        if url_has_password(url):
            raise ConfigError(f"{where}: {key}: redis.url holds a password too; keep one of them "
                              "(the file is the safer place)")
        path = _secret_path(values[key], base)
        raw = _read_secret_file(path, where, key)
        try:
            password = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: {key}: {path} is not UTF-8 text") from None
        if not password:
            raise ConfigError(f"{where}: {key}: {path} is empty")
        if "\n" in password or "\r" in password:
            raise ConfigError(f"{where}: {key}: {path} holds more than one line")
        found["password"] = password
        found["password_file"] = str(path)
    options = url_options(url) if url else {}
    for name, url_option in _URL_TLS_OPTION.items():
        key = f"redis.{name}"
        if not values[key]:
            continue
        if not url.startswith("rediss://"):
            raise ConfigError(f"{where}: {key}: needs a rediss:// url (TLS)")
        if url_option in options:
            raise ConfigError(f"{where}: {key}: redis.url sets {url_option} too; keep one of them")
        path = _secret_path(values[key], base)
        _read_secret_file(path, where, key, limit=0)
        found[name] = str(path)
    if values["redis.tls_key_file"] and not values["redis.tls_cert_file"]:
        raise ConfigError(f"{where}: redis.tls_key_file: needs redis.tls_cert_file (the certificate it signs for)")
    _load_tls_files(found, options.get("ssl_password"), where)
    return found


def _load_tls_files(found: dict[str, Any], key_password: str | None, where: str) -> None:
    # Load them as the connection will, so a file that is not PEM, or a key that does not
    # match its certificate, fails --check rather than every connection. An encrypted key
    # without ?ssl_password= must fail here, not make OpenSSL prompt on the terminal.
    context = ssl.create_default_context()
    try:
        if "tls_ca_file" in found:
            key = "redis.tls_ca_file"
            context.load_verify_locations(cafile=found["tls_ca_file"])
        if "tls_cert_file" in found:
            key = "redis.tls_cert_file"
            context.load_cert_chain(found["tls_cert_file"], found.get("tls_key_file"),
                                    password=lambda: (key_password or "").encode())
    except (ssl.SSLError, OSError, ValueError) as err:
        raise ConfigError(f"{where}: {key}: not a usable PEM file: {getattr(err, 'reason', None) or err}") from None


def config_warnings(config: Config) -> list[str]:
    """What the operator should fix though the server can run: said once at start (a
    structlog warning) and by --check and the CLI (on stderr)."""
    warnings = []
    reason = verification_off(config.redis.url)
    if reason:
        warnings.append(f"redis.url: TLS certificate verification is off ({reason})")
    secret_files = []
    if config.path is not None and url_has_password(config.redis.url):
        secret_files.append((config.path, "this config file holds a Redis password",
                             "move it to redis.password_file, or chmod 0600"))
    if config.redis.password_file:
        secret_files.append((Path(config.redis.password_file), "redis.password_file",
                             "chmod 0600 (or 0400)"))
    for path, what, fix in secret_files:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & 0o044:
            who = " and ".join(w for bit, w in ((0o040, "group"), (0o004, "others")) if mode & bit)
            warnings.append(f"{path}: {what} and is readable by {who} "
                            f"(mode {mode & 0o777:04o}): {fix}")
    return warnings


def text_line(file: Path, offset: int) -> int:
    """The line number of byte ``offset`` of ``file``, for an error message."""
    try:
        return file.read_bytes()[:offset].count(b"\n") + 1
    except OSError:
        return 0


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; relative paths in it resolve against its directory."""
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except OSError as err:
        raise ConfigError(f"{file}: cannot read config: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        line = text_line(file, err.start)
        raise ConfigError(f"{file}: not UTF-8 (byte 0x{err.object[err.start]:02x} on line {line}); "
                          "save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file}: invalid TOML: {err}") from None
    config = build_config(data, str(file), file.resolve().parent)
    return replace(config, path=file.resolve())
