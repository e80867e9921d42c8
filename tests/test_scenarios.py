"""Replays of shared/reference/vectors/scenarios.json: Redis contents after real gocraft/work calls.

Each scenario was run by the Go library in namespace ``vec`` with its clock mocked
(``mocked_now``) and its random source replaced by a counter, so ids are reproducible
(``0000000a0000000000000001``: a 4-byte scenario tag, then an 8-byte counter). We do the same:
``prefork_work.job.make_identifier`` keeps its code, only its ``os.urandom`` is swapped for the
counter, and every object gets a fake clock. Then the whole keyspace is compared with Go's
dump: every key, its type, TTL and value, byte for byte. Where we differ from Go on purpose
(README "How it differs", gocraft-work-model.md §8/§10), the test says so and asserts ours.

Keys we never compare: our extension keys ``<ns>:pw:*`` (wake tokens; Go ignores them) and
``<ns>:last_periodic_enqueue`` in the pool scenarios: a Go pool sets it at start even with no
periodic jobs, ours does not move the shared marker then (W17, loops/periodic.py).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import types
from collections.abc import Callable
from typing import Any

import pytest
import redis
from conftest import VECTORS

import prefork_work.job as job_module
from prefork_work.app import App
from prefork_work.enqueuer import Enqueuer, ScheduledJob
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.loops.heartbeater import Heartbeater, PoolInfo
from prefork_work.loops.periodic import PeriodicEnqueuer
from prefork_work.loops.requeuer import Requeuer
from prefork_work.store.pools import PoolStore
from prefork_work.worker import Worker

DATA = json.loads((VECTORS / "scenarios.json").read_text(encoding="utf-8"))
SCENARIOS = {s["name"]: s for s in DATA["scenarios"]}
NS = DATA["namespace"]
K = Keys(NS)
T = DATA["mocked_now"]
LAST_PERIODIC = K.last_periodic_enqueue().encode()

Entry = tuple[str, int, Any]  # (type, ttl, value)
Keyspace = dict[bytes, Entry]


# --- keyspace dumps ---------------------------------------------------------------------------
def go_keyspace(name: str, label: str) -> Keyspace:
    """A dump of the vector file with every string turned back into its bytes."""
    (dump,) = [d for d in SCENARIOS[name]["dumps"] if d["label"] == label]
    out: Keyspace = {}
    for entry in dump["keyspace"]:
        kind, value = entry["type"], entry["value"]
        if kind == "string":
            value = value.encode()
        elif kind == "list":
            value = [v.encode() for v in value]
        elif kind == "set":
            value = sorted(v.encode() for v in value)
        elif kind == "zset":
            value = [(m["member"].encode(), m["score"].encode()) for m in value]
        elif kind == "hash":
            value = {k.encode(): v.encode() for k, v in value.items()}
        else:
            raise AssertionError(f"unknown type {kind}")
        out[entry["key"].encode()] = (kind, entry["ttl"], value)
    return out


def our_keyspace(r: redis.Redis) -> Keyspace:
    """The same dump of our Redis: scores as Redis writes them, heartbeat pid/host masked."""
    out: Keyspace = {}
    for key in sorted(r.keys("*")):
        if key.startswith(K.prefix.encode() + b"pw:"):
            continue  # extension keys of ours (README); Go never reads them
        kind = r.type(key).decode()
        if kind == "string":
            value: Any = r.get(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True, score_cast_func=lambda s: s)
        elif kind == "hash":
            value = r.hgetall(key)
            if key.startswith(K.heartbeat("").encode()):
                assert value[b"pid"].isdigit() and value[b"host"], value
                value.update({b"pid": b"<PID>", b"host": b"<HOST>"})
        else:
            raise AssertionError(f"unexpected type {kind} of {key!r}")
        out[key] = (kind, r.ttl(key), value)
    return out


def assert_same(ours: Keyspace, go: Keyspace, as_json: tuple[bytes, ...] = ()) -> None:
    """Equal keyspaces; TTLs within 2 s (Go's dumps read some a second after the EXPIRE)."""
    ours = dict(ours)
    for key, (kind, ttl, value) in ours.items():
        if key in go and ttl > 0 and go[key][1] > 0 and abs(ttl - go[key][1]) <= 2:
            ours[key] = (kind, go[key][1], value)
    go = dict(go)
    for key in as_json:  # Lua cjson output has no stable key order: compare parsed
        for space in (ours, go):
            kind, ttl, value = space[key]
            space[key] = (kind, ttl, [json.loads(v) for v in value])
    assert ours == go


def without(space: Keyspace, *keys: bytes) -> Keyspace:
    """``space`` minus ``keys``, each of which must be there (so the vector says what we think)."""
    space = dict(space)
    for key in keys:
        assert key in space, key
        del space[key]
    return space


# --- deterministic ids and clock --------------------------------------------------------------
class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


def fix_ids(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """make_identifier's random source becomes the Go run's counter: tag + 1, 2, 3, ..."""
    ids = SCENARIOS[name]["ids"]
    first = ids.get("pool_id") or ids["job_ids"][0]
    tag = bytes.fromhex(first[:8])
    counter = itertools.count(1)

    def urandom(n: int) -> bytes:
        assert n == 12
        return tag + next(counter).to_bytes(8, "big")

    monkeypatch.setattr(job_module, "os", types.SimpleNamespace(urandom=urandom))


def serialized(result: Job | ScheduledJob | None) -> Any:
    """An API result as the vector's ``returns`` write it."""
    if result is None:
        return None
    if isinstance(result, ScheduledJob):
        return {"job": result.job.to_json().decode(), "run_at": result.run_at}
    return result.to_json().decode()


# --- enqueuer scenarios -----------------------------------------------------------------------
# (clock, Enqueuer method, arguments), as in each scenario's "actions"
ENQUEUE_STEPS: dict[str, list[tuple[int, str, tuple[Any, ...]]]] = {
    "a_enqueue_two": [
        (T, "enqueue", ("send_email", {
            "address": "alice@example.com", "subject": "hi <there> & welcome", "n": 1})),
        (T + 1, "enqueue", ("send_email", None)),
    ],
    "b_enqueue_in": [
        (T, "enqueue_in", ("send_email", 300, {"a": 1, "b": "cool"})),
        (T, "enqueue_in", ("send_email", -10, None)),
    ],
    "c_enqueue_unique_twice": [
        (T, "enqueue_unique", ("send_email", {"a": 1, "b": "cool"})),
        (T + 5, "enqueue_unique", ("send_email", {"a": 1, "b": "cool"})),
    ],
    "c2_enqueue_unique_nil_args": [
        (T, "enqueue_unique", ("send_email", None)),
        (T, "enqueue_unique", ("send_email", None)),
    ],
    "d_enqueue_unique_by_key": [
        (T, "enqueue_unique_by_key", ("send_email", {"a": 1, "v": "first"}, {"key": "123"})),
        (T + 5, "enqueue_unique_by_key", ("send_email", {"a": 1, "v": "second"}, {"key": "123"})),
    ],
    "d2_enqueue_unique_in": [
        (T, "enqueue_unique_in", ("send_email", 60, {"a": 1})),
        (T + 5, "enqueue_unique_in", ("send_email", 120, {"a": 1})),
    ],
    "d3_enqueue_unique_in_by_key": [
        (T, "enqueue_unique_in_by_key", ("send_email", 60, {"v": "first"}, {"key": "123"})),
        (T + 5, "enqueue_unique_in_by_key", ("send_email", 120, {"v": "second"}, {"key": "123"})),
    ],
}


@pytest.mark.parametrize("name", list(ENQUEUE_STEPS))
def test_enqueue_scenario(name: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = SCENARIOS[name]
    fix_ids(monkeypatch, name)
    clock = Clock(T)
    enqueuer = Enqueuer(NS, r, clock=clock)
    results = []
    for now, method, args in ENQUEUE_STEPS[name]:
        clock.now = now
        results.append(serialized(getattr(enqueuer, method)(*args)))
    assert results == [call["returned"] for call in scenario["returns"]]
    (dump,) = scenario["dumps"]
    assert_same(our_keyspace(r), go_keyspace(name, dump["label"]))


# --- pool scenarios ---------------------------------------------------------------------------
class Replay:
    """What a scenario's pool needs: fake clock, counter ids, Go-shaped heartbeats."""

    def __init__(self, name: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = name
        self.ids = SCENARIOS[name]["ids"]
        self.r = r
        self.monkeypatch = monkeypatch
        self.clock = Clock(T)
        self.pools = PoolStore(r, K)
        fix_ids(monkeypatch, name)

    def worker(self, app: App, **kwargs: Any) -> Worker:
        return Worker(app, self.r, NS, clock=self.clock, idle_waits=(0.01,), **kwargs)

    def pool_worker(self, app: App) -> tuple[Worker, str, list[str]]:
        """The scenario's one worker, whose counter-made ids must be the Go run's."""
        worker = self.worker(app)
        pool, workers = worker.pool_id, [worker.worker_id]
        assert (pool, workers) == (self.ids["pool_id"], self.ids["worker_ids"])
        return worker, pool, workers

    def enqueuer(self) -> Enqueuer:
        return Enqueuer(NS, self.r, clock=self.clock)

    def go(self, label: str) -> Keyspace:
        return without(go_keyspace(self.name, label), LAST_PERIODIC)

    def beat(self, pool_id: str, worker_ids: list[str], names: list[str], concurrency: int) -> None:
        """The heartbeat our server writes for a pool (pool.Start's first beat)."""
        info = PoolInfo(pool_id, os.getpid(), worker_ids, names, concurrency, started_at=T)
        Heartbeater(self.pools, lambda: [info]).tick(self.clock())

    def stop(self, pool_id: str, worker_ids: list[str]) -> None:
        """What pool.Stop removes: the heartbeat, the pool id and the observations."""
        Heartbeater(self.pools, list).remove(pool_id, worker_ids)

    def backoff_draw(self, retry_score: bytes, fails: int) -> None:
        """Make gocraft's default backoff draw the R the Go run drew (from the retry score)."""
        r_draw, rest = divmod(int(retry_score) - T - fails**4 - 15, fails + 1)
        assert rest == 0 and 0 <= r_draw < 30

        def randrange(n: int) -> int:
            assert n == 30
            return r_draw

        self.monkeypatch.setattr(random, "randrange", randrange)


REPLAYS: dict[str, Callable[[Replay], None]] = {}


def replay(name: str) -> Callable[[Callable[[Replay], None]], Callable[[Replay], None]]:
    def register(fn: Callable[[Replay], None]) -> Callable[[Replay], None]:
        REPLAYS[name] = fn
        return fn

    return register


@replay("e_fail_once_retry")
def replay_fail_once(rp: Replay) -> None:
    app = App()
    calls: list[int] = []

    @app.job("send_email", max_fails=2)
    def send_email(job: Job) -> None:
        calls.append(job.fails)
        if len(calls) == 1:
            raise RuntimeError("boom: first attempt fails")

    worker = rp.worker(app)
    assert (worker.pool_id, [worker.worker_id]) == (rp.ids["pool_id"], rp.ids["worker_ids"])
    worker.announce()
    rp.enqueuer().enqueue("send_email", {"a": 1, "b": "cool"})
    go = rp.go("after Stop")
    rp.backoff_draw(go[K.retry().encode()][2][0][1], fails=1)  # 58 s: R = 21 in the Go run
    assert worker.run_one()
    rp.stop(worker.pool_id, [worker.worker_id])
    assert calls == [0]
    assert_same(our_keyspace(rp.r), go)


@replay("f_fail_twice_dead")
def replay_fail_twice(rp: Replay) -> None:
    app = App()
    snapshots: dict[str, Keyspace] = {}
    attempts: list[int] = []

    @app.job("send_email", max_fails=2)
    def send_email(job: Job) -> None:
        attempts.append(job.fails)
        if len(attempts) == 2:
            snapshots["during"] = our_keyspace(rp.r)  # asserted outside: no catch-all here
        raise RuntimeError(f"boom #{len(attempts)}")

    worker, pool, workers = rp.pool_worker(app)
    worker.announce()
    rp.beat(pool, workers, ["send_email"], 1)
    rp.enqueuer().enqueue("send_email", {"a": 1, "b": "cool"})

    idle = rp.go("after first failure (pool running, worker idle)")
    rp.backoff_draw(idle[K.retry().encode()][2][0][1], fails=1)  # 50 s: R = 17
    assert worker.run_one()
    assert_same(our_keyspace(rp.r), idle)

    rp.clock.now = T + 50  # the retry score: the requeuer moves it back with t = now
    assert Requeuer(rp.pools).tick(rp.clock()) == 1
    assert worker.run_one()
    assert attempts == [0, 1]
    in_progress = K.in_progress("send_email", pool).encode()
    # Go's requeuer re-encodes through Lua cjson (arbitrary key order); ours writes Go's
    # own encoding (W26). Same JSON either way.
    assert snapshots["during"][in_progress][2] == [
        b'{"name":"send_email","id":"0000000f0000000000000003","t":1700000050,'
        b'"args":{"a":1,"b":"cool"},"fails":1,"err":"boom #1","failed_at":1700000000}'
    ]
    during = "during second attempt (pool running): in-progress entry holds the cjson-re-encoded bytes"
    assert_same(snapshots["during"], rp.go(during), as_json=(in_progress,))

    rp.stop(pool, workers)
    assert_same(our_keyspace(rp.r), rp.go("after Stop"))  # dead entry byte for byte


@replay("g_heartbeat")
def replay_heartbeat(rp: Replay) -> None:
    # Our server runs one pool of concurrency 1 per child; here one heartbeat is written for
    # the Go pool's shape (3 workers) to check the hash format field by field.
    app = App()
    app.register("send_email", lambda job: None)
    app.register("audit_log", lambda job: None, priority=5, max_concurrency=2)
    pool = job_module.make_identifier()
    workers = [job_module.make_identifier() for _ in range(3)]
    assert (pool, workers) == (rp.ids["pool_id"], rp.ids["worker_ids"])
    rp.worker(app, pool_id=pool, worker_id=workers[0]).announce()
    rp.beat(pool, workers, sorted(app.job_types), 3)
    # no periodic jobs: ours leaves last_periodic_enqueue alone (W17), Go sets it
    assert PeriodicEnqueuer(rp.pools, []).tick(rp.clock()) == 0
    assert_same(our_keyspace(rp.r), rp.go("running"))
    rp.stop(pool, workers)
    assert_same(our_keyspace(rp.r), rp.go("after Stop"))


@replay("h_observation_checkin")
def replay_checkin(rp: Replay) -> None:
    app = App()
    snapshots: dict[str, Keyspace] = {}

    @app.job("send_email")
    def send_email(job: Job) -> None:
        snapshots["before"] = our_keyspace(rp.r)
        rp.clock.now = T + 7
        job.checkin('halfway there: 50/100 <ok> & "fine"')
        snapshots["after"] = our_keyspace(rp.r)

    worker, pool, workers = rp.pool_worker(app)
    worker.announce()
    rp.beat(pool, workers, ["send_email"], 1)
    rp.enqueuer().enqueue("send_email", {"a": 1, "b": "cool"})
    assert worker.run_one()
    rp.stop(pool, workers)
    assert_same(snapshots["before"], rp.go("job running, before Checkin"))
    assert_same(snapshots["after"], rp.go("job running, after Checkin"))
    assert_same(our_keyspace(rp.r), rp.go("after Stop"))


@replay("i_max_concurrency_mid_job")
def replay_max_concurrency(rp: Replay) -> None:
    # Go's pool of 3 workers = three of our Workers sharing the pool id (so lock_info and
    # the in-progress list have Go's keys); Go picks the worker at random, ours is the first.
    app = App()
    seen: list[int] = []
    refused: list[bool] = []
    snapshots: dict[str, Keyspace] = {}
    others: list[Worker] = []

    def send_email(job: Job) -> None:
        seen.append(job.args["i"])
        if len(seen) == 1:
            refused.extend(other.run_one() for other in others)  # the cap says no
            snapshots["mid"] = our_keyspace(rp.r)

    app.register("send_email", send_email, max_concurrency=1)
    first = rp.worker(app)
    others.extend(rp.worker(app, pool_id=first.pool_id) for _ in range(2))
    pool, workers = first.pool_id, [first.worker_id] + [w.worker_id for w in others]
    assert (pool, workers) == (rp.ids["pool_id"], rp.ids["worker_ids"])
    first.announce()
    rp.beat(pool, workers, ["send_email"], 3)
    enqueuer = rp.enqueuer()
    for i in (1, 2, 3):
        enqueuer.enqueue("send_email", {"i": i})
    assert first.run_one()
    assert refused == [False, False]
    assert all(w.run_one() for w in others)  # one at a time, each worker in turn
    rp.stop(pool, workers)
    assert seen == [1, 2, 3]  # oldest first
    assert_same(snapshots["mid"], rp.go("mid-job (one running, two queued)"))
    assert_same(our_keyspace(rp.r), rp.go("after Stop"))


@replay("j_by_key_unique_processed")
def replay_by_key_processed(rp: Replay) -> None:
    app = App()
    received: list[dict[str, Any]] = []
    app.register("send_email", lambda job: received.append(
        {"args": job.args, "id": job.id, "t": job.t}))
    worker, pool, workers = rp.pool_worker(app)
    enqueuer = rp.enqueuer()
    assert enqueuer.enqueue_unique_by_key("send_email", {"v": "first"}, {"key": "k1"}) is not None
    rp.clock.now = T + 5
    assert enqueuer.enqueue_unique_by_key("send_email", {"v": "second"}, {"key": "k1"}) is None
    assert_same(our_keyspace(rp.r), go_keyspace(rp.name, "before the pool starts"))

    worker.announce()
    assert worker.drain() == 1
    rp.stop(pool, workers)
    (go_received,) = [c["returned"] for c in SCENARIOS[rp.name]["returns"]
                      if c["call"] == "handler received"]
    # as in Go, the handler runs the newest job held in the unique key
    assert received == [dict(c, args=json.loads(c["args"])) for c in go_received]
    # Deliberate (W6, README): Go acks the replacement's bytes, which were never in the
    # in-progress list, so the placeholder leaks there; we acknowledge the entry we fetched.
    in_progress = K.in_progress("send_email", pool).encode()
    assert_same(our_keyspace(rp.r), without(rp.go("after Stop"), in_progress))


@replay("k_scheduled_unknown_name_to_dead")
def replay_unknown_name(rp: Replay) -> None:
    app = App()
    app.register("send_email", lambda job: None)
    worker, pool, workers = rp.pool_worker(app)
    worker.announce()
    rp.enqueuer().enqueue_in("mystery_job", -10, {"a": 1, "list": [], "u": "a/b"})
    assert Requeuer(rp.pools).tick(rp.clock()) == 1
    assert not worker.run_one()  # a pool never fetches a name it does not run
    rp.stop(pool, workers)
    # Deliberate (W10, README "Mixed fleets"): Go's requeuer dead-letters a due job whose
    # name its own pool does not register ("unknown job when requeueing"), so pools with
    # different job sets kill each other's jobs. Ours never does: the job goes back to its
    # own queue (t = now, exact bytes: no cjson "\/" and "[]" -> "{}") for a pool that runs it.
    go = rp.go("after Stop")
    go_dead = json.loads(go[K.dead().encode()][2][0][0])
    assert go_dead["err"] == "unknown job when requeueing"
    queued = (b'{"name":"mystery_job","id":"000000060000000000000003","t":1700000000,'
              b'"args":{"a":1,"list":[],"u":"a/b"}}')
    assert {k: v for k, v in json.loads(queued).items() if k != "args"} == {
        k: v for k, v in go_dead.items() if k not in ("args", "err", "failed_at")}
    expected = without(go, K.dead().encode())
    expected[K.jobs("mystery_job").encode()] = ("list", -1, [queued])
    assert_same(our_keyspace(rp.r), expected)


@replay("l_stray_job_lock_accounting")
def replay_stray_job(rp: Replay) -> None:
    app = App()
    ran: list[str] = []
    app.register("send_email", lambda job: ran.append(job.id))
    worker, pool, workers = rp.pool_worker(app)
    worker.announce()
    rp.r.lpush(K.jobs("send_email"),
               b'{"name":"other_job","id":"0000000500000000000000aa","t":1700000000,"args":null}')
    assert worker.run_one()
    rp.stop(pool, workers)
    assert ran == []
    # Deliberate (§10.3): Go's fetch takes send_email's lock and its ack releases other_job's,
    # leaving send_email at 1 and other_job at -1 for good. Ours releases what it took. The
    # dead entry itself is Go's, byte for byte.
    go = rp.go("after Stop")
    lock, lock_info = K.lock("send_email").encode(), K.lock_info("send_email").encode()
    assert go[lock][2] == b"1" and go[lock_info][2] == {pool.encode(): b"1"}
    expected = without(go, K.lock("other_job").encode(), K.lock_info("other_job").encode())
    expected[lock] = ("string", -1, b"0")
    expected[lock_info] = ("hash", -1, {pool.encode(): b"0"})
    assert_same(our_keyspace(rp.r), expected)


@pytest.mark.parametrize("name", list(REPLAYS))
def test_pool_scenario(name: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    REPLAYS[name](Replay(name, r, monkeypatch))


def test_every_scenario_is_replayed() -> None:
    assert DATA["namespace"] == "vec" and T == 1700000000
    assert set(SCENARIOS) == set(ENQUEUE_STEPS) | set(REPLAYS)
