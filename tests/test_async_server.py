"""Every contract of the server, per job, with several jobs in flight in a child (issue 10
item 4): real `prefork-work` processes, real signals, what Redis holds afterwards.

The jobs append a JSON line per event (with the pid of the child that ran it) to an evidence
file, as in test_server_jobs.py.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

import psutil
import pytest
from app_server import RECORDING_APP, AppServer
from conftest import stop_all, wait_until

from prefork_work.enqueuer import Enqueuer
from prefork_work.inflight import ISOLATE
from prefork_work.job import Job
from prefork_work.keys import Keys

NS = "ta"
K = Keys(NS)

APP = RECORDING_APP + textwrap.dedent('''
    import asyncio

    @app.job("wait")
    async def wait(job):
        record(job, phase="start")
        await asyncio.sleep(job.args["s"])
        record(job, phase="end")

    @app.job("note")
    async def note(job):
        record(job, phase="start")
        job.checkin("halfway")
        await asyncio.sleep(job.args["s"])
        record(job, phase="end")

    @app.job("capped", max_concurrency=2)
    async def capped(job):
        record(job, phase="start")
        await asyncio.sleep(0.3)
        record(job, phase="end")

    @app.job("poison", max_fails=1)
    async def poison(job):
        record(job, phase="start")
        await asyncio.sleep(0.05)
        os._exit(3)

    BALLAST = []

    @app.job("hog")
    async def hog(job):
        BALLAST.append(bytearray(job.args["mb"] * 1024 * 1024))  # kept: the child stays big
        record(job, phase="start")
        await asyncio.sleep(job.args["s"])
        record(job, phase="end")

    @app.job("block")
    def block(job):
        record(job, phase="start")
        time.sleep(job.args["s"])
        record(job, phase="end")

    @app.job("hang", hard_timeout=0.5, max_fails=1)
    def hang(job):
        record(job, phase="start")
        time.sleep(30)  # in a thread: nothing can interrupt it
''')


class Server(AppServer):
    # a fast stop: jobs still running are requeued; a library may run a helper program
    # (ctypes' ldconfig) that start() must not take for a child
    stop_signal, stop_timeout, forks_only = signal.SIGINT, 20.0, True


@pytest.fixture
def server(tmp_path, redis_url, r):
    started: list[Server] = []

    def make(**options: object) -> Server:
        options = {"concurrency": 1, "jobs_per_child": 10, "shutdown_timeout": 10.0,
                   "hard_timeout_grace": 1.0, **options}
        srv = Server(tmp_path, redis_url, APP, module="ta_app", namespace=NS, log_level="info",
                     **options)
        started.append(srv)
        return srv.start()

    yield make
    stop_all(started)


def in_progress(r) -> list[bytes]:
    return [raw for key in r.scan_iter(match=K.in_progress("*", "*")) for raw in r.lrange(key, 0, -1)]


def title(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return ""


def test_one_pool_per_child_slots_observed_and_sigkill_requeues_all(server, r) -> None:
    srv = server(jobs_per_child=4)
    (child,) = srv.child_pids()
    jobs = Enqueuer(NS, r).enqueue_many([("wait", {"s": 30})] * 2 + [("note", {"s": 30})])
    wait_until(lambda: len(srv.records("start")) == 3, 10, message="three jobs in flight")
    # gocraft's model: one pool of concurrency 4, a worker id per slot
    (pool_id,) = [p.decode() for p in r.smembers(K.worker_pools())]
    beat = {k.decode(): v.decode() for k, v in r.hgetall(K.heartbeat(pool_id)).items()}
    assert beat["concurrency"] == "4"
    worker_ids = beat["worker_ids"].split(",")
    assert len(worker_ids) == 4
    # an observation hash per job in flight, written by the master within a second or so
    def observed() -> set[str]:
        return {r.hget(K.worker_observation(w), "job_id").decode()
                for w in worker_ids if r.hget(K.worker_observation(w), "job_id")}
    wait_until(lambda: observed() == {j.id for j in jobs}, 5, 0.05, "observations per slot")
    # the check-in of the job that made one, in its own slot's observation
    (noted,) = [w for w in worker_ids if r.hget(K.worker_observation(w), "job_id") == jobs[2].id.encode()]
    wait_until(lambda: r.hget(K.worker_observation(noted), "checkin") == b"halfway", 5, 0.05,
               "the check-in observed")
    assert all(r.hget(K.worker_observation(w), "checkin") is None for w in worker_ids if w != noted)
    wait_until(lambda: "busy 3/4" in title(child), 5, 0.1, "title busy 3/4")
    # SIGKILL: all three go back to their queue at once, and a new child is up within 1 s
    killed_at = time.monotonic()
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: [p for p in srv.child_pids() if p != child], 5, 0.01, "a new child")
    assert time.monotonic() - killed_at < 1.0

    def back() -> dict[str, Job]:  # queued, or already fetched again by the new child
        entries = r.lrange(K.jobs("wait"), 0, -1) + r.lrange(K.jobs("note"), 0, -1) + in_progress(r)
        return {job.id: job for job in map(Job.from_json, entries)}

    requeued = wait_until(lambda: len(back()) == 3 and back(), 1, 0.01, "all three requeued")
    assert time.monotonic() - killed_at < 1.5
    assert set(requeued) == {j.id for j in jobs}  # type: ignore[arg-type]
    # none is charged (not a failure, no crash counted); which one killed the child is
    # unknown, so each runs alone next time
    assert all(j.fails == 0 and j.extra.get(ISOLATE) for j in requeued.values())  # type: ignore[union-attr]
    assert not r.zcard(K.dead()) and not r.zcard(K.retry())
    assert not list(r.scan_iter(match=K.crashes("*")))
    wait_until(lambda: len(srv.records("start")) == 4, 5, 0.05, "one restarted in the new child")


def test_an_innocent_sharing_a_child_with_a_poison_job_is_not_dead_lettered(server, r) -> None:
    srv = server(concurrency=2, jobs_per_child=10, max_crashes=1)
    enqueuer = Enqueuer(NS, r)
    healthy = enqueuer.enqueue_many([("wait", {"s": 0.3})] * 25)
    poison = enqueuer.enqueue("poison")
    healthy += enqueuer.enqueue_many([("wait", {"s": 0.3})] * 25)
    wait_until(lambda: len({rec["id"] for rec in srv.records("end")}) == 50, 30, 0.1,
               "every healthy job done")
    wait_until(lambda: r.zcard(K.dead()) == 1, 15, 0.1, "the poison job dead")
    (dead,) = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert dead.id == poison.id and dead.err.startswith("worker died:")
    assert {rec["id"] for rec in srv.records("end")} == {j.id for j in healthy}
    # its one solo run killed one child; before, it crashed one shared child only
    assert 1 <= len(srv.records("start", "poison")) <= 2
    assert not in_progress(r) and not r.zcard(K.retry())


def test_sigterm_drains_every_job_in_flight(server, r) -> None:
    srv = server(jobs_per_child=5)
    Enqueuer(NS, r).enqueue_many([("wait", {"s": 1.0})] * 3 + [("block", {"s": 1.0})] * 2)
    wait_until(lambda: len(srv.records("start")) == 5, 10, message="five jobs in flight")
    assert srv.process is not None
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(15) == 0
    assert len(srv.records("end")) == 5
    assert not in_progress(r) and all(r.llen(K.jobs(n)) == 0 for n in ("wait", "block"))


def test_sigint_requeues_every_job_in_flight(server, r) -> None:
    srv = server(jobs_per_child=5)
    jobs = Enqueuer(NS, r).enqueue_many([("wait", {"s": 30})] * 3 + [("block", {"s": 30})] * 2)
    wait_until(lambda: len(srv.records("start")) == 5, 10, message="five jobs in flight")
    assert srv.process is not None
    srv.process.send_signal(signal.SIGINT)
    assert srv.process.wait(15) == 0
    queued = r.lrange(K.jobs("wait"), 0, -1) + r.lrange(K.jobs("block"), 0, -1)
    assert sorted(Job.from_json(q).id for q in queued) == sorted(j.id for j in jobs)
    assert all(Job.from_json(q).fails == 0 for q in queued)
    assert not in_progress(r) and not srv.records("end")


def test_hard_timeout_of_a_threaded_job_recycles_the_child_and_spares_the_others(server, r) -> None:
    srv = server(jobs_per_child=4)
    (child,) = srv.child_pids()
    enqueuer = Enqueuer(NS, r)
    others = enqueuer.enqueue_many([("block", {"s": 2})] * 2)
    wait_until(lambda: len(srv.records("start")) == 2, 10, message="two jobs in flight")
    hang = enqueuer.enqueue("hang")
    wait_until(lambda: r.zcard(K.dead()) == 1, 10, 0.05, "the late job failed")
    (dead,) = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert dead.id == hang.id and dead.err == "hard timeout after 0.5s"
    assert child not in srv.child_pids()  # the child was killed: a thread cannot be interrupted
    # the others ran again in the new child, uncounted
    wait_until(lambda: {rec["id"] for rec in srv.records("end")} == {j.id for j in others},
               10, 0.05, "the others done")
    assert not r.zcard(K.retry())


def test_max_concurrency_stays_exact_across_slots_and_children(server, r) -> None:
    srv = server(concurrency=2, jobs_per_child=5)
    Enqueuer(NS, r).enqueue_many([("capped", None)] * 10)
    wait_until(lambda: len(srv.records("end")) == 10, 15, 0.05, "all capped jobs done")
    events = sorted([(rec["at"], 1) for rec in srv.records("start")]
                    + [(rec["at"], -1) for rec in srv.records("end")], key=lambda e: (e[0], e[1]))
    running, most = 0, 0
    for _, delta in events:
        running += delta
        most = max(most, running)
    assert most == 2


def test_pause_stops_new_fetches_and_max_jobs_recycles_after_in_flight(server, r) -> None:
    srv = server(jobs_per_child=4, max_jobs_per_child=4)
    (child,) = srv.child_pids()
    r.set(K.paused("wait"), "1")
    Enqueuer(NS, r).enqueue_many([("wait", {"s": 1.0})] * 4)
    time.sleep(0.5)
    assert not srv.records() and r.llen(K.jobs("wait")) == 4
    r.delete(K.paused("wait"))
    r.lpush(K.wake(), "1")
    wait_until(lambda: len(srv.records("start")) == 4, 10, 0.05, "the four jobs started")
    # the budget is spent: the child is recycled, but only once its jobs in flight are done
    wait_until(lambda: child not in srv.child_pids(), 10, 0.05, "the child recycled")
    ends = srv.records("end")
    assert len(ends) == 4 and {rec["pid"] for rec in ends} == {child}
    assert not in_progress(r)


def test_memory_limit_recycles_only_after_the_jobs_in_flight(server, r) -> None:
    # the master checks RSS every 5 s: jobs of 6.5 s are still in flight at the first check
    # after the hog grew the child, and must all finish in it, none failed or requeued
    srv = server(jobs_per_child=4, max_memory_per_child=80)
    (child,) = srv.child_pids()
    Enqueuer(NS, r).enqueue_many([("hog", {"mb": 200, "s": 6.5})] + [("wait", {"s": 6.5})] * 3)
    wait_until(lambda: len(srv.records("start")) == 4, 10, 0.05, "the four jobs started")
    wait_until(lambda: child not in srv.child_pids() and len(srv.child_pids()) == 1, 20, 0.05,
               "the child recycled")
    ends = srv.records("end")
    assert len(ends) == 4 and {rec["pid"] for rec in ends} == {child}
    assert len(srv.records("start")) == 4  # nothing ran twice
    assert not in_progress(r) and r.zcard(K.retry()) == 0 and r.zcard(K.dead()) == 0
    assert "recycling child" in srv.log.read_text()
