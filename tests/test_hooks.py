"""Lifecycle hooks: their order across a real server's life (fork, replacement, recycle,
TTOU, HUP, TERM), what a failing hook does, and the in-process Worker's share of them."""

from __future__ import annotations

import signal
import textwrap
import time

import pytest
from app_server import AppServer
from conftest import stop_all, wait_until

from prefork_work.app import App, HookFailed
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import ConfigError
from prefork_work.inflight import ConcurrentWorker
from prefork_work.worker import Worker

NS = "hooks"

APP = textwrap.dedent('''
    import json, os, time
    from prefork_work.app import App

    EVIDENCE = os.environ["EVIDENCE"]
    FAIL = os.environ.get("FAIL_HOOK", "")
    app = App()

    def record(event, **extra):
        with open(EVIDENCE, "a") as handle:
            handle.write(json.dumps(dict(event=event, pid=os.getpid(), ppid=os.getppid(),
                                         **extra)) + "\\n")

    @app.on_startup
    def startup():
        record("startup")
        if FAIL == "startup" or os.path.exists(EVIDENCE + ".fail"):
            raise RuntimeError("no database")

    @app.on_child_start
    def child_start():
        record("child_start")
        if FAIL == "child_start":
            raise RuntimeError("cannot connect")

    @app.on_child_exit
    def child_exit():
        record("child_exit")

    @app.on_shutdown
    def shutdown():
        record("shutdown")

    @app.job("record")
    def record_job(job):
        record("job", id=job.id)

    @app.job("sleep")
    def sleep_job(job):
        record("job", id=job.id)
        time.sleep(job.args["s"])
''')


@pytest.fixture
def app_server(tmp_path, redis_url, r):
    servers: list[AppServer] = []

    def make(env: dict[str, str] | None = None, **options: object) -> AppServer:
        server = AppServer(tmp_path, redis_url, APP, namespace=NS, env=env, **options)
        servers.append(server)
        return server

    yield make
    stop_all(servers)


def pids(events: list[dict]) -> list[int]:
    return [e["pid"] for e in events]


def test_hook_order_over_a_server_life(app_server, r) -> None:
    srv = app_server(max_jobs_per_child=15).start()
    enqueuer = Enqueuer(NS, r)
    master = srv.pid
    wait_until(lambda: len(srv.events("child_start")) == 2, 10, message="two child starts")

    # startup: once, in the master, before any fork
    records = srv.records()
    assert [e["event"] for e in records][:1] == ["startup"] and records[0]["pid"] == master
    first = set(pids(srv.events("child_start")))
    assert all(e["ppid"] == master for e in srv.events("child_start"))

    # a replacement child (SIGKILL): the dead one runs no exit hook, its successor starts
    victim = srv.children()[0]
    victim.kill()
    wait_until(lambda: len(srv.events("child_start")) == 3, 10, message="replacement start")
    assert victim.pid not in pids(srv.events("child_exit"))

    # TTOU: the child let go runs its exit hook
    wait_until(lambda: len(srv.children()) == 2, 10, message="two children")
    srv.signal(signal.SIGTTOU)
    wait_until(lambda: len(srv.children()) == 1, 10, message="one child after TTOU")
    wait_until(lambda: len(srv.events("child_exit")) == 1, 5, message="TTOU exit hook")

    # recycling after max_jobs_per_child: the old child exits cleanly, a new one starts
    for i in range(40):
        enqueuer.enqueue("record", {"i": i})
    wait_until(lambda: len(srv.events("job")) >= 40 and len(srv.events("child_exit")) >= 2, 15,
               message="a recycled child")
    assert set(pids(srv.events("child_exit"))) <= set(pids(srv.events("child_start")))

    # every job ran in a child whose start hook had already run
    order = srv.records()
    for index, entry in enumerate(order):
        if entry["event"] == "job":
            assert any(e["event"] == "child_start" and e["pid"] == entry["pid"]
                       for e in order[:index]), entry
    wait_until(lambda: len(srv.children()) == 1, 10, message="the recycled child gone")

    # HUP: the reimported module's startup runs in the master, the new generation starts
    # its children, the old generation exits cleanly
    live = {c.pid for c in srv.children()}
    srv.signal(signal.SIGHUP)
    wait_until(lambda: live <= set(pids(srv.events("child_exit"))), 15, message="old generation exits")
    startups = srv.events("startup")
    assert len(startups) == 2 and all(e["pid"] == master for e in startups)
    new = {c.pid for c in srv.children()}
    assert new and new.isdisjoint(live) and new <= set(pids(srv.events("child_start")))

    # TERM: every child exits cleanly, then the master's shutdown hook runs, last
    srv.signal(signal.SIGTERM)
    assert srv.wait(20) == 0
    order = srv.records()
    assert order[-1]["event"] == "shutdown" and order[-1]["pid"] == master
    assert len(srv.events("shutdown")) == 1
    assert new <= set(pids(srv.events("child_exit")))
    starts, exits = set(pids(srv.events("child_start"))), set(pids(srv.events("child_exit")))
    assert first <= starts and exits <= starts and starts - exits == {victim.pid}


def test_fast_stop_runs_no_exit_hook_in_an_interrupted_child(app_server, r) -> None:
    srv = app_server().start()
    wait_until(lambda: len(srv.events("child_start")) == 2, 10, message="two child starts")
    Enqueuer(NS, r).enqueue("sleep", {"s": 30})
    busy = wait_until(lambda: srv.events("job"), 10, message="a busy child")[0]["pid"]  # type: ignore[index]
    srv.signal(signal.SIGINT)
    assert srv.wait(20) == 0
    # interrupted in its job: no clean stop, no exit hook; the idle one stopped cleanly
    # (or it too fetched the job its sibling put back, and was interrupted in it)
    exits, busy_pids = set(pids(srv.events("child_exit"))), set(pids(srv.events("job")))
    assert busy in busy_pids and exits == set(pids(srv.events("child_start"))) - busy_pids
    assert [e["event"] for e in srv.records()][-1] == "shutdown"


def test_failing_startup_hook_exits_78_naming_the_hook(app_server, r) -> None:
    srv = app_server(env={"FAIL_HOOK": "startup"}).start(wait=False)
    assert srv.wait(20) == 78
    out = srv.log.read_text()
    assert "on_startup hook jobs_app.startup failed: RuntimeError: no database" in out
    assert "Traceback" not in out
    assert srv.events("child_start") == [] and srv.events("shutdown") == []


def test_failing_startup_hook_on_reload_keeps_the_running_generation(app_server, r) -> None:
    srv = app_server().start()
    wait_until(lambda: len(srv.events("child_start")) == 2, 10, message="two child starts")
    running = {c.pid for c in srv.children()}
    (srv.evidence.parent / (srv.evidence.name + ".fail")).touch()
    srv.signal(signal.SIGHUP)

    def failed() -> dict | None:
        return next((line for line in srv.log_lines()
                     if line.get("event") == "reload failed; keeping the running generation"), None)

    line = wait_until(failed, 10, message="the failed reload")
    assert "on_startup hook jobs_app.startup failed: RuntimeError: no database" in line["error"]  # type: ignore[index]
    job = Enqueuer(NS, r).enqueue("record", {})
    wait_until(lambda: any(e.get("id") == job.id for e in srv.events("job")), 10, message="a job")
    assert {c.pid for c in srv.children()} == running and len(srv.events("child_start")) == 2


def test_failing_child_start_hook_fails_the_child_and_fetches_nothing(app_server, r) -> None:
    srv = app_server(env={"FAIL_HOOK": "child_start"}, concurrency=1).start(wait=False)
    job = Enqueuer(NS, r).enqueue("record", {})
    def backoff() -> dict | None:
        return next((line for line in srv.log_lines()
                     if str(line.get("event")).startswith("children are failing at start")), None)

    wait_until(backoff, 15, message="crash-loop backoff")
    assert "on_child_start hook jobs_app.child_start failed: RuntimeError: cannot connect" \
        in backoff()["reason"]  # type: ignore[index]
    assert srv.events("job") == []  # the child never fetched
    assert r.lrange(f"{NS}:jobs:record", 0, -1) == [job.to_json()]
    assert srv.events("child_exit") == []


def test_hooks_in_children_running_several_jobs_at_once(app_server, r) -> None:
    """jobs_per_child > 1 (ConcurrentWorker): start hooks before the first job, exit hooks on
    a clean stop (TERM), none in a child stopped fast (INT) with jobs in flight."""
    srv = app_server(jobs_per_child=3).start()
    wait_until(lambda: len(srv.events("child_start")) == 2, 10, message="two child starts")
    job = Enqueuer(NS, r).enqueue("record", {})
    wait_until(lambda: srv.events("job"), 10, message="the job ran")
    starts = set(pids(srv.events("child_start")))
    assert srv.events("job")[0]["pid"] in starts and srv.events("job")[0]["id"] == job.id
    srv.signal(signal.SIGTERM)
    assert srv.wait(20) == 0
    assert set(pids(srv.events("child_exit"))) == starts
    assert [e["event"] for e in srv.records()][-1] == "shutdown"


def test_fast_stop_of_a_child_running_several_jobs_runs_no_exit_hook(app_server, r) -> None:
    srv = app_server(jobs_per_child=3, concurrency=1).start()
    wait_until(lambda: srv.events("child_start"), 10, message="a child start")
    Enqueuer(NS, r).enqueue("sleep", {"s": 30})  # in the child's thread pool
    wait_until(lambda: srv.events("job"), 10, message="a busy child")
    srv.signal(signal.SIGINT)
    assert srv.wait(20) == 0
    assert srv.events("child_exit") == []
    assert r.llen(f"{NS}:jobs:sleep") == 1  # requeued by the fast stop
    assert [e["event"] for e in srv.records()][-1] == "shutdown"


# --- in process ------------------------------------------------------------------------------
def make_app(calls: list[str], fail: str = "") -> App:
    app = App()
    for event in ("startup", "child_start", "child_exit", "shutdown"):
        def hook(event: str = event) -> None:
            calls.append(event)
            if event == fail:
                raise RuntimeError(f"{event} broke")
        getattr(app, f"on_{event}")(hook)

    @app.job("noop")
    def noop(job) -> None:
        calls.append("job")

    return app


def test_worker_work_runs_the_child_hooks_around_its_jobs(r) -> None:
    calls: list[str] = []
    app = make_app(calls)
    Enqueuer("w", r).enqueue("noop", {})
    worker = Worker(app, r, "w", idle_waits=(0.01,))
    worker.work(until=lambda: "job" in calls)
    assert calls == ["child_start", "job", "child_exit"]
    calls.clear()
    Enqueuer("w", r).enqueue("noop", {})
    assert worker.drain() == 1 and calls == ["job"]  # drain() and run_one() run no hooks


def test_worker_whose_child_start_hook_fails_fetches_nothing(r) -> None:
    calls: list[str] = []
    app = make_app(calls, fail="child_start")
    job = Enqueuer("w", r).enqueue("noop", {})
    with pytest.raises(HookFailed, match="on_child_start hook .*hook failed: RuntimeError: "
                                         "child_start broke"):
        Worker(app, r, "w").work(until=lambda: True)
    assert calls == ["child_start"]
    assert r.lrange("w:jobs:noop", 0, -1) == [job.to_json()]


def test_concurrent_worker_work_runs_the_child_hooks_around_its_jobs(r) -> None:
    calls: list[str] = []
    app = make_app(calls)
    Enqueuer("w", r).enqueue("noop", {})
    worker = ConcurrentWorker(app, r, "w", jobs_per_child=3, idle_waits=(0.01,))
    worker.work(until=lambda: "job" in calls)
    assert calls == ["child_start", "job", "child_exit"]
    calls.clear()
    Enqueuer("w", r).enqueue("noop", {})
    worker = ConcurrentWorker(app, r, "w", jobs_per_child=3, idle_waits=(0.01,))
    assert worker.drain() == 1 and calls == ["job"]  # drain() runs no hooks
    calls.clear()
    idle = ConcurrentWorker(app, r, "w", jobs_per_child=3, idle_waits=(0.01,),
                            interrupted=lambda: True)
    idle.work()  # interrupted with nothing in flight: a clean stop
    assert calls == ["child_start", "child_exit"]
    calls.clear()
    app.register("slow", lambda job: (calls.append("slow"), time.sleep(0.3)))
    Enqueuer("w", r).enqueue("slow", {})
    busy = ConcurrentWorker(app, r, "w", jobs_per_child=3, idle_waits=(0.01,),
                            interrupted=lambda: "slow" in calls)
    busy.work()  # interrupted with a job in flight (requeued): no exit hooks
    assert calls == ["child_start", "slow"]
    assert r.llen("w:jobs:slow") == 1
    with pytest.raises(HookFailed, match="on_child_start hook"):
        ConcurrentWorker(make_app(calls, fail="child_start"), r, "w", jobs_per_child=3).work(
            until=lambda: True)


def test_exit_hooks_all_run_when_one_fails(capsys) -> None:
    calls: list[str] = []
    app = App()

    @app.on_shutdown
    def first() -> None:
        calls.append("first")
        raise RuntimeError("first broke")

    @app.on_shutdown
    def second() -> None:
        calls.append("second")

    app.run_hooks("shutdown")  # logged, not raised
    assert calls == ["first", "second"]
    out = capsys.readouterr()
    assert "test_hooks.test_exit_hooks_all_run_when_one_fails.<locals>.first" in out.out + out.err


def test_start_hooks_stop_at_the_first_failure_and_hooks_must_be_callable() -> None:
    calls: list[str] = []
    app = App()
    app.on_startup(lambda: calls.append("a") or 1 / 0)
    app.on_startup(lambda: calls.append("b"))
    with pytest.raises(HookFailed) as failed:
        app.run_hooks("startup")
    assert calls == ["a"] and isinstance(failed.value, ConfigError)
    assert "ZeroDivisionError" in str(failed.value)
    with pytest.raises(ConfigError, match="on_child_exit hook must be callable"):
        app.on_child_exit("not a function")  # type: ignore[arg-type]
