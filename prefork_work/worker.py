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
import itertools
import json
import logging
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from prefork_work.app import App, JobType
from prefork_work.errors import JobTimeout, MalformedJob, RedisUnavailable
from prefork_work.job import Job, make_identifier
from prefork_work.keys import Keys
from prefork_work.observations import ObservationWriter
from prefork_work.outcome import (
    STATES,
    STRAY_JOB_ERROR,
    Outcome,
    failure_text,
    malformed,
    settle,
)
from prefork_work.store.pools import PoolStore
from prefork_work.store.queue import Ack, QueueStore

if TYPE_CHECKING:
    import redis

log = structlog.get_logger("prefork_work.worker")

DEFAULT_STATUS_TTL = 86400
# upper bounds (seconds) of the job duration histogram: prometheus_client's defaults
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FIRST_BUCKET = DURATION_BUCKETS[0]
# the outcomes of the per-job path as module constants: no enum attribute lookup per job
SUCCESS, RETRY, DEAD, DROPPED, REQUEUE = (Outcome.SUCCESS, Outcome.RETRY, Outcome.DEAD,
                                          Outcome.DROPPED, Outcome.REQUEUE)
DEFAULT_IDLE_WAITS = (0.05, 0.25, 1.0)  # blocking waits on the wake list, not sleeps
# The sequence of every fetch call of this process (lua/fetch.lua's fence): strictly
# increasing per pool (a pool id is per process, and its calls draw under its fetch lock),
# and starting at the time in µs so that a pool id reused by a later process still goes up
# (exact in a Lua number for centuries).
FETCH_SEQUENCE = itertools.count(time.time_ns() // 1000)
REDIS_RETRY_WAITS = (0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # [server] max_payload_bytes
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024  # a batch stops growing at this many bytes of payloads
SIGMASK_CHECK_AFTER = 0.0005  # seconds: jobs longer than this get the signal mask check per job


class Observer(Protocol):
    """Sees each job start and end (gocraft's observer), and its check-ins."""

    def observe(self, job: Job, job_type: JobType) -> contextlib.AbstractContextManager[None]: ...

    def checkin(self, job: Job, message: str) -> None: ...


class NullObserver:
    """Observes nothing: a worker whose jobs nobody watches (inline runs, tests)."""

    @contextlib.contextmanager
    def observe(self, job: Job, job_type: JobType) -> Iterator[None]:
        yield

    def checkin(self, job: Job, message: str) -> None:
        pass


class RedisObserver:
    """Writes gocraft's observation hash ``<p>worker:<workerID>`` directly (in-process use).

    Two small writes per job: fine for tests and in-process workers; the prefork server
    observes through shared memory instead and keeps Redis off the per-job path.
    """

    def __init__(self, store: QueueStore, worker_id: str, clock: Callable[[], float]) -> None:
        self.writer = ObservationWriter(PoolStore(store.redis, store.keys))
        self.worker_id = worker_id
        self.clock = clock

    @contextlib.contextmanager
    def observe(self, job: Job, job_type: JobType) -> Iterator[None]:
        self.writer.started(self.worker_id, job, int(self.clock()))
        try:
            yield
        finally:
            self.writer.done(self.worker_id)

    def checkin(self, job: Job, message: str) -> None:
        self.writer.checkin(self.worker_id, message, int(self.clock()))


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
        lifecycle_hooks: bool = True,
        clock: Callable[[], float] = time.time,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        release_after: float | None = None,
        metrics: bool = True,
        status_ttl: int = DEFAULT_STATUS_TTL,
        host: str | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not app.job_types:
            raise ValueError("the app registers no job types: nothing to work on")
        self.app = app
        self.keys = Keys(namespace)
        self.store = QueueStore(redis_client, self.keys)
        # this process's alone: its fetch calls are fenced by their sequence (FETCH_SEQUENCE)
        self.pool_id = pool_id or make_identifier()
        self.worker_id = worker_id or make_identifier()
        self.clock = clock
        # measures job durations (batch size, watchdog); a test passes a fake one
        self.timer = timer
        self.observer: Observer = observer or RedisObserver(self.store, self.worker_id, clock)
        self.max_batch = max(1, max_batch)
        self.batch_seconds = batch_seconds
        self.idle_waits = tuple(idle_waits) or DEFAULT_IDLE_WAITS
        # exceptions that mean "stop now, this job did not fail" (the server's Interrupted)
        self.requeue_exceptions = requeue_exceptions
        # work() runs the app's on_child_start/on_child_exit hooks, as a prefork child does
        # (the server runs them itself around its children's work() and passes False)
        self.lifecycle_hooks = lifecycle_hooks
        # what may escape the dispatch of a fetched payload; anything else makes it malformed
        self._passthrough: tuple[type[BaseException], ...] = (RedisUnavailable, *requeue_exceptions)
        self.max_payload_bytes = max_payload_bytes
        self.max_batch_bytes = max_batch_bytes
        # a running job older than this proves slow: the unstarted rest of its batch goes back
        self.release_after = 2 * batch_seconds if release_after is None else release_after
        self.job_names = sorted(app.job_types)
        self.sampler = PrioritySampler({n: t.priority for n, t in app.job_types.items()})
        self.group_keys = {n: self.store.fetch_keys(self.pool_id, n) for n in self.job_names}
        self.log = log.bind(pool_id=self.pool_id)
        # "job succeeded" is a debug line: decided once, so that at info level a job pays
        # nothing for it (configure logging before building the worker to change it)
        enabled = getattr(self.log, "is_enabled_for", None)
        self.log_success = enabled(logging.DEBUG) if enabled is not None else True
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
        self.sequence = 0  # of the last fetch call sent: recovery raises the fence to it
        self.outage = OutageWait(self.log)
        # The watchdog thread and the main thread share the buffer: a job is started by
        # popleft() and released by pop(), each atomic, so every fetched job goes to exactly
        # one of them. Fetches (main) and releases (watchdog) are serialized by _fetch_lock,
        # so a released job is never fetched back into this buffer while a stale copy of it
        # is about to be released (which would run it twice).
        self._fetch_lock = threading.RLock()
        self._running_since = 0.0  # perf_counter() at the start of the running job, 0: none
        self._watchdog: threading.Thread | None = None
        self._watchdog_parked = False
        self._watchdog_wake = threading.Event()
        self._watchdog_stop = threading.Event()
        # the signal mask jobs start with, restored between jobs (main thread only: a worker
        # built in another thread runs its jobs there, and leaves masks alone)
        on_main = threading.current_thread() is threading.main_thread()
        self._sigmask: set[int | signal.Signals] | None = _sigmask() if on_main else None

    # --- public loop API ----------------------------------------------------------------------
    def announce(self) -> None:
        """Write what gocraft's WorkerPool.Start writes: caps and known job names."""
        self.store.set_max_concurrency(
            {n: t.max_concurrency for n, t in self.app.job_types.items()}
        )

    def run_one(self) -> bool:
        """Fetch and run one job, then acknowledge it; False when no job could be fetched."""
        while not self._process_next():  # the buffer is empty, or a watchdog emptied it
            if not self._refill(limit=1):
                return False
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

        With ``lifecycle_hooks`` (the default), the app's ``on_child_start`` hooks run before
        the first fetch (one raising stops ``work()`` with ``HookFailed``) and its
        ``on_child_exit`` hooks after a clean stop; ``run_one()`` and ``drain()`` run none.
        """
        if self.lifecycle_hooks:
            self.app.run_hooks("child_start")
        clean = self._work(until, quiet, max_jobs)
        if self.lifecycle_hooks and clean:  # not reached when a requeue exception ends it
            self.app.run_hooks("child_exit")

    def _work(self, until: Callable[[], bool] | None, quiet: Callable[[], bool] | None,
              max_jobs: int | None) -> bool:
        """The loop of ``work()``; True when it stopped cleanly (the exit hooks run)."""
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
        return True

    def request_stop(self) -> None:
        """Stop after the running job (callable from a signal handler: it only sets a flag)."""
        self.stop_requested = True

    def flush(self) -> None:
        """Acknowledge every finished job now (and send pending counters)."""
        if self.acks or self.increments or self.histogram:
            self._call_fetch(want=0)

    def close(self) -> None:
        """Acknowledge finished jobs and return unstarted ones to the front of their queues."""
        self._stop_watchdog()
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
        with self._fetch_lock:
            if self.needs_recovery:
                self._recover()
            fetched = self._call_fetch(min(self.batch_size, limit or self.batch_size))
        if fetched > 1 and self._watchdog is None:
            self._start_watchdog()
        return fetched > 0

    def _call_fetch(self, want: int) -> int:
        acks = self.acks
        if self.histogram:
            self._drain_histogram()
        try:
            with self._fetch_lock:  # drawn under the lock: calls are sent in sequence order
                self.sequence = sequence = next(FETCH_SEQUENCE)
                queue, jobs = self.store.fetch(
                    self.pool_id, sequence, self.sampler.sample(), self.group_keys, want, acks,
                    max_payload_bytes=self.max_payload_bytes, max_batch_bytes=self.max_batch_bytes,
                    now=int(self.clock()), count=self.metrics, statuses=self.statuses,
                    status_ttl=self.status_ttl, increments=self.increments,
                )
        except RedisUnavailable:
            # The call may or may not have run in Redis, or may still run later (a healed
            # partition, a proxy flushing its buffer). Acks, statuses and increments are
            # kept and resent (an entry already removed is not released twice); _recover()
            # fences the lost call off and finds the jobs it may have fetched.
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
            self.acks.append(Ack(queue, raw, REQUEUE))
        self.flush()

    def _recover(self) -> None:
        """After a lost fetch reply: return jobs in our lists that we do not hold to their queues.

        The same script raises the pool's fence to the last call sent: a late copy of a lost
        call either ran before the read (its jobs are here) or is refused (lua/fetch.lua).
        """
        held = self._held()
        lists = self.store.recover(self.pool_id, self.sequence, self.job_names)
        for queue, entries in lists.items():
            for raw in entries:
                if raw not in held:
                    self.acks.append(Ack(queue, raw, REQUEUE))
        self.needs_recovery = False

    def _held(self) -> set[bytes]:
        """The fetched jobs this worker still holds: recovery leaves them where they are."""
        return {raw for _, raw in self.buffer} | {a.raw for a in self.acks}

    def _wait_for_work(self) -> None:
        timeout = self.idle_waits[min(self.idle_count, len(self.idle_waits) - 1)]
        self.idle_count += 1
        self.store.wait_for_work(timeout)

    # --- running one job ---------------------------------------------------------------------
    def _process_next(self) -> bool:
        """Run the next buffered job; False when there was none (a watchdog may take them)."""
        try:
            queue, raw = self.buffer.popleft()
        except IndexError:
            return False
        started = self._running_since = self.timer()
        if self._watchdog_parked and self.buffer:
            self._watchdog_parked = False  # one wake-up, not one per job until it runs
            self._watchdog_wake.set()
        try:
            ack = self._execute(queue, raw, started)
        except self.requeue_exceptions:
            # Interrupted (fast stop): this job did not fail; it goes back to the front of
            # its queue with the rest of the batch.
            self.buffer.appendleft((queue, raw))
            self.stop_requested = True
            raise
        finally:
            self._running_since = 0.0
        self.acks.append(ack)
        self.jobs_done += 1
        seconds = self.timer() - started
        if self.metrics:
            self._time(queue, seconds)
        self._adapt_batch(seconds)
        if seconds > SIGMASK_CHECK_AFTER or not self.buffer:
            self._restore_sigmask()
        return True

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

    def _time(self, queue: str, seconds: float) -> None:
        """A job's duration into the histogram sent with the next fetch call."""
        counts = self.histogram.get(queue)
        if counts is None:
            counts = self.histogram[queue] = [0] * (len(DURATION_BUCKETS) + 2)
        # most jobs are fast: one comparison instead of a search
        if seconds <= FIRST_BUCKET:
            counts[0] += 1
        else:
            counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def _adapt_batch(self, seconds: float) -> None:
        self.avg_job_seconds = 0.8 * self.avg_job_seconds + 0.2 * seconds
        if seconds > self.batch_seconds:
            self.batch_size = 1
        elif not self.buffer:
            fit = int(self.batch_seconds / max(self.avg_job_seconds, 1e-6))
            self.batch_size = max(1, min(self.max_batch, fit, self.batch_size * 2))

    def _execute(self, queue: str, raw: bytes, started: float) -> Ack:
        now = int(self.clock())
        try:
            job = Job.from_json(raw)
            if job.unique:
                job = self._take_unique(job, raw)
            job_type = self.app.job_types.get(job.name)
        except self._passthrough:
            raise
        except Exception as err:  # nothing read from Redis may kill this process
            return self._malformed(queue, raw, err, now)
        if job_type is None:
            # release exactly what the fetch took: the lock of the queue it came from
            return self._failed(queue, raw, job, None, STRAY_JOB_ERROR, now)
        job._checkin_hook = self.observer.checkin
        if job_type.status:
            return self._execute_recorded(queue, raw, job, job_type, now)
        with self.observer.observe(job, job_type):
            error = self._run(job, job_type)
        if error is None:
            if self.log_success:
                self.log.debug("job succeeded", job_id=job.id, job_name=job.name,
                               duration=round(self.timer() - started, 6))
            return Ack(queue, raw, SUCCESS)
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
            if self.log_success:
                self.log.debug("job succeeded", job_id=job.id, job_name=job.name,
                               duration=round(duration, 6))
            ack = Ack(queue, raw, SUCCESS)
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
        if ack.outcome in (RETRY, DEAD):
            record["score"] = ack.score  # where to look in the retry / dead set
        elif ack.outcome == DROPPED:
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
        self, queue: str, raw: bytes, job: Job, job_type: JobType | None, error: BaseException | str,
        now: int,
    ) -> Ack:
        """The job failed (its handler raised, or it has none): outcome.settle decides."""
        text = error if isinstance(error, str) else failure_text(error)
        verdict = settle(job, job_type, text, now, name=queue, raw=raw, logger=self.log)
        return Ack(queue, raw, verdict.outcome, verdict.score, verdict.payload)

    def _malformed(self, queue: str, raw: bytes, err: Exception, now: int) -> Ack:
        """An undecodable payload goes to dead wrapped in a valid job (outcome.malformed)."""
        return Ack(queue, raw, DEAD, now, malformed(queue, raw, err, now, logger=self.log))

    # --- between jobs: the signal mask ------------------------------------------------------
    def _restore_sigmask(self) -> None:
        """Undo a job's change of the main thread's signal mask (a job that blocked SIGUSR2
        would leave the next jobs deaf to the hard-timeout signal).

        One syscall; done after any job that ran long enough for it to be noise, and before
        a fetch, so a run of microsecond jobs does not pay it per job.
        """
        if self._sigmask is None or threading.current_thread() is not threading.main_thread():
            return
        if _sigmask() != self._sigmask:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._sigmask)

    # --- the watchdog: releasing a batch held behind a slow job ----------------------------------
    def _start_watchdog(self) -> None:
        self._watchdog_stop = stop = threading.Event()
        self._watchdog_wake = wake = threading.Event()
        thread = threading.Thread(target=self._watch, args=(stop, wake),
                                  name="prefork-work-watchdog", daemon=True)
        # Process-directed signals (SIGALRM of soft timeouts, the master's INT/QUIT and hard
        # timeout) must reach the main thread, which runs the job and may be blocked in a
        # syscall that only a signal of its own interrupts: the watchdog is born with every
        # signal blocked (a thread inherits its creator's mask).
        main = threading.current_thread() is threading.main_thread()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals()) if main else None
        try:
            thread.start()
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._watchdog = thread

    def _stop_watchdog(self) -> None:
        thread, self._watchdog = self._watchdog, None
        if thread is not None:
            self._watchdog_stop.set()
            self._watchdog_wake.set()
            thread.join(5)  # a release in flight finishes under the fetch lock anyway

    def _watch(self, stop: threading.Event, wake: threading.Event) -> None:
        """While unstarted jobs wait behind a running one, wake at most every release_after
        seconds; park when the buffer is empty (no wake-ups while idle or unbatched)."""
        limit = self.release_after
        while not stop.is_set():
            if not self.buffer:
                # announce parking before the last look: the main thread fills the buffer
                # before it looks at _watchdog_parked, so one of the two sees the other
                self._watchdog_parked = True
                if not self.buffer:
                    wake.wait()
                wake.clear()
                self._watchdog_parked = False
                continue
            since = self._running_since
            waited = self.timer() - since if since else 0.0
            if since and waited >= limit:
                self._release_unstarted(since)  # afterwards the buffer is empty: park
            else:
                stop.wait(limit - waited)

    def _release_unstarted(self, since: float) -> None:
        with self._fetch_lock:
            if self._running_since != since:
                return  # that job ended in the meantime
            taken: list[tuple[str, bytes]] = []
            while True:
                try:
                    taken.append(self.buffer.pop())  # last first: RPUSH restores the order
                except IndexError:
                    break
            if not taken:
                return
            try:
                self.sequence = sequence = next(FETCH_SEQUENCE)
                self.store.fetch(self.pool_id, sequence, self.job_names, self.group_keys, 0,
                                 [Ack(queue, raw, REQUEUE) for queue, raw in taken])
            except Exception as err:  # noqa: BLE001 - never let this thread die silently
                # Maybe released, maybe not: they are in our in-progress lists or back in
                # their queues; the main thread's recovery settles which before its next fetch.
                self.needs_recovery = True
                self.log.warning("could not release jobs held behind a slow job",
                                 jobs=len(taken), error=str(err))
                return
        self.log.debug("released jobs held behind a slow job", jobs=len(taken))


def _sigmask() -> set[int | signal.Signals]:
    return signal.pthread_sigmask(signal.SIG_BLOCK, ())


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
