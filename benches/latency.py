"""Pickup latency of an idle job server, and its Redis load while idle: prefork-work and its peers.

    python -m benches.latency [--samples 2000] [--peer-samples 500] [--children 2] [--idle 5]
        [--systems prefork-work,rq,celery,dramatiq,huey,arq] [--timeout 60] [--json PATH]

For each system, in turn, on a fresh private Redis: its workers are started with ``--children``
processes (the same setup as benches/throughput.py), a few latency jobs warm them up, and the
system is left idle. First its Redis command rate and Redis CPU are measured over ``--idle``
seconds with no jobs (INFO commandstats diff). Then jobs are enqueued one at a time with the
system's ordinary one-at-a-time call, a random (seeded) 5–20 ms apart; each carries its
enqueue time (``time.time()``) in its args and its handler reads ``time.time()`` first thing
and RPUSHes the difference to ``bench:latency``: latency = handler start − enqueue time, both
clocks of this host. prefork-work runs ``--samples`` jobs, the peers ``--peer-samples``.
Every wait is bounded by ``--timeout``; a system that fails gets a row saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benches.common import (
    NAMESPACE,
    PrivateRedis,
    diff,
    print_table,
    snapshot,
    stop_group,
    write_json,
)
from benches.peers._common import LATENCY_KEY, LATENCY_SEED, paced_times
from benches.throughput import (
    PYTHON_SYSTEMS,
    System,
    prefork_work_server,
    resolve_systems,
)

NAMES = 5  # job names of the apps (noop0..noop4 + latency), as in benches/throughput.py
WARMUP_SETTLE = 2.0  # seconds between the warm-up jobs and the idle measurement
# how each system enqueues and picks up a job when idle (the table's note column)
NOTES = {
    "prefork-work": "Enqueuer.enqueue",
    "rq": "Queue.enqueue; rq worker forks a work horse per job",
    "celery": "apply_async; prefork pool, redis broker, no result backend",
    "dramatiq": "actor.send; an idle consumer polls with backoff 5 ms doubling up to "
                "worker_timeout (1 s, default)",
    "huey": "task(); -k process, RedisHuey blocking BRPOP (default)",
    "arq": "enqueue_job; poll_delay=0.005 (default 0.5 s)",
}


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


@dataclass
class Workers:
    """A system's workers, running on their own private Redis."""

    client: redis.Redis  # the harness's client of that Redis
    url: str
    alive: Callable[[], bool]
    workdir: Path


@contextlib.contextmanager
def start_workers(system: System, children: int) -> Iterator[Workers]:
    """Private Redis + the system's workers; both are always stopped (process groups killed)."""
    if system.name == "prefork-work":
        with prefork_work_server(children, NAMES, prefix="bench-latency-") as server:
            yield Workers(server.redis, server.url, lambda: server.master.poll() is None,
                          server.workdir)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-latency-{system.name}-"))
    redis_server = PrivateRedis().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = system.start(redis_server.tcp_url, children, NAMES, tmp)
        yield Workers(redis_server.client(), redis_server.tcp_url,
                      lambda: all(p.poll() is None for p in procs), tmp)
    finally:
        for p in procs:  # SIGTERM, then SIGKILL of the whole group (forked children too)
            stop_group(p, sig=system.stop_signal, timeout=10)
        redis_server.stop()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(tmp, ignore_errors=True)


def enqueue_latency_jobs(system: System, workers: Workers, n: int,
                         args: argparse.Namespace) -> None:
    """``n`` latency jobs, one at a time, paced by ``paced_times`` (the same gaps everywhere)."""
    budget = n * args.max_gap * 2 + args.timeout
    if system.name != "prefork-work":  # the peer's CLI, in its own interpreter
        system.cli(workers.url, NAMES, "latency", str(n), repr(args.min_gap), repr(args.max_gap),
                   str(LATENCY_SEED), timeout=budget)
        return
    from prefork_work.connection import redis_from_url
    from prefork_work.enqueuer import Enqueuer

    client = redis_from_url(workers.url, client_name="bench-latency")
    try:
        enqueuer = Enqueuer(NAMESPACE, client)
        deadline = time.monotonic() + budget
        for i, t in enumerate(paced_times(n, args.min_gap, args.max_gap, LATENCY_SEED)):
            enqueuer.enqueue("latency", {"t": t})
            if time.monotonic() > deadline:
                raise TimeoutError(f"enqueueing timed out after {i + 1}/{n} jobs")
    finally:
        client.close()


def log_tail(workdir: Path) -> str:
    """The last line the workers logged (for the note of a system that failed)."""
    lines = [line.strip() for log in sorted(workdir.glob("*.log"))
             for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f"; last log line: {lines[-1][:160]}" if lines else ""


def wait_for_samples(workers: Workers, n: int, timeout: float) -> int:
    """Poll LLEN of the latency list until it holds ``n`` samples, a worker dies, or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = int(workers.client.llen(LATENCY_KEY))
        if got >= n or time.monotonic() > deadline or not workers.alive():
            return got
        time.sleep(0.005)


def measure(system: System, samples: int, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"system": system.name, "samples_wanted": samples}
    with start_workers(system, args.children) as workers:
        client = workers.client
        # warm-up (also waits for the workers to start): two jobs per process, then idle again
        warmup = args.children * 2
        enqueue_latency_jobs(system, workers, warmup, args)
        got = wait_for_samples(workers, warmup, args.timeout)
        if got < warmup:
            why = "a worker exited" if not workers.alive() else f"timeout {args.timeout:.0f} s"
            raise RuntimeError(f"warm-up: {got}/{warmup} jobs ran ({why}){log_tail(workers.workdir)}")
        time.sleep(WARMUP_SETTLE)
        client.delete(LATENCY_KEY)

        # idle load
        a = snapshot(client)
        time.sleep(args.idle)
        b = snapshot(client)
        idle = diff(a, b)
        seconds = b.at - a.at
        result["idle"] = {"seconds": seconds, "cmds_per_s": idle.commands / seconds,
                          "redis_cpu_percent": idle.cpu_us / seconds / 1e6 * 100,
                          "by_command_per_s": {k: v / seconds for k, v in idle.by_command.items()}}

        # latency samples
        enqueue_latency_jobs(system, workers, samples, args)
        got = wait_for_samples(workers, samples, args.timeout)
        values = sorted(float(v) * 1000 for v in client.lrange(LATENCY_KEY, 0, -1))
        if got < samples:
            why = "a worker exited" if not workers.alive() else f"timeout {args.timeout:.0f} s"
            result["error"] = f"only {got}/{samples} jobs ran ({why}){log_tail(workers.workdir)}"
    result["samples"] = len(values)
    result["latency_ms"] = {f"p{p}": percentile(values, p) for p in (50, 90, 99)}
    result["latency_ms"]["max"] = values[-1] if values else float("nan")
    result["latency_ms"]["mean"] = sum(values) / len(values) if values else float("nan")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="latency jobs for prefork-work")
    parser.add_argument("--peer-samples", type=int, default=500, help="latency jobs for each peer")
    parser.add_argument("--children", type=int, default=2, help="worker processes per system")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measurement")
    parser.add_argument("--min-gap", type=float, default=0.005)
    parser.add_argument("--max-gap", type=float, default=0.020)
    parser.add_argument("--systems", default=",".join(PYTHON_SYSTEMS))
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each wait may take (warm-up, draining; enqueueing: "
                             "this plus twice the longest pacing)")
    parser.add_argument("--json", help="result file (default benches/bench-results/...)")
    args = parser.parse_args(argv)

    systems, versions, skipped = resolve_systems(args.systems)
    print(f"latency: {args.samples} samples (peers {args.peer_samples}), {args.children} children, "
          f"gaps {args.min_gap * 1000:g}–{args.max_gap * 1000:g} ms, idle {args.idle:g} s; "
          f"systems: {', '.join(versions)}"
          + (f"; skipped: {', '.join(skipped)}" if skipped else ""), flush=True)

    results: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    for system in systems:
        samples = args.samples if system.name == "prefork-work" else args.peer_samples
        started = time.monotonic()
        try:
            r = measure(system, samples, args)
        except (Exception, SystemExit) as err:  # one broken system must not stop the others
            r = {"system": system.name, "samples_wanted": samples, "samples": 0,
                 "error": f"{type(err).__name__}: {err}".strip()[:300]}
        r["seconds"] = time.monotonic() - started
        results.append(r)
        lat = r.get("latency_ms", {})
        idle = r.get("idle", {})
        nan = float("nan")
        print(f"  {system.name:<12} p50 {lat.get('p50', nan):8.2f} ms  p99 {lat.get('p99', nan):8.2f} ms"
              f"  idle {idle.get('cmds_per_s', nan):8.1f} cmds/s  ({r['seconds']:.0f} s)"
              + (f"  {r['error']}" if r.get("error") else ""), flush=True)
        note = [NOTES.get(system.name, system.note)]
        top = list(idle.get("by_command_per_s", {}).items())[:3]
        if top:
            note.append("idle: " + ", ".join(f"{k} {v:.1f}/s" for k, v in top))
        if r.get("error"):
            note.append(r["error"])
        rows.append([system.name, versions[system.name], system.concurrency(args.children),
                     r["samples"], lat.get("p50"), lat.get("p90"), lat.get("p99"), lat.get("max"),
                     idle.get("cmds_per_s"), idle.get("redis_cpu_percent"), "; ".join(note)])
    for name, why in skipped.items():
        rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", "-", f"skipped: {why}"])
    print()
    table = print_table(
        ["system", "version", "concurrency", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms",
         "idle Redis cmds/s", "idle Redis CPU %", "note"],
        rows,
        title=(f"Pickup latency, enqueue → handler start (jobs one at a time, "
               f"{args.min_gap * 1000:g}–{args.max_gap * 1000:g} ms apart), and Redis load of the "
               f"idle workers over {args.idle:g} s; {os.cpu_count()} CPUs"),
    )
    write_json("latency", {
        "args": vars(args), "versions": versions, "skipped": skipped, "results": results,
        "table": table,
    }, args.json)


if __name__ == "__main__":
    main()
