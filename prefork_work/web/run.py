"""``prefork-work -c FILE web``: serve the web app with uvicorn until SIGTERM or SIGINT.

Run alone, or by the server's master when ``[web] listen`` is set (server.py's WebProcess):
the master then sets PREFORK_WORK_WEB_PARENT to its pid, and this process exits when it is
orphaned, so a SIGKILLed master never leaves a web process holding the port.
"""

from __future__ import annotations

import os
import threading
import time
from types import FrameType

import structlog
import uvicorn
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from prefork_work.client import Client
from prefork_work.config import Config, is_loopback, parse_listen, web_access_problem
from prefork_work.connection import redis_from_url
from prefork_work.errors import ConfigError, PreforkWorkError
from prefork_work.store.web import WebStore
from prefork_work.web.app import create_app
from prefork_work.web.history import record_minute

log = structlog.get_logger("prefork_work.web")

DEFAULT_LISTEN = "127.0.0.1:5040"  # gocraft's workwebui listens on :5040
PARENT_ENV = "PREFORK_WORK_WEB_PARENT"
SAMPLE_INTERVAL = 60.0


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (for embedding); this is
    the process's own server, so a requested stop ends with exit 0, as the job server does."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(config: Config, listen: str | None, redis_url: str) -> int:
    listen = listen or config.web.listen or DEFAULT_LISTEN
    try:
        host, port = parse_listen(listen)
    except ValueError as err:
        raise ConfigError(f"--listen {listen!r}: {err}") from None
    problem = web_access_problem(listen, config.web.token, config.web.read_only)
    if problem:
        raise ConfigError(problem)
    redis = redis_from_url(redis_url, client_name="prefork-work:web",
                           socket_timeout=config.redis.socket_timeout, cluster=config.redis.cluster,
                           settings=config.redis)
    client = Client(config.server.namespace, redis)
    app: ASGIApp = create_app(client, read_only=config.web.read_only,
                              token=config.web.token or None)
    if is_loopback(host):
        app = loopback_hosts_only(app, host)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                           access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=5))
    stop = threading.Event()
    threading.Thread(target=_sample_minutes, args=(client, stop), daemon=True,
                     name="minute-sampler").start()
    parent = os.environ.get(PARENT_ENV)
    if parent:
        threading.Thread(target=_exit_when_orphaned, args=(int(parent), server, stop),
                         daemon=True, name="parent-watch").start()
    log.info("web app listening", url=f"http://{listen}/", read_only=config.web.read_only,
             token=bool(config.web.token))
    try:
        server.run()
    finally:
        stop.set()
    return 0 if server.started else 1


def loopback_hosts_only(app: ASGIApp, listen_host: str) -> ASGIApp:
    """Refuse requests whose Host header is not a loopback name: on loopback, a web page
    whose DNS name rebinds to 127.0.0.1 cannot then reach the app through the operator's
    browser (its requests carry the page's own host name)."""
    allowed = {"localhost", "127.0.0.1", "::1", listen_host}

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = _host_name(Headers(scope=scope).get("host", ""))
            if name not in allowed:
                response = JSONResponse(
                    {"error": f"host {name!r} refused: this app answers loopback names only"},
                    status_code=400)
                await response(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


def _host_name(header: str) -> str:
    """``127.0.0.1:5040`` -> ``127.0.0.1``; ``[::1]:5040`` -> ``::1``."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.partition(":")[0]


def _sample_minutes(client: Client, stop: threading.Event) -> None:
    """The counter snapshot of each minute, for the overview's per-minute chart."""
    store = WebStore(client.store.redis, client.keys)
    while not stop.is_set():
        try:
            record_minute(client, store)
        except PreforkWorkError as err:
            log.warning("could not record the minute's counters", error=str(err))
        stop.wait(SAMPLE_INTERVAL - time.time() % SAMPLE_INTERVAL + 1)


def _exit_when_orphaned(parent: int, server: uvicorn.Server, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("the master is gone; stopping the web app", master_pid=parent)
            server.should_exit = True
            return
