"""Shared fixtures: a private redis-server for the whole test session.

The server is ours alone (a unix socket under the session's temp dir, ``--save ""``), so
tests may flush it, stop it and restart it. The Redis on 127.0.0.1:6379 is never touched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

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
