"""The prefork server on real processes: `prefork-work` as a subprocess, real signals, real
SIGKILLs of children and master, and what Redis holds afterwards."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from app_server import RECORDING_APP, AppServer
from conftest import Master, exited, read_records, stop_all, wait_until

from prefork_work.app import App
from prefork_work.client import Client
from prefork_work.enqueuer import Enqueuer
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.server import MASTER_SILENCE, MasterWatch
from prefork_work.worker import Worker
from supervisor import ChildContext, Scoreboard

NS = "srv"
K = Keys(NS)

APP = RECORDING_APP + textwrap.dedent('''
    import signal
    from prefork_work.errors import JobTimeout
    from supervisor import HardTimeout

    @app.job("record")
    def record_job(job):
        record(job)

    @app.job("sleep")
    def sleep_job(job):
        record(job, phase="start")
        job.checkin("sleeping")
        time.sleep(job.args["s"])
        record(job, phase="end")

    @app.job("poison")
    def poison(job):
        record(job, phase="start")
        os.kill(os.getpid(), signal.SIGKILL)

    @app.job("stuck", timeout=0.3, max_fails=2, backoff=lambda job: 3600)
    def stuck(job):
        record(job, phase="start")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except (JobTimeout, HardTimeout):
                pass  # a badly behaved job: only SIGKILL stops it

    app.register("stuck_last", stuck, timeout=0.3, max_fails=1)  # its one try: dead
    app.register("stuck_dropped", stuck, timeout=0.3, max_fails=1, skip_dead=True)

    @app.job("hog")
    def hog(job):
        global BALLAST
        BALLAST = bytearray(job.args["mb"] * 1024 * 1024)
        record(job)
''')


class Server(AppServer):
    """The server tests' master: APP in namespace NS unless told otherwise."""

    def __init__(self, tmp_path: Path, redis_url: str, redis_options: dict | None = None,
                 app_source: str = APP, **server_options: object) -> None:
        server_options.setdefault("namespace", NS)
        super().__init__(tmp_path, redis_url, app_source, redis_options=redis_options,
                         **server_options)


@pytest.fixture
def server(tmp_path, redis_url, r):
    servers: list[Server] = []

    def make(**options: object) -> Server:
        srv = Server(tmp_path, redis_url, **options)
        servers.append(srv)
        return srv

    yield make
    stop_all(servers)


def enqueue(r, name: str, args: dict | None = None) -> Job:
    return Enqueuer(NS, r).enqueue(name, args or {})


def log_events(srv: Server, name: str | None = None, offset: int = 0) -> list[dict]:
    return srv.log_lines(name, offset)


def run_one_job_and_stop(srv: Server, *enqueue_args: str, input: str | None = None) -> None:
    """Start ``srv``, enqueue a "record" job with the CLI on its config, wait for it to run,
    then SIGTERM: the master exits 0."""
    srv.start()
    enqueued = srv.cli("enqueue", "record", *enqueue_args, input=input)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip().splitlines()[-1]
    wait_until(lambda: [rec for rec in srv.records() if rec["id"] == job_id], 20,
               message="the job to run")
    srv.signal(signal.SIGTERM)
    assert srv.wait(20) == 0


def requeue_events(srv: Server, offset: int = 0) -> list[dict]:
    return [e for e in log_events(srv, offset=offset)
            if "requeued" in e.get("event", "") or "reclaimed" in e.get("event", "")]


def test_jobs_flow_and_heartbeats_are_go_readable(server, r) -> None:
    srv = server().start()
    jobs = [enqueue(r, "record", {"i": i}) for i in range(20)]
    wait_until(lambda: len(read_records(srv.evidence)) == 20, 10)
    assert {e["id"] for e in read_records(srv.evidence)} == {j.id for j in jobs}
    pools = r.smembers(K.worker_pools())
    assert len(pools) == 2
    for pool in pools:
        beat = r.hgetall(K.heartbeat(pool.decode()))
        assert int(beat[b"heartbeat_at"]) > time.time() - 10
        assert beat[b"job_names"] == b"hog,poison,record,sleep,stuck,stuck_dropped,stuck_last"
        assert beat[b"concurrency"] == b"1"
        assert int(beat[b"pid"]) in {c.pid for c in srv.children()}
        assert beat[b"host"] == socket.gethostname().encode()
    assert r.get(K.max_concurrency("record")) == b"0"


def test_sigkill_of_a_busy_child_loses_nothing(server, r) -> None:
    srv = server().start()
    job = enqueue(r, "sleep", {"s": 2.5})
    victim = srv.busy_child()
    old_pools = {p.decode() for p in r.smembers(K.worker_pools())}
    victim.kill()
    # requeued and run again by another child, to completion
    wait_until(lambda: any(e["id"] == job.id and e.get("phase") == "end" for e in read_records(srv.evidence)), 15)
    starts = [e for e in read_records(srv.evidence) if e["id"] == job.id and e["phase"] == "start"]
    assert len(starts) == 2 and starts[0]["pid"] == victim.pid != starts[1]["pid"]
    wait_until(lambda: len(srv.children()) == 2, 10, message="a replacement child")
    assert victim.pid not in {c.pid for c in srv.children()}
    new_pools = {p.decode() for p in r.smembers(K.worker_pools())}
    dead_pool = (old_pools - new_pools).pop()
    assert not r.exists(K.heartbeat(dead_pool))
    # one line for the reclaim (not one from the reaper and one from the server)
    (requeued,) = [e for e in requeue_events(srv) if e.get("pool_id") == dead_pool]
    assert requeued["event"] == "requeued a dead child's jobs" and requeued["jobs"] == 1
    assert (requeued["job_id"], requeued["job_name"], requeued["cause"]) == (job.id, "sleep", "SIGKILL")
    assert r.hget(K.lock_info("sleep"), dead_pool) is None
    assert not r.exists(K.in_progress("sleep", dead_pool))
    wait_until(lambda: r.get(K.lock("sleep")) == b"0", 5)


def test_sigterm_lets_the_running_job_finish(server, r) -> None:
    srv = server(shutdown_timeout=10.0).start()
    job = enqueue(r, "sleep", {"s": 1.5})
    srv.busy_child()
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    # once the idle child has left, the drain has begun: a job enqueued now must not start
    wait_until(lambda: "child exited" in srv.log.read_text(), 5, message="the idle child leaving")
    enqueue(r, "record", {"late": True})
    assert srv.wait(15) == 0
    assert time.monotonic() - started < 10
    ends = [e for e in read_records(srv.evidence) if e["id"] == job.id and e.get("phase") == "end"]
    assert len(ends) == 1
    assert not [e for e in read_records(srv.evidence) if e["name"] == "record"]  # nothing new started
    assert r.llen(K.jobs("record")) == 1
    assert r.scard(K.worker_pools()) == 0
    assert r.get(K.lock("sleep")) == b"0"


def test_sigterm_past_shutdown_timeout_requeues_the_job(server, r) -> None:
    # max_crashes = 1: were the kill counted as the job's crash, the job would be dead
    srv = server(shutdown_timeout=1.0, max_crashes=1).start()
    job = enqueue(r, "sleep", {"s": 30})
    srv.busy_child()
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait(15) == 0
    assert time.monotonic() - started < 8
    queued = [Job.from_json(raw) for raw in r.lrange(K.jobs("sleep"), 0, -1)]
    assert [j.id for j in queued] == [job.id]
    assert queued[0].fails == 0  # a shutdown is not the job's failure, nor its crash
    assert not r.exists(K.crashes(job.id))
    (requeued,) = requeue_events(srv)
    assert (requeued["job_id"], requeued["job_name"], requeued["cause"]) == (job.id, "sleep", "shutdown timeout")
    assert r.zcard(K.retry()) == 0 and r.zcard(K.dead()) == 0
    assert r.get(K.lock("sleep")) == b"0"
    assert not list(r.scan_iter(match=K.in_progress_pattern()))


def test_sigint_interrupts_and_requeues(server, r) -> None:
    srv = server().start()
    job = enqueue(r, "sleep", {"s": 30})
    srv.busy_child()
    srv.signal(signal.SIGINT)
    assert srv.wait(10) == 0
    assert [Job.from_json(raw).id for raw in r.lrange(K.jobs("sleep"), 0, -1)] == [job.id]
    (interrupted,) = log_events(srv, "interrupted; the job goes back to its queue")
    assert (interrupted["job_id"], interrupted["job_name"]) == (job.id, "sleep")
    assert r.zcard(K.retry()) == 0 and r.zcard(K.dead()) == 0


def test_sigkill_of_the_master(server, r) -> None:
    srv = server().start()
    job = enqueue(r, "sleep", {"s": 30})
    busy = srv.busy_child()
    children = srv.children()
    srv.process.kill()  # type: ignore[union-attr]
    srv.wait(5)
    # children notice (parent-death signal) and exit by themselves, requeuing their job
    wait_until(lambda: all(exited(c) for c in children), 10)
    assert exited(busy)
    assert [Job.from_json(raw).id for raw in r.lrange(K.jobs("sleep"), 0, -1)] == [job.id]
    # a new master on this host clears the dead pools' heartbeats at once and runs the job
    second = server()
    second.start()
    wait_until(lambda: r.scard(K.worker_pools()) == 2, 10, message="only the new pools")
    wait_until(lambda: any(e["id"] == job.id and e["phase"] == "start" and e["pid"] != busy.pid
                           for e in read_records(srv.evidence)), 10)


def test_new_master_reclaims_jobs_of_killed_children_at_once(server, r) -> None:
    srv = server().start()
    job = enqueue(r, "sleep", {"s": 30})
    busy = srv.busy_child()
    for child in srv.children():
        child.kill()
    srv.process.kill()  # type: ignore[union-attr]
    srv.wait(5)
    wait_until(lambda: exited(busy), 5)
    assert r.llen(K.jobs("sleep")) == 0  # stranded in a dead pool's in-progress list
    started = time.monotonic()
    offset = srv.log.stat().st_size
    second = server().start()
    wait_until(lambda: any(e["id"] == job.id and e["pid"] != busy.pid for e in read_records(srv.evidence)), 10)
    assert time.monotonic() - started < 10  # not after gocraft's 10-minute reaper period
    (reclaimed,) = requeue_events(second, offset)  # once, not per pool and again in total
    assert reclaimed["event"] == "reclaimed a dead pool's jobs" and reclaimed["jobs"] == 1
    assert reclaimed["pid"] == busy.pid


def test_poison_job_ends_in_dead_after_max_crashes(server, r) -> None:
    srv = server(max_crashes=3).start()
    poison = enqueue(r, "poison")
    for i in range(5):
        enqueue(r, "record", {"i": i})
    wait_until(lambda: r.zcard(K.dead()) == 1, 30, message="the poison job in dead")
    dead = Job.from_json(r.zrange(K.dead(), 0, -1)[0])
    assert dead.id == poison.id
    assert dead.err == "worker died: SIGKILL (3 times)"
    assert len([e for e in read_records(srv.evidence) if e["id"] == poison.id]) == 3
    wait_until(lambda: len([e for e in read_records(srv.evidence) if e["name"] == "record"]) == 5, 10)
    wait_until(lambda: len(srv.children()) == 2, 10)


def test_hard_timeout_kills_and_retries(server, r) -> None:
    srv = server(hard_timeout_grace=0.5).start()
    job = enqueue(r, "stuck")
    wait_until(lambda: r.zcard(K.retry()) == 1, 15, message="the job in retry")
    retried = Job.from_json(r.zrange(K.retry(), 0, -1)[0])
    assert retried.id == job.id and retried.fails == 1
    assert retried.err == "hard timeout after 0.8s"  # timeout 0.3 s + hard_timeout_grace
    wait_until(lambda: len(srv.children()) == 2, 10)
    assert r.get(K.lock("stuck")) == b"0"


def test_hard_timeout_is_the_soft_one_plus_the_grace() -> None:
    from prefork_work.server import hard_timeout_of

    app = App()
    assert hard_timeout_of(app.register("soft", print, timeout=0.3), 0.5) == pytest.approx(0.8)
    assert hard_timeout_of(app.register("hard", print, timeout=0.3, hard_timeout=2.0), 0.5) == 2.0
    assert hard_timeout_of(app.register("none", print), 0.5) is None


def test_hard_timeout_kill_of_a_jobs_last_try_is_dead_or_dropped(server, r) -> None:
    srv = server(hard_timeout_grace=0.5).start()
    last, dropped = enqueue(r, "stuck_last"), enqueue(r, "stuck_dropped")
    wait_until(lambda: r.zcard(K.dead()) == 1, 15, message="the job in dead")
    (dead,) = [Job.from_json(raw) for raw in r.zrange(K.dead(), 0, -1)]
    assert (dead.id, dead.fails, dead.err) == (last.id, 1, "hard timeout after 0.8s")
    wait_until(lambda: r.get(K.lock("stuck_dropped")) == b"0" and len(srv.children()) == 2, 15,
               message="the skip_dead job dropped")
    started = {e["id"] for e in read_records(srv.evidence) if e.get("phase") == "start"}
    assert started == {last.id, dropped.id}
    assert r.zcard(K.retry()) == 0 and r.llen(K.jobs("stuck_dropped")) == 0
    assert r.llen(K.jobs("stuck_last")) == 0


def test_max_jobs_per_child_recycles(server, r) -> None:
    srv = server(max_jobs_per_child=5, concurrency=1).start()
    first = srv.children()[0].pid
    for i in range(30):
        enqueue(r, "record", {"i": i})
    wait_until(lambda: len(read_records(srv.evidence)) == 30, 20)
    pids = {e["pid"] for e in read_records(srv.evidence)}
    assert first in pids and len(pids) >= 3
    # each child ran at most its budget (5 plus 10% jitter), none more
    per_child = {pid: sum(1 for e in read_records(srv.evidence) if e["pid"] == pid) for pid in pids}
    assert max(per_child.values()) <= 5
    wait_until(lambda: len(srv.children()) == 1, 10, message="the surge child retired")


def test_memory_limit_recycles(server, r) -> None:
    srv = server(max_memory_per_child=80, concurrency=1).start()
    first = srv.children()[0].pid
    enqueue(r, "hog", {"mb": 200})
    time.sleep(0.2)
    wait_until(lambda: first not in {c.pid for c in srv.children()} and len(srv.children()) == 1, 30,
               message="the hog recycled")


def test_ttin_ttou(server, r) -> None:
    srv = server(concurrency=2).start()
    srv.signal(signal.SIGTTIN)
    wait_until(lambda: len(srv.children()) == 3, 10)
    wait_until(lambda: r.scard(K.worker_pools()) == 3, 10)
    srv.signal(signal.SIGTTOU)  # standard signals coalesce: one at a time
    wait_until(lambda: len(srv.children()) == 2, 10)
    srv.signal(signal.SIGTTOU)
    wait_until(lambda: len(srv.children()) == 1, 10)
    (survivor,) = srv.children()
    srv.signal(signal.SIGTTOU)  # never below one
    wait_until(lambda: log_events(srv, "not below one child"), 5, 0.05, "the refusal")
    watch_until = time.monotonic() + 1.5  # longer than an idle child's 1 s wait for work
    while time.monotonic() < watch_until:
        assert [c.pid for c in srv.children()] == [survivor.pid]
        time.sleep(0.05)


def test_hup_reloads_job_code(server, r, tmp_path) -> None:
    srv = server().start()
    enqueue(r, "record")
    wait_until(lambda: len(read_records(srv.evidence)) == 1, 10)
    old = {c.pid for c in srv.children()}
    (tmp_path / "jobs_app.py").write_text(APP.replace('VERSION = "v1"', 'VERSION = "v2"'))
    srv.config.write_text(srv.config.read_text().replace("concurrency = 2", "concurrency = 3"))
    srv.signal(signal.SIGHUP)
    # the new generation has the reloaded config's child count; the old one is gone
    wait_until(lambda: not (old & {c.pid for c in srv.children()}) and len(srv.children()) == 3, 20)
    enqueue(r, "record")
    wait_until(lambda: len(read_records(srv.evidence)) == 2, 10)
    assert [e["version"] for e in read_records(srv.evidence)] == ["v1", "v2"]


def test_hup_keeps_settings_that_need_a_restart(server, r) -> None:
    srv = server().start()
    old = {c.pid for c in srv.children()}
    text = srv.config.read_text().replace('namespace = "srv"',
                                          'namespace = "{other}"\njobs_per_child = 4')
    text = re.sub(r'^url = .*$', 'url = "redis://127.0.0.1:1/0"\ncluster = true', text, flags=re.M)
    srv.config.write_text(text)
    srv.signal(signal.SIGHUP)
    wait_until(lambda: not (old & {c.pid for c in srv.children()}) and len(srv.children()) == 2, 20)
    warning = next(line for line in srv.log.read_text().splitlines() if "need a restart" in line)
    assert all(key in warning for key in ("redis.url", "redis.cluster", "server.namespace",
                                          "server.jobs_per_child"))
    enqueue(r, "record")  # the new generation still serves the old namespace, on the old client
    wait_until(lambda: len(read_records(srv.evidence)) == 1, 10)


def test_tstp_quiet_then_cont(server, r) -> None:
    srv = server().start()
    srv.signal(signal.SIGTSTP)
    time.sleep(0.5)
    enqueue(r, "record")
    time.sleep(1.0)
    assert read_records(srv.evidence) == []
    assert psutil.Process(srv.pid).status() != psutil.STATUS_STOPPED
    srv.signal(signal.SIGCONT)
    wait_until(lambda: len(read_records(srv.evidence)) == 1, 10)


def test_children_stop_fetching_while_the_master_is_frozen(server, r) -> None:
    # a stopped master writes no heartbeats: a reaper elsewhere would requeue anything its
    # children took meanwhile, so they take nothing until it is back
    srv = server().start()
    first = enqueue(r, "record")
    wait_until(lambda: len(read_records(srv.evidence)) == 1, 10)
    offset = srv.log.stat().st_size

    def wait_for_both_children(event: str, timeout: float, what: str) -> None:
        try:
            wait_until(lambda: len({e["pool_id"] for e in log_events(srv, event, offset)}) == 2,
                       timeout, 0.05, what)
        except BaseException:  # what the children were doing and saying, when they did not
            print("children:", [(c.pid, " ".join(c.cmdline())) for c in srv.children()])
            print("log since the freeze:", srv.log.read_bytes()[offset:].decode("utf-8", "replace"))
            raise

    srv.signal(signal.SIGSTOP)
    try:
        wait_for_both_children("master unresponsive; not fetching", 10, "both children noticing")
        jobs = [enqueue(r, "record", {"i": i}) for i in range(5)]
        watch_until = time.monotonic() + 1.5  # longer than an idle child's 1 s wait
        while time.monotonic() < watch_until:
            assert r.llen(K.jobs("record")) == 5, "a child fetched while its master was stopped"
            time.sleep(0.05)
        wait_until(lambda: all("waiting for an unresponsive master" in " ".join(c.cmdline())
                               for c in srv.children()), 5, 0.05, "the children's titles")
    finally:
        srv.signal(signal.SIGCONT)
    wait_until(lambda: len(read_records(srv.evidence)) == 6, 10, message="the jobs after SIGCONT")
    runs = [e["id"] for e in read_records(srv.evidence)]
    assert sorted(runs) == sorted([first.id] + [j.id for j in jobs])  # each once
    wait_for_both_children("master responsive again; fetching", 5, "both children resuming")


def test_a_child_gives_back_its_prefetched_jobs_when_the_master_freezes(r) -> None:
    # in process: the server's quiet test (MasterWatch) over a real Worker and Redis
    board = Scoreboard(1)
    board.liveness.stamp()
    ctx = ChildContext(0, 0, board.slot(0), -1, os.getpid(), "test", liveness=board.liveness)
    app = App()
    ran: list[str] = []

    @app.job("record")
    def record(job: Job) -> None:
        ran.append(job.id)
        board.liveness.stamp(time.monotonic() - 10)  # the master froze while this job ran
        time.sleep(MasterWatch.CHECK_EVERY)  # past the watch's next look at the stamp

    jobs = [enqueue(r, "record", {"i": i}) for i in range(5)]
    worker = Worker(app, r, NS)
    worker.batch_size = 5  # a batch fetched while jobs were fast
    worker.work(until=lambda: (ctx.master_unresponsive and not worker.buffer) or len(ran) == 5,
                quiet=MasterWatch(ctx, MASTER_SILENCE))
    assert ran == [jobs[0].id]
    assert [Job.from_json(raw).id for raw in reversed(r.lrange(K.jobs("record"), 0, -1))] == \
        [j.id for j in jobs[1:]]  # back at the front of the queue, in their order
    assert not list(r.scan_iter(match=K.in_progress_pattern()))


def test_process_titles(server, r) -> None:
    srv = server().start()
    # the master retitles itself on its next tick after the children count changes
    wait_until(lambda: "prefork-work master [srv] 2 children"
               in " ".join(psutil.Process(srv.pid).cmdline()), 5, message="the master's title")
    wait_until(lambda: all("prefork-work child" in " ".join(c.cmdline()) for c in srv.children()), 5)
    enqueue(r, "sleep", {"s": 3})
    busy = srv.busy_child()
    assert " busy sleep " in " ".join(busy.cmdline())


def test_observations_show_running_jobs_to_gocraft_clients(server, r) -> None:
    # children report through shared memory; the master mirrors it into gocraft's hashes
    srv = server().start()
    job = enqueue(r, "sleep", {"s": 3})
    client = Client(NS, r)

    def busy() -> list:
        return [o for o in client.worker_observations() if o.is_busy and o.checkin]

    (seen,) = wait_until(busy, 5, 0.05, "a busy observation with its check-in")
    assert (seen.job_name, seen.job_id, seen.args_json) == ("sleep", job.id, '{"s":3}')
    assert seen.checkin == "sleeping" and abs(seen.started_at - time.time()) < 5
    pools = {p.decode() for p in r.smembers(K.worker_pools())}
    worker_ids = {r.hget(K.heartbeat(p), "worker_ids").decode() for p in pools}
    assert seen.worker_id in worker_ids  # the observation belongs to a live pool's worker
    wait_until(lambda: not busy(), 10, 0.1, "the observation cleared after the job")
    enqueue(r, "sleep", {"s": 30})
    wait_until(busy, 5, 0.05, "a second busy observation")
    assert list(r.scan_iter(match=K.worker_observation("*")))
    srv.signal(signal.SIGTERM)  # shutdown_timeout 5 s: the job is requeued
    assert srv.wait(20) == 0
    assert not list(r.scan_iter(match=K.worker_observation("*")))  # nothing left behind


def test_sd_notify(server, r, tmp_path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    srv = server().start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                return

    wait_until(lambda: drain() or any("READY=1" in m for m in messages), 10)
    wait_until(lambda: drain() or any("WATCHDOG=1" in m for m in messages), 5)
    assert any(m.startswith("STATUS=") for m in messages)
    ready_before = sum("READY=1" in m for m in messages)
    srv.signal(signal.SIGHUP)
    wait_until(lambda: drain() or sum("READY=1" in m for m in messages) > ready_before, 15,
               message="READY=1 after the reload")
    reloading = next(m for m in messages if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reloading
    srv.signal(signal.SIGTERM)
    srv.wait(10)
    drain()
    assert any("STOPPING=1" in m for m in messages)
    assert any("EXTEND_TIMEOUT_USEC=" in m for m in messages)
    sock.close()


def test_job_module_import_failure_exits_78(server, tmp_path) -> None:
    srv = server(app="broken_app:app")
    (tmp_path / "broken_app.py").write_text("raise ImportError('no module named reportlab')\n")
    srv.start(wait=False)
    assert srv.wait(15) == 78
    text = srv.log.read_text()
    assert "reportlab" in text and "server.app" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[server]\nconcurrency = "four"\n', "server.concurrency: expected an integer"),
        ("[server]\nworkers = 4\n", "unknown key server.workers"),
        ('[redis]\nurl = "http://x"\n', "redis.url: must start with"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_config_errors_exit_78_and_name_the_key(tmp_path, body: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body)
    result = subprocess.run([sys.executable, "-m", "prefork_work.cli", "-c", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert message in result.stderr and str(config) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_embedded_redis_when_none_is_configured(tmp_path) -> None:
    (tmp_path / "jobs_app.py").write_text(APP)
    config = tmp_path / "work.toml"
    config.write_text(textwrap.dedent(f'''
        [server]
        namespace = "emb"
        app = "jobs_app:app"
        python_path = ["{tmp_path}"]
        concurrency = 1
        state_dir = "state"
        [log]
        format = "json"
    '''))
    env = dict(os.environ, EVIDENCE=str(tmp_path / "evidence.log"))
    process = subprocess.Popen([sys.executable, "-m", "prefork_work.cli", "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        socket_path = tmp_path / "state" / "redis" / "redis.sock"
        wait_until(socket_path.exists, 15, message="the embedded redis socket")
        cli = [sys.executable, "-m", "prefork_work.cli", "-c", str(config)]
        result = subprocess.run([*cli, "enqueue", "record", '{"k": 1}'], capture_output=True,
                                text=True, timeout=30, env=env)
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()
        wait_until(lambda: any(e["id"] == job_id for e in read_records(tmp_path / "evidence.log")), 15)
        # the embedded Redis dies: the master restarts it and jobs flow again
        master = Master(process)
        (embedded,) = master.children_named("redis")
        embedded.kill()
        # the killed one may still be a zombie, or vanish while the names are read
        wait_until(lambda: any(p.pid != embedded.pid for p in master.children_named("redis")), 15,
                   message="a restarted embedded redis")
        def enqueued_again() -> str | None:
            again = subprocess.run([*cli, "enqueue", "record", "{}"], capture_output=True,
                                   text=True, timeout=30, env=env)
            return again.stdout.strip() if again.returncode == 0 else None
        second = wait_until(enqueued_again, 15, 0.2, "an enqueue after the restart")
        wait_until(lambda: any(e["id"] == second for e in read_records(tmp_path / "evidence.log")), 20)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    assert not socket_path.exists()  # the master shut its Redis down
    assert (tmp_path / "state" / "redis" / "appendonlydir").is_dir()


def test_no_job_lost_when_children_are_killed_mid_batch(server, r) -> None:
    # Batches are fetched ahead: a child killed mid-stream holds up to a batch of unstarted
    # jobs in its in-progress lists. Every one must still run (at least once).
    srv = server(concurrency=2).start()
    originals = srv.children()
    time.sleep(2.1)  # past the boot grace: these kills are not a crash loop to back off from
    jobs = Enqueuer(NS, r).enqueue_many([("record", {"i": i}) for i in range(20000)])
    wait_until(lambda: srv.evidence.exists(), 10, message="the first job")
    kills_mid_stream = 0
    for victim in originals:
        victim.kill()
        kills_mid_stream += r.llen(K.jobs("record")) > 0
        time.sleep(0.2)
    # drained first (cheap to poll), then the evidence read once
    wait_until(lambda: r.llen(K.jobs("record")) == 0
               and not list(r.scan_iter(match=K.in_progress_pattern())), 30, 0.05, "a drain")
    assert {e["id"] for e in read_records(srv.evidence)} >= {j.id for j in jobs}
    assert r.llen(K.jobs("record")) == 0 and r.zcard(K.dead()) == 0
    assert kills_mid_stream >= 1  # the first kill, at the first job, hits a busy stream


def test_server_rides_out_a_redis_outage(server, r, redis_server) -> None:
    srv = server().start()
    children = {c.pid for c in srv.children()}
    redis_server.kill()
    time.sleep(2.0)  # the master's loops and the children's fetches all fail meanwhile
    redis_server.start()
    client = redis_server.client()
    job = enqueue(client, "record", {"after": "outage"})
    wait_until(lambda: any(e["id"] == job.id for e in read_records(srv.evidence)), 20,
               message="a job run after the outage")
    assert srv.process.poll() is None  # type: ignore[union-attr]
    assert {c.pid for c in srv.children()} == children  # nobody crashed over it
    wait_until(lambda: client.scard(K.worker_pools()) == 2, 10, message="heartbeats again")
    text = srv.log.read_text()
    # the children, once each: booting ones wait for Redis instead of dying in a crash loop
    assert re.search(r"redis unavailable( at start)?; retrying", text)
    assert "children are failing at start" not in text
    assert text.count("the master's loops will retry") == 1 and "redis reachable again" in text
    assert "periodic task failed" not in text  # no traceback per loop per second


PERIODIC_APP = textwrap.dedent('''
    import json, os, time
    from prefork_work.app import App

    app = App()

    @app.job("tick")
    def tick(job):
        with open(os.environ["EVIDENCE"], "a") as handle:
            handle.write(json.dumps(dict(id=job.id, name=job.name, t=job.t, ran=time.time())) + "\\n")

    app.periodically_enqueue("* * * * * *", "tick")  # every second
''')


def test_periodic_jobs_run_once_per_slot_with_two_servers(server, r, tmp_path) -> None:
    (tmp_path / "periodic_app.py").write_text(PERIODIC_APP)
    first = server(app="periodic_app:app", concurrency=1).start()
    second = server(app="periodic_app:app", concurrency=1)  # stopped with the first
    second.config = tmp_path / "work2.toml"
    second.config.write_text(first.config.read_text())
    second.start()
    wait_until(lambda: len(read_records(first.evidence)) >= 4, 20, 0.1, "four ticks")
    ticks = read_records(first.evidence)
    ids = [e["id"] for e in ticks]
    assert len(ids) == len(set(ids))  # one job per slot, though two masters schedule them
    assert all(e["ran"] - e["t"] < 5 for e in ticks)  # run on time, not hours late
