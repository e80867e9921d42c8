"""What job status and the metrics counters cost: no-op throughput with each switched on/off.

    python -m benches.overhead [--jobs 100000] [--names 5] [--children 2] [--runs 5]
        [--baseline DIR] [--json PATH]
    python -m benches.overhead --in-process [--jobs 50000] [--runs 5] [--baseline DIR]
    python -m benches.overhead --instructions [--jobs 1000] [--baseline DIR]   # needs valgrind

The throughput bench's workload and harness (benches/throughput.py: all jobs enqueued first,
then the server started and timed until every job has run), with the prefork-work server in
these configurations, runs interleaved (run 1 of each, then run 2, ...), median reported:

- ``metrics off``: ``[server] metrics = false``, no job type asks for status
- ``default``: metrics on (the default), no status: what every user pays
- ``status on``: metrics on and every job type registered with ``status=True``
- ``baseline``: with ``--baseline DIR``, the same workload on the code of another checkout
  (e.g. the commit before status and metrics), for a before/after in one run.

Overheads are relative to ``metrics off`` (or to ``baseline`` when given).

``--in-process`` measures the same three configurations without the server: one
``Worker`` in this process drains the jobs at a fixed batch size (100), and the table
gives the worker's CPU time per job (``time.process_time``) and Redis's (its
``commandstats``). CPU time, unlike jobs/s, hardly moves with the load of other processes
on a shared machine, so small overheads show through the noise.

``--instructions`` counts instead of timing, under valgrind's callgrind: the worker
process draining the jobs and Redis's script calls (every Redis command of the drain runs
inside fetch.lua), for ``--jobs`` and three times as many jobs; the difference divided by
the extra jobs is the cost per job, start-up excluded. Counts do not depend on the load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from benches.common import (
    ROOT,
    PrivateRedis,
    bench_env,
    median,
    print_table,
    write_json,
)
from benches.throughput import PreforkWork, RunResult, run_once


class Variant(PreforkWork):
    """The bench's prefork-work server with extra [server] settings, env and code tree."""

    def __init__(self, label: str, server: str = "", env: dict[str, str] | None = None,
                 tree: Path | None = None) -> None:
        super().__init__(sys.executable)
        self.name = label
        self.server = server
        self.extra_env = env or {}
        self.tree = tree

    def env(self, url: str, names: int) -> dict[str, str]:
        env = bench_env(url, names, **self.extra_env)
        if self.tree is not None:  # that checkout's prefork_work first on the path
            env["PYTHONPATH"] = os.pathsep.join([str(self.tree), env["PYTHONPATH"]])
        return env


class _Unobserved:
    """No observation writes: the in-process default writes two per job, the server none."""

    def observe(self, job: object, job_type: object) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def checkin(self, job: object, message: str) -> None:
        pass


def enqueue_jobs(client: object, jobs: int, names: int) -> None:
    from prefork_work.enqueuer import Enqueuer

    client.flushall()  # type: ignore[attr-defined]
    enqueuer = Enqueuer("bench", client)  # type: ignore[arg-type]
    for start in range(0, jobs, 1000):
        enqueuer.enqueue_many((f"noop{i % names}", None) for i in range(start, min(jobs, start + 1000)))


def drain_jobs(client: object, names: int, metrics: bool, status: bool) -> int:
    """One Worker drains the queues at a fixed batch size (100); returns how many ran."""
    import inspect

    from prefork_work.app import App  # submodules: a baseline may predate the top-level names
    from prefork_work.worker import Worker

    app = App()
    for i in range(names):
        app.register(f"noop{i}", lambda job: None, **({"status": True} if status else {}))
    options: dict[str, object] = {"metrics": metrics}
    if "metrics" not in inspect.signature(Worker).parameters:
        options = {}  # a baseline checkout from before the switch
    worker = Worker(app, client, "bench", **options,  # type: ignore[arg-type]
                    observer=_Unobserved(),  # the server observes through shared memory
                    batch_seconds=1.0)  # the batch stays at max_batch whatever the load
    return worker.drain()


def in_process_once(client: object, jobs: int, names: int, metrics: bool,
                    status: bool) -> tuple[float, float, float]:
    """(jobs/s, worker CPU µs/job, Redis CPU µs/job) of one Worker draining ``jobs``."""
    import time

    enqueue_jobs(client, jobs, names)
    client.config_resetstat()  # type: ignore[attr-defined]
    cpu, wall = time.process_time(), time.perf_counter()
    done = drain_jobs(client, names, metrics, status)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    redis_us = sum(v["usec"] for k, v in stats.items() if k.startswith("cmdstat_"))
    assert done == jobs, (done, jobs)
    return jobs / wall, cpu / jobs * 1e6, redis_us / jobs


def _refs(text: str) -> int:
    """The instruction count of a callgrind summary ("I   refs:      1,234")."""
    for line in text.splitlines():
        if "I   refs:" in line:
            return int(line.rsplit(":", 1)[1].replace(",", "").strip())
    raise SystemExit(f"no callgrind summary in: {text[-2000:]}")


def instructions_once(jobs: int, names: int, metrics: bool, status: bool,
                      tree: Path | None, tmp: Path) -> tuple[int, int]:
    """(worker, Redis) instructions for draining ``jobs``: the worker's whole process and
    Redis's script calls (EVALSHA: every Redis command of the drain runs in fetch.lua)."""
    import shutil
    import time

    import redis as redis_py

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(t) for t in (tree, ROOT, env.get("PYTHONPATH")) if t)
    sock = tmp / f"redis-{jobs}.sock"
    redis_log = tmp / f"redis-{jobs}.log"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--toggle-collect=evalGenericCommand",
         f"--callgrind-out-file={tmp / 'redis.cg'}", shutil.which("redis-server") or "redis-server",
         "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=open(redis_log, "w"))
    url = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"redis-server under valgrind did not start: {redis_log}")
            time.sleep(0.2)
        prelude = "import redis; from benches.overhead import enqueue_jobs, drain_jobs; "
        client = f"redis.Redis.from_url({url!r}, socket_timeout=600)"
        subprocess.run([sys.executable, "-c", prelude + f"enqueue_jobs({client}, {jobs}, {names})"],
                       env=env, cwd=ROOT, check=True, timeout=600)
        worker = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp / 'worker.cg'}",
             sys.executable, "-c",
             prelude + f"assert drain_jobs({client}, {names}, {metrics}, {status}) == {jobs}"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if worker.returncode != 0:
            raise SystemExit(f"the drain failed: {worker.stderr[-2000:]}")
        redis_py.Redis.from_url(url).shutdown(nosave=True)
    except redis_py.ConnectionError:  # the reply to SHUTDOWN is the connection closing
        pass
    finally:
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return _refs(worker.stderr), _refs(redis_log.read_text())


def instructions(args: argparse.Namespace) -> None:
    """Instructions per job by callgrind: the same on a busy machine as on an idle one."""
    import tempfile

    small, large = args.jobs, 3 * args.jobs
    variants = _variants(args)
    rows = []
    ref: tuple[float, float] | None = None
    print(f"instructions per job (callgrind): drains of {small:,} and {large:,} no-op jobs, "
          f"{args.names} names, batch 100; per job = difference / {large - small:,}", flush=True)
    for name, (metrics, status, tree) in variants.items():
        with tempfile.TemporaryDirectory(prefix="bench-ir-") as tmp:
            w1, r1 = instructions_once(small, args.names, metrics, status, tree, Path(tmp))
            w2, r2 = instructions_once(large, args.names, metrics, status, tree, Path(tmp))
        worker, redis_ = (w2 - w1) / (large - small), (r2 - r1) / (large - small)
        ref = ref or (worker, redis_)
        print(f"  {name:<12} worker {worker:>9,.0f}  Redis {redis_:>9,.0f} instructions/job",
              flush=True)
        rows.append([name, round(worker), f"{(worker / ref[0] - 1) * 100:+.1f}%", round(redis_),
                     f"{(redis_ / ref[1] - 1) * 100:+.1f}%", round(worker + redis_),
                     f"{((worker + redis_) / sum(ref) - 1) * 100:+.1f}%"])
    print()
    table = print_table(
        ["variant", "worker instr/job", "vs ref", "Redis instr/job", "vs ref", "total", "vs ref"],
        rows, title=f"status and metrics overhead in instructions (ref = {next(iter(variants))})")
    write_json("overhead-instructions", {"args": {k: str(v) for k, v in vars(args).items()},
                                         "table": table}, args.json)


def _variants(args: argparse.Namespace) -> dict[str, tuple[bool, bool, Path | None]]:
    variants: dict[str, tuple[bool, bool, Path | None]] = {
        "metrics off": (False, False, None), "default": (True, False, None),
        "status on": (True, True, None)}
    if args.baseline:
        variants = {"baseline": (False, False, args.baseline.resolve()), **variants}
    return variants


def one_in_process(url: str, jobs: int, names: int, metrics: bool, status: bool,
                   tree: Path | None) -> tuple[float, float, float]:
    """in_process_once in a fresh interpreter (with ``tree``'s prefork_work first)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        str(t) for t in (tree, ROOT, env.get("PYTHONPATH")) if t)
    code = ("import json, redis; from benches.overhead import in_process_once; "
            f"print(json.dumps(in_process_once(redis.Redis.from_url({url!r}), {jobs}, {names}, "
            f"{metrics}, {status})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"in-process run failed: {done.stderr[-2000:]}")
    rate, cpu, rcpu = json.loads(done.stdout.strip().splitlines()[-1])
    return rate, cpu, rcpu


def in_process(args: argparse.Namespace) -> None:
    variants = _variants(args)
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    server = PrivateRedis().start()
    try:
        print(f"overhead in process: {args.jobs:,} no-op jobs, {args.names} names, batch 100, "
              f"{args.runs} runs interleaved", flush=True)
        for run in range(1, args.runs + 1):
            for name, (metrics, status, tree) in variants.items():
                rate, cpu, rcpu = one_in_process(server.tcp_url, args.jobs, args.names, metrics,
                                                 status, tree)
                results[name].append((rate, cpu, rcpu))
                print(f"  run {run} {name:<12} {rate:>8,.0f} jobs/s  worker {cpu:5.2f} µs/job"
                      f"  Redis {rcpu:5.2f} µs/job", flush=True)
    finally:
        server.stop()
    # CPU per job: the least disturbed run (the minimum) estimates the cost best on a shared
    # machine, where other processes only ever add to it; jobs/s: the median
    reference = "baseline" if args.baseline else "metrics off"

    def figures(rs: list[tuple[float, float, float]]) -> tuple[float, float, float, float]:
        return (median(r[0] for r in rs), min(r[1] for r in rs), min(r[2] for r in rs),
                min(r[1] + r[2] for r in rs))

    ref = figures(results[reference])
    rows = []
    for name, rs in results.items():
        f = figures(rs)
        rows.append([name, f[0], f[1], f"{(f[1] / ref[1] - 1) * 100:+.1f}%", f[2],
                     f"{(f[2] / ref[2] - 1) * 100:+.1f}%", f[3],
                     f"{(f[3] / ref[3] - 1) * 100:+.1f}%"])
    print()
    table = print_table(
        ["variant", "jobs/s (median)", "worker CPU µs/job (min)", "vs ref",
         "Redis CPU µs/job (min)", "vs ref", "total CPU µs/job (min)", "vs ref"], rows,
        title=f"status and metrics overhead, in process ({args.runs} runs; ref = {reference})")
    write_json("overhead-in-process", {"args": {k: str(v) for k, v in vars(args).items()},
                                       "runs": results, "table": table}, args.json)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int,
                        help="default 100000; --in-process 50000; --instructions 1000")
    parser.add_argument("--names", type=int, default=5)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--baseline", type=Path, help="a checkout whose prefork_work to compare")
    parser.add_argument("--json", help="result file (default benches/bench-results/...)")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per job under valgrind's callgrind (deterministic)")
    parser.add_argument("--in-process", action="store_true",
                        help="CPU per job of one in-process Worker instead of the server's jobs/s")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 50_000 if args.in_process else 1_000 if args.instructions else 100_000
    if args.in_process:
        in_process(args)
        return
    if args.instructions:
        instructions(args)
        return

    variants = [Variant("metrics off", "metrics = false"), Variant("default"),
                Variant("status on", env={"BENCH_STATUS": "1"})]
    if args.baseline:
        variants.insert(0, Variant("baseline", tree=args.baseline.resolve()))
    results: dict[str, list[RunResult]] = {v.name: [] for v in variants}
    print(f"overhead: {args.jobs:,} no-op jobs, {args.names} names, {args.children} children, "
          f"{args.runs} runs interleaved", flush=True)
    for run in range(1, args.runs + 1):
        for variant in variants:
            r = run_once(variant, args.jobs, args.names, args.children, args.timeout, run)
            results[variant.name].append(r)
            print(f"  run {run} {variant.name:<12} {r.jobs_per_s:>10,.0f} jobs/s "
                  f"{r.redis_cpu_us_per_job:6.2f} Redis CPU µs/job"
                  f"{'  ' + r.error if r.error else ''}", flush=True)
    reference = "baseline" if args.baseline else "metrics off"
    ref = median(r.jobs_per_s for r in results[reference])
    ref_cpu = median(r.redis_cpu_us_per_job for r in results[reference])
    rows = []
    for name, rs in results.items():
        rate = median(r.jobs_per_s for r in rs)
        cpu = median(r.redis_cpu_us_per_job for r in rs)
        rows.append([name, rate, f"{(rate / ref - 1) * 100:+.1f}%",
                     min(r.jobs_per_s for r in rs), max(r.jobs_per_s for r in rs),
                     cpu, f"{(cpu / ref_cpu - 1) * 100:+.1f}%",
                     "; ".join(r.error for r in rs if r.error)])
    print()
    table = print_table(
        ["variant", "jobs/s", f"vs {reference}", "min", "max", "Redis CPU µs/job",
         f"vs {reference}", "note"], rows,
        title=f"status and metrics overhead (median of {args.runs}; {os.cpu_count()} CPUs)")
    write_json("overhead", {"args": {k: str(v) for k, v in vars(args).items()},
                            "runs": {k: [asdict(r) for r in v] for k, v in results.items()},
                            "table": table}, args.json)


if __name__ == "__main__":
    main()
