"""gocraft/work's client_test.go, plus pause / unpause / set_max_concurrency and the W18, W28
and W29 fixes (where Go's test asserts the buggy behaviour, ours asserts the fix and says so)."""

from __future__ import annotations

import threading
import time

import pytest

from prefork_work.app import App
from prefork_work.client import Client
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import NotDeleted, NotRetried
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.loops.heartbeater import Heartbeater, PoolInfo
from prefork_work.store.pools import PoolStore
from prefork_work.worker import Worker

NS = "work"
K = Keys(NS)
NOW = 1_700_000_000


def clock() -> float:
    return NOW


def failing_app(max_fails: int = 4) -> App:
    app = App()

    @app.job("wat", max_fails=max_fails)
    def wat(job: Job) -> None:
        raise RuntimeError("ohno")

    return app


def kill_jobs(r, count: int, name: str = "wat", args: dict | None = None) -> list[Job]:
    """``count`` jobs in the dead set (MaxFails 1), at failure times NOW-count+1 .. NOW."""
    app = App()
    app.register(name, lambda job: (_ for _ in ()).throw(RuntimeError("ohno")), max_fails=1)
    jobs = []
    before = r.zcard(K.dead())
    for i in range(count):
        moment = NOW - count + 1 + i
        jobs.append(Enqueuer(NS, r, clock=lambda m=moment: m).enqueue(name, args or {"i": i}))
        Worker(app, r, NS, clock=lambda m=moment: m, idle_waits=(0.01,)).drain()
    assert r.zcard(K.dead()) == before + count
    return jobs


def test_worker_pool_heartbeats(r) -> None:
    store = PoolStore(r, K)
    pools = [PoolInfo("pool-a", 11, ["w2", "w1"], ["wat", "bob"], 10, NOW - 5),
             PoolInfo("pool-b", 12, ["w3"], ["foo", "bar"], 11, NOW - 4)]
    Heartbeater(store, lambda: pools, host="h1").tick(NOW)
    beats = Client(NS, r).worker_pool_heartbeats()
    assert [b.worker_pool_id for b in beats] == ["pool-a", "pool-b"]
    assert beats[0].job_names == ["bob", "wat"] and beats[0].worker_ids == ["w1", "w2"]
    assert (beats[0].concurrency, beats[1].concurrency) == (10, 11)
    assert beats[0].heartbeat_at == NOW and beats[0].started_at == NOW - 5
    assert beats[0].host == "h1" and beats[0].pid == 11
    r.sadd(K.worker_pools(), "pool-c")  # an id without a hash still appears, with zero values
    beats = Client(NS, r).worker_pool_heartbeats()
    assert beats[2].worker_pool_id == "pool-c" and beats[2].job_names is None
    for pool in ("pool-a", "pool-b", "pool-c"):
        store.remove_pool(pool, [])
    assert Client(NS, r).worker_pool_heartbeats() == []


def test_worker_observations_busy_and_idle(r) -> None:
    started = threading.Event()
    release = threading.Event()
    app = App()

    @app.job("wat")
    def wat(job: Job) -> None:
        job.checkin("halfway")
        started.set()  # after the check-in: the test reads both at once
        release.wait(5)

    Enqueuer(NS, r).enqueue("wat", {"a": 1, "b": 2})
    busy = Worker(app, r, NS, idle_waits=(0.01,))
    idle = Worker(app, r, NS, idle_waits=(0.01,))
    Heartbeater(PoolStore(r, K), lambda: [
        PoolInfo(busy.pool_id, 1, [busy.worker_id], ["wat"], 1, NOW),
        PoolInfo(idle.pool_id, 2, [idle.worker_id], ["wat"], 1, NOW),
    ]).tick(NOW)
    thread = threading.Thread(target=busy.run_one)
    thread.start()
    try:
        assert started.wait(5)
        observations = Client(NS, r).worker_observations()
        assert len(observations) == 2
        by_id = {o.worker_id: o for o in observations}
        seen = by_id[busy.worker_id]
        assert seen.is_busy and seen.job_name == "wat" and seen.args_json == '{"a":1,"b":2}'
        assert seen.job_id and abs(seen.started_at - time.time()) < 3
        assert seen.checkin == "halfway" and seen.checkin_at > 0
        assert not by_id[idle.worker_id].is_busy
    finally:
        release.set()
        thread.join(5)
    assert not Client(NS, r).worker_observations()[0].is_busy


def test_queues_count_and_latency(r) -> None:
    for name, moment in (("foo", NOW - 300), ("foo", NOW - 10), ("wat", NOW - 100)):
        Enqueuer(NS, r, clock=lambda m=moment: m).enqueue(name, {})
    r.sadd(K.known_jobs(), "zaz")
    queues = Client(NS, r, clock=clock).queues()
    assert [(q.job_name, q.count, q.latency) for q in queues] == [
        ("foo", 2, 300), ("wat", 1, 100), ("zaz", 0, 0)]


def test_queues_survive_an_undecodable_oldest_entry(r) -> None:
    # W18: Go dereferences a nil job here and panics; we report the count with latency 0
    r.sadd(K.known_jobs(), "bad")
    r.lpush(K.jobs("bad"), b"{not json")
    assert [(q.job_name, q.count, q.latency) for q in Client(NS, r).queues()] == [("bad", 1, 0)]
    assert Client(NS, r).queues() != []


def test_scheduled_jobs_ordered_by_run_at(r) -> None:
    enqueuer = Enqueuer(NS, r, clock=clock)
    for delay in (0, 4, 2):
        enqueuer.enqueue_in("wat", delay, {"a": delay})
    jobs, total = Client(NS, r).scheduled_jobs(1)
    assert total == 3
    assert [s.run_at for s in jobs] == [NOW, NOW + 2, NOW + 4]
    for scheduled in jobs:
        assert scheduled.job.t == NOW and scheduled.job.fails == 0
        assert scheduled.job.failed_at == 0 and scheduled.job.err == ""
    assert [s.job.args for s in jobs] == [{"a": 0}, {"a": 2}, {"a": 4}]
    assert Client(NS, r).scheduled_jobs(0)[0][0].run_at == NOW  # page 0 is page 1


def test_retry_jobs(r) -> None:
    Enqueuer(NS, r, clock=lambda: NOW - 10).enqueue("wat", {"a": 1})
    Worker(failing_app(), r, NS, clock=clock, idle_waits=(0.01,)).drain()
    jobs, total = Client(NS, r).retry_jobs(1)
    assert total == 1
    job = jobs[0].job
    assert job.failed_at == NOW and job.t == NOW - 10 and job.fails == 1 and job.err == "ohno"
    assert jobs[0].retry_at > NOW
    Client(NS, r).delete_retry_job(jobs[0].retry_at, job.id)
    assert r.zcard(K.retry()) == 0


def test_dead_jobs_pages_and_delete(r) -> None:
    Enqueuer(NS, r, clock=lambda: NOW - 10).enqueue("wat", {"a": 1})
    Worker(failing_app(max_fails=1), r, NS, clock=clock, idle_waits=(0.01,)).drain()
    client = Client(NS, r)
    jobs, total = client.dead_jobs(1)
    assert total == 1 and jobs[0].died_at == NOW
    assert jobs[0].job.failed_at == NOW and jobs[0].job.fails == 1 and jobs[0].job.err == "ohno"
    empty, total = client.dead_jobs(2)
    assert empty == [] and total == 1
    client.delete_dead_job(jobs[0].died_at, jobs[0].job.id)
    assert client.dead_jobs(1) == ([], 0)


def test_pages_hold_twenty(r) -> None:
    enqueuer = Enqueuer(NS, r, clock=clock)
    for i in range(45):
        enqueuer.enqueue_in("wat", i, {})
    client = Client(NS, r)
    sizes = [len(client.scheduled_jobs(page)[0]) for page in (1, 2, 3, 4)]
    assert sizes == [20, 20, 5, 0]


def test_delete_dead_job_shared_died_at_removes_exactly_one(r) -> None:
    jobs = kill_jobs(r, 4)
    # two members with the same score: the handle is (died_at, id)
    first = r.zrange(K.dead(), 0, 0)[0]
    r.zadd(K.dead(), {first: NOW})
    client = Client(NS, r)
    for remaining, job in zip((3, 2, 1, 0), jobs, strict=True):
        member = next(m for m in r.zrange(K.dead(), 0, -1) if Job.from_json(m).id == job.id)
        died_at = int(r.zscore(K.dead(), member))
        client.delete_dead_job(died_at, job.id)
        assert r.zcard(K.dead()) == remaining
    with pytest.raises(NotDeleted, match="nothing deleted"):
        client.delete_dead_job(NOW, jobs[0].id)


def test_retry_dead_job_clears_failure_and_keeps_args(r) -> None:
    app_names = ["wat0", "wat1", "wat2", "wat3"]
    for name in app_names:
        kill_jobs(r, 1, name, {"a": "wat", "big": 2**63 - 1, "empty": []})
    client = Client(NS, r, clock=lambda: NOW + 50)
    for remaining, name in zip((3, 2, 1, 0), app_names, strict=True):
        dead = next(d for d in client.dead_jobs(1)[0] if d.job.name == name)
        client.retry_dead_job(dead.died_at, dead.job.id)
        assert r.zcard(K.dead()) == remaining
        queued = Job.from_json(r.lindex(K.jobs(name), 0))
        assert (queued.fails, queued.err, queued.failed_at, queued.t) == (0, "", 0, NOW + 50)
        # W26: exact argument bytes, not cjson's rounding and [] -> {}
        assert queued.args == {"a": "wat", "big": 2**63 - 1, "empty": []}
    with pytest.raises(NotRetried, match="nothing retried"):
        client.retry_dead_job(NOW, "000000000000000000000000")


def test_retry_dead_job_of_an_unknown_name_stays_dead_untouched(r) -> None:
    # W28: Go rewrites err, failed_at and the score; we leave the job as it was
    ghost = Job(name="ghost", id="aaaaaaaaaaaaaaaaaaaaaaaa", t=NOW, args={}, fails=3,
                err="boom", failed_at=NOW)
    r.zadd(K.dead(), {ghost.to_json(): NOW})
    with pytest.raises(NotRetried):
        Client(NS, r).retry_dead_job(NOW, ghost.id)
    assert r.zrange(K.dead(), 0, -1, withscores=True) == [(ghost.to_json(), float(NOW))]


def test_delete_all_dead_jobs(r) -> None:
    kill_jobs(r, 4)
    Client(NS, r).delete_all_dead_jobs()
    assert r.zcard(K.dead()) == 0


def test_retry_all_dead_jobs(r) -> None:
    kill_jobs(r, 4)
    assert Client(NS, r, clock=lambda: NOW + 50).retry_all_dead_jobs() == 4
    assert r.zcard(K.dead()) == 0
    for raw in r.lrange(K.jobs("wat"), 0, -1):
        job = Job.from_json(raw)
        assert (job.t, job.fails, job.err, job.failed_at) == (NOW + 50, 0, "", 0)


def test_retry_all_dead_jobs_big_with_unknown_names_in_front(r) -> None:
    # Go stops at the first batch of 1000 that requeues nothing (W28): here 1,000 unknown
    # jobs come first, and all 10,000 known ones behind them are still retried.
    r.sadd(K.known_jobs(), "wat")
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.zadd(K.dead(), {Job(name="ghost", id=f"{i:024x}", t=NOW, args={}).to_json(): NOW - 100})
    for i in range(10000):
        job = Job(name="wat", id=f"{i + 5000:024x}", t=NOW, args={"i": i}, fails=1, err="x",
                  failed_at=NOW)
        pipe.zadd(K.dead(), {job.to_json(): NOW - 50})
    pipe.execute()
    assert Client(NS, r, clock=clock).retry_all_dead_jobs() == 10000
    assert r.llen(K.jobs("wat")) == 10000
    assert r.zcard(K.dead()) == 1000
    assert all(Job.from_json(m).err == "" for m in r.zrange(K.dead(), 0, 5))  # untouched


def test_delete_scheduled_job(r) -> None:
    client = Client(NS, r)
    with pytest.raises(NotDeleted):
        client.delete_scheduled_job(NOW, "000000000000000000000000")
    scheduled = Enqueuer(NS, r, clock=clock).enqueue_in("wat", 10, {})
    client.delete_scheduled_job(scheduled.run_at, scheduled.job.id)
    assert r.zcard(K.scheduled()) == 0


def test_delete_scheduled_unique_job_frees_the_lock(r) -> None:
    enqueuer = Enqueuer(NS, r, clock=clock)
    first = enqueuer.enqueue_unique_in("wat", 10, {"a": 1})
    assert first is not None and enqueuer.enqueue_unique_in("wat", 10, {"a": 1}) is None
    Client(NS, r).delete_scheduled_job(first.run_at, first.job.id)
    assert enqueuer.enqueue_unique_in("wat", 10, {"a": 1}) is not None


def test_delete_scheduled_by_key_unique_job_frees_its_real_lock(r) -> None:
    # W29: Go rebuilds the args-based key and leaves the by-key lock for 24 h
    enqueuer = Enqueuer(NS, r, clock=clock)
    first = enqueuer.enqueue_unique_in_by_key("wat", 10, {"a": 1}, {"k": "v"})
    assert first is not None
    assert enqueuer.enqueue_unique_in_by_key("wat", 10, {"a": 2}, {"k": "v"}) is None
    Client(NS, r).delete_scheduled_job(first.run_at, first.job.id)
    assert enqueuer.enqueue_unique_in_by_key("wat", 10, {"a": 3}, {"k": "v"}) is not None


def test_pause_unpause_and_max_concurrency(r) -> None:
    ran: list[str] = []
    app = App()
    app.register("wat", lambda job: ran.append(job.id))
    client = Client(NS, r)
    client.pause("wat")
    assert r.exists(K.paused("wat"))
    Enqueuer(NS, r).enqueue("wat", {})
    worker = Worker(app, r, NS, idle_waits=(0.01,))
    assert worker.drain() == 0 and ran == []
    client.unpause("wat")
    assert not r.exists(K.paused("wat"))
    assert r.llen(K.wake()) > 0  # idle workers are woken, not left to their next poll
    assert worker.drain() == 1
    client.set_max_concurrency("wat", 3)
    assert r.get(K.max_concurrency("wat")) == b"3"
    with pytest.raises(ValueError):
        client.set_max_concurrency("wat", -1)
    with pytest.raises(ValueError, match="':'"):
        client.pause("bad:name")


def test_retry_dead_job_changes_only_the_failure_fields(r) -> None:
    # the requeued bytes are the dead job's own with t, fails, err and failed_at changed:
    # unique, unique_key and fields we do not know (a newer Go's) survive the round trip
    head = b'{"name":"wat","id":"a1b2c3","t":%d,"args":{"f":0.1,"x":1},"unique":true,"unique_key":"{\\"x\\":1}"'
    tail = b',"extra":{"k":[1,2]},"zz":null}'
    dead = head % NOW + b',"fails":4,"err":"boom","failed_at":%d' % (NOW + 9) + tail
    r.sadd(K.known_jobs(), "wat")
    r.zadd(K.dead(), {dead: NOW + 9})
    Client(NS, r, clock=lambda: NOW + 50).retry_dead_job(NOW + 9, "a1b2c3")
    assert r.lrange(K.jobs("wat"), 0, -1) == [head % (NOW + 50) + tail]
    assert r.zcard(K.dead()) == 0
