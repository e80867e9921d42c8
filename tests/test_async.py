"""Several jobs in flight in one process (issue 10 items 1, 2): ``async def`` handlers on an
event loop, sync handlers in a thread pool, middleware of both kinds, soft timeouts.

In-process: a ``ConcurrentWorker`` on the suite's private Redis. The server's side (real
processes, signals) is in test_async_server.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import LateFetch, late_fetch_app

from prefork_work.app import App
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import ConfigError, JobTimeout
from prefork_work.inflight import ISOLATE, ConcurrentWorker
from prefork_work.job import Job
from prefork_work.keys import Keys

NS = "as"
K = Keys(NS)


def nothing_in_progress(r) -> bool:
    return not list(r.scan_iter(match=K.in_progress("*", "*")))


def run(app: App, r, n: int, **options) -> ConcurrentWorker:
    worker = ConcurrentWorker(app, r, NS, jobs_per_child=n, **options)
    worker.drain()
    return worker


def test_async_jobs_run_concurrently_and_are_acknowledged(r) -> None:
    app = App()
    running, most = [0], [0]

    @app.job("wait")
    async def wait(job: Job) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.2)
        running[0] -= 1

    Enqueuer(NS, r).enqueue_many([("wait", None)] * 40)
    started = time.monotonic()
    worker = run(app, r, 20)
    took = time.monotonic() - started
    assert worker.jobs_done == 40
    assert most[0] == 20  # never more than jobs_per_child in flight, and that many
    assert took < 1.5, took  # two rounds of 0.2 s, not 40 x 0.2 s
    assert r.llen(K.jobs("wait")) == 0 and nothing_in_progress(r)


def test_async_and_sync_middleware_around_an_async_handler(r) -> None:
    app = App()
    calls: list[str] = []

    @app.middleware
    async def outer(job: Job, next):
        calls.append("async before")
        result = await next()
        calls.append("async after")
        return result

    @app.middleware
    def inner(job: Job, next):
        calls.append("sync")
        return next()  # the handler's awaitable, passed on

    @app.job("a")
    async def a(job: Job) -> None:
        calls.append("handler")

    assert app.has_async
    Enqueuer(NS, r).enqueue("a")
    run(app, r, 4)
    assert calls == ["async before", "sync", "handler", "async after"]


def test_async_middleware_and_sync_middleware_around_a_threaded_sync_handler(r) -> None:
    app = App()
    where: dict[str, str] = {}

    @app.middleware
    async def on_loop(job: Job, next):
        where["async middleware"] = threading.current_thread().name
        return await next()

    @app.middleware
    def in_thread(job: Job, next):
        where["sync middleware"] = threading.current_thread().name
        return next()

    @app.job("s")
    def s(job: Job) -> None:
        where["handler"] = threading.current_thread().name

    Enqueuer(NS, r).enqueue("s")
    run(app, r, 4)
    assert where["async middleware"] == "MainThread"
    assert where["sync middleware"] == where["handler"] != "MainThread"


def test_soft_timeout_cancels_one_async_job_and_leaves_the_others(r) -> None:
    app = App()
    seen: list[str] = []

    @app.job("late", timeout=0.2, max_fails=1)
    async def late(job: Job) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    @app.job("fine")
    async def fine(job: Job) -> None:
        await asyncio.sleep(0.4)
        seen.append("fine")

    Enqueuer(NS, r).enqueue_many([("late", None)] + [("fine", None)] * 5)
    started = time.monotonic()
    run(app, r, 10)
    assert time.monotonic() - started < 2
    assert sorted(seen) == ["cancelled"] + ["fine"] * 5
    dead = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert [(d.name, d.err) for d in dead] == [("late", "soft timeout after 0.2s")]
    assert nothing_in_progress(r)


def test_sync_jobs_run_in_a_thread_pool_of_jobs_per_child(r) -> None:
    app = App()
    threads: set[str] = set()

    @app.job("block")
    def block(job: Job) -> None:
        threads.add(threading.current_thread().name)
        time.sleep(0.2)

    Enqueuer(NS, r).enqueue_many([("block", None)] * 16)
    started = time.monotonic()
    worker = run(app, r, 8)
    assert worker.jobs_done == 16
    assert time.monotonic() - started < 1.5  # two rounds of 8 threads, not 16 x 0.2 s
    assert len(threads) == 8 and "MainThread" not in threads
    assert nothing_in_progress(r)


def test_threads_false_runs_alone_on_the_main_thread(r) -> None:
    app = App()
    events: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def note(what: str) -> None:
        with lock:
            events.append((what, threading.current_thread().name, time.monotonic()))

    @app.job("shared")
    def shared(job: Job) -> None:
        note("shared start")
        time.sleep(0.1)
        note("shared end")

    @app.job("unsafe", threads=False)
    def unsafe(job: Job) -> None:
        note("unsafe start")
        time.sleep(0.1)
        note("unsafe end")

    Enqueuer(NS, r).enqueue_many([("shared", None)] * 6 + [("unsafe", None)] * 2
                                 + [("shared", None)] * 6)
    run(app, r, 4)
    assert {t for what, t, _ in events if what.startswith("unsafe")} == {"MainThread"}
    # while an unsafe job runs, nothing else does
    for start, end in zip([e for e in events if e[0] == "unsafe start"],
                          [e for e in events if e[0] == "unsafe end"], strict=True):
        inside = [e for e in events if start[2] < e[2] < end[2] and e[0].startswith("shared")]
        assert not inside, inside
    assert len([e for e in events if e[0] == "shared end"]) == 12


def test_soft_timeout_of_a_sync_job_alone_on_the_main_thread(r) -> None:
    app = App()

    @app.job("stuck", timeout=0.2, max_fails=1, threads=False)
    def stuck(job: Job) -> None:
        time.sleep(5)

    Enqueuer(NS, r).enqueue("stuck")
    started = time.monotonic()
    run(app, r, 4)
    assert time.monotonic() - started < 2
    (dead,) = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert dead.err == "soft timeout after 0.2s"


def test_an_isolated_job_runs_alone_and_loses_its_mark(r) -> None:
    app = App()
    running, overlap = [0], []

    @app.job("j", max_fails=2)
    async def j(job: Job) -> None:
        running[0] += 1
        if (job.args or {}).get("alone"):
            overlap.append(running[0])
        await asyncio.sleep(0.1)
        running[0] -= 1
        if (job.args or {}).get("alone"):
            raise RuntimeError("fails once")

    marked = Job.new("j", {"alone": True})
    marked.extra[ISOLATE] = True
    Enqueuer(NS, r).enqueue_many([("j", None)] * 5)
    r.rpush(K.jobs("j"), marked.to_json())
    Enqueuer(NS, r).enqueue_many([("j", None)] * 5)
    run(app, r, 8)
    assert overlap == [1]  # nothing else ran beside it
    (retry,) = [Job.from_json(m) for m in r.zrange(K.retry(), 0, -1)]
    assert retry.id == marked.id and ISOLATE not in retry.extra  # its retry runs as any job


def test_app_knows_async_jobs_and_validates_threads() -> None:
    app = App()

    @app.job("sync")
    def sync(job: Job) -> None: ...

    assert not app.has_async and not app.job_types["sync"].is_async

    class Callable_:
        async def __call__(self, job: Job) -> None: ...

    app.register("obj", Callable_())
    assert app.job_types["obj"].is_async and app.has_async
    with pytest.raises(ConfigError, match="threads must be a bool"):
        app.register("bad", sync, threads="no")


def test_job_timeout_is_the_outcome_not_a_crash(r) -> None:
    # JobTimeout raised by the job itself is an ordinary failure
    app = App()

    @app.job("t", max_fails=1)
    async def t(job: Job) -> None:
        raise JobTimeout("my own")

    Enqueuer(NS, r).enqueue("t")
    run(app, r, 2)
    (dead,) = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert dead.err == "my own"


def test_a_failure_around_a_job_frees_its_slot_and_requeues_the_job(r) -> None:
    # an observer that fails once: the slot is freed, the job goes back and runs again
    app = App()
    ran: list[str] = []

    @app.job("j")
    async def j(job: Job) -> None:
        ran.append(job.id)

    class Flaky:
        failed = False

        def observe(self, job, job_type):
            if not Flaky.failed:
                Flaky.failed = True
                raise RuntimeError("observer broke")
            import contextlib

            return contextlib.nullcontext()

        def checkin(self, job, message) -> None: ...

    (job,) = Enqueuer(NS, r).enqueue_many([("j", None)])
    worker = ConcurrentWorker(app, r, NS, jobs_per_child=2, observers=[Flaky(), Flaky()])
    worker.drain()  # the failed attempt; its job is recovered at the next fetch
    worker.drain()
    assert ran == [job.id] and worker.free and not worker.in_flight
    assert nothing_in_progress(r) and r.llen(K.jobs("j")) == 0


def test_uvloop_is_used_when_installed_and_never_required(monkeypatch) -> None:
    import sys

    from prefork_work.inflight import new_event_loop

    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed: asyncio's own loop
    loop = new_event_loop()
    assert type(loop).__module__.startswith("asyncio")
    loop.close()
    monkeypatch.delitem(sys.modules, "uvloop")
    uvloop = pytest.importorskip("uvloop")
    loop = new_event_loop()
    assert isinstance(loop, uvloop.Loop)
    loop.close()


def test_jobs_in_flight_are_counted_and_recorded_as_one_at_a_time(r) -> None:
    """A child with jobs_per_child > 1 keeps Worker's books: outcome counters and the
    duration histogram for /metrics, and status records for job types with status=True."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from prefork_work.client import Client
    from prefork_work.metrics import render

    app = App()

    @app.job("ok", status=True)
    async def ok(job: Job) -> None:
        await asyncio.sleep(0.05)

    @app.job("boom", status=True, max_fails=1)
    async def boom(job: Job) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("no luck")

    @app.job("plain")
    def plain(job: Job) -> None:  # a sync job, in the thread pool
        time.sleep(0.01)

    enq = Enqueuer(NS, r)
    oks = [enq.enqueue("ok") for _ in range(3)]
    failed = enq.enqueue("boom")
    plains = [enq.enqueue("plain") for _ in range(2)]
    worker = run(app, r, 4, host="host-c")
    assert worker.jobs_done == 6

    client = Client(NS, r)
    for job in oks:
        st = client.job_status(job.id)
        assert st is not None and st.state == "done" and st.host == "host-c", st
        assert st.pool_id == worker.pool_id and st.duration is not None and st.duration >= 0.04
    st = client.job_status(failed.id)
    assert st is not None and st.state == "dead" and st.fails == 1 and "no luck" in st.error
    assert client.job_status(plains[0].id) is None  # status=False: done, nothing recorded

    body, _ = render(client)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}

    def v(name: str, job_name: str) -> float:
        return samples.get((name, (("job_name", job_name),)), 0.0)

    assert v("prefork_work_jobs_processed_total", "ok") == 3
    assert v("prefork_work_jobs_processed_total", "plain") == 2
    assert v("prefork_work_jobs_failed_total", "boom") == 1
    assert v("prefork_work_jobs_dead_total", "boom") == 1
    assert v("prefork_work_job_duration_seconds_count", "ok") == 3
    assert v("prefork_work_job_duration_seconds_count", "plain") == 2
    assert v("prefork_work_job_duration_seconds_sum", "ok") >= 0.15


def test_a_late_copy_of_a_lost_fetch_after_recovery_is_refused(r) -> None:
    # as test_worker's: the fence refuses a lost call that reaches Redis after recovery,
    # so no job is left in this live pool's in-progress list while jobs are in flight
    late: dict = {}
    app, ran = late_fetch_app(r, NS, 30, late)
    worker = ConcurrentWorker(app, r, NS, jobs_per_child=4, idle_waits=(0.01,))
    late["fetch"] = LateFetch(worker)
    worker.drain()
    assert len(ran) == 30 and set(ran.values()) == {1}, ran
    assert nothing_in_progress(r) and r.llen(K.jobs("wat")) == 0
    assert late["reply"] == [-1, []]
