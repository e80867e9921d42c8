"""The one factory for Redis clients: explicit timeouts, a client name, no blind retries.

redis-py's defaults (8.x: retries on every command) would retry the fetch script after a
timeout and could claim two jobs with one call, so clients are built with retries off;
the store retries only what is idempotent.
"""

from __future__ import annotations

import redis

DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0


def redis_from_url(
    url: str,
    *,
    client_name: str = "prefork-work",
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_connections: int | None = None,
) -> redis.Redis:
    """Build a client for ``redis://``, ``rediss://`` or ``unix://`` URLs (user/password allowed).

    ``socket_timeout`` bounds every command; blocking commands issued by the store use
    timeouts well inside it.
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
    if url.startswith("unix://"):
        # socket_connect_timeout is a TCP option; redis-py's UnixDomainSocketConnection rejects it.
        kwargs.pop("socket_connect_timeout")
    return redis.Redis.from_url(url, **kwargs)  # type: ignore[arg-type]
