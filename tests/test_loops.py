"""The master loops against the real Redis: gocraft's heartbeater, dead_pool_reaper, requeuer
and periodic_enqueuer test cases. Where gocraft's test pins one of its bugs, ours asserts the
fixed behaviour and says so."""

from __future__ import annotations

import json
import time

from prefork_work import cron
from prefork_work.app import App
from prefork_work.client import Client
from prefork_work.enqueuer import Enqueuer
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.loops.heartbeater import Heartbeater, PoolInfo
from prefork_work.loops.periodic import HORIZON_SECONDS, PeriodicEnqueuer, should_enqueue
from prefork_work.loops.reaper import DeadPoolReaper
from prefork_work.loops.requeuer import Requeuer
from prefork_work.store.pools import PoolStore
from prefork_work.worker import Worker

NS = "work"
K = Keys(NS)
NOW = 1_700_000_000


def store(r) -> PoolStore:
    return PoolStore(r, K)


def job_bytes(name: str, job_id: str, args=None) -> bytes:
    return Job(name=name, id=job_id, t=NOW, args=args).to_json()


# --- heartbeater -------------------------------------------------------------------------------
def test_heartbeat_fields_as_go_reads_them(r) -> None:
    info = PoolInfo("pool1", 4242, ["ccc", "bbb"], ["foo", "bar"], 10, NOW - 5, {"master_pid": "1"})
    hb = Heartbeater(store(r), lambda: [info], host="myhost")
    hb.tick(NOW)
    assert r.smembers(K.worker_pools()) == {b"pool1"}
    fields = {k.decode(): v.decode() for k, v in r.hgetall(K.heartbeat("pool1")).items()}
    assert fields == {
        "heartbeat_at": str(NOW), "started_at": str(NOW - 5), "job_names": "bar,foo",
        "concurrency": "10", "worker_ids": "bbb,ccc", "host": "myhost", "pid": "4242",
        "master_pid": "1",
    }
    for name in ("heartbeat_at", "started_at", "concurrency", "pid"):
        int(fields[name])  # Go parses these as integers
    r.hset(K.worker_observation("bbb"), "job_name", "x")
    hb.remove("pool1", ["bbb", "ccc"])
    assert r.smembers(K.worker_pools()) == set()
    assert not r.exists(K.heartbeat("pool1"))
    assert not r.exists(K.worker_observation("bbb"))


def test_heartbeats_of_many_pools_in_one_round_trip(r) -> None:
    infos = [PoolInfo(f"p{i}", 100 + i, [f"w{i}"], ["a"], 1, NOW) for i in range(8)]
    r.config_resetstat()
    Heartbeater(store(r), lambda: infos, host="h").tick(NOW)
    assert r.scard(K.worker_pools()) == 8
    assert r.info("commandstats")["cmdstat_hset"]["calls"] == 8
    assert r.info("commandstats")["cmdstat_sadd"]["calls"] == 1


# --- reaper -------------------------------------------------------------------------------------
def make_pool(r, pool_id: str, beat_at: int | None, names: str | None, jobs: dict[str, list[bytes]]):
    r.sadd(K.worker_pools(), pool_id)
    if beat_at is not None:
        fields = {"heartbeat_at": beat_at, "host": "otherhost", "pid": 1}
        if names is not None:
            fields["job_names"] = names
        r.hset(K.heartbeat(pool_id), mapping=fields)
    for name, entries in jobs.items():
        for raw in entries:
            r.lpush(K.in_progress(name, pool_id), raw)
            r.incr(K.lock(name))
            r.hincrby(K.lock_info(name), pool_id, 1)


def test_reaper_requeues_stale_pools_and_fixes_locks(r) -> None:
    make_pool(r, "1", NOW, "type1,type2", {})
    make_pool(r, "2", NOW - 3600, "type1,type2", {"type1": [job_bytes("type1", "j2")]})
    make_pool(r, "3", NOW - 3600, "type1,type2", {})
    reaper = DeadPoolReaper(store(r), ["type1", "type2"])
    assert reaper.tick(NOW) == 1
    assert r.lrange(K.jobs("type1"), 0, -1) == [job_bytes("type1", "j2")]
    assert r.get(K.lock("type1")) == b"0"
    assert r.hget(K.lock_info("type1"), "2") is None
    assert r.smembers(K.worker_pools()) == {b"1"}
    assert r.exists(K.heartbeat("1")) and not r.exists(K.heartbeat("2"))


def test_pool_without_heartbeat_gets_its_jobs_back(r) -> None:
    # gocraft's NoHeartbeat test asserts the in-progress list is left untouched (W1):
    # ours requeues it, once the pool has been seen without a heartbeat for dead_after.
    for pool in ("1", "2", "3"):
        make_pool(r, pool, None, None, {})
    make_pool(r, "1", None, None, {"type1": [job_bytes("type1", "a")]})
    reaper = DeadPoolReaper(store(r), ["type1"], dead_after=10)
    assert reaper.tick(NOW) == 0  # first sighting: maybe a Go pool before its first beat
    assert r.llen(K.in_progress("type1", "1")) == 1
    assert reaper.tick(NOW + 11) == 1
    assert r.llen(K.jobs("type1")) == 1
    assert r.smembers(K.worker_pools()) == set()
    assert r.get(K.lock("type1")) == b"0"
    assert r.hgetall(K.lock_info("type1")) == {}


def test_stale_heartbeat_without_job_names_is_still_reaped(r) -> None:
    # gocraft never reaps such a pool (W7); the lists are found by SCAN instead.
    make_pool(r, "1", NOW - 3600, None, {"type1": [job_bytes("type1", "x")]})
    make_pool(r, "2", NOW - 3600, "type1", {"type1": [job_bytes("type1", "y")]})
    assert DeadPoolReaper(store(r), ["type1"]).tick(NOW) == 2
    assert r.llen(K.jobs("type1")) == 2


def test_live_and_own_pools_are_not_reaped(r) -> None:
    make_pool(r, "fresh", NOW - 2, "a", {"a": [job_bytes("a", "1")]})
    make_pool(r, "mine", NOW - 3600, "a", {"a": [job_bytes("a", "2")]})
    reaper = DeadPoolReaper(store(r), ["a"], live_pools=lambda: {"mine"})
    assert reaper.tick(NOW) == 0
    assert r.llen(K.in_progress("a", "fresh")) == 1
    assert r.llen(K.in_progress("a", "mine")) == 1


def test_two_reapers_requeue_each_job_once(r) -> None:
    make_pool(r, "dead", NOW - 3600, "a", {"a": [job_bytes("a", str(i)) for i in range(50)]})
    first, second = DeadPoolReaper(store(r), ["a"]), DeadPoolReaper(store(r), ["a"])
    # the second reaper finds the pool claimed by the first
    assert store(r).claim_pool("dead", first.claimant)
    assert second.tick(NOW) == 0
    store(r).release_claim("dead")
    assert first.tick(NOW) + second.tick(NOW) == 50
    assert r.llen(K.jobs("a")) == 50
    assert len(set(r.lrange(K.jobs("a"), 0, -1))) == 50


def test_reclaim_pool_at_once_and_local_orphans(r) -> None:
    make_pool(r, "child", NOW, "a", {"a": [job_bytes("a", "1"), job_bytes("a", "2")]})
    reaper = DeadPoolReaper(store(r), ["a"])
    assert reaper.reclaim_pool("child", NOW, names=["a"]) == 2  # heartbeat fresh: no matter
    assert not r.exists(K.heartbeat("child"))
    make_pool(r, "orphan", NOW, "a", {"a": [job_bytes("a", "3")]})
    r.hset(K.heartbeat("orphan"), mapping={"host": "here", "pid": 999999})
    make_pool(r, "alive", NOW, "a", {"a": [job_bytes("a", "4")]})
    r.hset(K.heartbeat("alive"), mapping={"host": "here", "pid": 1})
    # another host's pool with a pid that is dead *here*: its own host judges it, not us
    make_pool(r, "elsewhere", NOW, "a", {"a": [job_bytes("a", "5")]})
    r.hset(K.heartbeat("elsewhere"), mapping={"host": "there", "pid": 999999})
    moved = reaper.reap_local_orphans("here", NOW, pid_alive=lambda pid: pid == 1)
    assert moved == 1
    assert r.llen(K.jobs("a")) == 3
    assert r.llen(K.in_progress("a", "alive")) == 1
    assert r.llen(K.in_progress("a", "elsewhere")) == 1 and r.exists(K.heartbeat("elsewhere"))


def test_record_crash_until_poison_job_is_dead(r) -> None:
    raw = job_bytes("boom", "jid", {"k": 1})
    other = job_bytes("boom", "other")
    reaper = DeadPoolReaper(store(r), ["boom"])
    for attempt in (1, 2):
        make_pool(r, f"p{attempt}", NOW, "boom", {"boom": [raw, other]})
        assert reaper.record_crash(f"p{attempt}", "boom", "jid", "SIGKILL", 3, NOW) == "requeued"
        reaper.reclaim_pool(f"p{attempt}", NOW, names=["boom"])
        r.delete(K.jobs("boom"))
    make_pool(r, "p3", NOW, "boom", {"boom": [raw, other]})
    assert reaper.record_crash("p3", "boom", "jid", "SIGKILL", 3, NOW) == "dead"
    (member,) = r.zrange(K.dead(), 0, -1)
    dead = Job.from_json(member)
    assert (dead.id, dead.err, dead.fails, dead.args) == ("jid", "worker died: SIGKILL (3 times)", 1, {"k": 1})
    assert reaper.reclaim_pool("p3", NOW, names=["boom"]) == 1  # the innocent job goes back
    assert r.lrange(K.jobs("boom"), 0, -1) == [other]
    assert r.get(K.lock("boom")) == b"0"
    assert not r.exists(K.crashes("jid"))


def test_recompute_locks_heals_drift(r) -> None:
    make_pool(r, "p1", NOW, "a", {"a": [job_bytes("a", "1"), job_bytes("a", "2")]})
    r.set(K.lock("a"), 17)
    r.hset(K.lock_info("a"), mapping={"p1": 9, "gone": 5, "zero": 0})
    DeadPoolReaper(store(r), ["a"]).repair_locks(["a"])
    # fields of pools with no in-progress entries go (W23); the lock is their sum
    assert r.get(K.lock("a")) == b"2"
    assert r.hgetall(K.lock_info("a")) == {b"p1": b"2"}


def test_reaped_jobs_run_again(r) -> None:
    ran = []
    app = App()
    app.register("a", lambda job: ran.append(job.id))
    make_pool(r, "dead", NOW - 3600, "a", {"a": [job_bytes("a", "x")]})
    DeadPoolReaper(store(r), ["a"]).tick(NOW)
    Worker(app, r, NS, idle_waits=(0.01,)).drain()
    assert ran == ["x"]


def fenced_pool(r, pool_id: str | None = None) -> str:
    """A pool whose worker has made fetch calls: it has a field in the fence hash."""
    app = App()
    app.register("a", lambda job: None)
    worker = Worker(app, r, NS, pool_id=pool_id, idle_waits=(0.01,))
    Enqueuer(NS, r).enqueue("a")
    assert worker.drain() == 1
    assert r.hexists(K.fence(), worker.pool_id)
    return worker.pool_id


def test_the_fence_field_goes_with_the_pool(r) -> None:
    # the hash holds one field per pool that ever fetched: it must not grow with every child
    ended = fenced_pool(r)
    Heartbeater(store(r), list).remove(ended)  # the master forgets an exited child's pool
    assert not r.hexists(K.fence(), ended)
    dead = fenced_pool(r, "dead")
    make_pool(r, "dead", NOW - 3600, "a", {})
    live = fenced_pool(r, "live")
    make_pool(r, "live", NOW + 11, "a", {})  # beating still at the last tick
    reaper = DeadPoolReaper(store(r), ["a"], dead_after=10)
    reaper.tick(NOW)
    assert not r.hexists(K.fence(), dead)
    # a pool that never had a heartbeat (an in-process worker, or one a Go reaper removed)
    # is found by its field alone, and judged as any pool without a heartbeat
    in_process = fenced_pool(r)
    reaper.tick(NOW)
    assert r.hexists(K.fence(), in_process)  # first sighting: maybe before its first beat
    reaper.tick(NOW + 11)
    assert not r.hexists(K.fence(), in_process)
    assert r.hkeys(K.fence()) == [live.encode()]


# --- requeuer -----------------------------------------------------------------------------------
def test_requeuer_moves_due_jobs_whatever_their_name(r) -> None:
    now = int(time.time())
    r.zadd(K.scheduled(), {job_bytes("wat", "1"): now - 19, job_bytes("wat", "2"): now - 19,
                           job_bytes("foo", "3"): now, job_bytes("foo", "4"): now + 4,
                           job_bytes("bar", "5"): now + 9})
    assert Requeuer(store(r)).tick(now) == 3
    assert r.llen(K.jobs("wat")) == 2 and r.llen(K.jobs("foo")) == 1 and r.llen(K.jobs("bar")) == 0
    assert r.zcard(K.scheduled()) == 2
    assert abs(Job.from_json(r.lindex(K.jobs("foo"), 0)).t - now) <= 2


def test_two_requeuers_racing_on_one_member_queue_it_once(r) -> None:
    # both read the due member; the second's ZREM removes nothing, so it must write nothing
    # (and a member sent to dead likewise)
    member, garbage = job_bytes("wat", "1"), b"garbage"
    r.zadd(K.retry(), {member: NOW - 1, garbage: NOW - 1})
    moves = [(member, job_bytes("wat", "1"), K.jobs("wat")), (garbage, b"dead bytes", K.dead())]
    first, second = store(r), store(r)
    assert first.move_due(K.retry(), NOW, moves) == 1
    assert second.move_due(K.retry(), NOW, moves) == 0
    assert r.lrange(K.jobs("wat"), 0, -1) == [job_bytes("wat", "1")]
    assert r.zrange(K.dead(), 0, -1) == [b"dead bytes"]
    assert r.llen(K.wake()) == 1


def test_requeuer_keeps_unknown_names_and_exact_bytes(r) -> None:
    # gocraft moves a due job whose name the pool does not register to dead (W10), and
    # its cjson round trip rounds big numbers and turns [] into {} (W26). Ours does neither.
    job = Job(name="registered_elsewhere", id="u1", t=5, args={"big": 12345678901234567, "l": []},
              fails=1, err="boom", failed_at=6)
    r.zadd(K.retry(), {job.to_json(): NOW - 1})
    assert Requeuer(store(r)).tick(NOW) == 1
    assert r.zcard(K.dead()) == 0
    moved = Job.from_json(r.lindex(K.jobs("registered_elsewhere"), 0))
    assert moved.args == {"big": 12345678901234567, "l": []}
    assert (moved.t, moved.fails, moved.err, moved.failed_at) == (NOW, 1, "boom", 6)
    assert r.llen(K.wake()) >= 1


def test_requeuer_sends_undecodable_members_to_dead(r) -> None:
    r.zadd(K.scheduled(), {b"garbage": NOW - 1, job_bytes("ok", "1"): NOW - 1})
    assert Requeuer(store(r)).tick(NOW) == 1
    (member,) = r.zrange(K.dead(), 0, -1)
    dead = Job.from_json(member)
    assert dead.err.startswith("malformed job") and dead.args == {"malformed_payload": "garbage"}
    assert r.zcard(K.scheduled()) == 0


def test_requeuer_moves_a_bad_member_to_dead_and_the_rest_of_its_batch_on(r) -> None:
    # a member nested past the recursion limit aborted the whole batch every second: no
    # scheduled, retry or periodic job due after it ever ran (issue 7 item 1)
    deep = b'{"name":"ok","id":"d","t":1,"args":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    deep_args = b'{"name":"ok","id":"e","t":1,"args":{"a":' + b"[" * 700 + b"]" * 700 + b"}}"
    for zset in (K.scheduled(), K.retry()):
        r.zadd(zset, {deep: NOW - 5, deep_args: NOW - 4, b"\xff\xfe": NOW - 3,
                      job_bytes("ok", zset): NOW - 1})
    assert Requeuer(store(r)).tick(NOW) == 2
    assert sorted(Job.from_json(m).id for m in r.lrange(K.jobs("ok"), 0, -1)) == sorted(
        [K.scheduled(), K.retry()])
    dead = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert len(dead) == 6 and all(d.err.startswith("malformed job") for d in dead)
    assert all(len(d.err) < 120 for d in dead)
    assert sum("nested too deeply" in d.err for d in dead) == 4
    assert r.zcard(K.scheduled()) == 0 and r.zcard(K.retry()) == 0


def test_requeuer_sends_a_name_that_makes_another_key_to_dead(r) -> None:
    # "hello:lock" makes <p>jobs:hello:lock, the lock of "hello": the script's LPUSH failed
    # with WRONGTYPE after its ZREM, and the job was gone (issue 12 item 4)
    r.set(K.lock("hello"), 1)
    r.hset(K.jobs("hello") + ":lock_info", "p", 1)
    bad = [job_bytes("hello:lock", "1"), job_bytes("hello:lock_info", "2")]
    for zset in (K.scheduled(), K.retry()):
        r.zadd(zset, {bad[0]: NOW - 3, bad[1]: NOW - 2, job_bytes("ok", zset): NOW - 1})
    assert Requeuer(store(r)).tick(NOW) == 2
    assert r.llen(K.jobs("ok")) == 2
    assert r.get(K.lock("hello")) == b"1"
    dead = [Job.from_json(m) for m in r.zrange(K.dead(), 0, -1)]
    assert sorted(d.args["malformed_payload"].encode() for d in dead) == sorted(bad * 2)
    assert all("holds another type" in d.err for d in dead)
    assert r.zcard(K.scheduled()) == 0 and r.zcard(K.retry()) == 0


def test_requeuer_handles_more_than_a_batch(r) -> None:
    r.zadd(K.retry(), {job_bytes("a", str(i)): NOW - 1 for i in range(1203)})
    assert Requeuer(store(r)).tick(NOW) == 1203
    assert r.llen(K.jobs("a")) == 1203


def test_scripts_survive_script_flush(r) -> None:
    r.zadd(K.retry(), {job_bytes("a", "1"): NOW - 1})
    r.script_flush()
    assert Requeuer(store(r)).tick(NOW) == 1
    make_pool(r, "dead", NOW - 3600, "a", {"a": [job_bytes("a", "2")]})
    r.script_flush()
    assert DeadPoolReaper(store(r), ["a"]).tick(NOW) == 1


# --- periodic enqueuer --------------------------------------------------------------------------
def test_periodic_go_vector_and_second_run(r, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    pe = PeriodicEnqueuer(store(r), [("foo", "0/29 * * * * *"), ("bar", "3/49 * * * * *"),
                                     ("baz", "* * * 2 * *")])
    now = 1468359453
    assert pe.tick(now) == 20
    members = r.zrange(K.scheduled(), 0, -1, withscores=True)
    assert len(members) == 20
    assert (b'{"name":"bar","id":"periodic:bar:3/49 * * * * *:1468359472","t":1468359472,"args":null}',
            1468359472.0) in members
    assert r.get(K.last_periodic_enqueue()) == str(now).encode()
    assert pe.tick(now + 1) == 0  # not due: last run 1 s ago
    assert not should_enqueue(r.get(K.last_periodic_enqueue()), now + 1)
    assert should_enqueue(r.get(K.last_periodic_enqueue()), now + 12)
    pe.tick(now + 12)
    assert r.zcard(K.scheduled()) == 20 + len(
        [t for t in cron.slots(pe.jobs[0][2], now + 12, HORIZON_SECONDS) if t >= now + 240]
        + [t for t in cron.slots(pe.jobs[1][2], now + 12, HORIZON_SECONDS) if t >= now + 240])


def test_periodic_runs_from_vectors(r, vectors, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    runs = [run for run in json.loads((vectors / "periodic.json").read_text())["runs"]
            if run["count"] and not any(s["spec"].startswith("@every") for s in run["specs"])
            and "second_run" not in run["case"]][:8]
    assert runs
    for run in runs:
        r.flushall()
        PeriodicEnqueuer(store(r), [(s["job_name"], s["spec"]) for s in run["specs"]]).tick(run["now"])
        got = [(m.decode(), str(int(s))) for m, s in r.zrange(K.scheduled(), 0, -1, withscores=True)]
        assert sorted(got) == sorted((i["member"], i["score"]) for i in run["scheduled"]), run["case"]
        assert r.get(K.last_periodic_enqueue()).decode() == run["last_periodic_enqueue"]


def test_periodic_with_no_jobs_leaves_the_marker_alone(r) -> None:
    assert PeriodicEnqueuer(store(r), []).tick(NOW) == 0
    assert not r.exists(K.last_periodic_enqueue())


def test_two_hosts_make_one_job_per_slot(r, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    a = PeriodicEnqueuer(store(r), [("tick", "*/10 * * * * *")])
    b = PeriodicEnqueuer(store(r), [("tick", "*/10 * * * * *")])
    a.tick(NOW)
    b.tick(NOW + 5)
    scores = [s for _, s in r.zrange(K.scheduled(), 0, -1, withscores=True)]
    assert len(scores) == len(set(scores)) and len(scores) >= 23


def test_enqueuer_scheduled_job_reaches_a_worker_via_requeuer(r) -> None:
    ran = []
    app = App()
    app.register("later", lambda job: ran.append(job.args))
    Enqueuer(NS, r).enqueue_in("later", -1, {"x": 1})
    Requeuer(store(r)).tick(time.time())
    Worker(app, r, NS, idle_waits=(0.01,)).drain()
    assert ran == [{"x": 1}]


def test_scripts_take_the_wake_cap_from_the_store(r, monkeypatch) -> None:
    # the cap is an argument of every script that wakes workers, not a number in the Lua
    import prefork_work.store.base as base_module
    import prefork_work.store.pools as pools_module
    import prefork_work.store.queue as queue_module

    for module in (base_module, pools_module, queue_module):
        monkeypatch.setattr(module, "WAKE_TOKENS_MAX", 5)
    make_pool(r, "gone", NOW, "a", {"a": [job_bytes("a", str(i)) for i in range(9)]})
    assert store(r).reclaim_pool("gone", ["a"]) == 9
    assert r.llen(K.wake()) == 5
    r.delete(K.wake())
    r.zadd(K.scheduled(), {job_bytes("a", f"s{i}"): NOW - 1 for i in range(9)})
    assert Requeuer(store(r)).tick(NOW) == 9
    assert r.llen(K.wake()) == 5
    r.delete(K.wake())
    from prefork_work.store.queue import QueueStore

    queue = QueueStore(r, K)
    for i in range(7):
        assert queue.push_unique("a", K.unique("a", {"i": i}), job_bytes("a", f"u{i}"), b"1", None)
    assert r.llen(K.wake()) == 5


def test_undecodable_names_in_the_namespace_stop_no_loop_and_no_client_read(r) -> None:
    # bytes another program wrote into our sets and hashes: the reaper and the Client read past them
    r.sadd(K.worker_pools(), b"\xff\xfe", b"dead")
    r.hset(K.heartbeat("dead"), mapping={b"heartbeat_at": NOW - 3600, b"\xff": b"x",
                                         b"job_names": b"foo"})
    r.rpush(K.in_progress("foo", "dead"), job_bytes("foo", "j1"))
    r.sadd(K.known_jobs(), b"\xc3", b"foo")
    r.hset(K.lock_info("foo"), b"\xfa", 1)
    reaper = DeadPoolReaper(store(r), ["foo"], interval=1)
    assert reaper.tick(NOW) == 1  # the dead pool's job is back in its queue
    assert r.lrange(K.jobs("foo"), 0, -1) == [job_bytes("foo", "j1")]
    reaper.repair_locks(["foo"])
    client = Client(NS, r)
    assert [beat.worker_pool_id for beat in client.worker_pool_heartbeats()] == ["\ufffd\ufffd"]
    assert "foo" in [queue.job_name for queue in client.queues()]
