"""Check a ``[redis] url`` the way redis-py will read it, and show it without its secrets.

redis-py reads a URL lazily and leniently: a bad port raises a ValueError (with the text
that stood where the port should be, which for an unencoded ``/`` in a password is part of
the password) only when the first client is built, a database path that is not a number
is silently ignored, and an unknown query option becomes a keyword that the connection
class rejects at the first command. So the URL is checked whole at config load, and every
message shows it through :func:`redact_url`, which never prints any part of a password.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("redis://", "rediss://", "unix://")

# Query options redis-py reads from a URL that prefork-work leaves to the user.
TLS_OPTIONS = frozenset({
    "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
    "ssl_keyfile", "ssl_password", "ssl_min_version", "ssl_ciphers",
    "ssl_include_verify_flags", "ssl_exclude_verify_flags",
})
OTHER_OPTIONS = frozenset({"db", "username", "password", "socket_keepalive"})
SECRET_OPTIONS = frozenset({"password", "ssl_password"})
# Options prefork-work sets itself (a URL's value would override them: redis-py merges the
# URL's options over the caller's keywords), with the setting to use instead.
OWNED_OPTIONS = {
    "socket_timeout": "redis.socket_timeout",
    "socket_connect_timeout": "redis.socket_timeout",
    "timeout": "redis.socket_timeout",
    "retry_on_timeout": "nothing: prefork-work never repeats a command that may have run",
    "retry_on_error": "nothing: prefork-work never repeats a command that may have run",
    "health_check_interval": "nothing",
    "max_connections": "nothing",
    "client_name": "nothing: each process names its own connection",
    "protocol": "nothing: prefork-work speaks RESP2",
}
_FALSE = frozenset({"0", "F", "FALSE", "N", "NO", "OFF"})
_CERT_REQS = frozenset({"none", "optional", "required"})
_HOST = re.compile(r"[A-Za-z0-9._%:-]+")
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:ssl_)?password=).*$", re.S)
_ENCODE_HINT = ("percent-encode '/', '?', '#' and '@' in the user name and password "
                "(%2F, %3F, %23, %40)")


def redact_url(url: str) -> str:
    """``url`` fit to print: everything before the last ``@`` and every secret query value
    become ``***``. Works on malformed URLs too (it does not parse them)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    else:
        # No '@', so no user info, unless the user left out "@host": "redis://:secret"
        # reads as an empty host with the port "secret". Hide a port that is not a number.
        end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
        port = rest[:end].rpartition("]")[2].rpartition(":")
        if port[1] and not port[2].isdigit():
            rest = "***" + rest[end:]
    if "#" in rest:  # a '#' ends a URL: what follows may be the rest of a password
        rest = rest.partition("#")[0] + "#***"
    shown = f"{scheme}{sep}{rest}"
    return _SECRET_QUERY.sub(r"\1***", shown)


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` for redis-py, in words that quote none of it; None if fine.

    The empty string (the embedded Redis) is fine."""
    if url == "":
        return None
    if not url.startswith(SCHEMES):
        return 'must start with redis://, rediss:// or unix:// (or be "" for the embedded Redis)'
    scheme, rest = url.split("://", 1)
    authority_end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
    if "@" in rest[authority_end:]:
        return f"has an '@' after its host part: {_ENCODE_HINT}; write an '@' in a path as %40"
    if "#" in rest:
        return "has a '#', which ends a URL: write a '#' in a password as %23"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL (look at the host part, and [brackets] around an IPv6 address)"
    try:
        port = parts.port
    except ValueError:
        return "port must be a number from 1 to 65535"
    options, problem = _query_options(parts.query, scheme)
    if problem:
        return problem
    if scheme == "unix":
        if host or port is not None:
            return "a unix:// URL names a socket path, not a host: unix:///path/to/redis.sock"
        if not parts.path.startswith("/"):
            return "names no socket path: unix:///path/to/redis.sock"
    else:
        if port == 0:
            return "port must be a number from 1 to 65535"
        if not host:
            return f"names no host: {scheme}://[USER:PASSWORD@]HOST:PORT/DB"
        if not _HOST.fullmatch(host):
            return "host holds characters no host name has (spaces, quotes, ...)"
        path = unquote(parts.path)
        if not re.fullmatch(r"/?(\d{1,9})?", path):
            return "database (the path after the host) must be a number, e.g. /0"
        if path.strip("/") and "db" in options and int(path.strip("/")) != int(options["db"]):
            return "names two databases (the path and ?db=)"
    try:
        from redis.connection import parse_url

        parse_url(url)
    except Exception:  # whatever redis-py says may quote the password
        return "redis-py cannot read it"
    return None


def _query_options(query: str, scheme: str) -> tuple[dict[str, str], str | None]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in options:
            return options, f"query option {name!r} is given twice"
        options[name] = value
        if name in OWNED_OPTIONS:
            return options, (f"query option {name!r} is set by prefork-work "
                             f"(use {OWNED_OPTIONS[name]})")
        if name not in TLS_OPTIONS and name not in OTHER_OPTIONS:
            supported = ", ".join(sorted(TLS_OPTIONS | OTHER_OPTIONS))
            return options, f"unknown query option {name!r} (supported: {supported})"
        if name in TLS_OPTIONS and scheme != "rediss":
            return options, f"query option {name!r} needs a rediss:// url"
        if name == "db" and not re.fullmatch(r"\d{1,9}", value):
            return options, "query option 'db' must be a number"
        if name == "ssl_cert_reqs" and value.lower() not in _CERT_REQS:
            return options, "query option 'ssl_cert_reqs' must be none, optional or required"
        if name in ("ssl_min_version",) and not value.isdigit():
            return options, f"query option {name!r} must be a number"
    return options, None


def url_options(url: str) -> dict[str, str]:
    """The query options of a URL :func:`url_problem` accepted."""
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def url_has_password(url: str) -> bool:
    if not url:
        return False
    return bool(urlsplit(url).password) or bool(url_options(url).get("password"))


def verification_off(url: str) -> str | None:
    """Why a rediss:// URL does not fully verify the server's certificate, or None."""
    if not url.startswith("rediss://"):
        return None
    options = url_options(url)
    if options.get("ssl_cert_reqs", "required").lower() == "none":
        return (f"ssl_cert_reqs={options['ssl_cert_reqs']}: the server's certificate is not "
                "verified, so anyone on the path can pose as Redis")
    if options.get("ssl_check_hostname", "true").upper() in _FALSE:
        return ("ssl_check_hostname is off: any certificate the CA signed is accepted for "
                "this host")
    return None


def url_database(url: str) -> int:
    """The database number a URL :func:`url_problem` accepted selects (0 by default)."""
    path = unquote(urlsplit(url).path).strip("/")
    return int(url_options(url).get("db") or path or 0)
