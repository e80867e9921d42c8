"""The admin commands of `prefork-work -c FILE <command>` against a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import structlog

from prefork_work import App, Client, Enqueuer, Job, Worker, cli
from prefork_work.keys import Keys

NS = "adm"
K = Keys(NS)


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "work.toml"
    path.write_text(f'[redis]\nurl = "{redis_url}"\n[server]\nnamespace = "{NS}"\n')
    return path


@pytest.fixture
def run(config: Path, capsys: pytest.CaptureFixture[str]):
    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["-c", str(config), *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    structlog.reset_defaults()  # a command configures logging for this whole process


def run_json(run, *argv: str) -> tuple[int, object]:
    code, out, _ = run(*argv, "--json")
    return code, json.loads(out)


def failing_app() -> App:
    app = App()

    @app.job("ok")
    def ok(job: Job) -> None:
        pass

    @app.job("bad", max_fails=1)
    def bad(job: Job) -> None:
        raise RuntimeError("boom\x1b[31m")

    return app


def test_queues_pause_unpause_and_max_concurrency(run, r) -> None:
    Enqueuer(NS, r).enqueue_many([("ok", {"i": i}) for i in range(3)])
    assert run("pause", "ok")[0] == 0
    assert run("max-concurrency", "ok", "4")[0] == 0
    code, data = run_json(run, "queues")
    assert code == 0
    assert data == [{"job_name": "ok", "count": 3, "latency": data[0]["latency"],
                     "paused": True, "max_concurrency": 4, "running": 0}]
    code, out, _ = run("queues")
    assert code == 0 and out.splitlines()[0].split()[:2] == ["JOB", "NAME"]
    assert "ok" in out and "yes" in out
    assert run_json(run, "unpause", "ok") == (0, {"job_name": "ok", "paused": False})
    assert not r.exists(K.paused("ok"))
    assert run("max-concurrency", "ok", "0")[0] == 0
    assert r.get(K.max_concurrency("ok")) == b"0"
    code, _, err = run("pause", "a:b")
    assert code == 2 and "must not contain" in err
    code, _, err = run("max-concurrency", "ok", "-1")
    assert code == 2 and ">= 0" in err
    with pytest.raises(SystemExit) as exc:
        run("max-concurrency", "ok", "many")
    assert exc.value.code == 2


def test_jobs_pages_status_and_dead_management(run, r, capsys) -> None:
    enq = Enqueuer(NS, r)
    jobs = enq.enqueue_many([("bad", {"i": i}) for i in range(25)])
    Worker(failing_app(), r, NS, idle_waits=(0.01,)).drain()
    capsys.readouterr()  # the worker's logs
    code, page1 = run_json(run, "jobs", "dead")
    assert code == 0 and page1["count"] == 25 and len(page1["jobs"]) == 20
    code, page2 = run_json(run, "jobs", "dead", "--page", "2")
    assert len(page2["jobs"]) == 5
    assert {j["id"] for j in page1["jobs"] + page2["jobs"]} == {j.id for j in jobs}
    code, out, _ = run("jobs", "dead")
    assert code == 0 and "page 1 of 2" in out
    assert "\x1b" not in out  # an error message from Redis never drives the terminal
    assert run("jobs", "dead", "--page", "0")[0] == 2
    assert run_json(run, "jobs", "retry") == (0, {"set": "retry", "page": 1, "page_size": 20,
                                                   "count": 0, "jobs": []})
    enq.enqueue_in("ok", 3600)
    assert run_json(run, "jobs", "scheduled")[1]["count"] == 1

    victim = page1["jobs"][0]
    code, status = run_json(run, "status", victim["id"])
    assert code == 0 and status["state"] == "dead" and status["name"] == "bad"
    code, out, _ = run("status", victim["id"])
    assert code == 0 and "dead" in out
    assert run("status", "000000000000000000000000")[0] == 1
    assert run("status", "x" * 300)[0] == 2

    # by id alone (the score is found), and by id and score
    assert run_json(run, "retry-dead", victim["id"]) == (0, {"job_id": victim["id"], "retried": True})
    assert r.llen(K.jobs("bad")) == 1
    assert run("retry-dead", victim["id"])[0] == 1  # not dead any more
    other = page1["jobs"][1]
    assert run("delete-dead", other["id"], str(other["score"]))[0] == 0
    assert run("delete-dead", other["id"])[0] == 1
    assert r.zcard(K.dead()) == 23

    r.sadd(K.known_jobs(), "bad")
    assert run_json(run, "retry-all-dead") == (0, {"retried": 23})
    Worker(failing_app(), r, NS, idle_waits=(0.01,)).drain()
    capsys.readouterr()
    assert r.zcard(K.dead()) == 24
    assert run_json(run, "delete-all-dead") == (0, {"deleted": 24})
    assert r.zcard(K.dead()) == 0


def test_workers_lists_pools_and_busy_workers(run, r) -> None:
    r.sadd(K.worker_pools(), "p1")
    r.hset(K.heartbeat("p1"), mapping={"host": "web-1", "pid": 42, "worker_ids": "w1,w2",
                                         "heartbeat_at": int(time.time()), "concurrency": 2,
                                         "job_names": "ok", "started_at": 1})
    r.hset(K.worker_observation("w1"), mapping={"job_name": "ok", "job_id": "j1",
                                                "started_at": 5, "checkin": "half way",
                                                "checkin_at": int(time.time())})
    code, data = run_json(run, "workers")
    assert code == 0
    assert [p["worker_pool_id"] for p in data["pools"]] == ["p1"]
    assert data["busy"] == [{"worker_id": "w1", "job_name": "ok", "job_id": "j1",
                             "started_at": 5, "args_json": "", "checkin": "half way",
                             "checkin_at": data["busy"][0]["checkin_at"]}]
    code, out, _ = run("workers")
    assert code == 0 and "1 pools, 1 busy workers" in out and "half way" in out


def test_drain_waits_for_queues_and_times_out(run, r) -> None:
    enq = Enqueuer(NS, r)
    enq.enqueue_many([("ok", {"i": i}) for i in range(5)])
    code, data = run_json(run, "drain", "--timeout", "0.2")
    assert code == 1 and data == {"drained": False, "queued": 5, "running": 0}

    worker = Worker(failing_app(), r, NS, idle_waits=(0.01,))
    thread = threading.Timer(0.3, worker.drain)
    thread.start()
    try:
        started = time.monotonic()
        code, out, _ = run("drain", "--timeout", "10")
        assert code == 0 and "drained" in out and time.monotonic() - started < 10
    finally:
        thread.join(10)


def test_exit_codes_for_redis_and_config(tmp_path, capsys) -> None:
    down = tmp_path / "down.toml"
    down.write_text('[redis]\nurl = "unix:///nonexistent/redis.sock"\n')
    assert cli.main(["-c", str(down), "queues"]) == 69
    assert "redis" in capsys.readouterr().err.lower()
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nnamespace = "a b"\n')
    assert cli.main(["-c", str(bad), "queues"]) == 78
    assert "server.namespace" in capsys.readouterr().err


def test_a_real_subprocess_needs_no_job_module(config, r) -> None:
    """The operator's shell may not have the job code: the config's app is never imported."""
    text = config.read_text().replace("[server]\n", '[server]\napp = "no_such_module:app"\n')
    config.write_text(text)
    Enqueuer(NS, r).enqueue("ok")
    done = subprocess.run([sys.executable, "-m", "prefork_work.cli", "-c", str(config),
                           "queues", "--json"], capture_output=True, timeout=30, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["count"] == 1
    assert Client(NS, r).queues()[0].count == 1


def test_an_undecodable_member_does_not_break_a_page(run, r, capsys) -> None:
    good = Job(name="ok", id="aaaaaaaaaaaaaaaaaaaaaaaa", t=1, args={}, fails=1, err="x", failed_at=5)
    r.zadd(K.dead(), {b"{not json": 4, good.to_json(): 5})
    code, data = run_json(run, "jobs", "dead")
    assert code == 0 and data["count"] == 2 and [j["id"] for j in data["jobs"]] == [good.id]
