"""gocraft/work's enqueue_test.go cases, against the real Redis, plus our additions."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from prefork_work.app import App
from prefork_work.enqueuer import KNOWN_JOBS_CACHE_SECONDS, Enqueuer
from prefork_work.errors import InvalidJobArguments, RedisUnavailable
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.store.queue import QueueStore
from prefork_work.worker import Worker

NS = "work"
K = Keys(NS)


def make_worker(r, app: App) -> Worker:
    return Worker(app, r, NS, idle_waits=(0.01,))


def test_enqueue_writes_gocraft_bytes_and_known_jobs(r) -> None:
    enqueuer = Enqueuer(NS, r)
    job = enqueuer.enqueue("wat", {"a": 1, "b": "cool"})
    assert job.name == "wat"
    assert len(job.id) == 24 and int(job.id, 16) >= 0
    assert abs(job.t - time.time()) <= 10
    assert job.args == {"a": 1, "b": "cool"}
    assert r.smembers(K.known_jobs()) == {b"wat"}
    assert enqueuer.known_jobs["wat"] > time.monotonic() + KNOWN_JOBS_CACHE_SECONDS - 10
    assert r.lrange(K.jobs("wat"), 0, -1) == [
        b'{"name":"wat","id":"%s","t":%d,"args":{"a":1,"b":"cool"}}' % (job.id.encode(), job.t)
    ]
    enqueuer.enqueue("wat", {"a": 1, "b": "cool"})
    enqueuer.enqueue("wat", {"a": 1, "b": "cool"})
    assert r.llen(K.jobs("wat")) == 3  # duplicates are allowed


def test_enqueue_nil_and_empty_args(r) -> None:
    enqueuer = Enqueuer(NS, r)
    none_job = enqueuer.enqueue("wat")
    empty_job = enqueuer.enqueue("wat", {})
    raw_none, raw_empty = r.lrange(K.jobs("wat"), 0, -1)[::-1]
    assert raw_none.endswith(b'"args":null}') and none_job.args is None
    assert raw_empty.endswith(b'"args":{}}') and empty_job.args == {}


def test_known_jobs_cache_expired_entry_adds_again(r) -> None:
    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("wat")
    r.delete(K.known_jobs())
    enqueuer.enqueue("wat")
    assert r.smembers(K.known_jobs()) == set()  # cached: no second SADD
    enqueuer.known_jobs["wat"] = time.monotonic() - 1
    enqueuer.enqueue_in("wat", 300)
    assert r.smembers(K.known_jobs()) == {b"wat"}


def test_enqueue_in(r) -> None:
    now = int(time.time())
    scheduled = Enqueuer(NS, r).enqueue_in("wat", 300, {"a": 1})
    assert scheduled.run_at == scheduled.job.t + 300
    members = r.zrange(K.scheduled(), 0, -1, withscores=True)
    assert len(members) == 1
    member, score = members[0]
    assert now + 290 < score <= now + 301
    assert Job.from_json(member).args == {"a": 1}


def test_enqueue_in_negative_is_due_at_once(r) -> None:
    scheduled = Enqueuer(NS, r).enqueue_in("wat", -10)
    assert r.zscore(K.scheduled(), scheduled.job.to_json()) == scheduled.job.t - 10


def test_enqueue_unique(r) -> None:
    enqueuer = Enqueuer(NS, r)
    assert enqueuer.enqueue_unique("wat", {"a": 1, "b": "cool"}) is not None
    assert enqueuer.enqueue_unique("wat", {"a": 1, "b": "cool"}) is None
    assert enqueuer.enqueue_unique("wat", {"a": 1, "b": "coolio"}) is not None
    job = enqueuer.enqueue_unique("wat", None)
    assert job is not None and job.unique and job.unique_key == "work:unique:wat:"
    assert enqueuer.enqueue_unique("wat", None) is None
    assert enqueuer.enqueue_unique("taw", None) is not None
    assert r.get("work:unique:wat:") == b"1"
    assert r.ttl("work:unique:wat:") > 86390

    ran: list[tuple[str, object]] = []
    app = App()

    @app.job("wat")
    def wat(job: Job) -> None:
        ran.append(("wat", job.args))

    @app.job("taw", max_fails=1)
    def taw(job: Job) -> None:
        ran.append(("taw", job.args))
        raise RuntimeError("ohno")

    make_worker(r, app).drain()
    assert sorted(name for name, _ in ran) == ["taw", "wat", "wat", "wat"]
    # every unique lock was released when its job started, failed taw included
    assert enqueuer.enqueue_unique("wat", {"a": 1, "b": "cool"}) is not None
    assert enqueuer.enqueue_unique("wat", {"a": 1, "b": "coolio"}) is not None
    assert enqueuer.enqueue_unique("wat", None) is not None
    assert enqueuer.enqueue_unique("taw", None) is not None


def test_enqueue_unique_in(r) -> None:
    enqueuer = Enqueuer(NS, r)
    first = enqueuer.enqueue_unique_in("wat", 300, {"a": 1})
    assert first is not None and first.job.unique
    assert enqueuer.enqueue_unique_in("wat", 10, {"a": 1}) is None
    members = r.zrange(K.scheduled(), 0, -1, withscores=True)
    assert len(members) == 1 and members[0][1] == first.run_at  # the first run time stays
    assert json.loads(members[0][0])["unique"] is True
    assert enqueuer.enqueue_unique_in("wat", 10, {"a": 2}) is not None
    assert enqueuer.enqueue_unique_in("wat", 10, None) is not None
    assert enqueuer.enqueue_unique_in("wat", 10, None) is None
    assert enqueuer.enqueue_unique_in("taw", 10, None) is not None


def test_enqueue_unique_by_key_updates_args_and_acks_the_fetched_entry(r) -> None:
    enqueuer = Enqueuer(NS, r)
    first = enqueuer.enqueue_unique_by_key("wat", {"a": 1, "b": "foo"}, {"key": "123"})
    assert first is not None
    assert first.unique_key == 'work:unique:wat:{"key":"123"}\n'
    assert enqueuer.enqueue_unique_by_key("wat", {"a": 1, "b": "bar"}, {"key": "123"}) is None
    assert enqueuer.enqueue_unique_by_key("wat", {"a": 1, "b": "baz"}, {"key": "124"}) is not None
    assert enqueuer.enqueue_unique_by_key("taw", {"a": 9}, {"key": "1"}) is not None

    seen: list[tuple[str, object]] = []
    app = App()
    app.register("wat", lambda job: seen.append(("wat", job.args["b"])))
    app.register("taw", lambda job: seen.append(("taw", job.args["a"])))
    worker = make_worker(r, app)
    worker.drain()
    assert sorted(seen) == [("taw", 9), ("wat", "bar"), ("wat", "baz")]
    # gocraft leaves the placeholder in progress (W6); we acknowledge what we fetched
    assert r.llen(K.in_progress("wat", worker.pool_id)) == 0
    assert r.get(K.lock("wat")) == b"0"
    assert enqueuer.enqueue_unique_by_key("wat", {"a": 1}, {"key": "123"}) is not None


def test_enqueue_unique_in_by_key(r) -> None:
    enqueuer = Enqueuer(NS, r)
    first = enqueuer.enqueue_unique_in_by_key("wat", 300, {"b": "foo"}, {"key": "1"})
    assert first is not None
    assert enqueuer.enqueue_unique_in_by_key("wat", 10, {"b": "bar"}, {"key": "1"}) is None
    stored = Job.from_json(r.get(first.job.unique_key))
    assert stored.args == {"b": "bar"}  # by-key stores the newest job
    assert r.zcard(K.scheduled()) == 1


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("", None),
        ("a:b", None),
        ("a,b", None),
        ("wat", {"s": {1, 2}}),
        ("wat", {"o": object()}),
        ("wat", {"f": float("nan")}),
        ("wat", [1, 2]),
    ],
)
def test_bad_input_raises_before_writing(r, name: str, args: object) -> None:
    enqueuer = Enqueuer(NS, r)
    with pytest.raises(InvalidJobArguments):
        enqueuer.enqueue(name, args)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobArguments):
        enqueuer.enqueue_many([("ok", {"a": 1}), (name, args)])  # type: ignore[list-item]
    assert r.dbsize() == 0


def test_enqueue_many_one_round_trip_fifo(r) -> None:
    enqueuer = Enqueuer(NS, r)
    r.config_resetstat()
    jobs = enqueuer.enqueue_many([("a", {"i": i}) for i in range(50)] + [("b", None)] * 3)
    assert len(jobs) == 53
    stats = r.info("commandstats")
    assert stats["cmdstat_lpush"]["calls"] == 3  # a, b and the wake tokens
    # FIFO: the first enqueued is at the tail, served first
    assert Job.from_json(r.lindex(K.jobs("a"), -1)).args == {"i": 0}
    assert r.llen(K.jobs("a")) == 50 and r.llen(K.jobs("b")) == 3
    assert r.smembers(K.known_jobs()) == {b"a", b"b"}


def test_enqueue_wakes_a_blocked_worker(r) -> None:
    store = QueueStore(r, K)
    r.delete(K.wake())
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_work(5.0)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.05)
    Enqueuer(NS, r).enqueue("wat")
    waiter.join(6)
    assert woke == [True]
    assert time.monotonic() - started < 4  # woken by the token, not by the timeout
    assert r.llen(K.wake()) <= 64


def test_job_enqueued_as_a_go_service_would_is_run(r) -> None:
    raw = b'{"name":"wat","id":"0000000a0000000000000001","t":1425263409,"args":{"a":1,"b":"cool"}}'
    r.lpush(K.jobs("wat"), raw)
    seen = []
    app = App()
    app.register("wat", lambda job: seen.append((job.id, job.t, job.args)))
    assert make_worker(r, app).run_one()
    assert seen == [("0000000a0000000000000001", 1425263409, {"a": 1, "b": "cool"})]
    assert r.llen(K.jobs("wat")) == 0


def test_enqueue_after_a_redis_restart_and_a_script_flush(r, redis_server) -> None:
    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("wat", {"n": 1})
    redis_server.restart()  # the enqueuer's own connection is now dead
    client = redis_server.client()
    for _ in range(3):  # the failed call drops its connection: a later one reconnects
        try:
            enqueuer.enqueue("wat", {"n": 2})
            break
        except RedisUnavailable:
            continue
    assert [Job.from_json(raw).args for raw in client.lrange(K.jobs("wat"), 0, -1)] == [{"n": 2}]
    client.script_flush()
    enqueuer.enqueue("wat", {"n": 3})  # NOSCRIPT: loaded again, run once
    assert client.llen(K.jobs("wat")) == 2


def test_enqueuer_shared_by_threads_and_across_fork(r) -> None:
    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("wat", {})
    threads = [threading.Thread(target=lambda: [enqueuer.enqueue("wat", {}) for _ in range(200)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert r.llen(K.jobs("wat")) == 801
    pid = os.fork()
    if pid == 0:  # the child must not talk on the parent's connection
        try:
            enqueuer.enqueue("wat", {"child": True})
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    enqueuer.enqueue("wat", {"parent": True})
    assert r.llen(K.jobs("wat")) == 803


def test_fork_while_another_thread_enqueues_does_not_deadlock_the_child(r) -> None:
    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("wat", {})
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            enqueuer.enqueue("wat", {})

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        children = []
        for _ in range(5):  # some forks land while the thread holds the store's lock
            pid = os.fork()
            if pid == 0:
                try:
                    enqueuer.enqueue("forked", {})
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            children.append(pid)
        deadline = time.monotonic() + 10
        codes = {}
        while len(codes) < len(children) and time.monotonic() < deadline:
            for pid in children:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        hung = [pid for pid in children if pid not in codes]
        for pid in hung:  # never leave a stuck child behind, even when failing
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert not hung, "a forked child hung on the store's lock"
        assert set(codes.values()) == {0}
    finally:
        stop.set()
        thread.join(10)
    assert r.llen(K.jobs("forked")) == 5


@pytest.mark.parametrize("variant", ["enqueue_unique", "enqueue_unique_in", "enqueue_unique_by_key",
                                     "enqueue_unique_in_by_key"])
def test_unique_lock_lives_24_hours_from_the_first_enqueue(r, variant: str) -> None:
    # one enqueue, no duplicate after it (a duplicate's SET also sets the TTL and would
    # hide a lock first written without one)
    enqueuer = Enqueuer(NS, r)
    args: list[object] = ["wat"]
    if "_in" in variant:
        args.append(30)
    args.append({"a": 1})
    if variant.endswith("by_key"):
        args.append({"k": "v"})
    assert getattr(enqueuer, variant)(*args) is not None
    (lock,) = r.keys(f"{NS}:unique:*")
    assert 86390 < r.ttl(lock) <= 86400
