"""Job status by id: records of job types that ask for them, and any job where it sits."""

from __future__ import annotations

import threading

import pytest

from prefork_work import App, Client, Enqueuer, Job, Worker
from prefork_work.keys import Keys

NS = "work"
K = Keys(NS)


class Clock:
    def __init__(self, now: float = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_worker(r, app: App, **kwargs) -> Worker:
    kwargs.setdefault("idle_waits", (0.01,))
    return Worker(app, r, NS, **kwargs)


def status_app(status: bool = True) -> App:
    app = App()

    @app.job("ok", status=status)
    def ok(job: Job) -> None:
        pass

    @app.job("boom", status=status, max_fails=2)
    def boom(job: Job) -> None:
        raise RuntimeError("it broke <badly>")

    @app.job("gone", status=status, max_fails=1, skip_dead=True)
    def gone(job: Job) -> None:
        raise RuntimeError("dropped")

    return app


def test_done_retry_dead_and_dropped_from_records(r) -> None:
    clock = Clock()
    enq = Enqueuer(NS, r)
    done, failing, dropped = enq.enqueue("ok"), enq.enqueue("boom"), enq.enqueue("gone")
    worker = make_worker(r, status_app(), clock=clock, host="host-a")
    client = Client(NS, r, clock=clock)
    assert worker.drain() == 3

    status = client.job_status(done.id)
    assert status is not None and status.state == "done"
    d = status.to_dict()
    assert list(d) == ["id", "name", "state", "fails", "enqueued_at", "started_at",
                       "finished_at", "duration", "error", "pool_id", "host"]
    assert d["id"] == done.id and d["name"] == "ok" and d["fails"] == 0 and d["error"] == ""
    assert d["enqueued_at"] == done.t and d["started_at"] == int(clock.now)
    assert d["finished_at"] == int(clock.now) and 0 <= d["duration"] < 1
    assert d["pool_id"] == worker.pool_id and d["host"] == "host-a"

    retry = client.job_status(failing.id)
    assert retry is not None and retry.state == "retry"
    assert retry.fails == 1 and retry.error == "it broke <badly>" and retry.host == "host-a"
    assert retry.finished_at == int(clock.now) and retry.duration is not None

    gone = client.job_status(dropped.id)
    assert gone is not None and gone.state == "dead" and gone.error == "dropped"

    # the retry comes due, runs again and dies: the record follows it
    clock.now += 10_000
    r.zadd(K.retry(), {m: 0 for m in r.zrange(K.retry(), 0, -1)})  # due now
    from prefork_work.loops.requeuer import Requeuer
    from prefork_work.store.pools import PoolStore

    Requeuer(PoolStore(r, K)).tick(clock.now)
    queued = client.job_status(failing.id)
    assert queued is not None and queued.state == "queued" and queued.fails == 1
    assert worker.drain() == 1
    dead = client.job_status(failing.id)
    assert dead is not None and dead.state == "dead" and dead.fails == 2
    assert dead.error == "it broke <badly>" and dead.pool_id == worker.pool_id

    # retried by an operator: back in its queue, whatever the record says
    client.retry_all_dead_jobs()
    again = client.job_status(failing.id)
    assert again is not None and again.state == "queued" and again.fails == 0


def test_go_enqueued_jobs_are_found_where_they_sit(r) -> None:
    """No status option, no record: scheduled, queued, running, retry and dead are found
    from the job's own JSON, as a Go producer writes it."""
    enq = Enqueuer(NS, r)
    client = Client(NS, r)
    scheduled = enq.enqueue_in("ok", 3600, {"a": 1}).job
    for _ in range(3):
        enq.enqueue("ok")
    queued = enq.enqueue("ok", {"b": 2})
    st = client.job_status(scheduled.id)
    assert st is not None and (st.state, st.name, st.enqueued_at) == ("scheduled", "ok", scheduled.t)
    st = client.job_status(queued.id)
    assert st is not None and st.state == "queued"

    # running: in a pool's in-progress list (how a Go pool holds a job it runs)
    r.delete(K.jobs("ok"))
    running = Job(name="ok", id="0123456789abcdef01234567", t=1_700_000_000, args={})
    r.sadd(K.worker_pools(), "gopool")
    r.hset(K.heartbeat("gopool"), mapping={"host": "go-host", "worker_ids": "w1",
                                             "heartbeat_at": 1, "job_names": "ok"})
    r.lpush(K.in_progress("ok", "gopool"), running.to_json())
    r.hset(K.worker_observation("w1"), mapping={"job_name": "ok", "job_id": running.id,
                                                "started_at": 1_700_000_001})
    st = client.job_status(running.id)
    assert st is not None and (st.state, st.pool_id, st.host) == ("running", "gopool", "go-host")
    assert st.started_at == 1_700_000_001

    # a Go pool's job of a name this namespace does not know: its observation still shows it
    r.hset(K.worker_observation("w1"), mapping={"job_name": "other", "job_id": "feedfeed"})
    st = client.job_status("feedfeed")
    assert st is not None and (st.state, st.name, st.host) == ("running", "other", "go-host")

    failed = Job(name="ok", id="aaaaaaaaaaaaaaaaaaaaaaaa", t=5, args={}, fails=1, err="nope",
                 failed_at=7)
    r.zadd(K.retry(), {failed.to_json(): 100})
    st = client.job_status(failed.id)
    assert st is not None and (st.state, st.fails, st.error, st.finished_at) == ("retry", 1, "nope", 7)
    died = Job(name="ok", id="bbbbbbbbbbbbbbbbbbbbbbbb", t=5, args={}, fails=4, err="gave up",
               failed_at=9)
    r.zadd(K.dead(), {died.to_json(): 9})
    st = client.job_status(died.id)
    assert st is not None and (st.state, st.fails, st.error) == ("dead", 4, "gave up")

    assert client.job_status("cccccccccccccccccccccccc") is None
    # a job whose *arguments* contain another job's id is not that job
    enq.enqueue("ok", {"note": '"id":"dddddddddddddddddddddddd"'})
    assert client.job_status("dddddddddddddddddddddddd") is None
    for bad in ("", "x" * 201, None):
        with pytest.raises(ValueError):
            client.job_status(bad)  # type: ignore[arg-type]


def test_running_job_of_an_in_process_worker(r) -> None:
    started, release = threading.Event(), threading.Event()
    app = App()

    @app.job("slow", status=True)
    def slow(job: Job) -> None:
        started.set()
        release.wait(10)

    job = Enqueuer(NS, r).enqueue("slow")
    worker = make_worker(r, app)
    client = Client(NS, r)
    # the heartbeat a pool writes, so the job's pool is known
    r.sadd(K.worker_pools(), worker.pool_id)
    r.hset(K.heartbeat(worker.pool_id), mapping={"host": "h", "worker_ids": worker.worker_id})
    thread = threading.Thread(target=worker.run_one)
    thread.start()
    try:
        assert started.wait(10)
        st = client.job_status(job.id)
        assert st is not None and (st.state, st.pool_id, st.host) == ("running", worker.pool_id, "h")
        assert st.started_at is not None  # the in-process observer wrote it
    finally:
        release.set()
        thread.join(10)
    st = client.job_status(job.id)
    assert st is not None and st.state == "done"


def test_status_off_writes_nothing(r) -> None:
    job = Enqueuer(NS, r).enqueue("ok")
    make_worker(r, status_app(status=False)).drain()
    assert not r.exists(K.status()) and not r.exists(K.status_expiry())
    assert Client(NS, r).job_status(job.id) is None  # done, and nothing asked to remember it


def test_records_expire_after_status_ttl(r) -> None:
    clock = Clock()
    enq = Enqueuer(NS, r)
    first = [enq.enqueue("ok") for _ in range(20)]
    worker = make_worker(r, status_app(), clock=clock, status_ttl=60)
    worker.drain()
    assert r.hlen(K.status()) == 20 and r.zcard(K.status_expiry()) == 20
    clock.now += 61
    for _ in range(20):
        enq.enqueue("ok")
    worker.drain()
    # later writes prune what expired: the hash holds only the last TTL's records
    assert r.hlen(K.status()) == 20 and r.zcard(K.status_expiry()) == 20
    assert Client(NS, r).job_status(first[0].id) is None


def test_a_malformed_record_is_ignored(r) -> None:
    job = Enqueuer(NS, r).enqueue("ok")
    r.hset(K.status(), job.id, b"{not json")
    st = Client(NS, r).job_status(job.id)
    assert st is not None and st.state == "queued"
    r.hset(K.status(), "x1", b'{"state": "done", "fails": "many", "name": 7}')
    st = Client(NS, r).job_status("x1")
    assert st is not None and st.state == "done" and st.fails == 0 and st.name == ""


def test_a_dead_job_is_found_past_the_first_scan_steps(r) -> None:
    # the scan of a big set goes step by step (scan_zset.lua): a job in any step, the last
    # included, is found by id, and a job whose args only mention the id is not taken for it
    client = Client(NS, r)
    members = {Job(name="ok", id=f"{i:024x}", t=1, args={"i": i}).to_json(): 1000 + i
               for i in range(50)}
    decoy = Job(name="ok", id="d" * 24, t=1, args={"ref": '"id":"' + f"{49:024x}" + '"'})
    members[decoy.to_json()] = 999
    r.zadd(K.dead(), members)
    for i in (0, 7, 49):
        assert client.store.scan_zset(K.dead(), f'"id":"{i:024x}"'.encode(), step=7)
        status = client.job_status(f"{i:024x}")
        assert status is not None and status.state == "dead", i
    assert client.dead_job_score(f"{49:024x}") == 1049
    assert client.job_status("e" * 24) is None
