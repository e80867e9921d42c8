"""The one factory for Redis clients: explicit timeouts, a client name, no blind retries.

redis-py's defaults (8.x: retries on every command) would retry the fetch script after a
timeout and could claim two jobs with one call, so clients are built with retries off;
the store retries only what is idempotent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from prefork_work.store.base import redis_errors

if TYPE_CHECKING:
    from prefork_work.config import RedisConfig

DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0


def redis_from_url(
    url: str,
    *,
    client_name: str = "prefork-work",
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_connections: int | None = None,
    cluster: bool = False,
    settings: RedisConfig | None = None,
) -> redis.Redis | RedisCluster:
    """Build a client for ``redis://``, ``rediss://`` or ``unix://`` URLs (user/password allowed).

    ``socket_timeout`` bounds every command; blocking commands issued by the store use
    timeouts well inside it. ``cluster``: the URL names one node of a Redis Cluster; the
    client follows MOVED/ASK redirects (Redis refused those commands, so following them is
    safe) but, as for a single Redis, never repeats a command that may have run.

    ``settings``: the ``[redis]`` section, for what the URL does not carry: the password read
    from ``password_file`` and the ``tls_*`` files (for ``rediss://`` only; the config
    refuses them with another scheme). Certificate verification stays on unless the URL
    turns it off (``ssl_cert_reqs=none``), which the config warns about.
    """
    kwargs: dict[str, object] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "client_name": client_name,
        "health_check_interval": 0,
        "retry_on_timeout": False,
        "retry": None,
    }
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    if settings is not None:
        kwargs.update(_settings_options(url, settings))
    if cluster:
        kwargs["retry"] = Retry(NoBackoff(), 0)
        kwargs.pop("health_check_interval")  # not a cluster option
        # a cluster client connects as it is built (to learn the slot map), a plain one lazily
        with redis_errors():
            return RedisCluster.from_url(url, **kwargs)
    if url.startswith("unix://"):
        # socket_connect_timeout is a TCP option; redis-py's UnixDomainSocketConnection rejects it.
        kwargs.pop("socket_connect_timeout")
    return redis.Redis.from_url(url, **kwargs)


def _settings_options(url: str, settings: RedisConfig) -> dict[str, object]:
    options: dict[str, object] = {}
    if settings.password is not None:
        options["password"] = settings.password
    if url.startswith("rediss://"):
        for key, option in (("tls_ca_file", "ssl_ca_certs"), ("tls_cert_file", "ssl_certfile"),
                            ("tls_key_file", "ssl_keyfile")):
            if getattr(settings, key):
                options[option] = getattr(settings, key)
    return options


def answers_ping(client: redis.Redis | RedisCluster) -> bool:
    """One PING; False when nothing answers yet (or any more): a socket not there, a refusal."""
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


def shutdown_server(url: str, *, save: bool, timeout: float) -> None:
    """SHUTDOWN the server at ``url`` (NOSAVE unless ``save``: then the server persists as it
    is configured to); its closing the connection under us is success."""
    client = redis_from_url(url, client_name="prefork-work:shutdown", socket_timeout=timeout)
    try:
        client.shutdown(nosave=not save)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        pass  # shutdown closes the connection under us; that is the expected outcome
    finally:
        client.close()


def wipe(client: redis.Redis) -> None:
    """FLUSHALL and SCRIPT FLUSH: a test's fresh start on a private server (never a shared one)."""
    client.flushall()
    client.script_flush()
