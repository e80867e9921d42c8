"""The one factory for Redis clients: explicit timeouts, a client name, no blind retries.

redis-py's defaults (8.x: retries on every command) would retry the fetch script after a
timeout and could claim two jobs with one call, so clients are built with retries off;
the store retries only what is idempotent.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from prefork_work.store.base import redis_errors

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
) -> redis.Redis | RedisCluster:
    """Build a client for ``redis://``, ``rediss://`` or ``unix://`` URLs (user/password allowed).

    ``socket_timeout`` bounds every command; blocking commands issued by the store use
    timeouts well inside it. ``cluster``: the URL names one node of a Redis Cluster; the
    client follows MOVED/ASK redirects (Redis refused those commands, so following them is
    safe) but, as for a single Redis, never repeats a command that may have run.
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
    if cluster:
        kwargs["retry"] = Retry(NoBackoff(), 0)
        kwargs.pop("health_check_interval")  # not a cluster option
        # a cluster client connects as it is built (to learn the slot map), a plain one lazily
        with redis_errors():
            return RedisCluster.from_url(url, **kwargs)
    if url.startswith("unix://"):
        # socket_connect_timeout is a TCP option; redis-py's UnixDomainSocketConnection rejects it.
        kwargs.pop("socket_connect_timeout")
    return redis.Redis.from_url(url, **kwargs)  # type: ignore[arg-type]
