"""Shared machinery of the benches: a private Redis, Redis stats, process groups, tables, JSON.

Nothing here talks to the Redis on 127.0.0.1:6379: every bench starts its own
``redis-server`` (``--save "" --appendonly no``) on a free loopback port and a unix socket
in a temporary directory, and shuts it down on exit.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent  # the repository (cwd of every subprocess)
RESULTS_DIR = Path(__file__).resolve().parent / "bench-results"
COUNTER_KEY = "bench:done"  # every benchmark job, in every system, is counted here (benches/done.py)
NAMESPACE = "bench"  # prefork-work's namespace in the benches

# environment read by benches/jobs_app.py and benches/peers/*
ENV_URL = "BENCH_REDIS_URL"
ENV_NAMES = "BENCH_JOB_NAMES"
ENV_COUNTER = "BENCH_COUNTER_KEY"


# --- process groups ---------------------------------------------------------------------------
_live: list[subprocess.Popen[bytes]] = []


def start_group(
    argv: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new process group (so the whole tree can be killed)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed by the child
    try:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    _live.append(proc)
    return proc


def stop_group(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM,
               timeout: float = 10.0) -> None:
    """Send ``sig`` to the group, wait up to ``timeout``, then SIGKILL the group."""
    try:
        if proc.poll() is None:
            _killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # children of a leader that already exited may linger in the group: kill them too
        _killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(5)
    finally:
        if proc in _live:
            _live.remove(proc)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_all() -> None:
    for proc in list(_live):
        stop_group(proc, sig=signal.SIGKILL, timeout=2)


def _on_signal(signum: int, _frame: Any) -> None:
    _kill_all()
    sys.exit(128 + signum)


atexit.register(_kill_all)
signal.signal(signal.SIGTERM, _on_signal)


# --- a private Redis ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``redis-server`` on a free loopback port and a unix socket, no persistence."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.port = free_port()
        self.socket_path = self.dir / "redis.sock"
        self.tcp_url = f"redis://127.0.0.1:{self.port}/0"
        self.unix_url = f"unix://{self.socket_path}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        from prefork_work.embedded import find_redis_server

        argv = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
            "--maxclients", "1000",
        ]
        self.proc = start_group(argv)
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.dir / 'redis.log'}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("private redis-server did not answer")
                time.sleep(0.01)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30,
                           client_name="bench-harness")

    def stop(self) -> None:
        if self.proc is not None:
            try:
                c = self.client()
                c.shutdown(nosave=True)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            stop_group(self.proc, timeout=5)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Redis stats ---------------------------------------------------------------------------------
SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


@dataclass
class Snapshot:
    calls: dict[str, int]
    cpu: float  # used_cpu_sys + used_cpu_user, seconds
    at: float = field(default_factory=time.monotonic)


def snapshot(client: redis.Redis) -> Snapshot:
    """INFO commandstats + INFO cpu. Each call costs one ``info`` (and we subtract those)."""
    stats = client.info("commandstats")
    cpu_info = client.info("cpu")
    calls = {key[len("cmdstat_"):]: int(value["calls"]) for key, value in stats.items()
             if key.startswith("cmdstat_")}
    cpu = float(cpu_info["used_cpu_sys"]) + float(cpu_info["used_cpu_user"])
    return Snapshot(calls, cpu)


@dataclass
class StatsDiff:
    commands: int  # every command Redis ran, including the ones inside Lua scripts
    scripts: int  # EVAL/EVALSHA/FCALL calls among them
    cpu_us: float
    by_command: dict[str, int]

    def per(self, n: int) -> dict[str, float]:
        n = max(n, 1)
        return {"cmds_per_job": self.commands / n, "scripts_per_job": self.scripts / n,
                "redis_cpu_us_per_job": self.cpu_us / n}


def diff(a: Snapshot, b: Snapshot, own: dict[str, int] | None = None) -> StatsDiff:
    """b − a, minus our own commands (``own``: e.g. the GET polls) and the INFO snapshots."""
    own = dict(own or {})
    own["info"] = own.get("info", 0) + 2  # the two INFO calls of snapshot b (a's are before a)
    by_command = {}
    for name in set(a.calls) | set(b.calls):
        n = b.calls.get(name, 0) - a.calls.get(name, 0) - own.get(name, 0)
        if n > 0:
            by_command[name] = n
    return StatsDiff(
        commands=sum(by_command.values()),
        scripts=sum(by_command.get(c, 0) for c in SCRIPT_COMMANDS),
        cpu_us=(b.cpu - a.cpu) * 1e6,
        by_command=dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
    )


# --- waiting for completions --------------------------------------------------------------------
@dataclass
class Completion:
    done: int  # counter value at the end
    wall: float  # seconds from the workers' start to the last completion seen
    steady: float  # seconds from the first completion seen to the last one
    first_count: int  # counter value when the first completion was seen
    startup: float  # seconds from the workers' start to the first completion seen
    stats: StatsDiff | None  # Redis work between the first completion seen and the end
    timed_out: bool


def wait_for_counter(
    client: redis.Redis, target: int, *, started: float, timeout: float,
    alive: Callable[[], bool] = lambda: True, key: str = COUNTER_KEY, poll: float = 0.005,
) -> Completion:
    """Poll ``key`` until it reaches ``target``; Redis stats are taken over the steady window."""
    gets = 0
    first: tuple[float, int, Snapshot] | None = None
    deadline = started + timeout
    timed_out = False
    value = 0
    last_alive_check = 0.0
    while True:
        value = int(client.get(key) or 0)
        gets += 1
        now = time.monotonic()
        if value and first is None:
            snap = snapshot(client)
            first, gets = (now, value, snap), 0
        if value >= target:
            break
        if now > deadline:
            timed_out = True
            break
        if now - last_alive_check > 0.5:
            last_alive_check = now
            if not alive():
                timed_out = True
                break
        time.sleep(poll)
    end = time.monotonic()
    stats = None
    if first is not None:
        stats = diff(first[2], snapshot(client), {"get": gets})
    return Completion(
        done=value, wall=end - started,
        steady=(end - first[0]) if first else float("nan"),
        first_count=first[1] if first else 0,
        startup=(first[0] - started) if first else float("nan"),
        stats=stats, timed_out=timed_out,
    )


# --- output --------------------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) < 10:
            return f"{value:.2f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(title)
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def machine_info() -> dict[str, Any]:
    from prefork_work.embedded import find_redis_server

    redis_version = subprocess.run([find_redis_server(), "--version"], capture_output=True,
                                   text=True, check=False).stdout.strip()
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpus": os.cpu_count(), "redis_server": redis_version,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(bench: str, payload: dict[str, Any], path: str | None = None) -> Path:
    """Write ``payload`` (plus machine info) to ``path`` or benches/bench-results/<bench>-<ts>.json."""
    if path:
        out = Path(path)
    else:
        out = RESULTS_DIR / f"{bench}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"bench": bench, "machine": machine_info(), **payload}
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"results written to {out}", flush=True)
    return out


def bench_env(url: str, names: int, **extra: str) -> dict[str, str]:
    """Environment for worker subprocesses: the bench Redis, the job names, the repo on the path."""
    env = dict(os.environ)
    env[ENV_URL] = url
    env[ENV_NAMES] = str(names)
    env[ENV_COUNTER] = COUNTER_KEY
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def job_names(n: int) -> list[str]:
    return [f"noop{i}" for i in range(n)]
