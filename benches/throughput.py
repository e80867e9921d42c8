"""Throughput of no-op jobs: gocraft/work's benchmark workload, prefork-work against its peers.

    python -m benches.throughput [--jobs 100000] [--names 5] [--children 2] [--runs 3]
        [--systems prefork-work,rq,celery,dramatiq,huey,arq,gocraft,gocraft-20] [--timeout 120]
        [--json PATH]
    python -m benches.throughput --scale      # prefork-work alone: children 1,2,4 x names 1,10,100

Each run, for each system: a fresh private Redis; every job is enqueued first (round robin
over the job names), then the workers are started and the clock runs until every job has
counted itself done (benches/done.py). Runs are interleaved (run 1 of every system, then run 2, ...) and
the median is reported. See benches/README.md for what exactly is measured.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benches.common import (
    COUNTER_KEY,
    ROOT,
    Completion,
    PrivateRedis,
    bench_env,
    job_names,
    median,
    print_table,
    start_group,
    stop_group,
    wait_for_counter,
    write_json,
)

# the Python systems; their peer apps (benches/peers/*_app.py) also have latency and enqueue modes
PYTHON_SYSTEMS = ["prefork-work", "rq", "celery", "dramatiq", "huey", "arq"]
ALL_SYSTEMS = [*PYTHON_SYSTEMS, "gocraft", "gocraft-20"]
# Slow peers run fewer jobs so a whole comparison stays within minutes (said in the note).
DEFAULT_CAPS = {"rq": 2_000, "celery": 10_000, "huey": 50_000, "dramatiq": 50_000, "arq": 20_000}
ENQUEUE_TIMEOUT = 600.0


@dataclass
class RunResult:
    system: str
    run: int
    jobs: int
    done: int
    final_count: int
    jobs_per_s: float
    wall_jobs_per_s: float
    startup_s: float
    enqueue_s: float
    cmds_per_job: float
    scripts_per_job: float
    redis_cpu_us_per_job: float
    timed_out: bool
    by_command: dict[str, int] = field(default_factory=dict)
    error: str = ""


class System:
    """How one system enqueues and runs its workers; peers run in subprocesses."""

    name = ""
    module = ""  # benches.peers.X
    note = ""

    def __init__(self, python: str) -> None:
        self.python = python
        self.bin = Path(python).parent

    def version(self) -> str | None:
        try:
            out = subprocess.run([self.python, "-m", self.module, "version"], cwd=ROOT,
                                 env=bench_env("redis://127.0.0.1:1/0", 1), capture_output=True,
                                 text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        return str(json.loads(out.stdout.strip().splitlines()[-1])["version"])

    def cli(self, url: str, names: int, *args: str,
            timeout: float = ENQUEUE_TIMEOUT) -> dict[str, Any]:
        """Run the peer module's CLI (benches/peers/_common.py) and return its JSON line."""
        out = subprocess.run([self.python, "-m", self.module, *args], cwd=ROOT,
                             env=bench_env(url, names), capture_output=True, text=True,
                             timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{self.name} {args[0]} failed: {out.stderr.strip()[-2000:]}")
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def enqueue(self, url: str, n: int, names: int, mode: str = "many") -> float:
        return float(self.cli(url, names, "enqueue", str(n), mode)["seconds"])

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        raise NotImplementedError

    def concurrency(self, children: int) -> str:
        return f"{children} proc"

    def start(self, url: str, children: int, names: int, tmp: Path) -> list[subprocess.Popen[bytes]]:
        env = bench_env(url, names)
        return [start_group(argv, env=env, log=tmp / f"{self.name}-{i}.log")
                for i, argv in enumerate(self.worker_argvs(url, children))]

    stop_signal = signal.SIGTERM


class PreforkWork(System):
    name = "prefork-work"
    note = "enqueue_many"

    def version(self) -> str | None:
        from prefork_work import __version__

        return __version__

    def enqueue(self, url: str, n: int, names: int, mode: str = "many") -> float:
        from prefork_work.connection import redis_from_url
        from prefork_work.enqueuer import Enqueuer

        client = redis_from_url(url, client_name="bench-enqueuer", socket_timeout=60)
        enqueuer = Enqueuer("bench", client)
        all_names = job_names(names)
        started = time.perf_counter()
        for start in range(0, n, 1000):
            enqueuer.enqueue_many((all_names[i % names], None)
                                  for i in range(start, min(n, start + 1000)))
        elapsed = time.perf_counter() - started
        client.close()
        return elapsed

    app = "benches.jobs_app:app"
    server = ""  # more [server] lines (the overhead bench's variants, the I/O bench's slots)

    def env(self, url: str, names: int) -> dict[str, str]:
        return bench_env(url, names)

    def start(self, url: str, children: int, names: int, tmp: Path) -> list[subprocess.Popen[bytes]]:
        config = tmp / "work.toml"
        config.write_text(
            f'[redis]\nurl = "{url}"\n\n'
            f'[server]\nnamespace = "bench"\napp = "{self.app}"\n'
            f"concurrency = {children}\npython_path = [{json.dumps(str(ROOT))}]\n"
            f'state_dir = {json.dumps(str(tmp / "state"))}\nshutdown_timeout = 5.0\n'
            f"{self.server}\n\n"
            '[log]\nlevel = "warning"\nformat = "json"\n'
        )
        argv = [self.python, "-m", "prefork_work.cli", "-c", str(config)]
        return [start_group(argv, env=self.env(url, names), log=tmp / "prefork-work.log")]


@dataclass
class RunningServer:
    """A prefork-work server of the benches' app, started as users start it, on its own Redis."""

    redis: Any  # a client of the bench Redis
    url: str
    master: subprocess.Popen[bytes]
    workdir: Path


@contextlib.contextmanager
def prefork_work_server(children: int, names: int = 5, prefix: str = "bench-") -> Iterator[RunningServer]:
    """Start Redis and the server, wait for its children, and always stop both."""
    system = PreforkWork(sys.executable)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    redis_server = PrivateRedis().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = system.start(redis_server.tcp_url, children, names, workdir)
        deadline = time.monotonic() + 30
        while len(psutil.Process(procs[0].pid).children()) < children:
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise SystemExit(f"server did not start its children; see {workdir}")
            time.sleep(0.1)
        time.sleep(1.0)  # let the children finish booting and go idle
        yield RunningServer(redis_server.client(), redis_server.tcp_url, procs[0], workdir)
    finally:
        for proc in procs:
            stop_group(proc, sig=signal.SIGTERM, timeout=10)
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class Rq(System):
    name, module = "rq", "benches.peers.rq_app"
    note = "rq worker (fork per job), --quiet"

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[str(self.bin / "rq"), "worker", "-u", url, "--quiet", "default"]
                for _ in range(children)]


class Celery(System):
    name, module = "celery", "benches.peers.celery_app"
    note = "prefork pool, no result backend"

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[str(self.bin / "celery"), "-A", "benches.peers.celery_app", "worker",
                 "-P", "prefork", "-c", str(children), "-l", "WARNING"]]

    def concurrency(self, children: int) -> str:
        return f"prefork -c {children}"


class Dramatiq(System):
    name, module = "dramatiq", "benches.peers.dramatiq_app"
    note = ""

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[str(self.bin / "dramatiq"), "benches.peers.dramatiq_app", "-p", str(children),
                 "-t", "8"]]

    def concurrency(self, children: int) -> str:
        return f"{children} proc x 8 thr"


class Huey(System):
    name, module = "huey", "benches.peers.huey_app"
    note = ""

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[str(self.bin / "huey_consumer"), "benches.peers.huey_app.huey", "-k", "process",
                 "-w", str(children), "-q"]]

    def concurrency(self, children: int) -> str:
        return f"{children} proc (-k process)"


class Arq(System):
    name, module = "arq", "benches.peers.arq_app"
    note = "poll_delay=0.005"

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[self.python, "-m", "benches.peers.arq_app", "worker"] for _ in range(children)]

    def concurrency(self, children: int) -> str:
        return f"{children} proc x max_jobs 10"


class GoCraft(System):
    """gocraft/work (Go), driven by benches/peers/gocraft/main.go, built against $BENCH_GOCRAFT_DIR.

    Optional: needs ``go`` on PATH and a copy of gocraft/work's sources in $BENCH_GOCRAFT_DIR
    (redigo and robfig/cron/v3 from $BENCH_GOCODE_DIR, default Debian's /usr/share/gocode/src).
    The driver is built once per process; enqueueing uses gocraft's Enqueuer, the pool runs
    ``goroutines`` worker goroutines (None: as many as --children) in one OS process.
    """

    name = "gocraft"
    note = "1 process, work.NewEnqueuer per job"
    goroutines: int | None = None
    BUILD_TIMEOUT = 300.0
    _binary: Path | None = None
    _build_error = ""

    def __init__(self, python: str) -> None:
        super().__init__(python)
        self.unavailable = ""
        self.jobs = 0

    @staticmethod
    def source_dir() -> Path | None:
        raw = os.environ.get("BENCH_GOCRAFT_DIR")
        if not raw:
            return None
        path = Path(raw).expanduser()
        return path if (path / "worker_pool.go").is_file() else None

    @staticmethod
    def gocraft_version(src: Path) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return f"master@{out.stdout.strip()}"
        version_file = src / "VERSION"
        if version_file.is_file():
            return version_file.read_text().strip().splitlines()[0]
        return "local copy"

    @classmethod
    def build(cls, src: Path) -> Path | None:
        """go build the driver once into a temporary directory (bounded by BUILD_TIMEOUT)."""
        if cls._binary is not None or cls._build_error:
            return cls._binary
        gocode = Path(os.environ.get("BENCH_GOCODE_DIR", "/usr/share/gocode/src"))
        driver = Path(__file__).resolve().parent / "peers" / "gocraft"
        build_dir = Path(tempfile.mkdtemp(prefix="bench-gocraft-build-"))
        atexit_rmtree(build_dir)
        shutil.copy(driver / "main.go", build_dir / "main.go")
        replaces = {
            "github.com/gocraft/work": src.resolve(),
            "github.com/gomodule/redigo": gocode / "github.com/gomodule/redigo",
            "github.com/robfig/cron/v3": gocode / "github.com/robfig/cron",
        }
        gomod = (driver / "go.mod").read_text()
        gomod += "\nrequire github.com/robfig/cron/v3 v3.0.1 // indirect\n\n"
        gomod += "".join(f"replace {mod} => {path}\n" for mod, path in replaces.items())
        (build_dir / "go.mod").write_text(gomod)
        env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GO111MODULE="on",
                   GOTOOLCHAIN="local")
        binary = build_dir / "gocraft-bench"
        try:
            out = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=build_dir, env=env,
                                 capture_output=True, text=True, timeout=cls.BUILD_TIMEOUT,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            cls._build_error = f"go build failed: {err}"
            return None
        if out.returncode != 0:
            cls._build_error = f"go build failed: {out.stderr.strip()[-500:]}"
            return None
        cls._binary = binary
        return binary

    def version(self) -> str | None:
        src = self.source_dir()
        if shutil.which("go") is None:
            self.unavailable = "no `go` on PATH"
            return None
        if src is None:
            self.unavailable = "$BENCH_GOCRAFT_DIR is not set to gocraft/work's sources"
            return None
        if self.build(src) is None:
            self.unavailable = self._build_error
            return None
        return self.gocraft_version(src)

    def argv(self, url: str, names: int, mode: str, jobs: int, children: int) -> list[str]:
        assert self._binary is not None
        parsed = urllib.parse.urlparse(url)
        return [str(self._binary), "-mode", mode, "-redis", f"{parsed.hostname}:{parsed.port}",
                "-namespace", "bench-gocraft", "-jobs", str(jobs),
                "-names", ",".join(job_names(names)),
                "-concurrency", str(self.goroutines or children),
                "-counter-key", COUNTER_KEY, "-version", self.gocraft_version(self.source_dir()
                                                                               or Path("."))]

    def enqueue(self, url: str, n: int, names: int, mode: str = "many") -> float:
        self.jobs = n
        out = subprocess.run(self.argv(url, names, "enqueue", n, 1), cwd=ROOT, capture_output=True,
                             text=True, timeout=ENQUEUE_TIMEOUT, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{self.name} enqueue failed: {out.stderr.strip()[-2000:]}")
        return float(json.loads(out.stdout.strip().splitlines()[-1])["enqueue_seconds"])

    def start(self, url: str, children: int, names: int, tmp: Path) -> list[subprocess.Popen[bytes]]:
        return [start_group(self.argv(url, names, "work", self.jobs, children),
                            log=tmp / f"{self.name}.log")]

    def concurrency(self, children: int) -> str:
        return f"{self.goroutines or children} goroutines"


class GoCraft20(GoCraft):
    """gocraft/work at 20 goroutines, the concurrency of gocraft's own benchmark."""

    name = "gocraft-20"
    goroutines = 20


def atexit_rmtree(path: Path) -> None:
    atexit.register(shutil.rmtree, path, True)


SYSTEM_CLASSES: dict[str, type[System]] = {
    c.name: c for c in (PreforkWork, Rq, Celery, Dramatiq, Huey, Arq, GoCraft, GoCraft20)
}


def python_for(name: str) -> str:
    """arq pins redis<6 and so may live in its own venv: $BENCH_ARQ_PYTHON (any: $BENCH_<SYS>_PYTHON)."""
    return os.environ.get(f"BENCH_{name.upper().replace('-', '_')}_PYTHON") or sys.executable


def run_once(system: System, jobs: int, names: int, children: int, timeout: float,
             run: int) -> RunResult:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{system.name}-"))
    redis_server = PrivateRedis().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        client = redis_server.client()
        url = redis_server.tcp_url
        enqueue_s = system.enqueue(url, jobs, names)
        started = time.monotonic()
        procs = system.start(url, children, names, tmp)
        comp: Completion = wait_for_counter(
            client, jobs, started=started, timeout=timeout,
            alive=lambda: all(p.poll() is None for p in procs),
        )
        for p in procs:
            stop_group(p, sig=system.stop_signal, timeout=10)
        final = int(client.get("bench:done") or 0)
        stats = comp.stats
        per = stats.per(comp.done - comp.first_count) if stats else {}
        steady_jobs = comp.done - comp.first_count
        error = ""
        if comp.timed_out:
            dead = [p.args[0] for p in procs if p.returncode not in (None, 0, -15)]
            error = f"timed out or worker exited at {comp.done}/{jobs}"
            if dead:
                error += f" (see logs in {tmp})"
        return RunResult(
            system=system.name, run=run, jobs=jobs, done=comp.done, final_count=final,
            jobs_per_s=steady_jobs / comp.steady if comp.steady and steady_jobs > 0 else float("nan"),
            wall_jobs_per_s=comp.done / comp.wall if comp.wall else float("nan"),
            startup_s=comp.startup, enqueue_s=enqueue_s,
            cmds_per_job=per.get("cmds_per_job", float("nan")),
            scripts_per_job=per.get("scripts_per_job", float("nan")),
            redis_cpu_us_per_job=per.get("redis_cpu_us_per_job", float("nan")),
            timed_out=comp.timed_out,
            by_command={k: v for k, v in (stats.by_command.items() if stats else [])},
            error=error,
        )
    finally:
        for p in procs:
            stop_group(p, sig=signal.SIGKILL, timeout=2)
        redis_server.stop()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def summarize(results: list[RunResult], system: str) -> dict[str, Any]:
    mine = [r for r in results if r.system == system]
    return {
        "jobs": mine[0].jobs if mine else 0,
        "jobs_per_s": median(r.jobs_per_s for r in mine),
        "wall_jobs_per_s": median(r.wall_jobs_per_s for r in mine),
        "startup_s": median(r.startup_s for r in mine),
        "enqueue_jobs_per_s": median(r.jobs / r.enqueue_s for r in mine if r.enqueue_s),
        "cmds_per_job": median(r.cmds_per_job for r in mine),
        "scripts_per_job": median(r.scripts_per_job for r in mine),
        "redis_cpu_us_per_job": median(r.redis_cpu_us_per_job for r in mine),
        "runs": len(mine),
        "errors": [r.error for r in mine if r.error],
        "lost_or_duplicated": [(r.run, r.final_count - r.jobs) for r in mine
                               if not r.error and r.final_count != r.jobs],
    }


def resolve_systems(
    systems_flag: str,
) -> tuple[list[System], dict[str, str], dict[str, str]]:
    """The --systems flag as (installed systems, their versions, skipped ones with the reason)."""
    wanted = [s.strip() for s in systems_flag.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SYSTEM_CLASSES]
    if unknown:
        sys.exit(f"unknown systems: {unknown}; known: {list(SYSTEM_CLASSES)}")
    systems: list[System] = []
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name in wanted:
        system = SYSTEM_CLASSES[name](python_for(name))
        v = system.version()
        if v is None:
            skipped[name] = (getattr(system, "unavailable", "")
                             or f"not installed for {system.python}")
            continue
        versions[name] = v
        systems.append(system)
    return systems, versions, skipped


def compare(args: argparse.Namespace) -> None:
    systems, versions, skipped = resolve_systems(args.systems)
    caps = {} if args.no_caps else DEFAULT_CAPS
    jobs = {s.name: min(args.jobs, caps.get(s.name, args.jobs)) for s in systems}
    print(f"throughput: {args.jobs:,} jobs, {args.names} names, {args.children} children, "
          f"{args.runs} runs; systems: {', '.join(versions)}"
          + (f"; skipped: {', '.join(skipped)}" if skipped else ""), flush=True)
    results: list[RunResult] = []
    for run in range(1, args.runs + 1):
        for system in systems:
            try:
                r = run_once(system, jobs[system.name], args.names, args.children, args.timeout, run)
            except Exception as err:  # one broken peer must not stop the comparison
                r = RunResult(system.name, run, jobs[system.name], 0, 0, float("nan"),
                              float("nan"), float("nan"), 0.0, float("nan"), float("nan"),
                              float("nan"), True, error=f"{type(err).__name__}: {err}")
            results.append(r)
            print(f"  run {run} {system.name:<12} {r.jobs_per_s:>10,.0f} jobs/s "
                  f"({r.done:,}/{r.jobs:,} done, startup {r.startup_s:.2f}s, "
                  f"{r.cmds_per_job:.2f} cmds/job){'  ' + r.error if r.error else ''}", flush=True)
    summary = {s.name: summarize(results, s.name) for s in systems}
    base = summary.get("prefork-work", {}).get("jobs_per_s", float("nan"))
    rows = []
    for system in systems:
        s = summary[system.name]
        note = [system.note] if system.note else []
        if jobs[system.name] < args.jobs:
            note.append(f"capped at {jobs[system.name]:,} jobs")
        if s["errors"]:
            note.append(f"{len(s['errors'])} failed run(s): {s['errors'][0]}")
        if s["lost_or_duplicated"]:
            note.append(f"count off by {s['lost_or_duplicated']}")
        rows.append([system.name, versions[system.name], system.concurrency(args.children),
                     s["jobs"], s["jobs_per_s"],
                     s["jobs_per_s"] / base if base == base and base else float("nan"),
                     s["cmds_per_job"], s["scripts_per_job"], s["redis_cpu_us_per_job"],
                     "; ".join(note)])
    for name, why in skipped.items():
        rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", f"skipped: {why}"])
    headers = ["system", "version", "concurrency", "jobs", "jobs/s", "ratio", "Redis cmds/job",
               "evals/job", "Redis CPU µs/job", "note"]
    print()
    table = print_table(headers, rows, title=(
        f"Throughput, no-op jobs (median of {args.runs}; {args.names} job names; "
        f"{os.cpu_count()} CPUs; jobs/s excludes worker start-up)"))
    write_json("throughput", {
        "args": vars(args), "versions": versions, "skipped": skipped, "jobs": jobs,
        "summary": summary, "runs": [asdict(r) for r in results], "table": table,
    }, args.json)


def scale(args: argparse.Namespace) -> None:
    system = PreforkWork(sys.executable)
    grid = [(c, n) for c in (1, 2, 4) for n in (1, 10, 100)]
    print(f"scaling: prefork-work, {args.jobs:,} jobs, {args.runs} runs, "
          f"children x names = {grid}", flush=True)
    results: dict[tuple[int, int], list[RunResult]] = {g: [] for g in grid}
    for run in range(1, args.runs + 1):
        for children, names in grid:
            r = run_once(system, args.jobs, names, children, args.timeout, run)
            results[(children, names)].append(r)
            print(f"  run {run} children={children} names={names:<3} {r.jobs_per_s:>10,.0f} jobs/s"
                  f"{'  ' + r.error if r.error else ''}", flush=True)
    rows = []
    for (children, names), rs in results.items():
        rows.append([children, names, args.jobs, median(r.jobs_per_s for r in rs),
                     median(r.cmds_per_job for r in rs), median(r.scripts_per_job for r in rs),
                     median(r.redis_cpu_us_per_job for r in rs),
                     "; ".join(r.error for r in rs if r.error)])
    print()
    table = print_table(
        ["children", "names", "jobs", "jobs/s", "Redis cmds/job", "evals/job", "Redis CPU µs/job",
         "note"], rows,
        title=f"prefork-work scaling (median of {args.runs}; {os.cpu_count()} CPUs)")
    write_json("throughput-scale", {
        "args": vars(args),
        "runs": {f"c{c}-n{n}": [asdict(r) for r in rs] for (c, n), rs in results.items()},
        "table": table,
    }, args.json)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--names", type=int, default=5, help="job names (round robin)")
    parser.add_argument("--children", type=int, default=2, help="worker processes per system")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a run may take after its workers start")
    parser.add_argument("--no-caps", action="store_true",
                        help=f"run every peer with --jobs (default caps: {DEFAULT_CAPS})")
    parser.add_argument("--scale", action="store_true",
                        help="prefork-work only: children 1,2,4 x names 1,10,100")
    parser.add_argument("--json", help="result file (default benches/bench-results/...)")
    args = parser.parse_args(argv)
    if args.scale:
        scale(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
