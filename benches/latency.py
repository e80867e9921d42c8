"""Pickup latency of an idle prefork-work server, and its Redis load while idle.

    python -m benches.latency [--samples 2000] [--children 2] [--idle 5] [--json PATH]

A server with ``--children`` children runs idle against a private Redis. First its Redis
command rate is measured over ``--idle`` seconds with no jobs (INFO commandstats diff).
Then jobs are enqueued one at a time, a random 5–20 ms apart; each carries its enqueue time
(``time.time()``) in its args and its handler records ``time.time()`` when it starts:
latency = handler start − enqueue time, both clocks of this host.
"""

from __future__ import annotations

import argparse
import random
import time

from benches.common import (
    COUNTER_KEY,
    diff,
    print_table,
    snapshot,
    wait_for_counter,
    write_json,
)
from benches.jobs_app import LATENCY_KEY
from benches.throughput import prefork_work_server


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measurement")
    parser.add_argument("--min-gap", type=float, default=0.005)
    parser.add_argument("--max-gap", type=float, default=0.020)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", help="result file (default benches/bench-results/...)")
    args = parser.parse_args(argv)

    from prefork_work.connection import redis_from_url
    from prefork_work.enqueuer import Enqueuer

    with prefork_work_server(args.children, prefix="bench-latency-") as server:
        client, url, master = server.redis, server.url, server.master
        enqueuer = Enqueuer("bench", redis_from_url(url, client_name="bench-latency"))
        # warm up: one job per child, and let them go idle again
        warmup = args.children * 2
        for _ in range(warmup):
            enqueuer.enqueue("latency", {"t": time.time()})
        started = time.monotonic()
        comp = wait_for_counter(client, warmup, started=started, timeout=30,
                                alive=lambda: master.poll() is None)
        if comp.timed_out:
            raise SystemExit(f"server did not run the warm-up jobs; see {server.workdir}")
        time.sleep(2.0)

        # idle load
        a = snapshot(client)
        time.sleep(args.idle)
        b = snapshot(client)
        idle = diff(a, b)
        idle_seconds = b.at - a.at
        idle_rate = idle.commands / idle_seconds
        idle_cpu = idle.cpu_us / idle_seconds / 1e6 * 100  # % of one CPU

        # latency samples
        client.delete(LATENCY_KEY)
        rng = random.Random(4)
        t0 = time.monotonic()
        for i in range(args.samples):
            enqueuer.enqueue("latency", {"t": time.time()})
            time.sleep(rng.uniform(args.min_gap, args.max_gap))
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"timed out after {i} samples")
        comp = wait_for_counter(client, warmup + args.samples, started=time.monotonic(),
                                timeout=30, key=COUNTER_KEY)
        values = sorted(float(v) * 1000 for v in client.lrange(LATENCY_KEY, 0, -1))

    lat = {f"p{p}": percentile(values, p) for p in (50, 90, 99)}
    lat["max"] = values[-1] if values else float("nan")
    lat["mean"] = sum(values) / len(values) if values else float("nan")
    print()
    t1 = print_table(
        ["samples", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "note"],
        [[len(values), lat["p50"], lat["p90"], lat["p99"], lat["max"], lat["mean"],
          f"{args.children} children, idle server, gaps {args.min_gap * 1000:.0f}–"
          f"{args.max_gap * 1000:.0f} ms"]],
        title="prefork-work pickup latency (enqueue → handler start)",
    )
    print()
    top = ", ".join(f"{k} {v / idle_seconds:.1f}/s" for k, v in list(idle.by_command.items())[:6])
    t2 = print_table(
        ["idle seconds", "Redis cmds/s", "Redis CPU %", "commands"],
        [[idle_seconds, idle_rate, idle_cpu, top]],
        title=f"prefork-work idle Redis load ({args.children} children, no jobs)",
    )
    write_json("latency", {
        "args": vars(args), "latency_ms": lat, "samples": len(values),
        "idle": {"seconds": idle_seconds, "cmds_per_s": idle_rate, "redis_cpu_percent": idle_cpu,
                 "by_command": idle.by_command},
        "table": t1 + "\n\n" + t2,
    }, args.json)


if __name__ == "__main__":
    main()
