"""Shared fixtures: a private redis-server for the whole test session.

The server is ours alone (a unix socket under the session's temp dir, ``--save ""``), so
tests may flush it, stop it and restart it. The Redis on 127.0.0.1:6379 is never touched.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
import structlog

# The private Redis, its fixtures and wait_until are the package's test helpers, the plugin
# users enable with pytest_plugins = ["prefork_work.testing"]: this suite is their first user
# (imported by name rather than through pytest_plugins, which would import the module after
# this conftest already has, and warn that its asserts cannot be rewritten).
from prefork_work.app import App
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import RedisUnavailable
from prefork_work.testing import (  # noqa: F401  (fixtures and a hook, found by name)
    RedisServer,
    prefork_app,
    prefork_enqueuer,
    prefork_redis,
    prefork_redis_server,
    prefork_worker,
    pytest_addoption,
    wait_until,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "vectors"

__all__ = ["LateFetch", "RedisServer", "free_port", "late_fetch_app", "read_records", "wait_until"]


class LateFetch:
    """Loses the reply of a worker's next fetch call once ``arm()`` is called, and keeps its
    bytes to deliver them later (``deliver()``), as a healed partition or a proxy flushing
    its buffer would; ``recovered`` tells when the worker has since recovered its lists."""

    def __init__(self, worker) -> None:
        self.store = store = worker.store
        self.armed = False
        self.call: tuple[list, list] | None = None
        self.recovered = False
        real_run, real_recover = store.run_script, store.recover

        def run_script(name, keys, args):
            if name == "fetch" and self.armed and self.call is None:
                self.call = (keys, list(args))
                raise RedisUnavailable("reply lost")
            return real_run(name, keys, args)

        def recover(*args, **kwargs):
            lists = real_recover(*args, **kwargs)
            self.recovered = self.call is not None
            return lists

        self.real_run = real_run
        store.run_script, store.recover = run_script, recover

    def arm(self) -> None:
        self.armed = True

    def deliver(self):
        """The lost call reaches Redis now; returns the script's reply (no worker reads it)."""
        assert self.call is not None, "no fetch call was lost"
        return self.real_run("fetch", *self.call)


def late_fetch_app(r, namespace: str, jobs: int, late: dict) -> tuple[App, collections.Counter[str]]:
    """``jobs`` queued jobs of an app whose first job loses the reply of the next fetch call
    (``late["fetch"]``, a LateFetch the test sets), and whose first job after the worker
    recovered delivers that call late; a test may deliver it earlier itself. The reply of
    the delivered call is ``late["reply"]``; each run is counted by job id."""
    ran: collections.Counter[str] = collections.Counter()
    app = App()

    def wat(job) -> None:
        ran.update([job.id])
        fetch: LateFetch = late["fetch"]
        if not fetch.armed:
            fetch.arm()  # the next call carries this job's ack and fetches the next jobs
        elif fetch.recovered and "reply" not in late:
            late["reply"] = fetch.deliver()

    app.register("wat", wat)
    Enqueuer(namespace, r).enqueue_many([("wat", None)] * jobs)
    return app, ran


def free_port(bus: bool = False) -> int:
    """A free loopback port; with ``bus``, one whose cluster bus port (port + 10000) is free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that configures logging in-process (configure_logging) leaves no trace: the
    next test sees the configuration it would have seen alone (a worker decides at birth
    whether to write its debug lines)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    server: RedisServer = request.getfixturevalue("prefork_redis_server")
    return server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.alive():
        redis_server.start()
    return redis_server.url


@pytest.fixture
def r(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    """A client on a freshly flushed database of the private server."""
    client: redis.Redis = request.getfixturevalue("prefork_redis")
    yield client


# The machine's PostgreSQL (trust auth, database "test"); never a database of ours to start.
PG_DSN = os.environ.get(
    "PREFORK_WORK_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"
)


def _pg_unavailable(reason: str) -> None:
    """CI must test against PostgreSQL: there its absence fails; on a developer machine the
    PostgreSQL tests are skipped with the reason."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A libpq DSN of the machine's PostgreSQL, checked reachable."""
    try:
        import psycopg
    except ImportError as err:
        _pg_unavailable(f"psycopg is not installed ({err}): pip install -e '.[test]'")
    try:
        with psycopg.connect(PG_DSN) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as err:
        _pg_unavailable(f"PostgreSQL unreachable at {PG_DSN!r} ({err}); "
                        "set PREFORK_WORK_TEST_PG_DSN to point at one")
    return PG_DSN


@pytest.fixture
def pg_table(postgres_dsn: str) -> Iterator[str]:
    """A table name unique to this test run (rows: job_id, pid, backend, via), dropped after;
    unlogged, so a commit waits for no WAL flush (the suite measures us, not the disk)."""
    import psycopg

    name = f"pw_rows_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE UNLOGGED TABLE {name} (job_id text NOT NULL, pid integer NOT NULL, "
                     "backend integer NOT NULL, via text NOT NULL)")
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def vectors() -> Path:
    return VECTORS


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


def matching(processes: Iterable[psutil.Process],
             predicate: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """The processes for which ``predicate`` holds; one that exits while the predicate reads
    it (its status, name, command line) is left out, not raised, and hides no other."""
    found = []
    for process in processes:
        try:
            if predicate(process):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def exited(process: psutil.Process) -> bool:
    """Gone or a zombie (reading its status races with its exit, so either way counts)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Master:
    """A prefork master a test started as a subprocess: its live children, signals, stop.

    The one harness of the server tests and the toy-supervisor tests. ``stop()`` asks
    politely (SIGTERM) and SIGKILLs only what is still there after a bounded wait; what it
    had to kill is kept in ``killed``, and ``stop_all`` fails the test for it: a clean stop
    is part of what every test checks.
    """

    process: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 15.0
    forks_only: bool = False

    def __init__(self, process: subprocess.Popen[bytes] | None = None) -> None:
        self.killed: list[str] = []
        if process is not None:
            self.process = process

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        """The master's children that are alive (not zombies) right now; with ``forks_only``,
        only those running the master's program (a library may briefly run a helper program,
        e.g. ctypes' ldconfig, which is no child of the server's)."""
        if self.process is None:
            return []
        try:
            master = psutil.Process(self.process.pid)
            candidates, program = master.children(), master.exe() if self.forks_only else ""
        except psutil.NoSuchProcess:
            return []
        return matching(candidates, lambda child: child.status() != psutil.STATUS_ZOMBIE
                        and (not program or child.exe() == program))

    def child_pids(self) -> list[int]:
        return sorted(child.pid for child in self.children())

    def children_where(self, predicate: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
        """Live children for which ``predicate`` holds (read as ``matching`` reads)."""
        return matching(self.children(), predicate)

    def children_named(self, fragment: str) -> list[psutil.Process]:
        return self.children_where(lambda child: fragment in child.name())

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float | None = None) -> int | None:
        """``stop_signal`` and wait; kill (and record in ``killed``) whatever outlives
        ``timeout`` (``stop_timeout`` unless given)."""
        if self.process is None:
            return None
        children = self.children()
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(self.stop_timeout if timeout is None else timeout)
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
