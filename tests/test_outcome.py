"""prefork_work/outcome.py: the one rule for failing a job, and every path that uses it
(handler error, stray job, hard-timeout kill, poison job, malformed payloads), plus the one
heartbeat parser (store/pools.py) as the reaper and the Client read it."""

from __future__ import annotations

import types

import pytest
import structlog.testing

import prefork_work.outcome as outcome_module
from prefork_work.app import App, JobType
from prefork_work.client import Client
from prefork_work.errors import InvalidJobArguments, MalformedJob
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.loops.reaper import DeadPoolReaper
from prefork_work.loops.requeuer import Requeuer
from prefork_work.outcome import Outcome, malformed_error, settle, settle_in_progress
from prefork_work.server import WorkServer
from prefork_work.store.pools import PoolStore, parse_heartbeat, parse_int
from prefork_work.worker import Worker

NS = "work"
K = Keys(NS)
NOW = 1_700_000_000
POOL = "deadpool"
FIXED_ID = "f" * 24


def job_type(**options) -> JobType:
    app = App()
    app.register("wat", lambda job: None, **options)
    return app.job_types["wat"]


def fresh(fails: int = 0) -> Job:
    return Job(name="wat", id="jid", t=NOW - 60, args={"k": 1}, fails=fails)


@pytest.fixture
def pinned(monkeypatch) -> None:
    """The random part of gocraft's backoff pinned to 7, and the wrapper ids to FIXED_ID."""
    monkeypatch.setattr(outcome_module.random, "randrange", lambda stop: 7)
    monkeypatch.setattr(outcome_module, "make_identifier", lambda: FIXED_ID)


# --- settle: each outcome ----------------------------------------------------------------------
def test_retry_after_gocrafts_backoff_exactly(pinned) -> None:
    job = fresh(fails=1)
    verdict = settle(job, job_type(max_fails=5), "boom", NOW, name="wat", raw=b"raw")
    # fails counts this failure: 2^4 + 15 + 7 * (2 + 1)
    assert (verdict.outcome, verdict.score) == (Outcome.RETRY, NOW + 16 + 15 + 21)
    assert (job.fails, job.err, job.failed_at) == (2, "boom", NOW)
    assert verdict.payload == job.to_json()


def test_retry_with_the_job_types_backoff(pinned) -> None:
    verdict = settle(fresh(), job_type(max_fails=5, backoff=lambda job: 100 * job.fails), "boom",
                     NOW, name="wat", raw=b"raw")
    assert (verdict.outcome, verdict.score) == (Outcome.RETRY, NOW + 100)


def test_dead_at_max_fails() -> None:
    job = fresh(fails=2)
    verdict = settle(job, job_type(max_fails=3), "boom", NOW, name="wat", raw=b"raw")
    assert (verdict.outcome, verdict.score, verdict.payload) == (Outcome.DEAD, NOW, job.to_json())
    assert job.fails == 3


def test_dropped_with_skip_dead() -> None:
    verdict = settle(fresh(), job_type(max_fails=1, skip_dead=True), "boom", NOW, name="wat",
                     raw=b"raw")
    assert (verdict.outcome, verdict.payload) == (Outcome.DROPPED, b"")


def test_unknown_type_and_poison_job_are_dead_whatever_retries_are_left() -> None:
    assert settle(fresh(), None, "stray", NOW, name="wat", raw=b"raw").outcome == Outcome.DEAD
    poison = settle(fresh(), job_type(max_fails=25, skip_dead=True), "died", NOW, name="wat",
                    raw=b"raw", poison=True)
    assert (poison.outcome, poison.score) == (Outcome.DEAD, NOW)


class Unencodable(Job):
    def to_json(self) -> bytes:
        raise InvalidJobArguments("args nested too deeply")


def test_arguments_that_cannot_be_written_back_go_to_dead_undamaged(pinned) -> None:
    job = Unencodable(name="wat", id="jid", t=NOW, args={"k": 1})
    verdict = settle(job, job_type(max_fails=5), "boom", NOW, name="wat", raw=b"{raw}")
    wrapper = Job.from_json(verdict.payload)
    assert (verdict.outcome, verdict.score) == (Outcome.DEAD, NOW)
    assert wrapper.args == {"malformed_payload": "{raw}"} and wrapper.name == "wat"
    assert wrapper.err == "job failed (boom) and args nested too deeply"


def test_outcome_codes_are_fetch_luas() -> None:
    assert [o.value for o in Outcome] == ["s", "r", "d", "x", "q"]
    lua = (outcome_module.__file__.rsplit("/", 1)[0] + "/lua/fetch.lua")
    with open(lua, encoding="utf-8") as f:
        source = f.read()
    assert "local CODE = {s = 0, r = 1, d = 2, x = 3}" in source and "outcome == 'q'" in source


# --- every path: the same fields for the same inputs -----------------------------------------------
def in_progress(r, raw: bytes) -> None:
    r.lpush(K.in_progress("wat", POOL), raw)
    r.incr(K.lock("wat"))
    r.hincrby(K.lock_info("wat"), POOL, 1)


def by_handler(r, raw: bytes, error: str, **options) -> None:
    def fail(job: Job) -> None:
        raise RuntimeError(error)

    app = App()
    app.register("wat", fail, **options)
    r.lpush(K.jobs("wat"), raw)
    assert Worker(app, r, NS, clock=lambda: NOW, idle_waits=(0.01,)).run_one()


def by_hard_timeout(r, raw: bytes, error: str, **options) -> list[tuple[str, Outcome]]:
    """The master's hard-timeout kill, through WorkServer._fail_hard_timeout itself."""
    app = App()
    app.register("wat", lambda job: None, timeout=1.5, **options)
    counted: list[tuple[str, Outcome]] = []
    master = types.SimpleNamespace(
        app=app, pools=PoolStore(r, K), _count_outcome=lambda *call: counted.append(call),
        config=types.SimpleNamespace(server=types.SimpleNamespace(hard_timeout_grace=0.5)))
    in_progress(r, raw)
    assert error == "hard timeout after 2s"  # timeout + grace: the server's own text
    WorkServer._fail_hard_timeout(master, POOL, "wat", "jid", NOW)  # type: ignore[arg-type]
    return counted


def by_crash(r, raw: bytes, error: str, **options) -> None:
    in_progress(r, raw)
    assert error == "worker died: SIGKILL (1 times)"  # the reaper's own text
    assert DeadPoolReaper(PoolStore(r, K), ["wat"]).record_crash(
        POOL, "wat", "jid", "SIGKILL", 1, NOW) == "dead"


def settled(r, zset: str) -> tuple[bytes, float]:
    (member, score), = r.zrange(zset, 0, -1, withscores=True)
    for pool in (POOL, *[k.decode().split(":")[-2] for k in r.keys(K.in_progress_pattern())]):
        assert r.llen(K.in_progress("wat", pool)) == 0
    assert int(r.get(K.lock("wat"))) == 0  # the lock taken by the fetch is released
    return member, score


@pytest.mark.parametrize("path,error", [
    (by_handler, "worker died: SIGKILL (1 times)"),
    (by_handler, "hard timeout after 2s"),
    (by_hard_timeout, "hard timeout after 2s"),
    (by_crash, "worker died: SIGKILL (1 times)"),
])
def test_every_path_sends_the_same_dead_job(r, path, error) -> None:
    raw = fresh().to_json()
    path(r, raw, error, max_fails=1)
    member, score = settled(r, K.dead())
    expected = Job(name="wat", id="jid", t=NOW - 60, args={"k": 1}, fails=1, err=error,
                   failed_at=NOW)
    assert (member, score) == (expected.to_json(), NOW)


@pytest.mark.parametrize("path", [by_handler, by_hard_timeout])
def test_handler_error_and_hard_timeout_retry_alike(r, pinned, path) -> None:
    raw = fresh(fails=1).to_json()
    path(r, raw, "hard timeout after 2s", max_fails=3)
    member, score = settled(r, K.retry())
    expected = Job(name="wat", id="jid", t=NOW - 60, args={"k": 1}, fails=2,
                   err="hard timeout after 2s", failed_at=NOW)
    assert (member, score) == (expected.to_json(), NOW + 16 + 15 + 7 * 3)


def test_hard_timeout_at_max_fails_is_dead_and_with_skip_dead_dropped(r) -> None:
    assert by_hard_timeout(r, fresh().to_json(), "hard timeout after 2s", max_fails=1) == [
        ("wat", Outcome.DEAD)]
    assert r.zcard(K.dead()) == 1 and r.zcard(K.retry()) == 0
    r.flushdb()
    assert by_hard_timeout(r, fresh().to_json(), "hard timeout after 2s", max_fails=1,
                           skip_dead=True) == [("wat", Outcome.DROPPED)]
    assert r.zcard(K.dead()) == r.zcard(K.retry()) == r.llen(K.in_progress("wat", POOL)) == 0


def test_settle_in_progress_of_a_job_no_longer_there(r) -> None:
    assert settle_in_progress(PoolStore(r, K), POOL, "wat", "jid", job_type(), "boom", NOW,
                              cause="test") is None
    assert r.zcard(K.retry()) == r.zcard(K.dead()) == 0
    # found, but gone (requeued by a reaper) before the script took it: no outcome to count
    raced = types.SimpleNamespace(in_progress_job=lambda *a: (b"raw", fresh()),
                                  settle_in_progress=lambda *a: False)
    assert settle_in_progress(raced, POOL, "wat", "jid", job_type(), "boom", NOW,  # type: ignore[arg-type]
                              cause="test") is None


def test_the_verdict_is_logged_once_and_a_poison_job_as_an_error(r) -> None:
    with structlog.testing.capture_logs() as logs:
        by_crash(r, fresh().to_json(), "worker died: SIGKILL (1 times)")
    (line,) = logs
    assert (line["event"], line["log_level"]) == ("poison job; moved to dead", "error")
    assert (line["job_id"], line["job_name"], line["fails"]) == ("jid", "wat", 1)
    assert line["error"] == "worker died: SIGKILL (1 times)"
    r.flushdb()
    with structlog.testing.capture_logs() as logs:
        by_hard_timeout(r, fresh().to_json(), "hard timeout after 2s", max_fails=2)
    (line,) = logs
    assert (line["event"], line["log_level"]) == (
        "job killed at its hard timeout; will retry", "warning")
    assert (line["error"], line["fails"]) == ("hard timeout after 2s", 1) and line["retry_in"] > 0


# --- the malformed-payload wrapper ---------------------------------------------------------------
GARBAGE_ERROR = "malformed job: invalid JSON: Expecting value: line 1 column 1 (char 0)"


def wrapper_bytes(name: str) -> bytes:
    named = b'"name":"%s",' % name.encode() if name else b""  # Go's omitempty
    return (b'{%s"id":"%s","t":%d,"args":{"malformed_payload":"garbage"},"fails":1,'
            b'"err":"%s","failed_at":%d}' % (named, FIXED_ID.encode(), NOW,
                                             GARBAGE_ERROR.encode(), NOW))


def test_worker_wraps_a_malformed_payload_named_after_its_queue(r, pinned) -> None:
    by_handler(r, b"garbage", "unused")
    assert settled(r, K.dead()) == (wrapper_bytes("wat"), NOW)


def test_requeuer_wraps_a_malformed_member_without_a_name(r, pinned) -> None:
    r.zadd(K.retry(), {b"garbage": NOW - 1})
    Requeuer(PoolStore(r, K)).tick(NOW)
    assert r.zrange(K.dead(), 0, -1, withscores=True) == [(wrapper_bytes(""), NOW)]


def test_malformed_error_texts() -> None:
    assert malformed_error(MalformedJob(b"x", "bad")) == "malformed job: bad"
    assert malformed_error(MalformedJob(b"x", "bad"), "stray; ") == "stray; malformed job: bad"
    assert malformed_error(InvalidJobArguments("deep")) == "malformed job: deep"
    assert malformed_error(InvalidJobArguments("deep"), "job failed (e) and ") == (
        "job failed (e) and deep")
    assert malformed_error(ValueError("v" * 100)) == f"malformed job: ValueError: {'v' * 64}..."


# --- heartbeats: one parser, untrusted integers --------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("42", 42), ("-5", -5), ("+7", 7), (str(2**63 - 1), 2**63 - 1), (None, None), ("", None),
    ("12x", None), (" 5", None), ("1_000", None), ("1.5", None), ("\u0663", None),
    (str(2**63), None), ("9" * 400, None),
])
def test_heartbeat_integers_as_go_parses_them(text, value) -> None:
    assert parse_int(text) == value


BAD_BEAT = {"heartbeat_at": "soon", "started_at": "1_0", "concurrency": "x", "pid": "12 ",
            "host": "h", "job_names": "wat,", "worker_ids": "w1"}


def test_parse_heartbeat_bad_integers_are_missing() -> None:
    beat = parse_heartbeat("p", BAD_BEAT)
    assert (beat.heartbeat_at, beat.started_at, beat.concurrency, beat.pid) == (None,) * 4
    assert (beat.job_names, beat.names(), beat.workers()) == (["wat", ""], {"wat"}, ["w1"])


def test_reaper_reads_bad_integers_as_no_heartbeat(r) -> None:
    r.sadd(K.worker_pools(), POOL)
    r.hset(K.heartbeat(POOL), mapping=BAD_BEAT)
    in_progress(r, fresh().to_json())
    reaper = DeadPoolReaper(PoolStore(r, K), ["wat"], dead_after=15)
    assert reaper.tick(NOW) == 0  # no parsable heartbeat: first seen now, not yet dead
    assert reaper.reap_local_orphans("h", NOW, pid_alive=lambda pid: False) == 0  # no pid
    assert reaper.tick(NOW + 15) == 1
    assert r.lrange(K.jobs("wat"), 0, -1) == [fresh().to_json()]


def test_client_reads_bad_integers_as_zero(r) -> None:
    r.sadd(K.worker_pools(), POOL)
    r.hset(K.heartbeat(POOL), mapping=BAD_BEAT)
    r.hset(K.worker_observation("w1"), mapping={"job_name": "wat", "started_at": "then",
                                                "checkin_at": "1e3"})
    client = Client(NS, r)
    (beat,) = client.worker_pool_heartbeats()
    assert (beat.heartbeat_at, beat.started_at, beat.concurrency, beat.pid) == (0, 0, 0, 0)
    assert (beat.host, beat.job_names, beat.worker_ids) == ("h", ["", "wat"], ["w1"])
    (seen,) = client.worker_observations()
    assert (seen.job_name, seen.started_at, seen.checkin_at) == ("wat", 0, 0)
