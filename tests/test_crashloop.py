"""Crash-loop judgement on real processes: a child that dies running a job is the job's
fault (replaced at once, the job's crash counted); only a child that dies before it is
ready is a boot failure the master backs off from."""

from __future__ import annotations

import signal
import socket
import textwrap
import threading
import time
from pathlib import Path

import psutil
from conftest import read_records, wait_until
from test_server import APP, K, Server, enqueue, server  # noqa: F401  (server: the fixture)
from test_server import log_events as events

from prefork_work.job import Job

CRASHY = APP + textwrap.dedent('''
    @app.job("exit1")
    def exit1(job):
        record(job, phase="start")
        os._exit(1)

    # A child that cannot boot while this file exists (think of a library that fails after
    # fork); the master imported this module long before and is unaffected.
    import prefork_work.server as _server
    _boot = _server.WorkServer._child_worker

    def _child_worker(self, ctx, rec):
        if os.path.exists(EVIDENCE + ".noboot"):
            raise RuntimeError("cannot open the model file")
        return _boot(self, ctx, rec)

    _server.WorkServer._child_worker = _child_worker
''')


class ChildWatch(threading.Thread):
    """Samples the master's children every 20 ms: the longest time it had none at all."""

    def __init__(self, srv: Server) -> None:
        super().__init__(daemon=True)
        self.srv = srv
        self.longest_without = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        since: float | None = None
        while not self.done.is_set():
            count = len(self.srv.children())
            now = time.monotonic()
            if count:
                since = None
            else:
                since = since or now
                self.longest_without = max(self.longest_without, now - since)
            time.sleep(0.02)

    def stop(self) -> float:
        self.done.set()
        self.join(5)
        return self.longest_without


def title(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def test_jobs_that_kill_their_child_do_not_starve_the_server(server, r) -> None:  # noqa: F811
    srv = server(app_source=CRASHY, max_crashes=3).start()
    watch = ChildWatch(srv)
    watch.start()
    started = time.monotonic()
    poison = [enqueue(r, "exit1", {"i": i}) for i in range(5)]
    healthy = [enqueue(r, "record", {"i": i}) for i in range(20)]

    def healthy_done() -> bool:
        return len({e["id"] for e in read_records(srv.evidence) if e["name"] == "record"}) == 20

    try:
        wait_until(healthy_done, 8, 0.02, "the healthy jobs")
        healthy_seconds = time.monotonic() - started
        wait_until(lambda: r.zcard(K.dead()) == 5, 15, 0.02, "the five poison jobs in dead")
        dead_seconds = time.monotonic() - started
    finally:
        longest_without = watch.stop()
    print(f"healthy jobs done in {healthy_seconds:.2f}s, poison dead in {dead_seconds:.2f}s, "
          f"longest without a child {longest_without:.2f}s")
    assert healthy_seconds < 5
    assert longest_without < 1.0
    dead = {j.id: j for j in (Job.from_json(raw) for raw in r.zrange(K.dead(), 0, -1))}
    assert set(dead) == {j.id for j in poison}
    assert {j.err for j in dead.values()} == {"worker died: exit code 1 (3 times)"}
    runs = [e["id"] for e in read_records(srv.evidence) if e["name"] == "exit1"]
    assert sorted(runs) == sorted([j.id for j in poison] * 3)  # max_crashes runs each, no more
    assert {e["id"] for e in read_records(srv.evidence) if e["name"] == "record"} == {j.id for j in healthy}
    assert not events(srv, "children are failing at start; backing off")
    assert "crash loop" not in title(srv.pid)
    wait_until(lambda: len(srv.children()) == 2, 5, message="two children")


def test_a_sigkill_storm_on_busy_children_leaves_children_running(server, r) -> None:  # noqa: F811
    srv = server(max_crashes=50).start()
    jobs = [enqueue(r, "sleep", {"s": 0.5}) for _ in range(8)]
    watch = ChildWatch(srv)
    watch.start()
    killed: set[int] = set()

    def running_victim() -> psutil.Process | None:
        """A child that has started a job and not ended it: killed the moment it is busy."""
        records = read_records(srv.evidence)
        ended = {(e["id"], e["pid"]) for e in records if e.get("phase") == "end"}
        for e in records:
            if e.get("phase") == "start" and (e["id"], e["pid"]) not in ended and e["pid"] not in killed:
                for child in srv.children():
                    if child.pid == e["pid"]:
                        return child
        return None

    try:
        for _ in range(6):
            victim: psutil.Process = wait_until(running_victim, 5, 0.01, "a busy child")  # type: ignore[assignment]
            killed.add(victim.pid)
            victim.kill()
        wait_until(lambda: {e["id"] for e in read_records(srv.evidence) if e.get("phase") == "end"}
                   == {j.id for j in jobs}, 20, 0.05, "every job run to its end")
    finally:
        longest_without = watch.stop()
    print(f"longest without a child during the storm {longest_without:.2f}s")
    assert longest_without < 1.0
    assert not events(srv, "children are failing at start; backing off")
    wait_until(lambda: len(srv.children()) == 2, 5, message="two children")


def test_a_boot_failure_backs_off_and_the_crash_loop_status_clears(server, r, tmp_path) -> None:  # noqa: F811
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    statuses: list[str] = []

    def drain() -> None:
        while True:
            try:
                message = sock.recv(4096).decode()
            except TimeoutError:
                return
            statuses.extend(line for line in message.splitlines() if line.startswith("STATUS="))

    srv = server(app_source=CRASHY)
    noboot = Path(str(srv.evidence) + ".noboot")
    noboot.touch()
    srv.start(wait=False, env={"NOTIFY_SOCKET": str(path)})
    try:
        wait_until(lambda: any(e["failures"] >= 2 for e in
                               events(srv, "children are failing at start; backing off")), 10, 0.05,
                   "a second boot failure")
        # one child at a time, backing off: not a fork storm of both children every time
        assert len(events(srv, "child started")) <= 3
        wait_until(lambda: "crash loop: RuntimeError: cannot open the model file" in title(srv.pid),
                   2, 0.02, "the crash loop in the master's title")
        drain()
        assert any("crash loop" in s for s in statuses)
        noboot.unlink()
        wait_until(lambda: len(srv.children()) == 2 and "crash loop" not in title(srv.pid), 10, 0.05,
                   "healthy children and a clear title")
        wait_until(lambda: drain() or (statuses and "crash loop" not in statuses[-1]), 5, 0.05,
                   "a STATUS without the crash loop")
        job = enqueue(r, "record")
        wait_until(lambda: [e for e in read_records(srv.evidence) if e["id"] == job.id], 5)
    finally:
        sock.close()
    srv.signal(signal.SIGTERM)
    assert srv.wait(15) == 0
