"""Enqueue rate from one process: prefork-work's Enqueuer, and the peers' clients if installed.

    python -m benches.enqueue [--one 20000] [--many 200000] [--batch 1000]
        [--peer-jobs 5000] [--systems prefork-work,rq,celery,dramatiq,huey,arq] [--json PATH]

prefork-work: ``Enqueuer.enqueue`` one job at a time, and ``enqueue_many`` in batches.
Peers (each in a subprocess, timed inside it, no worker running): their ordinary one-at-a-time
call (rq ``Queue.enqueue``, celery ``apply_async``, dramatiq ``send``, huey ``task()``, arq
``enqueue_job``) and, where the library has a batch form, that too (rq ``enqueue_many`` on a
pipeline; arq: 200 concurrent ``enqueue_job`` calls). Every run uses a fresh private Redis.
"""

from __future__ import annotations

import argparse
import sys
import time

from benches.common import PrivateRedis, diff, job_names, print_table, snapshot, write_json
from benches.throughput import PYTHON_SYSTEMS, SYSTEM_CLASSES, python_for

BATCH_FORMS = {"rq": "enqueue_many (pipeline, 1000)", "arq": "200 concurrent enqueue_job"}
ONE_FORMS = {"rq": "Queue.enqueue", "celery": "apply_async", "dramatiq": "actor.send",
             "huey": "task()", "arq": "enqueue_job"}


def prefork_work_rate(n: int, batch: int | None) -> tuple[float, dict[str, float]]:
    """``batch`` None: one at a time; 0: the round-trip ceiling (bare LPUSH); N: enqueue_many."""
    from prefork_work.connection import redis_from_url
    from prefork_work.enqueuer import Enqueuer

    names = job_names(5)
    with PrivateRedis() as server:
        stats_client = server.client()
        client = redis_from_url(server.tcp_url, client_name="bench-enqueue", socket_timeout=60)
        enqueuer = Enqueuer("bench", client)
        a = snapshot(stats_client)
        started = time.perf_counter()
        if batch == 0:  # the ceiling: one bare LPUSH of a job's bytes per job, same client
            payload = b'{"name":"noop0","id":"0123456789abcdef01234567","t":1700000000,"args":null}'
            for _ in range(n):
                client.lpush("bench:jobs:ceiling", payload)
        elif batch is None:
            for i in range(n):
                enqueuer.enqueue(names[i % 5])
        else:
            for start in range(0, n, batch):
                enqueuer.enqueue_many((names[i % 5], None) for i in range(start, min(n, start + batch)))
        elapsed = time.perf_counter() - started
        stats = diff(a, snapshot(stats_client))
        client.close()
    return n / elapsed, stats.per(n)


def peer_rate(name: str, n: int, mode: str) -> tuple[float, dict[str, float]]:
    system = SYSTEM_CLASSES[name](python_for(name))
    with PrivateRedis() as server:
        stats_client = server.client()
        a = snapshot(stats_client)
        seconds = system.enqueue(server.tcp_url, n, 5, mode)
        stats = diff(a, snapshot(stats_client))
    return n / seconds, stats.per(n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.enqueue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", type=int, default=20_000, help="jobs enqueued one at a time")
    parser.add_argument("--many", type=int, default=200_000, help="jobs enqueued with enqueue_many")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--peer-jobs", type=int, default=5_000)
    parser.add_argument("--systems", default=",".join(PYTHON_SYSTEMS))
    parser.add_argument("--json", help="result file (default benches/bench-results/...)")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]

    rows: list[list[object]] = []
    results: list[dict[str, object]] = []

    def add(system: str, version: str, how: str, jobs: int, rate: float,
            per: dict[str, float]) -> None:
        rows.append([system, version, how, jobs, rate, per.get("cmds_per_job"),
                     per.get("redis_cpu_us_per_job")])
        results.append({"system": system, "version": version, "how": how, "jobs": jobs,
                        "jobs_per_s": rate, **per})
        print(f"  {system:<12} {how:<32} {rate:>10,.0f} jobs/s", flush=True)

    if "prefork-work" in wanted:
        import redis

        from prefork_work import __version__

        rate, per = prefork_work_rate(args.one, 0)
        add("redis-py", redis.__version__, "bare LPUSH (round-trip ceiling)", args.one, rate, per)
        rate, per = prefork_work_rate(args.one, None)
        add("prefork-work", __version__, "Enqueuer.enqueue", args.one, rate, per)
        rate, per = prefork_work_rate(args.many, args.batch)
        add("prefork-work", __version__, f"enqueue_many ({args.batch})", args.many, rate, per)
    for name in wanted:
        if name == "prefork-work":
            continue
        version = SYSTEM_CLASSES[name](python_for(name)).version()
        if version is None:
            rows.append([name, "-", "-", "-", "-", "-", "-"])
            results.append({"system": name, "skipped": f"not installed for {python_for(name)}"})
            print(f"  {name:<12} skipped: not installed", flush=True)
            continue
        try:
            rate, per = peer_rate(name, args.peer_jobs, "one")
            add(name, version, ONE_FORMS[name], args.peer_jobs, rate, per)
            if name in BATCH_FORMS:
                rate, per = peer_rate(name, args.peer_jobs * 4, "many")
                add(name, version, BATCH_FORMS[name], args.peer_jobs * 4, rate, per)
        except Exception as err:  # a broken peer must not hide the others
            print(f"  {name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            results.append({"system": name, "error": f"{type(err).__name__}: {err}"})
    print()
    table = print_table(["system", "version", "how", "jobs", "jobs/s", "Redis cmds/job",
                         "Redis CPU µs/job"], rows,
                        title="Enqueue rate from one process (private Redis over loopback TCP)")
    write_json("enqueue", {"args": vars(args), "results": results, "table": table}, args.json)


if __name__ == "__main__":
    main()
