"""The one place that wires the generic prefork master (``supervisor``) to the job system.

Each child is one gocraft pool of concurrency 1 with its own pool id and worker id. The
master owns everything periodic: heartbeats of all children (one pipeline), observations
read from the children's shared-memory slots, the requeuer, the dead-pool reaper and the
periodic enqueuer. When a child dies the master reclaims its in-progress jobs at once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import structlog

from prefork_work.app import App, JobType
from prefork_work.config import Config, load_config
from prefork_work.connection import redis_from_url
from prefork_work.embedded import EmbeddedRedis
from prefork_work.errors import ConfigError, PreforkWorkError, RedisUnavailable
from prefork_work.inflight import ISOLATE, ConcurrentWorker
from prefork_work.job import Job, make_identifier
from prefork_work.keys import Keys
from prefork_work.loops.heartbeater import Heartbeater, PoolInfo, hostname
from prefork_work.loops.periodic import PeriodicEnqueuer
from prefork_work.loops.reaper import DeadPoolReaper
from prefork_work.loops.requeuer import Requeuer
from prefork_work.observations import ObservationWriter, SlotRecord
from prefork_work.outcome import Outcome, settle_in_progress
from prefork_work.safepath import prepare_imports
from prefork_work.store.metrics import MetricsStore
from prefork_work.store.pools import PoolStore
from prefork_work.store.queue import QueueStore
from prefork_work.web_process import WebProcess
from prefork_work.worker import OutageWait, Worker
from supervisor import (
    ChildContext,
    ChildView,
    ExitInfo,
    Interrupted,
    KillCause,
    MasterView,
    PeriodicTask,
    Supervisor,
    SupervisorSettings,
)

log = structlog.get_logger("prefork_work.server")

OBSERVATION_INTERVAL = 1.0  # gocraft's observer flushes once a second
# Children stop fetching once their master has been silent this long: its heartbeats (every
# 5 s) stop with it, and a Go reaper takes a pool whose heartbeat is 10 s old for dead.
MASTER_SILENCE = 3.0
EMBEDDED_CHECK_INTERVAL = 1.0
WEB_CHECK_INTERVAL = 1.0


def supervisor_settings(config: Config) -> SupervisorSettings:
    """The supervisor's knobs from the config: at start and again on every reload (HUP)."""
    return SupervisorSettings(
        concurrency=config.server.concurrency,
        shutdown_timeout=config.server.shutdown_timeout,
        hard_timeout_grace=config.server.hard_timeout_grace,
        max_jobs_per_child=config.server.max_jobs_per_child or None,
        max_memory_per_child=config.server.max_memory_per_child * 1024 * 1024 or None,
    )


def load_app(spec: str) -> App:
    """Import ``module:attribute`` and check it is an App; failures are ConfigError (exit 78)."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any failure to import is the operator's to fix: one clear line
        raise ConfigError(
            f"server.app: cannot import {module_name!r}: {type(err).__name__}: {err}"
        ) from err
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise ConfigError(f"server.app: {spec!r} is {type(app).__name__}, not a prefork_work App")
    if not app.job_types:
        raise ConfigError(f"server.app: {spec!r} registers no job types")
    return app


def reimport_app(spec: str) -> App:
    """Import the app's top-level package afresh (HUP), so children run the new code."""
    root = spec.partition(":")[0].partition(".")[0]
    if root not in ("prefork_work", "supervisor"):
        for name in [n for n in sys.modules if n == root or n.startswith(root + ".")]:
            del sys.modules[name]
    else:
        sys.modules.pop(spec.partition(":")[0], None)
    importlib.invalidate_caches()
    app = load_app(spec)
    # the new module's globals are fresh: its startup hooks run before its first fork; a
    # failure fails the reload (before the server swaps apps) and the old generation runs on
    app.run_hooks("startup")
    return app


@dataclass(slots=True)
class ChildRecord:
    """One child: one gocraft pool of concurrency jobs_per_child, a worker id per slot."""

    pool_id: str
    worker_ids: list[str]
    started_at: int
    slots: list[SlotRecord]

    @classmethod
    def new(cls, jobs_per_child: int) -> ChildRecord:
        ids = [make_identifier() for _ in range(max(1, jobs_per_child))]
        return cls(make_identifier(), ids, int(time.time()), [SlotRecord(i) for i in ids])

    @property
    def worker_id(self) -> str:
        return self.worker_ids[0]


def hard_timeout_of(job_type: JobType | None, grace: float) -> float | None:
    if job_type is None:
        return None
    if job_type.hard_timeout:
        return job_type.hard_timeout
    if job_type.timeout:
        return job_type.timeout + grace
    return None


class ScoreboardObserver:
    """Observes jobs through the child's shared-memory slot: no Redis, no syscall per job.

    The slot's extra blob holds the raw job bytes (decoded by the master only for the rare
    job that is still running when observations are written) and, after a check-in,
    ``raw NUL checkin_at NUL message``: the time of the check-in travels with it, so that
    Go's client and web UI see when the job last checked in, not when the master looked.
    """

    # a check-in must fit the slot: past this the raw bytes are left out of it (their args
    # were already observed, or were too long to be decoded from the slot anyway)
    ROOM_FOR_RAW = 4096

    def __init__(self, ctx: ChildContext, grace: float, slot: int | None = None) -> None:
        self.ctx = ctx
        self.grace = grace
        self.raw = b""
        # None: the child's one slot, through ctx.job() (signals may interrupt the job);
        # a number: that sub-slot of a child running several jobs at once, written directly
        self.slot = ctx.slot if slot is None else ctx.slots[slot]
        self.shared = slot is not None
        self.room = min(self.ROOM_FOR_RAW, self.slot.extra_max // 2)

    @contextlib.contextmanager
    def observe(self, job: Job, job_type: JobType) -> Iterator[None]:
        limit = hard_timeout_of(job_type, self.grace)
        self.raw = job.raw or b""
        label = f"{job.id} {job.name}"
        deadline = time.monotonic() + limit if limit else None
        if self.shared:
            self.slot.begin(label, deadline, self.raw)
            try:
                yield
            finally:
                self.slot.end()
            return
        with self.ctx.job(label, deadline=deadline, extra=self.raw):
            yield

    def checkin(self, job: Job, message: str) -> None:
        raw = self.raw if len(self.raw) <= self.room else b""
        self.slot.note(raw + b"\0" + str(int(time.time())).encode() + b"\0"
                       + message.encode("utf-8", "replace"))


class MasterWatch:
    """The worker's ``quiet`` test in a child: quiet on TSTP, and while the master is frozen.

    Called before every job, so it reads the shared memory at most every ``CHECK_EVERY``
    seconds (a clock read otherwise, a fraction of a microsecond). A quiet worker fetches
    nothing and gives its unstarted prefetched jobs back to their queues."""

    CHECK_EVERY = 0.05

    def __init__(self, ctx: ChildContext, limit: float) -> None:
        self.ctx = ctx
        self.limit = limit
        self.next_check = 0.0

    def __call__(self) -> bool:
        ctx = self.ctx
        now = time.monotonic()
        if now < self.next_check:
            return ctx.quiet or ctx.master_unresponsive
        self.next_check = now + self.CHECK_EVERY
        silent = ctx.master_silence()
        if silent > self.limit:
            if not ctx.master_unresponsive:
                ctx.master_unresponsive = True
                log.warning("master unresponsive; not fetching", master_pid=ctx.master_pid,
                            silent_for=round(silent, 1))
        elif ctx.master_unresponsive:
            ctx.master_unresponsive = False
            log.info("master responsive again; fetching", master_pid=ctx.master_pid)
        return ctx.quiet or ctx.master_unresponsive


class RedisOutage:
    """The master's loops during a Redis outage: one warning when it starts, one line when it
    ends, instead of a traceback from every loop every second."""

    def __init__(self) -> None:
        self.failing: set[str] = set()

    def tolerate(self, name: str, tick: Callable[[float, MasterView], object],
                 ) -> Callable[[float, MasterView], None]:
        def run(now: float, master: MasterView) -> None:
            try:
                tick(now, master)
            except RedisUnavailable as err:
                if not self.failing:
                    log.warning("redis unavailable; the master's loops will retry", error=str(err))
                self.failing.add(name)
                return
            if name in self.failing:
                self.failing.discard(name)
                if not self.failing:
                    log.info("redis reachable again")

        return run


class WorkServer:
    """The ChildApp the supervisor drives: everything job-specific about the server."""

    def __init__(self, config: Config, app: App, redis_url: str,
                 embedded: EmbeddedRedis | None = None) -> None:
        self.config = config
        self.app = app
        self.redis_url = redis_url
        self.embedded = embedded
        self.web: WebProcess | None = None  # [web] listen: the supervised web app (run())
        self.master_id = make_identifier()
        self.host = hostname()
        self.keys = Keys(config.server.namespace)
        self.redis = redis_from_url(redis_url, client_name="prefork-work:master",
                                    socket_timeout=config.redis.socket_timeout,
                                    cluster=config.redis.cluster, settings=config.redis)
        self.pools = PoolStore(self.redis, self.keys)
        self.observations = ObservationWriter(self.pools)
        # this side's state of each child, by ChildView.key: filled before the fork, so the
        # child finds its own record in its copy of this dict
        self.records: dict[int, ChildRecord] = {}
        self.reaped_local = False
        self._build_loops()

    def _build_loops(self) -> None:
        self.heartbeater = Heartbeater(self.pools, list, host=self.host)  # _heartbeat passes the pools
        self.reaper = DeadPoolReaper(self.pools, lambda: list(self.app.job_types),
                                     live_pools=self._live_pool_ids)
        self.requeuer = Requeuer(self.pools)
        self.periodic = PeriodicEnqueuer(self.pools, [(p.name, p.spec) for p in self.app.periodic_jobs])

    def announce(self) -> None:
        """What gocraft's WorkerPool.Start writes: caps and known job names."""
        QueueStore(self.redis, self.keys).set_max_concurrency(
            {n: t.max_concurrency for n, t in self.app.job_types.items()})

    # --- supervisor hooks: master side ---------------------------------------------------------
    def prepare_child(self, child: ChildView) -> None:
        self.records[child.key] = ChildRecord.new(child.jobs)

    def child_exited(self, child: ChildView, info: ExitInfo) -> None:
        record = self.records.pop(child.key)
        now = time.time()
        states = child.slots()
        busy = [s for s in states if s.busy]
        state = busy[0] if len(busy) == 1 else states[0]
        running_requeued = False
        try:
            if len(busy) > 1 and not info.clean:
                self._settle_shared_jobs(record, busy, info, now)
            elif state.busy and not info.clean:
                running_requeued = self._settle_running_job(record, state.label, info, now)
            moved = self.reaper.reclaim_pool(record.pool_id, now, names=self.app.job_types)
            self.heartbeater.remove(record.pool_id, record.worker_ids)
        except PreforkWorkError as err:
            # The pool keeps its lists and heartbeat; the reaper takes it once it is stale.
            log.error("could not reclaim a dead child's jobs", pool_id=record.pool_id, error=str(err))
            return
        if moved:  # the one line for this pool (the reaper's reclaim_pool logs nothing)
            job: dict[str, str] = {}
            if running_requeued:
                job_id, _, name = state.label.partition(" ")
                job = {"job_id": job_id, "job_name": name}
            log.info("requeued a dead child's jobs", pool_id=record.pool_id, jobs=moved,
                     pid=child.pid, cause=info.cause or info.describe(), **job)
        self._count_host(None if info.clean else info.describe(), moved)

    def _count_host(self, death: str | None, reclaimed: int) -> None:
        """Per-host counters for /metrics; a failure to count never stops the master."""
        if (death is None and not reclaimed) or not self.config.server.metrics:
            return
        try:
            MetricsStore(self.redis, self.keys).count_host(self.host, death, reclaimed)
        except PreforkWorkError as err:
            log.warning("could not count a child's death", error=str(err))

    def _count_outcome(self, name: str, outcome: Outcome) -> None:
        if not self.config.server.metrics:
            return
        try:
            MetricsStore(self.redis, self.keys).count_outcome(name, outcome)
        except PreforkWorkError as err:
            log.warning("could not count a job's outcome", job_name=name, error=str(err))

    def _settle_shared_jobs(self, record: ChildRecord, busy: list[Any], info: ExitInfo,
                            now: float) -> None:
        """A child died with several jobs in flight.

        Stops (shutdown timeout, interrupt) are no job's fault: reclaim_pool requeues them
        all. At a hard timeout the late jobs fail and the others are requeued uncounted. Any
        other death cannot be pinned on one of them: none is charged a crash; each goes back
        to its queue marked to run alone, where a crash counts."""
        if info.cause is not None and info.cause.stop:
            return
        labels = [s.label for s in busy]
        if info.cause is KillCause.HARD_TIMEOUT:
            mono = time.monotonic()
            for s in busy:
                if s.deadline is not None and mono >= s.deadline:
                    job_id, _, name = s.label.partition(" ")
                    self._fail_hard_timeout(record.pool_id, name, job_id, now)
            return
        isolated = 0
        for label in labels:
            job_id, _, name = label.partition(" ")
            found = self.pools.in_progress_job(record.pool_id, name, job_id)
            if found is None:
                continue
            raw, job = found
            job.extra[ISOLATE] = True
            if self.pools.mark_in_progress(record.pool_id, name, raw, job.to_json()):
                isolated += 1  # reclaim_pool puts it back in its queue with the others
        log.warning("a child died with several jobs in flight; each is retried alone before "
                    "a crash counts against it", pool_id=record.pool_id, jobs=isolated,
                    cause=info.describe())

    def _settle_running_job(self, record: ChildRecord, label: str, info: ExitInfo, now: float) -> bool:
        """Judge the job a child died running; True when it goes back to its queue as it was."""
        job_id, _, name = label.partition(" ")
        if info.cause is not None and info.cause.stop:
            return True  # not the job's fault: reclaim_pool puts it back in its queue
        if info.cause is KillCause.HARD_TIMEOUT:
            self._fail_hard_timeout(record.pool_id, name, job_id, now)
            return False
        verdict = self.reaper.record_crash(record.pool_id, name, job_id, info.describe(),
                                           self.config.server.max_crashes, now)
        if verdict == "dead":
            self._count_outcome(name, Outcome.DEAD)
        log.warning("a job's process died under it", job_id=job_id, job_name=name,
                    cause=info.describe(), verdict=verdict)
        return verdict == "requeued"

    def _fail_hard_timeout(self, pool_id: str, name: str, job_id: str, now: float) -> None:
        job_type = self.app.job_types.get(name)
        limit = hard_timeout_of(job_type, self.config.server.hard_timeout_grace)
        error = f"hard timeout after {limit:g}s" if limit else "hard timeout"
        outcome = settle_in_progress(self.pools, pool_id, name, job_id, job_type, error, now,
                                     cause="job killed at its hard timeout")
        if outcome is not None:
            self._count_outcome(name, outcome)

    def reload(self) -> SupervisorSettings:
        if self.config.path is None:
            raise ConfigError("no config file to reload")
        config = load_config(self.config.path)
        prepare_imports(config.server.python_path)
        self.app = reimport_app(config.server.app)
        fixed = [name for name, old, new in (
            ("redis.url", self.config.redis.url, config.redis.url),
            ("redis.cluster", self.config.redis.cluster, config.redis.cluster),
            ("server.namespace", self.config.server.namespace, config.server.namespace),
            ("server.state_dir", self.config.server.state_dir, config.server.state_dir),
            ("server.jobs_per_child", self.config.server.jobs_per_child,
             config.server.jobs_per_child),
        ) if old != new]
        if fixed:  # children of both generations must share one Redis and namespace
            log.warning("changed settings need a restart, not a reload; keeping the old values",
                        settings=fixed)
            config = replace(config, redis=self.config.redis, server=replace(
                config.server, namespace=self.config.server.namespace,
                state_dir=self.config.server.state_dir,
                jobs_per_child=self.config.server.jobs_per_child))
        self.config = config
        self._build_loops()
        self.announce()
        log.info("reloaded", job_types=len(self.app.job_types))
        return supervisor_settings(config)

    def status_line(self, master: MasterView) -> str:
        busy = sum(c.busy_slots() for c in master.children)
        return f"[{self.config.server.namespace}] {len(master.children)} children, {busy} busy"

    def tasks(self) -> list[PeriodicTask]:
        outage = RedisOutage()
        tasks = [
            # the loops are rebuilt on reload (new job names, new cron specs): look them up
            # at each tick rather than binding this generation's objects into the timers
            PeriodicTask("heartbeat", self.heartbeater.interval,
                         outage.tolerate("heartbeat", self._heartbeat)),
            PeriodicTask("observations", OBSERVATION_INTERVAL,
                         outage.tolerate("observations", self._write_observations)),
            PeriodicTask("requeuer", self.requeuer.interval,
                         outage.tolerate("requeuer", lambda now, _: self.requeuer.tick(now))),
            PeriodicTask("reaper", self.reaper.interval, outage.tolerate("reaper", self._reap)),
            PeriodicTask("periodic", self.periodic.interval,
                         outage.tolerate("periodic", lambda now, _: self.periodic.tick(now))),
        ]
        if self.web is not None:
            tasks.append(PeriodicTask("web", WEB_CHECK_INTERVAL, self._check_web, run_at_start=False))
        if self.embedded is not None:
            tasks.append(PeriodicTask("embedded-redis", EMBEDDED_CHECK_INTERVAL, self._check_embedded,
                                      run_at_start=False))
        return tasks

    def shutdown(self) -> None:
        if self.web is not None:
            self.web.stop()  # first: it reads Redis until the end
        self.app.run_hooks("shutdown")  # the last child is gone; Redis is still up
        if self.embedded is not None:
            self.embedded.stop()  # last: SHUTDOWN flushes its append-only file
            log.info("stopped embedded redis")

    # --- supervisor hooks: child side -----------------------------------------------------------
    def child_main(self, ctx: ChildContext) -> int:
        record = self.records[ctx.key]
        structlog.contextvars.bind_contextvars(pool_id=record.pool_id)
        # after fork, before the first fetch; HookFailed fails this child's start (the
        # master's crash-loop backoff applies and its log names the hook)
        self.app.run_hooks("child_start")
        outage = OutageWait(log)
        worker: Worker | None = None
        while worker is None:
            if ctx.stop_requested or not ctx.master_alive():
                return self._child_stopped()
            try:
                worker = self._child_worker(ctx, record)
            except RedisUnavailable as err:
                # Redis down while this child boots: wait as a running worker does, rather
                # than die and send the master into crash-loop backoff over an outage
                outage.wait(err)
        ctx.ready()
        if isinstance(worker, ConcurrentWorker):
            # INT/QUIT only set a flag here: the worker requeues every job in flight and returns
            worker.work(until=lambda: (ctx.stop_requested and not ctx.interrupted)
                        or not ctx.master_alive(),
                        quiet=MasterWatch(ctx, MASTER_SILENCE), max_jobs=ctx.max_jobs)
            if worker.requeued_in_flight:
                return 0  # a fast stop requeued jobs in flight: not a clean stop, no exit hooks
            return self._child_stopped()
        try:
            worker.work(until=lambda: ctx.stop_requested or not ctx.master_alive(),
                        quiet=MasterWatch(ctx, MASTER_SILENCE), max_jobs=ctx.max_jobs)
        except Interrupted:
            # a fast stop (INT/QUIT): the worker has put the job back at the front of its
            # queue with the unstarted rest of its batch (or, if Redis failed it, the
            # master reclaims them when this child is gone)
            job_id, _, name = ctx.interrupted_label.partition(" ")
            log.info("interrupted; the job goes back to its queue", job_id=job_id, job_name=name)
            raise  # no exit hooks: this is not a clean stop
        return self._child_stopped()

    def _child_stopped(self) -> int:
        """A clean stop (drain, recycle, TTOU): a fast stop raises Interrupted past this."""
        self.app.run_hooks("child_exit")
        return 0

    def _child_worker(self, ctx: ChildContext, record: ChildRecord) -> Worker:
        """This child's worker, its pool's heartbeat written first, so no reaper takes the pool
        for dead before its first fetch. RedisUnavailable when Redis (or, for a cluster
        client, which connects as it is built, every node) cannot be reached."""
        if self.embedded is not None:  # the socket is still served by our redis-server
            self.embedded.verify()
        client = redis_from_url(self.redis_url, client_name=f"prefork-work:child:{ctx.index}",
                                socket_timeout=self.config.redis.socket_timeout,
                                cluster=self.config.redis.cluster, settings=self.config.redis)
        Heartbeater(PoolStore(client, self.keys), list, host=self.host).beat_one(
            self._pool_info(os.getpid(), record), time.time())
        jobs_per_child = len(ctx.slots)
        if jobs_per_child > 1 or self.app.has_async:
            grace = self.config.server.hard_timeout_grace
            return ConcurrentWorker(
                self.app, client, self.config.server.namespace,
                lifecycle_hooks=False,  # child_main runs them, as for Worker
                jobs_per_child=jobs_per_child, pool_id=record.pool_id,
                worker_ids=record.worker_ids,
                observers=[ScoreboardObserver(ctx, grace, i) for i in range(jobs_per_child)],
                interrupted=lambda: ctx.interrupted,
                main_thread_job=lambda job: _main_thread_job(ctx, job),
                requeue_exceptions=(Interrupted,),
                max_payload_bytes=self.config.server.max_payload_bytes,
                metrics=self.config.server.metrics, status_ttl=self.config.server.status_ttl,
                host=self.host,
            )
        return Worker(
            self.app, client, self.config.server.namespace,
            lifecycle_hooks=False,  # child_main runs them: start before ready, exit after
            pool_id=record.pool_id, worker_id=record.worker_id,
            observer=ScoreboardObserver(ctx, self.config.server.hard_timeout_grace),
            requeue_exceptions=(Interrupted,),
            max_payload_bytes=self.config.server.max_payload_bytes,
            metrics=self.config.server.metrics, status_ttl=self.config.server.status_ttl,
            host=self.host,
        )

    # --- periodic work ----------------------------------------------------------------------------
    def _reap(self, now: float, master: MasterView) -> None:
        if not self.reaped_local:
            # a master restarting on this host takes its predecessor's orphans at once
            self._count_host(None, self.reaper.reap_local_orphans(self.host, now))  # logs each pool
            self.reaped_local = True
        self._count_host(None, self.reaper.tick(now))

    def _check_embedded(self, now: float, master: MasterView) -> None:
        assert self.embedded is not None
        if not self.embedded.alive() and master.stopping is None:
            log.error("embedded redis died; restarting it")
            self.embedded.start()

    def _check_web(self, now: float, master: MasterView) -> None:
        assert self.web is not None
        if master.stopping is None:
            self.web.check()

    def _live_pool_ids(self) -> set[str]:
        return {r.pool_id for r in self.records.values()}

    def _pool_info(self, pid: int, record: ChildRecord) -> PoolInfo:
        return PoolInfo(record.pool_id, pid, list(record.worker_ids), sorted(self.app.job_types),
                        len(record.worker_ids),
                        record.started_at,
                        {"master_pid": str(os.getpid() if pid != os.getpid() else os.getppid()),
                         "master_id": self.master_id})

    def _heartbeat(self, now: float, master: MasterView) -> None:
        infos = [self._pool_info(c.pid, self.records[c.key]) for c in master.children
                 if c.key in self.records]
        self.heartbeater.tick(now, infos)

    def _write_observations(self, now: float, master: MasterView) -> None:
        """Mirror the children's slots into gocraft's observation hashes, in one pipeline."""
        self.observations.mirror(
            (pair for c in master.children if c.key in self.records
             for pair in zip(self.records[c.key].slots, c.slots(), strict=False)), now)


@contextlib.contextmanager
def _main_thread_job(ctx: ChildContext, job: Job) -> Iterator[None]:
    """A job run alone on a concurrent child's main thread: INT/QUIT raise Interrupted and the
    hard-timeout signal HardTimeout inside it, as in a child running one job at a time."""
    ctx.current_label = f"{job.id} {job.name}"
    ctx.in_job = True
    try:
        yield
    finally:
        ctx.in_job = False
        ctx.current_label = ""


def start_redis(config: Config) -> tuple[str, EmbeddedRedis | None]:
    if config.redis.url:
        return config.redis.url, None
    embedded = EmbeddedRedis.for_state_dir(config.server.state_dir, config.path)
    embedded.start()
    assert embedded.binary is not None and embedded.process is not None
    log.info("started embedded redis", server=embedded.binary.name,
             version=embedded.binary.version_text, binary=embedded.binary.path,
             pid=embedded.process.pid, socket=str(embedded.socket_path))
    return embedded.url, embedded


def run(config: Config, app: App) -> int:
    """Run the server until it is told to stop; returns the exit code."""
    web = None
    if config.web.listen and config.path is not None:
        # a process of its own, not a job worker: see web_process.py
        web = WebProcess(config.path, config.web.listen)
        web.check_installed()  # before anything starts: a missing extra is exit 78
    redis_url, embedded = start_redis(config)
    try:
        server = WorkServer(config, app, redis_url, embedded)
        server.announce()
        app.run_hooks("startup")  # HookFailed is a ConfigError: exit 78, like an import error
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    supervisor = Supervisor(server, supervisor_settings(config), title="prefork-work",
                            jobs_per_child=config.server.jobs_per_child)
    if web is not None:
        server.web = web
        web.start()
    return supervisor.run()
