"""gocraft/work's worker_test.go, run_test.go, worker_pool_test.go and priority sampler cases."""

from __future__ import annotations

import collections
import json
import logging
import random
import signal
import threading
import time

import pytest
import structlog
from conftest import LateFetch, late_fetch_app, wait_until

from prefork_work.app import App
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import ConfigError, RedisUnavailable
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.worker import NullObserver, PrioritySampler, Worker

NS = "work"
K = Keys(NS)


def make_worker(r, app: App, **kwargs) -> Worker:
    kwargs.setdefault("idle_waits", (0.01,))
    return Worker(app, r, NS, **kwargs)


def assert_clean(r, worker: Worker, names) -> None:
    for name in names:
        assert r.llen(K.jobs(name)) == 0, name
        assert r.llen(K.in_progress(name, worker.pool_id)) == 0, name
        assert int(r.get(K.lock(name)) or 0) == 0, name
        assert int(r.hget(K.lock_info(name), worker.pool_id) or 0) == 0, name
    assert r.zcard(K.retry()) == 0
    assert r.zcard(K.dead()) == 0
    assert not r.exists(K.worker_observation(worker.worker_id))


def test_basics_three_job_types(r) -> None:
    seen: dict[str, object] = {}
    app = App()
    for name in ("job1", "job2", "job3"):
        app.register(name, lambda job: seen.__setitem__(job.name, job.args))
    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("job1", {"a": 1})
    enqueuer.enqueue("job2", {"a": 2})
    enqueuer.enqueue("job3", {"a": 3})
    worker = make_worker(r, app)
    assert worker.drain() == 3
    assert seen == {"job1": {"a": 1}, "job2": {"a": 2}, "job3": {"a": 3}}
    assert_clean(r, worker, ["job1", "job2", "job3"])


def test_in_progress_state_while_running(r) -> None:
    observed = {}
    app = App()
    worker: Worker

    def wat(job: Job) -> None:
        observed["queue"] = r.llen(K.jobs("wat"))
        observed["inprogress"] = r.llen(K.in_progress("wat", worker.pool_id))
        observed["lock"] = r.get(K.lock("wat"))
        observed["lock_info"] = r.hget(K.lock_info("wat"), worker.pool_id)
        observed["observation"] = r.hgetall(K.worker_observation(worker.worker_id))

    app.register("wat", wat)
    worker = make_worker(r, app)
    Enqueuer(NS, r).enqueue("wat", {"a": 1})
    assert worker.run_one()
    assert observed["queue"] == 0
    assert observed["inprogress"] == 1
    assert observed["lock"] == b"1"
    assert observed["lock_info"] == b"1"
    obs = observed["observation"]
    assert obs[b"job_name"] == b"wat"
    assert obs[b"args"] == b'{"a":1}'
    assert abs(int(obs[b"started_at"]) - time.time()) < 5
    assert_clean(r, worker, ["wat"])


def test_retry(r) -> None:
    app = App()

    @app.job("wat", max_fails=3)
    def wat(job: Job) -> None:
        raise RuntimeError("sorry kid")

    worker = make_worker(r, app)
    Enqueuer(NS, r).enqueue("wat", {"a": 1})
    now = int(time.time())
    assert worker.run_one()
    assert r.zcard(K.retry()) == 1 and r.zcard(K.dead()) == 0
    assert r.llen(K.jobs("wat")) == 0
    assert r.llen(K.in_progress("wat", worker.pool_id)) == 0
    assert r.get(K.lock("wat")) == b"0"
    assert r.hget(K.lock_info("wat"), worker.pool_id) == b"0"
    member, score = r.zrange(K.retry(), 0, -1, withscores=True)[0]
    assert now < score <= now + 80 + 2
    job = Job.from_json(member)
    assert (job.fails, job.err, job.args) == (1, "sorry kid", {"a": 1})
    assert abs(job.failed_at - now) <= 2


def test_retry_with_custom_backoff_called_once(r) -> None:
    calls = []
    app = App()

    def backoff(job: Job) -> int:
        calls.append(job.fails)
        return 5

    @app.job("wat", max_fails=3, backoff=backoff)
    def wat(job: Job) -> None:
        raise RuntimeError("nope")

    Enqueuer(NS, r).enqueue("wat")
    now = int(time.time())
    make_worker(r, app).run_one()
    (_, score), = r.zrange(K.retry(), 0, -1, withscores=True)
    assert now < score <= now + 10
    assert calls == [1]


class PinnedRandom:
    """random.randrange pinned: the random part of gocraft's backoff is known exactly."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.ranges: list[int] = []

    def randrange(self, stop: int) -> int:
        self.ranges.append(stop)
        return self.value

    def shuffle(self, items: list) -> None:  # the priority sampler's, for one job name
        pass


def test_default_backoff_is_gocrafts_formula_exactly(r, monkeypatch) -> None:
    # gocraft: fails^4 + 15 + rand.Int63n(30) * (fails + 1), fails already counting this one
    import prefork_work.outcome as outcome_module

    pinned = PinnedRandom(7)
    monkeypatch.setattr(outcome_module, "random", pinned)
    app = App()
    app.register("wat", lambda job: 1 / 0, max_fails=10)
    Enqueuer(NS, r).enqueue("wat")
    make_worker(r, app, clock=lambda: 1_700_000_000).run_one()
    (_, score), = r.zrange(K.retry(), 0, -1, withscores=True)
    assert score == 1_700_000_000 + 1 + 15 + 7 * 2
    assert [outcome_module.default_backoff(Job("wat", "x", 1, None, fails=f)) for f in (2, 3)] == [
        16 + 15 + 7 * 3, 81 + 15 + 7 * 4]
    assert pinned.ranges == [30, 30, 30]


def test_dead_and_skip_dead(r) -> None:
    app = App()

    @app.job("job1", max_fails=1)
    def job1(job: Job) -> None:
        raise RuntimeError("dead job")

    @app.job("job2", max_fails=1, skip_dead=True)
    def job2(job: Job) -> None:
        raise RuntimeError("dropped job")

    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("job1")
    enqueuer.enqueue("job2")
    worker = make_worker(r, app)
    worker.drain()
    dead = r.zrange(K.dead(), 0, -1, withscores=True)
    assert len(dead) == 1
    job = Job.from_json(dead[0][0])
    assert (job.name, job.fails, job.err) == ("job1", 1, "dead job")
    assert dead[0][1] <= time.time()
    for name in ("job1", "job2"):
        assert r.get(K.lock(name)) == b"0"
        assert r.llen(K.in_progress(name, worker.pool_id)) == 0


def test_max_fails_runs_that_many_times(r) -> None:
    attempts = []
    app = App()

    @app.job("wat", max_fails=3, backoff=lambda job: -100)
    def wat(job: Job) -> None:
        attempts.append(job.fails)
        raise RuntimeError("again")

    Enqueuer(NS, r).enqueue("wat")
    worker = make_worker(r, app)
    for _ in range(3):
        worker.drain()
        # what the requeuer does: due retries back to the queue
        for member in r.zrange(K.retry(), 0, -1):
            r.zrem(K.retry(), member)
            r.lpush(K.jobs("wat"), member)
    assert attempts == [0, 1, 2]
    assert r.zcard(K.dead()) == 1


def test_paused_queue_is_not_fetched(r) -> None:
    app = App()
    ran = []
    app.register("wat", lambda job: ran.append(job.id))
    Enqueuer(NS, r).enqueue("wat")
    worker = make_worker(r, app)
    for value in ("1", "0", ""):  # any value pauses, as in gocraft
        r.set(K.paused("wat"), value)
        assert not worker.run_one()
        assert r.llen(K.jobs("wat")) == 1
        assert r.llen(K.in_progress("wat", worker.pool_id)) == 0
    r.delete(K.paused("wat"))
    assert worker.run_one()
    assert len(ran) == 1
    assert_clean(r, worker, ["wat"])


def test_max_concurrency_is_never_exceeded(r, redis_server) -> None:
    app = App()
    running = [0]
    peak = [0]
    lock_peak = [0]
    guard = threading.Lock()

    def wat(job: Job) -> None:
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        lock_peak[0] = max(lock_peak[0], int(r.get(K.lock("wat")) or 0))
        time.sleep(0.002)
        with guard:
            running[0] -= 1

    app.register("wat", wat, max_concurrency=1)
    Enqueuer(NS, r).enqueue_many([("wat", {"i": i}) for i in range(40)])
    workers = [make_worker(redis_server.client(), app) for _ in range(4)]
    workers[0].announce()
    assert r.get(K.max_concurrency("wat")) == b"1"
    threads = [threading.Thread(target=w.drain) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for w in workers:  # a worker that saw the cap may have stopped early
        w.drain()
    assert peak[0] == 1
    assert lock_peak[0] == 1
    assert r.get(K.lock("wat")) == b"0"
    assert all(v == b"0" for v in r.hgetall(K.lock_info("wat")).values())
    assert r.llen(K.jobs("wat")) == 0


def test_cap_held_by_another_pool_blocks_fetch(r) -> None:
    app = App()
    app.register("wat", lambda job: None, max_concurrency=2)
    worker = make_worker(r, app)
    worker.announce()
    Enqueuer(NS, r).enqueue_many([("wat", None)] * 5)
    r.set(K.lock("wat"), 2)
    assert not worker.run_one()
    r.set(K.lock("wat"), 1)
    worker.batch_size = 10
    assert worker._refill()
    assert len(worker.buffer) == 1  # a batch never takes more than cap - lock
    worker.close()
    assert r.llen(K.jobs("wat")) == 5


def test_middleware_order_context_and_args(r) -> None:
    out: list[str] = []
    app = App()

    def mw1(job: Job, next_):
        out.append("mw1")
        job.context.seen = ["mw1"]
        return next_()

    def mw2(job: Job, next_):
        out.append("mw2")
        job.context.seen.append("mw2")
        job.args["a"] = "changed"
        return next_()

    app.middleware(mw1)
    app.middleware(mw2)

    @app.job("wat")
    def handler(job: Job) -> None:
        out.append("h:" + job.args["a"] + ":" + ",".join(job.context.seen))

    Enqueuer(NS, r).enqueue("wat", {"a": "foo"})
    make_worker(r, app).run_one()
    assert out == ["mw1", "mw2", "h:changed:mw1,mw2"]


def test_middleware_can_cut_short_and_errors_fail_the_job(r) -> None:
    ran = []
    app = App()

    def stop(job: Job, next_):
        if job.args["mode"] == "cut":
            return None
        raise ValueError("middleware says no")

    app.middleware(stop)
    app.register("wat", lambda job: ran.append(job.id), max_fails=1)
    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("wat", {"mode": "cut"})
    enqueuer.enqueue("wat", {"mode": "fail"})
    make_worker(r, app).drain()
    assert ran == []
    (member,) = r.zrange(K.dead(), 0, -1)
    assert Job.from_json(member).err == "middleware says no"


def test_fresh_context_per_job(r) -> None:
    contexts = []
    app = App(context=dict)
    app.register("wat", lambda job: contexts.append(job.context))
    Enqueuer(NS, r).enqueue_many([("wat", None)] * 2)
    make_worker(r, app).drain()
    assert contexts == [{}, {}] and contexts[0] is not contexts[1]


def test_stray_job_goes_dead_and_releases_the_queue_lock(r) -> None:
    # §10.3: Go increments the lock of the queue and decrements the lock of the job's name
    app = App()
    app.register("send_email", lambda job: None)
    stray = Job(name="other_job", id="abc", t=1, args=None)
    r.lpush(K.jobs("send_email"), stray.to_json())
    worker = make_worker(r, app)
    assert worker.run_one()
    (member,) = r.zrange(K.dead(), 0, -1)
    dead = Job.from_json(member)
    assert (dead.id, dead.err, dead.fails) == ("abc", "stray job: no handler", 1)
    assert r.get(K.lock("send_email")) == b"0"
    assert not r.exists(K.lock("other_job"))


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"name":"wat","id":"x","t":1.5,"args":null}', b'{"name":"wat","args":[1]}'],
)
def test_malformed_payload_goes_dead_and_the_loop_goes_on(r, raw: bytes) -> None:
    app = App()
    ran = []
    app.register("wat", lambda job: ran.append(job.id))
    r.lpush(K.jobs("wat"), raw)
    Enqueuer(NS, r).enqueue("wat")
    worker = make_worker(r, app)
    assert worker.drain() == 2
    assert len(ran) == 1
    (member,) = r.zrange(K.dead(), 0, -1)
    dead = Job.from_json(member)
    assert dead.name == "wat"
    assert dead.err.startswith("malformed job")
    assert dead.args == {"malformed_payload": raw.decode()}
    assert_clean_locks(r, worker, "wat")


def assert_clean_locks(r, worker: Worker, name: str) -> None:
    assert r.get(K.lock(name)) == b"0"
    assert r.llen(K.in_progress(name, worker.pool_id)) == 0


def test_soft_timeout_fails_the_job(r) -> None:
    app = App()

    @app.job("slow", timeout=0.2, max_fails=2)
    def slow(job: Job) -> None:
        time.sleep(5)

    Enqueuer(NS, r).enqueue("slow")
    started = time.monotonic()
    make_worker(r, app).run_one()
    assert time.monotonic() - started < 3
    (member,) = r.zrange(K.retry(), 0, -1)
    assert "soft timeout" in Job.from_json(member).err


def test_batches_grow_for_fast_jobs_and_everything_runs_once(r) -> None:
    counts: collections.Counter[str] = collections.Counter()
    app = App()
    app.register("fast", lambda job: counts.update([job.id]))
    jobs = Enqueuer(NS, r).enqueue_many([("fast", {"i": i}) for i in range(2000)])
    # A stopped clock: every job takes 0 s whatever the machine's load, so the batch
    # doubles deterministically up to max_batch (a real clock made this flake under load:
    # any job over batch_seconds resets the batch to 1).
    worker = make_worker(r, app, observer=NullObserver(), timer=lambda: 1000.0)
    worker.log_success = False
    r.config_resetstat()
    assert worker.drain() == 2000
    assert set(counts) == {j.id for j in jobs} and set(counts.values()) == {1}
    calls = r.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls < 40, calls  # 1+2+...+64, then 100 a call: far fewer than one per job
    assert worker.batch_size == worker.max_batch
    assert_clean(r, worker, ["fast"])


class StoppedTimer:
    """A fake perf_counter that moves only when a job moves it: job time is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_batch_drops_to_one_right_after_a_slow_job(r) -> None:
    timer = StoppedTimer()
    app = App()
    app.register("job", lambda job: setattr(timer, "now", timer.now + job.args["s"]))
    quick = [("job", {"s": 0.0})]
    Enqueuer(NS, r).enqueue_many([*quick * 73, ("job", {"s": 0.5}), *quick * 60])
    # release_after: the watchdog reads the same stopped timer, and once the slow job has moved
    # it, the watchdog (a thread, on its own real-time schedule) would give the buffer back
    worker = make_worker(r, app, timer=timer, max_batch=64, release_after=3600.0)
    worker.avg_job_seconds = 0.0  # as after a long run of quick jobs: the batch just doubles

    def step() -> None:
        if not worker.buffer:
            assert worker._refill()
        assert worker._process_next()

    for _ in range(63):  # batches of 1+2+4+8+16+32 quick jobs
        step()
    assert worker.batch_size == 64
    for _ in range(10):  # ten quick jobs into the batch of 64
        step()
    step()  # the slow one, with the rest of its batch still buffered
    assert worker.buffer
    assert worker.batch_size == 1  # right away, not once the buffer runs dry
    worker.close()


def test_slow_jobs_are_fetched_one_at_a_time(r) -> None:
    app = App()
    app.register("slow", lambda job: time.sleep(0.02))
    Enqueuer(NS, r).enqueue_many([("slow", None)] * 5)
    worker = make_worker(r, app)
    worker.batch_size = 8
    worker.run_one()
    worker._refill()
    assert len(worker.buffer) == 1
    worker.close()


def test_close_returns_unstarted_jobs_to_the_front_in_order(r) -> None:
    app = App()
    app.register("wat", lambda job: None)
    jobs = Enqueuer(NS, r).enqueue_many([("wat", {"i": i}) for i in range(10)])
    Enqueuer(NS, r).enqueue("wat", {"i": "later"})
    worker = make_worker(r, app)
    worker.batch_size = 10
    worker._refill()
    worker._process_next()
    worker.close()
    queued = [Job.from_json(raw).args["i"] for raw in reversed(r.lrange(K.jobs("wat"), 0, -1))]
    assert queued == list(range(1, 10)) + ["later"]
    assert jobs[0].id not in {Job.from_json(x).id for x in r.lrange(K.jobs("wat"), 0, -1)}
    assert_clean_locks(r, worker, "wat")


class Stop(BaseException):
    pass


def test_requeue_exception_returns_the_running_job(r) -> None:
    app = App()

    @app.job("wat")
    def wat(job: Job) -> None:
        raise Stop()

    Enqueuer(NS, r).enqueue("wat", {"x": 1})
    worker = make_worker(r, app, requeue_exceptions=(Stop,))
    with pytest.raises(Stop):
        worker.work()
    assert r.llen(K.jobs("wat")) == 1
    assert Job.from_json(r.lindex(K.jobs("wat"), 0)).args == {"x": 1}
    assert r.zcard(K.retry()) == 0 and r.zcard(K.dead()) == 0
    assert_clean_locks(r, worker, "wat")


def test_work_until_and_request_stop(r) -> None:
    app = App()
    seen = []
    app.register("wat", lambda job: seen.append(job.args["i"]))
    Enqueuer(NS, r).enqueue_many([("wat", {"i": i}) for i in range(5)])
    worker = make_worker(r, app)
    worker.work(until=lambda: len(seen) >= 5)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert_clean(r, worker, ["wat"])


def test_scripts_survive_script_flush(r) -> None:
    app = App()
    app.register("wat", lambda job: None)
    worker = make_worker(r, app)
    enqueuer = Enqueuer(NS, r)
    enqueuer.enqueue("wat")
    assert worker.run_one()
    r.script_flush()
    enqueuer.enqueue_unique("wat", {"u": 1})
    enqueuer.enqueue("wat")
    assert worker.drain() == 2


def test_recovers_jobs_fetched_by_a_lost_call(r) -> None:
    app = App()
    ran = []
    app.register("wat", lambda job: ran.append(job.id))
    worker = make_worker(r, app)
    orphan = Job(name="wat", id="orphan", t=1, args=None).to_json()
    # as if a fetch had moved it but its reply was lost
    r.lpush(K.in_progress("wat", worker.pool_id), orphan)
    r.incr(K.lock("wat"))
    r.hincrby(K.lock_info("wat"), worker.pool_id, 1)
    worker.needs_recovery = True
    assert worker.drain() == 1
    assert ran == ["orphan"]
    assert_clean_locks(r, worker, "wat")


def test_recovery_leaves_the_jobs_the_worker_still_holds(r) -> None:
    # a fetch reply lost while a batch is buffered and an ack pending: recovery requeues
    # only what the worker does not hold, and every job runs exactly once
    ran: collections.Counter[str] = collections.Counter()
    app = App()
    app.register("wat", lambda job: ran.update([job.id]))
    jobs = Enqueuer(NS, r).enqueue_many([("wat", None)] * 4)
    worker = make_worker(r, app, timer=lambda: 1000.0)  # a stopped clock: no watchdog release
    worker.batch_size = 4
    assert worker._refill() and len(worker.buffer) == 4
    assert worker._process_next()  # one ran, its ack not yet sent; three still buffered
    orphan = Job(name="wat", id="orphan", t=1, args=None).to_json()
    r.lpush(K.in_progress("wat", worker.pool_id), orphan)  # the lost call's fetch
    r.incr(K.lock("wat"))
    r.hincrby(K.lock_info("wat"), worker.pool_id, 1)
    worker.needs_recovery = True
    worker._refill()  # recovers with the batch still buffered
    worker.drain()
    assert ran == {**{j.id: 1 for j in jobs}, "orphan": 1}
    assert_clean_locks(r, worker, "wat")


def assert_ran_once(r, worker: Worker, ran, jobs: int) -> None:
    assert len(ran) == jobs and set(ran.values()) == {1}, ran
    assert r.llen(K.jobs("wat")) == 0
    assert_clean_locks(r, worker, "wat")
    assert r.hget(K.metrics(), "processed:wat") == str(jobs).encode()


@pytest.mark.parametrize("when", ["while busy", "right after the recovery read"])
def test_a_late_copy_of_a_lost_fetch_after_recovery_is_refused(r, when: str) -> None:
    # a fetch whose reply was lost reaches Redis after the worker recovered (a healed
    # partition, a proxy flushing its buffer): the fence refuses it, so it takes no job
    # into this live pool's in-progress list, where no reaper would look while the worker
    # stays busy. Right after the read, before the worker's next call, only the fence that
    # recovery raised stands in its way.
    late: dict = {}
    app, ran = late_fetch_app(r, NS, 20, late)
    worker = make_worker(r, app)
    fetch = late["fetch"] = LateFetch(worker)
    if when == "right after the recovery read":
        recover = worker.store.recover

        def recover_then_deliver(*args, **kwargs):
            lists = recover(*args, **kwargs)
            late["reply"] = fetch.deliver()
            return lists

        worker.store.recover = recover_then_deliver
    worker._wait_for_work = worker.request_stop  # busy to the end: stop when first idle
    worker.work()
    assert_ran_once(r, worker, ran, 20)
    assert late["reply"] == [-1, []]  # refused: it changed nothing


def test_a_late_copy_of_a_lost_fetch_before_recovery_is_recovered(r) -> None:
    # the lost call reaches Redis before the worker's recovery reads its lists: it acks and
    # fetches, and recovery requeues the jobs it took (the worker never got them)
    late: dict = {}
    app, ran = late_fetch_app(r, NS, 20, late)
    worker = make_worker(r, app)
    fetch = late["fetch"] = LateFetch(worker)
    recover = worker.store.recover

    def deliver_then_recover(*args, **kwargs):
        if "reply" not in late:
            late["reply"] = fetch.deliver()
        return recover(*args, **kwargs)

    worker.store.recover = deliver_then_recover
    worker._wait_for_work = worker.request_stop
    worker.work()
    group, taken = late["reply"]
    assert group == 1 and taken  # the late copy ran and fetched
    assert_ran_once(r, worker, ran, 20)


def test_redis_down_raises_and_loses_nothing(r, redis_server) -> None:
    app = App()
    app.register("wat", lambda job: None)
    client = redis_server.client()
    worker = make_worker(client, app)
    Enqueuer(NS, r).enqueue("wat")
    redis_server.kill()
    try:
        with pytest.raises(RedisUnavailable):
            worker.run_one()
    finally:
        redis_server.start()
    # a fresh server (no persistence in tests): the worker keeps working once it is back
    Enqueuer(NS, redis_server.client()).enqueue("wat")
    assert worker.run_one()


def test_registration_errors_name_the_job() -> None:
    app = App()
    handler = lambda job: None  # noqa: E731
    for options, text in [
        ({"priority": 0}, "priority"),
        ({"priority": 100_001}, "priority"),
        ({"max_fails": -1}, "max_fails"),
        ({"max_concurrency": -2}, "max_concurrency"),
        ({"timeout": 0}, "timeout"),
        ({"backoff": 5}, "backoff"),
    ]:
        with pytest.raises(ConfigError, match=f"'wat'.*{text}"):
            app.register("wat", handler, **options)
    with pytest.raises(ConfigError, match="must not contain"):
        app.register("a:b", handler)
    with pytest.raises(ConfigError, match="handler must be callable"):
        app.register("wat", "nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'nightly'"):
        app.periodically_enqueue("61 * * * *", "nightly")
    assert app.register("wat", handler, max_fails=0).max_fails == 4  # gocraft: 0 -> default


def test_priority_sampler_statistics(monkeypatch) -> None:
    # a seeded generator: 2,000 draws of a fair sampler can still miss a bound by chance
    import prefork_work.worker as worker_module

    monkeypatch.setattr(worker_module, "random", random.Random(20160712))
    sampler = PrioritySampler({"p5": 5, "p2": 2, "p1": 1})
    first: collections.Counter[str] = collections.Counter()
    last: collections.Counter[str] = collections.Counter()
    draws = 2000
    for _ in range(draws):
        order = sampler.sample()
        assert sorted(order) == ["p1", "p2", "p5"]
        first[order[0]] += 1
        last[order[-1]] += 1
    assert first["p5"] > 2 * first["p2"]
    assert first["p2"] > 1.5 * first["p1"]
    assert first["p1"] >= draws / 13
    assert last["p1"] > draws / 2


def test_observation_args_match_go(r, vectors) -> None:
    from prefork_work.observations import observation_args

    cases = json.loads((vectors / "job_json.json").read_text())["args_cases"]
    checked = 0
    for case in cases:
        if case.get("error") or case["observation_args"] is None:
            continue
        job = Job.from_json(case["job_bytes"].encode())
        assert observation_args(job) == case["observation_args"], case["case"]
        checked += 1
    assert checked > 10


def test_work_with_redis_down_stops_when_asked(r, redis_server) -> None:
    # gocraft's "Stop with Redis unreachable does not hang"
    app = App()
    app.register("wat", lambda job: None)
    worker = make_worker(redis_server.client(), app)
    redis_server.kill()
    try:
        thread = threading.Thread(target=worker.work)
        thread.start()
        time.sleep(0.3)
        worker.request_stop()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        redis_server.start()


# --- hostile payloads: nothing fetched may kill the worker (issue 7 item 1, issue 12 item 4) --
def deep_job(levels: int, **fields: object) -> bytes:
    head = json.dumps({"name": "wat", "id": "deep", "t": 1, **fields})[:-1]
    return (head + ',"args":{"a":' + "[" * levels + "]" * levels + "}}").encode()


def test_deeply_nested_payloads_go_dead_and_the_worker_goes_on(r) -> None:
    app = App()
    ran = []
    app.register("wat", lambda job: ran.append(job.id))
    payloads = [deep_job(5_000), deep_job(100_000), b'{"name":"wat","args":' + b"[" * 100_000]
    for raw in payloads:
        r.lpush(K.jobs("wat"), raw)
    healthy = Enqueuer(NS, r).enqueue("wat")
    worker = make_worker(r, app)
    assert worker.drain() == 4
    assert ran == [healthy.id]
    dead = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert sorted(d.args["malformed_payload"] for d in dead) == sorted(p.decode() for p in payloads)
    assert all(d.err.startswith("malformed job: invalid JSON") and len(d.err) < 100 for d in dead)
    assert_clean_locks(r, worker, "wat")


def test_failed_job_whose_args_cannot_be_written_back_goes_dead_whole(r) -> None:
    # decodes (the C decoder's frames are cheaper) but not re-encodable for retry: kept in
    # dead with its bytes, instead of an exception out of the worker
    app = App()
    app.register("wat", lambda job: 1 / 0, max_fails=3)
    raw = deep_job(700)
    Job.from_json(raw)  # decodable
    r.lpush(K.jobs("wat"), raw)
    worker = make_worker(r, app)
    assert worker.drain() == 1
    (member,) = r.zrange(K.dead(), 0, -1)
    dead = Job.from_json(member)
    assert dead.args == {"malformed_payload": raw.decode()}
    assert "division by zero" in dead.err and "nested too deeply" in dead.err
    assert_clean_locks(r, worker, "wat")


def test_failure_while_dispatching_a_payload_makes_it_malformed(r) -> None:
    # a unique job whose lock key cannot be computed from its args
    app = App()
    ran = []
    app.register("wat", lambda job: ran.append(job.id))
    r.lpush(K.jobs("wat"), deep_job(700, unique=True))
    worker = make_worker(r, app)
    assert worker.drain() == 1
    assert ran == []
    (member,) = r.zrange(K.dead(), 0, -1)
    assert "nested too deeply" in Job.from_json(member).err
    assert_clean_locks(r, worker, "wat")


def test_oversized_payload_goes_dead_without_reaching_the_worker(r) -> None:
    app = App()
    ran = []
    app.register("wat", lambda job: ran.append(job.id))
    enqueuer = Enqueuer(NS, r)
    first = enqueuer.enqueue("wat", {"n": 1})
    big = enqueuer.enqueue("wat", {"blob": "x" * 5000})
    last = enqueuer.enqueue("wat", {"n": 2})
    worker = make_worker(r, app, max_payload_bytes=1000)
    worker.batch_size = 3
    fetched: list[bytes] = []
    real_fetch = worker.store.fetch

    def spy(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        queue, jobs = real_fetch(*args, **kwargs)  # type: ignore[arg-type]
        fetched.extend(jobs)
        return queue, jobs

    worker.store.fetch = spy  # type: ignore[method-assign]
    assert worker.drain() == 2
    assert ran == [first.id, last.id]
    assert all(len(raw) < 1000 for raw in fetched)  # never handed to the worker
    (member,) = r.zrange(K.dead(), 0, -1)
    dead = Job.from_json(member)
    assert dead.name == "wat" and dead.fails == 1 and dead.failed_at > 0
    assert dead.err.startswith("malformed job: payload of ")
    assert "over server.max_payload_bytes (1000)" in dead.err
    assert Job.from_json(dead.args["malformed_payload"].encode()).id == big.id  # nothing lost
    assert r.hget(K.metrics(), "dead:wat") == b"1"  # counted as any dead job
    assert r.hget(K.metrics(), "processed:wat") == b"3"
    assert_clean_locks(r, worker, "wat")


def test_a_batch_stops_at_its_byte_cap(r) -> None:
    app = App()
    app.register("wat", lambda job: None)
    Enqueuer(NS, r).enqueue_many([("wat", {"pad": "x" * 250})] * 10)
    worker = make_worker(r, app, max_batch_bytes=1000)
    worker.batch_size = 10
    worker._refill()
    assert len(worker.buffer) == 4  # ~300 bytes each: the 4th reaches the cap
    assert sum(len(raw) for _, raw in worker.buffer) >= 1000
    worker.close()
    assert r.llen(K.jobs("wat")) == 10
    assert_clean_locks(r, worker, "wat")


# --- a slow job never holds its batch hostage (issue 7 item 3) -------------------------------
def test_unstarted_batch_goes_back_to_the_front_once_the_running_job_is_slow(r) -> None:
    app = App()
    ran: list[object] = []
    proceed = threading.Event()

    @app.job("wat")
    def wat(job: Job) -> None:
        ran.append(job.args["i"])
        if job.args["i"] == 0:
            proceed.wait(10)

    Enqueuer(NS, r).enqueue_many([("wat", {"i": i}) for i in range(5)])
    Enqueuer(NS, r).enqueue("wat", {"i": "later"})
    worker = make_worker(r, app, release_after=0.02)
    worker.batch_size = 5
    worker._refill()
    assert len(worker.buffer) == 5
    r.delete(K.wake())
    runner = threading.Thread(target=worker._process_next)
    runner.start()
    try:
        wait_until(lambda: r.llen(K.jobs("wat")) == 5, 5, message="the batch released")
        assert r.llen(K.in_progress("wat", worker.pool_id)) == 1  # only the running job
        assert r.get(K.lock("wat")) == b"1"
        assert r.llen(K.wake()) > 0  # idle workers are woken for the released jobs
    finally:
        proceed.set()
        runner.join(10)
    assert ran == [0] and not worker.buffer  # the released jobs are not run here
    worker.flush()
    assert_clean_locks(r, worker, "wat")
    other = make_worker(r, app)
    assert other.drain() == 5
    assert ran == [0, 1, 2, 3, 4, "later"]  # back at the front, in order
    worker.close()


def test_released_jobs_run_exactly_once_under_two_workers(r) -> None:
    rng = random.Random(3)
    app = App()
    runs: collections.Counter[str] = collections.Counter()

    @app.job("wat")
    def wat(job: Job) -> None:
        runs.update([job.id])
        time.sleep(job.args["s"])

    jobs = Enqueuer(NS, r).enqueue_many(
        [("wat", {"s": rng.choice([0, 0, 0, 0.001, 0.01])}) for _ in range(300)])
    workers = [make_worker(r, app, release_after=0.002, idle_waits=(0.005,)) for _ in range(2)]
    threads = [threading.Thread(target=w.work, kwargs={"until": lambda: sum(runs.values()) >= 300})
               for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert set(runs) == {j.id for j in jobs} and set(runs.values()) == {1}
    for worker in workers:
        assert_clean_locks(r, worker, "wat")
    assert r.llen(K.jobs("wat")) == 0


# --- between jobs (issue 7 items 8 and 9) ------------------------------------------------------
@pytest.mark.parametrize("same_batch", [False, True])
def test_a_job_changing_the_signal_mask_does_not_leak_into_the_next(r, same_batch: bool) -> None:
    app = App()
    masks: list[set[int]] = []

    @app.job("wat")
    def wat(job: Job) -> None:
        if job.args["block"]:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
            time.sleep(0.002)  # a job, not a no-op: the check costs a syscall
        masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        Enqueuer(NS, r).enqueue_many([("wat", {"block": True}), ("wat", {"block": False})])
        worker = make_worker(r, app)
        if same_batch:
            worker.batch_size = 2
        assert worker.drain() == 2
        assert signal.SIGUSR2 in masks[0]
        assert signal.SIGUSR2 not in masks[1]
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_success_is_logged_at_debug_with_its_duration(r) -> None:
    app = App()
    app.register("wat", lambda job: time.sleep(0.01))
    job = Enqueuer(NS, r).enqueue("wat")
    saved = structlog.get_config()
    # at debug level (another test may have configured logging at info in this process)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            worker = make_worker(r, app)
            assert worker.log_success
            assert worker.run_one()
    finally:
        structlog.configure(**saved)
    (line,) = [e for e in logs if e["event"] == "job succeeded"]
    assert line["log_level"] == "debug"
    assert (line["job_id"], line["job_name"]) == (job.id, "wat")
    assert 0.01 <= line["duration"] < 5


def test_jobs_given_back_wake_at_most_the_wake_cap(r, monkeypatch) -> None:
    # the cap is store/base.py's WAKE_TOKENS_MAX, passed to fetch.lua (not written in it)
    import prefork_work.store.queue as queue_module

    monkeypatch.setattr(queue_module, "WAKE_TOKENS_MAX", 3)
    app = App()
    app.register("wat", lambda job: None)
    Enqueuer(NS, r).enqueue_many([("wat", {"i": i}) for i in range(5)])
    worker = make_worker(r, app)
    worker.batch_size = 5
    worker._refill()
    r.delete(K.wake())
    worker.close()
    assert r.llen(K.jobs("wat")) == 5 and r.llen(K.wake()) == 3
