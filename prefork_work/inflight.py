"""One gocraft pool of concurrency ``jobs_per_child``: several jobs in flight in one process.

Used by a child when ``[server] jobs_per_child`` > 1 or the app has ``async def`` jobs or
middleware (with 1 and none, the child runs ``worker.Worker``, one job at a time, unchanged).

The child's main thread runs an asyncio event loop (uvloop's when installed). It keeps up to
``jobs_per_child`` jobs in flight: ``async def`` handlers as tasks on the loop, sync
handlers in a thread pool of that size, except job types registered with ``threads=False``
and jobs retried in isolation (below), which run alone on the main thread: the loop waits
until nothing else is in flight, runs the job, and only then starts others.

Fetching and acknowledging keep the one-round-trip-per-batch design: jobs that finished
since the last call are acknowledged by the next fetch, which asks for as many jobs as there
are free slots. Every fetched job sits in the pool's in-progress list until acknowledged.

Timeouts: the soft timeout of an ``async def`` job cancels its task (the job sees
``asyncio.CancelledError`` at its ``await``; it fails with ``JobTimeout``), leaving the
other jobs alone. A sync job in a thread cannot be interrupted: past its hard timeout the
master kills the whole child, the late job fails, and the others go back to their queues
without counting as failures (``server.WorkServer.child_exited``).

Isolation: when a child dies with several jobs in flight, nobody knows which one killed it.
None of them is charged a crash; each goes back to its queue marked ``ISOLATE`` and runs
alone next time, so only a job that kills a process by itself is counted (``max_crashes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefork_work.app import App, JobType, is_async_callable
from prefork_work.errors import JobTimeout, RedisUnavailable
from prefork_work.job import Job
from prefork_work.outcome import STRAY_JOB_ERROR
from prefork_work.store.queue import Ack
from prefork_work.worker import (
    REDIS_RETRY_WAITS,
    REQUEUE,
    SUCCESS,
    Observer,
    RedisObserver,
    Worker,
    soft_timeout,
)

if TYPE_CHECKING:
    import redis

# The payload field that marks a job to run alone (it shared a process that died). A field
# of the job's JSON, kept by prefork-work's round trips (Go's client would drop it).
ISOLATE = "prefork_isolate"
POLL = 0.05  # seconds between looks at the stop flags while jobs run


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (the ``async`` extra), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass(slots=True)
class _Start:
    queue: str
    raw: bytes
    job: Job | None  # None: the payload does not decode (it goes to dead)
    job_type: JobType | None
    alone: bool  # runs on the main thread with nothing else in flight


class ConcurrentWorker(Worker):
    """Runs up to ``jobs_per_child`` jobs at once; see the module's docstring."""

    def __init__(
        self,
        app: App,
        redis_client: redis.Redis,
        namespace: str = "work",
        *,
        jobs_per_child: int,
        worker_ids: Sequence[str] | None = None,
        observers: Sequence[Observer] | None = None,
        interrupted: Callable[[], bool] = lambda: False,
        main_thread_job: Callable[[Job], contextlib.AbstractContextManager[Any]] | None = None,
        **options: Any,
    ) -> None:
        ids = list(worker_ids or [])
        super().__init__(app, redis_client, namespace, worker_id=ids[0] if ids else None,
                         **options)
        self.slots = max(1, jobs_per_child)
        if len(ids) < self.slots:
            from prefork_work.job import make_identifier

            ids = ([self.worker_id] + [make_identifier() for _ in range(self.slots)])[:self.slots]
        self.worker_ids = ids
        self.observers: list[Observer] = list(observers) if observers else [
            RedisObserver(self.store, wid, self.clock) for wid in ids]
        self.interrupted = interrupted
        # fetched ahead of the free slots (they sit in the in-progress list, and go back to
        # their queues on any stop); none with one slot, as Worker's batches of slow jobs
        self.prefetch = min(self.max_batch, self.slots // 4)
        # around a job run alone on the main thread: the server lets INT/QUIT and the hard
        # timeout signal raise inside it, as in a child running one job at a time
        self.main_thread_job = main_thread_job or (lambda job: contextlib.nullcontext())
        self.free = list(range(self.slots - 1, -1, -1))  # slot numbers, popped from the end
        self.in_flight: dict[int, tuple[str, bytes]] = {}  # slot -> (queue, raw)
        self.tasks: set[asyncio.Future[Any]] = set()
        self.alone_running = False
        self.started = 0
        self.interrupting = False
        self.requeued_in_flight = False
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Future[None] | None = None
        self._async_names = {n for n, t in app.job_types.items() if t.is_async}  # decided once
        self._sync_middlewares = [m for m in app.middlewares if not is_async_callable(m)]
        self._async_middlewares = [m for m in app.middlewares if is_async_callable(m)]

    # --- public loop API ----------------------------------------------------------------------
    def _work(self, until: Callable[[], bool] | None, quiet: Callable[[], bool] | None,
              max_jobs: int | None) -> bool:
        """``Worker.work``'s loop: on stop every job in flight finishes first (SIGTERM's
        drain); on ``interrupted()`` (INT/QUIT) they all go back to the front of their
        queues, which is not a clean stop (no ``on_child_exit`` hooks) unless none was in
        flight."""
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._main(until, quiet, max_jobs))
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            self.close()
        return not self.requeued_in_flight

    def drain(self) -> int:
        """Run jobs until a fetch finds none and nothing is in flight; returns how many ran."""
        before = self.jobs_done
        self._work(lambda: not self.tasks and not self.buffer and self._last_fetch == 0, None, None)
        return self.jobs_done - before

    _last_fetch = -1

    # --- the loop -------------------------------------------------------------------------------
    async def _main(self, until: Callable[[], bool] | None, quiet: Callable[[], bool] | None,
                    max_jobs: int | None) -> None:
        self._last_fetch = -1
        outage_failures = 0
        while True:
            if self.interrupted():
                await self._interrupt()
                return
            if self.stop_requested or (until and until()):
                break
            left = max_jobs - self.started if max_jobs else None
            if (quiet and quiet()) or left == 0:
                if self.buffer or self.acks:
                    self._give_back()
                await self._wait(0.1)
                continue
            try:
                self._start_buffered(left)
                want = self._want(left)
                if want:
                    with self._fetch_lock:
                        if self.needs_recovery:
                            self._recover()
                        self._last_fetch = self._call_fetch(want)
                    outage_failures = 0
                    if self._last_fetch:
                        self.idle_count = 0
                        continue
                elif self.acks:
                    # no fetch to carry them (every slot busy, or a job runs alone): a
                    # finished job must not wait long in the in-progress list
                    self.flush()
            except RedisUnavailable as err:
                if self.metrics:
                    self._count("redis_errors")
                if outage_failures == 0:
                    self.log.warning("redis unavailable; retrying", error=str(err))
                await self._wait(REDIS_RETRY_WAITS[min(outage_failures, len(REDIS_RETRY_WAITS) - 1)])
                outage_failures += 1
                continue
            if self.tasks:
                await self._wait(POLL)
            elif not self.buffer:
                # nothing in flight: block on the wake list (bounded), as Worker does
                try:
                    self._wait_for_work()
                except RedisUnavailable as err:
                    if self.metrics:
                        self._count("redis_errors")
                    self.log.warning("redis unavailable; retrying", error=str(err))
                    await asyncio.sleep(REDIS_RETRY_WAITS[0])
        # a graceful stop: every job in flight finishes (the master kills us at its
        # shutdown_timeout, and then requeues what is still in progress)
        while self.tasks:
            if self.interrupted():
                await self._interrupt()
                return
            await self._wait(POLL)

    def _want(self, left: int | None) -> int:
        """How many jobs to fetch now: enough for the free slots plus a few ahead, so that a
        slot that frees up starts its next job without waiting for a round trip; 0 while
        fewer than half a batch are missing (a fetch per finished job would cost a round
        trip per job)."""
        if self.alone_running:
            return 0
        target = len(self.free) + self.prefetch
        if left is not None:
            target = min(target, left - len(self.buffer))
        want = min(self.max_batch, target - len(self.buffer))
        if want <= 0 or (self.buffer and want < max(1, self.prefetch // 2)):
            return 0
        if not self.free and not self.buffer:
            return 0
        return want

    async def _wait(self, timeout: float) -> None:
        """Sleep until a job finishes or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_later(timeout, _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def _start_buffered(self, left: int | None) -> None:
        loop = asyncio.get_running_loop()
        while self.buffer and self.free and not self.alone_running:
            if left is not None and left <= 0:
                return
            queue, raw = self.buffer[0]
            start = self._prepare(queue, raw)
            if start.alone and self.tasks:
                return  # it waits until nothing else is in flight
            self.buffer.popleft()
            slot = self.free.pop()
            self.in_flight[slot] = (queue, raw)
            self.started += 1
            if left is not None:
                left -= 1
            if start.alone:
                self.alone_running = True
            task = loop.create_task(self._run_slot(slot, start))
            self.tasks.add(task)
            task.add_done_callback(self._finished)

    def _prepare(self, queue: str, raw: bytes) -> _Start:
        try:
            job = Job.from_json(raw)
        except Exception:  # noqa: BLE001 - judged (and sent to dead) when it runs
            return _Start(queue, raw, None, None, False)
        job_type = self.app.job_types.get(job.name)
        alone = bool(job.extra and job.extra.get(ISOLATE)) or (
            job_type is not None and job.name not in self._async_names
            and (self.slots == 1 or not job_type.threads))
        return _Start(queue, raw, job, job_type, alone)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self.tasks.discard(task)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _run_slot(self, slot: int, start: _Start) -> None:
        began = self.timer()
        status: tuple[str, bytes] | None = None
        try:
            ack, status = await self._execute_async(slot, start, began)
        except asyncio.CancelledError:
            if self.interrupting:
                return  # _interrupt() has put it back in its queue
            raise
        except RedisUnavailable as err:
            # e.g. a unique job's lock could not be read: the job stays in progress and goes
            # back to its queue when the next fetch recovers this pool's lists
            self.needs_recovery = True
            self.log.warning("redis unavailable; job left to recovery", error=str(err))
            ack = None
        except Exception as err:  # noqa: BLE001 - a slot must never stay taken for good
            # not the job's outcome (that is caught inside): a failure around it, e.g. an
            # observer's. The job goes back to its queue through recovery, unjudged.
            self.needs_recovery = True
            self.log.error("job slot failed; the job goes back to its queue",
                           error=f"{type(err).__name__}: {err}")
            ack = None
        finally:
            if start.alone:
                self.alone_running = False
                # it ran on the main thread: undo a change of its signal mask (Worker's rule)
                self._restore_sigmask()
        if self.interrupting:
            return
        self.in_flight.pop(slot, None)
        self.free.append(slot)
        if ack is not None:
            if status is not None:  # the index its ack is about to have, as Worker does
                self.statuses.append((len(self.acks), *status))
            self.acks.append(ack)
            self.jobs_done += 1
            if self.metrics:
                self._time(start.queue, self.timer() - began)

    async def _interrupt(self) -> None:
        """A fast stop: every job in flight and every unstarted one goes back to its queue."""
        self.interrupting = True
        held = list(self.in_flight.values())
        self.requeued_in_flight = bool(held)  # not a clean stop (no exit hooks)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # let them see their cancellation (threads run on; the process exits)
            await asyncio.wait(tasks, timeout=0.1)
        self.in_flight.clear()
        self.acks.extend(Ack(queue, raw, REQUEUE) for queue, raw in reversed(held))
        self.log.info("interrupted; the jobs in flight go back to their queues", jobs=len(held))
        try:
            self._give_back()
        except RedisUnavailable as err:  # the master reclaims them when this child is gone
            self.log.warning("could not requeue on interrupt", error=str(err))
        self.acks = []
        self.statuses = []  # their acks are gone with them
        self.stop_requested = True

    def _held(self) -> set[bytes]:
        # jobs in flight are held too: recovery must not put a running job back in its queue
        return super()._held() | {raw for _, raw in self.in_flight.values()}

    # --- running one job ------------------------------------------------------------------------
    async def _execute_async(self, slot: int, start: _Start,
                             began: float) -> tuple[Ack, tuple[str, bytes] | None]:
        """The job's ack, and (job id, status record) when its type asks for one."""
        queue, raw = start.queue, start.raw
        now = int(self.clock())
        if start.job is None:
            try:
                Job.from_json(raw)
            except Exception as err:  # noqa: BLE001 - nothing read from Redis kills a child
                return self._malformed(queue, raw, err, now), None
        job = start.job
        assert job is not None
        try:
            if job.unique:
                job = self._take_unique(job, raw)
            job_type = self.app.job_types.get(job.name)
        except self._passthrough:
            raise
        except Exception as err:  # noqa: BLE001
            return self._malformed(queue, raw, err, now), None
        if job_type is None:
            return self._failed(queue, raw, job, None, STRAY_JOB_ERROR, now), None
        if job.extra:
            job.extra.pop(ISOLATE, None)  # it runs alone now; a retry of it need not
        observer = self.observers[slot]
        job._checkin_hook = observer.checkin
        run_began = self.timer()
        with observer.observe(job, job_type):
            error = await self._run_async(job, job_type, start.alone)
        if error is None:
            if self.log_success:
                self.log.debug("job succeeded", job_id=job.id, job_name=job.name,
                               duration=round(self.timer() - began, 6))
            ack = Ack(queue, raw, SUCCESS)
        else:
            ack = self._failed(queue, raw, job, job_type, error, int(self.clock()))
        if not job_type.status:
            return ack, None
        return ack, (job.id, self._status_record(job, ack, now, self.timer() - run_began))

    async def _run_async(self, job: Job, job_type: JobType, alone: bool) -> BaseException | None:
        """Middleware and handler; a job's exception becomes its outcome, as in Worker._run."""
        job.context = self.app.context_factory()
        try:
            if job.name in self._async_names:
                if self.app.middlewares:
                    await self._with_timeout(self._async_chain(job, job_type, 0), job_type)
                else:
                    await self._with_timeout(job_type.handler(job), job_type)
            else:
                await self._async_then_sync(job, job_type, alone, 0)
        except self.requeue_exceptions:
            raise
        except JobTimeout as err:
            return err
        except asyncio.CancelledError:
            if self.interrupting:
                raise
            return JobTimeout("cancelled")  # the job cancelled itself, or a task it awaited
        except Exception as err:  # a job's failure, whatever it is, is an outcome
            return err
        return None

    async def _with_timeout(self, awaitable: Any, job_type: JobType) -> Any:
        if not job_type.timeout:
            return await awaitable
        timer = asyncio.timeout(job_type.timeout)
        try:
            async with timer:
                return await awaitable
        except TimeoutError:
            if timer.expired():
                raise JobTimeout(f"soft timeout after {job_type.timeout:g}s") from None
            raise

    async def _async_chain(self, job: Job, job_type: JobType, index: int) -> Any:
        """Every middleware around an async handler: async ones awaited, sync ones called
        (a sync middleware returning ``next()``'s awaitable passes it on)."""
        chain = self.app.middlewares
        if index == len(chain):
            return await job_type.handler(job)
        result = chain[index](job, lambda: self._async_chain(job, job_type, index + 1))
        while inspect.isawaitable(result):
            result = await result
        return result

    async def _async_then_sync(self, job: Job, job_type: JobType, alone: bool, index: int) -> Any:
        """A sync handler: the async middleware on the loop, then the sync middleware and the
        handler together, in a thread (or, alone, on the main thread)."""
        chain = self._async_middlewares
        if index < len(chain):
            return await chain[index](
                job, lambda: self._async_then_sync(job, job_type, alone, index + 1))
        if alone:
            return self._sync_chain(job, job_type, main=True)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.slots, thread_name_prefix="prefork-work-job")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sync_chain, job, job_type, False)

    def _sync_chain(self, job: Job, job_type: JobType, main: bool) -> Any:
        chain = self._sync_middlewares

        def call(index: int) -> Any:
            if index == len(chain):
                return job_type.handler(job)
            return chain[index](job, lambda: call(index + 1))

        if not main:  # no SIGALRM in a thread: its timeout is the hard one (the child goes)
            return call(0)
        with self.main_thread_job(job), soft_timeout(job_type.timeout) as run:
            result = call(0)
            run.finished = True
        return result


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
