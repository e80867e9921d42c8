"""Prometheus metrics: exact counts after a run of known jobs through a real server,
including a child SIGKILLed under a job, a poison job, child recycling and a master restart."""

from __future__ import annotations

import socket
import textwrap

import pytest
from app_server import AppServer
from conftest import stop_all, wait_until
from prometheus_client.parser import text_string_to_metric_families

from prefork_work import App, Client, Enqueuer, Worker
from prefork_work.connection import redis_from_url
from prefork_work.keys import Keys
from prefork_work.metrics import render

NS = "met"
K = Keys(NS)

APP = textwrap.dedent('''
    import os, signal, time
    from prefork_work import App

    app = App()

    @app.job("ok")
    def ok(job):
        pass

    @app.job("fail", max_fails=1)
    def fail(job):
        raise RuntimeError("no")

    @app.job("drop", max_fails=1, skip_dead=True)
    def drop(job):
        raise RuntimeError("no")

    @app.job("retryme", max_fails=3, backoff=lambda job: 3600)
    def retryme(job):
        raise RuntimeError("later")

    @app.job("sleep", status=True)
    def sleep(job):
        time.sleep(job.args["s"])

    @app.job("poison")
    def poison(job):
        os.kill(os.getpid(), signal.SIGKILL)
''')


def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = render(client)
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(tmp_path, redis_url, r):
    servers: list[AppServer] = []

    def make() -> AppServer:
        servers.append(AppServer(tmp_path, redis_url, APP, module="met_app", namespace=NS,
                                 log_level="warning", max_crashes=2, max_jobs_per_child=7,
                                 hard_timeout_grace=5.0))
        return servers[-1]

    yield make
    stop_all(servers)


def test_metrics_are_exact_across_kills_recycling_and_restarts(server, r, redis_url) -> None:
    client = Client(NS, redis_from_url(redis_url))
    enq = Enqueuer(NS, r)
    srv = server().start()
    batch = {"ok": 30, "fail": 3, "drop": 2, "retryme": 4}
    enq.enqueue_many((name, {"i": i}) for name, n in batch.items() for i in range(n))

    def processed(name: str) -> float:
        return value(scrape(client), "prefork_work_jobs_processed_total", job_name=name)

    for name, n in batch.items():
        wait_until(lambda name=name, n=n: processed(name) >= n, 20, 0.05, f"{name} processed")

    # a child SIGKILLed under a job: the job is reclaimed, runs again, and counts once
    sleeper = enq.enqueue("sleep", {"s": 1.5})
    victim = srv.busy_child()
    running = client.job_status(sleeper.id)
    assert running is not None and running.state == "running"
    victim.kill()
    wait_until(lambda: processed("sleep") >= 1, 20, 0.05, "sleep processed")
    status = client.job_status(sleeper.id)  # recorded by a child of the prefork server
    assert status is not None and (status.state, status.host) == ("done", socket.gethostname())
    assert status.pool_id and status.duration is not None and status.duration >= 1.5
    # a poison job: reclaimed after its first crash, dead (by the master) after its second
    enq.enqueue("poison")
    wait_until(lambda: value(scrape(client), "prefork_work_jobs_dead_total", job_name="poison"),
               30, 0.05, "poison dead")
    wait_until(lambda: len(srv.children()) == 2, 10, message="replacement children")

    m = scrape(client)
    host = socket.gethostname()
    expect = {
        ("processed", "ok"): 30, ("failed", "ok"): 0,
        ("processed", "fail"): 3, ("failed", "fail"): 3, ("dead", "fail"): 3,
        ("processed", "drop"): 2, ("failed", "drop"): 2, ("dropped", "drop"): 2,
        ("dead", "drop"): 0,
        ("processed", "retryme"): 4, ("failed", "retryme"): 4, ("retried", "retryme"): 4,
        ("processed", "sleep"): 1, ("failed", "sleep"): 0,
        ("processed", "poison"): 1, ("failed", "poison"): 1, ("dead", "poison"): 1,
    }
    got = {(kind, name): value(m, f"prefork_work_jobs_{kind}_total", job_name=name)
           for kind, name in expect}
    assert got == expect
    for name, n in (("ok", 30), ("fail", 3), ("drop", 2), ("retryme", 4), ("sleep", 1)):
        assert value(m, "prefork_work_job_duration_seconds_count", job_name=name) == n
        assert value(m, "prefork_work_job_duration_seconds_bucket", job_name=name, le="+Inf") == n
    assert value(m, "prefork_work_job_duration_seconds_bucket", job_name="sleep", le="1.0") == 0
    assert value(m, "prefork_work_job_duration_seconds_bucket", job_name="sleep", le="2.5") == 1
    assert 1.5 <= value(m, "prefork_work_job_duration_seconds_sum", job_name="sleep") < 2.5
    assert value(m, "prefork_work_dead_jobs") == 4
    assert value(m, "prefork_work_retry_jobs") == 4
    assert value(m, "prefork_work_scheduled_jobs") == 0
    assert value(m, "prefork_work_queue_depth", job_name="ok") == 0
    assert value(m, "prefork_work_child_deaths_total", host=host, cause="SIGKILL") == 3
    assert value(m, "prefork_work_jobs_reclaimed_total", host=host) == 2
    # a replacement child writes its heartbeat when it has booted
    wait_until(lambda: value(scrape(client), "prefork_work_children", host=host) == 2, 10,
               0.05, "two children in the heartbeats")
    assert value(m, "prefork_work_redis_up") == 1
    assert value(m, "prefork_work_redis_errors_total") == 0

    # a new master: the counters go on from where they were
    srv.stop()
    srv = server().start()
    enq.enqueue_many(("ok", {"i": i}) for i in range(5))
    wait_until(lambda: processed("ok") >= 35, 20, 0.05, "ok processed after restart")
    m = scrape(client)
    assert value(m, "prefork_work_jobs_processed_total", job_name="ok") == 35
    assert value(m, "prefork_work_job_duration_seconds_count", job_name="ok") == 35
    assert value(m, "prefork_work_child_deaths_total", host=host, cause="SIGKILL") == 3


def test_queue_gauges_and_an_unreachable_redis(r, redis_url) -> None:
    app = App()
    app.register("a", lambda job: None)
    enq = Enqueuer(NS, r)
    enq.enqueue_many(("a", {"i": i}) for i in range(3))
    enq.enqueue_in("a", 600)
    client = Client(NS, r, clock=lambda: 2_000_000_000)
    m = scrape(client)
    assert value(m, "prefork_work_queue_depth", job_name="a") == 3
    assert value(m, "prefork_work_queue_latency_seconds", job_name="a") > 0
    assert value(m, "prefork_work_scheduled_jobs") == 1
    assert value(m, "prefork_work_jobs_processed_total", job_name="a") == 0

    # metrics off: the worker counts nothing
    Worker(app, r, NS, metrics=False, idle_waits=(0.01,)).drain()
    assert not r.exists(K.metrics())

    down = Client(NS, redis_from_url("unix:///nonexistent/redis.sock"))
    m = scrape(down)
    assert value(m, "prefork_work_redis_up") == 0


def test_a_worker_counts_the_redis_errors_it_rode_out(r) -> None:
    app = App()
    app.register("a", lambda job: None)
    worker = Worker(app, r, NS, idle_waits=(0.01,))
    worker._count("redis_errors")
    Enqueuer(NS, r).enqueue("a")
    worker.drain()
    m = scrape(Client(NS, r))
    assert value(m, "prefork_work_redis_errors_total") == 1
    assert value(m, "prefork_work_jobs_processed_total", job_name="a") == 1


def test_untrusted_fields_are_skipped(r) -> None:
    r.hset(K.metrics(), mapping={"processed:x": "nope", "duration:x:zz": 3, "weird": 1,
                                 "processed:y": 2})
    r.hset(K.host_metrics(), mapping={"deaths\tonly-two": 1, "reclaimed\th": 4})
    m = scrape(Client(NS, r))
    assert value(m, "prefork_work_jobs_processed_total", job_name="y") == 2
    assert value(m, "prefork_work_jobs_reclaimed_total", host="h") == 4





def test_a_reclaimed_jobs_late_acknowledgement_counts_nothing(r) -> None:
    """The reaper took the job back (the pool looked dead) before the worker acknowledged
    it: the job runs again, and only that run counts and leaves a status record."""
    app = App()
    app.register("a", lambda job: None, status=True)
    job = Enqueuer(NS, r).enqueue("a")
    worker = Worker(app, r, NS, idle_waits=(0.01,))
    assert worker._refill(limit=1)
    worker._process_next()  # ran; its acknowledgement waits for the next call
    assert r.rpoplpush(K.in_progress("a", worker.pool_id), K.jobs("a"))  # the reaper's move
    worker.flush()
    assert not r.hexists(K.metrics(), "processed:a")
    assert not r.hexists(K.status(), job.id)
    assert worker.drain() == 1
    m = scrape(Client(NS, r))
    assert value(m, "prefork_work_jobs_processed_total", job_name="a") == 1
    status = Client(NS, r).job_status(job.id)
    assert status is not None and status.state == "done"
