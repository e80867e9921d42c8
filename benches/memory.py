"""RSS and USS of a prefork-work master and its children, idle and after N no-op jobs.

    python -m benches.memory [--jobs 1000000] [--rounds 10] [--children 2] [--json PATH]

Enqueues ``--jobs`` in ``--rounds`` and measures after each round: RSS/USS of every process
and the Redis keys of the namespace by kind, which must stay flat.

USS (memory unique to a process) shows what a forked child really costs: most of its RSS
is pages shared copy-on-write with the master.
"""

from __future__ import annotations

import argparse
import sys
import time

import psutil

from benches.common import print_table, wait_for_counter, write_json
from benches.throughput import PreforkWork, prefork_work_server


def measure(master_pid: int) -> list[dict[str, object]]:
    master = psutil.Process(master_pid)
    rows = []
    for role, proc in [("master", master), *(("child", c) for c in master.children())]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rows.append({"role": role, "pid": proc.pid, "rss_mib": info.rss / 2**20,
                     "uss_mib": info.uss / 2**20})
    return rows


def redis_state(client) -> dict[str, object]:
    """Memory and every key of the bench namespace by kind: what must not grow."""
    kinds: dict[str, int] = {}
    for key in client.scan_iter(match="bench:*", count=1000):
        name = key.decode()
        kind = ("in-progress" if name.endswith(":inprogress") else
                "observation" if name.startswith("bench:worker:") else
                "heartbeat" if name.startswith("bench:worker_pools:") else
                "crash counter" if name.startswith("bench:pw:crashes:") else name)
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"used_memory_mib": client.info("memory")["used_memory"] / 2**20,
            "keys": client.dbsize(), "by_kind": kinds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=10, help="enqueue and measure in this many rounds")
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", help="result file (default benches/bench-results/...)")
    args = parser.parse_args(argv)

    checkpoints: list[dict[str, object]] = []
    per_round = args.jobs // args.rounds
    with prefork_work_server(args.children, prefix="bench-memory-") as server:
        client, master = server.redis, server.master
        system = PreforkWork(sys.executable)
        # the master is the process the command started (python -m prefork_work.cli)
        checkpoints.append({"jobs": 0, "processes": measure(master.pid), "redis": redis_state(client)})
        started = time.monotonic()
        for round_number in range(1, args.rounds + 1):
            system.enqueue(server.url, per_round, 5)
            comp = wait_for_counter(client, per_round * round_number, started=started,
                                    timeout=args.timeout, alive=lambda: master.poll() is None)
            if comp.done < per_round * round_number:
                raise SystemExit(f"only {comp.done:,} jobs ran; see {server.workdir}")
            time.sleep(1.5)  # let observations and heartbeats settle, as at the start
            checkpoints.append({"jobs": comp.done, "processes": measure(master.pid),
                                "redis": redis_state(client)})
            print(f"  {comp.done:>9,} jobs: " + ", ".join(
                f"{p['role']} {p['rss_mib']:.1f} MiB" for p in checkpoints[-1]["processes"])
                + f"; redis {checkpoints[-1]['redis']['keys']} keys", flush=True)

    first, last = checkpoints[0], checkpoints[-1]
    rows = []
    for b in first["processes"]:  # type: ignore[union-attr]
        a = next((x for x in last["processes"] if x["pid"] == b["pid"]), None)  # type: ignore[union-attr]
        rows.append([b["role"], str(b["pid"]), b["rss_mib"], a["rss_mib"] if a else "-",
                     b["uss_mib"], a["uss_mib"] if a else "-", "" if a else "replaced"])
    r0, r1 = first["redis"], last["redis"]
    rows.append(["redis", "-", r0["used_memory_mib"], r1["used_memory_mib"], "-", "-",
                 f"keys {r0['keys']} -> {r1['keys']}"])
    print()
    table = print_table(
        ["process", "pid", "RSS MiB start", f"RSS MiB after {last['jobs']:,}", "USS MiB start",
         f"USS MiB after {last['jobs']:,}", "note"], rows,
        title=f"prefork-work memory across {last['jobs']:,} no-op jobs ({args.children} children)")
    print("redis keys at the end, by kind:", r1["by_kind"])
    write_json("memory", {"args": vars(args), "checkpoints": checkpoints, "table": table}, args.json)


if __name__ == "__main__":
    main()
