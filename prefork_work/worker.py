"""The dequeue-execute loop of one gocraft/work pool of concurrency 1.

Each prefork child runs one ``Worker``; tests and small programs run one in-process
(``run_one()``, ``drain()``, ``work(until=...)``).

Per batch, one script call acknowledges the jobs finished since the last call and fetches
the next jobs (``lua/fetch.lua``). The batch size adapts to how long jobs take: it grows
while a batch of jobs runs in well under ``batch_seconds`` and falls to 1 for slow jobs, so
a long job never holds fast ones hostage in this pool's in-progress list. Every fetched job
stays in that list until it is acknowledged, so a process that dies loses nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import redis
import structlog

from prefork_work.app import App, JobType
from prefork_work.errors import JobTimeout, MalformedJob, RedisUnavailable
from prefork_work.job import Job, make_identifier
from prefork_work.keys import Keys
from prefork_work.store.queue import Ack, QueueStore

log = structlog.get_logger("prefork_work.worker")

STRAY_JOB_ERROR = "stray job: no handler"
DEFAULT_STATUS_TTL = 86400
# upper bounds (seconds) of the job duration histogram: prometheus_client's defaults
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FIRST_BUCKET = DURATION_BUCKETS[0]
STATES = {"s": "done", "r": "retry", "d": "dead", "x": "dead"}
DEFAULT_IDLE_WAITS = (0.05, 0.25, 1.0)  # blocking waits on the wake list, not sleeps
REDIS_RETRY_WAITS = (0.1, 0.25, 0.5, 1.0, 2.0)


class Observer(Protocol):
    """Sees each job start and end (gocraft's observer), and its check-ins."""

    def observe(self, job: Job, job_type: JobType) -> contextlib.AbstractContextManager[None]: ...

    def checkin(self, job: Job, message: str) -> None: ...


class RedisObserver:
    """Writes gocraft's observation hash ``<p>worker:<workerID>`` directly (in-process use).

    Two small writes per job: fine for tests and in-process workers; the prefork server
    observes through shared memory instead and keeps Redis off the per-job path.
    """

    def __init__(self, store: QueueStore, worker_id: str, clock: Callable[[], float]) -> None:
        self.store = store
        self.worker_id = worker_id
        self.clock = clock

    @contextlib.contextmanager
    def observe(self, job: Job, job_type: JobType) -> Iterator[None]:
        self.store.observe_started(
            self.worker_id, job.name, job.id, int(self.clock()), observation_args(job)
        )
        try:
            yield
        finally:
            self.store.observe_done(self.worker_id)

    def checkin(self, job: Job, message: str) -> None:
        self.store.observe_checkin(self.worker_id, message, int(self.clock()))


def observation_args(job: Job) -> str:
    """gocraft writes the args' JSON, or the empty string for nil or empty args."""
    if not job.args:
        return ""
    from prefork_work.gojson import dumps

    return dumps(job.args)


def default_backoff(job: Job) -> int:
    """gocraft's backoff: fails^4 + 15 + R * (fails + 1) seconds, R uniform in 0..29."""
    return job.fails**4 + 15 + random.randrange(30) * (job.fails + 1)


class OutageWait:
    """Riding out a Redis outage: a growing sleep per failed attempt, logged once per outage."""

    def __init__(self, logger: Any) -> None:
        self.log = logger
        self.failures = 0  # consecutive; whoever reaches Redis again resets it

    def wait(self, err: RedisUnavailable) -> None:
        if self.failures == 0:  # logged once per outage, not once per attempt
            self.log.warning("redis unavailable; retrying", error=str(err))
        time.sleep(REDIS_RETRY_WAITS[min(self.failures, len(REDIS_RETRY_WAITS) - 1)])
        self.failures += 1


class PrioritySampler:
    """A weighted random order of job names, drawn anew before every fetch.

    Same distribution as gocraft's sampler (weighted draw without replacement), in
    O(n log n) instead of O(n^2): Efraimidis-Spirakis keys u^(1/w).
    """

    def __init__(self, priorities: dict[str, int]) -> None:
        self.names = list(priorities)
        self.weights = [1.0 / priorities[n] for n in self.names]
        self.uniform = len(set(priorities.values())) <= 1

    def sample(self) -> list[str]:
        names = self.names
        if self.uniform:
            order = names[:]
            random.shuffle(order)
            return order
        rnd = random.random
        keyed = sorted(zip(names, self.weights, strict=True), key=lambda nw: -(rnd() ** nw[1]))
        return [name for name, _ in keyed]


class Worker:
    """One pool of concurrency 1: fetch, run, acknowledge."""

    def __init__(
        self,
        app: App,
        redis_client: redis.Redis,
        namespace: str = "work",
        *,
        pool_id: str | None = None,
        worker_id: str | None = None,
        observer: Observer | None = None,
        max_batch: int = 100,
        batch_seconds: float = 0.005,
        idle_waits: Sequence[float] = DEFAULT_IDLE_WAITS,
        requeue_exceptions: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.time,
        metrics: bool = True,
        status_ttl: int = DEFAULT_STATUS_TTL,
        host: str | None = None,
    ) -> None:
        if not app.job_types:
            raise ValueError("the app registers no job types: nothing to work on")
        self.app = app
        self.keys = Keys(namespace)
        self.store = QueueStore(redis_client, self.keys)
        self.pool_id = pool_id or make_identifier()
        self.worker_id = worker_id or make_identifier()
        self.clock = clock
        self.observer: Observer = observer or RedisObserver(self.store, self.worker_id, clock)
        self.max_batch = max(1, max_batch)
        self.batch_seconds = batch_seconds
        self.idle_waits = tuple(idle_waits) or DEFAULT_IDLE_WAITS
        # exceptions that mean "stop now, this job did not fail" (the server's Interrupted)
        self.requeue_exceptions = requeue_exceptions
        self.job_names = sorted(app.job_types)
        self.sampler = PrioritySampler({n: t.priority for n, t in app.job_types.items()})
        self.group_keys = {n: self.store.fetch_keys(self.pool_id, n) for n in self.job_names}
        self.log = log.bind(pool_id=self.pool_id)
        # counters ride the next fetch call: outcomes are counted by the script itself,
        # the duration histogram and Redis errors are summed here (see lua/fetch.lua)
        self.metrics = metrics
        self.increments: dict[str, int] = {}
        # queue -> counts per duration bucket, then the sum of seconds: cheap per job, turned
        # into counter fields once per batch (_drain_histogram)
        self.histogram: dict[str, list[float]] = {}
        self.statuses: list[tuple[int, str, bytes]] = []  # (index in acks, job id, record)
        self.status_ttl = status_ttl
        self.host = host or socket.gethostname()

        self.buffer: deque[tuple[str, bytes]] = deque()  # fetched, not started: (queue, raw)
        self.acks: list[Ack] = []  # finished, not yet acknowledged
        self.batch_size = 1
        self.avg_job_seconds = batch_seconds
        self.idle_count = 0
        self.stop_requested = False
        self.jobs_done = 0
        self.needs_recovery = False
        self.outage = OutageWait(self.log)

    # --- public loop API ----------------------------------------------------------------------
    def announce(self) -> None:
        """Write what gocraft's WorkerPool.Start writes: caps and known job names."""
        self.store.set_max_concurrency(
            {n: t.max_concurrency for n, t in self.app.job_types.items()}
        )

    def run_one(self) -> bool:
        """Fetch and run one job, then acknowledge it; False when no job could be fetched."""
        if not self.buffer and not self._refill(limit=1):
            return False
        self._process_next()
        self.flush()
        return True

    def drain(self) -> int:
        """Run jobs until a fetch finds none (gocraft's Drain); returns how many ran."""
        before = self.jobs_done
        while self.buffer or self._refill():
            self._process_next()
        self.flush()
        return self.jobs_done - before

    def work(
        self,
        until: Callable[[], bool] | None = None,
        quiet: Callable[[], bool] | None = None,
        max_jobs: int | None = None,
    ) -> None:
        """Run until ``request_stop()`` or ``until()``; while ``quiet()`` fetch nothing.

        After ``max_jobs`` jobs the worker goes quiet for good (its batches are cut to fit
        the budget), waiting for whoever set the budget to stop it.

        Stops only between jobs: a running job always finishes. On the way out, finished
        jobs are acknowledged and unstarted prefetched jobs go back to the front of their
        queues.
        """
        try:
            while not self.stop_requested and not (until and until()):
                left = max_jobs - self.jobs_done if max_jobs else None
                if (quiet and quiet()) or left == 0:
                    self._give_back()
                    time.sleep(0.1)
                    continue
                try:
                    if self.buffer or self._refill(left):
                        self.idle_count = 0
                        self._process_next()
                    else:
                        self._wait_for_work()
                except RedisUnavailable as err:
                    if self.metrics:
                        self._count("redis_errors")
                    self.outage.wait(err)
        finally:
            self.close()

    def request_stop(self) -> None:
        """Stop after the running job (callable from a signal handler: it only sets a flag)."""
        self.stop_requested = True

    def flush(self) -> None:
        """Acknowledge every finished job now (and send pending counters)."""
        if self.acks or self.increments or self.histogram:
            self._call_fetch(want=0)

    def close(self) -> None:
        """Acknowledge finished jobs and return unstarted ones to the front of their queues."""
        try:
            self._give_back()
        except RedisUnavailable as err:
            # They stay in this pool's in-progress lists; the master reclaims them when
            # this process is gone, so nothing is lost.
            self.log.warning(
                "could not acknowledge on exit", error=str(err), pending=len(self.acks)
            )

    # --- fetching -------------------------------------------------------------------------------
    def _refill(self, limit: int | None = None) -> bool:
        if self.needs_recovery:
            self._recover()
        fetched = self._call_fetch(min(self.batch_size, limit or self.batch_size))
        return fetched > 0

    def _call_fetch(self, want: int) -> int:
        acks = self.acks
        if self.histogram:
            self._drain_histogram()
        try:
            queue, jobs = self.store.fetch(
                self.pool_id, self.sampler.sample(), self.group_keys, want, acks,
                now=int(self.clock()), count=self.metrics, statuses=self.statuses,
                status_ttl=self.status_ttl, increments=self.increments,
            )
        except RedisUnavailable:
            # The call may or may not have run in Redis. Acks are safe to resend (an entry
            # already removed is not released twice); jobs it may have fetched are found in
            # our in-progress lists by _recover().
            self.needs_recovery = True
            raise
        self.acks = []
        self.statuses = []
        self.increments = {}
        self.outage.failures = 0
        if queue is not None:
            self.buffer.extend((queue, raw) for raw in jobs)
        return len(jobs)

    def _give_back(self) -> None:
        # RPUSH puts each job at the served end: push the last-fetched first so the batch
        # comes back out in its original order.
        while self.buffer:
            queue, raw = self.buffer.pop()
            self.acks.append(Ack(queue, raw, "q"))
        self.flush()

    def _recover(self) -> None:
        """After a lost fetch reply: return jobs in our lists that we do not hold to their queues."""
        held = {raw for _, raw in self.buffer} | {a.raw for a in self.acks}
        lists = self.store.in_progress(self.pool_id, self.job_names)
        for queue, entries in lists.items():
            for raw in entries:
                if raw not in held:
                    self.acks.append(Ack(queue, raw, "q"))
        self.needs_recovery = False

    def _wait_for_work(self) -> None:
        timeout = self.idle_waits[min(self.idle_count, len(self.idle_waits) - 1)]
        self.idle_count += 1
        self.store.wait_for_work(timeout)

    # --- running one job ---------------------------------------------------------------------
    def _process_next(self) -> None:
        queue, raw = self.buffer.popleft()
        started = time.perf_counter()
        try:
            ack = self._execute(queue, raw)
        except self.requeue_exceptions:
            # Interrupted (fast stop): this job did not fail; it goes back to the front of
            # its queue with the rest of the batch.
            self.buffer.appendleft((queue, raw))
            self.stop_requested = True
            raise
        self.acks.append(ack)
        self.jobs_done += 1
        seconds = time.perf_counter() - started
        if self.metrics:
            counts = self.histogram.get(queue)
            if counts is None:
                counts = self.histogram[queue] = [0] * (len(DURATION_BUCKETS) + 2)
            # most jobs are fast: one comparison instead of a search
            if seconds <= FIRST_BUCKET:
                counts[0] += 1
            else:
                counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
            counts[-1] += seconds
        self._adapt_batch(seconds)

    def _count(self, field: str, n: int = 1) -> None:
        self.increments[field] = self.increments.get(field, 0) + n

    def _drain_histogram(self) -> None:
        """The batch's durations as counter fields (kept until a fetch call succeeds)."""
        for queue, counts in self.histogram.items():
            for bucket, n in enumerate(counts[:-1]):
                if n:
                    self._count(f"duration:{queue}:{bucket}", int(n))
            self._count(f"duration_sum:{queue}", int(counts[-1] * 1_000_000))
        self.histogram = {}

    def _adapt_batch(self, seconds: float) -> None:
        self.avg_job_seconds = 0.8 * self.avg_job_seconds + 0.2 * seconds
        if seconds > self.batch_seconds:
            self.batch_size = 1
        elif not self.buffer:
            fit = int(self.batch_seconds / max(self.avg_job_seconds, 1e-6))
            self.batch_size = max(1, min(self.max_batch, fit, self.batch_size * 2))

    def _execute(self, queue: str, raw: bytes) -> Ack:
        now = int(self.clock())
        try:
            job = Job.from_json(raw)
        except MalformedJob as err:
            return self._malformed(queue, raw, err, now)
        if job.unique:
            job = self._take_unique(job, raw)
        job_type = self.app.job_types.get(job.name)
        if job_type is None:
            # release exactly what the fetch took: the lock of the queue it came from
            return self._dead(queue, raw, job, STRAY_JOB_ERROR, now)
        job._checkin_hook = self.observer.checkin
        if job_type.status:
            return self._execute_recorded(queue, raw, job, job_type, now)
        with self.observer.observe(job, job_type):
            error = self._run(job, job_type)
        if error is None:
            return Ack(queue, raw, "s")
        return self._failed(queue, raw, job, job_type, error, int(self.clock()))

    def _execute_recorded(self, queue: str, raw: bytes, job: Job, job_type: JobType,
                          now: int) -> Ack:
        """``_execute`` for a job type with ``status=True``: the same, plus the run's record,
        sent with the ack (kept apart so that other jobs pay nothing for it)."""
        started = time.perf_counter()
        with self.observer.observe(job, job_type):
            error = self._run(job, job_type)
        duration = time.perf_counter() - started
        if error is None:
            ack = Ack(queue, raw, "s")
        else:
            ack = self._failed(queue, raw, job, job_type, error, int(self.clock()))
        record = self._status_record(job, ack, now, duration)
        self.statuses.append((len(self.acks), job.id, record))  # the index its ack will have
        return ack

    def _status_record(self, job: Job, ack: Ack, started_at: int, duration: float) -> bytes:
        """What ``Client.job_status`` reads back for a job that finished a run."""
        record = {
            "name": job.name, "state": STATES[ack.outcome], "fails": job.fails,
            "enqueued_at": job.t, "started_at": started_at,
            "finished_at": int(self.clock()), "duration": round(duration, 6),
            "error": job.err, "pool_id": self.pool_id, "host": self.host,
        }
        if ack.outcome in ("r", "d"):
            record["score"] = ack.score  # where to look in the retry / dead set
        elif ack.outcome == "x":
            record["dropped"] = True  # dead, but in no set (skip_dead): the record is all
        return json.dumps(record, separators=(",", ":")).encode()

    def _run(self, job: Job, job_type: JobType) -> BaseException | None:
        """Run middleware and handler; the one place a job's exception becomes its outcome."""
        job.context = self.app.context_factory()
        chain = self.app.middlewares

        def call(index: int) -> Any:
            if index == len(chain):
                return job_type.handler(job)
            return chain[index](job, lambda: call(index + 1))

        try:
            with soft_timeout(job_type.timeout) as run:
                call(0)
                run.finished = True
        except self.requeue_exceptions:
            raise
        except Exception as err:  # a job's failure, whatever it is, is an outcome, not a crash
            return err
        return None

    def _take_unique(self, job: Job, raw: bytes) -> Job:
        key = job.unique_key or self.keys.unique(job.name, job.args)
        stored = self.store.take_unique(key)
        if stored is None or stored == b"1":
            return job
        try:
            # by-key duplicates replace the arguments: the queued entry is a placeholder
            replacement = Job.from_json(stored)
        except MalformedJob:
            return job
        replacement.raw = raw  # acknowledge what was fetched, never the replacement (W6)
        return replacement

    def _failed(
        self, queue: str, raw: bytes, job: Job, job_type: JobType, error: BaseException, now: int
    ) -> Ack:
        job.fails += 1
        job.err = str(error) or type(error).__name__
        job.failed_at = now
        log_ = self.log.bind(job_id=job.id, job_name=job.name, fails=job.fails)
        if job_type.max_fails - job.fails > 0:
            backoff = job_type.backoff(job) if job_type.backoff else default_backoff(job)
            log_.warning("job failed; will retry", error=job.err, retry_in=backoff)
            return Ack(queue, raw, "r", now + int(backoff), job.to_json())
        if job_type.skip_dead:
            log_.warning("job failed; dropped (skip_dead)", error=job.err)
            return Ack(queue, raw, "x")
        log_.warning("job failed; moved to dead", error=job.err)
        return Ack(queue, raw, "d", now, job.to_json())

    def _dead(self, queue: str, raw: bytes, job: Job, error: str, now: int) -> Ack:
        job.fails += 1
        job.err = error
        job.failed_at = now
        self.log.warning("job moved to dead", job_id=job.id, job_name=job.name, error=error)
        return Ack(queue, raw, "d", now, job.to_json())

    def _malformed(self, queue: str, raw: bytes, err: MalformedJob, now: int) -> Ack:
        """An undecodable payload goes to dead wrapped in a valid job, so every client can
        page, delete or inspect it (gocraft leaves it stuck in progress, W3)."""
        text = raw.decode("utf-8", errors="replace")
        wrapper = Job(name=queue, id=make_identifier(), t=now, args={"malformed_payload": text})
        self.log.warning("malformed job moved to dead", queue=queue, error=str(err))
        return self._dead(queue, raw, wrapper, str(err), now)


class _Run:
    finished = False


@contextlib.contextmanager
def soft_timeout(seconds: float | None) -> Iterator[_Run]:
    """Raise JobTimeout inside the job after ``seconds`` (main thread only; SIGALRM).

    The caller sets ``finished`` as soon as the job returns: an alarm that fires after that,
    before the timer is disarmed, must not turn a finished job into a failure.
    """
    run = _Run()
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield run
        return

    def expired(signum: int, frame: Any) -> None:
        if not run.finished:
            raise JobTimeout(f"soft timeout after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield run
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
