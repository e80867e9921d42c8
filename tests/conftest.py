"""Shared fixtures: a private redis-server for the whole test session.

The server is ours alone (a unix socket under the session's temp dir, ``--save ""``), so
tests may flush it, stop it and restart it. The Redis on 127.0.0.1:6379 is never touched.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
import structlog

from prefork_work.connection import redis_from_url
from prefork_work.embedded import EmbeddedRedis

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "vectors"


class RedisServer(EmbeddedRedis):
    """The session's server, with helpers for fault tests."""

    def client(self) -> redis.Redis:
        return redis_from_url(self.url, client_name="tests")

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that configures logging in-process (configure_logging) leaves no trace: the
    next test sees the configuration it would have seen alone (a worker decides at birth
    whether to write its debug lines)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.alive():
        redis_server.start()
    return redis_server.url


@pytest.fixture
def r(redis_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    """A client on a freshly flushed database of the private server."""
    client = redis_server.client()
    client.flushall()
    client.script_flush()
    yield client
    client.close()


@pytest.fixture
def vectors() -> Path:
    return VECTORS


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, message: str = ""
) -> object:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def read_records(path: Path) -> list[dict]:
    """JSON lines appended by processes that tests SIGKILL or read while they write.

    A process SIGKILLed inside write() can leave a torn record with no newline (the kernel
    stops a write at a page boundary once a fatal signal is pending), and the next record is
    glued to it; a record still being written can end the file. Keep every whole record: the
    one that ends a glued line, and none of a torn or unfinished one (a job torn that way was
    not acknowledged and runs again, so its id still shows up)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            start = line.rfind("{", 1)
            while start > 0:  # the last whole record on a glued line
                try:
                    records.append(json.loads(line[start:]))
                    break
                except json.JSONDecodeError:
                    start = line.rfind("{", 0, start)
    return records


class Master:
    """A prefork master a test started as a subprocess: its live children, signals, stop.

    The one harness of the server tests and the toy-supervisor tests. ``stop()`` asks
    politely (SIGTERM) and SIGKILLs only what is still there after a bounded wait; what it
    had to kill is kept in ``killed``, and ``stop_all`` fails the test for it: a clean stop
    is part of what every test checks.
    """

    process: subprocess.Popen[bytes] | None = None

    def __init__(self) -> None:
        self.killed: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        """The master's children that are alive (not zombies) right now."""
        if self.process is None:
            return []
        try:
            candidates = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        alive = []
        for child in candidates:  # one child dying while we look must not hide the others
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                continue
        return alive

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; kill (and record in ``killed``) whatever outlives ``timeout``."""
        if self.process is None:
            return None
        children = self.children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed.append(f"master {self.process.pid}")
                self.process.kill()
                self.process.wait(5)
        _gone, alive = psutil.wait_procs(children, timeout=2.0)
        for child in alive:
            self.killed.append(f"child {child.pid}")
            try:
                child.kill()
            except psutil.NoSuchProcess:
                continue
        return self.process.returncode


def stop_all(masters: Iterable[Master]) -> None:
    """Fixture teardown: stop every master; fail the test if one had to be killed."""
    killed = []
    for master in masters:
        master.stop()
        killed += master.killed
    if killed:
        pytest.fail(f"teardown had to SIGKILL leftover processes: {', '.join(killed)}")
